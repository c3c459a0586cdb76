//! Egress: the bytes other processes publish on `<stage>/egress_packets`
//! for the stage's connections, and what became of each record, published
//! on `<stage>/egress_outcomes`.
//!
//! Two threads per stage, so that no executor ever blocks: the reader
//! waits on the bus and hands each record to every executor; the outcome
//! publisher collects what the executors report about it (how many of
//! their connections it was meant for, then each connection's result) and
//! publishes one [`EgressOutcome`] when the last connection has settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use shm_bus::{AttachError, BusDir, Event, Reader, ReaderOptions, ShardWriter};

use crate::inbox::{Command, Egress, EgressTarget, InboxSender};
use crate::records::{self, EgressOutcome};
use crate::stage::{EGRESS_PACKETS, channel_name};

/// How long the egress thread sleeps between attach attempts while no
/// process publishes egress.
const EGRESS_ATTACH_RETRY: Duration = Duration::from_millis(200);

/// Which egress record: its channel's generation, its shard and sequence
/// number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EgressId {
    pub(crate) generation: u64,
    pub(crate) shard: u32,
    pub(crate) seq: u64,
}

/// How one connection settled one egress record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Delivered,
    BufferFull,
    TooLarge,
    ConnectionClosed,
}

/// What an executor tells the outcome publisher.
#[derive(Debug)]
pub(crate) enum OutcomeReport {
    /// The executor queued (or dropped) `record` for `connections` of its
    /// connections; each will report [`OutcomeReport::Settled`].
    Matched { record: EgressId, target: Option<u64>, bytes: u64, connections: u64 },
    /// One connection is done with `record`.
    Settled { record: EgressId, how: Settled },
}

/// Where executors send their reports: any thread may hold one.
pub(crate) type OutcomeSender = mpsc::Sender<OutcomeReport>;

/// What is known so far of one record.
#[derive(Default)]
struct Tally {
    /// Executors that reported [`OutcomeReport::Matched`].
    answered: usize,
    /// Connections meant, over the executors that answered.
    connections: u64,
    settled: u64,
    outcome: EgressOutcome,
}

/// Publishes an [`EgressOutcome`] for each egress record once the stage's
/// `executors` have all answered for it and every connection they named
/// has settled. Ends when every sender is gone (the executors and the
/// egress reader have stopped).
pub(crate) fn spawn_outcome_publisher(
    stage: String,
    mut writer: ShardWriter,
    executors: usize,
    reports: mpsc::Receiver<OutcomeReport>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("{stage}-outcomes")).spawn(move || {
        let mut tallies: HashMap<EgressId, Tally> = HashMap::new();
        let mut warned = false;
        for report in reports {
            let record = match report {
                OutcomeReport::Matched { record, target, bytes, connections } => {
                    let tally = tallies.entry(record).or_default();
                    tally.answered += 1;
                    tally.connections += connections;
                    tally.outcome.target = target;
                    tally.outcome.bytes = bytes;
                    record
                }
                OutcomeReport::Settled { record, how } => {
                    let tally = tallies.entry(record).or_default();
                    tally.settled += 1;
                    let o = &mut tally.outcome;
                    match how {
                        Settled::Delivered => o.delivered += 1,
                        Settled::BufferFull => o.dropped_buffer_full += 1,
                        Settled::TooLarge => o.dropped_too_large += 1,
                        Settled::ConnectionClosed => o.dropped_connection_closed += 1,
                    }
                    record
                }
            };
            let done =
                tallies.get(&record).is_some_and(|t| t.answered == executors && t.settled == t.connections);
            if !done {
                continue;
            }
            let Some(tally) = tallies.remove(&record) else { continue };
            let outcome = EgressOutcome {
                egress_generation: record.generation,
                egress_shard: record.shard,
                egress_seq: record.seq,
                ..tally.outcome
            };
            match writer.send(records::KIND_EGRESS_OUTCOME, &records::encode(&outcome)) {
                Ok(_) => {}
                // Only a lagging gated reader of the outcomes can fill the
                // ring; the record itself was handled, only its report is lost.
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!("stage {stage}: cannot publish egress outcomes: {e}");
                }
                Err(_) => {}
            }
        }
    })
}

/// Reads `<stage>/egress_packets` (published by any process) and hands
/// each record to every executor of `executors` (a UDP stage sends from
/// executor 0 only, and passes only its inbox). A thread, because waiting on the bus is
/// a blocking futex wait that must not stall an executor. Ends when the
/// sender of the returned channel is dropped.
pub(crate) fn spawn_reader(
    bus: BusDir,
    stage: String,
    executors: &[InboxSender],
) -> std::io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let executors = executors.iter().map(InboxSender::try_clone).collect::<Result<Vec<_>, _>>()?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name(format!("{stage}-egress")).spawn(move || {
        let channel = channel_name(&stage, EGRESS_PACKETS);
        let stopped = || matches!(stop_rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
        let mut last_error = String::new();
        while !stopped() {
            let mut reader = match Reader::attach(&bus, &channel, ReaderOptions::gated()) {
                Ok(reader) => reader,
                Err(e) => {
                    let text = e.to_string();
                    if !matches!(e, AttachError::NotFound { .. }) && text != last_error {
                        tracing::warn!("stage {stage}: cannot read egress: {text}");
                    }
                    last_error = text;
                    std::thread::sleep(EGRESS_ATTACH_RETRY);
                    continue;
                }
            };
            while !stopped() {
                let generation = reader.generation();
                match reader.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(Event::Record(sample))) => {
                        let id = EgressId { generation, shard: sample.shard(), seq: sample.seq() };
                        let decoded = match sample.kind() {
                            records::KIND_EGRESS => records::decode_egress(sample.payload())
                                .map(|(header, bytes)| (EgressTarget::Connections(header.target), bytes)),
                            records::KIND_DATAGRAM_EGRESS => {
                                records::decode_datagram_egress(sample.payload()).map(|(header, bytes)| {
                                    (EgressTarget::Datagram(header.destination.map(Into::into)), bytes)
                                })
                            }
                            _ => continue,
                        };
                        match decoded {
                            Ok((target, bytes)) => {
                                let egress = Arc::new(Egress { id, target, bytes: bytes.to_vec() });
                                for executor in &executors {
                                    executor.send(Command::Egress(egress.clone()));
                                }
                            }
                            Err(e) => tracing::warn!("stage {stage}: bad egress record: {e}"),
                        }
                    }
                    Ok(Some(Event::Ended)) => std::thread::sleep(EGRESS_ATTACH_RETRY),
                    Ok(Some(Event::Restarted { .. })) | Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("stage {stage}: egress channel: {e}");
                        break;
                    }
                }
            }
        }
    })?;
    Ok((stop_tx, thread))
}
