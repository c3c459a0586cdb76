//! `ringest stats`: a stage's socket statistics as a table, redrawn for
//! each record the stage publishes (once a second): connections of a TCP
//! stage (SocketStats), sockets of a UDP stage (UdpSocketStats).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::num::NonZeroU64;

use anyhow::Context;
use engine::records::{self, ReceivePath, SocketStats, TrafficStats, UdpSocketCounters, UdpSocketStats};
use engine::{SOCKET_STATS, channel_name};
use shm_bus::{BusDir, Reader, ReaderOptions, StartAt};

use crate::follow::follow;
use crate::human;
use crate::log::json::socket_stats as socket_stats_json;
use crate::log::json::udp_socket_stats as udp_socket_stats_json;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The stage, as named in the engine's configuration.
    stage: String,
    /// Exits after this many updates.
    #[arg(long, value_name = "N")]
    count: Option<NonZeroU64>,
    /// Prints each update as a JSON line (as `ringest tail --json` prints
    /// the stage's socket_stats records) instead of a table.
    #[arg(long)]
    json: bool,
}

/// A statistics record of either kind of stage.
enum Stats {
    Tcp(SocketStats),
    Udp(UdpSocketStats),
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
        let decoded = match sample.kind() {
            records::KIND_SOCKET_STATS => {
                records::decode(sample.payload()).map(Stats::Tcp).context("a socket stats record")
            }
            records::KIND_UDP_SOCKET_STATS => {
                records::decode(sample.payload()).map(Stats::Udp).context("a UDP socket stats record")
            }
            _ => return Ok(0),
        };
        if !sample.is_valid() {
            return Ok(0); // overwritten while decoding: the next one comes soon
        }
        drop(sample);
        let stats = decoded?;
        if args.json {
            let value = match &stats {
                Stats::Tcp(stats) => socket_stats_json(stats),
                Stats::Udp(stats) => udp_socket_stats_json(stats),
            };
            writeln!(out, "{value}")?;
            return Ok(1);
        }
        if redraw {
            write!(out, "{CLEAR_SCREEN}")?;
        } else if !first {
            writeln!(out)?;
        }
        let lines = match &stats {
            Stats::Tcp(stats) => render(&args.stage, stats),
            Stats::Udp(stats) => render_udp(&args.stage, stats),
        };
        for line in lines {
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

/// A summary line for the UDP stage, then a row per socket (one per
/// executor) and one for all of them.
fn render_udp(stage: &str, stats: &UdpSocketStats) -> Vec<String> {
    let path = match stats.receive_path {
        ReceivePath::GlommioRead => "recvmmsg when readable",
        ReceivePath::IoUringMultishot => "io_uring multishot recvmsg",
    };
    let mut lines = vec![format!(
        "{stage}  {}  {}, {} groups ({path})",
        human::utc(stats.time_ns),
        human::plural(stats.sockets.len() as u64, "socket"),
        stats.groups_published,
    )];
    let mut table = Table::new(
        &[
            "EXECUTOR",
            "LOCAL",
            "IN/S",
            "DATAGRAMS/S",
            "MAX DATAGRAM",
            "DATAGRAMS",
            "IN",
            "KERNEL DROPS",
            "TRUNCATED",
            "RING-FULL STALLS",
            "EGRESS SENT",
            "EGRESS DROPS",
            "RCVBUF",
        ],
        2,
    );
    for socket in &stats.sockets {
        let local = SocketAddr::from(socket.local).to_string();
        table.push(udp_row(socket.executor.to_string(), local, socket));
    }
    table.push(udp_row("all".to_owned(), String::new(), &stats.total()));
    lines.extend(table.lines());
    lines
}

fn udp_row(executor: String, local: String, c: &UdpSocketCounters) -> Vec<String> {
    vec![
        executor,
        local,
        human::bytes(c.bytes_per_s),
        human::count(c.datagrams_per_s),
        human::bytes(c.max_datagram_size as f64),
        c.datagrams.to_string(),
        human::bytes(c.bytes as f64),
        c.kernel_drops.to_string(),
        c.truncated.to_string(),
        c.ring_full_stalls.to_string(),
        c.egress_sent.to_string(),
        c.egress_drops.to_string(),
        human::bytes(c.kernel_receive_buffer_b as f64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_stage_shows_a_row_per_socket_and_their_total() {
        let socket = |executor: u32, datagrams: u64, kernel_drops: u64| UdpSocketCounters {
            executor,
            local: "0.0.0.0:2368".parse::<SocketAddr>().unwrap().into(),
            datagrams,
            bytes: datagrams * 1206,
            datagrams_per_s: 1000.0,
            bytes_per_s: 1_206_000.0,
            kernel_drops,
            truncated: executor.into(),
            ring_full_stalls: 3,
            max_datagram_size: 1206,
            egress_sent: 2,
            egress_drops: 1,
            kernel_receive_buffer_b: 4 << 20,
        };
        let stats = UdpSocketStats {
            time_ns: 1_700_000_000_123_456_789,
            interval_ns: 1_000_000_000,
            receive_path: ReceivePath::IoUringMultishot,
            groups_published: 77,
            sockets: vec![socket(0, 5000, 0), socket(1, 7000, 12)],
        };
        assert_eq!(
            render_udp("lidar", &stats),
            [
                "lidar  2023-11-14T22:13:20.123456Z  2 sockets, 77 groups (io_uring multishot recvmsg)",
                "EXECUTOR  LOCAL            IN/S  DATAGRAMS/S  MAX DATAGRAM  DATAGRAMS        IN  KERNEL DROPS  TRUNCATED  RING-FULL STALLS  EGRESS SENT  EGRESS DROPS   RCVBUF",
                "0         0.0.0.0:2368  1.2 MiB         1.0k       1.2 KiB       5000   5.8 MiB             0          0                 3            2             1  4.0 MiB",
                "1         0.0.0.0:2368  1.2 MiB         1.0k       1.2 KiB       7000   8.1 MiB            12          1                 3            2             1  4.0 MiB",
                "all                     2.3 MiB         2.0k       1.2 KiB      12000  13.8 MiB            12          1                 6            4             2  8.0 MiB",
            ]
        );
    }
}
