//! ringest's ingest engine: stages that own sockets, run on pinned glommio
//! executors (one per core), and publish every received packet, bundled
//! into groups, into shm-bus channels.
//!
//! ```no_run
//! use engine::{Engine, config::TcpServerConfig};
//! use shm_bus::BusDir;
//!
//! let config = TcpServerConfig { name: "lidar".into(), address: "0.0.0.0:7400".parse()?, ..Default::default() };
//! let engine = Engine::new(BusDir::from_env()).tcp_server(config).start()?;
//! // ... consumers read lidar/packet_group, lidar/connection_events, lidar/socket_stats
//! engine.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A TCP server or client stage named `N` publishes:
//! - `N/packet_group`: TcpPacketGroup records (see `RECORDS.md`), one shard
//!   per executor;
//! - `N/connection_events`: connected / disconnected events;
//! - `N/socket_stats`: SocketStats once a second;
//!
//! and writes the records any process publishes on `N/egress_packets` to
//! its connections, publishing what became of each on `N/egress_outcomes`.
//!
//! A UDP stage named `N` ([`Engine::udp`]) publishes DatagramGroup records
//! on `N/packet_group` (one shard per executor, each with its own
//! `SO_REUSEPORT` socket) and UdpSocketStats on `N/socket_stats`, and sends
//! the records published on `N/egress_packets` as datagrams.
//!
//! The modules: `executor` (the threads) and
//! `runtime` (the flusher and the io_uring driver every executor runs) are
//! shared; `tcp` and `udp` hold each kind of stage; `stage` the running
//! stage and its channels; `sys` every `unsafe` block.

#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
mod egress;
mod executor;
mod inbox;
mod liveness;
pub mod records;
mod runtime;
mod stage;
#[allow(unsafe_code)]
mod sys;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use shm_bus::BusDir;

pub use executor::ExecutorPlacement;
pub use liveness::Liveness;
pub use stage::{
    CONNECTION_EVENTS, EGRESS_OUTCOMES, EGRESS_PACKETS, PACKET_GROUP, SOCKET_STATS, channel_name,
};

use crate::config::{EngineConfig, TcpClientConfig, TcpServerConfig, UdpConfig};
use crate::records::{SocketStats, UdpSocketStats};
use crate::stage::{LatestStats, Stage};

/// Starting or running the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Every `CreateError` names the channel (or its file) itself.
    #[error("{source}")]
    Channel { name: String, source: shm_bus::CreateError },
    #[error("stage {stage}: executor{}: {message}", core.map(|c| format!(" on core {c}")).unwrap_or_default())]
    Executor { stage: String, core: Option<usize>, message: String },
    #[error("stage {stage}: {source}")]
    Io { stage: String, source: std::io::Error },
    #[error("two stages are named {0}")]
    DuplicateStage(String),
}

/// Builds an engine from stage configurations.
#[derive(Debug)]
pub struct Engine {
    bus: BusDir,
    mode: u32,
    heartbeat: Option<Duration>,
    tcp_servers: Vec<TcpServerConfig>,
    tcp_clients: Vec<TcpClientConfig>,
    udp: Vec<UdpConfig>,
}

impl Engine {
    /// An engine publishing into `bus`, with channel files of mode 0600.
    pub fn new(bus: BusDir) -> Self {
        Self {
            bus,
            mode: 0o600,
            heartbeat: None,
            tcp_servers: Vec::new(),
            tcp_clients: Vec::new(),
            udp: Vec::new(),
        }
    }

    /// An engine with every stage of a daemon configuration. `bus` is
    /// where to publish (the caller decides between `config.bus.dir`, a
    /// command-line override and the environment).
    pub fn from_config(bus: BusDir, config: EngineConfig) -> Self {
        Self {
            bus,
            mode: config.bus.mode,
            heartbeat: None,
            tcp_servers: config.tcp_server,
            tcp_clients: config.tcp_client,
            udp: config.udp,
        }
    }

    /// Permission bits of the channel files (e.g. 0o640 to let a group read).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Makes every executor prove every `period` that it still runs its
    /// tasks, for a watchdog: see [`EngineHandle::liveness`]. Off by
    /// default (it costs a timer wake-up per period and executor).
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = Some(period);
        self
    }

    /// Adds a TCP server stage.
    pub fn tcp_server(mut self, config: TcpServerConfig) -> Self {
        self.tcp_servers.push(config);
        self
    }

    /// Adds a UDP stage.
    pub fn udp(mut self, config: UdpConfig) -> Self {
        self.udp.push(config);
        self
    }

    /// Adds a TCP client stage.
    pub fn tcp_client(mut self, config: TcpClientConfig) -> Self {
        self.tcp_clients.push(config);
        self
    }

    /// Creates the channels and starts every stage's executors. Binding
    /// happens in the background (retried until it works): see
    /// [`EngineHandle::wait_bound`].
    pub fn start(self) -> Result<EngineHandle, EngineError> {
        let mut handle = EngineHandle { stages: Vec::new() };
        let names = self.tcp_servers.iter().map(|c| &c.name).chain(self.tcp_clients.iter().map(|c| &c.name));
        let names = names.chain(self.udp.iter().map(|c| &c.name));
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(EngineError::DuplicateStage(name.clone()));
            }
        }
        // On error, `handle` drops and stops what already started.
        for config in self.tcp_servers {
            handle.stages.push(tcp::start_tcp_server(&self.bus, self.mode, self.heartbeat, config)?);
        }
        for config in self.tcp_clients {
            handle.stages.push(tcp::start_tcp_client(&self.bus, self.mode, self.heartbeat, config)?);
        }
        for config in self.udp {
            handle.stages.push(udp::start(&self.bus, self.mode, self.heartbeat, config)?);
        }
        Ok(handle)
    }
}

/// A running engine. Dropping it stops it, like [`EngineHandle::stop`].
pub struct EngineHandle {
    stages: Vec<Stage>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("stages", &self.stage_names()).finish()
    }
}

impl EngineHandle {
    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The address server stage `name` listens on, or UDP stage `name` is
    /// bound to, once bound (waits up to `timeout`; `None` if it is not
    /// bound by then, or there is no such stage).
    pub fn wait_bound(&self, name: &str, timeout: Duration) -> Option<SocketAddr> {
        self.stage(name)?.bound.wait(timeout)
    }

    /// The receive path stage `name` chose when it started (an executor
    /// that then fails to set io_uring up falls back to the read path, and
    /// says so in the log).
    pub fn receive_path(&self, name: &str) -> Option<records::ReceivePath> {
        Some(self.stage(name)?.receive_path)
    }

    /// What the executors of stage `name` got from the OS when they
    /// started (cores, real-time priority), by index.
    pub fn executors(&self, name: &str) -> Option<&[ExecutorPlacement]> {
        Some(&self.stage(name)?.placements)
    }

    /// The latest socket statistics of stage `name` (published once a
    /// second on `<name>/socket_stats`).
    pub fn stats(&self, name: &str) -> Option<SocketStats> {
        match &self.stage(name)?.stats {
            LatestStats::Tcp(latest) => latest.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            LatestStats::Udp(_) => None,
        }
    }

    /// The latest statistics of UDP stage `name` (published once a second
    /// on `<name>/socket_stats`).
    pub fn udp_stats(&self, name: &str) -> Option<UdpSocketStats> {
        match &self.stage(name)?.stats {
            LatestStats::Udp(latest) => latest.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            LatestStats::Tcp(_) => None,
        }
    }

    /// Every stage's latest statistics, for another thread to read (e.g. a
    /// metrics endpoint) while the engine runs.
    pub fn stats_view(&self) -> StatsView {
        StatsView { stages: self.stages.iter().map(|s| (s.name.clone(), s.stats.clone())).collect() }
    }

    /// Every executor's heartbeat counter, for a watchdog thread; empty
    /// unless started with [`Engine::heartbeat`].
    pub fn liveness(&self) -> Liveness {
        let executors = self.stages.iter().flat_map(|s| s.heartbeats.iter().cloned()).collect();
        Liveness { executors }
    }

    /// Stops every stage gracefully: stop accepting, close the
    /// connections, publish partial groups, mark the channels ended.
    pub fn stop(mut self) -> Result<(), EngineError> {
        self.stop_stages()
    }

    fn stop_stages(&mut self) -> Result<(), EngineError> {
        let mut result = Ok(());
        for stage in self.stages.drain(..) {
            if let Err(e) = stage.stop() {
                result = Err(e);
            }
        }
        result
    }
}

/// The latest socket statistics of every stage of an engine, as
/// [`EngineHandle::stats`] returns them; cheap to clone and to send to
/// another thread. After the engine stops it keeps the last records.
#[derive(Clone, Debug)]
pub struct StatsView {
    stages: Vec<(String, LatestStats)>,
}

impl StatsView {
    /// Each TCP stage's name and latest statistics (`None` before the
    /// first record, about a second after the start), in start order.
    pub fn latest(&self) -> Vec<(&str, Option<SocketStats>)> {
        self.stages
            .iter()
            .filter_map(|(name, stats)| match stats {
                LatestStats::Tcp(latest) => Some((name.as_str(), read(latest))),
                LatestStats::Udp(_) => None,
            })
            .collect()
    }

    /// Each UDP stage's name and latest statistics, in start order.
    pub fn latest_udp(&self) -> Vec<(&str, Option<UdpSocketStats>)> {
        self.stages
            .iter()
            .filter_map(|(name, stats)| match stats {
                LatestStats::Udp(latest) => Some((name.as_str(), read(latest))),
                LatestStats::Tcp(_) => None,
            })
            .collect()
    }
}

/// A copy of what a publisher thread left, whatever a panic did to its lock.
fn read<T: Clone>(latest: &Mutex<Option<T>>) -> Option<T> {
    latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_stages() {
            tracing::error!("stopping the engine: {e}");
        }
    }
}
