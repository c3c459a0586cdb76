//! `ringest tail`: a channel's records as they arrive, decoded by kind
//! (TCP packets, UDP datagrams, connection events, socket stats of TCP and
//! UDP stages, egress), as text or JSON lines. A lossy reader: it never
//! slows the engine, and says what it lost.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::Duration;

use clap::ValueEnum;
use engine::EGRESS_OUTCOMES;
use engine::records::{
    self, Addr, ConnectionEvent, DatagramMeta, DisconnectReason, EgressOutcome, PacketMeta, SocketStats,
    UdpSocketStats,
};
use serde_json::{Value, json};
use shm_bus::{BusDir, Reader, ReaderOptions, StartAt};

use crate::follow::follow;
use crate::human;
use crate::log::json::{self as record_json, reason_name};
use crate::stage_kind::StageKind;

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The channel, like ingest/packet_group (`ringest ls` lists them).
    channel: String,
    /// Exits after printing this many packets, datagrams, events,
    /// statistics or egress records (a group record prints a line per
    /// packet or datagram; notices of lost records do not count).
    #[arg(long, value_name = "N")]
    count: Option<NonZeroU64>,
    /// Prints JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Where to start: the oldest record the ring still holds, or the newest.
    #[arg(long, value_enum, default_value_t = Start::Newest)]
    from: Start,
    /// Bytes of each packet's (or datagram's, or egress record's) data
    /// shown, in hex.
    #[arg(long, value_name = "N", default_value_t = 16)]
    bytes: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Start {
    Oldest,
    Newest,
}

pub fn run(args: TailArgs, bus: &BusDir) -> anyhow::Result<()> {
    let start = match args.from {
        Start::Oldest => StartAt::Oldest,
        Start::Newest => StartAt::Latest,
    };
    let mut reader = Reader::attach(bus, &args.channel, ReaderOptions::lossy().start(start))?;
    // Egress outcomes do not say whether they answer datagrams or
    // connection writes; the stage's statistics do (if it has published
    // any yet: the wording only is at stake, so do not wait).
    let udp_outcomes = args.channel.strip_suffix(&format!("/{EGRESS_OUTCOMES}")).is_some_and(|stage| {
        matches!(StageKind::detect(bus, stage, Duration::ZERO), Ok(Some(StageKind::Udp)))
    });
    let mut out = std::io::stdout().lock();
    let count = args.count.map(NonZeroU64::get);
    let mut printed = 0;
    follow(&mut reader, count, |sample| {
        let mut items = Vec::new();
        if sample.lost_before() > 0 {
            items.push(Item::Lost(sample.lost_before()));
        }
        let mut decoded = decode(sample.kind(), sample.timestamp_ns(), sample.payload(), args.bytes);
        if udp_outcomes {
            for item in &mut decoded {
                if let Item::Outcome { udp, .. } = item {
                    *udp = true;
                }
            }
        }
        // The producer may have overwritten the record while we decoded it.
        items.extend(if sample.is_valid() { decoded } else { vec![Item::Lost(1)] });
        drop(sample);
        let mut shown = 0;
        for item in &items {
            if count.is_some_and(|n| printed == n) {
                break; // the rest of a group past --count
            }
            let line = if args.json { item.json().to_string() } else { item.text() };
            writeln!(out, "{line}")?;
            if !matches!(item, Item::Lost(_)) {
                printed += 1;
                shown += 1;
            }
        }
        Ok(shown)
    })
}

/// One thing to print: a record, or one packet of a group record.
#[derive(Debug)]
enum Item {
    Packet {
        meta: PacketMeta,
        len: usize,
        head: Vec<u8>,
    },
    /// One datagram of a datagram group (UDP stage).
    Datagram {
        meta: DatagramMeta,
        len: usize,
        head: Vec<u8>,
    },
    Event(ConnectionEvent),
    Stats(SocketStats),
    UdpStats(UdpSocketStats),
    Egress {
        time_ns: u64,
        target: Option<u64>,
        len: usize,
        head: Vec<u8>,
    },
    /// A datagram to send (UDP stage); `None`: to its egress_destination.
    DatagramEgress {
        time_ns: u64,
        destination: Option<Addr>,
        len: usize,
        head: Vec<u8>,
    },
    Outcome {
        time_ns: u64,
        outcome: EgressOutcome,
        /// Whether a UDP stage sent it (one datagram, no connections).
        udp: bool,
    },
    /// A record of a kind this tool does not know, or that did not decode.
    Other {
        time_ns: u64,
        kind: u16,
        len: usize,
        head: Vec<u8>,
        error: Option<String>,
    },
    /// Records overwritten before they were read.
    Lost(u64),
}

/// The items of one record, with at most `head_len` bytes of data each.
fn decode(kind: u16, time_ns: u64, payload: &[u8], head_len: usize) -> Vec<Item> {
    let head = |data: &[u8]| data[..data.len().min(head_len)].to_vec();
    let decoded = match kind {
        records::KIND_PACKET_GROUP => records::decode_group(payload).map(|packets| {
            packets.map(|p| Item::Packet { meta: p.meta, len: p.data.len(), head: head(p.data) }).collect()
        }),
        records::KIND_DATAGRAM_GROUP => records::decode_datagram_group(payload).map(|datagrams| {
            datagrams
                .map(|d| Item::Datagram { meta: d.meta, len: d.data.len(), head: head(d.data) })
                .collect()
        }),
        records::KIND_CONNECTION_EVENT => records::decode(payload).map(|event| vec![Item::Event(event)]),
        records::KIND_SOCKET_STATS => records::decode(payload).map(|stats| vec![Item::Stats(stats)]),
        records::KIND_UDP_SOCKET_STATS => records::decode(payload).map(|stats| vec![Item::UdpStats(stats)]),
        records::KIND_EGRESS => records::decode_egress(payload).map(|(header, data)| {
            vec![Item::Egress { time_ns, target: header.target, len: data.len(), head: head(data) }]
        }),
        records::KIND_DATAGRAM_EGRESS => records::decode_datagram_egress(payload).map(|(header, data)| {
            let destination = header.destination;
            vec![Item::DatagramEgress { time_ns, destination, len: data.len(), head: head(data) }]
        }),
        records::KIND_EGRESS_OUTCOME => {
            records::decode(payload).map(|outcome| vec![Item::Outcome { time_ns, outcome, udp: false }])
        }
        _ => Ok(vec![Item::Other { time_ns, kind, len: payload.len(), head: head(payload), error: None }]),
    };
    decoded.unwrap_or_else(|e| {
        vec![Item::Other {
            time_ns,
            kind,
            len: payload.len(),
            head: head(payload),
            error: Some(e.to_string()),
        }]
    })
}

impl Item {
    fn text(&self) -> String {
        match self {
            Self::Packet { meta, len, head } => format!(
                "{}  conn {}  {}  {len} B  {}",
                human::utc(meta.rx_realtime_ns),
                meta.connection_id,
                SocketAddr::from(meta.peer),
                hex_head(head, *len),
            ),
            Self::Datagram { meta, len, head } => {
                let mut notes = String::new();
                if meta.truncated() {
                    notes += &format!("  TRUNCATED (sent {} B)", meta.original_len);
                }
                if meta.flags & records::FLAG_CONTROL_TRUNCATED != 0 {
                    notes += "  CONTROL_TRUNCATED";
                }
                if let Some((kernel_ns, hardware)) = meta.kernel_time() {
                    let clock = if hardware { "hw" } else { "sw" };
                    notes += &format!("  kernel {} {clock}", human::utc(kernel_ns));
                }
                format!(
                    "{}  {} -> {}  {len} B{notes}  {}",
                    human::utc(meta.rx_realtime_ns),
                    SocketAddr::from(meta.source),
                    destination_text(&meta.destination),
                    hex_head(head, *len),
                )
            }
            Self::Event(ConnectionEvent::Connected { connection_id, time_ns, peer, local }) => format!(
                "{}  conn {connection_id}  connected: peer {}, local {}",
                human::utc(*time_ns),
                SocketAddr::from(*peer),
                SocketAddr::from(*local),
            ),
            Self::Event(ConnectionEvent::Disconnected {
                connection_id,
                time_ns,
                bytes_in,
                bytes_out,
                reason,
            }) => {
                let reason = match reason {
                    DisconnectReason::Error(text) => format!("error: {text}"),
                    other => reason_name(other).replace('_', " "),
                };
                format!(
                    "{}  conn {connection_id}  disconnected ({reason}): {bytes_in} B in, {bytes_out} B out",
                    human::utc(*time_ns),
                )
            }
            Self::Stats(stats) => {
                let (stage, traffic) = (&stats.stage, &stats.stage.traffic);
                format!(
                    "{}  stats: {} open, {} rejected, in {}/s ({} packets/s), out {}/s, {} groups, {} stalls",
                    human::utc(stats.time_ns),
                    stage.open_connections,
                    stage.rejected_connections,
                    human::bytes(traffic.bytes_received_per_s),
                    human::count(traffic.packets_received_per_s),
                    human::bytes(traffic.bytes_sent_per_s),
                    stage.groups_published,
                    stage.backpressure_stalls,
                )
            }
            Self::UdpStats(stats) => {
                let total = stats.total();
                format!(
                    "{}  udp stats: {}, in {}/s ({} datagrams/s), {} datagrams, {} kernel drops, {} truncated, \
                     {} ring-full stalls, egress {} sent, {} dropped, {} groups",
                    human::utc(stats.time_ns),
                    human::plural(stats.sockets.len() as u64, "socket"),
                    human::bytes(total.bytes_per_s),
                    human::count(total.datagrams_per_s),
                    total.datagrams,
                    total.kernel_drops,
                    total.truncated,
                    total.ring_full_stalls,
                    total.egress_sent,
                    total.egress_drops,
                    stats.groups_published,
                )
            }
            Self::Egress { time_ns, target, len, head } => {
                let to = target.map_or("every connection".to_owned(), |id| format!("conn {id}"));
                format!("{}  egress to {to}  {len} B  {}", human::utc(*time_ns), hex_head(head, *len))
            }
            Self::DatagramEgress { time_ns, destination, len, head } => {
                let to = destination
                    .map_or("the stage's egress_destination".to_owned(), |a| SocketAddr::from(a).to_string());
                format!(
                    "{}  egress datagram to {to}  {len} B  {}",
                    human::utc(*time_ns),
                    hex_head(head, *len)
                )
            }
            Self::Outcome { time_ns, outcome: o, udp: true } => {
                // A UDP stage sends each record as one datagram: one count is 1.
                let what = if o.delivered > 0 {
                    "delivered".to_owned()
                } else if o.dropped_too_large > 0 {
                    "dropped: larger than a datagram can be".to_owned()
                } else if o.dropped_connection_closed > 0 {
                    "dropped: no destination, or the send failed".to_owned()
                } else if o.dropped_buffer_full > 0 {
                    "dropped: buffer full".to_owned()
                } else {
                    // Every count 0: the stage had nowhere to send it.
                    "dropped: no destination (none in the record, no egress_destination)".to_owned()
                };
                format!("{}  egress record {}  {} B: {what}", human::utc(*time_ns), o.egress_seq, o.bytes)
            }
            Self::Outcome { time_ns, outcome: o, udp: false } => {
                let to = o.target.map_or("every connection".to_owned(), |id| format!("conn {id}"));
                format!(
                    "{}  egress record {} to {to}  {} B: {} delivered, dropped: {} buffer full, {} too large, {} closed",
                    human::utc(*time_ns),
                    o.egress_seq,
                    o.bytes,
                    o.delivered,
                    o.dropped_buffer_full,
                    o.dropped_too_large,
                    o.dropped_connection_closed,
                )
            }
            Self::Other { time_ns, kind, len, head, error } => {
                let error = error.as_ref().map(|e| format!("  (undecodable: {e})")).unwrap_or_default();
                format!("{}  kind {kind}  {len} B  {}{error}", human::utc(*time_ns), hex_head(head, *len))
            }
            Self::Lost(records) => {
                format!("-- {records} records lost (overwritten before they were read) --")
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Packet { meta, len, head } => json!({
                "type": "packet",
                "time_ns": meta.rx_realtime_ns,
                "connection_id": meta.connection_id,
                "peer": SocketAddr::from(meta.peer).to_string(),
                "len": len,
                "data_hex": human::hex(head),
            }),
            Self::Datagram { meta, len, head } => json!({
                "type": "datagram",
                "time_ns": meta.rx_realtime_ns,
                "kernel_time_ns": meta.kernel_time().map(|(ns, _)| ns),
                "hardware_time": meta.kernel_time().is_some_and(|(_, hardware)| hardware),
                "source": SocketAddr::from(meta.source).to_string(),
                "destination": known_destination(&meta.destination).map(|a| a.to_string()),
                "destination_port": meta.destination.port,
                "len": len,
                "original_len": meta.original_len,
                "truncated": meta.truncated(),
                "control_truncated": meta.flags & records::FLAG_CONTROL_TRUNCATED != 0,
                "data_hex": human::hex(head),
            }),
            // Events and stats as the log holds them, tagged like every line.
            Self::Event(event) => tagged("connection_event", record_json::connection_event(event)),
            Self::Stats(stats) => tagged("socket_stats", record_json::socket_stats(stats)),
            Self::UdpStats(stats) => tagged("udp_socket_stats", crate::log::json::udp_socket_stats(stats)),
            Self::Egress { time_ns, target, len, head } => json!({
                "type": "egress",
                "time_ns": time_ns,
                "target": target,
                "len": len,
                "data_hex": human::hex(head),
            }),
            Self::DatagramEgress { time_ns, destination, len, head } => json!({
                "type": "datagram_egress",
                "time_ns": time_ns,
                "destination": destination.map(|a| SocketAddr::from(a).to_string()),
                "len": len,
                "data_hex": human::hex(head),
            }),
            Self::Outcome { time_ns, outcome: o, .. } => json!({
                "type": "egress_outcome",
                "time_ns": time_ns,
                "egress_generation": o.egress_generation,
                "egress_shard": o.egress_shard,
                "egress_seq": o.egress_seq,
                "target": o.target,
                "bytes": o.bytes,
                "delivered": o.delivered,
                "dropped_buffer_full": o.dropped_buffer_full,
                "dropped_too_large": o.dropped_too_large,
                "dropped_connection_closed": o.dropped_connection_closed,
            }),
            Self::Other { time_ns, kind, len, head, error } => json!({
                "type": "unknown",
                "kind": kind,
                "time_ns": time_ns,
                "len": len,
                "data_hex": human::hex(head),
                "error": error,
            }),
            Self::Lost(records) => json!({ "type": "lost", "records": records }),
        }
    }
}

/// The address a datagram was sent to, unless the kernel did not say (all
/// zero).
fn known_destination(destination: &Addr) -> Option<SocketAddr> {
    (destination.ip != [0; 16]).then(|| SocketAddr::from(*destination))
}

fn destination_text(destination: &Addr) -> String {
    known_destination(destination).map_or_else(|| format!("?:{}", destination.port), |a| a.to_string())
}

/// The first bytes of `len`, in hex, with an ellipsis when there are more.
fn hex_head(head: &[u8], len: usize) -> String {
    let more = if head.len() < len { "…" } else { "" };
    format!("{}{more}", human::hex(head))
}

/// `value` (an object) with a `"type"` member, like every line has.
fn tagged(kind: &str, mut value: Value) -> Value {
    value["type"] = json!(kind);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::records::{
        DatagramEgressHeader, DatagramGroupWriter, EgressHeader, FLAG_HARDWARE_TIME, FLAG_KERNEL_TIME,
        FLAG_TRUNCATED, GroupWriter, ReceivePath, UdpSocketCounters,
    };

    fn addr(text: &str) -> Addr {
        text.parse::<SocketAddr>().unwrap().into()
    }

    #[test]
    fn a_group_gives_one_item_per_packet_with_the_head_of_its_data() {
        let mut buf = vec![0; GroupWriter::capacity_for(2, 64)];
        let mut group = GroupWriter::new();
        for (id, data) in [(1, &b"hello, world"[..]), (2, b"hi")] {
            let meta = PacketMeta {
                connection_id: id,
                peer: addr("10.0.0.1:4000"),
                rx_realtime_ns: 0,
                rx_monotonic_ns: 0,
            };
            group.packet_space(&mut buf)[..data.len()].copy_from_slice(data);
            group.commit_packet(&mut buf, &meta, data.len());
        }
        let len = group.close(&mut buf);
        let lines: Vec<String> =
            decode(records::KIND_PACKET_GROUP, 0, &buf[..len], 4).iter().map(Item::text).collect();
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000000Z  conn 1  10.0.0.1:4000  12 B  68656c6c…",
                "1970-01-01T00:00:00.000000Z  conn 2  10.0.0.1:4000  2 B  6869",
            ]
        );
    }

    #[test]
    fn events_egress_and_unknown_kinds_as_json() {
        let event = ConnectionEvent::Disconnected {
            connection_id: 7,
            time_ns: 5,
            bytes_in: 1500,
            bytes_out: 64,
            reason: DisconnectReason::Error("reset".into()),
        };
        let items = decode(records::KIND_CONNECTION_EVENT, 5, &records::encode(&event), 16);
        assert_eq!(
            items[0].json(),
            json!({"type": "connection_event", "event": "disconnected", "time_ns": 5, "connection_id": 7,
                   "bytes_in": 1500, "bytes_out": 64, "reason": "error", "error": "reset"})
        );
        let egress = records::encode_egress(&EgressHeader { target: Some(3) }, b"hi");
        let items = decode(records::KIND_EGRESS, 9, &egress, 16);
        assert_eq!(
            items[0].json(),
            json!({"type": "egress", "time_ns": 9, "target": 3, "len": 2, "data_hex": "6869"})
        );
        let items = decode(99, 1, b"\x01\x02", 16);
        assert_eq!(items[0].text(), "1970-01-01T00:00:00.000000Z  kind 99  2 B  0102");
    }

    #[test]
    fn an_undecodable_record_is_shown_in_hex_with_its_error() {
        let items = decode(records::KIND_PACKET_GROUP, 0, b"\x03\0\0\0\0\0\0\0", 16);
        let text = items[0].text();
        assert!(
            text.contains("kind 1  8 B  0300000000000000  (undecodable: packet group version 3"),
            "{text}"
        );
    }

    /// A datagram group of `datagrams`: (meta, data).
    fn datagram_group(datagrams: &[(DatagramMeta, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0; DatagramGroupWriter::capacity_for(datagrams.len(), 64)];
        let mut group = DatagramGroupWriter::new();
        for (meta, data) in datagrams {
            group.datagram_space(&mut buf)[..data.len()].copy_from_slice(data);
            group.commit_datagram(&mut buf, meta, data.len());
        }
        let len = group.close(&mut buf);
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_datagram_group_gives_one_item_per_datagram_with_its_addresses_flags_and_times() {
        let sent_to_group = DatagramMeta {
            source: addr("192.168.1.201:2368"),
            destination: addr("239.1.2.3:2368"),
            rx_realtime_ns: 1_700_000_000_000_050_000,
            rx_monotonic_ns: 9,
            kernel_rx_ns: 1_700_000_000_000_038_000,
            flags: FLAG_KERNEL_TIME,
            original_len: 12,
        };
        let cut_short = DatagramMeta {
            destination: Addr { ip: [0; 16], port: 2368 }, // the kernel did not say
            kernel_rx_ns: 1_700_000_000_000_000_000,
            flags: FLAG_TRUNCATED | FLAG_KERNEL_TIME | FLAG_HARDWARE_TIME | records::FLAG_CONTROL_TRUNCATED,
            original_len: 9000,
            ..sent_to_group
        };
        let record = datagram_group(&[(sent_to_group, b"hello, lidar"), (cut_short, b"\x01\x02")]);
        let items = decode(records::KIND_DATAGRAM_GROUP, 0, &record, 4);
        let lines: Vec<String> = items.iter().map(Item::text).collect();
        assert_eq!(
            lines,
            [
                "2023-11-14T22:13:20.000050Z  192.168.1.201:2368 -> 239.1.2.3:2368  12 B  \
                 kernel 2023-11-14T22:13:20.000038Z sw  68656c6c…",
                "2023-11-14T22:13:20.000050Z  192.168.1.201:2368 -> ?:2368  2 B  TRUNCATED (sent 9000 B)  \
                 CONTROL_TRUNCATED  kernel 2023-11-14T22:13:20.000000Z hw  0102",
            ]
        );
        assert_eq!(
            items[0].json(),
            json!({"type": "datagram", "time_ns": 1_700_000_000_000_050_000u64,
                   "kernel_time_ns": 1_700_000_000_000_038_000u64, "hardware_time": false,
                   "source": "192.168.1.201:2368", "destination": "239.1.2.3:2368", "destination_port": 2368,
                   "len": 12, "original_len": 12, "truncated": false, "control_truncated": false,
                   "data_hex": "68656c6c"})
        );
        let second = items[1].json();
        assert_eq!(second["destination"], Value::Null);
        assert_eq!(
            (&second["truncated"], &second["original_len"], &second["len"]),
            (&json!(true), &json!(9000), &json!(2))
        );
        assert_eq!((&second["hardware_time"], &second["control_truncated"]), (&json!(true), &json!(true)));
        // Without a kernel time: no kernel column, null in JSON.
        let plain = DatagramMeta { flags: 0, kernel_rx_ns: 0, ..sent_to_group };
        let items = decode(records::KIND_DATAGRAM_GROUP, 0, &datagram_group(&[(plain, b"")]), 4);
        assert_eq!(
            items[0].text(),
            "2023-11-14T22:13:20.000050Z  192.168.1.201:2368 -> 239.1.2.3:2368  0 B  "
        );
        assert_eq!(items[0].json()["kernel_time_ns"], Value::Null);
    }

    #[test]
    fn udp_stats_datagram_egress_and_udp_outcomes() {
        let socket = |executor, datagrams, kernel_drops| UdpSocketCounters {
            executor,
            local: addr("0.0.0.0:2368"),
            datagrams,
            bytes: datagrams * 1206,
            datagrams_per_s: 10.0,
            bytes_per_s: 12060.0,
            kernel_drops,
            truncated: 1,
            ring_full_stalls: 2,
            max_datagram_size: 1206,
            egress_sent: 3,
            egress_drops: 0,
            kernel_receive_buffer_b: 212_992,
        };
        let stats = UdpSocketStats {
            time_ns: 0,
            interval_ns: 1_000_000_000,
            receive_path: ReceivePath::IoUringMultishot,
            groups_published: 40,
            sockets: vec![socket(0, 100, 5), socket(1, 50, 0)],
        };
        let items = decode(records::KIND_UDP_SOCKET_STATS, 0, &records::encode(&stats), 16);
        assert_eq!(
            items[0].text(),
            "1970-01-01T00:00:00.000000Z  udp stats: 2 sockets, in 23.6 KiB/s (20 datagrams/s), 150 datagrams, \
             5 kernel drops, 2 truncated, 4 ring-full stalls, egress 6 sent, 0 dropped, 40 groups"
        );
        let json = items[0].json();
        assert_eq!(json["type"], "udp_socket_stats");
        assert_eq!(json["receive_path"], "io_uring_multishot");
        assert_eq!(json["sockets"][0]["local"], "0.0.0.0:2368");
        assert_eq!(json["sockets"][1]["datagrams"], 50);
        assert_eq!(json["total"]["datagrams"], 150);
        assert_eq!(json["total"]["kernel_drops"], 5);
        assert!(json["total"].get("local").is_none());

        let to = DatagramEgressHeader { destination: Some(addr("10.1.2.3:2368")) };
        let items =
            decode(records::KIND_DATAGRAM_EGRESS, 4, &records::encode_datagram_egress(&to, b"go"), 16);
        assert_eq!(
            items[0].text(),
            "1970-01-01T00:00:00.000000Z  egress datagram to 10.1.2.3:2368  2 B  676f"
        );
        assert_eq!(
            items[0].json(),
            json!({"type": "datagram_egress", "time_ns": 4, "destination": "10.1.2.3:2368", "len": 2, "data_hex": "676f"})
        );
        let default = DatagramEgressHeader { destination: None };
        let items =
            decode(records::KIND_DATAGRAM_EGRESS, 4, &records::encode_datagram_egress(&default, b""), 16);
        assert!(items[0].text().contains("egress datagram to the stage's egress_destination  0 B"));

        let outcome = |delivered, too_large, closed| EgressOutcome {
            egress_seq: 7,
            bytes: 2,
            delivered,
            dropped_too_large: too_large,
            dropped_connection_closed: closed,
            ..Default::default()
        };
        let udp_text = |o| Item::Outcome { time_ns: 0, outcome: o, udp: true }.text();
        assert!(udp_text(outcome(1, 0, 0)).ends_with("egress record 7  2 B: delivered"));
        assert!(udp_text(outcome(0, 1, 0)).ends_with("dropped: larger than a datagram can be"));
        assert!(udp_text(outcome(0, 0, 1)).ends_with("dropped: no destination, or the send failed"));
    }
}
