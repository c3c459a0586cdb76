//! Helpers of the end-to-end tests that span crates, processes and hosts:
//! the real `ringest` binary, private bus directories, network namespaces
//! as hosts (two of them joined by a veth pair, with the link's faults:
//! down and up, a share of packets dropped, a rate limit), and `ringest
//! run` daemons inside them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shm_bus::BusDir;

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `ringest` binary of this build, built first (once per test binary)
/// so that it is never stale: this crate cannot depend on a binary-only
/// package, and `cargo test -p ringest-e2e` alone would not build it.
/// `$RINGEST_BIN` names another binary and skips the build.
pub fn ringest_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("RINGEST_BIN") {
            return PathBuf::from(path);
        }
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("a profile directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "ringest", "--manifest-path"]).arg(&manifest);
        build.arg("--target-dir").arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p ringest failed: {status}");
        profile_dir.join("ringest")
    })
}

/// A bus directory of its own, removed at the end of the test.
#[derive(Debug)]
pub struct TestBus {
    _dir: tempfile::TempDir,
    pub bus: BusDir,
}

pub fn bus(tag: &str) -> TestBus {
    let root = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix(&format!("ringest-e2e-{tag}-")).tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    TestBus { _dir: dir, bus }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program` with `args`; fails the test with its stderr unless it
/// succeeded.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out.stderr));
}

/// A network namespace of the test: a host of its own, deleted when
/// dropped.
#[derive(Debug)]
pub struct Namespace(String);

impl Namespace {
    /// A namespace with `lo` up; `None` (with the reason printed) where this
    /// host does not let the test make one (not root).
    pub fn new(name: &str) -> Option<Self> {
        match Command::new("ip").args(["netns", "add", name]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("skipped: cannot make a network namespace (needs root): {}", text(&out.stderr));
                return None;
            }
            Err(e) => {
                eprintln!("skipped: cannot run `ip` ({e}): apt-get install iproute2");
                return None;
            }
        }
        let namespace = Self(name.to_owned());
        namespace.ip(&["link", "set", "lo", "up"]);
        Some(namespace)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ip -n NS args`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend(args);
        run("ip", &all);
    }

    /// `command` (a program and its arguments to add), run inside the
    /// namespace. `ip netns exec` execs it: the child's pid is the
    /// program's, so a signal reaches it.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut ip = Command::new("ip");
        ip.args(["netns", "exec", &self.0]).arg(program);
        ip
    }

    /// `ringest` inside the namespace, on `bus`.
    pub fn ringest(&self, bus: &BusDir) -> Command {
        let mut command = self.exec(ringest_binary());
        command.env("RINGEST_BUS", bus.path()).env_remove("RUST_LOG");
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Two hosts, A and B, joined by a veth pair: `veth-a` (address
/// [`TwoHosts::A_ADDRESS`]) in A, `veth-b` ([`TwoHosts::B_ADDRESS`]) in B.
#[derive(Debug)]
pub struct TwoHosts {
    pub a: Namespace,
    pub b: Namespace,
}

impl TwoHosts {
    pub const A_ADDRESS: &str = "10.201.0.1";
    pub const B_ADDRESS: &str = "10.201.0.2";
    pub const A_DEVICE: &str = "veth-a";
    pub const B_DEVICE: &str = "veth-b";

    /// `None` (with the reason printed) where the kernel refuses.
    pub fn new(tag: &str) -> Option<Self> {
        let pid = std::process::id();
        let a = Namespace::new(&format!("ringest-{tag}-a-{pid}"))?;
        let b = Namespace::new(&format!("ringest-{tag}-b-{pid}"))?;
        // Made inside A with its peer put straight into B: no name in the
        // root namespace, so tests running in parallel cannot collide.
        a.ip(&[
            "link",
            "add",
            Self::A_DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            Self::B_DEVICE,
            "netns",
            b.name(),
        ]);
        a.ip(&["addr", "add", &format!("{}/24", Self::A_ADDRESS), "dev", Self::A_DEVICE]);
        b.ip(&["addr", "add", &format!("{}/24", Self::B_ADDRESS), "dev", Self::B_DEVICE]);
        a.ip(&["link", "set", Self::A_DEVICE, "up"]);
        b.ip(&["link", "set", Self::B_DEVICE, "up"]);
        Some(Self { a, b })
    }

    /// Takes the link down (A's end: both ends lose the carrier).
    pub fn link_down(&self) {
        self.a.ip(&["link", "set", Self::A_DEVICE, "down"]);
    }

    pub fn link_up(&self) {
        self.a.ip(&["link", "set", Self::A_DEVICE, "up"]);
    }

    /// Limits what each end sends to `rate` (tc's units, e.g. `64mbit`)
    /// with a token bucket (this kernel has no netem).
    pub fn rate_limit(&self, rate: &str) {
        for (host, device) in [(&self.a, Self::A_DEVICE), (&self.b, Self::B_DEVICE)] {
            let status = host
                .exec("tc")
                .args(["qdisc", "add", "dev", device, "root", "tbf", "rate", rate])
                .args(["burst", "64kb", "latency", "100ms"])
                .output()
                .unwrap();
            assert!(status.status.success(), "tc tbf on {device}: {}", text(&status.stderr));
        }
    }

    /// Drops `percent` of the packets each host receives, with nftables.
    /// `Err` (the reason) where `nft` is missing.
    pub fn drop_share(&self, percent: u32) -> Result<(), String> {
        let rules = format!(
            "table inet ringest_test {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        );
        for host in [&self.a, &self.b] {
            let mut nft = host
                .exec("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run nft ({e}): apt-get install nftables"))?;
            nft.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
            let out = nft.wait_with_output().unwrap();
            if !out.status.success() {
                return Err(format!("nft: {}", text(&out.stderr)));
            }
        }
        Ok(())
    }
}

/// A `ringest` process in the background whose stdout lines are collected
/// and whose stderr goes to a file (read with [`Background::stderr`]);
/// killed when dropped if the test did not stop it.
#[derive(Debug)]
pub struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its stdout lines read so far.
    pub stdout: Vec<String>,
    stderr: tempfile::NamedTempFile,
}

impl Background {
    pub fn spawn(mut command: Command) -> Self {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
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
        Self { child, lines, stdout: Vec::new(), stderr }
    }

    /// Reads stdout lines until one starts with `prefix`; returns it.
    pub fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    panic!("no line {prefix:?} ({e}); stdout {:#?}; stderr {}", self.stdout, self.stderr())
                }
            }
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// SIGKILL, as a crash: what it published stays on the bus, its
    /// producer dead.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit and the rest of stdout.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.wait()
    }

    /// Waits for the exit (at most [`DEADLINE`]) and the rest of stdout.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after {DEADLINE:?}: {:#?}", self.stdout);
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stdout.extend(self.lines.iter());
        status
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ringest run` with a config file, started once it says it runs.
#[derive(Debug)]
pub struct Daemon {
    pub process: Background,
    _config: tempfile::NamedTempFile,
}

impl Daemon {
    /// `command run --config FILE` with `config` in FILE.
    pub fn start(mut command: Command, config: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        command.arg("run").arg("--config").arg(file.path());
        let mut process = Background::spawn(command);
        process.line_starting("running");
        Self { process, _config: file }
    }
}

/// Waits until `channel` exists on `bus`.
pub fn wait_for_channel(bus: &BusDir, channel: &str) {
    let deadline = Instant::now() + DEADLINE;
    while shm_bus::channel_info(bus, channel).is_err() {
        assert!(Instant::now() < deadline, "{channel} did not appear on {}", bus.path().display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Python interpreter of the tests, with `module` importable:
/// `$RINGEST_TEST_PYTHON` (the virtual environment `scripts/test` makes),
/// else `python3`. Fails the test in one line naming what is missing.
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
