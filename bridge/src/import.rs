//! The importing half: publishes the peer's records into local channels
//! under the origin's generation and sequence numbers, and says what it
//! holds, so that the peer resumes right after it.
//!
//! What was acknowledged needs no file of its own: it is in the imported
//! channel itself. Its generation is the origin's, and each shard's
//! `records_written` is the next sequence number it lacks; an ACK is sent
//! only after the records below it were published. A restarted importer
//! reads both from the channel file its predecessor left on the bus.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shm_bus::{BusDir, ChannelOptions, Producer, ReserveError, ShardWriter};

use crate::export::{EGRESS_SUFFIX, matches};
use crate::status::ImportStatus;
use crate::wire::{Control, OFFER_RETURN, RecordHeader, ResumeAnswer};

/// Longest sleep while the local ring is full (a lossless reader lags).
const FULL_RETRY_MAX: Duration = Duration::from_millis(2);
/// Longest sleep while a returned egress channel waits for its stage.
const STAGE_RETRY_MAX: Duration = Duration::from_millis(50);

/// Why a link must end on the importing side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("stopping")]
    Stopped,
}

struct Imported {
    generation: u64,
    shards: u32,
    capacity: u64,
    producer: Option<Producer>,
    writers: Vec<ShardWriter>,
    /// Per shard: the next sequence number it lacks.
    next_seq: Vec<u64>,
    /// Per shard: nothing was held when the channel was offered, so the
    /// first record's sequence number is where history starts, not a gap.
    fresh: Vec<bool>,
    dirty: Vec<bool>,
    /// An egress channel returned to a local stage (OFFER flag RETURN).
    returned: bool,
    /// Whether a gated reader (the stage's) was seen on the channel since
    /// it was opened.
    reader_seen: bool,
    counters: ImportStatus,
}

/// Every imported channel of a bridge, across links.
pub(crate) struct Imports {
    bus: BusDir,
    file_mode: u32,
    import_prefix: String,
    /// This side's export patterns: a returned egress channel is accepted
    /// only for a stage whose packets are exported.
    export_patterns: Vec<String>,
    by_local: HashMap<String, Imported>,
    /// Channel ids of the current link.
    by_id: HashMap<u32, String>,
}

impl Imports {
    pub(crate) fn new(
        bus: BusDir,
        file_mode: u32,
        import_prefix: String,
        export_patterns: Vec<String>,
    ) -> Self {
        Self {
            bus,
            file_mode,
            import_prefix,
            export_patterns,
            by_local: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    pub(crate) fn begin_link(&mut self) {
        self.by_id.clear();
    }

    /// The local name of an offered channel, or why it is refused.
    fn local_name(&self, wire_name: &str, flags: u32) -> Result<String, String> {
        let local = if flags & OFFER_RETURN != 0 {
            let Some(stage) = wire_name.strip_suffix(EGRESS_SUFFIX) else {
                return Err(format!("{wire_name} is returned but is no egress channel"));
            };
            let packets = format!("{stage}/packet_group");
            if !self.export_patterns.iter().any(|p| matches(p, &packets)) {
                return Err(format!("egress for stage {stage}, whose channels this side does not export"));
            }
            wire_name.to_owned()
        } else {
            format!("{}/{wire_name}", self.import_prefix)
        };
        shm_bus::validate_name(&local).map_err(|reason| format!("{local:?} is no channel name: {reason}"))?;
        Ok(local)
    }

    /// Answers an OFFER: where to resume, after creating (or keeping) the
    /// local channel.
    pub(crate) fn offer(
        &mut self,
        id: u32,
        generation: u64,
        capacity: u64,
        shards: u32,
        flags: u32,
        wire_name: &str,
    ) -> ResumeAnswer {
        match self.accept(id, generation, capacity, shards, flags, wire_name) {
            Ok(next_seq) => ResumeAnswer::Accept { next_seq },
            Err(reason) => {
                tracing::warn!(channel = %wire_name, "bridge: refused the peer's channel: {reason}");
                ResumeAnswer::Refuse { reason }
            }
        }
    }

    fn accept(
        &mut self,
        id: u32,
        generation: u64,
        capacity: u64,
        shards: u32,
        flags: u32,
        wire_name: &str,
    ) -> Result<Vec<u64>, String> {
        let local = self.local_name(wire_name, flags)?;
        if let Some(held) = self.by_local.get_mut(&local)
            && held.generation == generation
            && held.shards == shards
        {
            held.counters.resumes += 1;
            held.fresh = held.next_seq.iter().map(|&s| s == 0).collect();
            self.by_id.insert(id, local);
            return Ok(held.next_seq.clone());
        }
        // A new generation replaces what we held of an older one: its
        // writers go first (they publish what they hold).
        self.by_local.remove(&local);
        // What a predecessor of this process published, if the channel
        // file it left is of this generation.
        let next_seq = match shm_bus::channel_info(&self.bus, &local) {
            Ok(info) if info.generation == generation && info.shards.len() == shards as usize => {
                info.shards.iter().map(|s| s.records_written).collect()
            }
            _ => vec![0; shards as usize],
        };
        let mut imported = Imported {
            generation,
            shards,
            capacity,
            producer: None,
            writers: Vec::new(),
            next_seq,
            fresh: Vec::new(),
            dirty: vec![false; shards as usize],
            returned: flags & OFFER_RETURN != 0,
            reader_seen: false,
            counters: ImportStatus { generation, resumes: 1, ..Default::default() },
        };
        imported.fresh = imported.next_seq.iter().map(|&s| s == 0).collect();
        open(&self.bus, self.file_mode, &local, &mut imported)?;
        tracing::info!(channel = %local, generation, next_seq = ?imported.next_seq, "bridge: importing");
        let answer = imported.next_seq.clone();
        self.by_local.insert(local.clone(), imported);
        self.by_id.insert(id, local);
        Ok(answer)
    }

    /// Publishes one record whose payload is next on `stream`, reading it
    /// straight into the local ring.
    pub(crate) fn write(
        &mut self,
        header: RecordHeader,
        stream: &mut impl Read,
        stop: &AtomicBool,
        mut waiting: impl FnMut(),
    ) -> Result<(), ImportError> {
        let protocol = |m: String| ImportError::Protocol(m);
        let Some(local) = self.by_id.get(&header.id) else {
            return Err(protocol(format!("record for channel id {} that was not offered", header.id)));
        };
        let Some(imported) = self.by_local.get_mut(local) else {
            return Err(protocol(format!("record for channel id {} that was refused", header.id)));
        };
        let shard = header.shard as usize;
        if shard >= imported.shards as usize {
            return Err(protocol(format!(
                "record for shard {shard} of {} with {} shards",
                local, imported.shards
            )));
        }
        if imported.producer.is_none() {
            // The channel ended, and the peer sends more of its generation
            // (after a resume): open it again where it stopped.
            open(&self.bus, self.file_mode, local, imported).map_err(protocol)?;
        }
        if imported.returned && !imported.reader_seen {
            wait_for_stage(&self.bus, local, stop, &mut waiting)?;
            imported.reader_seen = true;
        }
        let writer = &mut imported.writers[shard];
        let len = header.payload_len as usize;
        if len > writer.max_payload() {
            return Err(protocol(format!(
                "record of {len} bytes for a channel whose records are at most {}",
                writer.max_payload()
            )));
        }
        let next = writer.next_seq();
        if header.seq < next {
            // Held already (the resume protocol makes this rare): dropped.
            io::copy(&mut stream.take(len as u64), &mut io::sink())?;
            imported.counters.duplicates_dropped += 1;
            return Ok(());
        }
        if header.seq == u64::MAX {
            return Err(protocol("record with sequence number u64::MAX".into()));
        }
        if header.seq > next {
            if !imported.fresh[shard] {
                imported.counters.gaps += header.seq - next;
            }
            writer.skip_to_seq(header.seq);
        }
        imported.fresh[shard] = false;
        let mut sleep = Duration::from_micros(20);
        let pending = loop {
            match writer.reserve_pending(len) {
                Ok(pending) => break pending,
                Err(ReserveError::Full { .. }) => {
                    if stop.load(Ordering::Relaxed) {
                        return Err(ImportError::Stopped);
                    }
                    // A local lossless reader lags: hold the peer back (it
                    // sends no more than its window).
                    writer.publish();
                    waiting();
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(FULL_RETRY_MAX);
                }
                Err(e) => return Err(protocol(e.to_string())),
            }
        };
        // Dropped unfilled (the link broke mid-payload), the reservation
        // is aborted.
        stream.read_exact(&mut writer.pending_buf(&pending)[..len])?;
        writer.commit_pending(pending, len, header.kind, header.timestamp_ns);
        imported.next_seq[shard] = header.seq + 1;
        imported.dirty[shard] = true;
        imported.counters.records += 1;
        imported.counters.bytes += len as u64;
        Ok(())
    }

    /// Publishes what was written since the last call, and returns the
    /// acknowledgements to send for it.
    pub(crate) fn publish(&mut self, acks: &mut Vec<Control>) {
        for (local, imported) in &mut self.by_local {
            let Some(id) = self.by_id.iter().find_map(|(id, l)| (l == local).then_some(*id)) else {
                continue;
            };
            for (shard, dirty) in imported.dirty.iter_mut().enumerate() {
                if std::mem::take(dirty) {
                    if let Some(writer) = imported.writers.get_mut(shard) {
                        writer.publish();
                    }
                    acks.push(Control::Ack {
                        id,
                        generation: imported.generation,
                        shard: shard as u32,
                        next_seq: imported.next_seq[shard],
                    });
                }
            }
        }
    }

    /// The exporter's channel ended: the local one ends too (its readers see
    /// the end once they have read everything).
    pub(crate) fn end(&mut self, id: u32, generation: u64) {
        let Some(local) = self.by_id.get(&id) else { return };
        if let Some(imported) = self.by_local.get_mut(local)
            && imported.generation == generation
        {
            imported.writers.clear();
            imported.producer = None;
            tracing::info!(channel = %local, "bridge: the peer's channel ended");
        }
    }

    /// Counters of every imported channel, by local name.
    pub(crate) fn counters(&self) -> impl Iterator<Item = (&str, ImportStatus)> {
        self.by_local.iter().map(|(name, i)| (name.as_str(), i.counters))
    }
}

/// Creates the local channel under the origin's generation, each shard
/// continuing at the sequence number it lacks.
fn open(bus: &BusDir, file_mode: u32, local: &str, imported: &mut Imported) -> Result<(), String> {
    let options = ChannelOptions {
        shards: imported.shards,
        capacity: imported.capacity,
        mode: file_mode,
        generation: Some(imported.generation),
        // The whole ring is history for a reader that attaches late, as on
        // the origin's bus (the engine's channels have no hot window
        // either): a writer that starts over early would keep ~2 MiB.
        hot_window: 0,
        ..Default::default()
    };
    // The shards start at their numbers from the moment the file appears,
    // so a reader that follows the re-created channel never sees 0 first
    // and counts the jump as lost.
    let producer =
        Producer::create_from_seq(bus, local, options, &imported.next_seq).map_err(|e| e.to_string())?;
    let mut writers = Vec::with_capacity(imported.shards as usize);
    for shard in 0..imported.shards {
        writers.push(producer.shard(shard).map_err(|e| e.to_string())?);
    }
    imported.writers = writers;
    imported.producer = Some(producer);
    imported.reader_seen = false;
    Ok(())
}

/// Waits until a gated reader, the stage's, reads the returned egress
/// channel `local`: the stage attaches at the next record, so what was
/// published before would never reach its sockets (nor get an outcome).
/// Meanwhile the peer's exporter holds the records (lossless) or its window
/// fills.
fn wait_for_stage(
    bus: &BusDir,
    local: &str,
    stop: &AtomicBool,
    waiting: &mut impl FnMut(),
) -> Result<(), ImportError> {
    let mut sleep = Duration::from_millis(1);
    let mut said = false;
    loop {
        let info = shm_bus::channel_info(bus, local);
        if info.is_ok_and(|info| info.readers.iter().any(|r| r.gated)) {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Err(ImportError::Stopped);
        }
        if !said {
            said = true;
            tracing::info!(channel = %local, "bridge: egress waits for the stage to read its channel");
        }
        waiting();
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(STAGE_RETRY_MAX);
    }
}
