//! `ringest.publish_egress`: what `ringest send` does, for Python.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine::records::{self, EgressHeader, EgressOutcome};
use engine::{EGRESS_OUTCOMES, EGRESS_PACKETS, SOCKET_STATS, channel_name};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shm_bus::{BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderOptions};

use crate::decode::egress_outcome;
use crate::reader::RingestError;

/// Most bytes of one egress record (as `ringest send`).
const CHUNK: usize = 64 << 10;
/// Ring of the egress channel (as `ringest send`).
const RING: u64 = 4 << 20;
/// How long the stage may take to attach to the channel (it looks for it
/// a few times a second).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between looks at the channel's readers.
const POLL: Duration = Duration::from_millis(10);

fn error(message: String) -> PyErr {
    RingestError::new_err(message)
}

/// publish_egress(stage, data, connection=None, bus=None, timeout=30.0) -> list[dict]
///
/// Sends ``data`` (bytes-like) to the connections of TCP stage ``stage``
/// (all of them, or connection id ``connection`` only), as ``ringest send``
/// does: publishes it on ``<stage>/egress_packets`` in records of at most
/// 64 KiB, once the stage reads that channel, and waits for the stage's
/// outcome of each record (``<stage>/egress_outcomes``, up to ``timeout``
/// seconds without one) with the GIL released. Returns the outcomes (dicts
/// as ``Sample.decode()`` gives them). Raises ``RingestError`` when the
/// stage is not running, when a connection dropped a record (egress buffer
/// full, record too large, connection closed), or when no open connection
/// was meant for a record: nothing is dropped silently.
#[pyfunction]
#[pyo3(signature = (stage, data, connection=None, bus=None, timeout=30.0))]
pub(crate) fn publish_egress<'py>(
    py: Python<'py>,
    stage: &str,
    data: pyo3::buffer::PyBuffer<u8>,
    connection: Option<u64>,
    bus: Option<std::path::PathBuf>,
    timeout: f64,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be > 0 seconds, not {timeout}"
        )));
    }
    let data = data.to_vec(py)?;
    let bus = bus.map(BusDir::new).unwrap_or_else(BusDir::from_env);
    let outcomes =
        py.allow_threads(|| publish(&bus, stage, &data, connection, Duration::from_secs_f64(timeout)))?;
    let mut dicts = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in &outcomes {
        if outcome.unmatched() {
            failures.push(match connection {
                Some(id) => format!("connection {id} is not open (unknown or closed)"),
                None => "no connection was open".to_owned(),
            });
        } else if outcome.dropped() > 0 {
            failures.push(format!(
                "record seq {} dropped by {} connection(s) (egress buffer full: {}, larger than the egress \
                 buffer: {}, connection closed: {})",
                outcome.egress_seq,
                outcome.dropped(),
                outcome.dropped_buffer_full,
                outcome.dropped_too_large,
                outcome.dropped_connection_closed
            ));
        }
        dicts.push(egress_outcome(py, outcome)?);
    }
    if !failures.is_empty() {
        failures.dedup();
        return Err(error(format!("stage {stage}: {}", failures.join("; "))));
    }
    Ok(dicts)
}

/// Publishes `data` and returns the outcome of each record, in order.
fn publish(
    bus: &BusDir,
    stage: &str,
    data: &[u8],
    connection: Option<u64>,
    timeout: Duration,
) -> PyResult<Vec<EgressOutcome>> {
    let stats = shm_bus::channel_info(bus, &channel_name(stage, SOCKET_STATS))
        .map_err(|e| error(format!("stage {stage} is not running: {e}")))?;
    if stats.state != ChannelState::Live || stats.producer_alive == Some(false) {
        return Err(error(format!(
            "stage {stage} is not running (its engine, pid {}, has stopped)",
            stats.producer_pid
        )));
    }
    // Attached before anything is published: every outcome of ours comes after.
    let outcomes_name = channel_name(stage, EGRESS_OUTCOMES);
    let mut outcomes = Reader::attach(bus, &outcomes_name, ReaderOptions::lossy())
        .map_err(|e| error(format!("stage {stage} publishes no egress outcomes: {e}")))?;
    let name = channel_name(stage, EGRESS_PACKETS);
    let producer = Producer::create(bus, &name, ChannelOptions { capacity: RING, ..Default::default() })
        .map_err(|e| error(e.to_string()))?;
    let mut writer = producer.shard(0).map_err(|e| error(e.to_string()))?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        let info = shm_bus::channel_info(bus, &name).map_err(|e| error(e.to_string()))?;
        // The stage's reader is gated (a lossy `ringest tail` does not count).
        if info.readers.iter().any(|r| r.gated) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(error(format!("stage {stage} did not attach to {name} within {ATTACH_TIMEOUT:?}")));
        }
        std::thread::sleep(POLL);
    }
    let header = EgressHeader { target: connection };
    // seq -> index of the record in `data`'s chunks.
    let mut pending = BTreeMap::new();
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(CHUNK).collect() };
    for (index, chunk) in chunks.iter().enumerate() {
        let mut slot = writer
            .reserve_timeout(EgressHeader::MAX_LEN + chunk.len(), timeout)
            .map_err(|e| error(format!("publishing on {name}: {e}")))?;
        let header_len = records::encode_into(&header, slot.buf()).map_err(|e| error(e.to_string()))?;
        slot.buf()[header_len..header_len + chunk.len()].copy_from_slice(chunk);
        let seq = slot.commit(header_len + chunk.len(), records::KIND_EGRESS);
        writer.publish();
        pending.insert(seq, index);
    }
    let mut results = vec![None; chunks.len()];
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        let event = outcomes.recv_timeout(POLL * 10).map_err(|e| error(e.to_string()))?;
        let outcome = match event {
            None => {
                if last_progress.elapsed() > timeout {
                    return Err(error(format!(
                        "no outcome from stage {stage} for {} of its records within {timeout:?}; is a connection \
                         not reading?",
                        pending.len()
                    )));
                }
                continue;
            }
            Some(Event::Ended) | Some(Event::Restarted { .. }) => {
                return Err(error(format!(
                    "stage {stage} stopped before it answered for {} records",
                    pending.len()
                )));
            }
            Some(Event::Record(sample)) => {
                if sample.lost_before() > 0 {
                    return Err(error(format!(
                        "outcome records of stage {stage} were overwritten before they were read"
                    )));
                }
                if sample.kind() != records::KIND_EGRESS_OUTCOME {
                    continue;
                }
                records::decode::<EgressOutcome>(sample.payload())
                    .map_err(|e| error(format!("an egress outcome: {e}")))?
            }
        };
        last_progress = Instant::now();
        if outcome.egress_generation != producer.generation() {
            continue; // another publisher's record
        }
        if let Some(index) = pending.remove(&outcome.egress_seq) {
            results[index] = Some(outcome);
        }
    }
    Ok(results.into_iter().flatten().collect())
}
