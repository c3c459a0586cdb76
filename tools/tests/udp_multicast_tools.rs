//! `ringest loadgen --udp` and `ringest replay --udp` to a multicast group,
//! inside a network namespace the test makes (loopback with multicast on
//! and a route for 224.0.0.0/4): a `ringest run` stage with the table
//! `loadgen --print-default-config` prints for the group receives every
//! source's datagrams, logged losslessly; the log replayed to the group
//! reaches a second stage byte for byte. Needs root (CI runs as root);
//! elsewhere it says why it skips.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon, bus, text};
use engine::records;
use serde_json::Value;
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

/// A network namespace of the test, deleted when dropped.
struct Namespace(String);

impl Namespace {
    /// Loopback up, multicast on, groups routed to it; `None` (with the
    /// reason printed) where this host does not let the test make one.
    fn new() -> Option<Self> {
        let name = format!("ringest-mcast-tools-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).output();
        match ip(&["netns", "add", &name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("skipped: cannot make a network namespace (needs root): {}", text(&out.stderr));
                return None;
            }
            Err(e) => {
                eprintln!("skipped: cannot run `ip` ({e}): apt-get install iproute2");
                return None;
            }
        }
        let namespace = Self(name);
        for step in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let out = ip(&[&["-n", namespace.0.as_str()][..], step].concat()).unwrap();
            assert!(out.status.success(), "ip {step:?}: {}", text(&out.stderr));
        }
        Some(namespace)
    }

    /// `ringest` inside the namespace, told about `bus`.
    fn ringest(&self, bus: &BusDir) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_ringest")]);
        command.env("RINGEST_BUS", bus.path()).env_remove("RUST_LOG");
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ringest log STAGE --lossless`, once it records.
struct Logger(Child, mpsc::Receiver<String>);

impl Logger {
    fn start(bus: &BusDir, stage: &str, out: &Path) -> Self {
        let mut child = common::ringest(bus)
            .args(["log", stage, "--lossless", "--out", out.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|line| tx.send(line)));
        let first = lines.recv_timeout(DEADLINE).unwrap();
        assert!(first.starts_with("recording "), "{first}");
        Self(child, lines)
    }

    /// Waits for the end (the stage stopped); returns the summary line.
    fn summary(mut self) -> String {
        let status = self.0.wait().unwrap();
        let last = self.1.iter().last().unwrap_or_default();
        assert!(status.success(), "{last}");
        last
    }
}

/// Waits until `stage` published `datagrams` datagrams.
fn wait_published(bus: &BusDir, stage: &str, datagrams: u64) {
    let options = ReaderOptions::lossy().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap();
    let (mut seen, deadline) = (0, Instant::now() + DEADLINE);
    while seen < datagrams {
        assert!(Instant::now() < deadline, "{stage}: {seen} of {datagrams} datagrams");
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap() {
            seen += records::decode_datagram_group(sample.payload()).map_or(0, |d| d.len() as u64);
        }
    }
}

/// (bytes, sha256) per datagram topic of `stage` in the log at `path`,
/// read by the Python `mcap` package; sorted, whatever the sources.
fn logged_contents(path: &Path, stage: &str) -> Vec<(u64, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcap_summary.py");
    let output = common::python_with("mcap").arg(script).arg(path).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], Value::Null);
    let mut contents: Vec<(u64, String)> = summary["topics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(topic, _)| topic.starts_with(&format!("{stage}/datagrams/")))
        .map(|(_, t)| (t["bytes"].as_u64().unwrap(), t["sha256"].as_str().unwrap().to_owned()))
        .collect();
    contents.sort();
    contents
}

const GROUP: &str = "239.77.1.1";

/// `ringest run` in the namespace with the stage table loadgen prints for
/// the group on `port`, renamed `stage`.
fn group_stage(namespace: &Namespace, bus: &BusDir, stage: &str, port: u16) -> Daemon {
    let table = namespace
        .ringest(bus)
        .args(["loadgen", &format!("{GROUP}:{port}"), "--udp", "--print-default-config"])
        .output()
        .unwrap();
    assert!(table.status.success(), "{}", text(&table.stderr));
    let config = text(&table.stdout).replace("name = \"udp\"", &format!("name = \"{stage}\""));
    assert!(config.contains(&format!("multicast_groups = [\"{GROUP}\"]")), "{config}");
    let daemon = Daemon::start(namespace.ringest(bus), &config);
    let joined = format!("stage {stage}: receiving UDP on 0.0.0.0:{port}, joined {GROUP}");
    assert!(daemon.stdout.contains(&joined), "{:#?}", daemon.stdout);
    daemon
}

#[test]
fn loadgen_and_replay_reach_a_multicast_group() {
    let Some(namespace) = Namespace::new() else { return };
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.mcap"), dir.path().join("second.mcap"));

    let mut daemon = group_stage(&namespace, &t.bus, "group", 5600);
    let logger = Logger::start(&t.bus, "group", &first);
    let output = namespace
        .ringest(&t.bus)
        .args(["loadgen", &format!("{GROUP}:5600"), "--udp", "--sources", "3", "--size", "1-1400"])
        .args(["--rate", "600", "--seconds", "1", "--multicast-interface", "lo"])
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let mut sent: Vec<(u64, String)> = Vec::new();
    let mut datagrams = 0;
    let mut sources: BTreeMap<SocketAddr, ()> = BTreeMap::new();
    for line in stdout.lines() {
        if let [address, "bytes", bytes, "datagrams", count, "sha256", sha] =
            line.split_whitespace().collect::<Vec<_>>()[..]
        {
            sources.insert(address.parse().unwrap(), ());
            sent.push((bytes.parse().unwrap(), sha.to_owned()));
            datagrams += count.parse::<u64>().unwrap();
        }
    }
    sent.sort();
    assert_eq!(sources.len(), 3, "{stdout}");
    wait_published(&t.bus, "group", datagrams);
    assert!(daemon.stop().success());
    let summary = logger.summary();
    assert!(summary.starts_with(&format!("logged {datagrams} datagrams")), "{summary}");
    assert_eq!(logged_contents(&first, "group"), sent, "every source's datagrams, in order");

    // The log replayed to the group reaches a second stage.
    let mut daemon = group_stage(&namespace, &t.bus, "again", 5601);
    let logger = Logger::start(&t.bus, "again", &second);
    let output = namespace
        .ringest(&t.bus)
        // Paced: at --max a burst would overflow the stage's default kernel
        // buffer (UDP cannot push back).
        .args(["replay", first.to_str().unwrap(), "--udp", &format!("{GROUP}:5601"), "--speed", "2"])
        .args(["--multicast-interface", "127.0.0.1", "--multicast-ttl", "2"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
    wait_published(&t.bus, "again", datagrams);
    assert!(daemon.stop().success());
    logger.summary();
    assert_eq!(logged_contents(&second, "again"), sent);
}
