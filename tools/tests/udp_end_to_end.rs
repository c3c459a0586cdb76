//! UDP through the whole tool chain: `ringest loadgen --udp` into a real
//! UDP stage (the engine in-process on a private bus), `ringest log
//! --lossless`, `ringest replay --udp` into a second stage and its own
//! logger; every file checked per source against loadgen's sha256 by the
//! Python `mcap` package (`tests/mcap_summary.py`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, bus, random_bytes, ringest, text};
use engine::config::UdpConfig;
use engine::records;
use engine::{Engine, EngineHandle};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

const STAGE: &str = "lidar";

/// A UDP stage on 127.0.0.1, an OS-chosen port, the default receive path
/// and ring, and a kernel buffer for the bursts.
fn start_engine(bus: &BusDir, max_datagram_size_b: u64) -> (EngineHandle, SocketAddr) {
    let config = UdpConfig {
        name: STAGE.into(),
        address: "127.0.0.1:0".parse().unwrap(),
        kernel_receive_buffer_size_b: 16 << 20,
        max_datagram_size_b,
        ..Default::default()
    };
    let engine = Engine::new(bus.clone()).udp(config).start().unwrap();
    let addr = engine.wait_bound(STAGE, DEADLINE).expect("the stage binds");
    (engine, addr)
}

/// Counts the datagrams of a stage's packet_group from the oldest record.
struct Counter {
    reader: Reader,
    datagrams: u64,
}

impl Counter {
    fn attach(bus: &BusDir) -> Self {
        Self::attach_to(bus, STAGE)
    }

    fn attach_to(bus: &BusDir, stage: &str) -> Self {
        let options = ReaderOptions::gated().start(StartAt::Oldest);
        Self { reader: Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap(), datagrams: 0 }
    }

    /// Reads until `expected` datagrams were published.
    fn until(&mut self, expected: u64) {
        let deadline = Instant::now() + DEADLINE;
        while self.datagrams < expected {
            assert!(Instant::now() < deadline, "{} of {expected} datagrams published", self.datagrams);
            if let Some(Event::Record(sample)) = self.reader.recv_timeout(Duration::from_millis(50)).unwrap()
            {
                assert_eq!(sample.kind(), records::KIND_DATAGRAM_GROUP);
                self.datagrams += records::decode_datagram_group(sample.payload()).unwrap().len() as u64;
            }
        }
    }
}

/// A `ringest` process whose stdout is read line by line.
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
        let logger = Self::spawn(command);
        let line = logger.lines.recv_timeout(DEADLINE).expect("the logger starts");
        assert!(line.starts_with("recording "), "{line}");
        logger
    }

    fn wait(mut self) -> (ExitStatus, Vec<String>) {
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
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mcap_summary(path: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcap_summary.py");
    let output = common::python_with("mcap").arg(script).arg(path).output().unwrap();
    assert!(output.status.success(), "mcap_summary.py: {}", text(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], Value::Null, "{summary}");
    summary
}

/// The datagram topics of a summary: (bytes, sha256) by source address.
fn logged_sources(summary: &Value) -> BTreeMap<SocketAddr, (u64, String)> {
    logged_sources_of(summary, STAGE)
}

fn logged_sources_of(summary: &Value, stage: &str) -> BTreeMap<SocketAddr, (u64, String)> {
    summary["topics"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(topic, t)| {
            let source = topic.strip_prefix(&format!("{stage}/datagrams/"))?.parse().unwrap();
            Some((source, (t["bytes"].as_u64().unwrap(), t["sha256"].as_str().unwrap().to_owned())))
        })
        .collect()
}

/// What `ringest loadgen` printed per source: (bytes, sha256) by address,
/// and the datagrams in all.
fn loadgen_report(stdout: &str) -> (BTreeMap<SocketAddr, (u64, String)>, u64) {
    let mut sources = BTreeMap::new();
    let mut datagrams = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [address, "bytes", bytes, "datagrams", count, "sha256", sha] = fields[..] {
            sources.insert(address.parse().unwrap(), (bytes.parse().unwrap(), sha.to_owned()));
            datagrams += count.parse::<u64>().unwrap();
        }
    }
    (sources, datagrams)
}

/// An engine, a lossless logger into `out`, and `ringest loadgen --udp`
/// with `loadgen_args`; returns loadgen's report, once the logger ended
/// with the engine.
fn record_session(bus: &BusDir, out: &Path, loadgen_args: &[&str]) -> BTreeMap<SocketAddr, (u64, String)> {
    let (engine, addr) = start_engine(bus, 65_507);
    let mut counter = Counter::attach(bus);
    let logger = Background::log(bus, &[STAGE, "--lossless", "--out", out.to_str().unwrap()]);
    let mut loadgen = ringest(bus);
    loadgen.args(["loadgen", &addr.to_string(), "--udp"]).args(loadgen_args);
    let output = loadgen.output().unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let (sent, datagrams) = loadgen_report(&stdout);
    counter.until(datagrams);
    let stats = engine.udp_stats(STAGE);
    engine.stop().unwrap();
    let (status, lines) = logger.wait();
    let summary = lines.last().unwrap();
    assert!(status.success(), "{status}: {summary}");
    assert!(
        summary.starts_with(&format!("logged {datagrams} datagrams ("))
            && summary.contains(&format!(" from {} sources and ", sent.len()))
            && summary.contains(
                "; lost 0 records; 0 datagrams truncated (logged as kept); stopped by the channels ended"
            ),
        "{summary}; stats {stats:?}"
    );
    sent
}

#[test]
fn loadgen_sources_arrive_in_the_lossless_log_byte_for_byte() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lidar.mcap");
    let args = ["--sources", "4", "--size", "1-20000", "--rate", "2000", "--seconds", "1.5", "--seed", "7"];
    let sent = record_session(&t.bus, &out, &args);
    assert_eq!(sent.len(), 4);
    let summary = mcap_summary(&out);
    assert_eq!(logged_sources(&summary), sent, "per source: every byte, in order (sha256 of loadgen)");
    for source in sent.keys() {
        let topic = &summary["topics"][format!("{STAGE}/datagrams/{source}")];
        assert_eq!(topic["metadata"]["source"], source.to_string());
        assert_eq!(topic["channels"], 1, "one destination");
    }
    let stats = &summary["topics"][format!("{STAGE}/socket_stats")];
    assert_eq!(stats["schema_name"], "ringest.UdpSocketStats");
    let last = stats["json"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["total"]["kernel_drops"], 0, "{last}");

    // The kernel's receive time is the log time when the engine has it: no
    // later than the engine's (the publish time), and never after the next.
    let bytes = std::fs::read(&out).unwrap();
    let mut kernel_stamped = 0;
    let mut last_by_channel: HashMap<u16, u64> = HashMap::new();
    for message in mcap::MessageStream::new(&bytes).unwrap() {
        let message = message.unwrap();
        if !message.channel.topic.contains("/datagrams/") {
            continue;
        }
        assert!(message.log_time <= message.publish_time, "a kernel time after the engine's");
        kernel_stamped += u64::from(message.log_time < message.publish_time);
        let last = last_by_channel.entry(message.channel.id).or_default();
        assert!(message.log_time >= *last, "a source's kernel times go forward");
        *last = message.log_time;
    }
    assert!(kernel_stamped > 0, "kernel timestamps are on by default");
}

#[test]
fn log_replay_log_is_byte_exact_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.mcap"), dir.path().join("second.mcap"));
    let t = bus();
    let args = ["--sources", "3", "--size", "1-65000", "--rate", "600", "--seconds", "1", "--seed", "3"];
    let sent = record_session(&t.bus, &first, &args);

    // Replayed into a second engine, recorded by a second logger.
    let t2 = bus();
    let (engine, addr) = start_engine(&t2.bus, 65_507);
    let mut counter = Counter::attach(&t2.bus);
    let logger = Background::log(&t2.bus, &[STAGE, "--lossless", "--out", second.to_str().unwrap()]);
    let output = ringest(&t2.bus)
        .args(["replay", first.to_str().unwrap(), "--udp", &addr.to_string(), "--speed", "2"])
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains(" from 3 sources to "), "{stdout}");
    let datagrams: u64 = stdout.lines().last().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    counter.until(datagrams);
    engine.stop().unwrap();
    let (status, lines) = logger.wait();
    assert!(status.success(), "{lines:?}");

    // New source ports: compare the sources' contents.
    assert_eq!(contents(&logged_sources(&mcap_summary(&second))), contents(&sent));
}

#[test]
fn a_datagram_longer_than_the_stage_keeps_is_logged_cut_and_counted() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut.mcap");
    let (engine, addr) = start_engine(&t.bus, 1000);
    let mut counter = Counter::attach(&t.bus);
    let logger = Background::log(&t.bus, &[STAGE, "--lossless", "--out", out.to_str().unwrap()]);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (short, long) = (random_bytes(1, 500), random_bytes(2, 1500));
    for datagram in [&short, &long, &short] {
        sender.send_to(datagram, addr).unwrap();
    }
    counter.until(3);
    engine.stop().unwrap();
    let (status, lines) = logger.wait();
    let summary = lines.last().unwrap();
    assert!(status.success(), "{summary}");
    assert!(summary.contains("; 1 datagram truncated (logged as kept);"), "{summary}");
    let file = mcap_summary(&out);
    let source = sender.local_addr().unwrap();
    let topic = &file["topics"][format!("{STAGE}/datagrams/{source}")];
    let whole: Vec<u8> = [&short[..], &long[..1000], &short[..]].concat();
    assert_eq!(
        topic["sha256"],
        Sha256::digest(&whole).iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let cut: Vec<&Value> = file["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["truncated"] == "true")
        .collect();
    assert_eq!(cut.len(), 1, "{file}");
    assert_eq!((&cut[0]["count"], &cut[0]["bytes"]), (&1.into(), &1000.into()));
    assert_eq!(cut[0]["metadata"]["destination"], addr.to_string(), "IP_PKTINFO: the stage's address");
}

/// The contents of a set of sources, whatever their addresses: sorted
/// (bytes, sha256).
fn contents(sources: &BTreeMap<SocketAddr, (u64, String)>) -> Vec<(u64, String)> {
    let mut contents: Vec<(u64, String)> = sources.values().cloned().collect();
    contents.sort();
    contents
}

#[test]
fn ringest_run_with_the_table_loadgen_prints_logs_every_source() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.mcap");
    let table =
        ringest(&t.bus).args(["loadgen", "127.0.0.1:0", "--udp", "--print-default-config"]).output().unwrap();
    assert!(table.status.success(), "{}", text(&table.stderr));
    let mut daemon = common::Daemon::start(ringest(&t.bus), &text(&table.stdout));
    let addr: SocketAddr = daemon
        .stdout
        .iter()
        .find_map(|line| line.strip_prefix("stage udp: receiving UDP on "))
        .unwrap_or_else(|| panic!("no UDP stage in {:#?}", daemon.stdout))
        .parse()
        .unwrap();
    let mut counter = Counter::attach_to(&t.bus, "udp");
    let logger = Background::log(&t.bus, &["udp", "--lossless", "--out", out.to_str().unwrap()]);
    let output = ringest(&t.bus)
        .args(["loadgen", &addr.to_string(), "--udp", "--sources", "3", "--size", "1-8000"])
        .args(["--rate", "900", "--seconds", "1"])
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let (sent, datagrams) = loadgen_report(&stdout);
    counter.until(datagrams);
    assert!(daemon.stop().success());
    let (status, lines) = logger.wait();
    assert!(status.success(), "{lines:?}");
    assert_eq!(logged_sources_of(&mcap_summary(&out), "udp"), sent);
}

/// `tcpdump` (Debian package tcpdump; scripts/test installs it).
fn tcpdump() -> Command {
    match Command::new("tcpdump").arg("--version").output() {
        Ok(out) if out.status.success() => Command::new("tcpdump"),
        _ => panic!("tcpdump missing: run scripts/test (or apt-get install tcpdump)"),
    }
}

#[test]
fn a_tcpdump_capture_replays_every_payload_of_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("drive.pcap");
    // What loadgen sends goes to a socket that reads and drops it.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = vec![0; 65536];
        while sink.recv(&mut buf).is_ok() {}
    });
    let mut dump = tcpdump()
        .args(["-i", "lo", "-U", "-n", "-w", capture.to_str().unwrap()])
        .args(["udp", "and", "dst", "port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says "listening on lo" once it captures.
    let mut stderr = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("listening on lo"), "tcpdump: {line}");
    let output = Command::new(env!("CARGO_BIN_EXE_ringest"))
        .args(["loadgen", &format!("127.0.0.1:{port}"), "--udp", "--sources", "3", "--size", "1-60000"])
        .args(["--rate", "300", "--seconds", "1", "--seed", "11"])
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let (sent, datagrams) = loadgen_report(&stdout);
    // tcpdump writes each packet as it comes (-U): stop it once the file
    // holds them all.
    let deadline = Instant::now() + DEADLINE;
    let frame_bytes = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let expected = 24 + sent.values().map(|(bytes, _)| bytes).sum::<u64>() + datagrams * (16 + 14 + 20 + 8);
    while frame_bytes(&capture) < expected {
        assert!(Instant::now() < deadline, "tcpdump wrote {} of {expected} bytes", frame_bytes(&capture));
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(rustix::process::Pid::from_child(&dump), rustix::process::Signal::INT)
        .unwrap();
    assert!(dump.wait().unwrap().success());

    // Replayed into a socket that keeps what each source sent.
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20).unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let replay = Command::new(env!("CARGO_BIN_EXE_ringest"))
        .args(["replay", capture.to_str().unwrap(), "--udp", &receiver.local_addr().unwrap().to_string()])
        .args(["--speed", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut received: BTreeMap<SocketAddr, (u64, Sha256)> = BTreeMap::new();
    let mut buf = vec![0; 65536];
    while let Ok((len, from)) = receiver.recv_from(&mut buf) {
        let (bytes, sha) = received.entry(from).or_insert_with(|| (0, Sha256::new()));
        *bytes += len as u64;
        sha.update(&buf[..len]);
    }
    let output = replay.wait_with_output().unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.starts_with(&format!("sending {datagrams} datagrams from 3 sources")), "{stdout}");
    let received: BTreeMap<SocketAddr, (u64, String)> = received
        .into_iter()
        .map(|(from, (bytes, sha))| {
            (from, (bytes, sha.finalize().iter().map(|b| format!("{b:02x}")).collect()))
        })
        .collect();
    assert_eq!(contents(&received), contents(&sent), "every payload of every captured source, in order");
}
