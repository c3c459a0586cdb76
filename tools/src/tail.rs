//! `ringest tail`: a channel's records as they arrive, decoded by kind
//! (packets, connection events, socket stats, egress), as text or JSON
//! lines. A lossy reader: it never slows the engine, and says what it lost.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU64;

use clap::ValueEnum;
use engine::records::{self, ConnectionEvent, DisconnectReason, EgressOutcome, PacketMeta, SocketStats};
use serde_json::{Value, json};
use shm_bus::{BusDir, Reader, ReaderOptions, StartAt};

use crate::follow::follow;
use crate::human;
use crate::log::json::{self as record_json, reason_name};

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The channel, like ingest/packet_group (`ringest ls` lists them).
    channel: String,
    /// Exits after printing this many packets, events, statistics or egress
    /// records (a packet group record prints a line per packet; notices of
    /// lost records do not count).
    #[arg(long, value_name = "N")]
    count: Option<NonZeroU64>,
    /// Prints JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Where to start: the oldest record the ring still holds, or the newest.
    #[arg(long, value_enum, default_value_t = Start::Newest)]
    from: Start,
    /// Bytes of each packet's data shown, in hex.
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
    let mut out = std::io::stdout().lock();
    let count = args.count.map(NonZeroU64::get);
    let mut printed = 0;
    follow(&mut reader, count, |sample| {
        let mut items = Vec::new();
        if sample.lost_before() > 0 {
            items.push(Item::Lost(sample.lost_before()));
        }
        let decoded = decode(sample.kind(), sample.timestamp_ns(), sample.payload(), args.bytes);
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
    Event(ConnectionEvent),
    Stats(SocketStats),
    Egress {
        time_ns: u64,
        target: Option<u64>,
        len: usize,
        head: Vec<u8>,
    },
    Outcome {
        time_ns: u64,
        outcome: EgressOutcome,
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
        records::KIND_CONNECTION_EVENT => records::decode(payload).map(|event| vec![Item::Event(event)]),
        records::KIND_SOCKET_STATS => records::decode(payload).map(|stats| vec![Item::Stats(stats)]),
        records::KIND_EGRESS => records::decode_egress(payload).map(|(header, data)| {
            vec![Item::Egress { time_ns, target: header.target, len: data.len(), head: head(data) }]
        }),
        records::KIND_EGRESS_OUTCOME => {
            records::decode(payload).map(|outcome| vec![Item::Outcome { time_ns, outcome }])
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
            Self::Egress { time_ns, target, len, head } => {
                let to = target.map_or("every connection".to_owned(), |id| format!("conn {id}"));
                format!("{}  egress to {to}  {len} B  {}", human::utc(*time_ns), hex_head(head, *len))
            }
            Self::Outcome { time_ns, outcome: o } => {
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
            // Events and stats as the log holds them, tagged like every line.
            Self::Event(event) => tagged("connection_event", record_json::connection_event(event)),
            Self::Stats(stats) => tagged("socket_stats", record_json::socket_stats(stats)),
            Self::Egress { time_ns, target, len, head } => json!({
                "type": "egress",
                "time_ns": time_ns,
                "target": target,
                "len": len,
                "data_hex": human::hex(head),
            }),
            Self::Outcome { time_ns, outcome: o } => json!({
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
    use engine::records::{Addr, EgressHeader, GroupWriter};

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
}
