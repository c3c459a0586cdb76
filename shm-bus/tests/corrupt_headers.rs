//! Generated damage to every header field of a channel's two files (channel
//! header, shard headers, readers header, a reader slot, record headers):
//! misaligned, out-of-range, off-by-a-little and arbitrary values, written
//! while a producer is live. Attaching (every start, gated and lossy),
//! reading, introspection and the producer's writer must never panic: a
//! damaged field is an error or is ignored.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use shm_bus::layout::{
    self, PAGE, channel_header as ch, channel_state, reader_slot, readers_header as rh, record_header,
    shard_header,
};
use shm_bus::{
    AttachError, BusDir, ChannelOptions, Event, Producer, Reader, ReaderOptions, RecvError, ShardWriter,
    StartAt, channel_info, list_channels,
};

const SHARDS: u32 = 2;
const CAPACITY: u64 = 4096;
const SLOTS: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    Ring,
    Readers,
}

/// A header field: the file, its offset and its width in bytes.
#[derive(Clone, Copy, Debug)]
struct Field {
    file: File,
    offset: u64,
    width: usize,
}

fn shard_base(shard: u32) -> u64 {
    PAGE + u64::from(shard) * (PAGE + CAPACITY)
}

/// Every field a reader or the writer reads from a file. The generation
/// fields are left out: a mismatch makes attach wait two seconds for a
/// replacement to settle (`faults.rs` covers it).
fn fields() -> Vec<Field> {
    let mut fields = Vec::new();
    let ring = |offset: u64, width| Field { file: File::Ring, offset, width };
    let readers = |offset: u64, width| Field { file: File::Readers, offset, width };
    for (off, width) in [
        (ch::MAGIC, 8),
        (ch::VERSION, 4),
        (ch::HEADER_SIZE, 4),
        (ch::SHARD_COUNT, 4),
        (ch::READER_SLOTS, 4),
        (ch::SHARD_CAPACITY, 8),
        (ch::SHARD_STRIDE, 8),
        (ch::FILE_SIZE, 8),
        (ch::PRODUCER_PID, 4),
        (ch::PRODUCER_START_TIME, 8),
        (ch::CREATED_REALTIME_NS, 8),
        (ch::STATE, 4),
        (ch::NOTIFY, 4),
        (ch::NAME_LEN, 4),
        (ch::PRODUCER_PID_NS, 8),
        (ch::PRODUCER_HEARTBEAT_NS, 8),
        (ch::NAME, 8),
    ] {
        fields.push(ring(off as u64, width));
    }
    for shard in 0..SHARDS {
        for off in [
            shard_header::WRITE_POS,
            shard_header::TAIL_POS,
            shard_header::RECORDS_WRITTEN,
            shard_header::BYTES_WRITTEN,
            shard_header::LAST_RECORD_POS,
            shard_header::FULL_COUNT,
            shard_header::PUBLISH_COUNT,
            shard_header::START_OVER_COUNT,
            shard_header::SKIP_AHEAD_COUNT,
            shard_header::PAYLOAD_BYTES,
        ] {
            fields.push(ring(shard_base(shard) + off as u64, 8));
        }
        // The headers of the first records (8-byte payloads: 40 bytes each).
        for record in 0..3u64 {
            for off in [record_header::POS, record_header::LEN_KIND_FLAGS, record_header::SEQ] {
                fields.push(ring(shard_base(shard) + PAGE + record * 40 + off as u64, 8));
            }
        }
    }
    for (off, width) in [
        (rh::MAGIC, 8),
        (rh::VERSION, 4),
        (rh::HEADER_SIZE, 4),
        (rh::SLOT_COUNT, 4),
        (rh::SLOT_SIZE, 4),
        (rh::SHARD_COUNT, 4),
        (rh::REGISTRATIONS, 8),
        (rh::WAITERS, 4),
        (rh::REAPED_READERS, 8),
    ] {
        fields.push(readers(off as u64, width));
    }
    // Slot 0, held by a gated reader while the damage is done.
    let slot = layout::READERS_HEADER_SIZE;
    for (off, width) in [
        (reader_slot::OWNER, 4),
        (reader_slot::OWNER + 4, 4),
        (reader_slot::PID, 4),
        (reader_slot::START_TIME, 8),
        (reader_slot::PID_NS, 8),
        (reader_slot::HEARTBEAT_NS, 8),
        (reader_slot::LOST, 8),
        (reader_slot::ATTACHED_REALTIME_NS, 8),
        (reader_slot::RECEIVED, 8),
        (reader_slot::SHARDS, 8),
        (reader_slot::SHARDS + 8, 8),
        (reader_slot::SHARDS + reader_slot::PER_SHARD, 8),
    ] {
        fields.push(readers(slot + off as u64, width));
    }
    fields
}

/// A damaging value: relative to what the field holds (a little off, a
/// misaligned position) or absolute (anything, the extremes).
#[derive(Clone, Copy, Debug)]
enum Damage {
    Add(u64),
    Sub(u64),
    Set(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (1u64..4096).prop_map(Damage::Add),
        (1u64..4096).prop_map(Damage::Sub),
        (1u64..8).prop_map(Damage::Add),
        any::<u64>().prop_map(Damage::Set),
        (0u64..200).prop_map(Damage::Set),
        prop_oneof![
            Just(u64::MAX),
            Just(u64::MAX - 7),
            Just(layout::MAX_POSITION),
            Just(layout::MAX_POSITION + 8),
            Just(1 << 32),
            Just(44),
        ]
        .prop_map(Damage::Set),
    ]
}

fn apply(bus: &BusDir, name: &str, field: Field, damage: Damage) {
    let path = match field.file {
        File::Ring => bus.ring_path(name),
        File::Readers => bus.readers_path(name),
    };
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut bytes = [0u8; 8];
    file.read_exact_at(&mut bytes[..field.width], field.offset).unwrap();
    let old = u64::from_le_bytes(bytes);
    let mut new = match damage {
        Damage::Add(n) => old.wrapping_add(n),
        Damage::Sub(n) => old.wrapping_sub(n),
        Damage::Set(v) => v,
    };
    if field.file == File::Ring && field.offset == ch::STATE as u64 && new as u32 == channel_state::REPLACED {
        // REPLACED makes attach wait for a replacement (`faults.rs`).
        new += 1;
    }
    file.write_all_at(&new.to_le_bytes()[..field.width], field.offset).unwrap();
}

/// Drives every reader kind over the damaged channel for a while, with
/// the producer still writing. Panics are what the caller catches.
fn exercise(bus: &BusDir, name: &str, writer: &mut ShardWriter) {
    let mut readers: Vec<Reader> = Vec::new();
    for gated in [true, false] {
        for start in [StartAt::Oldest, StartAt::Latest, StartAt::Next] {
            match Reader::attach(bus, name, ReaderOptions { gated, start, ..Default::default() }) {
                Ok(reader) => readers.push(reader),
                Err(
                    AttachError::Corrupt { .. }
                    | AttachError::BadMagic { .. }
                    | AttachError::BadVersion { .. }
                    | AttachError::Truncated { .. }
                    | AttachError::NoReaderSlot { .. },
                ) => {}
                Err(e) => panic!("unexpected attach error: {e}"),
            }
        }
    }
    for round in 0..4u64 {
        for _ in 0..3 {
            // Full (a damaged gate) is an answer too.
            let _ = writer.write(1, &round.to_le_bytes());
        }
        writer.publish();
        for reader in &mut readers {
            for _ in 0..8 {
                match reader.try_recv() {
                    Ok(Some(Event::Record(sample))) => {
                        let mut copy = Vec::new();
                        copy.extend_from_slice(sample.payload());
                        assert!(sample.payload().len() <= layout::max_payload(CAPACITY) as usize);
                    }
                    Ok(Some(_)) | Ok(None) => break,
                    Err(RecvError::Corrupt { .. }) => break,
                    Err(e) => panic!("unexpected receive error: {e}"),
                }
            }
            let _ = reader.backlog();
        }
    }
    let _ = channel_info(bus, name);
    let _ = list_channels(bus).unwrap();
}

fn damaged_channel_never_panics(field: Field, damage: Damage) -> Result<(), TestCaseError> {
    let (_dir, bus) = common::bus();
    let name = "damaged/generated";
    let options =
        ChannelOptions { shards: SHARDS, capacity: CAPACITY, reader_slots: SLOTS, ..Default::default() };
    let producer = Producer::create(&bus, name, options).unwrap();
    // A gated reader in slot 0 while the records are written, so that its
    // slot holds real positions to damage; it stays attached.
    let holder = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    let mut writers: Vec<ShardWriter> = (0..SHARDS).map(|shard| producer.shard(shard).unwrap()).collect();
    for writer in &mut writers {
        for seq in 0..3u64 {
            writer.write(1, &seq.to_le_bytes()).unwrap();
        }
    }
    apply(&bus, name, field, damage);
    let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&bus, name, &mut writers[0])));
    drop(holder);
    prop_assert!(outcome.is_ok(), "{field:?} damaged by {damage:?}: a panic (see above)");
    Ok(())
}

proptest! {
    // No failure persistence: proptest cannot locate a source directory for
    // an integration test; a failure prints its minimal case instead.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_header_fields_never_panic(field in proptest::sample::select(fields()), damage in damage()) {
        damaged_channel_never_panics(field, damage)?;
    }
}

/// The case of the review: a `tail_pos` of 44 used to panic inside
/// `Reader::attach` (an assertion on the alignment of a shared word). Every
/// position field, misaligned, is now a `Corrupt` error naming the field.
#[test]
fn misaligned_positions_are_corrupt_errors_naming_the_field() {
    let cases = [
        (shard_header::TAIL_POS, StartAt::Oldest, "tail_pos"),
        (shard_header::WRITE_POS, StartAt::Next, "write_pos"),
        (shard_header::LAST_RECORD_POS, StartAt::Latest, "last_record_pos"),
    ];
    for (off, start, what) in cases {
        for gated in [true, false] {
            let (_dir, bus) = common::bus();
            let name = "misaligned";
            let options = ChannelOptions {
                shards: SHARDS,
                capacity: CAPACITY,
                reader_slots: SLOTS,
                ..Default::default()
            };
            let producer = Producer::create(&bus, name, options).unwrap();
            let mut writer = producer.shard(1).unwrap();
            for seq in 0..3u64 {
                writer.write(1, &seq.to_le_bytes()).unwrap();
            }
            writer.publish();
            // Inside the records, so that only alignment is wrong.
            let value: u64 = if off == shard_header::TAIL_POS { 44 } else { 84 };
            let file = OpenOptions::new().write(true).open(bus.ring_path(name)).unwrap();
            file.write_all_at(&value.to_le_bytes(), shard_base(1) + off as u64).unwrap();
            let attached = catch_unwind(AssertUnwindSafe(|| {
                Reader::attach(&bus, name, ReaderOptions { gated, start, ..Default::default() }).map(drop)
            }));
            match attached {
                Ok(Err(AttachError::Corrupt { path, what: why })) => {
                    assert_eq!(path, bus.ring_path(name));
                    assert!(why.contains(what) && why.contains("shard 1"), "{what}: {why}");
                }
                Ok(other) => panic!("{what}, gated {gated}: {other:?}"),
                Err(_) => panic!("{what}, gated {gated}: attach panicked"),
            }
        }
    }
}

/// A lossy reader lapped onto a misaligned tail reports it instead of
/// panicking.
#[test]
fn lapped_onto_a_misaligned_tail_is_a_recv_error() {
    let (_dir, bus) = common::bus();
    let name = "lapped";
    let options = ChannelOptions { shards: 1, capacity: CAPACITY, reader_slots: SLOTS, ..Default::default() };
    let producer = Producer::create(&bus, name, options).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, name, ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    writer.write(1, &0u64.to_le_bytes()).unwrap();
    // Lap the reader: more than a ring of records.
    for seq in 1..300u64 {
        writer.write(1, &seq.to_le_bytes()).unwrap();
    }
    let file = OpenOptions::new().write(true).open(bus.ring_path(name)).unwrap();
    file.write_all_at(&(40 * 250 + 4u64).to_le_bytes(), shard_base(0) + shard_header::TAIL_POS as u64)
        .unwrap();
    let got = catch_unwind(AssertUnwindSafe(|| match reader.try_recv() {
        Err(RecvError::Corrupt { what, .. }) => what,
        other => panic!("expected Corrupt, got {other:?}"),
    }));
    let what = got.expect("try_recv panicked");
    assert!(what.contains("tail_pos"), "{what}");
}
