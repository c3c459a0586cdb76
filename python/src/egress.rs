//! `ringest.publish_egress`: what `ringest send` does, for Python.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use engine::records::{self, DatagramEgressHeader, EgressHeader, EgressOutcome};
use engine::{EGRESS_OUTCOMES, EGRESS_PACKETS, SOCKET_STATS, channel_name};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use shm_bus::{BusDir, ChannelOptions, ChannelState, Event, Producer, Reader, ReaderOptions, StartAt};

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
/// Most bytes of a datagram (65,535 minus the IPv6 UDP header; an IPv4
/// datagram holds 20 fewer, which the stage checks).
const MAX_DATAGRAM: usize = 65_527;
/// Longest wait for a stage's first statistics record (one a second),
/// which tells a TCP from a UDP stage.
const FIRST_STATS_WAIT: Duration = Duration::from_millis(2500);

fn error(message: String) -> PyErr {
    RingestError::new_err(message)
}

/// publish_egress(stage, data, connection=None, bus=None, timeout=30.0, *, destination=None) -> list[dict]
///
/// Sends ``data`` (bytes-like) through stage ``stage``, as ``ringest send``
/// does, and waits for the stage's outcome of each record
/// (``<stage>/egress_outcomes``, up to ``timeout`` seconds without one)
/// with the GIL released. Returns the outcomes (dicts as
/// ``Sample.decode()`` gives them).
///
/// - A TCP stage writes ``data`` to its connections (all of them, or
///   connection id ``connection`` only), published in records of at most
///   64 KiB.
/// - A UDP stage sends ``data`` as one datagram (at most 65,527 bytes) to
///   ``destination`` (``(host, port)`` or ``"host:port"``), or without it
///   to the stage's ``egress_destination``.
///
/// The kind of stage comes from the records on its ``socket_stats``
/// channel. Raises ``ValueError`` for an argument the stage cannot use
/// (``destination`` for a TCP stage, ``connection`` for a UDP one), and
/// ``RingestError`` when the stage is not running, when a connection
/// dropped a record (egress buffer full, record too large, connection
/// closed), when no open connection was meant for a record, or when a
/// datagram was not sent (too long, no destination, the send failed):
/// nothing is dropped silently.
#[pyfunction]
#[pyo3(signature = (stage, data, connection=None, bus=None, timeout=30.0, *, destination=None))]
pub(crate) fn publish_egress<'py>(
    py: Python<'py>,
    stage: &str,
    data: pyo3::buffer::PyBuffer<u8>,
    connection: Option<u64>,
    bus: Option<std::path::PathBuf>,
    timeout: f64,
    destination: Option<Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(PyValueError::new_err(format!("timeout must be > 0 seconds, not {timeout}")));
    }
    let destination = destination.map(|d| socket_address(&d)).transpose()?;
    let data = data.to_vec(py)?;
    let bus = bus.map(BusDir::new).unwrap_or_else(BusDir::from_env);
    let timeout = Duration::from_secs_f64(timeout);
    let udp = py.allow_threads(|| {
        check_running(&bus, stage)?;
        is_udp_stage(&bus, stage)
    })?;
    let to_publish = if udp {
        if connection.is_some() {
            return Err(PyValueError::new_err(format!(
                "stage {stage} is a UDP stage: it has no connections (destination= picks where the datagram goes)"
            )));
        }
        if data.len() > MAX_DATAGRAM {
            return Err(PyValueError::new_err(format!(
                "a datagram holds at most {MAX_DATAGRAM} bytes, not {}",
                data.len()
            )));
        }
        let header = DatagramEgressHeader { destination: destination.map(Into::into) };
        vec![(records::KIND_DATAGRAM_EGRESS, records::encode_datagram_egress(&header, &data))]
    } else {
        if destination.is_some() {
            return Err(PyValueError::new_err(format!(
                "stage {stage} is a TCP stage: destination= is for UDP stages (connection= picks a connection)"
            )));
        }
        let header = EgressHeader { target: connection };
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&data] } else { data.chunks(CHUNK).collect() };
        chunks
            .into_iter()
            .map(|chunk| (records::KIND_EGRESS, records::encode_egress(&header, chunk)))
            .collect()
    };
    let outcomes = py.allow_threads(|| publish(&bus, stage, &to_publish, timeout))?;
    let mut dicts = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in &outcomes {
        if udp {
            if outcome.delivered == 0 {
                failures.push(format!(
                    "the datagram was not sent ({})",
                    if outcome.dropped_too_large > 0 {
                        "longer than a datagram can be"
                    } else if outcome.dropped_connection_closed > 0 {
                        "no destination, or the send failed: the engine's log says why"
                    } else {
                        // Every count 0: the stage had nowhere to send it.
                        "no destination: none given, and the stage has no egress_destination"
                    }
                ));
            }
        } else if outcome.unmatched() {
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

/// `(host, port)` or `"host:port"` as a socket address (its first
/// resolution).
fn socket_address(value: &Bound<'_, PyAny>) -> PyResult<SocketAddr> {
    let (text, resolved) = if let Ok(text) = value.downcast::<PyString>() {
        let text = text.to_cow()?.into_owned();
        let resolved = text.to_socket_addrs();
        (text, resolved)
    } else if value.is_instance_of::<PyTuple>() {
        let (host, port): (String, u16) = value.extract()?;
        (format!("{host}:{port}"), (host.as_str(), port).to_socket_addrs())
    } else {
        return Err(PyValueError::new_err("destination must be (host, port) or \"host:port\""));
    };
    resolved
        .map_err(|e| PyValueError::new_err(format!("destination {text}: {e}")))?
        .next()
        .ok_or_else(|| PyValueError::new_err(format!("destination {text} resolves to no address")))
}

/// Fails unless a live engine runs `stage`: otherwise nobody would read.
fn check_running(bus: &BusDir, stage: &str) -> PyResult<()> {
    let stats = shm_bus::channel_info(bus, &channel_name(stage, SOCKET_STATS))
        .map_err(|e| error(format!("stage {stage} is not running: {e}")))?;
    if stats.state != ChannelState::Live || stats.producer_alive == Some(false) {
        return Err(error(format!(
            "stage {stage} is not running (its engine, pid {}, has stopped)",
            stats.producer_pid
        )));
    }
    Ok(())
}

/// Whether `stage` is a UDP stage: its latest statistics record is a
/// UdpSocketStats (kind 7), not a SocketStats (kind 3). A stage publishes
/// one a second from its start, traffic or not.
fn is_udp_stage(bus: &BusDir, stage: &str) -> PyResult<bool> {
    let name = channel_name(stage, SOCKET_STATS);
    let mut reader = Reader::attach(bus, &name, ReaderOptions::lossy().start(StartAt::Latest))
        .map_err(|e| error(format!("stage {stage}: {e}")))?;
    let deadline = Instant::now() + FIRST_STATS_WAIT;
    while Instant::now() < deadline {
        match reader.recv_timeout(POLL * 10).map_err(|e| error(e.to_string()))? {
            Some(Event::Record(sample)) => match sample.kind() {
                records::KIND_UDP_SOCKET_STATS => return Ok(true),
                records::KIND_SOCKET_STATS => return Ok(false),
                _ => {}
            },
            Some(Event::Ended) => break,
            Some(Event::Restarted { .. }) | None => {}
        }
    }
    Err(error(format!(
        "stage {stage} published no statistics within {FIRST_STATS_WAIT:?}: cannot tell a TCP from a UDP stage"
    )))
}

/// Publishes each `(kind, record)` of `to_publish` and returns the outcome
/// of each, in order.
fn publish(
    bus: &BusDir,
    stage: &str,
    to_publish: &[(u16, Vec<u8>)],
    timeout: Duration,
) -> PyResult<Vec<EgressOutcome>> {
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
    // seq -> index of the record in `to_publish`.
    let mut pending = BTreeMap::new();
    for (index, (kind, record)) in to_publish.iter().enumerate() {
        let mut slot = writer
            .reserve_timeout(record.len(), timeout)
            .map_err(|e| error(format!("publishing on {name}: {e}")))?;
        slot.buf()[..record.len()].copy_from_slice(record);
        let seq = slot.commit(record.len(), *kind);
        writer.publish();
        pending.insert(seq, index);
    }
    let mut results = vec![None; to_publish.len()];
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
