//! The read path of a UDP executor: when the socket is readable, batches of
//! `recvmmsg` straight into the open datagram group's reservation.
//!
//! The kernel needs every message's buffer before it knows any length, so
//! a batch lays the messages out at a fixed stride (room for a datagram of
//! `max_datagram_size_b` each); the datagrams that came are then moved
//! down to follow each other, so a small datagram takes little ring.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use shm_bus::{PendingRecord, ReserveError, ShardWriter};

use super::DatagramCounters;
use super::control::{parse_control, parse_sockaddr};
use crate::records::{self, DATAGRAM_HEADER_LEN, DatagramGroupWriter, DatagramMeta};
use crate::sys::{self, udp::RecvBatch};

/// Messages per `recvmmsg`.
const BATCH: usize = 64;
/// Largest group record.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// What one receive attempt did.
#[derive(Debug)]
pub(crate) enum Received {
    /// This many datagrams are in the group.
    Datagrams(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The channel is full (a gated reader lags): stop reading for now;
    /// the kernel's buffer absorbs what comes meanwhile.
    Full,
    Error(io::Error),
}

/// A group being filled in place.
struct OpenGroup {
    record: PendingRecord,
    group: DatagramGroupWriter,
    opened: Instant,
    data_bytes: u64,
}

/// Bundles this executor's datagrams into groups on its shard.
pub(crate) struct DatagramPublisher {
    writer: ShardWriter,
    open: Option<OpenGroup>,
    group_size: u32,
    group_bytes: usize,
    /// Largest datagram kept whole.
    max_datagram: usize,
    /// Room one datagram takes in a batch: its header and the largest
    /// datagram, padded.
    stride: usize,
    local_port: u16,
    batch: RecvBatch,
    regions: Vec<(usize, usize)>,
    counters: DatagramCounters,
}

impl DatagramPublisher {
    /// Fails when the ring cannot hold a group of one largest datagram.
    pub(crate) fn new(
        writer: ShardWriter,
        group_size: u32,
        max_datagram: usize,
        local_port: u16,
    ) -> Result<Self, String> {
        let stride = DATAGRAM_HEADER_LEN + max_datagram.next_multiple_of(8);
        let group_bytes = writer.max_payload().min(MAX_GROUP_BYTES.max(records::GROUP_HEADER_LEN + stride));
        if group_bytes < records::GROUP_HEADER_LEN + stride {
            return Err(format!(
                "a record of this ring holds at most {} bytes, less than one datagram of max_datagram_size_b \
                 = {max_datagram} ({} bytes with its headers): raise ring_size_b",
                writer.max_payload(),
                records::GROUP_HEADER_LEN + stride
            ));
        }
        Ok(Self {
            writer,
            open: None,
            group_size,
            group_bytes,
            max_datagram,
            stride,
            local_port,
            batch: RecvBatch::new(BATCH),
            regions: Vec::with_capacity(BATCH),
            counters: DatagramCounters::default(),
        })
    }

    /// The counters so far; starts a new interval for the largest datagram.
    pub(crate) fn take_counters(&mut self) -> DatagramCounters {
        let counters = self.counters;
        self.counters.max_recent = 0;
        counters
    }

    /// How long the open group has waited, if it has datagrams.
    pub(crate) fn open_age(&self) -> Option<Duration> {
        self.open.as_ref().filter(|g| g.group.datagrams() > 0).map(|g| g.opened.elapsed())
    }

    /// Receives a batch from `fd` into the open group (opening one if
    /// needed); publishes the group when it reaches `group_size`.
    pub(crate) fn recv_from(&mut self, fd: RawFd) -> Received {
        loop {
            let open = match &mut self.open {
                Some(open) => open,
                None => match self.writer.reserve_pending(self.group_bytes) {
                    Ok(record) => self.open.insert(OpenGroup {
                        record,
                        group: DatagramGroupWriter::new(),
                        opened: Instant::now(),
                        data_bytes: 0,
                    }),
                    Err(ReserveError::Full { .. }) => {
                        self.counters.ring_full_stalls += 1;
                        return Received::Full;
                    }
                    Err(e @ ReserveError::TooLarge { .. }) => return Received::Error(io::Error::other(e)),
                },
            };
            let buf = self.writer.pending_buf(&open.record);
            let base = open.group.record_len();
            let room = buf.len() / 8 * 8 - base;
            let left_in_group = (self.group_size - open.group.datagrams()) as usize;
            let messages = (room / self.stride).min(BATCH).min(left_in_group);
            if messages == 0 {
                self.flush();
                continue;
            }
            self.regions.clear();
            self.regions.extend(
                (0..messages).map(|i| (base + i * self.stride + DATAGRAM_HEADER_LEN, self.max_datagram)),
            );
            let received = match self.batch.recv(fd, buf, &self.regions) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Received::WouldBlock,
                // An ICMP error of an earlier send (ECONNREFUSED...) is
                // reported on the next receive: it is not about receiving.
                Err(e) if e.raw_os_error().is_some_and(is_send_error) => continue,
                Err(e) => return Received::Error(e),
            };
            let rx_realtime_ns = shm_bus::realtime_ns();
            let rx_monotonic_ns = sys::monotonic_ns();
            for i in 0..received {
                let message = self.batch.message(i);
                let kept = message.original_len.min(self.max_datagram);
                let control = parse_control(self.batch.control(i));
                let source = parse_sockaddr(self.batch.name(i)).map(Into::into).unwrap_or_default();
                let destination =
                    control.destination.map(|ip| std::net::SocketAddr::new(ip, self.local_port));
                let mut flags = 0;
                if kept < message.original_len || message.flags & libc::MSG_TRUNC != 0 {
                    flags |= records::FLAG_TRUNCATED;
                }
                if message.flags & libc::MSG_CTRUNC != 0 {
                    flags |= records::FLAG_CONTROL_TRUNCATED;
                }
                let (kernel_rx_ns, kernel_flags) = super::kernel_time_fields(control.kernel_time);
                let meta = DatagramMeta {
                    source,
                    destination: destination.map(Into::into).unwrap_or_default(),
                    rx_realtime_ns,
                    rx_monotonic_ns,
                    kernel_rx_ns,
                    flags: flags | kernel_flags,
                    original_len: u32::try_from(message.original_len).unwrap_or(u32::MAX),
                };
                // Move the datagram down to follow the previous one.
                let at = open.group.record_len() + DATAGRAM_HEADER_LEN;
                let (from, _) = self.regions[i];
                if from != at {
                    buf.copy_within(from..from + kept, at);
                }
                open.group.commit_datagram(buf, &meta, kept);
                open.data_bytes += kept as u64;
                self.counters.count(kept, meta.flags & records::FLAG_TRUNCATED != 0);
            }
            if open.group.datagrams() >= self.group_size {
                self.flush();
            }
            return Received::Datagrams(received);
        }
    }

    /// Publishes the open group, if it holds any datagram.
    pub(crate) fn flush(&mut self) {
        let Some(open) = self.open.take() else { return };
        if open.group.datagrams() == 0 {
            return; // dropping the pending record aborts it
        }
        let buf = self.writer.pending_buf(&open.record);
        let len = open.group.close(buf);
        self.writer.commit_pending(open.record, len, records::KIND_DATAGRAM_GROUP, shm_bus::realtime_ns());
        self.writer.count_as_framing((len as u64).saturating_sub(open.data_bytes));
        self.writer.publish();
        self.counters.groups += 1;
    }
}

/// Errors a receive reports for an earlier send's ICMP reply.
fn is_send_error(errno: i32) -> bool {
    matches!(errno, libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EMSGSIZE)
}
