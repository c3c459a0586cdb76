//! The shm-bus demo: one producer process with several writer threads, a
//! lossless (gated) reader in a second process that checks every byte, and a
//! lossy reader that just watches. Prints rates and verifies the result.
//!
//! ```text
//! cargo run --release -p shm-bus --example demo -- [--seconds N] [--bus DIR]
//! ```
//!
//! Exit status 0 when the gated reader received every record of every shard
//! intact and in order, 1 otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_bus::{BusDir, ChannelOptions, Event, Producer, Reader, ReaderOptions, ReserveError, StartAt};

const CHANNEL: &str = "demo/records";
const SHARDS: u32 = 2;

/// The payload of record `seq` of `shard`: its length and bytes follow from
/// both, so the checker needs no copy of what was sent.
fn fill(shard: u32, seq: u64, buf: &mut [u8]) {
    let mut x = (u64::from(shard) << 56) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn payload_len(seq: u64) -> usize {
    // Mostly small, sometimes large: 16 B .. 64 KiB.
    match seq % 64 {
        0 => 65536,
        1..=8 => 4096,
        _ => 16 + (seq as usize * 131) % 1500,
    }
}

struct Args {
    seconds: f64,
    bus: Option<String>,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { seconds: 5.0, bus: None, check: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--seconds needs a positive number")?
            }
            "--bus" => args.bus = Some(it.next().ok_or("--bus needs a directory")?),
            "--check" => args.check = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The checking process: reads every record losslessly and verifies it.
fn run_checker(bus: &BusDir) -> ExitCode {
    let mut reader = match Reader::attach(bus, CHANNEL, ReaderOptions::gated().start(StartAt::Oldest)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("checker: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    let mut next_seq = vec![0u64; SHARDS as usize];
    let mut bytes = 0u64;
    let mut expected = Vec::new();
    let mut bad = 0u64;
    loop {
        match reader.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Event::Record(s))) => {
                let shard = s.shard() as usize;
                let seq = s.seq();
                expected.resize(payload_len(seq), 0);
                fill(s.shard(), seq, &mut expected);
                if seq != next_seq[shard] || s.payload() != expected.as_slice() {
                    bad += 1;
                }
                next_seq[shard] = seq + 1;
                bytes += s.payload().len() as u64;
            }
            Ok(Some(Event::Ended)) => break,
            Ok(Some(Event::Restarted { .. })) | Ok(None) => {
                eprintln!("checker: the producer went away");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("checker: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let records: u64 = next_seq.iter().sum();
    println!("checked {records} {bytes} {bad}");
    if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: {e}\nusage: demo [--seconds N] [--bus DIR]");
            return ExitCode::from(2);
        }
    };
    let (_tmp, bus) = match &args.bus {
        Some(dir) => (None, BusDir::new(dir)),
        None => {
            let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
            let tmp = tempfile::Builder::new().prefix("shm-bus-demo").tempdir_in(root).expect("temp dir");
            let bus = BusDir::new(tmp.path());
            (Some(tmp), bus)
        }
    };
    if args.check {
        return run_checker(&bus);
    }

    let opts = ChannelOptions { shards: SHARDS, capacity: 8 << 20, ..Default::default() };
    let producer = match Producer::create(&bus, CHANNEL, opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("channel {CHANNEL} in {}: {SHARDS} shards of {} MiB", bus.path().display(), opts.capacity >> 20);

    // The lossless checker runs in its own process, like a logger would.
    let mut checker = Command::new(std::env::current_exe().expect("own path"))
        .args(["--check", "--bus"])
        .arg(bus.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn checker");
    let mut checker_out = BufReader::new(checker.stdout.take().expect("piped"));
    let mut line = String::new();
    checker_out.read_line(&mut line).expect("checker output");
    if line.trim() != "ready" {
        let status = checker.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        eprintln!("demo: the checker failed to start ({status})");
        return ExitCode::FAILURE;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..SHARDS)
        .map(|i| {
            let mut writer = producer.shard(i).expect("fresh shard");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut records, mut full) = (0u64, 0u64);
                // Relaxed: a stop flag; nothing is published through it.
                while !stop.load(Ordering::Relaxed) {
                    let seq = writer.next_seq();
                    let len = payload_len(seq);
                    match writer.reserve(len) {
                        Ok(mut r) => {
                            fill(i, seq, r.buf());
                            r.commit(len, 1);
                            records += 1;
                            if records % 16 == 0 {
                                writer.publish();
                            }
                        }
                        Err(ReserveError::Full { .. }) => {
                            // The gated checker is behind: back off, lose nothing.
                            full += 1;
                            writer.publish();
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (records, full)
            })
        })
        .collect();

    // A lossy reader in this process: it never slows the writers.
    let mut watcher = Reader::attach(&bus, CHANNEL, ReaderOptions::lossy()).expect("attach watcher");
    let start = Instant::now();
    let mut last_print = start;
    while start.elapsed().as_secs_f64() < args.seconds {
        while let Ok(Some(Event::Record(_))) = watcher.try_recv() {}
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            if let Ok(info) = shm_bus::channel_info(&bus, CHANNEL) {
                let secs = start.elapsed().as_secs_f64();
                print!(
                    "{secs:5.1}s  {:>10} records  {:>8.1} MB/s",
                    info.records_written(),
                    info.bytes_written() as f64 / secs / 1e6
                );
                for r in &info.readers {
                    print!(
                        "  | reader pid {} {}: lag {} lost {}",
                        r.pid,
                        if r.gated { "gated" } else { "lossy" },
                        r.lag_records,
                        r.lost
                    );
                }
                println!();
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    let (mut records, mut full) = (0, 0);
    for w in writers {
        let (r, f) = w.join().expect("writer thread");
        records += r;
        full += f;
    }
    let info = shm_bus::channel_info(&bus, CHANNEL).expect("channel info");
    producer.end();

    line.clear();
    checker_out.read_line(&mut line).expect("checker output");
    let status = checker.wait().expect("checker exit");
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let secs = start.elapsed().as_secs_f64();
    println!();
    println!(
        "written:  {records} records, {:.1} MB in {secs:.1} s ({:.1} MB/s, {:.2} M records/s)",
        info.bytes_written() as f64 / 1e6,
        info.bytes_written() as f64 / secs / 1e6,
        records as f64 / secs / 1e6
    );
    println!(
        "producer: {full} reservations refused while the gated checker caught up (backpressure, nothing dropped)"
    );
    let stats = watcher.stats();
    println!("lossy watcher: {} received, {} lost (it is allowed to lose)", stats.received, stats.lost);
    match fields.as_slice() {
        [checked, bytes, 0] if status.success() && *checked == records && *bytes == info.bytes_written() => {
            println!(
                "gated checker (separate process): {checked} records, {bytes} bytes, every byte and sequence number verified: OK"
            );
            ExitCode::SUCCESS
        }
        _ => {
            println!("gated checker FAILED: {line:?} (exit {status}), expected {records} records");
            ExitCode::FAILURE
        }
    }
}
