//! Multi-process stress: the producer and its readers in separate processes
//! (this test binary re-run in a role, see `child_process_entry`). Lossless
//! readers check every sequence number and byte and report a SHA-256 of each
//! shard's stream, which must equal the producer's.

mod common;

use std::thread;
use std::time::Duration;

use shm_bus::{ChannelOptions, Producer, Reader, ReaderOptions, StartAt};

use common::{
    ChildCtx, ChildProc, Fields, GatedCheck, LossyCheck, Records, StreamCheck, Until, read_to_end,
    write_stream,
};

/// Entry point of the child processes the tests below spawn; returns at once
/// in a normal test run.
#[test]
fn child_process_entry() {
    let Some(ctx) = ChildCtx::from_env() else { return };
    match ctx.role.as_str() {
        "producer" => common::run_child_producer(&ctx),
        "reader" => run_child_reader(&ctx),
        other => panic!("unknown role {other}"),
    }
}

/// Child role "reader": attaches to `channel` before anything is written,
/// gated or not, reports `ATTACHED`, reads and checks every record of `salt` until
/// the channel ends, then reports per shard `REPORT shard= records=
/// digest=` (gated) or `REPORT shard= received= lost= next= exact=`
/// (lossy; `exact`: intact deliveries over all shards).
fn run_child_reader(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let gated: bool = ctx.param("gated");
    let pause_us: u64 = ctx.param("pause_us");
    let records = Records::for_capacity(ctx.param("salt"), ctx.param("capacity"));
    // Lossy readers start at `Next` (the same place on a channel nothing was
    // written to yet): `Oldest` does not count what it loses before its first
    // record (see `lossy_reader_from_oldest_or_latest_...` in stress.rs).
    let start = if gated { StartAt::Oldest } else { StartAt::Next };
    let opts = ReaderOptions { gated, start, ..Default::default() };
    let mut reader = Reader::attach(&ctx.bus(), &name, opts).unwrap();
    let shards = reader.shard_count();
    common::say("ATTACHED");
    if gated {
        let mut check = GatedCheck::from_start(records, shards);
        read_to_end(&mut reader, |sample| check.record(sample));
        for shard in 0..shards {
            let (records, digest) = (check.received[shard as usize], check.digest(shard));
            common::say(&format!("REPORT shard={shard} records={records} digest={digest}"));
        }
    } else {
        let mut check = LossyCheck::from_start(records, shards);
        if pause_us > 0 {
            check.pause = Some((16, Duration::from_micros(pause_us)));
        }
        read_to_end(&mut reader, |sample| check.record(sample));
        eprintln!("lossy reader process: {check:?}");
        for (shard, next) in check.next_seqs().iter().enumerate() {
            let (received, lost) = (check.received[shard], check.lost[shard]);
            let exact = check.exact;
            common::say(&format!(
                "REPORT shard={shard} received={received} lost={lost} next={next} exact={exact}"
            ));
        }
    }
}

/// Parameters of a reader child.
fn reader_params(
    bus: &shm_bus::BusDir,
    channel: &str,
    capacity: u64,
    salt: u64,
    gated: bool,
) -> Vec<(&'static str, String)> {
    vec![
        ("bus", bus.path().display().to_string()),
        ("channel", channel.to_owned()),
        ("capacity", capacity.to_string()),
        ("salt", salt.to_string()),
        ("gated", gated.to_string()),
        ("pause_us", if gated { 0 } else { 200 }.to_string()),
    ]
}

/// What a lossy reader child reported for one shard; returns the records
/// it received and, over all shards, how many of all its deliveries were
/// intact.
fn check_lossy_report(report: &Fields, written: u64) -> (u64, u64) {
    let (received, lost, next): (u64, u64, u64) =
        (report.get("received"), report.get("lost"), report.get("next"));
    assert_eq!(received + lost, written, "lossy reader process: received + lost");
    assert_eq!(next, written, "lossy reader process: the last record was received");
    (received, report.get("exact"))
}

/// A lossy reader's deliveries are mostly intact and flagged valid: a
/// reader that flagged every sample invalid would pass the other checks.
/// (Measured: over 90% even when it holds one sample in 16 long enough to
/// be lapped.)
fn assert_mostly_intact(received: u64, exact: u64) {
    assert!(exact > 0 && exact >= received / 2, "lossy reader: {exact} of {received} deliveries intact");
}

#[test]
fn producer_process_feeds_gated_and_lossy_reader_processes() {
    const SHARDS: u32 = 2;
    const CAPACITY: u64 = 256 << 10;
    const BYTES_PER_SHARD: u64 = 16 << 20;
    const SALT: u64 = 0xAB;
    let (_dir, bus) = common::bus();
    let name = "mp/feed";
    let opts = ChannelOptions { shards: SHARDS, capacity: CAPACITY, ..Default::default() };
    let producer = Producer::create(&bus, name, opts).unwrap();
    let mut gated: Vec<ChildProc> = (0..2)
        .map(|_| ChildProc::spawn("reader", &reader_params(&bus, name, CAPACITY, SALT, true)))
        .collect();
    let mut lossy = ChildProc::spawn("reader", &reader_params(&bus, name, CAPACITY, SALT, false));
    // Nothing is written before every reader is attached: all must account
    // for seq 0 (the gated ones receive it, the lossy one may lose it).
    for child in gated.iter_mut().chain([&mut lossy]) {
        child.expect("ATTACHED");
    }

    let records = Records::for_capacity(SALT, CAPACITY);
    let written = thread::scope(|s| {
        let threads: Vec<_> = (0..SHARDS)
            .map(|i| {
                let mut writer = producer.shard(i).unwrap();
                s.spawn(move || write_stream(&mut writer, &records, Until::Bytes(BYTES_PER_SHARD)))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>()
    });
    producer.end();

    for child in &mut gated {
        for (shard, totals) in written.iter().enumerate() {
            let report = child.expect("REPORT");
            assert_eq!(report.get::<usize>("shard"), shard);
            assert_eq!(report.get::<u64>("records"), totals.records, "gated reader process, shard {shard}");
            assert_eq!(report.get::<String>("digest"), totals.digest, "gated reader process, shard {shard}");
        }
        child.wait_success();
    }
    let (mut received, mut exact) = (0, 0);
    for (shard, totals) in written.iter().enumerate() {
        let report = lossy.expect("REPORT");
        assert_eq!(report.get::<usize>("shard"), shard);
        (received, exact) = (received + check_lossy_report(&report, totals.records).0, report.get("exact"));
    }
    lossy.wait_success();
    assert_mostly_intact(received, exact);
    let bytes: u64 = written.iter().map(|t| t.bytes).sum();
    eprintln!("{bytes} bytes in {} records", written.iter().map(|t| t.records).sum::<u64>());
    assert!(bytes >= SHARDS as u64 * BYTES_PER_SHARD);
}

#[test]
fn reader_threads_check_a_producer_process() {
    const SHARDS: u32 = 2;
    const CAPACITY: u64 = 64 << 10;
    const SALT: u64 = 0xCD;
    let (_dir, bus) = common::bus();
    let name = "mp/from-child";
    let mut producer = ChildProc::spawn(
        "producer",
        &[
            ("bus", bus.path().display().to_string()),
            ("channel", name.to_owned()),
            ("shards", SHARDS.to_string()),
            ("capacity", CAPACITY.to_string()),
            ("salt", SALT.to_string()),
            ("bytes", (8u64 << 20).to_string()),
            ("linger", "false".to_owned()),
        ],
    );
    let generation: u64 = producer.expect("CREATED").get("generation");
    let records = Records::for_capacity(SALT, CAPACITY);
    let mut gated = Reader::attach(&bus, name, ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    let mut lossy = Reader::attach(&bus, name, ReaderOptions::lossy()).unwrap();
    assert_eq!((gated.generation(), lossy.generation()), (generation, generation));
    assert_eq!(gated.producer_alive(), Some(true));
    producer.send("go");

    let pausing = StreamCheck::pausing(records, SHARDS, 16, Duration::from_micros(200));
    let (gated_check, lossy_check) = thread::scope(|s| {
        let gated = s.spawn(|| {
            let mut check = GatedCheck::from_start(records, SHARDS);
            read_to_end(&mut gated, |sample| check.record(sample));
            check
        });
        let lossy = s.spawn(|| {
            let mut check = pausing;
            read_to_end(&mut lossy, |sample| check.record(sample));
            check
        });
        (gated.join().unwrap(), lossy.join().unwrap())
    });

    let mut written = Vec::new();
    for shard in 0..SHARDS {
        let report = producer.expect("WROTE");
        assert_eq!(report.get::<u32>("shard"), shard);
        assert_eq!(gated_check.digest(shard), report.get::<String>("digest"), "shard {shard}: digest");
        written.push(report.get::<u64>("records"));
    }
    producer.wait_success();
    gated_check.assert_complete(&written);
    assert_eq!(gated.stats(), gated_check.counted(), "gated reader stats");
    lossy_check.assert_complete(&written);
    assert_eq!(lossy.stats(), lossy_check.counted(), "lossy reader stats");
    let StreamCheck::Lossy(intact) = &lossy_check else { unreachable!("a lossy check") };
    assert_mostly_intact(intact.received.iter().sum(), intact.exact);
    eprintln!("{} bytes; lossy reader: {lossy_check:?}", gated_check.bytes);
}
