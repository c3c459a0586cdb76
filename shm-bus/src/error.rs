//! Error types, one per operation.

use std::io;
use std::path::PathBuf;

/// Creating a channel (the producer side) failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid options for channel {name}: {reason}")]
    InvalidOptions { name: String, reason: String },
    #[error("channel {name} is owned by a live producer (pid {pid}): {}", path.display())]
    Busy { name: String, pid: u32, path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("shard {shard} of channel {name} is already taken or does not exist")]
    ShardTaken { name: String, shard: u32 },
    /// A directory of the bus could let another user swap or plant files.
    #[error("bus directory {} is not safe to create channels in: {reason}", path.display())]
    UntrustedDirectory { path: PathBuf, reason: String },
}

/// Attaching to an existing channel (a reader, or introspection) failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no channel {name} (no {})", path.display())]
    NotFound { name: String, path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{} is not a shm-bus file (magic {found:02x?})", path.display())]
    BadMagic { path: PathBuf, found: [u8; 8] },
    #[error("{} has format version {found}, this build reads version {expected}", path.display())]
    BadVersion { path: PathBuf, found: u32, expected: u32 },
    #[error("{} is truncated: {actual} bytes, its header says {expected}", path.display())]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    #[error("{} is corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("channel {name} has no free reader slot (all {slots} taken by live readers)")]
    NoReaderSlot { name: String, slots: u32 },
    #[error("channel {name} is being replaced by a new producer and did not settle in time")]
    NotSettled { name: String },
    /// The file is a symbolic link, or belongs to a user this reader does
    /// not trust (see [`crate::BusDir::trust_uid`]).
    #[error("{} is not trusted: {reason}", path.display())]
    Untrusted { path: PathBuf, reason: String },
}

/// A reservation could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// A live gated reader (pid `reader_pid`) has not released the space.
    /// Nothing was written; retry later.
    #[error("shard {shard} is full: gated reader pid {reader_pid} has not released {needed} bytes")]
    Full { shard: u32, needed: u64, reader_pid: u32 },
    #[error("record of {len} bytes exceeds the maximum of {max} for this channel")]
    TooLarge { len: u64, max: u64 },
}

/// Receiving failed. Lapping and producer restarts are not errors (see
/// [`crate::Event`] and [`crate::Sample::lost_before`]).
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("channel {name} shard {shard} is corrupt at position {pos}: {what}")]
    Corrupt { name: String, shard: u32, pos: u64, what: String },
    /// A gated reader lost its reader slot: the producer judged its process
    /// dead (e.g. a reader in another pid namespace silent for
    /// [`crate::FOREIGN_HEARTBEAT_TIMEOUT`]) and reaped the slot, which
    /// another reader may hold by now; or someone else stored a position
    /// in it. Records this reader had not read may have been overwritten,
    /// so it cannot stay lossless: it gives the slot up (a swap that fails
    /// if the slot changed hands), never touches it otherwise and fails
    /// every call; attach anew.
    #[error(
        "gated reader of channel {name} lost its reader slot {slot} (judged dead and reaped, or its position moved by another): records may have been overwritten; attach again"
    )]
    SlotLost { name: String, slot: u32 },
    #[error("reattaching after a producer restart: {0}")]
    Reattach(#[from] AttachError),
}
