//! The TCP server stage end to end: real sockets on 127.0.0.1, OS-chosen
//! ports, a private bus per test.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use engine::config::TcpServerConfig;
use engine::records::{ConnectionEvent, DisconnectReason};

#[test]
fn one_client_every_byte_in_order() {
    let t = bus();
    let (engine, addr) = start(&t.bus, server_config("one"));
    let mut collector = Collector::attach(&t.bus, "one");
    let data = random_bytes(1, 8 << 20);
    // More than the ring holds: the writer runs in its own thread, since
    // it is pushed back until the collector reads.
    let (local, writer) = send_in_background(addr, data.clone(), 1, 70_000);
    collector.until("all bytes", |c| c.received_from(local).len() >= data.len());
    assert_eq!(sha256(collector.received_from(local)), sha256(&data));
    assert!(collector.received_from(local) == data.as_slice());
    writer.join().unwrap();
    engine.stop().unwrap();
}

#[test]
fn sixty_four_clients_every_byte_per_connection() {
    let t = bus();
    let config = TcpServerConfig { thread_processor_affinity: vec![0, 1], ..server_config("many") };
    let (engine, addr) = start(&t.bus, config);
    let mut collector = Collector::attach(&t.bus, "many");
    let clients: Vec<_> = (0..64u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = random_bytes(100 + i, 64 << 10 | (i as usize * 997));
                let mut stream = TcpStream::connect(addr).unwrap();
                let local = stream.local_addr().unwrap();
                write_in_chunks(&mut stream, &data, i, 4096);
                (local, data)
            })
        })
        .collect();
    let sent: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    collector
        .until("every client's bytes", |c| sent.iter().all(|(a, d)| c.received_from(*a).len() >= d.len()));
    for (local, data) in &sent {
        assert_eq!(sha256(collector.received_from(*local)), sha256(data), "client {local}");
    }
    let ids: std::collections::HashSet<_> = collector.peers.keys().collect();
    assert_eq!(ids.len(), 64, "one connection id per client");
    engine.stop().unwrap();
}

#[test]
fn groups_hold_at_most_group_size_packets_and_fill_under_load() {
    let t = bus();
    let config = TcpServerConfig { group_size: 4, group_timeout_us: 1_000_000, ..server_config("groups") };
    let (engine, addr) = start(&t.bus, config);
    let mut collector = Collector::attach(&t.bus, "groups");
    let data = random_bytes(7, 4 << 20);
    let (local, writer) = send_in_background(addr, data.clone(), 7, 1000);
    collector.until("all bytes", |c| c.received_from(local).len() >= data.len());
    assert!(collector.group_sizes.iter().all(|&n| (1..=4).contains(&n)), "{:?}", collector.group_sizes);
    assert!(collector.group_sizes.iter().filter(|&&n| n == 4).count() > collector.group_sizes.len() / 2);
    writer.join().unwrap();
    engine.stop().unwrap();
}

#[test]
fn a_lone_packet_is_published_at_once_not_after_the_timeout() {
    let t = bus();
    // A long group timeout: only the idle flush can publish promptly.
    let config = TcpServerConfig { group_size: 1000, group_timeout_us: 10_000_000, ..server_config("idle") };
    let (engine, addr) = start(&t.bus, config);
    let mut collector = Collector::attach(&t.bus, "idle");
    let mut client = TcpStream::connect(addr).unwrap();
    let local = client.local_addr().unwrap();
    let sent = Instant::now();
    client.write_all(b"hello").unwrap();
    collector.until("the packet", |c| c.received_from(local) == b"hello");
    let waited = sent.elapsed();
    assert!(waited < Duration::from_secs(5), "waited {waited:?} for a lone packet");
    assert_eq!(collector.group_sizes, [1]);
    engine.stop().unwrap();
}

#[test]
fn group_timeout_bounds_the_wait_under_a_steady_trickle() {
    let t = bus();
    let config = TcpServerConfig { group_size: 65_536, group_timeout_us: 20_000, ..server_config("trickle") };
    let (engine, addr) = start(&t.bus, config);
    let mut collector = Collector::attach(&t.bus, "trickle");
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    let local = client.local_addr().unwrap();
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let msg = i.to_le_bytes();
        client.write_all(&msg).unwrap();
        sent.extend_from_slice(&msg);
        std::thread::sleep(Duration::from_millis(1));
    }
    collector.until("all bytes", |c| c.received_from(local).len() >= sent.len());
    assert_eq!(collector.received_from(local), sent.as_slice());
    // Every group was published within the timeout of its first packet
    // (plus scheduling slack on a loaded 2-core machine).
    let worst = collector.group_waits_ns.iter().max().copied().unwrap_or(0);
    assert!(worst < 500_000_000, "a group waited {worst} ns");
    engine.stop().unwrap();
}

#[test]
fn connections_over_the_maximum_are_rejected_and_counted() {
    let t = bus();
    let config = TcpServerConfig { maximum_connections: 2, ..server_config("max") };
    let (engine, addr) = start(&t.bus, config);
    let mut events = Events::attach(&t.bus, "max");
    let a = TcpStream::connect(addr).unwrap();
    let b = TcpStream::connect(addr).unwrap();
    events.until("two connections", |e| e.len() >= 2);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)), "the third connection is closed at once");
    events.until("the rejection", |e| {
        e.iter()
            .any(|ev| matches!(ev, ConnectionEvent::Disconnected { reason: DisconnectReason::Rejected, .. }))
    });
    let deadline = Instant::now() + DEADLINE;
    while engine.stats("max").is_none_or(|s| s.stage.rejected_connections != 1) {
        assert!(Instant::now() < deadline, "rejection not counted: {:?}", engine.stats("max"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(engine.stats("max").unwrap().stage.open_connections, 2);
    drop((a, b));
    engine.stop().unwrap();
}

#[test]
fn silent_client_is_disconnected_after_the_receive_timeout() {
    let t = bus();
    let config = TcpServerConfig { data_receive_timeout_ms: 200, ..server_config("silent") };
    let (engine, addr) = start(&t.bus, config);
    let mut events = Events::attach(&t.bus, "silent");
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "server closes the silent connection");
    assert!(started.elapsed() >= Duration::from_millis(150));
    events.until("the timeout event", |e| {
        e.iter().any(|ev| {
            matches!(ev, ConnectionEvent::Disconnected { reason: DisconnectReason::ReceiveTimeout, .. })
        })
    });
    engine.stop().unwrap();
}

#[test]
fn events_describe_each_connection() {
    let t = bus();
    let (engine, addr) = start(&t.bus, server_config("events"));
    let mut events = Events::attach(&t.bus, "events");
    let mut client = TcpStream::connect(addr).unwrap();
    let local = client.local_addr().unwrap();
    client.write_all(&[7u8; 1000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    events.until("connect and disconnect", |e| e.len() >= 2);
    match &events.seen[0] {
        ConnectionEvent::Connected { peer, local: server, .. } => {
            assert_eq!(std::net::SocketAddr::from(*peer), local);
            assert_eq!(std::net::SocketAddr::from(*server), addr);
        }
        other => panic!("{other:?}"),
    }
    match &events.seen[1] {
        ConnectionEvent::Disconnected { reason, bytes_in, .. } => {
            assert_eq!(*reason, DisconnectReason::PeerClosed);
            assert_eq!(*bytes_in, 1000);
        }
        other => panic!("{other:?}"),
    }
    engine.stop().unwrap();
}

#[test]
fn bind_is_retried_until_the_port_is_free() {
    let t = bus();
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let config = TcpServerConfig { address: addr, ..server_config("bind") };
    let engine = engine::Engine::new(t.bus.clone()).tcp_server(config).start().unwrap();
    assert_eq!(engine.wait_bound("bind", Duration::from_millis(500)), None, "bound a busy port");
    drop(squatter);
    assert_eq!(engine.wait_bound("bind", DEADLINE), Some(addr));
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"x").unwrap();
    engine.stop().unwrap();
}

#[test]
fn stop_closes_connections_and_ends_the_channels() {
    let t = bus();
    let (engine, addr) = start(&t.bus, server_config("stop"));
    let mut collector = Collector::attach(&t.bus, "stop");
    let mut events = Events::attach(&t.bus, "stop");
    let mut client = TcpStream::connect(addr).unwrap();
    let local = client.local_addr().unwrap();
    client.write_all(b"before stop").unwrap();
    collector.until("the data", |c| c.received_from(local) == b"before stop");
    engine.stop().unwrap();
    events.until("the shutdown event", |e| {
        e.iter()
            .any(|ev| matches!(ev, ConnectionEvent::Disconnected { reason: DisconnectReason::Shutdown, .. }))
    });
    collector.until("end of stream", |c| c.ended);
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)), "connection closed by the stop");
}
