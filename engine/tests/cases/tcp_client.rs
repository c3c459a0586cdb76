//! The cases of `tests/tcp_client.rs`, run once per receive path
//! ([`RECEIVE_PATH`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::RECEIVE_PATH;
use crate::common::*;
use engine::config::TcpClientConfig;
use engine::records::{ConnectionEvent, DisconnectReason};
use engine::{Engine, EngineHandle};
use shm_bus::BusDir;

fn client_config(name: &str, address: SocketAddr) -> TcpClientConfig {
    TcpClientConfig {
        name: name.into(),
        address: address.to_string(),
        ring_size_b: 4 << 20,
        reconnect_backoff_initial_ms: 20,
        reconnect_backoff_max_ms: 200,
        receive_path: RECEIVE_PATH,
        ..Default::default()
    }
}

fn start_client(bus: &BusDir, config: TcpClientConfig) -> EngineHandle {
    log();
    Engine::new(bus.clone()).tcp_client(config).start().unwrap()
}

fn connected_ids(events: &[ConnectionEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::Connected { connection_id, .. } => Some(*connection_id),
            _ => None,
        })
        .collect()
}

/// CPU time (user + system) used so far by this process's threads whose
/// name starts with one of `stages`: a stage's executor threads are named
/// `<stage>-<index>`, and threads they start inherit the name. Other tests
/// of this binary run at the same time, so the whole process's CPU time
/// would count their work too.
fn stage_cpu_time(stages: &[&str]) -> Duration {
    // The kernel keeps the first 15 bytes of a thread's name.
    let prefixes: Vec<&str> = stages.iter().map(|s| &s[..s.len().min(15)]).collect();
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        // A thread that ended meanwhile has no stat any more.
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !prefixes.iter().any(|p| stat[open + 1..close].starts_with(p)) {
            continue;
        }
        let fields: Vec<u64> =
            stat[close + 2..].split_whitespace().skip(11).take(2).map(|f| f.parse().unwrap()).collect();
        ticks += fields[0] + fields[1];
    }
    // utime + stime, in clock ticks (100 per second on Linux).
    Duration::from_millis(ticks * 10)
}

#[test]
fn a_large_stream_arrives_byte_exact() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = start_client(&t.bus, client_config("big", server.local_addr().unwrap()));
    let mut collector = Collector::attach(&t.bus, "big");
    let data = random_bytes(5, 8 << 20);
    let (mut conn, _) = server.accept().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || write_in_chunks(&mut conn, &sent, 5, 50_000));
    collector.until("all bytes", |c| c.bytes.get(&1).is_some_and(|b| b.len() >= data.len()));
    assert!(collector.bytes[&1] == data, "the stream differs");
    writer.join().unwrap();
    engine.stop().unwrap();
}

#[test]
fn a_restarted_server_gets_a_new_connection_and_the_stream_continues() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let engine = start_client(&t.bus, client_config("restart", addr));
    let mut collector = Collector::attach(&t.bus, "restart");
    let mut events = Events::attach(&t.bus, "restart");

    let first = random_bytes(1, 300_000);
    let (mut conn, _) = server.accept().unwrap();
    conn.write_all(&first).unwrap();
    drop(conn);
    drop(server); // the server goes away mid-stream...
    events.until("the disconnect", |e| e.iter().any(|e| matches!(e, ConnectionEvent::Disconnected { .. })));
    std::thread::sleep(Duration::from_millis(100)); // ...and comes back a little later
    let server = TcpListener::bind(addr).unwrap();
    let second = random_bytes(2, 300_000);
    let (mut conn, _) = server.accept().unwrap();
    conn.write_all(&second).unwrap();

    collector.until("both streams", |c| {
        c.bytes.get(&1).is_some_and(|b| b.len() >= first.len())
            && c.bytes.get(&2).is_some_and(|b| b.len() >= second.len())
    });
    assert!(collector.bytes[&1] == first && collector.bytes[&2] == second);
    events.until("the second connection", |e| connected_ids(e) == [1, 2]);
    assert_eq!(events.disconnect_reason(1), Some(&DisconnectReason::PeerClosed));
    engine.stop().unwrap();
}

#[test]
fn a_silent_server_is_left_after_the_receive_timeout_and_reconnected() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = TcpClientConfig {
        data_receive_timeout_ms: 200,
        ..client_config("silent", server.local_addr().unwrap())
    };
    let engine = start_client(&t.bus, config);
    let mut events = Events::attach(&t.bus, "silent");
    let (_first, _) = server.accept().unwrap(); // accepted, then never written to
    let (_second, _) = server.accept().unwrap(); // the stage came back
    events.until("two connections", |e| connected_ids(e).len() >= 2);
    assert_eq!(events.disconnect_reason(1), Some(&DisconnectReason::ReceiveTimeout));
    engine.stop().unwrap();
}

#[test]
fn egress_reaches_the_server() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = start_client(&t.bus, client_config("egress", server.local_addr().unwrap()));
    let mut events = Events::attach(&t.bus, "egress");
    let (mut conn, _) = server.accept().unwrap();
    events.until("the connection", |e| !e.is_empty());
    let producer =
        shm_bus::Producer::create(&t.bus, "egress/egress_packets", shm_bus::ChannelOptions::default())
            .unwrap();
    let mut writer = producer.shard(0).unwrap();
    wait_for_egress_reader(&t.bus, "egress/egress_packets");
    let payload = random_bytes(9, 100_000);
    let record = engine::records::encode_egress(&engine::records::EgressHeader { target: None }, &payload);
    writer.send(engine::records::KIND_EGRESS, &record).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = vec![0; payload.len()];
    conn.read_exact(&mut got).unwrap();
    assert!(got == payload);
    engine.stop().unwrap();
}

#[test]
fn socat_as_the_server() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stream");
    let data = random_bytes(77, 2 << 20);
    std::fs::write(&file, &data).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut socat = std::process::Command::new("socat")
        .args([
            "-u",
            &format!("FILE:{}", file.display()),
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
        ])
        .spawn()
        .unwrap_or_else(|e| panic!("socat cannot run ({e}): run scripts/test (or apt-get install socat)"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The stage retries until socat listens, then gets the file.
    let engine = start_client(&t.bus, client_config("socat", addr));
    let mut collector = Collector::attach(&t.bus, "socat");
    collector.until("the file", |c| c.bytes.get(&1).is_some_and(|b| b.len() >= data.len()));
    assert!(collector.bytes[&1] == data);
    let _ = socat.wait();
    engine.stop().unwrap();
}

#[test]
fn unreachable_addresses_are_retried_patiently_and_logged_once() {
    // The stage logs from its executor threads: the log is process-wide.
    // (Other tests' stages log there too; the lines below name the stage,
    // whose name tells the receive path apart.)
    let log = log();
    let refused_name = format!("refused-{RECEIVE_PATH:?}");
    let unresolvable_name = format!("unresolvable-{RECEIVE_PATH:?}");
    let t = bus();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // nothing listens there now
    let refused = TcpClientConfig { reconnect_backoff_max_ms: 400, ..client_config(&refused_name, closed) };
    let unresolvable = TcpClientConfig {
        address: "no-such-host.invalid:7400".into(),
        reconnect_backoff_max_ms: 400,
        ..client_config(&unresolvable_name, closed)
    };
    let stages = [refused_name.as_str(), unresolvable_name.as_str()];
    let cpu_before = stage_cpu_time(&stages);
    let engine = Engine::new(t.bus.clone()).tcp_client(refused).tcp_client(unresolvable).start().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = stage_cpu_time(&stages).saturating_sub(cpu_before);
    assert!(cpu < Duration::from_millis(500), "retrying used {cpu:?} of CPU in 2 s");
    assert_eq!(log.lines_containing(&format!("stage {refused_name}: cannot connect")), 1);
    assert_eq!(log.lines_containing(&format!("stage {unresolvable_name}: cannot connect")), 1);

    // Once something listens, the refused stage connects within its
    // (capped) backoff.
    let server = TcpListener::bind(closed).unwrap();
    server.set_nonblocking(false).unwrap();
    let (mut conn, _) = server.accept().unwrap();
    conn.write_all(b"finally").unwrap();
    let mut collector = Collector::attach(&t.bus, &refused_name);
    collector.until("the data", |c| c.bytes.get(&1).is_some_and(|b| b == b"finally"));
    assert_eq!(log.lines_containing(&format!("stage {refused_name}: connected to")), 1);
    engine.stop().unwrap();
}

#[test]
fn events_name_the_server_and_the_local_end() {
    let t = bus();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let engine = start_client(&t.bus, client_config("ends", addr));
    let mut events = Events::attach(&t.bus, "ends");
    let (conn, client_addr) = server.accept().unwrap();
    events.until("connected", |e| !e.is_empty());
    match &events.seen[0] {
        ConnectionEvent::Connected { connection_id: 1, peer, local, .. } => {
            assert_eq!(SocketAddr::from(*peer), addr);
            assert_eq!(SocketAddr::from(*local), client_addr);
        }
        other => panic!("{other:?}"),
    }
    drop(conn);
    engine.stop().unwrap();
}
