//! The UDP datagrams of a packet capture (pcap or pcapng, as tcpdump,
//! Wireshark and lidar vendors' tools write them), in capture order, with
//! the capture's timestamps.
//!
//! Frames are read with `pcap-file` and taken apart with `etherparse`:
//! Ethernet (with VLAN tags), Linux cooked captures v1 and v2 (`tcpdump -i
//! any`), raw IP and BSD loopback; IPv4 and IPv6. Every frame that yields
//! no datagram is counted by why. IP fragments are not reassembled (lidar
//! and RTP datagrams fit in one frame): they are counted and skipped.
//!
//! Timestamps are computed here rather than taken from `pcap-file`'s
//! packets: its pcapng reader ignores the interfaces' `if_tsresol` (the
//! default resolution is µs, not ns) and its checked pcap packets refuse
//! frames whose wire length exceeds the snap length, which a capture with
//! `-s` legitimately holds.

use std::fs::File;
use std::io::{BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

/// What a file is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Mcap,
    Pcap,
    PcapNg,
}

/// Tells an MCAP log from a pcap or pcapng capture.
pub fn file_kind(path: &Path) -> anyhow::Result<FileKind> {
    let mut magic = [0; 8];
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = 0;
    while len < magic.len() {
        match file.read(&mut magic[len..]).with_context(|| format!("cannot read {}", path.display()))? {
            0 => break,
            n => len += n,
        }
    }
    Ok(match magic {
        [0x89, b'M', b'C', b'A', b'P', ..] => FileKind::Mcap,
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => FileKind::PcapNg,
        [0xd4, 0xc3, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0xc3, 0xd4, ..]
        | [0x4d, 0x3c, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0x3c, 0x4d, ..] => FileKind::Pcap,
        // Let the MCAP reader say what is wrong: the TCP replay's file.
        _ => FileKind::Mcap,
    })
}

/// A UDP datagram of the capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedDatagram {
    /// When it was captured, ns since the epoch (the capture's clock).
    pub time_ns: u64,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// Which datagrams to take.
#[derive(Clone, Debug, Default)]
pub struct CaptureFilter {
    /// Destination ports; empty: any.
    pub ports: Vec<u16>,
    /// Sources, by address and optionally port; empty: any.
    pub sources: Vec<SourceFilter>,
}

/// `--src IP` or `--src IP:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFilter {
    Host(IpAddr),
    Socket(SocketAddr),
}

impl std::str::FromStr for SourceFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(Self::Socket(socket));
        }
        text.parse::<IpAddr>()
            .map(Self::Host)
            .map_err(|_| format!("{text:?} is not an IP address or ip:port ([v6]:port)"))
    }
}

impl CaptureFilter {
    fn takes(&self, source: SocketAddr, destination: SocketAddr) -> bool {
        let port = self.ports.is_empty() || self.ports.contains(&destination.port());
        let sender = self.sources.is_empty()
            || self.sources.iter().any(|filter| match filter {
                SourceFilter::Host(ip) => unmapped(source.ip()) == unmapped(*ip),
                SourceFilter::Socket(socket) => {
                    unmapped(source.ip()) == unmapped(socket.ip()) && source.port() == socket.port()
                }
            });
        port && sender
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Frames read, and why those that gave no datagram did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    pub frames: u64,
    /// Datagrams taken (after the filter).
    pub datagrams: u64,
    /// Frames of other protocols (TCP, ARP, ICMP, ...).
    pub not_udp: u64,
    /// Frames of a link type this reader does not know.
    pub unknown_link: u64,
    /// Frames whose headers do not parse (or whose lengths disagree).
    pub malformed: u64,
    /// Frames the capture kept only in part (snap length): their datagram
    /// is incomplete.
    pub cut_by_snap_length: u64,
    /// Fragments of IP datagrams larger than a frame (not reassembled).
    pub fragments: u64,
    /// UDP datagrams left out by `--udp-port` or `--src`.
    pub filtered: u64,
}

impl CaptureCounts {
    /// "3 not UDP, 1 malformed", or "" when every frame gave a datagram.
    pub fn skipped(&self) -> String {
        let parts: Vec<String> = [
            (self.not_udp, "not UDP"),
            (self.unknown_link, "of an unknown link type"),
            (self.malformed, "malformed"),
            (self.cut_by_snap_length, "cut by the capture's snap length"),
            (self.fragments, "IP fragments (not reassembled)"),
            (self.filtered, "left out by --udp-port or --src"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        parts.join(", ")
    }
}

/// A link type and timestamp scale per pcapng interface.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link: DataLink,
    /// Units per second of its timestamps, as a power: 10^n or 2^n.
    resolution: Resolution,
    /// Seconds added to its timestamps (`if_tsoffset`).
    offset_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    Decimal(u8),
    Binary(u8),
}

impl Resolution {
    /// Nanoseconds of `units` of this resolution, if they fit.
    fn nanos(self, units: u64) -> Option<u64> {
        let units = u128::from(units);
        let ns = match self {
            Self::Decimal(exp) if exp <= 9 => units.checked_mul(10u128.pow(u32::from(9 - exp)))?,
            Self::Decimal(exp) => units / 10u128.checked_pow(u32::from(exp - 9))?,
            Self::Binary(exp) => units.checked_mul(1_000_000_000)? >> exp.min(127),
        };
        u64::try_from(ns).ok()
    }
}

enum Frames {
    Pcap { reader: PcapReader<BufReader<File>>, link: DataLink, nanosecond: bool },
    PcapNg { reader: PcapNgReader<BufReader<File>>, interfaces: Vec<Interface>, last_time_ns: u64 },
}

/// One frame: its time, link type, bytes, and length on the wire.
struct Frame {
    time_ns: Option<u64>,
    link: DataLink,
    data: Vec<u8>,
    original_len: u32,
}

/// The datagrams of a capture file, streamed.
pub struct CaptureDatagrams {
    frames: Frames,
    path: PathBuf,
    filter: CaptureFilter,
    counts: CaptureCounts,
    failed: bool,
}

/// Length of a Linux cooked capture v2 header (LINKTYPE_LINUX_SLL2).
const SLL2_HEADER_LEN: usize = 20;

impl CaptureDatagrams {
    pub fn open(path: &Path, kind: FileKind, filter: CaptureFilter) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let damaged = || format!("{} is not a valid capture", path.display());
        let frames = match kind {
            FileKind::Pcap => {
                let reader = PcapReader::new(BufReader::new(file)).with_context(damaged)?;
                let header = reader.header();
                Frames::Pcap {
                    link: header.datalink,
                    nanosecond: header.ts_resolution == pcap_file::TsResolution::NanoSecond,
                    reader,
                }
            }
            FileKind::PcapNg => {
                let reader = PcapNgReader::new(BufReader::new(file)).with_context(damaged)?;
                Frames::PcapNg { reader, interfaces: Vec::new(), last_time_ns: 0 }
            }
            FileKind::Mcap => bail!("{} is an MCAP file, not a capture", path.display()),
        };
        Ok(Self { frames, path: path.to_owned(), filter, counts: CaptureCounts::default(), failed: false })
    }

    /// What was read so far.
    pub fn counts(&self) -> CaptureCounts {
        self.counts
    }

    /// The next frame, `None` at the end of the file.
    fn next_frame(&mut self) -> Option<anyhow::Result<Frame>> {
        let frame_number = self.counts.frames + 1;
        let context = |path: &Path| format!("{} is damaged at frame {frame_number}", path.display());
        loop {
            match &mut self.frames {
                Frames::Pcap { reader, link, nanosecond } => {
                    let packet = match reader.next_raw_packet()? {
                        Ok(packet) => packet,
                        Err(e) => return Some(Err(anyhow::Error::new(e).context(context(&self.path)))),
                    };
                    let fraction = u64::from(packet.ts_frac) * if *nanosecond { 1 } else { 1000 };
                    return Some(Ok(Frame {
                        time_ns: Some(u64::from(packet.ts_sec) * 1_000_000_000 + fraction),
                        link: *link,
                        data: packet.data.into_owned(),
                        original_len: packet.orig_len,
                    }));
                }
                Frames::PcapNg { reader, interfaces, last_time_ns } => {
                    let block = match reader.next_block()? {
                        Ok(block) => block,
                        Err(e) => return Some(Err(anyhow::Error::new(e).context(context(&self.path)))),
                    };
                    let interface = |id: u32| interfaces.get(id as usize).copied();
                    let (id, raw_time, data, original_len) = match block {
                        Block::SectionHeader(_) => {
                            interfaces.clear();
                            continue;
                        }
                        Block::InterfaceDescription(description) => {
                            let mut resolution = Resolution::Decimal(6);
                            let mut offset_s = 0;
                            for option in &description.options {
                                match option {
                                    InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 != 0 => {
                                        resolution = Resolution::Binary(r & 0x7f)
                                    }
                                    InterfaceDescriptionOption::IfTsResol(r) => {
                                        resolution = Resolution::Decimal(*r)
                                    }
                                    InterfaceDescriptionOption::IfTsOffset(s) => offset_s = *s,
                                    _ => {}
                                }
                            }
                            interfaces.push(Interface { link: description.linktype, resolution, offset_s });
                            continue;
                        }
                        // pcap-file reads the raw timestamp as ns: its units.
                        Block::EnhancedPacket(packet) => (
                            packet.interface_id,
                            Some(packet.timestamp.as_nanos() as u64),
                            packet.data.into_owned(),
                            packet.original_len,
                        ),
                        Block::Packet(packet) => (
                            u32::from(packet.interface_id),
                            Some(packet.timestamp),
                            packet.data.into_owned(),
                            packet.original_len,
                        ),
                        // No time of its own: it takes the previous frame's.
                        Block::SimplePacket(packet) => {
                            (0, None, packet.data.into_owned(), packet.original_len)
                        }
                        _ => continue,
                    };
                    let Some(interface) = interface(id) else {
                        let e = anyhow::anyhow!("a packet of interface {id}, which no block describes");
                        return Some(Err(e.context(context(&self.path))));
                    };
                    let time_ns = match raw_time {
                        None => Some(*last_time_ns),
                        Some(units) => interface
                            .resolution
                            .nanos(units)
                            .and_then(|ns| ns.checked_add(interface.offset_s.checked_mul(1_000_000_000)?)),
                    };
                    if let Some(time) = time_ns {
                        *last_time_ns = time;
                    }
                    return Some(Ok(Frame { time_ns, link: interface.link, data, original_len }));
                }
            }
        }
    }

    /// The datagram in `frame`, if any; counts the frame otherwise.
    fn datagram_of(&mut self, frame: &Frame) -> Option<CapturedDatagram> {
        let Some(time_ns) = frame.time_ns else {
            self.counts.malformed += 1; // a timestamp beyond 2554
            return None;
        };
        match (frame.data.len() as u64).cmp(&u64::from(frame.original_len)) {
            std::cmp::Ordering::Less => {
                self.counts.cut_by_snap_length += 1;
                return None;
            }
            // More bytes than the frame had on the wire.
            std::cmp::Ordering::Greater => {
                self.counts.malformed += 1;
                return None;
            }
            std::cmp::Ordering::Equal => {}
        }
        let data = &frame.data[..];
        let sliced = match frame.link {
            DataLink::ETHERNET => SlicedPacket::from_ethernet(data),
            DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data),
            DataLink::LINUX_SLL2 if data.len() >= SLL2_HEADER_LEN => {
                let protocol = EtherType(u16::from_be_bytes([data[0], data[1]]));
                SlicedPacket::from_ether_type(protocol, &data[SLL2_HEADER_LEN..])
            }
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data),
            // A 4-byte address family, then the IP packet.
            DataLink::NULL | DataLink::LOOP if data.len() >= 4 => SlicedPacket::from_ip(&data[4..]),
            DataLink::LINUX_SLL2 | DataLink::NULL | DataLink::LOOP => {
                self.counts.malformed += 1;
                return None;
            }
            _ => {
                self.counts.unknown_link += 1;
                return None;
            }
        };
        let Ok(packet) = sliced else {
            self.counts.malformed += 1;
            return None;
        };
        let addresses = match &packet.net {
            Some(NetSlice::Ipv4(ip)) => {
                Some((IpAddr::V4(ip.header().source_addr()), IpAddr::V4(ip.header().destination_addr())))
            }
            Some(NetSlice::Ipv6(ip)) => {
                Some((IpAddr::V6(ip.header().source_addr()), IpAddr::V6(ip.header().destination_addr())))
            }
            _ => None,
        };
        let Some((source_ip, destination_ip)) = addresses else {
            self.counts.not_udp += 1;
            return None;
        };
        let fragmented = match &packet.net {
            Some(NetSlice::Ipv4(ip)) => ip.is_payload_fragmented(),
            Some(NetSlice::Ipv6(ip)) => ip.is_payload_fragmented(),
            _ => false,
        };
        if fragmented {
            self.counts.fragments += 1;
            return None;
        }
        let (ports, payload) = match &packet.transport {
            Some(TransportSlice::Udp(udp)) => {
                ((udp.source_port(), udp.destination_port()), udp.payload().to_vec())
            }
            _ => {
                self.counts.not_udp += 1;
                return None;
            }
        };
        let source = SocketAddr::new(source_ip, ports.0);
        let destination = SocketAddr::new(destination_ip, ports.1);
        if !self.filter.takes(source, destination) {
            self.counts.filtered += 1;
            return None;
        }
        self.counts.datagrams += 1;
        Some(CapturedDatagram { time_ns, source, destination, payload })
    }
}

impl Iterator for CaptureDatagrams {
    /// A datagram; after an error (a damaged capture), nothing more.
    type Item = anyhow::Result<CapturedDatagram>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let frame = match self.next_frame() {
                None => return None,
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Some(Ok(frame)) => frame,
            };
            self.counts.frames += 1;
            if let Some(datagram) = self.datagram_of(&frame) {
                return Some(Ok(datagram));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_resolutions_scale_to_nanoseconds() {
        assert_eq!(Resolution::Decimal(6).nanos(1_500_000), Some(1_500_000_000));
        assert_eq!(Resolution::Decimal(9).nanos(7), Some(7));
        assert_eq!(Resolution::Decimal(12).nanos(7_000), Some(7));
        assert_eq!(Resolution::Binary(10).nanos(1024), Some(1_000_000_000));
        assert_eq!(Resolution::Decimal(0).nanos(u64::MAX), None);
        // Absurd resolutions give no time (the frame counts as malformed).
        assert_eq!(Resolution::Decimal(127).nanos(u64::MAX), None);
        assert_eq!(Resolution::Binary(127).nanos(u64::MAX), Some(0));
    }

    #[test]
    fn source_filters_parse_and_match() {
        let filter = CaptureFilter {
            ports: vec![2368],
            sources: vec!["10.0.0.1".parse().unwrap(), "[::1]:9".parse().unwrap()],
        };
        let to = |port| SocketAddr::from(([239, 1, 1, 1], port));
        assert!(filter.takes("10.0.0.1:5".parse().unwrap(), to(2368)));
        assert!(filter.takes("[::ffff:10.0.0.1]:5".parse().unwrap(), to(2368)));
        assert!(!filter.takes("10.0.0.1:5".parse().unwrap(), to(2369)));
        assert!(filter.takes("[::1]:9".parse().unwrap(), to(2368)));
        assert!(!filter.takes("[::1]:8".parse().unwrap(), to(2368)));
        assert!("lidar".parse::<SourceFilter>().is_err());
    }
}
