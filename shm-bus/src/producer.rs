//! The producer side: a [`Producer`] owns a channel; each of its
//! [`ShardWriter`]s is the single writer of one shard, used by one thread.
//!
//! Writing follows reserve → fill → commit → publish:
//!
//! ```no_run
//! # use shm_bus::{BusDir, ChannelOptions, Producer};
//! let producer = Producer::create(&BusDir::from_env(), "demo/records", ChannelOptions::default())?;
//! let mut writer = producer.shard(0)?;
//! let mut slot = writer.reserve(65536)?;       // space in the shared ring
//! let n = 3; slot.buf()[..n].copy_from_slice(b"abc"); // e.g. recv(2) into it
//! slot.commit(n, 1);                           // length and kind; not visible yet
//! writer.publish();                            // the batch becomes visible at once
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::{self, BusDir, ChannelMap, ChannelOptions};
use crate::error::{CreateError, ReserveError};
use crate::layout::{self, channel_state};
use crate::liveness;
use crate::ring::{Arc, NoSpace, Reserved, WriterCore, monotonic_ns};

/// The owner of a channel. Dropping it (or [`Producer::end`]) marks the
/// channel ended, so readers see the end of the stream.
pub struct Producer {
    map: Arc<ChannelMap>,
    name: String,
    /// Which shards have been handed out.
    taken: Mutex<Vec<bool>>,
    /// See [`ChannelOptions::hot_window`].
    hot_window: u64,
    /// Per shard, the sequence number of its first record.
    first_seq: Vec<u64>,
    /// The thread that refreshes the producer's heartbeat in the channel
    /// header (how a producer in another pid namespace tells that this one
    /// is alive), and the sender whose drop stops it.
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("name", &self.name).field("generation", &self.generation()).finish()
    }
}

impl Producer {
    /// Creates channel `name` in `bus`, replacing the files of a dead
    /// producer. Fails with [`CreateError::Busy`] if a live producer owns it.
    pub fn create(bus: &BusDir, name: &str, opts: ChannelOptions) -> Result<Self, CreateError> {
        Self::create_inner(bus, name, opts, None)
    }

    /// Like [`Producer::create`], but shard `k`'s first record gets
    /// sequence number `first_seq[k]`: for a producer that continues
    /// another's sequence (a restarted bridge re-creating an imported
    /// channel, FORMAT.md §7.1). The shard headers show these numbers
    /// from the moment the channel appears, so a reader that attaches (or
    /// follows the replacement) before the first record expects them; with
    /// [`Producer::create`] and [`ShardWriter::skip_to_seq`] it could see
    /// the new channel at 0 and count the jump as lost.
    /// [`CreateError::InvalidOptions`] unless there is one number per shard,
    /// none of them `u64::MAX`.
    pub fn create_from_seq(
        bus: &BusDir,
        name: &str,
        opts: ChannelOptions,
        first_seq: &[u64],
    ) -> Result<Self, CreateError> {
        Self::create_inner(bus, name, opts, Some(first_seq))
    }

    fn create_inner(
        bus: &BusDir,
        name: &str,
        opts: ChannelOptions,
        first_seq: Option<&[u64]>,
    ) -> Result<Self, CreateError> {
        let map = Arc::new(channel::create(bus, name, &opts, first_seq)?);
        let (stop, stopped) = mpsc::channel::<()>();
        let words = map.words.clone();
        let beat = move || {
            // Sleeps (no spinning) until the producer is dropped.
            while let Err(RecvTimeoutError::Timeout) =
                stopped.recv_timeout(liveness::PRODUCER_HEARTBEAT_EVERY)
            {
                words.beat_producer(monotonic_ns());
            }
        };
        let thread =
            std::thread::Builder::new().name("shm-bus-heartbeat".into()).spawn(beat).map_err(|source| {
                CreateError::Io { op: "start the heartbeat thread of", path: map.ring_path.clone(), source }
            })?;
        Ok(Self {
            map,
            name: name.to_owned(),
            taken: Mutex::new(vec![false; opts.shards as usize]),
            first_seq: first_seq.map_or_else(|| vec![0; opts.shards as usize], <[u64]>::to_vec),
            hot_window: opts.hot_window,
            heartbeat: Some((stop, thread)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation number of this producer's files (random, never 0).
    pub fn generation(&self) -> u64 {
        self.map.geometry.generation
    }

    pub fn shard_count(&self) -> u32 {
        self.map.geometry.shards
    }

    /// Largest payload one record can have.
    pub fn max_payload(&self) -> usize {
        layout::max_payload(self.map.geometry.capacity) as usize
    }

    /// Takes the writer of shard `index`. Each shard has one writer: asking
    /// twice fails with [`CreateError::ShardTaken`].
    pub fn shard(&self, index: u32) -> Result<ShardWriter, CreateError> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        match taken.get_mut(index as usize) {
            Some(t) if !*t => *t = true,
            _ => return Err(CreateError::ShardTaken { name: self.name.clone(), shard: index }),
        }
        let core = WriterCore::new(
            self.map.shards[index as usize].clone(),
            self.map.slots.clone(),
            self.map.words.clone(),
            index as usize,
            liveness::slot_holder_dead,
            self.hot_window,
            self.first_seq[index as usize],
        );
        Ok(ShardWriter { core, map: self.map.clone(), shard: index })
    }

    /// Marks the channel ended: readers that have drained it see
    /// [`crate::Event::Ended`]. Writers should be dropped (they publish what
    /// they committed) before this.
    pub fn end(self) {
        // Drop does the work.
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.heartbeat.take() {
            drop(stop);
            let _ = thread.join();
        }
        if self.map.is_current() {
            self.map.words.set_state(channel_state::ENDED);
        }
    }
}

/// The single writer of one shard. `Send`, so it can move to the thread
/// that owns it; not `Sync`.
pub struct ShardWriter {
    core: WriterCore,
    map: Arc<ChannelMap>,
    shard: u32,
}

impl fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardWriter")
            .field("channel", &self.map.geometry.name)
            .field("shard", &self.shard)
            .field("next_seq", &self.core.next_seq())
            .finish()
    }
}

/// How long [`ShardWriter::reserve_timeout`] sleeps between retries, at most.
const MAX_RETRY_SLEEP: Duration = Duration::from_millis(1);

impl ShardWriter {
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Largest payload one record can have.
    pub fn max_payload(&self) -> usize {
        layout::max_payload(self.core.capacity()) as usize
    }

    /// Sequence number the next committed record gets.
    pub fn next_seq(&self) -> u64 {
        self.core.next_seq()
    }

    /// Makes `seq` the sequence number of the next record, for a producer
    /// that republishes records with the sequence numbers they already have
    /// (a bridge importing another bus's channel): a new channel then
    /// starts at the first record it holds, and a jump forward says that
    /// the records in between were lost upstream (readers count them as
    /// lost, as any gap). The shard header's `records_written` shows it at
    /// once when nothing waits for a publish, else at the next publish.
    ///
    /// # Panics
    /// If `seq` is below [`ShardWriter::next_seq`] (sequence numbers never
    /// go back) or is `u64::MAX`.
    pub fn skip_to_seq(&mut self, seq: u64) {
        self.core.skip_to_seq(seq);
    }

    /// Reserves space for one record of up to `max_len` payload bytes. Never
    /// blocks: [`ReserveError::Full`] means a gated reader still holds the
    /// space (nothing was dropped; retry once it has read on).
    pub fn reserve(&mut self, max_len: usize) -> Result<Reservation<'_>, ReserveError> {
        let max = self.max_payload() as u64;
        if max_len as u64 > max {
            return Err(ReserveError::TooLarge { len: max_len as u64, max });
        }
        match self.core.reserve(max_len as u64) {
            Ok(reserved) => Ok(Reservation { writer: self, reserved }),
            Err(NoSpace::Gated { reader_pid }) => Err(ReserveError::Full {
                shard: self.shard,
                needed: layout::record_size(max_len as u64),
                reader_pid,
            }),
        }
    }

    /// Like [`ShardWriter::reserve`], but the reservation is not tied to a
    /// borrow of the writer: for callers that fill one record bit by bit
    /// from several places (the engine appends packets of many connections
    /// into one group). Fill it with [`ShardWriter::pending_buf`] and finish
    /// it with [`ShardWriter::commit_pending`]; dropping it aborts it. At
    /// most one reservation may be outstanding per writer.
    pub fn reserve_pending(&mut self, max_len: usize) -> Result<PendingRecord, ReserveError> {
        self.reserve(max_len).map(Reservation::detach)
    }

    /// The bytes of `pending`, made by this writer's last reservation.
    ///
    /// # Panics
    /// If `pending` was made by another writer or a newer reservation was
    /// made since.
    pub fn pending_buf(&mut self, pending: &PendingRecord) -> &mut [u8] {
        self.check_pending(pending);
        self.core.payload_mut(&pending.reserved)
    }

    /// Commits `pending` like [`Reservation::commit_at`].
    ///
    /// # Panics
    /// As [`ShardWriter::pending_buf`], and as [`Reservation::commit_at`].
    pub fn commit_pending(
        &mut self,
        pending: PendingRecord,
        len: usize,
        kind: u16,
        timestamp_ns: u64,
    ) -> u64 {
        self.check_pending(&pending);
        Reservation { writer: self, reserved: pending.reserved }.commit_at(len, kind, timestamp_ns)
    }

    fn check_pending(&self, pending: &PendingRecord) {
        assert!(
            pending.generation == self.map.geometry.generation
                && pending.shard == self.shard
                && self.core.is_next_record(&pending.reserved),
            "a PendingRecord used with the wrong writer or after a newer reservation"
        );
    }

    /// Like [`ShardWriter::reserve`], but retries while full, sleeping
    /// between attempts (never spinning), for at most `timeout`.
    pub fn reserve_timeout(
        &mut self,
        max_len: usize,
        timeout: Duration,
    ) -> Result<Reservation<'_>, ReserveError> {
        let deadline = Instant::now() + timeout;
        let mut sleep = Duration::from_micros(10);
        loop {
            match self.core.reserve(max_len as u64) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    // Publish what we hold so a reader can drain it.
                    self.core.publish();
                    std::thread::sleep(sleep.min(deadline.saturating_duration_since(Instant::now())));
                    sleep = (sleep * 2).min(MAX_RETRY_SLEEP);
                }
                Err(_) => break,
            }
        }
        self.reserve(max_len)
    }

    /// Size of the shard's ring in bytes (a power of two): a record never
    /// crosses a multiple of it.
    pub fn ring_capacity(&self) -> usize {
        self.core.capacity() as usize
    }

    /// Position of the next record: bytes written to this shard since it
    /// was created, padding included (ring offset = position modulo
    /// [`ShardWriter::ring_capacity`]).
    pub fn next_record_pos(&self) -> u64 {
        self.core.next_record_pos()
    }

    // -- Claimed space ---------------------------------------------------
    //
    // For producers whose records are filled in place by someone else
    // before their lengths are known, e.g. the kernel receiving into
    // buffers handed to it in advance. The producer claims ring space ahead
    // of the next record (gated readers permitting), gives parts of it away
    // (`claimed_ptr`), and once they are filled commits records over them
    // in order (`commit_claimed`), each starting where the previous ended.

    /// Claims the ring up to position `end` (see
    /// [`ShardWriter::next_record_pos`]), at most half a ring ahead of the
    /// next record. Never blocks: [`ReserveError::Full`] means a gated
    /// reader still holds part of that space; the claim made so far stays.
    pub fn claim_to(&mut self, end: u64) -> Result<(), ReserveError> {
        let next = self.core.next_record_pos();
        let max = self.core.capacity() / 2;
        if end < next || end - next > max {
            return Err(ReserveError::TooLarge { len: end.saturating_sub(next), max });
        }
        self.core.claim(end).map_err(|NoSpace::Gated { reader_pid }| ReserveError::Full {
            shard: self.shard,
            needed: end - next,
            reader_pid,
        })
    }

    /// End of the claimed space: positions from
    /// [`ShardWriter::next_record_pos`] up to here may be written. At least
    /// what [`ShardWriter::claim_to`] last claimed.
    pub fn claimed_end(&self) -> u64 {
        self.core.writable_end()
    }

    /// The claimed bytes at positions `pos..pos + len`, to write in place.
    ///
    /// # Panics
    /// If the range is not claimed space or crosses the end of the ring.
    pub fn claimed_mut(&mut self, pos: u64, len: usize) -> &mut [u8] {
        self.core.claimed_mut(pos, len)
    }

    /// The address of claimed position `pos`, for handing `pos..pos + len`
    /// to another writer (the kernel). It stays valid while this writer
    /// lives. Whoever writes through it must be done before
    /// [`ShardWriter::commit_claimed`] covers the range, and the range must
    /// not be asked of [`ShardWriter::claimed_mut`] meanwhile.
    ///
    /// # Panics
    /// As [`ShardWriter::claimed_mut`].
    pub fn claimed_ptr(&self, pos: u64, len: usize) -> *mut u8 {
        self.core.claimed_ptr(pos, len)
    }

    /// Commits the record at [`ShardWriter::next_record_pos`], whose `len`
    /// payload bytes (after the record header of
    /// [`layout::RECORD_HEADER`] bytes) are already in place. Visible after
    /// the next [`ShardWriter::publish`]. Returns its sequence number.
    ///
    /// # Panics
    /// If the record leaves the claimed space or crosses the end of the
    /// ring, or `kind` is `0xFFFF`.
    pub fn commit_claimed(&mut self, len: usize, kind: u16, timestamp_ns: u64) -> u64 {
        assert!(kind != layout::KIND_PADDING, "kind 0xFFFF is reserved for padding");
        self.core.commit_in_place(len as u64, kind, timestamp_ns)
    }

    /// Counts `bytes` of the records committed so far as framing rather
    /// than payload in the shard header's payload counter (introspection
    /// only; published with the next [`ShardWriter::publish`]).
    pub fn count_as_framing(&mut self, bytes: u64) {
        self.core.count_as_framing(bytes);
    }

    /// Fills claimed space from [`ShardWriter::next_record_pos`] with a
    /// padding record of `len` payload bytes, which readers skip.
    ///
    /// # Panics
    /// As [`ShardWriter::commit_claimed`].
    pub fn commit_claimed_padding(&mut self, len: usize) {
        self.core.commit_in_place(len as u64, layout::KIND_PADDING, 0);
    }

    /// Copies `payload` into a new record of `kind` stamped now (not yet
    /// published). Returns its sequence number.
    pub fn write(&mut self, kind: u16, payload: &[u8]) -> Result<u64, ReserveError> {
        self.write_at(kind, liveness::realtime_ns(), payload)
    }

    /// Like [`ShardWriter::write`] with an explicit timestamp (ns).
    pub fn write_at(&mut self, kind: u16, timestamp_ns: u64, payload: &[u8]) -> Result<u64, ReserveError> {
        let mut r = self.reserve(payload.len())?;
        r.buf().copy_from_slice(payload);
        Ok(r.commit_at(payload.len(), kind, timestamp_ns))
    }

    /// [`ShardWriter::write`], then [`ShardWriter::publish`].
    pub fn send(&mut self, kind: u16, payload: &[u8]) -> Result<u64, ReserveError> {
        let seq = self.write(kind, payload)?;
        self.publish();
        Ok(seq)
    }

    /// Makes every committed record visible to readers with one release
    /// store, and wakes readers that sleep.
    pub fn publish(&mut self) {
        self.core.publish();
    }

    /// Whether committed records wait for [`ShardWriter::publish`].
    pub fn has_unpublished(&self) -> bool {
        self.core.has_unpublished()
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        self.core.publish();
    }
}

/// Space for one record, reserved in the shared ring. Fill [`Reservation::buf`]
/// (for example with `recv(2)`), then [`Reservation::commit`] a length up to
/// its size. Dropping it without committing aborts it.
pub struct Reservation<'w> {
    writer: &'w mut ShardWriter,
    reserved: Reserved,
}

impl fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("pos", &self.reserved.pos)
            .field("len", &self.reserved.max_len)
            .finish()
    }
}

impl Reservation<'_> {
    /// The reserved bytes, in the shared mapping. Their prior contents are
    /// unspecified (old records).
    pub fn buf(&mut self) -> &mut [u8] {
        self.writer.core.payload_mut(&self.reserved)
    }

    /// Size of the reservation.
    pub fn len(&self) -> usize {
        self.reserved.max_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.reserved.max_len == 0
    }

    /// Commits the first `len` bytes as a record of `kind`, stamped with the
    /// current `CLOCK_REALTIME`. Returns its sequence number. The record is
    /// visible after the next [`ShardWriter::publish`].
    ///
    /// # Panics
    /// If `len` exceeds the reservation or `kind` is `0xFFFF` (reserved for
    /// padding).
    pub fn commit(self, len: usize, kind: u16) -> u64 {
        self.commit_at(len, kind, liveness::realtime_ns())
    }

    /// [`Reservation::commit`] with an explicit timestamp (ns since the
    /// epoch, used by readers to merge shards).
    pub fn commit_at(self, len: usize, kind: u16, timestamp_ns: u64) -> u64 {
        assert!(
            len as u64 <= self.reserved.max_len,
            "commit of {len} bytes exceeds the reservation of {}",
            self.reserved.max_len
        );
        assert!(kind != layout::KIND_PADDING, "kind 0xFFFF is reserved for padding");
        self.writer.core.commit(self.reserved, len as u64, kind, timestamp_ns)
    }

    /// Gives the space back (same as dropping the reservation).
    pub fn abort(self) {}

    /// Releases the borrow of the writer; see [`ShardWriter::reserve_pending`].
    pub fn detach(self) -> PendingRecord {
        PendingRecord {
            reserved: self.reserved,
            generation: self.writer.map.geometry.generation,
            shard: self.writer.shard,
        }
    }
}

/// A reservation detached from its writer (see
/// [`ShardWriter::reserve_pending`]).
#[derive(Debug)]
#[must_use = "a pending record is aborted unless committed"]
pub struct PendingRecord {
    reserved: Reserved,
    generation: u64,
    shard: u32,
}

impl PendingRecord {
    /// Size of the reservation.
    pub fn len(&self) -> usize {
        self.reserved.max_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.reserved.max_len == 0
    }
}
