//! Helpers shared by the stress, multi-process and fault tests:
//!
//! - private bus directories, so tests run in parallel;
//! - deterministic record contents ([`Records`]): the length, kind and every
//!   byte of a record derive from `(salt, shard, seq)`, so any thread or
//!   process can check a record without being told what was written;
//! - writer loops and stream checkers for gated and lossy readers;
//! - child processes: the test binary re-run as its `child_process_entry`
//!   test with a role in the environment ([`ChildProc`] on the parent side,
//!   [`ChildCtx`] on the child side).

// Every test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderStats, Sample, ShardWriter};

/// How long anything the tests wait for may take: only a hang hits it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A private bus directory in `/dev/shm` (or `/tmp`), removed on drop.
pub fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("shm-bus-test").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Record contents
// ---------------------------------------------------------------------------

/// The splitmix64 finaliser: a cheap, well-mixed hash of a `u64`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deterministic record contents of one producer run. A different `salt`
/// (for example per producer generation) gives different contents.
#[derive(Clone, Copy, Debug)]
pub struct Records {
    pub salt: u64,
    /// Largest payload: the channel's `max_payload`.
    pub max_len: usize,
}

impl Records {
    /// Records for a channel of `capacity` bytes per shard.
    pub fn for_capacity(salt: u64, capacity: u64) -> Self {
        Self { salt, max_len: shm_bus::layout::max_payload(capacity) as usize }
    }

    fn seed(&self, shard: u32, seq: u64) -> u64 {
        mix(self.salt ^ mix((u64::from(shard) << 48) ^ seq))
    }

    /// Payload length of a record: mostly up to a few KiB, some empty, some
    /// tiny, and one in 64 between half the maximum and the maximum.
    pub fn len(&self, shard: u32, seq: u64) -> usize {
        let h = self.seed(shard, seq);
        let r = (h >> 8) as usize;
        let len = match h % 64 {
            0 => self.max_len / 2 + r % (self.max_len / 2 + 1),
            1..=3 => 0,
            4..=23 => r % 64,
            _ => r % 4096,
        };
        len.min(self.max_len)
    }

    /// Kind of a record (never 0xFFFF, which marks padding).
    pub fn kind(&self, shard: u32, seq: u64) -> u16 {
        ((self.seed(shard, seq) >> 40) % 0xFFFF) as u16
    }

    /// The `i`th 8-byte word of a record's payload.
    fn word(seed: u64, i: usize) -> [u8; 8] {
        mix(seed.wrapping_add(i as u64)).to_le_bytes()
    }

    /// Fills `buf` with the payload of a record (any length: the bytes do
    /// not depend on it).
    pub fn fill(&self, shard: u32, seq: u64, buf: &mut [u8]) {
        let seed = self.seed(shard, seq);
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&Self::word(seed, i)[..chunk.len()]);
        }
    }

    /// Whether `bytes` are exactly the payload `fill` writes.
    pub fn matches(&self, shard: u32, seq: u64, bytes: &[u8]) -> bool {
        let seed = self.seed(shard, seq);
        bytes.chunks(8).enumerate().all(|(i, chunk)| chunk == &Self::word(seed, i)[..chunk.len()])
    }
}

/// SHA-256 over a shard's records (sequence number, kind, length, payload):
/// what the producer wrote and what a lossless reader got must agree.
#[derive(Clone, Default)]
pub struct StreamDigest(Sha256);

impl fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamDigest({})", self.hex())
    }
}

impl StreamDigest {
    pub fn add(&mut self, seq: u64, kind: u16, payload: &[u8]) {
        self.0.update(seq.to_le_bytes());
        self.0.update(kind.to_le_bytes());
        self.0.update((payload.len() as u64).to_le_bytes());
        self.0.update(payload);
    }

    pub fn hex(&self) -> String {
        self.0.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a writer wrote to one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardTotals {
    pub records: u64,
    pub bytes: u64,
    /// [`StreamDigest::hex`] of the records.
    pub digest: String,
}

/// How long [`write_stream`] writes.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    Records(u64),
    /// Until at least this many payload bytes.
    Bytes(u64),
    /// Until the process is killed.
    Killed,
}

/// Writes the next record through `writer`: reserve (waiting up to
/// [`PATIENCE`] while gated readers hold the ring), fill in place, commit.
/// Not published. Returns the sequence number and payload length.
pub fn write_next(writer: &mut ShardWriter, records: &Records, digest: &mut StreamDigest) -> (u64, usize) {
    let (shard, seq) = (writer.shard(), writer.next_seq());
    let (len, kind) = (records.len(shard, seq), records.kind(shard, seq));
    let mut reservation = writer
        .reserve_timeout(len, PATIENCE)
        .unwrap_or_else(|e| panic!("shard {shard} seq {seq}: no room for {len} bytes: {e}"));
    let buf = &mut reservation.buf()[..len];
    records.fill(shard, seq, buf);
    digest.add(seq, kind, buf);
    assert_eq!(reservation.commit(len, kind), seq);
    (seq, len)
}

/// Writes records through `writer`, publishing in batches of 1 to 8 records,
/// and publishes the rest at the end.
pub fn write_stream(writer: &mut ShardWriter, records: &Records, until: Until) -> ShardTotals {
    let mut digest = StreamDigest::default();
    let (mut count, mut bytes) = (0u64, 0u64);
    loop {
        let done = match until {
            Until::Records(n) => count >= n,
            Until::Bytes(n) => bytes >= n,
            Until::Killed => false,
        };
        if done {
            break;
        }
        let (seq, len) = write_next(writer, records, &mut digest);
        count += 1;
        bytes += len as u64;
        if mix(seq ^ records.salt) % 8 < 2 {
            writer.publish();
        }
    }
    writer.publish();
    ShardTotals { records: count, bytes, digest: digest.hex() }
}

// ---------------------------------------------------------------------------
// Stream checkers
// ---------------------------------------------------------------------------

/// Checks what a gated (lossless) reader receives: per shard, sequence
/// numbers without gaps and every byte as written.
#[derive(Clone, Debug)]
pub struct GatedCheck {
    records: Records,
    /// Per shard: the sequence number expected next (`None` until the first
    /// record of a reader that joined a running stream).
    next: Vec<Option<u64>>,
    pub received: Vec<u64>,
    pub bytes: u64,
    digests: Vec<StreamDigest>,
}

impl GatedCheck {
    /// For a reader attached before the first record: each shard starts at 0.
    pub fn from_start(records: Records, shards: u32) -> Self {
        let mut check = Self::joining(records, shards);
        check.next.fill(Some(0));
        check
    }

    /// For a reader that joined a running stream: each shard starts anywhere.
    pub fn joining(records: Records, shards: u32) -> Self {
        Self {
            records,
            next: vec![None; shards as usize],
            received: vec![0; shards as usize],
            bytes: 0,
            digests: vec![StreamDigest::default(); shards as usize],
        }
    }

    pub fn record(&mut self, sample: &Sample<'_>) {
        let (shard, seq) = (sample.shard(), sample.seq());
        let i = shard as usize;
        let payload = sample.payload();
        let ctx = || format!("gated reader, shard {shard} seq {seq}");
        assert_eq!(sample.lost_before(), 0, "{}: a gated reader lost records", ctx());
        if let Some(next) = self.next[i] {
            assert_eq!(seq, next, "{}: sequence gap or reordering", ctx());
        }
        assert_eq!(payload.len(), self.records.len(shard, seq), "{}: wrong length", ctx());
        assert_eq!(sample.kind(), self.records.kind(shard, seq), "{}: wrong kind", ctx());
        assert!(self.records.matches(shard, seq, payload), "{}: payload bytes differ", ctx());
        assert!(sample.is_valid(), "{}: a gated sample turned invalid", ctx());
        self.digests[i].add(seq, sample.kind(), payload);
        self.next[i] = Some(seq + 1);
        self.received[i] += 1;
        self.bytes += payload.len() as u64;
    }

    pub fn digest(&self, shard: u32) -> String {
        self.digests[shard as usize].hex()
    }

    /// Every record of every shard arrived: `written[shard]` records.
    pub fn assert_complete(&self, written: &[u64]) {
        assert_eq!(self.received, written, "gated reader: records received per shard");
    }

    /// What the reader's own counters should say (without restarts).
    pub fn counted(&self) -> ReaderStats {
        ReaderStats { received: self.received.iter().sum(), lost: 0, restarts: 0 }
    }
}

/// Checks what a lossy reader receives: per shard, strictly increasing
/// sequence numbers whose gaps are exactly the reported losses, and every
/// payload either exact or flagged invalid after use.
#[derive(Clone)]
pub struct LossyCheck {
    records: Records,
    /// Whether the reader attached before the first record (then a shard's
    /// first record reports everything before it as lost).
    from_start: bool,
    /// Per shard: the first and the last sequence number received.
    first: Vec<Option<u64>>,
    last: Vec<Option<u64>>,
    pub received: Vec<u64>,
    /// Losses reported; for a joining reader, not those its first record of
    /// a shard reports (they are relative to wherever it started).
    pub lost: Vec<u64>,
    /// Payloads that were exact and still valid after use.
    pub exact: u64,
    /// Payloads found overwritten (torn) and flagged invalid.
    pub torn: u64,
    /// Payloads that were exact but flagged invalid (overwritten right after).
    pub flagged_intact: u64,
    /// Hold every n-th sample this long before reading its payload, so the
    /// producer laps the reader while it holds the sample.
    pub pause: Option<(u64, Duration)>,
}

impl LossyCheck {
    pub fn from_start(records: Records, shards: u32) -> Self {
        Self { from_start: true, ..Self::joining(records, shards) }
    }

    pub fn joining(records: Records, shards: u32) -> Self {
        Self {
            records,
            from_start: false,
            first: vec![None; shards as usize],
            last: vec![None; shards as usize],
            received: vec![0; shards as usize],
            lost: vec![0; shards as usize],
            exact: 0,
            torn: 0,
            flagged_intact: 0,
            pause: None,
        }
    }

    pub fn record(&mut self, sample: &Sample<'_>) {
        let (shard, seq, lost) = (sample.shard(), sample.seq(), sample.lost_before());
        let i = shard as usize;
        let ctx = || format!("lossy reader, shard {shard} seq {seq} lost_before {lost}");
        let counted = match self.last[i] {
            Some(prev) => {
                assert_eq!(seq, prev + 1 + lost, "{}: gap differs from the loss (prev {prev})", ctx());
                lost
            }
            None if self.from_start => {
                assert_eq!(seq, lost, "{}: first record's loss", ctx());
                lost
            }
            None => 0,
        };
        // The header was validated before delivery: length and kind are
        // always right, even when the payload is torn afterwards.
        assert_eq!(sample.payload().len(), self.records.len(shard, seq), "{}: wrong length", ctx());
        assert_eq!(sample.kind(), self.records.kind(shard, seq), "{}: wrong kind", ctx());
        if let Some((every, pause)) = self.pause
            && self.received[i] % every == 0
        {
            std::thread::sleep(pause);
        }
        let intact = self.records.matches(shard, seq, sample.payload());
        // Sync point V: only after using the bytes does validity mean anything.
        let valid = sample.is_valid();
        assert!(intact || !valid, "{}: a torn payload was reported valid", ctx());
        match (intact, valid) {
            (true, true) => self.exact += 1,
            (false, _) => self.torn += 1,
            (true, false) => self.flagged_intact += 1,
        }
        self.first[i].get_or_insert(seq);
        self.last[i] = Some(seq);
        self.received[i] += 1;
        self.lost[i] += counted;
    }

    /// Per shard, one past the last sequence number received (0 if none).
    pub fn next_seqs(&self) -> Vec<u64> {
        self.last.iter().map(|last| last.map_or(0, |l| l + 1)).collect()
    }

    /// Per shard, every record written (since the first one received, for a
    /// joining reader) was either received or counted lost, and the last one
    /// was received (the newest record is never overwritten).
    pub fn assert_complete(&self, written: &[u64]) {
        for (i, &n) in written.iter().enumerate() {
            let first = if self.from_start { 0 } else { self.first[i].unwrap_or(n) };
            let accounted = self.received[i] + self.lost[i];
            assert_eq!(accounted, n - first, "lossy reader, shard {i}: received + lost since seq {first}");
            assert_eq!(self.last[i], n.checked_sub(1), "lossy reader, shard {i}: last record");
        }
    }

    /// What the reader's own counters should say (without restarts).
    pub fn counted(&self) -> ReaderStats {
        ReaderStats { received: self.received.iter().sum(), lost: self.lost.iter().sum(), restarts: 0 }
    }
}

impl fmt::Debug for LossyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossyCheck")
            .field("received", &self.received)
            .field("lost", &self.lost)
            .field("exact", &self.exact)
            .field("torn", &self.torn)
            .field("flagged_intact", &self.flagged_intact)
            .finish()
    }
}

/// The check that fits a reader: [`GatedCheck`] or [`LossyCheck`].
#[derive(Clone, Debug)]
pub enum StreamCheck {
    Gated(GatedCheck),
    Lossy(LossyCheck),
}

impl StreamCheck {
    pub fn from_start(gated: bool, records: Records, shards: u32) -> Self {
        if gated {
            Self::Gated(GatedCheck::from_start(records, shards))
        } else {
            Self::Lossy(LossyCheck::from_start(records, shards))
        }
    }

    /// A lossy check that holds every `every`-th sample for `pause` before
    /// reading its payload, so that the reader gets lapped while it holds
    /// samples.
    pub fn pausing(records: Records, shards: u32, every: u64, pause: Duration) -> Self {
        let mut check = LossyCheck::from_start(records, shards);
        check.pause = Some((every, pause));
        Self::Lossy(check)
    }

    pub fn joining(gated: bool, records: Records, shards: u32) -> Self {
        if gated {
            Self::Gated(GatedCheck::joining(records, shards))
        } else {
            Self::Lossy(LossyCheck::joining(records, shards))
        }
    }

    pub fn record(&mut self, sample: &Sample<'_>) {
        match self {
            Self::Gated(check) => check.record(sample),
            Self::Lossy(check) => check.record(sample),
        }
    }

    pub fn assert_complete(&self, written: &[u64]) {
        match self {
            Self::Gated(check) => check.assert_complete(written),
            Self::Lossy(check) => check.assert_complete(written),
        }
    }

    /// What the reader's own counters should say (without restarts).
    pub fn counted(&self) -> ReaderStats {
        match self {
            Self::Gated(check) => check.counted(),
            Self::Lossy(check) => check.counted(),
        }
    }
}

/// Feeds every record to `on_record` until the producer ends the channel.
/// Panics on a restart, an error, or [`PATIENCE`] without any event.
pub fn read_to_end(reader: &mut Reader, mut on_record: impl FnMut(&Sample<'_>)) {
    loop {
        match reader.recv_timeout(PATIENCE).unwrap() {
            Some(Event::Record(sample)) => on_record(&sample),
            Some(Event::Ended) => return,
            Some(Event::Restarted { generation }) => panic!("unexpected restart (generation {generation:x})"),
            None => panic!("no event within {PATIENCE:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// The name of the `#[test]` function every multi-process test binary
/// defines as the entry point of its children.
pub const CHILD_ENTRY: &str = "child_process_entry";
/// Environment variable naming a child's role; other parameters are passed
/// as `SHM_BUS_CHILD_<NAME>`.
const ROLE_ENV: &str = "SHM_BUS_CHILD_ROLE";
const PARAM_PREFIX: &str = "SHM_BUS_CHILD_";
/// A child that outlives this (a stuck test) exits by itself.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// Marks the lines a child sends its parent on stdout, which the test
/// harness shares (it may print on the same line before them).
const MARK: &str = "@@child@@ ";

/// Child side: sends `line` (`TAG key=value ...`) to the parent.
pub fn say(line: &str) {
    println!("{MARK}{line}");
}

/// Parsed `key=value` fields of a line a child printed.
#[derive(Debug)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    pub fn parse(text: &str) -> Self {
        Self(
            text.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub fn get<T: FromStr>(&self, key: &str) -> T
    where
        T::Err: fmt::Debug,
    {
        let value = self.0.get(key).unwrap_or_else(|| panic!("field {key} missing in {:?}", self.0));
        value.parse().unwrap_or_else(|e| panic!("field {key}={value}: {e:?}"))
    }
}

/// Parent side: a child process running this test binary in a role. Its
/// stdout lines arrive through a thread; its stderr (panics) goes to ours.
/// Dropping it kills the child.
pub struct ChildProc {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Lines that matched no expectation (test harness output), for errors.
    skipped: Vec<String>,
}

impl ChildProc {
    /// Starts this test binary as a child in `role` with `params`.
    pub fn spawn(role: &str, params: &[(&str, String)]) -> Self {
        Self::spawn_under(&[], role, params)
    }

    /// Like [`ChildProc::spawn`], run by `wrapper`: a command and its
    /// arguments that runs the rest of its command line (for example
    /// `unshare --pid --fork`). The child's pid is then the wrapper's.
    pub fn spawn_under(wrapper: &[&str], role: &str, params: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrapper {
            [] => Command::new(&exe),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&exe);
                cmd
            }
        };
        cmd.args(["--exact", CHILD_ENTRY, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in params {
            cmd.env(format!("{PARAM_PREFIX}{}", name.to_uppercase()), value);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { role: role.to_owned(), child, stdin, lines, skipped: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command line to the child's stdin.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).unwrap();
    }

    /// Waits for the next line the child [`say`]s starting with `tag` and
    /// returns its fields. Lines before it are skipped.
    pub fn expect(&mut self, tag: &str) -> Fields {
        self.expect_one_of(&[tag]).1
    }

    /// Like [`ChildProc::expect`] for the first line starting with any of
    /// `tags`: returns that tag and the line's fields.
    pub fn expect_one_of<'t>(&mut self, tags: &[&'t str]) -> (&'t str, Fields) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let message = line.find(MARK).map(|i| &line[i + MARK.len()..]);
                    let found = tags.iter().find_map(|&tag| {
                        let rest = message?.strip_prefix(tag)?;
                        (rest.is_empty() || rest.starts_with(' ')).then(|| (tag, Fields::parse(rest)))
                    });
                    match found {
                        Some(found) => return found,
                        None => self.skipped.push(line),
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "child {} sent no {tags:?} within {PATIENCE:?}; output: {:?}",
                        self.role, self.skipped
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait();
                    panic!(
                        "child {} exited ({status}) before sending {tags:?}; output: {:?}",
                        self.role, self.skipped
                    )
                }
            }
        }
    }

    /// Sends SIGKILL (`Child::kill`). Does not reap the child: until
    /// [`ChildProc::wait`], it is a zombie.
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
    }

    /// Waits (at most [`PATIENCE`]) for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child {} did not exit within {PATIENCE:?}", self.role);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child to finish its role and asserts it succeeded.
    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(status.success(), "child {} failed: {status}; output: {:?}", self.role, self.skipped);
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Child side: the role this process was started in and the commands its
/// parent sends. When stdin closes (the parent is gone) the process exits,
/// so no child outlives its test.
pub struct ChildCtx {
    pub role: String,
    commands: Receiver<String>,
}

impl ChildCtx {
    /// `Some` when this process is a child spawned by [`ChildProc::spawn`].
    pub fn from_env() -> Option<Self> {
        let role = std::env::var(ROLE_ENV).ok()?;
        let (tx, commands) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
            std::process::exit(2);
        });
        std::thread::spawn(|| {
            std::thread::sleep(CHILD_LIFETIME);
            eprintln!("child gave up after {CHILD_LIFETIME:?}");
            std::process::exit(3);
        });
        Some(Self { role, commands })
    }

    /// Parameter `name` (see [`ChildProc::spawn`]).
    pub fn param<T: FromStr>(&self, name: &str) -> T
    where
        T::Err: fmt::Debug,
    {
        let var = format!("{PARAM_PREFIX}{}", name.to_uppercase());
        let value = std::env::var(&var).unwrap_or_else(|_| panic!("{var} not set"));
        value.parse().unwrap_or_else(|e| panic!("{var}={value}: {e:?}"))
    }

    pub fn bus(&self) -> BusDir {
        BusDir::new(self.param::<String>("bus"))
    }

    /// Waits for the parent to send `command`.
    pub fn wait_for(&self, command: &str) {
        let got = self.commands.recv().expect("command channel closed");
        assert_eq!(got, command, "unexpected command from the parent");
    }
}

/// Child role "producer": creates channel `channel` (`shards`, `capacity`)
/// and reports `CREATED generation=<g>`; after the command `go`, writes
/// records of `salt` with one thread per shard, `bytes` payload bytes per
/// shard (`0`: until killed), reporting `WROTE shard= records= bytes=
/// digest=` per shard. Then, with `linger=true`, reports `LINGER` and keeps
/// the channel live until the command `end`; finally ends the channel.
pub fn run_child_producer(ctx: &ChildCtx) {
    let name: String = ctx.param("channel");
    let capacity: u64 = ctx.param("capacity");
    let shards: u32 = ctx.param("shards");
    let bytes: u64 = ctx.param("bytes");
    let records = Records::for_capacity(ctx.param("salt"), capacity);
    let opts = shm_bus::ChannelOptions { shards, capacity, ..Default::default() };
    let producer = shm_bus::Producer::create(&ctx.bus(), &name, opts).unwrap();
    say(&format!("CREATED generation={}", producer.generation()));
    ctx.wait_for("go");
    let until = if bytes == 0 { Until::Killed } else { Until::Bytes(bytes) };
    let totals: Vec<ShardTotals> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..shards)
            .map(|i| {
                let mut writer = producer.shard(i).unwrap();
                s.spawn(move || write_stream(&mut writer, &records, until))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (shard, t) in totals.iter().enumerate() {
        say(&format!("WROTE shard={shard} records={} bytes={} digest={}", t.records, t.bytes, t.digest));
    }
    if ctx.param("linger") {
        say("LINGER");
        ctx.wait_for("end");
    }
    producer.end();
}
