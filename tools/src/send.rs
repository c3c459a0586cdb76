//! `ringest send`: publishes standard input on a stage's egress channel,
//! which the stage writes to its connections, and reports what became of
//! every record.
//!
//! The stage reads `<stage>/egress_packets` with a gated reader that starts
//! at the next record, so this command waits for that reader before it
//! publishes: no record is lost on the bus. The stage then publishes an
//! outcome per record on `<stage>/egress_outcomes` (RECORDS.md §7):
//! delivered to the socket, or dropped because the connection's egress
//! buffer (`egress_buffer_size_b`) was full, or the connection closed, or no
//! such connection was open. This command waits for the outcome of each of
//! its records and fails when any was dropped. `--wait` sends a record only
//! once the previous one was delivered, so the egress buffer never
//! overflows.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use engine::records::{self, EgressHeader, EgressOutcome};
use engine::{EGRESS_OUTCOMES, EGRESS_PACKETS, SOCKET_STATS, channel_name};
use shm_bus::{BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderInfo, ReaderOptions};

use crate::human;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The stage whose connections get the bytes.
    stage: String,
    /// Sends to this connection only (its id, as `ringest tail` shows it)
    /// [default: every connection of the stage].
    #[arg(long, value_name = "ID")]
    conn: Option<u64>,
    /// Sends each record only once the previous one was written to the
    /// socket(s): slower, but never overruns the connection's egress buffer.
    #[arg(long)]
    wait: bool,
}

/// Most bytes of input per record.
const CHUNK: usize = 64 << 10;
/// Ring of the egress channel: room for many chunks while the stage reads.
const RING: u64 = 4 << 20;
/// How long the stage may take to attach to the channel (it looks for it
/// a few times a second).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the stage to read a record, or for the next outcome
/// (a connection that reads slowly delays its outcomes).
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between looks at the channel's readers.
const POLL: Duration = Duration::from_millis(10);

pub fn run(args: SendArgs, bus: &BusDir) -> anyhow::Result<()> {
    let stage = &args.stage;
    check_running(bus, stage)?;
    // Attached before anything is published: every outcome of ours comes after.
    let outcomes_name = channel_name(stage, EGRESS_OUTCOMES);
    let outcomes = Reader::attach(bus, &outcomes_name, ReaderOptions::lossy())
        .with_context(|| format!("stage {stage} publishes no egress outcomes (an older engine?)"))?;
    let name = channel_name(stage, EGRESS_PACKETS);
    let producer = Producer::create(bus, &name, ChannelOptions { capacity: RING, ..Default::default() })?;
    let mut writer = producer.shard(0)?;
    wait_for(ATTACH_TIMEOUT, || Ok(!stage_readers(bus, &name)?.is_empty()))
        .with_context(|| format!("stage {stage} did not attach to {name}"))?;

    let mut tally = Tally::new(outcomes, producer.generation());
    let header = EgressHeader { target: args.conn };
    let mut input = io::stdin().lock();
    let (mut bytes, mut chunks) = (0u64, 0);
    loop {
        // Read straight into the ring: the record is built in place.
        let mut slot = writer.reserve_timeout(EgressHeader::MAX_LEN + CHUNK, OUTCOME_TIMEOUT)?;
        let header_len = records::encode_into(&header, slot.buf())?;
        let n = read_some(&mut input, &mut slot.buf()[header_len..]).context("reading standard input")?;
        if n == 0 {
            break; // dropping the reservation aborts it
        }
        let seq = slot.commit(header_len + n, records::KIND_EGRESS);
        writer.publish();
        tally.pending.insert(seq, n as u64);
        bytes += n as u64;
        chunks += 1;
        if args.wait {
            tally.wait(stage, |t| t.pending.is_empty())?;
        } else {
            tally.collect()?;
        }
    }
    tally.wait(stage, |t| t.pending.is_empty())?;
    let to = args.conn.map_or("every connection".to_owned(), |id| format!("connection {id}"));
    println!(
        "sent {} in {} to {to} of stage {stage}: {}",
        human::plural(bytes, "byte"),
        human::plural(chunks, "record"),
        tally.describe()
    );
    tally.verdict(stage, args.conn)
}

/// The outcomes of this command's records, as they come.
struct Tally {
    outcomes: Reader,
    /// Generation of our egress channel: outcomes of other publishers'
    /// records carry another.
    generation: u64,
    /// Records published whose outcome has not come yet: seq -> bytes.
    pending: BTreeMap<u64, u64>,
    /// Records every connection took whole.
    delivered: u64,
    /// Records at least one connection dropped, and drops by reason
    /// (connections).
    dropped: u64,
    buffer_full: u64,
    too_large: u64,
    closed: u64,
    /// Records no open connection was meant for.
    unmatched: u64,
    /// Outcome records lost because this reader was lapped.
    lost: u64,
}

impl Tally {
    fn new(outcomes: Reader, generation: u64) -> Self {
        Self {
            outcomes,
            generation,
            pending: BTreeMap::new(),
            delivered: 0,
            dropped: 0,
            buffer_full: 0,
            too_large: 0,
            closed: 0,
            unmatched: 0,
            lost: 0,
        }
    }

    /// Takes the outcomes published so far, without waiting.
    fn collect(&mut self) -> anyhow::Result<()> {
        while self.next(Duration::ZERO)? {}
        Ok(())
    }

    /// Takes outcomes until `done` holds; fails when none comes for
    /// [`OUTCOME_TIMEOUT`] or the stage stops.
    fn wait(&mut self, stage: &str, done: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        let mut last_progress = Instant::now();
        while !done(self) {
            if self.next(POLL * 10)? {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > OUTCOME_TIMEOUT {
                bail!(
                    "no outcome from stage {stage} for {} of its records within {} s ({}); \
                     is a connection not reading?",
                    self.pending.len(),
                    OUTCOME_TIMEOUT.as_secs(),
                    self.describe()
                );
            }
        }
        Ok(())
    }

    /// Takes the next outcome, waiting up to `timeout`; whether one came.
    fn next(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let reader = &mut self.outcomes;
        let event = if timeout.is_zero() { reader.try_recv()? } else { reader.recv_timeout(timeout)? };
        let outcome = match event {
            None => return Ok(false),
            Some(Event::Ended) | Some(Event::Restarted { .. }) => {
                bail!(
                    "the stage stopped before it answered for {}",
                    human::plural(self.pending.len() as u64, "record")
                )
            }
            Some(Event::Record(sample)) => {
                self.lost += sample.lost_before();
                if sample.kind() != records::KIND_EGRESS_OUTCOME {
                    return Ok(true);
                }
                let decoded = records::decode::<EgressOutcome>(sample.payload());
                ensure!(sample.is_valid(), "outcome records were overwritten before they were read");
                decoded.context("an egress outcome record")?
            }
        };
        if outcome.egress_generation != self.generation || self.pending.remove(&outcome.egress_seq).is_none()
        {
            return Ok(true); // another publisher's record
        }
        if outcome.unmatched() {
            self.unmatched += 1;
        } else if outcome.dropped() > 0 {
            self.dropped += 1;
        } else {
            self.delivered += 1;
        }
        self.buffer_full += outcome.dropped_buffer_full;
        self.too_large += outcome.dropped_too_large;
        self.closed += outcome.dropped_connection_closed;
        Ok(true)
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("{} delivered", self.delivered)];
        if self.dropped > 0 {
            let mut why = Vec::new();
            for (n, reason) in [
                (self.buffer_full, "egress buffer full"),
                (self.too_large, "larger than the egress buffer"),
                (self.closed, "connection closed"),
            ] {
                if n > 0 {
                    why.push(format!("{reason}: {n}"));
                }
            }
            parts.push(format!("{} dropped ({})", self.dropped, why.join(", ")));
        }
        if self.unmatched > 0 {
            parts.push(format!("{} for no open connection", self.unmatched));
        }
        if !self.pending.is_empty() {
            parts.push(format!("{} without an outcome", self.pending.len()));
        }
        if self.lost > 0 {
            // This reader was lapped: the missing outcomes went by unread.
            parts.push(format!("{} outcome records missed", self.lost));
        }
        parts.join(", ")
    }

    /// Fails unless every record was delivered.
    fn verdict(&self, stage: &str, conn: Option<u64>) -> anyhow::Result<()> {
        if self.unmatched > 0 {
            match conn {
                Some(id) => {
                    bail!("connection {id} of stage {stage} is not open (unknown or closed): nothing sent")
                }
                None => bail!(
                    "stage {stage} had no open connection for {}",
                    human::plural(self.unmatched, "record")
                ),
            }
        }
        if self.dropped > 0 {
            let hint =
                if self.buffer_full > 0 { "; --wait paces sending to what the connection takes" } else { "" };
            bail!("{} of stage {stage}'s records dropped: {}{hint}", self.dropped, self.describe());
        }
        Ok(())
    }
}

/// Fails unless a live engine runs `stage`: otherwise nobody would read.
fn check_running(bus: &BusDir, stage: &str) -> anyhow::Result<()> {
    let info = shm_bus::channel_info(bus, &channel_name(stage, SOCKET_STATS))
        .with_context(|| format!("stage {stage} is not running"))?;
    if info.state != ChannelState::Live || info.producer_alive == Some(false) {
        bail!("stage {stage} is not running (its engine, pid {}, has stopped)", info.producer_pid);
    }
    Ok(())
}

/// The stage's readers of `channel`: the gated ones (a `ringest tail` of
/// the channel reads lossy and must not count).
fn stage_readers(bus: &BusDir, channel: &str) -> anyhow::Result<Vec<ReaderInfo>> {
    Ok(shm_bus::channel_info(bus, channel)?.readers.into_iter().filter(|r| r.gated).collect())
}

/// Polls `done` until it holds; fails after `timeout`.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        ensure!(Instant::now() < deadline, "timed out after {} s", timeout.as_secs());
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// One read of what is available (a line typed, a pipe's worth), retried
/// when a signal interrupts it. 0 at the end of the input.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}
