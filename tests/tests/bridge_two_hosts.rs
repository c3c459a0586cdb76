//! The bridge between two hosts for real: two network namespaces joined by
//! a veth pair, each running `ringest run` on a bus of its own. Host A runs
//! a TCP server stage (`ingest`) and, in a separate process, a bridge that
//! exports it; host B runs a bridge that imports it as `a/ingest/...`, a
//! lossless `ringest log` of the imported stage and a checking reader.
//! Every byte of every connection arrives (sha256 against what `ringest
//! loadgen` sent, read back from the MCAP file by the Python `mcap`
//! package), no sequence number twice, also when the link goes down, drops
//! packets, is rate-limited and each bridge is killed and restarted; and
//! egress published on B reaches a TCP client of A's stage. Needs root (CI
//! runs as root); elsewhere it says why it skips.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::records::{self, ConnectionEvent};
use ringest_e2e::{
    Background, DEADLINE, Daemon, TestBus, TwoHosts, bus, python_with, text, wait_for_channel,
};
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

const STAGE_PORT: u16 = 7400;
const BRIDGE_PORT: u16 = 7500;
/// B's name for A's stage.
const IMPORTED: &str = "a/ingest";

/// A's stage, with one executor per shard. Lossless across a SIGKILL of
/// the exporting bridge needs ring headroom: while no bridge gates the
/// ring, the stage drains its sockets' backlog into it at once, and that
/// must not reach the records the peer has not acknowledged (docs/BRIDGE.md
/// §3). Small receive slots (a slot per receive, whatever its length) and
/// bounded socket buffers keep the burst well inside the 64 MiB ring.
fn stage_config(shards: usize) -> String {
    let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
    let affinity = if shards > 1 {
        format!("thread_processor_affinity = [{}]\n", cores.join(", "))
    } else {
        String::new()
    };
    format!(
        "[[tcp_server]]\nname = \"ingest\"\naddress = \"127.0.0.1:{STAGE_PORT}\"\nring_size_b = 67108864\n\
         receive_slot_size_b = 4096\nkernel_receive_buffer_size_b = 262144\n{affinity}"
    )
}

/// Quick to notice a dead link and to come back: the faults below are
/// seconds long.
const LINK_KEYS: &str = "keepalive_ms = 100\nheartbeat_timeout_ms = 1000\nconnect_timeout_ms = 500\n\
                         reconnect_backoff_initial_ms = 50\nreconnect_backoff_max_ms = 500\n";

fn bridge_a_config() -> String {
    format!(
        "[[bridge]]\nname = \"to-b\"\nlisten = \"{}:{BRIDGE_PORT}\"\nexport = [\"ingest/*\"]\nimport_prefix = \"b\"\n{LINK_KEYS}",
        TwoHosts::A_ADDRESS
    )
}

fn bridge_b_config() -> String {
    format!(
        "[[bridge]]\nname = \"to-a\"\nconnect = \"{}:{BRIDGE_PORT}\"\nimport_prefix = \"a\"\n{LINK_KEYS}",
        TwoHosts::A_ADDRESS
    )
}

/// The two hosts with their buses, A's stage and both bridges, each in a
/// `ringest run` of its own so that a bridge can be killed alone.
struct Setup {
    hosts: TwoHosts,
    bus_a: TestBus,
    bus_b: TestBus,
    stage: Daemon,
    bridge_a: Daemon,
    bridge_b: Daemon,
    /// Bridges killed earlier: their stderr is still read.
    killed: Vec<Daemon>,
}

impl Setup {
    fn start(tag: &str, shards: usize) -> Option<Self> {
        let hosts = TwoHosts::new(tag)?;
        let (bus_a, bus_b) = (bus(&format!("{tag}-a")), bus(&format!("{tag}-b")));
        let stage = Daemon::start(hosts.a.ringest(&bus_a.bus), &stage_config(shards));
        let bridge_a = Self::bridge(&hosts.a.ringest(&bus_a.bus), &bridge_a_config());
        let bridge_b = Self::bridge(&hosts.b.ringest(&bus_b.bus), &bridge_b_config());
        for channel in ["packet_group", "connection_events", "socket_stats", "egress_outcomes"] {
            wait_for_channel(&bus_b.bus, &format!("{IMPORTED}/{channel}"));
        }
        Some(Self { hosts, bus_a, bus_b, stage, bridge_a, bridge_b, killed: Vec::new() })
    }

    fn bridge(command: &Command, config: &str) -> Daemon {
        let mut command = clone(command);
        command.env("RUST_LOG", "bridge=info");
        Daemon::start(command, config)
    }

    fn restart_bridge_a(&mut self) {
        self.bridge_a.process.kill();
        let fresh = Self::bridge(&self.hosts.a.ringest(&self.bus_a.bus), &bridge_a_config());
        self.killed.push(std::mem::replace(&mut self.bridge_a, fresh));
    }

    fn restart_bridge_b(&mut self) {
        self.bridge_b.process.kill();
        let fresh = Self::bridge(&self.hosts.b.ringest(&self.bus_b.bus), &bridge_b_config());
        self.killed.push(std::mem::replace(&mut self.bridge_b, fresh));
    }

    /// Everything the bridges of A (`true`) or B wrote to stderr, killed
    /// ones included.
    fn bridge_logs(&self, a: bool) -> String {
        let current = if a { &self.bridge_a } else { &self.bridge_b };
        let mut all = String::new();
        for daemon in self.killed.iter().chain([current]) {
            let log = daemon.process.stderr();
            if log.contains(if a { "to-b" } else { "to-a" })
                || log.contains(if a { "exporting" } else { "importing" })
            {
                all.push_str(&log);
            }
        }
        all
    }

    /// `ringest log` of the imported stage on B, lossless, once recording.
    fn logger(&self, out: &Path) -> Background {
        let mut command = self.hosts.b.ringest(&self.bus_b.bus);
        command.args(["log", IMPORTED, "--lossless", "--out"]).arg(out);
        let mut logger = Background::spawn(command);
        logger.line_starting("recording");
        logger
    }

    /// `ringest loadgen` on A against the stage.
    fn loadgen(&self, args: &[&str]) -> Background {
        let mut command = self.hosts.a.ringest(&self.bus_a.bus);
        command.args(["loadgen", &format!("127.0.0.1:{STAGE_PORT}")]).args(args);
        Background::spawn(command)
    }
}

/// `Command` is not `Clone`: the same program, arguments and environment.
fn clone(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(key, value),
            None => copy.env_remove(key),
        };
    }
    copy
}

/// One connection as `ringest loadgen` reported it.
#[derive(Debug)]
struct Sent {
    bytes: u64,
    sha256: String,
}

/// Waits for loadgen and reads its per-connection lines
/// (`ADDR  bytes N  messages M  sha256 HEX`), by the connection's address.
fn sent_by(mut loadgen: Background, connections: usize) -> HashMap<SocketAddr, Sent> {
    let status = loadgen.wait();
    assert!(status.success(), "loadgen: {status}: {}", loadgen.stderr());
    let mut sent = HashMap::new();
    for line in &loadgen.stdout {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [addr, "bytes", bytes, "messages", _, "sha256", sha] = words[..] {
            let bytes = bytes.parse().unwrap();
            sent.insert(addr.parse().unwrap(), Sent { bytes, sha256: sha.to_owned() });
        }
    }
    assert_eq!(sent.len(), connections, "loadgen said {:#?}", loadgen.stdout);
    assert!(sent.values().all(|s| s.bytes > 0), "every connection sent: {sent:?}");
    sent
}

/// What a gated reader of B's imported packet channel saw, to its end.
#[derive(Debug, Default)]
struct Imported {
    bytes: HashMap<SocketAddr, Vec<u8>>,
    records: u64,
    /// Records whose (shard, sequence number) was seen already.
    duplicates: u64,
    /// Sequence numbers skipped.
    gaps: u64,
    /// Records shm-bus reported lost before those read (`lost_before`).
    lost_reported: u64,
    /// Times the channel's producer (B's importing bridge) was replaced.
    restarts: u64,
}

/// Reads `a/ingest/packet_group` on B from its oldest record until it
/// ends, checking each shard's sequence numbers.
fn read_imported(bus: &BusDir) -> JoinHandle<Imported> {
    let bus = bus.clone();
    std::thread::spawn(move || {
        let options = ReaderOptions::gated().start(StartAt::Oldest);
        let mut reader = Reader::attach(&bus, &format!("{IMPORTED}/packet_group"), options).unwrap();
        let mut seen = Imported::default();
        let mut next: HashMap<u32, u64> = HashMap::new();
        let deadline = Instant::now() + 4 * DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "the imported channel did not end: {} records", seen.records);
            match reader.recv_timeout(Duration::from_millis(100)).unwrap() {
                Some(Event::Record(sample)) => {
                    let (shard, seq) = (sample.shard(), sample.seq());
                    match next.get(&shard) {
                        Some(&n) if seq < n => seen.duplicates += 1,
                        Some(&n) => seen.gaps += seq - n,
                        None => {}
                    }
                    next.insert(shard, seq + 1);
                    seen.records += 1;
                    seen.lost_reported += sample.lost_before();
                    assert_eq!(sample.kind(), records::KIND_PACKET_GROUP);
                    for packet in records::decode_group(sample.payload()).unwrap() {
                        let peer = SocketAddr::from(packet.meta.peer);
                        seen.bytes.entry(peer).or_default().extend_from_slice(packet.data);
                    }
                }
                // The same generation goes on where it stopped.
                Some(Event::Restarted { .. }) => seen.restarts += 1,
                Some(Event::Ended) => return seen,
                None => {}
            }
        }
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every connection's bytes are in the reader's view and in the log, each
/// exactly once.
fn assert_every_byte(sent: &HashMap<SocketAddr, Sent>, imported: &Imported, log: &Path) {
    assert_eq!(imported.duplicates, 0, "no sequence number twice");
    assert_eq!(imported.gaps, 0, "no sequence number skipped");
    let peers: Vec<_> = imported.bytes.keys().collect();
    assert_eq!(imported.bytes.len(), sent.len(), "connections imported: {peers:?}");
    for (peer, s) in sent {
        let got = imported.bytes.get(peer).map_or(&[][..], Vec::as_slice);
        assert_eq!(got.len() as u64, s.bytes, "{peer}: bytes imported");
        assert_eq!(sha256_hex(got), s.sha256, "{peer}: sha256 of the imported bytes");
    }
    let out = python_with("mcap")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcap_connections.py"))
        .arg(log)
        .output()
        .unwrap();
    assert!(out.status.success(), "mcap_connections.py: {}", text(&out.stderr));
    let logged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logged = logged.as_object().unwrap();
    assert_eq!(logged.len(), sent.len(), "connections in the log: {logged:?}");
    for (peer, s) in sent {
        let entry = &logged[&peer.to_string()];
        assert_eq!(entry["bytes"], s.bytes, "{peer}: bytes in the log");
        assert_eq!(entry["sha256"], s.sha256.as_str(), "{peer}: sha256 in the log");
    }
}

/// Waits until B sees `connections` connections of A's stage end: the
/// stage read each to its end (loadgen's exit says only that it sent).
fn wait_disconnected(bus: &BusDir, connections: usize) {
    let options = ReaderOptions::lossy().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &format!("{IMPORTED}/connection_events"), options).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut ended = 0;
    while ended < connections {
        assert!(Instant::now() < deadline, "B saw {ended} of {connections} connections end");
        match reader.recv_timeout(Duration::from_millis(50)).unwrap() {
            Some(Event::Record(sample)) => {
                if let Ok(ConnectionEvent::Disconnected { .. }) = records::decode(sample.payload()) {
                    ended += 1;
                }
            }
            // B's importing bridge restarted: the channel starts over from
            // its oldest record.
            Some(Event::Restarted { .. }) => ended = 0,
            _ => {}
        }
    }
}

/// Once every connection ended, stops A's stage gracefully: its channels
/// end, the bridges carry the end to B, where the logger and the reader
/// finish.
fn finish(setup: &mut Setup, mut logger: Background, reader: JoinHandle<Imported>) -> (Imported, String) {
    wait_disconnected(&setup.bus_b.bus, 8);
    assert!(setup.stage.process.stop().success(), "stage: {}", setup.stage.process.stderr());
    let imported = reader.join().unwrap();
    eprintln!(
        "imported: {} records, {} duplicates, {} gaps, {} reported lost, {} restarts",
        imported.records, imported.duplicates, imported.gaps, imported.lost_reported, imported.restarts
    );
    let status = logger.wait();
    assert!(status.success(), "logger: {status}: {}", logger.stderr());
    let last = logger.stdout.last().cloned().unwrap_or_default();
    assert!(last.contains("the channels ended"), "logger: {last}");
    (imported, last)
}

/// The logger's last line says it lost nothing (checked after the bytes,
/// so that a failure says whether bytes are missing too).
fn assert_logger_lost_nothing(last: &str, setup: &Setup) {
    assert!(
        last.contains("lost 0 records"),
        "logger: {last}\nbridges of A: {}\nbridges of B: {}",
        setup.bridge_logs(true),
        setup.bridge_logs(false)
    );
}

#[test]
fn eight_connections_cross_the_bridge_byte_for_byte() {
    let Some(mut setup) = Setup::start("clean", 1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("b.mcap");
    let logger = setup.logger(&log);
    let reader = read_imported(&setup.bus_b.bus);
    let loadgen =
        setup.loadgen(&["--connections", "8", "--size", "4096", "--rate", "4000", "--seconds", "2"]);
    let sent = sent_by(loadgen, 8);
    let (imported, logger_said) = finish(&mut setup, logger, reader);
    assert_every_byte(&sent, &imported, &log);
    assert_logger_lost_nothing(&logger_said, &setup);
    assert_eq!((imported.restarts, imported.lost_reported), (0, 0));
}

/// Waits until B's imported packet channel holds at least `records`.
fn wait_imported(bus: &BusDir, records: u64) {
    let channel = format!("{IMPORTED}/packet_group");
    let deadline = Instant::now() + DEADLINE;
    let held = || {
        shm_bus::channel_info(bus, &channel)
            .map_or(0, |info| info.shards.iter().map(|s| s.records_written).sum())
    };
    while held() < records {
        assert!(Instant::now() < deadline, "no record of {channel} arrived on B");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_byte_crosses_a_lossy_slow_link_that_goes_down_and_bridges_killed_in_turn() {
    let Some(mut setup) = Setup::start("faults", 2) else { return };
    if let Err(e) = setup.hosts.drop_share(2) {
        panic!("{e}");
    }
    setup.hosts.rate_limit("64mbit");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("b.mcap");
    let logger = setup.logger(&log);
    let reader = read_imported(&setup.bus_b.bus);
    let loadgen =
        setup.loadgen(&["--connections", "8", "--size", "2048", "--rate", "1000", "--seconds", "12"]);
    // The link goes down once records crossed (so that its return resumes
    // inside the stream), however slowly a loaded machine started them.
    wait_imported(&setup.bus_b.bus, 1);
    std::thread::sleep(Duration::from_millis(1000));
    setup.hosts.link_down();
    std::thread::sleep(Duration::from_secs(3));
    setup.hosts.link_up();
    std::thread::sleep(Duration::from_secs(2));
    setup.restart_bridge_a();
    std::thread::sleep(Duration::from_secs(2));
    setup.restart_bridge_b();
    let sent = sent_by(loadgen, 8);
    let (imported, logger_said) = finish(&mut setup, logger, reader);
    let (logs_a, logs_b) = (setup.bridge_logs(true), setup.bridge_logs(false));
    assert_every_byte(&sent, &imported, &log);
    assert_eq!(imported.restarts, 1, "the importer's restart replaced the channel once");
    assert_eq!(imported.lost_reported, 0, "shm-bus reported no loss to a reader on B");
    assert_logger_lost_nothing(&logger_said, &setup);
    // The resumes, as the bridges logged them: the exporter resumed the
    // packet channel on each new link (after the link came back, after
    // each restart) at a position the importer already held.
    let resumes: Vec<&str> =
        logs_a.lines().filter(|l| l.contains("peer resumes") && l.contains("ingest/packet_group")).collect();
    let resumed_inside =
        resumes.iter().filter(|l| l.contains("next_seq=[") && !l.contains("next_seq=[0, 0]")).count();
    assert!(resumes.len() >= 4 && resumed_inside >= 3, "resumes of A's exporter: {resumes:#?}");
    assert!(!logs_a.contains("overwritten"), "A lost nothing: {logs_a}");
    let imports: Vec<&str> =
        logs_b.lines().filter(|l| l.contains("importing") && l.contains("a/ingest/packet_group")).collect();
    assert!(imports.len() >= 2, "B imported, and again after its restart: {imports:#?}");
}

#[test]
fn egress_published_on_b_reaches_a_client_of_the_stage_on_a() {
    let Some(setup) = Setup::start("egress", 1) else { return };
    const CLIENT: &str = r#"
import hashlib, socket, sys
want = int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
got = bytearray()
while len(got) < want:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(f"received {len(got)} {hashlib.sha256(got).hexdigest()}", flush=True)
"#;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut client = setup.hosts.a.exec("python3");
    client.args(["-c", CLIENT, &STAGE_PORT.to_string(), &data.len().to_string()]);
    let mut client = Background::spawn(client);
    client.line_starting("connected");
    wait_connected(&setup.bus_b.bus);

    let mut send = setup.hosts.b.ringest(&setup.bus_b.bus);
    let mut send = send
        .args(["send", IMPORTED, "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    let input = data.clone();
    // A failing `send` may exit before reading it all: its message tells why.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = send.wait_with_output().unwrap();
    let _ = writer.join();
    assert!(
        out.status.success(),
        "ringest send on B: {}{}\nbridge of A: {}\nbridge of B: {}\nstage: {}",
        text(&out.stdout),
        text(&out.stderr),
        setup.bridge_logs(true),
        setup.bridge_logs(false),
        setup.stage.process.stderr()
    );
    let received = client.line_starting("received");
    assert_eq!(received, format!("received {} {}", data.len(), sha256_hex(&data)));
}

/// Waits until B sees the client's connection to A's stage.
fn wait_connected(bus: &BusDir) {
    let options = ReaderOptions::lossy().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &format!("{IMPORTED}/connection_events"), options).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap()
            && let Ok(ConnectionEvent::Connected { .. }) = records::decode(sample.payload())
        {
            return;
        }
    }
    panic!("B never saw the client connect to A's stage");
}
