//! Reader slots and liveness: who owns a slot, when a holder counts as dead,
//! and what a reader whose slot was taken does (FORMAT.md §4.2, §6.4, §6.7).
//!
//! Child processes are this test binary re-run in a role (see
//! `child_process_entry`), some of them in a new pid namespace or with a
//! private `/proc` mounted `hidepid=2` (these tests need root and
//! `unshare`/`setpriv` from util-linux, and say so in one line if missing).

mod common;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shm_bus::layout::{READERS_HEADER_SIZE, reader_slot, slot_state};
use shm_bus::{
    AttachError, BusDir, ChannelOptions, CreateError, Event, Producer, Reader, ReaderOptions, RecvError,
    ReserveError, StartAt, channel_info,
};

use common::{ChildCtx, ChildProc, GatedCheck, PATIENCE, Records, StreamCheck, Until, say, write_stream};

/// Entry point of the child processes the tests below spawn; returns at once
/// in a normal test run.
#[test]
fn child_process_entry() {
    let Some(ctx) = ChildCtx::from_env() else { return };
    match ctx.role.as_str() {
        "lossy_reader" => run_child_lossy_reader(&ctx),
        "churn_reader" => run_child_churn_reader(&ctx),
        "create" => run_child_create(&ctx),
        "hidepid_producer" => run_child_hidepid_producer(&ctx),
        other => panic!("unknown role {other}"),
    }
}

fn bus_params(bus: &BusDir, channel: &str) -> Vec<(&'static str, String)> {
    vec![("bus", bus.path().display().to_string()), ("channel", channel.to_owned())]
}

/// A 100-byte payload that tells records apart.
fn payload(seq: u64) -> Vec<u8> {
    (0..100u64).map(|i| (seq.wrapping_mul(31) ^ i) as u8).collect()
}

/// Receives the next record of `reader` now and checks it is `seq`.
fn expect_record(reader: &mut Reader, seq: u64) {
    match reader.try_recv().unwrap() {
        Some(Event::Record(s)) => {
            assert_eq!((s.seq(), s.payload()), (seq, &payload(seq)[..]));
            assert!(s.is_valid());
        }
        other => panic!("expected record {seq}, got {other:?}"),
    }
}

/// Overwrites the u64 at `offset` of slot `slot` of a `.readers` file.
fn poke_slot(bus: &BusDir, name: &str, slot: u32, offset: usize, value: u64) {
    let file = OpenOptions::new().write(true).open(bus.readers_path(name)).unwrap();
    let slot_size = shm_bus::layout::reader_slot_size(1);
    let at = READERS_HEADER_SIZE + u64::from(slot) * slot_size + offset as u64;
    file.write_all_at(&value.to_le_bytes(), at).unwrap();
}

// ---------------------------------------------------------------------------
// Defect 1: slot ownership
// ---------------------------------------------------------------------------

/// A live gated reader whose slot is taken over (it looks like a reader of
/// another pid namespace that has been silent for ages, so a new reader
/// judges it dead) while it holds a sample: the sample is no longer valid,
/// dropping it does not move the new holder's gate, the reader's next calls
/// fail with `SlotLost`, and dropping the reader leaves the slot to the new
/// holder, which gets every record intact while the writer laps the ring.
#[test]
fn reader_whose_slot_was_taken_over_never_touches_it_again() {
    let (_dir, bus) = common::bus();
    let name = "slots/taken";
    let opts = ChannelOptions { capacity: 4096, reader_slots: 1, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut first = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    for seq in 0..20 {
        writer.write(1, &payload(seq)).unwrap();
    }
    writer.publish();
    for seq in 0..10 {
        expect_record(&mut first, seq);
    }
    let Some(Event::Record(held)) = first.try_recv().unwrap() else { panic!("record 10 is published") };
    assert_eq!(held.seq(), 10);

    // The holder now looks dead to anyone who asks: another pid namespace,
    // no heartbeat for ages. The only slot is taken, so a new gated reader
    // takes it over.
    poke_slot(&bus, name, 0, reader_slot::PID_NS, 1);
    poke_slot(&bus, name, 0, reader_slot::HEARTBEAT_NS, 0);
    let mut second = Reader::attach(&bus, name, ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    assert_eq!(second.slot(), Some(0));
    assert!(!held.is_valid(), "a sample of a reader that lost its slot reported valid");
    drop(held); // must not store its position into the new holder's slot
    for _ in 0..2 {
        match first.try_recv() {
            Err(RecvError::SlotLost { slot: 0, .. }) => {}
            other => panic!("expected SlotLost, got {other:?}"),
        }
    }
    assert!(!first.is_gated());
    drop(first); // must not free the new holder's slot
    let info = channel_info(&bus, name).unwrap();
    assert!(matches!(&info.readers[..], [r] if r.slot == 0 && r.gated), "{:?}", info.readers);

    // The new holder gates the writer from the oldest record on: it gets
    // every record, in order and intact, while the writer laps the ring.
    let mut next_read = 0;
    let mut next_written = 20;
    while next_read < 300 {
        loop {
            match writer.send(1, &payload(next_written)) {
                Ok(seq) => next_written = seq + 1,
                Err(ReserveError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while next_read < next_written {
            expect_record(&mut second, next_read);
            next_read += 1;
        }
    }
}

/// Someone else stored a position in a live gated reader's slot (a reader
/// that held the slot before and missed that it was reaped: its position
/// swap can succeed when the new holder happened to start where it stood,
/// FORMAT.md §4.2). The gate is no longer where the reader left it, so the
/// writer may overwrite what it has not read: the reader trusts no further
/// record (`SlotLost` at once, not after delivering one more), and gives the
/// slot back instead of leaving it GATED under its live pid, where nobody
/// would reap it and a gate nobody moves would hold the writer back.
#[test]
fn gated_reader_whose_position_another_stored_fails_and_frees_its_slot() {
    let (_dir, bus) = common::bus();
    let name = "slots/moved";
    let opts = ChannelOptions { capacity: 4096, reader_slots: 1, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    for seq in 0..4 {
        writer.write(1, &payload(seq)).unwrap();
    }
    writer.publish();
    expect_record(&mut reader, 0);
    // Records take 32 + 104 bytes: the reader released 136; a stale holder
    // stores the end of record 1.
    poke_slot(&bus, name, 0, reader_slot::SHARDS, 2 * 136);
    for _ in 0..2 {
        match reader.try_recv() {
            Err(RecvError::SlotLost { slot: 0, .. }) => {}
            other => panic!("expected SlotLost, got {other:?}"),
        }
    }
    assert!(!reader.is_gated());
    let info = channel_info(&bus, name).unwrap();
    assert!(info.readers.is_empty(), "the lost slot still holds a reader: {:?}", info.readers);
    let mut successor = Reader::attach(&bus, name, ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    assert_eq!(successor.slot(), Some(0));
    for seq in 0..4 {
        expect_record(&mut successor, seq);
    }
}

/// The same for a registered lossy reader: it finds out when its next
/// position swap fails, gives the slot back (left LOSSY under its live pid,
/// the slot would never be reaped and its stale position would hold the
/// writer's hot window down for good) and carries on without a slot,
/// losing nothing.
#[test]
fn lossy_reader_whose_position_another_stored_frees_its_slot_and_carries_on() {
    let (_dir, bus) = common::bus();
    let name = "slots/moved-lossy";
    let opts = ChannelOptions { capacity: 4096, reader_slots: 1, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut reader = Reader::attach(&bus, name, ReaderOptions::lossy()).unwrap();
    assert_eq!(reader.slot(), Some(0));
    for seq in 0..4 {
        writer.write(1, &payload(seq)).unwrap();
    }
    writer.publish();
    expect_record(&mut reader, 0);
    poke_slot(&bus, name, 0, reader_slot::SHARDS, 2 * 136);
    for seq in 1..4 {
        expect_record(&mut reader, seq);
    }
    assert_eq!(reader.slot(), None);
    let info = channel_info(&bus, name).unwrap();
    assert!(info.readers.is_empty(), "the lost slot still holds a reader: {:?}", info.readers);
    assert_eq!(reader.stats().lost, 0);
}

/// A reader that dies between claiming a slot and activating it leaves the
/// slot CLAIMING. While the claim is recent (its heartbeat fresh) nobody
/// takes it; once it is silent for the heartbeat timeout, the next reader
/// that finds no free slot takes it over instead of failing for good.
#[test]
fn slot_abandoned_in_the_middle_of_a_claim_is_taken_over() {
    let (_dir, bus) = common::bus();
    let name = "slots/abandoned";
    let opts = ChannelOptions { capacity: 4096, reader_slots: 1, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let reader = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    // Make its slot look like a claim under way, fresh heartbeat and all.
    poke_slot(&bus, name, 0, reader_slot::OWNER, slot_state::owner_word(slot_state::CLAIMING, 1));
    drop(reader); // its detach fails: the word is no longer the one it stored
    match Reader::attach(&bus, name, ReaderOptions::gated()) {
        Err(AttachError::NoReaderSlot { .. }) => {}
        other => panic!("a claim under way was taken over: {other:?}"),
    }
    // The claimant never got further: its heartbeat is old.
    poke_slot(&bus, name, 0, reader_slot::HEARTBEAT_NS, 0);
    let mut successor = Reader::attach(&bus, name, ReaderOptions::gated()).unwrap();
    assert_eq!(successor.slot(), Some(0));
    let mut writer = producer.shard(0).unwrap();
    writer.send(1, &payload(0)).unwrap();
    expect_record(&mut successor, 0);
    assert_eq!(channel_info(&bus, name).unwrap().reaped_readers, 1);
}

/// Child role "churn_reader": attaches gated (`NOSLOT` and exit when every
/// slot is held by a live reader), reports `ATTACHED slot=`, and checks
/// every record until it is killed.
fn run_child_churn_reader(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let records = Records::for_capacity(ctx.param("salt"), ctx.param("capacity"));
    let mut reader = match Reader::attach(&ctx.bus(), &name, ReaderOptions::gated()) {
        Ok(reader) => reader,
        Err(AttachError::NoReaderSlot { .. }) => return say("NOSLOT"),
        Err(e) => panic!("{e}"),
    };
    say(&format!("ATTACHED slot={}", reader.slot().expect("a gated reader has a slot")));
    let mut check = GatedCheck::joining(records, reader.shard_count());
    loop {
        match reader.recv_timeout(PATIENCE).unwrap() {
            Some(Event::Record(sample)) => check.record(&sample),
            Some(Event::Ended) => break,
            other => panic!("churning reader process: unexpected {other:?}"),
        }
    }
    ctx.wait_for("never sent");
}

/// Which live reader holds which slot, as the readers themselves report it.
#[derive(Default)]
struct Owners(Mutex<HashMap<u32, String>>);

impl Owners {
    fn claim(&self, slot: u32, who: String) {
        let mut owners = self.0.lock().unwrap();
        if let Some(other) = owners.get(&slot) {
            panic!("slot {slot} owned twice: by {other} and by {who}");
        }
        owners.insert(slot, who);
    }

    fn give_up(&self, slot: u32) {
        self.0.lock().unwrap().remove(&slot);
    }
}

/// Readers attach and die around a full table of slots: two gated readers
/// hold slots for the whole run and must get every byte (SHA-256 against
/// the writers'); reader threads attach and detach, gated and lossy; reader
/// processes attach gated and are SIGKILLed at random moments, so that
/// attachers keep racing each other to take over dead holders' slots. No
/// slot is ever held by two live readers at once.
#[test]
fn readers_attach_and_die_around_a_full_slot_table() {
    const SHARDS: u32 = 2;
    const CAPACITY: u64 = 64 << 10;
    const SLOTS: u32 = 6;
    const PER_SHARD: u64 = 8000;
    let (_dir, bus) = common::bus();
    let name = "slots/churn";
    let opts =
        ChannelOptions { shards: SHARDS, capacity: CAPACITY, reader_slots: SLOTS, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let records = Records::for_capacity(0x5107, CAPACITY);
    let owners = Owners::default();
    let survivors: Vec<Reader> =
        (0..2).map(|_| Reader::attach(&bus, name, ReaderOptions::gated()).unwrap()).collect();
    for (i, reader) in survivors.iter().enumerate() {
        owners.claim(reader.slot().unwrap(), format!("surviving reader {i}"));
    }
    let done = AtomicBool::new(false);
    let (kills, thread_attaches) = (AtomicU64::new(0), AtomicU64::new(0));

    let (written, checks) = thread::scope(|s| {
        let survivors: Vec<_> = survivors
            .into_iter()
            .map(|mut reader| {
                s.spawn(move || {
                    let mut check = GatedCheck::from_start(records, SHARDS);
                    common::read_to_end(&mut reader, |sample| check.record(sample));
                    check
                })
            })
            .collect();
        for t in 0..2u64 {
            let (bus, owners, done, thread_attaches) = (&bus, &owners, &done, &thread_attaches);
            s.spawn(move || {
                let mut round = t;
                while !done.load(Ordering::Relaxed) {
                    round += 1;
                    let gated = round % 2 == 0;
                    let mut reader = match Reader::attach(
                        bus,
                        name,
                        ReaderOptions { gated, start: StartAt::Next, ..Default::default() },
                    ) {
                        Ok(reader) => reader,
                        Err(AttachError::NoReaderSlot { .. }) => {
                            thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    thread_attaches.fetch_add(1, Ordering::Relaxed);
                    let slot = reader.slot();
                    if let Some(slot) = slot {
                        owners.claim(slot, format!("reader thread {t} round {round}"));
                    }
                    let mut check = StreamCheck::joining(gated, records, SHARDS);
                    for _ in 0..100 {
                        match reader.recv_timeout(PATIENCE).unwrap() {
                            Some(Event::Record(sample)) => check.record(&sample),
                            Some(Event::Ended) => break,
                            other => panic!("reader thread: unexpected {other:?}"),
                        }
                    }
                    if let Some(slot) = slot {
                        owners.give_up(slot);
                    }
                }
            });
        }
        let killer = s.spawn(|| {
            let params = [
                bus_params(&bus, name),
                vec![("salt", records.salt.to_string()), ("capacity", CAPACITY.to_string())],
            ]
            .concat();
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) {
                let mut children: Vec<(ChildProc, Option<u32>)> = (0..3)
                    .map(|_| {
                        let mut child = ChildProc::spawn("churn_reader", &params);
                        let (tag, fields) = child.expect_one_of(&["ATTACHED", "NOSLOT"]);
                        let slot = (tag == "ATTACHED").then(|| fields.get::<u32>("slot"));
                        (child, slot)
                    })
                    .collect();
                for (child, slot) in &mut children {
                    if let Some(slot) = *slot {
                        owners.claim(slot, format!("reader process {}", child.pid()));
                    }
                }
                round += 1;
                thread::sleep(Duration::from_millis(5 + round * 17 % 60));
                for (mut child, slot) in children {
                    if let Some(slot) = slot {
                        owners.give_up(slot);
                        child.sigkill();
                        assert_eq!(child.wait().signal(), Some(9), "a reader process failed");
                        kills.fetch_add(1, Ordering::Relaxed);
                    } else {
                        child.wait_success();
                    }
                }
            }
        });
        let writers: Vec<_> = (0..SHARDS)
            .map(|i| {
                let mut writer = producer.shard(i).unwrap();
                s.spawn(move || write_stream(&mut writer, &records, Until::Records(PER_SHARD)))
            })
            .collect();
        let written: Vec<_> = writers.into_iter().map(|t| t.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        killer.join().unwrap();
        producer.end();
        (written, survivors.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>())
    });

    let counts: Vec<u64> = written.iter().map(|t| t.records).collect();
    for check in &checks {
        check.assert_complete(&counts);
        for (shard, totals) in written.iter().enumerate() {
            assert_eq!(check.digest(shard as u32), totals.digest, "surviving gated reader, shard {shard}");
        }
    }
    let info = channel_info(&bus, name).unwrap();
    let (kills, thread_attaches) = (kills.into_inner(), thread_attaches.into_inner());
    eprintln!(
        "{kills} reader processes killed, {thread_attaches} reader threads attached, {} slots reaped",
        info.reaped_readers
    );
    assert!(kills > 0 && thread_attaches > 0 && info.reaped_readers > 0);
}

// ---------------------------------------------------------------------------
// Defect 6: dead lossy readers
// ---------------------------------------------------------------------------

/// Child role "lossy_reader": attaches lossy (it gets a slot), reports
/// `ATTACHED slot=` and waits, reading nothing, until it is killed.
fn run_child_lossy_reader(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let reader = Reader::attach(&ctx.bus(), &name, ReaderOptions::lossy()).unwrap();
    say(&format!("ATTACHED slot={}", reader.slot().expect("a free slot")));
    ctx.wait_for("never sent");
}

/// A registered lossy reader that never reads holds the writer's hot-window
/// floor down (the writer does not start over while it lags); once its
/// process is killed, the writer reaps its slot and starts over again.
#[test]
fn dead_lossy_reader_is_reaped_and_the_writer_starts_over_again() {
    let (_dir, bus) = common::bus();
    let name = "slots/lossy";
    let opts = ChannelOptions { capacity: 256 << 10, hot_window: 32 << 10, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let mut child = ChildProc::spawn("lossy_reader", &bus_params(&bus, name));
    child.expect("ATTACHED");
    let kib = [7u8; 1024];
    let mut write = |n: usize| {
        for _ in 0..n {
            writer.send(1, &kib).unwrap();
        }
    };
    write(600); // more than two rings: the lossy reader is lapped
    let info = channel_info(&bus, name).unwrap();
    assert_eq!(
        info.shards[0].start_over_count, 0,
        "the lagging lossy reader keeps the writer from starting over"
    );
    assert!(matches!(&info.readers[..], [r] if !r.gated && r.alive == Some(true)), "{:?}", info.readers);

    child.sigkill();
    assert_eq!(child.wait().signal(), Some(9));
    // The writer looks for dead readers at most every 50 ms: keep writing
    // (a ring's worth at a time) until it reaped the slot and started over.
    let killed = Instant::now();
    loop {
        write(300);
        let info = channel_info(&bus, name).unwrap();
        if info.readers.is_empty() && info.shards[0].start_over_count > 0 {
            assert_eq!(info.reaped_readers, 1);
            eprintln!("reaped and started over {:?} after the kill", killed.elapsed());
            break;
        }
        assert!(killed.elapsed() < PATIENCE, "the dead lossy reader still holds the floor: {info:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Defect 3: liveness across pid namespaces and with a hidden /proc
// ---------------------------------------------------------------------------

/// Runs `command`; panics with one line naming what is missing if it fails.
fn require(command: &[&str], what: &str) {
    let ok = Command::new(command[0]).args(&command[1..]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "prerequisite missing: {what} (`{}` failed; needs root and util-linux: apt-get install util-linux)",
        command.join(" ")
    );
}

/// Child role "create": creates `channel` as a producer; reports `CREATED
/// pid= generation=` and keeps it live (heartbeat and all) until `end`, or
/// reports `BUSY pid=` and exits.
fn run_child_create(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let opts = ChannelOptions { capacity: 4096, ..Default::default() };
    match Producer::create(&ctx.bus(), &name, opts) {
        Ok(producer) => {
            say(&format!("CREATED pid={} generation={}", std::process::id(), producer.generation()));
            ctx.wait_for("end");
        }
        Err(CreateError::Busy { pid, .. }) => say(&format!("BUSY pid={pid}")),
        Err(e) => panic!("{e}"),
    }
}

const NEW_PID_NS: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// Two producers in two pid namespaces, both pid 1 there, never replace
/// each other's live channel; neither does one in our namespace. Once the
/// first dies (SIGKILL: it never ends the channel), its heartbeat stops and
/// a producer of any namespace takes the channel over within the heartbeat
/// timeout.
#[test]
fn producers_in_other_pid_namespaces_are_judged_by_their_heartbeat() {
    require(&["unshare", "--pid", "--fork", "--mount-proc", "true"], "a new pid namespace");
    let (_dir, bus) = common::bus();
    let name = "slots/pidns";
    let params = bus_params(&bus, name);
    let mut first = ChildProc::spawn_under(&NEW_PID_NS, "create", &params);
    let created = first.expect("CREATED");
    assert_eq!(created.get::<u32>("pid"), 1, "the producer is pid 1 of its namespace");
    let generation: u64 = created.get("generation");

    let mut second = ChildProc::spawn_under(&NEW_PID_NS, "create", &params);
    assert_eq!(
        second.expect("BUSY").get::<u32>("pid"),
        1,
        "a producer of another namespace replaced a live channel"
    );
    second.wait_success();
    let opts = ChannelOptions { capacity: 4096, ..Default::default() };
    assert!(matches!(Producer::create(&bus, name, opts), Err(CreateError::Busy { pid: 1, .. })));
    let info = channel_info(&bus, name).unwrap();
    assert_eq!(info.generation, generation);
    assert_eq!(info.producer_alive, Some(true), "a beating producer of another namespace is alive");

    first.sigkill();
    assert_eq!(first.wait().signal(), Some(9));
    let killed = Instant::now();
    // Introspection judges the dead producer by its heartbeat too: the
    // channel shows a dead producer once its beat is stale.
    while channel_info(&bus, name).unwrap().producer_alive != Some(false) {
        assert!(killed.elapsed() < Duration::from_secs(20), "the dead producer still looks alive");
        thread::sleep(Duration::from_millis(200));
    }
    let producer = loop {
        match Producer::create(&bus, name, opts) {
            Ok(producer) => break producer,
            Err(CreateError::Busy { .. }) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(20),
                    "still busy {:?} after the producer died",
                    killed.elapsed()
                );
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let took = killed.elapsed();
    eprintln!("took the channel over {took:?} after its producer in another pid namespace died");
    // Not at once, as when a dead producer of another namespace looked like
    // this process: only once its heartbeat went stale (the last beat came
    // at most about a second before the kill, the timeout is 5 s).
    assert!(took >= Duration::from_secs(2), "took over after {took:?}");
    assert_ne!(producer.generation(), generation);
}

/// Child role "hidepid_producer" (run as an unprivileged user with `/proc`
/// mounted `hidepid=2`): creates `channel`, reports `CREATED`, waits for
/// `fill`, writes records of [`payload`] until the ring is full and reports
/// `FULL records=` (or `REAPED` if it never fills); then, on `retry`, retries for 2 s (the writer reaps
/// dead readers meanwhile) and reports `STILL_FULL` or `REAPED`; ends the
/// channel on `end`.
fn run_child_hidepid_producer(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let opts = ChannelOptions { capacity: 4096, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&ctx.bus(), &name, opts).unwrap();
    let mut writer = producer.shard(0).unwrap();
    say("CREATED");
    ctx.wait_for("fill");
    // A ring holds 30 of these records: far more means the reader was
    // reaped (judged dead) as soon as it held the writer up.
    let mut seq = 0;
    while seq < 200 && writer.send(1, &payload(seq)).is_ok() {
        seq += 1;
    }
    if seq == 200 {
        say("REAPED");
        return ctx.wait_for("end");
    }
    say(&format!("FULL records={seq}"));
    ctx.wait_for("retry");
    match writer.reserve_timeout(100, Duration::from_secs(2)) {
        Ok(r) => {
            r.abort();
            say("REAPED");
        }
        Err(ReserveError::Full { reader_pid, .. }) => say(&format!("STILL_FULL reader_pid={reader_pid}")),
        Err(e) => panic!("{e}"),
    }
    ctx.wait_for("end");
    drop(writer);
    producer.end();
}

/// The producer runs as another user (nobody) with a private `/proc`
/// mounted `hidepid=2`, where our process is invisible to it; our gated
/// reader lags (reads nothing) until the ring is full. The producer must
/// not take "cannot read /proc/PID" for "dead": it keeps reporting Full,
/// and the reader then gets every record.
#[test]
fn lagging_gated_reader_of_another_user_is_not_reaped_behind_hidepid() {
    const NOBODY: u32 = 65534;
    require(
        &["unshare", "--mount", "sh", "-c", "mount -t proc -o hidepid=2 proc /proc"],
        "a private /proc with hidepid=2",
    );
    require(
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "true"],
        "setpriv to user nobody",
    );
    let (dir, bus) = common::bus();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let name = "hidden";
    let wrapper = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        "mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" \"$@\"",
    ];
    let mut producer = ChildProc::spawn_under(&wrapper, "hidepid_producer", &bus_params(&bus, name));
    producer.expect("CREATED");
    // The files are nobody's: this (root) reader trusts that owner.
    let trusting = bus.clone().trust_uid(NOBODY);
    let mut reader = Reader::attach(&trusting, name, ReaderOptions::gated()).unwrap();
    producer.send("fill");
    let (filled, fields) = producer.expect_one_of(&["FULL", "REAPED"]);
    assert_eq!(filled, "FULL", "the producer reaped a live gated reader it could not see in /proc");
    let written: u64 = fields.get("records");
    assert!(written > 10, "{written} records filled the ring");
    producer.send("retry");
    let (verdict, _) = producer.expect_one_of(&["STILL_FULL", "REAPED"]);
    assert_eq!(verdict, "STILL_FULL", "the producer reaped a live gated reader it could not see in /proc");
    for seq in 0..written {
        expect_record(&mut reader, seq);
    }
    producer.send("end");
    producer.wait_success();
}
