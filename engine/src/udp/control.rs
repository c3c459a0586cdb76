//! What the kernel says about a datagram besides its bytes, parsed from
//! the raw bytes it wrote: the source address (a `sockaddr`) and the
//! control messages (packet info, receive timestamps). Both receive paths
//! get these as bytes (from `recvmmsg`, or inside an io_uring buffer), so
//! parsing needs no `unsafe` and never trusts a length it reads.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::sys::udp::SO_TIMESTAMPING;

/// A control message's header on 64-bit Linux: `cmsg_len` (usize),
/// `cmsg_level` (i32), `cmsg_type` (i32); the data follows, and the next
/// message starts at the next multiple of 8.
const CMSG_HEADER: usize = 16;

/// What the control messages of one datagram said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ControlInfo {
    /// The address the datagram was sent to (`IP_PKTINFO`, `IPV6_PKTINFO`).
    pub(crate) destination: Option<IpAddr>,
    /// The kernel's receive time in ns since the epoch, and whether the
    /// network card took it (`SO_TIMESTAMPING`).
    pub(crate) kernel_time: Option<(u64, bool)>,
}

/// Parses the control messages in `control`; unknown ones are skipped,
/// a malformed one ends the parse.
pub(crate) fn parse_control(control: &[u8]) -> ControlInfo {
    let mut info = ControlInfo::default();
    let mut at = 0;
    while let Some(header) = control.get(at..at + CMSG_HEADER) {
        let len =
            usize::try_from(u64::from_ne_bytes(header[0..8].try_into().unwrap_or_default())).unwrap_or(0);
        let level = i32::from_ne_bytes(header[8..12].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(header[12..16].try_into().unwrap_or_default());
        let Some(data) = (len >= CMSG_HEADER).then(|| control.get(at + CMSG_HEADER..at + len)).flatten()
        else {
            break;
        };
        match (level, kind) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                if let Some(addr) = data.get(8..12) {
                    let octets: [u8; 4] = addr.try_into().unwrap_or_default();
                    info.destination = Some(IpAddr::V4(Ipv4Addr::from(octets)));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // struct in6_pktinfo { in6_addr addr; int ifindex; }
                if let Some(addr) = data.get(0..16) {
                    let octets: [u8; 16] = addr.try_into().unwrap_or_default();
                    let v6 = Ipv6Addr::from(octets);
                    info.destination = Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
                }
            }
            (libc::SOL_SOCKET, SO_TIMESTAMPING) => {
                // struct scm_timestamping { timespec ts[3]; }: [0] software,
                // [2] raw hardware; a zero stamp is absent.
                let stamp = |i: usize| -> Option<u64> {
                    let bytes = data.get(i * 16..i * 16 + 16)?;
                    let secs = i64::from_ne_bytes(bytes[0..8].try_into().ok()?);
                    let nanos = i64::from_ne_bytes(bytes[8..16].try_into().ok()?);
                    let ns = u64::try_from(secs)
                        .ok()?
                        .checked_mul(1_000_000_000)?
                        .checked_add(u64::try_from(nanos).ok()?)?;
                    (ns != 0).then_some(ns)
                };
                info.kernel_time = stamp(2).map(|ns| (ns, true)).or_else(|| stamp(0).map(|ns| (ns, false)));
            }
            _ => {}
        }
        at += len.next_multiple_of(8);
    }
    info
}

/// The socket address in the `sockaddr` bytes `name` (IPv4 or IPv6).
pub(crate) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let octets: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
        }
        libc::AF_INET6 => {
            let octets: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let v6 = Ipv6Addr::from(octets);
            Some(SocketAddr::new(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut bytes = ((CMSG_HEADER + data.len()) as u64).to_ne_bytes().to_vec();
        bytes.extend(level.to_ne_bytes());
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(data);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        bytes
    }

    fn timestamping(software: (i64, i64), hardware: (i64, i64)) -> Vec<u8> {
        let mut data = Vec::new();
        for (s, ns) in [software, (0, 0), hardware] {
            data.extend(s.to_ne_bytes());
            data.extend(ns.to_ne_bytes());
        }
        cmsg(libc::SOL_SOCKET, SO_TIMESTAMPING, &data)
    }

    #[test]
    fn packet_info_and_timestamps_are_read_in_any_order() {
        let mut pktinfo = 7i32.to_ne_bytes().to_vec();
        pktinfo.extend([127, 0, 0, 1, 239, 1, 2, 3]);
        let mut control = timestamping((1_700_000_000, 5), (0, 0));
        control.extend(cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo));
        let info = parse_control(&control);
        assert_eq!(info.destination, Some("239.1.2.3".parse().unwrap()));
        assert_eq!(info.kernel_time, Some((1_700_000_000_000_000_005, false)));

        let mut pktinfo6 = "ff15::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        pktinfo6.extend(2i32.to_ne_bytes());
        let mut control = cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pktinfo6);
        control.extend(timestamping((1, 0), (2, 0)));
        let info = parse_control(&control);
        assert_eq!(info.destination, Some("ff15::7".parse().unwrap()));
        assert_eq!(info.kernel_time, Some((2_000_000_000, true)), "hardware wins");
    }

    #[test]
    fn malformed_control_data_ends_the_parse_without_panic() {
        let good = timestamping((3, 0), (0, 0));
        for cut in 0..good.len() {
            let _ = parse_control(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[0..8].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert_eq!(parse_control(&huge), ControlInfo::default());
        let mut tiny = good;
        tiny[0..8].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(parse_control(&tiny), ControlInfo::default());
    }

    #[test]
    fn socket_addresses_of_both_families_parse() {
        // As the kernel writes them: family (native), port (network order), address.
        let mut v4 = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v4.extend(2368u16.to_be_bytes());
        v4.extend([192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_sockaddr(&v4), Some("192.0.2.7:2368".parse().unwrap()));
        let mut v6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v6.extend(9u16.to_be_bytes());
        v6.extend([0; 4]);
        v6.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([0; 4]);
        assert_eq!(parse_sockaddr(&v6), Some("[2001:db8::1]:9".parse().unwrap()));
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[1, 0, 0, 0]), None);
    }
}
