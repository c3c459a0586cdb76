//! Single-process behaviour of one channel: round trips, batching, lapping,
//! gating, wrap padding, start positions, end of stream, introspection.

use std::time::Duration;

use shm_bus::{
    BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderOptions, ReserveError, StartAt,
};

fn bus() -> (tempfile::TempDir, BusDir) {
    let dir = tempfile::Builder::new().prefix("shm-bus-test").tempdir_in(shm_root()).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

fn shm_root() -> &'static str {
    if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }
}

fn small(capacity: u64) -> ChannelOptions {
    ChannelOptions { capacity, ..Default::default() }
}

/// Payload for record `seq`: its length and bytes derive from `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = (seq * 7919 % 300) as usize;
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn next_record(reader: &mut Reader) -> (u64, u64, Vec<u8>, bool) {
    match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(Event::Record(s)) => (s.seq(), s.lost_before(), s.payload().to_vec(), s.is_valid()),
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn round_trip_every_byte_and_sequence() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "t/rt", small(1 << 16)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "t/rt", ReaderOptions::gated()).unwrap();
    for seq in 0..5000u64 {
        let p = payload(seq);
        let got = loop {
            match writer.send(7, &p) {
                Ok(s) => break s,
                Err(ReserveError::Full { .. }) => {
                    // Drain one record to make room (gated reader).
                    let (s, lost, bytes, valid) = next_record(&mut reader);
                    assert_eq!((lost, valid), (0, true));
                    assert_eq!(bytes, payload(s));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(got, seq);
    }
    drop(writer);
    drop(producer);
    let mut expected = reader.stats().received;
    loop {
        match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
            Some(Event::Record(s)) => {
                assert_eq!(s.seq(), expected);
                assert_eq!(s.kind(), 7);
                assert_eq!(s.payload(), &payload(expected)[..]);
                expected += 1;
            }
            Some(Event::Ended) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(expected, 5000);
    assert_eq!(reader.stats().lost, 0);
}

#[test]
fn batch_becomes_visible_with_one_publish() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "batch", small(1 << 16)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "batch", ReaderOptions::lossy()).unwrap();
    for i in 0..10u8 {
        writer.write(1, &[i; 5]).unwrap();
    }
    assert!(reader.try_recv().unwrap().is_none(), "records visible before publish");
    writer.publish();
    for i in 0..10u8 {
        let (seq, _, bytes, _) = next_record(&mut reader);
        assert_eq!((seq, bytes), (u64::from(i), vec![i; 5]));
    }
}

#[test]
fn reservation_commit_shorter_and_abort() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "resv", small(1 << 16)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "resv", ReaderOptions::lossy()).unwrap();
    let mut r = writer.reserve(1000).unwrap();
    r.buf()[..3].copy_from_slice(b"abc");
    assert_eq!(r.commit(3, 2), 0);
    let mut r = writer.reserve(1000).unwrap();
    r.buf()[..3].copy_from_slice(b"zzz");
    r.abort();
    writer.send(3, b"defg").unwrap();
    let (seq, _, bytes, _) = next_record(&mut reader);
    assert_eq!((seq, bytes.as_slice()), (0, &b"abc"[..]));
    let (seq, _, bytes, _) = next_record(&mut reader);
    assert_eq!((seq, bytes.as_slice()), (1, &b"defg"[..]));
    assert!(matches!(writer.reserve(1 << 20), Err(ReserveError::TooLarge { .. })));
}

#[test]
fn lossy_reader_is_lapped_and_counts_exactly() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "lap", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "lap", ReaderOptions::lossy()).unwrap();
    // 1000 records of 64+32 bytes through a 4 KiB ring: the reader is lapped.
    for seq in 0..1000u64 {
        writer.send(1, &seq.to_le_bytes().repeat(8)).unwrap();
    }
    let mut delivered = 0;
    let mut last = None;
    while let Some(Event::Record(s)) = reader.try_recv().unwrap() {
        let seq = s.seq();
        assert_eq!(s.payload(), &seq.to_le_bytes().repeat(8)[..]);
        assert!(s.is_valid());
        if let Some(prev) = last {
            assert_eq!(seq, prev + 1 + s.lost_before());
        } else {
            assert_eq!(s.lost_before(), seq, "first record after lap reports the gap");
        }
        last = Some(seq);
        delivered += 1;
    }
    assert_eq!(last, Some(999));
    let stats = reader.stats();
    assert_eq!(stats.received, delivered);
    assert_eq!(stats.received + stats.lost, 1000);
    assert!(stats.lost > 900);
}

#[test]
fn gated_reader_blocks_overwrite_until_released() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "gate", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "gate", ReaderOptions::gated()).unwrap();
    let mut sent = 0u64;
    loop {
        match writer.send(1, &sent.to_le_bytes().repeat(8)) {
            Ok(_) => sent += 1,
            Err(ReserveError::Full { reader_pid, .. }) => {
                assert_eq!(reader_pid, std::process::id());
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!((4096 / 96 - 1..=4096 / 96 + 1).contains(&sent), "sent {sent}");
    // Holding a sample keeps its space; dropping it frees room for one more.
    for seq in 0..sent {
        let (s, lost, bytes, valid) = next_record(&mut reader);
        assert_eq!((s, lost, valid), (seq, 0, true));
        assert_eq!(bytes, seq.to_le_bytes().repeat(8));
    }
    writer.send(1, &sent.to_le_bytes().repeat(8)).unwrap();
    let info = shm_bus::channel_info(&bus, "gate").unwrap();
    assert!(info.shards[0].full_count >= 1);
    assert_eq!(info.readers.len(), 1);
    assert!(info.readers[0].gated);
    assert_eq!(info.readers[0].lag_records, 1);
}

#[test]
fn records_never_wrap_and_large_records_work() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "big", small(64 << 20)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "big", ReaderOptions::gated()).unwrap();
    let max = writer.max_payload();
    assert!(max >= 16 << 20);
    let sizes = [16 << 20, 5, 16 << 20, 12345, 16 << 20, 16 << 20, 1, 16 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|j| (i * 7 + j * 13) as u8).collect();
        writer.send(i as u16, &bytes).unwrap();
        let (seq, _, got, _) = next_record(&mut reader);
        assert_eq!(seq, i as u64);
        assert!(got == bytes, "record {i} differs");
    }
}

#[test]
fn start_positions() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "start", small(1 << 16)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    for i in 0..10u8 {
        writer.send(1, &[i]).unwrap();
    }
    let mut oldest = Reader::attach(&bus, "start", ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    let mut latest = Reader::attach(&bus, "start", ReaderOptions::lossy().start(StartAt::Latest)).unwrap();
    let mut next = Reader::attach(&bus, "start", ReaderOptions::gated().start(StartAt::Next)).unwrap();
    writer.send(1, &[10]).unwrap();
    assert_eq!(next_record(&mut oldest).0, 0);
    assert_eq!(next_record(&mut latest).2, vec![9]);
    assert_eq!(next_record(&mut latest).2, vec![10]);
    assert_eq!(next_record(&mut next).2, vec![10]);
}

#[test]
fn shards_merge_into_one_stream_in_time_order() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { shards: 3, capacity: 1 << 16, ..Default::default() };
    let producer = Producer::create(&bus, "merge", opts).unwrap();
    let mut writers: Vec<_> = (0..3).map(|i| producer.shard(i).unwrap()).collect();
    assert!(producer.shard(0).is_err(), "a shard is handed out once");
    let mut reader = Reader::attach(&bus, "merge", ReaderOptions::gated()).unwrap();
    for t in 0..30u64 {
        writers[(t * 7 % 3) as usize].write_at(1, 1000 + t, &t.to_le_bytes()).unwrap();
    }
    for w in &mut writers {
        w.publish();
    }
    for t in 0..30u64 {
        match reader.try_recv().unwrap() {
            Some(Event::Record(s)) => {
                assert_eq!(s.timestamp_ns(), 1000 + t);
                assert_eq!(s.shard() as u64, t * 7 % 3);
                assert_eq!(s.payload(), t.to_le_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn end_of_stream_and_restart_are_reported() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "life", small(1 << 16)).unwrap();
    let gen1 = producer.generation();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "life", ReaderOptions::gated()).unwrap();
    writer.send(1, b"one").unwrap();
    drop(writer);
    producer.end();
    assert_eq!(next_record(&mut reader).2, b"one");
    assert!(matches!(reader.recv_timeout(Duration::from_secs(1)).unwrap(), Some(Event::Ended)));
    assert_eq!(reader.state(), ChannelState::Ended);

    let producer = Producer::create(&bus, "life", small(1 << 16)).unwrap();
    assert_ne!(producer.generation(), gen1);
    let mut writer = producer.shard(0).unwrap();
    writer.send(1, b"two").unwrap();
    match reader.recv_timeout(Duration::from_secs(2)).unwrap() {
        Some(Event::Restarted { generation }) => assert_eq!(generation, producer.generation()),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_record(&mut reader).2, b"two");
    assert_eq!(reader.stats().restarts, 1);
}

#[test]
fn channel_of_a_live_producer_is_not_replaced() {
    use std::os::unix::fs::FileExt;
    let (_dir, bus) = bus();
    drop(Producer::create(&bus, "busy", small(4096)).unwrap());
    // Make the file look owned by another live process: pid 1.
    let stat = std::fs::read_to_string("/proc/1/stat").unwrap();
    let start: u64 =
        stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(bus.ring_path("busy")).unwrap();
    file.write_all_at(&1u32.to_le_bytes(), shm_bus::layout::channel_header::PRODUCER_PID as u64).unwrap();
    file.write_all_at(&start.to_le_bytes(), shm_bus::layout::channel_header::PRODUCER_START_TIME as u64)
        .unwrap();
    match Producer::create(&bus, "busy", small(4096)) {
        Err(shm_bus::CreateError::Busy { pid: 1, .. }) => {}
        other => panic!("expected Busy, got {other:?}"),
    }
    // A dead owner (a pid with the wrong start time) is replaced.
    file.write_all_at(
        &(start + 1).to_le_bytes(),
        shm_bus::layout::channel_header::PRODUCER_START_TIME as u64,
    )
    .unwrap();
    Producer::create(&bus, "busy", small(4096)).unwrap();
}

#[test]
fn listing_shows_channels_readers_and_counters() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "stage/packet_group", small(1 << 16)).unwrap();
    let _p2 = Producer::create(&bus, "stage/socket_stats", small(4096)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "stage/packet_group", ReaderOptions::lossy()).unwrap();
    writer.send(1, &[0u8; 100]).unwrap();
    writer.send(1, &[0u8; 100]).unwrap();
    let _ = next_record(&mut reader);
    drop(reader);
    let _reader2 = Reader::attach(&bus, "stage/packet_group", ReaderOptions::gated()).unwrap();
    let list = shm_bus::list_channels(&bus).unwrap();
    let names: Vec<_> = list.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["stage/packet_group", "stage/socket_stats"]);
    let info = list[0].info.as_ref().unwrap();
    assert_eq!(info.producer_pid, std::process::id());
    assert_eq!(info.producer_alive, Some(true));
    assert_eq!(info.records_written(), 2);
    assert_eq!(info.bytes_written(), 200);
    assert_eq!(info.readers.len(), 1, "the dropped reader freed its slot");
    assert!(info.readers[0].gated);
}

const HOT_CAPACITY: u64 = 64 << 10;
const HOT_WINDOW: u64 = 8 << 10;
/// Ring bytes of one 1000-byte record.
const KIB_RECORD: u64 = 1032;

/// A channel with a hot window whose readers keep up for `records` records
/// of about 1 KiB: every record arrives, and the writer keeps starting over.
fn hot_channel_after(
    bus: &BusDir,
    name: &str,
    records: u64,
    reader: ReaderOptions,
) -> (Producer, shm_bus::ShardWriter, Reader) {
    let opts = ChannelOptions { capacity: HOT_CAPACITY, hot_window: HOT_WINDOW, ..Default::default() };
    let producer = Producer::create(bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(bus, name, reader).unwrap();
    for seq in 0..records {
        writer.send(1, &kib_payload(seq)).unwrap();
        let (s, lost, bytes, valid) = next_record(&mut reader);
        assert_eq!((s, lost, valid), (seq, 0, true));
        assert_eq!(bytes, kib_payload(seq));
    }
    (producer, writer, reader)
}

fn kib_payload(seq: u64) -> Vec<u8> {
    (0..1000).map(|i| (seq as usize * 131 + i) as u8).collect()
}

#[test]
fn writer_starts_over_while_readers_keep_up() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { capacity: HOT_CAPACITY, hot_window: HOT_WINDOW, ..Default::default() };
    let producer = Producer::create(&bus, "hot", opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut gated = Reader::attach(&bus, "hot", ReaderOptions::gated()).unwrap();
    let mut lossy = Reader::attach(&bus, "hot", ReaderOptions::lossy()).unwrap();
    for seq in 0..2000u64 {
        writer.send(1, &payload(seq)).unwrap();
        for reader in [&mut gated, &mut lossy] {
            let (s, lost, bytes, valid) = next_record(reader);
            assert_eq!((s, lost, valid), (seq, 0, true));
            assert_eq!(bytes, payload(seq));
        }
    }
    let written: u64 = (0..2000).map(|s| shm_bus::layout::record_size(payload(s).len() as u64)).sum();
    let info = shm_bus::channel_info(&bus, "hot").unwrap();
    assert!(info.shards[0].write_pos > written + (32 << 10), "no start-over: {:?}", info.shards[0]);
    assert!(info.shards[0].start_over_count > 10, "{:?}", info.shards[0]);
    assert_eq!(info.shards[0].skip_ahead_count, 0, "the readers kept up");
    // Most of the ring was skipped: a reader joining now finds about a
    // window of history, not the whole ring.
    let mut late = Reader::attach(&bus, "hot", ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    let mut history = 0;
    while let Ok(Some(Event::Record(s))) = late.try_recv() {
        history += shm_bus::layout::record_size(s.payload().len() as u64);
    }
    // The window, and up to an eighth more before the writer looks again
    // (FORMAT.md, hot window), plus the record that crossed it; the whole
    // ring would be 64 KiB.
    let window = HOT_WINDOW + HOT_WINDOW / 8 + shm_bus::layout::record_size(300);
    assert!((1..=window).contains(&history), "{history} bytes of history, the window is {HOT_WINDOW}");
}

/// A gated reader that stalls anywhere in the writer's cycle, right after a
/// start-over included, still has the whole ring as buffer: the writer
/// skips ahead into the part of the ring it skipped, and nothing is lost.
#[test]
fn gated_reader_that_stalls_after_a_start_over_keeps_the_whole_ring() {
    let (_dir, bus) = bus();
    let mut skips = 0;
    // One start-over per window of about 8 records: 16 phases cover it.
    for phase in 0..16 {
        let name = format!("hot-gated-{phase}");
        let (_producer, mut writer, mut gated) =
            hot_channel_after(&bus, &name, 200 + phase, ReaderOptions::gated());
        let mut sent = 0u64;
        loop {
            match writer.send(2, &kib_payload(1000 + sent)) {
                Ok(_) => sent += 1,
                Err(ReserveError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The whole ring, but for a record's worth of rounding and a
        // padding header or two.
        assert!(
            sent * KIB_RECORD >= HOT_CAPACITY - 2 * KIB_RECORD,
            "phase {phase}: only {sent} records of 1 KiB fit in a ring of 64 KiB"
        );
        for i in 0..sent {
            let (_, lost, bytes, valid) = next_record(&mut gated);
            assert_eq!((lost, valid), (0, true), "phase {phase}, record {i}");
            assert_eq!(bytes, kib_payload(1000 + i), "phase {phase}, record {i}");
        }
        assert!(matches!(gated.try_recv(), Ok(None)));
        // And the writer goes on: the reader keeps up again.
        for i in 0..500 {
            writer.send(3, &kib_payload(5000 + i)).unwrap();
            let (_, lost, bytes, _) = next_record(&mut gated);
            assert_eq!((lost, bytes), (0, kib_payload(5000 + i)), "phase {phase}, after the stall");
        }
        skips += shm_bus::channel_info(&bus, &name).unwrap().shards[0].skip_ahead_count;
    }
    // Stalls late in a lap need no skip: the writer reaches the reader
    // only after the start-over's padding, which it overwrites as usual.
    assert!(skips > 0, "no phase skipped ahead");
}

/// The same for a registered lossy reader: the writer never waits for it,
/// but while it stalls for less than a ring's worth of records it loses
/// none, start-over or not.
#[test]
fn lossy_reader_that_stalls_after_a_start_over_loses_nothing_within_a_ring() {
    let (_dir, bus) = bus();
    // What surely fits: the ring less a tail chunk the writer may reclaim
    // ahead of need, a record and a padding header.
    let fits = (HOT_CAPACITY - HOT_WINDOW / 8 - 2 * KIB_RECORD) / KIB_RECORD;
    for phase in 0..16 {
        let name = format!("hot-lossy-{phase}");
        let (_producer, mut writer, mut lossy) =
            hot_channel_after(&bus, &name, 200 + phase, ReaderOptions::lossy());
        for i in 0..fits {
            writer.send(2, &kib_payload(1000 + i)).unwrap();
        }
        for i in 0..fits {
            let (_, lost, bytes, valid) = next_record(&mut lossy);
            assert_eq!((lost, valid), (0, true), "phase {phase}, record {i} of {fits}");
            assert_eq!(bytes, kib_payload(1000 + i), "phase {phase}, record {i}");
        }
        // Stalled for more than a ring: lapped, and told how much it lost.
        for i in 0..2 * fits {
            writer.send(2, &kib_payload(i)).unwrap();
        }
        let (_, lost, _, _) = next_record(&mut lossy);
        assert!(lost > 0, "phase {phase}: a reader lapped by a whole ring lost nothing");
    }
}
