//! `ringest demo`: the default engine in-process on a free port, driven by
//! the load generator while a lossless logger records it to MCAP; then a
//! check that every byte sent is in the log, connection by connection.
//!
//! Everything is private and temporary: a bus directory under /dev/shm
//! (the global `--bus` is not used) and, without `--out`, the log file.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::num::NonZero;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use engine::config::TcpServerConfig;
use engine::records::ReceivePath;
use engine::{Engine, EngineHandle};
use mcap::Message;
use sha2::{Digest, Sha256};
use shm_bus::BusDir;

use crate::human;
use crate::loadgen::{self, LoadReport, LoadSpec};
use crate::log::mcap_reader::connection_messages;
use crate::log::mcap_writer::PEER_KEY;
use crate::log::{Compression, LogOptions, Logger, StageSelection, parse_seconds};
use crate::shutdown::StopSignals;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long the load generator sends, in seconds.
    #[arg(long, value_name = "N", default_value = "5", value_parser = parse_seconds)]
    seconds: Duration,
    /// Keep the log at this path [default: a temporary file, removed at
    /// the end].
    #[arg(long, value_name = "FILE.mcap")]
    out: Option<PathBuf>,
}

const CONNECTIONS: usize = 8;
const MESSAGE_SIZE: usize = 64 << 10;
/// How often the progress line is redrawn on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(250);
/// How often a progress line is printed when stdout is not a terminal.
const PRINT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for the engine to start, or to pass on what it received.
const SETTLE: Duration = Duration::from_secs(10);

pub fn run(args: DemoArgs, _bus: &BusDir) -> anyhow::Result<()> {
    // Caught, so that Ctrl-C cannot leave the bus's memory behind in
    // /dev/shm: the demo ends by itself within --seconds.
    let signals = StopSignals::install()?;
    let shm = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let bus_dir =
        tempfile::Builder::new().prefix("ringest-demo-").tempdir_in(shm).context("creating a bus")?;
    let bus = BusDir::new(bus_dir.path());
    let log_dir =
        tempfile::Builder::new().prefix("ringest-demo-").tempdir().context("creating a log directory")?;
    let out = args.out.clone().unwrap_or_else(|| log_dir.path().join("demo.mcap"));

    let config = TcpServerConfig { address: ([127, 0, 0, 1], 0).into(), ..TcpServerConfig::default() };
    let stage = config.name.clone();
    let engine = Engine::new(bus.clone()).tcp_server(config).start().context("starting the engine")?;
    let addr = engine.wait_bound(&stage, SETTLE).context("the engine did not start listening")?;
    let options = LogOptions { out: out.clone(), lossless: true, compression: Compression::None };
    let logger = Logger::start(&bus, &[StageSelection::all(&stage)], &options)?;
    println!("engine: stage {stage} listening on {addr}, bus {}", bus.path().display());
    println!("logger: lossless, into {}", out.display());
    println!(
        "load: {CONNECTIONS} connections writing {} messages of random bytes for {:.1} s",
        human::bytes(MESSAGE_SIZE as f64),
        args.seconds.as_secs_f64()
    );

    let spec = LoadSpec {
        addr,
        connections: CONNECTIONS,
        size: MESSAGE_SIZE,
        rate: None,
        duration: args.seconds,
        seed: rand::random(),
    };
    let progress = Progress::new(&engine, &logger, &stage, signals);
    let report = loadgen::run(&spec, &|sent| progress.show(sent));
    progress.clear();
    let report = report?;

    // The engine must read what is still in its sockets before it stops.
    let sent = report.total_bytes();
    wait_until(SETTLE, || logger.totals().bytes >= sent);
    let path = match engine.stats(&stage).map(|s| s.receive_path) {
        Some(ReceivePath::IoUringMultishot) => "io_uring multishot recv",
        Some(ReceivePath::GlommioRead) => "glommio read",
        None => "unknown receive path (no statistics yet)",
    };
    engine.stop().context("stopping the engine")?;
    // The stop ends the channels: the logger reads the last records.
    wait_until(SETTLE, || logger.is_finished());
    let totals = logger.finish()?;

    let seconds = report.elapsed.as_secs_f64();
    println!(
        "sent:   {} in {} messages on {CONNECTIONS} connections in {seconds:.2} s: {}/s",
        human::bytes(sent as f64),
        report.total_messages(),
        human::bytes(report.bytes_per_s()),
    );
    println!(
        "engine: {} packets in {} groups ({:.1} packets per group), {path}",
        totals.packets,
        totals.groups,
        totals.packets as f64 / totals.groups.max(1) as f64
    );
    let size = std::fs::metadata(&out).map_or(0, |m| m.len());
    println!("log:    {} ({}), lost {} records", out.display(), human::bytes(size as f64), totals.lost);
    let checked = check(&out, &report);
    if args.out.is_none() {
        if checked.is_err() {
            println!("log kept for inspection: {}", log_dir.keep().join("demo.mcap").display());
        } else {
            println!("(the log is removed; --out FILE keeps it)");
        }
    }
    checked
}

/// Compares each connection's sha256 from the load generator with that of
/// its topic's messages in the log (the topic whose `peer` is the
/// connection's local address).
fn check(log: &Path, report: &LoadReport) -> anyhow::Result<()> {
    let mut logged = connection_digests(log)?;
    let mut differ = 0;
    for connection in &report.connections {
        let (bytes, sha256) =
            logged.remove(&connection.local.to_string()).unwrap_or((0, Sha256::digest([]).into()));
        if (bytes, sha256) != (connection.bytes, connection.sha256) {
            differ += 1;
            println!(
                "check:  connection {} sent {} bytes (sha256 {}), the log has {bytes} (sha256 {})",
                connection.local,
                connection.bytes,
                human::hex(&connection.sha256),
                human::hex(&sha256)
            );
        }
    }
    let total = report.connections.len();
    if differ > 0 {
        bail!("{differ} of {total} connections differ between what was sent and the log");
    }
    println!("check:  OK, every byte sent is in the log ({total} of {total} connections match by sha256)");
    Ok(())
}

/// The length and sha256 of each connection topic's messages in `log`, by
/// the topic's `peer`. Hashing is the slow part: it runs on every core,
/// each connection on one of them.
fn connection_digests(log: &Path) -> anyhow::Result<HashMap<String, (u64, [u8; 32])>> {
    let workers = std::thread::available_parallelism().map_or(1, NonZero::get);
    std::thread::scope(|scope| {
        let (queues, hashers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| {
                let (queue, messages) = mpsc::sync_channel::<Message<'static>>(64);
                let hasher = scope.spawn(move || {
                    let mut digests: HashMap<String, (u64, Sha256)> = HashMap::new();
                    for message in messages {
                        let peer = message.channel.metadata.get(PEER_KEY).cloned().unwrap_or_default();
                        let (bytes, sha256) = digests.entry(peer).or_default();
                        *bytes += message.data.len() as u64;
                        sha256.update(&message.data);
                    }
                    digests
                });
                (queue, hasher)
            })
            .unzip();
        for message in connection_messages(log)? {
            let message = message?;
            let queue = &queues[usize::from(message.channel.id) % workers];
            queue.send(message).expect("a hasher lives until its queue closes");
        }
        drop(queues);
        Ok(hashers
            .into_iter()
            .flat_map(|hasher| hasher.join().expect("hashing does not panic"))
            .map(|(peer, (bytes, sha256))| (peer, (bytes, sha256.finalize().into())))
            .collect())
    })
}

/// Polls `done` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The live progress line: a redrawn line on a terminal, a line a second
/// otherwise.
struct Progress<'a> {
    engine: &'a EngineHandle,
    logger: &'a Logger,
    stage: &'a str,
    terminal: bool,
    started: Instant,
    last: Cell<Option<Instant>>,
    signals: RefCell<StopSignals>,
}

impl<'a> Progress<'a> {
    fn new(engine: &'a EngineHandle, logger: &'a Logger, stage: &'a str, signals: StopSignals) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let (started, last, signals) = (Instant::now(), Cell::new(None), RefCell::new(signals));
        Self { engine, logger, stage, terminal, started, last, signals }
    }

    /// Shows the progress if it is time to; `sent` is the load
    /// generator's byte count.
    fn show(&self, sent: u64) {
        let every = if self.terminal { REDRAW_EVERY } else { PRINT_EVERY };
        if self.last.get().is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.last.set(Some(Instant::now()));
        // The engine's statistics, updated once a second.
        let (rate, packets, groups) = self.engine.stats(self.stage).map_or((0.0, 0, 0), |s| {
            let stage = &s.stage;
            (stage.traffic.bytes_received_per_s, stage.traffic.packets_received, stage.groups_published)
        });
        let line = format!(
            "{:5.1} s elapsed, received {:>11}/s, {:>7} packets in {:>7} groups, sent {:>10}, logged {:>10}",
            self.started.elapsed().as_secs_f64(),
            human::bytes(rate),
            human::count(packets as f64),
            human::count(groups as f64),
            human::bytes(sent as f64),
            human::bytes(self.logger.totals().bytes as f64),
        );
        let mut stdout = std::io::stdout().lock();
        if let Some(signal) = self.signals.borrow_mut().received() {
            let _ = writeln!(stdout, "\n{signal}: the demo ends with the load");
        }
        // A failed progress write is not worth stopping the demo for.
        let _ = if self.terminal {
            write!(stdout, "\r{line}\x1b[K")
        } else {
            writeln!(stdout, "progress: {line}")
        };
        let _ = stdout.flush();
    }

    /// Ends the redrawn line.
    fn clear(&self) {
        if self.terminal {
            println!();
        }
    }
}
