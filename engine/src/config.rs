//! The engine's configuration: a TOML file with an optional `[bus]` table
//! and any number of `[[tcp_server]]`, `[[tcp_client]]` and `[[udp]]` stage
//! tables, and `[[bridge]]` tables (links to another host's bus, run by the
//! `ringest-bridge` crate).
//!
//! Every key has a default; [`default_config_toml`] documents them all.
//! Loading rejects unknown keys, values of the wrong type and values out of
//! range with a [`ConfigError`] that names the key's path (like
//! `tcp_server[1].group_size`) and the line and column of the value.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use toml::de::{DeTable, DeValue};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const GIB4: u64 = 1 << 32;
/// Default `receive_slot_size_b`.
const DEFAULT_SLOT: u64 = 64 * KIB;

/// Kernel socket buffer sizes in bytes: `setsockopt` takes a C `int`.
const KERNEL_BUFFER_RANGE: RangeInclusive<u64> = 0..=i32::MAX as u64;

/// Longest reconnection backoff in milliseconds: an hour.
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// Longest stage name in bytes, leaving room under the bus's 255-byte
/// channel-name limit for the stage's channel suffixes.
pub const MAX_STAGE_NAME_LEN: usize = 200;

/// Highest processor index accepted in `thread_processor_affinity`.
pub const MAX_PROCESSOR: usize = 1023;

/// Which receive path a stage's executors run (`receive_path`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceivePathChoice {
    /// io_uring multishot receive when the kernel supports it (probed at
    /// start), else the glommio read path.
    #[default]
    Auto,
    /// io_uring multishot receive into shared memory; the stage fails to
    /// start if the kernel lacks it.
    IoUring,
    /// A `recv` into shared memory after glommio reports readiness.
    GlommioRead,
}

/// The daemon's configuration file.
///
/// A file without stage tables configures no stages. [`Default`] is the
/// embedded default file, [`default_config_toml`]: one TCP server stage.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The `[bus]` table: where and how channels are created.
    #[serde(default)]
    pub bus: BusConfig,
    /// The `[metrics]` table: the daemon's Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The `[[tcp_server]]` tables, in file order.
    #[serde(default)]
    pub tcp_server: Vec<TcpServerConfig>,
    /// The `[[tcp_client]]` tables, in file order.
    #[serde(default)]
    pub tcp_client: Vec<TcpClientConfig>,
    /// The `[[udp]]` tables, in file order.
    #[serde(default)]
    pub udp: Vec<UdpConfig>,
    /// The `[[bridge]]` tables, in file order. The engine does not start
    /// them: `ringest run` starts each with the `ringest-bridge` crate.
    #[serde(default)]
    pub bridge: Vec<BridgeConfig>,
}

/// Where and how the stages create their shared-memory channels.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Bus directory. `None` (the default) uses `$RINGEST_BUS`, or
    /// `/dev/shm/ringest` when that is unset ([`shm_bus::BusDir::from_env`]).
    pub dir: Option<PathBuf>,
    /// Permission bits of the channel files (default `0o600`): within
    /// `0o777` and including owner read and write. In TOML either an octal
    /// string (`"0640"`, `"0o640"`) or an integer (`0o640`).
    #[serde(deserialize_with = "deserialize_mode")]
    pub mode: u32,
}

/// The daemon's Prometheus endpoint (`ringest run`); the engine itself
/// does not serve it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port to serve `/metrics` on (`ip:port` or `host:port`,
    /// resolved as a server's `address`; port 0: any free port); `None`
    /// (the default): no endpoint.
    #[serde(deserialize_with = "optional_listen_address")]
    pub listen: Option<SocketAddr>,
}

/// A TCP server stage (`[[tcp_server]]`): accepts clients and publishes what
/// they send, in packet groups, into channels under its `name`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpServerConfig {
    /// Namespace of the stage's channels: a valid [`shm_bus`] channel name of
    /// at most [`MAX_STAGE_NAME_LEN`] bytes, unique across the file.
    pub name: String,
    /// Local address and port to listen on (port 0: any free port). In a
    /// file, `host:port` works too: the host name is resolved when the file
    /// is read ([`resolve_listen_address`]).
    #[serde(deserialize_with = "listen_address")]
    pub address: SocketAddr,
    /// Simultaneous clients allowed (1..=1_000_000).
    pub maximum_connections: u32,
    /// Packets per published group (1..=65_536).
    pub group_size: u32,
    /// Microseconds after its first packet that a partial group is
    /// published (0..=10_000_000; 0 publishes every packet at once).
    pub group_timeout_us: u64,
    /// `SCHED_FIFO` priority of the stage's executor threads (0..=99; 0
    /// keeps the normal scheduler).
    pub thread_priority: u8,
    /// Processor indices (each at most [`MAX_PROCESSOR`], no duplicates):
    /// one executor thread pinned to each; empty: one unpinned executor.
    pub thread_processor_affinity: Vec<usize>,
    /// Whether `TCP_NODELAY` is set on accepted connections.
    pub enable_nodelay: bool,
    /// Milliseconds without data after which a client is disconnected
    /// (0..=86_400_000; 0: never).
    pub data_receive_timeout_ms: u64,
    /// Bytes of egress data queued per client when it does not read fast
    /// enough (1..=1 GiB); at least the largest message sent.
    pub egress_buffer_size_b: u64,
    /// Kernel receive buffer (`SO_RCVBUF`) in bytes (0..=`i32::MAX`; 0: the
    /// kernel's default).
    pub kernel_receive_buffer_size_b: u64,
    /// Kernel transmit buffer (`SO_SNDBUF`) in bytes (0..=`i32::MAX`; 0: the
    /// kernel's default).
    pub kernel_transmit_buffer_size_b: u64,
    /// Bytes of the shared-memory ring per shard of the stage's packet
    /// channel: a power of two in 64 KiB..=4 GiB.
    pub ring_size_b: u64,
    /// Which receive path the executors run: `"auto"` (io_uring multishot
    /// receive when the kernel supports it, else `"glommio_read"`),
    /// `"io_uring"` or `"glommio_read"`.
    pub receive_path: ReceivePathChoice,
    /// Bytes of one receive slot of the io_uring path: the most one
    /// completion delivers, and the ring space each packet takes. A power of
    /// two in 4 KiB..=256 KiB; at most `ring_size_b` / 64 (at least 4 KiB) is
    /// used.
    pub receive_slot_size_b: u64,
    /// Seconds of idle time before TCP keepalive probes start (0..=86_400;
    /// 0: keepalive off).
    pub keepalive_s: u64,
}

/// A TCP client stage (`[[tcp_client]]`): connects to a server, reconnects
/// when the connection ends, and publishes what it receives, in packet
/// groups, into channels under its `name`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpClientConfig {
    /// Namespace of the stage's channels: a valid [`shm_bus`] channel name of
    /// at most [`MAX_STAGE_NAME_LEN`] bytes, unique across the file.
    pub name: String,
    /// Server to connect to, as `host:port`: a host name (resolved when
    /// connecting), an IPv4 address or a bracketed IPv6 address, and a port
    /// in 1..=65535.
    pub address: String,
    /// Whether `SO_REUSEADDR` is set on the socket.
    pub reuse_address: bool,
    /// Packets per published group (1..=65_536).
    pub group_size: u32,
    /// Microseconds after its first packet that a partial group is
    /// published (0..=10_000_000; 0 publishes every packet at once).
    pub group_timeout_us: u64,
    /// `SCHED_FIFO` priority of the stage's executor thread (0..=99; 0
    /// keeps the normal scheduler).
    pub thread_priority: u8,
    /// Processor indices (each at most [`MAX_PROCESSOR`], no duplicates): the
    /// stage's one executor is pinned to the first; empty: unpinned.
    pub thread_processor_affinity: Vec<usize>,
    /// Whether `TCP_NODELAY` is set on the connection.
    pub enable_nodelay: bool,
    /// Milliseconds without data after which the stage reconnects
    /// (0..=86_400_000; 0: never).
    pub data_receive_timeout_ms: u64,
    /// Bytes of egress data queued when the server does not read fast
    /// enough (1..=1 GiB); at least the largest message sent.
    pub egress_buffer_size_b: u64,
    /// Kernel receive buffer (`SO_RCVBUF`) in bytes (0..=`i32::MAX`; 0: the
    /// kernel's default).
    pub kernel_receive_buffer_size_b: u64,
    /// Kernel transmit buffer (`SO_SNDBUF`) in bytes (0..=`i32::MAX`; 0: the
    /// kernel's default).
    pub kernel_transmit_buffer_size_b: u64,
    /// Milliseconds a connection attempt may take (1..=600_000).
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait before the first reconnection attempt; the wait
    /// doubles after each failure (1..=3_600_000).
    pub reconnect_backoff_initial_ms: u64,
    /// Longest wait between reconnection attempts in milliseconds
    /// (`reconnect_backoff_initial_ms`..=3_600_000).
    pub reconnect_backoff_max_ms: u64,
    /// Seconds of idle time before TCP keepalive probes start (0..=86_400;
    /// 0: keepalive off).
    pub keepalive_s: u64,
    /// Bytes of the shared-memory ring per shard of the stage's packet
    /// channel: a power of two in 64 KiB..=4 GiB.
    pub ring_size_b: u64,
    /// Which receive path the executors run: `"auto"` (io_uring multishot
    /// receive when the kernel supports it, else `"glommio_read"`),
    /// `"io_uring"` or `"glommio_read"`.
    pub receive_path: ReceivePathChoice,
    /// Bytes of one receive slot of the io_uring path: the most one
    /// completion delivers, and the ring space each packet takes. A power of
    /// two in 4 KiB..=256 KiB; at most `ring_size_b` / 64 (at least 4 KiB) is
    /// used.
    pub receive_slot_size_b: u64,
}

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
pub const MAX_UDP_PAYLOAD: u64 = 65_507;

/// A UDP stage (`[[udp]]`): receives datagrams (unicast or multicast) and
/// publishes them, in datagram groups, into channels under its `name`;
/// what is published to `<name>/egress_packets` is sent as datagrams.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    /// Namespace of the stage's channels: a valid [`shm_bus`] channel name of
    /// at most [`MAX_STAGE_NAME_LEN`] bytes, unique across the file.
    pub name: String,
    /// Local address and port to bind (port 0: any free port); a host name
    /// is resolved when the file is read. Every executor binds its own
    /// socket to it with `SO_REUSEPORT`.
    #[serde(deserialize_with = "listen_address")]
    pub address: SocketAddr,
    /// Datagrams per published group (1..=65_536).
    pub group_size: u32,
    /// Microseconds after its first datagram that a partial group is
    /// published (0..=10_000_000; 0 publishes every datagram at once).
    pub group_timeout_us: u64,
    /// `SCHED_FIFO` priority of the stage's executor threads (0..=99).
    pub thread_priority: u8,
    /// Processor indices: one executor, with its own socket, pinned to
    /// each; empty: one unpinned executor.
    pub thread_processor_affinity: Vec<usize>,
    /// Kernel receive buffer per socket in bytes (0..=`i32::MAX`; 0: the
    /// kernel's default). Set with `SO_RCVBUFFORCE` where permitted.
    pub kernel_receive_buffer_size_b: u64,
    /// Kernel transmit buffer (`SO_SNDBUF`) in bytes (0: the default).
    pub kernel_transmit_buffer_size_b: u64,
    /// Bytes of the shared-memory ring per shard: a power of two in
    /// 64 KiB..=4 GiB.
    pub ring_size_b: u64,
    /// `"auto"`, `"io_uring"` (multishot `recvmsg` into the ring) or
    /// `"glommio_read"` (`recvmmsg` when the socket is readable).
    pub receive_path: ReceivePathChoice,
    /// Largest datagram kept whole (1..=65_535, default 65_507): the
    /// receive slot is sized to it; a longer datagram is kept truncated,
    /// flagged and counted.
    pub max_datagram_size_b: u64,
    /// Whether to ask the kernel for each datagram's receive time
    /// (`SO_TIMESTAMPING`, software; hardware where the card stamps).
    pub kernel_timestamps: bool,
    /// Multicast groups to join, of the address's family.
    pub multicast_groups: Vec<IpAddr>,
    /// Interface to join the groups on, by name (`eth0`) or address; empty:
    /// the kernel's choice (the route to the group).
    pub multicast_interface: String,
    /// Sources for source-specific joins: when set, each group is joined
    /// for these senders only.
    pub multicast_sources: Vec<IpAddr>,
    /// Whether multicast egress datagrams loop back to local receivers.
    pub multicast_loop: bool,
    /// Where egress datagrams without their own destination go (`ip:port`
    /// or `host:port`, resolved when the file is read); none: such records
    /// are dropped and counted.
    #[serde(deserialize_with = "optional_listen_address")]
    pub egress_destination: Option<SocketAddr>,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            name: "udp".to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], 2368)),
            group_size: 64,
            group_timeout_us: 1000,
            thread_priority: 0,
            thread_processor_affinity: Vec::new(),
            kernel_receive_buffer_size_b: 0,
            kernel_transmit_buffer_size_b: 0,
            ring_size_b: 64 * MIB,
            receive_path: ReceivePathChoice::Auto,
            max_datagram_size_b: MAX_UDP_PAYLOAD,
            kernel_timestamps: true,
            multicast_groups: Vec::new(),
            multicast_interface: String::new(),
            multicast_sources: Vec::new(),
            multicast_loop: true,
            egress_destination: None,
        }
    }
}

impl UdpConfig {
    /// Parses and validates a single UDP stage table given at the top level
    /// of `text`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        load(text, None, Self::validate)
    }

    /// Checks every value's range and that multicast keys agree. Errors
    /// name the key (relative to the stage's table) but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        in_range("group_size", self.group_size, 1..=65_536)?;
        in_range("group_timeout_us", self.group_timeout_us, 0..=10_000_000)?;
        in_range("thread_priority", self.thread_priority, 0..=99)?;
        check_affinity(&self.thread_processor_affinity)?;
        in_range("kernel_receive_buffer_size_b", self.kernel_receive_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        in_range("kernel_transmit_buffer_size_b", self.kernel_transmit_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        check_ring_size(self.ring_size_b)?;
        in_range("max_datagram_size_b", self.max_datagram_size_b, 1..=65_535)?;
        for (i, group) in self.multicast_groups.iter().enumerate() {
            let key = format!("multicast_groups[{i}]");
            if !group.is_multicast() {
                return Err(invalid(&key, format!("{group} is not a multicast address")));
            }
            // Not an IPv4 group on a dual-stack IPv6 socket either: Linux
            // then hands each datagram of the group to one socket of the
            // port's SO_REUSEPORT group, joined or not (seen on 6.18).
            if group.is_ipv4() != self.address.is_ipv4() {
                let message = format!(
                    "{group} cannot be joined by a socket bound to {}: give an IPv{} address (a stage per family)",
                    self.address.ip(),
                    if group.is_ipv4() { 4 } else { 6 }
                );
                return Err(invalid(&key, message));
            }
        }
        for (i, source) in self.multicast_sources.iter().enumerate() {
            let key = format!("multicast_sources[{i}]");
            if self.multicast_groups.is_empty() {
                return Err(invalid(&key, "needs multicast_groups to join"));
            }
            if source.is_multicast() || source.is_unspecified() {
                return Err(invalid(&key, format!("{source} is not a sender's address")));
            }
            if !self.multicast_groups.iter().any(|g| g.is_ipv4() == source.is_ipv4()) {
                return Err(invalid(&key, format!("{source} is of another family than every group")));
            }
        }
        let interface = &self.multicast_interface;
        if !interface.is_empty()
            && interface.parse::<IpAddr>().is_err()
            && (interface.len() > 15 || interface.contains(|c: char| c == '/' || c.is_whitespace()))
        {
            let message =
                format!("must be an interface name (at most 15 bytes) or an address, got {interface:?}");
            return Err(invalid("multicast_interface", message));
        }
        Ok(())
    }
}

/// Whether a bridge may lose records to keep up (`mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeMode {
    /// Every record crosses exactly once: the exporting side holds each
    /// record in its ring until the peer acknowledges it, and the ring's
    /// backpressure reaches the sensors.
    #[default]
    Lossless,
    /// A live view: the exporting side never holds the producer back and
    /// skips what the link cannot carry in time; both sides count it.
    Lossy,
}

/// A bridge (`[[bridge]]`): one TCP connection to another host's bridge
/// over which both sides export channels of their bus and import the
/// peer's, records unchanged (`docs/BRIDGE.md`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// The bridge's name (logs, `ringest bridge status`): a valid channel
    /// name of at most [`MAX_STAGE_NAME_LEN`] bytes, unique across the file.
    pub name: String,
    /// Address and port to accept the peer on (port 0: any free port); a
    /// host name is resolved when the file is read. Exactly one of `listen`
    /// and `connect`.
    #[serde(deserialize_with = "optional_listen_address")]
    pub listen: Option<SocketAddr>,
    /// The peer's `host:port` to connect to (resolved on every attempt);
    /// reconnects forever with the backoff below.
    pub connect: Option<String>,
    /// Local channels to send to the peer: names, where `*` stands for any
    /// run of characters (`lidar/*`, `ingest/packet_group`). Channels
    /// ending in `/egress_packets` are never exported this way: they flow
    /// only towards the stage that sends them (see `docs/BRIDGE.md`).
    pub export: Vec<String>,
    /// The peer's channels appear locally as `<import_prefix>/<channel>`.
    pub import_prefix: String,
    /// `"lossless"` (default) or `"lossy"`.
    pub mode: BridgeMode,
    /// Bytes of records the peer may send before this side acknowledges
    /// them (the credit window), 64 KiB..=1 GiB.
    pub window_b: u64,
    /// Milliseconds a connection attempt may take (1..=600_000).
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait before the first reconnection attempt; the wait
    /// doubles after each failure (1..=3_600_000).
    pub reconnect_backoff_initial_ms: u64,
    /// Longest wait between reconnection attempts in milliseconds
    /// (`reconnect_backoff_initial_ms`..=3_600_000).
    pub reconnect_backoff_max_ms: u64,
    /// Milliseconds between heartbeats sent to the peer (10..=60_000).
    pub keepalive_ms: u64,
    /// Milliseconds without hearing from the peer after which the
    /// connection is dropped and made again (more than `keepalive_ms`, at
    /// most 600_000).
    pub heartbeat_timeout_ms: u64,
    /// TLS for the link (`[bridge.tls]`); absent: plaintext.
    pub tls: Option<BridgeTlsConfig>,
}

/// A bridge's TLS (`[bridge.tls]`, rustls): certificates and keys are PEM
/// files, read when the bridge starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeTlsConfig {
    /// This side's certificate chain (PEM, its own certificate first).
    /// Required when listening; when connecting, presented to a peer that
    /// asks for a client certificate.
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The CA certificates (PEM) that the peer's certificate must be signed
    /// by. Required when connecting, and when listening with
    /// `require_client_cert`.
    pub ca: Option<PathBuf>,
    /// A listening bridge refuses a peer without a certificate signed by
    /// `ca` (mutual TLS).
    pub require_client_cert: bool,
    /// When connecting: the name (DNS name or IP address) the peer's
    /// certificate must carry; default: the host of `connect`.
    pub server_name: Option<String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: "bridge".to_owned(),
            listen: None,
            connect: None,
            export: Vec::new(),
            import_prefix: "remote".to_owned(),
            mode: BridgeMode::Lossless,
            window_b: 8 * MIB,
            connect_timeout_ms: 5000,
            reconnect_backoff_initial_ms: 100,
            reconnect_backoff_max_ms: 5000,
            keepalive_ms: 1000,
            heartbeat_timeout_ms: 5000,
            tls: None,
        }
    }
}

impl BridgeConfig {
    /// Parses and validates a single bridge table given at the top level of
    /// `text`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        load(text, None, Self::validate)
    }

    /// Checks every value's range and that exactly one of `listen` and
    /// `connect` is set. Errors name the key (relative to the bridge's
    /// table) but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        match (&self.listen, &self.connect) {
            (Some(_), Some(_)) => return Err(invalid("connect", "set either listen or connect, not both")),
            (None, None) => {
                return Err(invalid("listen", "set listen (accept the peer) or connect (reach the peer)"));
            }
            (None, Some(address)) => check_host_port(address).map_err(|e| e.renamed("connect"))?,
            (Some(_), None) => {}
        }
        for (i, pattern) in self.export.iter().enumerate() {
            // A pattern is a channel name in which `*` stands for any run of
            // characters: check it with `*` standing for one letter.
            if let Err(reason) = shm_bus::validate_name(&pattern.replace('*', "x")) {
                let message = format!("{pattern:?} is not a channel name or pattern: {reason}");
                return Err(invalid(&format!("export[{i}]"), message));
            }
        }
        if let Err(reason) = shm_bus::validate_name(&self.import_prefix) {
            let message = format!("{:?} is not a valid channel name: {reason}", self.import_prefix);
            return Err(invalid("import_prefix", message));
        }
        in_range("window_b", self.window_b, 64 * KIB..=GIB)?;
        in_range("connect_timeout_ms", self.connect_timeout_ms, 1..=600_000)?;
        in_range("reconnect_backoff_initial_ms", self.reconnect_backoff_initial_ms, 1..=MAX_BACKOFF_MS)?;
        if !(self.reconnect_backoff_initial_ms..=MAX_BACKOFF_MS).contains(&self.reconnect_backoff_max_ms) {
            let message = format!(
                "must be in {}..={MAX_BACKOFF_MS} (at least reconnect_backoff_initial_ms), got {}",
                self.reconnect_backoff_initial_ms, self.reconnect_backoff_max_ms
            );
            return Err(invalid("reconnect_backoff_max_ms", message));
        }
        in_range("keepalive_ms", self.keepalive_ms, 10..=60_000)?;
        if !(self.keepalive_ms + 1..=600_000).contains(&self.heartbeat_timeout_ms) {
            let message = format!(
                "must be in {}..=600000 (more than keepalive_ms), got {}",
                self.keepalive_ms + 1,
                self.heartbeat_timeout_ms
            );
            return Err(invalid("heartbeat_timeout_ms", message));
        }
        if let Some(tls) = &self.tls {
            tls.validate(self.listen.is_some()).map_err(|e| e.within("tls"))?;
        }
        Ok(())
    }
}

impl BridgeTlsConfig {
    /// Checks which files a listening or connecting side needs, and that
    /// each names a readable file with a PEM block of the right kind (the
    /// bridge parses them when it starts).
    fn validate(&self, listening: bool) -> Result<(), ConfigError> {
        let needed = |key: &str, why: &str| invalid(key, format!("required: {why}"));
        if listening {
            if self.certificate.is_none() {
                return Err(needed("certificate", "a listening bridge presents its certificate (PEM file)"));
            }
            if self.require_client_cert && self.ca.is_none() {
                return Err(needed(
                    "ca",
                    "require_client_cert checks the peer's certificate against these CAs",
                ));
            }
            if self.server_name.is_some() {
                return Err(invalid("server_name", "only for a connecting bridge (the name it expects)"));
            }
        } else {
            if self.ca.is_none() {
                return Err(needed(
                    "ca",
                    "a connecting bridge checks the peer's certificate against these CAs",
                ));
            }
            if self.require_client_cert {
                return Err(invalid("require_client_cert", "only for a listening bridge"));
            }
            if let Some(name) = &self.server_name
                && (name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/'))
            {
                return Err(invalid(
                    "server_name",
                    format!("must be a DNS name or IP address, got {name:?}"),
                ));
            }
        }
        match (&self.certificate, &self.key) {
            (Some(_), None) => return Err(needed("key", "the private key of certificate")),
            (None, Some(_)) => return Err(needed("certificate", "the certificate of key")),
            _ => {}
        }
        let files = [("certificate", &self.certificate, "CERTIFICATE"), ("key", &self.key, "PRIVATE KEY")];
        for (key, path, label) in files.into_iter().chain([("ca", &self.ca, "CERTIFICATE")]) {
            if let Some(path) = path {
                check_pem_file(path, label).map_err(|message| invalid(key, message))?;
            }
        }
        Ok(())
    }
}

/// Checks that `path` is a readable file holding a PEM block whose label
/// ends with `label` (`CERTIFICATE`, or `PRIVATE KEY` of any kind).
fn check_pem_file(path: &Path, label: &str) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let found = text.lines().any(|line| {
        line.trim_end()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if found { Ok(()) } else { Err(format!("{} holds no PEM {label} block", path.display())) }
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What reading it returned.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{}{message}", Location(.path, .line, .column))]
    Syntax {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A key is unknown, or its value has the wrong type or is out of range.
    #[error("{}{key}: {message}", Location(.path, .line, .column))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Path of the key, like `tcp_server[1].group_size`; relative to the
        /// table checked when returned by a `validate` method.
        key: String,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the value, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            bus: BusConfig::default(),
            metrics: MetricsConfig::default(),
            tcp_server: vec![TcpServerConfig::default()],
            tcp_client: Vec::new(),
            udp: Vec::new(),
            bridge: Vec::new(),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { dir: None, mode: 0o600 }
    }
}

impl Default for TcpServerConfig {
    fn default() -> Self {
        Self {
            name: "ingest".to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], 7400)),
            maximum_connections: 1024,
            group_size: 64,
            group_timeout_us: 1000,
            thread_priority: 0,
            thread_processor_affinity: Vec::new(),
            enable_nodelay: true,
            data_receive_timeout_ms: 0,
            egress_buffer_size_b: MIB,
            kernel_receive_buffer_size_b: 0,
            kernel_transmit_buffer_size_b: 0,
            ring_size_b: 64 * MIB,
            receive_path: ReceivePathChoice::Auto,
            receive_slot_size_b: DEFAULT_SLOT,
            keepalive_s: 0,
        }
    }
}

impl Default for TcpClientConfig {
    fn default() -> Self {
        Self {
            name: "client".to_owned(),
            address: "127.0.0.1:7400".to_owned(),
            reuse_address: false,
            group_size: 64,
            group_timeout_us: 1000,
            thread_priority: 0,
            thread_processor_affinity: Vec::new(),
            enable_nodelay: true,
            data_receive_timeout_ms: 0,
            egress_buffer_size_b: MIB,
            kernel_receive_buffer_size_b: 0,
            kernel_transmit_buffer_size_b: 0,
            connect_timeout_ms: 5000,
            reconnect_backoff_initial_ms: 100,
            reconnect_backoff_max_ms: 5000,
            keepalive_s: 0,
            ring_size_b: 64 * MIB,
            receive_path: ReceivePathChoice::Auto,
            receive_slot_size_b: DEFAULT_SLOT,
        }
    }
}

impl EngineConfig {
    /// Parses and validates a daemon configuration file's text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        load(text, None, Self::validate)
    }

    /// Reads, parses and validates a daemon configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        load(&text, Some(path), Self::validate)
    }

    /// Checks every value's range and that stage names are unique. Errors
    /// name the key's path but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bus.validate().map_err(|e| e.within("bus"))?;
        // Stage name -> the table that uses it.
        let mut owners = HashMap::new();
        for (i, stage) in self.tcp_server.iter().enumerate() {
            let table = format!("tcp_server[{i}]");
            stage.validate().map_err(|e| e.within(&table))?;
            claim_name(&mut owners, &stage.name, table)?;
        }
        for (i, stage) in self.tcp_client.iter().enumerate() {
            let table = format!("tcp_client[{i}]");
            stage.validate().map_err(|e| e.within(&table))?;
            claim_name(&mut owners, &stage.name, table)?;
        }
        for (i, stage) in self.udp.iter().enumerate() {
            let table = format!("udp[{i}]");
            stage.validate().map_err(|e| e.within(&table))?;
            claim_name(&mut owners, &stage.name, table)?;
        }
        for (i, bridge) in self.bridge.iter().enumerate() {
            let table = format!("bridge[{i}]");
            bridge.validate().map_err(|e| e.within(&table))?;
            claim_name(&mut owners, &bridge.name, table)?;
        }
        Ok(())
    }
}

impl BusConfig {
    /// Checks `dir` and `mode`. Errors name the key but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            return Err(invalid("dir", "must not be empty; leave it out for the default"));
        }
        if self.mode & !0o777 != 0 || self.mode & 0o600 != 0o600 {
            let message = format!(
                "must be within 0o777 and include owner read and write (0o600), got {:#o} \
                 (write modes in octal: \"0640\" or 0o640)",
                self.mode
            );
            return Err(invalid("mode", message));
        }
        Ok(())
    }
}

impl TcpServerConfig {
    /// Parses and validates a single server stage table given at the top
    /// level of `text`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        load(text, None, Self::validate)
    }

    /// Checks every value's range. Errors name the key (relative to the
    /// stage's table) but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        in_range("maximum_connections", self.maximum_connections, 1..=1_000_000)?;
        in_range("group_size", self.group_size, 1..=65_536)?;
        in_range("group_timeout_us", self.group_timeout_us, 0..=10_000_000)?;
        in_range("thread_priority", self.thread_priority, 0..=99)?;
        check_affinity(&self.thread_processor_affinity)?;
        in_range("data_receive_timeout_ms", self.data_receive_timeout_ms, 0..=86_400_000)?;
        in_range("egress_buffer_size_b", self.egress_buffer_size_b, 1..=GIB)?;
        in_range("kernel_receive_buffer_size_b", self.kernel_receive_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        in_range("kernel_transmit_buffer_size_b", self.kernel_transmit_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        check_ring_size(self.ring_size_b)?;
        check_slot_size(self.receive_slot_size_b)?;
        in_range("keepalive_s", self.keepalive_s, 0..=86_400)
    }
}

impl TcpClientConfig {
    /// Parses and validates a single client stage table given at the top
    /// level of `text`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        load(text, None, Self::validate)
    }

    /// Checks every value's range and the address's form. Errors name the
    /// key (relative to the stage's table) but no line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        check_host_port(&self.address)?;
        in_range("group_size", self.group_size, 1..=65_536)?;
        in_range("group_timeout_us", self.group_timeout_us, 0..=10_000_000)?;
        in_range("thread_priority", self.thread_priority, 0..=99)?;
        check_affinity(&self.thread_processor_affinity)?;
        in_range("data_receive_timeout_ms", self.data_receive_timeout_ms, 0..=86_400_000)?;
        in_range("egress_buffer_size_b", self.egress_buffer_size_b, 1..=GIB)?;
        in_range("kernel_receive_buffer_size_b", self.kernel_receive_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        in_range("kernel_transmit_buffer_size_b", self.kernel_transmit_buffer_size_b, KERNEL_BUFFER_RANGE)?;
        in_range("connect_timeout_ms", self.connect_timeout_ms, 1..=600_000)?;
        in_range("reconnect_backoff_initial_ms", self.reconnect_backoff_initial_ms, 1..=MAX_BACKOFF_MS)?;
        if !(self.reconnect_backoff_initial_ms..=MAX_BACKOFF_MS).contains(&self.reconnect_backoff_max_ms) {
            let message = format!(
                "must be in {}..={MAX_BACKOFF_MS} (at least reconnect_backoff_initial_ms), got {}",
                self.reconnect_backoff_initial_ms, self.reconnect_backoff_max_ms
            );
            return Err(invalid("reconnect_backoff_max_ms", message));
        }
        in_range("keepalive_s", self.keepalive_s, 0..=86_400)?;
        check_ring_size(self.ring_size_b)?;
        check_slot_size(self.receive_slot_size_b)
    }
}

/// The embedded default daemon configuration: commented TOML documenting
/// every key of both stage kinds, with one `[[tcp_server]]` stage named
/// `"ingest"` on `127.0.0.1:7400` and a commented-out `[[tcp_client]]`.
/// It parses to [`EngineConfig::default`].
pub fn default_config_toml() -> &'static str {
    DEFAULT_CONFIG_TOML
}

/// An error without a location.
fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        key: key.to_owned(),
        line: None,
        column: None,
        message: message.into(),
    }
}

impl ConfigError {
    /// Gives an `Invalid` error the key `key` (a check shared by keys of
    /// different names).
    fn renamed(mut self, new_key: &str) -> Self {
        if let Self::Invalid { key, .. } = &mut self {
            *key = new_key.to_owned();
        }
        self
    }

    /// Prefixes the key path of an `Invalid` error with the table it is in.
    fn within(mut self, table: &str) -> Self {
        if let Self::Invalid { key, .. } = &mut self {
            *key = format!("{table}.{key}");
        }
        self
    }
}

/// Checks that `value` of `key` is in `range`.
fn in_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(key, format!("must be in {}..={}, got {value}", range.start(), range.end())))
}

/// Checks that a stage name can prefix channel names.
fn check_name(name: &str) -> Result<(), ConfigError> {
    if let Err(reason) = shm_bus::validate_name(name) {
        return Err(invalid("name", format!("{name:?} is not a valid channel name: {reason}")));
    }
    if name.len() > MAX_STAGE_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_STAGE_NAME_LEN} bytes, got {}", name.len()),
        ));
    }
    Ok(())
}

/// Checks each processor index and that none is listed twice.
fn check_affinity(processors: &[usize]) -> Result<(), ConfigError> {
    for (i, &processor) in processors.iter().enumerate() {
        let key = format!("thread_processor_affinity[{i}]");
        if processor > MAX_PROCESSOR {
            return Err(invalid(&key, format!("must be in 0..={MAX_PROCESSOR}, got {processor}")));
        }
        if processors[..i].contains(&processor) {
            return Err(invalid(&key, format!("processor {processor} is listed twice")));
        }
    }
    Ok(())
}

/// Checks that a ring size suits [`shm_bus::ChannelOptions::capacity`].
fn check_ring_size(bytes: u64) -> Result<(), ConfigError> {
    if bytes.is_power_of_two() && (64 * KIB..=GIB4).contains(&bytes) {
        return Ok(());
    }
    let message = format!("must be a power of two in {}..={GIB4} (64 KiB..=4 GiB), got {bytes}", 64 * KIB);
    Err(invalid("ring_size_b", message))
}

/// Checks `receive_slot_size_b`.
fn check_slot_size(bytes: u64) -> Result<(), ConfigError> {
    if bytes.is_power_of_two() && (4 * KIB..=256 * KIB).contains(&bytes) {
        return Ok(());
    }
    let message =
        format!("must be a power of two in {}..={} (4 KiB..=256 KiB), got {bytes}", 4 * KIB, 256 * KIB);
    Err(invalid("receive_slot_size_b", message))
}

/// A server's listen address from `ip:port`, or from `host:port` with the
/// host name resolved now: its first IPv4 address (`localhost` is then
/// 127.0.0.1, as clients usually try first), else its first address. Port 0
/// means any free port.
pub fn resolve_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let form_ok = text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(|c: char| c == ':' || c.is_whitespace())
            && port.parse::<u16>().is_ok()
    });
    if !form_ok {
        return Err(format!("must be ip:port or host:port (an IPv6 address in brackets), got {text:?}"));
    }
    let addresses: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("cannot resolve {text:?}: {e}"))?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Deserializes `[metrics] listen` (present: an address) with
/// [`resolve_listen_address`].
fn optional_listen_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    listen_address(deserializer).map(Some)
}

/// Deserializes a server's `address` with [`resolve_listen_address`].
fn listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    struct ListenAddress;
    impl Visitor<'_> for ListenAddress {
        type Value = SocketAddr;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket address: ip:port or host:port")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<SocketAddr, E> {
            resolve_listen_address(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(ListenAddress)
}

/// Checks a client's `host:port`: a non-empty host without spaces (an IPv6
/// address in brackets) and a port in 1..=65535.
fn check_host_port(address: &str) -> Result<(), ConfigError> {
    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(ipv6) => ipv6.parse::<Ipv6Addr>().is_ok(),
            None => !host.is_empty() && !host.contains(|c: char| c == ':' || c.is_whitespace()),
        };
        host_ok && port.parse::<u16>().is_ok_and(|port| port != 0)
    });
    if valid {
        return Ok(());
    }
    let message = format!(
        "must be host:port with a non-empty host (an IPv6 address in brackets) \
         and a port in 1..=65535, got {address:?}"
    );
    Err(invalid("address", message))
}

/// Records that `table` uses the stage name `name`, failing if another
/// table already does.
fn claim_name<'a>(
    owners: &mut HashMap<&'a str, String>,
    name: &'a str,
    table: String,
) -> Result<(), ConfigError> {
    match owners.entry(name) {
        Entry::Occupied(owner) => {
            let message = format!("stage name {name:?} is already used by {}", owner.get());
            Err(invalid(&format!("{table}.name"), message))
        }
        Entry::Vacant(slot) => {
            slot.insert(table);
            Ok(())
        }
    }
}

/// Reads `mode` from an octal string (`"0640"`, `"0o640"`) or an integer.
fn deserialize_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct ModeVisitor;

    impl Visitor<'_> for ModeVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("permission bits as an octal string like \"0640\" or an integer like 0o640")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<u32, E> {
            let invalid = || E::invalid_value(Unexpected::Str(value), &self);
            let digits = value.strip_prefix("0o").unwrap_or(value);
            // `from_str_radix` alone would accept a sign.
            if digits.is_empty() || !digits.bytes().all(|b| matches!(b, b'0'..=b'7')) {
                return Err(invalid());
            }
            u32::from_str_radix(digits, 8).map_err(|_| invalid())
        }
    }

    deserializer.deserialize_any(ModeVisitor)
}

/// Parses `text` into a `T`, validates it, and gives every error the file
/// name and the line and column of the value at fault.
fn load<T: DeserializeOwned>(
    text: &str,
    file: Option<&Path>,
    validate: fn(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let source = Source { text, file };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| source.syntax_error(&e))?;
    let config: T = serde_path_to_error::deserialize(deserializer).map_err(|e| source.serde_error(&e))?;
    validate(&config).map_err(|e| source.locate(e))?;
    Ok(config)
}

/// The text being loaded, to locate errors in.
struct Source<'a> {
    text: &'a str,
    file: Option<&'a Path>,
}

impl Source<'_> {
    /// A TOML syntax error, located by its span.
    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let (line, column) = self.line_column(error.span());
        let message = error.message().trim_end().to_owned();
        ConfigError::Syntax { path: self.file.map(Path::to_owned), line, column, message }
    }

    /// A deserialization error (unknown key, wrong type), named by its
    /// path and located by its span, or by its path when it has none.
    fn serde_error(&self, error: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = error.path().to_string();
        let span = error.inner().span().or_else(|| self.span_of(&key));
        let (line, column) = self.line_column(span);
        let message = error.inner().message().to_owned();
        ConfigError::Invalid { path: self.file.map(Path::to_owned), key, line, column, message }
    }

    /// Adds the file and the key's line and column to a validation error.
    fn locate(&self, mut error: ConfigError) -> ConfigError {
        if let ConfigError::Invalid { path, key, line, column, .. } = &mut error {
            *path = self.file.map(Path::to_owned);
            (*line, *column) = self.line_column(self.span_of(key));
        }
        error
    }

    /// The span of the value at `key` (like `tcp_server[1].group_size`), or
    /// of its closest enclosing value in the text when the key is absent.
    /// Parses the text again: only errors need the spans.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let root = DeTable::parse(self.text).ok()?.into_inner();
        let mut value = &DeValue::Table(root);
        let mut span = None;
        for step in key.split('.').flat_map(|part| part.split('[')) {
            let child = match (value, step.strip_suffix(']')) {
                (DeValue::Table(table), None) => table.get(step),
                (DeValue::Array(array), Some(index)) => index.parse().ok().and_then(|i: usize| array.get(i)),
                _ => None,
            };
            let Some(child) = child else { break };
            span = Some(child.span());
            value = child.get_ref();
        }
        span
    }

    /// 1-based line and column (in characters) where `span` starts.
    fn line_column(&self, span: Option<Range<usize>>) -> (Option<usize>, Option<usize>) {
        let Some(span) = span else { return (None, None) };
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
        (Some(line), Some(column))
    }
}

/// Formats the `file:line:column: ` prefix of an error, leaving out what is
/// unknown.
struct Location<'a>(&'a Option<PathBuf>, &'a Option<usize>, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(file, line, column) = self;
        match (file, line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}:{}: ", file.display(), column.unwrap_or(1)),
            (Some(file), None) => write!(f, "{}: ", file.display()),
            (None, Some(line)) => write!(f, "line {line}, column {}: ", column.unwrap_or(1)),
            (None, None) => Ok(()),
        }
    }
}

/// The text of [`default_config_toml`].
const DEFAULT_CONFIG_TOML: &str = r#"# ringest engine configuration.
#
# Every key is optional: the values below are the defaults. Unknown keys are
# errors. Units are in the key names: _b bytes, _us microseconds,
# _ms milliseconds, _s seconds.

# Where stages create their shared-memory channels.
[bus]
# Bus directory. Default: $RINGEST_BUS, or /dev/shm/ringest when unset.
# dir = "/dev/shm/ringest"
# Permission bits of channel files, as an octal string or an integer (0o640).
# Within 0777 and including owner read and write (0600); "0640" lets the
# file's group read the channels.
mode = "0600"

# The Prometheus endpoint of `ringest run`: the counters of the stages, their
# connections, channels and readers at http://<listen>/metrics, in the
# Prometheus text format (OpenMetrics when asked for). Off by default.
[metrics]
# Address and port to serve on (a host name resolves as a server's address;
# port 0: any free port, printed at start).
# listen = "127.0.0.1:9464"

# A TCP server stage: accepts clients and publishes what they send, in packet
# groups, into channels under its name (<name>/packet_group); what is
# published to <name>/egress_packets is sent to every client. Repeat the
# table for more stages.
[[tcp_server]]
# Namespace of the stage's channels, unique across the file: ASCII letters,
# digits, '_', '-' and '.', components separated by '/', none starting
# with '.'; at most 200 bytes.
name = "ingest"
# Local address and port to listen on (port 0: any free port); a host name
# (localhost:7400) is resolved when the file is read. While the port is
# taken, binding is retried (backing off to every 2 s), forever.
address = "127.0.0.1:7400"
# Simultaneous clients allowed, 1..=1000000.
maximum_connections = 1024
# Packets (returns of recv) per published group, 1..=65536.
group_size = 64
# Microseconds after its first packet that a partial group is published,
# 0..=10000000; 0 publishes every packet at once.
group_timeout_us = 1000
# SCHED_FIFO priority of the stage's executor threads, 0..=99; 0 keeps the
# normal scheduler. Needs CAP_SYS_NICE: when refused, a warning, and normal
# priority. Executors never spin: an idle one sleeps in the kernel.
thread_priority = 0
# Processors (0..=1023, no duplicates): one executor thread pinned to each,
# connections spread over them; [] runs one unpinned executor.
thread_processor_affinity = []
# Whether TCP_NODELAY is set on accepted connections.
enable_nodelay = true
# Milliseconds without data after which a client is disconnected,
# 0..=86400000; 0: never.
data_receive_timeout_ms = 0
# Bytes of egress data queued per client when it does not read fast enough,
# 1..=1073741824 (1 GiB); at least the largest message sent. 1 MiB.
egress_buffer_size_b = 1048576
# Kernel receive buffer (SO_RCVBUF) in bytes, 0..=2147483647; 0: the
# kernel's default.
kernel_receive_buffer_size_b = 0
# Kernel transmit buffer (SO_SNDBUF) in bytes, 0..=2147483647; 0: the
# kernel's default.
kernel_transmit_buffer_size_b = 0
# Bytes of shared-memory ring per shard of the packet channel: a power of two
# in 65536..=4294967296 (64 KiB..=4 GiB). 64 MiB.
ring_size_b = 67108864
# Receive path: "auto" (io_uring multishot receive straight into the shared
# ring when the kernel supports it, else "glommio_read"), "io_uring" (fail
# to start without it) or "glommio_read" (recv after glommio reports the
# socket readable). Socket statistics report the path that runs.
receive_path = "auto"
# Bytes of one receive slot of the io_uring path: the most one receive
# delivers, and the ring space each packet takes. A power of two in
# 4096..=262144 (4 KiB..=256 KiB); at most ring_size_b / 64 (at least 4 KiB)
# is used. 64 KiB.
receive_slot_size_b = 65536
# Seconds of idle time before TCP keepalive probes start, 0..=86400; 0: off.
keepalive_s = 0

# A TCP client stage: connects to a server, reconnects whenever the
# connection ends, and publishes what it receives, in packet groups, into
# channels under its name (<name>/packet_group); what is published to
# <name>/egress_packets is sent to the server. Repeat the table for more
# stages. The values shown are the defaults.
# [[tcp_client]]
# Namespace of the stage's channels, with the same rules as a server's name.
# name = "client"
# Server to connect to, as host:port: a host name (resolved when
# connecting), an IPv4 address or a bracketed IPv6 address ([::1]:7400),
# and a port in 1..=65535.
# address = "127.0.0.1:7400"
# Whether SO_REUSEADDR is set on the socket.
# reuse_address = false
# Packets (returns of recv) per published group, 1..=65536.
# group_size = 64
# Microseconds after its first packet that a partial group is published,
# 0..=10000000; 0 publishes every packet at once.
# group_timeout_us = 1000
# SCHED_FIFO priority of the stage's executor thread, 0..=99; 0 keeps the
# normal scheduler (needs CAP_SYS_NICE, else a warning and normal priority).
# thread_priority = 0
# Processors (0..=1023, no duplicates): a client stage has one connection,
# so one executor, pinned to the first listed; [] runs it unpinned.
# thread_processor_affinity = []
# Whether TCP_NODELAY is set on the connection.
# enable_nodelay = true
# Milliseconds without data after which the stage reconnects,
# 0..=86400000; 0: never.
# data_receive_timeout_ms = 0
# Bytes of egress data queued when the server does not read fast enough,
# 1..=1073741824 (1 GiB); at least the largest message sent. 1 MiB.
# egress_buffer_size_b = 1048576
# Kernel receive buffer (SO_RCVBUF) in bytes, 0..=2147483647; 0: the
# kernel's default.
# kernel_receive_buffer_size_b = 0
# Kernel transmit buffer (SO_SNDBUF) in bytes, 0..=2147483647; 0: the
# kernel's default.
# kernel_transmit_buffer_size_b = 0
# Milliseconds a connection attempt may take, 1..=600000.
# connect_timeout_ms = 5000
# Milliseconds to wait before the first reconnection attempt, 1..=3600000;
# the wait doubles after each failed attempt.
# reconnect_backoff_initial_ms = 100
# Longest wait between reconnection attempts in milliseconds, from
# reconnect_backoff_initial_ms to 3600000.
# reconnect_backoff_max_ms = 5000
# Seconds of idle time before TCP keepalive probes start, 0..=86400; 0: off.
# keepalive_s = 0
# Bytes of shared-memory ring per shard of the packet channel: a power of two
# in 65536..=4294967296 (64 KiB..=4 GiB). 64 MiB.
# ring_size_b = 67108864
# Receive path: "auto" (io_uring multishot receive straight into the shared
# ring when the kernel supports it, else "glommio_read"), "io_uring" (fail
# to start without it) or "glommio_read" (recv after glommio reports the
# socket readable). Socket statistics report the path that runs.
# receive_path = "auto"
# Bytes of one receive slot of the io_uring path: the most one receive
# delivers, and the ring space each packet takes. A power of two in
# 4096..=262144 (4 KiB..=256 KiB); at most ring_size_b / 64 (at least 4 KiB)
# is used. 64 KiB.
# receive_slot_size_b = 65536

# A UDP stage: receives datagrams (unicast or multicast: lidars, RTP
# cameras) and publishes them, in datagram groups, into channels under its
# name (<name>/packet_group); what is published to <name>/egress_packets is
# sent as datagrams (sensor commands). Repeat the table for more stages.
# The values shown are the defaults.
# [[udp]]
# Namespace of the stage's channels, with the same rules as a server's name.
# name = "udp"
# Local address and port to bind (port 0: any free port); a host name is
# resolved when the file is read. Bind the group's address (239.1.2.3:2368)
# or the wildcard (0.0.0.0:2368, [::]:2368) to receive multicast. The port
# must be free, unless the stage joins multicast groups (receivers of a
# group may share a port).
# address = "127.0.0.1:2368"
# Datagrams per published group, 1..=65536.
# group_size = 64
# Microseconds after its first datagram that a partial group is published,
# 0..=10000000; 0 publishes every datagram at once.
# group_timeout_us = 1000
# SCHED_FIFO priority of the stage's executor threads, 0..=99; 0 keeps the
# normal scheduler (needs CAP_SYS_NICE, else a warning and normal priority).
# thread_priority = 0
# Processors (0..=1023, no duplicates): one executor pinned to each, each
# with its own socket (SO_REUSEPORT). The kernel hashes each flow (source
# address and port) to one socket, so one sensor's datagrams land on one
# executor, in order; each multicast group is joined on one executor.
# [] runs one unpinned executor.
# thread_processor_affinity = []
# Kernel receive buffer per socket in bytes, 0..=2147483647; 0: the kernel's
# default. UDP cannot push back: this buffer absorbs bursts while a lossless
# reader holds the ring full, and what does not fit is dropped by the kernel
# (counted in socket_stats as kernel_drops). Set with SO_RCVBUFFORCE when
# permitted (root or CAP_NET_ADMIN), else clamped to net.core.rmem_max with
# a warning. A lidar stage wants several MiB (16777216).
# kernel_receive_buffer_size_b = 0
# Kernel transmit buffer (SO_SNDBUF) in bytes for egress datagrams,
# 0..=2147483647; 0: the kernel's default.
# kernel_transmit_buffer_size_b = 0
# Bytes of shared-memory ring per shard of the packet channel: a power of two
# in 65536..=4294967296 (64 KiB..=4 GiB). 64 MiB.
# ring_size_b = 67108864
# Receive path: "auto" (io_uring multishot recvmsg straight into the shared
# ring when the kernel supports it, else "glommio_read"), "io_uring" (fail to
# start without it) or "glommio_read" (recvmmsg in batches when the socket is
# readable).
# receive_path = "auto"
# Largest datagram kept whole, 1..=65535: each io_uring receive slot is sized
# to it (1206 for Velodyne packets saves ring space). A longer datagram is
# kept truncated, flagged and counted, never silently. 65507 is the largest
# IPv4 UDP payload.
# max_datagram_size_b = 65507
# Ask the kernel for each datagram's receive time (SO_TIMESTAMPING: software,
# and hardware where the network card stamps packets).
# kernel_timestamps = true
# Multicast groups to join, of the address's family (["239.1.2.3"], or
# ["ff15::7"] on an IPv6 address).
# multicast_groups = []
# Interface to join them on, by name ("eth0") or address; "": the kernel's
# choice (the route to the group).
# multicast_interface = ""
# Senders for source-specific joins (SSM): when set, each group is joined
# for these sources only.
# multicast_sources = []
# Whether multicast egress datagrams loop back to receivers on this host.
# multicast_loop = true
# Where egress records without their own destination go (ip:port or
# host:port); unset: such records are dropped and counted.
# egress_destination = "192.168.1.201:2368"

# A bridge: one TCP connection to another host's ringest, over which each
# side exports channels of its bus and imports the other's, records
# unchanged (kind, timestamp, per-shard sequence numbers, payload; protocol
# in docs/BRIDGE.md). Lossless by default: a record leaves the exporting
# ring only once the peer has published it, and a broken link or a restart
# of either side resumes without loss or duplicates. A consumer of the
# importing host may publish to <import_prefix>/<stage>/egress_packets: the
# records reach the exporting host's stage. Repeat the table for more
# bridges; the values shown are the defaults.
# [[bridge]]
# Name of the bridge, with the same rules as a stage name.
# name = "bridge"
# Exactly one of listen (accept the peer: ip:port or host:port, port 0: any
# free port) and connect (the peer's host:port, resolved on every attempt;
# reconnects forever with the backoff below).
# listen = "0.0.0.0:7500"
# connect = "sensor-host:7500"
# Local channels to send to the peer; * stands for any run of characters.
# export = ["ingest/*"]
# The peer's channels appear here as <import_prefix>/<channel>.
# import_prefix = "remote"
# "lossless": every record exactly once, the exporting ring holds what the
# peer has not acknowledged; "lossy": a live view that skips what the link
# cannot carry in time, and counts it.
# mode = "lossless"
# Bytes of records the peer may send before this side acknowledges them,
# 65536..=1073741824 (64 KiB..=1 GiB). 8 MiB.
# window_b = 8388608
# Milliseconds a connection attempt may take, 1..=600000.
# connect_timeout_ms = 5000
# Milliseconds to wait before the first reconnection attempt, 1..=3600000;
# the wait doubles after each failure.
# reconnect_backoff_initial_ms = 100
# Longest wait between reconnection attempts in milliseconds, from
# reconnect_backoff_initial_ms to 3600000.
# reconnect_backoff_max_ms = 5000
# Milliseconds between heartbeats, 10..=60000.
# keepalive_ms = 1000
# Milliseconds without a word from the peer after which the connection is
# made again, more than keepalive_ms, at most 600000 (a TLS handshake has as
# long).
# heartbeat_timeout_ms = 5000
# TLS (rustls) for the link; without this table the link is plaintext, and a
# bridge listening on an address other than loopback warns at start. PEM
# files, read at start. A listening bridge needs certificate and key; a
# connecting one needs ca (and certificate and key when the listener
# requires client certificates). A peer whose certificate is not signed by
# ca, one without a certificate where one is required, and a plaintext peer
# are refused, with one line logged on each side.
# [bridge.tls]
# This side's certificate chain, its own certificate first.
# certificate = "/etc/ringest/this-host.pem"
# Its private key (PKCS#8, PKCS#1 or SEC1).
# key = "/etc/ringest/this-host.key"
# The CA certificates that sign the peer's certificate.
# ca = "/etc/ringest/ca.pem"
# Listening only: refuse peers without a certificate signed by ca (mutual TLS).
# require_client_cert = false
# Connecting only: the name the peer's certificate must carry (default: the
# host of connect).
# server_name = "sensor-host"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde accepts for the struct `T`, as its derived
    /// `Deserialize` announces them.
    fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
        struct Recorder<'a>(&'a mut &'static [&'static str]);

        impl<'de> Deserializer<'de> for Recorder<'_> {
            type Error = de::value::Error;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("recorded"))
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }

        let mut keys: &'static [&'static str] = &[];
        let _ = T::deserialize(Recorder(&mut keys));
        assert!(!keys.is_empty());
        keys
    }

    /// The key, line and message of an `Invalid` error.
    fn invalid_parts(result: Result<EngineConfig, ConfigError>) -> (String, Option<usize>, String) {
        match result {
            Err(ConfigError::Invalid { key, line, message, .. }) => (key, line, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    /// A file whose first `table` stage sets `key = value` on line 3.
    fn stage_with(table: &str, key: &str, value: &str) -> String {
        format!("[[{table}]]\n\n{key} = {value}\n")
    }

    /// Stage keys with values on both ends of their range, and values out of it.
    type RangeCase = (&'static str, &'static [&'static str], &'static [&'static str]);

    const COMMON_RANGES: &[RangeCase] = &[
        (
            "name",
            &[r#""a""#, r#""lidar/front.v2""#],
            &[r#""""#, r#""a b""#, r#"".x""#, r#""a//b""#, r#""a/""#],
        ),
        ("group_size", &["1", "65536"], &["0", "65537"]),
        ("group_timeout_us", &["0", "10000000"], &["10000001"]),
        ("thread_priority", &["0", "99"], &["100", "256", "-1"]),
        ("thread_processor_affinity", &["[]", "[1023, 0]"], &["[1024]", "[3, 3]"]),
        ("enable_nodelay", &["false"], &[]),
        ("data_receive_timeout_ms", &["0", "86400000"], &["86400001"]),
        ("egress_buffer_size_b", &["1", "1073741824"], &["0", "1073741825"]),
        ("kernel_receive_buffer_size_b", &["0", "2147483647"], &["2147483648", "-1"]),
        ("kernel_transmit_buffer_size_b", &["0", "2147483647"], &["2147483648"]),
        ("ring_size_b", &["65536", "4294967296"], &["32768", "100000", "8589934592", "0"]),
        ("keepalive_s", &["0", "86400"], &["86401"]),
        ("receive_path", &[r#""auto""#, r#""io_uring""#, r#""glommio_read""#], &[r#""uring""#, "1"]),
        ("receive_slot_size_b", &["4096", "262144"], &["2048", "524288", "5000", "0"]),
    ];

    const SERVER_RANGES: &[RangeCase] = &[
        (
            "address",
            &[r#""0.0.0.0:0""#, r#""[::1]:7400""#, r#""localhost:7400""#, r#""localhost:0""#],
            &[r#""1.2.3.4""#, r#""localhost""#, r#"":7400""#, r#""no-such-host.invalid:7400""#],
        ),
        ("maximum_connections", &["1", "1000000"], &["0", "1000001"]),
    ];

    const CLIENT_RANGES: &[RangeCase] = &[
        (
            "address",
            &[r#""localhost:1""#, r#""10.0.0.1:65535""#, r#""[::1]:7400""#, r#""sensor-3.lan:80""#],
            &[
                r#"":80""#,
                r#""host""#,
                r#""host:""#,
                r#""host:0""#,
                r#""host:65536""#,
                r#""::1:80""#,
                r#""[nope]:80""#,
                r#""a b:80""#,
            ],
        ),
        ("reuse_address", &["true"], &[]),
        ("connect_timeout_ms", &["1", "600000"], &["0", "600001"]),
        ("reconnect_backoff_initial_ms", &["1", "5000"], &["0", "3600001"]),
        ("reconnect_backoff_max_ms", &["100", "3600000"], &["99", "3600001"]),
    ];

    const UDP_RANGES: &[RangeCase] = &[
        ("name", &[r#""lidar/front""#], &[r#""""#, r#""a b""#]),
        (
            "address",
            &[r#""0.0.0.0:2368""#, r#""[::]:0""#, r#""localhost:0""#],
            &[r#""1.2.3.4""#, r#"":2368""#],
        ),
        ("group_size", &["1", "65536"], &["0", "65537"]),
        ("group_timeout_us", &["0", "10000000"], &["10000001"]),
        ("thread_priority", &["0", "99"], &["100"]),
        ("thread_processor_affinity", &["[]", "[1023, 0]"], &["[1024]", "[3, 3]"]),
        ("kernel_receive_buffer_size_b", &["0", "2147483647"], &["2147483648"]),
        ("kernel_transmit_buffer_size_b", &["0", "2147483647"], &["2147483648"]),
        ("ring_size_b", &["65536", "4294967296"], &["32768", "100000"]),
        ("receive_path", &[r#""auto""#, r#""io_uring""#, r#""glommio_read""#], &[r#""recvmmsg""#]),
        ("max_datagram_size_b", &["1", "1206", "65535"], &["0", "65536"]),
        ("kernel_timestamps", &["false"], &[]),
        (
            "multicast_groups",
            &["[]", r#"["239.1.2.3", "224.0.0.251"]"#],
            &[r#"["10.0.0.1"]"#, r#"["ff15::7"]"#, r#"["239.1.2.3", "x"]"#],
        ),
        (
            "multicast_interface",
            &[r#""""#, r#""eth0""#, r#""10.0.0.1""#],
            &[r#""a very long interface name""#],
        ),
        ("multicast_loop", &["false"], &[]),
        ("egress_destination", &[r#""192.168.1.201:2368""#, r#""localhost:9""#], &[r#""192.168.1.201""#]),
    ];

    #[test]
    fn udp_values_on_the_edges_of_their_range_are_accepted_and_beyond_rejected() {
        for (key, accepted, rejected) in UDP_RANGES {
            for value in *accepted {
                if let Err(e) = EngineConfig::from_toml_str(&stage_with("udp", key, value)) {
                    panic!("udp.{key} = {value} rejected: {e}");
                }
            }
            for value in *rejected {
                let (error_key, line, message) =
                    invalid_parts(EngineConfig::from_toml_str(&stage_with("udp", key, value)));
                let expected = format!("udp[0].{key}");
                assert!(error_key.starts_with(&expected), "udp.{key} = {value}: {error_key}: {message}");
                assert_eq!(line, Some(3), "udp.{key} = {value}: {message}");
            }
        }
        let covered: Vec<&str> = UDP_RANGES.iter().map(|(key, _, _)| *key).collect();
        for key in keys_of::<UdpConfig>() {
            assert!(covered.contains(key) || *key == "multicast_sources", "udp.{key} has no range case");
        }
    }

    #[test]
    fn udp_multicast_keys_must_agree() {
        let any = "address = \"0.0.0.0:2368\"\n";
        let cases = [
            (
                format!("{any}multicast_sources = [\"10.0.0.9\"]"),
                "multicast_sources[0]",
                "needs multicast_groups",
            ),
            (
                format!("{any}multicast_groups = [\"232.1.1.1\"]\nmulticast_sources = [\"232.0.0.1\"]"),
                "multicast_sources[0]",
                "not a sender",
            ),
            (
                format!("{any}multicast_groups = [\"232.1.1.1\"]\nmulticast_sources = [\"fd00::1\"]"),
                "multicast_sources[0]",
                "another family",
            ),
            (
                "address = \"127.0.0.1:2368\"\nmulticast_groups = [\"ff15::7\"]".to_owned(),
                "multicast_groups[0]",
                "cannot be joined",
            ),
        ];
        for (body, key, expected) in cases {
            let (error_key, _, message) =
                invalid_parts(EngineConfig::from_toml_str(&format!("[[udp]]\n{body}\n")));
            assert_eq!(error_key, format!("udp[0].{key}"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let ssm = "[[udp]]\naddress = \"0.0.0.0:2368\"\nmulticast_groups = [\"232.1.1.1\"]\n\
                   multicast_sources = [\"10.0.0.9\"]\nmulticast_interface = \"lo\"\n";
        let config = EngineConfig::from_toml_str(ssm).unwrap();
        assert_eq!(config.udp[0].multicast_sources, ["10.0.0.9".parse::<IpAddr>().unwrap()]);
        let (key, _, message) = invalid_parts(EngineConfig::from_toml_str(
            "[[udp]]\naddress = \"[::]:2368\"\nmulticast_groups = [\"ff15::7\", \"239.1.2.3\"]\n",
        ));
        assert_eq!(key, "udp[0].multicast_groups[1]", "an IPv4 group on a dual-stack socket: {message}");
        assert_eq!(config.udp[0].max_datagram_size_b, MAX_UDP_PAYLOAD);
        assert_eq!(UdpConfig::from_toml_str("").unwrap(), UdpConfig::default());
    }

    #[test]
    fn values_on_the_edges_of_their_range_are_accepted() {
        for (table, cases) in [("tcp_server", SERVER_RANGES), ("tcp_client", CLIENT_RANGES)] {
            for (key, accepted, _) in COMMON_RANGES.iter().chain(cases) {
                for value in *accepted {
                    let text = stage_with(table, key, value);
                    if let Err(e) = EngineConfig::from_toml_str(&text) {
                        panic!("{table}.{key} = {value} rejected: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn values_out_of_range_are_rejected_with_key_and_line() {
        for (table, cases) in [("tcp_server", SERVER_RANGES), ("tcp_client", CLIENT_RANGES)] {
            for (key, _, rejected) in COMMON_RANGES.iter().chain(cases) {
                for value in *rejected {
                    let text = stage_with(table, key, value);
                    let (error_key, line, message) = invalid_parts(EngineConfig::from_toml_str(&text));
                    // Array items are named by index: `thread_processor_affinity[1]`.
                    assert!(
                        error_key.starts_with(&format!("{table}[0].{key}")),
                        "{table}.{key} = {value}: wrong key {error_key}: {message}"
                    );
                    assert_eq!(line, Some(3), "{table}.{key} = {value}: {message}");
                }
            }
        }
    }

    #[test]
    fn every_key_of_the_wrong_type_is_rejected_with_key_and_line() {
        let tables = [
            ("[bus]", "bus", keys_of::<BusConfig>()),
            ("[metrics]", "metrics", keys_of::<MetricsConfig>()),
            ("[[tcp_server]]", "tcp_server[0]", keys_of::<TcpServerConfig>()),
            ("[[tcp_client]]", "tcp_client[0]", keys_of::<TcpClientConfig>()),
        ];
        for (header, path, keys) in tables {
            for key in keys {
                // No key takes a table.
                let text = format!("{header}\n\n{key} = {{ x = 1 }}\n");
                let (error_key, line, message) = invalid_parts(EngineConfig::from_toml_str(&text));
                assert_eq!(error_key, format!("{path}.{key}"), "{message}");
                assert_eq!(line, Some(3), "{path}.{key}: {message}");
                // (An enum reads a table as a variant by name.)
                let named = message.contains("invalid type") || message.contains("unknown variant");
                assert!(named, "{path}.{key}: {message}");
            }
        }
    }

    #[test]
    fn server_addresses_may_be_host_names() {
        assert_eq!(resolve_listen_address("localhost:7412"), Ok("127.0.0.1:7412".parse().unwrap()));
        assert_eq!(resolve_listen_address("[::1]:0"), Ok("[::1]:0".parse().unwrap()));
        let config = EngineConfig::from_toml_str("[[tcp_server]]\naddress = \"localhost:0\"\n").unwrap();
        assert_eq!(config.tcp_server[0].address, "127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let cases = [
            ("group_size", r#""64""#, "tcp_server[0].group_size", "expected u32"),
            ("enable_nodelay", "1", "tcp_server[0].enable_nodelay", "expected a boolean"),
            ("ring_size_b", "1.5", "tcp_server[0].ring_size_b", "expected u64"),
            ("address", "7400", "tcp_server[0].address", "socket address"),
            (
                "thread_processor_affinity",
                r#"[1, "2"]"#,
                "tcp_server[0].thread_processor_affinity[1]",
                "usize",
            ),
        ];
        for (key, value, path, expected) in cases {
            let (error_key, line, message) =
                invalid_parts(EngineConfig::from_toml_str(&stage_with("tcp_server", key, value)));
            assert_eq!((error_key.as_str(), line), (path, Some(3)), "{message}");
            assert!(message.contains(expected), "{key} = {value}: {message}");
        }
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let cases = [
            ("# comment\nbogus = 1\n", "bogus", 2),
            ("[bus]\nmode = 0o600\nsize = 1\n", "bus.size", 3),
            (
                "[[tcp_server]]\nname = \"a\"\n[[tcp_server]]\nname = \"b\"\n  group = 3\n",
                "tcp_server[1].group",
                5,
            ),
            ("[[tcp_client]]\nmaximum_connections = 3\n", "tcp_client[0].maximum_connections", 2),
        ];
        for (text, path, expected_line) in cases {
            let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
            assert_eq!((key.as_str(), line), (path, Some(expected_line)), "{message}");
            let unknown = path.rsplit('.').next().unwrap();
            assert!(message.contains(&format!("unknown field `{unknown}`")), "{message}");
        }
    }

    #[test]
    fn stage_names_must_be_unique_across_the_file() {
        let cases = [
            (
                "[[tcp_server]]\nname = \"a\"\n[[tcp_server]]\nname = \"a\"\n",
                "tcp_server[1].name",
                4,
                "tcp_server[0]",
            ),
            (
                "[[tcp_server]]\nname = \"a\"\n[[tcp_client]]\nname = \"a\"\n",
                "tcp_client[0].name",
                4,
                "tcp_server[0]",
            ),
            // Both use the default name: the second table's header is the location.
            ("[[tcp_server]]\n\n[[tcp_server]]\ngroup_size = 3\n", "tcp_server[1].name", 3, "tcp_server[0]"),
        ];
        for (text, path, expected_line, owner) in cases {
            let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
            assert_eq!((key.as_str(), line), (path, Some(expected_line)), "{message}");
            assert!(message.contains(&format!("already used by {owner}")), "{message}");
        }
    }

    #[test]
    fn long_stage_names_are_rejected() {
        let at_limit = "n".repeat(MAX_STAGE_NAME_LEN);
        assert!(
            EngineConfig::from_toml_str(&stage_with("tcp_server", "name", &format!("{at_limit:?}"))).is_ok()
        );
        let too_long = format!("{at_limit}n");
        let text = stage_with("tcp_client", "name", &format!("{too_long:?}"));
        let (key, line, _) = invalid_parts(EngineConfig::from_toml_str(&text));
        assert_eq!((key.as_str(), line), ("tcp_client[0].name", Some(3)));
    }

    #[test]
    fn backoff_max_below_initial_names_the_max() {
        let text = "[[tcp_client]]\nreconnect_backoff_initial_ms = 500\nreconnect_backoff_max_ms = 400\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("tcp_client[0].reconnect_backoff_max_ms", Some(3)));
        assert!(message.contains("at least reconnect_backoff_initial_ms"), "{message}");

        // The default maximum is absent from the file: its table's header is the location.
        let text = "[[tcp_client]]\nreconnect_backoff_initial_ms = 9000\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("tcp_client[0].reconnect_backoff_max_ms", Some(1)));
        assert!(message.ends_with("got 5000"), "{message}");
    }

    #[test]
    fn mode_is_an_octal_string_or_an_integer() {
        let accepted = [
            (r#""0640""#, 0o640),
            (r#""640""#, 0o640),
            (r#""0o660""#, 0o660),
            ("0o777", 0o777),
            ("384", 0o600),
        ];
        for (value, mode) in accepted {
            let config = EngineConfig::from_toml_str(&format!("[bus]\nmode = {value}\n"));
            assert_eq!(config.map(|c| c.bus.mode).ok(), Some(mode), "mode = {value}");
        }
        let rejected = [
            r#""0400""#,
            r#""0o1600""#,
            r#""0800""#,
            r#""rw""#,
            r#""""#,
            r#""+640""#,
            "640",
            "0o400",
            "-1",
            "0x3ff",
            "true",
        ];
        for value in rejected {
            let (key, line, message) =
                invalid_parts(EngineConfig::from_toml_str(&format!("[bus]\n\nmode = {value}\n")));
            assert_eq!((key.as_str(), line), ("bus.mode", Some(3)), "mode = {value}: {message}");
        }
    }

    #[test]
    fn metrics_listen_is_an_address_and_port() {
        assert_eq!(EngineConfig::from_toml_str("").unwrap().metrics.listen, None);
        let config = EngineConfig::from_toml_str("[metrics]\nlisten = \"0.0.0.0:0\"\n").unwrap();
        assert_eq!(config.metrics.listen, Some(SocketAddr::from(([0, 0, 0, 0], 0))));
        let config = EngineConfig::from_toml_str("[metrics]\nlisten = \"localhost:9464\"\n").unwrap();
        assert_eq!(
            config.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            "host names resolve"
        );
        for value in [r#""127.0.0.1""#, r#""127.0.0.1:65536""#, "9464", r#""""#] {
            let text = format!("[metrics]\n\nlisten = {value}\n");
            let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(&text));
            assert_eq!((key.as_str(), line), ("metrics.listen", Some(3)), "listen = {value}: {message}");
        }
        let (key, line, _) = invalid_parts(EngineConfig::from_toml_str("[metrics]\nport = 9464\n"));
        assert_eq!((key.as_str(), line), ("metrics.port", Some(2)));
    }

    #[test]
    fn bus_dir_is_a_non_empty_path() {
        let config = EngineConfig::from_toml_str("[bus]\ndir = \"/dev/shm/test\"\n").unwrap();
        assert_eq!(config.bus.dir, Some(PathBuf::from("/dev/shm/test")));
        let (key, line, _) = invalid_parts(EngineConfig::from_toml_str("[bus]\ndir = \"\"\n"));
        assert_eq!((key.as_str(), line), ("bus.dir", Some(2)));
    }

    #[test]
    fn a_full_file_sets_every_key() {
        let text = r#"
            [bus]
            dir = "/dev/shm/plant"
            mode = "0640"

            [metrics]
            listen = "[::1]:9100"

            [[tcp_server]]
            name = "lidar/front"
            address = "0.0.0.0:9000"
            maximum_connections = 8
            group_size = 16
            group_timeout_us = 0
            thread_priority = 50
            thread_processor_affinity = [2, 3]
            enable_nodelay = false
            data_receive_timeout_ms = 2000
            egress_buffer_size_b = 4096
            kernel_receive_buffer_size_b = 8388608
            kernel_transmit_buffer_size_b = 65536
            ring_size_b = 1048576
            receive_path = "glommio_read"
            receive_slot_size_b = 16384
            keepalive_s = 30

            [[tcp_server]]
            name = "camera"

            [[tcp_client]]
            name = "gnss"
            address = "gnss.local:5017"
            reuse_address = true
            group_size = 1
            group_timeout_us = 10
            thread_priority = 10
            thread_processor_affinity = [7]
            enable_nodelay = false
            data_receive_timeout_ms = 1000
            egress_buffer_size_b = 100
            kernel_receive_buffer_size_b = 1
            kernel_transmit_buffer_size_b = 2
            connect_timeout_ms = 250
            reconnect_backoff_initial_ms = 50
            reconnect_backoff_max_ms = 50
            keepalive_s = 5
            ring_size_b = 65536

            [[bridge]]
            name = "to-perception"
            connect = "perception.lan:7500"
            export = ["lidar/*", "gnss/packet_group"]
            import_prefix = "perception"
            mode = "lossy"
            window_b = 65536
            connect_timeout_ms = 100
            reconnect_backoff_initial_ms = 10
            reconnect_backoff_max_ms = 20
            keepalive_ms = 50
            heartbeat_timeout_ms = 400
        "#;
        let expected = EngineConfig {
            bus: BusConfig { dir: Some(PathBuf::from("/dev/shm/plant")), mode: 0o640 },
            metrics: MetricsConfig { listen: Some("[::1]:9100".parse().unwrap()) },
            tcp_server: vec![
                TcpServerConfig {
                    name: "lidar/front".to_owned(),
                    address: "0.0.0.0:9000".parse().unwrap(),
                    maximum_connections: 8,
                    group_size: 16,
                    group_timeout_us: 0,
                    thread_priority: 50,
                    thread_processor_affinity: vec![2, 3],
                    enable_nodelay: false,
                    data_receive_timeout_ms: 2000,
                    egress_buffer_size_b: 4096,
                    kernel_receive_buffer_size_b: 8 * MIB,
                    kernel_transmit_buffer_size_b: 64 * KIB,
                    ring_size_b: MIB,
                    receive_path: ReceivePathChoice::GlommioRead,
                    receive_slot_size_b: 16 * KIB,
                    keepalive_s: 30,
                },
                TcpServerConfig { name: "camera".to_owned(), ..TcpServerConfig::default() },
            ],
            tcp_client: vec![TcpClientConfig {
                name: "gnss".to_owned(),
                address: "gnss.local:5017".to_owned(),
                reuse_address: true,
                group_size: 1,
                group_timeout_us: 10,
                thread_priority: 10,
                thread_processor_affinity: vec![7],
                enable_nodelay: false,
                data_receive_timeout_ms: 1000,
                egress_buffer_size_b: 100,
                kernel_receive_buffer_size_b: 1,
                kernel_transmit_buffer_size_b: 2,
                connect_timeout_ms: 250,
                reconnect_backoff_initial_ms: 50,
                reconnect_backoff_max_ms: 50,
                keepalive_s: 5,
                ring_size_b: 64 * KIB,
                ..TcpClientConfig::default()
            }],
            udp: Vec::new(),
            bridge: vec![BridgeConfig {
                name: "to-perception".to_owned(),
                listen: None,
                connect: Some("perception.lan:7500".to_owned()),
                export: vec!["lidar/*".to_owned(), "gnss/packet_group".to_owned()],
                import_prefix: "perception".to_owned(),
                mode: BridgeMode::Lossy,
                window_b: 64 * KIB,
                connect_timeout_ms: 100,
                reconnect_backoff_initial_ms: 10,
                reconnect_backoff_max_ms: 20,
                keepalive_ms: 50,
                heartbeat_timeout_ms: 400,
                tls: None,
            }],
        };
        assert_eq!(EngineConfig::from_toml_str(text).unwrap(), expected);
    }

    #[test]
    fn missing_tables_and_keys_take_their_defaults() {
        let empty = EngineConfig::from_toml_str("").unwrap();
        assert_eq!(empty, EngineConfig { tcp_server: Vec::new(), ..EngineConfig::default() });
        assert_eq!(TcpServerConfig::from_toml_str("").unwrap(), TcpServerConfig::default());
        assert_eq!(TcpClientConfig::from_toml_str("").unwrap(), TcpClientConfig::default());
        for defaults in
            [EngineConfig::default(), EngineConfig { tcp_client: vec![TcpClientConfig::default()], ..empty }]
        {
            defaults.validate().unwrap();
        }
    }

    #[test]
    fn a_single_stage_table_is_checked_like_a_file() {
        let stage = TcpServerConfig::from_toml_str("name = \"s\"\ngroup_size = 32\n").unwrap();
        assert_eq!(stage, TcpServerConfig { name: "s".to_owned(), group_size: 32, ..Default::default() });
        let error = TcpServerConfig::from_toml_str("name = \"s\"\n\ngroup_size = 0\n").unwrap_err();
        assert_eq!(error.to_string(), "line 3, column 14: group_size: must be in 1..=65536, got 0");
    }

    #[test]
    fn errors_read_as_one_line_with_location_key_and_reason() {
        let text = "[bus]\nmode = \"0600\"\n\n[[tcp_server]]\nname = \"a\"\n  group_size = 0\n";
        let error = EngineConfig::from_toml_str(text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 6, column 16: tcp_server[0].group_size: must be in 1..=65536, got 0"
        );

        let config = EngineConfig {
            tcp_client: vec![TcpClientConfig { ring_size_b: 3 * MIB, ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "tcp_client[0].ring_size_b: must be a power of two in 65536..=4294967296 (64 KiB..=4 GiB), \
             got 3145728"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let error = EngineConfig::from_toml_str("[bus]\nmode = \n").unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { line: Some(2), .. }), "{error:?}");
        assert!(error.to_string().starts_with("line 2, column "), "{error}");
    }

    #[test]
    fn the_default_file_documents_every_key_and_parses_to_the_defaults() {
        let text = default_config_toml();
        assert_eq!(EngineConfig::from_toml_str(text).unwrap(), EngineConfig::default());
        let server = &EngineConfig::default().tcp_server[0];
        assert_eq!(
            (server.name.as_str(), server.address),
            ("ingest", SocketAddr::from(([127, 0, 0, 1], 7400)))
        );
        let keys = [
            keys_of::<BusConfig>(),
            keys_of::<MetricsConfig>(),
            keys_of::<TcpServerConfig>(),
            keys_of::<TcpClientConfig>(),
            keys_of::<UdpConfig>(),
            keys_of::<BridgeConfig>(),
            keys_of::<BridgeTlsConfig>(),
        ];
        assert!(text.contains("\n# [bridge.tls]\n"));
        for key in keys.concat().into_iter().filter(|key| *key != "tls") {
            assert!(
                text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = ")),
                "{key}"
            );
        }
    }

    #[test]
    fn the_commented_out_settings_of_the_default_file_are_the_defaults() {
        let is_setting = |line: &str| {
            // The file shows both listen and connect; a bridge takes one.
            if line.starts_with("connect = ") {
                return false;
            }
            line == "[[tcp_client]]"
                || line == "[[udp]]"
                || line == "[[bridge]]"
                || line
                    .split_once(" = ")
                    .is_some_and(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        };
        // The TLS table, last in the file, names files that do not exist here.
        let (before_tls, tls) = default_config_toml().split_once("\n# [bridge.tls]\n").unwrap();
        assert!(tls.lines().all(|line| line.starts_with('#')), "the TLS table is the file's last");
        let uncommented: Vec<&str> = before_tls
            .lines()
            .map(|line| line.strip_prefix("# ").filter(|rest| is_setting(rest)).unwrap_or(line))
            .collect();
        let config = EngineConfig::from_toml_str(&uncommented.join("\n")).unwrap();
        let expected = EngineConfig {
            bus: BusConfig { dir: Some(PathBuf::from(shm_bus::DEFAULT_BUS_DIR)), ..Default::default() },
            metrics: MetricsConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) },
            tcp_client: vec![TcpClientConfig::default()],
            udp: vec![UdpConfig {
                egress_destination: Some(SocketAddr::from(([192, 168, 1, 201], 2368))),
                ..Default::default()
            }],
            bridge: vec![BridgeConfig {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], 7500))),
                export: vec!["ingest/*".to_owned()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(config, expected);
    }

    /// A file whose bridge connects and sets `key = value` on line 3.
    fn bridge_with(key: &str, value: &str) -> String {
        format!("[[bridge]]\nconnect = \"peer:7500\"\n{key} = {value}\n")
    }

    const BRIDGE_RANGES: &[RangeCase] = &[
        ("name", &[r#""a""#, r#""to/perception""#], &[r#""""#, r#""a b""#, r#"".x""#]),
        ("export", &["[]", r#"["lidar/*", "ingest/packet_group", "*"]"#], &[r#"["a b"]"#, r#"["/x"]"#]),
        ("import_prefix", &[r#""sensor-a""#, r#""hosts/a""#], &[r#""""#, r#""a/""#]),
        ("mode", &[r#""lossless""#, r#""lossy""#], &[r#""exact""#, "1"]),
        ("window_b", &["65536", "1073741824"], &["65535", "1073741825"]),
        ("connect_timeout_ms", &["1", "600000"], &["0", "600001"]),
        ("reconnect_backoff_initial_ms", &["1", "5000"], &["0", "3600001"]),
        ("reconnect_backoff_max_ms", &["100", "3600000"], &["99", "3600001"]),
        ("keepalive_ms", &["10", "4999"], &["9", "60001"]),
        ("heartbeat_timeout_ms", &["1001", "600000"], &["1000", "600001"]),
    ];

    #[test]
    fn bridge_values_on_the_edges_of_their_range_are_accepted_and_beyond_rejected() {
        for (key, accepted, rejected) in BRIDGE_RANGES {
            for value in *accepted {
                if let Err(e) = EngineConfig::from_toml_str(&bridge_with(key, value)) {
                    panic!("bridge.{key} = {value} rejected: {e}");
                }
            }
            for value in *rejected {
                let (error_key, line, message) =
                    invalid_parts(EngineConfig::from_toml_str(&bridge_with(key, value)));
                let expected = format!("bridge[0].{key}");
                assert!(error_key.starts_with(&expected), "bridge.{key} = {value}: {error_key}: {message}");
                assert_eq!(line, Some(3), "bridge.{key} = {value}: {message}");
            }
        }
        let covered: Vec<&str> = BRIDGE_RANGES.iter().map(|(key, _, _)| *key).collect();
        for key in keys_of::<BridgeConfig>() {
            // tls: its own test (it needs files).
            let either = ["listen", "connect", "tls"].contains(key);
            assert!(covered.contains(key) || either, "bridge.{key} has no range case");
        }
    }

    #[test]
    fn bridge_tls_needs_the_files_of_its_side_each_checked_with_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let cert = file("cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let key = file("key.pem", "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n");
        let missing = dir.path().join("missing.pem").display().to_string();
        let listen = "[[bridge]]\nlisten = \"127.0.0.1:0\"\n[bridge.tls]\n";
        let connect = "[[bridge]]\nconnect = \"peer:7500\"\n[bridge.tls]\n";
        let ok = |text: String| match EngineConfig::from_toml_str(&text) {
            Ok(config) => config.bridge[0].tls.clone().unwrap(),
            Err(e) => panic!("{text}: {e}"),
        };
        let tls = ok(format!("{listen}certificate = {cert:?}\nkey = {key:?}\n"));
        assert_eq!(
            tls,
            BridgeTlsConfig {
                certificate: Some(cert.clone().into()),
                key: Some(key.clone().into()),
                ..Default::default()
            }
        );
        ok(format!(
            "{listen}certificate = {cert:?}\nkey = {key:?}\nca = {cert:?}\nrequire_client_cert = true\n"
        ));
        ok(format!("{connect}ca = {cert:?}\n"));
        ok(format!(
            "{connect}ca = {cert:?}\ncertificate = {cert:?}\nkey = {key:?}\nserver_name = \"a.example\"\n"
        ));
        let rejected: [(String, &str, usize, &str); 10] = [
            (format!("{listen}key = {key:?}\n"), "certificate", 3, "required"),
            (format!("{listen}certificate = {cert:?}\n"), "key", 3, "required"),
            (
                format!("{listen}certificate = {cert:?}\nkey = {key:?}\nrequire_client_cert = true\n"),
                "ca",
                3,
                "required",
            ),
            (
                format!("{listen}certificate = {cert:?}\nkey = {key:?}\nserver_name = \"a\"\n"),
                "server_name",
                6,
                "connecting",
            ),
            (format!("{connect}certificate = {cert:?}\nkey = {key:?}\n"), "ca", 3, "required"),
            (
                format!("{connect}ca = {cert:?}\nrequire_client_cert = true\n"),
                "require_client_cert",
                5,
                "listening",
            ),
            (format!("{connect}ca = {missing:?}\n"), "ca", 4, "cannot read"),
            (format!("{connect}ca = {key:?}\n"), "ca", 4, "no PEM CERTIFICATE"),
            (format!("{listen}certificate = {cert:?}\nkey = {cert:?}\n"), "key", 5, "no PEM PRIVATE KEY"),
            (format!("{connect}ca = {cert:?}\nserver_name = \"a b\"\n"), "server_name", 5, "DNS name"),
        ];
        for (text, key, line, words) in rejected {
            let (error_key, error_line, message) = invalid_parts(EngineConfig::from_toml_str(&text));
            assert_eq!(error_key, format!("bridge[0].tls.{key}"), "{text}: {message}");
            assert_eq!(error_line, Some(line), "{text}: {message}");
            assert!(message.contains(words), "{text}: {message}");
        }
        let text = format!("{connect}ca = {cert:?}\ncipher = \"x\"\n");
        let (error_key, error_line, _) = invalid_parts(EngineConfig::from_toml_str(&text));
        assert_eq!((error_key.as_str(), error_line), ("bridge[0].tls.cipher", Some(5)));
    }

    #[test]
    fn a_bridge_takes_exactly_one_of_listen_and_connect() {
        let listening = EngineConfig::from_toml_str("[[bridge]]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(listening.bridge[0].listen, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        let text = "[[bridge]]\nname = \"b\"\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("bridge[0].listen", Some(1)), "{message}");
        assert!(message.contains("listen") && message.contains("connect"), "{message}");
        let text = "[[bridge]]\nlisten = \"0.0.0.0:7500\"\nconnect = \"peer:7500\"\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("bridge[0].connect", Some(3)), "{message}");
        let text = "[[bridge]]\nconnect = \"peer\"\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("bridge[0].connect", Some(2)), "{message}");
        let text = "[[bridge]]\nlisten = \"nowhere\"\n";
        let (key, line, _) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("bridge[0].listen", Some(2)));
        // Bridge names share the stages' namespace.
        let text = "[[udp]]\nname = \"x\"\n[[bridge]]\nname = \"x\"\nconnect = \"peer:1\"\n";
        let (key, line, message) = invalid_parts(EngineConfig::from_toml_str(text));
        assert_eq!((key.as_str(), line), ("bridge[0].name", Some(4)), "{message}");
    }
}
