//! The independent Python reader (`python/shm_bus_reader.py`, written from
//! `FORMAT.md` alone) must read what this crate writes, byte for byte, and
//! reject files that are not shm-bus channels. Proves that FORMAT.md is
//! sufficient. Runs `$RINGEST_TEST_PYTHON` (set by `scripts/test`), else
//! `python3` on `PATH`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shm_bus::layout::{RECORD_HEADER, max_payload, record_size};
use shm_bus::{BusDir, ChannelOptions, Producer, channel_info};

fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("shm-bus-py").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/shm_bus_reader.py")
}

/// The interpreter: what `scripts/test` chose, else `python3`.
fn python() -> std::ffi::OsString {
    std::env::var_os("RINGEST_TEST_PYTHON").unwrap_or_else(|| "python3".into())
}

fn python_command(bus: &BusDir, channel: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script()).arg("--bus").arg(bus.path()).arg(channel).args(extra);
    cmd
}

fn python_missing(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        panic!(
            "{} not found: run scripts/test (or apt-get install python3); this test runs {}",
            Path::new(&python()).display(),
            script().display()
        );
    }
    panic!("cannot run {} {}: {e}", Path::new(&python()).display(), script().display())
}

/// Runs the Python reader on `channel`; fails clearly when python3 is missing.
fn run_python(bus: &BusDir, channel: &str, extra: &[&str]) -> Output {
    python_command(bus, channel, extra).output().unwrap_or_else(|e| python_missing(e))
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "python reader failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(str::to_owned).collect()
}

/// The raw text of `key`'s value in a flat JSON object line (ints, strings).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat).unwrap_or_else(|| panic!("no {key} in {line}")) + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim_matches('"')
}

fn field_opt<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.contains(&format!("\"{key}\":")).then(|| field(line, key))
}

fn field_u64(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic payload of record `seq` of `shard` with `len` bytes.
fn payload(shard: u32, seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i * 7 + shard as usize * 101) as u8).collect()
}

/// A record as the writer laid it out (positions simulated independently of
/// the crate, following FORMAT.md section 3.4).
struct Written {
    pos: u64,
    payload: Vec<u8>,
}

/// Where a shard's writer stands, simulated.
#[derive(Default)]
struct Sim {
    pos: u64,
    /// Positions of the padding records written.
    paddings: Vec<u64>,
    /// Positions of the stubs (< 32 bytes) skipped at the end of the ring.
    stubs: Vec<u64>,
}

impl Sim {
    /// Places a record of `len` bytes: returns its position.
    fn place(&mut self, cap: u64, len: u64) -> u64 {
        let room = cap - (self.pos % cap);
        let size = record_size(len);
        if room < size {
            if room >= RECORD_HEADER {
                self.paddings.push(self.pos);
            } else {
                self.stubs.push(self.pos);
            }
            self.pos += room;
        }
        let at = self.pos;
        self.pos += size;
        at
    }
}

/// Payload length for the next record of a shard in `style`, steering the
/// ring ends so that sub-header stubs (style 1) and padding records (style 2)
/// occur.
fn next_len(style: u32, cap: u64, sim: &Sim, seq: u64) -> u64 {
    let room = cap - (sim.pos % cap);
    let max = max_payload(cap);
    match style {
        // Small records that never reach the end of the ring.
        0 => seq * 13 % 97,
        // Mixed sizes; near the end of the ring, fill it up to a stub of 24
        // bytes, which the next record skips.
        1 => {
            if (RECORD_HEADER + 24..2048).contains(&room) {
                room - 24 - RECORD_HEADER
            } else {
                seq * 7919 % 1500
            }
        }
        // Big records, up to the largest payload.
        _ => {
            if seq % 5 == 0 {
                max
            } else {
                (seq * 104_729 % max).max(1)
            }
        }
    }
}

#[test]
fn python_reader_matches_every_retained_payload() {
    let (_dir, bus) = bus();
    let cap: u64 = 1 << 16;
    let opts = ChannelOptions {
        shards: 3,
        capacity: cap,
        reader_slots: 4,
        mode: 0o600,
        hot_window: 0,
        generation: None,
    };
    let producer = Producer::create(&bus, "py/stream", opts).unwrap();
    let counts = [500u64, 3000, 300];
    let mut written: Vec<Vec<Written>> = Vec::new();
    let mut sims: Vec<Sim> = Vec::new();
    for (shard, &n) in counts.iter().enumerate() {
        let shard = shard as u32;
        let mut writer = producer.shard(shard).unwrap();
        let mut sim = Sim::default();
        let mut records = Vec::new();
        for seq in 0..n {
            let len = next_len(shard, cap, &sim, seq);
            let p = payload(shard, seq, len as usize);
            let pos = sim.place(cap, len);
            let got = writer.write((seq % 7) as u16, &p).unwrap();
            assert_eq!(got, seq);
            records.push(Written { pos, payload: p });
            if seq % 7 == 6 {
                writer.publish();
            }
        }
        drop(writer); // publishes the rest
        written.push(records);
        sims.push(sim);
    }
    // Shard 0 never wraps: nothing overwritten, the reader must see all of it.
    assert!(sims[0].pos <= cap, "shard 0 must not wrap");

    let info = channel_info(&bus, "py/stream").unwrap();
    drop(producer); // ENDED

    let out = run_python(&bus, "py/stream", &["--sha256"]);
    let lines = stdout_lines(&out);
    assert!(lines[0].starts_with("{\"channel\":\"py/stream\""), "{}", lines[0]);
    assert_eq!(field(&lines[0], "state"), "ENDED");
    let shard_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("{\"shard\":")).collect();
    assert_eq!(shard_lines.len(), 3, "{lines:?}");

    for (shard, line) in shard_lines.iter().enumerate() {
        let s = &info.shards[shard];
        // Our independent layout simulation agrees with the crate.
        assert_eq!(s.write_pos, sims[shard].pos, "shard {shard}: simulated end differs");
        // What the reader reads must cross a stub (shard 1) and a padding
        // record (shard 2), not only the ring as a whole.
        let read = s.tail_pos..s.write_pos;
        if shard == 1 {
            assert!(sims[1].stubs.iter().any(|p| read.contains(p)), "shard 1: no stub in {read:?}");
        }
        if shard == 2 {
            assert!(sims[2].paddings.iter().any(|p| read.contains(p)), "shard 2: no padding in {read:?}");
        }
        // Retained: every record at or after the tail.
        let first = written[shard].iter().position(|r| r.pos >= s.tail_pos).expect("something retained");
        let retained = &written[shard][first..];
        let mut h = Sha256::new();
        let mut bytes = 0u64;
        for r in retained {
            h.update(&r.payload);
            bytes += r.payload.len() as u64;
        }
        assert_eq!(field_u64(line, "shard"), shard as u64);
        assert_eq!(field_u64(line, "records"), retained.len() as u64, "shard {shard}: {line}");
        assert_eq!(field_u64(line, "bytes"), bytes, "shard {shard}: {line}");
        assert_eq!(field_u64(line, "lost"), 0, "shard {shard}: {line}");
        assert_eq!(field_u64(line, "first_seq"), first as u64, "shard {shard}: {line}");
        assert_eq!(field_u64(line, "last_seq"), counts[shard] - 1, "shard {shard}: {line}");
        assert_eq!(field(line, "sha256"), hex(&h.finalize()), "shard {shard}: {line}");
    }
    // The case where nothing was overwritten: the reader saw every record.
    assert_eq!(field_u64(shard_lines[0], "records"), counts[0]);
    assert_eq!(info.shards[0].tail_pos, 0);
}

/// A writer with a hot window starts over and, for a gated reader that
/// stalls, skips ahead into the part of the ring it skipped: padding
/// records in mid-ring and records written inside an earlier padding. The
/// independent reader, written from FORMAT.md alone, reads the retained
/// records exactly as the crate's own reader does.
#[test]
fn python_reader_reads_a_ring_a_writer_started_over_and_skipped_ahead_in() {
    use shm_bus::{Event, Reader, ReaderOptions, ReserveError, StartAt};
    let (_dir, bus) = bus();
    let cap: u64 = 64 << 10;
    let opts = ChannelOptions { capacity: cap, hot_window: 8 << 10, ..ChannelOptions::default() };
    // The gated reader stalls at a different point of the writer's cycle in
    // each phase; not every point needs a skip ahead.
    let name = (0..16)
        .map(|phase| {
            let name = format!("py/hot{phase}");
            let producer = Producer::create(&bus, &name, opts).unwrap();
            let mut writer = producer.shard(0).unwrap();
            let mut gated = Reader::attach(&bus, &name, ReaderOptions::gated()).unwrap();
            let mut seq = 0;
            let send = |writer: &mut shm_bus::ShardWriter, seq: &mut u64| {
                let len = 200 + (*seq * 7919 % 1500) as usize;
                let sent = writer.write((*seq % 7) as u16, &payload(0, *seq, len));
                if sent.is_ok() {
                    *seq += 1;
                }
                sent
            };
            for _ in 0..100 + phase {
                send(&mut writer, &mut seq).unwrap();
                writer.publish();
                assert!(matches!(gated.try_recv(), Ok(Some(Event::Record(_)))));
            }
            loop {
                match send(&mut writer, &mut seq) {
                    Ok(_) => {}
                    Err(ReserveError::Full { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            drop(writer);
            drop(producer); // ENDED
            let shard = channel_info(&bus, &name).unwrap().shards[0];
            (name, shard)
        })
        .find(|(_, shard)| shard.skip_ahead_count > 0 && shard.start_over_count > 0)
        .map(|(name, _)| name)
        .expect("no phase made the writer skip ahead");

    // What the crate's reader retains, from the oldest record on.
    let mut rust = Reader::attach(&bus, &name, ReaderOptions::lossy().start(StartAt::Oldest)).unwrap();
    let (mut records, mut bytes, mut first, mut last) = (0u64, 0u64, None, 0);
    let mut h = Sha256::new();
    while let Some(Event::Record(sample)) = rust.try_recv().unwrap() {
        assert_eq!(sample.payload(), payload(0, sample.seq(), sample.payload().len()));
        assert_eq!(sample.lost_before(), 0);
        h.update(sample.payload());
        records += 1;
        bytes += sample.payload().len() as u64;
        first.get_or_insert(sample.seq());
        last = sample.seq();
    }
    assert!(records > 40, "{records} records retained");

    let out = run_python(&bus, &name, &["--sha256"]);
    let lines = stdout_lines(&out);
    let line = lines.iter().find(|l| l.starts_with("{\"shard\":")).expect("a shard line");
    assert_eq!(field_u64(line, "records"), records, "{line}");
    assert_eq!(field_u64(line, "bytes"), bytes, "{line}");
    assert_eq!(field_u64(line, "lost"), 0, "{line}");
    assert_eq!(field_u64(line, "first_seq"), first.unwrap(), "{line}");
    assert_eq!(field_u64(line, "last_seq"), last, "{line}");
    assert_eq!(field(line, "sha256"), hex(&h.finalize()), "{line}");
}

#[test]
fn python_reader_prints_records_merged_by_timestamp() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions {
        shards: 2,
        capacity: 4096,
        reader_slots: 1,
        mode: 0o600,
        hot_window: 0,
        generation: None,
    };
    let producer = Producer::create(&bus, "py/json", opts).unwrap();
    let long: Vec<u8> = (0..40u8).collect();
    let mut w0 = producer.shard(0).unwrap();
    let mut w1 = producer.shard(1).unwrap();
    w0.write_at(1, 10, b"abc").unwrap();
    w1.write_at(2, 20, b"").unwrap();
    w0.write_at(3, 30, &long).unwrap();
    w1.write_at(0xFFFE, 40, b"\x00\xff").unwrap();
    w0.write_at(5, 50, b"12345678").unwrap();
    drop((w0, w1));
    drop(producer);

    let lines = stdout_lines(&run_python(&bus, "py/json", &[]));
    let expected = [
        r#"{"shard":0,"seq":0,"kind":1,"timestamp_ns":10,"len":3,"payload_hex":"616263"}"#.to_owned(),
        r#"{"shard":1,"seq":0,"kind":2,"timestamp_ns":20,"len":0,"payload_hex":""}"#.to_owned(),
        format!(
            r#"{{"shard":0,"seq":1,"kind":3,"timestamp_ns":30,"len":40,"payload_hex":"{}"}}"#,
            hex(&long[..32])
        ),
        r#"{"shard":1,"seq":1,"kind":65534,"timestamp_ns":40,"len":2,"payload_hex":"00ff"}"#.to_owned(),
        r#"{"shard":0,"seq":2,"kind":5,"timestamp_ns":50,"len":8,"payload_hex":"3132333435363738"}"#
            .to_owned(),
    ];
    assert_eq!(lines[1..], expected[..], "{lines:#?}");

    let limited = stdout_lines(&run_python(&bus, "py/json", &["--limit", "2"]));
    assert_eq!(limited[1..], expected[..2]);
}

/// Expects the Python reader to refuse the channel: exit code 1, one line
/// on stderr mentioning `what`, no records.
fn assert_rejected(bus: &BusDir, channel: &str, extra: &[&str], what: &str) {
    let out = run_python(bus, channel, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one-line error expected: {stderr}");
    assert!(stderr.contains(what), "expected {what:?} in {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn python_reader_rejects_bad_files() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions {
        shards: 1,
        capacity: 4096,
        reader_slots: 1,
        mode: 0o600,
        hot_window: 0,
        generation: None,
    };
    for name in ["bad/magic", "bad/version", "bad/generation"] {
        let producer = Producer::create(&bus, name, opts).unwrap();
        producer.shard(0).unwrap().send(1, b"hello").unwrap();
        drop(producer);
        // Sanity: intact, it is accepted.
        assert_eq!(stdout_lines(&run_python(&bus, name, &[])).len(), 2);
    }
    let patch = |path: PathBuf, off: u64, bytes: &[u8]| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, off).unwrap();
    };
    patch(bus.ring_path("bad/magic"), 0, b"NOTABUS!");
    assert_rejected(&bus, "bad/magic", &[], "magic");

    patch(bus.ring_path("bad/version"), 8, &(shm_bus::layout::FORMAT_VERSION + 1).to_le_bytes());
    assert_rejected(&bus, "bad/version", &[], "version");

    // A .readers file of another producer: never settles.
    patch(bus.readers_path("bad/generation"), 32, &2u64.to_le_bytes());
    assert_rejected(&bus, "bad/generation", &["--settle-ms", "50"], "did not settle");

    assert_rejected(&bus, "bad/missing", &[], "no channel");
}

/// Payload length of record `seq` in the lapping test.
fn lap_len(seq: u64) -> usize {
    (seq * 7919 % 61) as usize
}

/// A producer laps the Python reader while it reads (`--follow`, 4 KiB
/// rings): every record it prints must be intact (sync point V), sequence
/// numbers only go up, and every gap is reported as a loss.
#[test]
fn python_reader_survives_being_lapped() {
    let (_dir, bus) = bus();
    let opts = ChannelOptions {
        shards: 2,
        capacity: 4096,
        reader_slots: 1,
        mode: 0o600,
        hot_window: 0,
        generation: None,
    };
    let producer = Producer::create(&bus, "py/lap", opts).unwrap();
    let mut child = python_command(&bus, "py/lap", &["--follow", "--hex-bytes", "4096"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| python_missing(e));
    let stdout = child.stdout.take().unwrap();
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    // Set once the reader has printed a record after a loss: it was lapped.
    let lapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = std::thread::spawn({
        let lapped = lapped.clone();
        move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                if lines.is_empty() {
                    let _ = attached_tx.send(());
                } else if field_opt(&line, "lost").is_some() {
                    lapped.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                lines.push(line);
            }
            lines
        }
    });
    let attached = attached_rx.recv_timeout(Duration::from_secs(30));

    // One writer thread per shard, fast enough to lap, for a while and at
    // least until the reader reports a loss (or 30 s pass).
    let started = Instant::now();
    let writing = || {
        let elapsed = started.elapsed();
        elapsed < Duration::from_millis(800)
            || (!lapped.load(std::sync::atomic::Ordering::Relaxed) && elapsed < Duration::from_secs(30))
    };
    let written: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|shard| {
                let mut w = producer.shard(shard).unwrap();
                let writing = &writing;
                scope.spawn(move || {
                    let mut seq = 0u64;
                    while writing() {
                        assert_eq!(w.send(1, &payload(shard, seq, lap_len(seq))).unwrap(), seq);
                        seq += 1;
                        if seq % 32 == 0 {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                    seq
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(producer); // ENDED: the reader drains and exits

    let give_up = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            panic!("python reader did not exit after the channel ended");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines = collector.join().unwrap();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    attached.expect("python reader never attached");
    assert!(status.success(), "python reader failed ({status}): {stderr}");

    let mut last: HashMap<u32, u64> = HashMap::new();
    let (mut records, mut lost) = (0u64, 0u64);
    for line in &lines[1..] {
        let shard = field_u64(line, "shard") as u32;
        let seq = field_u64(line, "seq");
        let len = field_u64(line, "len") as usize;
        let lost_before = field_opt(line, "lost").map_or(0, |v| v.parse::<u64>().unwrap());
        assert_eq!(len, lap_len(seq), "{line}");
        assert_eq!(field(line, "payload_hex"), hex(&payload(shard, seq, len)), "torn record: {line}");
        if let Some(prev) = last.insert(shard, seq) {
            assert_eq!(seq, prev + 1 + lost_before, "gap not reported as loss: {line}");
        }
        records += 1;
        lost += lost_before;
    }
    for (shard, &n) in written.iter().enumerate() {
        assert_eq!(last.get(&(shard as u32)), Some(&(n - 1)), "shard {shard}: last record missing");
    }
    assert!(records > 0);
    eprintln!("python reader: {records} records, {lost} lost, {} written", written.iter().sum::<u64>());
    assert!(lost > 0, "the python reader was never lapped: {records} records read");
}

/// FORMAT.md §6.9: between the two renames of a producer restart the new
/// `.readers` (here with another shard count) sits next to the old `.ring`.
/// The generation check comes before the geometry checks, so both readers
/// retry until the new `.ring` arrives instead of calling the file corrupt.
#[test]
fn a_restart_between_its_two_renames_is_retried_not_corrupt() {
    let (_dir, bus) = bus();
    let (_next_dir, next_bus) = self::bus();
    let opts = |shards| ChannelOptions {
        shards,
        capacity: 4096,
        reader_slots: 2,
        mode: 0o600,
        hot_window: 0,
        generation: None,
    };
    drop(Producer::create(&bus, "restart", opts(2)).unwrap());
    let next = Producer::create(&next_bus, "restart", opts(1)).unwrap();
    next.shard(0).unwrap().send(1, b"new generation").unwrap();
    // The restart's first rename: the new .readers, the old .ring stays.
    std::fs::rename(next_bus.readers_path("restart"), bus.readers_path("restart")).unwrap();
    let python = python_command(&bus, "restart", &["--settle-ms", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| python_missing(e));
    let rust = std::thread::spawn({
        let bus = bus.clone();
        move || {
            shm_bus::Reader::attach(&bus, "restart", shm_bus::ReaderOptions::lossy()).map(|r| r.shard_count())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // The second rename.
    std::fs::rename(next_bus.ring_path("restart"), bus.ring_path("restart")).unwrap();
    assert_eq!(rust.join().unwrap().expect("the Rust reader retried"), 1);
    let lines = stdout_lines(&python.wait_with_output().unwrap());
    assert_eq!(field_u64(&lines[0], "generation"), next.generation());
    assert_eq!(field(&lines[1], "payload_hex"), hex(b"new generation"));
}

/// FORMAT.md §6.3: a record longer than the largest payload (`capacity/2 -
/// 32`) is corrupt even when it fits before the end of the ring; the copy
/// is bounded by that maximum too.
#[test]
fn a_record_longer_than_the_largest_payload_is_corrupt() {
    let (_dir, bus) = bus();
    let capacity = 8192;
    let opts =
        ChannelOptions { shards: 1, capacity, reader_slots: 2, mode: 0o600, hot_window: 0, generation: None };
    let producer = Producer::create(&bus, "long", opts).unwrap();
    producer.shard(0).unwrap().send(1, &[7u8; 8]).unwrap();
    assert_eq!(stdout_lines(&run_python(&bus, "long", &[])).len(), 2);
    // The record at position 0: its length word, kind 1.
    let too_long = max_payload(capacity) + 8;
    let lkf = too_long | (1 << 32);
    let file = std::fs::OpenOptions::new().write(true).open(bus.ring_path("long")).unwrap();
    file.write_all_at(&lkf.to_le_bytes(), 4096 + 4096 + 8).unwrap();
    let out = run_python(&bus, "long", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("exceeds the largest payload"), "{stderr}");
    // The channel line, and no record.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
