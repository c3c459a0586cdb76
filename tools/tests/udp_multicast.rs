//! Multicast into UDP stages, with real `ringest run` processes inside a
//! network namespace the test makes: two stages in two processes joined to
//! one group receive the same datagrams, a source-specific join filters by
//! sender (loopback with multicast on, two sender addresses), and IPv6 and
//! IPv4 groups reach a dual-stack stage joined on a named interface (a
//! veth pair inside the namespace). Needs root (CI runs as root); elsewhere
//! it says why it skips.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon};
use engine::records;
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

/// A network namespace of the test, deleted when dropped.
struct Namespace(String);

impl Namespace {
    /// A namespace with `lo` up and then `setup` (arguments of `ip -n NS`);
    /// `None` (with the reason printed) where this host does not let the
    /// test make one.
    fn new(tag: &str, setup: &[&[&str]]) -> Option<Self> {
        let name = format!("ringest-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).output();
        match ip(&["netns", "add", &name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!(
                    "skipped: cannot make a network namespace (needs root): {}",
                    common::text(&out.stderr)
                );
                return None;
            }
            Err(e) => {
                eprintln!("skipped: cannot run `ip` ({e}): apt-get install iproute2");
                return None;
            }
        }
        let namespace = Self(name);
        let lo_up: &[&str] = &["link", "set", "lo", "up"];
        for step in std::iter::once(lo_up).chain(setup.iter().copied()) {
            let mut args = vec!["-n", namespace.0.as_str()];
            args.extend(step);
            let out = ip(&args).unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", common::text(&out.stderr));
        }
        Some(namespace)
    }

    /// `command` with `args`, run inside the namespace.
    fn exec(&self, command: &str) -> Command {
        let mut ip = Command::new("ip");
        ip.args(["netns", "exec", &self.0, command]);
        ip
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ringest` inside `namespace`, told about `bus`.
fn ringest_in(namespace: &Namespace, bus: &BusDir) -> Command {
    let mut command = namespace.exec(env!("CARGO_BIN_EXE_ringest"));
    command.env("RINGEST_BUS", bus.path()).env_remove("RUST_LOG");
    command
}

/// A UDP stage on port 5500 (the namespace is the test's own) joined to
/// `groups`, for `sources` only when given.
fn stage(name: &str, path: &str, groups: &[&str], sources: &[&str]) -> String {
    stage_on(name, path, "0.0.0.0:5500", groups, sources)
}

fn stage_on(name: &str, path: &str, address: &str, groups: &[&str], sources: &[&str]) -> String {
    let list = |items: &[&str]| items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[[udp]]\nname = \"{name}\"\nreceive_path = \"{path}\"\naddress = \"{address}\"\nring_size_b = 4194304\nmax_datagram_size_b = 1500\n\
         kernel_receive_buffer_size_b = 4194304\n\
         multicast_groups = [{}]\nmulticast_sources = [{}]\n",
        list(groups),
        list(sources)
    )
}

/// Every datagram of `<stage>/packet_group` (waiting until `count` came):
/// (source, destination) to their payloads, in order.
fn datagrams(bus: &BusDir, stage: &str, count: usize) -> BTreeMap<(SocketAddr, SocketAddr), Vec<Vec<u8>>> {
    let options = ReaderOptions::gated().start(StartAt::Oldest);
    let mut reader = Reader::attach(bus, &format!("{stage}/packet_group"), options).unwrap();
    let mut got = BTreeMap::<_, Vec<Vec<u8>>>::new();
    let mut seen = 0;
    let deadline = Instant::now() + DEADLINE;
    while seen < count {
        let senders: Vec<_> = got.iter().map(|(k, v)| (k, v.len())).collect();
        assert!(Instant::now() < deadline, "{stage}: {seen} of {count} datagrams: {senders:?}");
        if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(50)).unwrap() {
            for d in records::decode_datagram_group(sample.payload()).unwrap() {
                got.entry((d.meta.source.into(), d.meta.destination.into()))
                    .or_default()
                    .push(d.data.to_vec());
                seen += 1;
            }
        }
    }
    // Nothing more than expected arrives.
    if let Some(Event::Record(sample)) = reader.recv_timeout(Duration::from_millis(300)).unwrap() {
        panic!(
            "{stage}: more datagrams than expected: {:?}",
            records::decode_datagram_group(sample.payload())
        );
    }
    got
}

const SEND: &str = r#"
import socket, sys
count = int(sys.argv[1])
for source in sys.argv[2].split(","):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    for group in sys.argv[3].split(","):
        for i in range(count):
            payload = f"{source} {group} {i} ".encode() * (1 + i % 40)
            s.sendto(payload, (group, 5500))
"#;

#[test]
fn io_uring_stages_in_two_processes_get_the_same_group_and_a_source_specific_join_filters() {
    same_group_in_two_processes_and_a_source_specific_join("io_uring");
}

#[test]
fn recvmmsg_stages_in_two_processes_get_the_same_group_and_a_source_specific_join_filters() {
    same_group_in_two_processes_and_a_source_specific_join("glommio_read");
}

fn same_group_in_two_processes_and_a_source_specific_join(path: &str) {
    const EACH: usize = 100;
    let (near, far) = ("10.9.0.1", "10.9.0.2");
    let setup: &[&[&str]] = &[
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
        &["addr", "add", near, "dev", "lo"],
        &["addr", "add", far, "dev", "lo"],
    ];
    let Some(namespace) = Namespace::new(&path[..4], setup) else { return };
    let t = common::bus();
    let start = |name: &str, groups: &[&str], sources: &[&str]| {
        Daemon::start(ringest_in(&namespace, &t.bus), &stage(name, path, groups, sources))
    };
    let mut a = start("a", &["239.1.2.3"], &[]);
    let mut b = start("b", &["239.1.2.3"], &[]);
    let mut ssm = start("ssm", &["232.1.2.3"], &[near]);
    let runs = if path == "io_uring" { "receive path: io_uring" } else { "receive path: glommio read" };
    assert!(a.stdout.iter().any(|line| line.contains(runs)), "{runs}: {:#?}", a.stdout);
    let sent = namespace
        .exec("python3")
        .args(["-c", SEND, &EACH.to_string(), &format!("{near},{far}"), "239.1.2.3,232.1.2.3"])
        .output()
        .unwrap();
    assert!(sent.status.success(), "sender: {}", common::text(&sent.stderr));

    let expected = |source: &str, group: &str| -> Vec<Vec<u8>> {
        (0..EACH).map(|i| format!("{source} {group} {i} ").repeat(1 + i % 40).into_bytes()).collect()
    };
    let group = |group: &str| -> SocketAddr { format!("{group}:5500").parse().unwrap() };
    let got_a = datagrams(&t.bus, "a", 2 * EACH);
    let got_b = datagrams(&t.bus, "b", 2 * EACH);
    let got_ssm = datagrams(&t.bus, "ssm", EACH);
    for got in [&got_a, &got_b] {
        assert_eq!(got.len(), 2, "two senders to 239.1.2.3: {:?}", got.keys().collect::<Vec<_>>());
        for source in [near, far] {
            let (from, to) = got.keys().find(|(from, _)| from.ip().to_string() == source).copied().unwrap();
            assert_eq!(to, group("239.1.2.3"), "destination: the group");
            assert!(
                got[&(from, to)] == expected(source, "239.1.2.3"),
                "every datagram of {source}, in order"
            );
        }
    }
    assert_eq!(got_a, got_b, "both processes got the same datagrams");
    assert_eq!(got_ssm.len(), 1, "only {near} gets through the source-specific join");
    let ((from, to), payloads) = got_ssm.into_iter().next().unwrap();
    assert_eq!((from.ip().to_string(), to), (near.to_owned(), group("232.1.2.3")));
    assert!(payloads == expected(near, "232.1.2.3"));
    for daemon in [&mut a, &mut b, &mut ssm] {
        assert!(daemon.stop().success());
    }
}

/// Sends `count` datagrams to each group from the given interfaces: IPv6
/// groups out of `v6_interface` (by name), IPv4 ones from `v4_source`;
/// port 5500 for IPv6, 5501 for IPv4.
const SEND_BOTH: &str = r#"
import socket, sys
count, v6_interface, v4_source = int(sys.argv[1]), sys.argv[2], sys.argv[3]
six = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(v6_interface))
four = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
four.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(v4_source))
for group in sys.argv[4].split(","):
    s, port = (six, 5500) if ":" in group else (four, 5501)
    for i in range(count):
        s.sendto(f"{group} {i}".encode(), (group, port))
"#;

#[test]
fn groups_of_both_families_reach_stages_joined_on_an_interface_named_or_given_by_address() {
    const EACH: usize = 50;
    // A veth pair inside the namespace: datagrams leave by v0 and arrive
    // on v1, where the stages join.
    let setup: &[&[&str]] = &[
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &["-6", "addr", "add", "fd00::1/64", "dev", "v0", "nodad"],
        &["-6", "addr", "add", "fd00::2/64", "dev", "v1", "nodad"],
        &["addr", "add", "10.10.0.1/24", "dev", "v0"],
        &["addr", "add", "10.10.0.2/24", "dev", "v1"],
    ];
    let Some(namespace) = Namespace::new("both", setup) else { return };
    // IPv4 datagrams from an address of the namespace itself, coming in on
    // another interface, are martians unless accepted as local.
    for (key, value) in [("v1/accept_local", "1"), ("v1/rp_filter", "0"), ("all/rp_filter", "0")] {
        let write = format!("echo {value} > /proc/sys/net/ipv4/conf/{key}");
        let out = namespace.exec("sh").args(["-c", &write]).output().unwrap();
        assert!(out.status.success(), "{write}: {}", common::text(&out.stderr));
    }
    let t = common::bus();
    let joined_on = |name: &str, address: &str, group: &str, interface: &str| {
        let config = format!(
            "{}multicast_interface = \"{interface}\"\n",
            stage_on(name, "auto", address, &[group], &[])
        );
        Daemon::start(ringest_in(&namespace, &t.bus), &config)
    };
    let mut six_by_name = joined_on("six_by_name", "[::]:5500", "ff15::7", "v1");
    let mut six_by_address = joined_on("six_by_address", "[::]:5500", "ff15::7", "fd00::2");
    let mut four_by_name = joined_on("four_by_name", "0.0.0.0:5501", "239.1.2.4", "v1");
    let sent = namespace
        .exec("python3")
        .args(["-c", SEND_BOTH, &EACH.to_string(), "v0", "10.10.0.1", "ff15::7,239.1.2.4"])
        .output()
        .unwrap();
    assert!(sent.status.success(), "sender: {}", common::text(&sent.stderr));
    let expected =
        |group: &str| -> Vec<Vec<u8>> { (0..EACH).map(|i| format!("{group} {i}").into_bytes()).collect() };
    let only = |stage: &str, source: &str, group: SocketAddr| {
        let got = datagrams(&t.bus, stage, EACH);
        let keys: Vec<_> = got.keys().collect();
        assert_eq!(keys.len(), 1, "{stage}: one sender, one group: {keys:?}");
        let ((from, to), payloads) = got.into_iter().next().unwrap();
        assert_eq!((from.ip().to_string().as_str(), to), (source, group), "{stage}");
        assert!(payloads == expected(&group.ip().to_string()), "{stage}: every datagram, in order");
    };
    only("six_by_name", "fd00::1", "[ff15::7]:5500".parse().unwrap());
    only("six_by_address", "fd00::1", "[ff15::7]:5500".parse().unwrap());
    only("four_by_name", "10.10.0.1", "239.1.2.4:5501".parse().unwrap());
    for daemon in [&mut six_by_name, &mut six_by_address, &mut four_by_name] {
        assert!(daemon.stop().success());
    }
}
