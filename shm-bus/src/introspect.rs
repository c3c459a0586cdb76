//! Introspection: what channels a bus directory holds, who produces them,
//! who reads them and how far behind each reader is.

use std::path::Path;

use crate::channel::{self, BusDir, ChannelState};
use crate::error::AttachError;
use crate::layout::slot_state;
use crate::liveness;
use crate::ring::{monotonic_ns, producer_heartbeat};

/// One channel of a bus directory.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    pub name: String,
    pub generation: u64,
    pub producer_pid: u32,
    /// By pid in our pid namespace, else by the producer's heartbeat; `None`:
    /// another pid namespace and no heartbeat yet.
    pub producer_alive: Option<bool>,
    pub state: ChannelState,
    pub created_realtime_ns: u64,
    /// Data ring bytes per shard.
    pub capacity: u64,
    pub shards: Vec<ShardInfo>,
    pub readers: Vec<ReaderInfo>,
    /// Reader slots freed because their holder died.
    pub reaped_readers: u64,
}

impl ChannelInfo {
    /// Records written over all shards.
    pub fn records_written(&self) -> u64 {
        // Saturating: the counters come from a file, which may be damaged.
        self.shards.iter().fold(0u64, |sum, s| sum.saturating_add(s.records_written))
    }

    /// Record bytes written over all shards (what the records take of the
    /// rings, headers aside).
    pub fn bytes_written(&self) -> u64 {
        self.shards.iter().fold(0u64, |sum, s| sum.saturating_add(s.bytes_written))
    }

    /// Of [`ChannelInfo::bytes_written`], the bytes the producer counts as
    /// payload (e.g. the TCP data of packet groups whose records fill whole
    /// receive slots); 0 from producers older than this counter.
    pub fn payload_bytes(&self) -> u64 {
        self.shards.iter().fold(0u64, |sum, s| sum.saturating_add(s.payload_bytes))
    }
}

/// Write counters of one shard.
#[derive(Clone, Copy, Debug)]
pub struct ShardInfo {
    pub write_pos: u64,
    pub tail_pos: u64,
    pub records_written: u64,
    /// Sum of the records' lengths.
    pub bytes_written: u64,
    /// Of `bytes_written`, what the producer counts as payload.
    pub payload_bytes: u64,
    /// Times the shard became full because a gated reader held the space
    /// (episodes, not retries).
    pub full_count: u64,
    /// Release stores that published a batch.
    pub publish_count: u64,
    /// Times the writer started over early (`ChannelOptions::hot_window`).
    pub start_over_count: u64,
    /// Times the writer skipped ahead into the part of the ring a start-over
    /// had skipped, because a reader lagged.
    pub skip_ahead_count: u64,
}

/// One attached reader.
#[derive(Clone, Debug)]
pub struct ReaderInfo {
    pub slot: u32,
    pub pid: u32,
    pub alive: Option<bool>,
    pub gated: bool,
    pub received: u64,
    pub lost: u64,
    /// Records published but not yet read, over all shards.
    pub lag_records: u64,
    /// Ring positions between the reader and the producer, over all shards:
    /// an upper bound on the bytes to read, as it counts padding too (after
    /// a start-over, most of a lap).
    pub lag_bytes: u64,
    /// Nanoseconds since the reader last showed a sign of life.
    pub heartbeat_age_ns: u64,
    /// When it attached (ns since the Unix epoch).
    pub attached_realtime_ns: u64,
}

/// A channel file found in the bus directory, and what attaching to it gave.
#[derive(Debug)]
pub struct ChannelListing {
    pub name: String,
    pub info: Result<ChannelInfo, AttachError>,
}

/// Describes channel `name`.
pub fn channel_info(bus: &BusDir, name: &str) -> Result<ChannelInfo, AttachError> {
    let map = channel::attach(bus, name, channel::Access::Reader)?;
    let g = &map.geometry;
    let shards: Vec<ShardInfo> = map
        .shards
        .iter()
        .map(|s| {
            let c = s.counters();
            ShardInfo {
                write_pos: c.write_pos,
                tail_pos: c.tail_pos,
                records_written: c.records_written,
                bytes_written: c.bytes_written,
                payload_bytes: c.payload_bytes,
                full_count: c.full_count,
                publish_count: c.publish_count,
                start_over_count: c.start_over_count,
                skip_ahead_count: c.skip_ahead_count,
            }
        })
        .collect();
    let now = monotonic_ns();
    let readers = (0..map.slots.count)
        .filter_map(|i| {
            let snap = map.slots.snapshot(i);
            if snap.state != slot_state::LOSSY && snap.state != slot_state::GATED {
                return None;
            }
            let (mut lag_records, mut lag_bytes) = (0, 0);
            for (shard, &(pos, next_seq)) in shards.iter().zip(&snap.shards) {
                // Saturating: positions and counters come from files, which
                // may be damaged.
                lag_bytes = u64::saturating_add(lag_bytes, shard.write_pos.saturating_sub(pos));
                lag_records = u64::saturating_add(
                    lag_records,
                    if next_seq == u64::MAX {
                        u64::from(pos < shard.write_pos)
                    } else {
                        shard.records_written.saturating_sub(next_seq)
                    },
                );
            }
            Some(ReaderInfo {
                slot: i as u32,
                pid: snap.identity.pid,
                alive: liveness::pid_alive(&snap.identity),
                gated: snap.state == slot_state::GATED,
                received: snap.received,
                lost: snap.lost,
                lag_records,
                lag_bytes,
                heartbeat_age_ns: now.saturating_sub(snap.heartbeat_ns),
                attached_realtime_ns: snap.attached_realtime_ns,
            })
        })
        .collect();
    Ok(ChannelInfo {
        name: g.name.clone(),
        generation: g.generation,
        producer_pid: g.producer_pid,
        producer_alive: liveness::producer_liveness(
            &g.producer_identity(),
            producer_heartbeat(&map.words.channel),
        ),
        state: map.state(),
        created_realtime_ns: g.created_realtime_ns,
        capacity: g.capacity,
        shards,
        readers,
        reaped_readers: map.words.reaped(),
    })
}

/// Lists every channel of a bus directory (sorted by name). A channel whose
/// files are corrupt is listed with its error.
pub fn list_channels(bus: &BusDir) -> std::io::Result<Vec<ChannelListing>> {
    let mut names = Vec::new();
    if bus.path().exists() {
        collect(bus.path(), bus.path(), &mut names)?;
    }
    names.sort();
    Ok(names.into_iter().map(|name| ChannelListing { info: channel_info(bus, &name), name }).collect())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with('.') {
            continue; // temporary files of a producer at work
        }
        if entry.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else if let Some(stem) = file_name.strip_suffix(".ring") {
            let rel = path.parent().and_then(|p| p.strip_prefix(root).ok()).unwrap_or(Path::new(""));
            let name = if rel.as_os_str().is_empty() {
                stem.to_owned()
            } else {
                format!("{}/{stem}", rel.to_string_lossy())
            };
            if channel::validate_name(&name).is_ok() {
                out.push(name);
            }
        }
    }
    Ok(())
}
