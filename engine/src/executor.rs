//! Executors: one glommio executor per configured core, pinned, optionally
//! under `SCHED_FIFO`. They never spin: an idle executor parks in the
//! kernel until io_uring or a timer wakes it.

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::EngineError;
use crate::liveness;
use crate::sys::{self, Heartbeat};

/// io_uring memory glommio registers per executor. Registered buffers do
/// not help TCP receive, and the default (10 MiB) exceeds a typical 8 MiB
/// memlock limit once there are two executors.
const IO_MEMORY: usize = 512 << 10;

/// The cores to run on: one executor per listed core, or one unpinned
/// executor when the list is empty.
pub(crate) fn placements(affinity: &[usize]) -> Vec<Option<usize>> {
    if affinity.is_empty() { vec![None] } else { affinity.iter().copied().map(Some).collect() }
}

/// The name of executor `index` of stage `stage`, also its thread's name.
pub(crate) fn name(stage: &str, index: usize) -> String {
    format!("{stage}-{index}")
}

/// Starts executor `index` of stage `stage` on `core` and runs `body` on it;
/// with `heartbeat`, also a task that bumps the counter every period.
pub(crate) fn spawn<F, Fut>(
    stage: &str,
    index: usize,
    core: Option<usize>,
    priority: u8,
    heartbeat: Option<(Duration, Arc<Heartbeat>)>,
    body: F,
) -> Result<ExecutorJoinHandle<()>, EngineError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let placement = core.map_or(Placement::Unbound, Placement::Fixed);
    let name = name(stage, index);
    let stage = stage.to_owned();
    LocalExecutorBuilder::new(placement)
        .name(&name)
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            if priority > 0 {
                apply_priority(&stage, priority);
            }
            let beating =
                heartbeat.map(|(period, counter)| glommio::spawn_local(liveness::beat(period, counter)));
            body().await;
            if let Some(beating) = beating {
                beating.cancel().await;
            }
        })
        .map_err(|e| EngineError::Executor { stage: name, core, message: e.to_string() })
}

/// Switches the current executor thread to `SCHED_FIFO`; when the OS
/// refuses, warns once per process and carries on at normal priority.
fn apply_priority(stage: &str, priority: u8) {
    static WARN_ONCE: Once = Once::new();
    if let Err(e) = sys::set_fifo_priority(priority) {
        WARN_ONCE.call_once(|| {
            tracing::warn!(
                "stage {stage}: cannot run executors at SCHED_FIFO priority {priority} ({e}); \
                 running at normal priority (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority})"
            );
        });
    }
}
