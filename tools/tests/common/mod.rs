//! Helpers of the `ringest` end-to-end tests: the real binary on a private
//! bus directory, the daemon on an OS-chosen port, and a lossless reader
//! that reassembles what each connection sent.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::records::{self, ConnectionEvent};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A bus directory of its own, removed at the end of the test.
pub struct TestBus {
    _dir: tempfile::TempDir,
    pub bus: BusDir,
}

pub fn bus() -> TestBus {
    let root = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("ringest-test").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    TestBus { _dir: dir, bus }
}

/// The `ringest` binary, told about `bus` through the environment.
pub fn ringest(bus: &BusDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.env("RINGEST_BUS", bus.path()).env_remove("RUST_LOG");
    command
}

/// Runs `command` with `args`; returns its stdout, failing the test with its
/// stderr unless it succeeded.
pub fn stdout_of(mut command: Command, args: &[&str]) -> String {
    let output = command.args(args).output().unwrap();
    assert!(output.status.success(), "ringest {args:?}: {:?}: {}", output.status, text(&output.stderr));
    text(&output.stdout)
}

/// Runs `command` with `args`, expecting it to fail; returns its exit code
/// and stderr.
pub fn failure_of(mut command: Command, args: &[&str]) -> (i32, String) {
    let Output { status, stdout, stderr } = command.args(args).output().unwrap();
    assert!(!status.success(), "ringest {args:?} succeeded: {}", text(&stdout));
    (status.code().expect("an exit code, not a signal"), text(&stderr))
}

/// The Python interpreter of the tests, with `module` importable:
/// `$RINGEST_TEST_PYTHON` (the virtual environment `scripts/test` makes),
/// else `python3`. Fails the test in one line naming what is missing and
/// how to install it.
pub fn python_with(module: &str) -> Command {
    let python = std::env::var_os("RINGEST_TEST_PYTHON").unwrap_or_else(|| "python3".into());
    let shown = Path::new(&python).display().to_string();
    let probe = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    match probe {
        Err(e) => panic!("{shown} cannot run ({e}): run scripts/test (or apt-get install python3)"),
        Ok(out) if !out.status.success() => {
            panic!("Python package {module} missing for {shown}: run scripts/test (or pip install {module})")
        }
        Ok(_) => Command::new(python),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config with one server stage named `stage` on an OS-chosen port.
pub fn server_config(stage: &str) -> String {
    format!("[[tcp_server]]\nname = \"{stage}\"\naddress = \"127.0.0.1:0\"\nring_size_b = 4194304\n")
}

/// `ringest run` in the background, stopped (SIGKILL) when dropped if the
/// test did not stop it.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its stdout up to "running", then whatever [`Daemon::stop`] read.
    pub stdout: Vec<String>,
    /// Where each server stage listens.
    pub listening: HashMap<String, SocketAddr>,
    _config: tempfile::NamedTempFile,
}

impl Daemon {
    /// Runs `command run --config FILE` with `config` in FILE, and waits
    /// until it says it runs.
    pub fn start(mut command: Command, config: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(file.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self { child, lines, stdout: Vec::new(), listening: HashMap::new(), _config: file };
        daemon.read_until("running");
        for line in &daemon.stdout {
            if let Some((stage, address)) =
                line.strip_prefix("stage ").and_then(|rest| rest.split_once(": listening on "))
            {
                daemon.listening.insert(stage.to_owned(), address.parse().unwrap());
            }
        }
        daemon
    }

    /// One server stage `stage` on `bus`.
    pub fn server(bus: &BusDir, stage: &str) -> Self {
        Self::start(ringest(bus), &server_config(stage))
    }

    pub fn addr(&self, stage: &str) -> SocketAddr {
        self.listening[stage]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one starts with `prefix`.
    fn read_until(&mut self, prefix: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    self.stdout.push(line);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!("no line {prefix:?} from ringest run ({e}); it said {:#?}", self.stdout),
            }
        }
    }

    /// Kills it (SIGKILL), as a crash would: its channels stay live with a
    /// dead producer.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit, reading the rest of stdout.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ringest run did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe: collect what is left.
        self.stdout.extend(self.lines.iter());
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reassembles each connection's bytes from `<stage>/packet_group`, read
/// losslessly from the oldest record.
pub struct Collector {
    reader: Reader,
    /// Bytes by the connection's peer address.
    pub bytes: HashMap<SocketAddr, Vec<u8>>,
    pub records: u64,
    /// Packets in those records.
    pub packets: u64,
    pub ended: bool,
}

impl Collector {
    pub fn attach(bus: &BusDir, stage: &str) -> Self {
        let options = ReaderOptions::gated().start(StartAt::Oldest);
        let reader = Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap();
        Self { reader, bytes: HashMap::new(), records: 0, packets: 0, ended: false }
    }

    /// Reads what arrives within `wait`.
    pub fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reader.recv_timeout(left).unwrap() {
                Some(Event::Record(sample)) => {
                    assert_eq!(sample.kind(), records::KIND_PACKET_GROUP);
                    for packet in records::decode_group(sample.payload()).unwrap() {
                        let peer = SocketAddr::from(packet.meta.peer);
                        self.bytes.entry(peer).or_default().extend_from_slice(packet.data);
                        self.packets += 1;
                    }
                    self.records += 1;
                }
                Some(Event::Ended) => {
                    self.ended = true;
                    return;
                }
                Some(Event::Restarted { .. }) => panic!("the engine restarted during a test"),
                None => return,
            }
        }
    }

    /// Pumps until `done(self)` holds; panics after [`DEADLINE`].
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn received_from(&self, peer: SocketAddr) -> &[u8] {
        self.bytes.get(&peer).map_or(&[], Vec::as_slice)
    }
}

/// The id of the connection whose peer is `peer`, from
/// `<stage>/connection_events`; waits for it up to [`DEADLINE`].
pub fn connection_id(bus: &BusDir, stage: &str, peer: SocketAddr) -> u64 {
    let options = ReaderOptions::lossy().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &format!("{stage}/connection_events"), options).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap()
            && let Ok(ConnectionEvent::Connected { connection_id, peer: p, .. }) =
                records::decode(sample.payload())
            && SocketAddr::from(p) == peer
        {
            return connection_id;
        }
    }
    panic!("no connected event for {peer}");
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
