//! The cross-process one-way latency harness. This process publishes
//! paced records stamped with their send time; one `bench-peer` process per
//! reader receives them, takes the arrival time on the same
//! `CLOCK_MONOTONIC` and reports the distribution of arrival - send.
//!
//! Protocol with `bench-peer`: its only argument is a [`PeerArgs`] as JSON;
//! it prints [`READY`] once attached, then one [`LatencySummary`] as JSON.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shm_bus::BusDir;

use crate::futex_floor::{FloorConsumer, FloorPublisher};
use crate::iceoryx::{IoxConsumer, IoxPublisher};
use crate::results::{LatencySummary, Mode, OneWay, OneWayRun};
use crate::shm::{PrivateBus, ShmConsumer, ShmPublisher, ring_capacity};
use crate::{Consume, Publish, Stamps, Transport, monotonic_ns, pin_to_core, record_template};

/// Core of the producer thread in [`Mode::Spin`] runs (the caller pins it).
pub const PRODUCER_CORE: usize = 0;
/// Core of the busy-polling reader in [`Mode::Spin`] runs.
pub const READER_CORE: usize = 1;
/// What a reader prints once it is attached.
pub const READY: &str = "ready";

/// Where readers find the producer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Endpoint {
    ShmBus { bus: PathBuf, channel: String },
    Iceoryx2 { service: String },
    FutexFloor { path: PathBuf },
}

/// What a `bench-peer` process is told.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerArgs {
    pub endpoint: Endpoint,
    pub setup: OneWay,
}

/// Runs one producer (in this process) against `cfg.readers` reader
/// processes started from `peer_exe`. In [`Mode::Spin`] the caller must
/// have pinned this thread to [`PRODUCER_CORE`].
pub fn run(peer_exe: &Path, cfg: &OneWay) -> Result<OneWayRun, Box<dyn Error>> {
    let bus = PrivateBus::new()?;
    let blocking = cfg.mode == Mode::Block;
    let (mut publisher, endpoint): (Box<dyn Publish>, _) = match cfg.transport {
        Transport::ShmBus => {
            let channel = "one-way".to_owned();
            let publisher = ShmPublisher::create(&bus.bus(), &channel, ring_capacity(cfg.size), 1)?;
            (Box::new(publisher), Endpoint::ShmBus { bus: bus.path().to_owned(), channel })
        }
        Transport::Iceoryx2 => {
            let service = crate::iceoryx::unique_service_name("one-way");
            let publisher = IoxPublisher::create(&service, cfg.size, cfg.readers, blocking)?;
            (Box::new(publisher), Endpoint::Iceoryx2 { service })
        }
        Transport::FutexFloor => {
            let path = bus.path().join("futex-floor");
            (Box::new(FloorPublisher::create(&path)?), Endpoint::FutexFloor { path })
        }
    };
    let args = PeerArgs { endpoint, setup: *cfg };
    let mut readers = Readers::spawn(peer_exe, &serde_json::to_string(&args)?, cfg.readers)?;
    send_paced(publisher.as_mut(), cfg);
    Ok(OneWayRun { setup: *cfg, per_reader: readers.summaries()? })
}

/// Publishes `warmup + samples` records, one every `1 / rate_hz`, each
/// stamped with its sequence number (head) and send time (tail).
fn send_paced(publisher: &mut dyn Publish, cfg: &OneWay) {
    let mut record = record_template(cfg.size);
    let period_ns = 1_000_000_000 / cfg.rate_hz;
    let start = monotonic_ns();
    for seq in 0..cfg.warmup + cfg.samples as u64 {
        let due = start + seq * period_ns;
        match cfg.mode {
            Mode::Spin => {
                while monotonic_ns() < due {
                    std::hint::spin_loop();
                }
            }
            // Sleeping leaves the cores to the readers. Deadlines are
            // absolute, so an oversleep shortens the next wait and the rate
            // holds on average.
            Mode::Block => {
                let now = monotonic_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
            }
        }
        Stamps { head: seq, tail: monotonic_ns() }.write(&mut record);
        publisher.publish(&record);
    }
}

/// The reader processes of a run. Dropping it kills those still running.
struct Readers {
    children: Vec<(Child, BufReader<ChildStdout>)>,
}

impl Readers {
    /// Starts `count` readers and waits until each is attached.
    fn spawn(peer_exe: &Path, args: &str, count: usize) -> Result<Self, Box<dyn Error>> {
        let mut readers = Self { children: Vec::with_capacity(count) };
        for _ in 0..count {
            let mut child = Command::new(peer_exe).arg(args).stdout(Stdio::piped()).spawn()?;
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
            readers.children.push((child, stdout));
        }
        for (_, stdout) in &mut readers.children {
            let line = read_line(stdout)?;
            if line != READY {
                return Err(format!("reader said {line:?} instead of {READY:?}").into());
            }
        }
        Ok(readers)
    }

    /// Each reader's summary, once all have received every record.
    fn summaries(&mut self) -> Result<Vec<LatencySummary>, Box<dyn Error>> {
        let mut summaries = Vec::with_capacity(self.children.len());
        for (child, stdout) in &mut self.children {
            summaries.push(serde_json::from_str(&read_line(stdout)?)?);
            let status = child.wait()?;
            if !status.success() {
                return Err(format!("reader exited with {status}").into());
            }
        }
        Ok(summaries)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            // Errors mean it has exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> Result<String, Box<dyn Error>> {
    let mut line = String::new();
    if stdout.read_line(&mut line)? == 0 {
        return Err("reader exited early (see its stderr)".into());
    }
    Ok(line.trim_end().to_owned())
}

/// The reader side, run by `bench-peer`: attaches, prints [`READY`],
/// receives every record and prints its [`LatencySummary`].
pub fn serve(args: &PeerArgs) -> Result<(), Box<dyn Error>> {
    let setup = &args.setup;
    let blocking = setup.mode == Mode::Block;
    if !blocking {
        pin_to_core(READER_CORE);
    }
    let mut consumer: Box<dyn Consume> = match &args.endpoint {
        Endpoint::ShmBus { bus, channel } => Box::new(ShmConsumer::attach(&BusDir::new(bus), channel)?),
        Endpoint::Iceoryx2 { service } => {
            Box::new(IoxConsumer::open(service, setup.size, setup.readers, blocking)?)
        }
        Endpoint::FutexFloor { path } => Box::new(FloorConsumer::open(path)?),
    };
    println!("{READY}");
    let mut tally = Tally { warmup: setup.warmup, next_seq: 0, latencies: Vec::with_capacity(setup.samples) };
    let total = setup.warmup + setup.samples as u64;
    while tally.next_seq < total {
        match setup.mode {
            Mode::Spin => tally.record(consumer.next_spin()),
            Mode::Block => consumer.drain_blocking(&mut |stamps| tally.record(stamps)),
        }
    }
    println!("{}", serde_json::to_string(&LatencySummary::from_samples(tally.latencies))?);
    Ok(())
}

/// Latencies of the records received so far.
struct Tally {
    warmup: u64,
    next_seq: u64,
    latencies: Vec<u64>,
}

impl Tally {
    fn record(&mut self, stamps: Stamps) {
        let arrived = monotonic_ns();
        assert_eq!(stamps.head, self.next_seq, "a record was lost or reordered");
        if stamps.head >= self.warmup {
            self.latencies.push(arrived - stamps.tail);
        }
        self.next_seq += 1;
    }
}

/// The `main` of a one-way benchmark: runs `configs` in order, prints one
/// line per run and, given `--json PATH`, writes all runs there.
pub fn bench_main(peer_exe: &Path, configs: impl IntoIterator<Item = OneWay>) -> Result<(), Box<dyn Error>> {
    let mut json_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json_path = Some(args.next().ok_or("--json needs a path")?),
            // `cargo bench` passes it to every harness-less bench.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?} (usage: [--json PATH])").into()),
        }
    }
    let mut runs = Vec::new();
    for cfg in configs {
        let run = run(peer_exe, &cfg)?;
        let per_reader: Vec<String> = run
            .per_reader
            .iter()
            .map(|s| format!("{}/{}/{}", micros(s.p50_ns), micros(s.p99_ns), micros(s.p999_ns)))
            .collect();
        println!(
            "{:<8} {:<5?} {:>6} {} reader(s) at {} msg/s: p50/p99/p99.9 µs {}",
            cfg.transport.name(),
            cfg.mode,
            crate::size_label(cfg.size),
            cfg.readers,
            cfg.rate_hz,
            per_reader.join("  ")
        );
        runs.push(run);
    }
    if let Some(path) = json_path {
        std::fs::write(path, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}

fn micros(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}
