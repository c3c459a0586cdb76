//! The payloads the engine publishes into shm-bus, and reads from it.
//!
//! | channel | record kind | payload |
//! |---|---|---|
//! | `<name>/packet_group` | [`KIND_PACKET_GROUP`] | received packets: [`GroupWriter`], [`decode_group`] |
//! | `<name>/connection_events` | [`KIND_CONNECTION_EVENT`] | a [`ConnectionEvent`] |
//! | `<name>/socket_stats` | [`KIND_SOCKET_STATS`] | a [`SocketStats`], once a second |
//! | `<name>/egress_packets` | [`KIND_EGRESS`] | an [`EgressHeader`], then the bytes to send |
//! | `<name>/egress_outcomes` | [`KIND_EGRESS_OUTCOME`] | an [`EgressOutcome`]: what became of one egress record |
//!
//! A UDP stage publishes [`KIND_DATAGRAM_GROUP`] groups ([`DatagramGroupWriter`],
//! [`decode_datagram_group`]) and [`UdpSocketStats`], and reads
//! [`KIND_DATAGRAM_EGRESS`] records ([`DatagramEgressHeader`]) as well as
//! plain egress records.
//!
//! A packet group has a fixed binary layout that the engine fills in place:
//! the kernel receives straight into the shm-bus reservation. The control
//! records (events, stats, the egress header) are bincode 2 with fixed-width
//! little-endian integers: [`encode`], [`encode_into`], [`decode`].
//! `RECORDS.md`, next to this crate's `Cargo.toml`, documents every byte for
//! readers in other languages.
//!
//! Decoders never panic, whatever the bytes: they return a [`DecodeError`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bincode::config::{Configuration, Fixint, LittleEndian};
use bincode::{Decode, Encode};

mod datagrams;
pub use datagrams::*;

/// Record kind of a packet group, on `<name>/packet_group`.
pub const KIND_PACKET_GROUP: u16 = 1;
/// Record kind of a [`ConnectionEvent`], on `<name>/connection_events`.
pub const KIND_CONNECTION_EVENT: u16 = 2;
/// Record kind of a [`SocketStats`], on `<name>/socket_stats`.
pub const KIND_SOCKET_STATS: u16 = 3;
/// Record kind of an egress record ([`EgressHeader`] + bytes), on `<name>/egress_packets`.
pub const KIND_EGRESS: u16 = 4;

/// Record kind of an [`EgressOutcome`], on `<name>/egress_outcomes`.
pub const KIND_EGRESS_OUTCOME: u16 = 5;

/// Version of the packet group layout: byte 0 of every group.
pub const GROUP_VERSION: u8 = 1;
/// Version of the packet group layout written by the io_uring receive path:
/// as version 1, but each packet's reserved `u16` (offset 42) counts extra
/// 8-byte words of padding after its data, because the kernel placed each
/// packet's bytes at the start of a fixed-size slot.
pub const GROUP_VERSION_SLOTTED: u8 = 2;
/// Length of a packet group's header.
pub const GROUP_HEADER_LEN: usize = 8;
/// Length of a packet's header inside a group.
pub const PACKET_HEADER_LEN: usize = 48;

/// The bincode configuration of control records.
const CONFIG: Configuration<LittleEndian, Fixint> =
    bincode::config::standard().with_fixed_int_encoding().with_little_endian();

/// The most memory one decoded control record may claim: a corrupt length
/// field fails to decode instead of allocating gigabytes.
const DECODE_LIMIT: usize = 64 << 20;

/// A socket address in a fixed, C-friendly form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Addr {
    /// IPv6 address in network byte order; IPv4 as IPv4-mapped (`::ffff:a.b.c.d`).
    pub ip: [u8; 16],
    /// Port number (little-endian when encoded, like every integer here).
    pub port: u16,
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self { ip: ip.octets(), port: addr.port() }
    }
}

impl From<Addr> for SocketAddr {
    /// IPv4-mapped addresses become IPv4 addresses. IPv6 flow info and scope
    /// id are not kept.
    fn from(addr: Addr) -> Self {
        let ip = Ipv6Addr::from(addr.ip);
        SocketAddr::new(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4), addr.port)
    }
}

/// Where and when a packet (one completed receive) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// The connection it arrived on.
    pub connection_id: u64,
    /// The connection's peer.
    pub peer: Addr,
    /// Receive time, `CLOCK_REALTIME` in ns since the Unix epoch.
    pub rx_realtime_ns: u64,
    /// Receive time, `CLOCK_MONOTONIC` in ns.
    pub rx_monotonic_ns: u64,
}

/// Builds a packet group in place, packet by packet, in a buffer such as a
/// shm-bus reservation: receive into [`Self::packet_space`], then
/// [`Self::commit_packet`] the length received; finally [`Self::close`]
/// writes the group header and returns the record length.
///
/// ```
/// use engine::records::{Addr, GroupWriter, PacketMeta, decode_group};
///
/// let mut buf = vec![0xAA; GroupWriter::capacity_for(2, 1500)]; // stale bytes are fine
/// let mut group = GroupWriter::new();
/// let meta = PacketMeta { connection_id: 1, peer: Addr::default(), rx_realtime_ns: 2, rx_monotonic_ns: 3 };
/// for received in [&b"hello"[..], b"world!"] {
///     group.packet_space(&mut buf)[..received.len()].copy_from_slice(received); // recv(2) here
///     group.commit_packet(&mut buf, &meta, received.len());
/// }
/// let len = group.close(&mut buf);
/// let packets: Vec<_> = decode_group(&buf[..len]).unwrap().map(|p| p.data).collect();
/// assert_eq!(packets, [b"hello".as_slice(), b"world!"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupWriter {
    /// Bytes used so far, including the group header; a multiple of 8.
    len: usize,
    /// Packets added so far.
    packets: u32,
}

impl Default for GroupWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupWriter {
    /// An empty group: the first packet goes after the group header.
    pub const fn new() -> Self {
        Self { len: GROUP_HEADER_LEN, packets: 0 }
    }

    /// The record length that holds `packets` packets of up to `packet_len`
    /// bytes each: the reservation size for a full group.
    pub const fn capacity_for(packets: usize, packet_len: usize) -> usize {
        GROUP_HEADER_LEN + packets * (PACKET_HEADER_LEN + packet_len.next_multiple_of(8))
    }

    /// Where the next packet's bytes go: `buf` after the packet's header, up
    /// to the end of `buf` rounded down to a multiple of 8 (so the padding
    /// fits). Empty when the group is full.
    pub fn packet_space<'b>(&self, buf: &'b mut [u8]) -> &'b mut [u8] {
        let end = buf.len() / 8 * 8;
        buf.get_mut(self.len + PACKET_HEADER_LEN..end).unwrap_or_default()
    }

    /// Adds the packet whose `len` bytes were written at the start of
    /// [`Self::packet_space`]: writes its header and zeroes its padding.
    ///
    /// # Panics
    ///
    /// If `len` is longer than [`Self::packet_space`].
    pub fn commit_packet(&mut self, buf: &mut [u8], meta: &PacketMeta, len: usize) {
        let header = self.len;
        let data = header + PACKET_HEADER_LEN;
        let end = data + len.next_multiple_of(8);
        assert!(
            end <= buf.len(),
            "a {len}-byte packet at offset {data} overflows the {}-byte buffer",
            buf.len()
        );
        let len32 = u32::try_from(len).expect("a packet is shorter than 4 GiB");
        buf[header..data].copy_from_slice(&packet_header(meta, len32));
        buf[data + len..end].fill(0);
        self.len = end;
        self.packets += 1;
    }

    /// Number of packets added so far.
    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Length the record has so far (a multiple of 8).
    pub fn record_len(&self) -> usize {
        self.len
    }

    /// Writes the group header and returns the record length: the group is
    /// `buf[..len]`.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`GROUP_HEADER_LEN`].
    pub fn close(self, buf: &mut [u8]) -> usize {
        buf[..GROUP_HEADER_LEN].copy_from_slice(&group_header(GROUP_VERSION, self.packets));
        self.len
    }
}

/// A packet read from a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Where and when it was received.
    pub meta: PacketMeta,
    /// The bytes received.
    pub data: &'a [u8],
}

/// Checks a packet group record and returns its packets.
///
/// Every packet header is checked here, so iterating cannot fail.
pub fn decode_group(record: &[u8]) -> Result<Packets<'_>, DecodeError> {
    let (header, rest) = record
        .split_first_chunk::<GROUP_HEADER_LEN>()
        .ok_or(DecodeError::GroupTruncated { len: record.len() })?;
    let slotted = match header[0] {
        GROUP_VERSION => false,
        GROUP_VERSION_SLOTTED => true,
        other => return Err(DecodeError::UnsupportedVersion(other)),
    };
    let packets = Packets { rest, next: 0, count: u32::from_le_bytes(bytes_at(header, 4)), slotted };
    let mut check = packets.clone();
    while check.next < check.count {
        check.split_next()?;
    }
    match check.rest.len() {
        0 => Ok(packets),
        extra => Err(DecodeError::TrailingBytes { what: "packet group", extra }),
    }
}

/// The packets of a group, in the order they were received: see [`decode_group`].
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    /// The packets not yet returned.
    rest: &'a [u8],
    /// Index of the next packet.
    next: u32,
    /// Number of packets in the group.
    count: u32,
    /// Version 2: packets may be followed by extra padding.
    slotted: bool,
}

impl<'a> Packets<'a> {
    /// Splits the next packet off `rest`.
    fn split_next(&mut self) -> Result<Packet<'a>, DecodeError> {
        let available = self.rest.len();
        let truncated = |needed| DecodeError::PacketTruncated { index: self.next, needed, available };
        let (header, body) =
            self.rest.split_first_chunk::<PACKET_HEADER_LEN>().ok_or(truncated(PACKET_HEADER_LEN))?;
        let meta = PacketMeta {
            connection_id: u64::from_le_bytes(bytes_at(header, 0)),
            rx_realtime_ns: u64::from_le_bytes(bytes_at(header, 8)),
            rx_monotonic_ns: u64::from_le_bytes(bytes_at(header, 16)),
            peer: Addr { ip: bytes_at(header, 24), port: u16::from_le_bytes(bytes_at(header, 40)) },
        };
        let len = u32::from_le_bytes(bytes_at(header, 44)) as usize;
        let skip = if self.slotted { usize::from(u16::from_le_bytes(bytes_at(header, 42))) * 8 } else { 0 };
        let padded = len.checked_next_multiple_of(8).and_then(|p| p.checked_add(skip)).unwrap_or(usize::MAX);
        if padded > body.len() {
            return Err(truncated(PACKET_HEADER_LEN.saturating_add(padded)));
        }
        let (data, rest) = body.split_at(padded);
        self.rest = rest;
        self.next += 1;
        Ok(Packet { meta, data: &data[..len] })
    }
}

/// The group header of `version` with `packets` packets.
pub(crate) fn group_header(version: u8, packets: u32) -> [u8; GROUP_HEADER_LEN] {
    let mut header = [0; GROUP_HEADER_LEN];
    header[0] = version;
    header[4..].copy_from_slice(&packets.to_le_bytes());
    header
}

/// The header of a packet of `len` bytes in a version 2 group, followed by
/// its padding to 8 bytes and then `skip_words` more 8-byte words.
pub(crate) fn slotted_packet_header(meta: &PacketMeta, len: u32, skip_words: u16) -> [u8; PACKET_HEADER_LEN] {
    let mut header = packet_header(meta, len);
    header[42..44].copy_from_slice(&skip_words.to_le_bytes());
    header
}

impl<'a> Iterator for Packets<'a> {
    type Item = Packet<'a>;

    fn next(&mut self) -> Option<Packet<'a>> {
        if self.next == self.count {
            return None;
        }
        // `decode_group` checked every packet: `split_next` cannot fail.
        self.split_next().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Packets<'_> {}

/// The header of a packet of `len` bytes.
fn packet_header(meta: &PacketMeta, len: u32) -> [u8; PACKET_HEADER_LEN] {
    let mut header = [0; PACKET_HEADER_LEN];
    header[0..8].copy_from_slice(&meta.connection_id.to_le_bytes());
    header[8..16].copy_from_slice(&meta.rx_realtime_ns.to_le_bytes());
    header[16..24].copy_from_slice(&meta.rx_monotonic_ns.to_le_bytes());
    header[24..40].copy_from_slice(&meta.peer.ip);
    header[40..42].copy_from_slice(&meta.peer.port.to_le_bytes());
    // 42..44: reserved, zero.
    header[44..48].copy_from_slice(&len.to_le_bytes());
    header
}

/// The `N` bytes of `bytes` at offset `at`, which the caller knows are there.
fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// A change in a connection's life, on `<name>/connection_events`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ConnectionEvent {
    /// A connection was accepted.
    Connected {
        /// Identifies the connection in packets, stats and egress records.
        connection_id: u64,
        /// When, `CLOCK_REALTIME` in ns since the Unix epoch.
        time_ns: u64,
        /// The remote end.
        peer: Addr,
        /// The local end.
        local: Addr,
    },
    /// A connection was closed.
    Disconnected {
        /// Identifies the connection.
        connection_id: u64,
        /// When, `CLOCK_REALTIME` in ns since the Unix epoch.
        time_ns: u64,
        /// Bytes received on the connection.
        bytes_in: u64,
        /// Bytes sent on the connection.
        bytes_out: u64,
        /// Why it was closed.
        reason: DisconnectReason,
    },
}

/// Why a connection was closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DisconnectReason {
    /// The peer closed it.
    PeerClosed,
    /// Nothing was received for the configured receive timeout.
    ReceiveTimeout,
    /// A socket error, as text.
    Error(String),
    /// Closed at once because `maximum_connections` were already open.
    Rejected,
    /// The engine is shutting down.
    Shutdown,
}

/// How a stage receives bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ReceivePath {
    /// A `read` on a nonblocking socket after glommio reports it readable.
    GlommioRead,
    /// io_uring multishot receive.
    IoUringMultishot,
}

/// A stage's socket statistics, published once a second on `<name>/socket_stats`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SocketStats {
    /// When sampled, `CLOCK_REALTIME` in ns since the Unix epoch.
    pub time_ns: u64,
    /// Time since the previous sample, in ns: the interval that rates and
    /// packet sizes cover.
    pub interval_ns: u64,
    /// How the stage receives.
    pub receive_path: ReceivePath,
    /// The whole stage.
    pub stage: StageStats,
    /// Each open connection.
    pub connections: Vec<ConnectionStats>,
}

/// A stage's counters. Totals count from the stage's start.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct StageStats {
    /// Connections open now.
    pub open_connections: u64,
    /// Connections closed at once because `maximum_connections` were open.
    pub rejected_connections: u64,
    /// Packet groups published.
    pub groups_published: u64,
    /// Times a full `packet_group` channel (a slow lossless reader) made the
    /// stage pause receiving.
    pub backpressure_stalls: u64,
    /// io_uring receive path: times a connection's multishot recv ran out
    /// of ring slots (`ENOBUFS`) and waited until a lossless reader freed
    /// space; always 0 on the glommio read path.
    pub receive_buffer_exhaustions: u64,
    /// Traffic of all connections, closed ones included.
    pub traffic: TrafficStats,
    /// Server stages: failed attempts to bind the listening socket (e.g.
    /// the port is taken); the stage retries until it binds. 0 for clients.
    pub bind_failures: u64,
}

/// One open connection's counters. Totals count from its accept.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct ConnectionStats {
    /// Identifies the connection.
    pub connection_id: u64,
    /// The remote end.
    pub peer: Addr,
    /// Its traffic.
    pub traffic: TrafficStats,
}

/// Traffic counters: totals, and figures over the last interval
/// ([`SocketStats::interval_ns`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Encode, Decode)]
pub struct TrafficStats {
    /// Bytes received, total.
    pub bytes_received: u64,
    /// Packets (completed receives) received, total.
    pub packets_received: u64,
    /// Bytes sent, total.
    pub bytes_sent: u64,
    /// Egress records sent, total.
    pub packets_sent: u64,
    /// Bytes received per second over the interval.
    pub bytes_received_per_s: f64,
    /// Packets received per second over the interval.
    pub packets_received_per_s: f64,
    /// Bytes sent per second over the interval.
    pub bytes_sent_per_s: f64,
    /// Egress records sent per second over the interval.
    pub packets_sent_per_s: f64,
    /// Mean size of the packets received in the interval; 0 if none.
    pub mean_packet_size: f64,
    /// Largest packet received in the interval; 0 if none.
    pub max_packet_size: u64,
    /// Egress records dropped instead of sent (e.g. a full send queue), total.
    pub egress_drops: u64,
}

/// The start of an egress record: who gets the bytes that follow it.
///
/// To build an egress record in place: [`encode_into`] the header, then
/// write the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct EgressHeader {
    /// `None`: every connected client; `Some(id)`: connection `id` only.
    pub target: Option<u64>,
}

impl EgressHeader {
    /// The longest encoded header (a target connection id).
    pub const MAX_LEN: usize = 9;
}

/// What became of one egress record, published by the stage on
/// `<name>/egress_outcomes` once every connection it was meant for has
/// written or dropped it. A record no open connection was meant for (an
/// unknown connection id, or no client at all) has every count 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct EgressOutcome {
    /// The shm-bus generation of the `<name>/egress_packets` channel the
    /// record was read from: which publisher's record this is.
    pub egress_generation: u64,
    /// The record's shard on that channel.
    pub egress_shard: u32,
    /// The record's sequence number in its shard.
    pub egress_seq: u64,
    /// The record's target: `None` for every connection.
    pub target: Option<u64>,
    /// Bytes to send in the record.
    pub bytes: u64,
    /// Connections whose socket took every byte of it.
    pub delivered: u64,
    /// Connections that dropped it because their egress buffer
    /// (`egress_buffer_size_b`) had no room for it then.
    pub dropped_buffer_full: u64,
    /// Connections that dropped it because it is larger than their whole
    /// egress buffer.
    pub dropped_too_large: u64,
    /// Connections that closed before writing all of it.
    pub dropped_connection_closed: u64,
}

impl EgressOutcome {
    /// Connections that dropped the record, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_buffer_full + self.dropped_too_large + self.dropped_connection_closed
    }

    /// Whether no open connection was meant for the record.
    pub fn unmatched(&self) -> bool {
        self.delivered == 0 && self.dropped() == 0
    }
}

/// An egress record: `header`, then `data`.
pub fn encode_egress(header: &EgressHeader, data: &[u8]) -> Vec<u8> {
    let mut record = encode(header);
    record.extend_from_slice(data);
    record
}

/// Splits an egress record into its header and the bytes to send.
pub fn decode_egress(record: &[u8]) -> Result<(EgressHeader, &[u8]), DecodeError> {
    let (header, used) = decode_prefix(record)?;
    Ok((header, &record[used..]))
}

/// Encodes a control record ([`ConnectionEvent`], [`SocketStats`], [`EgressHeader`],
/// [`EgressOutcome`]).
///
/// # Panics
///
/// If `T`'s `Encode` fails, which the types of this module never do.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, CONFIG).expect("control records always encode")
}

/// Encodes a control record at the start of `buf` (e.g. a shm-bus
/// reservation) and returns its length.
pub fn encode_into<T: Encode>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
    bincode::encode_into_slice(value, &mut *buf, CONFIG).map_err(|_| EncodeError {
        record: short_type_name::<T>(),
        needed: encode(value).len(),
        capacity: buf.len(),
    })
}

/// Decodes a control record that is all of `bytes`.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = decode_prefix(bytes)?;
    match bytes.len() - used {
        0 => Ok(value),
        extra => Err(DecodeError::TrailingBytes { what: short_type_name::<T>(), extra }),
    }
}

/// Decodes a control record at the start of `bytes`; returns it and its length.
fn decode_prefix<T: Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    bincode::decode_from_slice(bytes, CONFIG.with_limit::<DECODE_LIMIT>())
        .map_err(|source| DecodeError::Invalid { record: short_type_name::<T>(), source })
}

/// `T`'s name without its module path, for errors.
fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

/// A control record did not fit in the buffer given to [`encode_into`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {record} needs {needed} bytes, the buffer has {capacity}")]
pub struct EncodeError {
    /// The record's type.
    pub record: &'static str,
    /// Its encoded length.
    pub needed: usize,
    /// The buffer's length.
    pub capacity: usize,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A packet group is shorter than its header.
    #[error("a packet group of {len} bytes is shorter than its {GROUP_HEADER_LEN}-byte header")]
    GroupTruncated {
        /// The record's length.
        len: usize,
    },
    /// A packet group has a layout version this reader does not know.
    #[error("packet group version {0} is not supported (this reader knows versions 1 and 2)")]
    UnsupportedVersion(u8),
    /// A datagram group has a layout version this reader does not know.
    #[error("datagram group version {0} is not supported (this reader knows version 1)")]
    UnsupportedDatagramVersion(u8),
    /// A datagram's header contradicts itself.
    #[error("datagram {index} of the group is invalid: {what}")]
    BadDatagram {
        /// The datagram's index in the group, from 0.
        index: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// A packet of a group goes past the end of the record.
    #[error("packet {index} of the group needs {needed} bytes, only {available} are left")]
    PacketTruncated {
        /// The packet's index in the group, from 0.
        index: u32,
        /// Bytes the packet needs: header, data and padding.
        needed: usize,
        /// Bytes left in the record.
        available: usize,
    },
    /// A record goes on after its end.
    #[error("{extra} bytes after the end of the {what}")]
    TrailingBytes {
        /// The record's type.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A control record is not valid bincode of its type.
    #[error("invalid {record}: {source}")]
    Invalid {
        /// The record's type.
        record: &'static str,
        /// What bincode found wrong.
        source: bincode::error::DecodeError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        s.parse::<SocketAddr>().unwrap().into()
    }

    fn meta(connection_id: u64) -> PacketMeta {
        PacketMeta {
            connection_id,
            peer: addr("[2001:db8::7]:51000"),
            rx_realtime_ns: 1_700_000_000_000_000_000 + connection_id,
            rx_monotonic_ns: 5_000_000_000 + connection_id,
        }
    }

    fn events() -> Vec<ConnectionEvent> {
        let connected = ConnectionEvent::Connected {
            connection_id: 1,
            time_ns: 2,
            peer: addr("10.0.0.1:40000"),
            local: addr("[::1]:7400"),
        };
        let reasons = [
            DisconnectReason::PeerClosed,
            DisconnectReason::ReceiveTimeout,
            DisconnectReason::Error("connection reset by peer".into()),
            DisconnectReason::Error(String::new()),
            DisconnectReason::Rejected,
            DisconnectReason::Shutdown,
        ];
        let disconnected = reasons.into_iter().map(|reason| ConnectionEvent::Disconnected {
            connection_id: u64::MAX,
            time_ns: 3,
            bytes_in: 4,
            bytes_out: 5,
            reason,
        });
        std::iter::once(connected).chain(disconnected).collect()
    }

    fn traffic(seed: u64) -> TrafficStats {
        TrafficStats {
            bytes_received: seed,
            packets_received: seed + 1,
            bytes_sent: seed + 2,
            packets_sent: seed + 3,
            bytes_received_per_s: 1.5,
            packets_received_per_s: 0.25,
            bytes_sent_per_s: 1e9,
            packets_sent_per_s: 0.0,
            mean_packet_size: 1448.5,
            max_packet_size: 65536,
            egress_drops: seed + 4,
        }
    }

    fn stats(connections: usize, receive_path: ReceivePath) -> SocketStats {
        SocketStats {
            time_ns: 1_700_000_000_000_000_000,
            interval_ns: 1_000_000_000,
            receive_path,
            stage: StageStats {
                open_connections: connections as u64,
                rejected_connections: 2,
                groups_published: 3,
                backpressure_stalls: 4,
                receive_buffer_exhaustions: 5,
                traffic: traffic(100),
                bind_failures: 6,
            },
            connections: (0..connections as u64)
                .map(|id| ConnectionStats {
                    connection_id: id,
                    peer: addr("192.0.2.1:9"),
                    traffic: traffic(id),
                })
                .collect(),
        }
    }

    fn outcome() -> EgressOutcome {
        EgressOutcome {
            egress_generation: 0x0102_0304_0506_0708,
            egress_shard: 0,
            egress_seq: 5,
            target: Some(7),
            bytes: 65536,
            delivered: 0,
            dropped_buffer_full: 1,
            dropped_too_large: 0,
            dropped_connection_closed: 0,
        }
    }

    #[test]
    fn outcome_example_matches_the_doc() {
        let bytes = encode(&outcome());
        assert_eq!(bytes.len(), 8 + 4 + 8 + 9 + 8 + 4 * 8);
        assert_eq!(encode(&EgressOutcome { target: None, ..outcome() }).len(), 8 + 4 + 8 + 1 + 8 + 4 * 8);
        let dump = hex_dump(&bytes);
        assert!(DOC.contains(&dump), "RECORDS.md lacks this outcome example:\n{dump}");
        assert!(outcome().dropped() == 1 && !outcome().unmatched());
        assert!(EgressOutcome::default().unmatched());
    }

    /// A group of packets of these lengths, built in a buffer of stale bytes.
    fn build_group(lens: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut buf = vec![0xAA; GroupWriter::capacity_for(lens.len(), 100)];
        let mut group = GroupWriter::new();
        let mut sent = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (i * 31 + b) as u8).collect();
            group.packet_space(&mut buf)[..len].copy_from_slice(&data);
            group.commit_packet(&mut buf, &meta(i as u64), len);
            sent.push(data);
        }
        let len = group.close(&mut buf);
        buf.truncate(len);
        (buf, sent)
    }

    fn hex_dump(bytes: &[u8]) -> String {
        let line = |(i, chunk): (usize, &[u8])| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, hex.join(" "))
        };
        bytes.chunks(16).enumerate().map(line).collect()
    }

    const DOC: &str = include_str!("../RECORDS.md");

    #[test]
    fn addr_converts_both_ways() {
        for s in ["10.1.2.3:80", "[2001:db8::1]:65535", "[::]:0", "0.0.0.0:1"] {
            let sock: SocketAddr = s.parse().unwrap();
            assert_eq!(SocketAddr::from(Addr::from(sock)), sock, "{s}");
        }
        let v4 = addr("192.168.1.20:40000");
        assert_eq!(v4.ip, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 20]);
        assert_eq!(encode(&v4)[16..], [0x40, 0x9c]);
    }

    #[test]
    fn group_decodes_exactly_what_was_written() {
        let lens = [0, 1, 7, 8, 9, 100, 3];
        let (record, sent) = build_group(&lens);
        let packets = decode_group(&record).unwrap();
        assert_eq!(packets.len(), lens.len());
        let received: Vec<Packet<'_>> = packets.collect();
        assert_eq!(received.len(), sent.len());
        for (i, (packet, data)) in received.iter().zip(&sent).enumerate() {
            assert_eq!(packet.meta, meta(i as u64));
            assert_eq!(packet.data, data.as_slice());
        }
    }

    #[test]
    fn group_layout_matches_the_doc() {
        let (record, _) = build_group(&[5, 8]);
        assert_eq!(record.len(), 8 + (48 + 8) + (48 + 8));
        assert_eq!(record[..8], [GROUP_VERSION, 0, 0, 0, 2, 0, 0, 0]);
        let second = 8 + 48 + 8;
        assert_eq!(record[second..second + 8], 1u64.to_le_bytes());
        assert_eq!(record[second + 44..second + 48], 8u32.to_le_bytes());
        assert_eq!(record[8 + 48 + 5..second], [0, 0, 0], "padding is zeroed");

        let mut buf = vec![0xAA; 64];
        let mut group = GroupWriter::new();
        let peer = addr("192.168.1.20:40000");
        let meta = PacketMeta { connection_id: 7, peer, rx_realtime_ns: 0x0102, rx_monotonic_ns: 0x0304 };
        group.packet_space(&mut buf)[..5].copy_from_slice(b"hello");
        group.commit_packet(&mut buf, &meta, 5);
        let len = group.close(&mut buf);
        let dump = hex_dump(&buf[..len]);
        assert!(DOC.contains(&dump), "RECORDS.md lacks this group example:\n{dump}");
    }

    #[test]
    fn group_writer_fills_up_and_stays_aligned() {
        let mut buf = vec![0; GroupWriter::capacity_for(2, 10) + 5];
        let mut group = GroupWriter::new();
        assert_eq!(group.packet_space(&mut buf).len(), 2 * (48 + 16) - 48);
        group.commit_packet(&mut buf, &meta(0), 10);
        assert_eq!(group.record_len(), 8 + 48 + 16);
        assert_eq!(
            group.packet_space(&mut buf).len(),
            16,
            "the 5 bytes past the last multiple of 8 are unused"
        );
        group.commit_packet(&mut buf, &meta(1), 16);
        assert!(group.packet_space(&mut buf).is_empty());
        assert_eq!(group.packets(), 2);
        assert_eq!(group.close(&mut buf), GroupWriter::capacity_for(2, 10));
        assert!(GroupWriter::new().packet_space(&mut [0; 55]).is_empty());
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn committing_more_than_the_packet_space_panics() {
        let mut buf = [0; 64];
        GroupWriter::new().commit_packet(&mut buf, &meta(0), 9);
    }

    #[test]
    fn slotted_group_skips_the_padding_of_each_packet() {
        // Two packets in 256-byte slots, as the io_uring path lays them out:
        // packet headers 256 bytes apart, stale bytes in between.
        let mut record = vec![0xEE; 8 + 256 + 208];
        record[..8].copy_from_slice(&group_header(GROUP_VERSION_SLOTTED, 2));
        let first = slotted_packet_header(&meta(1), 5, ((256 - 48 - 8) / 8) as u16);
        record[8..56].copy_from_slice(&first);
        record[56..61].copy_from_slice(b"hello");
        let second = slotted_packet_header(&meta(2), 12, ((208 - 48 - 16) / 8) as u16);
        record[8 + 256..8 + 256 + 48].copy_from_slice(&second);
        record[8 + 256 + 48..8 + 256 + 60].copy_from_slice(b"hello world!");
        let packets: Vec<_> =
            decode_group(&record).unwrap().map(|p| (p.meta.connection_id, p.data)).collect();
        assert_eq!(packets, [(1, &b"hello"[..]), (2, &b"hello world!"[..])]);
        // Version 1 ignores the field and finds stale bytes where the
        // second header should be.
        record[0] = GROUP_VERSION;
        assert!(decode_group(&record).is_err());
    }

    #[test]
    fn empty_group_is_valid() {
        let mut buf = [0xAA; 8];
        let len = GroupWriter::new().close(&mut buf);
        assert_eq!(decode_group(&buf[..len]).unwrap().len(), 0);
    }

    #[test]
    fn bad_groups_are_named() {
        let (record, _) = build_group(&[5, 8]);
        assert!(matches!(decode_group(&record[..7]), Err(DecodeError::GroupTruncated { len: 7 })));
        let mut v3 = record.clone();
        v3[0] = 3;
        assert!(matches!(decode_group(&v3), Err(DecodeError::UnsupportedVersion(3))));
        // Version 2 reads the reserved u16 as extra padding: here it runs
        // past the end.
        let mut skipping = record.clone();
        skipping[0] = GROUP_VERSION_SLOTTED;
        skipping[8 + 42] = 1;
        assert!(matches!(decode_group(&skipping), Err(DecodeError::PacketTruncated { index: 1, .. })));
        let err = decode_group(&record[..record.len() - 1]).unwrap_err();
        assert!(matches!(err, DecodeError::PacketTruncated { index: 1, needed: 56, available: 55 }), "{err}");
        let mut long = record.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(matches!(decode_group(&long), Err(DecodeError::TrailingBytes { extra: 8, .. })));
        let mut huge = record.clone();
        huge[8 + 44..8 + 48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_group(&huge), Err(DecodeError::PacketTruncated { index: 0, .. })));
    }

    #[test]
    fn control_records_round_trip() {
        for event in events() {
            assert_eq!(decode::<ConnectionEvent>(&encode(&event)).unwrap(), event);
        }
        for stats in [stats(0, ReceivePath::GlommioRead), stats(3, ReceivePath::IoUringMultishot)] {
            assert_eq!(decode::<SocketStats>(&encode(&stats)).unwrap(), stats);
        }
        for target in [None, Some(0), Some(u64::MAX)] {
            let outcome = EgressOutcome { target, delivered: 2, dropped_connection_closed: 1, ..outcome() };
            assert_eq!(decode::<EgressOutcome>(&encode(&outcome)).unwrap(), outcome);
            let header = EgressHeader { target };
            assert_eq!(decode::<EgressHeader>(&encode(&header)).unwrap(), header);
            let record = encode_egress(&header, b"to the sensor");
            assert_eq!(decode_egress(&record).unwrap(), (header, &b"to the sensor"[..]));
            assert_eq!(record.len(), if target.is_some() { EgressHeader::MAX_LEN } else { 1 } + 13);
        }
    }

    #[test]
    fn control_record_sizes_match_the_doc() {
        let connected = &events()[0];
        assert_eq!(encode(connected).len(), 4 + 8 + 8 + 18 + 18);
        assert_eq!(encode(&traffic(0)).len(), 88);
        assert_eq!(encode(&stats(0, ReceivePath::GlommioRead)).len(), 164);
        assert_eq!(encode(&stats(2, ReceivePath::GlommioRead)).len(), 164 + 2 * 114);
        let mut bytes = encode(&stats(0, ReceivePath::GlommioRead));
        assert_eq!(bytes[148..156], 6u64.to_le_bytes(), "stage.bind_failures at 148");
        bytes[148..156].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode::<SocketStats>(&bytes).unwrap().stage.bind_failures, 0);
        assert_eq!(encode(&EgressHeader { target: Some(0x0102) }), [1, 2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&EgressHeader { target: None }), [0]);
    }

    #[test]
    fn event_example_matches_the_doc() {
        let event = ConnectionEvent::Disconnected {
            connection_id: 7,
            time_ns: 1_700_000_000_123_456_789,
            bytes_in: 1500,
            bytes_out: 64,
            reason: DisconnectReason::Error("reset".into()),
        };
        let bytes = encode(&event);
        assert_eq!(bytes.len(), 4 + 8 + 8 + 8 + 8 + 4 + 8 + 5);
        let dump = hex_dump(&bytes);
        assert!(DOC.contains(&dump), "RECORDS.md lacks this event example:\n{dump}");
        assert_eq!(decode::<ConnectionEvent>(&bytes).unwrap(), event);
    }

    #[test]
    fn encode_into_reports_a_short_buffer() {
        let event = &events()[0];
        let mut buf = [0; 64];
        assert_eq!(encode_into(event, &mut buf), Ok(56));
        assert_eq!(buf[..56], encode(event));
        let err = encode_into(event, &mut buf[..55]).unwrap_err();
        assert_eq!(err, EncodeError { record: "ConnectionEvent", needed: 56, capacity: 55 });
    }

    #[test]
    fn bad_control_records_are_named() {
        let mut bytes = encode(&events()[3]);
        assert!(matches!(decode::<ConnectionEvent>(&bytes[..10]), Err(DecodeError::Invalid { .. })));
        bytes.push(0);
        let err = decode::<ConnectionEvent>(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::TrailingBytes { what: "ConnectionEvent", extra: 1 }), "{err}");
        let err = decode::<ConnectionEvent>(&[9, 0, 0, 0]).unwrap_err();
        assert!(err.to_string().starts_with("invalid ConnectionEvent: UnexpectedVariant"), "{err}");
        // A length field of 2^62: rejected, not allocated.
        let mut huge = encode(&stats(0, ReceivePath::GlommioRead));
        let at = huge.len() - 8;
        huge[at..].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(decode::<SocketStats>(&huge), Err(DecodeError::Invalid { .. })));
    }

    /// xorshift64: a deterministic stream of random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Runs every decoder on `bytes`; returns whether any accepted them.
    fn decode_all(bytes: &[u8]) -> bool {
        let group = decode_group(bytes).map(|packets| assert_eq!(packets.clone().count(), packets.len()));
        [
            group.is_ok(),
            decode::<ConnectionEvent>(bytes).is_ok(),
            decode::<SocketStats>(bytes).is_ok(),
            decode::<EgressHeader>(bytes).is_ok(),
            decode_egress(bytes).is_ok(),
            decode::<EgressOutcome>(bytes).is_ok(),
            decode_datagram_group(bytes).is_ok(),
            decode::<UdpSocketStats>(bytes).is_ok(),
            decode_datagram_egress(bytes).is_ok(),
        ]
        .contains(&true)
    }

    #[test]
    fn decoders_survive_random_and_damaged_bytes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut valid: Vec<Vec<u8>> = events().iter().map(encode).collect();
        valid.push(encode(&stats(3, ReceivePath::IoUringMultishot)));
        valid.push(encode_egress(&EgressHeader { target: Some(3) }, b"abc"));
        valid.push(encode(&outcome()));
        valid.push(build_group(&[0, 1, 7, 8, 9, 100, 3]).0);

        for record in &valid {
            assert!(decode_all(record));
            for len in 0..record.len() {
                decode_all(&record[..len]);
            }
        }
        for _ in 0..20_000 {
            let mut bytes = valid[rng.below(valid.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(rng.below(bytes.len() + 1));
            decode_all(&bytes);

            let random: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
            decode_all(&random);
        }
    }

    #[test]
    fn strict_prefixes_are_rejected() {
        let (group, _) = build_group(&[0, 1, 7, 8, 9, 100, 3]);
        for len in 0..group.len() {
            assert!(decode_group(&group[..len]).is_err(), "group prefix of {len} bytes");
        }
        for event in events() {
            let bytes = encode(&event);
            for len in 0..bytes.len() {
                assert!(decode::<ConnectionEvent>(&bytes[..len]).is_err(), "{event:?} prefix of {len} bytes");
            }
        }
        let bytes = encode(&stats(2, ReceivePath::GlommioRead));
        for len in 0..bytes.len() {
            assert!(decode::<SocketStats>(&bytes[..len]).is_err(), "stats prefix of {len} bytes");
        }
    }
}
