//! A UDP stage's statistics: each executor reports its counters once a
//! second; a thread merges the reports into one UdpSocketStats record
//! (rates over the interval) on `<stage>/socket_stats`.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shm_bus::ShardWriter;

use super::DatagramCounters;
use crate::records::{self, ReceivePath, UdpSocketCounters, UdpSocketStats};

/// How long the publisher waits for every executor's report before it
/// publishes with what it has.
const LATE_REPORT: Duration = Duration::from_millis(1500);

/// One executor's counters, sent once a second.
#[derive(Debug)]
pub(crate) struct ExecutorReport {
    pub(crate) executor: usize,
    pub(crate) local: SocketAddr,
    pub(crate) receive_path: ReceivePath,
    pub(crate) counters: DatagramCounters,
    /// The socket's drop counter (`SO_MEMINFO`).
    pub(crate) kernel_drops: u64,
    pub(crate) kernel_receive_buffer_b: u64,
    pub(crate) egress_sent: u64,
    pub(crate) egress_drops: u64,
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

/// Starts the publisher thread; it ends after every sink is dropped,
/// publishing a last record.
pub(crate) fn spawn_publisher(
    stage: String,
    mut writer: ShardWriter,
    executors: usize,
    latest: Arc<Mutex<Option<UdpSocketStats>>>,
) -> std::io::Result<(StatsSink, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<ExecutorReport>();
    let thread = std::thread::Builder::new().name(format!("{stage}-stats")).spawn(move || {
        let mut reports: Vec<Option<ExecutorReport>> = (0..executors).map(|_| None).collect();
        let mut fresh = vec![false; executors];
        let mut previous: Option<(Instant, Vec<(u64, u64)>)> = None;
        let mut deadline = Instant::now() + LATE_REPORT;
        loop {
            let last = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(report) => {
                    let index = report.executor;
                    fresh[index] = true;
                    reports[index] = Some(report);
                    if !fresh.iter().all(|&f| f) {
                        continue;
                    }
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            let now = Instant::now();
            let stats =
                merge(&reports, previous.as_ref().map(|(at, totals)| (now.duration_since(*at), &totals[..])));
            previous = Some((now, stats.sockets.iter().map(|s| (s.datagrams, s.bytes)).collect()));
            if let Err(e) = writer.send(records::KIND_UDP_SOCKET_STATS, &records::encode(&stats)) {
                tracing::debug!("stage {stage}: socket stats not published: {e}");
            }
            *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
            if last {
                return;
            }
            fresh.fill(false);
            deadline = Instant::now() + LATE_REPORT;
        }
    })?;
    Ok((StatsSink(tx), thread))
}

/// One record from the executors' latest reports; rates from the totals
/// of the previous record, `interval` ago.
fn merge(reports: &[Option<ExecutorReport>], previous: Option<(Duration, &[(u64, u64)])>) -> UdpSocketStats {
    let interval = previous.map_or(Duration::from_secs(1), |(interval, _)| interval);
    let seconds = interval.as_secs_f64().max(1e-9);
    let mut receive_path = None;
    let mut groups = 0;
    let sockets = reports
        .iter()
        .enumerate()
        .map(|(i, report)| {
            let Some(r) = report else {
                return UdpSocketCounters { executor: i as u32, ..Default::default() };
            };
            receive_path.get_or_insert(r.receive_path);
            groups += r.counters.groups;
            let (datagrams_before, bytes_before) =
                previous.and_then(|(_, totals)| totals.get(i).copied()).unwrap_or((0, 0));
            UdpSocketCounters {
                executor: i as u32,
                local: r.local.into(),
                datagrams: r.counters.datagrams,
                bytes: r.counters.bytes,
                datagrams_per_s: r.counters.datagrams.saturating_sub(datagrams_before) as f64 / seconds,
                bytes_per_s: r.counters.bytes.saturating_sub(bytes_before) as f64 / seconds,
                kernel_drops: r.kernel_drops,
                truncated: r.counters.truncated,
                ring_full_stalls: r.counters.ring_full_stalls + r.counters.buffer_exhaustions,
                max_datagram_size: r.counters.max_recent,
                egress_sent: r.egress_sent,
                egress_drops: r.egress_drops,
                kernel_receive_buffer_b: r.kernel_receive_buffer_b,
            }
        })
        .collect();
    UdpSocketStats {
        time_ns: shm_bus::realtime_ns(),
        interval_ns: interval.as_nanos() as u64,
        receive_path: receive_path.unwrap_or(ReceivePath::GlommioRead),
        groups_published: groups,
        sockets,
    }
}
