//! A real camera stream into a UDP stage: GStreamer's RTP JPEG payloader
//! sends test video, a lossless logger records it, and the logged
//! datagrams, replayed by `ringest replay --udp` into GStreamer's
//! depayloader, decode back to every frame, pixel for pixel. tcpdump
//! captures the same stream, and `ringest replay` of the capture sends
//! exactly the payloads the stage received, in order.

mod common;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, bus, ringest, text};
use engine::config::UdpConfig;
use engine::{Engine, records};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

const FRAMES: usize = 30;
/// Raw video that rtpjpegpay takes (4:2:0 JPEG).
const CAPS: &str = "video/x-raw,format=I420,width=320,height=240,framerate=30/1";
const RTP_JPEG: &str = "application/x-rtp,media=video,clock-rate=90000,encoding-name=JPEG,payload=26";

/// `gst-launch-1.0` with `pipeline`; fails the test in one line when
/// GStreamer is missing.
fn gst(pipeline: &str) -> Command {
    let probe = Command::new("gst-launch-1.0").arg("--version").output();
    if !probe.is_ok_and(|out| out.status.success()) {
        panic!(
            "gst-launch-1.0 missing: run scripts/test (or apt-get install gstreamer1.0-tools \
             gstreamer1.0-plugins-base gstreamer1.0-plugins-good)"
        );
    }
    let mut command = Command::new("gst-launch-1.0");
    command.arg("-q").arg("-e").args(pipeline.split_whitespace());
    command
}

/// Polls `done` until it holds; fails the test after [`DEADLINE`].
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{what}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout) + &text(&out.stderr)
}

fn interrupt(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The frames `dir/<prefix>-*.raw`, in order.
fn frames(dir: &Path, prefix: &str) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{prefix}-")))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A lossless reader of `<stage>/packet_group` from its oldest record.
fn collect(bus: &BusDir, stage: &str) -> Reader {
    let options = ReaderOptions::gated().start(StartAt::Oldest);
    Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap()
}

/// Reads datagram payloads into `into` until it holds `count`.
fn read_datagrams(reader: &mut Reader, into: &mut Vec<Vec<u8>>, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    while into.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} datagrams", into.len());
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap() {
            for d in records::decode_datagram_group(sample.payload()).unwrap() {
                assert!(!d.meta.truncated());
                into.push(d.data.to_vec());
            }
        }
    }
}

#[test]
fn gstreamer_rtp_video_is_logged_losslessly_decodes_back_to_every_frame_and_its_capture_replays_exactly() {
    let t = bus();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // The frames as GStreamer decodes them without the network between.
    let reference = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! jpegenc ! jpegdec ! videoconvert ! \
         video/x-raw,format=I420 ! multifilesink location={}",
        path("ref-%05d.raw")
    );
    run(&mut gst(&reference), "reference frames");

    let config = UdpConfig {
        name: "cam".into(),
        address: "127.0.0.1:0".parse().unwrap(),
        max_datagram_size_b: 1500,
        kernel_receive_buffer_size_b: 4 << 20,
        ..Default::default()
    };
    let engine = Engine::new(t.bus.clone()).udp(config).start().unwrap();
    let addr = engine.wait_bound("cam", DEADLINE).unwrap();
    let mut reader = collect(&t.bus, "cam");
    let mut logger = ringest(&t.bus)
        .args(["log", "cam", "--lossless", "--out", &path("cam.mcap")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tcpdump = Command::new("tcpdump")
        .args([
            "-i",
            "lo",
            "-U",
            "-w",
            &path("cap.pcap"),
            "udp",
            "and",
            "dst",
            "port",
            &addr.port().to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("tcpdump missing ({e}): run scripts/test (or apt-get install tcpdump)"));
    // tcpdump says "listening on lo" once it captures.
    let mut stderr = tcpdump.stderr.take().unwrap();
    let mut said = Vec::new();
    let mut byte = [0; 1];
    while !text(&said).contains("listening on") {
        assert!(stderr.read(&mut byte).unwrap() == 1, "tcpdump ended: {}", text(&said));
        said.push(byte[0]);
    }

    let camera = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! jpegenc ! rtpjpegpay ! udpsink host=127.0.0.1 port={}",
        addr.port()
    );
    run(&mut gst(&camera), "the camera");
    // Everything the camera sent is in the kernel: stop the capture.
    let mut sent_datagrams = 0;
    eventually("the stage to receive the stream", || {
        engine.udp_stats("cam").is_some_and(|s| {
            sent_datagrams = s.total().datagrams;
            s.total().datagrams > 0 && s.total().datagrams_per_s == 0.0
        })
    });
    interrupt(&tcpdump);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(tcpdump.wait().unwrap().success());
    let captured: usize = rest
        .lines()
        .find_map(|l| l.strip_suffix(" packets captured").and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("tcpdump's count: {rest}"));
    assert_eq!(captured as u64, sent_datagrams, "the stage received every captured datagram");
    let stats = engine.udp_stats("cam").unwrap();
    assert_eq!(stats.total().kernel_drops, 0);
    let mut received = Vec::new();
    read_datagrams(&mut reader, &mut received, captured);
    engine.stop().unwrap();
    let mut summary = String::new();
    logger.stdout.take().unwrap().read_to_string(&mut summary).unwrap();
    assert!(logger.wait().unwrap().success(), "{summary}");
    assert!(summary.contains(&format!("logged {captured} datagrams")), "{summary}");
    assert!(summary.contains("lost 0 records"), "{summary}");

    // The log, replayed into GStreamer's depayloader, decodes to every frame.
    let port = free_port();
    let depayload = format!(
        "udpsrc port={port} buffer-size=4194304 caps={RTP_JPEG} ! rtpjpegdepay ! jpegdec ! videoconvert ! \
         video/x-raw,format=I420 ! multifilesink location={}",
        path("got-%05d.raw")
    );
    let mut decoder = gst(&depayload).stdout(Stdio::null()).spawn().unwrap();
    eventually("GStreamer to listen", || UdpSocket::bind(("127.0.0.1", port)).is_err());
    run(
        ringest(&t.bus).args(["replay", &path("cam.mcap"), "--udp", &format!("127.0.0.1:{port}")]),
        "replay of the log",
    );
    eventually("every frame decoded", || frames(dir.path(), "got").len() == FRAMES);
    interrupt(&decoder);
    assert!(decoder.wait().unwrap().success());
    let (got, expected) = (frames(dir.path(), "got"), frames(dir.path(), "ref"));
    assert_eq!(got.len(), FRAMES);
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert!(got == expected, "frame {i} differs from GStreamer's own decoding");
    }

    // The capture, replayed, sends exactly what the stage received.
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&receiver).set_recv_buffer_size(8 << 20).unwrap();
    receiver.set_read_timeout(Some(DEADLINE)).unwrap();
    let to: SocketAddr = receiver.local_addr().unwrap();
    run(
        ringest(&t.bus).args(["replay", &path("cap.pcap"), "--udp", &to.to_string()]),
        "replay of the capture",
    );
    let mut buf = vec![0; 65536];
    for (i, expected) in received.iter().enumerate() {
        let n = receiver.recv(&mut buf).unwrap();
        assert!(buf[..n] == expected[..], "datagram {i} of the capture");
    }
}
