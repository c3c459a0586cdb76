//! TCP stages: the server (accepts clients) and the client (connects and
//! reconnects). Both run the same executors ([`connection`]); they differ
//! in what opens connections ([`server`], [`client`]).

pub(crate) mod client;
pub(crate) mod connection;
pub(crate) mod read_path;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod uring_receiver;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shm_bus::BusDir;

use self::client::ConnectorSetup;
use self::connection::{ConnectionSettings, ExecutorSetup, Role};
use self::server::AcceptorSetup;
use crate::config::{ReceivePathChoice, TcpClientConfig, TcpServerConfig};
use crate::inbox::{self, InboxSender};
use crate::records::ReceivePath;
use crate::stage::{
    self, BoundAddress, CONNECTION_EVENTS, CONTROL_RING, EGRESS_OUTCOMES, LatestStats, PACKET_GROUP,
    SOCKET_STATS, Stage,
};
use crate::sys::OpenConnections;
use crate::{EngineError, egress, executor};

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
    start(bus, mode, plan, |executors| {
        let setup = AcceptorSetup { config, executors, bound };
        Role::Opener(Box::new(move |exec| Box::pin(server::accept_loop(exec, setup))))
    })
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
    start(bus, mode, plan, |_| {
        let setup = ConnectorSetup { config };
        Role::Opener(Box::new(move |exec| Box::pin(client::connect_loop(exec, setup))))
    })
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
    let (_, buffers) = uring_receiver::window(ring_size_b, settings.receive_slot_size_b);
    let what = "io_uring multishot recv into shared memory";
    settings.receive_path = stage::choose_receive_path(&stage, settings.receive_path, buffers as u16, what)?;
    let shards = placements.len() as u32;
    let io_error = |source| EngineError::Io { stage: stage.clone(), source };
    let create = |channel: &str, capacity: u64, shards: u32| {
        stage::create_channel(bus, mode, &stage, channel, capacity, shards)
    };
    let packets = create(PACKET_GROUP, ring_size_b, shards)?;
    let events = create(CONNECTION_EVENTS, CONTROL_RING, shards)?;
    let stats_channel = create(SOCKET_STATS, stats_ring_size(max_connections), 1)?;
    let outcomes_channel = create(EGRESS_OUTCOMES, CONTROL_RING, 1)?;
    let (outcomes, outcome_reports) = std::sync::mpsc::channel();
    let outcome_thread = egress::spawn_outcome_publisher(
        stage.clone(),
        stage::shard(&outcomes_channel, 0)?,
        placements.len(),
        outcome_reports,
    )
    .map_err(io_error)?;

    let latest_stats = Arc::new(Mutex::new(None));
    let (sink, stats_thread) = stats::spawn_publisher(
        stage.clone(),
        stage::shard(&stats_channel, 0)?,
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
        let setup = ExecutorSetup {
            index,
            settings: settings.clone(),
            packets: stage::shard(&packets, index as u32)?,
            events: stage::shard(&events, index as u32)?,
            inbox,
            open: open.clone(),
            stats: sink.clone(),
            outcomes: outcomes.clone(),
            role: opener.take().unwrap_or(Role::Worker),
        };
        let beating = stage::heartbeat(&stage, index, heartbeat, &mut heartbeats);
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
        stats: LatestStats::Tcp(latest_stats),
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
    use crate::records::SocketStats;

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
