//! Helpers shared by the engine's end-to-end tests: a private bus per test,
//! an engine on an OS-chosen port, and readers that reassemble what arrived.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use engine::config::TcpServerConfig;
use engine::records::{self, ConnectionEvent};
use engine::{Engine, EngineHandle};
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestBus {
    _dir: tempfile::TempDir,
    pub bus: BusDir,
}

pub fn bus() -> TestBus {
    let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("engine-test").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    TestBus { _dir: dir, bus }
}

/// A server config on 127.0.0.1 with an OS-chosen port and a small ring.
pub fn server_config(name: &str) -> TcpServerConfig {
    TcpServerConfig {
        name: name.into(),
        address: "127.0.0.1:0".parse().unwrap(),
        ring_size_b: 4 << 20,
        ..Default::default()
    }
}

/// Starts an engine with one server stage and waits until it listens.
pub fn start(bus: &BusDir, config: TcpServerConfig) -> (EngineHandle, SocketAddr) {
    log();
    let name = config.name.clone();
    let engine = Engine::new(bus.clone()).tcp_server(config).start().unwrap();
    let addr = engine.wait_bound(&name, DEADLINE).expect("stage bound");
    (engine, addr)
}

/// Reassembles every connection's bytes from `<stage>/packet_group`.
pub struct Collector {
    reader: Reader,
    pub bytes: HashMap<u64, Vec<u8>>,
    pub peers: HashMap<u64, SocketAddr>,
    /// Packets per group, in arrival order.
    pub group_sizes: Vec<usize>,
    /// (record timestamp - receive time of its first packet) per group, ns.
    pub group_waits_ns: Vec<u64>,
    pub ended: bool,
}

impl Collector {
    /// A lossless reader from the oldest record.
    pub fn attach(bus: &BusDir, stage: &str) -> Self {
        let reader = Reader::attach(
            bus,
            &format!("{stage}/packet_group"),
            ReaderOptions::gated().start(StartAt::Oldest),
        )
        .unwrap();
        Self {
            reader,
            bytes: HashMap::new(),
            peers: HashMap::new(),
            group_sizes: Vec::new(),
            group_waits_ns: Vec::new(),
            ended: false,
        }
    }

    /// Reads what arrives for up to `wait`; returns whether anything did.
    pub fn pump(&mut self, wait: Duration) -> bool {
        let mut any = false;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reader.recv_timeout(if any { Duration::ZERO } else { left }).unwrap() {
                Some(Event::Record(sample)) => {
                    assert_eq!(sample.kind(), records::KIND_PACKET_GROUP);
                    let packets = records::decode_group(sample.payload()).unwrap();
                    self.group_sizes.push(packets.len());
                    let mut first = None;
                    for p in packets {
                        first.get_or_insert(p.meta.rx_realtime_ns);
                        self.bytes.entry(p.meta.connection_id).or_default().extend_from_slice(p.data);
                        self.peers.insert(p.meta.connection_id, p.meta.peer.into());
                    }
                    if let Some(first) = first {
                        self.group_waits_ns.push(sample.timestamp_ns().saturating_sub(first));
                    }
                    any = true;
                }
                Some(Event::Ended) => {
                    self.ended = true;
                    return any;
                }
                Some(Event::Restarted { .. }) => panic!("producer restarted during a test"),
                None => return any,
            }
        }
    }

    /// Pumps until `done(self)` holds; panics after [`DEADLINE`].
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump(Duration::from_millis(50));
        }
    }

    /// The connection whose peer is `addr`.
    pub fn connection_of(&self, addr: SocketAddr) -> Option<u64> {
        self.peers.iter().find(|(_, p)| **p == addr).map(|(id, _)| *id)
    }

    pub fn received_from(&self, addr: SocketAddr) -> &[u8] {
        self.connection_of(addr).and_then(|id| self.bytes.get(&id)).map_or(&[], Vec::as_slice)
    }
}

/// Reads `<stage>/connection_events` from the oldest record.
pub struct Events {
    reader: Reader,
    pub seen: Vec<ConnectionEvent>,
}

impl Events {
    pub fn attach(bus: &BusDir, stage: &str) -> Self {
        let reader = Reader::attach(
            bus,
            &format!("{stage}/connection_events"),
            ReaderOptions::gated().start(StartAt::Oldest),
        )
        .unwrap();
        Self { reader, seen: Vec::new() }
    }

    /// Reads events until `done(seen)` holds; panics after [`DEADLINE`].
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&[ConnectionEvent]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.seen) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; events: {:#?}", self.seen);
            if let Some(Event::Record(s)) = self.reader.recv_timeout(Duration::from_millis(50)).unwrap() {
                assert_eq!(s.kind(), records::KIND_CONNECTION_EVENT);
                self.seen.push(records::decode(s.payload()).unwrap());
            }
        }
    }

    pub fn disconnect_reason(&self, id: u64) -> Option<&records::DisconnectReason> {
        self.seen.iter().find_map(|e| match e {
            ConnectionEvent::Disconnected { connection_id, reason, .. } if *connection_id == id => {
                Some(reason)
            }
            _ => None,
        })
    }
}

/// Polls `done` until it holds; panics after [`DEADLINE`] naming `what`.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the stage's egress reader has attached to `channel`, so
/// that what is published next reaches it.
pub fn wait_for_egress_reader(bus: &BusDir, channel: &str) {
    eventually("the stage to attach to its egress channel", || {
        shm_bus::channel_info(bus, channel).is_ok_and(|i| !i.readers.is_empty())
    });
}

/// Deterministic pseudo-random bytes (xorshift), `len` of them.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` in pseudo-random chunk sizes (1..=max_chunk).
pub fn write_in_chunks(stream: &mut TcpStream, data: &[u8], seed: u64, max_chunk: usize) {
    let sizes = random_bytes(seed ^ 0xC0FFEE, data.len() / 2 + 1);
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = (usize::from(sizes[i % sizes.len()]) * max_chunk / 256).clamp(1, data.len() - at);
        stream.write_all(&data[at..at + n]).unwrap();
        at += n;
        i += 1;
    }
}

/// Connects to `addr` and writes `data` from a thread; returns the
/// client's address (the peer address in its packets) and the thread.
pub fn send_in_background(
    addr: SocketAddr,
    data: Vec<u8>,
    seed: u64,
    max_chunk: usize,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let local = stream.local_addr().unwrap();
    let thread = std::thread::spawn(move || write_in_chunks(&mut stream, &data, seed, max_chunk));
    (local, thread)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Every log line of the test process. The subscriber is installed on
/// first use (every engine started through [`start`] uses it): level
/// `info`, or `RUST_LOG`, which also echoes the lines to stderr.
pub fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        let echo = std::env::var_os("RUST_LOG").is_some();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || Tee { log: writer.clone(), echo })
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
}

/// Captured log lines.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    pub fn lines_containing(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|l| l.contains(needle)).count()
    }
}

/// Writes log lines into a [`Log`], and to stderr if asked.
struct Tee {
    log: Log,
    echo: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.log.0.lock().unwrap().extend_from_slice(buf);
        if self.echo {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
