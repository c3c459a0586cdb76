//! Executors: one glommio executor per configured core, pinned, optionally
//! under `SCHED_FIFO`. They never spin: an idle executor parks in the
//! kernel until io_uring or a timer wakes it.

use std::future::Future;
use std::sync::{Arc, Once, mpsc};
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

/// What an executor thread got from the OS once it started, as opposed to
/// what was configured: the CPUs it may run on and its real-time priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorPlacement {
    /// The CPUs of the thread's affinity mask (one when pinned).
    pub cpus: Vec<usize>,
    /// Its `SCHED_FIFO` priority; `None` at normal priority (none was
    /// asked, or the OS refused).
    pub fifo_priority: Option<u8>,
}

/// How long `spawn` waits for a new executor thread to report its placement.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts executor `index` of stage `stage` on `core` and runs `body` on it;
/// with `heartbeat`, also a task that bumps the counter every period.
/// Returns once the executor runs, with what it got from the OS.
pub(crate) fn spawn<F, Fut>(
    stage: &str,
    index: usize,
    core: Option<usize>,
    priority: u8,
    heartbeat: Option<(Duration, Arc<Heartbeat>)>,
    body: F,
) -> Result<(ExecutorJoinHandle<()>, ExecutorPlacement), EngineError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let placement = core.map_or(Placement::Unbound, Placement::Fixed);
    let name = name(stage, index);
    let stage = stage.to_owned();
    let (report, placed) = mpsc::sync_channel(1);
    let handle = LocalExecutorBuilder::new(placement)
        .name(&name)
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let fifo_priority = (priority > 0 && apply_priority(&stage, priority)).then_some(priority);
            // The calling thread's affinity mask, as glommio pinned it.
            let cpus = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
            // The spawner may have given up waiting: nothing to tell then.
            let _ = report.send(ExecutorPlacement { cpus, fifo_priority });
            let beating =
                heartbeat.map(|(period, counter)| glommio::spawn_local(liveness::beat(period, counter)));
            body().await;
            if let Some(beating) = beating {
                beating.cancel().await;
            }
        })
        .map_err(|e| EngineError::Executor { stage: name.clone(), core, message: e.to_string() })?;
    let placed = placed.recv_timeout(START_TIMEOUT).map_err(|e| EngineError::Executor {
        stage: name,
        core,
        message: match e {
            mpsc::RecvTimeoutError::Timeout => format!("did not start within {START_TIMEOUT:?}"),
            mpsc::RecvTimeoutError::Disconnected => "its thread ended before it ran".to_owned(),
        },
    })?;
    Ok((handle, placed))
}

/// Switches the current executor thread to `SCHED_FIFO`; when the OS
/// refuses, warns once per process and carries on at normal priority.
/// Returns whether the thread runs at `priority`.
fn apply_priority(stage: &str, priority: u8) -> bool {
    static WARN_ONCE: Once = Once::new();
    let Err(e) = sys::set_fifo_priority(priority) else { return true };
    WARN_ONCE.call_once(|| {
        tracing::warn!(
            "stage {stage}: cannot run executors at SCHED_FIFO priority {priority} ({e}); \
             running at normal priority (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority})"
        );
    });
    false
}
