//! Two bridges on loopback over TLS, with certificates made by the test:
//! records cross byte for byte over TLS and mutual TLS; a peer with an
//! untrusted certificate, without a client certificate where one is
//! required, or speaking plaintext to a TLS listener (and the reverse) is
//! refused, with a clear line logged on each side and nothing imported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bridge::Bridge;
use engine::config::{BridgeConfig, BridgeTlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shm_bus::{BusDir, ChannelOptions, Event, Producer, Reader, ReaderOptions, ReserveError, StartAt};

/// Every line the bridges log, captured once for the whole test binary
/// (tests run in parallel: each names its bridges apart).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The WARN lines logged by the bridge named `name`.
fn warnings_of(name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let field = format!("bridge={name}");
    text.lines()
        .filter(|l| l.contains(" WARN ") && l.split_whitespace().any(|w| w.trim_end_matches(':') == field))
        .map(str::to_owned)
        .collect()
}

/// A certificate authority made by the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem_file: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, format!("ringest test CA {name}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let pem_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem_file, cert.pem()).unwrap();
    Ca { issuer: Issuer::new(params, key), pem_file }
}

/// A certificate for 127.0.0.1 and localhost signed by `ca`: (certificate,
/// key) files.
fn leaf(dir: &Path, ca: &Ca, name: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// The certificates of one test: CA `good` signs both hosts' certificates,
/// CA `other` signs an impostor's.
struct Pki {
    _dir: tempfile::TempDir,
    good: Ca,
    other: Ca,
    a: (PathBuf, PathBuf),
    b: (PathBuf, PathBuf),
    impostor: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let good = ca(dir.path(), "good");
    let other = ca(dir.path(), "other");
    let a = leaf(dir.path(), &good, "host-a");
    let b = leaf(dir.path(), &good, "host-b");
    let impostor = leaf(dir.path(), &other, "impostor");
    Pki { _dir: dir, good, other, a, b, impostor }
}

fn server_tls(own: &(PathBuf, PathBuf), ca: Option<&Ca>, require_client_cert: bool) -> BridgeTlsConfig {
    BridgeTlsConfig {
        certificate: Some(own.0.clone()),
        key: Some(own.1.clone()),
        ca: ca.map(|c| c.pem_file.clone()),
        require_client_cert,
        server_name: None,
    }
}

fn client_tls(ca: &Ca, own: Option<&(PathBuf, PathBuf)>) -> BridgeTlsConfig {
    BridgeTlsConfig {
        certificate: own.map(|o| o.0.clone()),
        key: own.map(|o| o.1.clone()),
        ca: Some(ca.pem_file.clone()),
        ..Default::default()
    }
}

fn bus() -> (tempfile::TempDir, BusDir) {
    let root = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::Builder::new().prefix("bridge-tls-test").tempdir_in(root).unwrap();
    let bus = BusDir::new(dir.path());
    (dir, bus)
}

fn listening(name: &str, export: &[&str], prefix: &str, tls: Option<BridgeTlsConfig>) -> BridgeConfig {
    logs();
    BridgeConfig {
        name: name.into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        export: export.iter().map(|s| s.to_string()).collect(),
        import_prefix: prefix.into(),
        keepalive_ms: 50,
        heartbeat_timeout_ms: 2000,
        window_b: 256 << 10,
        tls,
        ..Default::default()
    }
}

fn connecting(
    name: &str,
    to: std::net::SocketAddr,
    export: &[&str],
    prefix: &str,
    tls: Option<BridgeTlsConfig>,
) -> BridgeConfig {
    BridgeConfig {
        listen: None,
        connect: Some(to.to_string()),
        reconnect_backoff_initial_ms: 200,
        reconnect_backoff_max_ms: 400,
        ..listening(name, export, prefix, tls)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    shard: u32,
    seq: u64,
    kind: u16,
    timestamp_ns: u64,
    payload: Vec<u8>,
}

fn record(shard: u32, seq: u64) -> Seen {
    // Every tenth record spans more than one TLS record (16 KiB).
    let spread = if seq % 10 == 0 { 40_000 } else { 2000 };
    let len = ((seq * 7919 + u64::from(shard) * 31) % spread) as usize;
    Seen {
        shard,
        seq,
        kind: 1 + (seq % 5) as u16,
        timestamp_ns: 1_000_000 + seq * 10 + u64::from(shard),
        payload: (0..len).map(|i| (seq as usize * 13 + i * 7 + shard as usize) as u8).collect(),
    }
}

/// Writes `count` records per shard of `name` (held open afterwards); the
/// ring holds them all, so records written before the bridges start cross
/// too.
fn produce(bus: &BusDir, name: &str, shards: u32, count: u64) -> JoinHandle<()> {
    let options = ChannelOptions { shards, capacity: 64 << 20, ..Default::default() };
    let producer = Producer::create(bus, name, options).unwrap();
    std::thread::spawn(move || {
        let mut writers: Vec<_> = (0..shards).map(|s| producer.shard(s).unwrap()).collect();
        for seq in 0..count {
            for (shard, writer) in writers.iter_mut().enumerate() {
                let r = record(shard as u32, seq);
                loop {
                    match writer.write_at(r.kind, r.timestamp_ns, &r.payload) {
                        Ok(_) => break,
                        Err(ReserveError::Full { .. }) => {
                            writer.publish();
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                writer.publish();
            }
        }
        drop(writers);
        std::thread::sleep(Duration::from_secs(600));
        drop(producer);
    })
}

/// Reads `shards` x `count` records of `name` on `bus` and checks each
/// byte, once each, in per-shard order.
fn expect_all(bus: &BusDir, name: &str, shards: u32, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reader = loop {
        match Reader::attach(bus, name, ReaderOptions::gated().start(StartAt::Oldest)) {
            Ok(reader) => break reader,
            Err(e) => {
                assert!(Instant::now() < deadline, "{name} never appeared: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let mut next = vec![0u64; shards as usize];
    while next.iter().any(|&n| n < count) {
        assert!(Instant::now() < deadline, "only {next:?} of {count} records per shard arrived");
        if let Some(Event::Record(s)) = reader.recv_timeout(Duration::from_millis(100)).unwrap() {
            let got = Seen {
                shard: s.shard(),
                seq: s.seq(),
                kind: s.kind(),
                timestamp_ns: s.timestamp_ns(),
                payload: s.payload().to_vec(),
            };
            assert_eq!(s.lost_before(), 0);
            let shard = got.shard as usize;
            let want = record(got.shard, next[shard]);
            assert!(
                got == want,
                "{name} shard {shard}: got seq {} ({} bytes), want seq {}",
                got.seq,
                got.payload.len(),
                want.seq
            );
            next[shard] += 1;
        }
    }
}

#[test]
fn records_cross_byte_exact_both_ways_over_mutual_tls() {
    let pki = pki();
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let _lidar = produce(&bus_a, "lidar/points", 2, 400);
    let _cam = produce(&bus_b, "cam/frames", 1, 300);
    let a_tls = server_tls(&pki.a, Some(&pki.good), true);
    let a = Bridge::start(bus_a.clone(), 0o600, listening("mtls-a", &["lidar/*"], "b", Some(a_tls))).unwrap();
    let b_tls = client_tls(&pki.good, Some(&pki.b));
    let b_config = connecting("mtls-b", a.listening().unwrap(), &["cam/*"], "a", Some(b_tls));
    let b = Bridge::start(bus_b.clone(), 0o600, b_config).unwrap();
    // Both directions read at once: a gated reader holds its records.
    std::thread::scope(|scope| {
        scope.spawn(|| expect_all(&bus_b, "a/lidar/points", 2, 400));
        scope.spawn(|| expect_all(&bus_a, "b/cam/frames", 1, 300));
    });
    let (a_status, b_status) = (a.status(), b.status());
    assert!(a_status.tls && b_status.tls && b_status.connected, "{b_status:?}");
    assert_eq!((a_status.refused, b_status.refused), (0, 0));
    // The status is refreshed every 50 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.status().imports.get("a/lidar/points").map_or(0, |i| i.records) < 800 {
        assert!(Instant::now() < deadline, "{:?}", b.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.status().imports["a/lidar/points"].records, 800);
    assert!(warnings_of("mtls-a").is_empty() && warnings_of("mtls-b").is_empty());
}

#[test]
fn records_cross_over_tls_without_client_certificates() {
    let pki = pki();
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let _lidar = produce(&bus_a, "lidar/points", 1, 300);
    let a_tls = server_tls(&pki.a, None, false);
    let a = Bridge::start(bus_a.clone(), 0o600, listening("tls-a", &["lidar/*"], "b", Some(a_tls))).unwrap();
    let b_config = connecting("tls-b", a.listening().unwrap(), &[], "a", Some(client_tls(&pki.good, None)));
    let b = Bridge::start(bus_b.clone(), 0o600, b_config).unwrap();
    expect_all(&bus_b, "a/lidar/points", 1, 300);
    assert!(b.status().tls && b.status().connected);
}

/// Starts A (listening) and B (connecting to A) with the given TLS, lets
/// B try for a while, and checks that no link came up, nothing was
/// imported, and every warning each side logged names the expected reason
/// (at least one on each side).
fn refused(
    case: &str,
    a_tls: Option<BridgeTlsConfig>,
    b_tls: Option<BridgeTlsConfig>,
    a_says: &str,
    b_says: &str,
) {
    let (_a_dir, bus_a) = bus();
    let (_b_dir, bus_b) = bus();
    let _lidar = produce(&bus_a, "lidar/points", 1, 10);
    let (a_name, b_name) = (format!("{case}-a"), format!("{case}-b"));
    let a = Bridge::start(bus_a.clone(), 0o600, listening(&a_name, &["lidar/*"], "b", a_tls)).unwrap();
    let b_config = connecting(&b_name, a.listening().unwrap(), &[], "a", b_tls);
    let b = Bridge::start(bus_b.clone(), 0o600, b_config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while warnings_of(&a_name).is_empty() || warnings_of(&b_name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{case}: A warned {:?}, B {:?}",
            warnings_of(&a_name),
            warnings_of(&b_name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // B keeps trying with its backoff: still refused.
    std::thread::sleep(Duration::from_millis(800));
    let (a_status, b_status) = (a.status(), b.status());
    drop(b);
    drop(a);
    for (side, name, says) in [("A", &a_name, a_says), ("B", &b_name, b_says)] {
        let warnings = warnings_of(name);
        for line in &warnings {
            assert!(line.contains(says), "{case}: {side} logged {line:?}, not {says:?}");
        }
    }
    assert_eq!((a_status.links, b_status.links), (0, 0), "{case}: {a_status:?} {b_status:?}");
    assert!(!b_status.connected);
    assert!(b_status.last_error.as_deref().is_some_and(|e| e.contains(b_says)), "{case}: {b_status:?}");
    assert!(a_status.last_error.as_deref().is_some_and(|e| e.contains(a_says)), "{case}: {a_status:?}");
    let names: Vec<String> = shm_bus::list_channels(&bus_b).unwrap().into_iter().map(|l| l.name).collect();
    assert!(!names.iter().any(|n| n.starts_with("a/")), "{case}: B imported {names:?}");
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_on_both_sides() {
    let pki = pki();
    refused(
        "wrong-server-ca",
        Some(server_tls(&pki.a, None, false)),
        Some(client_tls(&pki.other, None)),
        "the peer refused this side's certificate",
        "refused the peer's certificate (UnknownIssuer)",
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_on_both_sides() {
    let pki = pki();
    refused(
        "wrong-client-ca",
        Some(server_tls(&pki.a, Some(&pki.good), true)),
        Some(client_tls(&pki.good, Some(&pki.impostor))),
        "refused the peer's certificate (UnknownIssuer)",
        "the peer refused this side's certificate",
    );
}

#[test]
fn a_missing_client_certificate_is_refused_where_one_is_required() {
    let pki = pki();
    refused(
        "no-client-cert",
        Some(server_tls(&pki.a, Some(&pki.good), true)),
        Some(client_tls(&pki.good, None)),
        "the peer presented no certificate, and this side requires one",
        "the peer requires a client certificate",
    );
}

#[test]
fn plaintext_against_a_tls_listener_is_refused_on_both_sides() {
    let pki = pki();
    refused(
        "plain-to-tls",
        Some(server_tls(&pki.a, None, false)),
        None,
        "a bridge without TLS connected",
        "this bridge requires TLS",
    );
}

#[test]
fn tls_against_a_plaintext_listener_is_refused_on_both_sides() {
    let pki = pki();
    refused(
        "tls-to-plain",
        None,
        Some(client_tls(&pki.good, None)),
        "the peer speaks TLS, and this bridge has no [bridge.tls]",
        "the peer is a bridge without TLS",
    );
}
