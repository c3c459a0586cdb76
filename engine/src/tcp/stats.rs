//! Socket statistics: executors count, a publisher thread merges their
//! reports once a second and publishes a SocketStats record on
//! `<stage>/socket_stats`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shm_bus::ShardWriter;

use super::read_path::PublishCounters;
use crate::records::{self, ConnectionStats, ReceivePath, SocketStats, StageStats, TrafficStats};

/// How long the publisher waits for every executor's report before it
/// publishes with what it has (executors report once a second).
const LATE_REPORT: Duration = Duration::from_millis(1500);

/// What one connection did so far.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionCounters {
    pub(crate) peer: SocketAddr,
    pub(crate) bytes_in: u64,
    pub(crate) packets_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) packets_out: u64,
    /// Largest packet since the last report (reset by each report).
    pub(crate) max_packet_recent: u64,
    /// Times reading paused because a gated reader lagged.
    pub(crate) stalls: u64,
    pub(crate) egress_drops: u64,
    pub(crate) egress_dropped_bytes: u64,
}

impl ConnectionCounters {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            bytes_in: 0,
            packets_in: 0,
            bytes_out: 0,
            packets_out: 0,
            max_packet_recent: 0,
            stalls: 0,
            egress_drops: 0,
            egress_dropped_bytes: 0,
        }
    }

    pub(crate) fn count_packet(&mut self, len: usize) {
        self.bytes_in += len as u64;
        self.packets_in += 1;
        self.max_packet_recent = self.max_packet_recent.max(len as u64);
    }

    pub(crate) fn count_sent(&mut self, len: usize) {
        self.bytes_out += len as u64;
    }
}

/// One executor's counters, sent once a second.
#[derive(Debug)]
pub(crate) struct ExecutorReport {
    pub(crate) executor: usize,
    /// The receive path this executor runs.
    pub(crate) receive_path: ReceivePath,
    pub(crate) publish: PublishCounters,
    pub(crate) rejected: u64,
    /// Failed attempts to bind the listener (acceptor only).
    pub(crate) bind_failures: u64,
    /// Egress records no open connection was there to take.
    pub(crate) egress_unconnected_drops: u64,
    pub(crate) connections: Vec<(u64, ConnectionCounters)>,
    /// Sums over the executor's closed connections.
    pub(crate) closed: ClosedTotals,
}

/// What closed connections did, so stage totals never go down.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClosedTotals {
    pub(crate) bytes_out: u64,
    pub(crate) packets_out: u64,
    pub(crate) egress_drops: u64,
}

impl ClosedTotals {
    pub(crate) fn add(&mut self, c: &ConnectionCounters) {
        self.bytes_out += c.bytes_out;
        self.packets_out += c.packets_out;
        self.egress_drops += c.egress_drops;
    }
}

/// Where executors send their reports.
#[derive(Clone, Debug)]
pub(crate) struct StatsSink(mpsc::Sender<ExecutorReport>);

impl StatsSink {
    /// False once the publisher is gone.
    pub(crate) fn send(&self, report: ExecutorReport) -> bool {
        self.0.send(report).is_ok()
    }
}

/// Starts the publisher thread of stage `stage`. It ends after every sink
/// is dropped, publishing a last record.
pub(crate) fn spawn_publisher(
    stage: String,
    writer: ShardWriter,
    executors: usize,
    latest: Arc<Mutex<Option<SocketStats>>>,
) -> (StatsSink, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("{stage}-stats"))
        .spawn(move || Publisher::new(writer, executors, latest).run(rx))
        .expect("spawn a thread");
    (StatsSink(tx), thread)
}

struct Publisher {
    writer: ShardWriter,
    latest: Arc<Mutex<Option<SocketStats>>>,
    reports: Vec<Option<ExecutorReport>>,
    /// When the previous record was made, and its totals, for rates.
    previous: Option<Previous>,
    warned_too_large: bool,
}

struct Previous {
    at: Instant,
    stage: TrafficStats,
    connections: HashMap<u64, TrafficStats>,
}

impl Publisher {
    fn new(writer: ShardWriter, executors: usize, latest: Arc<Mutex<Option<SocketStats>>>) -> Self {
        let reports = (0..executors).map(|_| None).collect();
        Self { writer, latest, reports, previous: None, warned_too_large: false }
    }

    /// Publishes a record as soon as every executor has reported since the
    /// last one (they report once a second), or when one is late; and a
    /// last time when every executor is gone.
    fn run(mut self, reports: mpsc::Receiver<ExecutorReport>) {
        let mut fresh = vec![false; self.reports.len()];
        let mut deadline = Instant::now() + LATE_REPORT;
        loop {
            match reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(report) => {
                    fresh[report.executor] = true;
                    let slot = report.executor;
                    self.reports[slot] = Some(report);
                    if !fresh.iter().all(|&f| f) {
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.publish();
                    return;
                }
            }
            self.publish();
            fresh.fill(false);
            deadline = Instant::now() + LATE_REPORT;
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let interval = self.previous.as_ref().map_or(Duration::from_secs(1), |p| now.duration_since(p.at));
        let no_history = HashMap::new();
        let previous_connections = self.previous.as_ref().map_or(&no_history, |p| &p.connections);
        let mut stage = StageStats::default();
        let mut totals = TrafficStats::default();
        let mut connections = BTreeMap::new();
        // Every executor runs the path the stage chose, unless setting up
        // io_uring failed on one (logged): the first executor's is reported.
        let mut receive_path = None;
        for report in self.reports.iter().flatten() {
            receive_path.get_or_insert(report.receive_path);
            stage.groups_published += report.publish.groups;
            stage.backpressure_stalls += report.publish.stalls;
            stage.receive_buffer_exhaustions += report.publish.buffer_exhaustions;
            stage.rejected_connections += report.rejected;
            stage.bind_failures += report.bind_failures;
            totals.egress_drops += report.egress_unconnected_drops;
            stage.open_connections += report.connections.len() as u64;
            totals.bytes_received += report.publish.bytes;
            totals.packets_received += report.publish.packets;
            let closed = &report.closed;
            totals.bytes_sent += closed.bytes_out;
            totals.packets_sent += closed.packets_out;
            totals.egress_drops += closed.egress_drops;
            for (id, c) in &report.connections {
                totals.bytes_sent += c.bytes_out;
                totals.packets_sent += c.packets_out;
                totals.egress_drops += c.egress_drops;
                totals.max_packet_size = totals.max_packet_size.max(c.max_packet_recent);
                let mut traffic = traffic_totals(c);
                with_rates(&mut traffic, previous_connections.get(id), interval);
                connections.insert(*id, ConnectionStats { connection_id: *id, peer: c.peer.into(), traffic });
            }
        }
        let previous_stage = self.previous.as_ref().map(|p| p.stage);
        with_rates(&mut totals, previous_stage.as_ref(), interval);
        stage.traffic = totals;
        let record = SocketStats {
            time_ns: shm_bus::realtime_ns(),
            interval_ns: interval.as_nanos() as u64,
            receive_path: receive_path.unwrap_or(ReceivePath::GlommioRead),
            stage,
            connections: connections.into_values().collect(),
        };
        // Statistics are lossy by nature: if a gated reader holds the ring
        // full, this second's record is skipped. A record too large for the
        // ring (more connections than the ring was sized for) is a bug
        // worth one line in the log.
        match self.writer.send(records::KIND_SOCKET_STATS, &records::encode(&record)) {
            Err(e @ shm_bus::ReserveError::TooLarge { .. }) if !self.warned_too_large => {
                self.warned_too_large = true;
                tracing::error!(
                    "socket statistics of {} connections not published: {e}",
                    record.connections.len()
                );
            }
            _ => {}
        }
        self.previous = Some(Previous {
            at: now,
            stage: record.stage.traffic,
            connections: record.connections.iter().map(|c| (c.connection_id, c.traffic)).collect(),
        });
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }
}

/// A connection's totals (rates are filled in by [`with_rates`]).
fn traffic_totals(c: &ConnectionCounters) -> TrafficStats {
    TrafficStats {
        bytes_received: c.bytes_in,
        packets_received: c.packets_in,
        bytes_sent: c.bytes_out,
        packets_sent: c.packets_out,
        max_packet_size: c.max_packet_recent,
        egress_drops: c.egress_drops,
        ..Default::default()
    }
}

/// Fills in the per-second rates and the mean packet size over `interval`,
/// from the totals of the previous record (none: since the start).
fn with_rates(t: &mut TrafficStats, previous: Option<&TrafficStats>, interval: Duration) {
    let zero = TrafficStats::default();
    let p = previous.unwrap_or(&zero);
    let secs = interval.as_secs_f64().max(1e-9);
    let bytes_in = t.bytes_received.saturating_sub(p.bytes_received);
    let packets_in = t.packets_received.saturating_sub(p.packets_received);
    t.bytes_received_per_s = bytes_in as f64 / secs;
    t.packets_received_per_s = packets_in as f64 / secs;
    t.bytes_sent_per_s = t.bytes_sent.saturating_sub(p.bytes_sent) as f64 / secs;
    t.packets_sent_per_s = t.packets_sent.saturating_sub(p.packets_sent) as f64 / secs;
    t.mean_packet_size = if packets_in > 0 { bytes_in as f64 / packets_in as f64 } else { 0.0 };
}
