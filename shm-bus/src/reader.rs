//! The reader side: a [`Reader`] sees all shards of a channel as one stream
//! and hands out [`Sample`]s: zero-copy for gated readers, a copy validated
//! against the writer's tail for lossy ones.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use shm_bus::{BusDir, Event, Reader, ReaderOptions};
//! let mut reader = Reader::attach(&BusDir::from_env(), "demo/records", ReaderOptions::gated())?;
//! loop {
//!     match reader.recv_timeout(Duration::from_secs(1))? {
//!         Some(Event::Record(sample)) => println!("{} bytes, seq {}", sample.payload().len(), sample.seq()),
//!         Some(Event::Restarted { generation }) => println!("producer restarted ({generation:x})"),
//!         Some(Event::Ended) => break,
//!         None => {} // timeout
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use crate::channel::{self, BusDir, ChannelMap, ChannelState};
use crate::error::{AttachError, RecvError};
use crate::layout::slot_state;
use crate::liveness;
use crate::ring::{Arc, Corrupt, CursorCore, Head, SlotHold, monotonic_ns, producer_heartbeat};

/// Where a new reader starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still retained: history for late joiners.
    Oldest,
    /// The newest record already published (then everything after it).
    Latest,
    /// Only records published after attaching.
    #[default]
    Next,
}

/// How a reader attaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Gated (lossless): the producer never overwrites what this reader has
    /// not released, and reports Full instead. Should the producer ever
    /// judge the reader dead and reap its slot (only a reader in another
    /// pid namespace silent for [`crate::FOREIGN_HEARTBEAT_TIMEOUT`] can be
    /// misjudged), or someone else store a position in it, the reader
    /// fails with [`RecvError::SlotLost`] rather than turn lossy unnoticed. Lossy readers (the default)
    /// never slow the producer; when lapped they skip to the oldest retained
    /// record and count what they lost. A lossy reader needs only read
    /// access to the channel's files: without write access to `.readers`
    /// it takes no reader slot (introspection does not list it) and polls
    /// every 10 ms instead of sleeping on the futex.
    pub gated: bool,
    pub start: StartAt,
    /// For gated readers: a record is released (the producer may overwrite
    /// it) only by [`Reader::release`], not when its [`Sample`] is dropped.
    /// The reader reads ahead of what it released, and [`Reader::rewind`]
    /// goes back to it: for a forwarder (the bridge) that lets go of a
    /// record only once its peer acknowledged it, and sends again what was
    /// not acknowledged after a broken link.
    pub hold_until_released: bool,
}

impl ReaderOptions {
    pub fn lossy() -> Self {
        Self { gated: false, start: StartAt::Next, hold_until_released: false }
    }

    pub fn gated() -> Self {
        Self { gated: true, start: StartAt::Next, hold_until_released: false }
    }

    pub fn start(self, start: StartAt) -> Self {
        Self { start, ..self }
    }

    /// See [`ReaderOptions::hold_until_released`] (gated readers only).
    pub fn hold_until_released(self) -> Self {
        Self { hold_until_released: true, ..self }
    }
}

/// Where a [`Reader`] may release one shard up to: the end of a record it
/// delivered (see [`Sample::release_point`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleasePoint {
    /// The shard.
    pub shard: u32,
    /// Ring position just after the record.
    pub pos: u64,
    /// Sequence number of the record after it.
    pub next_seq: u64,
    /// Generation of the producer files the record came from: a point of
    /// an older generation is ignored once the reader followed a restart.
    pub generation: u64,
}

/// What a reader has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records delivered.
    pub received: u64,
    /// Records overwritten before this reader got to them (lossy readers).
    pub lost: u64,
    /// Producer restarts this reader followed.
    pub restarts: u64,
}

/// What [`Reader::try_recv`] and friends return.
#[derive(Debug)]
pub enum Event<'r> {
    /// The next record.
    Record(Sample<'r>),
    /// A new producer replaced the channel; the reader reattached and will
    /// deliver the new producer's records from its oldest. When the new
    /// channel has the generation of the old one (a bridge re-created a
    /// republished channel), each shard's sequence continues the old one:
    /// [`Sample::lost_before`] counts what the new channel lacks of it.
    Restarted { generation: u64 },
    /// The producer ended the channel and every record has been read. Keeps
    /// being returned until a new producer starts.
    Ended,
}

/// How often an idle reader checks whether its file was replaced, and
/// refreshes its heartbeat.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Longest single futex sleep, so idle readers keep checking the above.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Poll interval of a lossy reader that may not write `.readers` and so
/// cannot ask to be woken.
const POLL_WITHOUT_WRITE_ACCESS: Duration = Duration::from_millis(10);
/// Records between flushes of the reader's counters into its slot.
const ACCOUNT_EVERY: u64 = 256;

/// A reader of one channel, in any process.
pub struct Reader {
    bus: BusDir,
    name: String,
    opts: ReaderOptions,
    map: Arc<ChannelMap>,
    cursors: Vec<CursorCore>,
    /// The record each cursor stands on, once peeked.
    heads: Vec<Option<Head>>,
    /// Our slot in the `.readers` file (a lossy reader may have none when
    /// all slots are taken, or after losing it).
    slot: Option<SlotHold>,
    /// A gated reader whose slot was taken from it (it was judged dead and
    /// reaped): every call fails with [`RecvError::SlotLost`] from then on.
    lost_slot: Option<usize>,
    stats: ReaderStats,
    /// Counts not yet flushed into the slot.
    unaccounted: (u64, u64),
    /// The payload of the next or last record of a lossy reader, copied
    /// out of shared memory and validated (see [`Sample::payload`]).
    copy: Vec<u8>,
    /// The (shard, position) of the head whose payload `copy` holds, until
    /// it is delivered.
    copied: Option<(usize, u64)>,
    /// Whether the losses at the end of the stream were counted.
    end_counted: bool,
    last_idle_check: Instant,
    /// Per shard, the sequence number expected at the released position
    /// (`u64::MAX`: unknown), where [`Reader::rewind`] resumes.
    released_seq: Vec<u64>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("channel", &self.name)
            .field("opts", &self.opts)
            .field("generation", &self.map.geometry.generation)
            .field("slot", &self.slot.as_ref().map(|hold| hold.index))
            .field("stats", &self.stats)
            .finish()
    }
}

/// How a reader maps the channel: a lossy one makes do with read access.
fn access(opts: ReaderOptions) -> channel::Access {
    if opts.gated { channel::Access::Reader } else { channel::Access::LossyReader }
}

/// Claims a free slot, or else the slot of a reader that died without
/// detaching. Returns the slot and the CLAIMING owner word we put there.
fn claim_slot(map: &ChannelMap) -> Option<(usize, u64)> {
    let slots = &map.slots;
    let free = (0..slots.count).find_map(|i| {
        let owner = slots.owner(i);
        if slot_state::state_of(owner) != slot_state::FREE {
            return None;
        }
        slots.try_claim(i, owner).map(|claiming| (i, claiming))
    });
    if free.is_some() {
        return free;
    }
    // Judging a holder dead reads /proc, a wide window in which another
    // reader may take the slot over first: the claim compares the whole
    // owner word the holder was judged under (state and epoch), so only one
    // of us gets it, and never a slot that changed hands meanwhile.
    let taken = (0..slots.count).find_map(|i| {
        let snap = slots.snapshot(i);
        let dead = match snap.state {
            slot_state::LOSSY | slot_state::GATED => liveness::slot_holder_dead(&snap),
            // A claim takes microseconds: a CLAIMING slot without a
            // heartbeat for seconds lost its claimant before activation.
            slot_state::CLAIMING => liveness::claim_abandoned(&snap),
            _ => false,
        };
        if !dead {
            return None;
        }
        slots.try_claim(i, snap.owner).map(|claiming| (i, claiming))
    });
    if taken.is_some() {
        map.words.count_reaped();
    }
    taken
}

/// Claims a slot and places cursors for `opts` on `map`.
fn register(
    map: &ChannelMap,
    opts: ReaderOptions,
) -> Result<(Vec<CursorCore>, Option<SlotHold>), AttachError> {
    let slots = &map.slots;
    let me = liveness::own_identity();
    let corrupt = |shard: usize, c: Corrupt| AttachError::Corrupt {
        path: map.ring_path.clone(),
        what: format!("shard {shard} at position {}: {}", c.pos, c.what),
    };
    // Start position and the sequence number expected there (u64::MAX:
    // unknown, nothing counts as lost before the first record).
    let starts: Vec<(u64, u64)> = map
        .shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            match opts.start {
                StartAt::Oldest => shard.tail_pos().map(|tail| (tail, u64::MAX)),
                StartAt::Next => shard.end_snapshot(),
                StartAt::Latest => shard.latest_start(),
            }
            .map_err(|c| corrupt(i, c))
        })
        .collect::<Result<_, _>>()?;
    let mut positions: Vec<u64> = starts.iter().map(|&(pos, _)| pos).collect();
    let state = if opts.gated { slot_state::GATED } else { slot_state::LOSSY };
    // A claim that loses its slot before it is settled (someone else
    // changed it: only a party that misjudged us dead can) starts over.
    // Without write access to `.readers` a (lossy) reader takes no slot.
    let hold = loop {
        if !map.readers_writable {
            break None;
        }
        let Some((i, claiming)) = claim_slot(map) else { break None };
        let Ok(mut hold) = slots.fill(i, claiming, me, monotonic_ns(), liveness::realtime_ns(), &positions)
        else {
            continue;
        };
        if slots.activate(&mut hold, state, &map.words.readers).is_err() {
            continue;
        }
        if !opts.gated {
            break Some(hold);
        }
        let settled: Result<Vec<u64>, _> = (0..map.shards.len())
            .map(|shard| slots.settle_gated_start(&mut hold, shard, &map.shards[shard]))
            .collect();
        match settled {
            Ok(settled) => {
                positions = settled;
                break Some(hold);
            }
            Err(_) => {
                // A position swap failed with the owner word maybe still
                // ours (see `Reader::lose_slot`): give the GATED slot back
                // rather than leave it gating under our live pid.
                slots.free(&hold, monotonic_ns());
                continue;
            }
        }
    };
    if hold.is_none() && opts.gated {
        return Err(AttachError::NoReaderSlot { name: map.geometry.name.clone(), slots: slots.count as u32 });
    }
    let mut cursors: Vec<CursorCore> = map
        .shards
        .iter()
        .zip(positions.iter().zip(&starts))
        .map(|(shard, (&pos, &(start, seq)))| {
            // A gated start moved up to the tail no longer knows its sequence.
            let seq = if pos == start { seq } else { u64::MAX };
            CursorCore::new(shard.clone(), pos, seq, opts.gated)
        })
        .collect();
    // A file that turns out corrupt leaves no slot behind.
    let give_back = || {
        if let Some(hold) = &hold {
            slots.free(hold, monotonic_ns());
        }
    };
    for (i, cursor) in cursors.iter_mut().enumerate() {
        cursor.anchor().map_err(|c| corrupt(i, c)).inspect_err(|_| give_back())?;
    }
    Ok((cursors, hold))
}

impl Reader {
    /// Attaches to channel `name` in `bus`.
    pub fn attach(bus: &BusDir, name: &str, opts: ReaderOptions) -> Result<Self, AttachError> {
        let map = channel::attach(bus, name, access(opts))?;
        let (cursors, slot) = register(&map, opts)?;
        let heads = vec![None; cursors.len()];
        let released_seq = cursors.iter().map(CursorCore::next_seq).collect();
        Ok(Self {
            bus: bus.clone(),
            name: name.to_owned(),
            opts,
            map: Arc::new(map),
            cursors,
            heads,
            slot,
            lost_slot: None,
            stats: ReaderStats::default(),
            unaccounted: (0, 0),
            copy: Vec::new(),
            copied: None,
            end_counted: false,
            last_idle_check: Instant::now(),
            released_seq,
        })
    }

    /// Releases shard `point.shard` up to `point` (a reader with
    /// [`ReaderOptions::hold_until_released`]): the producer may overwrite
    /// the records below it. A point at or below what was released already,
    /// or of an older generation, changes nothing.
    pub fn release(&mut self, point: ReleasePoint) -> Result<(), RecvError> {
        if let Some(slot) = self.lost_slot {
            return Err(self.slot_lost_error(slot));
        }
        let shard = point.shard as usize;
        if point.generation != self.generation() || shard >= self.cursors.len() {
            return Ok(());
        }
        let Some(hold) = &mut self.slot else { return Ok(()) };
        if point.pos <= hold.released(shard) || point.pos > self.cursors[shard].position() {
            return Ok(());
        }
        if self.map.slots.release(hold, shard, point.pos, point.next_seq).is_err() {
            self.lose_slot();
            return Err(self.slot_lost_error(self.lost_slot.unwrap_or(0)));
        }
        self.released_seq[shard] = point.next_seq;
        Ok(())
    }

    /// Moves every shard back to where it was last released (a reader
    /// with [`ReaderOptions::hold_until_released`]): the records read since
    /// are delivered again. They are intact, as the gate kept the producer
    /// off them. A reader without a slot (lossy) does nothing.
    pub fn rewind(&mut self) -> Result<(), RecvError> {
        if let Some(slot) = self.lost_slot {
            return Err(self.slot_lost_error(slot));
        }
        let Some(hold) = &self.slot else { return Ok(()) };
        if !self.opts.gated {
            return Ok(());
        }
        for (shard, cursor) in self.cursors.iter_mut().enumerate() {
            let mem = self.map.shards[shard].clone();
            *cursor = CursorCore::new(mem, hold.released(shard), self.released_seq[shard], true);
            self.heads[shard] = None;
        }
        self.copied = None;
        self.end_counted = false;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Whether this reader gates the producer (it stops doing so if its
    /// process was judged dead and its slot reaped).
    pub fn is_gated(&self) -> bool {
        self.cursors.first().is_some_and(|c| c.gated)
    }

    /// The reader slot this reader holds in the channel's `.readers` file
    /// (as in [`crate::ReaderInfo::slot`]); `None` for a lossy reader that
    /// found none free or may not write `.readers`, and for a reader that
    /// lost its slot.
    pub fn slot(&self) -> Option<u32> {
        self.slot.as_ref().map(|hold| hold.index as u32)
    }

    /// Gives up a slot that is no longer ours where we left it. A lossy
    /// reader carries on without one (the slot only served introspection
    /// and the writer's hot window: it validates every record anyway and
    /// counts what it loses); a gated reader cannot keep its promise and
    /// fails from now on.
    fn lose_slot(&mut self) {
        let Some(hold) = self.slot.take() else { return };
        // The only write: a swap of the whole owner word, which fails if the
        // slot changed hands. It succeeds when someone else stored a
        // position but the word is still ours: left GATED under our live
        // pid, the slot would never be reaped and would hold a gate nobody
        // moves.
        self.map.slots.free(&hold, monotonic_ns());
        if hold.state() == slot_state::GATED {
            self.lost_slot = Some(hold.index);
        }
        for c in &mut self.cursors {
            c.gated = false;
        }
    }

    fn slot_lost_error(&self, slot: usize) -> RecvError {
        RecvError::SlotLost { name: self.name.clone(), slot: slot as u32 }
    }

    /// Generation of the producer files this reader is attached to.
    pub fn generation(&self) -> u64 {
        self.map.geometry.generation
    }

    pub fn shard_count(&self) -> u32 {
        self.map.geometry.shards
    }

    /// Data ring bytes per shard of the producer files attached to.
    pub fn shard_capacity(&self) -> u64 {
        self.map.geometry.capacity
    }

    pub fn state(&self) -> ChannelState {
        self.map.state()
    }

    /// Whether the producer process is alive: by its pid in our pid
    /// namespace, else by the heartbeat it refreshes every second (dead
    /// once silent for [`crate::FOREIGN_HEARTBEAT_TIMEOUT`]). `None` only
    /// for a producer in another pid namespace that never beat.
    pub fn producer_alive(&self) -> Option<bool> {
        liveness::producer_liveness(
            &self.map.geometry.producer_identity(),
            producer_heartbeat(&self.map.words.channel),
        )
    }

    /// Records published but not yet read, over all shards.
    pub fn backlog(&self) -> u64 {
        self.map
            .shards
            .iter()
            .zip(&self.cursors)
            .map(|(shard, c)| {
                let written = shard.counters().records_written;
                if c.next_seq() == u64::MAX {
                    u64::from(c.position() < shard.write_pos())
                } else {
                    written.saturating_sub(c.next_seq())
                }
            })
            // Saturating: the counters come from a file.
            .fold(0, u64::saturating_add)
    }

    fn flush_accounting(&mut self) {
        if let Some(hold) = &self.slot {
            let (received, lost) = std::mem::take(&mut self.unaccounted);
            if self.map.slots.account(hold, received, lost, monotonic_ns()).is_err() {
                self.lose_slot();
            }
        }
    }

    /// Peeks every shard and picks the record to deliver next: the one with
    /// the oldest timestamp among the shards that have one (each shard's own
    /// order is always kept).
    fn next_head(&mut self) -> Result<Option<(usize, Head)>, RecvError> {
        if let Some(hold) = &self.slot
            && !self.map.slots.owns(hold)
        {
            // Our slot was reaped (we were judged dead), and may belong to
            // another reader by now: never touch it again.
            self.lose_slot();
        }
        if let Some(slot) = self.lost_slot {
            return Err(self.slot_lost_error(slot));
        }
        loop {
            let mut best: Option<(usize, Head)> = None;
            for (shard, cursor) in self.cursors.iter_mut().enumerate() {
                if self.heads[shard].is_none() {
                    match cursor.peek() {
                        Ok(head) => self.heads[shard] = head,
                        // A gated reader whose gate someone else moved may
                        // read a newer lap: that is a lost slot, not a
                        // corrupt file.
                        Err(_)
                            if cursor.gated
                                && self.slot.as_ref().is_some_and(|h| !self.map.slots.holds(h, shard)) =>
                        {
                            self.lose_slot();
                            return Err(self.slot_lost_error(self.lost_slot.unwrap_or(0)));
                        }
                        Err(c) => {
                            return Err(RecvError::Corrupt {
                                name: self.name.clone(),
                                shard: shard as u32,
                                pos: c.pos,
                                what: c.what,
                            });
                        }
                    }
                }
                if let Some(head) = self.heads[shard]
                    && best.is_none_or(|(_, b)| head.timestamp_ns < b.timestamp_ns)
                {
                    best = Some((shard, head));
                }
            }
            let Some((shard, head)) = best else { return Ok(None) };
            let cursor = &self.cursors[shard];
            if cursor.gated {
                // Trust the record only while our gate is where we left it
                // (sync point V for gated readers, FORMAT.md §6.4): checked
                // after reading its header, and also catching a position
                // someone else stored while the owner word stayed ours.
                if let Some(hold) = &self.slot
                    && !self.map.slots.holds(hold, shard)
                {
                    let slot = hold.index;
                    self.lose_slot();
                    return Err(self.slot_lost_error(slot));
                }
                return Ok(Some((shard, head)));
            }
            if self.copied == Some((shard, head.pos)) {
                return Ok(Some((shard, head)));
            }
            // A lossy reader's record may be overwritten at any moment: it
            // gets a copy, made with atomic loads and validated after (sync
            // point V), which also proves the header peeked earlier intact.
            // A lapped copy is dropped; the cursor, still on the record,
            // finds out at its next peek and counts the loss.
            if cursor.copy_payload(&head, &mut self.copy) {
                self.copied = Some((shard, head.pos));
                return Ok(Some((shard, head)));
            }
            self.heads[shard] = None;
        }
    }

    /// Once the channel ended and every shard is drained: records lapped
    /// after the last one delivered, which no later record reports (a
    /// lapped cursor resumes at the tail, and nothing may follow it),
    /// count as lost (FORMAT.md §6.3, "Losses at the end").
    fn count_losses_at_end(&mut self) {
        if self.end_counted {
            return;
        }
        self.end_counted = true;
        let lost = self
            .map
            .shards
            .iter()
            .zip(&self.cursors)
            .filter(|(_, c)| c.next_seq() != u64::MAX)
            // Saturating: the counter comes from a file.
            .map(|(shard, c)| shard.counters().records_written.saturating_sub(c.next_seq()))
            .fold(0, u64::saturating_add);
        if lost != 0 {
            self.stats.lost = self.stats.lost.saturating_add(lost);
            self.unaccounted.1 = self.unaccounted.1.saturating_add(lost);
            self.flush_accounting();
        }
    }

    /// Whether the producer replaced, ended or (rarely checked) recreated
    /// the channel; reattaches on replacement.
    fn lifecycle(&mut self) -> Result<Option<Event<'_>>, RecvError> {
        let now = Instant::now();
        let state = self.map.state();
        let mut replaced = state == ChannelState::Replaced;
        if !replaced && now.duration_since(self.last_idle_check) >= IDLE_CHECK_EVERY {
            self.last_idle_check = now;
            self.flush_accounting();
            if let Some(slot) = self.lost_slot {
                return Err(self.slot_lost_error(slot));
            }
            replaced = !self.map.is_current() && std::fs::metadata(&self.map.ring_path).is_ok();
        }
        if replaced {
            let map = channel::attach(&self.bus, &self.name, access(self.opts))?;
            let opts = ReaderOptions { start: StartAt::Oldest, ..self.opts };
            let (mut cursors, slot) = register(&map, opts)?;
            if map.geometry.generation == self.generation() && cursors.len() == self.cursors.len() {
                // The same generation re-created (a restarted bridge): its
                // sequence continues ours, whatever the new file showed at
                // the moment we attached, so only a real jump counts.
                for (new, old) in cursors.iter_mut().zip(&self.cursors) {
                    if old.next_seq() != u64::MAX {
                        new.expect_seq(old.next_seq());
                    }
                }
            }
            if let Some(old) = self.slot.take() {
                self.map.slots.free(&old, monotonic_ns());
            }
            self.map = Arc::new(map);
            self.heads = vec![None; cursors.len()];
            self.copied = None;
            self.end_counted = false;
            self.released_seq = cursors.iter().map(CursorCore::next_seq).collect();
            self.cursors = cursors;
            self.slot = slot;
            self.stats.restarts += 1;
            return Ok(Some(Event::Restarted { generation: self.map.geometry.generation }));
        }
        if state == ChannelState::Ended {
            // ENDED is stored after the last publish: look once more.
            if self.cursors.iter_mut().all(|c| !c.has_data()) {
                self.count_losses_at_end();
                return Ok(Some(Event::Ended));
            }
        }
        Ok(None)
    }

    /// The next event, if one is ready now. Never blocks.
    pub fn try_recv(&mut self) -> Result<Option<Event<'_>>, RecvError> {
        if let Some((shard, head)) = self.next_head()? {
            self.heads[shard] = None;
            // `next_head` copied a lossy reader's payload into `self.copy`.
            let copied = self.copied.take().is_some();
            self.cursors[shard].advance(&head);
            self.stats.received += 1;
            self.stats.lost += head.lost;
            self.unaccounted.0 += 1;
            self.unaccounted.1 += head.lost;
            if self.unaccounted.0 >= ACCOUNT_EVERY || head.lost != 0 {
                self.flush_accounting();
                if let Some(slot) = self.lost_slot {
                    // Lost while accounting: the writer may be overwriting
                    // the record already, so it is not handed out.
                    return Err(self.slot_lost_error(slot));
                }
            }
            return Ok(Some(Event::Record(Sample { reader: self, shard, head, copied })));
        }
        self.lifecycle()
    }

    /// Whether `try_recv` would return something now.
    fn ready(&mut self) -> Result<bool, RecvError> {
        if self.next_head()?.is_some() {
            return Ok(true);
        }
        let state = self.map.state();
        if state != ChannelState::Live {
            return Ok(true);
        }
        if self.last_idle_check.elapsed() >= IDLE_CHECK_EVERY {
            self.last_idle_check = Instant::now();
            self.flush_accounting();
            if !self.map.is_current() && std::fs::metadata(&self.map.ring_path).is_ok() {
                // Let `lifecycle` see it right away.
                self.last_idle_check -= IDLE_CHECK_EVERY;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The next event, sleeping (futex, no spinning) up to `timeout` for
    /// one. `Ok(None)` on timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event<'_>>, RecvError> {
        let deadline = Instant::now() + timeout;
        while !self.ready()? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Self { map, cursors, .. } = self;
            if !map.readers_writable {
                // No waiter count to bump (it lives in `.readers`): the
                // writer would not wake us. Poll (FORMAT.md §6.5).
                std::thread::sleep(left.min(POLL_WITHOUT_WRITE_ACCESS));
                continue;
            }
            map.words.wait(left.min(MAX_SLEEP), || {
                cursors.iter_mut().any(|c| c.has_data())
                    || map.words.state() != crate::layout::channel_state::LIVE
            });
        }
        self.try_recv()
    }

    /// The next event, busy-polling up to `timeout` (lowest latency; burns a
    /// core, so never use it at real-time priority).
    pub fn recv_spin(&mut self, timeout: Duration) -> Result<Option<Event<'_>>, RecvError> {
        // The hot loop only peeks the shards; clocks and the channel's
        // lifecycle are looked at every few thousand spins.
        const SPINS_PER_CHECK: u32 = 4096;
        let mut deadline = None;
        let mut spins = 0u32;
        while self.next_head()?.is_none() {
            spins = spins.wrapping_add(1);
            if spins % SPINS_PER_CHECK == 0 {
                if self.ready()? {
                    break;
                }
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
            std::hint::spin_loop();
        }
        self.try_recv()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.flush_accounting();
        if let Some(hold) = &self.slot {
            // Only if it is still ours: a reaped slot may be another's now.
            self.map.slots.free(hold, monotonic_ns());
        }
    }
}

/// One record.
///
/// - For a **gated** reader the payload is borrowed in place from the shared
///   mapping (zero copy): the producer cannot overwrite it while the sample
///   lives, and it is released when the sample is dropped.
/// - For a **lossy** reader the payload is a private copy, made when the
///   record was received with one relaxed atomic load per 8-byte word and
///   validated afterwards against the shard's tail (sync point V in
///   FORMAT.md). A record the producer overwrote during the copy is never
///   delivered: the reader skips to the oldest retained record and counts
///   the loss ([`Sample::lost_before`]). Reading bytes in place that another
///   process may be writing would be a data race (undefined behaviour in
///   Rust's memory model, seqlock or not), so lossy readers never get a view
///   of shared memory.
pub struct Sample<'r> {
    reader: &'r mut Reader,
    shard: usize,
    head: Head,
    /// Whether the payload is `reader.copy` (lossy) rather than in place.
    copied: bool,
}

impl fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("shard", &self.shard)
            .field("seq", &self.head.seq)
            .field("kind", &self.head.kind)
            .field("len", &self.head.len)
            .finish()
    }
}

impl Sample<'_> {
    /// The record's bytes: in place for a gated reader, a validated copy
    /// for a lossy reader (see [`Sample`]).
    pub fn payload(&self) -> &[u8] {
        if self.copied { &self.reader.copy } else { self.reader.cursors[self.shard].payload(&self.head) }
    }

    pub fn kind(&self) -> u16 {
        self.head.kind
    }

    /// Sequence number within its shard (gapless per shard: gaps are losses).
    pub fn seq(&self) -> u64 {
        self.head.seq
    }

    /// The producer's timestamp (ns since the Unix epoch, unless the
    /// producer chose otherwise).
    pub fn timestamp_ns(&self) -> u64 {
        self.head.timestamp_ns
    }

    /// The shard (producer thread) that wrote it.
    pub fn shard(&self) -> u32 {
        self.shard as u32
    }

    /// Where a reader with [`ReaderOptions::hold_until_released`] may
    /// release this record's shard up to, once done with it (and with
    /// every record of the shard before it): [`Reader::release`].
    pub fn release_point(&self) -> ReleasePoint {
        ReleasePoint {
            shard: self.shard as u32,
            pos: self.head.end(),
            next_seq: self.head.seq + 1,
            generation: self.reader.generation(),
        }
    }

    /// Records of this shard lost (overwritten) right before this one.
    pub fn lost_before(&self) -> u64 {
        self.head.lost
    }

    /// Whether the payload is still intact. Always true for a lossy
    /// reader's copy (validated before delivery, and private). For a gated
    /// reader it is true as long as the reader still holds its slot where
    /// it left it: false only if the producer judged the reader dead and
    /// reaped its slot, or someone else stored a position in it (then the
    /// next call of the reader fails with [`RecvError::SlotLost`]).
    pub fn is_valid(&self) -> bool {
        let reader = &*self.reader;
        let cursor = &reader.cursors[self.shard];
        match &reader.slot {
            _ if self.copied => true,
            Some(hold) if cursor.gated => reader.map.slots.holds(hold, self.shard),
            _ if reader.lost_slot.is_some() => false,
            _ => cursor.still_valid(&self.head),
        }
    }
}

impl Drop for Sample<'_> {
    fn drop(&mut self) {
        let reader = &mut *self.reader;
        if reader.opts.hold_until_released && reader.opts.gated {
            // Released by `Reader::release` only.
            return;
        }
        if let Some(hold) = &mut reader.slot {
            let cursor = &reader.cursors[self.shard];
            if reader.map.slots.release(hold, self.shard, cursor.position(), cursor.next_seq()).is_err() {
                // Reaped, or someone else stored a position in our slot: it
                // is not ours any more (the next call says so).
                reader.lose_slot();
            }
        }
    }
}
