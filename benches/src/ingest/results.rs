//! What the ingest benchmark's programs report to each other (one JSON
//! line per answer) and what each run leaves in its JSON file for
//! `bench-ingest-report`.

use serde::{Deserialize, Serialize};

use crate::results::LatencySummary;

/// A receiver's running totals (command `totals`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverTotals {
    /// Bytes that reached the receiver's consumer.
    pub bytes: u64,
    /// Receives (packets) that carried them.
    pub packets: u64,
    /// Connections that delivered at least one byte.
    pub streams: u64,
    /// `CLOCK_MONOTONIC` ns when the first and the last byte were seen (0:
    /// none yet).
    pub first_ns: u64,
    pub last_ns: u64,
    /// Records the consumer lost (a lossy shm-bus reader lapped by the
    /// engine); 0 for the peers, which cannot lose.
    pub lost_records: u64,
}

impl ReceiverTotals {
    /// Takes bytes seen at `now_ns`.
    pub fn seen(&mut self, bytes: u64, packets: u64, now_ns: u64) {
        if self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        self.last_ns = now_ns;
        self.bytes += bytes;
        self.packets += packets;
    }
}

/// What arrived on one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// The sender's address of the connection, as `ip:port`.
    pub peer: String,
    pub bytes: u64,
    pub packets: u64,
    /// sha256 of the bytes, hex, when the receiver hashed.
    pub sha256: Option<String>,
    /// Messages out of sequence or damaged (latency runs).
    pub bad_messages: u64,
}

/// A receiver's final report (command `final`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiverReport {
    pub totals: ReceiverTotals,
    pub streams: Vec<StreamReport>,
    /// Send-to-seen latency of the messages after the warm-up (latency runs).
    pub latency: Option<LatencySummary>,
    /// ringest only: latency from the send to the engine's receive stamp
    /// (`rx_monotonic_ns`, taken when the engine handles the receive), the
    /// engine's part of `latency`.
    #[serde(default)]
    pub latency_to_engine: Option<LatencySummary>,
}

/// What one connection of the load generator sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentStream {
    /// The connection's local address: the peer address receivers see.
    pub local: String,
    pub bytes: u64,
    /// Complete messages (a message cut by the deadline is not counted,
    /// its bytes are).
    pub messages: u64,
    pub sha256: Option<String>,
}

/// The load generator's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub connections: usize,
    pub size: usize,
    pub rate: Option<f64>,
    pub threads: usize,
    /// From the first write to the last.
    pub elapsed_s: f64,
    pub bytes: u64,
    pub messages: u64,
    /// Messages that a fixed rate asked for and that could not be written
    /// by the deadline (the receiver pushed back).
    pub messages_owed: u64,
    /// The load generator's own CPU time, connecting included.
    pub cpu: CpuTimes,
    pub streams: Vec<SentStream>,
}

/// CPU time in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn minus(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes { user_s: self.user_s - earlier.user_s, sys_s: self.sys_s - earlier.sys_s }
    }
}

/// A receiver process over a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// `limit`, `tokio`, `engine`, `consumer` or `logger`.
    pub name: String,
    /// CPU time spent from just before the load started until every byte
    /// arrived.
    pub cpu: CpuTimes,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Of the resident set at the end, shared memory (RssShmem), KiB: the
    /// shm-bus ring pages a process touched count here.
    pub rss_shmem_kib: u64,
}

/// The load of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub connections: usize,
    /// Bytes per message (per write).
    pub size: usize,
    /// Messages per second over all connections; `None`: as fast as they go.
    pub rate: Option<f64>,
    pub seconds: f64,
}

impl Scenario {
    /// `16x64KiB`, `1024x256B@100000/s`: the scenario's name in tables.
    pub fn label(&self) -> String {
        let rate = self.rate.map_or(String::new(), |r| format!("@{r}/s"));
        format!("{}x{}{rate}", self.connections, crate::size_label(self.size))
    }
}

/// How the lossless logger did in a `ringest-log*` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggerOutcome {
    /// `none` or `lz4`.
    pub compression: String,
    /// "lost N records" of the logger's summary line (`None`: not found).
    pub lost_records: Option<u64>,
    /// The logger's summary line.
    pub summary: String,
    /// Size of the MCAP file.
    pub file_bytes: u64,
    /// Packet bytes read back from the file.
    pub logged_bytes: u64,
    /// Connections whose bytes in the file equal (count and sha256 when
    /// the run hashed) what was sent.
    pub streams_verified: usize,
    /// Seconds from the consumer's last byte until the logger had written
    /// everything and exited.
    pub drain_s: f64,
}

/// What an orchestrator that watched `<stage>/connection_events` and
/// `<stage>/socket_stats` saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineWatch {
    /// Most connections open at once (Connected minus Disconnected events).
    pub max_open_connections: u64,
    pub rejected_connections: u64,
    /// Events the lossy watcher lost (the counts are then lower bounds).
    pub events_lost: u64,
    /// socket_stats records seen during the run (about one a second).
    pub stats_records: u64,
}

/// One run of a receiver under the load generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestRun {
    /// The table it belongs to: `throughput`, `latency` or `scale`.
    pub purpose: String,
    /// `limit`, `tokio`, `ringest`, `ringest-log` or `ringest-log-lz4`.
    pub peer: String,
    pub scenario: Scenario,
    pub sent_bytes: u64,
    pub sent_messages: u64,
    pub messages_owed: u64,
    pub sender_elapsed_s: f64,
    pub sender_cpu: CpuTimes,
    pub received: ReceiverTotals,
    /// Received bytes / (last byte seen - first byte seen).
    pub bytes_per_s: f64,
    pub packets_per_s: f64,
    /// The receiver's processes.
    pub processes: Vec<ProcessUsage>,
    pub latency: Option<LatencySummary>,
    /// ringest only: see [`ReceiverReport::latency_to_engine`].
    #[serde(default)]
    pub latency_to_engine: Option<LatencySummary>,
    pub logger: Option<LoggerOutcome>,
    pub engine: Option<EngineWatch>,
    /// Whether the bytes were hashed on both sides.
    pub hashed: bool,
    /// Extra settings (engine configuration keys, ...).
    pub settings: Vec<String>,
    /// Empty when the run is valid: every byte sent arrived (and hashes
    /// matched), nothing was lost.
    pub problems: Vec<String>,
}

impl IngestRun {
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// CPU seconds per 10^9 bytes received, of the processes named in
    /// `names` (all when empty).
    pub fn cpu_s_per_gb(&self, names: &[&str]) -> f64 {
        let cpu: f64 = self
            .processes
            .iter()
            .filter(|p| names.is_empty() || names.contains(&p.name.as_str()))
            .map(|p| p.cpu.total_s())
            .sum();
        cpu / (self.received.bytes as f64 / 1e9)
    }

    /// Sum of the peak RSS of the processes named in `names` (all when empty), KiB.
    pub fn peak_rss_kib(&self, names: &[&str]) -> u64 {
        self.processes
            .iter()
            .filter(|p| names.is_empty() || names.contains(&p.name.as_str()))
            .map(|p| p.peak_rss_kib)
            .sum()
    }
}

/// Loopback TCP ping-pong: one-way latency = round trip / 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingPongRun {
    pub size: usize,
    pub rate: f64,
    pub seconds: f64,
    pub one_way: LatencySummary,
}

/// An iperf3 run on loopback (reference only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Iperf3Run {
    pub seconds: f64,
    pub streams: usize,
    pub bytes_per_s: f64,
    /// iperf3's own CPU figure for the receiving side, percent of one core.
    pub receiver_cpu_percent: f64,
    pub command: String,
}

/// The JSON file of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunFile {
    Ingest(Box<IngestRun>),
    PingPong(PingPongRun),
    Iperf3(Iperf3Run),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_totals() {
        let s = Scenario { connections: 1024, size: 256, rate: Some(100000.0), seconds: 3.0 };
        assert_eq!(s.label(), "1024x256B@100000/s");
        assert_eq!(Scenario { rate: None, size: 65536, connections: 16, ..s }.label(), "16x64KiB");
        let mut t = ReceiverTotals::default();
        t.seen(10, 1, 5);
        t.seen(20, 2, 9);
        assert_eq!((t.bytes, t.packets, t.first_ns, t.last_ns), (30, 3, 5, 9));
    }

    #[test]
    fn run_files_are_tagged() {
        let run = RunFile::PingPong(PingPongRun {
            size: 1024,
            rate: 1000.0,
            seconds: 1.0,
            one_way: LatencySummary::from_samples(vec![1, 2, 3]),
        });
        let text = serde_json::to_string(&run).unwrap();
        assert!(text.starts_with(r#"{"kind":"ping-pong","#), "{text}");
        assert_eq!(serde_json::from_str::<RunFile>(&text).unwrap(), run);
    }
}
