//! A UDP stage's sockets: one per executor, bound to the stage's address
//! with `SO_REUSEPORT` (the kernel hashes each flow to one of them), with
//! what both receive paths need: packet info (the destination address),
//! receive timestamps, a large receive buffer, and the multicast groups
//! this executor joins.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::UdpConfig;
use crate::sys::udp as sys;

/// Why a socket of the stage could not be set up: the step and its error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub(crate) struct SocketError {
    step: String,
    source: io::Error,
}

fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> SocketError {
    let step = step.into();
    move |source| SocketError { step, source }
}

/// What the kernel granted below what was asked: (key, asked, granted).
pub(crate) type Clamped = Option<(&'static str, u64, u64)>;

/// The interface index `multicast_interface` names (0: none named).
pub(crate) fn interface_index(config: &UdpConfig) -> Result<u32, SocketError> {
    let name = config.multicast_interface.as_str();
    if name.is_empty() {
        return Ok(0);
    }
    let what = format!("multicast_interface = {name:?}");
    match name.parse::<IpAddr>() {
        Ok(address) => sys::interface_with_address(address).map_err(step(what)),
        Err(_) => sys::interface_index(name).map_err(step(what)),
    }
}

/// Opens, configures and binds one socket of the stage at `address`, and
/// joins `groups` on it (for `config.multicast_sources` of each group's
/// family, when set). Returns the socket and what the kernel clamped.
pub(crate) fn open(
    config: &UdpConfig,
    address: SocketAddr,
    groups: &[IpAddr],
    interface: u32,
) -> Result<(Socket, Clamped), SocketError> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))
        .map_err(step("create a UDP socket"))?;
    let fd = socket.as_raw_fd();
    let ipv6 = address.is_ipv6();
    socket.set_reuse_port(true).map_err(step("SO_REUSEPORT"))?;
    socket.set_nonblocking(true).map_err(step("O_NONBLOCK"))?;
    if ipv6 && address.ip().is_unspecified() {
        // Dual stack: IPv4 senders and groups too.
        socket.set_only_v6(false).map_err(step("IPV6_V6ONLY"))?;
    }
    let clamped = set_receive_buffer(&socket, config.kernel_receive_buffer_size_b)?;
    if config.kernel_transmit_buffer_size_b > 0 {
        socket
            .set_send_buffer_size(config.kernel_transmit_buffer_size_b as usize)
            .map_err(step("SO_SNDBUF"))?;
    }
    // Which address each datagram was sent to (a multicast group, or ours).
    // On an IPv6 socket, IPv4 datagrams report through IP_PKTINFO.
    sys::set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1).map_err(step("IP_PKTINFO"))?;
    if ipv6 {
        sys::set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1).map_err(step("IPV6_RECVPKTINFO"))?;
    }
    if config.kernel_timestamps {
        sys::enable_receive_timestamps(fd).map_err(step("SO_TIMESTAMPING"))?;
    }
    sys::only_own_multicast_groups(fd, ipv6).map_err(step("IP_MULTICAST_ALL"))?;
    if ipv6 {
        socket.set_multicast_loop_v6(config.multicast_loop).map_err(step("IPV6_MULTICAST_LOOP"))?;
    } else {
        socket.set_multicast_loop_v4(config.multicast_loop).map_err(step("IP_MULTICAST_LOOP"))?;
    }
    socket.bind(&SockAddr::from(address)).map_err(step(format!("bind {address}")))?;
    for &group in groups {
        let sources: Vec<IpAddr> =
            config.multicast_sources.iter().copied().filter(|s| s.is_ipv4() == group.is_ipv4()).collect();
        if sources.is_empty() {
            sys::join_multicast(fd, ipv6, group, None, interface).map_err(step(format!("join {group}")))?;
        }
        for source in sources {
            sys::join_multicast(fd, ipv6, group, Some(source), interface)
                .map_err(step(format!("join {group} for source {source}")))?;
        }
    }
    Ok((socket, clamped))
}

/// Sets the receive buffer: past `net.core.rmem_max` where permitted
/// (`SO_RCVBUFFORCE`), else as far as the kernel lets `SO_RCVBUF` go.
fn set_receive_buffer(socket: &Socket, bytes: u64) -> Result<Clamped, SocketError> {
    if bytes == 0 {
        return Ok(None);
    }
    let asked = i32::try_from(bytes).unwrap_or(i32::MAX);
    if sys::force_receive_buffer(socket.as_raw_fd(), asked).is_err() {
        socket.set_recv_buffer_size(asked as usize).map_err(step("SO_RCVBUF"))?;
    }
    // Linux reports twice the usable size it granted.
    let granted = socket.recv_buffer_size().map_err(step("SO_RCVBUF"))? as u64 / 2;
    Ok((granted < bytes).then_some(("kernel_receive_buffer_size_b", bytes, granted)))
}
