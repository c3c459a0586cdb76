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
