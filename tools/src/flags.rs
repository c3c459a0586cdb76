//! The values tools threads share: every atomic of this crate. None of
//! them publishes other memory, so every access is `Relaxed`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A flag that asks threads to stop; they poll it.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicBool);

impl StopFlag {
    pub fn stop(&self) {
        // Relaxed: pollers only need to see it eventually; what they do
        // after stopping is ordered by joining their threads.
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        // Relaxed: see `stop`.
        self.0.load(Ordering::Relaxed)
    }
}

/// A running total added to by several threads and read for progress.
#[derive(Debug, Default)]
pub struct Total(AtomicU64);

impl Total {
    pub fn add(&self, n: u64) {
        // Relaxed: a statistic; the final figures come from the threads'
        // own reports after they are joined.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        // Relaxed: see `add`.
        self.0.load(Ordering::Relaxed)
    }
}
