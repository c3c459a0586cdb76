//! Shared pieces of the shm-bus benchmarks: record stamping, the transports
//! under test (shm-bus and, with the `peers` feature, iceoryx2), the
//! one-way latency harness and the result types that `bench-report` reads.
//!
//! The same work is done per message on both transports: the producer
//! stamps a prepared record (a sequence number in its first 8 bytes, a
//! second stamp in its last 8), copies all of it into a loaned slot and
//! publishes it; the consumer reads both stamps in place.

pub mod futex_floor;
#[cfg(feature = "peers")]
pub mod iceoryx;
pub mod ingest;
#[cfg(feature = "peers")]
pub mod one_way;
pub mod results;
pub mod shm;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Record sizes of the throughput benchmark.
pub const THROUGHPUT_SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];

/// How long a consumer waits for a record before the run counts as hung
/// (a lossless transport never drops one).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The transports compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Transport {
    #[serde(rename = "shm-bus")]
    ShmBus,
    #[serde(rename = "iceoryx2")]
    Iceoryx2,
    /// Not a transport: the machine's floor for waking blocked readers
    /// ([`futex_floor`]), measured beside the two in the fan-out benchmark.
    #[serde(rename = "futex-floor")]
    FutexFloor,
}

impl Transport {
    /// The transports compared.
    pub const ALL: [Transport; 2] = [Transport::ShmBus, Transport::Iceoryx2];
    /// What the fan-out benchmark measures: the transports and the floor.
    pub const FANOUT: [Transport; 3] = [Transport::ShmBus, Transport::Iceoryx2, Transport::FutexFloor];

    pub fn name(self) -> &'static str {
        match self {
            Transport::ShmBus => "shm-bus",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::FutexFloor => "futex floor",
        }
    }
}

/// `64B`, `4KiB`, `1MiB`: labels used in benchmark ids and tables.
pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

/// Records a consumer may have outstanding: iceoryx2's subscriber buffer
/// size, and what the shm-bus ring is sized from (see [`shm::ring_capacity`]).
/// About 32 MiB of payload, within 32..=1024 records.
pub fn queue_depth(size: usize) -> usize {
    ((32 << 20) / size).clamp(32, 1024)
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process of the
/// host, so a receiver can age a timestamp written by another process.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Pins the calling thread to `core`. Panics if that fails: an unpinned
/// run would not measure what the tables say.
pub fn pin_to_core(core: usize) {
    assert!(core_affinity::set_for_current(core_affinity::CoreId { id: core }), "cannot pin to core {core}");
}

/// The two stamps of a record: its first and last 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamps {
    pub head: u64,
    pub tail: u64,
}

/// Smallest record that holds both stamps.
pub const MIN_RECORD: usize = 16;

impl Stamps {
    /// Writes the stamps into `record` (at least [`MIN_RECORD`] bytes).
    pub fn write(self, record: &mut [u8]) {
        let tail_at = record.len() - 8;
        record[..8].copy_from_slice(&self.head.to_le_bytes());
        record[tail_at..].copy_from_slice(&self.tail.to_le_bytes());
    }

    /// Reads the stamps of `record` (at least [`MIN_RECORD`] bytes).
    pub fn read(record: &[u8]) -> Self {
        let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        Self { head: word(&record[..8]), tail: word(&record[record.len() - 8..]) }
    }
}

/// A record of `size` bytes to stamp and copy: filled with a pattern so the
/// copy moves real (non-zero) data.
pub fn record_template(size: usize) -> Vec<u8> {
    assert!(size >= MIN_RECORD, "records need at least {MIN_RECORD} bytes, got {size}");
    (0..size).map(|i| i as u8).collect()
}

/// Producer side of a transport: copies whole records into shared memory.
pub trait Publish {
    /// Copies `record` into a fresh slot and makes it visible to readers.
    /// Lossless: waits while a reader's buffer is full.
    fn publish(&mut self, record: &[u8]);

    /// Makes every record handed to [`Publish::publish`] visible (for
    /// publishers that batch).
    fn flush(&mut self) {}
}

/// Consumer side of a transport.
pub trait Consume {
    /// Busy-polls for the next record and returns its stamps.
    fn next_spin(&mut self) -> Stamps;

    /// Sleeps until at least one record is ready, then hands the stamps of
    /// every ready record to `on_record`.
    fn drain_blocking(&mut self, on_record: &mut dyn FnMut(Stamps));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_at_both_ends() {
        let mut record = record_template(64);
        Stamps { head: 7, tail: u64::MAX - 1 }.write(&mut record);
        assert_eq!(Stamps::read(&record), Stamps { head: 7, tail: u64::MAX - 1 });
        assert_eq!(record[8..56], record_template(64)[8..56]);
    }

    #[test]
    fn labels() {
        assert_eq!(THROUGHPUT_SIZES.map(size_label), ["64B", "4KiB", "64KiB", "1MiB"]);
        assert_eq!(size_label(100), "100B");
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(queue_depth(64), 1024);
        assert_eq!(queue_depth(64 << 10), 512);
        assert_eq!(queue_depth(1 << 20), 32);
    }
}
