//! `bench-limit`: the limit of the machine as a receiver. One blocking
//! thread per connection does `recv` into a reused 1 MiB buffer and
//! discards the bytes: no grouping, no publishing. It only counts them
//! (and hashes them with `--hash`). Driven by `bench-ingest` through the
//! protocol of `ringest_benches::ingest::control`.

use std::error::Error;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};

use clap::Parser;
use ringest_benches::ingest::control::{self, Command, Hello};
use ringest_benches::ingest::results::{ReceiverReport, ReceiverTotals, StreamReport};
use ringest_benches::ingest::tracker::StreamStats;
use ringest_benches::ingest::{monotonic_ns, raise_fd_limit};

#[derive(Parser, Debug)]
#[command(name = "bench-limit")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Hash each connection's bytes (sha256).
    #[arg(long)]
    hash: bool,
}

/// Bytes one `recv` may return.
const BUFFER: usize = 1 << 20;

/// One connection's counters, updated by its thread.
#[derive(Debug)]
struct Counters {
    peer: String,
    bytes: AtomicU64,
    packets: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// The sha256 once the connection ended (with --hash).
    sha256: Mutex<Option<String>>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    raise_fd_limit();
    let listener = TcpListener::bind(args.listen)?;
    let local = listener.local_addr()?;
    let connections: Arc<Mutex<Vec<Arc<Counters>>>> = Arc::default();
    let accepted = connections.clone();
    let hash = args.hash;
    std::thread::Builder::new().name("accept".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            let counters = Arc::new(Counters {
                peer,
                bytes: AtomicU64::new(0),
                packets: AtomicU64::new(0),
                first_ns: AtomicU64::new(0),
                last_ns: AtomicU64::new(0),
                sha256: Mutex::new(None),
            });
            accepted.lock().expect("no panics").push(counters.clone());
            let spawned = std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || receive(stream, &counters, hash));
            if let Err(e) = spawned {
                eprintln!("bench-limit: cannot start a connection thread: {e}");
            }
        }
    })?;
    control::answer(&Hello { listening: Some(local.to_string()), ready: true });
    let (tx, commands) = mpsc::channel();
    control::read_commands(move |c| {
        let _ = tx.send(c);
    });
    for command in commands {
        let connections = connections.lock().expect("no panics");
        match command {
            Command::Totals => control::answer(&totals(&connections)),
            Command::Final => control::answer(&ReceiverReport {
                totals: totals(&connections),
                streams: connections.iter().map(|c| report(c)).collect(),
                latency: None,
                latency_to_engine: None,
            }),
            Command::Quit => break,
        }
    }
    Ok(())
}

/// Receives until the peer closes.
fn receive(mut stream: TcpStream, counters: &Counters, hash: bool) {
    let mut buf = vec![0u8; BUFFER];
    let mut stats = StreamStats::new(hash, None);
    let mut no_samples = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("bench-limit: {}: {e}", counters.peer);
                break;
            }
        };
        let now = monotonic_ns();
        if hash {
            stats.on_packet(&buf[..n], now, &mut no_samples);
        }
        let _ = counters.first_ns.compare_exchange(0, now, Relaxed, Relaxed);
        counters.last_ns.store(now, Relaxed);
        counters.bytes.fetch_add(n as u64, Relaxed);
        counters.packets.fetch_add(1, Relaxed);
    }
    if hash {
        *counters.sha256.lock().expect("no panics") = stats.report(String::new()).sha256;
    }
}

fn totals(connections: &[Arc<Counters>]) -> ReceiverTotals {
    let mut t = ReceiverTotals::default();
    for c in connections {
        let bytes = c.bytes.load(Relaxed);
        t.bytes += bytes;
        t.packets += c.packets.load(Relaxed);
        t.streams += u64::from(bytes > 0);
        let first = c.first_ns.load(Relaxed);
        if first != 0 && (t.first_ns == 0 || first < t.first_ns) {
            t.first_ns = first;
        }
        t.last_ns = t.last_ns.max(c.last_ns.load(Relaxed));
    }
    t
}

fn report(c: &Counters) -> StreamReport {
    StreamReport {
        peer: c.peer.clone(),
        bytes: c.bytes.load(Relaxed),
        packets: c.packets.load(Relaxed),
        sha256: c.sha256.lock().expect("no panics").clone(),
        bad_messages: 0,
    }
}
