//! `ringest send`: publishes standard input on a stage's egress channel,
//! which the stage writes to its connections.
//!
//! The stage reads `<stage>/egress_packets` with a gated reader that starts
//! at the next record, so this command waits for that reader before it
//! publishes, and for it to have read everything before it ends the
//! channel: no record is lost on the bus. A connection that does not read
//! fast enough still loses what overflows its egress buffer
//! (`egress_buffer_size_b`), as the stage's statistics count.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use engine::records::{self, EgressHeader};
use engine::{EGRESS_PACKETS, SOCKET_STATS, channel_name};
use shm_bus::{BusDir, ChannelOptions, ChannelState, Producer, ReaderInfo};

use crate::human;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The stage whose connections get the bytes.
    stage: String,
    /// Sends to this connection only (its id, as `ringest tail` shows it)
    /// [default: every connection of the stage].
    #[arg(long, value_name = "ID")]
    conn: Option<u64>,
}

/// Most bytes of input per record.
const CHUNK: usize = 64 << 10;
/// Ring of the egress channel: room for many chunks while the stage reads.
const RING: u64 = 4 << 20;
/// How long the stage may take to attach to the channel (it looks for it
/// a few times a second).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the stage may take to read what was published.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between looks at the channel's readers.
const POLL: Duration = Duration::from_millis(10);

pub fn run(args: SendArgs, bus: &BusDir) -> anyhow::Result<()> {
    let stage = &args.stage;
    check_running(bus, stage)?;
    let name = channel_name(stage, EGRESS_PACKETS);
    let producer = Producer::create(bus, &name, ChannelOptions { capacity: RING, ..Default::default() })?;
    let mut writer = producer.shard(0)?;
    wait_for(ATTACH_TIMEOUT, || Ok(!stage_readers(bus, &name)?.is_empty()))
        .with_context(|| format!("stage {stage} did not attach to {name}"))?;

    let header = EgressHeader { target: args.conn };
    let mut input = io::stdin().lock();
    let (mut bytes, mut chunks) = (0u64, 0);
    loop {
        // Read straight into the ring: the record is built in place.
        let mut slot = writer.reserve_timeout(EgressHeader::MAX_LEN + CHUNK, DRAIN_TIMEOUT)?;
        let header_len = records::encode_into(&header, slot.buf())?;
        let n = read_some(&mut input, &mut slot.buf()[header_len..]).context("reading standard input")?;
        if n == 0 {
            break; // dropping the reservation aborts it
        }
        slot.commit(header_len + n, records::KIND_EGRESS);
        writer.publish();
        bytes += n as u64;
        chunks += 1;
    }
    wait_for(DRAIN_TIMEOUT, || {
        let readers = stage_readers(bus, &name)?;
        ensure!(!readers.is_empty(), "stage {stage} stopped reading {name}");
        Ok(readers.iter().all(|r| r.lag_records == 0))
    })
    .with_context(|| format!("stage {stage} did not read everything from {name}"))?;
    let to = args.conn.map_or("every connection".to_owned(), |id| format!("connection {id}"));
    println!(
        "sent {} in {} to {to} of stage {stage}",
        human::plural(bytes, "byte"),
        human::plural(chunks, "record")
    );
    Ok(())
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
