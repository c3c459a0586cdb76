//! What the latency and fan-out benchmarks record, in the JSON files that
//! `bench-report` turns into tables.

use serde::{Deserialize, Serialize};

use crate::Transport;

/// A latency distribution, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    /// Nearest-rank percentiles of `samples` (at least one).
    pub fn from_samples(mut samples: Vec<u64>) -> Self {
        assert!(!samples.is_empty(), "no latency samples");
        samples.sort_unstable();
        let rank = |p: f64| {
            let n = samples.len();
            samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        Self {
            samples: samples.len(),
            p50_ns: rank(0.50),
            p99_ns: rank(0.99),
            p999_ns: rank(0.999),
            max_ns: samples[samples.len() - 1],
        }
    }
}

/// How records travel in a one-way run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    /// The reader busy-polls on core 1; the producer, pinned to core 0,
    /// spin-waits between records.
    Spin,
    /// Readers sleep in the transport's blocking wait, unpinned; the
    /// producer sleeps between records.
    Block,
}

/// The settings of a one-way run: one producer, `readers` reader processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneWay {
    pub transport: Transport,
    pub mode: Mode,
    pub size: usize,
    pub readers: usize,
    /// Records per second the producer is paced at.
    pub rate_hz: u64,
    /// Leading records left out of the statistics (page faults, cold caches).
    pub warmup: u64,
    /// Records measured after the warm-up, per reader.
    pub samples: usize,
}

/// The outcome of a one-way run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneWayRun {
    pub setup: OneWay,
    /// One summary per reader process.
    pub per_reader: Vec<LatencySummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = LatencySummary::from_samples((1..=1000).rev().collect());
        assert_eq!((s.samples, s.p50_ns, s.p99_ns, s.p999_ns, s.max_ns), (1000, 500, 990, 999, 1000));
        let one = LatencySummary::from_samples(vec![42]);
        assert_eq!((one.p50_ns, one.p999_ns, one.max_ns), (42, 42, 42));
    }
}
