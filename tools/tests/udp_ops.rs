//! The operating tools on UDP stages: `ringest tail`, `stats`, `ls`, `send`
//! and the metrics endpoint, through the real `ringest` binary.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use engine::records::{
    self, DatagramGroupWriter, DatagramMeta, FLAG_KERNEL_TIME, FLAG_TRUNCATED, ReceivePath,
    UdpSocketCounters, UdpSocketStats,
};
use serde_json::Value;
use shm_bus::{BusDir, ChannelOptions, Producer};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_lines(output: &str) -> Vec<Value> {
    output.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// A channel of `bus` with a producer that publishes what the test writes.
fn channel(bus: &BusDir, name: &str) -> Producer {
    Producer::create(bus, name, ChannelOptions { capacity: 1 << 20, ..Default::default() }).unwrap()
}

/// A datagram group record of `datagrams`.
fn datagram_group(datagrams: &[(DatagramMeta, &[u8])]) -> Vec<u8> {
    let longest = datagrams.iter().map(|(_, data)| data.len()).max().unwrap_or(0);
    let mut buf = vec![0; DatagramGroupWriter::capacity_for(datagrams.len(), longest)];
    let mut group = DatagramGroupWriter::new();
    for (meta, data) in datagrams {
        group.datagram_space(&mut buf)[..data.len()].copy_from_slice(data);
        group.commit_datagram(&mut buf, meta, data.len());
    }
    let len = group.close(&mut buf);
    buf.truncate(len);
    buf
}

fn addr(text: &str) -> records::Addr {
    text.parse::<SocketAddr>().unwrap().into()
}

#[test]
fn tail_prints_hand_made_datagram_groups_with_every_byte_and_flag() {
    let t = bus();
    let producer = channel(&t.bus, "lidar/packet_group");
    let mut shard = producer.shard(0).unwrap();
    let points = random_bytes(1, 1206);
    let sent = DatagramMeta {
        source: addr("192.168.1.201:2368"),
        destination: addr("239.1.2.3:2368"),
        rx_realtime_ns: 1_700_000_000_000_050_000,
        rx_monotonic_ns: 1,
        kernel_rx_ns: 1_700_000_000_000_040_000,
        flags: FLAG_KERNEL_TIME,
        original_len: 1206,
    };
    let cut = DatagramMeta { flags: FLAG_TRUNCATED, kernel_rx_ns: 0, original_len: 9000, ..sent };
    shard
        .send(records::KIND_DATAGRAM_GROUP, &datagram_group(&[(sent, &points), (cut, &points[..100])]))
        .unwrap();

    let json = stdout_of(
        ringest(&t.bus),
        &["tail", "lidar/packet_group", "--json", "--from", "oldest", "--count", "2", "--bytes", "65536"],
    );
    let lines = json_lines(&json);
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[0]["type"], "datagram");
    assert_eq!(lines[0]["data_hex"], hex(&points));
    assert_eq!(lines[0]["source"], "192.168.1.201:2368");
    assert_eq!(lines[0]["destination"], "239.1.2.3:2368");
    assert_eq!(lines[0]["kernel_time_ns"], 1_700_000_000_000_040_000u64);
    assert_eq!((&lines[0]["truncated"], &lines[0]["len"]), (&Value::Bool(false), &Value::from(1206)));
    assert_eq!(lines[1]["data_hex"], hex(&points[..100]));
    assert_eq!((&lines[1]["truncated"], &lines[1]["original_len"]), (&Value::Bool(true), &Value::from(9000)));
    assert_eq!(lines[1]["kernel_time_ns"], Value::Null);

    let text =
        stdout_of(ringest(&t.bus), &["tail", "lidar/packet_group", "--from", "oldest", "--count", "2"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "2023-11-14T22:13:20.000050Z  192.168.1.201:2368 -> 239.1.2.3:2368  1206 B  \
             kernel 2023-11-14T22:13:20.000040Z sw  {}…",
            hex(&points[..16])
        )
    );
    assert!(lines[1].contains("100 B  TRUNCATED (sent 9000 B)  "), "{text}");
}

fn udp_stats(sockets: Vec<UdpSocketCounters>) -> UdpSocketStats {
    UdpSocketStats {
        time_ns: 1_700_000_000_000_000_000,
        interval_ns: 1_000_000_000,
        receive_path: ReceivePath::IoUringMultishot,
        groups_published: 9,
        sockets,
    }
}

#[test]
fn stats_shows_a_hand_made_udp_stats_record_as_a_table_and_as_json() {
    let t = bus();
    let producer = channel(&t.bus, "cams/socket_stats");
    let mut shard = producer.shard(0).unwrap();
    let socket = |executor, datagrams, kernel_drops| UdpSocketCounters {
        executor,
        local: addr("0.0.0.0:5004"),
        datagrams,
        bytes: datagrams * 1400,
        kernel_drops,
        truncated: 2,
        ring_full_stalls: 1,
        max_datagram_size: 1400,
        kernel_receive_buffer_b: 1 << 20,
        ..Default::default()
    };
    let stats = udp_stats(vec![socket(0, 1000, 0), socket(1, 2000, 7)]);
    shard.send(records::KIND_UDP_SOCKET_STATS, &records::encode(&stats)).unwrap();

    let table = stdout_of(ringest(&t.bus), &["stats", "cams", "--count", "1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0], "cams  2023-11-14T22:13:20.000000Z  2 sockets, 9 groups (io_uring multishot recvmsg)",
        "{table}"
    );
    assert!(lines[1].starts_with("EXECUTOR  LOCAL") && lines[1].contains("KERNEL DROPS"), "{table}");
    let all: Vec<&str> = lines[4].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(all[0], "all", "{table}");
    assert_eq!(all[4..8], ["3000", "4.0 MiB", "7", "4"], "{table}");

    let json = stdout_of(ringest(&t.bus), &["stats", "cams", "--count", "1", "--json"]);
    let value: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(value["total"]["datagrams"], 3000);
    assert_eq!(value["total"]["kernel_drops"], 7);
    assert_eq!(value["sockets"][1]["local"], "0.0.0.0:5004");
    // The same record through tail.
    let tail = stdout_of(ringest(&t.bus), &["tail", "cams/socket_stats", "--json", "--count", "1"]);
    let mut tailed: Value = serde_json::from_str(tail.trim()).unwrap();
    assert_eq!(tailed["type"], "udp_socket_stats");
    tailed.as_object_mut().unwrap().remove("type");
    assert_eq!(tailed, value);
}

// End to end: a real `ringest run` with a `[[udp]]` table, real datagrams.

/// Room for a test's bursts in the kernel, whatever the engine's pace.
const RCVBUF: &str = "kernel_receive_buffer_size_b = 8388608\n";

/// A config with one UDP stage `stage` on an OS-chosen port, and `extra`
/// keys in its table.
fn udp_config(stage: &str, extra: &str) -> String {
    format!("[[udp]]\nname = \"{stage}\"\naddress = \"127.0.0.1:0\"\nring_size_b = 4194304\n{extra}")
}

/// The latest UdpSocketStats of `stage` that satisfies `done`; waits for
/// it up to [`DEADLINE`].
fn udp_stats_until(bus: &BusDir, stage: &str, done: impl Fn(&UdpSocketStats) -> bool) -> UdpSocketStats {
    let options = shm_bus::ReaderOptions::lossy().start(shm_bus::StartAt::Latest);
    let mut reader = shm_bus::Reader::attach(bus, &format!("{stage}/socket_stats"), options).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(shm_bus::Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(200)).unwrap()
        {
            assert_eq!(sample.kind(), records::KIND_UDP_SOCKET_STATS, "stage {stage} is not a UDP stage");
            let stats: UdpSocketStats = records::decode(sample.payload()).unwrap();
            if done(&stats) {
                return stats;
            }
            last = Some(stats);
        }
    }
    panic!("stage {stage}'s statistics never got there; the last: {last:#?}");
}

/// Where UDP stage `stage` receives: the address its sockets are bound to,
/// as its statistics say (port 0 resolved).
fn udp_stage_address(bus: &BusDir, stage: &str) -> SocketAddr {
    let stats = udp_stats_until(bus, stage, |s| !s.sockets.is_empty());
    SocketAddr::from(stats.sockets[0].local)
}

/// The datagrams of `<stage>/packet_group`, read losslessly from the oldest.
struct DatagramCollector {
    reader: shm_bus::Reader,
    /// (source, meta, data) in the order read.
    datagrams: Vec<(SocketAddr, DatagramMeta, Vec<u8>)>,
}

impl DatagramCollector {
    fn attach(bus: &BusDir, stage: &str) -> Self {
        let options = shm_bus::ReaderOptions::gated().start(shm_bus::StartAt::Oldest);
        let reader = shm_bus::Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap();
        Self { reader, datagrams: Vec::new() }
    }

    /// Reads until `count` datagrams arrived; panics after [`DEADLINE`].
    fn until(&mut self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.datagrams.len() < count {
            assert!(Instant::now() < deadline, "{} of {count} datagrams arrived", self.datagrams.len());
            if let Some(shm_bus::Event::Record(sample)) =
                self.reader.recv_timeout(Duration::from_millis(100)).unwrap()
            {
                assert_eq!(sample.kind(), records::KIND_DATAGRAM_GROUP);
                for d in records::decode_datagram_group(sample.payload()).unwrap() {
                    self.datagrams.push((SocketAddr::from(d.meta.source), d.meta, d.data.to_vec()));
                }
            }
        }
    }

    /// The data of the datagrams from `source`, in order.
    fn from(&self, source: SocketAddr) -> Vec<&[u8]> {
        self.datagrams.iter().filter(|(s, ..)| *s == source).map(|(.., data)| data.as_slice()).collect()
    }
}

/// Datagrams of random sizes in 0..=`max` (and always one of each bound).
fn random_datagrams(seed: u64, count: usize, max: usize) -> Vec<Vec<u8>> {
    let sizes = random_bytes(seed, count * 2);
    (0..count)
        .map(|i| {
            let len = match i {
                0 => max,
                1 => 0,
                _ => (usize::from(sizes[2 * i]) << 8 | usize::from(sizes[2 * i + 1])) % (max + 1),
            };
            random_bytes(seed * 1000 + i as u64, len)
        })
        .collect()
}

#[test]
fn tail_stats_and_ls_show_what_a_real_udp_stage_received_byte_for_byte_io_uring() {
    tail_stats_and_ls_show_what_a_udp_stage_received("io_uring", ReceivePath::IoUringMultishot);
}

#[test]
fn tail_stats_and_ls_show_what_a_real_udp_stage_received_byte_for_byte_read_path() {
    tail_stats_and_ls_show_what_a_udp_stage_received("glommio_read", ReceivePath::GlommioRead);
}

/// With the stage on receive path `path`: the two lay datagrams out
/// differently (slots with a gap before the data, or packed).
fn tail_stats_and_ls_show_what_a_udp_stage_received(path: &str, expected: ReceivePath) {
    let t = bus();
    let extra = format!("max_datagram_size_b = 2000\nreceive_path = \"{path}\"\n{RCVBUF}");
    let mut daemon = Daemon::start(ringest(&t.bus), &udp_config("u", &extra));
    let address = udp_stage_address(&t.bus, "u");
    let mut collector = DatagramCollector::attach(&t.bus, "u");
    let senders: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut sent: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let datagrams = random_datagrams(i as u64 + 1, 40, 2000);
        for datagram in &datagrams {
            sender.send_to(datagram, address).unwrap();
        }
        sent.push(datagrams);
    }
    // One longer than max_datagram_size_b: kept truncated, flagged, counted.
    let long = random_bytes(99, 3000);
    senders[0].send_to(&long, address).unwrap();
    collector.until(81);
    for (sender, datagrams) in senders.iter().zip(&sent) {
        let source = sender.local_addr().unwrap();
        let mut expected: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        if source == senders[0].local_addr().unwrap() {
            expected.push(&long[..2000]);
        }
        assert!(collector.from(source) == expected, "the datagrams of {source} differ");
    }

    // tail: every datagram, every byte, its addresses and flags.
    let json = stdout_of(
        ringest(&t.bus),
        &["tail", "u/packet_group", "--json", "--from", "oldest", "--count", "81", "--bytes", "65536"],
    );
    let lines = json_lines(&json);
    assert_eq!(lines.len(), 81, "{json}");
    for (line, (source, meta, data)) in lines.iter().zip(&collector.datagrams) {
        assert_eq!(line["type"], "datagram");
        assert_eq!(line["source"], source.to_string());
        assert_eq!(line["destination"], address.to_string());
        assert_eq!(line["data_hex"], hex(data));
        assert_eq!(line["time_ns"], meta.rx_realtime_ns);
        let kernel =
            line["kernel_time_ns"].as_u64().expect("a kernel receive time (kernel_timestamps is on)");
        assert!(kernel <= meta.rx_realtime_ns, "the kernel received it after the engine: {line}");
        assert_eq!(line["truncated"], data.len() == 2000 && meta.original_len == 3000, "{line}");
    }
    let truncated: Vec<&Value> = lines.iter().filter(|l| l["truncated"] == true).collect();
    assert_eq!(truncated.len(), 1, "{json}");
    assert_eq!(
        (&truncated[0]["original_len"], &truncated[0]["len"]),
        (&Value::from(3000), &Value::from(2000))
    );

    // stats: the same totals.
    let kept: usize = collector.datagrams.iter().map(|(.., data)| data.len()).sum();
    let stats = udp_stats_until(&t.bus, "u", |s| s.total().datagrams == 81);
    let total = stats.total();
    assert_eq!((total.bytes, total.truncated, total.kernel_drops), (kept as u64, 1, 0));
    assert_eq!(stats.receive_path, expected);
    let table = stdout_of(ringest(&t.bus), &["stats", "u", "--count", "1"]);
    let all = table.lines().find(|l| l.starts_with("all ")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = all.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(cells[4], "81", "{table}");
    let json = stdout_of(ringest(&t.bus), &["stats", "u", "--count", "1", "--json"]);
    let value: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&value["total"]["datagrams"], &value["total"]["truncated"]),
        (&81.into(), &1.into()),
        "{json}"
    );
    assert_eq!(value["sockets"][0]["local"], address.to_string());

    // ls: the stage's channels; its payload is the datagrams' bytes.
    let listing = stdout_of(ringest(&t.bus), &["ls"]);
    for channel in ["u/packet_group", "u/connection_events", "u/socket_stats"] {
        assert!(listing.lines().any(|l| l.starts_with(channel)), "{channel} missing: {listing}");
    }
    assert!(listing.contains("gated: received"), "the collector is not listed: {listing}");
    let info = shm_bus::channel_info(&t.bus, "u/packet_group").unwrap();
    assert_eq!(info.payload_bytes(), kept as u64, "payload bytes of u/packet_group");
    assert!(info.bytes_written() >= info.payload_bytes());
    assert!(daemon.stop().success());
}

/// `ringest send` with `input` on its stdin; its output.
fn send(bus: &BusDir, stage: &str, input: &[u8], extra: &[&str]) -> std::process::Output {
    let mut child = ringest(bus)
        .args(["send", stage])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    std::thread::spawn(move || stdin.write_all(&input));
    child.wait_with_output().unwrap()
}

fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0; 1 << 16];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    buf.truncate(n);
    (buf, from)
}

#[test]
fn send_sends_datagrams_to_the_address_given_or_to_the_stage_destination() {
    let t = bus();
    let commands = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sensor = UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = format!("egress_destination = \"{}\"\n", sensor.local_addr().unwrap());
    let mut daemon = Daemon::start(ringest(&t.bus), &udp_config("u", &extra));
    let address = udp_stage_address(&t.bus, "u");

    // Without --to: to egress_destination; --lines: a datagram per line.
    let output = send(&t.bus, "u", b"STATUS\r\n\nSTART 2\n", &["--lines", "--wait"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(said.ends_with("3 datagrams from stage u to its egress_destination: 3 delivered\n"), "{said}");
    let lines: Vec<(Vec<u8>, SocketAddr)> = (0..3).map(|_| receive(&sensor)).collect();
    let datagrams: Vec<&[u8]> = lines.iter().map(|(data, _)| data.as_slice()).collect();
    assert_eq!(datagrams, [&b"STATUS"[..], b"", b"START 2"]);
    assert!(lines.iter().all(|(_, from)| *from == address), "not sent from the stage's own socket");

    let to = commands.local_addr().unwrap().to_string();
    let big = random_bytes(3, 65_000);
    let output = send(&t.bus, "u", &big, &["--to", &to]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert_eq!(said, format!("sent 65000 bytes in 1 datagram from stage u to {to}: 1 delivered\n"));
    let (got, from) = receive(&commands);
    assert!(got == big, "the datagram differs");
    assert_eq!(from, address, "not sent from the stage's own socket");

    // The stage counted them, and the records are on the bus for any reader
    // (each `ringest send` publishes a new egress channel: the last one's).
    let stats = udp_stats_until(&t.bus, "u", |s| s.total().egress_sent == 4);
    assert_eq!(stats.total().egress_drops, 0);
    let egress = stdout_of(
        ringest(&t.bus),
        &["tail", "u/egress_packets", "--json", "--from", "oldest", "--count", "1", "--bytes", "4"],
    );
    let egress: Value = serde_json::from_str(egress.trim()).unwrap();
    assert_eq!(egress["type"], "datagram_egress");
    assert_eq!((&egress["destination"], &egress["len"]), (&Value::from(to.clone()), &65000.into()));
    assert_eq!(egress["data_hex"], hex(&big[..4]));
    let outcomes =
        stdout_of(ringest(&t.bus), &["tail", "u/egress_outcomes", "--from", "oldest", "--count", "4"]);
    assert_eq!(outcomes.lines().filter(|l| l.ends_with("B: delivered")).count(), 4, "{outcomes}");
    assert!(daemon.stop().success());
}

#[test]
fn send_fails_clearly_when_a_datagram_cannot_go_or_the_options_do_not_fit_the_stage() {
    let t = bus();
    let config = format!("{}\n{}", udp_config("u", ""), server_config("tcp"));
    let mut daemon = Daemon::start(ringest(&t.bus), &config);
    udp_stage_address(&t.bus, "u");
    let fails = |stage: &str, input: &[u8], extra: &[&str], needles: &[&str]| {
        let output = send(&t.bus, stage, input, extra);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{extra:?}: {needle:?} not in {stderr}");
        }
    };
    // No egress_destination and no --to: the stage drops it, and says so.
    fails("u", b"hello", &[], &["1 of stage u's datagrams not sent", "1 with no destination (no --to"]);
    fails("u", b"hello", &["--conn", "1"], &["stage u is a UDP stage: it has no connections"]);
    fails("u", &[0; 70_000], &["--to", "127.0.0.1:9"], &["a datagram holds at most 65527 bytes"]);
    fails("u", b"x", &["--to", "nowhere"], &["--to nowhere: not an ip:port or host:port"]);
    fails(
        "tcp",
        b"hello",
        &["--to", "127.0.0.1:9"],
        &["stage tcp is a TCP stage: --to and --lines are for UDP"],
    );
    let stats = udp_stats_until(&t.bus, "u", |s| s.total().egress_drops == 1);
    assert_eq!(stats.total().egress_sent, 0);
    assert!(daemon.stop().success());
}
