//! The log file: an MCAP file with one channel per TCP connection, one
//! topic per UDP source, and JSON channels for each stage's connection
//! events and socket statistics.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use mcap::records::MessageHeader;
use serde_json::Value;

use super::{Compression, ControlChannel, json};

/// Target uncompressed size of a chunk: small enough that a killed logger
/// loses little, big enough to compress well and keep the index short.
const CHUNK_SIZE: u64 = 4 << 20;
/// Longest time a message waits in an unfinished chunk: bounds what a
/// killed logger loses when data trickles in.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Writes reach the kernel in pieces of this size.
const WRITE_BUFFER: usize = 1 << 20;

/// Message encoding of the packet channels: the received bytes as they are.
pub const PACKET_ENCODING: &str = "application/octet-stream";
/// Channel metadata keys of a packet channel.
pub const PEER_KEY: &str = "peer";
pub const LOCAL_KEY: &str = "local";
/// Channel metadata keys of a datagram channel.
pub const SOURCE_KEY: &str = "source";
pub const DESTINATION_KEY: &str = "destination";
/// Channel metadata of a datagram channel whose messages were cut to the
/// stage's `max_datagram_size_b` (value `"true"`).
pub const TRUNCATED_KEY: &str = "truncated";
/// The path segment of datagram topics: `<stage>/datagrams/<source>`.
pub const DATAGRAMS: &str = "datagrams";

/// Topic of connection `id` of `stage`: `<stage>/packet_group/<id>`.
pub fn connection_topic(stage: &str, id: u64) -> String {
    format!("{}/{id}", engine::channel_name(stage, engine::PACKET_GROUP))
}

/// Whether `topic` is a connection topic ([`connection_topic`]).
pub fn is_connection_topic(topic: &str) -> bool {
    let mut parts = topic.rsplitn(3, '/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(id), Some(engine::PACKET_GROUP), Some(stage)) if !stage.is_empty() && id.parse::<u64>().is_ok()
    )
}

/// Topic of the datagrams `stage` received from `source`:
/// `<stage>/datagrams/<source ip:port>` (IPv6 in brackets).
pub fn datagram_topic(stage: &str, source: SocketAddr) -> String {
    format!("{stage}/{DATAGRAMS}/{source}")
}

/// The stage and source of a datagram topic ([`datagram_topic`]).
pub fn split_datagram_topic(topic: &str) -> Option<(&str, SocketAddr)> {
    let (rest, source) = topic.rsplit_once('/')?;
    let stage = rest.strip_suffix(DATAGRAMS)?.strip_suffix('/')?;
    (!stage.is_empty()).then_some(())?;
    Some((stage, source.parse().ok()?))
}

/// Whether `topic` is a datagram topic ([`datagram_topic`]).
pub fn is_datagram_topic(topic: &str) -> bool {
    split_datagram_topic(topic).is_some()
}

/// Where a datagram channel's messages came from and went: one channel per
/// distinct value, all of a source's channels on its one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatagramFlow {
    pub source: SocketAddr,
    /// The address the datagrams were sent to (a multicast group, or the
    /// stage's own address); `None` when the engine could not tell.
    pub destination: Option<SocketAddr>,
    /// Whether they were longer than the stage keeps, and are cut.
    pub truncated: bool,
}

/// What was written so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTotals {
    /// Packet messages: one per packet received.
    pub packets: u64,
    /// Bytes of packet data.
    pub bytes: u64,
    /// JSON messages: connection events and socket stats.
    pub control_messages: u64,
    pub connections: u64,
    /// Datagram messages: one per datagram received.
    pub datagrams: u64,
    /// Bytes of datagram data (of truncated ones, what was kept).
    pub datagram_bytes: u64,
    /// Datagrams logged cut to the stage's `max_datagram_size_b`.
    pub truncated: u64,
    /// Distinct datagram sources (topics).
    pub sources: u64,
    /// Packet and datagram groups read.
    pub groups: u64,
    /// Records lost on the bus before the logger read them.
    pub lost: u64,
    /// Records that did not decode, left out.
    pub skipped: u64,
}

/// An MCAP file being written.
pub struct McapWriter {
    writer: mcap::Writer<BufWriter<File>>,
    path: PathBuf,
    last_flush: Instant,
    totals: LogTotals,
}

impl McapWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path, compression: Compression) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let compression = match compression {
            Compression::None => None,
            Compression::Lz4 => Some(mcap::Compression::Lz4),
            Compression::Zstd => Some(mcap::Compression::Zstd),
        };
        let writer = mcap::WriteOptions::new()
            .compression(compression)
            .chunk_size(Some(CHUNK_SIZE))
            .library(concat!("ringest ", env!("CARGO_PKG_VERSION")))
            .create(BufWriter::with_capacity(WRITE_BUFFER, file))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { writer, path: path.to_owned(), last_flush: Instant::now(), totals: LogTotals::default() })
    }

    pub fn totals(&self) -> LogTotals {
        self.totals
    }

    pub fn count_lost(&mut self, records: u64) {
        self.totals.lost += records;
    }

    pub fn count_skipped(&mut self) {
        self.totals.skipped += 1;
    }

    /// Counts a packet group read, and the `lost_before` it.
    pub fn count_group(&mut self, lost_before: u64) {
        self.totals.groups += 1;
        self.totals.lost += lost_before;
    }

    /// Adds the channel of connection `id` of `stage`; returns its id.
    pub fn add_connection(
        &mut self,
        stage: &str,
        id: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> anyhow::Result<u16> {
        let mut metadata = BTreeMap::from([(PEER_KEY.to_owned(), peer.to_string())]);
        if let Some(local) = local {
            metadata.insert(LOCAL_KEY.to_owned(), local.to_string());
        }
        let channel = self.writer.add_channel(0, &connection_topic(stage, id), PACKET_ENCODING, &metadata)?;
        self.totals.connections += 1;
        Ok(channel)
    }

    /// Adds the channel of the datagrams of `flow` at `stage`; `new_source`
    /// says whether its topic is new. Returns the channel's id.
    pub fn add_datagram_channel(
        &mut self,
        stage: &str,
        flow: &DatagramFlow,
        new_source: bool,
    ) -> anyhow::Result<u16> {
        let mut metadata = BTreeMap::from([(SOURCE_KEY.to_owned(), flow.source.to_string())]);
        if let Some(destination) = flow.destination {
            metadata.insert(DESTINATION_KEY.to_owned(), destination.to_string());
        }
        if flow.truncated {
            metadata.insert(TRUNCATED_KEY.to_owned(), "true".to_owned());
        }
        let topic = datagram_topic(stage, flow.source);
        let channel = self.writer.add_channel(0, &topic, PACKET_ENCODING, &metadata)?;
        self.totals.sources += u64::from(new_source);
        Ok(channel)
    }

    /// Adds the JSON channel `<stage>/<kind>` for records of `record_kind`
    /// (a UDP stage's socket statistics differ from a TCP stage's); returns
    /// its id.
    pub fn add_control_channel(
        &mut self,
        stage: &str,
        kind: ControlChannel,
        record_kind: u16,
    ) -> anyhow::Result<u16> {
        let (name, schema) = match kind {
            ControlChannel::ConnectionEvents => {
                (json::CONNECTION_EVENT_SCHEMA_NAME, json::connection_event_schema())
            }
            ControlChannel::SocketStats if record_kind == engine::records::KIND_UDP_SOCKET_STATS => {
                (json::UDP_SOCKET_STATS_SCHEMA_NAME, json::udp_socket_stats_schema())
            }
            ControlChannel::SocketStats => (json::SOCKET_STATS_SCHEMA_NAME, json::socket_stats_schema()),
        };
        // Stages share a schema: the writer keeps one of each content.
        let schema = self.writer.add_schema(name, "jsonschema", schema.to_string().as_bytes())?;
        let topic = engine::channel_name(stage, kind.suffix());
        Ok(self.writer.add_channel(schema, &topic, "json", &BTreeMap::new())?)
    }

    /// Writes one received packet.
    pub fn write_packet(&mut self, header: &MessageHeader, data: &[u8]) -> anyhow::Result<()> {
        self.writer.write_to_known_channel(header, data)?;
        self.totals.packets += 1;
        self.totals.bytes += data.len() as u64;
        Ok(())
    }

    /// Writes one received datagram (what was kept of it, if `truncated`).
    pub fn write_datagram(
        &mut self,
        header: &MessageHeader,
        data: &[u8],
        truncated: bool,
    ) -> anyhow::Result<()> {
        self.writer.write_to_known_channel(header, data)?;
        self.totals.datagrams += 1;
        self.totals.datagram_bytes += data.len() as u64;
        self.totals.truncated += u64::from(truncated);
        Ok(())
    }

    /// Writes one JSON message on a control channel.
    pub fn write_json(&mut self, header: &MessageHeader, value: &Value) -> anyhow::Result<()> {
        self.writer.write_to_known_channel(header, value.to_string().as_bytes())?;
        self.totals.control_messages += 1;
        Ok(())
    }

    /// Finishes the open chunk and hands it to the kernel if it is older
    /// than [`FLUSH_EVERY`], so a killed logger leaves it readable.
    pub fn flush_if_due(&mut self) -> anyhow::Result<()> {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.writer.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Writes the summary section (index, statistics) and closes the file.
    pub fn finish(self) -> anyhow::Result<LogTotals> {
        let Self { mut writer, path, totals, .. } = self;
        let failed = || format!("cannot finish {}", path.display());
        writer.finish().with_context(failed)?;
        writer.into_inner().into_inner().map_err(|e| e.into_error()).with_context(failed)?;
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_topics_are_recognized() {
        assert_eq!(connection_topic("lidar/front", 7), "lidar/front/packet_group/7");
        assert!(is_connection_topic(&connection_topic("ingest", 1)));
        assert!(!is_connection_topic("ingest/packet_group"));
        assert!(!is_connection_topic("ingest/connection_events"));
        assert!(!is_connection_topic("ingest/socket_stats/1"));
        assert!(!is_connection_topic("ingest/xpacket_group/1"));
        assert!(!is_connection_topic("packet_group/1"));
    }

    #[test]
    fn datagram_topics_are_recognized() {
        let v4: SocketAddr = "10.0.0.7:2368".parse().unwrap();
        let v6: SocketAddr = "[fe80::1]:5004".parse().unwrap();
        assert_eq!(datagram_topic("lidar/front", v4), "lidar/front/datagrams/10.0.0.7:2368");
        assert_eq!(datagram_topic("cam", v6), "cam/datagrams/[fe80::1]:5004");
        assert_eq!(split_datagram_topic("lidar/front/datagrams/10.0.0.7:2368"), Some(("lidar/front", v4)));
        assert_eq!(split_datagram_topic("cam/datagrams/[fe80::1]:5004"), Some(("cam", v6)));
        assert!(!is_datagram_topic("datagrams/10.0.0.7:2368"));
        assert!(!is_datagram_topic("cam/datagrams/10.0.0.7"));
        assert!(!is_datagram_topic("cam/packet_group/1"));
        assert!(!is_connection_topic(&datagram_topic("cam", v4)));
    }
}
