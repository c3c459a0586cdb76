//! Fault tests: readers and producers killed with SIGKILL (in child
//! processes: this test binary re-run in a role, see `child_process_entry`),
//! producers restarted under running readers, and corrupt, truncated or
//! mismatched channel files.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shm_bus::layout::{self, PAGE, channel_header as ch, readers_header as rh, record_header, shard_header};
use shm_bus::{
    AttachError, BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderOptions, ReaderStats,
    RecvError, ReserveError, StartAt, channel_info, list_channels,
};

use common::{ChildCtx, ChildProc, PATIENCE, Records, StreamCheck, Until, say, wait_until, write_stream};

/// Entry point of the child processes the tests below spawn; returns at once
/// in a normal test run.
#[test]
fn child_process_entry() {
    let Some(ctx) = ChildCtx::from_env() else { return };
    match ctx.role.as_str() {
        "producer" => common::run_child_producer(&ctx),
        "gated_reader" => run_child_gated_reader(&ctx),
        other => panic!("unknown role {other}"),
    }
}

/// Child role "gated_reader": attaches gated to `channel`, reports
/// `ATTACHED`; with `hold=true` receives one record and reports `HOLDING
/// seq=`. Then it waits, holding the sample, until it is killed.
fn run_child_gated_reader(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let mut reader = Reader::attach(&ctx.bus(), &name, ReaderOptions::gated()).unwrap();
    say("ATTACHED");
    if ctx.param("hold") {
        match reader.recv_timeout(PATIENCE).unwrap() {
            Some(Event::Record(sample)) => {
                say(&format!("HOLDING seq={}", sample.seq()));
                ctx.wait_for("never sent");
                drop(sample);
            }
            other => panic!("expected a record, got {other:?}"),
        }
    } else {
        ctx.wait_for("never sent");
    }
}

fn gated_reader_child(bus: &BusDir, channel: &str, hold: bool) -> ChildProc {
    ChildProc::spawn(
        "gated_reader",
        &[
            ("bus", bus.path().display().to_string()),
            ("channel", channel.to_owned()),
            ("hold", hold.to_string()),
        ],
    )
}

/// Asserts that `child` died of SIGKILL.
fn assert_killed(child: &mut ChildProc) {
    let status = child.wait();
    assert_eq!(status.signal(), Some(9), "child status {status}");
}

// ---------------------------------------------------------------------------
// Dead readers
// ---------------------------------------------------------------------------

#[test]
fn sigkilled_gated_reader_holding_a_sample_stops_gating_within_a_second() {
    let (_dir, bus) = common::bus();
    let name = "faults/holder";
    let opts = ChannelOptions { capacity: 4096, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut holder = gated_reader_child(&bus, name, true);
    holder.expect("ATTACHED");
    writer.send(1, &[0; 100]).unwrap();
    assert_eq!(holder.expect("HOLDING").get::<u64>("seq"), 0);

    // The held record gates the producer once the ring is full.
    let full = loop {
        if let Err(e) = writer.send(1, &[1; 100]) {
            break e;
        }
    };
    assert!(
        matches!(full, ReserveError::Full { reader_pid, .. } if reader_pid == holder.pid()),
        "{full:?} (holder pid {})",
        holder.pid()
    );
    assert!(writer.reserve_timeout(100, Duration::from_millis(200)).is_err(), "gated while alive");
    let info = channel_info(&bus, name).unwrap();
    let readers = &info.readers[..];
    assert!(
        matches!(readers, [r] if r.gated && r.pid == holder.pid() && r.alive == Some(true)),
        "{readers:?}"
    );

    // SIGKILL, and do not reap it yet: a zombie counts as dead too.
    holder.sigkill();
    let killed = Instant::now();
    let reservation = writer.reserve_timeout(100, PATIENCE);
    let recovered = killed.elapsed();
    reservation.unwrap_or_else(|e| panic!("still gated {recovered:?} after SIGKILL: {e}")).commit(100, 1);
    eprintln!("the producer could reserve again {recovered:?} after SIGKILL of the gated reader");
    // Within a second, as named (it takes a few ms: the writer checks the
    // holder's liveness on every retry while full).
    assert!(recovered < Duration::from_secs(1), "took {recovered:?}");
    assert_killed(&mut holder);

    let info = channel_info(&bus, name).unwrap();
    assert!(info.readers.is_empty(), "the dead reader is still listed: {:?}", info.readers);
    assert_eq!(info.reaped_readers, 1);
    let listing = list_channels(&bus).unwrap();
    let listed = listing[0].info.as_ref().unwrap();
    assert!(listed.readers.is_empty() && listed.reaped_readers == 1, "{listed:?}");
    // Nothing gates the producer any more: it can lap its ring freely.
    for _ in 0..200 {
        writer.send(1, &[2; 100]).unwrap();
    }
}

/// When every slot is taken, a new reader takes over the slot of a dead
/// one. The new reader runs in a child process too, so that if taking over
/// crashes it (a write to the read-only `.ring` mapping: SIGSEGV), only this
/// test fails, with the child's exit status.
#[test]
fn slot_of_a_killed_reader_is_taken_over_when_all_slots_are_taken() {
    let (_dir, bus) = common::bus();
    let name = "faults/one-slot";
    let opts = ChannelOptions { capacity: 4096, reader_slots: 1, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut dead = gated_reader_child(&bus, name, false);
    dead.expect("ATTACHED");
    match Reader::attach(&bus, name, ReaderOptions::gated()) {
        Err(AttachError::NoReaderSlot { slots: 1, .. }) => {}
        other => panic!("expected NoReaderSlot, got {other:?}"),
    }
    dead.sigkill();
    assert_killed(&mut dead);

    // Introspection shows the dead reader until someone reaps it.
    let info = channel_info(&bus, name).unwrap();
    let readers = &info.readers[..];
    assert!(matches!(readers, [r] if r.gated && r.alive == Some(false)), "{readers:?}");

    let mut successor = gated_reader_child(&bus, name, true);
    successor.expect("ATTACHED");
    writer.send(1, b"after takeover").unwrap();
    assert_eq!(successor.expect("HOLDING").get::<u64>("seq"), 0);
    let info = channel_info(&bus, name).unwrap();
    let readers = &info.readers[..];
    assert!(matches!(readers, [r] if r.pid == successor.pid() && r.alive == Some(true)), "{readers:?}");
    assert_eq!(info.reaped_readers, 1);
}

// ---------------------------------------------------------------------------
// Dead and restarted producers
// ---------------------------------------------------------------------------

fn producer_child(
    bus: &BusDir,
    channel: &str,
    shards: u32,
    capacity: u64,
    salt: u64,
    bytes: u64,
) -> ChildProc {
    ChildProc::spawn(
        "producer",
        &[
            ("bus", bus.path().display().to_string()),
            ("channel", channel.to_owned()),
            ("shards", shards.to_string()),
            ("capacity", capacity.to_string()),
            ("salt", salt.to_string()),
            ("bytes", bytes.to_string()),
            ("linger", "true".to_owned()),
        ],
    )
}

/// What a reader saw across one producer restart.
struct Followed {
    before: StreamCheck,
    restarted_to: u64,
    after: StreamCheck,
    stats: ReaderStats,
}

/// Reads until the channel ends, checking the first producer's records
/// (`old`), then a restart, then the new producer's records (`new`), each
/// from its first record. Counts the old records in `progress`.
fn follow_restart(reader: &mut Reader, old: Records, new: Records, progress: &AtomicU64) -> Followed {
    let (gated, shards) = (reader.is_gated(), reader.shard_count());
    let mut before = StreamCheck::from_start(gated, old, shards);
    // A reader reattaches at the new producer's oldest record, before its
    // first one (the new producer writes once both readers followed): both
    // kinds must account for every record from the start, losses included.
    let mut after = StreamCheck::from_start(gated, new, shards);
    let mut restarted_to = None;
    loop {
        match reader.recv_timeout(PATIENCE).unwrap() {
            Some(Event::Record(s)) if restarted_to.is_none() => {
                before.record(&s);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Some(Event::Record(s)) => after.record(&s),
            Some(Event::Restarted { generation }) => {
                assert!(restarted_to.is_none(), "restarted twice");
                restarted_to = Some(generation);
            }
            Some(Event::Ended) => break,
            None => panic!("no event within {PATIENCE:?}"),
        }
    }
    let restarted_to = restarted_to.expect("the channel ended without a restart");
    Followed { before, restarted_to, after, stats: reader.stats() }
}

#[test]
fn producer_killed_mid_stream_is_replaced_and_its_readers_follow() {
    const SHARDS: u32 = 2;
    const CAPACITY: u64 = 64 << 10;
    let (old_records, new_records) = (Records::for_capacity(1, CAPACITY), Records::for_capacity(2, CAPACITY));
    let (_dir, bus) = common::bus();
    let name = "faults/restart";
    let mut old = producer_child(&bus, name, SHARDS, CAPACITY, old_records.salt, 0);
    let old_generation: u64 = old.expect("CREATED").get("generation");
    // Attached before the first record: both must account for every one.
    let mut gated = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    let mut lossy = Reader::attach(&bus, name, ReaderOptions::lossy()).unwrap();
    old.send("go");

    let progress = AtomicU64::new(0);
    let (old_written, new_generation, new_written, gated_saw, lossy_saw) = thread::scope(|s| {
        let gated = s.spawn(|| follow_restart(&mut gated, old_records, new_records, &progress));
        let lossy = s.spawn(|| follow_restart(&mut lossy, old_records, new_records, &AtomicU64::new(0)));
        wait_until("the gated reader got 2000 records", || {
            progress.load(Ordering::Relaxed) >= 2000 || gated.is_finished()
        });
        assert!(!gated.is_finished(), "the gated reader stopped early");
        old.sigkill();
        assert_killed(&mut old);

        // The dead producer's files are still there, live but ownerless.
        let info = channel_info(&bus, name).unwrap();
        assert_eq!(
            (info.generation, info.producer_alive, info.state),
            (old_generation, Some(false), ChannelState::Live)
        );
        let old_written: Vec<u64> = info.shards.iter().map(|s| s.records_written).collect();

        // A new producer reclaims them; it writes once both readers followed.
        let producer = Producer::create(
            &bus,
            name,
            ChannelOptions { shards: SHARDS, capacity: CAPACITY, ..Default::default() },
        )
        .expect("a new producer replaces the files of a dead one");
        let new_generation = producer.generation();
        assert_ne!(new_generation, old_generation);
        wait_until("both readers reattached", || {
            channel_info(&bus, name).is_ok_and(|i| i.generation == new_generation && i.readers.len() == 2)
        });
        let new_written: Vec<u64> = (0..SHARDS)
            .map(|i| {
                let mut writer = producer.shard(i).unwrap();
                s.spawn(move || write_stream(&mut writer, &new_records, Until::Records(1500)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().records)
            .collect();
        producer.end();
        (old_written, new_generation, new_written, gated.join().unwrap(), lossy.join().unwrap())
    });

    eprintln!("old producer published {old_written:?} records before SIGKILL, the new one {new_written:?}");
    for saw in [&gated_saw, &lossy_saw] {
        assert_eq!(saw.restarted_to, new_generation);
        // Everything the dead producer published, then everything the new one wrote.
        saw.before.assert_complete(&old_written);
        saw.after.assert_complete(&new_written);
        let (before, after) = (saw.before.counted(), saw.after.counted());
        let expected = ReaderStats {
            received: before.received + after.received,
            lost: before.lost + after.lost,
            restarts: 1,
        };
        assert_eq!(saw.stats, expected, "reader stats");
    }
    assert_eq!(gated.generation(), new_generation);
    // Only the new producer's files remain (no temporary files either).
    let mut files: Vec<_> = std::fs::read_dir(bus.path().join("faults"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["restart.readers", "restart.ring"]);
}

#[test]
fn reader_of_a_killed_producer_does_not_hang() {
    const CAPACITY: u64 = 256 << 10;
    let records = Records::for_capacity(3, CAPACITY);
    let (_dir, bus) = common::bus();
    let name = "faults/orphan";
    // Fewer bytes than the ring holds: nothing is overwritten.
    let mut producer = producer_child(&bus, name, 1, CAPACITY, records.salt, 16 << 10);
    producer.expect("CREATED");
    let early = Reader::attach(&bus, name, ReaderOptions::lossy()).unwrap();
    assert_eq!(early.producer_alive(), Some(true));
    producer.send("go");
    let written: u64 = producer.expect("WROTE").get("records");
    producer.expect("LINGER");
    producer.sigkill();
    assert_killed(&mut producer);

    let late_gated = Reader::attach(&bus, name, ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    let late_lossy = Reader::attach(&bus, name, ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    for (mut reader, gated) in [(early, false), (late_gated, true), (late_lossy, false)] {
        assert_eq!(reader.producer_alive(), Some(false));
        assert_eq!(reader.state(), ChannelState::Live, "a killed producer never ended the channel");
        let mut check = StreamCheck::from_start(gated, records, 1);
        for _ in 0..written {
            match reader.recv_timeout(PATIENCE).unwrap() {
                Some(Event::Record(s)) => check.record(&s),
                other => panic!("expected a record, got {other:?}"),
            }
        }
        check.assert_complete(&[written]);
        let waited = Instant::now();
        assert!(reader.recv_timeout(Duration::from_millis(300)).unwrap().is_none());
        let waited = waited.elapsed();
        assert!((Duration::from_millis(300)..Duration::from_secs(5)).contains(&waited), "{waited:?}");
        assert!(reader.try_recv().unwrap().is_none());
    }
    let info = channel_info(&bus, name).unwrap();
    assert_eq!((info.producer_alive, info.state), (Some(false), ChannelState::Live));
}

// ---------------------------------------------------------------------------
// Corrupt and truncated files
// ---------------------------------------------------------------------------

const SHARDS: u32 = 2;
const CAPACITY: u64 = 4096;
const SLOTS: u32 = 4;
const RING_SIZE: u64 = layout::ring_file_size(SHARDS, CAPACITY);
const READERS_SIZE: u64 = layout::readers_file_size(SHARDS, SLOTS);

fn small_options() -> ChannelOptions {
    ChannelOptions { shards: SHARDS, capacity: CAPACITY, reader_slots: SLOTS, ..Default::default() }
}

/// Creates channel `name` with a few records, and ends it.
fn make_channel(bus: &BusDir, name: &str) {
    let producer = Producer::create(bus, name, small_options()).unwrap();
    for shard in 0..SHARDS {
        let mut writer = producer.shard(shard).unwrap();
        for seq in 0..3u64 {
            writer.write(1, &seq.to_le_bytes()).unwrap();
        }
    }
    producer.end();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Ring,
    Readers,
}

impl Which {
    fn path(self, bus: &BusDir, name: &str) -> std::path::PathBuf {
        match self {
            Self::Ring => bus.ring_path(name),
            Self::Readers => bus.readers_path(name),
        }
    }
}

/// A change to one channel file.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite bytes at an offset.
    Put(usize, Vec<u8>),
    SetLen(u64),
    Remove,
}

fn put32(offset: usize, v: u32) -> Edit {
    Edit::Put(offset, v.to_le_bytes().to_vec())
}

fn put64(offset: usize, v: u64) -> Edit {
    Edit::Put(offset, v.to_le_bytes().to_vec())
}

fn apply(path: &Path, edit: &Edit) {
    match edit {
        Edit::Put(offset, bytes) => {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(bytes, *offset as u64).unwrap();
        }
        Edit::SetLen(len) => OpenOptions::new().write(true).open(path).unwrap().set_len(*len).unwrap(),
        Edit::Remove => std::fs::remove_file(path).unwrap(),
    }
}

/// The error attaching must give.
#[derive(Clone, Copy, Debug)]
enum Expect {
    NotFound,
    BadMagic(Which, [u8; 8]),
    BadVersion(Which, u32),
    Truncated(Which, u64, u64),
    Corrupt(Which),
    NotSettled,
}

impl Expect {
    fn matches(self, e: &AttachError, bus: &BusDir, name: &str) -> bool {
        let is = |which: Which, path: &Path| path == which.path(bus, name);
        match (self, e) {
            (Self::NotFound, AttachError::NotFound { .. }) => true,
            (Self::BadMagic(w, m), AttachError::BadMagic { path, found }) => is(w, path) && *found == m,
            (Self::BadVersion(w, v), AttachError::BadVersion { path, found, expected }) => {
                is(w, path) && *found == v && *expected == layout::FORMAT_VERSION
            }
            (Self::Truncated(w, exp, act), AttachError::Truncated { path, expected, actual }) => {
                is(w, path) && (*expected, *actual) == (exp, act)
            }
            (Self::Corrupt(w), AttachError::Corrupt { path, .. }) => is(w, path),
            (Self::NotSettled, AttachError::NotSettled { .. }) => true,
            _ => false,
        }
    }
}

/// A damaged channel: what is done to its files and what attaching says.
struct Case {
    name: &'static str,
    edits: Vec<(Which, Edit)>,
    expect: Expect,
}

fn case(name: &'static str, which: Which, edit: Edit, expect: Expect) -> Case {
    Case { name, edits: vec![(which, edit)], expect }
}

/// Damages a fresh channel per case and checks that readers, introspection
/// and listing all report the expected error (never a panic), and that a
/// new producer can then replace the damaged files. Returns what failed.
fn check_cases(cases: &[Case]) -> Vec<String> {
    let (_dir, bus) = common::bus();
    let mut failures = Vec::new();
    for case in cases {
        let name = format!("damaged/{}", case.name);
        make_channel(&bus, &name);
        for (which, edit) in &case.edits {
            apply(&which.path(&bus, &name), edit);
        }
        let mut check = |what: &str, result: std::thread::Result<Result<(), AttachError>>| match result {
            Err(_) => failures.push(format!("{}: {what} panicked", case.name)),
            Ok(Ok(())) => failures.push(format!("{}: {what} succeeded", case.name)),
            Ok(Err(e)) if !case.expect.matches(&e, &bus, &name) => {
                failures.push(format!("{}: {what} gave {e:?}, expected {:?}", case.name, case.expect))
            }
            Ok(Err(_)) => {}
        };
        for opts in [ReaderOptions::gated(), ReaderOptions::lossy()] {
            let attached = catch_unwind(AssertUnwindSafe(|| Reader::attach(&bus, &name, opts).map(drop)));
            check(if opts.gated { "gated attach" } else { "lossy attach" }, attached);
        }
        check("channel_info", catch_unwind(AssertUnwindSafe(|| channel_info(&bus, &name).map(drop))));
        let listed = catch_unwind(AssertUnwindSafe(|| {
            let listing = list_channels(&bus).unwrap();
            let entry = listing.into_iter().find(|c| c.name == name);
            entry.map_or(Ok(()), |c| c.info.map(drop))
        }));
        if matches!(case.expect, Expect::NotFound) {
            // A channel without a .ring file is not listed at all.
            assert!(matches!(listed, Ok(Ok(()))), "{}: listed", case.name);
        } else {
            check("list_channels", listed);
        }

        // Damaged files never block a new producer.
        let recreated = catch_unwind(AssertUnwindSafe(|| {
            let producer = Producer::create(&bus, &name, small_options())?;
            let mut reader = Reader::attach(&bus, &name, ReaderOptions::gated()).unwrap();
            producer.shard(1).unwrap().send(1, b"fresh").unwrap();
            match reader.try_recv().unwrap() {
                Some(Event::Record(s)) => assert_eq!(s.payload(), b"fresh"),
                other => panic!("{other:?}"),
            }
            Ok::<_, shm_bus::CreateError>(())
        }));
        match recreated {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}: a new producer failed: {e}", case.name)),
            Err(_) => failures.push(format!("{}: a new producer or its reader panicked", case.name)),
        }
    }
    failures
}

#[test]
fn damaged_files_are_clear_attach_errors() {
    use Expect::{BadMagic, BadVersion, Corrupt, Truncated};
    use Which::{Readers, Ring};
    let garbage = {
        let mut bytes = vec![0; RING_SIZE as usize];
        Records::for_capacity(9, CAPACITY).fill(0, 0, &mut bytes);
        bytes
    };
    let garbage_magic: [u8; 8] = garbage[..8].try_into().unwrap();
    let huge_capacity = layout::MAX_CAPACITY;
    let cases = vec![
        case("ring-missing", Ring, Edit::Remove, Expect::NotFound),
        // Wrong magic or version.
        case("ring-magic", Ring, Edit::Put(ch::MAGIC, b"NOTARING".to_vec()), BadMagic(Ring, *b"NOTARING")),
        case("ring-zeroed", Ring, Edit::Put(0, vec![0; PAGE as usize]), BadMagic(Ring, [0; 8])),
        case("ring-garbage", Ring, Edit::Put(0, garbage), BadMagic(Ring, garbage_magic)),
        case(
            "readers-magic",
            Readers,
            Edit::Put(rh::MAGIC, layout::RING_MAGIC.to_vec()),
            BadMagic(Readers, layout::RING_MAGIC),
        ),
        case("ring-version", Ring, put32(ch::VERSION, 3), BadVersion(Ring, 3)),
        case("ring-version-max", Ring, put32(ch::VERSION, u32::MAX), BadVersion(Ring, u32::MAX)),
        case("readers-version", Readers, put32(rh::VERSION, 0), BadVersion(Readers, 0)),
        // Truncated files.
        case("ring-empty", Ring, Edit::SetLen(0), Truncated(Ring, PAGE, 0)),
        case("ring-shorter-than-header", Ring, Edit::SetLen(100), Truncated(Ring, PAGE, 100)),
        case("ring-header-only", Ring, Edit::SetLen(PAGE), Truncated(Ring, RING_SIZE, PAGE)),
        case(
            "ring-missing-shard",
            Ring,
            Edit::SetLen(RING_SIZE - PAGE - CAPACITY),
            Truncated(Ring, RING_SIZE, RING_SIZE - PAGE - CAPACITY),
        ),
        case(
            "ring-missing-byte",
            Ring,
            Edit::SetLen(RING_SIZE - 1),
            Truncated(Ring, RING_SIZE, RING_SIZE - 1),
        ),
        case("readers-empty", Readers, Edit::SetLen(0), Truncated(Readers, layout::READERS_HEADER_SIZE, 0)),
        case(
            "readers-short-header",
            Readers,
            Edit::SetLen(100),
            Truncated(Readers, layout::READERS_HEADER_SIZE, 100),
        ),
        case(
            "readers-missing-slot",
            Readers,
            Edit::SetLen(READERS_SIZE - 64),
            Truncated(Readers, READERS_SIZE, READERS_SIZE - 64),
        ),
        // Sizes that disagree with the header, absurd geometry.
        case("ring-longer", Ring, Edit::SetLen(RING_SIZE + PAGE), Corrupt(Ring)),
        case("ring-header-size", Ring, put32(ch::HEADER_SIZE, 0), Corrupt(Ring)),
        case("ring-file-size-field", Ring, put64(ch::FILE_SIZE, RING_SIZE + PAGE), Corrupt(Ring)),
        case("ring-no-shards", Ring, put32(ch::SHARD_COUNT, 0), Corrupt(Ring)),
        case("ring-too-many-shards", Ring, put32(ch::SHARD_COUNT, layout::MAX_SHARDS + 1), Corrupt(Ring)),
        case("ring-max-shard-count", Ring, put32(ch::SHARD_COUNT, u32::MAX), Corrupt(Ring)),
        case("ring-more-shards", Ring, put32(ch::SHARD_COUNT, SHARDS + 1), Corrupt(Ring)),
        case("ring-zero-capacity", Ring, put64(ch::SHARD_CAPACITY, 0), Corrupt(Ring)),
        case("ring-odd-capacity", Ring, put64(ch::SHARD_CAPACITY, 5000), Corrupt(Ring)),
        case("ring-tiny-capacity", Ring, put64(ch::SHARD_CAPACITY, 2048), Corrupt(Ring)),
        case("ring-huge-capacity", Ring, put64(ch::SHARD_CAPACITY, 1 << 62), Corrupt(Ring)),
        case("ring-other-capacity", Ring, put64(ch::SHARD_CAPACITY, 2 * CAPACITY), Corrupt(Ring)),
        case("ring-stride", Ring, put64(ch::SHARD_STRIDE, CAPACITY), Corrupt(Ring)),
        case("ring-no-reader-slots", Ring, put32(ch::READER_SLOTS, 0), Corrupt(Ring)),
        case("ring-max-reader-slots", Ring, put32(ch::READER_SLOTS, u32::MAX), Corrupt(Ring)),
        case("ring-more-reader-slots", Ring, put32(ch::READER_SLOTS, SLOTS + 1), Corrupt(Readers)),
        case("ring-name-too-long", Ring, put32(ch::NAME_LEN, u32::MAX), Corrupt(Ring)),
        case("ring-name-not-utf8", Ring, Edit::Put(ch::NAME, vec![0xFF, 0xFE]), Corrupt(Ring)),
        case("readers-header-size", Readers, put32(rh::HEADER_SIZE, 0), Corrupt(Readers)),
        case("readers-slot-count", Readers, put32(rh::SLOT_COUNT, SLOTS - 1), Corrupt(Readers)),
        case("readers-shard-count", Readers, put32(rh::SHARD_COUNT, 1), Corrupt(Readers)),
        case("readers-slot-size", Readers, put32(rh::SLOT_SIZE, 8), Corrupt(Readers)),
        // Self-consistent geometry far larger than the file.
        Case {
            name: "ring-huge-geometry",
            edits: vec![
                (Ring, put32(ch::SHARD_COUNT, layout::MAX_SHARDS)),
                (Ring, put64(ch::SHARD_CAPACITY, huge_capacity)),
                (Ring, put64(ch::SHARD_STRIDE, PAGE + huge_capacity)),
                (Ring, put64(ch::FILE_SIZE, layout::ring_file_size(layout::MAX_SHARDS, huge_capacity))),
            ],
            expect: Truncated(Ring, layout::ring_file_size(layout::MAX_SHARDS, huge_capacity), RING_SIZE),
        },
    ];
    let failures = check_cases(&cases);
    assert!(failures.is_empty(), "{} damaged channels mishandled:\n{}", failures.len(), failures.join("\n"));
}

/// A `.readers` file longer than its header says is corrupt, as the
/// `.ring` file in the same situation is, not "truncated".
#[test]
fn oversized_readers_file_is_corrupt_not_truncated() {
    let failures = check_cases(&[case(
        "readers-longer",
        Which::Readers,
        Edit::SetLen(READERS_SIZE + PAGE),
        Expect::Corrupt(Which::Readers),
    )]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Files of two different producers (a missing `.readers` file, or one of
/// another generation) look like a replacement under way: attach retries for
/// a while, then gives up.
#[test]
fn readers_file_missing_or_of_another_generation_is_not_settled() {
    let cases = [
        case("readers-missing", Which::Readers, Edit::Remove, Expect::NotSettled),
        case("readers-generation", Which::Readers, put64(rh::GENERATION, 12345), Expect::NotSettled),
    ];
    // Each attempt waits about 2 s for the replacement to settle: run the
    // cases side by side.
    let failures: Vec<String> = thread::scope(|s| {
        let threads: Vec<_> =
            cases.iter().map(|c| s.spawn(move || check_cases(std::slice::from_ref(c)))).collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What `try_recv` gave, without the borrow of the reader.
#[derive(Debug)]
enum Got {
    Record(u64),
    Corrupt(u32, u64, String),
    Other(String),
}

/// File offset of field `field` of the record at ring position `pos` of `shard`.
fn record_offset(shard: u32, pos: u64, field: usize) -> u64 {
    PAGE + u64::from(shard) * (PAGE + CAPACITY) + PAGE + (pos & (CAPACITY - 1)) + field as u64
}

/// Garbage in a record header of a live channel, written behind the
/// producer's back while readers are attached: the readers report
/// `RecvError::Corrupt` at that record (again on every call), never panic.
#[test]
fn garbage_record_headers_are_recv_errors() {
    // Records of 8-byte payloads are 40 bytes: record n is at position 40 n.
    let damages: [(&str, u64, usize, u64); 4] = [
        ("stamp", 40, record_header::POS, 12345),
        ("length", 40, record_header::LEN_KIND_FLAGS, 0x0001_FFFF_FFF0),
        ("sequence-back", 40, record_header::SEQ, 0),
        // write_pos beyond the records: the first unwritten "record" is bad.
        ("write-pos", 120, usize::MAX, 1 << 20),
    ];
    let (_dir, bus) = common::bus();
    for (what, pos, field, value) in damages {
        for gated in [true, false] {
            let name = format!("garbage/{what}-{gated}");
            let producer = Producer::create(&bus, &name, small_options()).unwrap();
            let mut writer = producer.shard(1).unwrap();
            let mut reader = Reader::attach(
                &bus,
                &name,
                ReaderOptions { gated, start: StartAt::Next, ..Default::default() },
            )
            .unwrap();
            for seq in 0..3u64 {
                writer.write(1, &seq.to_le_bytes()).unwrap();
            }
            writer.publish();
            match reader.try_recv().unwrap() {
                Some(Event::Record(s)) => assert_eq!((s.seq(), s.payload()), (0, &0u64.to_le_bytes()[..])),
                other => panic!("{other:?}"),
            }
            let offset = if field == usize::MAX {
                PAGE + (PAGE + CAPACITY) + shard_header::WRITE_POS as u64
            } else {
                record_offset(1, pos, field)
            };
            let file = OpenOptions::new().write(true).open(bus.ring_path(&name)).unwrap();
            file.write_all_at(&value.to_le_bytes(), offset).unwrap();

            // Records before the damaged one still arrive; then every call
            // reports it.
            let (mut delivered, mut errors) = (1, 0);
            while errors < 3 {
                let got = catch_unwind(AssertUnwindSafe(|| match reader.try_recv() {
                    Ok(Some(Event::Record(s))) => Got::Record(s.seq()),
                    Err(RecvError::Corrupt { shard, pos, what, .. }) => Got::Corrupt(shard, pos, what),
                    other => Got::Other(format!("{other:?}")),
                }));
                match got {
                    Ok(Got::Record(seq)) if errors == 0 && seq == delivered => delivered += 1,
                    Ok(Got::Corrupt(1, at, why)) if at == pos => {
                        if errors == 0 {
                            eprintln!("{what}, gated {gated}: {why}");
                        }
                        errors += 1;
                    }
                    Ok(Got::Other(event)) => {
                        panic!("{what}, gated {gated}: expected Corrupt at {pos}, got {event}")
                    }
                    Ok(got) => panic!("{what}, gated {gated}: expected Corrupt at {pos}, got {got:?}"),
                    Err(_) => panic!("{what}, gated {gated}: try_recv panicked"),
                }
            }
            assert_eq!(delivered, pos / 40, "{what}, gated {gated}: records before the damage");
            assert!(channel_info(&bus, &name).is_ok());
        }
    }
}
