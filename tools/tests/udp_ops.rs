//! The operating tools on UDP stages: `ringest tail`, `stats`, `ls`, `send`
//! and the metrics endpoint, through the real `ringest` binary.

mod common;

use std::net::SocketAddr;

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
