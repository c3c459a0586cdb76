//! `ringest replay --udp` end to end: MCAP logs written as `ringest log`
//! writes a UDP stage's topics, and pcap / pcapng captures written here byte
//! by byte (frames built with etherparse), sent to a real UDP socket that
//! checks every datagram, its order, its source and the pacing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{failure_of, random_bytes, text};
use etherparse::PacketBuilder;

/// A UDP receiver with room for a burst.
fn receiver(address: &str) -> UdpSocket {
    let socket = UdpSocket::bind(address).unwrap();
    socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    socket
}

/// Datagrams as they arrived: when, from, bytes.
type Arrivals = Vec<(Instant, SocketAddr, Vec<u8>)>;

/// Every datagram that arrives until a pause.
fn receive_all(socket: &UdpSocket) -> Arrivals {
    let mut buf = vec![0; 65536];
    let mut received = Vec::new();
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        received.push((Instant::now(), from, buf[..len].to_vec()));
    }
    received
}

fn ringest() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringest"));
    command.env_remove("RUST_LOG");
    command
}

/// Runs `ringest replay ARGS` while `socket` receives; returns the exit
/// status, stdout, stderr and what arrived.
fn replay_into(socket: &UdpSocket, args: &[&str]) -> (std::process::ExitStatus, String, String, Arrivals) {
    let child = ringest()
        .arg("replay")
        .args(args)
        .arg("--udp")
        .arg(socket.local_addr().unwrap().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let received = receive_all(socket);
    let output = child.wait_with_output().unwrap();
    (output.status, text(&output.stdout), text(&output.stderr), received)
}

/// Groups `received` by sender, in arrival order.
fn by_sender(received: &[(Instant, SocketAddr, Vec<u8>)]) -> HashMap<SocketAddr, Vec<Vec<u8>>> {
    let mut senders: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    for (_, from, data) in received {
        senders.entry(*from).or_default().push(data.clone());
    }
    senders
}

/// A log as `ringest log` writes a UDP stage `cam`: per message (source,
/// destination, truncated, log time in ms, bytes), plus a JSON stats topic
/// that replay skips.
fn write_udp_log(path: &Path, messages: &[(&str, &str, bool, u64, Vec<u8>)]) {
    let mut writer = mcap::Writer::new(std::fs::File::create(path).unwrap()).unwrap();
    let schema = writer.add_schema("ringest.UdpSocketStats", "jsonschema", b"{}").unwrap();
    let stats = writer.add_channel(schema, "cam/socket_stats", "json", &BTreeMap::new()).unwrap();
    let mut channels = HashMap::new();
    for (sequence, (source, destination, truncated, ms, data)) in (0..).zip(messages) {
        let channel_id = *channels.entry((source, destination, truncated)).or_insert_with(|| {
            let mut metadata = BTreeMap::from([
                ("source".to_owned(), source.to_string()),
                ("destination".to_owned(), destination.to_string()),
            ]);
            if *truncated {
                metadata.insert("truncated".to_owned(), "true".to_owned());
            }
            let topic = format!("cam/datagrams/{source}");
            writer.add_channel(0, &topic, "application/octet-stream", &metadata).unwrap()
        });
        let log_time = ms * 1_000_000;
        let header = mcap::records::MessageHeader { channel_id, sequence, log_time, publish_time: log_time };
        writer.write_to_known_channel(&header, data).unwrap();
        let header = mcap::records::MessageHeader { channel_id: stats, ..header };
        writer.write_to_known_channel(&header, b"{}").unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn a_log_replays_each_source_from_its_own_socket_in_order_and_paced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("udp.mcap");
    let (lidar, camera) = ("10.0.0.1:2368", "[fe80::1]:5004");
    // 1.2 s of log, 0.3 s at --speed 4; the lidar to a group and to the
    // stage, one camera datagram logged truncated.
    let mut messages = Vec::new();
    for i in 0..13u64 {
        let size = 1 + (i as usize * 4999) % 60_000;
        messages.push((
            lidar,
            if i % 2 == 0 { "239.1.1.1:2368" } else { "127.0.0.1:2368" },
            false,
            i * 100,
            random_bytes(i, size),
        ));
        messages.push((
            camera,
            "[ff15::7]:5004",
            i == 5,
            i * 100 + 50,
            random_bytes(100 + i, 1 + i as usize),
        ));
    }
    write_udp_log(&path, &messages);
    let socket = receiver("127.0.0.1:0");
    let (status, stdout, stderr, received) = replay_into(&socket, &[path.to_str().unwrap(), "--speed", "4"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("sending 26 datagrams from 2 sources to 127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("note: 1 datagram was logged truncated"), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("replayed 26 datagrams ("), "{stdout}");

    let senders = by_sender(&received);
    assert_eq!(senders.len(), 2, "one socket per logged source");
    let mut expected: Vec<Vec<Vec<u8>>> = [lidar, camera]
        .iter()
        .map(|source| messages.iter().filter(|m| m.0 == *source).map(|m| m.4.clone()).collect())
        .collect();
    let mut got: Vec<Vec<Vec<u8>>> = senders.into_values().collect();
    expected.sort();
    got.sort();
    assert!(got == expected, "every datagram, whole and in order, per source");
    let paced = received.last().unwrap().0 - received[0].0;
    assert!(paced >= Duration::from_millis(290), "{paced:?}: faster than 1.25 s of log at --speed 4");
    assert!(paced < Duration::from_millis(1300), "{paced:?}: slower than --speed 4");

    // One source only, as fast as possible.
    let topic = format!("cam/datagrams/{camera}");
    let (status, stdout, _, received) =
        replay_into(&socket, &[path.to_str().unwrap(), "--max", "--topic", &topic]);
    assert!(status.success() && stdout.starts_with("sending 13 datagrams from 1 source"), "{stdout}");
    let got: Vec<Vec<u8>> = received.into_iter().map(|r| r.2).collect();
    let camera_sent: Vec<Vec<u8>> = messages.iter().filter(|m| m.0 == camera).map(|m| m.4.clone()).collect();
    assert!(got == camera_sent, "the camera's datagrams only, in order");
}

// -- Captures -------------------------------------------------------------

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn udp4(source: ([u8; 4], u16), destination: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(source.0, destination.0, 64).udp(source.1, destination.1);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

fn udp6(source: ([u8; 16], u16), destination: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(source.0, destination.0, 64).udp(source.1, destination.1);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

fn tcp4(payload: &[u8]) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).tcp(5, 6, 7, 1024);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

/// A frame of a capture: time in µs, bytes kept, length on the wire.
struct Frame {
    micros: u64,
    data: Vec<u8>,
    wire_len: usize,
}

fn frame(micros: u64, data: Vec<u8>) -> Frame {
    let wire_len = data.len();
    Frame { micros, data, wire_len }
}

/// A classic pcap file (little-endian, µs), Ethernet.
fn pcap(frames: &[Frame]) -> Vec<u8> {
    let mut file = Vec::new();
    file.extend(0xa1b2_c3d4u32.to_le_bytes());
    file.extend(2u16.to_le_bytes());
    file.extend(4u16.to_le_bytes());
    file.extend([0; 8]); // thiszone, sigfigs
    file.extend(65_535u32.to_le_bytes()); // snaplen
    file.extend(1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for f in frames {
        file.extend(((f.micros / 1_000_000) as u32).to_le_bytes());
        file.extend(((f.micros % 1_000_000) as u32).to_le_bytes());
        file.extend((f.data.len() as u32).to_le_bytes());
        file.extend((f.wire_len as u32).to_le_bytes());
        file.extend(&f.data);
    }
    file
}

/// A pcapng block of `kind` with `body` (padded to 4 bytes).
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut padded = body.to_vec();
    padded.resize(body.len().next_multiple_of(4), 0);
    let len = (12 + padded.len()) as u32;
    [&kind.to_le_bytes()[..], &len.to_le_bytes(), &padded, &len.to_le_bytes()].concat()
}

/// A pcapng file, one Ethernet interface with timestamps in ns
/// (`if_tsresol` 9), enhanced packet blocks.
fn pcapng(frames: &[Frame]) -> Vec<u8> {
    let mut section = Vec::new();
    section.extend(0x1a2b_3c4du32.to_le_bytes());
    section.extend(1u16.to_le_bytes());
    section.extend(0u16.to_le_bytes());
    section.extend((-1i64).to_le_bytes());
    let mut file = block(0x0a0d_0d0a, &section);
    let mut interface = Vec::new();
    interface.extend(1u16.to_le_bytes()); // LINKTYPE_ETHERNET
    interface.extend(0u16.to_le_bytes());
    interface.extend(262_144u32.to_le_bytes());
    interface.extend([9, 0, 1, 0, 9, 0, 0, 0]); // if_tsresol = 9: ns, padded
    interface.extend([0, 0, 0, 0]); // opt_endofopt
    file.extend(block(1, &interface));
    for f in frames {
        let ns = f.micros * 1000;
        let mut body = Vec::new();
        body.extend(0u32.to_le_bytes());
        body.extend(((ns >> 32) as u32).to_le_bytes());
        body.extend((ns as u32).to_le_bytes());
        body.extend((f.data.len() as u32).to_le_bytes());
        body.extend((f.wire_len as u32).to_le_bytes());
        body.extend(&f.data);
        file.extend(block(6, &body));
    }
    file
}

/// Frames of two sources (IPv4 and IPv6) among frames that are no UDP
/// datagram to replay; returns them and the payloads by source port.
fn mixed_capture() -> (Vec<Frame>, BTreeMap<u16, Vec<Vec<u8>>>) {
    let start = 1_700_000_000_000_000u64;
    let mut frames = Vec::new();
    let mut expected: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..10u64 {
        let lidar = random_bytes(i, 1206);
        frames.push(frame(
            start + i * 40_000,
            udp4(([192, 168, 1, 201], 2368), ([192, 168, 1, 100], 2368), &lidar),
        ));
        expected.entry(2368).or_default().push(lidar);
        let camera = random_bytes(50 + i, 10 + i as usize * 100);
        let v6 = |last| {
            let mut ip = [0; 16];
            ip[0] = 0xfd;
            ip[15] = last;
            ip
        };
        frames.push(frame(start + i * 40_000 + 20_000, udp6((v6(1), 5004), (v6(2), 5006), &camera)));
        expected.entry(5004).or_default().push(camera);
    }
    // Not replayed: TCP, a frame cut by the snap length, a frame whose IPv4
    // header claims more than the frame holds, a datagram to another port.
    frames.insert(3, frame(start + 50_000, tcp4(b"not a datagram")));
    let mut cut = frame(start + 60_000, udp4(([10, 0, 0, 9], 9), ([10, 0, 0, 1], 2368), &[7; 300]));
    cut.data.truncate(100);
    frames.insert(5, cut);
    let mut bad = udp4(([10, 0, 0, 9], 9), ([10, 0, 0, 1], 2368), &[1; 40]);
    bad[14 + 2..14 + 4].copy_from_slice(&1500u16.to_be_bytes());
    frames.insert(7, frame(start + 70_000, bad));
    frames.push(frame(start + 400_000, udp4(([10, 0, 0, 3], 53), ([10, 0, 0, 1], 53), b"dns")));
    (frames, expected)
}

#[test]
fn pcap_and_pcapng_captures_replay_their_udp_payloads_with_their_timing() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, expected) = mixed_capture();
    for (name, bytes) in [("drive.pcap", pcap(&frames)), ("drive.pcapng", pcapng(&frames))] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let socket = receiver("127.0.0.1:0");
        let args = [path.to_str().unwrap(), "--udp-port", "2368", "--udp-port", "5006", "--speed", "2"];
        let (status, stdout, stderr, received) = replay_into(&socket, &args);
        assert!(status.success(), "{name}: {stdout}{stderr}");
        assert!(stdout.starts_with("sending 20 datagrams from 2 sources"), "{name}: {stdout}");
        let summary = stdout.lines().last().unwrap();
        assert!(
            summary.starts_with("replayed 20 datagrams (")
                && summary.ends_with(
                    "; frames skipped: 1 not UDP, 1 malformed, 1 cut by the capture's snap length, \
                     1 left out by --udp-port or --src"
                ),
            "{name}: {summary}"
        );
        let senders = by_sender(&received);
        assert_eq!(senders.len(), 2, "{name}: one socket per captured source");
        let mut got: Vec<Vec<Vec<u8>>> = senders.into_values().collect();
        let mut want: Vec<Vec<Vec<u8>>> = expected.values().cloned().collect();
        got.sort();
        want.sort();
        assert!(got == want, "{name}: every payload, in order, per source");
        // 380 ms of capture at --speed 2: 190 ms (the µs or ns of each
        // format read right: 1000x off would take minutes or no time).
        let paced = received.last().unwrap().0 - received[0].0;
        assert!(
            paced >= Duration::from_millis(185) && paced < Duration::from_millis(1000),
            "{name}: {paced:?}"
        );
    }
}

#[test]
fn source_filters_choose_the_senders() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, expected) = mixed_capture();
    let path = dir.path().join("filtered.pcapng");
    std::fs::write(&path, pcapng(&frames)).unwrap();
    let socket = receiver("[::1]:0");
    let (status, stdout, _, received) =
        replay_into(&socket, &[path.to_str().unwrap(), "--max", "--src", "[fd00::1]:5004"]);
    assert!(
        status.success() && stdout.starts_with("sending 10 datagrams from 1 source to [::1]:"),
        "{stdout}"
    );
    let got: Vec<Vec<u8>> = received.into_iter().map(|r| r.2).collect();
    assert_eq!(got, expected[&5004]);
}

#[test]
fn damaged_captures_fail_after_what_they_hold_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, _) = mixed_capture();
    let whole = pcap(&frames);
    // Cut in the middle of the last frame.
    let path = dir.path().join("cut.pcap");
    std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
    let socket = receiver("127.0.0.1:0");
    let (status, stdout, stderr, received) = replay_into(&socket, &[path.to_str().unwrap(), "--max"]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("warning: ") && stdout.contains("is damaged at frame 24"), "{stdout}");
    // The cut frame is the last, a datagram: 20 before it.
    assert_eq!(received.len(), 20, "every datagram before the damage");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ringest: replay stopped after 20 datagrams: "), "{stderr}");

    for (name, bytes) in [
        ("header.pcap", whole[..20].to_vec()),
        ("garbage.pcapng", [&[0x0a, 0x0d, 0x0d, 0x0a][..], &[0xff; 40]].concat()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (code, stderr) =
            failure_of(ringest(), &["replay", path.to_str().unwrap(), "--udp", "127.0.0.1:9"]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains("is not a valid capture"), "{name}: {stderr}");
    }

    // Random damage: a clean failure (1) or a replay (0), never a panic.
    let sink = receiver("127.0.0.1:0");
    let target = sink.local_addr().unwrap().to_string();
    let ng = pcapng(&frames);
    for seed in 0..60u64 {
        let original = if seed % 2 == 0 { &whole } else { &ng };
        let mut damaged = original.clone();
        for noise in random_bytes(seed, 8).chunks(2) {
            let at = 24 + usize::from(u16::from_le_bytes([noise[0], noise[1]])) % (damaged.len() - 24);
            damaged[at] ^= 0x5a ^ noise[0];
        }
        let path = dir.path().join("damaged");
        std::fs::write(&path, &damaged).unwrap();
        let status = ringest()
            .args(["replay", path.to_str().unwrap(), "--udp", &target, "--max"])
            .output()
            .unwrap()
            .status;
        assert!(matches!(status.code(), Some(0 | 1)), "seed {seed}: {status}");
    }
}

#[test]
fn replay_fails_when_datagrams_are_refused_or_the_target_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.mcap");
    let messages: Vec<_> =
        (0..3).map(|i| ("10.0.0.1:1", "10.0.0.2:2", false, i * 100, vec![i as u8; 10])).collect();
    write_udp_log(&path, &messages);
    // A port nobody listens on: the host refuses the datagrams.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let target = format!("127.0.0.1:{port}");
    let (code, stderr) =
        failure_of(ringest(), &["replay", path.to_str().unwrap(), "--udp", &target, "--speed", "4"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not be sent to") && stderr.contains("refused"), "{stderr}");

    let capture = dir.path().join("c.pcap");
    std::fs::write(&capture, pcap(&[])).unwrap();
    let (code, stderr) =
        failure_of(ringest(), &["replay", capture.to_str().unwrap(), "--connect", "127.0.0.1:9"]);
    assert!(code == 1 && stderr.contains("replays over UDP only"), "{stderr}");
    let (code, stderr) =
        failure_of(ringest(), &["replay", capture.to_str().unwrap(), "--udp", "127.0.0.1:9"]);
    assert!(code == 1 && stderr.contains("holds no UDP datagrams"), "{stderr}");
    let tcp_only = dir.path().join("tcp.mcap");
    let mut writer = mcap::Writer::new(std::fs::File::create(&tcp_only).unwrap()).unwrap();
    let channel =
        writer.add_channel(0, "ingest/packet_group/1", "application/octet-stream", &BTreeMap::new()).unwrap();
    let header =
        mcap::records::MessageHeader { channel_id: channel, sequence: 0, log_time: 0, publish_time: 0 };
    writer.write_to_known_channel(&header, b"tcp bytes").unwrap();
    writer.finish().unwrap();
    let (code, stderr) =
        failure_of(ringest(), &["replay", tcp_only.to_str().unwrap(), "--udp", "127.0.0.1:9"]);
    assert!(code == 1 && stderr.contains("holds no datagrams") && stderr.contains("--connect"), "{stderr}");
    let (code, stderr) =
        failure_of(ringest(), &["replay", path.to_str().unwrap(), "--udp", "127.0.0.1:9", "--udp-port", "5"]);
    assert!(code == 1 && stderr.contains("is an MCAP log"), "{stderr}");
    let (code, stderr) = failure_of(
        ringest(),
        &["replay", path.to_str().unwrap(), "--udp", "127.0.0.1:9", "--topic", "cam/datagrams/1.2.3.4:5"],
    );
    assert!(code == 1 && stderr.contains("matches --topic"), "{stderr}");
    for usage in [
        &["replay", path.to_str().unwrap(), "--udp", "127.0.0.1:9", "--conn", "1"][..],
        &["replay", path.to_str().unwrap(), "--connect", "127.0.0.1:9", "--udp-port", "5"],
        &["replay", path.to_str().unwrap(), "--udp", "127.0.0.1:9", "--src", "lidar"],
    ] {
        assert_eq!(failure_of(ringest(), usage).0, 2, "{usage:?}");
    }
}

/// A pcapng interface description block of `link` type, timestamps in µs
/// (no `if_tsresol`: the format's default).
fn interface_block(link: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(link.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    body.extend(262_144u32.to_le_bytes());
    block(1, &body)
}

/// An enhanced packet block of `interface` at `micros` µs.
fn packet_block(interface: u32, micros: u64, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(interface.to_le_bytes());
    body.extend(((micros >> 32) as u32).to_le_bytes());
    body.extend((micros as u32).to_le_bytes());
    body.extend((data.len() as u32).to_le_bytes());
    body.extend((data.len() as u32).to_le_bytes());
    body.extend(data);
    block(6, &body)
}

#[test]
fn vlan_linux_cooked_v2_and_raw_ip_interfaces_of_one_pcapng_replay_in_order() {
    // Three interfaces as `tcpdump -i any` and capture tools write them: a
    // VLAN-tagged Ethernet one, a Linux cooked v2 one (LINKTYPE_LINUX_SLL2),
    // a raw IP one; timestamps in µs.
    let mut section = Vec::new();
    section.extend(0x1a2b_3c4du32.to_le_bytes());
    section.extend(1u16.to_le_bytes());
    section.extend(0u16.to_le_bytes());
    section.extend((-1i64).to_le_bytes());
    let mut file = block(0x0a0d_0d0a, &section);
    for link in [1u16, 276, 101] {
        file.extend(interface_block(link));
    }
    let start = 1_700_000_000_000_000u64;
    let payloads: Vec<Vec<u8>> = (0..9u64).map(|i| random_bytes(900 + i, 50 + i as usize * 300)).collect();
    for (i, payload) in (0..).zip(&payloads) {
        let micros = start + i * 25_000;
        let frame = match i % 3 {
            0 => {
                let vlan = etherparse::VlanId::try_new(42).unwrap();
                let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .single_vlan(vlan)
                    .ipv4([10, 1, 0, 1], [10, 1, 0, 2], 64)
                    .udp(7000, 2368);
                let mut frame = Vec::new();
                builder.write(&mut frame, payload).unwrap();
                frame
            }
            1 => {
                // protocol, reserved, interface index, ARPHRD, packet type,
                // address length, address (8 bytes); then the IP packet.
                let mut frame = vec![0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6];
                frame.extend(MAC_A);
                frame.extend([0, 0]);
                let builder = PacketBuilder::ipv4([10, 1, 0, 3], [10, 1, 0, 2], 64).udp(7001, 2368);
                builder.write(&mut frame, payload).unwrap();
                frame
            }
            _ => {
                let mut v6 = [0; 16];
                v6[0] = 0xfd;
                v6[15] = 9;
                let builder =
                    PacketBuilder::ipv6(v6, [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 64)
                        .udp(7002, 2368);
                let mut frame = Vec::new();
                builder.write(&mut frame, payload).unwrap();
                frame
            }
        };
        file.extend(packet_block((i % 3) as u32, micros, &frame));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("any.pcapng");
    std::fs::write(&path, file).unwrap();
    let socket = receiver("127.0.0.1:0");
    let (status, stdout, stderr, received) = replay_into(&socket, &[path.to_str().unwrap(), "--speed", "2"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("sending 9 datagrams from 3 sources"), "{stdout}");
    assert!(!stdout.contains("frames skipped"), "{stdout}");
    // In capture order, each source from its own socket.
    let got: Vec<Vec<u8>> = received.iter().map(|r| r.2.clone()).collect();
    assert!(got == payloads, "every payload, in capture order");
    let senders: Vec<SocketAddr> = received.iter().map(|r| r.1).collect();
    assert_eq!(senders[0..3], senders[3..6], "source i on socket i % 3");
    assert_eq!(senders.iter().collect::<std::collections::HashSet<_>>().len(), 3);
    // 200 ms of capture (µs by default) at --speed 2: 100 ms.
    let paced = received.last().unwrap().0 - received[0].0;
    assert!(paced >= Duration::from_millis(95) && paced < Duration::from_millis(900), "{paced:?}");
}
