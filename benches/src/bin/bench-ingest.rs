//! `bench-ingest`: runs one measurement of the ingest benchmark and writes
//! its JSON file (a `RunFile`) for `bench-ingest-report`.
//!
//! - `run`: starts a receiver (`limit`, `tokio`, or `ringest`: `ringest run`
//!   with `bench-consumer`, and optionally the lossless `ringest log`),
//!   measures its processes' CPU time from just before the load starts
//!   until every byte sent has reached the consumer, their peak RSS, and
//!   checks that what arrived is exactly what `bench-load` sent;
//! - `ping-pong`: the loopback TCP one-way latency (round trip / 2);
//! - `iperf3`: iperf3 on loopback, a reference figure.
//!
//! `scripts/bench.sh` calls it for every cell of the matrix.

use std::collections::HashMap;
use std::error::Error;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use engine::records::{self, ConnectionEvent, DisconnectReason};
use ringest_benches::ingest::control::Hello;
use ringest_benches::ingest::results::{
    CpuTimes, EngineWatch, IngestRun, Iperf3Run, LoadReport, LoggerOutcome, ProcessUsage, ReceiverReport,
    ReceiverTotals, RunFile, Scenario,
};
use ringest_benches::ingest::{hex, monotonic_ns, procfs, raise_fd_limit};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

#[derive(Parser, Debug)]
#[command(name = "bench-ingest")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One receiver under one load.
    Run(RunArgs),
    /// Loopback TCP ping-pong: one-way latency = round trip / 2.
    PingPong(PingPongArgs),
    /// iperf3 on loopback (reference only).
    Iperf3(Iperf3Args),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    Limit,
    Tokio,
    /// ringest on its io_uring receive path (forced, so a kernel without it
    /// fails the run instead of measuring the other path).
    Ringest,
    /// ringest on the glommio read path (`receive_path = "glommio_read"`).
    RingestRead,
    /// ringest with the lossless logger writing uncompressed MCAP.
    RingestLog,
    /// ringest with the lossless logger writing lz4-compressed MCAP.
    RingestLogLz4,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Limit => "limit",
            Peer::Tokio => "tokio",
            Peer::Ringest => "ringest",
            Peer::RingestRead => "ringest-read",
            Peer::RingestLog => "ringest-log",
            Peer::RingestLogLz4 => "ringest-log-lz4",
        }
    }

    fn logger(self) -> Option<&'static str> {
        match self {
            Peer::RingestLog => Some("none"),
            Peer::RingestLogLz4 => Some("lz4"),
            _ => None,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    peer: Peer,
    /// The table the run belongs to: throughput, latency or scale.
    #[arg(long, default_value = "throughput")]
    purpose: String,
    #[arg(long)]
    connections: usize,
    /// Bytes per message (write).
    #[arg(long)]
    size: usize,
    /// Messages per second over all connections [default: as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Hash every connection's bytes on both sides and compare.
    #[arg(long)]
    hash: bool,
    /// Measure send-to-seen latency in the consumer.
    #[arg(long)]
    latency: bool,
    /// Leading seconds of messages left out of the latency.
    #[arg(long, default_value_t = 0.3)]
    warmup_seconds: f64,
    /// Load generator threads [default: min(connections, 2)].
    #[arg(long)]
    threads: Option<usize>,
    /// The engine's thread_processor_affinity, e.g. "0,1" ("" : one unpinned executor).
    #[arg(long, default_value = "0,1")]
    engine_cores: String,
    /// A `key = value` line added to the engine's [[tcp_server]] table
    /// (repeatable), e.g. 'group_size = 16'. A `receive_path` key here
    /// overrides the path the peer names.
    #[arg(long = "stage-key", value_name = "KEY = VALUE")]
    stage_keys: Vec<String>,
    /// The `ringest` binary [default: next to this one].
    #[arg(long)]
    ringest: Option<PathBuf>,
    /// Where the bus and the MCAP file go (a tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    scratch: PathBuf,
    /// The run's JSON file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct PingPongArgs {
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 0.3)]
    warmup_seconds: f64,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct Iperf3Args {
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Parallel streams (-P).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    #[arg(long)]
    out: PathBuf,
}

/// How long a receiver may take to start and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the load ended the last bytes may take to arrive while
/// they still arrive, and without progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the receiver's totals are polled after the load ended.
const POLL: Duration = Duration::from_millis(20);

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    let (out, file) = match cli.command {
        Cmd::Run(args) => (args.out.clone(), RunFile::Ingest(Box::new(run(&args)?))),
        Cmd::PingPong(args) => (args.out.clone(), ping_pong(&args)?),
        Cmd::Iperf3(args) => (args.out.clone(), RunFile::Iperf3(iperf3(&args)?)),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&file)? + "\n")
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}

/// A program of the benchmark next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().ok_or("no directory of bench-ingest")?.join(name);
    if !path.exists() {
        return Err(format!("{} is missing: build it first", path.display()).into());
    }
    Ok(path)
}

/// A child process whose standard output is read line by line.
struct Child {
    name: &'static str,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
    pid: String,
}

impl Child {
    fn spawn(name: &'static str, mut command: Command, with_stdin: bool) -> Result<Self> {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        command.stdin(if with_stdin { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().map_err(|e| format!("cannot start {name} ({command:?}): {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id().to_string();
        Ok(Self { name, stdin: child.stdin.take(), child, lines, pid })
    }

    /// The next line of output, waiting up to `timeout`.
    fn line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("{}: no answer within {timeout:?}", self.name).into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!("{} ended ({status})", self.name).into())
            }
        }
    }

    /// Skips lines until one that `parse` accepts.
    fn line_where<T>(&mut self, timeout: Duration, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.line(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(value) = parse(&line) {
                return Ok(value);
            }
        }
    }

    fn hello(&mut self) -> Result<Hello> {
        self.line_where(START_TIMEOUT, |line| serde_json::from_str::<Hello>(line).ok())
    }

    /// Sends `command` and parses the answer.
    fn ask<T: DeserializeOwned>(&mut self, command: &str) -> Result<T> {
        let stdin = self.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let line = self.line(START_TIMEOUT)?;
        serde_json::from_str(&line)
            .map_err(|e| format!("{}: bad answer to {command}: {e}: {line}", self.name).into())
    }

    fn cpu(&self) -> Result<CpuTimes> {
        Ok(procfs::stat(&self.pid)?.cpu)
    }

    /// CPU since `before`, peak RSS and shared RSS now.
    fn usage(&self, before: CpuTimes) -> Result<ProcessUsage> {
        Ok(ProcessUsage {
            name: self.name.to_owned(),
            cpu: self.cpu()?.minus(&before),
            peak_rss_kib: procfs::status_kib(&self.pid, "VmHWM")?,
            rss_shmem_kib: procfs::status_kib(&self.pid, "RssShmem")?,
        })
    }

    fn interrupt(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
    }

    /// Waits for the process to exit (killing it after `timeout`); returns
    /// its CPU time, read while it is a zombie, and when it exited.
    fn finish(&mut self, timeout: Duration) -> Result<(CpuTimes, u64)> {
        let deadline = Instant::now() + timeout;
        let mut cpu = CpuTimes::default();
        loop {
            match procfs::stat(&self.pid) {
                Ok(stat) if stat.state == 'Z' => {
                    let exited = monotonic_ns();
                    self.child.wait()?;
                    return Ok((stat.cpu, exited));
                }
                Ok(stat) => cpu = stat.cpu,
                Err(_) => {
                    self.child.wait()?;
                    return Ok((cpu, monotonic_ns()));
                }
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                self.child.wait()?;
                return Err(format!("{} did not exit within {timeout:?}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Ends the process: closes its stdin (receivers quit) and waits.
    fn quit(mut self, timeout: Duration) -> Result<()> {
        drop(self.stdin.take());
        self.finish(timeout).map(|_| ())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The receiver of a run: its processes, the one that answers commands
/// (the consumer for ringest) and the address to load.
struct Receiver {
    /// Answers commands: limit, tokio, or ringest's consumer.
    counter: Child,
    engine: Option<Child>,
    logger: Option<Child>,
    watch: Option<Watcher>,
    addr: String,
    settings: Vec<String>,
}

impl Receiver {
    fn processes(&self) -> Vec<&Child> {
        self.engine.iter().chain(std::iter::once(&self.counter)).chain(self.logger.iter()).collect()
    }
}

fn run(args: &RunArgs) -> Result<IngestRun> {
    let scratch = tempfile::Builder::new().prefix("ringest-bench-ingest-").tempdir_in(&args.scratch)?;
    let connections = args.connections.max(1);
    // Per connection: leading messages left out of the latency.
    let warmup = args.rate.map_or(0, |rate| (rate * args.warmup_seconds / connections as f64) as u64);
    let mut receiver = start_receiver(args, scratch.path(), warmup)?;
    let before: Vec<CpuTimes> = receiver.processes().iter().map(|p| p.cpu()).collect::<Result<_>>()?;

    // The load.
    let mut load = Command::new(sibling("bench-load")?);
    load.arg(&receiver.addr)
        .args(["--connections", &connections.to_string(), "--size", &args.size.to_string()])
        .args(["--seconds", &args.seconds.to_string()]);
    if let Some(rate) = args.rate {
        load.args(["--rate", &rate.to_string()]);
    }
    if let Some(threads) = args.threads {
        load.args(["--threads", &threads.to_string()]);
    }
    if args.hash {
        load.arg("--hash");
    }
    let mut sender = Child::spawn("bench-load", load, false)?;
    let sent: LoadReport = {
        let timeout = Duration::from_secs_f64(args.seconds) + Duration::from_secs(120);
        let line = sender.line(timeout)?;
        serde_json::from_str(&line).map_err(|e| format!("bench-load: {e}: {line}"))?
    };
    sender.finish(START_TIMEOUT)?;

    // Until every byte arrived, or nothing more comes.
    let mut problems = Vec::new();
    let waited = Instant::now();
    let mut progress = (0, Instant::now());
    let totals = loop {
        let totals: ReceiverTotals = receiver.counter.ask("totals")?;
        if totals.bytes >= sent.bytes {
            break totals;
        }
        if totals.bytes != progress.0 {
            progress = (totals.bytes, Instant::now());
        }
        if progress.1.elapsed() >= STALL_TIMEOUT || waited.elapsed() >= DRAIN_TIMEOUT {
            problems.push(format!("received {} of the {} bytes sent", totals.bytes, sent.bytes));
            break totals;
        }
        std::thread::sleep(POLL);
    };
    let mut processes = Vec::new();
    for (process, before) in receiver.processes().into_iter().zip(&before) {
        processes.push(process.usage(*before)?);
    }
    let report: ReceiverReport = receiver.counter.ask("final")?;
    let engine_watch = receiver.watch.take().map(Watcher::stop);

    // Stop: the engine ends its channels, the logger writes what is left
    // and exits by itself.
    let mut last_ns = totals.last_ns;
    let mut logger_outcome = None;
    if let Some(engine) = &receiver.engine {
        engine.interrupt();
    }
    if let Some(mut logger) = receiver.logger.take() {
        let (cpu, exited_ns) = logger.finish(DRAIN_TIMEOUT)?;
        let at = processes.iter().position(|p| p.name == "logger").ok_or("no logger usage")?;
        processes[at].cpu = cpu.minus(&before[at]);
        let summary = logger.lines.try_iter().find(|l| l.starts_with("logged ")).unwrap_or_default();
        last_ns = last_ns.max(exited_ns);
        let path = scratch.path().join("log.mcap");
        logger_outcome =
            Some(check_log(&path, args.peer.logger().unwrap_or("none"), summary, &sent, args.hash)?);
        if let Some(outcome) = &mut logger_outcome {
            outcome.drain_s = exited_ns.saturating_sub(totals.last_ns) as f64 / 1e9;
        }
    }
    if let Some(mut engine) = receiver.engine.take() {
        engine.finish(START_TIMEOUT)?;
    }
    receiver.counter.quit(START_TIMEOUT)?;

    problems.extend(compare(&sent, &report, args.hash));
    if totals.lost_records > 0 {
        problems.push(format!("the consumer lost {} records (lossy reader lapped)", totals.lost_records));
    }
    if let Some(log) = &logger_outcome {
        if log.lost_records != Some(0) {
            problems.push(format!("the logger lost records: {}", log.summary));
        }
        if log.streams_verified != sent.streams.len() || log.logged_bytes != sent.bytes {
            problems.push(format!(
                "the log holds {} bytes, {} of {} connections as sent",
                log.logged_bytes,
                log.streams_verified,
                sent.streams.len()
            ));
        }
    }
    let window_s = last_ns.saturating_sub(totals.first_ns) as f64 / 1e9;
    let run = IngestRun {
        purpose: args.purpose.clone(),
        peer: args.peer.name().to_owned(),
        scenario: Scenario { connections, size: args.size, rate: args.rate, seconds: args.seconds },
        sent_bytes: sent.bytes,
        sent_messages: sent.messages,
        messages_owed: sent.messages_owed,
        sender_elapsed_s: sent.elapsed_s,
        sender_cpu: sent.cpu,
        bytes_per_s: totals.bytes as f64 / window_s,
        packets_per_s: totals.packets as f64 / window_s,
        received: totals,
        processes,
        latency: report.latency,
        latency_to_engine: report.latency_to_engine,
        logger: logger_outcome,
        engine: engine_watch,
        hashed: args.hash,
        settings: receiver.settings.clone(),
        problems,
    };
    eprintln!("{}", summary_line(&run));
    Ok(run)
}

fn summary_line(run: &IngestRun) -> String {
    let latency = run.latency.as_ref().map_or(String::new(), |l| {
        format!(", latency p50 {:.1} µs p99 {:.1} µs", l.p50_ns as f64 / 1e3, l.p99_ns as f64 / 1e3)
    });
    format!(
        "{} {} {}: {:.3} GB/s, {:.0} packets/s, {:.2} CPU-s/GB, peak RSS {} MiB{latency}; {}",
        run.purpose,
        run.scenario.label(),
        run.peer,
        run.bytes_per_s / 1e9,
        run.packets_per_s,
        run.cpu_s_per_gb(&[]),
        run.peak_rss_kib(&[]) / 1024,
        if run.valid() { "valid".to_owned() } else { format!("INVALID: {}", run.problems.join("; ")) }
    )
}

/// Starts the receiver of `args.peer` and waits until it takes load.
fn start_receiver(args: &RunArgs, scratch: &Path, warmup: u64) -> Result<Receiver> {
    let mut consumer_args: Vec<String> = Vec::new();
    if args.hash {
        consumer_args.push("--hash".into());
    }
    if args.latency {
        consumer_args.extend(["--latency-size".into(), args.size.to_string()]);
        consumer_args.extend(["--warmup-messages".into(), warmup.to_string()]);
    }
    match args.peer {
        Peer::Limit | Peer::Tokio => {
            let (name, bin) =
                if args.peer == Peer::Limit { ("limit", "bench-limit") } else { ("tokio", "bench-tokio") };
            let mut command = Command::new(sibling(bin)?);
            if args.peer == Peer::Limit {
                command.args(consumer_args.iter().filter(|a| *a == "--hash"));
            } else {
                command.args(&consumer_args);
                // The engine's group size, when a stage key changes it.
                if let Some(group_size) = stage_key(&args.stage_keys, "group_size") {
                    command.args(["--group-size", &group_size]);
                }
            }
            let mut counter = Child::spawn(name, command, true)?;
            let addr = counter.hello()?.listening.ok_or("no listening address")?;
            Ok(Receiver { counter, engine: None, logger: None, watch: None, addr, settings: Vec::new() })
        }
        _ => {
            let bus = scratch.join("bus");
            std::fs::create_dir_all(&bus)?;
            let ringest = match &args.ringest {
                Some(path) => path.clone(),
                None => sibling("ringest")?,
            };
            let (config, settings) = engine_config(args);
            let config_path = scratch.join("engine.toml");
            std::fs::write(&config_path, &config)?;
            let mut command = Command::new(&ringest);
            command.arg("--bus").arg(&bus).arg("run").arg("--config").arg(&config_path);
            let mut engine = Child::spawn("engine", command, false)?;
            let prefix = "stage ingest: listening on ";
            let addr = engine.line_where(START_TIMEOUT, |l| l.strip_prefix(prefix).map(str::to_owned))?;
            let watch = Watcher::start(BusDir::new(&bus), "ingest");
            let mut command = Command::new(sibling("bench-consumer")?);
            command.arg("--bus").arg(&bus).args(["--stage", "ingest"]).args(&consumer_args);
            let mut counter = Child::spawn("consumer", command, true)?;
            counter.hello()?;
            let logger = match args.peer.logger() {
                Some(compression) => {
                    let mut command = Command::new(&ringest);
                    command
                        .arg("--bus")
                        .arg(&bus)
                        .args([
                            "log",
                            "ingest/packet_group",
                            "--lossless",
                            "--compression",
                            compression,
                            "--out",
                        ])
                        .arg(scratch.join("log.mcap"));
                    let mut logger = Child::spawn("logger", command, false)?;
                    logger.line_where(START_TIMEOUT, |l| l.starts_with("recording ").then_some(()))?;
                    Some(logger)
                }
                None => None,
            };
            Ok(Receiver { counter, engine: Some(engine), logger, watch: Some(watch), addr, settings })
        }
    }
}

/// The value a `key = value` line of `--stage-key` gives `name`, if any.
fn stage_key(keys: &[String], name: &str) -> Option<String> {
    keys.iter().find_map(|k| {
        let (key, value) = k.split_once('=')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

/// The engine's configuration for a run, and the settings to record.
fn engine_config(args: &RunArgs) -> (String, Vec<String>) {
    let cores: Vec<&str> = args.engine_cores.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    let mut keys = vec![
        "name = \"ingest\"".to_owned(),
        "address = \"127.0.0.1:0\"".to_owned(),
        format!("maximum_connections = {}", (args.connections + 64).max(1024)),
        format!("thread_processor_affinity = [{}]", cores.join(", ")),
    ];
    keys.extend(args.stage_keys.iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()));
    // The receive path the peer names, unless a stage key chose one.
    if stage_key(&args.stage_keys, "receive_path").is_none() {
        let path = if args.peer == Peer::RingestRead { "glommio_read" } else { "io_uring" };
        keys.push(format!("receive_path = \"{path}\""));
    }
    let config = format!("[[tcp_server]]\n{}\n", keys.join("\n"));
    (config, keys)
}

/// Compares what arrived with what was sent, connection by connection.
fn compare(sent: &LoadReport, report: &ReceiverReport, hashed: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let received: HashMap<&str, _> = report.streams.iter().map(|s| (s.peer.as_str(), s)).collect();
    let (mut short, mut differ, mut bad) = (0, 0, 0);
    for stream in &sent.streams {
        match received.get(stream.local.as_str()) {
            Some(got) if got.bytes == stream.bytes => {
                if hashed && got.sha256 != stream.sha256 {
                    differ += 1;
                }
                bad += got.bad_messages;
            }
            Some(_) => short += 1,
            None if stream.bytes == 0 => {}
            None => short += 1,
        }
    }
    if short > 0 {
        problems
            .push(format!("{short} of {} connections delivered a different byte count", sent.streams.len()));
    }
    if differ > 0 {
        problems.push(format!("{differ} connections delivered bytes whose sha256 differs"));
    }
    if bad > 0 {
        problems.push(format!("{bad} messages out of sequence or damaged"));
    }
    problems
}

/// Reads the logger's MCAP file back: each connection's bytes (and sha256)
/// against what was sent.
fn check_log(
    path: &Path,
    compression: &str,
    summary: String,
    sent: &LoadReport,
    hashed: bool,
) -> Result<LoggerOutcome> {
    let file_bytes = std::fs::metadata(path)?.len();
    let options = mcap::sans_io::LinearReaderOptions::default().with_record_length_limit(1 << 30);
    let reader = mcap::io::MessageReader::new_with_options(BufReader::new(File::open(path)?), options);
    let mut per_peer: HashMap<String, (u64, Sha256)> = HashMap::new();
    let mut logged_bytes = 0;
    for message in reader {
        let message = message?;
        if message.channel.message_encoding != "application/octet-stream" {
            continue;
        }
        let peer = message.channel.metadata.get("peer").cloned().unwrap_or_default();
        let entry = per_peer.entry(peer).or_insert_with(|| (0, Sha256::new()));
        entry.0 += message.data.len() as u64;
        if hashed {
            entry.1.update(&message.data);
        }
        logged_bytes += message.data.len() as u64;
    }
    let per_peer: HashMap<String, (u64, String)> =
        per_peer.into_iter().map(|(peer, (bytes, h))| (peer, (bytes, hex(&h.finalize())))).collect();
    let streams_verified = sent
        .streams
        .iter()
        .filter(|s| match per_peer.get(&s.local) {
            Some((bytes, sha)) => *bytes == s.bytes && (!hashed || s.sha256.as_ref() == Some(sha)),
            None => s.bytes == 0,
        })
        .count();
    let lost_records = summary
        .split("lost ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    Ok(LoggerOutcome {
        compression: compression.to_owned(),
        lost_records,
        summary,
        file_bytes,
        logged_bytes,
        streams_verified,
        drain_s: 0.0,
    })
}

/// Watches a stage's connection events and socket stats during a run.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<EngineWatch>,
}

impl Watcher {
    fn start(bus: BusDir, stage: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let events = engine::channel_name(stage, engine::CONNECTION_EVENTS);
        let stats = engine::channel_name(stage, engine::SOCKET_STATS);
        let thread = std::thread::spawn(move || {
            let mut watch = EngineWatch::default();
            let attach =
                |name: &str, start| Reader::attach(&bus, name, ReaderOptions::lossy().start(start)).ok();
            let (Some(mut events), mut stats) =
                (attach(&events, StartAt::Oldest), attach(&stats, StartAt::Next))
            else {
                return watch;
            };
            let mut open: i64 = 0;
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(Some(Event::Record(sample))) = events.recv_timeout(Duration::from_millis(20)) {
                    watch.events_lost += sample.lost_before();
                    match records::decode::<ConnectionEvent>(sample.payload()) {
                        Ok(ConnectionEvent::Connected { .. }) => open += 1,
                        Ok(ConnectionEvent::Disconnected { reason, .. }) => {
                            open -= 1;
                            if reason == DisconnectReason::Rejected {
                                watch.rejected_connections += 1;
                            }
                        }
                        Err(_) => watch.events_lost += 1,
                    }
                    watch.max_open_connections = watch.max_open_connections.max(open.max(0) as u64);
                }
                if let Some(stats) = &mut stats {
                    while let Ok(Some(Event::Record(_))) = stats.try_recv() {
                        watch.stats_records += 1;
                    }
                }
            }
            watch
        });
        Self { stop, thread }
    }

    fn stop(self) -> EngineWatch {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn ping_pong(args: &PingPongArgs) -> Result<RunFile> {
    let mut command = Command::new(sibling("bench-load")?);
    command.arg("--ping-pong").args([
        "--rate",
        &args.rate.to_string(),
        "--size",
        &args.size.to_string(),
        "--seconds",
        &args.seconds.to_string(),
        "--warmup-seconds",
        &args.warmup_seconds.to_string(),
    ]);
    let mut child = Child::spawn("ping-pong", command, false)?;
    let line = child.line(Duration::from_secs_f64(args.seconds) + START_TIMEOUT)?;
    child.finish(START_TIMEOUT)?;
    let file: RunFile = serde_json::from_str(&line).map_err(|e| format!("ping-pong: {e}: {line}"))?;
    if let RunFile::PingPong(p) = &file {
        eprintln!(
            "ping-pong {} B at {}/s: one-way p50 {:.1} µs p99 {:.1} µs",
            p.size,
            p.rate,
            p.one_way.p50_ns as f64 / 1e3,
            p.one_way.p99_ns as f64 / 1e3
        );
    }
    Ok(file)
}

fn iperf3(args: &Iperf3Args) -> Result<Iperf3Run> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start iperf3: {e}"))?;
    let client_args = [
        "-c".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port,
        "-t".to_owned(),
        args.seconds.to_string(),
        "-P".to_owned(),
        args.streams.to_string(),
        "-J".to_owned(),
    ];
    // The server needs a moment to listen: retry while it refuses.
    let mut output = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let out = Command::new("iperf3").args(&client_args).output()?;
        if out.status.success() {
            output = Some(out);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let output = output.ok_or("iperf3 client failed")?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let end = &json["end"];
    let bits = end["sum_received"]["bits_per_second"].as_f64().ok_or("no sum_received in iperf3's output")?;
    let cpu = end["cpu_utilization_percent"]["remote_total"].as_f64().unwrap_or(f64::NAN);
    let run = Iperf3Run {
        seconds: args.seconds,
        streams: args.streams,
        bytes_per_s: bits / 8.0,
        receiver_cpu_percent: cpu,
        command: format!(
            "iperf3 -s -1 -B 127.0.0.1 -p PORT & iperf3 -c 127.0.0.1 -p PORT -t {} -P {} -J",
            args.seconds, args.streams
        ),
    };
    eprintln!("iperf3 -P {}: {:.3} GB/s, receiver {:.0}% CPU", run.streams, run.bytes_per_s / 1e9, cpu);
    Ok(run)
}
