//! `ringest log`: records stages' channels into an MCAP file.
//!
//! The file has one channel per TCP connection, topic
//! `<stage>/packet_group/<connection id>`, whose messages are the packets
//! received on it (raw bytes, `log_time` = receive time), so concatenating
//! a topic's messages gives the bytes the peer sent. Its metadata holds the
//! `peer` and `local` addresses.
//!
//! A UDP stage's datagrams go to one topic per source,
//! `<stage>/datagrams/<source ip:port>`, one message per datagram (its
//! bytes exactly; `log_time` = the kernel's receive time when the engine
//! has it, else the engine's; `publish_time` = the engine's). A topic has
//! one channel per destination the source sent to (metadata `source`,
//! `destination`), and datagrams cut to the stage's `max_datagram_size_b`
//! go to a channel of their own with metadata `truncated` = `true`: MCAP
//! cannot mark single messages, and a reader concatenating the topic still
//! gets every datagram in order.
//!
//! Connection events and socket statistics are JSON messages on
//! `<stage>/connection_events` and `<stage>/socket_stats`. Chunks are
//! finished at least once a second, so a killed logger leaves a file
//! readable up to its last chunk.

pub mod json;
pub mod mcap_reader;
pub mod mcap_writer;
mod stage;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shm_bus::BusDir;

use crate::flags::StopFlag;
use crate::human;
use crate::progress::Progress;
use crate::shutdown::StopSignals;
use mcap_writer::{LogTotals, McapWriter};
use stage::StageRecorder;

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Channels to record: `STAGE/packet_group`, `STAGE/connection_events`,
    /// `STAGE/socket_stats`, or a bare `STAGE` for all three.
    #[arg(value_name = "CHANNEL", required = true)]
    channels: Vec<String>,
    /// The MCAP file to write (replaced if it exists).
    #[arg(long, value_name = "FILE.mcap")]
    out: PathBuf,
    /// Never lose a record: the engine waits for the logger (TCP pushes
    /// back on the senders) instead of overwriting what it has not logged.
    #[arg(long)]
    lossless: bool,
    /// Stop after this many seconds [default: when the channels end, or on
    /// SIGINT/SIGTERM].
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    seconds: Option<Duration>,
    /// Compression of the file's chunks.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
}

/// Chunk compression. Sensor data is often already compressed: none keeps
/// up with the highest rates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

/// A stage's control channels, which the file holds as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlChannel {
    ConnectionEvents,
    SocketStats,
}

impl ControlChannel {
    fn suffix(self) -> &'static str {
        match self {
            Self::ConnectionEvents => engine::CONNECTION_EVENTS,
            Self::SocketStats => engine::SOCKET_STATS,
        }
    }
}

/// Which channels of a stage to record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageSelection {
    pub stage: String,
    pub packets: bool,
    pub events: bool,
    pub stats: bool,
}

impl StageSelection {
    /// All three channels of `stage`.
    pub fn all(stage: &str) -> Self {
        Self { stage: stage.to_owned(), packets: true, events: true, stats: true }
    }

    fn channel_names(&self) -> impl Iterator<Item = String> + '_ {
        [
            (self.packets, engine::PACKET_GROUP),
            (self.events, engine::CONNECTION_EVENTS),
            (self.stats, engine::SOCKET_STATS),
        ]
        .into_iter()
        .filter(|(selected, _)| *selected)
        .map(|(_, suffix)| engine::channel_name(&self.stage, suffix))
    }
}

/// Groups the command line's channels by stage. A name that is not a
/// stage's packet, event or stats channel is a stage if `bus` has its
/// packet channel.
pub fn select_channels(bus: &BusDir, names: &[String]) -> anyhow::Result<Vec<StageSelection>> {
    const LOGGED: [&str; 3] = [engine::PACKET_GROUP, engine::CONNECTION_EVENTS, engine::SOCKET_STATS];
    let mut stages: Vec<StageSelection> = Vec::new();
    for name in names {
        let (stage, suffix) = match name.rsplit_once('/').filter(|(_, suffix)| LOGGED.contains(suffix)) {
            Some((stage, suffix)) => (stage, Some(suffix)),
            None if bus.ring_path(&engine::channel_name(name, engine::PACKET_GROUP)).exists() => {
                (name.as_str(), None)
            }
            None if bus.ring_path(name).exists() => {
                bail!("cannot log {name}: the logger records a stage's {}", LOGGED.join(", "))
            }
            None => bail!("no stage or channel {name} on the bus {}", bus.path().display()),
        };
        let selection = match stages.iter().position(|s| s.stage == stage) {
            Some(index) => &mut stages[index],
            None => {
                stages.push(StageSelection { stage: stage.to_owned(), ..Default::default() });
                stages.last_mut().expect("just pushed")
            }
        };
        match suffix {
            Some(engine::PACKET_GROUP) => selection.packets = true,
            Some(engine::CONNECTION_EVENTS) => selection.events = true,
            Some(_) => selection.stats = true,
            None => *selection = StageSelection::all(stage),
        }
    }
    Ok(stages)
}

/// Where and how to log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub out: PathBuf,
    pub lossless: bool,
    pub compression: Compression,
}

/// A running logger: one thread per stage, writing into one file.
pub struct Logger {
    writer: Arc<Mutex<McapWriter>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    stop: Arc<StopFlag>,
}

impl Logger {
    /// Attaches to every channel of `stages`, then creates the file and
    /// starts recording.
    pub fn start(bus: &BusDir, stages: &[StageSelection], options: &LogOptions) -> anyhow::Result<Self> {
        // Attach first: a missing channel leaves no empty file behind.
        let recorders = stages
            .iter()
            .map(|selection| {
                StageRecorder::attach(bus, selection, options.lossless)
                    .with_context(|| format!("cannot record stage {}", selection.stage))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let writer = Arc::new(Mutex::new(McapWriter::create(&options.out, options.compression)?));
        let stop = Arc::new(StopFlag::default());
        let threads = recorders
            .into_iter()
            .zip(stages)
            .map(|(recorder, selection)| {
                let (writer, stop) = (writer.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("log {}", selection.stage))
                    .spawn(move || {
                        let result = recorder.run(writer, &stop);
                        if result.is_err() {
                            stop.stop(); // the file is broken: end all
                        }
                        result
                    })
                    .context("cannot start a logger thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { writer, threads, stop })
    }

    pub fn totals(&self) -> LogTotals {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner).totals()
    }

    /// Whether every logged channel has ended (or recording failed).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Stops recording and completes the file with its summary section.
    pub fn finish(mut self) -> anyhow::Result<LogTotals> {
        let recorded = self.stop_threads();
        let writer = Arc::clone(&self.writer);
        drop(self); // its threads are joined: `writer` is the last reference
        let writer = Arc::into_inner(writer).expect("no thread holds the writer");
        // Complete the file even after an error: what was logged stays readable.
        let totals = writer.into_inner().unwrap_or_else(PoisonError::into_inner).finish();
        recorded.and(totals)
    }

    /// Stops the threads and joins them; returns the first error.
    fn stop_threads(&mut self) -> anyhow::Result<()> {
        self.stop.stop();
        let mut result = Ok(());
        for thread in self.threads.drain(..) {
            let outcome = thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a logger thread panicked")));
            result = result.and(outcome);
        }
        result
    }
}

impl Drop for Logger {
    /// Stops recording; the file is completed as its writer drops.
    fn drop(&mut self) {
        let _ = self.stop_threads();
    }
}

/// How often the command looks for a signal, the deadline or the end.
const POLL: Duration = Duration::from_millis(100);

pub fn run(args: LogArgs, bus: &BusDir) -> anyhow::Result<()> {
    let stages = select_channels(bus, &args.channels)?;
    let deadline = args.seconds.map(|seconds| Instant::now() + seconds);
    let mut signals = StopSignals::install()?;
    let options = LogOptions { out: args.out, lossless: args.lossless, compression: args.compression };
    let logger = Logger::start(bus, &stages, &options)?;
    let channels: Vec<String> = stages.iter().flat_map(StageSelection::channel_names).collect();
    println!(
        "recording {} into {} ({}); SIGINT or SIGTERM stops",
        channels.join(", "),
        options.out.display(),
        if options.lossless { "lossless" } else { "lossy" }
    );
    let progress = Progress::new();
    let stopped_by = loop {
        if logger.is_finished() {
            break "the channels ended";
        }
        if let Some(signal) = signals.received() {
            break signal;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break "--seconds";
        }
        progress.show(|| {
            let totals = logger.totals();
            format!(
                "logged {} in {} ({}), lost {}",
                messages(&totals),
                human::plural(totals.groups, "group"),
                human::bytes((totals.bytes + totals.datagram_bytes) as f64),
                human::plural(totals.lost, "record"),
            )
        });
        std::thread::sleep(POLL);
    };
    progress.clear();
    let totals = logger.finish()?;
    let size = std::fs::metadata(&options.out).map_or(0, |m| m.len());
    let skipped = match totals.skipped {
        0 => String::new(),
        n => format!("; skipped {} undecodable", human::plural(n, "record")),
    };
    // Never silent about datagrams the stage kept only in part.
    let truncated = match totals.datagrams {
        0 => String::new(),
        _ => format!("; {} truncated (logged as kept)", human::plural(totals.truncated, "datagram")),
    };
    println!(
        "logged {} ({} in {}) from {} and {} into {} ({}); lost {}{truncated}{skipped}; stopped by {stopped_by}",
        messages(&totals),
        human::bytes((totals.bytes + totals.datagram_bytes) as f64),
        human::plural(totals.groups, "group"),
        senders(&totals),
        human::plural(totals.control_messages, "event and stats message"),
        options.out.display(),
        human::bytes(size as f64),
        human::plural(totals.lost, "record"),
    );
    Ok(())
}

/// "N packets", "N datagrams" or both: what the stages received.
fn messages(totals: &LogTotals) -> String {
    match (totals.packets, totals.datagrams) {
        (packets, 0) => human::plural(packets, "packet"),
        (0, datagrams) => human::plural(datagrams, "datagram"),
        (packets, datagrams) => {
            format!("{} and {}", human::plural(packets, "packet"), human::plural(datagrams, "datagram"))
        }
    }
}

/// "N connections", "N sources" or both: whom the messages came from.
fn senders(totals: &LogTotals) -> String {
    match (totals.connections, totals.sources) {
        (connections, 0) => human::plural(connections, "connection"),
        (0, sources) => human::plural(sources, "source"),
        (connections, sources) => {
            format!("{} and {}", human::plural(connections, "connection"), human::plural(sources, "source"))
        }
    }
}

/// A non-negative, finite number of seconds.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text} is not a duration in seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn channels_group_by_stage() {
        let dir = tempfile::tempdir().unwrap();
        let bus = BusDir::new(dir.path());
        let stages =
            select_channels(&bus, &names(&["a/b/packet_group", "c/socket_stats", "a/b/connection_events"]))
                .unwrap();
        assert_eq!(
            stages,
            [
                StageSelection { stage: "a/b".into(), packets: true, events: true, stats: false },
                StageSelection { stage: "c".into(), packets: false, events: false, stats: true },
            ]
        );
        let err = select_channels(&bus, &names(&["ingest"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no stage or channel ingest on the bus {}", dir.path().display())
        );
    }

    #[test]
    fn seconds_are_non_negative_and_finite() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
