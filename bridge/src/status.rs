//! What a bridge reports: the link, and per channel what was sent,
//! acknowledged, received and lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A snapshot of a bridge ([`crate::Bridge::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Whether a link to the peer is up (handshake done).
    pub connected: bool,
    /// The peer of the current or last link.
    pub peer: Option<SocketAddr>,
    /// Links made since the bridge started (the first, then one per resume).
    pub links: u64,
    /// Round-trip time of the last heartbeat.
    pub rtt: Option<Duration>,
    /// Why the last link ended, or the last connection was refused.
    pub last_error: Option<String>,
    /// Whether the link is TLS.
    pub tls: bool,
    /// Connections refused before a link started (a failed TLS handshake).
    pub refused: u64,
    /// Exported channels by local name.
    pub exports: BTreeMap<String, ExportStatus>,
    /// Imported channels by local name.
    pub imports: BTreeMap<String, ImportStatus>,
}

/// One exported channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStatus {
    /// Generation of the producer files being read.
    pub generation: u64,
    /// Records sent (again after a resume: those the peer had not
    /// acknowledged count twice).
    pub records_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Records the peer acknowledged.
    pub records_acked: u64,
    /// Records sent and not acknowledged yet.
    pub in_flight: u64,
    /// Times the peer said where to resume (each link, each new generation).
    pub resumes: u64,
    /// Records never sent: skipped by a lossy bridge, or overwritten before
    /// they were acknowledged (the exporting side was not running to hold
    /// them, or its slot was taken).
    pub lost: u64,
}

/// One imported channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportStatus {
    /// Generation of the channel (the exporter's).
    pub generation: u64,
    /// Records published.
    pub records: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Records the peer sent again that were held already, and dropped
    /// (the resume protocol makes this 0).
    pub duplicates_dropped: u64,
    /// Records missing before a record received (sequence number gaps):
    /// lost on the exporting side.
    pub gaps: u64,
    /// Times the peer offered the channel and was told where to resume.
    pub resumes: u64,
}

/// Suffix of the channel a bridge publishes its status on:
/// `<bridge name>/bridge_status`.
pub const STATUS_CHANNEL: &str = "bridge_status";
/// Record kind of a [`StatusRecord`] (engine/RECORDS.md lists it).
pub const KIND_BRIDGE_STATUS: u16 = 9;

/// A bridge's status, once a second on `<name>/bridge_status`, so that
/// another process (`ringest bridge status`) sees it. Bincode as the
/// engine's control records; layout in docs/BRIDGE.md §6.
#[derive(Clone, Debug, Default, PartialEq, bincode::Encode, bincode::Decode, serde::Serialize)]
pub struct StatusRecord {
    /// When sampled, `CLOCK_REALTIME` in ns.
    pub time_ns: u64,
    /// Time since the previous record, in ns: what the rates cover.
    pub interval_ns: u64,
    pub connected: bool,
    pub tls: bool,
    /// The peer of the current or last link (`""`: none yet).
    pub peer: String,
    pub links: u64,
    pub refused: u64,
    /// Round trip of the last heartbeat.
    pub rtt_ns: Option<u64>,
    /// Why the last link ended or the last connection was refused (`""`:
    /// nothing went wrong).
    pub last_error: String,
    pub exports: Vec<ExportRecord>,
    pub imports: Vec<ImportRecord>,
}

/// One exported channel in a [`StatusRecord`].
#[derive(Clone, Debug, Default, PartialEq, bincode::Encode, bincode::Decode, serde::Serialize)]
pub struct ExportRecord {
    pub name: String,
    pub generation: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub records_acked: u64,
    pub in_flight: u64,
    pub resumes: u64,
    pub lost: u64,
    /// Records and payload bytes sent per second over the interval.
    pub records_per_s: f64,
    pub bytes_per_s: f64,
}

/// One imported channel in a [`StatusRecord`].
#[derive(Clone, Debug, Default, PartialEq, bincode::Encode, bincode::Decode, serde::Serialize)]
pub struct ImportRecord {
    pub name: String,
    pub generation: u64,
    pub records: u64,
    pub bytes: u64,
    pub duplicates_dropped: u64,
    pub gaps: u64,
    pub resumes: u64,
    /// Records and payload bytes published per second over the interval.
    pub records_per_s: f64,
    pub bytes_per_s: f64,
}

/// Per second over `interval_ns`, of a counter that went from `before` to
/// `now` (0 after a restart of the counter).
fn rate(now: u64, before: u64, interval_ns: u64) -> f64 {
    if interval_ns == 0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 * 1e9 / interval_ns as f64
}

impl StatusRecord {
    /// The record of `status` at `time_ns`, its rates against `previous`.
    pub fn new(status: &BridgeStatus, time_ns: u64, previous: Option<&StatusRecord>) -> Self {
        let interval_ns = previous.map_or(0, |p| time_ns.saturating_sub(p.time_ns));
        let exports = status
            .exports
            .iter()
            .map(|(name, e)| {
                let before = previous.and_then(|p| p.exports.iter().find(|x| &x.name == name));
                let (records_before, bytes_before) =
                    before.map_or((0, 0), |b| (b.records_sent, b.bytes_sent));
                ExportRecord {
                    name: name.clone(),
                    generation: e.generation,
                    records_sent: e.records_sent,
                    bytes_sent: e.bytes_sent,
                    records_acked: e.records_acked,
                    in_flight: e.in_flight,
                    resumes: e.resumes,
                    lost: e.lost,
                    records_per_s: rate(e.records_sent, records_before, interval_ns),
                    bytes_per_s: rate(e.bytes_sent, bytes_before, interval_ns),
                }
            })
            .collect();
        let imports = status
            .imports
            .iter()
            .map(|(name, i)| {
                let before = previous.and_then(|p| p.imports.iter().find(|x| &x.name == name));
                let (records_before, bytes_before) = before.map_or((0, 0), |b| (b.records, b.bytes));
                ImportRecord {
                    name: name.clone(),
                    generation: i.generation,
                    records: i.records,
                    bytes: i.bytes,
                    duplicates_dropped: i.duplicates_dropped,
                    gaps: i.gaps,
                    resumes: i.resumes,
                    records_per_s: rate(i.records, records_before, interval_ns),
                    bytes_per_s: rate(i.bytes, bytes_before, interval_ns),
                }
            })
            .collect();
        Self {
            time_ns,
            interval_ns,
            connected: status.connected,
            tls: status.tls,
            peer: status.peer.map(|p| p.to_string()).unwrap_or_default(),
            links: status.links,
            refused: status.refused,
            rtt_ns: status.rtt.map(|r| r.as_nanos() as u64),
            last_error: status.last_error.clone().unwrap_or_default(),
            exports,
            imports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_record_encodes_as_documented_in_bridge_md() {
        let record = StatusRecord {
            time_ns: 0x0102,
            interval_ns: 1_000_000_000,
            connected: true,
            tls: true,
            peer: "a:1".into(),
            links: 2,
            refused: 3,
            rtt_ns: Some(5),
            last_error: String::new(),
            exports: vec![ExportRecord {
                name: "x".into(),
                records_sent: 7,
                bytes_per_s: 1.5,
                ..Default::default()
            }],
            imports: Vec::new(),
        };
        let bytes = engine::records::encode(&record);
        let mut expected = Vec::new();
        expected.extend_from_slice(&0x0102u64.to_le_bytes());
        expected.extend_from_slice(&1_000_000_000u64.to_le_bytes());
        expected.extend_from_slice(&[1, 1]);
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a:1");
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.push(1);
        expected.extend_from_slice(&5u64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes()); // last_error ""
        expected.extend_from_slice(&1u64.to_le_bytes()); // one export
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"x");
        for field in [0u64, 7, 0, 0, 0, 0, 0] {
            expected.extend_from_slice(&field.to_le_bytes());
        }
        expected.extend_from_slice(&0f64.to_le_bytes());
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes()); // no imports
        assert_eq!(bytes, expected);
        assert_eq!(engine::records::decode::<StatusRecord>(&bytes).unwrap(), record);
    }

    #[test]
    fn rates_cover_the_interval_since_the_previous_record() {
        let mut status = BridgeStatus::default();
        status.imports.insert("a/x".into(), ImportStatus { records: 10, bytes: 1000, ..Default::default() });
        let first = StatusRecord::new(&status, 1_000_000_000, None);
        assert_eq!((first.interval_ns, first.imports[0].bytes_per_s), (0, 0.0));
        status.imports.insert("a/x".into(), ImportStatus { records: 30, bytes: 3000, ..Default::default() });
        let second = StatusRecord::new(&status, 1_500_000_000, Some(&first));
        assert_eq!(second.interval_ns, 500_000_000);
        assert_eq!((second.imports[0].records_per_s, second.imports[0].bytes_per_s), (40.0, 4000.0));
    }
}
