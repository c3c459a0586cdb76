//! `ringest bridge status` from a process of its own: two `ringest run`
//! daemons bridged on loopback, each with its own bus; the status of each
//! side names the link and the channels that crossed it.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Daemon, bus, failure_of, ringest, stdout_of};

fn bridge_listening(daemon: &Daemon, name: &str) -> SocketAddr {
    let prefix = format!("bridge {name}: listening on ");
    let line = daemon.stdout.iter().find_map(|l| l.strip_prefix(&prefix)).expect("the bridge's address");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn bridge_status_shows_each_side_of_a_link_from_another_process() {
    let a = bus();
    let b = bus();
    let a_config = "[[tcp_server]]\nname = \"ingest\"\naddress = \"127.0.0.1:0\"\nring_size_b = 4194304\n\
                    [[bridge]]\nname = \"to-b\"\nlisten = \"127.0.0.1:0\"\nexport = [\"ingest/*\"]\n\
                    import_prefix = \"b\"\n";
    let a_daemon = Daemon::start(ringest(&a.bus), a_config);
    let address = bridge_listening(&a_daemon, "to-b");
    let b_config = format!("[[bridge]]\nname = \"to-a\"\nconnect = \"{address}\"\nimport_prefix = \"a\"\n");
    let _b_daemon = Daemon::start(ringest(&b.bus), &b_config);
    let mut sensor = TcpStream::connect(a_daemon.addr("ingest")).unwrap();
    sensor.write_all(&vec![7u8; 100_000]).unwrap();

    // B's status, as JSON: connected, the packets imported.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let line = stdout_of(ringest(&b.bus), &["bridge", "status", "to-a", "--json"]);
        let status: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let imported = status["imports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "a/ingest/packet_group")
            .map_or(0, |i| i["bytes"].as_u64().unwrap());
        if status["connected"] == true && imported > 0 {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["peer"], address.to_string());
    assert_eq!((status["tls"].as_bool(), status["links"].as_u64()), (Some(false), Some(1)));
    assert!(status["rtt_ns"].as_u64().is_some(), "{status}");

    // A's status, as a table: the link and the packets sent.
    let table = stdout_of(ringest(&a.bus), &["bridge", "status", "to-b"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("bridge to-b: connected to 127.0.0.1:"), "{table}");
    assert!(lines[0].contains("(plaintext); 1 link made"), "{table}");
    let sent = lines.iter().find(|l| l.starts_with("ingest/packet_group ")).expect(&table);
    let cells: Vec<&str> = sent.split_whitespace().collect();
    assert_eq!(cells[1], "sent", "{table}");
    assert!(cells[2].parse::<u64>().unwrap() > 0, "{table}");

    // No such bridge: one line, exit 1.
    let (code, stderr) = failure_of(ringest(&a.bus), &["bridge", "status", "nowhere"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bridge nowhere"), "{stderr}");
}
