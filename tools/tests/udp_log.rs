//! `ringest log` on a UDP stage's channels, fed with records published by
//! hand into a private bus (what the engine's UDP stage publishes: datagram
//! groups, UDP socket statistics), each file checked by the Python `mcap`
//! package (`tests/mcap_summary.py`) and the Rust `mcap` crate.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, bus, random_bytes, ringest, text};
use engine::records::{
    self, DatagramGroupWriter, DatagramMeta, FLAG_KERNEL_TIME, FLAG_TRUNCATED, ReceivePath,
    UdpSocketCounters, UdpSocketStats,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, ChannelOptions, Producer, ShardWriter};

const STAGE: &str = "cam";

/// A UDP stage's three channels, published by hand.
struct FakeUdpStage {
    packets: (Producer, ShardWriter),
    stats: (Producer, ShardWriter),
    events: Producer,
}

impl FakeUdpStage {
    fn create(bus: &BusDir) -> Self {
        let options = || ChannelOptions { capacity: 1 << 20, ..Default::default() };
        let channel = |suffix: &str| {
            let producer = Producer::create(bus, &format!("{STAGE}/{suffix}"), options()).unwrap();
            let shard = producer.shard(0).unwrap();
            (producer, shard)
        };
        let packets = channel("packet_group");
        let stats = channel("socket_stats");
        let events = Producer::create(bus, &format!("{STAGE}/connection_events"), options()).unwrap();
        Self { packets, stats, events }
    }

    /// Publishes one datagram group of `datagrams` (metadata, bytes kept).
    fn publish_group(&mut self, datagrams: &[(DatagramMeta, Vec<u8>)]) {
        let largest = datagrams.iter().map(|(_, data)| data.len()).max().unwrap_or(0);
        let mut buf = vec![0; DatagramGroupWriter::capacity_for(datagrams.len(), largest)];
        let mut group = DatagramGroupWriter::new();
        for (meta, data) in datagrams {
            group.datagram_space(&mut buf)[..data.len()].copy_from_slice(data);
            group.commit_datagram(&mut buf, meta, data.len());
        }
        let len = group.close(&mut buf);
        let writer = &mut self.packets.1;
        let mut reservation = writer.reserve_timeout(len, DEADLINE).unwrap();
        reservation.buf()[..len].copy_from_slice(&buf[..len]);
        reservation.commit(len, records::KIND_DATAGRAM_GROUP);
        writer.publish();
    }

    fn publish_stats(&mut self, stats: &UdpSocketStats) {
        self.stats.1.send(records::KIND_UDP_SOCKET_STATS, &records::encode(stats)).unwrap();
    }

    /// Ends the three channels, as a stopping engine does.
    fn end(self) {
        self.packets.0.end();
        self.stats.0.end();
        self.events.end();
    }
}

fn meta(source: &str, destination: Option<&str>, data_len: usize) -> DatagramMeta {
    let now = shm_bus::realtime_ns();
    DatagramMeta {
        source: source.parse::<SocketAddr>().unwrap().into(),
        destination: destination.map(|d| d.parse::<SocketAddr>().unwrap().into()).unwrap_or_default(),
        rx_realtime_ns: now,
        rx_monotonic_ns: 1,
        kernel_rx_ns: 0,
        flags: 0,
        original_len: data_len as u32,
    }
}

/// A `ringest log` process, once it is recording.
struct Logger {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Logger {
    fn start(bus: &BusDir, args: &[&str]) -> Self {
        let mut child = ringest(bus).arg("log").args(args).stdout(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|line| tx.send(line)));
        let first = lines.recv_timeout(DEADLINE).expect("the logger starts");
        assert!(first.starts_with("recording "), "{first}");
        Self { child, lines }
    }

    /// Waits for the exit; returns the status and the summary line.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the logger did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.lines.iter().last().unwrap_or_default())
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mcap_summary(path: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcap_summary.py");
    let output = common::python_with("mcap").arg(script).arg(path).output().unwrap();
    assert!(output.status.success(), "mcap_summary.py: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn datagrams_are_logged_one_topic_per_source_one_channel_per_destination() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("udp.mcap");
    let mut stage = FakeUdpStage::create(&t.bus);
    let logger = Logger::start(&t.bus, &[STAGE, "--lossless", "--out", out.to_str().unwrap()]);

    let lidar = "10.0.0.1:5000";
    let camera = "[fe80::1]:6000";
    // Per source, what it sent in order: the lidar to a multicast group and
    // to the stage's own address, the camera without a known destination,
    // one of its datagrams cut by the stage (1,000 of 1,500 bytes kept).
    let mut sent: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut expected_times = Vec::new();
    for round in 0..20u64 {
        let mut group = Vec::new();
        for (i, (source, destination)) in
            [(lidar, Some("239.1.2.3:2368")), (lidar, Some("127.0.0.1:2368")), (camera, None)]
                .iter()
                .enumerate()
        {
            let data = random_bytes(round * 3 + i as u64, 1 + (round as usize * 97 + i * 31) % 1400);
            let mut meta = meta(source, *destination, data.len());
            if *source == lidar {
                // The kernel's time, a little before the engine's.
                meta.flags |= FLAG_KERNEL_TIME;
                meta.kernel_rx_ns = meta.rx_realtime_ns - 1000 - round;
            }
            if *source == camera && round == 7 {
                meta.flags |= FLAG_TRUNCATED;
                meta.original_len = data.len() as u32 + 500;
            }
            expected_times
                .push((meta.kernel_time().map_or(meta.rx_realtime_ns, |(k, _)| k), meta.rx_realtime_ns));
            sent.entry(source).or_default().extend_from_slice(&data);
            group.push((meta, data));
        }
        stage.publish_group(&group);
    }
    let counters =
        UdpSocketCounters { executor: 0, datagrams: 60, truncated: 1, kernel_drops: 3, ..Default::default() };
    let stats = UdpSocketStats {
        time_ns: shm_bus::realtime_ns(),
        interval_ns: 1_000_000_000,
        receive_path: ReceivePath::IoUringMultishot,
        groups_published: 20,
        sockets: vec![counters],
    };
    stage.publish_stats(&stats);
    stage.end();
    let (status, summary) = logger.wait();
    assert!(status.success(), "{status}: {summary}");
    assert!(
        summary.starts_with("logged 60 datagrams (")
            && summary.contains(" in 20 groups) from 2 sources and 1 event and stats message into ")
            && summary.contains(
                "; lost 0 records; 1 datagram truncated (logged as kept); stopped by the channels ended"
            ),
        "{summary}"
    );

    let file = mcap_summary(&out);
    assert_eq!(file["error"], Value::Null, "{file}");
    for (source, data) in &sent {
        let topic = &file["topics"][format!("{STAGE}/datagrams/{source}")];
        assert_eq!(topic["sha256"], sha256_hex(data), "{source}: every datagram, in order");
        assert_eq!(topic["count"], if *source == lidar { 40 } else { 20 }, "{source}");
        assert_eq!(topic["message_encoding"], "application/octet-stream");
        assert_eq!(topic["channels"], 2, "{source}");
    }
    let metadata: Vec<&Value> = file["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["topic"].as_str().unwrap().contains("/datagrams/"))
        .map(|c| &c["metadata"])
        .collect();
    let expected = [
        serde_json::json!({"source": lidar, "destination": "239.1.2.3:2368"}),
        serde_json::json!({"source": lidar, "destination": "127.0.0.1:2368"}),
        serde_json::json!({"source": camera}),
        serde_json::json!({"source": camera, "truncated": "true"}),
    ];
    assert_eq!(metadata.len(), expected.len(), "{metadata:?}");
    for channel in &expected {
        assert!(metadata.contains(&channel), "no channel {channel} in {metadata:?}");
    }
    let stats_topic = &file["topics"][format!("{STAGE}/socket_stats")];
    assert_eq!(stats_topic["schema_name"], "ringest.UdpSocketStats");
    assert_eq!(stats_topic["json"][0]["total"]["kernel_drops"], 3);
    assert_eq!(stats_topic["json"][0]["sockets"][0]["truncated"], 1);

    // Log time: the kernel's when the datagram had it, else the engine's;
    // publish time: the engine's.
    let bytes = std::fs::read(&out).unwrap();
    let times: Vec<(u64, u64)> = mcap::MessageStream::new(&bytes)
        .unwrap()
        .map(Result::unwrap)
        .filter(|m| m.channel.topic.contains("/datagrams/"))
        .map(|m| (m.log_time, m.publish_time))
        .collect();
    assert_eq!(times, expected_times);
}

#[test]
fn an_undecodable_datagram_group_is_skipped_and_counted() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.mcap");
    let mut stage = FakeUdpStage::create(&t.bus);
    let logger = Logger::start(&t.bus, &[STAGE, "--out", out.to_str().unwrap()]);
    let good = vec![(meta("127.0.0.1:9", None, 3), b"abc".to_vec())];
    stage.publish_group(&good);
    // A group of version 9, and a record of a kind no stage publishes.
    stage.packets.1.send(records::KIND_DATAGRAM_GROUP, &[9, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    stage.packets.1.send(42, &[0; 8]).unwrap();
    stage.publish_group(&good);
    stage.end();
    let (status, summary) = logger.wait();
    assert!(status.success(), "{summary}");
    assert!(
        summary
            .starts_with("logged 2 datagrams (6 B in 2 groups) from 1 source and 0 event and stats messages")
            && summary.contains("; 0 datagrams truncated (logged as kept); skipped 2 records undecodable;"),
        "{summary}"
    );
}
