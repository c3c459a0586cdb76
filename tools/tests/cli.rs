//! The `ringest` command end to end: the real binary, real sockets on
//! 127.0.0.1, a private bus directory per test.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use engine::config::EngineConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shm_bus::BusDir;

/// What loadgen printed for one connection: bytes sent and their sha256.
fn loadgen_digests(stdout: &str) -> HashMap<SocketAddr, (usize, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                [local, "bytes", bytes, "messages", _, "sha256", digest] => {
                    Some((local.parse().ok()?, (bytes.parse().unwrap(), digest.to_owned())))
                }
                _ => None,
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_byte_loadgen_sends_reaches_the_bus_per_connection() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let mut collector = Collector::attach(&t.bus, "ingest");
    let addr = daemon.addr("ingest").to_string();
    let args = ["loadgen", &addr, "--connections", "4", "--size", "1000", "--rate", "2000", "--seconds", "1"];
    let mut loadgen = ringest(&t.bus).args(args).stdout(Stdio::piped()).spawn().unwrap();
    // Read while it sends: the reader is lossless, so the engine waits for it.
    let deadline = Instant::now() + DEADLINE;
    while loadgen.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "loadgen did not finish");
        collector.pump(Duration::from_millis(50));
    }
    let output = loadgen.wait_with_output().unwrap();
    assert!(output.status.success());
    let sent = loadgen_digests(&text(&output.stdout));
    assert_eq!(sent.len(), 4, "{}", text(&output.stdout));
    assert!(sent.values().all(|(bytes, _)| *bytes > 0));
    assert!(sent.values().map(|(bytes, _)| bytes).sum::<usize>() <= 2000 * 1000 + 4000, "rate exceeded");
    collector.until("every byte", |c| sent.iter().all(|(peer, (n, _))| c.received_from(*peer).len() >= *n));
    for (peer, (_, digest)) in &sent {
        assert_eq!(&hex(&Sha256::digest(collector.received_from(*peer))), digest, "connection {peer}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn run_prints_the_stages_and_their_channels_and_ls_lists_them() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "lidar");
    assert_eq!(daemon.stdout[0], format!("bus: {}", t.bus.path().display()));
    assert!(
        daemon
            .stdout
            .contains(&"  publishes lidar/packet_group, lidar/connection_events, lidar/socket_stats".into())
    );
    let _collector = Collector::attach(&t.bus, "lidar");

    let listing = stdout_of(ringest(&t.bus), &["ls"]);
    let header = listing.lines().next().unwrap_or_default();
    assert!(header.contains("RING BYTES") && header.contains("PAYLOAD"), "{header}");
    for channel in ["lidar/packet_group", "lidar/connection_events", "lidar/socket_stats"] {
        let row = listing.lines().find(|l| l.starts_with(channel)).unwrap_or_else(|| panic!("{listing}"));
        assert!(row.contains(&format!("pid {} alive", daemon.pid())), "{row}");
        assert!(row.contains("live"), "{row}");
    }
    let reader = format!("reader pid {} alive, gated", std::process::id());
    assert!(listing.contains(&reader), "{listing}");
    assert!(daemon.stop().success());
}

#[test]
fn a_corrupt_channel_is_listed_with_its_error() {
    let t = bus();
    std::fs::write(t.bus.path().join("junk.ring"), b"not a ring").unwrap();
    let listing = stdout_of(ringest(&t.bus), &["ls"]);
    let row = listing.lines().find(|l| l.starts_with("junk")).unwrap_or_else(|| panic!("{listing}"));
    assert!(row.contains("error:"), "{row}");
}

#[test]
fn run_connects_client_stages_and_publishes_what_the_server_sends() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    let config = format!("[[tcp_client]]\nname = \"gnss\"\naddress = \"{address}\"\n");
    let mut daemon = Daemon::start(ringest(&t.bus), &config);
    assert!(daemon.stdout.contains(&format!("stage gnss: connecting to {address}")), "{:#?}", daemon.stdout);
    let mut collector = Collector::attach(&t.bus, "gnss");
    let (mut connection, _) = server.accept().unwrap();
    connection.write_all(b"$GPGGA,123519").unwrap();
    collector.until("the bytes", |c| c.received_from(address) == b"$GPGGA,123519");
    assert!(daemon.stop().success());
}

#[test]
fn tail_prints_packets_and_events_as_json_lines_and_text() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let mut collector = Collector::attach(&t.bus, "ingest");
    let mut client = TcpStream::connect(daemon.addr("ingest")).unwrap();
    let peer = client.local_addr().unwrap();
    client.write_all(b"hello, tail").unwrap();
    collector.until("the bytes", |c| c.received_from(peer) == b"hello, tail");
    let packets = collector.packets.to_string();

    let json = stdout_of(
        ringest(&t.bus),
        &["tail", "ingest/packet_group", "--json", "--from", "oldest", "--count", &packets],
    );
    let packets: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!packets.is_empty());
    let mut data = String::new();
    for packet in &packets {
        assert_eq!(packet["type"], "packet", "{packet}");
        assert_eq!(packet["peer"], peer.to_string(), "{packet}");
        assert!(packet["connection_id"].is_u64() && packet["time_ns"].is_u64(), "{packet}");
        data += packet["data_hex"].as_str().unwrap();
    }
    assert_eq!(data, hex(b"hello, tail"));

    let events = stdout_of(
        ringest(&t.bus),
        &["tail", "ingest/connection_events", "--json", "--from", "oldest", "--count", "1"],
    );
    let event: Value = serde_json::from_str(events.trim()).unwrap();
    assert_eq!(
        (&event["type"], &event["event"]),
        (&"connection_event".into(), &"connected".into()),
        "{event}"
    );
    assert_eq!(event["peer"], peer.to_string());
    assert_eq!(event["connection_id"], packets[0]["connection_id"]);

    let text =
        stdout_of(ringest(&t.bus), &["tail", "ingest/packet_group", "--from", "oldest", "--count", "1"]);
    let line = text.lines().next().unwrap();
    assert!(line.contains(&format!("conn {}  {peer}", packets[0]["connection_id"])), "{line}");
    assert!(line.contains(&hex(b"hello")), "{line}");
    assert!(daemon.stop().success());
}

#[test]
fn tail_count_counts_the_packets_it_prints() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let mut collector = Collector::attach(&t.bus, "ingest");
    let addr = daemon.addr("ingest").to_string();
    // Eight connections at full speed: groups of several packets.
    let args = ["loadgen", &addr, "--connections", "8", "--size", "100", "--seconds", "20"];
    let mut loadgen = ringest(&t.bus).args(args).stdout(Stdio::null()).spawn().unwrap();
    collector.until("groups of several packets", |c| c.packets > c.records + 10);
    // The lossless collector keeps reading so the engine never stalls.
    let tail = ringest(&t.bus)
        .args(["tail", "ingest/packet_group", "--json", "--count", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut tail = tail;
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail did not finish");
        collector.pump(Duration::from_millis(20));
    }
    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success());
    let json = text(&output.stdout);
    let lines: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // A lossy tail of a stream at full speed may be lapped: its notices of
    // lost records are printed but not counted.
    assert!(lines.iter().all(|l| l["type"] == "packet" || l["type"] == "lost"), "{json}");
    let packets = lines.iter().filter(|l| l["type"] == "packet").count();
    assert_eq!(packets, 5, "--count 5 printed {packets} packets");
    loadgen.kill().unwrap();
    loadgen.wait().unwrap();
    assert!(daemon.stop().success());
}

#[test]
fn stats_prints_a_table_per_update() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let client = TcpStream::connect(daemon.addr("ingest")).unwrap();
    let peer = client.local_addr().unwrap().to_string();
    let output = stdout_of(ringest(&t.bus), &["stats", "ingest", "--count", "2"]);
    let summaries: Vec<&str> = output.lines().filter(|l| l.starts_with("ingest  ")).collect();
    assert_eq!(summaries.len(), 2, "{output}");
    assert_eq!(output.lines().filter(|l| l.starts_with("CONNECTION")).count(), 2, "{output}");
    assert!(output.lines().any(|l| l.starts_with("all ")), "{output}");
    // The client shows up once the engine has counted it.
    let deadline = Instant::now() + DEADLINE;
    while !stdout_of(ringest(&t.bus), &["stats", "ingest", "--count", "1"]).contains(&peer) {
        assert!(Instant::now() < deadline, "the connection never showed in the stats");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!output.contains('\x1b'), "no terminal control codes in a pipe");
    assert!(daemon.stop().success());
}

#[test]
fn send_writes_stdin_to_every_client_or_the_one_named() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let mut clients: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect(daemon.addr("ingest")).unwrap()).collect();
    let second = connection_id(&t.bus, "ingest", clients[1].local_addr().unwrap());
    connection_id(&t.bus, "ingest", clients[0].local_addr().unwrap());

    // The command waits until the clients' sockets took every byte: read
    // while it runs.
    let send = |input: &[u8], extra: &[&str]| SendCommand::start(&t.bus, input, extra);
    // More than one record's worth: it arrives whole and in order.
    let data = random_bytes(5, 300 << 10);
    let sending = send(&data, &[]);
    for client in &mut clients {
        assert!(read_exactly(client, data.len()) == data, "the bytes differ");
    }
    let said = sending.succeeds();
    assert!(said.starts_with(&format!("sent {} bytes", data.len())), "{said}");
    assert!(said.ends_with("5 records to every connection of stage ingest: 5 delivered\n"), "{said}");
    send(b"only you", &["--conn", &second.to_string()]).succeeds();
    send(b"all again", &[]).succeeds();
    assert_eq!(read_exactly(&mut clients[1], 17), b"only youall again");
    assert_eq!(read_exactly(&mut clients[0], 9), b"all again", "targeted bytes went to another client");
    assert!(daemon.stop().success());
}

/// `ringest send` running in the background with `input` on its stdin.
struct SendCommand(std::process::Child);

impl SendCommand {
    fn start(bus: &BusDir, input: &[u8], extra: &[&str]) -> Self {
        let mut child = ringest(bus)
            .args(["send", "ingest"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // A pipe holds 64 KiB: write from a thread, and close it at the end.
        std::thread::spawn(move || stdin.write_all(&input));
        Self(child)
    }

    fn output(self) -> std::process::Output {
        self.0.wait_with_output().unwrap()
    }

    /// Its stdout, once it succeeded.
    fn succeeds(self) -> String {
        let output = self.output();
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    }
}

/// Reads `stream` after `delay`, until nothing comes for two seconds.
fn read_late(mut stream: TcpStream, delay: Duration) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut received = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
}

#[test]
fn send_reports_every_drop_and_wait_paces_so_every_byte_arrives() {
    let t = bus();
    // A small, fixed socket send buffer: what the client has not read
    // waits in the stage's 1 MiB egress buffer.
    let config = format!("{}kernel_transmit_buffer_size_b = 65536\n", server_config("ingest"));
    let mut daemon = Daemon::start(ringest(&t.bus), &config);
    let data = random_bytes(9, 5 << 20);
    let digest = |bytes: &[u8]| hex(&Sha256::digest(bytes));
    for paced in [true, false] {
        let client = TcpStream::connect(daemon.addr("ingest")).unwrap();
        let id = connection_id(&t.bus, "ingest", client.local_addr().unwrap()).to_string();
        // The client reads only after a while, as a busy peer would.
        let reader = read_late(client, Duration::from_secs(2));
        let extra: &[&str] = if paced { &["--conn", &id, "--wait"] } else { &["--conn", &id] };
        let output = SendCommand::start(&t.bus, &data, extra).output();
        let received = reader.join().unwrap();
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        if paced {
            assert!(output.status.success(), "--wait: {stderr}");
            assert!(
                stdout.ends_with(&format!("connection {id} of stage ingest: 80 delivered\n")),
                "{stdout}"
            );
            assert_eq!(received.len(), data.len(), "--wait: bytes received");
            assert_eq!(digest(&received), digest(&data), "--wait: sha256 of what arrived");
        } else {
            assert_eq!(output.status.code(), Some(1), "without --wait: {stdout} {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains("dropped") && stderr.contains("egress buffer full"), "{stderr}");
            assert!(received.len() < data.len(), "nothing dropped: {} bytes arrived", received.len());
        }
    }
    assert!(daemon.stop().success());
}

#[test]
fn send_to_a_connection_that_is_not_open_fails() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let output = SendCommand::start(&t.bus, b"hello", &["--conn", "999"]).output();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("connection 999 of stage ingest is not open"), "{stderr}");
    let output = SendCommand::start(&t.bus, b"hello", &[]).output();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("stage ingest had no open connection for 1 record"), "{stderr}");
    // The outcomes are on the bus for any reader.
    let json = stdout_of(
        ringest(&t.bus),
        &["tail", "ingest/egress_outcomes", "--json", "--from", "oldest", "--count", "2"],
    );
    let outcomes: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(outcomes[0]["type"], "egress_outcome", "{json}");
    assert_eq!((&outcomes[0]["target"], &outcomes[0]["delivered"]), (&999.into(), &0.into()), "{json}");
    assert_eq!((&outcomes[1]["target"], &outcomes[1]["bytes"]), (&Value::Null, &5.into()), "{json}");
    assert!(daemon.stop().success());
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn the_default_config_prints_and_parses_to_the_defaults() {
    let t = bus();
    let text = stdout_of(ringest(&t.bus), &["run", "--print-default-config"]);
    assert_eq!(EngineConfig::from_toml_str(&text).unwrap(), EngineConfig::default());
}

#[test]
fn sigterm_stops_run_gracefully_and_ends_the_channels() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "ingest");
    let mut collector = Collector::attach(&t.bus, "ingest");
    let mut client = TcpStream::connect(daemon.addr("ingest")).unwrap();
    let peer = client.local_addr().unwrap();
    client.write_all(b"before the stop").unwrap();
    collector.until("the bytes", |c| c.received_from(peer) == b"before the stop");
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        daemon.stdout.ends_with(&["stopping (SIGTERM)".into(), "stopped".into()]),
        "{:#?}",
        daemon.stdout
    );
    collector.until("the end of the channel", |c| c.ended);
}

#[test]
fn the_bus_flag_beats_the_config_file_which_beats_the_environment() {
    let (flag, file, env) = (bus(), bus(), bus());
    let config = format!("[bus]\ndir = {:?}\n\n{}", file.bus.path(), server_config("where"));
    let exists = |bus: &BusDir| bus.ring_path("where/packet_group").exists();

    let mut daemon = Daemon::start(with_flag(ringest(&env.bus), &flag.bus), &config);
    assert!(exists(&flag.bus) && !exists(&file.bus) && !exists(&env.bus));
    assert!(daemon.stop().success());

    let mut daemon = Daemon::start(ringest(&env.bus), &config);
    assert!(exists(&file.bus) && !exists(&env.bus));
    assert!(daemon.stop().success());
}

fn with_flag(mut command: Command, bus: &BusDir) -> Command {
    command.arg("--bus").arg(bus.path());
    command
}

/// Asserts a failure with exit code 1 and a one-line `ringest: ...` message
/// that contains each of `needles`; returns the message.
fn assert_fails_with(args: &[&str], needles: &[&str]) -> String {
    let t = bus();
    let (code, stderr) = failure_of(ringest(&t.bus), args);
    assert_eq!(code, 1, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("ringest: "), "{args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {needle:?} not in {stderr}");
    }
    stderr
}

#[test]
fn bad_input_fails_with_one_line_and_exit_code_1() {
    assert_fails_with(&["tail", "nope/packet_group"], &["no channel nope/packet_group"]);
    assert_fails_with(&["stats", "nope"], &["stage nope", "no channel nope/socket_stats"]);
    assert_fails_with(&["send", "nope"], &["stage nope is not running"]);
    assert_fails_with(&["loadgen", "not an address", "--connections", "1", "--size", "1"], &["bad address"]);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert_fails_with(
        &["loadgen", &closed, "--connections", "1", "--size", "1"],
        &["connecting to", &closed],
    );

    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(b"[[tcp_server]]\nname = \"x\"\nbogus = 1\n").unwrap();
    let path = config.path().to_str().unwrap();
    assert_fails_with(
        &["run", "--config", path],
        &[&format!("{path}:3:"), "tcp_server[0].bogus", "unknown field"],
    );
    let missing = assert_fails_with(&["run", "--config", "/nonexistent/ringest.toml"], &["cannot read"]);
    assert_eq!(missing.matches("No such file").count(), 1, "the cause once: {missing}");
}

#[test]
fn a_second_engine_on_the_same_channels_names_the_owner_once() {
    let t = bus();
    let mut daemon = Daemon::server(&t.bus, "lidar");
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(server_config("lidar").as_bytes()).unwrap();
    let (code, stderr) = failure_of(ringest(&t.bus), &["run", "--config", config.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("owned by a live producer (pid {})", daemon.pid())), "{stderr}");
    assert_eq!(stderr.matches("channel lidar/packet_group").count(), 1, "no stutter: {stderr}");
    assert!(daemon.stop().success());
}

#[test]
fn run_says_each_stages_receive_path_and_executors_and_takes_host_names() {
    let t = bus();
    let config = "[[tcp_server]]\nname = \"named\"\naddress = \"localhost:0\"\nring_size_b = 4194304\n\
                  thread_processor_affinity = [0]\n";
    let mut daemon = Daemon::start(ringest(&t.bus), config);
    assert!(daemon.addr("named").ip().is_loopback(), "{:#?}", daemon.stdout);
    let has = |line: &str| daemon.stdout.iter().any(|l| l.starts_with(line));
    assert!(
        has("  receive path: io_uring multishot") || has("  receive path: glommio read"),
        "{:#?}",
        daemon.stdout
    );
    assert!(has("  executors: #0 on cpus 0 at normal priority"), "{:#?}", daemon.stdout);
    let mut client = TcpStream::connect(daemon.addr("named")).unwrap();
    client.write_all(b"by name").unwrap();
    let mut collector = Collector::attach(&t.bus, "named");
    collector.until("the bytes", |c| c.received_from(client.local_addr().unwrap()) == b"by name");
    assert!(daemon.stop().success());
}

#[test]
fn a_config_without_stages_is_an_error_naming_the_file() {
    let t = bus();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(b"[bus]\nmode = 0o600\n").unwrap();
    let path = config.path().to_str().unwrap();
    let (code, stderr) = failure_of(ringest(&t.bus), &["run", "--config", path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with(&format!("ringest: {path}: no stages")), "{stderr}");
}

#[test]
fn run_says_it_retries_binding_a_taken_port_and_stats_count_the_attempts() {
    let t = bus();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    // Freed once the stage's statistics count two failed attempts.
    let stats_bus = t.bus.clone();
    let holder = std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        let mut reader = loop {
            match shm_bus::Reader::attach(&stats_bus, "late/socket_stats", shm_bus::ReaderOptions::lossy()) {
                Ok(reader) => break reader,
                Err(_) => {
                    assert!(Instant::now() < deadline, "no late/socket_stats channel");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        loop {
            assert!(Instant::now() < deadline, "the stage never counted two failed binds");
            if let Some(shm_bus::Event::Record(sample)) =
                reader.recv_timeout(Duration::from_millis(100)).unwrap()
                && engine::records::decode::<engine::records::SocketStats>(sample.payload())
                    .is_ok_and(|s| s.stage.bind_failures >= 2)
            {
                break;
            }
        }
        drop(taken);
    });
    let config = format!("[[tcp_server]]\nname = \"late\"\naddress = \"{address}\"\nring_size_b = 4194304\n");
    let mut daemon = Daemon::start(ringest(&t.bus), &config);
    holder.join().unwrap();
    let retrying = format!("stage late: cannot listen on {address} yet (port taken?); retrying until it can");
    assert!(daemon.stdout.iter().any(|l| l.starts_with(&retrying)), "{:#?}", daemon.stdout);
    assert_eq!(daemon.addr("late"), address);
    let stats = stdout_of(ringest(&t.bus), &["stats", "late", "--count", "1"]);
    let failed: u64 = stats
        .split(" failed attempt")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bind attempts in {stats}"));
    assert!(failed >= 2, "{stats}");
    assert!(daemon.stop().success());
}

#[test]
fn ls_of_a_missing_bus_directory_fails() {
    let t = bus();
    let missing = t.bus.path().join("nothing-here");
    let (code, stderr) = failure_of(ringest(&t.bus), &["--bus", missing.to_str().unwrap(), "ls"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("bus directory {} does not exist", missing.display())), "{stderr}");
}

#[test]
fn ls_prune_removes_ended_and_dead_channels_and_keeps_live_ones() {
    let t = bus();
    let options = || shm_bus::ChannelOptions { capacity: 1 << 16, ..Default::default() };
    let live = shm_bus::Producer::create(&t.bus, "live/data", options()).unwrap();
    drop(shm_bus::Producer::create(&t.bus, "ended/data", options()).unwrap());
    let mut crashed = Daemon::server(&t.bus, "crashed");
    crashed.kill();
    let mut running = Daemon::server(&t.bus, "running");
    let files = |name: &str| [t.bus.ring_path(name), t.bus.readers_path(name)];
    for name in ["live/data", "ended/data", "crashed/packet_group", "running/packet_group"] {
        assert!(files(name).iter().all(|f| f.exists()), "{name} before the prune");
    }

    let output = stdout_of(ringest(&t.bus), &["ls", "--prune"]);
    assert!(output.contains("removed ended/data (ended"), "{output}");
    assert!(output.contains(&format!("removed crashed/packet_group (producer dead, pid {})", crashed.pid())));
    assert!(output.contains("pruned 5 channels"), "{output}");
    let crashed_channels = ["packet_group", "connection_events", "socket_stats", "egress_outcomes"];
    for name in crashed_channels.iter().map(|c| format!("crashed/{c}")).chain(["ended/data".to_owned()]) {
        let name = name.as_str();
        assert!(files(name).iter().all(|f| !f.exists()), "{name} after the prune: {output}");
    }
    for name in ["live/data", "running/packet_group", "running/connection_events", "running/socket_stats"] {
        assert!(files(name).iter().all(|f| f.exists()), "{name} after the prune: {output}");
    }
    // What is left works: the live producer writes, the daemon stops cleanly.
    let mut writer = live.shard(0).unwrap();
    writer.send(7, b"still here").unwrap();
    assert!(output.contains("live/data"), "the listing after the prune shows it: {output}");
    assert!(running.stop().success());
}

#[test]
fn usage_errors_exit_with_code_2() {
    let t = bus();
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["tail"],
        &["tail", "x/y", "--count", "0"],
        &["tail", "x/y", "--from", "middle"],
        &["loadgen", "127.0.0.1:1", "--connections", "0", "--size", "1"],
        &["loadgen", "127.0.0.1:1", "--connections", "1", "--size", "1", "--rate", "-3"],
        &["run", "--config", "a.toml", "--print-default-config"],
    ];
    for args in cases {
        let (code, stderr) = failure_of(ringest(&t.bus), args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}
