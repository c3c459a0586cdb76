//! A running stage: its channels, its executors, and the helper threads
//! that do blocking waits so that executors never block: the statistics
//! publisher, the egress reader and the egress outcome publisher.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::ExecutorJoinHandle;
use shm_bus::{BusDir, ChannelOptions, Producer};

use crate::config::{ReceivePathChoice, TcpClientConfig, TcpServerConfig};
use crate::connection::{self, ConnectionSettings, ExecutorSetup, Role};
use crate::executor::ExecutorPlacement;
use crate::inbox::{self, Command, InboxSender};
use crate::records::{ReceivePath, SocketStats};
use crate::stats;
use crate::sys::{self, Heartbeat, OpenConnections};
use crate::tcp_client::ConnectorSetup;
use crate::tcp_server::{AcceptorSetup, BoundAddress};
use crate::{EngineError, egress, executor};

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
const CONTROL_RING: u64 = 1 << 20;

/// A running stage, owned by the engine handle.
pub(crate) struct Stage {
    pub(crate) name: String,
    executors: Vec<ExecutorJoinHandle<()>>,
    inboxes: Vec<InboxSender>,
    pub(crate) bound: Arc<BoundAddress>,
    pub(crate) latest_stats: Arc<Mutex<Option<SocketStats>>>,
    /// The receive path chosen at start.
    pub(crate) receive_path: ReceivePath,
    /// Each executor's name and heartbeat (none without a heartbeat period).
    pub(crate) heartbeats: Vec<(String, Arc<Heartbeat>)>,
    /// What each executor got from the OS (cores, priority), by index.
    pub(crate) placements: Vec<ExecutorPlacement>,
    stats_thread: Option<JoinHandle<()>>,
    egress_thread: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    outcome_thread: Option<JoinHandle<()>>,
    /// Dropped last: marks the channels ended once everything is published.
    producers: Vec<Producer>,
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

/// Starts a TCP server stage publishing into `bus`: one executor per
/// configured core, executor 0 accepting.
pub(crate) fn start_tcp_server(
    bus: &BusDir,
    mode: u32,
    heartbeat: Option<Duration>,
    config: TcpServerConfig,
) -> Result<Stage, EngineError> {
    let placements = executor::placements(&config.thread_processor_affinity);
    let bound = Arc::new(BoundAddress::default());
    let plan = StagePlan {
        settings: ConnectionSettings::from(&config),
        ring_size_b: config.ring_size_b,
        max_connections: u64::from(config.maximum_connections),
        priority: config.thread_priority,
        placements,
        bound: bound.clone(),
        heartbeat,
    };
    start(bus, mode, plan, |executors| Role::Acceptor(AcceptorSetup { config, executors, bound }))
}

/// Starts a TCP client stage publishing into `bus`: one connection at a
/// time, so one executor, on the first configured core.
pub(crate) fn start_tcp_client(
    bus: &BusDir,
    mode: u32,
    heartbeat: Option<Duration>,
    config: TcpClientConfig,
) -> Result<Stage, EngineError> {
    let placements = executor::placements(&config.thread_processor_affinity).into_iter().take(1).collect();
    let plan = StagePlan {
        settings: ConnectionSettings::from(&config),
        ring_size_b: config.ring_size_b,
        max_connections: 1,
        priority: config.thread_priority,
        placements,
        bound: Arc::new(BoundAddress::default()),
        heartbeat,
    };
    start(bus, mode, plan, |_| Role::Connector(ConnectorSetup { config }))
}

/// What differs between stage kinds, for [`start`].
struct StagePlan {
    settings: ConnectionSettings,
    ring_size_b: u64,
    /// Most connections open at once: sizes the statistics ring.
    max_connections: u64,
    priority: u8,
    placements: Vec<Option<usize>>,
    bound: Arc<BoundAddress>,
    /// Period of the executors' heartbeats, if any.
    heartbeat: Option<Duration>,
}

/// Bytes of a SocketStats record with `connections` connections:
/// `164 + 114 k` (`RECORDS.md` §5; every field has a fixed width).
fn stats_record_size(connections: u64) -> u64 {
    164 + 114 * connections
}

/// The statistics ring: room for a few records with `max_connections`
/// connections each (a record may take at most half the ring), at least
/// [`CONTROL_RING`].
fn stats_ring_size(max_connections: u64) -> u64 {
    (4 * stats_record_size(max_connections)).next_power_of_two().clamp(CONTROL_RING, 1 << 30)
}

/// Probes the kernel for the io_uring receive path: `auto` picks it when it
/// works, `io_uring` insists on it.
fn choose_receive_path(
    stage: &str,
    asked: ReceivePathChoice,
    ring_size_b: u64,
    slot_size_b: u64,
) -> Result<ReceivePathChoice, EngineError> {
    if asked == ReceivePathChoice::GlommioRead {
        tracing::info!("stage {stage}: receive path: glommio read (configured)");
        return Ok(asked);
    }
    // A ring of the size the executors will set up (a 4 GiB packet ring
    // asks for 32768 buffers), not a token one.
    let (_, buffers) = crate::uring_receiver::window(ring_size_b, slot_size_b);
    match sys::uring::probe(buffers as u16) {
        Ok(()) => {
            tracing::info!("stage {stage}: receive path: io_uring multishot recv into shared memory");
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

/// Creates the stage's channels and threads. Executor 0 gets the role made
/// by `opener` (given every executor's inbox); the others serve the
/// connections they are handed.
fn start(
    bus: &BusDir,
    mode: u32,
    plan: StagePlan,
    opener: impl FnOnce(Vec<InboxSender>) -> Role,
) -> Result<Stage, EngineError> {
    let StagePlan { mut settings, ring_size_b, max_connections, priority, placements, bound, heartbeat } =
        plan;
    let stage = settings.stage.clone();
    settings.receive_path =
        choose_receive_path(&stage, settings.receive_path, ring_size_b, settings.receive_slot_size_b)?;
    let shards = placements.len() as u32;
    let channel_error = |name: String| move |source| EngineError::Channel { name, source };
    let io_error = |source| EngineError::Io { stage: stage.clone(), source };
    let create = |channel: &str, capacity: u64, shards: u32| {
        let name = channel_name(&stage, channel);
        // The whole ring, always: the io_uring receive path hands the kernel
        // fixed slots of it and cannot start over, and the read path keeps
        // the same ring, so that `ring_size` is the history a late reader
        // (a logger, `ringest tail`) finds on either path.
        let opts = ChannelOptions { shards, capacity, mode, hot_window: 0, ..Default::default() };
        Producer::create(bus, &name, opts).map_err(channel_error(name))
    };
    let packets = create(PACKET_GROUP, ring_size_b, shards)?;
    let events = create(CONNECTION_EVENTS, CONTROL_RING, shards)?;
    let stats_channel = create(SOCKET_STATS, stats_ring_size(max_connections), 1)?;
    let outcomes_channel = create(EGRESS_OUTCOMES, CONTROL_RING, 1)?;
    let (outcomes, outcome_reports) = std::sync::mpsc::channel();
    let outcome_thread = egress::spawn_outcome_publisher(
        stage.clone(),
        outcomes_channel.shard(0).map_err(channel_error(outcomes_channel.name().to_owned()))?,
        placements.len(),
        outcome_reports,
    )
    .map_err(io_error)?;

    let latest_stats = Arc::new(Mutex::new(None));
    let (sink, stats_thread) = stats::spawn_publisher(
        stage.clone(),
        stats_channel.shard(0).map_err(channel_error(stats_channel.name().to_owned()))?,
        placements.len(),
        latest_stats.clone(),
    );

    let mut senders = Vec::new();
    let mut inboxes = Vec::new();
    for _ in &placements {
        let (tx, rx) = inbox::inbox().map_err(io_error)?;
        senders.push(tx);
        inboxes.push(rx);
    }
    let mut opener =
        Some(opener(senders.iter().map(InboxSender::try_clone).collect::<Result<_, _>>().map_err(io_error)?));
    let open = Arc::new(OpenConnections::default());
    let mut executors = Vec::new();
    let mut heartbeats = Vec::new();
    let mut placements_got = Vec::new();
    for (index, (core, inbox)) in placements.iter().zip(inboxes).enumerate() {
        let shard = |p: &Producer| p.shard(index as u32).map_err(channel_error(p.name().to_owned()));
        let setup = ExecutorSetup {
            index,
            settings: settings.clone(),
            packets: shard(&packets)?,
            events: shard(&events)?,
            inbox,
            open: open.clone(),
            stats: sink.clone(),
            outcomes: outcomes.clone(),
            role: opener.take().unwrap_or(Role::Worker),
        };
        let beating = heartbeat.map(|period| {
            let counter = Arc::new(Heartbeat::default());
            heartbeats.push((executor::name(&stage, index), counter.clone()));
            (period, counter)
        });
        let (executor, placement) = executor::spawn(&stage, index, *core, priority, beating, move || {
            connection::run_executor(setup)
        })?;
        executors.push(executor);
        placements_got.push(placement);
    }
    drop(sink);
    drop(outcomes);
    let egress_thread = egress::spawn_reader(bus.clone(), stage.clone(), &senders).map_err(io_error)?;

    Ok(Stage {
        name: stage,
        executors,
        inboxes: senders,
        bound,
        latest_stats,
        receive_path: match settings.receive_path {
            ReceivePathChoice::IoUring => ReceivePath::IoUringMultishot,
            _ => ReceivePath::GlommioRead,
        },
        heartbeats,
        placements: placements_got,
        stats_thread: Some(stats_thread),
        egress_thread: Some(egress_thread),
        outcome_thread: Some(outcome_thread),
        producers: vec![packets, events, stats_channel, outcomes_channel],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records;

    #[test]
    fn the_stats_ring_holds_a_record_of_every_connection() {
        assert_eq!(stats_ring_size(1), CONTROL_RING);
        for connections in [0, 1, 2, 1024, 5000, 10_000, 100_000] {
            // The encoder's own size, with every field at its largest.
            let stats = SocketStats {
                time_ns: u64::MAX,
                interval_ns: u64::MAX,
                receive_path: records::ReceivePath::IoUringMultishot,
                stage: records::StageStats { open_connections: u64::MAX, ..Default::default() },
                connections: vec![
                    records::ConnectionStats { connection_id: u64::MAX, ..Default::default() };
                    connections as usize
                ],
            };
            let record = records::encode(&stats).len() as u64;
            assert_eq!(stats_record_size(connections), record, "{connections} connections");
            let ring = stats_ring_size(connections);
            assert!(ring.is_power_of_two());
            assert!(shm_bus::layout::max_payload(ring) >= record, "{connections} connections");
        }
    }
}
