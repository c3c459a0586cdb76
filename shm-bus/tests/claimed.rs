//! Claimed space: a producer claims ring space ahead of its next record,
//! lets someone else fill parts of it (here: the test, through the raw
//! pointer, as the kernel would), and commits records over it in order.

use std::time::Duration;

use shm_bus::{BusDir, ChannelOptions, Event, Producer, Reader, ReaderOptions, ReserveError, ShardWriter};

fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("shm-bus-claimed").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

const CAPACITY: u64 = 1 << 16;
/// Records tile the ring in slots of this size, as the engine's io_uring
/// receive path lays them out.
const SLOT: u64 = 4096;
const HEADER: u64 = shm_bus::layout::RECORD_HEADER;

/// Payload of the record that starts slot number `n` (counting from the
/// start of the stream): `len` bytes derived from `n`.
fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 131 + i * 7) as u8).collect()
}

/// Length of the record in slot `n`: varies, up to a whole slot.
fn len_of(n: u64) -> usize {
    ((n * 977) % (SLOT - HEADER)) as usize
}

/// Writes `payload(n)` into claimed space through the raw pointer, as a
/// foreign writer (the kernel) would.
fn fill_foreign(writer: &ShardWriter, pos: u64, bytes: &[u8]) {
    let ptr = writer.claimed_ptr(pos, bytes.len());
    // SAFETY: `claimed_ptr` returned the address of `bytes.len()` claimed
    // bytes in the writer's mapping, which lives as long as `writer`; no
    // slice of this range exists while we copy.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
}

#[test]
fn records_committed_over_claimed_space_arrive_whole_and_in_order() {
    let (_dir, bus) = bus();
    let producer =
        Producer::create(&bus, "c/order", ChannelOptions { capacity: CAPACITY, ..Default::default() })
            .unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "c/order", ReaderOptions::gated()).unwrap();
    let window = CAPACITY / 4;
    let mut next_slot = 0u64;
    // Five laps of the ring, a window of slots filled ahead each round.
    while next_slot < 5 * CAPACITY / SLOT {
        let start = writer.next_record_pos();
        assert_eq!(start, next_slot * SLOT, "records tile the slots");
        writer.claim_to(start + window).unwrap();
        assert!(writer.claimed_end() >= start + window);
        // Fill every slot of the window "from outside" first, then commit.
        let slots = window / SLOT;
        for k in 0..slots {
            let n = next_slot + k;
            fill_foreign(&writer, n * SLOT + HEADER, &payload(n, len_of(n)));
        }
        for k in 0..slots {
            let n = next_slot + k;
            // Odd slots: the record takes the whole slot (its length says
            // so); even: a short record, then padding to the slot's end.
            let len = len_of(n);
            if n % 2 == 1 {
                let whole = (SLOT - HEADER) as usize;
                writer.claimed_mut(n * SLOT + HEADER + len as u64, whole - len).fill(0xEE);
                writer.commit_claimed(whole, 5, n);
            } else {
                let used = shm_bus::layout::record_size(len as u64);
                writer.commit_claimed(len, 5, n);
                writer.commit_claimed_padding((SLOT - used - HEADER) as usize);
            }
        }
        writer.publish();
        for k in 0..slots {
            let n = next_slot + k;
            match reader.recv_timeout(Duration::from_secs(5)).unwrap() {
                Some(Event::Record(sample)) => {
                    assert_eq!(sample.timestamp_ns(), n);
                    assert_eq!(sample.lost_before(), 0);
                    let expected = payload(n, len_of(n));
                    assert_eq!(&sample.payload()[..expected.len()], &expected[..], "slot {n}");
                    if n % 2 == 1 {
                        assert!(sample.payload()[expected.len()..].iter().all(|&b| b == 0xEE));
                    } else {
                        assert_eq!(sample.payload().len(), expected.len());
                    }
                }
                other => panic!("slot {n}: expected a record, got {other:?}"),
            }
        }
        next_slot += slots;
    }
}

#[test]
fn a_gated_reader_bounds_the_claim() {
    let (_dir, bus) = bus();
    let producer =
        Producer::create(&bus, "c/gate", ChannelOptions { capacity: CAPACITY, ..Default::default() })
            .unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "c/gate", ReaderOptions::gated()).unwrap();
    // Fill the ring once with whole-slot records.
    for n in 0..CAPACITY / SLOT {
        writer.claim_to(n * SLOT + SLOT).unwrap();
        writer.commit_claimed((SLOT - HEADER) as usize, 1, n);
    }
    writer.publish();
    let pos = writer.next_record_pos();
    assert_eq!(pos, CAPACITY);
    // The reader has read nothing: not even one slot of the next lap.
    assert!(matches!(writer.claim_to(pos + SLOT), Err(ReserveError::Full { .. })));
    assert_eq!(writer.claimed_end(), CAPACITY, "a refused claim claims nothing");
    // After it has read (and dropped) two records, exactly two slots may
    // be claimed.
    for _ in 0..2 {
        assert!(matches!(reader.recv_timeout(Duration::from_secs(5)).unwrap(), Some(Event::Record(_))));
    }
    writer.claim_to(pos + 2 * SLOT).unwrap();
    for slots in [3, 4] {
        assert!(
            matches!(writer.claim_to(pos + slots * SLOT), Err(ReserveError::Full { .. })),
            "{slots} slots"
        );
    }
    assert_eq!(writer.claimed_end(), pos + 2 * SLOT);
    // A claim may not run more than half a ring ahead.
    assert!(matches!(writer.claim_to(pos + CAPACITY), Err(ReserveError::TooLarge { .. })));
}

#[test]
fn a_lossy_reader_lapped_by_claimed_writes_counts_what_it_lost() {
    let (_dir, bus) = bus();
    let producer =
        Producer::create(&bus, "c/lap", ChannelOptions { capacity: CAPACITY, ..Default::default() }).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, "c/lap", ReaderOptions::lossy()).unwrap();
    let records = 3 * CAPACITY / SLOT;
    for n in 0..records {
        writer.claim_to(n * SLOT + SLOT).unwrap();
        fill_foreign(&writer, n * SLOT + HEADER, &n.to_le_bytes());
        writer.commit_claimed(8, 1, n);
        writer.commit_claimed_padding((SLOT - 2 * HEADER - 8) as usize);
    }
    writer.publish();
    let mut seen = 0;
    let mut lost = 0;
    while let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(100)).unwrap() {
        lost += sample.lost_before();
        let n = u64::from_le_bytes(sample.payload().try_into().unwrap());
        assert_eq!(sample.seq(), n, "padding takes no sequence number");
        seen += 1;
    }
    assert_eq!(seen + lost, records);
    assert!(lost > 0);
}

#[test]
#[should_panic(expected = "crosses the end of the ring")]
fn a_record_may_not_cross_the_end_of_the_ring() {
    let (_dir, bus) = bus();
    let producer =
        Producer::create(&bus, "c/wrap", ChannelOptions { capacity: CAPACITY, ..Default::default() })
            .unwrap();
    let mut writer = producer.shard(0).unwrap();
    writer.claim_to(CAPACITY / 2).unwrap();
    writer.commit_claimed_padding((CAPACITY / 2 - HEADER) as usize);
    writer.claim_to(CAPACITY / 2 + CAPACITY / 2).unwrap();
    writer.commit_claimed_padding((CAPACITY / 2 - 2 * HEADER) as usize);
    writer.claim_to(CAPACITY + 64).unwrap();
    writer.commit_claimed(64, 1, 0);
}
