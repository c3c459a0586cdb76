//! Loom models of the shard ring protocol (built with `--cfg loom`).
//!
//! The real writer and cursor code ([`crate::ring`]) runs against an arena
//! of loom atomics instead of a mapped file; payloads are modelled as 8-byte
//! words so that loom sees every access. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shm-bus --test loom --release`.

use crate::layout::{self, READERS_HEADER_SIZE, reader_slot_size, slot_state};
use crate::ring::{Arena, ChannelWords, CursorCore, Head, NoSpace, Region, ShardMem, Slots, WriterCore};

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
        }
    }

    /// A gated reader registering in slot 0 (racing the writer), starting
    /// at the oldest record.
    pub fn gated_reader(&self) -> ModelReader {
        self.register(slot_state::GATED);
        let start = self.slots.settle_gated_start(0, 0, &self.shard);
        self.reader_in_slot(start, true)
    }

    /// A lossy reader registered in slot 0, starting at the oldest record:
    /// the writer never waits for it, but sees its position.
    pub fn registered_lossy_reader(&self) -> ModelReader {
        let start = self.register(slot_state::LOSSY);
        self.reader_in_slot(start, false)
    }

    /// Takes slot 0 as `state` at the oldest record; returns that position.
    fn register(&self, state: u32) -> u64 {
        assert!(self.slots.try_claim(0, slot_state::FREE));
        let start = self.shard.tail_pos().expect("a valid tail");
        self.slots.fill(0, Default::default(), 0, 0, &[start]);
        self.slots.activate(0, state, &self.words.readers);
        start
    }

    fn reader_in_slot(&self, start: u64, gated: bool) -> ModelReader {
        ModelReader {
            cursor: CursorCore::new(self.shard.clone(), start, u64::MAX, gated),
            slot: Some(0),
            slots: self.slots.clone(),
        }
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
    /// lossy reader drops it otherwise).
    pub valid: bool,
}

/// The model's reader.
#[derive(Debug)]
pub struct ModelReader {
    cursor: CursorCore,
    slot: Option<usize>,
    slots: Slots,
}

impl ModelReader {
    /// Reads the next record, if one is published. Panics if a record that
    /// validates carries a payload or header that is not its own.
    pub fn try_recv(&mut self) -> Option<Got> {
        let head: Head = self.cursor.peek().expect("model data is never corrupt")?;
        let word = self.cursor.payload_word(&head, 0);
        let valid = self.cursor.still_valid(&head);
        self.cursor.advance(&head);
        if let Some(slot) = self.slot {
            self.slots.release(slot, 0, self.cursor.position(), self.cursor.next_seq());
        }
        if valid {
            assert_eq!(word, payload_of(head.seq), "a validated record had a torn or stale payload");
            assert_eq!(head.timestamp_ns, head.seq, "a validated record had a torn header");
        } else {
            assert!(!self.cursor.gated, "a gated reader's record was overwritten");
        }
        Some(Got { seq: head.seq, lost: head.lost, valid })
    }
}
