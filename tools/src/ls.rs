//! `ringest ls`: the channels of a bus directory, who writes them, how
//! fast, and who reads them how far behind.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail};
use shm_bus::{BusDir, ChannelInfo, ChannelListing, ChannelState, ReaderInfo};

use crate::human;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Removes the files of channels whose producer has ended them or has
    /// died, then lists what is left. A live producer's files are never
    /// removed.
    #[arg(long)]
    prune: bool,
}

/// Time between the two samples that rates are computed from.
const RATE_INTERVAL: Duration = Duration::from_millis(500);

pub fn run(args: LsArgs, bus: &BusDir) -> anyhow::Result<()> {
    if !bus.path().is_dir() {
        bail!(
            "bus directory {} does not exist (no engine has published there; --bus or $RINGEST_BUS choose another)",
            bus.path().display()
        );
    }
    let list = || shm_bus::list_channels(bus).with_context(|| format!("listing {}", bus.path().display()));
    if args.prune {
        prune(bus, &list()?)?;
    }
    let first = list()?;
    let first_at = Instant::now();
    let mut out = std::io::stdout().lock();
    if first.is_empty() {
        writeln!(out, "no channels in {}", bus.path().display())?;
        return Ok(());
    }
    // Counters only move while a live producer writes: otherwise every
    // rate is 0 and there is no need to wait for a second sample.
    let second = if first.iter().any(|l| l.info.as_ref().is_ok_and(is_written)) {
        std::thread::sleep(RATE_INTERVAL);
        Some(list()?)
    } else {
        None
    };
    let listings = second.as_deref().unwrap_or(&first);
    let rates = Rates::between(&first, listings, first_at.elapsed());

    // RING BYTES: what the records take of the rings; PAYLOAD: what the
    // producer counts as payload in them (the data of TCP packets or UDP
    // datagrams: a group received by io_uring fills whole receive slots,
    // however short its packets or datagrams).
    let mut table = Table::new(
        &["CHANNEL", "PRODUCER", "STATE", "RECORDS", "RECORDS/S", "RING BYTES", "PAYLOAD", "RING BYTES/S"],
        3,
    );
    for info in listings.iter().filter_map(|l| l.info.as_ref().ok()) {
        let (records_per_s, bytes_per_s) = rates.of(info);
        table.push(vec![
            info.name.clone(),
            producer(info),
            state(info.state),
            info.records_written().to_string(),
            human::count(records_per_s),
            human::bytes(info.bytes_written() as f64),
            human::bytes(info.payload_bytes() as f64),
            format!("{}/s", human::bytes(bytes_per_s)),
        ]);
    }
    let mut lines = table.lines().into_iter();
    let width = listings.iter().map(|l| l.name.len()).max().unwrap_or(0);
    writeln!(out, "{}", lines.next().unwrap_or_default())?;
    for listing in listings {
        match &listing.info {
            Ok(info) => {
                writeln!(out, "{}", lines.next().unwrap_or_default())?;
                for reader in &info.readers {
                    writeln!(out, "    {}", describe_reader(reader))?;
                }
            }
            Err(e) => writeln!(out, "{:<width$}  error: {e}", listing.name)?,
        }
    }
    Ok(())
}

/// Removes the files of every listed channel that no producer will write
/// again: ended, replaced, or whose producer died.
fn prune(bus: &BusDir, listings: &[ChannelListing]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut pruned = 0;
    for info in listings.iter().filter_map(|l| l.info.as_ref().ok()) {
        let why = match (info.state, info.producer_alive) {
            (ChannelState::Ended, _) => "ended",
            (ChannelState::Replaced, _) => "replaced",
            (ChannelState::Live, Some(false)) => "producer dead",
            // Live, or a producer of another pid namespace that never beat.
            _ => continue,
        };
        if remove_channel(bus, info)? {
            writeln!(out, "removed {} ({why}, pid {})", info.name, info.producer_pid)?;
            pruned += 1;
        }
    }
    writeln!(out, "pruned {}", human::plural(pruned, "channel"))?;
    Ok(())
}

/// Removes the two files of `info`'s channel unless a new producer took
/// the channel over since `info` was read (its ring file is then another
/// file, or live again). Returns whether it removed them.
fn remove_channel(bus: &BusDir, info: &ChannelInfo) -> anyhow::Result<bool> {
    let ring = bus.ring_path(&info.name);
    let inode = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    let Some(before) = inode(&ring) else { return Ok(false) };
    // Read again: the generation must be the one judged, and still not live.
    match shm_bus::channel_info(bus, &info.name) {
        Ok(now) if now.generation == info.generation && now.state == info.state => {}
        _ => return Ok(false),
    }
    for path in [bus.readers_path(&info.name), ring.clone()] {
        if inode(&ring) != Some(before) {
            return Ok(false); // a producer renamed a new ring into place
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(true)
}

/// Whether a live producer may be writing `info` now.
fn is_written(info: &ChannelInfo) -> bool {
    info.state == ChannelState::Live && info.producer_alive != Some(false)
}

/// Records and bytes per second of each channel between two listings.
struct Rates(HashMap<(String, u64), (f64, f64)>);

impl Rates {
    fn between(before: &[ChannelListing], after: &[ChannelListing], elapsed: Duration) -> Self {
        let counters = |listings: &[ChannelListing]| -> HashMap<(String, u64), (u64, u64)> {
            listings
                .iter()
                .filter_map(|l| l.info.as_ref().ok())
                .map(|i| ((i.name.clone(), i.generation), (i.records_written(), i.bytes_written())))
                .collect()
        };
        let before = counters(before);
        let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let rates = counters(after)
            .into_iter()
            .filter_map(|(key, (records, bytes))| {
                // A channel replaced in between (new generation) has no rate yet.
                let (records_before, bytes_before) = *before.get(&key)?;
                let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                Some((key, (per_s(records, records_before), per_s(bytes, bytes_before))))
            })
            .collect();
        Self(rates)
    }

    /// (records/s, bytes/s) of `info`.
    fn of(&self, info: &ChannelInfo) -> (f64, f64) {
        self.0.get(&(info.name.clone(), info.generation)).copied().unwrap_or_default()
    }
}

fn producer(info: &ChannelInfo) -> String {
    format!("pid {} {}", info.producer_pid, liveness(info.producer_alive))
}

fn liveness(alive: Option<bool>) -> &'static str {
    match alive {
        Some(true) => "alive",
        Some(false) => "dead",
        None => "(other pid namespace, no heartbeat)",
    }
}

fn state(state: ChannelState) -> String {
    match state {
        ChannelState::Live => "live".to_owned(),
        ChannelState::Ended => "ended".to_owned(),
        ChannelState::Replaced => "replaced".to_owned(),
        ChannelState::Unknown(raw) => format!("unknown ({raw})"),
    }
}

fn describe_reader(reader: &ReaderInfo) -> String {
    format!(
        "reader pid {} {}, {}: received {}, lag {} ({}), lost {}",
        reader.pid,
        liveness(reader.alive),
        if reader.gated { "gated" } else { "lossy" },
        reader.received,
        human::plural(reader.lag_records, "record"),
        human::bytes(reader.lag_bytes as f64),
        reader.lost,
    )
}
