//! Operating the daemon: install-time outputs (version, completions, man
//! page), the Prometheus endpoint and the systemd notify protocol, all
//! through the real `ringest` binary.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn ringest_alone() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.env_remove("RUST_LOG");
    command
}

/// Every subcommand of `ringest --help`.
fn subcommands() -> Vec<String> {
    let help = stdout_of(ringest_alone(), &["--help"]);
    let listed = help.split("Commands:").nth(1).expect("a Commands section");
    let names: Vec<String> = listed
        .lines()
        .skip(1) // the rest of the "Commands:" line
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "{help}");
    names
}

#[test]
fn completions_for_each_shell_name_every_subcommand() {
    let subcommands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(ringest_alone(), &["completions", shell]);
        assert!(script.lines().count() > 20, "{shell}: {script}");
        for name in &subcommands {
            assert!(script.contains(name.as_str()), "{shell} completion lacks {name}");
        }
        // Options of subcommands are completed too.
        assert!(script.contains("print-default-config"), "{shell}");
    }
    let (code, stderr) = failure_of(ringest_alone(), &["completions", "cmd.exe"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn the_man_page_documents_every_subcommand_and_each_has_its_own() {
    let page = stdout_of(ringest_alone(), &["man"]);
    assert!(page.starts_with(".ie"), "not roff: {page}");
    assert!(page.contains(".TH ringest 1"), "{page}");
    for name in subcommands() {
        assert!(page.contains(&format!("ringest\\-{name}(1)")), "ringest(1) lacks {name}");
        let sub = stdout_of(ringest_alone(), &["man", &name]);
        assert!(sub.contains(&format!(".TH ringest-{name} 1")), "{sub}");
    }
    let run = stdout_of(ringest_alone(), &["man", "run"]);
    assert!(run.contains("\\-\\-config") && run.contains("\\-\\-bus"), "{run}");
    let (code, stderr) = failure_of(ringest_alone(), &["man", "nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no subcommand \"nosuch\""), "{stderr}");
}

#[test]
fn version_names_the_git_commit_built_from() {
    let version = stdout_of(ringest_alone(), &["--version"]);
    let expected_commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_owned());
    let commit = match expected_commit {
        Some(commit) => commit,
        // Not a git checkout (a source tarball): build.rs says so.
        None => "unknown".to_owned(),
    };
    assert_eq!(version.trim(), format!("ringest {} (commit {commit})", env!("CARGO_PKG_VERSION")));
}

/// An HTTP/1.1 request to `address`: the status line, the headers (names in
/// lower case) and the body.
fn http(address: SocketAddr, request: &str) -> (String, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {response}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    assert_eq!(headers.get("content-length"), Some(&body.len().to_string()), "{head}");
    (status, headers, body.to_owned())
}

fn scrape(address: SocketAddr, accept: &str) -> (String, String) {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\n\r\n");
    let (status, headers, body) = http(address, &request);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    (headers["content-type"].clone(), body)
}

/// The interpreter the Python-based tests run: `$RINGEST_TEST_PYTHON`
/// (scripts/test sets it to its virtual environment), else `python3`.
fn python() -> String {
    std::env::var("RINGEST_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Parses an exposition with the Python `prometheus_client` parser of
/// `format` ("prometheus": text 0.0.4, "openmetrics": OpenMetrics 1.0):
/// the families as JSON, `{name, type, samples: [[name, labels, value]]}`.
fn parse_with_python(format: &str, exposition: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families as prometheus
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
except ImportError:
    sys.exit(3)
parse = openmetrics if sys.argv[1] == "openmetrics" else prometheus
families = [
    {"name": f.name, "type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    for f in parse(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{} missing ({e}): run scripts/test (or apt-get install python3)", python())
        });
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.code() == Some(3) {
        panic!("prometheus_client missing: run scripts/test (or pip install prometheus_client)");
    }
    assert!(output.status.success(), "the {format} parser rejected the exposition: {}", text(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout).unwrap().as_array().unwrap().clone()
}

/// The value of sample `name` whose labels include all of `labels`, among
/// parsed `families`; checks that its family has type `kind`.
fn sample(families: &[Value], name: &str, kind: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.iter().find_map(|family| {
        family["samples"].as_array().unwrap().iter().find_map(|s| {
            let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v);
            if matches {
                assert_eq!(family["type"], kind, "type of {name}");
            }
            matches.then(|| s[2].as_f64().unwrap())
        })
    })
}

/// The value of a sample that must exist.
fn value(families: &[Value], name: &str, kind: &str, labels: &[(&str, &str)]) -> f64 {
    sample(families, name, kind, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {families:#?}"))
}

/// The metrics address `ringest run` printed.
fn metrics_address(daemon: &Daemon) -> SocketAddr {
    let line = daemon.stdout.iter().find_map(|l| l.strip_prefix("metrics: http://"));
    let line = line.unwrap_or_else(|| panic!("no metrics line: {:#?}", daemon.stdout));
    line.strip_suffix("/metrics").unwrap().parse().unwrap()
}

#[test]
fn the_metrics_endpoint_counts_what_the_stage_received_and_who_reads_it() {
    let t = bus();
    let config = format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}", server_config("m"));
    let mut daemon = Daemon::start(ringest(&t.bus), &config);
    let metrics = metrics_address(&daemon);
    let mut collector = Collector::attach(&t.bus, "m");

    let payloads = [random_bytes(1, 150_000), random_bytes(2, 37_001)];
    let mut peers = Vec::new();
    for payload in &payloads {
        let mut client = TcpStream::connect(daemon.addr("m")).unwrap();
        client.write_all(payload).unwrap();
        peers.push((client.local_addr().unwrap(), client));
    }
    for ((peer, _), payload) in peers.iter().zip(&payloads) {
        collector.until("every byte", |c| c.received_from(*peer).len() >= payload.len());
        assert_eq!(collector.received_from(*peer), payload.as_slice());
    }
    let total: usize = payloads.iter().map(Vec::len).sum();

    // The stage publishes its statistics once a second, and a reader
    // accounts for what it read in its slot while it waits (as `ls` shows
    // it): scrape until both cover everything, then check every figure in
    // both formats.
    let pid = std::process::id().to_string();
    let reader = [("channel", "m/packet_group"), ("reader_pid", pid.as_str()), ("mode", "gated")];
    let deadline = Instant::now() + DEADLINE;
    let families = loop {
        let (content_type, body) = scrape(metrics, "text/plain");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let families = parse_with_python("prometheus", &body);
        let received = sample(&families, "ringest_stage_received_bytes_total", "counter", &[("stage", "m")]);
        let read = sample(&families, "ringest_reader_received_records_total", "counter", &reader);
        if received == Some(total as f64) && read == Some(collector.records as f64) {
            break families;
        }
        assert!(received.unwrap_or(0.0) <= total as f64, "more bytes than were sent: {body}");
        assert!(Instant::now() < deadline, "the metrics never counted {total} bytes and the reader: {body}");
        collector.pump(Duration::from_millis(200));
    };
    let (content_type, body) = scrape(metrics, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    let openmetrics = parse_with_python("openmetrics", &body);

    for families in [&families, &openmetrics] {
        let stage = [("stage", "m")];
        assert_eq!(value(families, "ringest_stage_received_bytes_total", "counter", &stage), total as f64);
        assert_eq!(value(families, "ringest_stage_open_connections", "gauge", &stage), 2.0);
        let packets = value(families, "ringest_stage_received_packets_total", "counter", &stage);
        assert!(packets >= 2.0, "{packets} packets");
        assert!(value(families, "ringest_stage_groups_published_total", "counter", &stage) >= 1.0);
        for name in ["ringest_stage_egress_drops_total", "ringest_stage_rejected_connections_total"] {
            assert_eq!(value(families, name, "counter", &stage), 0.0, "{name}");
        }
        for ((peer, _), payload) in peers.iter().zip(&payloads) {
            let peer = peer.to_string();
            let labels = [("stage", "m"), ("peer", peer.as_str())];
            let bytes = value(families, "ringest_connection_received_bytes_total", "counter", &labels);
            assert_eq!(bytes, payload.len() as f64, "connection from {peer}");
        }
        // What `ls` shows: the channel's records, and this test's reader of them.
        let channel = [("channel", "m/packet_group")];
        let records = value(families, "ringest_channel_records_written_total", "counter", &channel);
        assert_eq!(records, collector.records as f64);
        assert_eq!(value(families, "ringest_channel_ring_full_total", "counter", &channel), 0.0);
        assert_eq!(value(families, "ringest_channel_live", "gauge", &channel), 1.0);
        assert_eq!(value(families, "ringest_reader_received_records_total", "counter", &reader), records);
        assert_eq!(value(families, "ringest_reader_lag_records", "gauge", &reader), 0.0);
        assert_eq!(value(families, "ringest_reader_lost_records_total", "counter", &reader), 0.0);
    }

    // Only GET /metrics is served.
    let (status, _, _) = http(metrics, "GET / HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _, _) = http(metrics, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    drop(peers);
    assert!(daemon.stop().success());
    assert!(TcpStream::connect(metrics).is_err(), "still serving metrics after the daemon stopped");
}

#[test]
fn without_a_metrics_table_nothing_listens() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "quiet");
    assert!(!daemon.stdout.iter().any(|l| l.starts_with("metrics")), "{:#?}", daemon.stdout);
    assert!(daemon.stop().success());
}
