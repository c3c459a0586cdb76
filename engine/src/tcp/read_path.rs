//! The receive path of one executor: packets go straight from the socket
//! into a shm-bus reservation, bundled into TcpPacketGroup records.
//!
//! This is the seam that the io_uring multishot path will replace: callers
//! only see [`GroupPublisher::recv_from`] and [`GroupPublisher::flush`].

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use shm_bus::{PendingRecord, ReserveError, ShardWriter};
use socket2::Socket;

use crate::records::{self, Addr, ConnectionEvent, GroupWriter, PacketMeta};
use crate::sys;

/// Most bytes one recv may return: large enough for bulk streams to move
/// in few syscalls, small enough that a group holds many packets.
const MAX_RECV: usize = 64 << 10;
/// Below this much free space a group is closed rather than squeezing in a
/// tiny recv.
const MIN_RECV: usize = 2 << 10;
/// Largest group record.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// What one receive attempt did.
#[derive(Debug)]
pub(crate) enum Received {
    /// A packet of this many bytes is in the group.
    Packet(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side.
    Closed,
    /// The channel is full (a gated reader lags): stop reading this socket
    /// for now; TCP flow control pushes back on the sender.
    Full,
    Error(io::Error),
}

/// Counters of what this executor published.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PublishCounters {
    pub(crate) groups: u64,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    /// Times a reservation was refused because a gated reader lagged.
    pub(crate) stalls: u64,
    /// io_uring path: times a connection's multishot recv ended with
    /// `ENOBUFS` (no free slot) and waited to be re-armed.
    pub(crate) buffer_exhaustions: u64,
}

/// A group being filled in place.
struct OpenGroup {
    record: PendingRecord,
    group: GroupWriter,
    opened: Instant,
    /// The packets' data bytes (the rest of the record is their headers).
    data_bytes: u64,
}

/// Bundles this executor's packets into groups on its shard of
/// `<stage>/packet_group`.
pub(crate) struct GroupPublisher {
    writer: ShardWriter,
    open: Option<OpenGroup>,
    group_size: u32,
    group_bytes: usize,
    counters: PublishCounters,
}

impl GroupPublisher {
    pub(crate) fn new(writer: ShardWriter, group_size: u32) -> Self {
        let group_bytes = writer.max_payload().min(MAX_GROUP_BYTES);
        Self { writer, open: None, group_size, group_bytes, counters: PublishCounters::default() }
    }

    pub(crate) fn counters(&self) -> PublishCounters {
        self.counters
    }

    /// How long the open group has waited, if one has packets.
    pub(crate) fn open_age(&self) -> Option<Duration> {
        self.open.as_ref().filter(|g| g.group.packets() > 0).map(|g| g.opened.elapsed())
    }

    /// Receives once from `socket` into the open group (opening one if
    /// needed); publishes the group when it reaches `group_size`.
    pub(crate) fn recv_from(&mut self, socket: &Socket, connection_id: u64, peer: Addr) -> Received {
        loop {
            let open = match &mut self.open {
                Some(open) => open,
                None => match self.writer.reserve_pending(self.group_bytes) {
                    Ok(record) => self.open.insert(OpenGroup {
                        record,
                        group: GroupWriter::new(),
                        opened: Instant::now(),
                        data_bytes: 0,
                    }),
                    Err(ReserveError::Full { .. }) => {
                        self.counters.stalls += 1;
                        return Received::Full;
                    }
                    Err(e @ ReserveError::TooLarge { .. }) => return Received::Error(io::Error::other(e)),
                },
            };
            let buf = self.writer.pending_buf(&open.record);
            let space = open.group.packet_space(buf);
            if space.len() < MIN_RECV {
                self.flush();
                continue;
            }
            let len = space.len().min(MAX_RECV);
            return match (&*socket).read(&mut space[..len]) {
                Ok(0) => Received::Closed,
                Ok(n) => {
                    let meta = PacketMeta {
                        connection_id,
                        peer,
                        rx_realtime_ns: shm_bus::realtime_ns(),
                        rx_monotonic_ns: sys::monotonic_ns(),
                    };
                    open.group.commit_packet(buf, &meta, n);
                    open.data_bytes += n as u64;
                    self.counters.packets += 1;
                    self.counters.bytes += n as u64;
                    if open.group.packets() >= self.group_size {
                        self.flush();
                    }
                    Received::Packet(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Received::Error(e),
            };
        }
    }

    /// Publishes the open group, if it holds any packet.
    pub(crate) fn flush(&mut self) {
        let Some(open) = self.open.take() else { return };
        if open.group.packets() == 0 {
            return; // dropping the pending record aborts it
        }
        let buf = self.writer.pending_buf(&open.record);
        let len = open.group.close(buf);
        self.writer.commit_pending(open.record, len, records::KIND_PACKET_GROUP, shm_bus::realtime_ns());
        // The shard header counts the packets' data as payload, as on the
        // io_uring path (`ringest ls` shows it beside the ring bytes).
        self.writer.count_as_framing((len as u64).saturating_sub(open.data_bytes));
        self.writer.publish();
        self.counters.groups += 1;
    }
}

/// Most connection events held back while a gated reader lags; beyond it
/// events are dropped and counted.
const EVENT_BACKLOG: usize = 4096;

/// Publishes connection events on this executor's shard of
/// `<stage>/connection_events`, holding them back (bounded) while the
/// channel is full.
pub(crate) struct EventPublisher {
    writer: ShardWriter,
    backlog: VecDeque<Vec<u8>>,
    pub(crate) dropped: u64,
}

impl EventPublisher {
    pub(crate) fn new(writer: ShardWriter) -> Self {
        Self { writer, backlog: VecDeque::new(), dropped: 0 }
    }

    pub(crate) fn publish(&mut self, event: &ConnectionEvent) {
        if self.backlog.len() >= EVENT_BACKLOG {
            self.dropped += 1;
            return;
        }
        self.backlog.push_back(records::encode(event));
        self.retry();
    }

    /// Publishes what was held back, as far as the channel takes it.
    pub(crate) fn retry(&mut self) {
        while let Some(bytes) = self.backlog.front() {
            if self.writer.write(records::KIND_CONNECTION_EVENT, bytes).is_err() {
                break;
            }
            self.backlog.pop_front();
        }
        self.writer.publish();
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }
}
