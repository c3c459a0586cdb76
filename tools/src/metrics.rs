//! The daemon's Prometheus endpoint (`[metrics] listen`): the figures of
//! `ringest stats` and `ringest ls` at `GET /metrics`.
//!
//! Each scrape reads the same sources as those commands: every stage's
//! latest socket statistics (the record it publishes once a second, as the
//! engine keeps it: per connection for TCP stages, per socket for UDP
//! stages) and the shm-bus introspection of the stage's channels (write
//! counters, ring-full episodes, each reader's lag and losses).
//! `prometheus-client` encodes them: the Prometheus text format (0.0.4) by
//! default, OpenMetrics when the scraper's `Accept` header asks for it.
//!
//! The HTTP side is a std `TcpListener` on a thread of its own: one
//! endpoint, GET only, one short request at a time, the response closing
//! the connection. An HTTP crate would add dependencies for what these
//! forty lines do; the executors never serve it.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use engine::records::{ReceivePath, SocketStats, TrafficStats, UdpSocketCounters, UdpSocketStats};
use engine::{CONNECTION_EVENTS, EGRESS_PACKETS, PACKET_GROUP, SOCKET_STATS, StatsView, channel_name};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shm_bus::{AttachError, BusDir, ChannelInfo, ChannelState};

use crate::flags::StopFlag;

/// Longest a client may take to send its request or read the response:
/// a stuck client delays the next scrape by at most this much.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read; the endpoint needs only the first lines.
const MAX_REQUEST: usize = 16 << 10;
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's thread; [`MetricsServer::stop`] ends it.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<StopFlag>,
    thread: JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `listen` and serves the metrics of `stats`' stages and of
    /// their channels on `bus`.
    pub fn start(listen: SocketAddr, bus: BusDir, stats: StatsView) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("metrics: cannot listen on {listen}"))?;
        let address = listener.local_addr().context("metrics: the listening address")?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Figures { bus, stats }));
        let stop = Arc::new(StopFlag::default());
        let thread = std::thread::Builder::new()
            .name("metrics".to_owned())
            .spawn({
                let stop = stop.clone();
                move || serve(&listener, &registry, &stop)
            })
            .context("metrics: starting its thread")?;
        Ok(Self { address, stop, thread })
    }

    /// Where it listens (the port the OS chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving; returns once the thread has ended.
    pub fn stop(self) {
        self.stop.stop();
        // Wakes the blocking accept; the thread then sees the flag.
        let _ = TcpStream::connect_timeout(&reachable(self.address), CLIENT_TIMEOUT);
        let _ = self.thread.join();
    }
}

/// `address` made connectable: a wildcard address becomes loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

fn serve(listener: &TcpListener, registry: &Registry, stop: &StopFlag) {
    for stream in listener.incoming() {
        if stop.is_stopped() {
            return;
        }
        let result = stream.and_then(|mut stream| {
            stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
            respond(&mut stream, registry)
        });
        // A client that went away or sent garbage affects only itself.
        if let Err(e) = result {
            tracing::debug!("metrics: a request failed: {e}");
        }
    }
}

/// Reads one request and answers it.
fn respond(stream: &mut TcpStream, registry: &Registry) -> std::io::Result<()> {
    let Some(head) = read_head(stream)? else {
        return reply(stream, "400 Bad Request", "text/plain", "incomplete request\n");
    };
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next().unwrap_or_default(), request.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return reply(stream, "404 Not Found", "text/plain", "the metrics are at /metrics\n");
    }
    if method != "GET" {
        return reply(stream, "405 Method Not Allowed", "text/plain", "only GET\n");
    }
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (prometheus_client::encoding::text::encode(&mut body, registry), OPENMETRICS_TYPE)
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut body, registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(()) => reply(stream, "200 OK", content_type, &body),
        Err(fmt::Error) => reply(stream, "500 Internal Server Error", "text/plain", "encoding failed\n"),
    }
}

/// The request head (request line and headers), or `None` when the client
/// closed or sent more than [`MAX_REQUEST`] bytes before its end.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        // A request has no body: anything after the head is ignored.
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 4);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn reply(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// What a scrape reads: the stages' statistics and their channels.
#[derive(Debug)]
struct Figures {
    bus: BusDir,
    stats: StatsView,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family being gathered: its samples, then encoded at once.
struct Family<T> {
    name: String,
    help: String,
    samples: Vec<(Labels, T)>,
}

impl<T> Family<T> {
    fn new(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self { name: name.into(), help: help.into(), samples: Vec::new() }
    }

    fn add(&mut self, labels: &Labels, value: T) {
        self.samples.push((labels.clone(), value));
    }
}

/// Encodes `family` as counters (`u64`) or gauges (`f64`); a family with
/// no sample is left out.
trait Encode {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result;
}

impl Encode for Family<u64> {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        encode_family(encoder, self, MetricType::Counter, |v| ConstCounter::new(*v))
    }
}

impl Encode for Family<f64> {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        encode_family(encoder, self, MetricType::Gauge, |v| ConstGauge::new(*v))
    }
}

fn encode_family<T, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    family: &Family<T>,
    kind: MetricType,
    metric: impl Fn(&T) -> M,
) -> fmt::Result {
    if family.samples.is_empty() {
        return Ok(());
    }
    let mut descriptor = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
    for (labels, value) in &family.samples {
        metric(value).encode(descriptor.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut families: Vec<Box<dyn Encode>> = Vec::new();
        let tcp_stages = self.stats.latest();
        let udp_stages = self.stats.latest_udp();
        families.extend(stage_families(&tcp_stages, &udp_stages));
        let names = tcp_stages.iter().map(|(name, _)| *name).chain(udp_stages.iter().map(|(name, _)| *name));
        families.extend(channel_families(&self.bus, names));
        for family in &families {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The counters of `ringest stats`: per stage, per open connection of a
/// TCP stage and per socket of a UDP stage.
fn stage_families(
    tcp_stages: &[(&str, Option<SocketStats>)],
    udp_stages: &[(&str, Option<UdpSocketStats>)],
) -> Vec<Box<dyn Encode>> {
    let mut open = Family::new("ringest_stage_open_connections", "Connections open now.");
    let mut rejected = Family::new(
        "ringest_stage_rejected_connections",
        "Connections closed at once because maximum_connections were open.",
    );
    let mut groups = Family::new(
        "ringest_stage_groups_published",
        "Packet groups (TCP) or datagram groups (UDP) published.",
    );
    let mut stalls = Family::new(
        "ringest_stage_backpressure_stalls",
        "Times a full packet_group ring (a lagging lossless reader) paused receiving.",
    );
    let mut exhaustions = Family::new(
        "ringest_stage_receive_buffer_exhaustions",
        "io_uring path: times a connection's receive ran out of ring slots.",
    );
    let mut bind_failures = Family::new(
        "ringest_stage_bind_failures",
        "Failed attempts to listen on the stage's address (the stage retries while the port is taken).",
    );
    let mut path = Family::new(
        "ringest_stage_receive_path",
        "1 for the receive path the stage runs (label path: io_uring or glommio_read).",
    );
    let mut age = Family::new(
        "ringest_stage_stats_age_seconds",
        "Age of the statistics record these figures come from (published once a second).",
    );
    let mut stage_traffic =
        TrafficFamilies::new("stage", "All connections of the stage, closed ones included:");
    let mut connection_traffic = TrafficFamilies::new("connection", "The open connection, since its accept:");
    let now_ns = shm_bus::realtime_ns();
    let mut stage_figures = |stage: &str, path_taken: ReceivePath, time_ns: u64, groups_published: u64| {
        let labels: Labels = vec![("stage", stage.to_owned())];
        groups.add(&labels, groups_published);
        let path_name = match path_taken {
            ReceivePath::IoUringMultishot => "io_uring",
            ReceivePath::GlommioRead => "glommio_read",
        };
        let mut path_labels = labels.clone();
        path_labels.push(("path", path_name.to_owned()));
        path.add(&path_labels, 1.0);
        age.add(&labels, now_ns.saturating_sub(time_ns) as f64 / 1e9);
    };
    let mut udp_sockets = UdpFamilies::new();
    for (stage, stats) in udp_stages {
        let Some(stats) = stats else { continue }; // no record yet: nothing to say
        stage_figures(stage, stats.receive_path, stats.time_ns, stats.groups_published);
        for socket in &stats.sockets {
            udp_sockets.add(stage, socket);
        }
    }
    for (stage, stats) in tcp_stages {
        let Some(stats) = stats else { continue }; // no record yet: nothing to say
        let labels: Labels = vec![("stage", (*stage).to_owned())];
        let s = &stats.stage;
        stage_figures(stage, stats.receive_path, stats.time_ns, s.groups_published);
        open.add(&labels, s.open_connections as f64);
        rejected.add(&labels, s.rejected_connections);
        stalls.add(&labels, s.backpressure_stalls);
        exhaustions.add(&labels, s.receive_buffer_exhaustions);
        bind_failures.add(&labels, s.bind_failures);
        stage_traffic.add(&labels, &s.traffic);
        for c in &stats.connections {
            let mut labels = labels.clone();
            labels.push(("connection", c.connection_id.to_string()));
            labels.push(("peer", SocketAddr::from(c.peer).to_string()));
            connection_traffic.add(&labels, &c.traffic);
        }
    }
    let mut families: Vec<Box<dyn Encode>> = vec![
        Box::new(open),
        Box::new(rejected),
        Box::new(groups),
        Box::new(stalls),
        Box::new(exhaustions),
        Box::new(bind_failures),
        Box::new(path),
        Box::new(age),
    ];
    families.extend(stage_traffic.into_families());
    families.extend(connection_traffic.into_families());
    families.extend(udp_sockets.into_families());
    families
}

/// The counters of each socket of a UDP stage (one per executor).
struct UdpFamilies {
    datagrams: Family<u64>,
    bytes: Family<u64>,
    kernel_drops: Family<u64>,
    truncated: Family<u64>,
    ring_full_stalls: Family<u64>,
    max_datagram: Family<f64>,
    egress_sent: Family<u64>,
    egress_drops: Family<u64>,
    receive_buffer: Family<f64>,
}

impl UdpFamilies {
    fn new() -> Self {
        Self {
            datagrams: Family::new(
                "ringest_udp_datagrams",
                "Datagrams the socket received (truncated ones included).",
            ),
            bytes: Family::new(
                "ringest_udp_received_bytes",
                "Data bytes the socket received (of truncated datagrams, those kept).",
            ),
            kernel_drops: Family::new(
                "ringest_udp_kernel_drops",
                "Datagrams the kernel dropped because the socket's receive buffer was full (SO_RXQ_OVFL).",
            ),
            truncated: Family::new(
                "ringest_udp_truncated",
                "Datagrams longer than max_datagram_size_b, published truncated and flagged.",
            ),
            ring_full_stalls: Family::new(
                "ringest_udp_ring_full_stalls",
                "Times a full packet_group ring (a lagging lossless reader) paused reading the socket.",
            ),
            max_datagram: Family::new(
                "ringest_udp_max_datagram_size_bytes",
                "Largest datagram received in the last statistics interval (0 if none).",
            ),
            egress_sent: Family::new("ringest_udp_egress_sent", "Egress datagrams sent."),
            egress_drops: Family::new(
                "ringest_udp_egress_drops",
                "Egress records not sent (no destination, too long, or the send failed).",
            ),
            receive_buffer: Family::new(
                "ringest_udp_kernel_receive_buffer_bytes",
                "The socket's kernel receive buffer (SO_RCVBUF) as granted.",
            ),
        }
    }

    fn add(&mut self, stage: &str, c: &UdpSocketCounters) {
        let labels: Labels = vec![
            ("stage", stage.to_owned()),
            ("executor", c.executor.to_string()),
            ("local", SocketAddr::from(c.local).to_string()),
        ];
        self.datagrams.add(&labels, c.datagrams);
        self.bytes.add(&labels, c.bytes);
        self.kernel_drops.add(&labels, c.kernel_drops);
        self.truncated.add(&labels, c.truncated);
        self.ring_full_stalls.add(&labels, c.ring_full_stalls);
        self.max_datagram.add(&labels, c.max_datagram_size as f64);
        self.egress_sent.add(&labels, c.egress_sent);
        self.egress_drops.add(&labels, c.egress_drops);
        self.receive_buffer.add(&labels, c.kernel_receive_buffer_b as f64);
    }

    fn into_families(self) -> Vec<Box<dyn Encode>> {
        vec![
            Box::new(self.datagrams),
            Box::new(self.bytes),
            Box::new(self.kernel_drops),
            Box::new(self.truncated),
            Box::new(self.ring_full_stalls),
            Box::new(self.max_datagram),
            Box::new(self.egress_sent),
            Box::new(self.egress_drops),
            Box::new(self.receive_buffer),
        ]
    }
}

/// The traffic counters of a stage or of its connections.
struct TrafficFamilies {
    bytes_in: Family<u64>,
    packets_in: Family<u64>,
    bytes_out: Family<u64>,
    packets_out: Family<u64>,
    egress_drops: Family<u64>,
}

impl TrafficFamilies {
    fn new(scope: &'static str, of: &'static str) -> Self {
        let name = |what: &str| format!("ringest_{scope}_{what}");
        let help = |what: &str| format!("{of} {what}");
        Self {
            bytes_in: Family::new(name("received_bytes"), help("bytes received.")),
            packets_in: Family::new(name("received_packets"), help("packets (completed receives) received.")),
            bytes_out: Family::new(name("sent_bytes"), help("egress bytes sent.")),
            packets_out: Family::new(name("sent_packets"), help("egress records queued for sending.")),
            egress_drops: Family::new(
                name("egress_drops"),
                help("egress records dropped (egress buffer full, or no connection to take them)."),
            ),
        }
    }

    fn add(&mut self, labels: &Labels, t: &TrafficStats) {
        self.bytes_in.add(labels, t.bytes_received);
        self.packets_in.add(labels, t.packets_received);
        self.bytes_out.add(labels, t.bytes_sent);
        self.packets_out.add(labels, t.packets_sent);
        self.egress_drops.add(labels, t.egress_drops);
    }

    fn into_families(self) -> Vec<Box<dyn Encode>> {
        vec![
            Box::new(self.bytes_in),
            Box::new(self.packets_in),
            Box::new(self.bytes_out),
            Box::new(self.packets_out),
            Box::new(self.egress_drops),
        ]
    }
}

/// The figures of `ringest ls` for the channels of `stages`: write
/// counters, ring-full episodes, and each reader's progress, lag and losses.
fn channel_families<'a>(bus: &BusDir, stages: impl Iterator<Item = &'a str>) -> Vec<Box<dyn Encode>> {
    let mut records = Family::new("ringest_channel_records_written", "Records written, over all shards.");
    let mut bytes = Family::new("ringest_channel_bytes_written", "Payload bytes written, over all shards.");
    let mut full = Family::new(
        "ringest_channel_ring_full",
        "Times a shard's ring became full because a lossless (gated) reader held the space.",
    );
    let mut live = Family::new(
        "ringest_channel_live",
        "1 while the channel's producer is alive and has not ended it, else 0.",
    );
    let mut received = Family::new("ringest_reader_received_records", "Records the reader has read.");
    let mut lost = Family::new("ringest_reader_lost_records", "Records a lossy reader lost by being lapped.");
    let mut lag_records =
        Family::new("ringest_reader_lag_records", "Records published but not yet read by the reader.");
    let mut lag_bytes = Family::new(
        "ringest_reader_lag_bytes",
        "Ring bytes between the reader and the producer (an upper bound on what is left to read).",
    );
    let mut heartbeat = Family::new(
        "ringest_reader_heartbeat_age_seconds",
        "Time since the reader last showed a sign of life.",
    );
    for stage in stages {
        for suffix in [PACKET_GROUP, CONNECTION_EVENTS, SOCKET_STATS, EGRESS_PACKETS] {
            let name = channel_name(stage, suffix);
            let info = match shm_bus::channel_info(bus, &name) {
                Ok(info) => info,
                // Egress exists only once some process publishes it.
                Err(AttachError::NotFound { .. }) => continue,
                Err(e) => {
                    tracing::debug!("metrics: channel {name}: {e}");
                    continue;
                }
            };
            let labels: Labels = vec![("channel", name.clone())];
            records.add(&labels, info.records_written());
            bytes.add(&labels, info.bytes_written());
            full.add(&labels, info.shards.iter().map(|s| s.full_count).sum::<u64>());
            live.add(&labels, if is_live(&info) { 1.0 } else { 0.0 });
            for reader in &info.readers {
                let mut labels = labels.clone();
                labels.push(("reader_pid", reader.pid.to_string()));
                labels.push(("slot", reader.slot.to_string()));
                labels.push(("mode", if reader.gated { "gated" } else { "lossy" }.to_owned()));
                received.add(&labels, reader.received);
                lost.add(&labels, reader.lost);
                lag_records.add(&labels, reader.lag_records as f64);
                lag_bytes.add(&labels, reader.lag_bytes as f64);
                heartbeat.add(&labels, reader.heartbeat_age_ns as f64 / 1e9);
            }
        }
    }
    vec![
        Box::new(records),
        Box::new(bytes),
        Box::new(full),
        Box::new(live),
        Box::new(received),
        Box::new(lost),
        Box::new(lag_records),
        Box::new(lag_bytes),
        Box::new(heartbeat),
    ]
}

fn is_live(info: &ChannelInfo) -> bool {
    info.state == ChannelState::Live && info.producer_alive != Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition (Prometheus text) of `stage_families` for these stages.
    fn exposition(
        tcp: Vec<(&'static str, Option<SocketStats>)>,
        udp: Vec<(&'static str, Option<UdpSocketStats>)>,
    ) -> String {
        #[derive(Debug)]
        struct Stages(Vec<(&'static str, Option<SocketStats>)>, Vec<(&'static str, Option<UdpSocketStats>)>);
        impl Collector for Stages {
            fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
                for family in stage_families(&self.0, &self.1) {
                    family.encode(&mut encoder)?;
                }
                Ok(())
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Stages(tcp, udp)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn udp_stages_export_per_socket_counters_and_stage_figures() {
        let socket = |executor: u32, datagrams: u64| UdpSocketCounters {
            executor,
            local: "0.0.0.0:2368".parse::<SocketAddr>().unwrap().into(),
            datagrams,
            bytes: datagrams * 1206,
            kernel_drops: 3 + u64::from(executor),
            truncated: 1,
            ring_full_stalls: 2,
            max_datagram_size: 1206,
            egress_sent: 4,
            egress_drops: 5,
            kernel_receive_buffer_b: 212_992,
            ..Default::default()
        };
        let stats = UdpSocketStats {
            time_ns: shm_bus::realtime_ns(),
            interval_ns: 1_000_000_000,
            receive_path: ReceivePath::GlommioRead,
            groups_published: 17,
            sockets: vec![socket(0, 100), socket(1, 50)],
        };
        let text = exposition(Vec::new(), vec![("lidar", Some(stats)), ("silent", None)]);
        let first = r#"{stage="lidar",executor="0",local="0.0.0.0:2368"}"#;
        let second = r#"{stage="lidar",executor="1",local="0.0.0.0:2368"}"#;
        for line in [
            format!("ringest_udp_datagrams_total{first} 100"),
            format!("ringest_udp_datagrams_total{second} 50"),
            format!("ringest_udp_received_bytes_total{first} 120600"),
            format!("ringest_udp_kernel_drops_total{first} 3"),
            format!("ringest_udp_kernel_drops_total{second} 4"),
            format!("ringest_udp_truncated_total{first} 1"),
            format!("ringest_udp_ring_full_stalls_total{first} 2"),
            format!("ringest_udp_max_datagram_size_bytes{first} 1206.0"),
            format!("ringest_udp_egress_sent_total{first} 4"),
            format!("ringest_udp_egress_drops_total{first} 5"),
            format!("ringest_udp_kernel_receive_buffer_bytes{first} 212992.0"),
            r#"ringest_stage_groups_published_total{stage="lidar"} 17"#.to_owned(),
            r#"ringest_stage_receive_path{stage="lidar",path="glommio_read"} 1.0"#.to_owned(),
            "# TYPE ringest_udp_datagrams_total counter".to_owned(),
            "# TYPE ringest_udp_max_datagram_size_bytes gauge".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // A stage without a record yet, and the TCP-only figures, say nothing.
        assert!(!text.contains("silent"), "{text}");
        assert!(!text.contains("ringest_stage_open_connections"), "{text}");
    }
}
