//! The TCP server stage end to end: real sockets on 127.0.0.1, OS-chosen
//! ports, a private bus per test.
//!
//! Every case runs on both receive paths: io_uring multishot recv (forced,
//! so a kernel without it fails here rather than testing the other path
//! twice) and the glommio read path.

// The same cases, compiled once per path, on purpose.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "cases"]
mod io_uring {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::IoUring;
    mod tcp_server;
}

#[path = "cases"]
mod glommio_read {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::GlommioRead;
    mod tcp_server;
}

/// The largest receive window (32768 buffers: a 1 GiB packet ring with
/// 4 KiB slots, as a 4 GiB ring with 16 KiB slots) needs a completion
/// queue the kernel accepts: with `receive_path = "io_uring"` the stage
/// runs that path (the stats say so) instead of silently falling back to
/// the read path. The ring file is sparse: only what is received is backed.
#[test]
fn the_largest_receive_window_runs_on_io_uring() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use engine::config::{ReceivePathChoice, TcpServerConfig};
    use engine::records::ReceivePath;

    let t = common::bus();
    let config = TcpServerConfig {
        receive_path: ReceivePathChoice::IoUring,
        ring_size_b: 1 << 30,
        receive_slot_size_b: 4096,
        ..common::server_config("wide")
    };
    let (engine, addr) = common::start(&t.bus, config);
    let mut stats_reader =
        shm_bus::Reader::attach(&t.bus, "wide/socket_stats", shm_bus::ReaderOptions::lossy()).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.write_all(&[7u8; 5000]).unwrap();
    let deadline = Instant::now() + common::DEADLINE;
    let stats = loop {
        assert!(Instant::now() < deadline, "no stats with the traffic");
        if let Some(shm_bus::Event::Record(s)) =
            stats_reader.recv_timeout(Duration::from_millis(200)).unwrap()
        {
            let stats: engine::records::SocketStats = engine::records::decode(s.payload()).unwrap();
            if stats.stage.traffic.bytes_received >= 5000 {
                break stats;
            }
        }
    };
    assert_eq!(stats.receive_path, ReceivePath::IoUringMultishot, "the stage fell back to the read path");
    engine.stop().unwrap();
}

/// Any process may publish `<stage>/egress_packets`, so its files are not
/// to be trusted: a `write_pos` that is not a record boundary used to panic
/// the egress thread as soon as a record followed (egress then stopped for
/// good). Now the thread reports the corrupt channel, retries, and carries
/// on with what follows.
#[test]
fn a_corrupt_egress_channel_does_not_stop_egress() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    let t = common::bus();
    let (engine, addr) = common::start(&t.bus, common::server_config("badegress"));
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let name = "badegress/egress_packets";
    let producer = shm_bus::Producer::create(&t.bus, name, shm_bus::ChannelOptions::default()).unwrap();
    let mut writer = producer.shard(0).unwrap();
    let shard_header = shm_bus::layout::PAGE + shm_bus::layout::shard_header::WRITE_POS as u64;
    let file = std::fs::OpenOptions::new().write(true).open(t.bus.ring_path(name)).unwrap();
    file.write_all_at(&44u64.to_le_bytes(), shard_header).unwrap();
    // The egress thread retries attaching every 200 ms: let it meet the
    // misaligned position, then publish over it.
    std::thread::sleep(Duration::from_millis(600));
    let send = |writer: &mut shm_bus::ShardWriter, bytes: &[u8]| {
        let record = engine::records::encode_egress(&engine::records::EgressHeader { target: None }, bytes);
        writer.send(engine::records::KIND_EGRESS, &record).unwrap();
    };
    send(&mut writer, b"first");
    common::wait_for_egress_reader(&t.bus, name);
    send(&mut writer, b"second");
    // "first" arrives too if the thread attached before the damage.
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"second") {
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == b"second" || got == b"firstsecond", "{got:?}");
    engine.stop().unwrap();
}
