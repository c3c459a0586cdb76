//! What a forwarder of records between buses needs (the ringest bridge):
//! a channel created under a given generation, records published with the
//! sequence numbers they already have, and a gated reader that holds
//! records until it releases them and can go back to the last release.

use std::time::Duration;

use shm_bus::{
    BusDir, ChannelOptions, CreateError, Event, Producer, Reader, ReaderOptions, ReleasePoint, ReserveError,
    StartAt, channel_info,
};

fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("shm-bus-republish").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

/// (seq, lost_before, payload, release point) of the next record.
fn next_record(reader: &mut Reader) -> (u64, u64, Vec<u8>, ReleasePoint) {
    match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(Event::Record(s)) => (s.seq(), s.lost_before(), s.payload().to_vec(), s.release_point()),
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn a_channel_keeps_the_generation_it_is_given_and_refuses_zero() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { generation: Some(0x0102_0304_0506_0708), ..Default::default() };
    let producer = Producer::create(&bus, "r/gen", opts).unwrap();
    assert_eq!(producer.generation(), 0x0102_0304_0506_0708);
    let reader = Reader::attach(&bus, "r/gen", ReaderOptions::gated()).unwrap();
    assert_eq!(reader.generation(), 0x0102_0304_0506_0708);
    assert_eq!(channel_info(&bus, "r/gen").unwrap().generation, 0x0102_0304_0506_0708);

    let zero = ChannelOptions { generation: Some(0), ..Default::default() };
    match Producer::create(&bus, "r/zero", zero) {
        Err(CreateError::InvalidOptions { reason, .. }) => assert!(reason.contains("generation"), "{reason}"),
        other => panic!("generation 0 accepted: {other:?}"),
    }
}

#[test]
fn a_recreated_channel_of_the_same_generation_is_followed_by_its_readers() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { generation: Some(77), capacity: 1 << 16, ..Default::default() };
    let first = Producer::create(&bus, "r/same", opts).unwrap();
    let mut writer = first.shard(0).unwrap();
    writer.send(1, b"first").unwrap();
    let mut reader = Reader::attach(&bus, "r/same", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    assert_eq!(next_record(&mut reader).2, b"first");
    let next = writer.next_seq();
    drop(writer);
    drop(first);

    let second = Producer::create(&bus, "r/same", opts).unwrap();
    let mut writer = second.shard(0).unwrap();
    writer.skip_to_seq(next);
    writer.send(1, b"second").unwrap();
    match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(Event::Restarted { generation }) => assert_eq!(generation, 77),
        other => panic!("expected the restart, got {other:?}"),
    }
    let (seq, lost, payload, _) = next_record(&mut reader);
    assert_eq!((seq, lost, payload.as_slice()), (1, 0, &b"second"[..]));
}

#[test]
fn records_keep_given_sequence_numbers_and_a_jump_counts_as_lost() {
    let (_dir, bus) = bus();
    let producer =
        Producer::create(&bus, "r/seq", ChannelOptions { capacity: 1 << 16, ..Default::default() }).unwrap();
    let mut writer = producer.shard(0).unwrap();
    writer.skip_to_seq(100);
    // Shown before any record, so that a restarted importer reads it back.
    assert_eq!(channel_info(&bus, "r/seq").unwrap().shards[0].records_written, 100);
    assert_eq!(writer.write_at(3, 42, b"a").unwrap(), 100);
    assert_eq!(writer.write_at(3, 43, b"b").unwrap(), 101);
    writer.skip_to_seq(102); // no gap: changes nothing
    writer.skip_to_seq(105);
    assert_eq!(writer.write_at(3, 44, b"c").unwrap(), 105);
    writer.publish();

    let mut reader = Reader::attach(&bus, "r/seq", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    let got: Vec<_> = (0..3).map(|_| next_record(&mut reader)).map(|(s, l, p, _)| (s, l, p)).collect();
    assert_eq!(got, [(100, 0, b"a".to_vec()), (101, 0, b"b".to_vec()), (105, 3, b"c".to_vec())]);
    assert_eq!(reader.stats().lost, 3);
}

#[test]
#[should_panic(expected = "never go back")]
fn sequence_numbers_never_go_back() {
    let (_dir, bus) = bus();
    let producer = Producer::create(&bus, "r/back", ChannelOptions::default()).unwrap();
    let mut writer = producer.shard(0).unwrap();
    writer.skip_to_seq(10);
    writer.skip_to_seq(9);
}

#[test]
fn a_holding_reader_keeps_records_until_released_and_rewinds_to_the_release() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { capacity: 4096, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&bus, "r/hold", opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let options = ReaderOptions::gated().start(StartAt::Oldest).hold_until_released();
    let mut reader = Reader::attach(&bus, "r/hold", options).unwrap();

    // 100-byte records: 132 bytes of ring each, 31 fill the 4 KiB ring.
    let record = |i: u64| vec![i as u8; 100];
    let mut written = 0u64;
    let mut read = Vec::new();
    loop {
        match writer.write(1, &record(written)) {
            Ok(_) => written += 1,
            Err(ReserveError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        writer.publish();
        // Reading does not release: the writer still fills the ring.
        read.push(next_record(&mut reader));
    }
    assert!(written >= 20, "the ring took only {written} records");
    assert_eq!(read.len() as u64, written);
    assert!(read.iter().enumerate().all(|(i, (seq, _, p, _))| *seq == i as u64 && *p == record(i as u64)));

    // Back to the start: the same records again, byte for byte.
    reader.rewind().unwrap();
    for (i, expected) in read.iter().enumerate() {
        let (seq, _, payload, _) = next_record(&mut reader);
        assert_eq!((seq, &payload), (i as u64, &expected.2), "record {i} after the rewind");
    }

    // Releasing the first ten makes room for about ten more.
    reader.release(read[9].3).unwrap();
    let mut more = 0;
    while writer.write(1, &record(written + more)).is_ok() {
        more += 1;
    }
    assert!((9..=11).contains(&more), "released 10 records' space, the writer took {more}");
    writer.publish();
    // A rewind now goes back to record 10, not 0.
    reader.rewind().unwrap();
    assert_eq!(next_record(&mut reader).0, 10);
    // Releasing an older point again, or one of another generation, is ignored.
    reader.release(read[3].3).unwrap();
    reader.release(ReleasePoint { generation: reader.generation() ^ 1, ..read[20].3 }).unwrap();
    reader.rewind().unwrap();
    assert_eq!(next_record(&mut reader).0, 10);
}

/// A restarted bridge re-creates its imported channel under the origin's
/// generation and continues the sequence. A gated reader that follows the
/// new file before the new producer set its first sequence number (the
/// window between creating the channel and `skip_to_seq`) must not count
/// the sequence numbers it already had as lost.
#[test]
fn a_reader_following_a_same_generation_replacement_counts_no_loss_for_the_sequence_it_had() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { generation: Some(77), capacity: 1 << 16, ..Default::default() };
    let first = Producer::create(&bus, "r/window", opts).unwrap();
    let mut writer = first.shard(0).unwrap();
    writer.skip_to_seq(314);
    for i in 0..340u32 {
        writer.write(1, &i.to_le_bytes()).unwrap();
    }
    writer.publish();
    let mut reader = Reader::attach(&bus, "r/window", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    for i in 0..340u64 {
        let (seq, lost, _, _) = next_record(&mut reader);
        assert_eq!((seq, lost), (314 + i, 0));
    }
    let next = writer.next_seq();
    assert_eq!(next, 654);
    // The importer is killed: its file stays LIVE, its records all read.
    std::mem::forget(writer);
    std::mem::forget(first);

    // Its successor creates the channel; the reader follows at once.
    let second = Producer::create(&bus, "r/window", opts).unwrap();
    match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(Event::Restarted { generation }) => assert_eq!(generation, 77),
        other => panic!("expected the restart, got {other:?}"),
    }
    let mut writer = second.shard(0).unwrap();
    writer.skip_to_seq(next);
    writer.send(1, b"resumed").unwrap();
    let (seq, lost, payload, _) = next_record(&mut reader);
    assert_eq!((seq, lost, payload.as_slice()), (654, 0, &b"resumed"[..]));
    // A real gap after the resume still counts.
    writer.skip_to_seq(660);
    writer.send(1, b"after a gap").unwrap();
    assert_eq!(next_record(&mut reader).1, 5);
    assert_eq!(reader.stats().lost, 5);
}

/// What the replacement lacks of the sequence the reader had is lost, and
/// counted: the expectation carries over a same-generation replacement.
#[test]
fn records_missing_between_the_old_file_and_its_same_generation_replacement_count_as_lost() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { generation: Some(78), capacity: 1 << 16, shards: 2, ..Default::default() };
    let first = Producer::create(&bus, "r/gap", opts).unwrap();
    let (mut w0, mut w1) = (first.shard(0).unwrap(), first.shard(1).unwrap());
    w0.send(1, b"a").unwrap();
    w1.send(1, b"b").unwrap();
    let mut reader = Reader::attach(&bus, "r/gap", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    next_record(&mut reader);
    next_record(&mut reader);
    drop((w0, w1));
    drop(first);

    // Shard 0 resumes 3 records later, shard 1 where it was.
    let second = Producer::create_from_seq(&bus, "r/gap", opts, &[4, 1]).unwrap();
    let (mut w0, mut w1) = (second.shard(0).unwrap(), second.shard(1).unwrap());
    w0.write_at(1, 10, b"c").unwrap();
    w1.write_at(1, 11, b"d").unwrap();
    w0.publish();
    w1.publish();
    loop {
        match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
            Some(Event::Restarted { generation }) => break assert_eq!(generation, 78),
            Some(Event::Ended) => continue, // the first producer ended before the second started
            other => panic!("expected the restart, got {other:?}"),
        }
    }
    let got: Vec<_> = (0..2).map(|_| next_record(&mut reader)).map(|(s, l, p, _)| (s, l, p)).collect();
    assert_eq!(got, [(4, 3, b"c".to_vec()), (1, 0, b"d".to_vec())]);
}

/// A producer can create a channel whose shards start at given sequence
/// numbers: the shard headers show them from the start, so no reader ever
/// sees the channel at 0 and then a jump.
#[test]
fn a_channel_created_from_given_sequence_numbers_shows_them_before_any_record() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions { generation: Some(79), capacity: 1 << 16, shards: 2, ..Default::default() };
    let producer = Producer::create_from_seq(&bus, "r/from", opts, &[654, 10]).unwrap();
    let info = channel_info(&bus, "r/from").unwrap();
    assert_eq!(info.shards.iter().map(|s| s.records_written).collect::<Vec<_>>(), [654, 10]);
    // A reader that attaches to the empty channel expects those numbers.
    let mut reader = Reader::attach(&bus, "r/from", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    let mut writer = producer.shard(0).unwrap();
    assert_eq!(writer.next_seq(), 654);
    assert_eq!(writer.send(1, b"x").unwrap(), 654);
    let (seq, lost, _, _) = next_record(&mut reader);
    assert_eq!((seq, lost), (654, 0));
    let mut other = producer.shard(1).unwrap();
    assert_eq!(other.send(1, b"y").unwrap(), 10);
    let (seq, lost, _, _) = next_record(&mut reader);
    assert_eq!((seq, lost), (10, 0));
    assert_eq!(reader.stats().lost, 0);

    for bad in [&[1u64][..], &[1, 2, 3], &[u64::MAX, 0]] {
        match Producer::create_from_seq(&bus, "r/bad", opts, bad) {
            Err(CreateError::InvalidOptions { reason, .. }) => {
                assert!(reason.contains("sequence"), "{reason}")
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
}
