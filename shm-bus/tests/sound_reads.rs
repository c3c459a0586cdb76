//! Lossy readers never see shared memory the producer may be overwriting:
//! they get a copy made with atomic loads and validated before delivery
//! (sync point V), which the producer lapping them afterwards cannot change.
//! Gated readers keep the zero-copy view (nobody writes what they hold).

mod common;

use shm_bus::layout;
use shm_bus::{ChannelOptions, Event, Producer, Reader, ReaderOptions, StartAt};

fn small(capacity: u64) -> ChannelOptions {
    ChannelOptions { shards: 1, capacity, reader_slots: 4, ..Default::default() }
}

/// A lossy sample held while the producer laps the reader keeps its bytes:
/// before the copy-out, `payload()` was a view of the ring and changed
/// under the caller (and reading it was a data race).
#[test]
fn a_lossy_sample_held_across_a_lap_keeps_its_bytes() {
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "held", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "held", ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    let record = |seq: u64| seq.to_le_bytes().repeat(8);
    writer.send(1, &record(0)).unwrap();
    match reader.try_recv().unwrap() {
        Some(Event::Record(sample)) => {
            assert_eq!(sample.payload(), &record(0)[..]);
            // Three laps of a 4 KiB ring (96-byte records) while we hold it.
            for seq in 1..128u64 {
                writer.send(1, &record(seq)).unwrap();
            }
            assert_eq!(sample.payload(), &record(0)[..], "the held payload changed");
            assert!(sample.is_valid());
        }
        other => panic!("{other:?}"),
    }
    // The reader then learns what it lost, and every record it gets is whole.
    let mut last = 0;
    while let Some(Event::Record(sample)) = reader.try_recv().unwrap() {
        assert_eq!(sample.payload(), &record(sample.seq())[..]);
        assert_eq!(sample.seq(), last + 1 + sample.lost_before());
        last = sample.seq();
    }
    assert_eq!(last, 127);
}

/// Records overwritten while a lossy reader copies them are never
/// delivered: a writer thread laps a slow reader over and over, and every
/// record delivered is intact and accounted (received + lost = written).
#[test]
fn a_lapped_lossy_reader_delivers_only_whole_records() {
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "race", small(8192)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "race", ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    const RECORDS: u64 = 20_000;
    // 1 KiB records: eight fit the ring, so copies often race the writer.
    let record = |seq: u64| seq.to_le_bytes().repeat(128);
    std::thread::scope(|s| {
        s.spawn(|| {
            for seq in 0..RECORDS {
                writer.send(1, &record(seq)).unwrap();
            }
            producer.end();
        });
        let (mut received, mut lost, mut last) = (0u64, 0u64, None);
        let deadline = std::time::Instant::now() + common::PATIENCE;
        loop {
            assert!(std::time::Instant::now() < deadline, "stuck");
            match reader.recv_timeout(std::time::Duration::from_millis(100)).unwrap() {
                Some(Event::Record(sample)) => {
                    assert!(
                        sample.payload() == record(sample.seq()),
                        "a torn record was delivered (seq {})",
                        sample.seq()
                    );
                    assert!(sample.is_valid());
                    received += 1;
                    lost += sample.lost_before();
                    last = Some(sample.seq());
                }
                Some(Event::Ended) => break,
                _ => {}
            }
        }
        assert_eq!(last, Some(RECORDS - 1));
        // Attached before the first record: every record is accounted.
        assert_eq!(received + lost, RECORDS);
    });
}

/// Gated readers still get their payload in place, and it stays intact.
#[test]
fn a_gated_sample_is_read_in_place_and_stays_intact() {
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "gated", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "gated", ReaderOptions::gated()).unwrap();
    writer.send(1, b"in place").unwrap();
    match reader.try_recv().unwrap() {
        Some(Event::Record(sample)) => {
            // The writer cannot lap a gated reader: it reports Full.
            let mut full = false;
            for seq in 0..200u64 {
                if writer.send(1, &seq.to_le_bytes().repeat(8)).is_err() {
                    full = true;
                    break;
                }
            }
            assert!(full);
            assert_eq!(sample.payload(), b"in place");
            assert!(sample.is_valid());
        }
        other => panic!("{other:?}"),
    }
}

/// Records lapped after the last one a lossy reader delivered, with no
/// record after them to report the gap (the tail reached `write_pos`), are
/// counted as lost when the stream ends: received + lost = written.
#[test]
fn losses_after_the_last_delivered_record_are_counted_at_the_end() {
    use std::os::unix::fs::FileExt;
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "end", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "end", ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    for seq in 0..10u64 {
        writer.write(1, &seq.to_le_bytes()).unwrap();
    }
    writer.publish();
    for expected in 0..3u64 {
        match reader.try_recv().unwrap() {
            Some(Event::Record(sample)) => assert_eq!(sample.seq(), expected),
            other => panic!("{other:?}"),
        }
    }
    // A writer that reclaimed everything it published: the tail at
    // `write_pos` (allowed by FORMAT.md §3.3), as if the rest was lapped.
    let shard_header = layout::PAGE;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(bus.ring_path("end")).unwrap();
    let mut write_pos = [0u8; 8];
    file.read_exact_at(&mut write_pos, shard_header + layout::shard_header::WRITE_POS as u64).unwrap();
    file.write_all_at(&write_pos, shard_header + layout::shard_header::TAIL_POS as u64).unwrap();
    producer.end();
    match reader.try_recv().unwrap() {
        Some(Event::Ended) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!((reader.stats().received, reader.stats().lost), (3, 7));
}
