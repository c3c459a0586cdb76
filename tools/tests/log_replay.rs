//! `ringest log`, `replay` and `demo` end to end: an engine in-process on a
//! private bus, the real binary, and every log file checked by an
//! independent reader, the Python `mcap` package (`tests/mcap_summary.py`;
//! `pip install mcap`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Collector, DEADLINE, bus, failure_of, random_bytes, ringest, text};
use engine::config::TcpServerConfig;
use engine::records::{self, ConnectionEvent};
use engine::{Engine, EngineHandle};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

const STAGE: &str = "ingest";

/// An engine with one server stage on 127.0.0.1, an OS-chosen port, and a
/// small ring, so that a lossless logger gets to push back.
fn start_engine(bus: &BusDir) -> (EngineHandle, SocketAddr) {
    let config = TcpServerConfig {
        name: STAGE.into(),
        address: "127.0.0.1:0".parse().unwrap(),
        ring_size_b: 4 << 20,
        ..Default::default()
    };
    let engine = Engine::new(bus.clone()).tcp_server(config).start().unwrap();
    let addr = engine.wait_bound(STAGE, DEADLINE).expect("the stage listens");
    (engine, addr)
}

/// A `ringest` process whose stdout is read line by line; killed when
/// dropped if still running.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
}

impl Background {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|line| tx.send(line)));
        Self { child, lines, stdout: Vec::new() }
    }

    /// `ringest log ARGS`, once it is recording.
    fn log(bus: &BusDir, args: &[&str]) -> Self {
        let mut command = ringest(bus);
        command.arg("log").args(args);
        let mut logger = Self::spawn(command);
        logger.line_starting("recording ");
        logger
    }

    /// The first stdout line starting with `prefix` (waits for it).
    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => {
                    self.stdout.push(line.clone());
                    return line;
                }
                Ok(line) => self.stdout.push(line),
                Err(e) => panic!("no line {prefix:?} ({e}); stdout: {:#?}", self.stdout),
            }
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal).unwrap();
    }

    /// Waits for the exit; returns the status and every stdout line.
    fn wait_all(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running; stdout: {:#?}", self.stdout);
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stdout.extend(self.lines.iter());
        (status, std::mem::take(&mut self.stdout))
    }

    /// Waits for the exit; returns the status and the last stdout line.
    fn wait(self) -> (ExitStatus, String) {
        let (status, stdout) = self.wait_all();
        (status, stdout.last().cloned().unwrap_or_default())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to `addr` and writes `data` in pseudo-random chunk sizes from a
/// thread; returns the client's address (the peer the engine sees).
fn send(addr: SocketAddr, data: Vec<u8>, seed: u64) -> (SocketAddr, JoinHandle<()>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let local = stream.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let sizes = random_bytes(seed, 4096);
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == data.len() {
                break;
            }
            let n = (usize::from(*size) * 64).clamp(1, data.len() - at);
            stream.write_all(&data[at..at + n]).unwrap();
            at += n;
        }
    });
    (local, writer)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the Python `mcap` package reads in `path` (see mcap_summary.py):
/// through the summary section, or front to back if `stream`.
fn mcap_summary(path: &Path, stream: bool) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcap_summary.py");
    let output = common::python_with("mcap")
        .arg(script)
        .arg(path)
        .args(stream.then_some("--stream"))
        .output()
        .expect("the test Python runs");
    assert!(output.status.success(), "mcap_summary.py: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The connection topics of a summary, by their `peer` metadata.
fn connections_by_peer(summary: &Value) -> BTreeMap<String, (String, Value)> {
    summary["topics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(topic, _)| topic.starts_with("ingest/packet_group/"))
        .map(|(topic, t)| (t["metadata"]["peer"].as_str().unwrap().to_owned(), (topic.clone(), t.clone())))
        .collect()
}

/// Checks that the complete, indexed file at `path` holds exactly `sent`
/// per connection, with its metadata; returns the summary.
fn assert_logged(path: &Path, engine_addr: SocketAddr, sent: &[(SocketAddr, Vec<u8>)]) -> Value {
    let summary = mcap_summary(path, false);
    assert_eq!(summary["error"], Value::Null, "{summary}");
    assert_eq!(summary["indexed"], true, "a summary section with chunk indexes");
    let logged = connections_by_peer(&summary);
    assert_eq!(logged.len(), sent.len(), "one topic per connection: {:?}", logged.keys());
    for (peer, data) in sent {
        let (topic, t) = &logged[&peer.to_string()];
        assert_eq!(t["bytes"], data.len(), "{topic}");
        assert_eq!(t["sha256"], sha256_hex(data), "{topic}");
        assert_eq!(t["metadata"]["local"], engine_addr.to_string(), "{topic}");
        assert_eq!(t["message_encoding"], "application/octet-stream");
        assert_eq!(t["schema_name"], Value::Null);
        assert_eq!(t["log_time_sorted"], true, "{topic}: log_time is the receive time");
    }
    summary
}

/// An engine, a lossless logger of all its channels into `out`, and a
/// client per element of `data`; ends with the engine's stop, which ends
/// the logger. Returns what each client sent.
fn record_session(bus: &BusDir, out: &Path, data: Vec<Vec<u8>>) -> (SocketAddr, Vec<(SocketAddr, Vec<u8>)>) {
    let (engine, addr) = start_engine(bus);
    let mut collector = Collector::attach(bus, STAGE);
    let logger = Background::log(bus, &[STAGE, "--lossless", "--out", out.to_str().unwrap()]);
    let sent = send_and_wait(addr, &mut collector, data);
    engine.stop().unwrap();
    let (status, summary) = logger.wait();
    assert!(status.success(), "{status}: {summary}");
    assert!(
        summary.contains("lost 0 records") && summary.contains("stopped by the channels ended"),
        "{summary}"
    );
    (addr, sent)
}

/// Sends each element of `data` on its own connection and waits until
/// `collector` saw all of it.
fn send_and_wait(
    addr: SocketAddr,
    collector: &mut Collector,
    data: Vec<Vec<u8>>,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let clients: Vec<_> = data.iter().zip(1..).map(|(data, seed)| send(addr, data.clone(), seed)).collect();
    let sent: Vec<(SocketAddr, Vec<u8>)> = clients
        .into_iter()
        .zip(data)
        .map(|((local, writer), data)| {
            writer.join().unwrap();
            (local, data)
        })
        .collect();
    collector.until("every byte at the engine", |c| {
        sent.iter().all(|(peer, d)| c.received_from(*peer).len() == d.len())
    });
    sent
}

fn sizes(lens: &[usize]) -> Vec<Vec<u8>> {
    lens.iter().zip(100..).map(|(&len, seed)| random_bytes(seed, len)).collect()
}

#[test]
fn the_log_holds_every_byte_of_every_connection() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("session.mcap");
    let (addr, sent) = record_session(&t.bus, &out, sizes(&[1, 5_000, 300_000, 3_000_000]));
    let summary = assert_logged(&out, addr, &sent);

    let events = &summary["topics"]["ingest/connection_events"];
    assert_eq!(
        (&events["message_encoding"], &events["schema_encoding"]),
        (&"json".into(), &"jsonschema".into())
    );
    assert_eq!(events["schema"]["type"], "object");
    let events = events["json"].as_array().unwrap();
    for (peer, data) in &sent {
        let peer = peer.to_string();
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "connected" && e["peer"] == peer && e["local"] == addr.to_string())
        );
        let closed = |e: &&Value| e["event"] == "disconnected" && e["reason"] == "peer_closed";
        assert!(events.iter().filter(closed).any(|e| e["bytes_in"] == data.len()), "{peer}: {events:?}");
    }
    let stats = &summary["topics"]["ingest/socket_stats"];
    assert_eq!(
        (&stats["message_encoding"], &stats["schema_encoding"]),
        (&"json".into(), &"jsonschema".into())
    );
    // At least the engine's last statistics, published as it stopped.
    let stats = stats["json"].as_array().unwrap();
    assert!(stats.iter().all(|s| s["stage"]["traffic"]["bytes_received"].is_u64()), "{stats:?}");
    assert!(!stats.is_empty());
}

#[test]
fn a_logger_ends_after_seconds_or_on_a_signal_with_a_complete_file() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let (timed, signalled) = (dir.path().join("timed.mcap"), dir.path().join("signalled.mcap"));
    let (engine, addr) = start_engine(&t.bus);
    let mut collector = Collector::attach(&t.bus, STAGE);
    // Lossy, compressed, and without the events channel (the local
    // addresses still come from the events).
    let started = Instant::now();
    let (timed_out, signalled_out) = (timed.to_str().unwrap(), signalled.to_str().unwrap());
    let args = ["ingest/packet_group", "ingest/socket_stats", "--seconds", "3", "--compression", "lz4"];
    let timed_logger = Background::log(&t.bus, &[&args[..], &["--out", timed_out]].concat());
    let args = [STAGE, "--compression", "zstd", "--out", signalled_out];
    let signalled_logger = Background::log(&t.bus, &args);
    let sent = send_and_wait(addr, &mut collector, sizes(&[100_000, 20_000]));

    let (status, summary) = timed_logger.wait();
    assert!(status.success(), "{status}: {summary}");
    assert!(started.elapsed() >= Duration::from_secs(3), "stopped early: {summary}");
    assert!(summary.contains("lost 0 records") && summary.ends_with("stopped by --seconds"), "{summary}");
    let timed_summary = assert_logged(&timed, addr, &sent);
    assert!(timed_summary["topics"].get("ingest/connection_events").is_none(), "not asked for");

    signalled_logger.signal(rustix::process::Signal::INT);
    let (status, summary) = signalled_logger.wait();
    assert!(status.success() && summary.ends_with("stopped by SIGINT"), "{status}: {summary}");
    assert_logged(&signalled, addr, &sent);
    engine.stop().unwrap();
}

#[test]
fn a_lossy_logger_that_falls_behind_reports_its_losses() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lossy.mcap");
    let (engine, addr) = start_engine(&t.bus);
    let logger = Background::log(&t.bus, &[STAGE, "--out", out.to_str().unwrap()]);
    // Stopped, it falls more than a ring (4 MiB a shard) behind.
    logger.signal(rustix::process::Signal::STOP);
    const EACH: usize = 12 << 20;
    let sent: Vec<(SocketAddr, Vec<u8>)> = sizes(&[EACH, EACH])
        .into_iter()
        .zip(1..)
        .map(|(data, seed)| {
            let (local, writer) = send(addr, data.clone(), seed);
            writer.join().unwrap();
            (local, data)
        })
        .collect();
    wait_disconnected(&t.bus, 2);
    logger.signal(rustix::process::Signal::CONT);
    engine.stop().unwrap();
    let (status, summary) = logger.wait();
    assert!(status.success(), "{summary}");
    let lost: u64 = summary.split("lost ").nth(1).and_then(|s| s.split(' ').next()?.parse().ok()).unwrap();
    assert!(lost > 0, "{summary}");

    let summary = mcap_summary(&out, false);
    assert_eq!(summary["error"], Value::Null, "{summary}");
    let logged: u64 = connections_by_peer(&summary).values().map(|(_, t)| t["bytes"].as_u64().unwrap()).sum();
    assert!(logged < 2 * EACH as u64, "{logged} bytes logged");
    // What was logged is intact: every packet is the next piece of what its
    // connection sent, after whatever was lost.
    assert_eq!(logged_pieces_in_order(&out, &sent), logged);
}

/// Checks that each connection's packets in the log at `path` are pieces of
/// what it sent (`sent`, by peer), in order, without overlaps; returns the
/// bytes they hold.
fn logged_pieces_in_order(path: &Path, sent: &[(SocketAddr, Vec<u8>)]) -> u64 {
    let file = std::fs::read(path).unwrap();
    // Per peer: where the next packet may start at the earliest.
    let mut next: BTreeMap<String, usize> = BTreeMap::new();
    let mut bytes = 0;
    for message in mcap::MessageStream::new(&file).unwrap() {
        let message = message.unwrap();
        if !message.channel.topic.starts_with("ingest/packet_group/") {
            continue;
        }
        let peer = &message.channel.metadata["peer"];
        let (_, data) = sent.iter().find(|(p, _)| p.to_string() == *peer).expect("a peer that sent");
        let from = next.entry(peer.clone()).or_default();
        let piece = &message.data[..];
        // The data is random: 16 bytes find the one place a piece can be.
        let head = &piece[..piece.len().min(16)];
        let at = data[*from..].windows(head.len()).position(|w| w == head).map(|i| *from + i).unwrap_or_else(
            || panic!("{peer}: a packet of {} B is not in what was sent after {from}", piece.len()),
        );
        assert!(data[at..].starts_with(piece), "{peer}: the packet at {at} differs from what was sent");
        *from = at + piece.len();
        bytes += piece.len() as u64;
    }
    bytes
}

/// Waits until `connections` connections of the stage have closed: the
/// engine has then published everything they sent.
fn wait_disconnected(bus: &BusDir, connections: usize) {
    let events = format!("{STAGE}/connection_events");
    let options = ReaderOptions::lossy().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &events, options).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut closed = 0;
    while closed < connections {
        assert!(Instant::now() < deadline, "{closed} of {connections} connections closed");
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap()
            && let Ok(ConnectionEvent::Disconnected { .. }) = records::decode(sample.payload())
        {
            closed += 1;
        }
    }
}

#[test]
fn log_replay_log_is_byte_exact_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.mcap"), dir.path().join("second.mcap"));
    let t = bus();
    let (_, sent) = record_session(&t.bus, &first, sizes(&[70_000, 1_000_000, 2_500_000]));

    // Replay into a second engine, recorded by a second logger.
    let t2 = bus();
    let (engine, addr) = start_engine(&t2.bus);
    let mut collector = Collector::attach(&t2.bus, STAGE);
    let logger = Background::log(&t2.bus, &[STAGE, "--lossless", "--out", second.to_str().unwrap()]);
    let mut replay = ringest(&t2.bus);
    replay.args(["replay", first.to_str().unwrap(), "--connect", &addr.to_string(), "--max"]);
    let output = replay.output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let total: usize = sent.iter().map(|(_, data)| data.len()).sum();
    assert!(text(&output.stdout).contains("on 3 connections"), "{}", text(&output.stdout));
    collector.until("the replayed bytes", |c| c.bytes.values().map(Vec::len).sum::<usize>() == total);
    engine.stop().unwrap();
    let (status, summary) = logger.wait();
    assert!(status.success(), "{summary}");

    // The peers differ (new client ports): compare the connections' contents.
    let contents = |summary: &Value| {
        let mut digests: Vec<(u64, String)> = connections_by_peer(summary)
            .values()
            .map(|(_, t)| (t["bytes"].as_u64().unwrap(), t["sha256"].as_str().unwrap().to_owned()))
            .collect();
        digests.sort();
        digests
    };
    let mut expected: Vec<(u64, String)> =
        sent.iter().map(|(_, d)| (d.len() as u64, sha256_hex(d))).collect();
    expected.sort();
    let second_summary = mcap_summary(&second, false);
    assert_eq!(second_summary["error"], Value::Null);
    assert_eq!(contents(&mcap_summary(&first, false)), expected);
    assert_eq!(contents(&second_summary), expected);
}

/// Writes a log by hand: connection topics `ingest/packet_group/1` and `/2`
/// with the given (connection, log time in ms, bytes) messages, each
/// followed by a message on a JSON topic, which replay skips.
fn write_log(path: &Path, messages: &[(u64, u64, &[u8])]) {
    let mut writer = mcap::Writer::new(std::fs::File::create(path).unwrap()).unwrap();
    let metadata = BTreeMap::from([("peer".to_owned(), "127.0.0.1:1".to_owned())]);
    let channels: Vec<u16> = (1..=2)
        .map(|id| {
            let topic = format!("ingest/packet_group/{id}");
            writer.add_channel(0, &topic, "application/octet-stream", &metadata).unwrap()
        })
        .collect();
    let schema = writer.add_schema("ringest.SocketStats", "jsonschema", b"{}").unwrap();
    let stats = writer.add_channel(schema, "ingest/socket_stats", "json", &BTreeMap::new()).unwrap();
    for (sequence, &(connection, ms, data)) in (0..).zip(messages) {
        let channel_id = channels[connection as usize - 1];
        let header =
            mcap::records::MessageHeader { channel_id, sequence, log_time: ms * 1_000_000, publish_time: 0 };
        writer.write_to_known_channel(&header, data).unwrap();
        let header = mcap::records::MessageHeader { channel_id: stats, ..header };
        writer.write_to_known_channel(&header, b"{}").unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn replay_listens_and_keeps_the_pace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paced.mcap");
    // 4 s of log: 500 ms at --speed 8.
    write_log(&path, &[(1, 0, b"hello "), (2, 1000, b"other "), (1, 3000, b"world"), (2, 4000, b"side")]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.args(["replay", path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--speed", "8"]);
    let mut replay = Background::spawn(command);
    let line = replay.line_starting("listening on ");
    let addr: SocketAddr = line["listening on ".len()..].parse().unwrap();
    // Connections are served in the order of their topics' first messages.
    let mut clients: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The pace starts with the first message and ends with "side". (The
    // ends of the streams come in no particular order: replay waits for
    // each client to close in turn.)
    let mut first_message_at = None;
    let mut received: Vec<Vec<u8>> = clients
        .iter_mut()
        .zip([b"hello world".len(), b"other side".len()])
        .map(|(client, len)| {
            let mut data = vec![0; len];
            client.read_exact(&mut data[..1]).unwrap();
            first_message_at.get_or_insert_with(Instant::now);
            client.read_exact(&mut data[1..]).unwrap();
            data
        })
        .collect();
    let paced = first_message_at.unwrap().elapsed();
    // Nothing more: the streams end once we are done with both.
    for client in &clients {
        client.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (client, data) in clients.iter_mut().zip(&mut received) {
        client.read_to_end(data).unwrap();
    }
    let (status, summary) = replay.wait();
    assert!(status.success(), "{summary}");
    assert_eq!(received, [b"hello world".to_vec(), b"other side".to_vec()]);
    assert!(summary.starts_with("replayed 4 messages (21 B) on 2 connections"), "{summary}");
    // 500 ms; ignoring --speed would take 4 s, applying it the wrong way
    // 32 s. The upper bound leaves a second for a loaded machine.
    let expected = Duration::from_millis(500);
    assert!(paced >= expected - Duration::from_millis(10), "{paced:?}: faster than the log at --speed 8");
    assert!(paced < expected + Duration::from_secs(1), "{paced:?}: slower than the log at --speed 8");
}

/// Writes an MCAP log as `ringest log` would: `connections` connection
/// topics of stage `ingest`, the (connection, bytes) messages 10 ms apart,
/// and a `disconnected` event after the last message of each connection in
/// `ended`.
fn write_log_with_events(path: &Path, connections: u64, messages: &[(u64, &[u8])], ended: &[u64]) {
    let mut writer = mcap::Writer::new(std::fs::File::create(path).unwrap()).unwrap();
    let metadata = BTreeMap::from([("peer".to_owned(), "127.0.0.1:1".to_owned())]);
    let channels: Vec<u16> = (1..=connections)
        .map(|id| {
            let topic = format!("ingest/packet_group/{id}");
            writer.add_channel(0, &topic, "application/octet-stream", &metadata).unwrap()
        })
        .collect();
    let schema = writer.add_schema("ringest.ConnectionEvent", "jsonschema", b"{}").unwrap();
    let events = writer.add_channel(schema, "ingest/connection_events", "json", &BTreeMap::new()).unwrap();
    let mut sequence = 0;
    let mut write = |writer: &mut mcap::Writer<std::fs::File>, channel_id: u16, data: &[u8]| {
        sequence += 1;
        let log_time = u64::from(sequence) * 10_000_000;
        let header = mcap::records::MessageHeader { channel_id, sequence, log_time, publish_time: 0 };
        writer.write_to_known_channel(&header, data).unwrap();
    };
    for (i, &(connection, data)) in messages.iter().enumerate() {
        write(&mut writer, channels[connection as usize - 1], data);
        let last = messages[i + 1..].iter().all(|&(c, _)| c != connection);
        if last && ended.contains(&connection) {
            let event =
                format!(r#"{{"event":"disconnected","connection_id":{connection},"reason":"peer_closed"}}"#);
            write(&mut writer, events, event.as_bytes());
        }
    }
    writer.finish().unwrap();
}

/// `ringest replay FILE ARGS` in the background.
fn replay(file: &Path, args: &[&str]) -> Background {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.arg("replay").arg(file).args(args);
    Background::spawn(command)
}

#[test]
fn replay_chooses_connections_and_says_how_many_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.mcap");
    let messages: &[(u64, &[u8])] =
        &[(1, b"one "), (2, b"two "), (3, b"three "), (1, b"1"), (2, b"2"), (3, b"3")];
    write_log_with_events(&path, 3, messages, &[]);
    for (args, expected) in [
        (&["--conn", "2"][..], &["two 2"][..]),
        (&["--topic", "ingest/packet_group/3", "--conn", "1"][..], &["one 1", "three 3"][..]),
        (&[][..], &["one 1", "two 2", "three 3"][..]),
    ] {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let mut replayer = replay(&path, &[&["--connect", &addr, "--max"][..], args].concat());
        let plan = replayer.line_starting("opening ");
        let topics: Vec<String> = expected
            .iter()
            .map(|bytes| {
                format!(
                    "ingest/packet_group/{}",
                    messages
                        .iter()
                        .position(|m| bytes.starts_with(std::str::from_utf8(m.1).unwrap()))
                        .unwrap()
                        + 1
                )
            })
            .collect();
        let opening = if expected.len() == 1 {
            "1 connection".to_owned()
        } else {
            format!("{} connections", expected.len())
        };
        assert_eq!(
            plan,
            format!("opening {opening}, one per logged connection: {}", topics.join(", ")),
            "{args:?}"
        );
        let mut received: Vec<String> = (0..expected.len())
            .map(|_| {
                let (mut stream, _) = server.accept().unwrap();
                let mut data = String::new();
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                stream.read_to_string(&mut data).unwrap();
                data
            })
            .collect();
        let (status, summary) = replayer.wait();
        assert!(status.success(), "{args:?}: {summary}");
        assert!(summary.contains(&format!("on {opening}")), "{args:?}: {summary}");
        received.sort();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(received, expected, "{args:?}");
        server.set_nonblocking(true).unwrap();
        assert!(server.accept().is_err(), "{args:?}: one connection too many");
    }
    let (code, stderr) = failure_of(
        Command::new(env!("CARGO_BIN_EXE_ringest")),
        &["replay", path.to_str().unwrap(), "--connect", "127.0.0.1:1", "--conn", "9"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("matches --conn or --topic"), "{stderr}");
}

#[test]
fn replay_listen_closes_each_stream_when_its_logged_connection_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sequential.mcap");
    let messages: &[(u64, &[u8])] = &[(1, b"first "), (1, b"client"), (2, b"second "), (2, b"client")];
    write_log_with_events(&path, 2, messages, &[1, 2]);
    let mut replayer = replay(&path, &["--listen", "127.0.0.1:0", "--max"]);
    let line = replayer.line_starting("listening on ");
    let addr: SocketAddr = line["listening on ".len()..].parse().unwrap();
    // One client after the other: each reads until its stream ends.
    for expected in ["first client", "second client"] {
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut data = String::new();
        client.read_to_string(&mut data).expect("the stream ends when its logged connection ended");
        assert_eq!(data, expected);
    }
    let (status, summary) = replayer.wait();
    assert!(status.success(), "{summary}");
    assert!(summary.starts_with("replayed 4 messages (25 B) on 2 connections"), "{summary}");
}

#[test]
fn log_and_replay_print_labelled_progress_lines_off_a_terminal() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("progress.mcap");
    let (engine, addr) = start_engine(&t.bus);
    let mut collector = Collector::attach(&t.bus, STAGE);
    let logger = Background::log(&t.bus, &[STAGE, "--seconds", "2.5", "--out", out.to_str().unwrap()]);
    send_and_wait(addr, &mut collector, sizes(&[10_000]));
    let (status, lines) = logger.wait_all();
    assert!(status.success(), "{lines:#?}");
    let progress: Vec<&String> = lines.iter().filter(|l| l.starts_with("progress: ")).collect();
    assert!(progress.len() >= 2, "a line a second: {lines:#?}");
    let summary = lines.last().unwrap();
    assert!(summary.contains(" from 1 connection and "), "singular: {summary}");
    let last = progress.last().unwrap();
    assert!(
        last.contains(" s elapsed, logged ")
            && last.contains(" packet")
            && last.ends_with(", lost 0 records"),
        "{last}"
    );
    engine.stop().unwrap();

    // 150 messages 10 ms apart: 1.5 s at the logged pace.
    let path = dir.path().join("paced.mcap");
    let messages: Vec<(u64, &[u8])> = (0..150).map(|i| (1 + i % 2, &b"tick"[..])).collect();
    write_log_with_events(&path, 2, &messages, &[]);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap().to_string();
    let replayer = replay(&path, &["--connect", &target]);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (mut stream, _) = server.accept().unwrap();
            std::thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()).unwrap())
        })
        .collect();
    let (status, lines) = replayer.wait_all();
    assert!(status.success(), "{lines:#?}");
    for reader in readers {
        assert_eq!(reader.join().unwrap(), 75 * 4);
    }
    let progress = lines.iter().find(|l| l.starts_with("progress: ")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        progress.contains(" s elapsed, replayed ") && progress.contains(" of 150 messages ("),
        "{progress}"
    );
}

#[test]
fn a_killed_logger_leaves_a_file_readable_up_to_its_last_chunk() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.mcap");
    let (engine, addr) = start_engine(&t.bus);
    let logger = Background::log(&t.bus, &[STAGE, "--lossless", "--out", out.to_str().unwrap()]);
    // About 5 MB/s for 2.5 s: the logger finishes a chunk at every 4 MiB and
    // at least once a second, so some chunks are complete and one is not.
    let data = random_bytes(7, 20 << 20);
    let mut client = TcpStream::connect(addr).unwrap();
    let peer = client.local_addr().unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        client.write_all(&data[sent..sent + 50_000]).unwrap();
        sent += 50_000;
        std::thread::sleep(Duration::from_millis(10));
    }
    logger.signal(rustix::process::Signal::KILL);
    let (status, _) = logger.wait();
    assert_eq!(status.signal(), Some(rustix::process::Signal::KILL.as_raw()), "{status}");
    drop(client);
    drop(engine);

    let summary = mcap_summary(&out, true);
    let (topic, t) = connections_by_peer(&summary).remove(&peer.to_string()).expect("the connection's topic");
    let bytes = t["bytes"].as_u64().unwrap() as usize;
    assert!(bytes > 0 && bytes <= sent, "{topic}: {bytes} of {sent} bytes");
    assert_eq!(t["sha256"], sha256_hex(&data[..bytes]), "{topic}: a prefix of what was sent");
}

#[test]
fn the_demo_checks_every_byte() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_ringest")).args(["demo", "--seconds", "2"]).output().unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("check:  OK, every byte sent is in the log (8 of 8"), "{stdout}");
    // Not on a terminal: plain progress lines, each figure labelled.
    let progress = stdout.lines().find(|l| l.starts_with("progress: ")).unwrap_or_else(|| panic!("{stdout}"));
    for label in [" s elapsed, received ", "/s, ", " packets in ", " groups, sent ", ", logged "] {
        assert!(progress.contains(label), "{label:?} not in {progress}");
    }
    // Its bus and its temporary log are gone.
    let after = |prefix: &str| -> PathBuf {
        let line = stdout.lines().find_map(|l| l.split_once(prefix)).expect(prefix).1;
        PathBuf::from(line.split([',', ' ']).next().unwrap())
    };
    assert!(!after("lossless, into ").exists());
    assert!(!after(", bus ").exists());
}

#[test]
fn bad_input_is_a_one_line_error() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mcap");
    write_log(&good, &[(1, 0, b"data"), (2, 1, b"more")]);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // A peer that reads everything and closes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::io::copy(&mut stream, &mut std::io::sink()).ok();
        }
    });
    let one_line = |args: &[&str], expected: &str| {
        let (code, stderr) = failure_of(ringest(&t.bus), args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("ringest: ") && stderr.contains(expected), "{args:?}: {stderr}");
    };

    one_line(&["replay", &path("missing.mcap"), "--connect", &peer], "cannot open");
    std::fs::write(path("garbage.mcap"), b"not an mcap file at all").unwrap();
    one_line(&["replay", &path("garbage.mcap"), "--connect", &peer], "not a valid MCAP log");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(path("truncated.mcap"), &bytes[..bytes.len() / 2]).unwrap();
    one_line(&["replay", &path("truncated.mcap"), "--connect", &peer], "not a valid MCAP log");
    one_line(&["replay", good.to_str().unwrap(), "--connect", "nowhere"], "invalid address nowhere");
    one_line(
        &["replay", good.to_str().unwrap(), "--connect", "127.0.0.1:1"],
        "cannot connect to 127.0.0.1:1",
    );
    one_line(&["replay", good.to_str().unwrap(), "--listen", "127.0.0.1:port"], "invalid address");
    one_line(&["log", "nosuch", "--out", &path("x.mcap")], "no stage or channel nosuch");
    one_line(&["log", "nosuch/packet_group", "--out", &path("x.mcap")], "no channel nosuch/packet_group");
    assert!(!dir.path().join("x.mcap").exists(), "no file without a channel");
    let (_engine, _) = start_engine(&t.bus);
    one_line(&["log", STAGE, "--out", &path("no/such/dir.mcap")], "cannot create");

    // Damaged files fail cleanly (exit 1), never with a panic (101).
    for seed in 0..40u64 {
        let mut damaged = bytes.clone();
        for noise in random_bytes(seed, 6).chunks(2) {
            let at = usize::from(u16::from_le_bytes([noise[0], noise[1]])) % damaged.len();
            damaged[at] ^= 0x5a;
        }
        std::fs::write(path("damaged.mcap"), &damaged).unwrap();
        let status = ringest(&t.bus)
            .args(["replay", &path("damaged.mcap"), "--connect", &peer, "--max"])
            .output()
            .unwrap()
            .status;
        assert!(matches!(status.code(), Some(0 | 1)), "seed {seed}: {status}");
    }

    for usage in [
        &["replay", good.to_str().unwrap()][..],
        &["replay", good.to_str().unwrap(), "--connect", &peer, "--listen", &peer],
        &["replay", good.to_str().unwrap(), "--connect", &peer, "--speed", "0"],
        &["replay", good.to_str().unwrap(), "--connect", &peer, "--speed", "2", "--max"],
        &["log", STAGE],
        &["log", STAGE, "--out", &path("y.mcap"), "--seconds", "-1"],
    ] {
        assert_eq!(failure_of(ringest(&t.bus), usage).0, 2, "{usage:?}");
    }
}
