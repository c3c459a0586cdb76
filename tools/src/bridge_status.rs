//! `ringest bridge status NAME`: a bridge's link and per channel what was
//! sent, acknowledged, in flight, resumed and lost, read from the status
//! record the bridge publishes once a second on `<NAME>/bridge_status`, so
//! it works from any process on the bus.

use std::io::Write;
use std::num::NonZeroU64;

use anyhow::Context;
use bridge::{KIND_BRIDGE_STATUS, STATUS_CHANNEL, StatusRecord};
use shm_bus::{BusDir, Reader, ReaderOptions, StartAt};

use crate::follow::follow;
use crate::human;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct BridgeArgs {
    #[command(subcommand)]
    command: BridgeCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BridgeCommand {
    /// Shows a bridge's link (peer, TLS, links made, round trip, refused
    /// connections, last error) and per channel the records sent,
    /// acknowledged and in flight, resumes, losses and rates.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The bridge, as named in its `[[bridge]]` table.
    name: String,
    /// Prints this many updates (one a second) [default: 1, the latest].
    #[arg(long, value_name = "N")]
    count: Option<NonZeroU64>,
    /// Prints each update as a JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BridgeArgs, bus: &BusDir) -> anyhow::Result<()> {
    let BridgeCommand::Status(args) = args.command;
    let channel = format!("{}/{STATUS_CHANNEL}", args.name);
    let mut reader = Reader::attach(bus, &channel, ReaderOptions::lossy().start(StartAt::Latest))
        .with_context(|| format!("bridge {} (is it running on this bus?)", args.name))?;
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let count = args.count.map_or(1, NonZeroU64::get);
    follow(&mut reader, Some(count), |sample| {
        if sample.kind() != KIND_BRIDGE_STATUS {
            return Ok(0);
        }
        let decoded = engine::records::decode::<StatusRecord>(sample.payload());
        if !sample.is_valid() {
            return Ok(0); // overwritten while decoding: the next one comes soon
        }
        drop(sample);
        let status = decoded.context("a bridge status record")?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&status)?)?;
            return Ok(1);
        }
        if !first {
            writeln!(out)?;
        }
        first = false;
        for line in render(&args.name, &status) {
            writeln!(out, "{line}")?;
        }
        Ok(1)
    })
}

/// A line on the link, then a row per exported and imported channel.
fn render(name: &str, status: &StatusRecord) -> Vec<String> {
    let security = if status.tls { "TLS" } else { "plaintext" };
    let link = if status.connected {
        format!("connected to {} ({security})", status.peer)
    } else if status.peer.is_empty() {
        format!("not connected ({security})")
    } else {
        format!("not connected (last peer {}, {security})", status.peer)
    };
    let rtt = status.rtt_ns.map_or("-".to_owned(), |ns| format!("{:.2} ms", ns as f64 / 1e6));
    let mut lines = vec![format!(
        "bridge {name}: {link}; {} made, round trip {rtt}, {} refused",
        human::plural(status.links, "link"),
        status.refused
    )];
    if !status.last_error.is_empty() {
        lines.push(format!("last error: {}", status.last_error));
    }
    let mut table = Table::new(
        &["CHANNEL", "WAY", "RECORDS", "ACKED", "IN FLIGHT", "RESUMES", "LOST", "RECORDS/S", "BYTES/S"],
        2,
    );
    for e in &status.exports {
        table.push(vec![
            e.name.clone(),
            "sent".into(),
            e.records_sent.to_string(),
            e.records_acked.to_string(),
            e.in_flight.to_string(),
            e.resumes.to_string(),
            e.lost.to_string(),
            human::count(e.records_per_s),
            format!("{}/s", human::bytes(e.bytes_per_s)),
        ]);
    }
    for i in &status.imports {
        table.push(vec![
            i.name.clone(),
            "received".into(),
            i.records.to_string(),
            "-".into(),
            "-".into(),
            i.resumes.to_string(),
            i.gaps.to_string(),
            human::count(i.records_per_s),
            format!("{}/s", human::bytes(i.bytes_per_s)),
        ]);
    }
    lines.extend(table.lines());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge::{ExportRecord, ImportRecord};

    #[test]
    fn the_table_shows_the_link_and_a_row_per_channel() {
        let status = StatusRecord {
            connected: true,
            tls: true,
            peer: "10.0.0.2:7500".into(),
            links: 2,
            rtt_ns: Some(250_000),
            exports: vec![ExportRecord {
                name: "lidar/packet_group".into(),
                records_sent: 10,
                records_acked: 8,
                in_flight: 2,
                resumes: 2,
                bytes_per_s: 2048.0,
                records_per_s: 5.0,
                ..Default::default()
            }],
            imports: vec![ImportRecord {
                name: "b/cam/frames".into(),
                records: 7,
                gaps: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = render("to-b", &status);
        assert_eq!(
            lines[0],
            "bridge to-b: connected to 10.0.0.2:7500 (TLS); 2 links made, round trip 0.25 ms, 0 refused"
        );
        assert!(lines[1].starts_with("CHANNEL"), "{lines:?}");
        let sent: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(sent, ["lidar/packet_group", "sent", "10", "8", "2", "2", "0", "5", "2.0", "KiB/s"]);
        let received: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(received, ["b/cam/frames", "received", "7", "-", "-", "0", "1", "0", "0", "B/s"]);
    }
}
