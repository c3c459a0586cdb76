//! `ringest send`: publishes standard input on a stage's egress channel,
//! which the stage writes to its connections (TCP) or sends as datagrams
//! (UDP), and reports what became of every record.
//!
//! The stage reads `<stage>/egress_packets` with a gated reader that starts
//! at the next record, so this command waits for that reader before it
//! publishes: no record is lost on the bus. The stage then publishes an
//! outcome per record on `<stage>/egress_outcomes` (RECORDS.md §7). A TCP
//! stage: delivered to the socket, or dropped because the connection's
//! egress buffer (`egress_buffer_size_b`) was full, or the connection
//! closed, or no such connection was open. A UDP stage: sent, or dropped
//! because it is longer than a datagram can be, or there was no
//! destination or the send failed. This command waits for the outcome of
//! each of its records and fails when any was dropped. `--wait` sends a
//! record only once the previous one was delivered, so the egress buffer
//! never overflows.
//!
//! Which kind of stage it is comes from the stage itself (the kind of the
//! records on its socket_stats, see [`StageKind`]): a flag could disagree
//! with the stage, and a TCP stage does not send DatagramEgress records.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use engine::records::{self, DatagramEgressHeader, EgressHeader, EgressOutcome};
use engine::{EGRESS_OUTCOMES, EGRESS_PACKETS, SOCKET_STATS, channel_name};
use shm_bus::{
    BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderInfo, ReaderOptions, ShardWriter,
};

use crate::human;
use crate::stage_kind::{FIRST_STATS_WAIT, StageKind};

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The stage whose connections (TCP) or destination (UDP) get the bytes.
    stage: String,
    /// TCP stage: sends to this connection only (its id, as `ringest tail`
    /// shows it) [default: every connection of the stage].
    #[arg(long, value_name = "ID", conflicts_with_all = ["to", "lines"])]
    conn: Option<u64>,
    /// UDP stage: sends the datagrams to this address (`ip:port` or
    /// `host:port`) [default: the stage's egress_destination].
    #[arg(long, value_name = "ADDR")]
    to: Option<String>,
    /// UDP stage: each line of standard input, without its line ending, is
    /// one datagram [default: all of standard input is one datagram].
    #[arg(long)]
    lines: bool,
    /// Sends each record only once the previous one was written to the
    /// socket(s): slower, but never overruns the connection's egress buffer.
    #[arg(long)]
    wait: bool,
}

/// Most bytes of input per record.
const CHUNK: usize = 64 << 10;
/// Most bytes of a datagram: 65,535 minus the IPv6 UDP header (an IPv4
/// datagram holds 20 bytes less: the stage drops a longer one and says so).
const MAX_DATAGRAM: usize = 65_527;
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
    let kind = StageKind::detect(bus, stage, FIRST_STATS_WAIT)?.with_context(|| {
        format!(
            "stage {stage} published no statistics within {} s: cannot tell whether it is a TCP or a UDP stage",
            FIRST_STATS_WAIT.as_secs_f64()
        )
    })?;
    let destination = match (kind, &args) {
        (StageKind::Tcp, SendArgs { to: Some(_), .. } | SendArgs { lines: true, .. }) => {
            bail!(
                "stage {stage} is a TCP stage: --to and --lines are for UDP stages (--conn picks a connection)"
            )
        }
        (StageKind::Udp, SendArgs { conn: Some(_), .. }) => {
            bail!("stage {stage} is a UDP stage: it has no connections (--to picks the destination)")
        }
        (StageKind::Udp, SendArgs { to: Some(to), .. }) => Some(resolve(to)?),
        _ => None,
    };
    // Attached before anything is published: every outcome of ours comes after.
    let outcomes_name = channel_name(stage, EGRESS_OUTCOMES);
    let outcomes = Reader::attach(bus, &outcomes_name, ReaderOptions::lossy())
        .with_context(|| format!("stage {stage} publishes no egress outcomes (an older engine?)"))?;
    let name = channel_name(stage, EGRESS_PACKETS);
    let producer = Producer::create(bus, &name, ChannelOptions { capacity: RING, ..Default::default() })?;
    let mut writer = producer.shard(0)?;
    wait_for(ATTACH_TIMEOUT, || Ok(!stage_readers(bus, &name)?.is_empty()))
        .with_context(|| format!("stage {stage} did not attach to {name}"))?;

    let mut tally = Tally::new(outcomes, producer.generation(), kind);
    let mut input = io::stdin().lock();
    let (bytes, records) = match kind {
        StageKind::Tcp => send_stream(&mut writer, &mut input, args.conn, args.wait, &mut tally, stage)?,
        StageKind::Udp => {
            let datagrams = Datagrams { input: &mut input, lines: args.lines, done: false };
            send_datagrams(&mut writer, datagrams, destination, args.wait, &mut tally, stage)?
        }
    };
    tally.wait(stage, |t| t.pending.is_empty())?;
    match kind {
        StageKind::Tcp => {
            let to = args.conn.map_or("every connection".to_owned(), |id| format!("connection {id}"));
            println!(
                "sent {} in {} to {to} of stage {stage}: {}",
                human::plural(bytes, "byte"),
                human::plural(records, "record"),
                tally.describe()
            );
        }
        StageKind::Udp => {
            let to = destination.map_or("its egress_destination".to_owned(), |a| a.to_string());
            println!(
                "sent {} in {} from stage {stage} to {to}: {}",
                human::plural(bytes, "byte"),
                human::plural(records, "datagram"),
                tally.describe()
            );
        }
    }
    tally.verdict(stage, args.conn)
}

/// TCP: publishes standard input as it comes, in records of up to
/// [`CHUNK`] bytes; returns the bytes and records published.
fn send_stream(
    writer: &mut ShardWriter,
    input: &mut impl Read,
    conn: Option<u64>,
    wait: bool,
    tally: &mut Tally,
    stage: &str,
) -> anyhow::Result<(u64, u64)> {
    let header = EgressHeader { target: conn };
    let (mut bytes, mut records) = (0u64, 0);
    loop {
        // Read straight into the ring: the record is built in place.
        let mut slot = writer.reserve_timeout(EgressHeader::MAX_LEN + CHUNK, OUTCOME_TIMEOUT)?;
        let header_len = records::encode_into(&header, slot.buf())?;
        let n = read_some(input, &mut slot.buf()[header_len..]).context("reading standard input")?;
        if n == 0 {
            return Ok((bytes, records)); // dropping the reservation aborts it
        }
        let seq = slot.commit(header_len + n, records::KIND_EGRESS);
        writer.publish();
        tally.pending.insert(seq, n as u64);
        bytes += n as u64;
        records += 1;
        tally.pace(stage, wait)?;
    }
}

/// UDP: publishes each datagram as a DatagramEgress record (RECORDS.md
/// §10) to `destination` (`None`: the stage's egress_destination); returns
/// the bytes and datagrams published.
fn send_datagrams(
    writer: &mut ShardWriter,
    datagrams: Datagrams<'_, impl BufRead>,
    destination: Option<SocketAddr>,
    wait: bool,
    tally: &mut Tally,
    stage: &str,
) -> anyhow::Result<(u64, u64)> {
    let header = DatagramEgressHeader { destination: destination.map(Into::into) };
    let (mut bytes, mut count) = (0u64, 0);
    for datagram in datagrams {
        let datagram = datagram?;
        let mut slot = writer.reserve_timeout(DATAGRAM_HEADER_MAX + datagram.len(), OUTCOME_TIMEOUT)?;
        let header_len = records::encode_into(&header, slot.buf())?;
        slot.buf()[header_len..header_len + datagram.len()].copy_from_slice(&datagram);
        let seq = slot.commit(header_len + datagram.len(), records::KIND_DATAGRAM_EGRESS);
        writer.publish();
        tally.pending.insert(seq, datagram.len() as u64);
        bytes += datagram.len() as u64;
        count += 1;
        tally.pace(stage, wait)?;
    }
    Ok((bytes, count))
}

/// The longest encoded DatagramEgressHeader: `01` and an Addr.
const DATAGRAM_HEADER_MAX: usize = 19;

/// The datagrams standard input holds: all of it as one (none when it is
/// empty), or (`lines`) one per line without its line ending.
struct Datagrams<'a, R> {
    input: &'a mut R,
    lines: bool,
    done: bool,
}

impl<R: BufRead> Iterator for Datagrams<'_, R> {
    type Item = anyhow::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut datagram = Vec::new();
        let read = if self.lines {
            read_line(self.input, &mut datagram)
        } else {
            self.done = true;
            // One byte more than fits tells a datagram too long.
            read_all(&mut *self.input, &mut datagram, MAX_DATAGRAM + 1)
        };
        match read.context("reading standard input") {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) if datagram.len() > MAX_DATAGRAM => {
                self.done = true;
                let hint = if self.lines { "" } else { " (--lines sends each line as a datagram)" };
                Some(Err(anyhow::anyhow!(
                    "a datagram holds at most {MAX_DATAGRAM} bytes; standard input has more{hint}: nothing more sent"
                )))
            }
            Ok(_) => Some(Ok(datagram)),
        }
    }
}

/// Reads one line into `line`, its ending (`\n` or `\r\n`) removed;
/// returns the bytes read (0 at the end of the input).
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<usize> {
    // A line longer than a datagram is refused after this much.
    let n = input.take(MAX_DATAGRAM as u64 + 2).read_until(b'\n', line)?;
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
    Ok(n)
}

/// Reads until the end of the input or `limit` bytes.
fn read_all(input: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    input.take(limit as u64).read_to_end(buf)
}

/// `text` (`ip:port` or `host:port`) as a socket address: its first
/// resolution.
fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("--to {text}: not an ip:port or host:port"))?
        .next()
        .with_context(|| format!("--to {text}: the name resolves to no address"))
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
    /// What the records are: writes to connections, or datagrams.
    kind: StageKind,
}

impl Tally {
    fn new(outcomes: Reader, generation: u64, kind: StageKind) -> Self {
        Self {
            kind,
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

    /// After publishing a record: with `wait`, waits for its outcome;
    /// otherwise takes the outcomes published so far.
    fn pace(&mut self, stage: &str, wait: bool) -> anyhow::Result<()> {
        if wait {
            self.wait(stage, |t| t.pending.is_empty())
        } else {
            while self.next(Duration::ZERO)? {}
            Ok(())
        }
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
            let reasons = match self.kind {
                StageKind::Tcp => [
                    (self.buffer_full, "egress buffer full"),
                    (self.too_large, "larger than the egress buffer"),
                    (self.closed, "connection closed"),
                ],
                StageKind::Udp => [
                    (self.buffer_full, "send buffer full"),
                    (self.too_large, "longer than a datagram can be"),
                    (self.closed, "no destination, or the send failed"),
                ],
            };
            let why: Vec<String> =
                reasons.iter().filter(|(n, _)| *n > 0).map(|(n, reason)| format!("{reason}: {n}")).collect();
            parts.push(format!("{} dropped ({})", self.dropped, why.join(", ")));
        }
        if self.unmatched > 0 {
            parts.push(match self.kind {
                StageKind::Tcp => format!("{} for no open connection", self.unmatched),
                // The stage had nowhere to send it (RECORDS.md §10).
                StageKind::Udp => format!(
                    "{} with no destination (no --to, and the stage has no egress_destination)",
                    self.unmatched
                ),
            });
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
        if self.kind == StageKind::Udp {
            let failed = self.dropped + self.unmatched;
            if failed > 0 {
                let hint = if self.closed > 0 {
                    "; without --to the stage sends to its egress_destination, if it has one (the engine's \
                     log says why a send failed)"
                } else {
                    ""
                };
                bail!("{} of stage {stage}'s datagrams not sent: {}{hint}", failed, self.describe());
            }
            return Ok(());
        }
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
