//! The records of a UDP stage: datagram groups on `<name>/packet_group`,
//! UDP socket statistics on `<name>/socket_stats` and datagram egress
//! records on `<name>/egress_packets` (`RECORDS.md` §8 to §10).
//!
//! A datagram group has a fixed layout that the engine fills in place, as a
//! packet group: on the io_uring path the kernel writes each datagram into
//! a slot of the ring, after its own receive header, so the datagram's
//! header says where its data starts (`data_offset`) and where the next
//! datagram starts (`size`) instead of assuming they follow each other.

use bincode::{Decode, Encode};

use super::{Addr, DecodeError, GROUP_HEADER_LEN, ReceivePath, bytes_at, group_header};

/// Record kind of a datagram group, on `<name>/packet_group` of a UDP stage.
pub const KIND_DATAGRAM_GROUP: u16 = 6;
/// Record kind of a [`UdpSocketStats`], on `<name>/socket_stats` of a UDP stage.
pub const KIND_UDP_SOCKET_STATS: u16 = 7;
/// Record kind of a datagram egress record ([`DatagramEgressHeader`] +
/// bytes), on `<name>/egress_packets` of a UDP stage.
pub const KIND_DATAGRAM_EGRESS: u16 = 8;

/// Version of the datagram group layout: byte 0 of every group.
pub const DATAGRAM_GROUP_VERSION: u8 = 1;
/// Length of a datagram's header inside a group.
pub const DATAGRAM_HEADER_LEN: usize = 80;

/// [`DatagramMeta::flags`]: the datagram was longer than the stage's
/// `max_datagram_size_b`; the record holds its first `len` bytes.
pub const FLAG_TRUNCATED: u16 = 1 << 0;
/// [`DatagramMeta::flags`]: `kernel_rx_ns` holds the kernel's receive time.
pub const FLAG_KERNEL_TIME: u16 = 1 << 1;
/// [`DatagramMeta::flags`]: `kernel_rx_ns` is the network card's hardware
/// time (with [`FLAG_KERNEL_TIME`]).
pub const FLAG_HARDWARE_TIME: u16 = 1 << 2;
/// [`DatagramMeta::flags`]: the kernel had more control data than fitted
/// (the destination or the kernel time may be missing).
pub const FLAG_CONTROL_TRUNCATED: u16 = 1 << 3;

/// Where, how and when a datagram arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The sender.
    pub source: Addr,
    /// The address it was sent to (`IP_PKTINFO`): the stage's own address,
    /// or the multicast group. All zero when the kernel did not say.
    pub destination: Addr,
    /// When the engine received it, `CLOCK_REALTIME` in ns since the epoch.
    pub rx_realtime_ns: u64,
    /// The same instant, `CLOCK_MONOTONIC` in ns.
    pub rx_monotonic_ns: u64,
    /// When the kernel (or the network card) received it, `CLOCK_REALTIME`
    /// in ns; 0 without [`FLAG_KERNEL_TIME`].
    pub kernel_rx_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The datagram's length on the wire: more than the data's length when
    /// [`FLAG_TRUNCATED`] is set.
    pub original_len: u32,
}

impl DatagramMeta {
    /// Whether only the datagram's first bytes are in the record.
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TRUNCATED != 0
    }

    /// The kernel's receive time, and whether it is the hardware's.
    pub fn kernel_time(&self) -> Option<(u64, bool)> {
        (self.flags & FLAG_KERNEL_TIME != 0)
            .then_some((self.kernel_rx_ns, self.flags & FLAG_HARDWARE_TIME != 0))
    }
}

/// The header of a datagram of `len` bytes whose data starts `data_offset`
/// bytes after the header and whose successor starts `size` bytes after it.
pub(crate) fn datagram_header(
    meta: &DatagramMeta,
    len: u32,
    data_offset: u16,
    size: u32,
) -> [u8; DATAGRAM_HEADER_LEN] {
    let mut h = [0; DATAGRAM_HEADER_LEN];
    h[0..4].copy_from_slice(&size.to_le_bytes());
    h[4..6].copy_from_slice(&data_offset.to_le_bytes());
    h[6..8].copy_from_slice(&meta.flags.to_le_bytes());
    h[8..16].copy_from_slice(&meta.rx_realtime_ns.to_le_bytes());
    h[16..24].copy_from_slice(&meta.rx_monotonic_ns.to_le_bytes());
    h[24..32].copy_from_slice(&meta.kernel_rx_ns.to_le_bytes());
    h[32..48].copy_from_slice(&meta.source.ip);
    h[48..50].copy_from_slice(&meta.source.port.to_le_bytes());
    h[50..52].copy_from_slice(&meta.destination.port.to_le_bytes());
    h[52..56].copy_from_slice(&len.to_le_bytes());
    h[56..72].copy_from_slice(&meta.destination.ip);
    h[72..76].copy_from_slice(&meta.original_len.to_le_bytes());
    // 76..80: reserved, zero.
    h
}

/// The group header of a datagram group of `datagrams` datagrams.
pub(crate) fn datagram_group_header(datagrams: u32) -> [u8; GROUP_HEADER_LEN] {
    group_header(DATAGRAM_GROUP_VERSION, datagrams)
}

/// Builds a datagram group in place, datagram by datagram, with each
/// datagram's data right after its header: receive into
/// [`Self::datagram_space`], [`Self::commit_datagram`] the length
/// received, and finally [`Self::close`].
///
/// ```
/// use engine::records::{DatagramGroupWriter, DatagramMeta, decode_datagram_group};
///
/// let mut buf = vec![0xAA; DatagramGroupWriter::capacity_for(2, 1206)];
/// let mut group = DatagramGroupWriter::new();
/// for received in [&b"lidar"[..], b"points"] {
///     group.datagram_space(&mut buf)[..received.len()].copy_from_slice(received); // recvmmsg(2) here
///     let meta = DatagramMeta { original_len: received.len() as u32, ..Default::default() };
///     group.commit_datagram(&mut buf, &meta, received.len());
/// }
/// let len = group.close(&mut buf);
/// let datagrams: Vec<_> = decode_datagram_group(&buf[..len]).unwrap().map(|d| d.data).collect();
/// assert_eq!(datagrams, [b"lidar".as_slice(), b"points"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramGroupWriter {
    /// Bytes used so far, including the group header; a multiple of 8.
    len: usize,
    datagrams: u32,
}

impl Default for DatagramGroupWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl DatagramGroupWriter {
    /// An empty group.
    pub const fn new() -> Self {
        Self { len: GROUP_HEADER_LEN, datagrams: 0 }
    }

    /// The record length that holds `datagrams` datagrams of up to `len`
    /// bytes each.
    pub const fn capacity_for(datagrams: usize, len: usize) -> usize {
        GROUP_HEADER_LEN + datagrams * (DATAGRAM_HEADER_LEN + len.next_multiple_of(8))
    }

    /// Where the next datagram's bytes go: after its header, up to the end
    /// of `buf` rounded down to a multiple of 8. Empty when full.
    pub fn datagram_space<'b>(&self, buf: &'b mut [u8]) -> &'b mut [u8] {
        let end = buf.len() / 8 * 8;
        buf.get_mut(self.len + DATAGRAM_HEADER_LEN..end).unwrap_or_default()
    }

    /// Adds the datagram whose `len` bytes were written at the start of
    /// [`Self::datagram_space`].
    ///
    /// # Panics
    ///
    /// If `len` is longer than [`Self::datagram_space`].
    pub fn commit_datagram(&mut self, buf: &mut [u8], meta: &DatagramMeta, len: usize) {
        let header = self.len;
        let data = header + DATAGRAM_HEADER_LEN;
        let end = data + len.next_multiple_of(8);
        assert!(
            end <= buf.len(),
            "a {len}-byte datagram at offset {data} overflows the {}-byte buffer",
            buf.len()
        );
        let len32 = u32::try_from(len).expect("a datagram is shorter than 4 GiB");
        let size = (end - header) as u32;
        buf[header..data].copy_from_slice(&datagram_header(meta, len32, DATAGRAM_HEADER_LEN as u16, size));
        buf[data + len..end].fill(0);
        self.len = end;
        self.datagrams += 1;
    }

    /// Datagrams added so far.
    pub fn datagrams(&self) -> u32 {
        self.datagrams
    }

    /// Length the record has so far (a multiple of 8): where the next
    /// datagram's header goes.
    pub fn record_len(&self) -> usize {
        self.len
    }

    /// Writes the group header and returns the record length.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`GROUP_HEADER_LEN`].
    pub fn close(self, buf: &mut [u8]) -> usize {
        buf[..GROUP_HEADER_LEN].copy_from_slice(&datagram_group_header(self.datagrams));
        self.len
    }
}

/// A datagram read from a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Where, how and when it arrived.
    pub meta: DatagramMeta,
    /// Its bytes (the first ones only, if [`DatagramMeta::truncated`]).
    pub data: &'a [u8],
}

/// Checks a datagram group record and returns its datagrams. Every
/// datagram header is checked here, so iterating cannot fail.
pub fn decode_datagram_group(record: &[u8]) -> Result<Datagrams<'_>, DecodeError> {
    let (header, rest) = record
        .split_first_chunk::<GROUP_HEADER_LEN>()
        .ok_or(DecodeError::GroupTruncated { len: record.len() })?;
    if header[0] != DATAGRAM_GROUP_VERSION {
        return Err(DecodeError::UnsupportedDatagramVersion(header[0]));
    }
    let datagrams = Datagrams { rest, next: 0, count: u32::from_le_bytes(bytes_at(header, 4)) };
    let mut check = datagrams.clone();
    while check.next < check.count {
        check.split_next()?;
    }
    match check.rest.len() {
        0 => Ok(datagrams),
        extra => Err(DecodeError::TrailingBytes { what: "datagram group", extra }),
    }
}

/// The datagrams of a group, in the order the engine received them: see
/// [`decode_datagram_group`].
#[derive(Debug, Clone)]
pub struct Datagrams<'a> {
    rest: &'a [u8],
    next: u32,
    count: u32,
}

impl<'a> Datagrams<'a> {
    fn split_next(&mut self) -> Result<Datagram<'a>, DecodeError> {
        let index = self.next;
        let available = self.rest.len();
        let (header, _) = self
            .rest
            .split_first_chunk::<DATAGRAM_HEADER_LEN>()
            .ok_or(DecodeError::PacketTruncated { index, needed: DATAGRAM_HEADER_LEN, available })?;
        let size = u32::from_le_bytes(bytes_at(header, 0)) as usize;
        let data_offset = usize::from(u16::from_le_bytes(bytes_at(header, 4)));
        let len = u32::from_le_bytes(bytes_at(header, 52)) as usize;
        let bad = |what| DecodeError::BadDatagram { index, what };
        if data_offset < DATAGRAM_HEADER_LEN || data_offset % 8 != 0 {
            return Err(bad("data_offset is below 80 or not a multiple of 8"));
        }
        if size % 8 != 0 || size < data_offset.saturating_add(len) {
            return Err(bad("size is not a multiple of 8 or ends before the data"));
        }
        if size > available {
            return Err(DecodeError::PacketTruncated { index, needed: size, available });
        }
        let meta = DatagramMeta {
            flags: u16::from_le_bytes(bytes_at(header, 6)),
            rx_realtime_ns: u64::from_le_bytes(bytes_at(header, 8)),
            rx_monotonic_ns: u64::from_le_bytes(bytes_at(header, 16)),
            kernel_rx_ns: u64::from_le_bytes(bytes_at(header, 24)),
            source: Addr { ip: bytes_at(header, 32), port: u16::from_le_bytes(bytes_at(header, 48)) },
            destination: Addr { ip: bytes_at(header, 56), port: u16::from_le_bytes(bytes_at(header, 50)) },
            original_len: u32::from_le_bytes(bytes_at(header, 72)),
        };
        let (this, rest) = self.rest.split_at(size);
        self.rest = rest;
        self.next += 1;
        Ok(Datagram { meta, data: &this[data_offset..data_offset + len] })
    }
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        if self.next == self.count {
            return None;
        }
        // `decode_datagram_group` checked every datagram.
        self.split_next().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Datagrams<'_> {}

/// The start of a datagram egress record: where the bytes that follow go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct DatagramEgressHeader {
    /// `None`: the stage's `egress_destination`; `Some`: this address.
    pub destination: Option<Addr>,
}

/// A datagram egress record: `header`, then the datagram's bytes.
pub fn encode_datagram_egress(header: &DatagramEgressHeader, data: &[u8]) -> Vec<u8> {
    let mut record = super::encode(header);
    record.extend_from_slice(data);
    record
}

/// Splits a datagram egress record into its header and the bytes to send.
pub fn decode_datagram_egress(record: &[u8]) -> Result<(DatagramEgressHeader, &[u8]), DecodeError> {
    let (header, used) = super::decode_prefix(record)?;
    Ok((header, &record[used..]))
}

/// A UDP stage's statistics, once a second on `<name>/socket_stats`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct UdpSocketStats {
    /// When sampled, `CLOCK_REALTIME` in ns since the Unix epoch.
    pub time_ns: u64,
    /// Time since the previous sample, in ns: what the rates cover.
    pub interval_ns: u64,
    /// How the stage receives.
    pub receive_path: ReceivePath,
    /// Datagram groups published.
    pub groups_published: u64,
    /// Each socket of the stage (one per executor).
    pub sockets: Vec<UdpSocketCounters>,
}

/// One UDP socket's counters; totals count from the stage's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Encode, Decode)]
pub struct UdpSocketCounters {
    /// The executor that owns the socket.
    pub executor: u32,
    /// The address it is bound to.
    pub local: Addr,
    /// Datagrams received (truncated ones included).
    pub datagrams: u64,
    /// Data bytes received (of truncated datagrams, the bytes kept).
    pub bytes: u64,
    /// Datagrams per second over the interval.
    pub datagrams_per_s: f64,
    /// Data bytes per second over the interval.
    pub bytes_per_s: f64,
    /// Datagrams the kernel dropped before the stage read them (its socket
    /// buffer was full: `SO_RXQ_OVFL`'s counter), since the stage started.
    pub kernel_drops: u64,
    /// Datagrams longer than `max_datagram_size_b`, kept truncated.
    pub truncated: u64,
    /// Times the stage paused reading because `packet_group` was full (a
    /// lossless reader lagging); the kernel buffer absorbs meanwhile.
    pub ring_full_stalls: u64,
    /// Largest datagram received in the interval; 0 if none.
    pub max_datagram_size: u64,
    /// Egress datagrams sent.
    pub egress_sent: u64,
    /// Egress records dropped (no destination, or the send failed).
    pub egress_drops: u64,
    /// The kernel receive buffer the socket got, in bytes (`SO_RCVBUF`).
    pub kernel_receive_buffer_b: u64,
}

impl UdpSocketStats {
    /// All sockets' counters added up (rates too; the maximum of maxima).
    pub fn total(&self) -> UdpSocketCounters {
        self.sockets.iter().fold(UdpSocketCounters::default(), |mut t, s| {
            t.datagrams += s.datagrams;
            t.bytes += s.bytes;
            t.datagrams_per_s += s.datagrams_per_s;
            t.bytes_per_s += s.bytes_per_s;
            t.kernel_drops += s.kernel_drops;
            t.truncated += s.truncated;
            t.ring_full_stalls += s.ring_full_stalls;
            t.max_datagram_size = t.max_datagram_size.max(s.max_datagram_size);
            t.egress_sent += s.egress_sent;
            t.egress_drops += s.egress_drops;
            t.kernel_receive_buffer_b += s.kernel_receive_buffer_b;
            t
        })
    }
}

/// Bytes of a [`UdpSocketStats`] record with `sockets` sockets:
/// `36 + 110 k` (`RECORDS.md` §9).
pub const fn udp_stats_record_size(sockets: usize) -> usize {
    36 + 110 * sockets
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::records::{decode, encode};

    const DOC: &str = include_str!("../../RECORDS.md");

    fn addr(s: &str) -> Addr {
        s.parse::<SocketAddr>().unwrap().into()
    }

    fn hex_dump(bytes: &[u8]) -> String {
        let line = |(i, chunk): (usize, &[u8])| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, hex.join(" "))
        };
        bytes.chunks(16).enumerate().map(line).collect()
    }

    fn example_meta() -> DatagramMeta {
        DatagramMeta {
            source: addr("192.168.1.201:2368"),
            destination: addr("239.1.2.3:2368"),
            rx_realtime_ns: 0x0102,
            rx_monotonic_ns: 0x0304,
            kernel_rx_ns: 0x0506,
            flags: FLAG_KERNEL_TIME,
            original_len: 5,
        }
    }

    #[test]
    fn datagram_group_example_matches_the_doc() {
        let mut buf = vec![0xEE; DatagramGroupWriter::capacity_for(1, 5)];
        let mut group = DatagramGroupWriter::new();
        group.datagram_space(&mut buf)[..5].copy_from_slice(b"hello");
        group.commit_datagram(&mut buf, &example_meta(), 5);
        let len = group.close(&mut buf);
        assert_eq!(len, 8 + 80 + 8);
        let dump = hex_dump(&buf[..len]);
        assert!(DOC.contains(&dump), "RECORDS.md lacks this datagram group example:\n{dump}");
        let datagrams: Vec<_> = decode_datagram_group(&buf[..len]).unwrap().collect();
        assert_eq!(datagrams, [Datagram { meta: example_meta(), data: b"hello" }]);
    }

    #[test]
    fn a_slotted_datagram_with_a_gap_before_its_data_decodes() {
        // As the io_uring path lays them out: data 168 bytes after the
        // header, and the slot's unused end before the next datagram.
        let slot = 512;
        let mut buf = vec![0xEE; GROUP_HEADER_LEN + 2 * slot];
        buf[..8].copy_from_slice(&datagram_group_header(2));
        for (i, data) in [&b"first"[..], b"second one"].iter().enumerate() {
            let at = 8 + i * slot;
            let meta = DatagramMeta { original_len: data.len() as u32, ..example_meta() };
            let size = slot as u32;
            buf[at..at + 80].copy_from_slice(&datagram_header(&meta, data.len() as u32, 168, size));
            buf[at + 168..at + 168 + data.len()].copy_from_slice(data);
        }
        let got: Vec<&[u8]> = decode_datagram_group(&buf).unwrap().map(|d| d.data).collect();
        assert_eq!(got, [&b"first"[..], b"second one"]);
    }

    #[test]
    fn bad_datagram_groups_are_rejected() {
        let mut buf = vec![0; DatagramGroupWriter::capacity_for(1, 5)];
        let mut group = DatagramGroupWriter::new();
        group.commit_datagram(&mut buf, &example_meta(), 5);
        let len = group.close(&mut buf);
        for cut in 0..len {
            assert!(decode_datagram_group(&buf[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut v2 = buf.clone();
        v2[0] = 2;
        assert!(matches!(decode_datagram_group(&v2), Err(DecodeError::UnsupportedDatagramVersion(2))));
        let mut low_offset = buf.clone();
        low_offset[8 + 4] = 72;
        assert!(matches!(decode_datagram_group(&low_offset), Err(DecodeError::BadDatagram { index: 0, .. })));
        let mut short_size = buf.clone();
        short_size[8] = 80;
        assert!(matches!(decode_datagram_group(&short_size), Err(DecodeError::BadDatagram { index: 0, .. })));
        let mut long_len = buf.clone();
        long_len[8 + 52] = 9;
        assert!(decode_datagram_group(&long_len).is_err());
        let mut more = buf[..len].to_vec();
        more.extend([0; 8]);
        assert!(matches!(decode_datagram_group(&more), Err(DecodeError::TrailingBytes { extra: 8, .. })));
        // Random damage never panics.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut bytes = buf[..len].to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % len as u64) as usize;
            bytes[at] = (seed >> 32) as u8;
            bytes.truncate((seed >> 40) as usize % (len + 1));
            if let Ok(datagrams) = decode_datagram_group(&bytes) {
                assert_eq!(datagrams.clone().count(), datagrams.len());
            }
        }
    }

    #[test]
    fn datagram_egress_example_matches_the_doc() {
        let to = DatagramEgressHeader { destination: Some(addr("192.168.1.201:2368")) };
        let record = encode_datagram_egress(&to, b"hi");
        let dump = hex_dump(&record);
        assert!(DOC.contains(&dump), "RECORDS.md lacks this egress example:\n{dump}");
        assert_eq!(decode_datagram_egress(&record).unwrap(), (to, &b"hi"[..]));
        let default = encode_datagram_egress(&DatagramEgressHeader { destination: None }, b"hi");
        assert_eq!(default, [0, b'h', b'i']);
    }

    #[test]
    fn udp_stats_round_trip_and_have_a_fixed_size() {
        let socket = UdpSocketCounters {
            executor: 1,
            local: addr("0.0.0.0:2368"),
            datagrams: 5,
            ..Default::default()
        };
        let stats = UdpSocketStats {
            time_ns: 1,
            interval_ns: 2,
            receive_path: ReceivePath::IoUringMultishot,
            groups_published: 3,
            sockets: vec![socket; 3],
        };
        let bytes = encode(&stats);
        assert_eq!(bytes.len(), udp_stats_record_size(3));
        assert_eq!(decode::<UdpSocketStats>(&bytes).unwrap(), stats);
        assert_eq!(stats.total().datagrams, 15);
    }
}
