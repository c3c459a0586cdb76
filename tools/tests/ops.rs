//! Operating the daemon: install-time outputs (version, completions, man
//! page), the Prometheus endpoint and the systemd notify protocol, all
//! through the real `ringest` binary.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
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
fn the_metrics_endpoint_counts_what_a_udp_stage_received_per_socket() {
    let t = bus();
    let config = "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nname = \"u\"\naddress = \"127.0.0.1:0\"\n\
                  ring_size_b = 4194304\nmax_datagram_size_b = 1000\nkernel_receive_buffer_size_b = 8388608\n";
    let mut daemon = Daemon::start(ringest(&t.bus), config);
    let metrics = metrics_address(&daemon);
    let line = daemon.stdout.iter().find_map(|l| l.strip_prefix("stage u: receiving UDP on "));
    let address: SocketAddr = line.unwrap_or_else(|| panic!("{:#?}", daemon.stdout)).parse().unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagrams: Vec<Vec<u8>> = (0..50).map(|i| random_bytes(i, 10 * i as usize)).collect();
    for datagram in &datagrams {
        sender.send_to(datagram, address).unwrap();
    }
    sender.send_to(&random_bytes(7, 1500), address).unwrap(); // kept truncated to 1000 bytes
    let bytes = datagrams.iter().map(Vec::len).sum::<usize>() + 1000;

    // The stage publishes its statistics once a second: scrape until they
    // cover every datagram, then check every UDP figure in both formats.
    let local = address.to_string();
    let socket = [("stage", "u"), ("executor", "0"), ("local", local.as_str())];
    let deadline = Instant::now() + DEADLINE;
    let families = loop {
        let (_, body) = scrape(metrics, "text/plain");
        let families = parse_with_python("prometheus", &body);
        if sample(&families, "ringest_udp_datagrams_total", "counter", &socket) == Some(51.0) {
            break families;
        }
        assert!(Instant::now() < deadline, "the metrics never counted 51 datagrams: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, body) = scrape(metrics, "application/openmetrics-text;version=1.0.0");
    let openmetrics = parse_with_python("openmetrics", &body);
    for families in [&families, &openmetrics] {
        let counter = |name| value(families, name, "counter", &socket);
        assert_eq!(counter("ringest_udp_received_bytes_total"), bytes as f64);
        assert_eq!(counter("ringest_udp_truncated_total"), 1.0);
        for name in [
            "ringest_udp_kernel_drops_total",
            "ringest_udp_ring_full_stalls_total",
            "ringest_udp_egress_sent_total",
            "ringest_udp_egress_drops_total",
        ] {
            assert_eq!(counter(name), 0.0, "{name}");
        }
        let buffer = value(families, "ringest_udp_kernel_receive_buffer_bytes", "gauge", &socket);
        assert!(buffer >= 8_388_608.0, "receive buffer {buffer}");
        let stage = [("stage", "u")];
        assert!(value(families, "ringest_stage_groups_published_total", "counter", &stage) >= 1.0);
        assert!(value(families, "ringest_stage_stats_age_seconds", "gauge", &stage) < 5.0);
        let channel = [("channel", "u/packet_group")];
        assert!(value(families, "ringest_channel_records_written_total", "counter", &channel) >= 1.0);
        assert_eq!(value(families, "ringest_channel_live", "gauge", &channel), 1.0);
        // Connections are a TCP stage's: none here.
        assert!(sample(families, "ringest_stage_open_connections", "gauge", &stage).is_none());
    }
    assert!(daemon.stop().success());
}

#[test]
fn without_a_metrics_table_nothing_listens() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "quiet");
    assert!(!daemon.stdout.iter().any(|l| l.starts_with("metrics")), "{:#?}", daemon.stdout);
    assert!(daemon.stop().success());
}

/// The service manager's end of `$NOTIFY_SOCKET`: a datagram socket, bound
/// to a path or (`@name`) in the abstract namespace.
struct NotifySocket {
    socket: UnixDatagram,
    /// The value of `$NOTIFY_SOCKET`.
    address: String,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn at_path() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self { socket, address: path.to_str().unwrap().to_owned(), _dir: dir }
    }

    fn abstract_name() -> Self {
        let name = format!("ringest-test-{}-{:?}", std::process::id(), Instant::now());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Self { socket, address: format!("@{name}"), _dir: tempfile::tempdir().unwrap() }
    }

    /// The next message within `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        let end = Instant::now() + wait;
        let mut buf = [0; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => return Some(text(&buf[..n])),
                // A signal (a child's SIGCHLD): wait on for what is left.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return None;
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Every message of the next `period`.
    fn during(&self, period: Duration) -> Vec<String> {
        let end = Instant::now() + period;
        std::iter::from_fn(|| {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() { None } else { self.next(left) }
        })
        .collect()
    }

    /// Messages until one has the line `line` (that one last).
    fn until_line(&self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen: Vec<String> = Vec::new();
        while !seen.last().is_some_and(|m| has_line(m, line)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {line} from the daemon; it sent {seen:#?}");
            seen.extend(self.next(left));
        }
        seen
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

fn count_lines(messages: &[String], line: &str) -> usize {
    messages.iter().filter(|m| has_line(m, line)).count()
}

/// `ringest run` as systemd starts a `Type=notify` service with
/// `WatchdogSec=`: `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (no
/// `$WATCHDOG_PID`: the variables are meant for this process).
struct Service {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl Service {
    fn start(bus: &shm_bus::BusDir, config: &str, notify: &NotifySocket, watchdog: Duration) -> Self {
        Self::start_for(bus, config, notify, watchdog, None)
    }

    /// As systemd does when `$WATCHDOG_PID` names the process the watchdog
    /// is meant for.
    fn start_for(
        bus: &shm_bus::BusDir,
        config: &str,
        notify: &NotifySocket,
        watchdog: Duration,
        watchdog_pid: Option<u32>,
    ) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        let mut command = ringest(bus);
        match watchdog_pid {
            Some(pid) => command.env("WATCHDOG_PID", pid.to_string()),
            None => command.env_remove("WATCHDOG_PID"),
        };
        let child = command
            .args(["run", "--config"])
            .arg(file.path())
            .env("NOTIFY_SOCKET", &notify.address)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, _config: file }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM; the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ringest run did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn systemd_hears_ready_once_the_port_accepts_then_watchdog_pings_and_stopping() {
    let t = bus();
    // The port is taken: the stage retries binding and the daemon is not ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let config = format!("[[tcp_server]]\nname = \"sd\"\naddress = \"{address}\"\nring_size_b = 4194304\n");
    let notify = NotifySocket::at_path();
    let mut service = Service::start(&t.bus, &config, &notify, Duration::from_millis(600));

    let starting = notify.during(Duration::from_millis(1500));
    assert_eq!(count_lines(&starting, "READY=1"), 0, "ready while the port is taken: {starting:#?}");
    assert!(has_line(&starting.concat(), "STATUS=waiting for stage sd to listen"), "{starting:#?}");
    // The executors run meanwhile: the watchdog hears from them (every 300 ms).
    assert!(count_lines(&starting, "WATCHDOG=1") >= 2, "{starting:#?}");

    drop(taken);
    let until_ready = notify.until_line("READY=1");
    // Ready means the port accepts now.
    TcpStream::connect(address).expect("READY=1 before the port accepts");
    assert!(has_line(until_ready.last().unwrap(), "STATUS=running 1 stage"), "{until_ready:#?}");

    let running = notify.during(Duration::from_millis(1500));
    assert!(count_lines(&running, "WATCHDOG=1") >= 3, "{running:#?}");

    assert!(service.terminate().success());
    let stopping = notify.until_line("STOPPING=1");
    assert!(has_line(stopping.last().unwrap(), "STATUS=stopping (SIGTERM)"), "{stopping:#?}");
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let t = bus();
    let notify = NotifySocket::at_path();
    // systemd sets $WATCHDOG_PID when the variables may reach other processes.
    let other = std::process::id();
    let mut service =
        Service::start_for(&t.bus, &server_config("other"), &notify, Duration::from_millis(200), Some(other));
    notify.until_line("READY=1");
    let running = notify.during(Duration::from_millis(800));
    assert_eq!(count_lines(&running, "WATCHDOG=1"), 0, "{running:#?}");
    assert!(service.terminate().success());
    notify.until_line("STOPPING=1");
}

/// The threads of process `pid` that executor `name` runs on: glommio
/// names the executor's thread `<name>-<executor id>`, and the thread of
/// its blocking-operation pool inherits that name.
fn executor_threads(pid: i32, name: &str) -> Vec<nix::unistd::Pid> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let prefix = format!("{name}-");
    let tids: Vec<nix::unistd::Pid> = tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            comm.starts_with(&prefix).then(|| nix::unistd::Pid::from_raw(tid))
        })
        .collect();
    assert!(!tids.is_empty(), "no thread of executor {name} in process {pid}");
    tids
}

/// Threads this test stopped with ptrace, let go when dropped: before the
/// daemon is killed, since the threads of a killed process wait for their
/// tracer, which would be this very thread, waiting for the process.
struct Stopped(Vec<nix::unistd::Pid>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for &thread in &self.0 {
            nix::sys::ptrace::detach(thread, None).unwrap_or_else(|e| panic!("ptrace detach {thread}: {e}"));
        }
    }
}

#[test]
fn a_wedged_executor_stops_the_watchdog_pings_until_it_runs_again() {
    use nix::sys::ptrace;
    use nix::sys::wait::{WaitPidFlag, waitpid};

    let t = bus();
    let notify = NotifySocket::abstract_name();
    let watchdog = Duration::from_secs(1); // a ping every 500 ms
    let mut service = Service::start(&t.bus, &server_config("w"), &notify, watchdog);
    notify.until_line("READY=1");
    let healthy = notify.during(Duration::from_millis(1200));
    assert!(count_lines(&healthy, "WATCHDOG=1") >= 2, "{healthy:#?}");

    // Wedge the stage's executor: a ptrace stop halts just the threads
    // stopped (the other threads of the daemon, the watchdog's among them,
    // run on).
    let mut stopped = Stopped(Vec::new());
    for thread in executor_threads(service.pid(), "w-0") {
        ptrace::seize(thread, ptrace::Options::empty())
            .unwrap_or_else(|e| panic!("ptrace: {e}: this test needs CAP_SYS_PTRACE (root)"));
        stopped.0.push(thread);
        ptrace::interrupt(thread).unwrap();
        waitpid(thread, Some(WaitPidFlag::__WALL)).unwrap();
    }

    // A check that still sees beats from before the stop may ping once.
    notify.during(watchdog / 2 + Duration::from_millis(200));
    let wedged = notify.during(Duration::from_millis(1500));
    assert_eq!(count_lines(&wedged, "WATCHDOG=1"), 0, "pinged while an executor was wedged: {wedged:#?}");
    assert!(
        wedged.iter().any(|m| m.contains("STATUS=watchdog: executor not running its tasks: w-0")),
        "{wedged:#?}"
    );

    // Running again, it beats again, and the pings resume.
    drop(stopped);
    let resumed = notify.until_line("WATCHDOG=1");
    assert!(has_line(resumed.last().unwrap(), "STATUS=running"), "{resumed:#?}");
    assert!(service.terminate().success());
}

#[test]
fn the_packaged_unit_runs_the_packaged_config_under_notify_with_a_watchdog() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let config = engine::config::EngineConfig::from_file(&root.join("ringest.toml")).unwrap();
    assert!(config.metrics.listen.is_some());
    assert!(!config.tcp_server.is_empty() || !config.tcp_client.is_empty());
    let unit = std::fs::read_to_string(root.join("ringest.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit.lines().filter_map(|l| l.split_once('=')).collect();
    let value = |key: &str| settings.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    assert_eq!(value("Type"), Some("notify"));
    assert_eq!(value("ExecStart"), Some("/usr/local/bin/ringest run --config /etc/ringest/ringest.toml"));
    for key in ["WatchdogSec", "LimitMEMLOCK", "LimitNOFILE", "ProtectSystem", "ProtectHome", "PrivateTmp"] {
        assert!(value(key).is_some(), "{key}");
    }
    assert_eq!(value("Restart"), Some("on-failure"));
    assert_eq!(value("AmbientCapabilities"), Some("CAP_SYS_NICE"));
    assert_eq!(value("ReadWritePaths"), Some("/dev/shm"));
    assert_eq!(value("NoNewPrivileges"), Some("yes"));
    // The bus of the packaged config is where the sandbox lets it write.
    assert!(config.bus.dir.unwrap().starts_with("/dev/shm"));
}
