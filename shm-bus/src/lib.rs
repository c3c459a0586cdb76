//! `shm-bus`: named shared-memory channels between one producer process and
//! any number of reader processes.
//!
//! - A channel is two files in a bus directory (default `/dev/shm/ringest`,
//!   or `$RINGEST_BUS`): a `.ring` file the producer writes and readers map
//!   read-only, and a `.readers` file where readers keep their positions.
//!   The byte layout is in `FORMAT.md`.
//! - The producer writes through one [`ShardWriter`] per thread (a single
//!   writer per shard, no compare-and-swap on the hot path): reserve space,
//!   fill it in place (for example with `recv(2)`), commit, and publish a
//!   batch with one release store.
//! - A [`Reader`] sees all shards as one stream and gets each record as one
//!   contiguous slice: zero-copy for gated readers, which are lossless and
//!   make the producer report [`ReserveError::Full`] instead of
//!   overwriting; a validated copy for lossy readers, which never slow the
//!   producer and count what they lose (see [`Sample`]).
//! - Dead readers stop gating within a second (pid liveness, no daemon);
//!   readers follow producer restarts; [`list_channels`] shows it all.
//!
//! This crate depends on no async runtime: a consumer links it alone.

#![deny(unsafe_code)]

#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod introspect;
pub mod layout;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
mod producer;
#[cfg(not(loom))]
mod reader;
#[allow(unsafe_code)]
mod ring;

#[cfg(not(loom))]
pub use channel::{
    BUS_ENV, BusDir, ChannelOptions, ChannelState, DEFAULT_BUS_DIR, DEFAULT_HOT_WINDOW, TRUST_ENV,
    validate_name,
};
#[cfg(not(loom))]
pub use error::{AttachError, CreateError, RecvError, ReserveError};
#[cfg(not(loom))]
pub use introspect::{ChannelInfo, ChannelListing, ReaderInfo, ShardInfo, channel_info, list_channels};
#[cfg(not(loom))]
pub use liveness::FOREIGN_HEARTBEAT_TIMEOUT;
#[cfg(not(loom))]
pub use producer::{PendingRecord, Producer, Reservation, ShardWriter};
#[cfg(not(loom))]
pub use reader::{Event, Reader, ReaderOptions, ReaderStats, ReleasePoint, Sample, StartAt};
#[cfg(not(loom))]
pub use ring::realtime_ns;

#[cfg(loom)]
#[doc(hidden)]
pub mod loom_model;
