//! Two bridges on loopback, each with its own bus: records cross unchanged
//! both ways, and a broken link or a restart of either bridge loses
//! nothing and duplicates nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bridge::Bridge;
use engine::config::BridgeConfig;
use shm_bus::{BusDir, ChannelOptions, Event, Producer, Reader, ReaderOptions, ReserveError, StartAt};

/// One record as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    shard: u32,
    seq: u64,
    kind: u16,
    timestamp_ns: u64,
    payload: Vec<u8>,
}

fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("bridge-test").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

fn payload(shard: u32, seq: u64) -> Vec<u8> {
    let len = ((seq * 7919 + u64::from(shard) * 31) % 3000) as usize;
    (0..len).map(|i| (seq as usize * 13 + i + shard as usize) as u8).collect()
}

fn record(shard: u32, seq: u64) -> Seen {
    Seen {
        shard,
        seq,
        kind: 1 + (seq % 5) as u16,
        timestamp_ns: 1_000_000 + seq * 10 + u64::from(shard),
        payload: payload(shard, seq),
    }
}

fn listening(name: &str, export: &[&str], prefix: &str) -> BridgeConfig {
    BridgeConfig {
        name: name.into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        export: export.iter().map(|s| s.to_string()).collect(),
        import_prefix: prefix.into(),
        keepalive_ms: 50,
        heartbeat_timeout_ms: 1000,
        window_b: 256 << 10,
        ..Default::default()
    }
}

fn connecting(name: &str, to: SocketAddr, export: &[&str], prefix: &str) -> BridgeConfig {
    BridgeConfig {
        listen: None,
        connect: Some(to.to_string()),
        reconnect_backoff_initial_ms: 20,
        reconnect_backoff_max_ms: 100,
        ..listening(name, export, prefix)
    }
}

/// Writes `count` records per shard into `name`, round robin, retrying
/// while a gated reader holds the ring full (that is the backpressure).
fn produce(
    bus: &BusDir,
    name: &str,
    shards: u32,
    capacity: u64,
    count: u64,
    pace: Duration,
) -> (u64, JoinHandle<()>) {
    let opts = ChannelOptions { shards, capacity, ..Default::default() };
    let producer = Producer::create(bus, name, opts).unwrap();
    let generation = producer.generation();
    let thread = std::thread::spawn(move || {
        let mut writers: Vec<_> = (0..shards).map(|s| producer.shard(s).unwrap()).collect();
        for seq in 0..count {
            for (shard, writer) in writers.iter_mut().enumerate() {
                let r = record(shard as u32, seq);
                loop {
                    match writer.write_at(r.kind, r.timestamp_ns, &r.payload) {
                        Ok(got) => {
                            assert_eq!(got, seq);
                            break;
                        }
                        Err(ReserveError::Full { .. }) => {
                            writer.publish();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                writer.publish();
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        drop(writers);
        // Keep the channel live (not ended) until the test is done with it.
        std::thread::sleep(Duration::from_secs(600));
        drop(producer);
    });
    (generation, thread)
}

/// Attaches to `name` once it appears.
fn attach(bus: &BusDir, name: &str) -> Reader {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Reader::attach(bus, name, ReaderOptions::gated().start(StartAt::Oldest)) {
            Ok(reader) => return reader,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{name} never appeared: {e}"),
        }
    }
}

/// Reads records until `count` were seen (following restarts), checking
/// that no (shard, seq) comes twice.
fn collect(reader: &mut Reader, count: usize, timeout: Duration) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} records arrived", seen.len());
        match reader.recv_timeout(Duration::from_millis(100)).unwrap() {
            Some(Event::Record(s)) => {
                assert_eq!(s.lost_before(), 0, "records lost before seq {}", s.seq());
                seen.push(Seen {
                    shard: s.shard(),
                    seq: s.seq(),
                    kind: s.kind(),
                    timestamp_ns: s.timestamp_ns(),
                    payload: s.payload().to_vec(),
                });
            }
            Some(Event::Restarted { .. }) | Some(Event::Ended) | None => {}
        }
    }
    seen
}

/// Every record of `shards` x `count`, in per-shard order, each once.
fn check_exactly_once(mut seen: Vec<Seen>, shards: u32, count: u64) {
    seen.sort_by_key(|s| (s.shard, s.seq));
    let expected: Vec<Seen> = (0..shards).flat_map(|sh| (0..count).map(move |seq| record(sh, seq))).collect();
    assert_eq!(seen.len(), expected.len());
    for (got, want) in seen.iter().zip(&expected) {
        assert_eq!(got, want, "shard {} seq {}", want.shard, want.seq);
    }
}

#[test]
fn records_cross_unchanged_both_ways_with_the_origin_generation() {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    // History written before the bridges start crosses too.
    let (gen_lidar, _lidar) = produce(&bus_a, "lidar/points", 2, 1 << 20, 300, Duration::ZERO);
    let (gen_cam, _cam) = produce(&bus_b, "cam/frames", 1, 1 << 20, 200, Duration::from_micros(100));
    let a = Bridge::start(bus_a.clone(), 0o600, listening("a", &["lidar/*"], "b")).unwrap();
    // B's patterns also match what it imports from A (`a/*`): imports must
    // still never be exported back.
    let b =
        Bridge::start(bus_b.clone(), 0o600, connecting("b", a.listening().unwrap(), &["cam/*", "a/*"], "a"))
            .unwrap();

    let mut at_b = attach(&bus_b, "a/lidar/points");
    check_exactly_once(collect(&mut at_b, 600, Duration::from_secs(20)), 2, 300);
    assert_eq!(at_b.generation(), gen_lidar);
    assert_eq!(at_b.shard_count(), 2);
    let mut at_a = attach(&bus_a, "b/cam/frames");
    check_exactly_once(collect(&mut at_a, 200, Duration::from_secs(20)), 1, 200);
    assert_eq!(at_a.generation(), gen_cam);

    // What is imported is never exported back. A channel made on B now
    // reaches A only after B's exporter scanned its bus, with the import
    // already there.
    let (_, _late) = produce(&bus_b, "cam/late", 1, 1 << 16, 1, Duration::ZERO);
    attach(&bus_a, "b/cam/late");
    let names: Vec<String> = shm_bus::list_channels(&bus_a).unwrap().into_iter().map(|l| l.name).collect();
    assert!(!names.iter().any(|n| n.starts_with("b/a/")), "{names:?}");
    let status = b.status();
    assert!(status.connected);
    let imported = status.imports["a/lidar/points"];
    assert_eq!((imported.records, imported.duplicates_dropped, imported.gaps), (600, 0, 0));
    let exported = a.status().exports["lidar/points"];
    assert_eq!((exported.records_sent, exported.lost), (600, 0));
    drop(b);
    drop(a);
}

/// A TCP relay between the two bridges that the test can cut: every
/// connection through it is closed at once.
struct Relay {
    address: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(to) else { continue };
                registry.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { address, open }
    }

    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn a_cut_link_resumes_without_loss_or_duplicates() {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    // A small ring: the gate must hold what is in flight when the link breaks.
    let (_, _writer) = produce(&bus_a, "lidar/points", 2, 1 << 18, 3000, Duration::from_micros(300));
    let a = Bridge::start(bus_a.clone(), 0o600, listening("a", &["lidar/*"], "b")).unwrap();
    let relay = Relay::start(a.listening().unwrap());
    let b = Bridge::start(bus_b.clone(), 0o600, connecting("b", relay.address, &[], "a")).unwrap();
    let mut reader = attach(&bus_b, "a/lidar/points");
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut cuts = 0;
            while !stop.load(Ordering::Relaxed) && cuts < 4 {
                std::thread::sleep(Duration::from_millis(300));
                relay.cut();
                cuts += 1;
            }
            cuts
        })
    };
    let seen = collect(&mut reader, 6000, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let cuts = cutter.join().unwrap();
    check_exactly_once(seen, 2, 3000);
    assert!(cuts >= 2, "the link was cut {cuts} times only");
    let status = b.status();
    assert!(status.links >= 2, "{status:?}");
    let imported = status.imports["a/lidar/points"];
    assert_eq!((imported.duplicates_dropped, imported.gaps), (0, 0), "{imported:?}");
    assert!(imported.resumes >= 2, "{imported:?}");
}

#[test]
fn a_restart_of_either_bridge_resumes_without_loss_or_duplicates() {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let (_, _writer) = produce(&bus_a, "lidar/points", 1, 1 << 22, 4000, Duration::from_micros(300));
    let mut a_config = listening("a", &["lidar/*"], "b");
    let a = Bridge::start(bus_a.clone(), 0o600, a_config.clone()).unwrap();
    let address = a.listening().unwrap();
    let b_config = connecting("b", address, &[], "a");
    let b = Bridge::start(bus_b.clone(), 0o600, b_config.clone()).unwrap();
    let mut reader = attach(&bus_b, "a/lidar/points");
    let mut seen = collect(&mut reader, 500, Duration::from_secs(20));

    // The importing side restarts: it finds what it held in its channel.
    drop(b);
    let b = Bridge::start(bus_b.clone(), 0o600, b_config).unwrap();
    seen.extend(collect(&mut reader, 1000, Duration::from_secs(20)));
    let resumed = b.status().imports.get("a/lidar/points").copied().unwrap_or_default();
    assert_eq!(resumed.duplicates_dropped, 0, "{resumed:?}");

    // The exporting side restarts on the same port: the peer says where.
    drop(a);
    a_config.listen = Some(address);
    let a = Bridge::start(bus_a.clone(), 0o600, a_config).unwrap();
    seen.extend(collect(&mut reader, 2500, Duration::from_secs(30)));
    check_exactly_once(seen, 1, 4000);
    let imported = b.status().imports["a/lidar/points"];
    assert_eq!((imported.duplicates_dropped, imported.gaps), (0, 0), "{imported:?}");
    drop(a);
}

#[test]
fn egress_published_on_the_importing_host_reaches_the_stage_host_unchanged() {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let (_, _packets) = produce(&bus_a, "ingest/packet_group", 1, 1 << 16, 1, Duration::ZERO);
    let a = Bridge::start(bus_a.clone(), 0o600, listening("a", &["ingest/*"], "b")).unwrap();
    let _b = Bridge::start(bus_b.clone(), 0o600, connecting("b", a.listening().unwrap(), &[], "a")).unwrap();
    attach(&bus_b, "a/ingest/packet_group");
    // A consumer on B publishes commands for A's stage; one for a stage A
    // does not export is refused.
    let (gen_egress, _egress) = produce(&bus_b, "a/ingest/egress_packets", 1, 1 << 20, 50, Duration::ZERO);
    let (_, _other) = produce(&bus_b, "a/other/egress_packets", 1, 1 << 16, 5, Duration::ZERO);
    let mut at_a = attach(&bus_a, "ingest/egress_packets");
    check_exactly_once(collect(&mut at_a, 50, Duration::from_secs(20)), 1, 50);
    assert_eq!(at_a.generation(), gen_egress, "outcomes name the publisher's generation");
    std::thread::sleep(Duration::from_millis(500));
    assert!(Reader::attach(&bus_a, "other/egress_packets", ReaderOptions::lossy()).is_err());
    // And egress channels never travel the other way.
    assert!(Reader::attach(&bus_b, "a/ingest/egress_packets/x", ReaderOptions::lossy()).is_err());
    let names: Vec<String> = shm_bus::list_channels(&bus_b).unwrap().into_iter().map(|l| l.name).collect();
    assert!(!names.iter().any(|n| n.starts_with("a/b/")), "{names:?}");
}

/// An imported channel keeps (nearly) its capacity of history, as the
/// origin's does: a reader that attaches on the importing host after
/// everything crossed still finds all of it. With shm-bus's hot window
/// (on by default) the importing writer started over once the bridge's
/// readers kept up, and a late reader found only its last ~2 MiB.
#[test]
fn a_late_reader_of_an_imported_channel_finds_its_whole_history() {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let a = Bridge::start(bus_a.clone(), 0o600, listening("a", &["late/*"], "b")).unwrap();
    let b = Bridge::start(bus_b.clone(), 0o600, connecting("b", a.listening().unwrap(), &[], "a")).unwrap();
    // 300 records of 20,000 bytes: 6 MB, three quarters of an 8 MiB ring.
    const RECORDS: u64 = 300;
    let opts = ChannelOptions { capacity: 8 << 20, hot_window: 0, ..Default::default() };
    let producer = Producer::create(&bus_a, "late/history", opts).unwrap();
    let bytes = |seq: u64| -> Vec<u8> { (0..20_000u64).map(|i| (seq * 31 + i * 7) as u8).collect() };
    let mut writer = producer.shard(0).unwrap();
    for seq in 0..RECORDS {
        assert_eq!(writer.write_at(1, 1_000 + seq, &bytes(seq)).unwrap(), seq);
        writer.publish();
        // Paced, so that the bridge keeps up (the case the hot window
        // starts over in).
        std::thread::sleep(Duration::from_micros(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.status().imports.get("a/late/history").map(|i| i.records) != Some(RECORDS) {
        assert!(Instant::now() < deadline, "not everything crossed: {:?}", b.status().imports);
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut late =
        Reader::attach(&bus_b, "a/late/history", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    for seq in 0..RECORDS {
        match late.recv_timeout(Duration::from_secs(5)).unwrap() {
            Some(Event::Record(s)) => {
                assert_eq!((s.seq(), s.lost_before(), s.timestamp_ns()), (seq, 0, 1_000 + seq));
                assert!(s.payload() == bytes(seq), "record {seq}'s bytes differ");
            }
            other => panic!("expected record {seq}, got {other:?}"),
        }
    }
    let shard = &shm_bus::channel_info(&bus_b, "a/late/history").unwrap().shards[0];
    assert_eq!(shard.start_over_count, 0, "{shard:?}");
    drop(writer);
    drop(producer);
}

/// Bytes of the ring that a receive slot's unused end leaves in a record:
/// they must not cross the network.
const STALE: u8 = 0xAA;

/// A TCP packet group as the io_uring path writes it (version 2): each
/// packet at the start of a 256-byte slot, the rest of the slot stale.
fn slotted_tcp_group(packets: &[(u64, &[u8])]) -> Vec<u8> {
    const SLOT: usize = 256;
    let mut group = vec![STALE; 8 + SLOT * packets.len()];
    group[..8].copy_from_slice(&[2, 0, 0, 0, packets.len() as u8, 0, 0, 0]);
    for (i, (connection, data)) in packets.iter().enumerate() {
        let at = 8 + i * SLOT;
        let skip = (SLOT - 48 - data.len().next_multiple_of(8)) / 8;
        let h = &mut group[at..at + 48];
        h[..8].copy_from_slice(&connection.to_le_bytes());
        h[8..16].copy_from_slice(&(1_000 + connection).to_le_bytes());
        h[16..24].copy_from_slice(&(2_000 + connection).to_le_bytes());
        h[24..40].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7]);
        h[40..42].copy_from_slice(&4000u16.to_le_bytes());
        h[42..44].copy_from_slice(&(skip as u16).to_le_bytes());
        h[44..48].copy_from_slice(&(data.len() as u32).to_le_bytes());
        group[at + 48..at + 48 + data.len()].copy_from_slice(data);
    }
    group
}

/// A UDP datagram group as the io_uring path writes it: each datagram's
/// data 16 bytes after its header (`data_offset` 96) in a 512-byte slot.
fn slotted_udp_group(datagrams: &[&[u8]]) -> Vec<u8> {
    const SLOT: usize = 512;
    let mut group = vec![STALE; 8 + SLOT * datagrams.len()];
    group[..8].copy_from_slice(&[1, 0, 0, 0, datagrams.len() as u8, 0, 0, 0]);
    for (i, data) in datagrams.iter().enumerate() {
        let at = 8 + i * SLOT;
        let h = &mut group[at..at + 80];
        h[..4].copy_from_slice(&(SLOT as u32).to_le_bytes());
        h[4..6].copy_from_slice(&96u16.to_le_bytes());
        h[6..8].copy_from_slice(&2u16.to_le_bytes()); // kernel time
        h[8..16].copy_from_slice(&(5_000 + i as u64).to_le_bytes());
        h[16..24].copy_from_slice(&(6_000 + i as u64).to_le_bytes());
        h[24..32].copy_from_slice(&(7_000 + i as u64).to_le_bytes());
        h[32..48].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 9]);
        h[48..50].copy_from_slice(&5000u16.to_le_bytes());
        h[50..52].copy_from_slice(&6000u16.to_le_bytes());
        h[52..56].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[56..72].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
        h[72..76].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[76..80].fill(0);
        group[at + 96..at + 96 + data.len()].copy_from_slice(data);
    }
    group
}

/// The one record of `channel` on `bus` once it crossed.
fn first_record(bus: &BusDir, channel: &str) -> (u16, Vec<u8>) {
    let mut reader = attach(bus, channel);
    loop {
        match reader.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Record(s)) => return (s.kind(), s.payload().to_vec()),
            Some(_) => {}
            None => panic!("nothing crossed on {channel}"),
        }
    }
}

/// Packet groups of the io_uring receive path carry each slot's unused
/// end (stale ring bytes): the exporter re-packs them compactly, so the
/// same packets, metadata and bytes cross, and nothing stale does. Records
/// of other channels cross byte for byte, whatever their kind.
#[test]
fn packet_groups_cross_without_the_stale_ends_of_their_receive_slots() {
    use engine::records::{KIND_DATAGRAM_GROUP, KIND_PACKET_GROUP, decode_datagram_group, decode_group};
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let a = Bridge::start(bus_a.clone(), 0o600, listening("a", &["*"], "b")).unwrap();
    let _b = Bridge::start(bus_b.clone(), 0o600, connecting("b", a.listening().unwrap(), &[], "a")).unwrap();
    let tcp = slotted_tcp_group(&[(7, b"hello"), (8, &[0x55; 200]), (7, b"")]);
    let udp = slotted_udp_group(&[b"lidar points", &[0x33; 400]]);
    let mut producers = Vec::new();
    for (channel, kind, record) in [
        ("tcp/packet_group", KIND_PACKET_GROUP, &tcp),
        ("udp/packet_group", KIND_DATAGRAM_GROUP, &udp),
        ("other/raw", KIND_PACKET_GROUP, &tcp),
    ] {
        let producer =
            Producer::create(&bus_a, channel, ChannelOptions { capacity: 1 << 16, ..Default::default() })
                .unwrap();
        producer.shard(0).unwrap().send(kind, record).unwrap();
        producers.push(producer);
    }

    let (kind, crossed) = first_record(&bus_b, "a/tcp/packet_group");
    assert_eq!((kind, crossed[0]), (KIND_PACKET_GROUP, 1), "version 1 on the importing host");
    assert_eq!(crossed.len(), 8 + (48 + 8) + (48 + 200) + 48);
    assert!(decode_group(&crossed).unwrap().eq(decode_group(&tcp).unwrap()), "packets differ");
    assert!(!crossed.contains(&STALE), "stale bytes crossed: {crossed:02x?}");

    let (kind, crossed) = first_record(&bus_b, "a/udp/packet_group");
    assert_eq!(kind, KIND_DATAGRAM_GROUP);
    assert_eq!(crossed.len(), 8 + (80 + 16) + (80 + 400));
    assert!(
        decode_datagram_group(&crossed).unwrap().eq(decode_datagram_group(&udp).unwrap()),
        "datagrams differ"
    );
    assert!(!crossed.contains(&STALE), "stale bytes crossed: {crossed:02x?}");

    assert_eq!(first_record(&bus_b, "a/other/raw"), (KIND_PACKET_GROUP, tcp.clone()));
}
