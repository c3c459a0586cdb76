//! The io_uring path of a UDP executor: one multishot `recvmsg` on the
//! executor's socket over a provided buffer ring whose buffers are slots of
//! the shard, so the kernel writes each datagram straight into the ring.
//!
//! # Slots
//!
//! A slot holds one datagram. The kernel fills it from its start with its
//! receive header, the source address and the control data, then the
//! datagram; once the completion is in, the engine reads those and writes
//! the record's headers over them:
//!
//! ```text
//! kernel:  +0 recvmsg_out (16) | +16 name (32) | +48 control (160)  | +208 datagram
//! record:  +0 shm-bus header (32) | +32 group header (8) | +40 datagram header (80) | ... | +208 data
//! ```
//!
//! The record header and the group header are written only in the slot a
//! record starts at. Each datagram's header says its data starts 168 bytes
//! after it and the next datagram `slot` bytes after it (the last one: at
//! the end of its slot, where the record ends), so a slot is 208 bytes plus
//! `max_datagram_size_b` rounded up to 8: a 1,206-byte lidar packet takes
//! 1,416 bytes of ring. Slots tile each lap of the ring; what is left at a
//! lap's end (less than a slot) gets a padding record.
//!
//! # Flow control
//!
//! As on the TCP path: only claimed ring space is lent to the kernel, a
//! window of `entries` slots ahead of the open group. When a gated reader
//! holds the ring, the kernel runs out of buffers and ends the recvmsg
//! with `ENOBUFS`; UDP cannot push back, so datagrams then wait in the
//! socket's buffer, and what overflows it the kernel drops and counts
//! (socket statistics: `kernel_drops`).

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use shm_bus::ShardWriter;
use shm_bus::layout::RECORD_HEADER;

use super::DatagramCounters;
use super::control::{parse_control, parse_sockaddr};
use crate::records::{self, DATAGRAM_HEADER_LEN, DatagramMeta, GROUP_HEADER_LEN};
use crate::runtime::{Pass, UringDriven};
use crate::sys::udp::{CONTROL_LEN, NAME_LEN};
use crate::sys::uring::{Completion, DatagramSlots, ReceiveRing};
use crate::sys::{self};

/// `user_data` of the socket's recvmsg.
const RECV: u64 = 1;
/// `user_data` of cancellations.
const CANCEL: u64 = 2;

/// The kernel's `io_uring_recvmsg_out` header.
const RECVMSG_OUT: usize = 16;
/// Where the kernel puts the datagram in a slot.
const DATA_AT: usize = RECVMSG_OUT + NAME_LEN + CONTROL_LEN;
/// Where a slot's datagram header goes.
const DATAGRAM_AT: usize = RECORD_HEADER as usize + GROUP_HEADER_LEN;
/// The datagram header's `data_offset`.
const DATA_OFFSET: u16 = (DATA_AT - DATAGRAM_AT) as u16;
/// Smallest number of slots a ring must hold: the kernel's window (at
/// least 4 slots) must stay within a quarter of it.
pub(crate) const MIN_SLOTS: u64 = 16;

/// The slot size and the buffer ring's entries for datagrams of up to
/// `max_datagram` bytes in a ring of `capacity` bytes; `None` when the ring
/// holds fewer than [`MIN_SLOTS`].
pub(crate) fn geometry(capacity: u64, max_datagram: u64) -> Option<(u64, u64)> {
    let mut slot = DATA_AT as u64 + max_datagram.next_multiple_of(8);
    // The rest of a lap must hold a padding record, or be nothing.
    while (1..RECORD_HEADER).contains(&(capacity % slot)) {
        slot += 8;
    }
    if capacity / slot < MIN_SLOTS {
        return None;
    }
    // An eighth of the ring, as on the TCP path; a power of two.
    let entries = (capacity / 8 / slot).clamp(4, 1 << 15);
    Some((slot, 1 << entries.ilog2()))
}

/// What a slot of the window holds between its completion and its record.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Lent to the kernel, or not yet provided.
    Waiting,
    /// A datagram of `len` kept bytes.
    Datagram { meta: DatagramMeta, len: u32 },
    /// Consumed without a datagram.
    Empty,
}

/// The io_uring receive path of one UDP executor.
pub(crate) struct UringDatagramReceiver {
    state: RefCell<State>,
    wake_fd: RawFd,
}

struct State {
    slots: DatagramSlots,
    socket: RawFd,
    local_port: u16,
    slot: u64,
    entries: u64,
    window: Vec<Slot>,
    /// The first slot not yet lent to the kernel.
    next_to_provide: u64,
    /// The first slot not yet in a group.
    walked: u64,
    open_datagrams: u32,
    open_payload: u64,
    opened: Instant,
    max_datagrams: u32,
    flush_each_pass: bool,
    /// A recvmsg is in flight.
    armed: bool,
    /// Stopping: never re-arm.
    stopping: bool,
    /// The last claim was refused (a gated reader holds the ring).
    stalled: bool,
    /// Largest datagram kept whole (`max_datagram_size_b`).
    max_datagram: usize,
    counters: DatagramCounters,
    completions: Vec<Completion>,
}

impl std::fmt::Debug for UringDatagramReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDatagramReceiver").field("wake_fd", &self.wake_fd).finish()
    }
}

impl UringDatagramReceiver {
    /// Sets up the ring over `writer`'s shard and arms the recvmsg on
    /// `socket`. On failure the writer comes back with the error, for the
    /// read path.
    #[allow(clippy::result_large_err, reason = "called once per executor")]
    pub(crate) fn new(
        writer: ShardWriter,
        socket: RawFd,
        local_port: u16,
        max_datagram: u64,
        group_size: u32,
        group_timeout_us: u64,
    ) -> Result<Self, (ShardWriter, io::Error)> {
        let capacity = writer.ring_capacity() as u64;
        let Some((slot, entries)) = geometry(capacity, max_datagram) else {
            return Err((writer, io::Error::other("the ring holds too few datagram slots")));
        };
        if writer.next_record_pos() != 0 {
            return Err((writer, io::Error::other("the shard is not new")));
        }
        let ring = match ReceiveRing::new(entries as u16) {
            Ok(ring) => ring,
            Err(e) => return Err((writer, e)),
        };
        let wake_fd = ring.wake_fd();
        let mut state = State {
            slots: DatagramSlots::new(ring, writer, slot),
            socket,
            local_port,
            slot,
            entries,
            window: vec![Slot::Waiting; entries as usize],
            next_to_provide: 0,
            walked: 0,
            open_datagrams: 0,
            open_payload: 0,
            opened: Instant::now(),
            max_datagrams: group_size.min((entries / 2) as u32).max(1),
            flush_each_pass: group_timeout_us == 0,
            armed: false,
            stopping: false,
            stalled: false,
            max_datagram: max_datagram as usize,
            counters: DatagramCounters::default(),
            completions: Vec::with_capacity(256),
        };
        state.refill();
        state.arm();
        if let Err(e) = state.slots.ring().submit() {
            return Err((state.slots.into_writer(), e));
        }
        Ok(Self { state: RefCell::new(state), wake_fd })
    }

    /// The counters so far; starts a new interval for the largest datagram.
    pub(crate) fn take_counters(&self) -> DatagramCounters {
        let mut state = self.state.borrow_mut();
        let counters = state.counters;
        state.counters.max_recent = 0;
        counters
    }

    /// How long the open group has waited, if it has datagrams.
    pub(crate) fn open_age(&self) -> Option<Duration> {
        let state = self.state.borrow();
        (state.open_datagrams > 0).then(|| state.opened.elapsed())
    }

    /// Publishes the open group, if it has datagrams.
    pub(crate) fn flush(&self) {
        let mut state = self.state.borrow_mut();
        state.close_group();
        state.slots.publish();
        state.refill();
    }

    /// Whether the recvmsg is still in flight.
    pub(crate) fn is_armed(&self) -> bool {
        self.state.borrow().armed
    }

    /// Stops receiving: cancels the recvmsg; what it delivered is still
    /// published by the passes that follow.
    pub(crate) fn stop(&self) {
        let mut state = self.state.borrow_mut();
        state.stopping = true;
        if state.armed {
            state.slots.ring().cancel(RECV, CANCEL);
            state.submit();
        }
    }

    /// Submits, handles every completion, publishes groups, and lends the
    /// kernel the slots that became free.
    pub(crate) fn pass(&self) -> Pass {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        state.submit();
        let mut completions = std::mem::take(&mut state.completions);
        completions.clear();
        state.slots.ring().reap(&mut completions);
        // Every completion of a pass reached the engine at this reap.
        let received_at = (shm_bus::realtime_ns(), sys::monotonic_ns());
        let mut datagrams = 0;
        for completion in &completions {
            datagrams += u64::from(state.complete(completion, received_at));
        }
        let handled = !completions.is_empty();
        state.completions = completions;
        state.walk();
        if state.flush_each_pass {
            state.close_group();
        }
        state.slots.publish();
        state.refill();
        state.arm();
        state.submit();
        if handled {
            Pass::Busy { packets: datagrams }
        } else if state.slots.ring().rearm_wake() {
            Pass::Busy { packets: 0 }
        } else if state.stalled || (!state.armed && !state.stopping) {
            // Retry the claim, or the arm, on a timer.
            Pass::Stalled
        } else {
            Pass::Idle
        }
    }
}

impl UringDriven for UringDatagramReceiver {
    fn pass(&self) -> Pass {
        UringDatagramReceiver::pass(self)
    }

    fn wake_fd(&self) -> RawFd {
        self.wake_fd
    }
}

impl State {
    fn submit(&mut self) {
        if let Err(e) = self.slots.ring().submit() {
            tracing::warn!("io_uring submit failed: {e}");
        }
    }

    /// Arms the recvmsg when it is not in flight and the kernel has
    /// buffers (re-arming without any would only earn `ENOBUFS` back).
    fn arm(&mut self) {
        if self.armed || self.stopping || self.next_to_provide == self.walked {
            return;
        }
        let name_len = NAME_LEN as u32;
        self.armed = self.slots.ring().recvmsg_multishot(self.socket, RECV, name_len, CONTROL_LEN);
    }

    /// Handles one completion; returns whether it delivered a datagram.
    fn complete(&mut self, completion: &Completion, received_at: (u64, u64)) -> bool {
        if completion.user_data != RECV {
            return false;
        }
        let mut delivered = false;
        if let Some(n) = completion.buffer.and_then(|bid| self.slots.returned(bid)) {
            let kind = if completion.result > 0 { self.read_slot(n, received_at) } else { Slot::Empty };
            delivered = matches!(kind, Slot::Datagram { .. });
            self.window[(n % self.entries) as usize] = kind;
        }
        if !completion.more {
            self.armed = false;
            match -completion.result {
                libc::ENOBUFS => self.counters.buffer_exhaustions += 1,
                libc::ECANCELED => {}
                errno if completion.result < 0 => {
                    tracing::debug!("udp recvmsg ended: {}", io::Error::from_raw_os_error(errno));
                }
                // Ended for its own reasons (e.g. a full completion queue).
                _ => {}
            }
        }
        delivered
    }

    /// What the kernel wrote into slot `n`: the datagram and its origin;
    /// the engine received it at `(realtime, monotonic)`.
    fn read_slot(&mut self, n: u64, (rx_realtime_ns, rx_monotonic_ns): (u64, u64)) -> Slot {
        let capacity = self.max_datagram.min(self.slot as usize - DATA_AT);
        let local_port = self.local_port;
        let bytes = self.slots.slot_mut(n);
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let (name_len, control_len, payload_len, msg_flags) = (word(0), word(4), word(8), word(12));
        let name = &bytes[RECVMSG_OUT..RECVMSG_OUT + name_len.min(NAME_LEN)];
        let control_at = RECVMSG_OUT + NAME_LEN;
        let control = parse_control(&bytes[control_at..control_at + control_len.min(CONTROL_LEN)]);
        let kept = payload_len.min(capacity);
        let mut flags = 0;
        if kept < payload_len || msg_flags & libc::MSG_TRUNC as usize != 0 {
            flags |= records::FLAG_TRUNCATED;
        }
        if msg_flags & libc::MSG_CTRUNC as usize != 0 {
            flags |= records::FLAG_CONTROL_TRUNCATED;
        }
        let (kernel_rx_ns, kernel_flags) = super::kernel_time_fields(control.kernel_time);
        let meta = DatagramMeta {
            source: parse_sockaddr(name).map(Into::into).unwrap_or_default(),
            destination: control
                .destination
                .map(|ip| std::net::SocketAddr::new(ip, local_port).into())
                .unwrap_or_default(),
            rx_realtime_ns,
            rx_monotonic_ns,
            kernel_rx_ns,
            flags: flags | kernel_flags,
            original_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        };
        self.counters.count(kept, flags & records::FLAG_TRUNCATED != 0);
        Slot::Datagram { meta, len: kept as u32 }
    }

    /// Adds the filled slots that follow the open group to it, in slot
    /// order, closing groups as they fill up and at each lap's end.
    fn walk(&mut self) {
        while self.walked < self.next_to_provide {
            let index = (self.walked % self.entries) as usize;
            match self.window[index] {
                Slot::Waiting => break,
                Slot::Empty => {
                    self.close_group();
                    self.slots.commit_claimed_padding((self.slot - RECORD_HEADER) as usize);
                }
                Slot::Datagram { meta, len } => {
                    let header = records::datagram_header(&meta, len, DATA_OFFSET, self.slot as u32);
                    self.slots.slot_mut(self.walked)[DATAGRAM_AT..DATAGRAM_AT + DATAGRAM_HEADER_LEN]
                        .copy_from_slice(&header);
                    if self.open_datagrams == 0 {
                        self.opened = Instant::now();
                    }
                    self.open_datagrams += 1;
                    self.open_payload += u64::from(len);
                }
            }
            self.window[index] = Slot::Waiting;
            let ends_lap = self.slots.ends_lap(self.walked);
            self.walked += 1;
            if self.open_datagrams >= self.max_datagrams || ends_lap {
                self.close_group();
            }
            if ends_lap && self.slots.lap_remainder() > 0 {
                self.slots.commit_claimed_padding((self.slots.lap_remainder() - RECORD_HEADER) as usize);
            }
        }
    }

    /// Commits the open group as one record over its slots.
    fn close_group(&mut self) {
        if self.open_datagrams == 0 {
            return;
        }
        let first = self.walked - u64::from(self.open_datagrams);
        let last = self.walked - 1;
        // The last datagram ends where its slot, and the record, ends.
        let size = (self.slot - DATAGRAM_AT as u64) as u32;
        self.slots.slot_mut(last)[DATAGRAM_AT..DATAGRAM_AT + 4].copy_from_slice(&size.to_le_bytes());
        let group = records::datagram_group_header(self.open_datagrams);
        self.slots.slot_mut(first)[RECORD_HEADER as usize..DATAGRAM_AT].copy_from_slice(&group);
        let record_len = u64::from(self.open_datagrams) * self.slot - RECORD_HEADER;
        let payload = std::mem::take(&mut self.open_payload);
        self.slots.commit_claimed(
            record_len as usize,
            records::KIND_DATAGRAM_GROUP,
            shm_bus::realtime_ns(),
            payload,
        );
        self.open_datagrams = 0;
        self.counters.groups += 1;
    }

    /// Claims ring space up to a window ahead of the open group and lends
    /// the kernel the slots in it that it does not have yet.
    fn refill(&mut self) {
        let first = self.walked - u64::from(self.open_datagrams);
        let wanted = first + self.entries;
        if self.next_to_provide >= wanted {
            return;
        }
        let claimed = match self.slots.claim_to(self.slots.position(wanted)) {
            Ok(()) => {
                self.stalled = false;
                wanted
            }
            Err(_) => {
                if !self.stalled {
                    self.stalled = true;
                    self.counters.ring_full_stalls += 1;
                }
                self.slots.slots_before(self.slots.writer().claimed_end()).min(wanted)
            }
        };
        while self.next_to_provide < claimed {
            self.slots.provide(self.next_to_provide);
            self.next_to_provide += 1;
        }
        self.slots.ring().publish_buffers();
    }
}
