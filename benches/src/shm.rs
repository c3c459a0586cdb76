//! shm-bus as a benchmark transport: a one-shard channel in a private bus
//! directory, read by gated (lossless) readers.

use std::io;
use std::path::Path;

use shm_bus::{
    AttachError, BusDir, ChannelOptions, CreateError, Event, Producer, Reader, ReaderOptions, ReserveError,
    ShardWriter,
};

use crate::{Consume, Publish, STALL_TIMEOUT, Stamps, queue_depth};

/// Record kind used for every benchmark record.
const KIND: u16 = 1;
/// Bytes of a record header in the ring (FORMAT.md).
const RECORD_HEADER: usize = 32;

/// A bus directory under `/dev/shm` that exists for one run and is removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    dir: tempfile::TempDir,
}

impl PrivateBus {
    pub fn new() -> io::Result<Self> {
        Ok(Self { dir: tempfile::Builder::new().prefix("ringest-bench-").tempdir_in("/dev/shm")? })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn bus(&self) -> BusDir {
        BusDir::new(self.dir.path())
    }
}

/// Ring bytes for records of `size`: the largest power of two that holds
/// at most [`queue_depth`] records, so the ring never buffers more records
/// than iceoryx2's subscriber buffer does.
pub fn ring_capacity(size: usize) -> u64 {
    let bytes = (queue_depth(size) * (size.next_multiple_of(8) + RECORD_HEADER)) as u64;
    1 << bytes.ilog2()
}

/// The producer of a channel, publishing every `batch` records.
#[derive(Debug)]
pub struct ShmPublisher {
    // Declared before `producer`: the writer publishes what it holds when
    // dropped, before the producer marks the channel ended.
    writer: ShardWriter,
    producer: Producer,
    batch: usize,
    unpublished: usize,
}

impl ShmPublisher {
    /// Creates `channel` in `bus` with a ring of `capacity` bytes (see
    /// [`ring_capacity`]) and shm-bus's default options otherwise.
    pub fn create(bus: &BusDir, channel: &str, capacity: u64, batch: usize) -> Result<Self, CreateError> {
        Self::create_with(bus, channel, ChannelOptions { capacity, ..ChannelOptions::default() }, batch)
    }

    /// Creates `channel` with `opts`.
    pub fn create_with(
        bus: &BusDir,
        channel: &str,
        opts: ChannelOptions,
        batch: usize,
    ) -> Result<Self, CreateError> {
        let producer = Producer::create(bus, channel, opts)?;
        let writer = producer.shard(0)?;
        Ok(Self { writer, producer, batch, unpublished: 0 })
    }

    pub fn channel(&self) -> &str {
        self.producer.name()
    }
}

impl Publish for ShmPublisher {
    fn publish(&mut self, record: &[u8]) {
        loop {
            match self.writer.reserve(record.len()) {
                Ok(mut slot) => {
                    slot.buf().copy_from_slice(record);
                    slot.commit(record.len(), KIND);
                    break;
                }
                // A gated reader still holds the space: retry at once, as
                // iceoryx2's publisher does when a subscriber buffer is full.
                Err(ReserveError::Full { .. }) => std::hint::spin_loop(),
                Err(e) => panic!("shm-bus reserve failed: {e}"),
            }
        }
        self.unpublished += 1;
        if self.unpublished == self.batch {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.writer.publish();
        self.unpublished = 0;
    }
}

/// A gated reader of a channel.
#[derive(Debug)]
pub struct ShmConsumer {
    reader: Reader,
}

impl ShmConsumer {
    /// Attaches to `channel`; it sees records published from now on.
    pub fn attach(bus: &BusDir, channel: &str) -> Result<Self, AttachError> {
        Ok(Self { reader: Reader::attach(bus, channel, ReaderOptions::gated())? })
    }
}

impl Consume for ShmConsumer {
    fn next_spin(&mut self) -> Stamps {
        match self.reader.recv_spin(STALL_TIMEOUT).expect("shm-bus receive failed") {
            Some(Event::Record(sample)) => Stamps::read(sample.payload()),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn drain_blocking(&mut self, on_record: &mut dyn FnMut(Stamps)) {
        let mut timeout = STALL_TIMEOUT;
        loop {
            let stamps = match self.reader.recv_timeout(timeout).expect("shm-bus receive failed") {
                Some(Event::Record(sample)) => Stamps::read(sample.payload()),
                None if timeout.is_zero() => return,
                other => panic!("expected a record, got {other:?}"),
            };
            on_record(stamps);
            // Then take whatever else is ready without sleeping again.
            timeout = std::time::Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_holds_at_most_the_queue_depth() {
        for size in crate::THROUGHPUT_SIZES {
            let records = ring_capacity(size) / (size + RECORD_HEADER) as u64;
            assert!(records <= queue_depth(size) as u64, "{size}: {records}");
            assert!(records >= queue_depth(size) as u64 / 2 - 1, "{size}: {records}");
        }
    }

    #[test]
    fn records_cross_a_private_bus() {
        let bus = PrivateBus::new().unwrap();
        let mut publisher = ShmPublisher::create(&bus.bus(), "t", ring_capacity(64), 2).unwrap();
        let mut consumer = ShmConsumer::attach(&bus.bus(), publisher.channel()).unwrap();
        let mut record = crate::record_template(64);
        for seq in 0..3 {
            Stamps { head: seq, tail: seq }.write(&mut record);
            publisher.publish(&record);
        }
        publisher.flush();
        let mut seen = Vec::new();
        consumer.drain_blocking(&mut |s| seen.push(s.head));
        assert_eq!(seen, [0, 1, 2]);
    }
}
