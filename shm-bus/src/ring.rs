//! The shard ring protocol: every atomic operation and every `unsafe` block
//! of `shm-bus` lives in this module.
//!
//! # The algorithm
//!
//! A shard is a byte ring of `capacity` bytes (a power of two) with exactly
//! one writer (a producer thread) and any number of readers in any number of
//! processes. Positions are byte counts since the shard was created (`u64`,
//! never wrapping in practice); the byte of position `p` lives at offset
//! `p & (capacity - 1)` of the data ring.
//!
//! Each record is a 32-byte header (its own position as a stamp, payload
//! length, kind, sequence number, timestamp) followed by the payload padded
//! to 8 bytes. A record never wraps: when it does not fit before the end of
//! the ring, the writer fills the rest with a padding record (or, when fewer
//! than 32 bytes remain, leaves them: both sides skip such a stub), and the
//! record starts at offset 0. So a reader always gets one contiguous slice.
//!
//! Two positions in the shard header steer everything:
//!
//! - `write_pos`: every record below it is committed. The writer makes a
//!   batch of records visible with one `Release` store (**sync point P**);
//!   readers load it (Relaxed, then an `Acquire` fence) before touching any
//!   record below it.
//! - `tail_pos`: the oldest position a lossy reader may still read. Before
//!   overwriting the bytes of an earlier lap the writer moves the tail past
//!   them and then issues a `Release` fence (**sync point T**). A lossy
//!   reader reads the record header and copies the payload out, every word
//!   with a Relaxed atomic load, then issues an `Acquire` fence and loads
//!   the tail (**sync point V**). If any byte it read came from a newer lap,
//!   fence T synchronises with fence V and the tail it loads is past the
//!   record: the copy is discarded (a seqlock, with the tail as the
//!   sequence). Only atomic loads touch bytes a writer may be overwriting,
//!   so there is no data race in Rust's memory model; gated readers, whose
//!   bytes nobody writes, get them in place.
//!
//! Gated (lossless) readers publish, per shard, the position below which
//! they are done (a `Release` compare-and-swap against the position they
//! stored last, **sync point G**: see [`SlotHold`] for why). Before the writer
//! reuses space below a position it checks that no live gated reader is
//! behind it, with `Acquire` loads that pair with G. The minimum is cached
//! and only rescanned when it does not suffice or when a reader registered
//! since the last scan. Registration races with reclaiming; a Dekker
//! handshake settles it (**sync point R**): the writer stores the new tail,
//! issues a `SeqCst` fence and loads the registration counter; a registering
//! reader bumps the counter, issues a `SeqCst` fence and loads the tail. Of
//! two `SeqCst` fences one comes first, so at least one side sees the
//! other's store: either the writer rescans and sees the reader, or the
//! reader sees the new tail and starts at or after it. (Fences rather than
//! `SeqCst` accesses: the guarantee is the same, and loom models fences
//! exactly but treats `SeqCst` accesses as `AcqRel`.)
//!
//! A reader slot belongs to whoever's 64-bit owner word (state and claim
//! epoch) is in it; every change of that word is a compare-and-swap of the
//! whole word ([`Slots`]). A writer overwrites what a gated reader holds
//! only after reaping its slot (judging its process dead) or after loading
//! a position someone else stored there, and then fences (T): a gated
//! reader checks, after reading each record header, that its slot still
//! holds its position ([`Slots::holds`], an `Acquire` fence), so one that
//! was misjudged dead fails instead of trusting overwritten bytes.
//!
//! A ring larger than the CPU cache is written and read from DRAM. With a
//! hot window the writer cycles through the start of the ring while its
//! registered readers keep up: it *starts over* early with a padding record
//! that covers the rest of the lap. Readers jump over a padding record by
//! its header and never read its inside, so one lap later the writer may
//! fill that inside without moving the tail or asking the gates, as long as
//! the header stays intact. When a registered reader falls behind, the
//! writer *skips ahead* into it (another padding record, from where it is
//! to the inside), so a reader that stalls right after a start-over still
//! has the whole ring as buffer. This is all writer policy ([`Skipped`]):
//! readers see only padding records.
//!
//! Readers that want to sleep use a futex on the channel's `notify` word: a
//! waiter reads `notify`, bumps the `waiters` count, re-checks for data, and
//! sleeps only if `notify` is unchanged. The writer, after publishing, loads
//! `waiters` and bumps and wakes `notify` only when someone waits. Fences on
//! both sides (**sync point W**) make sure that either the writer sees the
//! waiter or the waiter sees the data.
//!
//! # Memory shared with other processes
//!
//! The mapped files are shared with processes outside this program's control.
//! Every word that two parties may access at the same time (the positions, the
//! counters, the record headers, the reader slots) is only ever accessed as an
//! atomic, by every party (FORMAT.md states this for foreign readers). Payload
//! bytes are plain memory to the writer: it only writes space that no reader
//! may legitimately read (below the published tail and gates, above
//! `write_pos`); a lossy reader reads them only with atomic loads and learns
//! at sync point V whether it raced with an overwrite. Loads from the
//! read-only mapping of the `.ring` file are Relaxed (followed by an Acquire
//! fence where they synchronise): the std docs allow only those on
//! read-only memory.
//! Every offset is checked against the mapping's length before it is used, so
//! a corrupt file yields an error, never an out-of-bounds access.

use std::fmt;
#[cfg(not(loom))]
use std::fs::File;
#[cfg(not(loom))]
use std::io;
#[cfg(not(loom))]
use std::time::Duration;

use crate::layout::{
    KIND_PADDING, MAX_POSITION, RECORD_ALIGN, RECORD_HEADER, channel_header, max_payload, reader_slot,
    readers_header, record_header, record_size, shard_header, slot_state,
};

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

// ---------------------------------------------------------------------------
// Mappings and regions
// ---------------------------------------------------------------------------

/// A shared mapping of a whole channel file.
#[cfg(not(loom))]
pub(crate) struct Mapping {
    raw: memmap2::MmapRaw,
    writable: bool,
}

#[cfg(not(loom))]
impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping").field("len", &self.raw.len()).field("writable", &self.writable).finish()
    }
}

#[cfg(not(loom))]
impl Mapping {
    /// Maps all of `file`, shared; read-only unless `writable`.
    pub(crate) fn map(file: &File, writable: bool) -> io::Result<Self> {
        let raw = if writable {
            memmap2::MmapOptions::new().map_raw(file)?
        } else {
            memmap2::MmapOptions::new().map_raw_read_only(file)?
        };
        Ok(Self { raw, writable })
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    fn check(&self, off: usize, len: usize) {
        // Offsets come from validated geometry; failing here is a bug in this
        // crate, not something a file can cause.
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.raw.len()),
            "shm-bus: access {off}+{len} outside a mapping of {} bytes",
            self.raw.len()
        );
    }

    /// Copies bytes out of the mapping (used to read immutable headers once,
    /// so that later checks use a private copy a peer cannot change).
    pub(crate) fn copy_out(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: `check` proved `off..off + dst.len()` lies inside the live
        // mapping, which `self` keeps mapped; `dst` is a distinct local buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.raw.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) };
    }

    /// Copies bytes into a writable mapping. Only used while a producer
    /// initialises a file that no other process can see yet.
    pub(crate) fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(self.writable, "shm-bus: copy_in on a read-only mapping");
        self.check(off, src.len());
        // SAFETY: in bounds by `check`; the mapping is writable (asserted);
        // the file is not yet visible under its channel name, so nobody else
        // accesses these bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.raw.as_mut_ptr().add(off), src.len()) };
    }
}

/// Backing store of the loom model: one atomic per word.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Arena {
    words64: Box<[AtomicU64]>,
    words32: Box<[AtomicU32]>,
}

#[cfg(loom)]
impl Arena {
    pub(crate) fn new(len: usize) -> Arc<Self> {
        Arc::new(Self {
            words64: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            words32: (0..len / 4).map(|_| AtomicU32::new(0)).collect(),
        })
    }
}

/// A window onto a mapping (or, under loom, onto an arena) that keeps it
/// alive. All shared-word access goes through [`Region::u64_at`] and
/// [`Region::u32_at`].
#[derive(Clone)]
pub(crate) struct Region {
    #[cfg(not(loom))]
    map: Arc<Mapping>,
    #[cfg(loom)]
    map: Arc<Arena>,
    offset: usize,
    len: usize,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

impl Region {
    #[cfg(not(loom))]
    pub(crate) fn whole(map: Arc<Mapping>) -> Self {
        let len = map.len();
        Self { map, offset: 0, len }
    }

    #[cfg(loom)]
    pub(crate) fn whole(map: Arc<Arena>) -> Self {
        let len = map.words64.len() * 8;
        Self { map, offset: 0, len }
    }

    /// The sub-window `off..off + len`.
    pub(crate) fn sub(&self, off: usize, len: usize) -> Self {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "shm-bus: sub-region {off}+{len} outside a region of {} bytes",
            self.len
        );
        Self { map: self.map.clone(), offset: self.offset + off, len }
    }

    fn check_word(&self, off: usize, size: usize) -> usize {
        let abs = self.offset + off;
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len) && abs % size == 0,
            "shm-bus: word {off} (size {size}) misaligned or outside a region of {} bytes",
            self.len
        );
        abs
    }

    /// The 8-byte shared word at `off`.
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        let abs = self.check_word(off, 8);
        #[cfg(not(loom))]
        {
            // SAFETY:
            // - in bounds and 8-byte aligned (`check_word`; the mapping
            //   itself is page aligned);
            // - the mapping lives as long as `self` holds its `Arc`;
            // - every party accesses this word only atomically (module docs,
            //   FORMAT.md), so no non-atomic access races with it.
            unsafe { AtomicU64::from_ptr(self.map.raw.as_mut_ptr().add(abs).cast()) }
        }
        #[cfg(loom)]
        {
            &self.map.words64[abs / 8]
        }
    }

    /// The 4-byte shared word at `off`.
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        let abs = self.check_word(off, 4);
        #[cfg(not(loom))]
        {
            // SAFETY: as in `u64_at`, with 4-byte alignment.
            unsafe { AtomicU32::from_ptr(self.map.raw.as_mut_ptr().add(abs).cast()) }
        }
        #[cfg(loom)]
        {
            &self.map.words32[abs / 4]
        }
    }

    /// Payload bytes `off..off + len`, read in place: only for a gated
    /// reader, whose gate keeps the writer off them (see the caller,
    /// [`CursorCore::payload`]).
    #[cfg(not(loom))]
    pub(crate) fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (asserted); the mapping outlives the borrow of
        // `self`. Nobody writes these bytes while the slice lives: the only
        // caller hands them to a gated reader, whose published position
        // (sync point G) is at or below them until the slice is gone, and
        // the writer never writes space a live gated reader holds (§6.2 of
        // FORMAT.md). It reaps only the slot of a holder judged dead, which
        // a live one can be only in another pid namespace after 5 s without
        // a heartbeat (and a gated reader beats while it reads or waits);
        // such a reader's sample then reports `is_valid() == false` and
        // its next call fails (see the module docs).
        // Lossy readers never get such a slice: they copy (`copy_words`).
        unsafe { std::slice::from_raw_parts(self.map.raw.as_ptr().add(self.offset + off), len) }
    }

    /// Copies bytes `off..off + len` into `dst` (replacing its contents)
    /// with one Relaxed atomic load per 8-byte word, `off` being a multiple
    /// of 8 and the words covering `off..off + len` lying inside the region.
    /// The sound way to read bytes a writer may be overwriting: the result
    /// may be torn, and the caller must validate it afterwards (sync point
    /// V) before trusting any of it.
    #[cfg(not(loom))]
    pub(crate) fn copy_words(&self, off: usize, len: usize, dst: &mut Vec<u8>) {
        dst.clear();
        dst.reserve(len);
        let mut word = off;
        while dst.len() < len {
            // Relaxed: the whole copy is validated afterwards (sync point V,
            // whose Acquire fence orders these loads before the tail load).
            let bytes = self.u64_at(word).load(Ordering::Relaxed).to_le_bytes();
            let take = (len - dst.len()).min(8);
            dst.extend_from_slice(&bytes[..take]);
            word += 8;
        }
    }
}

// ---------------------------------------------------------------------------
// Futex
// ---------------------------------------------------------------------------

/// Sleeps while `word == expected`, at most `timeout`. Shared (not private)
/// futex: the word lives in a file mapping shared between processes, and the
/// kernel keys such futexes on the file's inode and offset.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call
    // (borrowed); the timespec is a valid local; FUTEX_WAIT only reads the
    // word. EINTR, EAGAIN and ETIMEDOUT are all fine: the caller re-checks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Wakes every thread in every process sleeping on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is valid and aligned for the call; FUTEX_WAKE does not
    // access memory beyond looking up the futex key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Whether process `pid` of our pid namespace exists: `kill(pid, 0)`. Only
/// ESRCH means it does not; EPERM (another user's process, which we may
/// not signal) means it does. Unlike `/proc/PID`, which `hidepid` hides,
/// this sees every process of the namespace.
#[cfg(not(loom))]
pub(crate) fn pid_exists(pid: u32) -> bool {
    // 0 and negative values name process groups, not a process.
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing: the kernel only checks that the
    // process exists and whether we may signal it. No memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The effective user id of this process: the owner of the files it
/// creates, and a producer whose files a reader trusts.
#[cfg(not(loom))]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process of the
/// host, so heartbeats written by one process can be aged by another.
#[cfg(not(loom))]
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`), the default record
/// timestamp. A direct vDSO call: this runs once per record.
#[cfg(not(loom))]
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

#[cfg(not(loom))]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and `clock` one of the
    // clocks Linux always has, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------
// Channel-level words
// ---------------------------------------------------------------------------

/// Sets the state word of a channel header page and wakes every waiter so
/// it notices (also used on an old file being replaced).
pub(crate) fn set_channel_state(channel: &Region, state: u32) {
    // Release pairs with `ChannelWords::state`'s Acquire: a reader that sees
    // ENDED also sees the final `write_pos` published before it.
    channel.u32_at(channel_header::STATE).store(state, Ordering::Release);
    wake_channel(channel);
}

/// The producer's heartbeat in a channel header page: `CLOCK_MONOTONIC` ns
/// of its last sign of life (0: none).
pub(crate) fn producer_heartbeat(channel: &Region) -> u64 {
    // Relaxed: a liveness hint; nothing is published through it.
    channel.u64_at(channel_header::PRODUCER_HEARTBEAT_NS).load(Ordering::Relaxed)
}

fn wake_channel(channel: &Region) {
    let notify = channel.u32_at(channel_header::NOTIFY);
    // Release: a waiter that sees the bumped value also sees what the waker
    // published before (paired with the Acquire in `ChannelWords::wait`).
    notify.fetch_add(1, Ordering::Release);
    #[cfg(not(loom))]
    futex_wake_all(notify);
}

/// The shared words of a channel header and readers header.
#[derive(Clone, Debug)]
pub(crate) struct ChannelWords {
    /// The channel header page of the `.ring` file.
    pub(crate) channel: Region,
    /// The header of the `.readers` file.
    pub(crate) readers: Region,
}

impl ChannelWords {
    pub(crate) fn state(&self) -> u32 {
        // Relaxed + Acquire fence (an Acquire load in effect, but only
        // Relaxed loads are blessed on a read-only mapping): pairs with
        // `set_state`'s Release, so a reader that sees ENDED also sees the
        // final `write_pos` published before it.
        let state = self.channel.u32_at(channel_header::STATE).load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        state
    }

    /// Refreshes the producer's heartbeat (the producer only).
    pub(crate) fn beat_producer(&self, now_ns: u64) {
        // Relaxed: a liveness hint; nothing is published through it.
        self.channel.u64_at(channel_header::PRODUCER_HEARTBEAT_NS).store(now_ns, Ordering::Relaxed);
    }

    /// Sets the channel state and wakes every waiter so it notices.
    pub(crate) fn set_state(&self, state: u32) {
        set_channel_state(&self.channel, state);
    }

    fn wake(&self) {
        wake_channel(&self.channel);
    }

    /// Called by a writer right after publishing: wakes sleeping readers,
    /// if there are any. Sync point W (writer side).
    pub(crate) fn wake_if_waiting(&self) {
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the SeqCst fence above against the waiter's
        // SeqCst increment + fence.
        if self.readers.u32_at(readers_header::WAITERS).load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    /// Sleeps until `has_data` is true, a writer publishes, or `timeout`
    /// passes. Sync point W (waiter side).
    #[cfg(not(loom))]
    pub(crate) fn wait(&self, timeout: Duration, mut has_data: impl FnMut() -> bool) {
        let notify = self.channel.u32_at(channel_header::NOTIFY);
        let waiters = self.readers.u32_at(readers_header::WAITERS);
        // Relaxed + Acquire fence (as in `state`): pairs with the Release
        // bump in `wake`.
        let seen = notify.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !has_data() {
            futex_wait(notify, seen, timeout);
        }
        // Relaxed: the count only needs to be eventually right; a stale high
        // value costs the writer one needless wake.
        waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Increments the reaped-readers counter (introspection only).
    pub(crate) fn count_reaped(&self) {
        // Relaxed: a statistic; no data is published through it.
        self.readers.u64_at(readers_header::REAPED_READERS).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reaped(&self) -> u64 {
        // Relaxed: a statistic.
        self.readers.u64_at(readers_header::REAPED_READERS).load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Reader slots (the `.readers` file)
// ---------------------------------------------------------------------------

/// Who holds a reader slot: what the writer needs to tell a dead reader from
/// a slow one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReaderIdentity {
    pub(crate) pid: u32,
    /// Process start time (clock ticks since boot, `/proc/PID/stat` field
    /// 22): tells a reused pid from the original process.
    pub(crate) start_time: u64,
    /// Inode of the process's pid namespace: pids only mean something when
    /// it equals ours.
    pub(crate) pid_ns: u64,
}

/// A snapshot of one slot, for introspection and liveness decisions.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotSnapshot {
    /// The owner word (state and claim epoch) the rest was read under.
    pub(crate) owner: u64,
    pub(crate) state: u32,
    pub(crate) identity: ReaderIdentity,
    pub(crate) heartbeat_ns: u64,
    pub(crate) lost: u64,
    pub(crate) received: u64,
    pub(crate) attached_realtime_ns: u64,
    /// (position, next_seq) per shard.
    pub(crate) shards: Vec<(u64, u64)>,
}

/// A reader's hold on its slot: the owner word it stored (state and claim
/// epoch) and, per shard, the position it stored last. Every access of the
/// holder to its slot checks them first, and position stores are
/// compare-and-swaps against the last one, so a reader whose slot was taken
/// from it (reaped when judged dead, then claimed by another reader) never
/// moves the new holder's gate unnoticed: its own swap fails, or the new
/// holder's next check ([`Slots::holds`], [`Slots::release`]) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotHold {
    pub(crate) index: usize,
    owner: u64,
    released: Vec<u64>,
}

impl SlotHold {
    pub(crate) fn state(&self) -> u32 {
        slot_state::state_of(self.owner)
    }

    /// The position last stored for `shard`: everything below it released.
    pub(crate) fn released(&self, shard: usize) -> u64 {
        self.released[shard]
    }
}

/// The slot is no longer the caller's: it was reaped, or its positions were
/// changed by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotLost;

/// The reader slots of a channel.
#[derive(Clone, Debug)]
pub(crate) struct Slots {
    /// The slot array (everything after the readers header).
    pub(crate) region: Region,
    pub(crate) count: usize,
    pub(crate) slot_size: usize,
    pub(crate) shards: usize,
}

impl Slots {
    fn word64(&self, slot: usize, off: usize) -> &AtomicU64 {
        self.region.u64_at(slot * self.slot_size + off)
    }

    fn owner_word(&self, slot: usize) -> &AtomicU64 {
        self.word64(slot, reader_slot::OWNER)
    }

    fn position_word(&self, slot: usize, shard: usize) -> &AtomicU64 {
        self.word64(slot, reader_slot::SHARDS + shard * reader_slot::PER_SHARD)
    }

    fn next_seq_word(&self, slot: usize, shard: usize) -> &AtomicU64 {
        self.word64(slot, reader_slot::SHARDS + shard * reader_slot::PER_SHARD + 8)
    }

    /// The owner word of `slot` (state and claim epoch).
    pub(crate) fn owner(&self, slot: usize) -> u64 {
        // Relaxed + Acquire fence (an Acquire load in effect; only Relaxed
        // loads are blessed on a mapping that may be read-only): pairs with
        // the Release swaps in `activate` and `free`, so the identity and
        // positions stored before are visible.
        let owner = self.owner_word(slot).load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        owner
    }

    pub(crate) fn state(&self, slot: usize) -> u32 {
        slot_state::state_of(self.owner(slot))
    }

    /// Tries to claim `slot`, whose owner word was `seen` (FREE, or the word
    /// of a dead holder being replaced). The swap compares the whole word,
    /// so it fails if the slot changed hands since `seen` was read, even if
    /// its state is the same again. On success the slot is CLAIMING with the
    /// next epoch and belongs to the caller; returns that word.
    pub(crate) fn try_claim(&self, slot: usize, seen: u64) -> Option<u64> {
        let claiming =
            slot_state::owner_word(slot_state::CLAIMING, slot_state::epoch_of(seen).wrapping_add(1));
        // Acquire on success: pairs with the Release swap (`free`, `reap`,
        // `activate`) that stored `seen`; we read nothing the previous
        // holder wrote that matters, but it keeps our field stores in
        // `fill` from moving above the claim.
        self.owner_word(slot)
            .compare_exchange(seen, claiming, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(claiming)
    }

    /// Fills a slot claimed as `claiming` with our identity and per-shard
    /// positions; returns the hold to [`Slots::activate`]. The heartbeat
    /// comes first: a CLAIMING slot without a heartbeat for a while is one
    /// whose claimant died before activating it, which another reader may
    /// take over; if that happened to us (we stalled right after the
    /// claim), we stop before touching the rest.
    pub(crate) fn fill(
        &self,
        slot: usize,
        claiming: u64,
        id: ReaderIdentity,
        now_ns: u64,
        realtime_ns: u64,
        positions: &[u64],
    ) -> Result<SlotHold, SlotLost> {
        // Relaxed: published by the Release swap in `activate`.
        self.word64(slot, reader_slot::HEARTBEAT_NS).store(now_ns, Ordering::Relaxed);
        // Relaxed: an early answer; `activate`'s swap decides.
        if self.owner_word(slot).load(Ordering::Relaxed) != claiming {
            return Err(SlotLost);
        }
        let s = self.slot_size * slot;
        self.region.u32_at(s + reader_slot::PID).store(id.pid, Ordering::Relaxed);
        self.word64(slot, reader_slot::START_TIME).store(id.start_time, Ordering::Relaxed);
        self.word64(slot, reader_slot::PID_NS).store(id.pid_ns, Ordering::Relaxed);
        self.word64(slot, reader_slot::LOST).store(0, Ordering::Relaxed);
        self.word64(slot, reader_slot::RECEIVED).store(0, Ordering::Relaxed);
        self.word64(slot, reader_slot::ATTACHED_REALTIME_NS).store(realtime_ns, Ordering::Relaxed);
        for (shard, &pos) in positions.iter().enumerate() {
            self.position_word(slot, shard).store(pos, Ordering::Relaxed);
            self.next_seq_word(slot, shard).store(u64::MAX, Ordering::Relaxed);
        }
        Ok(SlotHold { index: slot, owner: claiming, released: positions.to_vec() })
    }

    /// Makes a filled slot visible as `state` (LOSSY or GATED). For a gated
    /// reader this is the reader half of sync point R; the caller must then
    /// call [`Slots::settle_gated_start`] per shard before reading. Fails if
    /// the slot is no longer ours.
    pub(crate) fn activate(
        &self,
        hold: &mut SlotHold,
        state: u32,
        readers_header: &Region,
    ) -> Result<(), SlotLost> {
        let active = slot_state::owner_word(state, slot_state::epoch_of(hold.owner));
        // Release: publishes the identity and positions stored by `fill` to
        // whoever Acquire-loads the owner word (`scan_gates`, introspection).
        self.owner_word(hold.index)
            .compare_exchange(hold.owner, active, Ordering::Release, Ordering::Relaxed)
            .map_err(|_| SlotLost)?;
        hold.owner = active;
        if state == slot_state::GATED {
            // Release: a writer that Acquire-loads the new count (sync point
            // R) sees the GATED word and positions stored before it.
            readers_header.u64_at(readers_header::REGISTRATIONS).fetch_add(1, Ordering::Release);
            // Reader half of sync point R: pairs with the writer's SeqCst
            // fence between its tail store and its registration load.
            fence(Ordering::SeqCst);
        }
        Ok(())
    }

    /// Stores `pos` as our position on `shard`, if the slot is still ours
    /// and nobody else stored there since our last store.
    fn store_position(&self, hold: &mut SlotHold, shard: usize, pos: u64) -> Result<(), SlotLost> {
        // Relaxed: an early answer only; the swap below is what guards the
        // position (an owner word that changed after this load leaves the
        // position as the next holder's `fill` set it, and the swap fails).
        if self.owner_word(hold.index).load(Ordering::Relaxed) != hold.owner {
            return Err(SlotLost);
        }
        // Release pairs with the writer's Acquire load in `scan_gates`: our
        // reads of the records below `pos` happen before it overwrites them
        // (sync point G).
        self.position_word(hold.index, shard)
            .compare_exchange(hold.released[shard], pos, Ordering::Release, Ordering::Relaxed)
            .map_err(|_| SlotLost)?;
        hold.released[shard] = pos;
        Ok(())
    }

    /// After `activate` (and its fence): if the writer reclaimed past our
    /// start meanwhile, start at its tail instead. Returns the position to
    /// start at.
    pub(crate) fn settle_gated_start(
        &self,
        hold: &mut SlotHold,
        shard: usize,
        shard_mem: &ShardMem,
    ) -> Result<u64, SlotLost> {
        // Relaxed (with an Acquire fence after it, see `load_tail`): ordered
        // after the SeqCst fence in `activate` (sync point R), which is what
        // the handshake needs. A corrupt value is caught by the cursor.
        let tail = shard_mem.load_tail();
        let pos = hold.released[shard];
        if tail > pos {
            self.store_position(hold, shard, tail)?;
            Ok(tail)
        } else {
            Ok(pos)
        }
    }

    /// Releases everything below `pos` on `shard` (sync point G for gated
    /// readers) and records progress for introspection.
    pub(crate) fn release(
        &self,
        hold: &mut SlotHold,
        shard: usize,
        pos: u64,
        next_seq: u64,
    ) -> Result<(), SlotLost> {
        self.store_position(hold, shard, pos)?;
        // Relaxed: introspection only.
        self.next_seq_word(hold.index, shard).store(next_seq, Ordering::Relaxed);
        Ok(())
    }

    /// Adds to the slot's received/lost counters and refreshes its heartbeat.
    pub(crate) fn account(
        &self,
        hold: &SlotHold,
        received: u64,
        lost: u64,
        now_ns: u64,
    ) -> Result<(), SlotLost> {
        // Relaxed: an early answer; these words are statistics and a
        // heartbeat, which tolerate one stale store from a holder that lost
        // the slot right after this check.
        if self.owner_word(hold.index).load(Ordering::Relaxed) != hold.owner {
            return Err(SlotLost);
        }
        let slot = hold.index;
        // Relaxed: single writer (the slot's reader); read only by
        // introspection and liveness, which tolerate stale values.
        if received != 0 {
            let w = self.word64(slot, reader_slot::RECEIVED);
            w.store(w.load(Ordering::Relaxed).wrapping_add(received), Ordering::Relaxed);
        }
        if lost != 0 {
            let w = self.word64(slot, reader_slot::LOST);
            w.store(w.load(Ordering::Relaxed).wrapping_add(lost), Ordering::Relaxed);
        }
        self.word64(slot, reader_slot::HEARTBEAT_NS).store(now_ns, Ordering::Relaxed);
        Ok(())
    }

    /// Frees our slot (reader detach), if it is still ours. The heartbeat
    /// is refreshed first, so that the next claimant's CLAIMING word does
    /// not look abandoned (see [`Slots::fill`]).
    pub(crate) fn free(&self, hold: &SlotHold, now_ns: u64) -> bool {
        // Relaxed: a liveness hint; only while the slot is ours.
        if self.owner_word(hold.index).load(Ordering::Relaxed) == hold.owner {
            self.word64(hold.index, reader_slot::HEARTBEAT_NS).store(now_ns, Ordering::Relaxed);
        }
        let free = slot_state::owner_word(slot_state::FREE, slot_state::epoch_of(hold.owner));
        // Release: orders our last position stores before the slot looks
        // free, which keeps introspection sane; nothing else depends on it.
        self.owner_word(hold.index)
            .compare_exchange(hold.owner, free, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Frees the slot of a dead reader if its owner word still is `seen`
    /// (the word its death was judged under). Called by writers reaping
    /// dead readers.
    pub(crate) fn reap(&self, slot: usize, seen: u64) -> bool {
        let free = slot_state::owner_word(slot_state::FREE, slot_state::epoch_of(seen));
        // AcqRel. Acquire pairs with the holder's Release swap in
        // `activate` (the identity judged was stored before it). Release
        // pairs with the Acquire load of the owner word by a reader that
        // then claims the slot (`owner`, `try_claim`). The writer rescans
        // gates right after; its later SeqCst fence (sync point T) orders
        // this swap before any overwrite, so a reaped reader that is in
        // fact alive notices in `holds` before trusting a record.
        self.owner_word(slot).compare_exchange(seen, free, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Whether the slot is still ours (same owner word: state and epoch).
    pub(crate) fn owns(&self, hold: &SlotHold) -> bool {
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence above (see `holds`).
        self.owner_word(hold.index).load(Ordering::Relaxed) == hold.owner
    }

    /// Whether our gated slot still gates `shard` where we left it: same
    /// owner word, and the position we stored last. Sync point V for gated
    /// readers: the Acquire fence pairs with the SeqCst fence the writer
    /// issues after reaping (or after loading a position someone else
    /// stored) and before overwriting (sync point T), so a reader whose
    /// record was overwritten sees the changed word.
    pub(crate) fn holds(&self, hold: &SlotHold, shard: usize) -> bool {
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence above.
        self.owner_word(hold.index).load(Ordering::Relaxed) == hold.owner
            && self.position_word(hold.index, shard).load(Ordering::Relaxed) == hold.released[shard]
    }

    pub(crate) fn snapshot(&self, slot: usize) -> SlotSnapshot {
        let owner = self.owner(slot);
        let s = self.slot_size * slot;
        // Relaxed: an introspection snapshot; values may be slightly stale
        // (ordered after the Acquire load of the owner word).
        let r = Ordering::Relaxed;
        SlotSnapshot {
            owner,
            state: slot_state::state_of(owner),
            identity: ReaderIdentity {
                pid: self.region.u32_at(s + reader_slot::PID).load(r),
                start_time: self.word64(slot, reader_slot::START_TIME).load(r),
                pid_ns: self.word64(slot, reader_slot::PID_NS).load(r),
            },
            heartbeat_ns: self.word64(slot, reader_slot::HEARTBEAT_NS).load(r),
            lost: self.word64(slot, reader_slot::LOST).load(r),
            received: self.word64(slot, reader_slot::RECEIVED).load(r),
            attached_realtime_ns: self.word64(slot, reader_slot::ATTACHED_REALTIME_NS).load(r),
            shards: (0..self.shards)
                .map(|sh| (self.position_word(slot, sh).load(r), self.next_seq_word(slot, sh).load(r)))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------

/// Checks a position read from a file: a record boundary (a multiple of
/// [`RECORD_ALIGN`]) no larger than [`MAX_POSITION`], so that reading a
/// header there stays aligned and stepping over a record cannot overflow.
pub(crate) fn check_position(field: &str, pos: u64) -> Result<(), Corrupt> {
    if pos % RECORD_ALIGN != 0 {
        return Err(Corrupt { pos, what: format!("{field} {pos} is not a multiple of {RECORD_ALIGN}") });
    }
    if pos > MAX_POSITION {
        return Err(Corrupt {
            pos,
            what: format!("{field} {pos} exceeds the largest position {MAX_POSITION}"),
        });
    }
    Ok(())
}

/// One shard: its header page and its data ring.
#[derive(Clone, Debug)]
pub(crate) struct ShardMem {
    pub(crate) header: Region,
    pub(crate) data: Region,
    pub(crate) capacity: u64,
}

/// Counters of a shard header, for introspection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ShardCounters {
    pub(crate) write_pos: u64,
    pub(crate) tail_pos: u64,
    pub(crate) records_written: u64,
    pub(crate) bytes_written: u64,
    pub(crate) payload_bytes: u64,
    pub(crate) full_count: u64,
    pub(crate) publish_count: u64,
    pub(crate) start_over_count: u64,
    pub(crate) skip_ahead_count: u64,
}

impl ShardMem {
    fn mask(&self) -> u64 {
        self.capacity - 1
    }

    fn header_word(&self, pos: u64, field: usize) -> &AtomicU64 {
        self.data.u64_at((pos & self.mask()) as usize + field)
    }

    /// Loads `write_pos` (sync point P, reader side): a Relaxed load and an
    /// Acquire fence, which synchronises exactly like an Acquire load (the
    /// fence pairs with the writer's Release store in `publish`) and, unlike
    /// one, is blessed by the std docs on a read-only mapping.
    pub(crate) fn write_pos(&self) -> u64 {
        let write_pos = self.header.u64_at(shard_header::WRITE_POS).load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        write_pos
    }

    /// Loads `tail_pos`, unchecked. Relaxed plus an Acquire fence: pairs
    /// with the writer's Release store of the tail (sync point T), so a
    /// `write_pos` loaded afterwards is at least the one published before
    /// that tail, which the tail never passes.
    fn load_tail(&self) -> u64 {
        let tail = self.header.u64_at(shard_header::TAIL_POS).load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        tail
    }

    /// The tail, for choosing a start position or resuming after a lap,
    /// checked to be a record boundary (a multiple of 8). That it is not
    /// beyond `write_pos` the cursor checks with its next `write_pos` load
    /// (`CursorCore::fetch_data`).
    pub(crate) fn tail_pos(&self) -> Result<u64, Corrupt> {
        let tail = self.load_tail();
        check_position("tail_pos", tail)?;
        Ok(tail)
    }

    /// `write_pos` (sync point P), checked to be a possible position.
    /// `at` names where the caller stands, for the error.
    fn checked_write_pos(&self, at: u64) -> Result<u64, Corrupt> {
        let write_pos = self.write_pos();
        check_position("write_pos", write_pos).map_err(|c| Corrupt { pos: at, ..c })?;
        Ok(write_pos)
    }

    /// The published end and the sequence number of the record that will
    /// start there, for a reader that starts at the end. The two words are
    /// stored separately, so a publish racing this call can make the
    /// sequence number run ahead by that batch (never behind): `write_pos`
    /// is loaded first (sync point P), which makes the `records_written`
    /// stored before it visible.
    pub(crate) fn end_snapshot(&self) -> Result<(u64, u64), Corrupt> {
        let write_pos = self.checked_write_pos(0)?;
        // Relaxed: ordered after the Acquire fence in `write_pos`.
        let seq = self.header.u64_at(shard_header::RECORDS_WRITTEN).load(Ordering::Relaxed);
        Ok((write_pos, seq))
    }

    /// Where a reader starting at the newest published record starts, and
    /// the sequence number expected there (`u64::MAX`: learn it from the
    /// record): `last_record_pos` when it lies in `tail_pos..write_pos`,
    /// else the end.
    pub(crate) fn latest_start(&self) -> Result<(u64, u64), Corrupt> {
        let tail = self.tail_pos()?;
        // Relaxed: a hint, checked against the tail and `write_pos` loaded
        // after it (a stale value outside that range is ignored).
        let last = self.header.u64_at(shard_header::LAST_RECORD_POS).load(Ordering::Relaxed);
        let (write_pos, seq) = self.end_snapshot()?;
        if last != u64::MAX && last >= tail && last < write_pos {
            check_position("last_record_pos", last)?;
            return Ok((last, u64::MAX));
        }
        Ok((write_pos, seq))
    }

    /// Every counter as found, unchecked: for introspection, which only
    /// displays them.
    pub(crate) fn counters(&self) -> ShardCounters {
        // write_pos through the Acquire fence (sync point P); the rest are
        // statistics stored before it, Relaxed.
        let write_pos = self.write_pos();
        let r = Ordering::Relaxed;
        ShardCounters {
            write_pos,
            tail_pos: self.header.u64_at(shard_header::TAIL_POS).load(r),
            records_written: self.header.u64_at(shard_header::RECORDS_WRITTEN).load(r),
            bytes_written: self.header.u64_at(shard_header::BYTES_WRITTEN).load(r),
            payload_bytes: self.header.u64_at(shard_header::PAYLOAD_BYTES).load(r),
            full_count: self.header.u64_at(shard_header::FULL_COUNT).load(r),
            publish_count: self.header.u64_at(shard_header::PUBLISH_COUNT).load(r),
            start_over_count: self.header.u64_at(shard_header::START_OVER_COUNT).load(r),
            skip_ahead_count: self.header.u64_at(shard_header::SKIP_AHEAD_COUNT).load(r),
        }
    }
}

/// A reservation handed out by [`WriterCore::reserve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reserved {
    /// Ring position of the record header.
    pub(crate) pos: u64,
    /// Largest payload the caller may commit.
    pub(crate) max_len: u64,
}

/// Why a reservation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoSpace {
    /// A live gated reader has not released the space yet.
    Gated { reader_pid: u32 },
}

/// A padding record the writer wrote to start over (or to skip ahead),
/// whose inside, `header + RECORD_HEADER .. end`, holds nothing any reader
/// reads. One lap on, the writer may fill that inside without moving the
/// tail or asking the gates: a reader still behind the padding will read
/// its header, which stays intact, and jump over the inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Skipped {
    /// Position of the padding record's header.
    header: u64,
    /// Position right after it (a lap end, or where a skip ahead landed).
    end: u64,
}

/// The single writer of one shard.
#[derive(Debug)]
pub(crate) struct WriterCore {
    shard: ShardMem,
    slots: Slots,
    words: ChannelWords,
    shard_index: usize,
    /// End of the committed records (published or not).
    pending: u64,
    /// Last value stored to `write_pos`.
    published: u64,
    /// Last value stored to `tail_pos`.
    tail: u64,
    /// Space below this position may be overwritten without further checks.
    writable_limit: u64,
    /// Minimum position of the gated readers at the last scan.
    gate_limit: u64,
    /// Slot and pid of the reader that set `gate_limit`: while the writer is
    /// full, only this slot is re-checked, not all of them.
    gate_holder_slot: usize,
    gate_holder: u32,
    /// Whether the last reservation failed (one `full_count` per episode).
    full: bool,
    /// Reservations refused in a row: reaping dead readers is considered
    /// only every so often, not on every retry.
    refused_in_a_row: u32,
    /// Registration count at the last scan.
    seen_registrations: u64,
    next_seq: u64,
    bytes_committed: u64,
    /// Of those, the bytes the producer counts as payload (all of a
    /// record's bytes unless it said otherwise: `count_payload`).
    payload_committed: u64,
    last_record_pos: u64,
    /// How far ahead of need the tail moves at once, so the SeqCst fence
    /// of the handshake is paid once per chunk, not once per record.
    reclaim_chunk: u64,
    /// Decides whether a gated reader's process is dead (not under loom).
    is_dead: fn(&SlotSnapshot) -> bool,
    /// While every reader keeps up, start over at the beginning of the ring
    /// once this many bytes of it are used, so that the memory written stays
    /// in cache (0: always use the whole ring).
    hot_window: u64,
    /// Position from which the next such check may happen (one scan of the
    /// reader slots per `hot_window / 8` bytes written at most).
    next_rewind_check: u64,
    /// A padding record of the previous lap, written to start over or to
    /// skip ahead, whose inside this lap may reuse (see [`Skipped`]).
    reusable: Option<Skipped>,
    /// The newest such padding record of this lap: reusable in the next.
    skipped: Option<Skipped>,
    /// Lowest position of the registered readers (gated or lossy) at the
    /// last scan of the slots: a lower bound, as positions only grow.
    reader_floor: u64,
    /// Position from which `reader_floor` counts as stale and is rescanned.
    next_floor_scan: u64,
    #[cfg(not(loom))]
    last_reap: Option<std::time::Instant>,
}

impl WriterCore {
    /// A writer for a freshly created shard (all positions zero), whose
    /// first record gets sequence number `first_seq` (the shard header's
    /// `records_written` as created).
    pub(crate) fn new(
        shard: ShardMem,
        slots: Slots,
        words: ChannelWords,
        shard_index: usize,
        is_dead: fn(&SlotSnapshot) -> bool,
        hot_window: u64,
        first_seq: u64,
    ) -> Self {
        // With a hot window the tail runs ahead by less: a stalled lossy
        // reader it passes is lapped, however little was overwritten.
        let reclaim_chunk = match hot_window {
            0 => shard.capacity / 16,
            window => (shard.capacity / 16).min(window / 8),
        }
        .max(RECORD_HEADER);
        Self {
            shard,
            slots,
            words,
            shard_index,
            pending: 0,
            published: 0,
            tail: 0,
            writable_limit: 0,
            gate_limit: u64::MAX,
            gate_holder_slot: 0,
            gate_holder: 0,
            full: false,
            refused_in_a_row: 0,
            seen_registrations: u64::MAX,
            next_seq: first_seq,
            bytes_committed: 0,
            payload_committed: 0,
            last_record_pos: u64::MAX,
            reclaim_chunk,
            is_dead,
            hot_window,
            next_rewind_check: 0,
            reusable: None,
            skipped: None,
            reader_floor: 0,
            next_floor_scan: 0,
            #[cfg(not(loom))]
            last_reap: None,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.shard.capacity
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the sequence number of the next record forward to `seq`
    /// (never back): the records in between count as lost upstream.
    pub(crate) fn skip_to_seq(&mut self, seq: u64) {
        assert!(seq >= self.next_seq, "sequence numbers never go back ({seq} < {})", self.next_seq);
        assert!(seq != u64::MAX, "sequence number u64::MAX leaves no room for the next");
        self.next_seq = seq;
        if self.pending == self.published {
            // Nothing waits for a publish to carry it: show it now (a
            // reader starting at the end learns the sequence number there).
            // Relaxed: a statistic, as in `publish`.
            self.shard.header.u64_at(shard_header::RECORDS_WRITTEN).store(seq, Ordering::Relaxed);
        }
    }

    /// Whether `reserved` is where the next record goes (no record was
    /// committed and no other reservation made since).
    pub(crate) fn is_next_record(&self, reserved: &Reserved) -> bool {
        reserved.pos == self.pending
    }

    pub(crate) fn has_unpublished(&self) -> bool {
        self.pending != self.published
    }

    /// The position after `p`: the next record, or the next wrap when `p` is
    /// a stub too short for a header. Only used on records this writer
    /// committed itself.
    fn next_boundary(&self, p: u64) -> u64 {
        let room = self.shard.capacity - (p & self.shard.mask());
        if room < RECORD_HEADER {
            return p + room;
        }
        // Relaxed: our own earlier store.
        let lkf = self.shard.header_word(p, record_header::LEN_KIND_FLAGS).load(Ordering::Relaxed);
        p + record_size(lkf & 0xFFFF_FFFF)
    }

    /// Reserves room for a record of up to `max_len` payload bytes. Writes a
    /// padding record first when the record would otherwise wrap, when the
    /// writer starts over (hot window) or when it skips ahead into the inside
    /// of an earlier padding record. Never blocks: when a gated reader holds
    /// the space, returns `NoSpace`.
    pub(crate) fn reserve(&mut self, max_len: u64) -> Result<Reserved, NoSpace> {
        let cap = self.shard.capacity;
        let size = record_size(max_len);
        let mut start = self.pending;
        let lap = start & !self.shard.mask();
        if self.skipped.is_some_and(|skipped| skipped.header < lap) {
            self.reusable = self.skipped.take();
        }
        if self.reusable.is_some_and(|reusable| (reusable.header & !self.shard.mask()) + cap != lap) {
            self.reusable = None; // not the previous lap's
        }
        let offset = start & self.shard.mask();
        let room = cap - offset;
        let mut pad = if room < size { room } else { 0 };
        let mut starts_over = false;
        // At least four records: a reader a record or two behind still counts
        // as keeping up.
        let window = self.hot_window.max(4 * size);
        if pad == 0 && self.hot_window != 0 && offset >= window && start >= self.next_rewind_check {
            self.next_rewind_check = start + window / 8;
            // Readers less than half a window behind have read the start of
            // this lap, which the next records would overwrite.
            if self.scan_reader_floor(start - window / 2) >= start - window / 2 {
                pad = room; // start over at offset 0, where the memory is still hot
                starts_over = true;
            }
        }
        if pad == 0
            && let Some(reserved) = self.skip_ahead(start, size, max_len)?
        {
            return Ok(reserved);
        }
        let end = start + pad + size;
        if self.reusable.is_some_and(|reusable| {
            start < reusable.header + RECORD_HEADER + cap && end > reusable.header + cap
        }) {
            // This record overwrites the header of the reusable padding:
            // its inside can no longer be told apart from the records
            // around it.
            self.reusable = None;
        }
        let target = end.saturating_sub(cap);
        if target > self.writable_limit && !self.overwrites_only_skipped(start, end) {
            self.make_writable(target)?;
        }
        if pad != 0 {
            if pad >= RECORD_HEADER {
                self.write_header(start, pad - RECORD_HEADER, KIND_PADDING, self.next_seq, 0);
            }
            if starts_over {
                self.skipped = Some(Skipped { header: start, end: start + pad });
                self.count(shard_header::START_OVER_COUNT);
            }
            start += pad;
            self.pending = start;
        }
        Ok(Reserved { pos: start, max_len })
    }

    /// Whether writing ring positions `start..end` overwrites nothing but the
    /// inside of the skipped padding record, one lap earlier: bytes no reader
    /// reads, so neither the tail nor the gates need to pass them.
    fn overwrites_only_skipped(&self, start: u64, end: u64) -> bool {
        let cap = self.shard.capacity;
        self.reusable.is_some_and(|reusable| {
            start >= reusable.header + RECORD_HEADER + cap && end <= reusable.end + cap
        })
    }

    /// Skips ahead into the inside of the skipped padding record, one lap
    /// on, when the record at `start` would overwrite what a registered
    /// reader has not read: the rest of the ring buffers for that reader as
    /// if the writer had never started over. The jump is itself a padding
    /// record from `start` to the inside; readers skip it like any other.
    ///
    /// A jump needs room for its own header at `start`, which the previous
    /// record made sure of: while a jump is possible, every record checks
    /// the readers for its end plus one header. When even that header does
    /// not fit, neither does the record: `NoSpace`.
    fn skip_ahead(&mut self, start: u64, size: u64, max_len: u64) -> Result<Option<Reserved>, NoSpace> {
        let cap = self.shard.capacity;
        let Some(reusable) = self.reusable else { return Ok(None) };
        let to = reusable.header + RECORD_HEADER + cap;
        if start + RECORD_HEADER > reusable.header + cap {
            return Ok(None); // no room for a jump before the padding's header (or inside already)
        }
        if to + size > reusable.end + cap {
            return Ok(None); // the record does not fit inside
        }
        if self.reader_floor_at_least((start + size + RECORD_HEADER).saturating_sub(cap)) {
            return Ok(None); // the readers keep up: no need
        }
        let header_target = (start + RECORD_HEADER).saturating_sub(cap);
        if header_target > self.writable_limit {
            self.make_writable(header_target)?;
        }
        self.write_header(start, to - start - RECORD_HEADER, KIND_PADDING, self.next_seq, 0);
        self.skipped = Some(Skipped { header: start, end: to });
        self.pending = to;
        self.count(shard_header::SKIP_AHEAD_COUNT);
        Ok(Some(Reserved { pos: to, max_len }))
    }

    fn write_header(&self, pos: u64, len: u64, kind: u16, seq: u64, timestamp_ns: u64) {
        // Relaxed: published by the Release store of `write_pos` (sync point
        // P); lossy readers racing with this overwrite are caught by sync
        // point V.
        let r = Ordering::Relaxed;
        self.shard.header_word(pos, record_header::POS).store(pos, r);
        self.shard.header_word(pos, record_header::LEN_KIND_FLAGS).store(len | (u64::from(kind) << 32), r);
        self.shard.header_word(pos, record_header::SEQ).store(seq, r);
        self.shard.header_word(pos, record_header::TIMESTAMP_NS).store(timestamp_ns, r);
    }

    /// Commits a reserved record with `len <= reserved.max_len` payload
    /// bytes; it becomes visible at the next [`WriterCore::publish`].
    pub(crate) fn commit(&mut self, reserved: Reserved, len: u64, kind: u16, timestamp_ns: u64) -> u64 {
        debug_assert!(len <= reserved.max_len && kind != KIND_PADDING);
        debug_assert_eq!(reserved.pos, self.pending);
        let seq = self.next_seq;
        self.write_header(reserved.pos, len, kind, seq, timestamp_ns);
        self.pending = reserved.pos + record_size(len);
        self.next_seq += 1;
        self.bytes_committed += len;
        self.payload_committed += len;
        self.last_record_pos = reserved.pos;
        seq
    }

    /// Counts `bytes` already committed as framing, not payload.
    pub(crate) fn count_as_framing(&mut self, bytes: u64) {
        self.payload_committed = self.payload_committed.saturating_sub(bytes);
    }

    /// Makes every committed record visible with one Release store (sync
    /// point P), then wakes sleeping readers if there are any.
    pub(crate) fn publish(&mut self) {
        if self.pending == self.published {
            return;
        }
        let h = &self.shard.header;
        // Relaxed: statistics, ordered before the Release store below.
        let r = Ordering::Relaxed;
        h.u64_at(shard_header::RECORDS_WRITTEN).store(self.next_seq, r);
        h.u64_at(shard_header::BYTES_WRITTEN).store(self.bytes_committed, r);
        h.u64_at(shard_header::PAYLOAD_BYTES).store(self.payload_committed, r);
        h.u64_at(shard_header::LAST_RECORD_POS).store(self.last_record_pos, r);
        let publishes = h.u64_at(shard_header::PUBLISH_COUNT);
        // Wrapping: a statistic, not worth a panic if the file was damaged.
        publishes.store(publishes.load(r).wrapping_add(1), r);
        // Release: pairs with the readers' Acquire load in `ShardMem::write_pos`.
        h.u64_at(shard_header::WRITE_POS).store(self.pending, Ordering::Release);
        self.published = self.pending;
        self.words.wake_if_waiting();
    }

    /// Makes ring positions up to `end` (absolute) writable ahead of the
    /// next record, for a caller that hands that space to another writer
    /// (the kernel) before it knows the records' lengths: the same gate and
    /// tail checks as [`WriterCore::reserve`], no padding, no record.
    /// Records are later committed in place with [`WriterCore::commit_in_place`].
    pub(crate) fn claim(&mut self, end: u64) -> Result<(), NoSpace> {
        debug_assert!(end >= self.pending && end - self.pending <= self.shard.capacity / 2);
        let target = end.saturating_sub(self.shard.capacity);
        if target > self.writable_limit {
            self.make_writable(target)?;
        }
        Ok(())
    }

    /// End (absolute, exclusive) of the space that may be written now: what
    /// [`WriterCore::claim`] and the reservations made writable.
    pub(crate) fn writable_end(&self) -> u64 {
        self.writable_limit + self.shard.capacity
    }

    /// Where the next record goes (absolute position).
    pub(crate) fn next_record_pos(&self) -> u64 {
        self.pending
    }

    /// Commits the record at [`WriterCore::next_record_pos`] whose `len`
    /// payload bytes are already in place in claimed space, or a padding
    /// record (`kind` = [`KIND_PADDING`]) that readers skip.
    ///
    /// # Panics
    /// If the record would end beyond the claimed space or cross the end of
    /// the ring.
    pub(crate) fn commit_in_place(&mut self, len: u64, kind: u16, timestamp_ns: u64) -> u64 {
        let pos = self.pending;
        let size = record_size(len);
        assert!(
            (pos & self.shard.mask()) + size <= self.shard.capacity && pos + size <= self.writable_end(),
            "a record of {len} bytes at {pos} leaves the claimed space or crosses the end of the ring"
        );
        if kind == KIND_PADDING {
            self.write_header(pos, len, KIND_PADDING, self.next_seq, 0);
            self.pending = pos + size;
            return self.next_seq;
        }
        self.commit(Reserved { pos, max_len: len }, len, kind, timestamp_ns)
    }

    /// The bytes at ring positions `pos..pos + len` (absolute) of the space
    /// between the next record and [`WriterCore::writable_end`].
    ///
    /// # Panics
    /// If the range leaves that space or crosses the end of the ring.
    #[cfg(not(loom))]
    pub(crate) fn claimed_mut(&mut self, pos: u64, len: usize) -> &mut [u8] {
        let off = self.claimed_offset(pos, len);
        let region = &self.shard.data;
        // SAFETY: in bounds of the writable data mapping kept alive by
        // `region` (`claimed_offset` checked the range against the ring),
        // and exclusive like `payload_mut`: only this writer writes the
        // claimed space, `make_writable` moved the tail and the gates past
        // it, and `&mut self` hands out one slice at a time. (A caller that
        // gave part of the claim to the kernel must not ask for that part
        // until the kernel is done with it: see `claimed_ptr`.)
        unsafe { std::slice::from_raw_parts_mut(region.map.raw.as_mut_ptr().add(region.offset + off), len) }
    }

    /// The address of ring position `pos` (absolute), for handing
    /// `pos..pos + len` of the claimed space to another writer such as the
    /// kernel. The pointer stays valid while this writer lives.
    ///
    /// # Panics
    /// As [`WriterCore::claimed_mut`].
    #[cfg(not(loom))]
    pub(crate) fn claimed_ptr(&self, pos: u64, len: usize) -> *mut u8 {
        let off = self.claimed_offset(pos, len);
        let region = &self.shard.data;
        // SAFETY: `claimed_offset` checked that `off + len` lies inside the
        // ring, which lies inside the mapping at `region.offset`, so the
        // offset pointer stays inside one allocation. No access happens here.
        unsafe { region.map.raw.as_mut_ptr().add(region.offset + off) }
    }

    /// The data-region offset of `pos..pos + len`, checked to lie in claimed
    /// space and not to cross the end of the ring.
    #[cfg(not(loom))]
    fn claimed_offset(&self, pos: u64, len: usize) -> usize {
        let off = pos & self.shard.mask();
        assert!(
            pos >= self.pending
                && pos + len as u64 <= self.writable_end()
                && off + len as u64 <= self.shard.capacity
                && (off as usize) + len <= self.shard.data.len,
            "ring range {pos}+{len} is not claimed space"
        );
        off as usize
    }

    /// Payload space of a reservation, for the caller to fill.
    #[cfg(not(loom))]
    pub(crate) fn payload_mut(&mut self, reserved: &Reserved) -> &mut [u8] {
        let off = (reserved.pos & self.shard.mask()) + RECORD_HEADER;
        let len = reserved.max_len as usize;
        let region = &self.shard.data;
        assert!((off as usize).checked_add(len).is_some_and(|end| end <= region.len));
        // SAFETY:
        // - in bounds (asserted) of a writable mapping kept alive by `region`;
        // - exclusive: this is the shard's only writer (one `WriterCore` per
        //   shard, handed out once), `&mut self` allows one reservation at a
        //   time, and `reserve` made sure that no gated reader still holds
        //   this space and that the tail has moved past it, or that it
        //   overwrites only the inside of a padding record (`Skipped`),
        //   which no reader reads; so no reader may legitimately read it
        //   until it is published (lossy readers that lag detect the
        //   overwrite at sync point V).
        unsafe {
            std::slice::from_raw_parts_mut(region.map.raw.as_mut_ptr().add(region.offset + off as usize), len)
        }
    }

    /// Under loom the payload is modelled as 8-byte words.
    #[cfg(loom)]
    pub(crate) fn write_payload_word(&self, reserved: &Reserved, index: usize, value: u64) {
        let off = (reserved.pos & self.shard.mask()) as usize + RECORD_HEADER as usize + index * 8;
        // Relaxed: a payload byte; see `write_header`.
        self.shard.data.u64_at(off).store(value, Ordering::Relaxed);
    }

    /// Refuses a reservation: counts the episode (not every retry) and
    /// names the reader that holds the space.
    fn refuse(&mut self) -> NoSpace {
        if !self.full {
            self.full = true;
            self.count(shard_header::FULL_COUNT);
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        NoSpace::Gated { reader_pid: self.gate_holder }
    }

    /// Bumps the shard-header statistic at `offset`.
    fn count(&self, offset: usize) {
        let w = self.shard.header.u64_at(offset);
        // Relaxed: a statistic with a single writer. Wrapping: not worth a
        // panic if the file was damaged.
        w.store(w.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// While full: whether the reader that blocked us last time still holds
    /// `target`. One slot's words instead of a scan of every slot.
    fn still_blocked_by_holder(&self, target: u64) -> bool {
        let slot = self.gate_holder_slot;
        // Acquire: as in `scan_gates`.
        self.slots.state(slot) == slot_state::GATED
            && self.slots.position_word(slot, self.shard_index).load(Ordering::Acquire) < target
    }

    /// Rescans the registered readers, gated or lossy, and returns the
    /// lowest position any of them has read this shard up to (`u64::MAX`
    /// without readers). Only a hint for starting over and skipping ahead:
    /// gates and the tail still protect whatever a reader has not read.
    /// Readers below `wanted` whose process is dead are reaped (rate
    /// limited), so that a dead registered reader, lossy ones included,
    /// does not hold the floor down for good.
    fn scan_reader_floor(&mut self, wanted: u64) -> u64 {
        let mut floor = self.lowest_reader();
        if floor < wanted && self.reap_dead(wanted, true) {
            floor = self.lowest_reader();
        }
        self.reader_floor = floor;
        self.next_floor_scan = self.pending + self.reclaim_chunk;
        floor
    }

    fn lowest_reader(&self) -> u64 {
        (0..self.slots.count)
            .filter(|&slot| {
                // Acquire (in `state`): as in `scan_gates`.
                let state = self.slots.state(slot);
                state == slot_state::GATED || state == slot_state::LOSSY
            })
            // Acquire: pairs with the readers' Release `release` swaps
            // (sync point G).
            .map(|slot| self.slots.position_word(slot, self.shard_index).load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether every registered reader has read this shard up to `pos`, from
    /// the last scan while it suffices and is recent. While full the last
    /// scan stands: retrying a refused reservation stays cheap (see
    /// `still_blocked_by_holder`).
    fn reader_floor_at_least(&mut self, pos: u64) -> bool {
        if (self.reader_floor >= pos && self.pending < self.next_floor_scan) || self.full {
            return self.reader_floor >= pos;
        }
        self.scan_reader_floor(pos) >= pos
    }

    /// Rescans the gated readers' positions for this shard.
    fn scan_gates(&mut self) {
        let mut limit = u64::MAX;
        let mut holder = 0;
        let mut holder_slot = 0;
        for slot in 0..self.slots.count {
            // Acquire (in `state`): pairs with the Release swap in
            // `activate` (the positions stored before it are visible); the
            // position load pairs with the readers' Release `release` swaps
            // (sync point G).
            if self.slots.state(slot) == slot_state::GATED {
                let pos = self.slots.position_word(slot, self.shard_index).load(Ordering::Acquire);
                if pos < limit {
                    limit = pos;
                    holder_slot = slot;
                    // Relaxed: only for the error message.
                    holder = self
                        .slots
                        .region
                        .u32_at(slot * self.slots.slot_size + reader_slot::PID)
                        .load(Ordering::Relaxed);
                }
            }
        }
        self.gate_limit = limit;
        self.gate_holder = holder;
        self.gate_holder_slot = holder_slot;
    }

    /// Frees the slots of gated readers (and, with `lossy`, of registered
    /// lossy readers) behind `target` whose process is dead. Rate limited:
    /// at most every 50 ms, so a writer that keeps retrying while full does
    /// not hammer `/proc`.
    fn reap_dead(&mut self, target: u64, lossy: bool) -> bool {
        #[cfg(not(loom))]
        {
            let now = std::time::Instant::now();
            if self.last_reap.is_some_and(|t| now.duration_since(t) < Duration::from_millis(50)) {
                return false;
            }
            self.last_reap = Some(now);
        }
        let mut reaped = false;
        for slot in 0..self.slots.count {
            let state = self.slots.state(slot);
            if state != slot_state::GATED && !(lossy && state == slot_state::LOSSY) {
                continue;
            }
            // Relaxed: a hint; `reap`'s swap decides.
            let pos = self.slots.position_word(slot, self.shard_index).load(Ordering::Relaxed);
            if pos >= target {
                continue;
            }
            // The swap compares the owner word the identity was read under:
            // if the slot changed hands since, it fails.
            let snapshot = self.slots.snapshot(slot);
            let reapable =
                snapshot.state == slot_state::GATED || (lossy && snapshot.state == slot_state::LOSSY);
            if reapable && (self.is_dead)(&snapshot) && self.slots.reap(slot, snapshot.owner) {
                self.words.count_reaped();
                reaped = true;
            }
        }
        reaped
    }

    /// Makes positions below `target` safe to overwrite: checks the gates,
    /// moves the tail past them (sync point T) and settles the registration
    /// race (sync point R).
    fn make_writable(&mut self, target: u64) -> Result<(), NoSpace> {
        // The tail never passes `write_pos`: publish what is committed first.
        if target > self.published {
            self.publish();
        }
        let regs = self.slots_registrations();
        // Retrying while full: the cheap check first. Reaping is considered
        // on the first refusal and every 64th after.
        let may_reap = self.refused_in_a_row % 64 == 0;
        if self.full && regs == self.seen_registrations && !may_reap && self.still_blocked_by_holder(target) {
            return Err(self.refuse());
        }
        if regs != self.seen_registrations || self.gate_limit < target {
            self.seen_registrations = regs;
            self.scan_gates();
        }
        if self.gate_limit < target && may_reap && self.reap_dead(target, false) {
            self.scan_gates();
        }
        if self.gate_limit < target {
            return Err(self.refuse());
        }

        // The first record boundary at or after `target`, then whole records
        // up to a chunk further, as far as gates and the published end allow.
        let mut tail = self.tail;
        while tail < target {
            tail = self.next_boundary(tail);
        }
        let mut soft = (target + self.reclaim_chunk).min(self.gate_limit).min(self.published);
        if self.reusable.is_some() || self.skipped.is_some() {
            // Not past a registered lossy reader either while the writer may
            // still skip ahead for it: passing it would lap it.
            soft = soft.min(self.reader_floor.max(target));
        }
        loop {
            let next = self.next_boundary(tail);
            if next > soft {
                break;
            }
            tail = next;
        }
        if tail > self.tail {
            // Release: pairs with the Acquire fence after a reader's tail
            // load (`ShardMem::load_tail`): a reader that sees this tail sees
            // `write_pos` at least as far (the tail never passes it), which
            // lets it treat a tail beyond `write_pos` as corrupt. The fence
            // below orders it before the overwriting stores (sync point T).
            self.shard.header.u64_at(shard_header::TAIL_POS).store(tail, Ordering::Release);
            self.tail = tail;
        }
        // One SeqCst fence serves two sync points. T: as a Release fence it
        // orders the tail store before the data stores that overwrite the
        // space below it. R (writer half): a reader whose registration our
        // load below misses is guaranteed to see the tail stored above.
        fence(Ordering::SeqCst);
        let regs = self.slots_registrations();
        if regs != self.seen_registrations {
            self.seen_registrations = regs;
            self.scan_gates();
            if self.gate_limit < target {
                return Err(self.refuse());
            }
        }
        self.writable_limit = self.tail.min(self.gate_limit);
        self.full = false;
        self.refused_in_a_row = 0;
        Ok(())
    }

    fn slots_registrations(&self) -> u64 {
        // Acquire: pairs with the Release increment in `Slots::activate`, so
        // a rescan after seeing a new count sees the new slot.
        self.words.readers.u64_at(readers_header::REGISTRATIONS).load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// The header of the record a cursor stands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) pos: u64,
    pub(crate) len: u32,
    pub(crate) kind: u16,
    pub(crate) seq: u64,
    pub(crate) timestamp_ns: u64,
    /// Records skipped (lapped) right before this one.
    pub(crate) lost: u64,
}

impl Head {
    pub(crate) fn end(&self) -> u64 {
        self.pos + record_size(u64::from(self.len))
    }
}

/// What a shard's data says that it should not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Corrupt {
    pub(crate) pos: u64,
    pub(crate) what: String,
}

/// One reader's position in one shard.
#[derive(Debug)]
pub(crate) struct CursorCore {
    shard: ShardMem,
    pos: u64,
    /// Sequence number expected next; `u64::MAX` until the first record.
    next_seq: u64,
    /// Whether a record was delivered yet: before that, `next_seq` is only
    /// an estimate taken at attach time (see `ShardMem::end_snapshot`).
    delivered_any: bool,
    /// Last `write_pos` loaded: records below it need no new Acquire load.
    cached_write: u64,
    /// Gated cursors trust the gate instead of validating against the tail.
    pub(crate) gated: bool,
}

impl CursorCore {
    /// A cursor at `pos`. `next_seq` is the sequence number expected there,
    /// or `u64::MAX` when unknown (then nothing counts as lost before the
    /// first record delivered).
    pub(crate) fn new(shard: ShardMem, pos: u64, next_seq: u64, gated: bool) -> Self {
        Self { shard, pos, next_seq, delivered_any: false, cached_write: 0, gated }
    }

    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a record may be ready (cheap: only loads `write_pos` when the
    /// cached value is used up). A corrupt `write_pos` counts as ready, so
    /// that the caller's next `peek` reports it.
    pub(crate) fn has_data(&mut self) -> bool {
        self.fetch_data().unwrap_or(true)
    }

    /// As `has_data`, with a checked `write_pos`: a possible position, and
    /// not below ours (every position a cursor takes is at or below the
    /// `write_pos` loaded after it).
    fn fetch_data(&mut self) -> Result<bool, Corrupt> {
        if self.pos < self.cached_write {
            return Ok(true);
        }
        let write_pos = self.shard.checked_write_pos(self.pos)?;
        if self.pos > write_pos {
            return Err(Corrupt {
                pos: self.pos,
                what: format!("write_pos {write_pos} is below this position (from tail_pos or a record)"),
            });
        }
        self.cached_write = write_pos;
        Ok(self.pos < write_pos)
    }

    /// Sync point V for lossy cursors: true when nothing at or after `pos`
    /// has been overwritten since the caller read it.
    fn intact_from(&self, pos: u64) -> bool {
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence above, which pairs with the writer's
        // Release fence after its tail store (sync point T).
        self.shard.header.u64_at(shard_header::TAIL_POS).load(Ordering::Relaxed) <= pos
    }

    /// Reads the next record header without consuming it. Lossy cursors
    /// that were lapped jump to the oldest record still retained.
    pub(crate) fn peek(&mut self) -> Result<Option<Head>, Corrupt> {
        let cap = self.shard.capacity;
        loop {
            // A start taken from a corrupt header field: never read a
            // header there (it would be misaligned).
            check_position("reader position", self.pos)?;
            if !self.fetch_data()? {
                return Ok(None);
            }
            let pos = self.pos;
            let room = cap - (pos & self.shard.mask());
            if room < RECORD_HEADER {
                self.pos += room;
                continue;
            }
            // Relaxed: published by the Acquire load of `write_pos` in
            // `has_data`; lossy readers validate below (sync point V).
            let r = Ordering::Relaxed;
            let stamp = self.shard.header_word(pos, record_header::POS).load(r);
            let lkf = self.shard.header_word(pos, record_header::LEN_KIND_FLAGS).load(r);
            let seq = self.shard.header_word(pos, record_header::SEQ).load(r);
            let timestamp_ns = self.shard.header_word(pos, record_header::TIMESTAMP_NS).load(r);
            if !self.gated && !self.intact_from(pos) {
                // Lapped: resume at the oldest retained record. The loss is
                // counted from the sequence numbers of the next record.
                self.pos = self.shard.tail_pos()?;
                continue;
            }
            let len = lkf & 0xFFFF_FFFF;
            let kind = (lkf >> 32) as u16;
            if stamp != pos {
                return Err(Corrupt {
                    pos,
                    what: format!("record stamp {stamp} does not match its position"),
                });
            }
            if len > room - RECORD_HEADER {
                return Err(Corrupt {
                    pos,
                    what: format!("record length {len} runs past the end of the ring"),
                });
            }
            if kind == KIND_PADDING {
                self.pos = pos + record_size(len);
                continue;
            }
            if len > max_payload(cap) {
                return Err(Corrupt {
                    pos,
                    what: format!("record length {len} exceeds the largest payload {}", max_payload(cap)),
                });
            }
            if seq == u64::MAX {
                return Err(Corrupt {
                    pos,
                    what: format!("sequence number {seq} leaves no room for the next"),
                });
            }
            let lost = if self.next_seq == u64::MAX {
                0
            } else if seq >= self.next_seq {
                seq - self.next_seq
            } else if !self.delivered_any {
                0 // the attach-time estimate ran ahead of a racing publish
            } else {
                return Err(Corrupt {
                    pos,
                    what: format!("sequence {seq} goes back (expected {})", self.next_seq),
                });
            };
            return Ok(Some(Head { pos, len: len as u32, kind, seq, timestamp_ns, lost }));
        }
    }

    /// Learns the sequence number at the start position when it is not
    /// known yet (a start at the oldest or latest record), so that records
    /// lapped before the first delivery are counted as lost too.
    pub(crate) fn anchor(&mut self) -> Result<(), Corrupt> {
        if self.next_seq != u64::MAX {
            return Ok(());
        }
        if let Some(head) = self.peek()? {
            self.next_seq = head.seq;
        } else {
            let (write_pos, seq) = self.shard.end_snapshot()?;
            if self.pos == write_pos {
                self.next_seq = seq;
            }
        }
        Ok(())
    }

    /// Expects sequence number `next_seq` at the next record, as for a
    /// reader that follows a replacement of the same generation (a
    /// republished channel re-created, FORMAT.md §6.8): a first record
    /// above it counts the difference as lost, one below it nothing.
    pub(crate) fn expect_seq(&mut self, next_seq: u64) {
        self.next_seq = next_seq;
        self.delivered_any = false;
    }

    /// Moves past `head` (returned by the last `peek`).
    pub(crate) fn advance(&mut self, head: &Head) {
        self.pos = head.end();
        self.next_seq = head.seq + 1;
        self.delivered_any = true;
    }

    /// The payload of `head`, in place: for gated cursors only (the gate
    /// keeps the writer off it). Lossy cursors use `copy_payload`.
    #[cfg(not(loom))]
    pub(crate) fn payload(&self, head: &Head) -> &[u8] {
        debug_assert!(self.gated, "a lossy reader must copy the payload out");
        let off = (head.pos & self.shard.mask()) + RECORD_HEADER;
        self.shard.data.bytes(off as usize, head.len as usize)
    }

    /// Copies the payload of `head` into `dst` with Relaxed atomic loads,
    /// then validates the copy (sync point V). `false`: the writer lapped
    /// us while we copied, and `dst` holds garbage. `head.len` was checked
    /// by `peek` against the room to the end of the ring (and the largest
    /// payload), so the words copied lie inside this record.
    #[cfg(not(loom))]
    pub(crate) fn copy_payload(&self, head: &Head, dst: &mut Vec<u8>) -> bool {
        let off = (head.pos & self.shard.mask()) + RECORD_HEADER;
        self.shard.data.copy_words(off as usize, head.len as usize, dst);
        self.still_valid(head)
    }

    /// Under loom the payload is modelled as 8-byte words.
    #[cfg(loom)]
    pub(crate) fn payload_word(&self, head: &Head, index: usize) -> u64 {
        let off = (head.pos & self.shard.mask()) as usize + RECORD_HEADER as usize + index * 8;
        // Relaxed: validated by `still_valid` (sync point V).
        self.shard.data.u64_at(off).load(Ordering::Relaxed)
    }

    /// For lossy cursors: whether `head`'s bytes are still intact now, after
    /// the caller has used them (sync point V). Gated cursors are always
    /// intact while their slot is gated (checked by the caller).
    pub(crate) fn still_valid(&self, head: &Head) -> bool {
        self.gated || self.intact_from(head.pos)
    }
}

// Layout checks: the constants in `layout` are what FORMAT.md documents; the
// code above only ever uses them, and they must keep shared words aligned.
const _: () = {
    assert!(shard_header::WRITE_POS % 64 == 0 && shard_header::TAIL_POS % 64 == 0);
    assert!(readers_header::REGISTRATIONS % 64 == 0 && readers_header::WAITERS % 64 == 0);
    assert!(channel_header::STATE % 4 == 0 && channel_header::NOTIFY % 4 == 0);
    assert!(channel_header::PRODUCER_HEARTBEAT_NS % 8 == 0 && reader_slot::OWNER % 8 == 0);
    assert!(readers_header::REAPED_READERS % 8 == 0);
    assert!(reader_slot::SHARDS % 64 == 0 && reader_slot::START_TIME % 8 == 0);
    assert!(record_header::SEQ % 8 == 0 && RECORD_HEADER % 8 == 0);
};
