//! `ringest run`: the engine as a daemon, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use engine::config::{self, EngineConfig};
use engine::{
    CONNECTION_EVENTS, EGRESS_PACKETS, Engine, EngineHandle, PACKET_GROUP, SOCKET_STATS, channel_name,
};
use shm_bus::BusDir;

use crate::shutdown::StopSignals;

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
    // `--bus`, then the file's [bus] dir, then $RINGEST_BUS or the default.
    let bus = bus_flag
        .or(config.bus.dir.as_deref())
        .map_or_else(BusDir::from_env, |dir| BusDir::new(dir).trust_from_env());
    let servers: Vec<String> = config.tcp_server.iter().map(|s| s.name.clone()).collect();
    let clients: Vec<(String, String)> =
        config.tcp_client.iter().map(|c| (c.name.clone(), c.address.clone())).collect();

    // Before starting, so that a signal during start-up stops cleanly too.
    let mut stop = StopSignals::install()?;
    let engine = Engine::from_config(bus.clone(), config).start().context("starting the engine")?;
    println!("bus: {}", bus.path().display());
    for name in &servers {
        let address = match wait_listening(&engine, name, &mut stop) {
            Ok(address) => address,
            Err(signal) => return shut_down(engine, signal),
        };
        println!("stage {name}: listening on {address}");
        print_channels(name, "its clients");
    }
    for (name, address) in &clients {
        println!("stage {name}: connecting to {address}");
        print_channels(name, "the server");
    }
    if servers.is_empty() && clients.is_empty() {
        println!("no stages configured");
    }
    println!("running; SIGINT or SIGTERM stops");
    let signal = stop.wait();
    shut_down(engine, signal)
}

/// The address server stage `name` listens on, once it does, or the stop
/// signal that came first.
fn wait_listening(
    engine: &EngineHandle,
    name: &str,
    stop: &mut StopSignals,
) -> Result<SocketAddr, &'static str> {
    loop {
        if let Some(address) = engine.wait_bound(name, BIND_POLL) {
            return Ok(address);
        }
        if let Some(signal) = stop.received() {
            return Err(signal);
        }
    }
}

fn print_channels(stage: &str, peers: &str) {
    let published: Vec<String> =
        [PACKET_GROUP, CONNECTION_EVENTS, SOCKET_STATS].iter().map(|c| channel_name(stage, c)).collect();
    println!("  publishes {}", published.join(", "));
    println!("  sends what is published on {} to {peers}", channel_name(stage, EGRESS_PACKETS));
}

fn shut_down(engine: EngineHandle, why: &str) -> anyhow::Result<()> {
    println!("stopping ({why})");
    engine.stop().context("stopping the engine")?;
    println!("stopped");
    Ok(())
}
