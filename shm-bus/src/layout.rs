//! The byte layout of a channel's two files, as constants.
//!
//! `FORMAT.md` in this crate documents the same layout for readers written in
//! other languages. [`crate::ring`] accesses shared words only through these
//! offsets (and checks their alignment at compile time), and the Python
//! reader written from FORMAT.md is tested against this crate, so code and
//! document cannot drift apart unnoticed.
//!
//! A channel `a/b` in bus directory `D` is two files:
//! - `D/a/b.ring`: the channel header page, then one shard per producer
//!   thread (a shard header page followed by the shard's data ring). Only the
//!   producer writes it; readers map it read-only.
//! - `D/a/b.readers`: the readers header, then one slot per attached reader.
//!   Readers write their own slot; the producer reads the slots to gate.

/// First 8 bytes of a `.ring` file.
pub const RING_MAGIC: [u8; 8] = *b"RNGSTBUS";
/// First 8 bytes of a `.readers` file.
pub const READERS_MAGIC: [u8; 8] = *b"RNGSTRDR";
/// Layout version; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 2;

/// Size of the channel header and of each shard header: one page, so every
/// data ring starts page aligned.
pub const PAGE: u64 = 4096;
/// Size of the readers file header.
pub const READERS_HEADER_SIZE: u64 = 256;

/// Bytes of a record header in the data ring.
pub const RECORD_HEADER: u64 = 32;
/// Records start, and payloads are padded, to this alignment.
pub const RECORD_ALIGN: u64 = 8;
/// `kind` of a padding record that fills the end of the ring so that the
/// next record starts at offset 0 (records never wrap).
pub const KIND_PADDING: u16 = 0xFFFF;

/// Most shards (producer threads) one channel can have.
pub const MAX_SHARDS: u32 = 64;
/// Most reader slots one channel can have.
pub const MAX_READER_SLOTS: u32 = 1024;
/// Smallest and largest data ring per shard. At most 4 GiB, so that every
/// record and padding length fits the header's 32-bit length.
pub const MIN_CAPACITY: u64 = 4096;
pub const MAX_CAPACITY: u64 = 1 << 32;
/// Largest valid ring position: a reader treats a larger `write_pos`,
/// `tail_pos` or `last_record_pos` as corrupt, so that stepping over a
/// record never overflows. (Positions grow by the bytes written: at
/// 100 GB/s this is reached after five years.)
pub const MAX_POSITION: u64 = u64::MAX - 2 * MAX_CAPACITY;
/// Longest channel name, in bytes.
pub const MAX_NAME: usize = 255;

/// `ChannelHeader.state` values.
pub mod channel_state {
    /// A producer owns the channel and may still write.
    pub const LIVE: u32 = 1;
    /// The producer ended gracefully: no more records will come.
    pub const ENDED: u32 = 2;
    /// A newer producer replaced this file; readers must reattach.
    pub const REPLACED: u32 = 3;
}

/// `ReaderSlot.state` values: the low 32 bits of a slot's owner word.
pub mod slot_state {
    pub const FREE: u32 = 0;
    /// Being filled in by a reader that just claimed it.
    pub const CLAIMING: u32 = 1;
    /// A lossy reader: visible to introspection; the producer never waits
    /// for it, but keeps its hot window from lapping it (FORMAT.md §6.1).
    pub const LOSSY: u32 = 2;
    /// A gated (lossless) reader: the producer never overwrites what it has
    /// not released.
    pub const GATED: u32 = 3;

    /// A slot's owner word: `state` in the low 32 bits, the claim epoch in
    /// the high 32. Every claim bumps the epoch, so the word names one
    /// holder: a compare-and-swap against a word seen earlier fails once
    /// the slot changed hands, however often.
    pub const fn owner_word(state: u32, epoch: u32) -> u64 {
        state as u64 | (epoch as u64) << 32
    }

    /// The state part of an owner word.
    pub const fn state_of(owner: u64) -> u32 {
        owner as u32
    }

    /// The claim-epoch part of an owner word.
    pub const fn epoch_of(owner: u64) -> u32 {
        (owner >> 32) as u32
    }
}

/// Byte offsets inside the channel header (file offset 0).
pub mod channel_header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_SIZE: usize = 12;
    pub const SHARD_COUNT: usize = 16;
    pub const READER_SLOTS: usize = 20;
    pub const SHARD_CAPACITY: usize = 24;
    pub const SHARD_STRIDE: usize = 32;
    pub const FILE_SIZE: usize = 40;
    pub const GENERATION: usize = 48;
    pub const PRODUCER_PID: usize = 56;
    pub const PRODUCER_START_TIME: usize = 64;
    pub const CREATED_REALTIME_NS: usize = 72;
    pub const STATE: usize = 80;
    pub const NOTIFY: usize = 84;
    pub const NAME_LEN: usize = 88;
    pub const PRODUCER_PID_NS: usize = 96;
    /// `CLOCK_MONOTONIC` ns of the producer's last sign of life (a shared
    /// word): judges a producer in another pid namespace.
    pub const PRODUCER_HEARTBEAT_NS: usize = 104;
    pub const NAME: usize = 128;
    pub const END: usize = NAME + super::MAX_NAME + 1;
}

/// Byte offsets inside a shard header (at `PAGE + i * shard_stride`).
pub mod shard_header {
    /// Published end: every record below it is committed. Producer line.
    pub const WRITE_POS: usize = 0;
    /// Oldest position that lossy readers may still read. Own line.
    pub const TAIL_POS: usize = 64;
    pub const RECORDS_WRITTEN: usize = 128;
    pub const BYTES_WRITTEN: usize = 136;
    pub const LAST_RECORD_POS: usize = 144;
    pub const FULL_COUNT: usize = 152;
    pub const PUBLISH_COUNT: usize = 160;
    /// Hot-window start-overs (padding records written to start over early).
    pub const START_OVER_COUNT: usize = 168;
    /// Skips ahead into the inside of an earlier start-over's padding.
    pub const SKIP_AHEAD_COUNT: usize = 176;
    /// Of `BYTES_WRITTEN`, the bytes the producer counts as payload (0 from
    /// producers older than this field).
    pub const PAYLOAD_BYTES: usize = 184;
    pub const END: usize = 192;
}

/// Byte offsets inside a record header (at `data + (pos & (capacity - 1))`).
pub mod record_header {
    /// The record's ring position: a stamp that tells a live record from a
    /// stale one left by an earlier lap.
    pub const POS: usize = 0;
    /// Payload length (u32), then kind (u16), then flags (u16): one u64 word.
    pub const LEN_KIND_FLAGS: usize = 8;
    pub const SEQ: usize = 16;
    pub const TIMESTAMP_NS: usize = 24;
}

/// Byte offsets inside the readers header (file offset 0 of `.readers`).
pub mod readers_header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_SIZE: usize = 12;
    pub const SLOT_COUNT: usize = 16;
    pub const SLOT_SIZE: usize = 20;
    pub const SHARD_COUNT: usize = 24;
    pub const GENERATION: usize = 32;
    /// Bumped by every gated registration (own cache line).
    pub const REGISTRATIONS: usize = 64;
    /// Number of readers blocked in a futex wait (own cache line).
    pub const WAITERS: usize = 128;
    /// Reader slots freed because their holder died (by the producer or by
    /// a reader taking the slot over): lives here because readers must be
    /// able to write it.
    pub const REAPED_READERS: usize = 192;
    pub const END: usize = 200;
}

/// Byte offsets inside a reader slot (at `READERS_HEADER_SIZE + i * slot_size`).
pub mod reader_slot {
    /// The owner word (u64): state and claim epoch (see
    /// [`super::slot_state::owner_word`]).
    pub const OWNER: usize = 0;
    pub const START_TIME: usize = 8;
    pub const PID_NS: usize = 16;
    pub const HEARTBEAT_NS: usize = 24;
    pub const LOST: usize = 32;
    pub const RECEIVED: usize = 40;
    pub const ATTACHED_REALTIME_NS: usize = 48;
    /// The holder's pid (u32; moved here from offset 4 in version 2, where
    /// the owner word's epoch now lives).
    pub const PID: usize = 56;
    /// Per shard: `position` (u64) then `next_seq` (u64).
    pub const SHARDS: usize = 64;
    pub const PER_SHARD: usize = 16;
}

/// Bytes one reader slot takes for `shards` shards, a whole number of cache
/// lines so that two readers never share a line.
pub const fn reader_slot_size(shards: u32) -> u64 {
    let raw = reader_slot::SHARDS as u64 + reader_slot::PER_SHARD as u64 * shards as u64;
    raw.div_ceil(64) * 64
}

/// Total size of a record with `len` payload bytes.
pub const fn record_size(len: u64) -> u64 {
    RECORD_HEADER + len.next_multiple_of(RECORD_ALIGN)
}

/// Largest payload a shard of `capacity` bytes accepts. Half the ring, so
/// that padding to the wrap never needs more than the whole ring.
pub const fn max_payload(capacity: u64) -> u64 {
    capacity / 2 - RECORD_HEADER
}

/// Size of a `.ring` file.
pub const fn ring_file_size(shards: u32, capacity: u64) -> u64 {
    PAGE + shards as u64 * (PAGE + capacity)
}

/// Size of a `.readers` file.
pub const fn readers_file_size(shards: u32, slots: u32) -> u64 {
    READERS_HEADER_SIZE + slots as u64 * reader_slot_size(shards)
}
