//! `bench-consumer`: the consumer process of the ringest runs. A lossy
//! shm-bus reader on `<stage>/packet_group` that decodes every group
//! (`engine::records::decode_group` reads every packet header) and counts
//! each connection's bytes; with `--hash` it hashes them, with
//! `--latency-size` it cuts each connection's stream back into the load
//! generator's messages and ages each one when it is seen. Driven by
//! `bench-ingest` through the protocol of `ringest_benches::ingest::control`.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use engine::records::{self, KIND_PACKET_GROUP};
use ringest_benches::ingest::control::{self, Command, Hello};
use ringest_benches::ingest::monotonic_ns;
use ringest_benches::ingest::results::{ReceiverReport, ReceiverTotals};
use ringest_benches::ingest::tracker::{LatencyOptions, Reassembler, StreamStats};
use ringest_benches::results::LatencySummary;
use shm_bus::{AttachError, BusDir, Event, Reader, ReaderOptions};

#[derive(Parser, Debug)]
#[command(name = "bench-consumer")]
struct Args {
    /// The engine's bus directory.
    #[arg(long)]
    bus: PathBuf,
    /// The stage whose packet_group to read.
    #[arg(long, default_value = "ingest")]
    stage: String,
    #[arg(long)]
    hash: bool,
    /// Message size of the load: measure latency.
    #[arg(long)]
    latency_size: Option<usize>,
    /// Leading messages of each connection left out of the latency.
    #[arg(long, default_value_t = 0)]
    warmup_messages: u64,
}

/// Longest sleep in the bus between looks at the commands.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for the engine's channel to appear.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection seen in the groups.
struct Stream {
    peer: SocketAddr,
    stats: StreamStats,
    /// The same stream aged at the engine's receive stamps instead.
    at_engine: Option<Reassembler>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let bus = BusDir::new(&args.bus);
    let channel = engine::channel_name(&args.stage, engine::PACKET_GROUP);
    let mut reader = attach(&bus, &channel)?;
    let latency = args.latency_size.map(|size| LatencyOptions { size, warmup: args.warmup_messages });

    let (tx, commands) = mpsc::channel();
    control::read_commands(move |c| {
        let _ = tx.send(c);
    });
    control::answer(&Hello { listening: None, ready: true });

    let mut streams: Vec<Stream> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut last: Option<(u64, usize)> = None;
    let mut totals = ReceiverTotals::default();
    let mut samples = Vec::new();
    let mut engine_samples = Vec::new();
    let mut problems = 0u64;
    loop {
        match commands.try_recv() {
            Ok(Command::Totals) => control::answer(&totals),
            Ok(Command::Final) => {
                let report = ReceiverReport {
                    totals: totals.clone(),
                    streams: streams.iter().map(|s| s.stats.report(s.peer.to_string())).collect(),
                    latency: (!samples.is_empty()).then(|| LatencySummary::from_samples(samples.clone())),
                    latency_to_engine: (!engine_samples.is_empty())
                        .then(|| LatencySummary::from_samples(engine_samples.clone())),
                };
                control::answer(&report);
            }
            Ok(Command::Quit) | Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let sample = match reader.recv_timeout(POLL)? {
            Some(Event::Record(sample)) => sample,
            Some(Event::Ended) => {
                std::thread::sleep(POLL);
                continue;
            }
            Some(Event::Restarted { .. }) => {
                eprintln!("bench-consumer: the engine restarted during the run");
                problems += 1;
                continue;
            }
            None => continue,
        };
        let now = monotonic_ns();
        totals.lost_records += sample.lost_before();
        if sample.kind() != KIND_PACKET_GROUP {
            continue;
        }
        let (mut bytes, mut packets) = (0, 0);
        match records::decode_group(sample.payload()) {
            Ok(group) => {
                for packet in group {
                    let id = packet.meta.connection_id;
                    let at = match last {
                        Some((last_id, at)) if last_id == id => at,
                        _ => *index.entry(id).or_insert_with(|| {
                            streams.push(Stream {
                                peer: packet.meta.peer.into(),
                                stats: StreamStats::new(args.hash, latency),
                                at_engine: latency.map(Reassembler::new),
                            });
                            streams.len() - 1
                        }),
                    };
                    last = Some((id, at));
                    let stream = &mut streams[at];
                    stream.stats.on_packet(packet.data, now, &mut samples);
                    if let Some(r) = &mut stream.at_engine {
                        r.push(packet.data, packet.meta.rx_monotonic_ns, &mut engine_samples);
                    }
                    bytes += packet.data.len() as u64;
                    packets += 1;
                }
            }
            Err(e) => {
                eprintln!("bench-consumer: undecodable group: {e}");
                problems += 1;
            }
        }
        // Overwritten while we read it: what we counted is not to be trusted.
        if !sample.is_valid() {
            totals.lost_records += 1;
        }
        drop(sample);
        totals.seen(bytes, packets, now);
        totals.streams = streams.len() as u64;
        totals.lost_records += std::mem::take(&mut problems);
    }
    Ok(())
}

/// A lossy reader of `channel`, from the next record on; waits for the
/// channel to exist.
fn attach(bus: &BusDir, channel: &str) -> Result<Reader, Box<dyn Error>> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        match Reader::attach(bus, channel, ReaderOptions::lossy()) {
            Ok(reader) => return Ok(reader),
            Err(AttachError::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.into()),
        }
    }
}
