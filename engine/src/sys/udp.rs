//! The system calls of the UDP stage that libc offers only as `unsafe fn`:
//! socket options socket2 lacks (timestamps, packet info, forced buffer
//! sizes, multicast joins by interface index), the socket's drop counter,
//! and `recvmmsg` with each message's name and control data.
//!
//! Control data and names come back as bytes; `udp::control` parses them
//! without `unsafe`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// `SO_RCVBUFFORCE` (asm-generic/socket.h): `SO_RCVBUF` past
/// `net.core.rmem_max`, for CAP_NET_ADMIN.
const SO_RCVBUFFORCE: i32 = 33;
/// `SO_TIMESTAMPING_OLD` (asm-generic/socket.h): its control messages
/// carry three `timespec`s of 64-bit fields on 64-bit Linux.
pub(crate) const SO_TIMESTAMPING: i32 = 37;
/// `SO_MEMINFO`: the socket's memory counters, `SK_MEMINFO_DROPS` among them.
const SO_MEMINFO: i32 = 55;
/// Index of the drop counter in `SO_MEMINFO`'s array (linux/sock_diag.h).
const SK_MEMINFO_DROPS: usize = 8;
/// Entries of `SO_MEMINFO`'s array (`SK_MEMINFO_VARS`).
const SK_MEMINFO_VARS: usize = 9;
/// `IPV6_MULTICAST_ALL` (linux/in6.h, Linux 4.20).
const IPV6_MULTICAST_ALL: i32 = 29;

/// `SOF_TIMESTAMPING_*` (linux/net_tstamp.h): software and hardware
/// receive stamps, reported.
const TIMESTAMPING_RX: i32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6);

/// Sets an `int` socket option.
pub(crate) fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel
    // copies it during the call and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<i32>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets a socket option whose value is the struct `value`.
fn set_struct<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of `size_of::<T>()` bytes; the kernel
    // copies it during the call and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets the receive buffer past `net.core.rmem_max` where the process may
/// (CAP_NET_ADMIN); `Err` (EPERM) otherwise, and the caller falls back to
/// `SO_RCVBUF`.
pub(crate) fn force_receive_buffer(fd: RawFd, bytes: i32) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, bytes)
}

/// Asks for each datagram's kernel receive time (software, and hardware
/// where the card stamps), delivered as `SO_TIMESTAMPING` control data.
pub(crate) fn enable_receive_timestamps(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING_RX)
}

/// Receives only the multicast groups this socket joined itself: by
/// default Linux hands a socket bound to the wildcard every group any
/// socket of the host joined on its port, which would deliver a group
/// joined on one executor's socket to every executor.
pub(crate) fn only_own_multicast_groups(fd: RawFd, ipv6_socket: bool) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, 0)?;
    if ipv6_socket {
        set_int(fd, libc::IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)?;
    }
    Ok(())
}

/// The datagrams the kernel dropped on this socket since it was created
/// (its buffer was full): the counter `SO_RXQ_OVFL` reports with each
/// datagram, read at any moment rather than with the next datagram.
pub(crate) fn kernel_drops(fd: RawFd) -> io::Result<u64> {
    let mut meminfo = [0u32; SK_MEMINFO_VARS];
    let mut len = size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: `meminfo` is writable for `len` bytes and `len` is a live
    // socklen_t; the kernel writes at most `len` bytes and updates it.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_MEMINFO, meminfo.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (SK_MEMINFO_DROPS + 1) * size_of::<u32>() {
        return Err(io::Error::other("SO_MEMINFO returned no drop counter"));
    }
    Ok(u64::from(meminfo[SK_MEMINFO_DROPS]))
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr_storage(addr: SocketAddr) -> libc::sockaddr_storage {
    let sock = socket2::SockAddr::from(addr);
    // SAFETY: `sockaddr_storage` is plain old data, for which all zeroes is
    // a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = (sock.len() as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `sock.as_ptr()` points at `sock.len()` initialized bytes of a
    // socket address; `storage` has room for `len` bytes; they do not
    // overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(sock.as_ptr().cast::<u8>(), (&raw mut storage).cast::<u8>(), len)
    };
    storage
}

/// Joins `group` on interface `interface` (an index; 0: the route's),
/// for every sender, or for `source` only (a source-specific join). Works
/// for IPv4 groups on IPv4 sockets and for both families on IPv6 sockets
/// (`MCAST_JOIN_GROUP` and `MCAST_JOIN_SOURCE_GROUP` take either).
pub(crate) fn join_multicast(
    fd: RawFd,
    ipv6_socket: bool,
    group: IpAddr,
    source: Option<IpAddr>,
    interface: u32,
) -> io::Result<()> {
    let level = if ipv6_socket && group.is_ipv6() { libc::IPPROTO_IPV6 } else { libc::IPPROTO_IP };
    let group = sockaddr_storage(SocketAddr::new(group, 0));
    match source {
        None => {
            let request = libc::group_req { gr_interface: interface, gr_group: group };
            set_struct(fd, level, libc::MCAST_JOIN_GROUP, &request)
        }
        Some(source) => {
            let request = libc::group_source_req {
                gsr_interface: interface,
                gsr_group: group,
                gsr_source: sockaddr_storage(SocketAddr::new(source, 0)),
            };
            set_struct(fd, level, libc::MCAST_JOIN_SOURCE_GROUP, &request)
        }
    }
}

/// The index of the network interface named `name`.
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an interface name has no NUL byte"))?;
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 { Err(io::Error::last_os_error()) } else { Ok(index) }
}

/// The index of the network interface that has the address `address`.
pub(crate) fn interface_with_address(address: IpAddr) -> io::Result<u32> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the result; freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not
        // yet freed; its `ifa_addr` is null or points at a sockaddr of the
        // family it names, and `ifa_name` at a NUL-terminated string.
        unsafe {
            let node = &*entry;
            let addr = node.ifa_addr;
            let matches = !addr.is_null()
                && match (i32::from((*addr).sa_family), address) {
                    (libc::AF_INET, IpAddr::V4(v4)) => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        u32::from_be(sin.sin_addr.s_addr) == u32::from(v4)
                    }
                    (libc::AF_INET6, IpAddr::V6(v6)) => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        sin6.sin6_addr.s6_addr == v6.octets()
                    }
                    _ => false,
                };
            if matches {
                found = Some(libc::if_nametoindex(node.ifa_name));
            }
            entry = node.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    match found {
        Some(index) if index != 0 => Ok(index),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface has the address {address}"))),
    }
}

/// Room for one message's source address: a `sockaddr_in6` and more.
pub(crate) const NAME_LEN: usize = 32;
/// Room for one message's control data: packet info (40 bytes for IPv6),
/// a `SO_TIMESTAMPING` message (64) and a drop counter (24), with room to
/// spare; a datagram whose control data did not fit is flagged.
pub(crate) const CONTROL_LEN: usize = 160;

/// A name buffer, aligned as `sockaddr` wants.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct NameBuf([u8; NAME_LEN]);

/// A control buffer, aligned as `cmsghdr` wants.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_LEN]);

/// What `recvmmsg` said about one message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchMessage {
    /// The datagram's length as sent (`MSG_TRUNC` asks for it): more than
    /// its buffer when it was truncated.
    pub(crate) original_len: usize,
    /// `msg_flags`: `MSG_TRUNC`, `MSG_CTRUNC`.
    pub(crate) flags: i32,
}

/// Reusable buffers of a `recvmmsg` batch: each message's header, name and
/// control room. The data goes where the caller says.
pub(crate) struct RecvBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    names: Vec<NameBuf>,
    controls: Vec<ControlBuf>,
    messages: Vec<BatchMessage>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("capacity", &self.names.len()).finish()
    }
}

impl RecvBatch {
    /// Room for batches of up to `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            // SAFETY: mmsghdr is a plain C struct for which all zeroes
            // (null pointers, zero lengths) is valid.
            headers: (0..capacity).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above, for iovec.
            iovecs: (0..capacity).map(|_| unsafe { std::mem::zeroed() }).collect(),
            names: vec![NameBuf([0; NAME_LEN]); capacity],
            controls: vec![ControlBuf([0; CONTROL_LEN]); capacity],
            messages: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Receives up to one datagram into each of `regions` (ascending,
    /// non-overlapping `(offset, len)` ranges of `buf`) without waiting.
    /// Returns how many arrived; `WouldBlock` when none was there.
    ///
    /// # Panics
    /// If there are more regions than the batch's capacity, or a region
    /// leaves `buf` or overlaps the previous one.
    pub(crate) fn recv(
        &mut self,
        fd: RawFd,
        buf: &mut [u8],
        regions: &[(usize, usize)],
    ) -> io::Result<usize> {
        assert!(regions.len() <= self.capacity(), "more regions than the batch holds");
        let mut end = 0;
        for (i, &(offset, len)) in regions.iter().enumerate() {
            assert!(
                offset >= end && offset.checked_add(len).is_some_and(|e| e <= buf.len()),
                "bad region {i}"
            );
            end = offset + len;
            // `wrapping_add` keeps this safe code; `offset` is in bounds.
            self.iovecs[i] =
                libc::iovec { iov_base: buf.as_mut_ptr().wrapping_add(offset).cast(), iov_len: len };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = self.names[i].0.as_mut_ptr().cast();
            header.msg_namelen = NAME_LEN as libc::socklen_t;
            header.msg_iov = &raw mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = self.controls[i].0.as_mut_ptr().cast();
            header.msg_controllen = CONTROL_LEN;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        self.messages.clear();
        let received = loop {
            // SAFETY: the first `regions.len()` headers point at live
            // buffers owned by `self` (names, controls, iovecs) and, through
            // the iovecs, at disjoint ranges of `buf` checked above; `buf`
            // is borrowed mutably for the whole call. The kernel writes only
            // within the lengths given. Non-blocking: no timeout pointer.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    regions.len() as u32,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        for header in &self.headers[..received] {
            self.messages.push(BatchMessage {
                original_len: header.msg_len as usize,
                flags: header.msg_hdr.msg_flags,
            });
        }
        Ok(received)
    }

    /// Message `i` of the last batch.
    pub(crate) fn message(&self, i: usize) -> BatchMessage {
        self.messages[i]
    }

    /// The source address bytes of message `i` (a `sockaddr`).
    pub(crate) fn name(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_hdr.msg_namelen as usize).min(NAME_LEN);
        &self.names[i].0[..len]
    }

    /// The control data of message `i`.
    pub(crate) fn control(&self, i: usize) -> &[u8] {
        let len = self.headers[i].msg_hdr.msg_controllen.min(CONTROL_LEN);
        &self.controls[i].0[..len]
    }
}
