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

/// A packet group received by io_uring fills whole receive slots: the
/// shard header counts the packets' data as payload beside the record
/// bytes, so that `ringest ls` can show both.
#[test]
fn packet_groups_count_their_data_as_payload() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use engine::config::{ReceivePathChoice, TcpServerConfig};

    let t = common::bus();
    let config =
        TcpServerConfig { receive_path: ReceivePathChoice::IoUring, ..common::server_config("payload") };
    let (engine, addr) = common::start(&t.bus, config);
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.write_all(&[7u8; 5000]).unwrap();
    let deadline = Instant::now() + common::DEADLINE;
    let info = loop {
        let info = shm_bus::channel_info(&t.bus, "payload/packet_group").unwrap();
        if info.payload_bytes() >= 5000 {
            break info;
        }
        assert!(Instant::now() < deadline, "payload bytes: {}", info.payload_bytes());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(info.payload_bytes(), 5000);
    assert!(info.bytes_written() > info.payload_bytes(), "{} ring bytes", info.bytes_written());
    engine.stop().unwrap();
}
