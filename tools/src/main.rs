//! `ringest`: the ingest engine's daemon and the tools around its
//! shared-memory bus. This file only turns the command line into a
//! subcommand's arguments and reports how it ended; each subcommand lives in
//! the module of its name.

mod bridge_status;
mod demo;
mod executors;
mod flags;
mod follow;
mod generate;
mod human;
mod loadgen;
mod log;
mod ls;
mod metrics;
mod progress;
mod replay;
mod run;
mod send;
mod shutdown;
mod stage_kind;
mod stats;
mod systemd;
mod table;
mod tail;

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use shm_bus::BusDir;
use tracing_subscriber::EnvFilter;

/// The version `--version` prints: the crate's, and the git commit built
/// from (`unknown` outside a git checkout; see build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RINGEST_GIT_COMMIT"), ")");

/// A thread-per-core TCP ingest engine that publishes what it receives into
/// shared memory, and the tools around it.
#[derive(Parser, Debug)]
#[command(name = "ringest", version = VERSION)]
struct Cli {
    /// Bus directory the channels live in [default: $RINGEST_BUS, or
    /// /dev/shm/ringest]. Overrides the [bus] dir of a config file.
    #[arg(long, global = true, value_name = "DIR")]
    bus: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the engine: the stages of a config file, or the embedded default.
    Run(run::RunArgs),
    /// Runs the default engine in-process under generated load, logs it and
    /// checks that every byte arrived.
    Demo(demo::DemoArgs),
    /// Lists the channels on the bus, their producers, rates and readers.
    Ls(ls::LsArgs),
    /// Prints a channel's records as they arrive.
    Tail(tail::TailArgs),
    /// Shows a stage's socket statistics, refreshed every second.
    Stats(stats::StatsArgs),
    /// Shows a bridge's status: its link and what crossed it, per channel.
    Bridge(bridge_status::BridgeArgs),
    /// Logs channels to an MCAP file.
    Log(log::LogArgs),
    /// Sends the connections of an MCAP log again over TCP, or the datagrams
    /// of a log or a pcap/pcapng capture over UDP.
    Replay(replay::ReplayArgs),
    /// Sends standard input to a stage's connections.
    Send(send::SendArgs),
    /// Opens TCP connections and writes random messages to them, or sends
    /// random UDP datagrams from several sources.
    Loadgen(loadgen::LoadgenArgs),
    /// Prints a shell completion script (e.g. `ringest completions bash >
    /// /etc/bash_completion.d/ringest`).
    Completions(generate::CompletionsArgs),
    /// Prints the manual page (roff; e.g. `ringest man | man -l -`).
    Man(generate::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit here, with clap's message and status 2
    init_logging();
    match cli.dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read our output has gone (`ringest tail ... | head`): done.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringest: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    /// Resolves the global options and runs the subcommand.
    fn dispatch(self) -> anyhow::Result<()> {
        let Self { bus, command } = self;
        // The flag wins over the environment; `run` also weighs its config file.
        let bus_dir = || bus.clone().map_or_else(BusDir::from_env, |dir| BusDir::new(dir).trust_from_env());
        match command {
            Command::Run(args) => run::run(args, bus.as_deref()),
            Command::Demo(args) => demo::run(args, &bus_dir()),
            Command::Ls(args) => ls::run(args, &bus_dir()),
            Command::Tail(args) => tail::run(args, &bus_dir()),
            Command::Stats(args) => stats::run(args, &bus_dir()),
            Command::Bridge(args) => bridge_status::run(args, &bus_dir()),
            Command::Log(args) => log::run(args, &bus_dir()),
            Command::Replay(args) => replay::run(args),
            Command::Send(args) => send::run(args, &bus_dir()),
            Command::Loadgen(args) => loadgen::cli(args),
            Command::Completions(args) => generate::completions(args, Cli::command()),
            Command::Man(args) => generate::man(args, Cli::command()),
        }
    }
}

/// The causes of `error` joined with ": ", on one line. A cause is left
/// out when the message before it already ends with it: many errors of the
/// engine and the bus print their source themselves.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.root_cause().downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// The engine logs through `tracing`: to stderr, warnings and errors unless
/// `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let colors = io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(colors).init();
}
