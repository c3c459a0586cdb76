//! Loom models of the shard ring protocol (built with `--cfg loom`).
//!
//! The real writer and cursor code ([`crate::ring`]) runs against an arena
//! of loom atomics instead of a mapped file; payloads are modelled as 8-byte
//! words so that loom sees every access. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shm-bus --test loom --release`.

use crate::layout::{self, READERS_HEADER_SIZE, reader_slot_size, slot_state};
use crate::ring::{
    Arena, ChannelWords, CursorCore, Head, NoSpace, Region, ShardMem, SlotHold, Slots, WriterCore,
};

/// Bytes of the model's data ring: room for three one-word records
/// (40 bytes each) before the writer must reclaim, so laps happen early.
pub const CAPACITY: u64 = 128;

/// The payload word of record `seq`: tells a torn or stale read apart.
pub fn payload_of(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

/// Bytes of the hot-window model's ring: four one-word records (40 bytes
/// each) fill the window, the fifth starts over, and the skipped part has
/// room for eight more.
pub const HOT_CAPACITY: u64 = 512;
/// The hot-window model's window (four records, the least a window is):
/// the writer starts over at the fifth record (offset 160) if the reader
/// has read the first two.
pub const HOT_WINDOW: u64 = 160;

/// A channel with one shard and one reader slot, in loom atomics.
#[derive(Clone, Debug)]
pub struct Model {
    shard: ShardMem,
    slots: Slots,
    words: ChannelWords,
    hot_window: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    pub fn new() -> Self {
        Self::with_ring(CAPACITY, 0)
    }

    /// A ring of `capacity` bytes whose writer has a hot window of
    /// `hot_window` bytes (0: none).
    pub fn with_ring(capacity: u64, hot_window: u64) -> Self {
        let slot_size = reader_slot_size(1) as usize;
        let channel = Region::whole(Arena::new(layout::channel_header::END.next_multiple_of(64)));
        let readers = Region::whole(Arena::new(READERS_HEADER_SIZE as usize + slot_size));
        let shard_header = Region::whole(Arena::new(layout::shard_header::END));
        let data = Region::whole(Arena::new(capacity as usize));
        Self {
            hot_window,
            shard: ShardMem { header: shard_header, data, capacity },
            slots: Slots {
                region: readers.sub(READERS_HEADER_SIZE as usize, slot_size),
                count: 1,
                slot_size,
                shards: 1,
            },
            words: ChannelWords { channel, readers: readers.sub(0, READERS_HEADER_SIZE as usize) },
        }
    }

    pub fn writer(&self) -> ModelWriter {
        ModelWriter(WriterCore::new(
            self.shard.clone(),
            self.slots.clone(),
            self.words.clone(),
            0,
            |_| false,
            self.hot_window,
            0,
        ))
    }

    /// A lossy reader starting at the oldest record.
    pub fn lossy_reader(&self) -> ModelReader {
        ModelReader {
            cursor: CursorCore::new(
                self.shard.clone(),
                self.shard.tail_pos().expect("a valid tail"),
                u64::MAX,
                false,
            ),
            slot: None,
            slots: self.slots.clone(),
            lost_slot: false,
        }
    }

    /// A gated reader registering in slot 0 (racing the writer), starting
    /// at the oldest record.
    pub fn gated_reader(&self) -> ModelReader {
        let (mut hold, _) = self.register(slot_state::GATED);
        let start =
            self.slots.settle_gated_start(&mut hold, 0, &self.shard).expect("nobody else writes the slot");
        self.reader_in_slot(start, hold, true)
    }

    /// A lossy reader registered in slot 0, starting at the oldest record:
    /// the writer never waits for it, but sees its position.
    pub fn registered_lossy_reader(&self) -> ModelReader {
        let (hold, start) = self.register(slot_state::LOSSY);
        self.reader_in_slot(start, hold, false)
    }

    /// Takes slot 0 (FREE) as `state` at the oldest record; returns the
    /// hold and that position.
    fn register(&self, state: u32) -> (SlotHold, u64) {
        let claiming = self.slots.try_claim(0, self.slots.owner(0)).expect("slot 0 is free");
        let start = self.shard.tail_pos().expect("a valid tail");
        let mut hold = self
            .slots
            .fill(0, claiming, Default::default(), 0, 0, &[start])
            .expect("nobody else claims slot 0");
        self.slots.activate(&mut hold, state, &self.words.readers).expect("nobody else claims slot 0");
        (hold, start)
    }

    fn reader_in_slot(&self, start: u64, hold: SlotHold, gated: bool) -> ModelReader {
        ModelReader {
            cursor: CursorCore::new(self.shard.clone(), start, u64::MAX, gated),
            slot: Some(hold),
            slots: self.slots.clone(),
            lost_slot: false,
        }
    }

    /// The owner word of slot 0 (state and claim epoch).
    pub fn owner(&self) -> u64 {
        self.slots.owner(0)
    }

    /// Reaps slot 0 as a writer does that judged its holder dead: judged
    /// under the owner word `judged` (read before the liveness check), so
    /// it fails if the slot changed hands since.
    pub fn reap(&self, judged: u64) -> bool {
        self.slots.reap(0, judged)
    }

    /// Registers a gated reader in slot 0 as `Reader::attach` does: a FREE
    /// slot, or one whose holder is dead. `dead` is the owner word of the
    /// one holder this model's liveness check calls dead (the real check
    /// reads the identity stored under the word it loaded). `None` when the
    /// slot is taken by a live reader. (The identity loads are left out:
    /// the model judges by the word alone.)
    pub fn try_register_gated(&self, dead: u64) -> Option<ModelReader> {
        let seen = self.slots.owner(0);
        let state = slot_state::state_of(seen);
        if state != slot_state::FREE && seen != dead {
            return None;
        }
        let claiming = self.slots.try_claim(0, seen)?;
        let start = self.shard.tail_pos().expect("a valid tail");
        let mut hold = self.slots.fill(0, claiming, Default::default(), 0, 0, &[start]).ok()?;
        self.slots.activate(&mut hold, slot_state::GATED, &self.words.readers).ok()?;
        let start = self.slots.settle_gated_start(&mut hold, 0, &self.shard).ok()?;
        Some(self.reader_in_slot(start, hold, true))
    }

    /// Counters of the shard: (start-overs, skips ahead).
    pub fn hot_window_counts(&self) -> (u64, u64) {
        let c = self.shard.counters();
        (c.start_over_count, c.skip_ahead_count)
    }
}

/// The model's writer.
#[derive(Debug)]
pub struct ModelWriter(WriterCore);

impl ModelWriter {
    /// Writes and publishes record `seq` (one payload word). `false` when a
    /// gated reader holds the space.
    pub fn try_send(&mut self) -> bool {
        match self.0.reserve(8) {
            Ok(r) => {
                let seq = self.0.next_seq();
                self.0.write_payload_word(&r, 0, payload_of(seq));
                self.0.commit(r, 8, 1, seq);
                self.0.publish();
                true
            }
            Err(NoSpace::Gated { .. }) => false,
        }
    }
}

/// What a model reader got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Got {
    pub seq: u64,
    /// Records lost (lapped) right before this one.
    pub lost: u64,
    /// Whether the record was still intact after its payload was read (a
    /// lossy reader drops it otherwise), as `Sample::is_valid` says.
    pub valid: bool,
}

/// The model's reader.
#[derive(Debug)]
pub struct ModelReader {
    cursor: CursorCore,
    slot: Option<SlotHold>,
    slots: Slots,
    /// A gated reader whose slot was taken from it (the real reader fails
    /// with `SlotLost` from then on).
    lost_slot: bool,
}

impl ModelReader {
    /// Reads the next record, if one is published. Panics if a record that
    /// validates carries a payload or header that is not its own. A gated
    /// reader that finds its slot taken (before or after reading) reports
    /// no record and remembers it ([`ModelReader::lost_slot`]), as the real
    /// reader fails with `SlotLost`.
    pub fn try_recv(&mut self) -> Option<Got> {
        if self.lost_slot {
            return None;
        }
        let head: Head = match self.cursor.peek() {
            Ok(head) => head?,
            // A gated reader whose gate someone else moved may read a newer
            // lap's header: that is a lost slot, not corrupt data.
            Err(_) if self.cursor.gated && !self.holds() => {
                self.lost_slot = true;
                return None;
            }
            Err(corrupt) => panic!("model data is never corrupt: {corrupt:?}"),
        };
        let word = self.cursor.payload_word(&head, 0);
        let valid = if self.cursor.gated { self.holds() } else { self.cursor.still_valid(&head) };
        if self.cursor.gated && !valid {
            self.lost_slot = true;
            return None;
        }
        self.cursor.advance(&head);
        if let Some(hold) = &mut self.slot
            && self.slots.release(hold, 0, self.cursor.position(), self.cursor.next_seq()).is_err()
        {
            self.lost_slot = self.cursor.gated;
            self.slot = None;
        }
        if valid {
            assert_eq!(word, payload_of(head.seq), "a validated record had a torn or stale payload");
            assert_eq!(head.timestamp_ns, head.seq, "a validated record had a torn header");
        }
        Some(Got { seq: head.seq, lost: head.lost, valid })
    }

    /// Whether our slot still gates where we left it (`Sample::is_valid` of
    /// a gated reader).
    fn holds(&self) -> bool {
        self.slot.as_ref().is_some_and(|hold| self.slots.holds(hold, 0))
    }

    /// Whether this gated reader found its slot taken.
    pub fn lost_slot(&self) -> bool {
        self.lost_slot
    }
}
