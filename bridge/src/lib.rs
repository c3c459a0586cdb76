//! `ringest-bridge`: a link between the buses of two hosts. Over one TCP
//! connection each side exports channels of its bus and imports the
//! peer's, records unchanged (kind, timestamp, per-shard sequence numbers,
//! payload, the channel's generation). Lossless by default: the exporting
//! side reads with a gated reader that releases a record only once the peer
//! acknowledged publishing it, and the peer's credit window bounds what is
//! in flight. After a broken link or a restart of either side the importer
//! says, per channel and shard, the next sequence number it lacks, and the
//! exporter resumes there: nothing lost, nothing twice, as long as the
//! exporting ring still holds what was not acknowledged.
//!
//! The wire protocol is in `docs/BRIDGE.md`. The bridge runs on plain
//! threads with blocking sockets (one pair per link): it moves whole
//! records between a socket and shared memory, and needs no executor.
//!
//! ```no_run
//! use bridge::Bridge;
//! use engine::config::BridgeConfig;
//! use shm_bus::{BusDir, ChannelOptions, Producer};
//!
//! let config = BridgeConfig {
//!     listen: Some("0.0.0.0:7500".parse()?),
//!     export: vec!["ingest/*".into()],
//!     ..Default::default()
//! };
//! let bridge = Bridge::start(BusDir::from_env(), 0o600, config)?;
//! println!("{:?}", bridge.status());
//! bridge.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod export;
mod import;
mod link;
mod repack;
mod status;
mod tls;
pub mod wire;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::backoff::Backoff;
use engine::config::{BridgeConfig, BridgeMode};
use shm_bus::{BusDir, ChannelOptions, Producer};

pub use status::{
    BridgeStatus, ExportRecord, ExportStatus, ImportRecord, ImportStatus, KIND_BRIDGE_STATUS, STATUS_CHANNEL,
    StatusRecord,
};
pub use tls::TlsSetupError;

use crate::export::Exports;
use crate::import::Imports;
use crate::link::LinkContext;
use crate::tls::TlsSide;

/// How often an idle listener or a backoff sleep looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often a bridge publishes its status record.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Ring of the status channel: a record per channel of the bridge, each
/// some 100 bytes, up to half of it.
const STATUS_RING: u64 = 1 << 20;

/// TLS handshakes a listener runs at once (each on its own thread, so that
/// a slow or hostile peer holds up neither the link nor other peers).
const MAX_HANDSHAKES: usize = 4;

/// Why a bridge did not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge {name}: cannot listen on {address}: {source}")]
    Listen { name: String, address: SocketAddr, source: io::Error },
    #[error("bridge {name}: invalid configuration: {source}")]
    Config { name: String, source: Box<engine::config::ConfigError> },
    #[error("bridge {name}: cannot start its thread: {source}")]
    Thread { name: String, source: io::Error },
    #[error("bridge {name}: {source}")]
    Tls { name: String, source: TlsSetupError },
    #[error("bridge {name}: cannot create its status channel: {source}")]
    Status { name: String, source: shm_bus::CreateError },
}

/// A running bridge. [`Bridge::stop`] (or dropping it) closes the link
/// gracefully.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    shared: Arc<Shared>,
    listening: Option<SocketAddr>,
    thread: Option<JoinHandle<()>>,
    status_thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    status: Mutex<BridgeStatus>,
}

impl Bridge {
    /// Starts the bridge of `config` on `bus`; imported channels get the
    /// permission bits `file_mode`. A listening bridge is bound when this
    /// returns ([`Bridge::listening`]).
    pub fn start(bus: BusDir, file_mode: u32, config: BridgeConfig) -> Result<Self, BridgeError> {
        let name = config.name.clone();
        config.validate().map_err(|e| BridgeError::Config { name: name.clone(), source: Box::new(e) })?;
        let tls = match &config.tls {
            Some(tls) => Some(
                TlsSide::new(tls, config.listen.is_some(), config.connect.as_deref())
                    .map_err(|source| BridgeError::Tls { name: name.clone(), source })?,
            ),
            None => None,
        };
        let listener = match config.listen {
            Some(address) => {
                let listener =
                    TcpListener::bind(address)
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .map_err(|source| BridgeError::Listen { name: name.clone(), address, source })?;
                if tls.is_none() && !address.ip().is_loopback() {
                    tracing::warn!(
                        bridge = %name,
                        "bridge: listening on {address} without TLS: anyone who reaches it can read and send records"
                    );
                }
                Some(listener)
            }
            None => None,
        };
        let listening = listener.as_ref().and_then(|l| l.local_addr().ok());
        let status = BridgeStatus { tls: tls.is_some(), ..Default::default() };
        let shared = Arc::new(Shared { stop: AtomicBool::new(false), status: Mutex::new(status) });
        let status_options =
            ChannelOptions { shards: 1, capacity: STATUS_RING, mode: file_mode, ..Default::default() };
        let status_channel = format!("{name}/{STATUS_CHANNEL}");
        let status_producer = Producer::create(&bus, &status_channel, status_options)
            .map_err(|source| BridgeError::Status { name: name.clone(), source })?;
        let status_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("bridge-status-{name}"))
                .spawn(move || publish_status(status_producer, &shared))
                .map_err(|source| BridgeError::Thread { name: name.clone(), source })?
        };
        let runner = Runner { bus, file_mode, config, tls, shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name(format!("bridge-{name}"))
            .spawn(move || match listener {
                Some(listener) => runner.listen(listener),
                None => runner.connect(),
            })
            .map_err(|source| BridgeError::Thread { name: name.clone(), source })?;
        Ok(Self { name, shared, listening, thread: Some(thread), status_thread: Some(status_thread) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address a listening bridge accepts its peer on (port 0 resolved).
    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening
    }

    /// A snapshot of the link and the channels' counters (refreshed every
    /// 50 ms while a link is up).
    pub fn status(&self) -> BridgeStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closes the link (telling the peer) and ends the imported channels.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Its last record says how the bridge stopped; then the channel ends.
        if let Some(thread) = self.status_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Publishes the bridge's status every [`STATUS_EVERY`] until it stops,
/// and once more then.
fn publish_status(producer: Producer, shared: &Shared) {
    let Ok(mut writer) = producer.shard(0) else { return };
    let mut previous: Option<StatusRecord> = None;
    let mut too_large_logged = false;
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        let status = shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let record = StatusRecord::new(&status, shm_bus::realtime_ns(), previous.as_ref());
        let payload = engine::records::encode(&record);
        match writer.write(KIND_BRIDGE_STATUS, &payload) {
            Ok(_) => writer.publish(),
            // A lossless reader lags: this second's figures are skipped.
            Err(shm_bus::ReserveError::Full { .. }) => {}
            Err(e) => {
                if !too_large_logged {
                    tracing::warn!("bridge: status record not published: {e}");
                    too_large_logged = true;
                }
            }
        }
        previous = Some(record);
        if stopping {
            return;
        }
        let next = Instant::now() + STATUS_EVERY;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(STOP_POLL);
        }
    }
}

/// The bridge's thread.
struct Runner {
    bus: BusDir,
    file_mode: u32,
    config: BridgeConfig,
    tls: Option<TlsSide>,
    shared: Arc<Shared>,
}

impl Runner {
    fn halves(&self) -> (Exports, Imports) {
        let lossless = self.config.mode == BridgeMode::Lossless;
        let exports = Exports::new(
            self.bus.clone(),
            self.config.export.clone(),
            self.config.import_prefix.clone(),
            lossless,
        );
        let imports = Imports::new(
            self.bus.clone(),
            self.file_mode,
            self.config.import_prefix.clone(),
            self.config.export.clone(),
        );
        (exports, imports)
    }

    fn context(&self) -> LinkContext<'_> {
        LinkContext {
            name: &self.config.name,
            lossless: self.config.mode == BridgeMode::Lossless,
            window: self.config.window_b,
            keepalive: Duration::from_millis(self.config.keepalive_ms),
            heartbeat_timeout: Duration::from_millis(self.config.heartbeat_timeout_ms),
            stop: &self.shared.stop,
            status: &self.shared.status,
            epoch: Instant::now(),
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn link_ended(&self, peer: SocketAddr, why: &str) {
        if self.stopping() {
            tracing::info!(bridge = %self.config.name, %peer, "bridge: link closed: {why}");
        } else {
            tracing::warn!(bridge = %self.config.name, %peer, "bridge: link down: {why}");
        }
        let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        status.connected = false;
        status.last_error = Some(why.to_owned());
    }

    /// A connection refused before its link started (TLS handshake): one
    /// line, and the count in the status.
    fn refused(shared: &Shared, bridge: &str, peer: SocketAddr, why: &str) {
        tracing::warn!(bridge = %bridge, %peer, "bridge: refused {peer}: {why}");
        let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        status.refused += 1;
        status.last_error = Some(format!("refused {peer}: {why}"));
    }

    /// Accepts the peer; a new connection (its TLS handshake done) replaces
    /// the current link (the peer reconnects only once it found the old one
    /// broken).
    fn listen(self, listener: TcpListener) {
        let (mut exports, mut imports) = self.halves();
        let ctx = self.context();
        let mut acceptor = Acceptor::new(listener, &self);
        let mut next: Option<Accepted> = None;
        while !self.stopping() {
            let (stream, tls, peer) = match next.take().or_else(|| acceptor.poll()) {
                Some(accepted) => accepted,
                None => {
                    std::thread::sleep(STOP_POLL);
                    continue;
                }
            };
            tracing::info!(bridge = %self.config.name, %peer, "bridge: peer connected");
            let mut superseded = || {
                if next.is_none() {
                    next = acceptor.poll();
                }
                next.is_some()
            };
            let why = link::run(stream, tls, peer, &ctx, &mut exports, &mut imports, &mut superseded);
            self.link_ended(peer, &why);
        }
    }

    /// Connects to the peer, and again whenever the link ends, with the
    /// client stage's capped exponential backoff and jitter.
    fn connect(self) {
        let (mut exports, mut imports) = self.halves();
        let ctx = self.context();
        let address = self.config.connect.clone().unwrap_or_default();
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.reconnect_backoff_initial_ms),
            Duration::from_millis(self.config.reconnect_backoff_max_ms),
        );
        while !self.stopping() {
            match connect_once(&address, timeout) {
                Ok((mut stream, peer)) => {
                    let tls = match &self.tls {
                        Some(side) => match tls::handshake(side, &mut stream, ctx.heartbeat_timeout) {
                            Ok(connection) => Some(connection),
                            Err(tls::Refused(why)) => {
                                tracing::warn!(
                                    bridge = %self.config.name, %peer,
                                    "bridge: TLS handshake with {peer} failed: {why}"
                                );
                                self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).last_error =
                                    Some(format!("TLS handshake with {peer}: {why}"));
                                self.wait(backoff.delay());
                                continue;
                            }
                        },
                        None => None,
                    };
                    backoff.reset();
                    tracing::info!(bridge = %self.config.name, %peer, "bridge: connected");
                    let why = link::run(stream, tls, peer, &ctx, &mut exports, &mut imports, &mut || false);
                    self.link_ended(peer, &why);
                }
                Err(e) => {
                    tracing::info!(bridge = %self.config.name, "bridge: cannot connect to {address}: {e}");
                    self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).last_error =
                        Some(format!("cannot connect to {address}: {e}"));
                }
            }
            self.wait(backoff.delay());
        }
    }

    /// Sleeps `delay` unless the bridge stops first.
    fn wait(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        while !self.stopping() && Instant::now() < deadline {
            std::thread::sleep(STOP_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

/// A connection ready for a link: its socket, its TLS connection (handshake
/// done) if the bridge has TLS, and the peer.
type Accepted = (TcpStream, Option<rustls::Connection>, SocketAddr);

/// A listening bridge's side of accepting: plaintext connections are ready
/// at once; TLS ones after their handshake, run on a thread of their own.
struct Acceptor {
    listener: TcpListener,
    bridge: String,
    tls: Option<TlsSide>,
    deadline: Duration,
    shared: Arc<Shared>,
    handshakes: Arc<AtomicUsize>,
    done_tx: mpsc::Sender<Accepted>,
    done: mpsc::Receiver<Accepted>,
}

impl Acceptor {
    fn new(listener: TcpListener, runner: &Runner) -> Self {
        let (done_tx, done) = mpsc::channel();
        Self {
            listener,
            bridge: runner.config.name.clone(),
            tls: runner.tls.clone(),
            deadline: Duration::from_millis(runner.config.heartbeat_timeout_ms),
            shared: runner.shared.clone(),
            handshakes: Arc::default(),
            done_tx,
            done,
        }
    }

    /// A connection ready for a link, if one is.
    fn poll(&mut self) -> Option<Accepted> {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(bridge = %self.bridge, "bridge: accept: {e}");
                    break;
                }
            };
            if let Err(e) = stream.set_nonblocking(false) {
                tracing::warn!(bridge = %self.bridge, %peer, "bridge: {e}");
                continue;
            }
            let Some(side) = self.tls.clone() else {
                return Some((stream, None, peer));
            };
            if self.handshakes.load(Ordering::Relaxed) >= MAX_HANDSHAKES {
                Runner::refused(&self.shared, &self.bridge, peer, "too many TLS handshakes under way");
                continue;
            }
            self.handshakes.fetch_add(1, Ordering::Relaxed);
            let (handshakes, done, shared) =
                (self.handshakes.clone(), self.done_tx.clone(), self.shared.clone());
            let (bridge, deadline) = (self.bridge.clone(), self.deadline);
            let spawned = std::thread::Builder::new().name("bridge-tls".into()).spawn(move || {
                let mut stream = stream;
                match tls::handshake(&side, &mut stream, deadline) {
                    Ok(connection) => {
                        let _ = done.send((stream, Some(connection), peer));
                    }
                    Err(tls::Refused(why)) => Runner::refused(&shared, &bridge, peer, &why),
                }
                handshakes.fetch_sub(1, Ordering::Relaxed);
            });
            if let Err(e) = spawned {
                self.handshakes.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(bridge = %self.bridge, %peer, "bridge: cannot start a TLS handshake: {e}");
            }
        }
        self.done.try_recv().ok()
    }
}

/// One attempt on each address `host:port` resolves to (resolved anew on
/// every attempt).
fn connect_once(address: &str, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "resolves to no address");
    for candidate in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok((stream, candidate)),
            Err(e) => last = e,
        }
    }
    Err(last)
}
