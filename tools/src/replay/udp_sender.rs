//! Sending datagrams: one socket per source (so that the receiver tells the
//! sources apart, as it would the sensors), connected to the target, with
//! the multicast options set when the target is a group, and `sendmmsg(2)`
//! batches. `ringest replay --udp` and `ringest loadgen --udp` share it.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use anyhow::{Context, bail};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags};
use socket2::{Domain, Protocol, Socket, Type};

/// Most datagrams handed to one `sendmmsg(2)` call (the kernel's limit is
/// 1024; 64 already spreads the system call over many datagrams).
pub const BATCH: usize = 64;

/// Where datagrams go and, for a multicast group, how.
#[derive(Clone, Debug)]
pub struct UdpTarget {
    pub address: SocketAddr,
    /// `IP_MULTICAST_TTL` / `IPV6_MULTICAST_HOPS` for a group.
    pub multicast_ttl: u32,
    /// Interface for a group: `IP_MULTICAST_IF` (an IPv4 address) or
    /// `IPV6_MULTICAST_IF` (an interface index).
    pub multicast_interface: Option<MulticastInterface>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulticastInterface {
    V4(Ipv4Addr),
    V6Index(u32),
}

impl UdpTarget {
    /// The target at `address` (`host:port`); `interface` is a name
    /// (`eth0`) or an address of the interface for a multicast target.
    pub fn resolve(address: &str, multicast_ttl: u32, interface: Option<&str>) -> anyhow::Result<Self> {
        use std::net::ToSocketAddrs;
        let address = address
            .to_socket_addrs()
            .with_context(|| format!("invalid address {address}"))?
            .next()
            .with_context(|| format!("{address} resolves to no address"))?;
        let multicast_interface = match interface {
            None => None,
            Some(_) if !address.ip().is_multicast() => {
                bail!("--multicast-interface needs a multicast address, not {address}")
            }
            Some(name) => Some(MulticastInterface::find(name, address.is_ipv4())?),
        };
        Ok(Self { address, multicast_ttl, multicast_interface })
    }

    /// A socket on an ephemeral port of the target's family (the kernel
    /// picks the source address), connected to the target.
    pub fn open_socket(&self) -> anyhow::Result<UdpSocket> {
        let domain = if self.address.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let socket =
            Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).context("cannot open a UDP socket")?;
        if self.address.ip().is_multicast() {
            self.set_multicast_options(&socket)
                .with_context(|| format!("cannot set the multicast options for {}", self.address))?;
        }
        let any: SocketAddr = match self.address {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        socket.bind(&any.into()).context("cannot bind a UDP socket")?;
        socket.connect(&self.address.into()).with_context(|| format!("cannot send to {}", self.address))?;
        Ok(socket.into())
    }

    /// Hop limit, interface, and loopback on: receivers on this host (a
    /// second engine, a test) get the datagrams too.
    fn set_multicast_options(&self, socket: &Socket) -> io::Result<()> {
        if self.address.is_ipv4() {
            socket.set_multicast_ttl_v4(self.multicast_ttl)?;
            socket.set_multicast_loop_v4(true)?;
            if let Some(MulticastInterface::V4(address)) = self.multicast_interface {
                socket.set_multicast_if_v4(&address)?;
            }
        } else {
            socket.set_multicast_hops_v6(self.multicast_ttl)?;
            socket.set_multicast_loop_v6(true)?;
            if let Some(MulticastInterface::V6Index(index)) = self.multicast_interface {
                socket.set_multicast_if_v6(index)?;
            }
        }
        Ok(())
    }
}

impl MulticastInterface {
    /// The interface named `name` (or having the address `name`), as the
    /// socket option of an IPv4 or an IPv6 group wants it.
    fn find(name: &str, ipv4: bool) -> anyhow::Result<Self> {
        let addresses: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
            .context("cannot list the network interfaces")?
            .filter_map(|i| {
                let address = i.address?;
                let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                    (Some(v4), _) => IpAddr::V4(v4.ip()),
                    (_, Some(v6)) => IpAddr::V6(v6.ip()),
                    _ => return None,
                };
                Some((i.interface_name, ip))
            })
            .collect();
        let by_address: Option<IpAddr> = name.parse().ok();
        let interface = match by_address {
            Some(ip) => addresses.iter().find(|(_, a)| *a == ip).map(|(n, _)| n.clone()),
            None => addresses.iter().any(|(n, _)| n == name).then(|| name.to_owned()),
        };
        let Some(interface) = interface else {
            bail!("no network interface {name} (with an address)");
        };
        if ipv4 {
            match by_address {
                Some(IpAddr::V4(v4)) => Ok(Self::V4(v4)),
                _ => addresses
                    .iter()
                    .find_map(|(n, a)| match a {
                        IpAddr::V4(v4) if *n == interface => Some(Self::V4(*v4)),
                        _ => None,
                    })
                    .with_context(|| format!("interface {interface} has no IPv4 address for an IPv4 group")),
            }
        } else {
            let index = nix::net::if_::if_nametoindex(interface.as_str())
                .with_context(|| format!("no index for interface {interface}"))?;
            Ok(Self::V6Index(index))
        }
    }
}

/// Sends `datagrams` in order on the connected `socket`, in `sendmmsg(2)`
/// batches of up to [`BATCH`]. Returns how many went out before the first
/// error, and that error: the datagram at that index was not sent.
pub fn send_datagrams(socket: &UdpSocket, datagrams: &[&[u8]]) -> (usize, Option<io::Error>) {
    let mut sent = 0;
    while sent < datagrams.len() {
        let batch = &datagrams[sent..datagrams.len().min(sent + BATCH)];
        let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|d| [IoSlice::new(d)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
            batch.iter().map(|_| Default::default()).collect();
        let mut headers: Vec<MMsgHdr<'_>> =
            slices.iter().zip(controls.iter_mut()).map(|(iov, control)| MMsgHdr::new(iov, control)).collect();
        match rustix::net::sendmmsg(socket, &mut headers, SendFlags::empty()) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return (sent, Some(e.into())),
        }
    }
    (sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_arrive_whole_and_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Room for the whole burst (rmem_max permitting).
        socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20).unwrap();
        let target = UdpTarget::resolve(&receiver.local_addr().unwrap().to_string(), 1, None).unwrap();
        let socket = target.open_socket().unwrap();
        let datagrams: Vec<Vec<u8>> =
            (0..150u32).map(|i| vec![i as u8; 1 + (i as usize * 37) % 2000]).collect();
        let slices: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        let (sent, error) = send_datagrams(&socket, &slices);
        assert_eq!((sent, error.map(|e| e.to_string())), (150, None));
        let mut buf = vec![0; 65536];
        for expected in &datagrams {
            let (len, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(from, socket.local_addr().unwrap());
            assert_eq!(&buf[..len], expected.as_slice());
        }
    }

    #[test]
    fn an_interface_is_only_for_a_multicast_target() {
        let err = UdpTarget::resolve("127.0.0.1:9", 1, Some("lo")).unwrap_err();
        assert!(err.to_string().contains("needs a multicast address"), "{err}");
        let target = UdpTarget::resolve("239.1.2.3:9", 1, Some("lo")).unwrap();
        assert_eq!(target.multicast_interface, Some(MulticastInterface::V4(Ipv4Addr::LOCALHOST)));
        let target = UdpTarget::resolve("239.1.2.3:9", 1, Some("127.0.0.1")).unwrap();
        assert_eq!(target.multicast_interface, Some(MulticastInterface::V4(Ipv4Addr::LOCALHOST)));
        assert!(UdpTarget::resolve("239.1.2.3:9", 1, Some("nosuch0")).is_err());
    }
}
