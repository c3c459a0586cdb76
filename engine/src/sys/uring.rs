//! The raw io_uring of an executor's receive path, beside glommio's own
//! ring, and its provided buffer ring.
//!
//! Two things here need `unsafe`: submitting entries (the kernel must not
//! be handed memory that goes away) and the provided buffer ring (memory
//! the kernel reads buffer addresses from, and the buffers it then writes
//! into). The entries this module builds carry no pointer to memory the
//! ring does not own: a multishot recv takes its memory from the buffer
//! ring, a multishot recvmsg too, with the `msghdr` the ring keeps for it,
//! a multishot accept writes no address, a cancel names a `user_data`. So
//! submitting is safe to call; the buffers are the caller's promise, made
//! in [`ReceiveRing::provide`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

/// The buffer group id of the provided buffer ring (one per ring).
const BUFFER_GROUP: u16 = 0;
/// `IORING_ENTER_GETEVENTS` (linux/io_uring.h).
const ENTER_GETEVENTS: u32 = 1;

/// What the kernel reported for one submitted operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    /// The syscall-style result: bytes or a new fd, or `-errno`.
    pub(crate) result: i32,
    /// The provided buffer the kernel filled, if any.
    pub(crate) buffer: Option<u16>,
    /// Whether the (multishot) operation stays armed.
    pub(crate) more: bool,
}

/// An io_uring with one provided buffer ring of `entries` buffers, which
/// the caller fills with [`ReceiveRing::provide`].
pub(crate) struct ReceiveRing {
    /// The entries of the provided buffer ring: page-aligned anonymous
    /// memory, registered with the kernel as buffer group [`BUFFER_GROUP`].
    buffers: NonNull<BufRingEntry>,
    buffers_len: usize,
    entries: u16,
    /// Our copy of the buffer ring's tail: entries below it are published.
    tail: u16,
    /// Entries written since the last [`ReceiveRing::publish_buffers`].
    unpublished: u16,
    ring: IoUring,
    /// The eventfd registered with the ring: the kernel signals it when
    /// task work for the ring is queued (a socket has data for a recv, a
    /// connection waits for the accept) and when completions are posted.
    /// Declared after `ring`, so it closes after the ring is gone.
    wake: OwnedFd,
    /// The `msghdr` of multishot recvmsg entries: the kernel reads only its
    /// `msg_namelen` and `msg_controllen` (the room it leaves in each
    /// buffer for the source address and the control data). Boxed, so its
    /// address stays put while the ring lives.
    recvmsg_header: Box<libc::msghdr>,
}

impl std::fmt::Debug for ReceiveRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveRing").field("entries", &self.entries).field("tail", &self.tail).finish()
    }
}

impl ReceiveRing {
    /// Sets up a ring and registers a buffer ring of `entries` (a power of
    /// two, at most 32768). Fails where the kernel lacks what the receive
    /// path needs (multishot recv: Linux 6.0).
    pub(crate) fn new(entries: u16) -> io::Result<Self> {
        check_kernel()?;
        assert!(entries.is_power_of_two() && entries <= 1 << 15);
        // DEFER_TASKRUN: the ring's task work (a recv of the data that
        // arrived on a socket, posting its completion) runs only when this
        // thread asks for it, in `reap`, at the start of a driver pass: the
        // kernel receives what piled up since the last pass in one go, and
        // never interrupts the executor for it. A parked executor learns of
        // queued work from the registered eventfd (`wake_fd`), which glommio
        // polls; without it nothing would wake it (the ring's own fd is not
        // signalled until the work has run). SINGLE_ISSUER: only the
        // executor thread submits (DEFER_TASKRUN requires it). TASKRUN_FLAG:
        // the kernel flags queued task work in the submission ring, so a
        // reap enters the kernel only when there is work, a submit with
        // nothing queued makes no syscall, and a drained eventfd cannot
        // hide work. SQPOLL would burn a core.
        let ring = IoUring::builder()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_cqsize(completion_queue_size(entries))
            .build(256)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (name, code) in [
            ("recv", opcode::RecvMulti::CODE),
            ("accept", opcode::AcceptMulti::CODE),
            ("async cancel", opcode::AsyncCancel::CODE),
            ("recvmsg", opcode::RecvMsgMulti::CODE),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks {name}")));
            }
        }
        let buffers_len = (usize::from(entries) * size_of::<BufRingEntry>()).next_multiple_of(page_size());
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory; the result is checked.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                buffers_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buffers = NonNull::new(memory.cast::<BufRingEntry>()).expect("mmap does not return null");
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            let error = io::Error::last_os_error();
            // SAFETY: mapped above with this length; nothing refers to it yet.
            unsafe { libc::munmap(memory, buffers_len) };
            return Err(error);
        }
        // SAFETY: `wake` is a new fd that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        // SAFETY: msghdr is a plain C struct for which all zeroes (null
        // pointers, zero lengths) is valid.
        let recvmsg_header = Box::new(unsafe { std::mem::zeroed::<libc::msghdr>() });
        let this =
            Self { buffers, buffers_len, entries, tail: 0, unpublished: 0, ring, wake, recvmsg_header };
        this.ring.submitter().register_eventfd(this.wake.as_raw_fd())?;
        // SAFETY: `buffers` is page-aligned (mmap), zeroed, `buffers_len`
        // bytes long, enough for `entries` entries; it stays mapped until
        // `Drop`, which unregisters the group before unmapping it.
        unsafe {
            this.ring.submitter().register_buf_ring_with_flags(
                this.buffers.as_ptr() as u64,
                entries,
                BUFFER_GROUP,
                0,
            )?;
        }
        Ok(this)
    }

    /// The fd to await (glommio polls it): readable when the ring has work
    /// for [`ReceiveRing::reap`].
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Resets the wake fd before the driver parks. Returns true if work
    /// arrived meanwhile (task work flagged, completions waiting): then the
    /// driver must not park, as the signal it would wait for was just
    /// consumed. The kernel (`io_req_local_work_add`) sets the task-work
    /// flag before it signals the eventfd, when its work list goes from
    /// empty to not empty, and a run of the work that leaves some over (it
    /// runs at most about 20 items per enter) sets the flag again: work
    /// that the reset may have swallowed shows here.
    pub(crate) fn rearm_wake(&mut self) -> bool {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count`, a valid u64; the fd is a
        // non-blocking eventfd we own. EAGAIN (not signalled) is fine.
        let _ = unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
        self.ring.submission().taskrun() || !self.ring.completion().is_empty()
    }

    /// Hands the kernel the buffer `bid`: `len` bytes at `addr`. Visible to
    /// the kernel after [`ReceiveRing::publish_buffers`].
    ///
    /// # Safety
    ///
    /// - `addr..addr + len` is valid for writes and stays so until the
    ///   kernel reports the buffer used (a [`Completion`] with `buffer ==
    ///   Some(bid)`) or this ring is dropped;
    /// - until then nothing else reads or writes those bytes: they are the
    ///   kernel's;
    /// - at most `entries` buffers are in the kernel's hands at once.
    pub(crate) unsafe fn provide(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let index = usize::from(self.tail.wrapping_add(self.unpublished) & (self.entries - 1));
        // SAFETY: `index < entries`, inside the mapping. The kernel reads
        // only entries below the published tail; this one is at or above it
        // and, by the caller's promise of at most `entries` outstanding
        // buffers, no longer read (its previous buffer was consumed). The
        // setters write `addr`, `len` and `bid`, never the tail field that
        // overlays entry 0's reserved bytes.
        let entry = unsafe { &mut *self.buffers.as_ptr().add(index) };
        entry.set_addr(addr as u64);
        entry.set_len(len);
        entry.set_bid(bid);
        self.unpublished += 1;
    }

    /// Publishes the buffers provided since the last call with one release
    /// store of the buffer ring's tail.
    pub(crate) fn publish_buffers(&mut self) {
        if self.unpublished == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.unpublished);
        self.unpublished = 0;
        // SAFETY: the tail is a u16 at a fixed offset of the page-aligned
        // ring base (the crate computes it); it is only ever accessed
        // atomically: by us here, by the kernel with an acquire load.
        let tail = unsafe { &*(BufRingEntry::tail(self.buffers.as_ptr()) as *const AtomicU16) };
        // Release: pairs with the kernel's smp_load_acquire of the tail in
        // buffer selection, so the entries written above are seen whole.
        tail.store(self.tail, Ordering::Release);
    }

    /// Queues a multishot recv on `fd` into the provided buffers.
    pub(crate) fn recv_multishot(&mut self, fd: RawFd, user_data: u64) -> bool {
        self.push(&opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP).build().user_data(user_data))
    }

    /// Queues a multishot recvmsg on the datagram socket `fd` into the
    /// provided buffers. Each buffer receives, in order: the kernel's
    /// `io_uring_recvmsg_out` header (16 bytes), `name_len` bytes of room
    /// for the source address, `control_len` bytes for the control data,
    /// and the datagram (truncated to what is left). The same room is used
    /// by every recvmsg of this ring.
    pub(crate) fn recvmsg_multishot(
        &mut self,
        fd: RawFd,
        user_data: u64,
        name_len: u32,
        control_len: usize,
    ) -> bool {
        self.recvmsg_header.msg_namelen = name_len;
        self.recvmsg_header.msg_controllen = control_len;
        let header: *const libc::msghdr = &*self.recvmsg_header;
        // MSG_TRUNC: the header reports a truncated datagram's whole length.
        let entry = opcode::RecvMsgMulti::new(Fd(fd), header, BUFFER_GROUP).flags(libc::MSG_TRUNC as u32);
        self.push(&entry.build().user_data(user_data))
    }

    /// Queues a multishot accept on the listening socket `fd`; accepted
    /// sockets are non-blocking and close-on-exec.
    pub(crate) fn accept_multishot(&mut self, fd: RawFd, user_data: u64) -> bool {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        self.push(&opcode::AcceptMulti::new(Fd(fd)).flags(flags).build().user_data(user_data))
    }

    /// Queues the cancellation of every operation tagged `target`; the
    /// cancel's own completion carries `user_data`.
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) -> bool {
        let builder = CancelBuilder::user_data(target).all();
        self.push(&opcode::AsyncCancel2::new(builder).build().user_data(user_data))
    }

    /// Queues `entry`, submitting the queue first when it is full. Returns
    /// false if it could not be queued.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry built by this module refers to no memory
            // but the ring's own (see the module docs): fds, which the
            // kernel holds a reference to once submitted, the provided
            // buffer ring, valid until `Drop`, and `recvmsg_header`, boxed
            // and dropped with the ring.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.submit().is_err() {
                return false;
            }
        }
        false
    }

    /// Submits the queued entries; does not wait. With nothing queued and
    /// no completion overflowed it makes no syscall (measured: four empty
    /// `io_uring_enter`s per received packet before this check).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        {
            let queue = self.ring.submission();
            if queue.is_empty() && !queue.cq_overflow() {
                return Ok(());
            }
        }
        retry_enter(|| self.ring.submit())
    }

    /// Takes every posted completion, in order.
    pub(crate) fn reap(&mut self, into: &mut Vec<Completion>) {
        // Run the queued task work (DEFER_TASKRUN): the kernel receives
        // into the provided buffers and posts the completions now.
        if self.ring.submission().taskrun() {
            let run_task_work = || {
                // SAFETY: no entries are submitted (0), so no memory is
                // handed to the kernel; GETEVENTS with min_complete 0 runs
                // the task work and returns without waiting.
                unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None) }
            };
            if let Err(e) = retry_enter(run_task_work) {
                tracing::warn!("io_uring enter (task work) failed: {e}");
            }
        }
        let mut queue = self.ring.completion();
        queue.sync();
        into.extend(queue.map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            buffer: cqueue::buffer_select(cqe.flags()),
            more: cqueue::more(cqe.flags()),
        }));
    }
}

impl Drop for ReceiveRing {
    fn drop(&mut self) {
        // The kernel stops selecting buffers from the group first, then its
        // entries are unmapped; the ring itself closes last (field drop).
        let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        // SAFETY: `buffers` was mapped with `buffers_len` bytes in `new` and
        // is no longer registered with the kernel; nothing else refers to it.
        unsafe { libc::munmap(self.buffers.as_ptr().cast(), self.buffers_len) };
    }
}

/// Runs `enter` (an `io_uring_enter`) again when a signal interrupted it.
/// `EBUSY` (the completion queue is full) is no error: the caller reaps,
/// and what was not submitted goes with the next submit.
fn retry_enter(mut enter: impl FnMut() -> io::Result<usize>) -> io::Result<()> {
    loop {
        match enter() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Whether this kernel and process can run the io_uring receive path: sets
/// up (and drops) a ring with a buffer ring of `entries`, the size the
/// executors will ask for, so that what fails there fails here, loudly.
///
/// It runs on a thread of its own: closing a ring sends task work to the
/// thread that created it, which would interrupt a blocking call with a
/// timeout (`EINTR`) on the caller's thread.
pub(crate) fn probe(entries: u16) -> io::Result<()> {
    std::thread::spawn(move || ReceiveRing::new(entries).map(drop))
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
}

/// The page size, for aligning the buffer ring.
fn page_size() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// The kernel's largest completion queue (`IORING_MAX_CQ_ENTRIES`): a
/// larger `IORING_SETUP_CQSIZE` fails with EINVAL unless the ring is set up
/// with `IORING_SETUP_CLAMP`.
const MAX_COMPLETION_QUEUE: u32 = 65_536;

/// Four completions per buffer (and at least 1024), within the kernel's
/// limit: the kernel holds at most `entries` buffers at once, so even the
/// limit (two per buffer at 32768 buffers) leaves room for the accept and
/// cancel completions; an overflow would not lose any either (the kernel
/// keeps them, IORING_FEAT_NODROP, until the ring has room).
fn completion_queue_size(entries: u16) -> u32 {
    (u32::from(entries).max(256) * 4).min(MAX_COMPLETION_QUEUE)
}

/// Multishot recv arrived in Linux 6.0 (older kernels accept the entry
/// but deliver one completion, so the version decides), DEFER_TASKRUN in
/// 6.1.
fn check_kernel() -> io::Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (6, 1) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("Linux {}.{} lacks multishot recv and DEFER_TASKRUN (6.1)", version.0, version.1),
        ))
    }
}

/// A shard of the packet channel cut into receive slots, some of which are
/// the kernel's buffers. It owns both the shard's writer and the ring, so
/// that the kernel lets go of the buffers before the mapping goes away, and
/// it lets its user write only the header room of a slot (the first
/// `data_at` bytes), never a kernel buffer.
#[derive(Debug)]
pub(crate) struct ShardSlots {
    // Dropped first: see `ReceiveRing`'s `Drop`.
    ring: ReceiveRing,
    writer: shm_bus::ShardWriter,
    slot: u64,
    data_at: u64,
}

impl ShardSlots {
    /// Slots of `slot` bytes (a power of two dividing the ring) whose bytes
    /// from `data_at` on are the kernel's buffers once provided.
    pub(crate) fn new(ring: ReceiveRing, writer: shm_bus::ShardWriter, slot: u64, data_at: u64) -> Self {
        assert!(slot.is_power_of_two() && data_at < slot && writer.ring_capacity() as u64 % slot == 0);
        Self { ring, writer, slot, data_at }
    }

    /// Gives the writer back, after the ring is gone.
    pub(crate) fn into_writer(self) -> shm_bus::ShardWriter {
        let Self { ring, writer, .. } = self;
        drop(ring);
        writer
    }

    pub(crate) fn ring(&mut self) -> &mut ReceiveRing {
        &mut self.ring
    }

    /// The writer, for what touches no slot's bytes.
    pub(crate) fn writer(&self) -> &shm_bus::ShardWriter {
        &self.writer
    }

    /// Claims ring space up to position `end` (see
    /// [`shm_bus::ShardWriter::claim_to`]).
    pub(crate) fn claim_to(&mut self, end: u64) -> Result<(), shm_bus::ReserveError> {
        self.writer.claim_to(end)
    }

    /// Hands the data part of slot `n` (counted from the start of the
    /// stream) to the kernel as buffer `bid`.
    ///
    /// # Panics
    /// If the slot is not claimed space.
    pub(crate) fn provide(&mut self, n: u64, bid: u16) {
        let len = self.slot - self.data_at;
        let addr = self.writer.claimed_ptr(n * self.slot + self.data_at, len as usize);
        // SAFETY:
        // - `addr..addr + len` is claimed space of the shard (checked by
        //   `claimed_ptr`), in a mapping that `self.writer` keeps alive
        //   longer than the ring (field order; `into_writer` drops the
        //   ring first);
        // - nothing else touches those bytes: the writer's other users go
        //   through `header_mut`, which reaches only the first `data_at`
        //   bytes of a slot, and shm-bus writes only record headers at
        //   record starts (slot starts) and moves its tail over old records
        //   outside the claim;
        // - at most `entries` are outstanding: the caller provides a slot
        //   again only after its completion, within a window of `entries`
        //   slots (a `debug_assert` in `UringReceiver` checks it).
        unsafe { self.ring.provide(addr, len as u32, bid) };
    }

    /// The bytes `offset..offset + len` of slot `n`'s header room.
    ///
    /// # Panics
    /// If the range leaves the header room or the claimed space.
    pub(crate) fn header_mut(&mut self, n: u64, offset: u64, len: usize) -> &mut [u8] {
        assert!(offset + len as u64 <= self.data_at, "only a slot's header room may be written");
        self.writer.claimed_mut(n * self.slot + offset, len)
    }

    /// Commits the record at the next record position (its slots filled).
    /// `payload_bytes`: the data of its packets, for introspection.
    pub(crate) fn commit_claimed(
        &mut self,
        len: usize,
        kind: u16,
        timestamp_ns: u64,
        payload_bytes: u64,
    ) -> u64 {
        let seq = self.writer.commit_claimed(len, kind, timestamp_ns);
        // The rest of the record is packet headers and the unfilled ends of
        // receive slots.
        self.writer.count_as_framing((len as u64).saturating_sub(payload_bytes));
        seq
    }

    pub(crate) fn commit_claimed_padding(&mut self, len: usize) {
        self.writer.commit_claimed_padding(len);
    }

    pub(crate) fn publish(&mut self) {
        self.writer.publish();
    }
}

/// A shard of a UDP stage's packet channel cut into datagram slots of any
/// multiple of 8 bytes, some of which are the kernel's buffers.
///
/// Slots tile each lap of the ring from its start; the remainder at the
/// end of a lap (less than a slot) is left to a padding record, so slot
/// `n` is at position `lap × capacity + index × slot` with `lap, index =
/// divmod(n, slots_per_lap)`. Unlike [`ShardSlots`], the kernel's buffer
/// is the whole slot (it writes its receive header, the source address
/// and the control data before the datagram, where the record's headers
/// go later), so this type tracks which slots the kernel holds and lets
/// its user touch a slot only once the kernel gave it back.
#[derive(Debug)]
pub(crate) struct DatagramSlots {
    // Dropped first: see `ReceiveRing`'s `Drop`.
    ring: ReceiveRing,
    writer: shm_bus::ShardWriter,
    slot: u64,
    slots_per_lap: u64,
    capacity: u64,
    /// Slot number lent to the kernel at each buffer id, if any.
    lent: Vec<Option<u64>>,
}

impl DatagramSlots {
    /// Slots of `slot` bytes (a multiple of 8 whose lap remainder is 0 or
    /// holds a padding record) over `writer`, with buffer ids `0..entries`.
    pub(crate) fn new(ring: ReceiveRing, writer: shm_bus::ShardWriter, slot: u64) -> Self {
        let capacity = writer.ring_capacity() as u64;
        let entries = u64::from(ring.entries);
        let remainder = capacity % slot;
        assert!(slot % 8 == 0 && slot <= capacity / 4);
        assert!(remainder == 0 || remainder >= shm_bus::layout::RECORD_HEADER);
        Self {
            ring,
            writer,
            slot,
            slots_per_lap: capacity / slot,
            capacity,
            lent: vec![None; entries as usize],
        }
    }

    /// Gives the writer back, after the ring is gone.
    pub(crate) fn into_writer(self) -> shm_bus::ShardWriter {
        let Self { ring, writer, .. } = self;
        drop(ring);
        writer
    }

    pub(crate) fn ring(&mut self) -> &mut ReceiveRing {
        &mut self.ring
    }

    pub(crate) fn writer(&self) -> &shm_bus::ShardWriter {
        &self.writer
    }

    /// The stream position of slot `n`.
    pub(crate) fn position(&self, n: u64) -> u64 {
        n / self.slots_per_lap * self.capacity + n % self.slots_per_lap * self.slot
    }

    /// Whether slot `n` is the last of its lap.
    pub(crate) fn ends_lap(&self, n: u64) -> bool {
        n % self.slots_per_lap == self.slots_per_lap - 1
    }

    /// Bytes from the end of the last slot of a lap to the lap's end.
    pub(crate) fn lap_remainder(&self) -> u64 {
        self.capacity % self.slot
    }

    /// Claims ring space up to position `end` (see
    /// [`shm_bus::ShardWriter::claim_to`]).
    pub(crate) fn claim_to(&mut self, end: u64) -> Result<(), shm_bus::ReserveError> {
        self.writer.claim_to(end)
    }

    /// Commits the record at the next record position over returned
    /// slots; `payload_bytes` of it are datagrams, the rest framing.
    ///
    /// # Panics
    /// If the kernel still holds a slot the record covers.
    pub(crate) fn commit_claimed(&mut self, len: usize, kind: u16, timestamp_ns: u64, payload_bytes: u64) {
        self.assert_returned(len);
        self.writer.commit_claimed(len, kind, timestamp_ns);
        self.writer.count_as_framing((len as u64).saturating_sub(payload_bytes));
    }

    /// Fills `len` payload bytes from the next record position with padding.
    ///
    /// # Panics
    /// As [`DatagramSlots::commit_claimed`].
    pub(crate) fn commit_claimed_padding(&mut self, len: usize) {
        self.assert_returned(len);
        self.writer.commit_claimed_padding(len);
    }

    /// Checks that no slot under the record of `len` payload bytes at the
    /// next record position is lent: shm-bus writes its header there.
    fn assert_returned(&self, len: usize) {
        let start = self.writer.next_record_pos();
        let end = start + shm_bus::layout::RECORD_HEADER + len as u64;
        let first = self.slots_before(start);
        let mut n = first;
        while self.position(n) < end && n < first + self.lent.len() as u64 {
            let bid = (n % self.lent.len() as u64) as usize;
            assert!(self.lent[bid] != Some(n), "slot {n} is the kernel's");
            n += 1;
        }
    }

    pub(crate) fn publish(&mut self) {
        self.writer.publish();
    }

    /// The number of slots usable with space claimed up to stream position
    /// `pos`: those that end at or before it, except that the last slot of
    /// a lap counts only once `pos` reaches the lap's end, since after it
    /// comes the padding record over the rest of the lap.
    pub(crate) fn slots_before(&self, pos: u64) -> u64 {
        let (lap, offset) = (pos / self.capacity, pos % self.capacity);
        // `offset` is below the lap's end, so the last slot never counts.
        lap * self.slots_per_lap + (offset / self.slot).min(self.slots_per_lap - 1)
    }

    /// Hands slot `n` to the kernel, as buffer `n mod entries`.
    ///
    /// # Panics
    /// If the slot is not claimed space, or its buffer id is still lent.
    pub(crate) fn provide(&mut self, n: u64) {
        let bid = (n % self.lent.len() as u64) as u16;
        assert!(self.lent[usize::from(bid)].is_none(), "buffer {bid} is still the kernel's");
        let addr = self.writer.claimed_ptr(self.position(n), self.slot as usize);
        self.lent[usize::from(bid)] = Some(n);
        // SAFETY:
        // - `addr..addr + slot` is claimed space of the shard (checked by
        //   `claimed_ptr`), in a mapping that `self.writer` keeps alive
        //   longer than the ring (field order; `into_writer` drops the
        //   ring first);
        // - nothing else touches those bytes until the kernel gives the
        //   buffer back: `slot_mut` refuses a lent slot, and claimed space
        //   is at most half the ring, so no other claimed slot shares its
        //   memory; shm-bus writes record headers only at commits, which
        //   the user makes over returned slots;
        // - at most `entries` are lent: one per buffer id, checked above.
        unsafe { self.ring.provide(addr, self.slot as u32, bid) };
    }

    /// The kernel completed buffer `bid`: it is ours again. Returns the
    /// slot it was.
    pub(crate) fn returned(&mut self, bid: u16) -> Option<u64> {
        self.lent.get_mut(usize::from(bid))?.take()
    }

    /// The bytes of slot `n`, once the kernel has given it back.
    ///
    /// # Panics
    /// If the kernel holds the slot, or it is not claimed space.
    pub(crate) fn slot_mut(&mut self, n: u64) -> &mut [u8] {
        let bid = (n % self.lent.len() as u64) as usize;
        assert!(self.lent[bid] != Some(n), "slot {n} is the kernel's");
        let pos = self.position(n);
        self.writer.claimed_mut(pos, self.slot as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest buffer ring (32768 buffers: a 4 GiB packet ring with
    /// 16 KiB slots, or 1 GiB with 4 KiB) asked for a completion queue of
    /// 131072, which the kernel refuses without IORING_SETUP_CLAMP: the
    /// stage silently fell back to the read path.
    /// Slots of 1,416 bytes in a 64 KiB ring: 46 per lap, 400 bytes left
    /// at each lap's end for a padding record.
    #[test]
    fn the_last_slot_of_a_lap_is_usable_only_with_the_rest_of_the_lap_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let bus = shm_bus::BusDir::new(dir.path());
        let opts = shm_bus::ChannelOptions { capacity: 64 << 10, hot_window: 0, ..Default::default() };
        let producer = shm_bus::Producer::create(&bus, "slots", opts).unwrap();
        let slots = DatagramSlots::new(ReceiveRing::new(4).unwrap(), producer.shard(0).unwrap(), 1416);
        let lap = 64 << 10;
        assert_eq!((slots.position(45), slots.position(46)), (45 * 1416, lap));
        assert!(slots.ends_lap(45) && !slots.ends_lap(46) && slots.ends_lap(91));
        assert_eq!(slots.lap_remainder(), 400);
        assert_eq!(slots.slots_before(45 * 1416), 45);
        // Claimed to the end of slot 45 but not over the rest of the lap:
        // slot 45 must wait, or its padding would leave the claim.
        assert_eq!(slots.slots_before(46 * 1416), 45);
        assert_eq!(slots.slots_before(lap - 8), 45);
        assert_eq!(slots.slots_before(lap), 46);
        assert_eq!(slots.slots_before(lap + 1416), 47);
    }

    #[test]
    fn the_largest_buffer_ring_gets_a_completion_queue_the_kernel_accepts() {
        assert_eq!(completion_queue_size(1 << 15), MAX_COMPLETION_QUEUE);
        assert_eq!(completion_queue_size(4), 1024);
        for entries in [1u16 << 14, 1 << 15] {
            if let Err(e) = ReceiveRing::new(entries) {
                panic!("a receive ring of {entries} buffers: {e}");
            }
        }
    }
}
