//! The io_uring receive path of one executor: multishot recv per
//! connection into buffers that are slots of the executor's shm-bus shard,
//! so the kernel writes received bytes straight into the shared ring.
//!
//! # Slots
//!
//! The shard's ring is cut into slots of `slot` bytes (a power of two, so
//! slots tile the ring and never cross its end). Slot `n` (counted from the
//! start of the stream) occupies ring positions `n * slot ..`:
//!
//! ```text
//! +0   shm-bus record header (32)   used when a group record starts here
//! +32  group header (8)             ditto
//! +40  packet header (48)           always: the packet of this slot
//! +88  data                         the kernel's buffer: slot - 88 bytes
//! ```
//!
//! The kernel takes buffers from the provided buffer ring in the order they
//! were provided, which is slot order. A completion names its slot (the
//! buffer id), so however completions of different connections interleave,
//! each packet's bytes are where its slot is. Consecutive filled slots form
//! a TcpPacketGroup record of version 2 (see `RECORDS.md`): each packet's
//! header records the padding up to the next slot's packet header, and the
//! record ends at the end of its last slot. The next record therefore
//! starts at a slot boundary again.
//!
//! # Flow control
//!
//! Only claimed ring space is handed to the kernel: the slots from the open
//! group's first up to a window of `entries` slots ahead (an eighth of the
//! ring; 4 slots in the smallest rings). A slot is provided again only when shm-bus lets the claim
//! move over it, that is once every gated reader has released what was
//! there before. While none can be provided, the kernel runs out of
//! buffers and ends each multishot recv with `ENOBUFS`: the data stays in
//! the socket, TCP pushes back on the sender, and the recv is re-armed when
//! buffers return. Nothing is dropped and nothing spins: the driver waits
//! for the ring's eventfd, or retries the claim on a backing-off timer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use shm_bus::{ShardWriter, layout::RECORD_HEADER};
use socket2::Socket;

use super::read_path::PublishCounters;
use super::stats::ConnectionCounters;
use crate::records::{
    self, Addr, DisconnectReason, GROUP_HEADER_LEN, GROUP_VERSION_SLOTTED, PACKET_HEADER_LEN, PacketMeta,
};
use crate::runtime::{Pass, UringDriven};
use crate::sys::{self, uring::Completion, uring::ReceiveRing, uring::ShardSlots};

/// `user_data` of the multishot accept; a connection's recv uses its id.
const ACCEPT: u64 = u64::MAX;
/// `user_data` of cancellations.
const CANCEL: u64 = u64::MAX - 1;

/// Smallest slot: the ring's smallest size (64 KiB) holds 16.
const MIN_SLOT: u64 = 4096;
/// Offset of a slot's packet header.
const PACKET_AT: u64 = RECORD_HEADER + GROUP_HEADER_LEN as u64;
/// Offset of a slot's data: where the kernel writes.
const DATA_AT: u64 = PACKET_AT + PACKET_HEADER_LEN as u64;

/// What a slot holds, between its completion and its record.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Provided to the kernel, or not yet (no completion seen).
    Waiting,
    /// Filled by a completion: a packet.
    Packet { meta: PacketMeta, len: u32 },
    /// Consumed without data (a recv that returned 0 into a buffer).
    Empty,
}

/// A connection whose recv this executor's ring serves.
struct Connection {
    fd: RawFd,
    peer: Addr,
    counters: Rc<RefCell<ConnectionCounters>>,
    ended: LocalSender<DisconnectReason>,
    last_packet: Instant,
    /// Whether a multishot recv is in flight for it.
    armed: bool,
    /// Its task is gone: forget it once its recv has ended.
    detached: bool,
}

/// The state of the io_uring receive path of one executor.
pub(crate) struct UringReceiver {
    state: RefCell<State>,
    fd: RawFd,
}

struct State {
    /// The ring and the shard's writer, together.
    shard: ShardSlots,
    slot: u64,
    /// Slots in the buffer ring (a power of two); ids are slot numbers
    /// modulo this.
    entries: u64,
    /// What each of the `entries` slots of the window holds.
    slots: Vec<Slot>,
    /// The first slot not yet given to the kernel.
    next_to_provide: u64,
    /// The first slot not yet in a group; the open group is the slots from
    /// the next record's up to here.
    walked: u64,
    /// One past the highest slot the kernel reported filled.
    consumed_end: u64,
    open_packets: u32,
    /// Data bytes of the packets of the open group.
    open_payload: u64,
    opened: Instant,
    /// Most packets per group: `group_size`, and at most half the window so
    /// that an open group never holds every buffer.
    max_packets: u32,
    /// Close every group at the end of each pass (`group_timeout_us` = 0).
    flush_each_pass: bool,
    connections: HashMap<u64, Connection>,
    /// Connections whose recv ended with `ENOBUFS`, in order.
    starved: VecDeque<u64>,
    /// The listening socket of the multishot accept and where accepted
    /// sockets go.
    accepting: Option<(RawFd, LocalSender<io::Result<Socket>>)>,
    counters: PublishCounters,
    stalled: bool,
    completions: Vec<Completion>,
}

impl std::fmt::Debug for UringReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReceiver").field("fd", &self.fd).finish()
    }
}

/// The receive slot size and the number of slots the kernel gets (the
/// buffer ring's entries) for a packet ring of `capacity` bytes.
pub(crate) fn window(capacity: u64, slot_size: u64) -> (u64, u64) {
    // Small rings get small slots, so that the window holds a few groups'
    // worth of them.
    let slot = slot_size.min(capacity / 64).max(MIN_SLOT);
    // An eighth of the ring: enough buffers for bursts over many
    // connections, and the other seven eighths stay history for lossy and
    // late readers (a quarter let a lossy reader be lapped in the ingest
    // benchmark at 4-5 GB/s).
    (slot, (capacity / 8 / slot).clamp(4, 1 << 15))
}

impl UringReceiver {
    /// Sets up the ring over `writer`'s shard, with slots of
    /// `slot_size` bytes (at most 1/64 of the ring, at least 4 KiB). Fails if the
    /// kernel lacks what is needed; the caller then uses the read path.
    /// On failure the writer comes back with the error.
    #[allow(clippy::result_large_err, reason = "called once per executor")]
    pub(crate) fn new(
        writer: ShardWriter,
        slot_size: u64,
        group_size: u32,
        group_timeout_us: u64,
    ) -> Result<Self, (ShardWriter, io::Error)> {
        let capacity = writer.ring_capacity() as u64;
        let (slot, entries) = window(capacity, slot_size);
        if writer.next_record_pos() % slot != 0 {
            return Err((writer, io::Error::other("the shard does not start at a slot boundary")));
        }
        let ring = match ReceiveRing::new(entries as u16) {
            Ok(ring) => ring,
            Err(e) => return Err((writer, e)),
        };
        let fd = ring.wake_fd();
        let first = writer.next_record_pos() / slot;
        let mut state = State {
            shard: ShardSlots::new(ring, writer, slot, DATA_AT),
            slot,
            entries,
            slots: vec![Slot::Waiting; entries as usize],
            next_to_provide: first,
            walked: first,
            consumed_end: first,
            open_packets: 0,
            open_payload: 0,
            opened: Instant::now(),
            max_packets: group_size.min((entries / 2) as u32).max(1),
            flush_each_pass: group_timeout_us == 0,
            connections: HashMap::new(),
            starved: VecDeque::new(),
            accepting: None,
            counters: PublishCounters::default(),
            stalled: false,
            completions: Vec::with_capacity(256),
        };
        state.refill();
        if let Err(e) = state.shard.ring().submit() {
            return Err((state.shard.into_writer(), e));
        }
        Ok(Self { state: RefCell::new(state), fd })
    }

    pub(crate) fn counters(&self) -> PublishCounters {
        self.state.borrow().counters
    }

    /// How long the open group has waited, if it has packets.
    pub(crate) fn open_age(&self) -> Option<Duration> {
        let state = self.state.borrow();
        (state.open_packets > 0).then(|| state.opened.elapsed())
    }

    /// Publishes the open group, if it has packets.
    pub(crate) fn flush(&self) {
        let mut state = self.state.borrow_mut();
        state.close_group();
        state.shard.publish();
        state.refill();
    }

    /// Starts receiving on connection `id`. The returned channel yields why
    /// the connection ended (peer closed, error); [`UringReceiver::detach`]
    /// stops it from our side.
    pub(crate) fn attach(
        &self,
        fd: RawFd,
        id: u64,
        peer: Addr,
        counters: Rc<RefCell<ConnectionCounters>>,
    ) -> LocalReceiver<DisconnectReason> {
        let (ended, on_end) = local_channel::new_bounded(1);
        let mut state = self.state.borrow_mut();
        let conn = Connection {
            fd,
            peer,
            counters,
            ended,
            last_packet: Instant::now(),
            armed: false,
            detached: false,
        };
        state.connections.insert(id, conn);
        state.arm(id);
        state.submit();
        on_end
    }

    /// Stops receiving on connection `id` (its task ended): cancels its
    /// recv; packets already received are still published.
    pub(crate) fn detach(&self, id: u64) {
        let mut state = self.state.borrow_mut();
        let Some(conn) = state.connections.get_mut(&id) else { return };
        conn.detached = true;
        if conn.armed {
            state.shard.ring().cancel(id, CANCEL);
            state.submit();
        } else {
            state.connections.remove(&id);
        }
    }

    /// When connection `id` last received a packet.
    pub(crate) fn last_packet(&self, id: u64) -> Option<Instant> {
        self.state.borrow().connections.get(&id).map(|c| c.last_packet)
    }

    /// Accepts on the listening socket `fd` with a multishot accept; new
    /// fds (or errors) arrive on the returned channel.
    pub(crate) fn accept(&self, fd: RawFd) -> LocalReceiver<io::Result<Socket>> {
        let (accepted, on_accept) = local_channel::new_unbounded();
        let mut state = self.state.borrow_mut();
        state.accepting = Some((fd, accepted));
        state.shard.ring().accept_multishot(fd, ACCEPT);
        state.submit();
        on_accept
    }

    /// Stops the multishot accept started by [`UringReceiver::accept`].
    pub(crate) fn stop_accepting(&self) {
        let mut state = self.state.borrow_mut();
        if state.accepting.take().is_some() {
            state.shard.ring().cancel(ACCEPT, CANCEL);
            state.submit();
        }
    }

    /// Submits what is queued, handles every completion, forms and
    /// publishes groups, and gives the kernel the slots that became free.
    pub(crate) fn pass(&self) -> Pass {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        state.submit();
        let mut completions = std::mem::take(&mut state.completions);
        completions.clear();
        state.shard.ring().reap(&mut completions);
        let mut packets = 0;
        for completion in &completions {
            packets += u64::from(state.complete(completion));
        }
        state.completions = completions;
        let handled = !state.completions.is_empty();
        state.walk();
        if state.flush_each_pass {
            state.close_group();
        }
        state.shard.publish();
        state.refill();
        state.rearm_starved();
        state.submit();
        if handled {
            Pass::Busy { packets }
        } else if state.shard.ring().rearm_wake() {
            // Work came in since this pass reaped: another pass, not a park.
            Pass::Busy { packets: 0 }
        } else if state.stalled {
            Pass::Stalled
        } else {
            Pass::Idle
        }
    }

    /// Whether any connection's recv is still in flight.
    pub(crate) fn has_armed(&self) -> bool {
        self.state.borrow().connections.values().any(|c| c.armed)
    }

    /// Cancels every recv (stopping).
    pub(crate) fn cancel_all(&self) {
        let mut state = self.state.borrow_mut();
        let ids: Vec<u64> = state.connections.iter().filter(|(_, c)| c.armed).map(|(&id, _)| id).collect();
        for id in ids {
            state.shard.ring().cancel(id, CANCEL);
        }
        state.submit();
    }
}

impl UringDriven for UringReceiver {
    fn pass(&self) -> Pass {
        UringReceiver::pass(self)
    }

    fn wake_fd(&self) -> RawFd {
        self.fd
    }
}

impl State {
    /// Submits what is queued now: the driver may be parked on the ring.
    fn submit(&mut self) {
        if let Err(e) = self.shard.ring().submit() {
            tracing::warn!("io_uring submit failed: {e}");
        }
    }

    /// Arms a multishot recv for connection `id`.
    fn arm(&mut self, id: u64) {
        let Some(conn) = self.connections.get_mut(&id) else { return };
        if conn.armed || conn.detached {
            return;
        }
        conn.armed = self.shard.ring().recv_multishot(conn.fd, id);
        if !conn.armed {
            self.starved.push_back(id);
        }
    }

    /// Handles one completion; returns whether it delivered a packet.
    fn complete(&mut self, completion: &Completion) -> bool {
        tracing::trace!("completion {completion:?}");
        match completion.user_data {
            CANCEL => return false,
            ACCEPT => {
                // A new fd is ours from here on: adopted, it closes on drop
                // (also when accepted while stopping).
                let result = if completion.result >= 0 {
                    Ok(sys::adopt_socket(completion.result))
                } else {
                    Err(io::Error::from_raw_os_error(-completion.result))
                };
                if let Some((fd, accepted)) = &self.accepting {
                    let _ = accepted.try_send(result);
                    if !completion.more {
                        let fd = *fd;
                        self.shard.ring().accept_multishot(fd, ACCEPT);
                    }
                }
                return false;
            }
            _ => {}
        }
        let id = completion.user_data;
        let mut packet = false;
        if let Some(bid) = completion.buffer {
            // The slot of buffer `bid`: the one of the window with that id.
            let n = self.walked + (u64::from(bid).wrapping_sub(self.walked) & (self.entries - 1));
            self.consumed_end = self.consumed_end.max(n + 1);
            let index = (n & (self.entries - 1)) as usize;
            self.slots[index] = match self.connections.get_mut(&id) {
                Some(conn) if completion.result > 0 => {
                    let len = completion.result as u32;
                    conn.last_packet = Instant::now();
                    conn.counters.borrow_mut().count_packet(len as usize);
                    self.counters.packets += 1;
                    self.counters.bytes += u64::from(len);
                    packet = true;
                    let meta = PacketMeta {
                        connection_id: id,
                        peer: conn.peer,
                        rx_realtime_ns: shm_bus::realtime_ns(),
                        rx_monotonic_ns: sys::monotonic_ns(),
                    };
                    Slot::Packet { meta, len }
                }
                _ => Slot::Empty,
            };
        }
        if !completion.more {
            self.recv_ended(id, completion.result);
        }
        packet
    }

    /// Connection `id`'s multishot recv ended with `result`.
    fn recv_ended(&mut self, id: u64, result: i32) {
        let Some(conn) = self.connections.get_mut(&id) else { return };
        conn.armed = false;
        if conn.detached {
            self.connections.remove(&id);
            return;
        }
        let reason = match result {
            // Stopped for its own reasons (e.g. a full completion queue).
            r if r > 0 => return self.arm(id),
            0 => DisconnectReason::PeerClosed,
            r if r == -libc::ENOBUFS => {
                // No buffer: a gated reader holds the ring. Backpressure.
                conn.counters.borrow_mut().stalls += 1;
                self.counters.buffer_exhaustions += 1;
                self.starved.push_back(id);
                return;
            }
            r if r == -libc::EINTR || r == -libc::EAGAIN => return self.arm(id),
            r => DisconnectReason::Error(io::Error::from_raw_os_error(-r).to_string()),
        };
        let _ = conn.ended.try_send(reason);
    }

    /// Re-arms the connections that ran out of buffers, first come first
    /// served, one per buffer the kernel has (as far as we know): with
    /// thousands of connections starved, re-arming them all for a few
    /// buffers would only earn thousands of `ENOBUFS` back.
    fn rearm_starved(&mut self) {
        let mut free = self.next_to_provide.saturating_sub(self.consumed_end);
        while free > 0 {
            let Some(id) = self.starved.pop_front() else { break };
            // Gone meanwhile, or detached: nothing to re-arm.
            if self.connections.get(&id).is_some_and(|c| !c.armed && !c.detached) {
                self.arm(id);
                free -= 1;
            }
        }
    }

    /// Adds the filled slots that follow the open group to it, in slot
    /// order, closing groups as they fill up.
    fn walk(&mut self) {
        while self.walked < self.next_to_provide {
            let index = (self.walked & (self.entries - 1)) as usize;
            match self.slots[index] {
                Slot::Waiting => break,
                Slot::Empty => {
                    self.close_group();
                    // Nothing to deliver: padding over the whole slot.
                    self.shard.commit_claimed_padding((self.slot - RECORD_HEADER) as usize);
                }
                Slot::Packet { meta, len } => {
                    let skip = self.slot - PACKET_HEADER_LEN as u64 - u64::from(len).next_multiple_of(8);
                    let header = records::slotted_packet_header(&meta, len, (skip / 8) as u16);
                    self.shard.header_mut(self.walked, PACKET_AT, PACKET_HEADER_LEN).copy_from_slice(&header);
                    if self.open_packets == 0 {
                        self.opened = Instant::now();
                    }
                    self.open_packets += 1;
                    self.open_payload += u64::from(len);
                }
            }
            self.slots[index] = Slot::Waiting;
            self.walked += 1;
            let at_ring_end = (self.walked * self.slot) % self.shard.writer().ring_capacity() as u64 == 0;
            if self.open_packets >= self.max_packets || at_ring_end {
                self.close_group();
            }
        }
    }

    /// Commits the open group as one record over its slots.
    fn close_group(&mut self) {
        if self.open_packets == 0 {
            return;
        }
        let start = self.shard.writer().next_record_pos();
        debug_assert_eq!(start, (self.walked - u64::from(self.open_packets)) * self.slot);
        // The last packet's padding stops at the end of its slot, where the
        // record ends.
        let header = self.shard.header_mut(self.walked - 1, PACKET_AT, PACKET_HEADER_LEN);
        let len = u64::from(u32::from_le_bytes([header[44], header[45], header[46], header[47]]));
        let skip = (self.slot - DATA_AT - len.next_multiple_of(8)) / 8;
        header[42..44].copy_from_slice(&(skip as u16).to_le_bytes());
        let group = records::group_header(GROUP_VERSION_SLOTTED, self.open_packets);
        let first = start / self.slot;
        self.shard.header_mut(first, RECORD_HEADER, GROUP_HEADER_LEN).copy_from_slice(&group);
        let record_len = u64::from(self.open_packets) * self.slot - RECORD_HEADER;
        // The shard header counts the packets' data as payload, not the
        // slots they leave unfilled (`ringest ls` shows both).
        let payload = std::mem::take(&mut self.open_payload);
        self.shard.commit_claimed(
            record_len as usize,
            records::KIND_PACKET_GROUP,
            shm_bus::realtime_ns(),
            payload,
        );
        self.open_packets = 0;
        self.counters.groups += 1;
    }

    /// Claims ring space up to a window ahead of the next record and gives
    /// the kernel the slots in it that it does not have yet.
    fn refill(&mut self) {
        let first = self.shard.writer().next_record_pos() / self.slot;
        let wanted = first + self.entries;
        if self.next_to_provide >= wanted {
            return;
        }
        let claimed = match self.shard.claim_to(wanted * self.slot) {
            Ok(()) => {
                self.stalled = false;
                wanted
            }
            Err(_) => {
                if !self.stalled {
                    self.stalled = true;
                    self.counters.stalls += 1;
                }
                (self.shard.writer().claimed_end() / self.slot).min(wanted)
            }
        };
        while self.next_to_provide < claimed {
            let n = self.next_to_provide;
            // Every slot given out before is at most a window back, and the
            // ones before `walked` have come back: at most `entries` are out.
            debug_assert!(n - self.walked < self.entries);
            self.shard.provide(n, (n & (self.entries - 1)) as u16);
            self.next_to_provide += 1;
        }
        self.shard.ring().publish_buffers();
    }
}
