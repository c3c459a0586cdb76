use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::config::UdpConfig;
use engine::records::{self, Datagram, DatagramMeta, UdpSocketStats};
use engine::{Engine, EngineHandle};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

use super::RECEIVE_PATH;
use crate::common::{self, DEADLINE, eventually, random_bytes};

/// A stage on `address` (port 0) on the path under test.
fn config(name: &str, address: &str) -> UdpConfig {
    UdpConfig {
        name: name.into(),
        address: address.parse().unwrap(),
        receive_path: RECEIVE_PATH,
        ring_size_b: 4 << 20,
        kernel_receive_buffer_size_b: 4 << 20,
        ..Default::default()
    }
}

fn start(bus: &BusDir, config: UdpConfig) -> (EngineHandle, SocketAddr) {
    let name = config.name.clone();
    let engine = Engine::new(bus.clone()).udp(config).start().unwrap();
    let addr = engine.wait_bound(&name, DEADLINE).expect("stage bound");
    assert_eq!(engine.receive_path(&name), Some(expected_path()));
    (engine, addr)
}

fn expected_path() -> records::ReceivePath {
    match RECEIVE_PATH {
        engine::config::ReceivePathChoice::IoUring => records::ReceivePath::IoUringMultishot,
        _ => records::ReceivePath::GlommioRead,
    }
}

/// A datagram as read back: its metadata, its bytes, and its shard.
struct Got {
    meta: DatagramMeta,
    data: Vec<u8>,
    shard: u32,
}

/// A lossless reader of `<stage>/packet_group` from the oldest record.
struct Datagrams {
    reader: Reader,
    got: Vec<Got>,
    ended: bool,
}

impl Datagrams {
    fn attach(bus: &BusDir, stage: &str) -> Self {
        let options = ReaderOptions::gated().start(StartAt::Oldest);
        let reader = Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap();
        Self { reader, got: Vec::new(), ended: false }
    }

    /// Reads what is there, waiting up to `wait` for the first record.
    fn pump(&mut self, wait: Duration) {
        let mut timeout = wait;
        while let Some(event) = self.reader.recv_timeout(timeout).unwrap() {
            match event {
                Event::Record(sample) => {
                    assert_eq!(sample.kind(), records::KIND_DATAGRAM_GROUP);
                    for Datagram { meta, data } in records::decode_datagram_group(sample.payload()).unwrap() {
                        self.got.push(Got { meta, data: data.to_vec(), shard: sample.shard() });
                    }
                }
                Event::Ended => {
                    self.ended = true;
                    return;
                }
                Event::Restarted { .. } => panic!("producer restarted during a test"),
            }
            timeout = Duration::ZERO;
        }
    }

    fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({} datagrams so far)",
                self.got.len()
            );
            self.pump(Duration::from_millis(50));
        }
    }

    fn by_source(&self) -> HashMap<SocketAddr, Vec<&Got>> {
        let mut sources: HashMap<SocketAddr, Vec<&Got>> = HashMap::new();
        for got in &self.got {
            sources.entry(got.meta.source.into()).or_default().push(got);
        }
        sources
    }
}

/// The stage's latest statistics once `done` holds for them.
fn stats_until<F>(engine: &EngineHandle, stage: &str, what: &str, done: F) -> UdpSocketStats
where
    F: Fn(&UdpSocketStats) -> bool,
{
    let mut latest = None;
    eventually(what, || {
        latest = engine.udp_stats(stage);
        latest.as_ref().is_some_and(&done)
    });
    latest.unwrap()
}

/// The datagram number `seq` of sender `source`: its number, then
/// pseudo-random bytes, of a pseudo-random length up to `max`.
fn datagram(source: u64, seq: u64, max: usize) -> Vec<u8> {
    let len = 8
        + (random_bytes(source * 1_000_003 + seq, 4).iter().map(|&b| b as usize).sum::<usize>() * 37)
            % (max - 8);
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend(random_bytes(source << 32 | seq, len - 8));
    bytes
}

#[test]
fn datagrams_of_random_sizes_from_many_senders_arrive_whole_and_in_order() {
    const SENDERS: u64 = 8;
    const EACH: u64 = 400;
    const MAX: usize = 9000;
    let t = common::bus();
    let (engine, addr) = start(
        &t.bus,
        UdpConfig { max_datagram_size_b: MAX as u64, group_size: 16, ..config("lidar", "127.0.0.1:0") },
    );
    let received = Arc::new(AtomicU64::new(0));
    let mut datagrams = Datagrams::attach(&t.bus, "lidar");
    let progress = received.clone();
    let reader = std::thread::spawn(move || {
        datagrams.until("every datagram", |d| {
            progress.store(d.got.len() as u64, Ordering::Relaxed);
            d.got.len() as u64 >= SENDERS * EACH
        });
        datagrams
    });
    let senders: Vec<UdpSocket> = (0..SENDERS).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut sent = 0u64;
    for seq in 0..EACH {
        for (source, socket) in senders.iter().enumerate() {
            socket.send_to(&datagram(source as u64, seq, MAX), addr).unwrap();
            sent += 1;
        }
        // Flow control of the test, not of the stage: stay within what the
        // socket buffer holds, as UDP itself would drop the rest.
        eventually("the stage to keep up", || received.load(Ordering::Relaxed) + 256 >= sent);
    }
    let datagrams = reader.join().unwrap();
    let by_source = datagrams.by_source();
    assert_eq!(by_source.len(), SENDERS as usize);
    for (source, socket) in senders.iter().enumerate() {
        let from = socket.local_addr().unwrap();
        let got = &by_source[&from];
        assert_eq!(got.len() as u64, EACH, "datagrams from {from}");
        for (seq, g) in got.iter().enumerate() {
            let expected = datagram(source as u64, seq as u64, MAX);
            assert!(
                g.data == expected,
                "datagram {seq} from {from}: {} bytes, expected {}",
                g.data.len(),
                expected.len()
            );
            assert_eq!(g.meta.original_len as usize, expected.len());
            assert!(!g.meta.truncated());
            assert_eq!(SocketAddr::from(g.meta.destination), addr, "destination (IP_PKTINFO)");
        }
    }
    let stats =
        stats_until(&engine, "lidar", "stats of every datagram", |s| s.total().datagrams == SENDERS * EACH);
    assert_eq!(stats.total().kernel_drops, 0);
    assert_eq!(stats.receive_path, expected_path());
    let bytes: u64 = datagrams.got.iter().map(|g| g.data.len() as u64).sum();
    assert_eq!(stats.total().bytes, bytes);
    engine.stop().unwrap();
}

#[test]
fn a_datagram_longer_than_the_maximum_is_kept_truncated_flagged_and_counted() {
    let t = common::bus();
    let (engine, addr) =
        start(&t.bus, UdpConfig { max_datagram_size_b: 100, ..config("cam", "127.0.0.1:0") });
    let mut datagrams = Datagrams::attach(&t.bus, "cam");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let long = random_bytes(7, 1500);
    sender.send_to(&long, addr).unwrap();
    sender.send_to(&long[..100], addr).unwrap();
    sender.send_to(&[], addr).unwrap();
    datagrams.until("three datagrams", |d| d.got.len() == 3);
    let [cut, exact, empty] = &datagrams.got[..] else { unreachable!() };
    assert_eq!(cut.data, long[..100]);
    assert!(cut.meta.truncated());
    assert_eq!(cut.meta.original_len, 1500);
    assert_eq!(exact.data, long[..100]);
    assert!(!exact.meta.truncated());
    assert_eq!(exact.meta.original_len, 100);
    assert!(empty.data.is_empty() && !empty.meta.truncated());
    let stats = stats_until(&engine, "cam", "three datagrams counted", |s| s.total().datagrams == 3);
    assert_eq!(stats.total().truncated, 1);
    engine.stop().unwrap();
}

#[test]
fn kernel_timestamps_are_present_ordered_and_before_the_engine_saw_the_datagram() {
    let t = common::bus();
    let (engine, addr) = start(&t.bus, config("stamps", "127.0.0.1:0"));
    let mut datagrams = Datagrams::attach(&t.bus, "stamps");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = shm_bus::realtime_ns();
    for i in 0u32..50 {
        sender.send_to(&i.to_le_bytes(), addr).unwrap();
    }
    datagrams.until("50 datagrams", |d| d.got.len() == 50);
    let mut previous = 0;
    for got in &datagrams.got {
        let (kernel, hardware) = got.meta.kernel_time().expect("a kernel timestamp");
        assert!(!hardware, "loopback has no hardware stamps");
        assert!(kernel >= before && kernel >= previous, "kernel times ordered: {kernel} after {previous}");
        assert!(kernel <= got.meta.rx_realtime_ns, "the kernel received it before the engine did");
        previous = kernel;
    }
    engine.stop().unwrap();
    // And without them asked for: none.
    let t = common::bus();
    let (engine, addr) =
        start(&t.bus, UdpConfig { kernel_timestamps: false, ..config("plain", "127.0.0.1:0") });
    let mut datagrams = Datagrams::attach(&t.bus, "plain");
    sender.send_to(b"x", addr).unwrap();
    datagrams.until("a datagram", |d| d.got.len() == 1);
    assert_eq!(datagrams.got[0].meta.kernel_time(), None);
    engine.stop().unwrap();
}

#[test]
fn ipv6_datagrams_keep_their_addresses() {
    let t = common::bus();
    let Ok(sender) = UdpSocket::bind("[::1]:0") else {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    };
    let (engine, addr) = start(&t.bus, config("v6", "[::1]:0"));
    let mut datagrams = Datagrams::attach(&t.bus, "v6");
    sender.send_to(b"six", addr).unwrap();
    datagrams.until("a datagram", |d| d.got.len() == 1);
    let got = &datagrams.got[0];
    assert_eq!(got.data, b"six");
    assert_eq!(SocketAddr::from(got.meta.source), sender.local_addr().unwrap());
    assert_eq!(SocketAddr::from(got.meta.destination), addr);
    engine.stop().unwrap();
}

/// UDP cannot push back: with a lossless reader holding the ring full, the
/// kernel drops what its buffer cannot hold, and the stage counts exactly
/// that; every datagram counted as received is in the channel.
#[test]
fn a_stalled_lossless_reader_makes_the_kernel_drop_and_every_drop_is_counted() {
    const SENT: u64 = 3000;
    let t = common::bus();
    let small = UdpConfig {
        ring_size_b: 256 << 10,
        max_datagram_size_b: 1206,
        kernel_receive_buffer_size_b: 64 << 10,
        group_size: 8,
        ..config("flood", "127.0.0.1:0")
    };
    let (engine, addr) = start(&t.bus, small);
    let mut datagrams = Datagrams::attach(&t.bus, "flood");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..SENT {
        let mut bytes = seq.to_le_bytes().to_vec();
        bytes.resize(1206, seq as u8);
        sender.send_to(&bytes, addr).unwrap();
    }
    // Nothing read yet: the ring filled, then the kernel buffer, then the
    // kernel dropped.
    let stalled = stats_until(&engine, "flood", "the kernel to drop", |s| s.total().kernel_drops > 0);
    assert!(stalled.total().ring_full_stalls > 0, "the stage stopped reading: {stalled:?}");
    // Reading now lets the stage take what waited in the kernel's buffer:
    // then every datagram is either counted received or counted dropped.
    let mut counted = 0;
    datagrams.until("every datagram accounted for", |d| {
        let stats = engine.udp_stats("flood").unwrap();
        counted = stats.total().datagrams;
        counted + stats.total().kernel_drops == SENT && d.got.len() as u64 == counted
    });
    datagrams.until("every counted datagram", |d| d.got.len() as u64 == counted);
    let mut previous = None;
    for got in &datagrams.got {
        let seq = u64::from_le_bytes(got.data[..8].try_into().unwrap());
        assert!(got.data[8..].iter().all(|&b| b == seq as u8), "datagram {seq} intact");
        assert!(previous < Some(seq), "in order: {seq} after {previous:?}");
        previous = Some(seq);
    }
    engine.stop().unwrap();
    datagrams.pump(Duration::from_millis(200));
    assert_eq!(datagrams.got.len() as u64, counted, "nothing more after the stop");
}

#[test]
fn egress_records_go_out_as_datagrams_from_the_stage_port() {
    let t = common::bus();
    let sensor = UdpSocket::bind("127.0.0.1:0").unwrap();
    sensor.set_read_timeout(Some(DEADLINE)).unwrap();
    let stage =
        UdpConfig { egress_destination: Some(sensor.local_addr().unwrap()), ..config("cmd", "127.0.0.1:0") };
    let (engine, addr) = start(&t.bus, stage);
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    let egress = shm_bus::Producer::create(&t.bus, "cmd/egress_packets", Default::default()).unwrap();
    common::wait_for_egress_reader(&t.bus, "cmd/egress_outcomes".replace("outcomes", "packets").as_str());
    let mut outcomes =
        Reader::attach(&t.bus, "cmd/egress_outcomes", ReaderOptions::gated().start(StartAt::Oldest)).unwrap();
    let mut writer = egress.shard(0).unwrap();
    let to_other = records::DatagramEgressHeader { destination: Some(other.local_addr().unwrap().into()) };
    writer
        .send(records::KIND_DATAGRAM_EGRESS, &records::encode_datagram_egress(&to_other, b"to other"))
        .unwrap();
    let default = records::DatagramEgressHeader { destination: None };
    writer
        .send(records::KIND_DATAGRAM_EGRESS, &records::encode_datagram_egress(&default, b"to sensor"))
        .unwrap();
    let plain = records::encode_egress(&records::EgressHeader { target: None }, b"plain");
    writer.send(records::KIND_EGRESS, &plain).unwrap();
    let to_connection = records::encode_egress(&records::EgressHeader { target: Some(3) }, b"nowhere");
    writer.send(records::KIND_EGRESS, &to_connection).unwrap();
    writer.publish();
    let mut buf = [0; 64];
    let (n, from) = other.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to other"[..], addr));
    let (n, from) = sensor.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to sensor"[..], addr));
    let (n, _) = sensor.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"plain");
    let mut settled = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while settled.len() < 4 {
        assert!(Instant::now() < deadline, "outcomes: {settled:?}");
        if let Some(Event::Record(s)) = outcomes.recv_timeout(Duration::from_millis(50)).unwrap() {
            let outcome: records::EgressOutcome = records::decode(s.payload()).unwrap();
            settled.push((outcome.egress_seq, outcome.delivered, outcome.unmatched()));
        }
    }
    settled.sort();
    assert_eq!(settled, [(0, 1, false), (1, 1, false), (2, 1, false), (3, 0, true)]);
    let stats = stats_until(&engine, "cmd", "egress counted", |s| s.total().egress_sent == 3);
    assert_eq!(stats.total().egress_drops, 1);
    engine.stop().unwrap();
}

#[test]
fn sockets_share_the_port_and_each_sender_stays_on_one_shard_in_order() {
    const SENDERS: u64 = 16;
    const EACH: u64 = 50;
    let t = common::bus();
    let stage = UdpConfig { thread_processor_affinity: vec![0, 1], ..config("multi", "127.0.0.1:0") };
    let (engine, addr) = start(&t.bus, stage);
    let mut datagrams = Datagrams::attach(&t.bus, "multi");
    let senders: Vec<UdpSocket> = (0..SENDERS).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for seq in 0..EACH {
        for socket in &senders {
            socket.send_to(&seq.to_le_bytes(), addr).unwrap();
        }
        datagrams.pump(Duration::ZERO);
    }
    datagrams.until("every datagram", |d| d.got.len() as u64 == SENDERS * EACH);
    for (from, got) in datagrams.by_source() {
        let shard = got[0].shard;
        let seqs: Vec<u64> =
            got.iter().map(|g| u64::from_le_bytes(g.data[..8].try_into().unwrap())).collect();
        assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "{from} in order");
        assert!(got.iter().all(|g| g.shard == shard), "{from} on one shard");
    }
    let stats = stats_until(&engine, "multi", "two sockets reporting", |s| {
        s.sockets.len() == 2 && s.total().datagrams == SENDERS * EACH
    });
    assert!(stats.sockets.iter().all(|s| SocketAddr::from(s.local) == addr));
    engine.stop().unwrap();
    datagrams.pump(Duration::from_millis(500));
    assert!(datagrams.ended, "the channel ends with the stage");
}

/// Another process's SO_REUSEPORT socket would let both share the port
/// and split the flows between them: the stage refuses to start instead.
#[test]
fn a_port_shared_by_another_reuseport_socket_fails_the_start() {
    let t = common::bus();
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    holder.set_reuse_port(true).unwrap();
    holder.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let taken = holder.local_addr().unwrap().as_socket().unwrap();
    let err = Engine::new(t.bus.clone()).udp(config("shared", &taken.to_string())).start().unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn a_taken_address_fails_the_start_with_a_clear_error() {
    let t = common::bus();
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let err = Engine::new(t.bus.clone()).udp(config("busy", &taken.to_string())).start().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("busy") && text.contains(&format!("bind {taken}")) && text.contains("in use"),
        "{text}"
    );
}

/// A lagging lossless reader makes the claim stop anywhere, also between a
/// lap's last slot and the lap's end: the padding over the rest of the lap
/// must be claimed before that slot is lent (it was not, and the executor
/// panicked in shm-bus on the second lap). Many laps of a small ring with
/// slots that leave a remainder at each lap's end.
#[test]
fn a_lagging_lossless_reader_over_many_laps_gets_every_datagram() {
    const SENT: u64 = 1500;
    const MAX: usize = 20_000;
    let t = common::bus();
    let stage = UdpConfig {
        ring_size_b: 1 << 20,
        max_datagram_size_b: MAX as u64,
        group_size: 4,
        ..config("laps", "127.0.0.1:0")
    };
    let (engine, addr) = start(&t.bus, stage);
    let received = Arc::new(AtomicU64::new(0));
    let mut datagrams = Datagrams::attach(&t.bus, "laps");
    let progress = received.clone();
    let reader = std::thread::spawn(move || {
        // Slower than the sender: a few records, then a pause.
        let deadline = Instant::now() + DEADLINE;
        while (datagrams.got.len() as u64) < SENT {
            assert!(Instant::now() < deadline, "{} of {SENT} datagrams", datagrams.got.len());
            datagrams.pump(Duration::from_millis(5));
            progress.store(datagrams.got.len() as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(300));
        }
        datagrams
    });
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..SENT {
        sender.send_to(&datagram(0, seq, MAX), addr).unwrap();
        // Within the socket's buffer (4 MiB): the stage stalls, never drops.
        eventually("the reader to catch up", || received.load(Ordering::Relaxed) + 100 >= seq);
    }
    let datagrams = reader.join().unwrap();
    for (seq, got) in datagrams.got.iter().enumerate() {
        assert!(got.data == datagram(0, seq as u64, MAX), "datagram {seq}");
    }
    let stats = stats_until(&engine, "laps", "every datagram counted", |s| s.total().datagrams == SENT);
    assert_eq!(stats.total().kernel_drops, 0);
    engine.stop().unwrap();
}
