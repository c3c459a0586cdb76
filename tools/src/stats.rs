//! `ringest stats`: a stage's socket statistics as a table, redrawn for
//! each record the stage publishes (once a second).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::num::NonZeroU64;

use anyhow::Context;
use engine::records::{self, ReceivePath, SocketStats, TrafficStats};
use engine::{SOCKET_STATS, channel_name};
use shm_bus::{BusDir, Reader, ReaderOptions, StartAt};

use crate::follow::follow;
use crate::human;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The stage, as named in the engine's configuration.
    stage: String,
    /// Exits after this many updates.
    #[arg(long, value_name = "N")]
    count: Option<NonZeroU64>,
}

/// Moves the cursor home and clears the terminal.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

pub fn run(args: StatsArgs, bus: &BusDir) -> anyhow::Result<()> {
    let channel = channel_name(&args.stage, SOCKET_STATS);
    // From the latest record: the current figures at once.
    let mut reader = Reader::attach(bus, &channel, ReaderOptions::lossy().start(StartAt::Latest))
        .with_context(|| format!("stage {}", args.stage))?;
    let mut out = std::io::stdout().lock();
    // On a terminal the table is redrawn in place; elsewhere (a file, a
    // pipe) each update follows the previous one.
    let redraw = out.is_terminal();
    let mut first = true;
    follow(&mut reader, args.count.map(NonZeroU64::get), |sample| {
        if sample.kind() != records::KIND_SOCKET_STATS {
            return Ok(0);
        }
        let decoded = records::decode::<SocketStats>(sample.payload());
        if !sample.is_valid() {
            return Ok(0); // overwritten while decoding: the next one comes soon
        }
        drop(sample);
        let stats = decoded.context("a socket stats record")?;
        if redraw {
            write!(out, "{CLEAR_SCREEN}")?;
        } else if !first {
            writeln!(out)?;
        }
        for line in render(&args.stage, &stats) {
            writeln!(out, "{line}")?;
        }
        first = false;
        Ok(1)
    })
}

/// A summary line for the stage, then a row per open connection and one
/// for the whole stage.
fn render(stage: &str, stats: &SocketStats) -> Vec<String> {
    let summary = &stats.stage;
    let path = match stats.receive_path {
        ReceivePath::GlommioRead => "glommio read",
        ReceivePath::IoUringMultishot => "io_uring multishot",
    };
    let binding = match summary.bind_failures {
        0 => String::new(),
        n => format!(", {} to bind", human::plural(n, "failed attempt")),
    };
    let mut lines = vec![format!(
        "{stage}  {}  {} open, {} rejected, {} groups, {} backpressure stalls, {} receives out of buffers{binding} ({path})",
        human::utc(stats.time_ns),
        summary.open_connections,
        summary.rejected_connections,
        summary.groups_published,
        summary.backpressure_stalls,
        summary.receive_buffer_exhaustions,
    )];
    let mut table = Table::new(
        &[
            "CONNECTION",
            "PEER",
            "IN/S",
            "PACKETS/S",
            "MEAN PACKET",
            "MAX PACKET",
            "IN",
            "OUT/S",
            "OUT",
            "EGRESS DROPS",
        ],
        2,
    );
    for connection in &stats.connections {
        let peer = SocketAddr::from(connection.peer).to_string();
        table.push(traffic_row(connection.connection_id.to_string(), peer, &connection.traffic));
    }
    table.push(traffic_row("all".to_owned(), String::new(), &summary.traffic));
    lines.extend(table.lines());
    lines
}

fn traffic_row(connection: String, peer: String, t: &TrafficStats) -> Vec<String> {
    vec![
        connection,
        peer,
        human::bytes(t.bytes_received_per_s),
        human::count(t.packets_received_per_s),
        human::bytes(t.mean_packet_size),
        human::bytes(t.max_packet_size as f64),
        human::bytes(t.bytes_received as f64),
        human::bytes(t.bytes_sent_per_s),
        human::bytes(t.bytes_sent as f64),
        t.egress_drops.to_string(),
    ]
}
