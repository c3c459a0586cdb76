//! `ringest run`: the engine as a daemon, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bridge::Bridge;
use engine::config::{self, BridgeConfig, BridgeMode, EngineConfig};
use engine::records::ReceivePath;
use engine::{
    CONNECTION_EVENTS, EGRESS_OUTCOMES, EGRESS_PACKETS, Engine, EngineHandle, PACKET_GROUP, SOCKET_STATS,
    channel_name,
};
use shm_bus::BusDir;

use crate::executors;
use crate::metrics::MetricsServer;
use crate::shutdown::StopSignals;
use crate::systemd::Systemd;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The engine's configuration (TOML) [default: the embedded one, see
    /// --print-default-config].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Prints the embedded default configuration, which documents every key,
    /// and exits.
    #[arg(long, conflicts_with = "config")]
    print_default_config: bool,
}

/// How long to wait for a server stage to listen before looking for a stop
/// signal again (binding is retried in the background, e.g. while the port
/// is taken).
const BIND_POLL: Duration = Duration::from_millis(200);

/// Runs the configured stages; `bus_flag` is the command line's `--bus`.
pub fn run(args: RunArgs, bus_flag: Option<&Path>) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{}", config::default_config_toml());
        return Ok(());
    }
    let config = match &args.config {
        Some(path) => EngineConfig::from_file(path)?,
        None => EngineConfig::default(),
    };
    if config.tcp_server.is_empty()
        && config.tcp_client.is_empty()
        && config.udp.is_empty()
        && config.bridge.is_empty()
    {
        let file = args.config.as_deref().map_or("the configuration".into(), |p| p.display().to_string());
        bail!(
            "{file}: no stages: add a [[tcp_server]], [[tcp_client]], [[udp]] or [[bridge]] table \
             (see --print-default-config)"
        );
    }
    // `--bus`, then the file's [bus] dir, then $RINGEST_BUS or the default.
    let bus = bus_flag
        .or(config.bus.dir.as_deref())
        .map_or_else(BusDir::from_env, |dir| BusDir::new(dir).trust_from_env());
    let servers: Vec<(String, String)> =
        config.tcp_server.iter().map(|s| (s.name.clone(), s.address.to_string())).collect();
    let clients: Vec<(String, String)> =
        config.tcp_client.iter().map(|c| (c.name.clone(), c.address.clone())).collect();
    let udp: Vec<(String, Vec<String>)> = config
        .udp
        .iter()
        .map(|u| (u.name.clone(), u.multicast_groups.iter().map(ToString::to_string).collect()))
        .collect();

    let bridges = config.bridge.clone();
    let file_mode = config.bus.mode;
    let metrics_listen = config.metrics.listen;
    let mut systemd = Systemd::from_env();

    // Before starting, so that a signal during start-up stops cleanly too.
    let mut stop = StopSignals::install()?;
    let mut engine = Engine::from_config(bus.clone(), config);
    if let Some(period) = systemd.heartbeat_period() {
        engine = engine.heartbeat(period);
    }
    let engine = engine.start().context("starting the engine")?;
    systemd.start_watchdog(engine.liveness()).context("starting the watchdog thread")?;
    println!("bus: {}", bus.path().display());
    let metrics = match metrics_listen {
        Some(listen) => Some(MetricsServer::start(listen, bus.clone(), engine.stats_view())?),
        None => None,
    };
    if let Some(metrics) = &metrics {
        println!("metrics: http://{}/metrics", metrics.address());
    }
    let mut daemon = Daemon { engine, metrics, systemd, bridges: Vec::new() };
    for (name, configured) in &servers {
        daemon.systemd.status(&format!("waiting for stage {name} to listen"));
        let address = match wait_listening(&daemon.engine, name, configured, &mut stop) {
            Ok(address) => address,
            Err(signal) => return daemon.shut_down(signal),
        };
        println!("stage {name}: listening on {address}");
        print_stage(&daemon.engine, name, "its clients");
    }
    for (name, address) in &clients {
        println!("stage {name}: connecting to {address}");
        print_stage(&daemon.engine, name, "the server");
    }
    for (name, groups) in &udp {
        let address = daemon.engine.wait_bound(name, Duration::ZERO).map_or("?".into(), |a| a.to_string());
        let joined =
            if groups.is_empty() { String::new() } else { format!(", joined {}", groups.join(", ")) };
        println!("stage {name}: receiving UDP on {address}{joined}");
        print_stage(&daemon.engine, name, "egress destinations");
    }
    for config in bridges {
        let described = describe_bridge(&config);
        match Bridge::start(bus.clone(), file_mode, config) {
            Ok(bridge) => {
                print_bridge(&bridge, &described);
                daemon.bridges.push(bridge);
            }
            Err(e) => {
                let _ = daemon.shut_down("a bridge did not start");
                return Err(e.into());
            }
        }
    }
    let stages = servers.len() + clients.len() + udp.len() + daemon.bridges.len();
    daemon.systemd.ready(&format!("running {}", crate::human::plural(stages as u64, "stage")));
    println!("running; SIGINT or SIGTERM stops");
    let signal = stop.wait();
    daemon.shut_down(signal)
}

/// What runs until a stop signal.
struct Daemon {
    engine: EngineHandle,
    metrics: Option<MetricsServer>,
    systemd: Systemd,
    bridges: Vec<Bridge>,
}

impl Daemon {
    fn shut_down(mut self, why: &str) -> anyhow::Result<()> {
        println!("stopping ({why})");
        self.systemd.stopping(&format!("stopping ({why})"));
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        // Bridges first: they tell their peers and end the imported channels.
        for bridge in self.bridges.drain(..) {
            bridge.stop();
        }
        self.engine.stop().context("stopping the engine")?;
        println!("stopped");
        Ok(())
    }
}

/// The address server stage `name` listens on, once it does, or the stop
/// signal that came first. Says so once if binding takes a while (the
/// stage retries forever, e.g. while the port is taken).
fn wait_listening(
    engine: &EngineHandle,
    name: &str,
    configured: &str,
    stop: &mut StopSignals,
) -> Result<SocketAddr, &'static str> {
    let mut said = false;
    loop {
        if let Some(address) = engine.wait_bound(name, BIND_POLL) {
            return Ok(address);
        }
        if let Some(signal) = stop.received() {
            return Err(signal);
        }
        if !said {
            said = true;
            println!(
                "stage {name}: cannot listen on {configured} yet (port taken?); retrying until it can \
                 (`ringest stats {name}` counts the attempts, RUST_LOG=info shows why)"
            );
        }
    }
}

/// The start-up lines of a stage after its first: receive path, executors
/// and channels.
fn print_stage(engine: &EngineHandle, stage: &str, peers: &str) {
    let path = match engine.receive_path(stage) {
        Some(ReceivePath::IoUringMultishot) => "io_uring multishot receive into shared memory",
        Some(ReceivePath::GlommioRead) => "glommio read (recv or recvmmsg when the socket is readable)",
        None => "unknown",
    };
    println!("  receive path: {path}");
    if let Some(placements) = engine.executors(stage) {
        println!("  {}", executors::describe(placements));
    }
    let published: Vec<String> =
        [PACKET_GROUP, CONNECTION_EVENTS, SOCKET_STATS].iter().map(|c| channel_name(stage, c)).collect();
    println!("  publishes {}", published.join(", "));
    println!(
        "  sends what is published on {} to {peers}; outcomes on {}",
        channel_name(stage, EGRESS_PACKETS),
        channel_name(stage, EGRESS_OUTCOMES)
    );
}

/// What a bridge does, from its configuration, for its start-up lines.
struct BridgeDescription {
    peer: String,
    exports: String,
    imports: String,
    mode: &'static str,
    security: &'static str,
}

fn describe_bridge(config: &BridgeConfig) -> BridgeDescription {
    let peer = match (&config.listen, &config.connect) {
        (_, Some(address)) => format!("connecting to {address} (reconnects forever)"),
        _ => String::new(),
    };
    let exports = if config.export.is_empty() { "nothing".to_owned() } else { config.export.join(", ") };
    let imports = format!("{}/<the peer's channel>", config.import_prefix);
    let mode = match config.mode {
        BridgeMode::Lossless => "lossless (the exporting ring holds what the peer has not acknowledged)",
        BridgeMode::Lossy => "lossy (skips what the link cannot carry in time, and counts it)",
    };
    let security = match &config.tls {
        Some(tls) if tls.require_client_cert => "TLS, client certificates required",
        Some(_) => "TLS",
        None => "plaintext",
    };
    BridgeDescription { peer, exports, imports, mode, security }
}

fn print_bridge(bridge: &Bridge, described: &BridgeDescription) {
    match bridge.listening() {
        Some(address) => println!("bridge {}: listening on {address} for its peer", bridge.name()),
        None => println!("bridge {}: {}", bridge.name(), described.peer),
    }
    println!("  exports {}; imports as {}", described.exports, described.imports);
    println!("  mode: {}", described.mode);
    println!("  link: {}; status: ringest bridge status {}", described.security, bridge.name());
}
