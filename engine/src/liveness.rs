//! Executor liveness, for a watchdog (systemd's): with
//! [`Engine::heartbeat`](crate::Engine::heartbeat) every executor runs a
//! task that bumps a counter of its own once a period. A counter that stops
//! moving means its executor no longer runs its tasks (wedged in a blocking
//! call, a task that never yields, a stopped thread), whatever the others do.

use std::sync::Arc;
use std::time::Duration;

use crate::sys::Heartbeat;

/// The task each executor runs when a heartbeat period is set: beats at
/// once, then every `period`, until cancelled. A timer wake-up per period
/// and nothing in between: an idle executor still parks.
pub(crate) async fn beat(period: Duration, heartbeat: Arc<Heartbeat>) {
    loop {
        heartbeat.beat();
        glommio::timer::sleep(period).await;
    }
}

/// The heartbeat counters of every executor of an engine
/// ([`EngineHandle::liveness`](crate::EngineHandle::liveness)); cheap to
/// clone and to send to a watchdog thread.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    pub(crate) executors: Vec<(String, Arc<Heartbeat>)>,
}

impl Liveness {
    /// Each executor's name (`<stage>-<index>`, also its thread's name) and
    /// how many times it has beaten so far. Empty when the engine runs
    /// without a heartbeat.
    pub fn beats(&self) -> Vec<(&str, u64)> {
        self.executors.iter().map(|(name, heartbeat)| (name.as_str(), heartbeat.count())).collect()
    }
}
