//! The exporting half: finds the local channels to send, reads each with a
//! gated reader that releases a record only once the peer acknowledged it,
//! and sends records within the peer's credit window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use shm_bus::{BusDir, ChannelState, Event, Reader, ReaderOptions, ReleasePoint, StartAt};

use crate::repack;
use crate::status::ExportStatus;
use crate::wire::{self, Control, OFFER_RETURN, RECORD_FRAME_OVERHEAD, ResumeAnswer};

/// How often the bus is scanned for new channels to export.
const SCAN_EVERY: Duration = Duration::from_millis(200);
/// Largest ring exported: its records (up to half a ring) must fit a frame.
const MAX_EXPORTED_CAPACITY: u64 = 128 << 20;
/// Records taken from one channel before the next gets its turn.
const RECORDS_PER_TURN: usize = 256;
/// Channels ending in this go only towards the stage that sends them.
pub(crate) const EGRESS_SUFFIX: &str = "/egress_packets";

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (`/` included).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An OFFER is to be sent for the reader's generation.
    NeedsOffer,
    /// Waiting for the peer's RESUME for this generation.
    Offered(u64),
    Streaming,
    /// The peer refused it (retried on the next link).
    Refused,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    point: ReleasePoint,
    frame_bytes: u64,
}

struct Exported {
    id: u32,
    /// Name on the wire (without the import prefix for a returned egress
    /// channel).
    wire_name: String,
    flags: u32,
    reader: Reader,
    phase: Phase,
    /// Per shard: records below this the peer holds already.
    skip_below: Vec<u64>,
    /// Per shard: whether a record was looked at since the last resume.
    started: Vec<bool>,
    /// Sent and not acknowledged, per (generation, shard), oldest first.
    in_flight: HashMap<(u64, u32), VecDeque<InFlight>>,
    /// The generation whose end was sent.
    end_sent: Option<u64>,
    counters: ExportStatus,
    /// A packet group re-packed without slot padding (see `repack`).
    repacked: Vec<u8>,
}

/// Every exported channel of a bridge; lives as long as the bridge, across
/// links, so that the gates hold unacknowledged records while the link is
/// down.
pub(crate) struct Exports {
    bus: BusDir,
    patterns: Vec<String>,
    import_prefix: String,
    lossless: bool,
    channels: Vec<Exported>,
    /// Local names exported or found unusable (not retried every scan).
    known: HashSet<String>,
    next_id: u32,
    next_scan: Instant,
    /// Frame bytes sent and not acknowledged over all channels.
    credit_used: u64,
    /// Round-robin start.
    turn: usize,
}

impl Exports {
    pub(crate) fn new(bus: BusDir, patterns: Vec<String>, import_prefix: String, lossless: bool) -> Self {
        Self {
            bus,
            patterns,
            import_prefix,
            lossless,
            channels: Vec::new(),
            known: HashSet::new(),
            next_id: 1,
            next_scan: Instant::now(),
            credit_used: 0,
            turn: 0,
        }
    }

    /// A new link: every channel is offered again, and what was sent but
    /// not acknowledged will be sent again (from the last release) unless
    /// the peer says it holds it.
    pub(crate) fn begin_link(&mut self) {
        self.credit_used = 0;
        let mut lost = Vec::new();
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if self.lossless && ch.reader.rewind().is_err() {
                lost.push(i);
            }
            ch.in_flight.clear();
            ch.counters.in_flight = 0;
            ch.phase = Phase::NeedsOffer;
            ch.end_sent = None;
        }
        for i in lost.into_iter().rev() {
            let ch = self.channels.remove(i);
            tracing::error!(channel = %ch.reader.name(), "bridge: lost the reader slot; exporting the channel anew");
            self.known.remove(ch.reader.name());
        }
    }

    /// Looks for new channels to export (at most every [`SCAN_EVERY`]).
    pub(crate) fn scan(&mut self) {
        let now = Instant::now();
        if now < self.next_scan {
            return;
        }
        self.next_scan = now + SCAN_EVERY;
        let Ok(listings) = shm_bus::list_channels(&self.bus) else { return };
        for listing in listings {
            let name = listing.name;
            if self.known.contains(&name) {
                continue;
            }
            let Some((wire_name, flags)) = self.wire_name(&name) else { continue };
            let Ok(info) = listing.info else { continue };
            if info.state == ChannelState::Replaced {
                continue;
            }
            self.known.insert(name.clone());
            if info.capacity > MAX_EXPORTED_CAPACITY {
                tracing::warn!(
                    channel = %name,
                    "bridge: not exported: its ring of {} bytes per shard allows records larger than a frame \
                     (at most {MAX_EXPORTED_CAPACITY})",
                    info.capacity
                );
                continue;
            }
            let options = if self.lossless {
                ReaderOptions::gated().start(StartAt::Oldest).hold_until_released()
            } else {
                ReaderOptions::lossy().start(StartAt::Next)
            };
            match Reader::attach(&self.bus, &name, options) {
                Ok(reader) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    tracing::info!(channel = %name, wire_name = %wire_name, id, "bridge: exporting");
                    self.channels.push(Exported {
                        id,
                        wire_name,
                        flags,
                        reader,
                        phase: Phase::NeedsOffer,
                        skip_below: Vec::new(),
                        started: Vec::new(),
                        in_flight: HashMap::new(),
                        end_sent: None,
                        counters: ExportStatus::default(),
                        repacked: Vec::new(),
                    });
                }
                Err(e) => {
                    tracing::warn!(channel = %name, "bridge: cannot export: {e}");
                    // Tried again at a later scan.
                    self.known.remove(&name);
                }
            }
        }
    }

    /// The name a local channel has on the wire and its OFFER flags, or
    /// `None` if it is not exported.
    fn wire_name(&self, name: &str) -> Option<(String, u32)> {
        let own = name.strip_prefix(&self.import_prefix).and_then(|rest| rest.strip_prefix('/'));
        if name.ends_with(EGRESS_SUFFIX) {
            // Egress to an imported stage goes back to the stage's host.
            return own.map(|stage_channel| (stage_channel.to_owned(), OFFER_RETURN));
        }
        if own.is_some() {
            return None; // what we import is never sent back
        }
        self.patterns.iter().any(|p| matches(p, name)).then(|| (name.to_owned(), 0))
    }

    /// Appends an OFFER for every channel that needs one.
    pub(crate) fn offer(&mut self, out: &mut Vec<u8>) {
        for ch in &mut self.channels {
            if ch.phase != Phase::NeedsOffer {
                continue;
            }
            let generation = ch.reader.generation();
            let offer = Control::Offer {
                id: ch.id,
                generation,
                capacity: ch.reader.shard_capacity(),
                shards: ch.reader.shard_count(),
                flags: ch.flags,
                name: ch.wire_name.clone(),
            };
            wire::put_control(out, &offer);
            ch.phase = Phase::Offered(generation);
            ch.counters.generation = generation;
        }
    }

    /// The peer's answer to an OFFER.
    pub(crate) fn resume(&mut self, id: u32, generation: u64, answer: ResumeAnswer) -> Result<(), String> {
        let Some(ch) = self.channels.iter_mut().find(|c| c.id == id) else { return Ok(()) };
        if ch.phase != Phase::Offered(generation) {
            return Ok(()); // an answer to an older offer
        }
        match answer {
            ResumeAnswer::Accept { next_seq } => {
                if next_seq.len() != ch.reader.shard_count() as usize {
                    return Err(format!(
                        "RESUME of {} for {} shards, the channel has {}",
                        ch.wire_name,
                        next_seq.len(),
                        ch.reader.shard_count()
                    ));
                }
                tracing::info!(channel = %ch.reader.name(), ?next_seq, "bridge: peer resumes");
                ch.started = vec![false; next_seq.len()];
                ch.skip_below = next_seq;
                ch.phase = Phase::Streaming;
                ch.counters.resumes += 1;
            }
            ResumeAnswer::Refuse { reason } => {
                tracing::warn!(channel = %ch.reader.name(), "bridge: the peer refused the channel: {reason}");
                ch.phase = Phase::Refused;
            }
        }
        Ok(())
    }

    /// The peer published every record of `shard` below `next_seq`.
    pub(crate) fn ack(&mut self, id: u32, generation: u64, shard: u32, next_seq: u64) {
        let Some(ch) = self.channels.iter_mut().find(|c| c.id == id) else { return };
        let Some(queue) = ch.in_flight.get_mut(&(generation, shard)) else { return };
        let mut last = None;
        while queue.front().is_some_and(|f| f.seq < next_seq) {
            let Some(done) = queue.pop_front() else { break };
            self.credit_used = self.credit_used.saturating_sub(done.frame_bytes);
            ch.counters.records_acked += 1;
            ch.counters.in_flight = ch.counters.in_flight.saturating_sub(1);
            last = Some(done.point);
        }
        if let Some(point) = last
            && self.lossless
            && let Err(e) = ch.reader.release(point)
        {
            tracing::error!(channel = %ch.reader.name(), "bridge: cannot release: {e}");
        }
    }

    /// Appends records (and END frames) while the peer's `window` has room.
    /// Returns how many frames it appended.
    pub(crate) fn pull(&mut self, out: &mut Vec<u8>, window: u64) -> usize {
        let mut appended = 0;
        let count = self.channels.len();
        let mut broken = Vec::new();
        for k in 0..count {
            let i = (self.turn + k) % count;
            if self.credit_used >= window {
                break;
            }
            let ch = &mut self.channels[i];
            if ch.phase != Phase::Streaming {
                continue;
            }
            match pull_channel(ch, out, window, &mut self.credit_used, self.lossless) {
                Ok(n) => appended += n,
                Err(e) => {
                    tracing::error!(channel = %ch.reader.name(), "bridge: reading failed: {e}; exporting it anew");
                    broken.push(i);
                }
            }
        }
        self.turn = self.turn.wrapping_add(1);
        broken.sort_unstable();
        for i in broken.into_iter().rev() {
            let ch = self.channels.remove(i);
            self.known.remove(ch.reader.name());
        }
        appended
    }

    /// Counters of every exported channel, by local name.
    pub(crate) fn counters(&self) -> impl Iterator<Item = (&str, ExportStatus)> {
        self.channels.iter().map(|c| (c.reader.name(), c.counters))
    }
}

/// What one `try_recv` gave, once the sample is let go.
enum Step {
    Skip(ReleasePoint),
    Sent,
    Restarted,
    Ended,
    Idle,
}

fn pull_channel(
    ch: &mut Exported,
    out: &mut Vec<u8>,
    window: u64,
    credit_used: &mut u64,
    lossless: bool,
) -> Result<usize, shm_bus::RecvError> {
    let mut appended = 0;
    for _ in 0..RECORDS_PER_TURN {
        if *credit_used >= window {
            break;
        }
        let generation = ch.reader.generation();
        let step = match ch.reader.try_recv()? {
            Some(Event::Record(sample)) => {
                let shard = sample.shard();
                let seq = sample.seq();
                let k = shard as usize;
                let skip_below = ch.skip_below.get(k).copied().unwrap_or(0);
                if seq < skip_below {
                    Step::Skip(sample.release_point())
                } else {
                    let started = ch.started.get(k).copied().unwrap_or(true);
                    if !started {
                        if skip_below > 0 && seq > skip_below {
                            let lost = seq - skip_below;
                            ch.counters.lost += lost;
                            tracing::warn!(
                                channel = %ch.wire_name,
                                shard,
                                "bridge: {lost} records (from {skip_below}) were overwritten before the peer \
                                 acknowledged them"
                            );
                        }
                        if let Some(s) = ch.started.get_mut(k) {
                            *s = true;
                        }
                    }
                    ch.counters.lost += sample.lost_before();
                    let payload = sample.payload();
                    let payload = repack::compact(&ch.wire_name, sample.kind(), payload, &mut ch.repacked)
                        .unwrap_or(payload);
                    wire::put_record(out, ch.id, shard, sample.kind(), seq, sample.timestamp_ns(), payload);
                    let frame_bytes = (RECORD_FRAME_OVERHEAD + payload.len()) as u64;
                    ch.counters.records_sent += 1;
                    ch.counters.bytes_sent += payload.len() as u64;
                    ch.counters.in_flight += 1;
                    *credit_used += frame_bytes;
                    let point = sample.release_point();
                    ch.in_flight.entry((generation, shard)).or_default().push_back(InFlight {
                        seq,
                        point,
                        frame_bytes,
                    });
                    Step::Sent
                }
            }
            Some(Event::Restarted { .. }) => Step::Restarted,
            Some(Event::Ended) => Step::Ended,
            None => Step::Idle,
        };
        match step {
            Step::Skip(point) => {
                if lossless {
                    ch.reader.release(point)?;
                }
            }
            Step::Sent => appended += 1,
            Step::Restarted => {
                tracing::info!(channel = %ch.reader.name(), "bridge: producer restarted; offering its new generation");
                ch.phase = Phase::NeedsOffer;
                ch.end_sent = None;
                return Ok(appended);
            }
            Step::Ended => {
                if ch.end_sent != Some(generation) {
                    ch.end_sent = Some(generation);
                    wire::put_control(out, &Control::End { id: ch.id, generation });
                    appended += 1;
                }
                return Ok(appended);
            }
            Step::Idle => return Ok(appended),
        }
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_match_any_run_of_characters_at_each_star() {
        assert!(matches("lidar/*", "lidar/packet_group"));
        assert!(matches("lidar/*", "lidar/front/packet_group"));
        assert!(!matches("lidar/*", "lidars/packet_group"));
        assert!(!matches("lidar/*", "camera/lidar/x"));
        assert!(matches("*", "a/b"));
        assert!(matches("ingest/packet_group", "ingest/packet_group"));
        assert!(!matches("ingest/packet_group", "ingest/packet_group2"));
        assert!(matches("*/packet_group", "a/b/packet_group"));
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "a-b-b-c"));
        assert!(!matches("a*b*c", "a-c-b"));
        assert!(!matches("ab*ba", "aba"));
    }
}
