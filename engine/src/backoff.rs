//! Capped exponential backoff with jitter, so that many clients of one
//! restarted server do not reconnect in lockstep: the TCP client stage and
//! the bridge's connecting side use it.

use std::time::Duration;

/// Delays between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = shm_bus::realtime_ns() ^ (u64::from(std::process::id()) << 32);
        Self { initial, max, next: initial, rng: seed | 1 }
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt: uniformly in [next/2, next], then
    /// doubles `next` up to the cap.
    pub fn delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let full = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = full / 2;
        half + Duration::from_nanos(self.rng % (full - half).as_nanos().max(1) as u64)
    }
}
