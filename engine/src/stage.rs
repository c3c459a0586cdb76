//! A running stage: its channels, its executors, and the helper threads
//! that do blocking waits so that executors never block: the statistics
//! publisher, the egress reader and the egress outcome publisher.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::ExecutorJoinHandle;
use shm_bus::{BusDir, ChannelOptions, Producer};

use crate::EngineError;
use crate::config::ReceivePathChoice;
use crate::executor::ExecutorPlacement;
use crate::inbox::{Command, InboxSender};
use crate::records::{ReceivePath, SocketStats, UdpSocketStats};
use crate::sys::{self, Heartbeat};

/// Names of a stage's channels.
pub fn channel_name(stage: &str, channel: &str) -> String {
    format!("{stage}/{channel}")
}

/// Channel suffixes.
pub const PACKET_GROUP: &str = "packet_group";
pub const CONNECTION_EVENTS: &str = "connection_events";
pub const SOCKET_STATS: &str = "socket_stats";
pub const EGRESS_PACKETS: &str = "egress_packets";
pub const EGRESS_OUTCOMES: &str = "egress_outcomes";

/// Ring size of the small control channels (events, stats).
pub(crate) const CONTROL_RING: u64 = 1 << 20;

/// A stage's latest statistics record, as its publisher thread left it.
#[derive(Clone, Debug)]
pub(crate) enum LatestStats {
    Tcp(Arc<Mutex<Option<SocketStats>>>),
    Udp(Arc<Mutex<Option<UdpSocketStats>>>),
}

/// A running stage, owned by the engine handle.
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) executors: Vec<ExecutorJoinHandle<()>>,
    pub(crate) inboxes: Vec<InboxSender>,
    pub(crate) bound: Arc<BoundAddress>,
    pub(crate) stats: LatestStats,
    /// The receive path chosen at start.
    pub(crate) receive_path: ReceivePath,
    /// Each executor's name and heartbeat (none without a heartbeat period).
    pub(crate) heartbeats: Vec<(String, Arc<Heartbeat>)>,
    /// What each executor got from the OS (cores, priority), by index.
    pub(crate) placements: Vec<ExecutorPlacement>,
    pub(crate) stats_thread: Option<JoinHandle<()>>,
    pub(crate) egress_thread: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    pub(crate) outcome_thread: Option<JoinHandle<()>>,
    /// Dropped last: marks the channels ended once everything is published.
    pub(crate) producers: Vec<Producer>,
}

impl Stage {
    /// Stops accepting, closes the connections, publishes what is pending,
    /// and marks the channels ended.
    pub(crate) fn stop(mut self) -> Result<(), EngineError> {
        for inbox in &self.inboxes {
            inbox.send(Command::Stop);
        }
        let mut result = Ok(());
        for handle in self.executors.drain(..) {
            if let Err(e) = handle.join() {
                result = Err(EngineError::Executor {
                    stage: self.name.clone(),
                    core: None,
                    message: e.to_string(),
                });
            }
        }
        if let Some((stop, thread)) = self.egress_thread.take() {
            drop(stop); // the thread ends when it sees the channel closed
            let _ = thread.join();
        }
        // The executors' and the egress reader's report senders are gone.
        if let Some(thread) = self.outcome_thread.take() {
            let _ = thread.join();
        }
        // The executors' stats senders are gone: the thread publishes a last
        // record and ends.
        if let Some(thread) = self.stats_thread.take() {
            let _ = thread.join();
        }
        self.producers.clear();
        result
    }
}

/// Where the stage's listener ended up, for the handle (OS-chosen ports).
#[derive(Debug, Default)]
pub(crate) struct BoundAddress {
    addr: Mutex<Option<SocketAddr>>,
    changed: Condvar,
}

impl BoundAddress {
    pub(crate) fn set(&self, addr: SocketAddr) {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        self.changed.notify_all();
    }

    pub(crate) fn wait(&self, timeout: Duration) -> Option<SocketAddr> {
        let guard = self.addr.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |a| a.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// Probes the kernel for the io_uring receive path: `auto` picks it when it
/// works, `io_uring` insists on it.
/// `buffers` is the buffer ring the executors will set up (a 4 GiB packet
/// ring asks for 32768), not a token one; `what` names the io_uring path.
pub(crate) fn choose_receive_path(
    stage: &str,
    asked: ReceivePathChoice,
    buffers: u16,
    what: &str,
) -> Result<ReceivePathChoice, EngineError> {
    if asked == ReceivePathChoice::GlommioRead {
        tracing::info!("stage {stage}: receive path: glommio read (configured)");
        return Ok(asked);
    }
    match sys::uring::probe(buffers) {
        Ok(()) => {
            tracing::info!("stage {stage}: receive path: {what}");
            Ok(ReceivePathChoice::IoUring)
        }
        Err(e) if asked == ReceivePathChoice::Auto => {
            tracing::info!("stage {stage}: receive path: glommio read (io_uring unavailable: {e})");
            Ok(ReceivePathChoice::GlommioRead)
        }
        Err(source) => Err(EngineError::Io {
            stage: stage.to_owned(),
            source: std::io::Error::new(source.kind(), format!("receive_path = \"io_uring\": {source}")),
        }),
    }
}

/// Creates channel `<stage>/<channel>` of `shards` shards of `capacity`
/// bytes, always as a whole ring: the io_uring receive paths hand the
/// kernel fixed slots of it and cannot start over, and the read paths keep
/// the same ring, so that `ring_size_b` is the history a late reader (a
/// logger, `ringest tail`) finds on either path.
pub(crate) fn create_channel(
    bus: &BusDir,
    mode: u32,
    stage: &str,
    channel: &str,
    capacity: u64,
    shards: u32,
) -> Result<Producer, EngineError> {
    let name = channel_name(stage, channel);
    let opts = ChannelOptions { shards, capacity, mode, hot_window: 0, ..Default::default() };
    Producer::create(bus, &name, opts).map_err(|source| EngineError::Channel { name, source })
}

/// Shard `index` of `producer`, for one executor or helper thread.
pub(crate) fn shard(producer: &Producer, index: u32) -> Result<shm_bus::ShardWriter, EngineError> {
    producer.shard(index).map_err(|source| EngineError::Channel { name: producer.name().to_owned(), source })
}

/// A heartbeat counter for executor `index` of `stage`, recorded in
/// `heartbeats`, when the engine beats every `period`.
pub(crate) fn heartbeat(
    stage: &str,
    index: usize,
    period: Option<Duration>,
    heartbeats: &mut Vec<(String, Arc<Heartbeat>)>,
) -> Option<(Duration, Arc<Heartbeat>)> {
    let period = period?;
    let counter = Arc::new(Heartbeat::default());
    heartbeats.push((crate::executor::name(stage, index), counter.clone()));
    Some((period, counter))
}
