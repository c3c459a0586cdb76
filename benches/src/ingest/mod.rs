//! The ingest benchmark: one load generator for every receiver, the pieces
//! the receivers share (per-connection accounting, latency reassembly, the
//! command protocol the orchestrator drives them with), process
//! measurements from `/proc`, and the result types `bench-ingest-report`
//! reads. The programs themselves are the `bench-*` binaries behind the
//! `ingest-peers` feature; see `docs/BENCHMARKS.md`, part "Ingest".

pub mod control;
pub mod load;
pub mod message;
pub mod procfs;
pub mod results;
pub mod tracker;

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock of every timestamp of the
/// ingest benchmark (send times in messages, receive times, windows).
pub use crate::monotonic_ns;

/// Raises the soft limit on open files to the hard limit (10,000
/// connections need 10,000 descriptors on each side); returns the limit in
/// force afterwards.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let _ =
            setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
