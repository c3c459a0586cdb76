//! What every executor of a TCP stage runs, whichever side opened the
//! connections: the inbox loop, one task per connection (receive straight
//! into the executor's open group, and send its egress buffer), the flusher
//! that publishes partial groups, and the statistics reporter.
//!
//! A connection lives on one executor for its whole life. How its bytes
//! reach the shared ring depends on the executor's receive path:
//! - io_uring ([`UringReceiver`]): a multishot recv per connection into
//!   slots of the shard; a driver task reaps the executor's completions and
//!   publishes groups; the connection's task only waits for the end.
//! - glommio read ([`GroupPublisher`]): the connection's task waits for
//!   readability and reads straight into the executor's open group.
//!
//! On both, the flusher of [`crate::runtime`] publishes partial groups.
//! What opens connections (the server's acceptor, the client's connector)
//! is the executor's [`Role`], made by the stage.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::PollableFd;
use glommio::timer::sleep;
use glommio::{Task, spawn_local};
use shm_bus::ShardWriter;
use socket2::{Socket, TcpKeepalive};

use super::read_path::{EventPublisher, GroupPublisher, PublishCounters, Received};
use super::stats::{ClosedTotals, ConnectionCounters, ExecutorReport, StatsSink};
use super::uring_receiver::UringReceiver;
use crate::config::ReceivePathChoice;
use crate::egress::{EgressId, OutcomeReport, OutcomeSender, Settled};
use crate::inbox::{Command, Egress, EgressTarget, Inbox, NewConnection};
use crate::records::{Addr, ConnectionEvent, DisconnectReason, ReceivePath};
use crate::runtime::{self, Activity, Groups, MAX_STALL_BACKOFF, MIN_STALL_BACKOFF};
use crate::sys::OpenConnections;

/// Receives per connection before it yields to the others.
const RECVS_PER_TURN: usize = 16;
/// How long a stopping executor waits for its io_uring recvs to end.
const URING_DRAIN: Duration = Duration::from_secs(1);

/// The keys of a stage's configuration that its connections use, whichever
/// side opened them.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub(crate) stage: String,
    pub(crate) group_size: u32,
    pub(crate) group_timeout_us: u64,
    pub(crate) enable_nodelay: bool,
    pub(crate) data_receive_timeout_ms: u64,
    pub(crate) egress_buffer_size_b: u64,
    pub(crate) kernel_receive_buffer_size_b: u64,
    pub(crate) kernel_transmit_buffer_size_b: u64,
    pub(crate) keepalive_s: u64,
    pub(crate) receive_path: ReceivePathChoice,
    pub(crate) receive_slot_size_b: u64,
}

/// How an executor's connections receive.
#[allow(clippy::large_enum_variant, reason = "one per executor, made once and never moved")]
pub(crate) enum Receiver {
    /// `recv` after glommio reports readiness, into the open group.
    Read(RefCell<GroupPublisher>),
    /// io_uring multishot recv into slots of the shard.
    Uring(Rc<UringReceiver>),
}

/// What opens an executor's connections: a task it runs beside them (the
/// server's acceptor, the client's connector), made by the stage.
pub(crate) type Opener = Box<dyn FnOnce(Rc<Executor>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// What the executor does besides serving connections.
pub(crate) enum Role {
    /// Opens connections (executor 0) and serves them.
    Opener(Opener),
    /// Serves the connections it is handed.
    Worker,
}

/// Everything one executor of the stage shares between its tasks.
pub(crate) struct Executor {
    pub(crate) index: usize,
    pub(crate) settings: ConnectionSettings,
    pub(crate) receiver: Receiver,
    pub(crate) events: RefCell<EventPublisher>,
    activity: Rc<Activity>,
    connections: RefCell<HashMap<u64, Connection>>,
    pub(crate) open: Arc<OpenConnections>,
    /// Connections refused over `maximum_connections` (acceptor only).
    pub(crate) rejected: Cell<u64>,
    /// Failed attempts to bind the listener (acceptor only).
    pub(crate) bind_failures: Cell<u64>,
    closed: RefCell<ClosedTotals>,
    warned_clamp: Cell<bool>,
    /// Egress records dropped because no connection they were meant for
    /// was open (counted on executor 0 only).
    egress_unconnected_drops: Cell<u64>,
    /// Where each egress record's fate on this executor goes.
    outcomes: OutcomeSender,
}

/// A live connection, as its executor tracks it.
struct Connection {
    task: Task<DisconnectReason>,
    counters: Rc<RefCell<ConnectionCounters>>,
    egress: Rc<EgressQueue>,
}

/// A connection's egress buffer: at most `egress_buffer_size_b` bytes wait
/// for the socket; a record that does not fit is dropped and counted, so a
/// slow client neither grows memory nor stalls the others. Each queued
/// record's outcome is reported once the socket took its last byte, or the
/// connection closed first.
struct EgressQueue {
    bytes: RefCell<VecDeque<u8>>,
    capacity: usize,
    kick: LocalSender<()>,
    /// Queued records, oldest first, with where each ends in the stream
    /// of bytes ever queued.
    pending: RefCell<VecDeque<(u64, EgressId)>>,
    queued_total: Cell<u64>,
    written_total: Cell<u64>,
    outcomes: OutcomeSender,
}

impl EgressQueue {
    /// Queues `data` whole, or drops it; returns what happened, unless the
    /// record is queued and waits for the socket.
    fn push(&self, id: EgressId, data: &[u8]) -> Option<Settled> {
        let mut bytes = self.bytes.borrow_mut();
        if data.len() > self.capacity {
            return Some(Settled::TooLarge);
        }
        if bytes.len() + data.len() > self.capacity {
            return Some(Settled::BufferFull);
        }
        if data.is_empty() {
            return Some(Settled::Delivered);
        }
        bytes.extend(data);
        let end = self.queued_total.get() + data.len() as u64;
        self.queued_total.set(end);
        self.pending.borrow_mut().push_back((end, id));
        let _ = self.kick.try_send(());
        None
    }

    /// The socket took `n` more bytes: reports the records now written.
    fn written(&self, n: usize) {
        let written = self.written_total.get() + n as u64;
        self.written_total.set(written);
        let mut pending = self.pending.borrow_mut();
        while let Some(&(end, record)) = pending.front() {
            if end > written {
                break;
            }
            pending.pop_front();
            let _ = self.outcomes.send(OutcomeReport::Settled { record, how: Settled::Delivered });
        }
    }

    /// The connection closed: what was still queued will never be written.
    fn close(&self) {
        for (_, record) in self.pending.borrow_mut().drain(..) {
            let _ = self.outcomes.send(OutcomeReport::Settled { record, how: Settled::ConnectionClosed });
        }
        self.bytes.borrow_mut().clear();
    }
}

/// What a stage's executor needs to start.
pub(crate) struct ExecutorSetup {
    pub(crate) index: usize,
    pub(crate) settings: ConnectionSettings,
    pub(crate) packets: ShardWriter,
    pub(crate) events: ShardWriter,
    pub(crate) inbox: Inbox,
    pub(crate) open: Arc<OpenConnections>,
    pub(crate) stats: StatsSink,
    pub(crate) outcomes: OutcomeSender,
    pub(crate) role: Role,
}

/// Runs one executor of the stage until told to stop.
pub(crate) async fn run_executor(setup: ExecutorSetup) {
    let ExecutorSetup { index, settings, packets, events, inbox, open, stats, outcomes, role } = setup;
    let (activity, flush_wait) = Activity::new(settings.group_timeout_us);
    let receiver = receiver_for(&settings, index, packets);
    let exec = Rc::new(Executor {
        index,
        receiver,
        events: RefCell::new(EventPublisher::new(events)),
        activity: activity.clone(),
        connections: RefCell::new(HashMap::new()),
        open,
        rejected: Cell::new(0),
        bind_failures: Cell::new(0),
        closed: RefCell::new(ClosedTotals::default()),
        egress_unconnected_drops: Cell::new(0),
        outcomes,
        warned_clamp: Cell::new(false),
        settings,
    });
    let flusher = spawn_local(runtime::flusher(exec.clone(), activity.clone(), flush_wait));
    let driver = match &exec.receiver {
        Receiver::Uring(receiver) => {
            let stage = exec.settings.stage.clone();
            let (receiver, activity) = (receiver.clone(), activity.clone());
            Some(spawn_local(async move { runtime::drive_uring(&stage, receiver, activity).await }))
        }
        Receiver::Read(_) => None,
    };
    let reporter = spawn_local(report_stats(exec.clone(), stats.clone()));
    let opener = match role {
        Role::Opener(open) => Some(spawn_local(open(exec.clone()))),
        Role::Worker => None,
    };
    let inbox = match inbox.poll_here() {
        Ok(inbox) => inbox,
        Err(e) => {
            tracing::error!("stage {}: executor {index} cannot poll its inbox: {e}", exec.settings.stage);
            return;
        }
    };
    loop {
        match inbox.next().await {
            Command::Connection(conn) => drop(start_connection(&exec, conn)),
            Command::Egress(egress) => deliver_egress(&exec, &egress),
            Command::Stop => break,
        }
    }
    // Graceful stop: no new connections, close the open ones, publish what
    // was received.
    if let Some(opener) = opener {
        opener.cancel().await;
    }
    let connections: Vec<(u64, Connection)> = exec.connections.borrow_mut().drain().collect();
    for (id, conn) in connections {
        if conn.task.cancel().await.is_some() {
            continue; // it ended on its own meanwhile and reported that
        }
        conn.egress.close();
        exec.open.close();
        let c = *conn.counters.borrow();
        exec.closed.borrow_mut().add(&c);
        exec.events.borrow_mut().publish(&ConnectionEvent::Disconnected {
            connection_id: id,
            reason: DisconnectReason::Shutdown,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            time_ns: shm_bus::realtime_ns(),
        });
    }
    if let Some(driver) = driver {
        driver.cancel().await;
    }
    if let Receiver::Uring(receiver) = &exec.receiver {
        drain_uring(receiver).await;
    }
    exec.flush_groups();
    exec.events.borrow_mut().retry();
    flusher.cancel().await;
    reporter.cancel().await;
    // The stage's last statistics record covers everything up to the stop.
    stats.send(exec.report());
}

/// Sends this executor's counters to the stage's statistics thread once a
/// second.
async fn report_stats(exec: Rc<Executor>, sink: StatsSink) {
    loop {
        sleep(Duration::from_secs(1)).await;
        if !sink.send(exec.report()) {
            return;
        }
        let mut events = exec.events.borrow_mut();
        if events.has_backlog() {
            events.retry();
        }
    }
}

/// Queues an egress record for its target connection(s) on this executor,
/// and tells the outcome publisher for how many.
fn deliver_egress(exec: &Executor, egress: &Egress) {
    let connections = exec.connections.borrow();
    let mut matched = 0;
    for (&id, conn) in connections.iter() {
        let meant = match egress.target {
            EgressTarget::Connections(target) => target.is_none_or(|t| t == id),
            // A datagram has no connection to go to.
            EgressTarget::Datagram(_) => false,
        };
        if !meant {
            continue;
        }
        matched += 1;
        let mut c = conn.counters.borrow_mut();
        let settled = conn.egress.push(egress.id, &egress.bytes);
        match settled {
            None | Some(Settled::Delivered) => c.packets_out += 1,
            Some(_) => {
                c.egress_drops += 1;
                c.egress_dropped_bytes += egress.bytes.len() as u64;
            }
        }
        if let Some(how) = settled {
            let _ = exec.outcomes.send(OutcomeReport::Settled { record: egress.id, how });
        }
    }
    let _ = exec.outcomes.send(OutcomeReport::Matched {
        record: egress.id,
        target: match egress.target {
            EgressTarget::Connections(target) => target,
            EgressTarget::Datagram(_) => None,
        },
        bytes: egress.bytes.len() as u64,
        connections: matched,
    });
    if matched == 0 && exec.index == 0 {
        // Every executor sees every record: count it once, on executor 0.
        exec.egress_unconnected_drops.set(exec.egress_unconnected_drops.get() + 1);
    }
}

/// Starts serving `conn` on this executor. The returned receiver yields
/// (or closes) when the connection has ended.
pub(crate) fn start_connection(exec: &Rc<Executor>, conn: NewConnection) -> LocalReceiver<()> {
    let NewConnection { socket, id, peer, local } = conn;
    let counters = Rc::new(RefCell::new(ConnectionCounters::new(peer)));
    exec.events.borrow_mut().publish(&ConnectionEvent::Connected {
        connection_id: id,
        peer: peer.into(),
        local: local.into(),
        time_ns: shm_bus::realtime_ns(),
    });
    let (kick, kicked) = local_channel::new_bounded(1);
    let egress = Rc::new(EgressQueue {
        bytes: RefCell::new(VecDeque::new()),
        capacity: exec.settings.egress_buffer_size_b as usize,
        kick,
        pending: RefCell::new(VecDeque::new()),
        queued_total: Cell::new(0),
        written_total: Cell::new(0),
        outcomes: exec.outcomes.clone(),
    });
    let (ended, on_end) = local_channel::new_bounded(1);
    let serve = serve_connection(exec.clone(), socket, id, peer, counters.clone(), egress.clone(), kicked);
    let task = spawn_local(async move {
        let reason = serve.await;
        let _ = ended.try_send(());
        reason
    });
    exec.connections.borrow_mut().insert(id, Connection { task, counters, egress });
    on_end
}

/// One connection's life on its executor, from accept to close: receiving
/// and sending run side by side until either ends the connection.
async fn serve_connection(
    exec: Rc<Executor>,
    socket: Socket,
    id: u64,
    peer: SocketAddr,
    counters: Rc<RefCell<ConnectionCounters>>,
    egress: Rc<EgressQueue>,
    egress_kicks: LocalReceiver<()>,
) -> DisconnectReason {
    let reason = match PollableFd::new(socket) {
        Ok(fd) => {
            let receiving = async {
                match &exec.receiver {
                    Receiver::Read(groups) => receive(&exec, groups, &fd, id, peer.into(), &counters).await,
                    Receiver::Uring(receiver) => {
                        receive_uring(&exec, receiver, fd.as_raw_fd(), id, peer.into(), &counters).await
                    }
                }
            };
            future::or(receiving, send_egress(&fd, &egress, egress_kicks, &counters)).await
        }
        Err(e) => DisconnectReason::Error(format!("cannot poll the socket: {e}")),
    };
    egress.close();
    exec.connections.borrow_mut().remove(&id);
    exec.open.close();
    let c = *counters.borrow();
    exec.closed.borrow_mut().add(&c);
    exec.events.borrow_mut().publish(&ConnectionEvent::Disconnected {
        connection_id: id,
        reason: reason.clone(),
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        time_ns: shm_bus::realtime_ns(),
    });
    reason
}

/// Reads the connection until it ends; returns why it ended.
async fn receive(
    exec: &Executor,
    groups: &RefCell<GroupPublisher>,
    fd: &PollableFd<Socket>,
    id: u64,
    peer: Addr,
    counters: &RefCell<ConnectionCounters>,
) -> DisconnectReason {
    let silence = Duration::from_millis(exec.settings.data_receive_timeout_ms);
    let mut stall_backoff = MIN_STALL_BACKOFF;
    loop {
        let readable = async { fd.readable().await.map(|()| true) };
        let ready = if silence.is_zero() {
            readable.await
        } else {
            future::or(readable, async {
                sleep(silence).await;
                Ok(false)
            })
            .await
        };
        match ready {
            Ok(true) => {}
            Ok(false) => return DisconnectReason::ReceiveTimeout,
            Err(e) => return DisconnectReason::Error(e.to_string()),
        }
        for _ in 0..RECVS_PER_TURN {
            let received = groups.borrow_mut().recv_from(fd.get_ref(), id, peer);
            match received {
                Received::Packet(n) => {
                    counters.borrow_mut().count_packet(n);
                    exec.activity.added(1);
                    stall_backoff = MIN_STALL_BACKOFF;
                    if exec.activity.flush_each_packet() {
                        groups.borrow_mut().flush();
                    }
                }
                Received::WouldBlock => break,
                Received::Closed => return DisconnectReason::PeerClosed,
                Received::Error(e) => return DisconnectReason::Error(e.to_string()),
                Received::Full => {
                    // A gated reader lags: leave the bytes in the kernel so
                    // TCP pushes back, and look again shortly.
                    counters.borrow_mut().stalls += 1;
                    sleep(stall_backoff).await;
                    stall_backoff = (stall_backoff * 2).min(MAX_STALL_BACKOFF);
                    break;
                }
            }
        }
        future::yield_now().await;
    }
}

/// The io_uring side of a connection: its recv runs in the executor's ring
/// (see [`drive_uring`]); this waits for its end, or for
/// `data_receive_timeout_ms` of silence. Detaches the connection however
/// it ends, also when the task is cancelled.
async fn receive_uring(
    exec: &Executor,
    receiver: &UringReceiver,
    fd: RawFd,
    id: u64,
    peer: Addr,
    counters: &Rc<RefCell<ConnectionCounters>>,
) -> DisconnectReason {
    struct Detach<'a>(&'a UringReceiver, u64);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            self.0.detach(self.1);
        }
    }
    let ended = receiver.attach(fd, id, peer, counters.clone());
    let _detach = Detach(receiver, id);
    let silence = Duration::from_millis(exec.settings.data_receive_timeout_ms);
    loop {
        if silence.is_zero() {
            return ended.recv().await.unwrap_or(DisconnectReason::Shutdown);
        }
        let end = async { Some(ended.recv().await.unwrap_or(DisconnectReason::Shutdown)) };
        let quiet = async {
            sleep(silence).await;
            None
        };
        if let Some(reason) = future::or(end, quiet).await {
            return reason;
        }
        if receiver.last_packet(id).is_some_and(|at| at.elapsed() >= silence) {
            return DisconnectReason::ReceiveTimeout;
        }
    }
}

/// Ends every recv of a stopping executor and publishes what they
/// delivered (bounded by [`URING_DRAIN`]).
async fn drain_uring(receiver: &UringReceiver) {
    receiver.cancel_all();
    let deadline = std::time::Instant::now() + URING_DRAIN;
    loop {
        receiver.pass();
        if !receiver.has_armed() || std::time::Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(1)).await;
    }
    receiver.stop_accepting();
    receiver.pass();
}

/// Sets up the executor's receive path as configured; falls back to the
/// read path (with a warning) where io_uring cannot be set up.
fn receiver_for(settings: &ConnectionSettings, index: usize, packets: ShardWriter) -> Receiver {
    let read = |packets| Receiver::Read(RefCell::new(GroupPublisher::new(packets, settings.group_size)));
    if settings.receive_path == ReceivePathChoice::GlommioRead {
        return read(packets);
    }
    match UringReceiver::new(
        packets,
        settings.receive_slot_size_b,
        settings.group_size,
        settings.group_timeout_us,
    ) {
        Ok(receiver) => Receiver::Uring(Rc::new(receiver)),
        Err((packets, e)) => {
            tracing::warn!(
                "stage {}: executor {index} cannot set up io_uring receive ({e}); using the glommio read path",
                settings.stage
            );
            read(packets)
        }
    }
}

/// Writes the connection's egress buffer to its socket as the socket takes
/// it. Returns only when writing fails.
async fn send_egress(
    fd: &PollableFd<Socket>,
    egress: &EgressQueue,
    kicks: LocalReceiver<()>,
    counters: &RefCell<ConnectionCounters>,
) -> DisconnectReason {
    loop {
        let written = {
            let mut bytes = egress.bytes.borrow_mut();
            if bytes.is_empty() {
                None
            } else {
                let (front, _) = bytes.as_slices();
                let result = fd.get_ref().write(front);
                if let Ok(n) = result {
                    bytes.drain(..n);
                }
                Some(result)
            }
        };
        match written {
            None => {
                if kicks.recv().await.is_none() {
                    return DisconnectReason::Shutdown;
                }
            }
            Some(Ok(n)) => {
                counters.borrow_mut().count_sent(n);
                egress.written(n);
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = fd.writable().await {
                    return DisconnectReason::Error(e.to_string());
                }
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => return DisconnectReason::Error(e.to_string()),
        }
    }
}

/// Applies the stage's socket options to an accepted connection.
pub(crate) fn configure(socket: &Socket, config: &ConnectionSettings) -> io::Result<()> {
    socket.set_tcp_nodelay(config.enable_nodelay)?;
    if config.keepalive_s > 0 {
        let secs = Duration::from_secs(config.keepalive_s);
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(secs).with_interval(secs))?;
    }
    if config.kernel_receive_buffer_size_b > 0 {
        socket.set_recv_buffer_size(config.kernel_receive_buffer_size_b as usize)?;
    }
    if config.kernel_transmit_buffer_size_b > 0 {
        socket.set_send_buffer_size(config.kernel_transmit_buffer_size_b as usize)?;
    }
    Ok(())
}

impl Groups for Executor {
    fn open_age(&self) -> Option<Duration> {
        match &self.receiver {
            Receiver::Read(groups) => groups.borrow().open_age(),
            Receiver::Uring(receiver) => receiver.open_age(),
        }
    }

    fn flush_groups(&self) {
        match &self.receiver {
            Receiver::Read(groups) => groups.borrow_mut().flush(),
            Receiver::Uring(receiver) => receiver.flush(),
        }
    }

    /// Connection events held back while their channel was full.
    fn after_flush(&self) {
        let mut events = self.events.borrow_mut();
        if events.has_backlog() {
            events.retry();
        }
    }
}

impl Executor {
    /// The receive path this executor runs.
    pub(crate) fn receive_path(&self) -> ReceivePath {
        match self.receiver {
            Receiver::Read(_) => ReceivePath::GlommioRead,
            Receiver::Uring(_) => ReceivePath::IoUringMultishot,
        }
    }

    fn publish_counters(&self) -> PublishCounters {
        match &self.receiver {
            Receiver::Read(groups) => groups.borrow().counters(),
            Receiver::Uring(receiver) => receiver.counters(),
        }
    }

    /// This executor's counters, for the statistics thread.
    fn report(&self) -> ExecutorReport {
        ExecutorReport {
            executor: self.index,
            receive_path: self.receive_path(),
            publish: self.publish_counters(),
            rejected: self.rejected.get(),
            bind_failures: self.bind_failures.get(),
            egress_unconnected_drops: self.egress_unconnected_drops.get(),
            closed: *self.closed.borrow(),
            connections: self
                .connections
                .borrow()
                .iter()
                .map(|(&id, c)| {
                    let mut counters = c.counters.borrow_mut();
                    let report = *counters;
                    counters.max_packet_recent = 0;
                    (id, report)
                })
                .collect(),
        }
    }

    /// Warns, once per executor, if the kernel clamped the requested buffer
    /// sizes of `socket`.
    pub(crate) fn warn_once_if_clamped(&self, socket: &Socket) {
        if self.warned_clamp.replace(true) {
            return;
        }
        for (key, asked, got) in clamped_buffers(socket, &self.settings) {
            tracing::warn!(
                "stage {}: {key} = {asked} was clamped by the kernel to {got} \
                 (raise net.core.rmem_max / wmem_max)",
                self.settings.stage
            );
        }
    }
}

/// The buffer sizes the kernel granted below what was asked: (key, asked,
/// granted). Linux reports twice the usable size it granted, so less than
/// asked means clamped.
fn clamped_buffers(socket: &Socket, settings: &ConnectionSettings) -> Vec<(&'static str, u64, u64)> {
    let checks = [
        ("kernel_receive_buffer_size_b", settings.kernel_receive_buffer_size_b, socket.recv_buffer_size()),
        ("kernel_transmit_buffer_size_b", settings.kernel_transmit_buffer_size_b, socket.send_buffer_size()),
    ];
    checks
        .into_iter()
        .filter_map(|(key, asked, got)| {
            let got = got.ok()? as u64;
            (asked > 0 && got < asked).then_some((key, asked, got))
        })
        .collect()
}

/// Both stage configurations name the connection keys alike.
macro_rules! connection_settings_from {
    ($config:ty) => {
        impl From<&$config> for ConnectionSettings {
            fn from(c: &$config) -> Self {
                Self {
                    stage: c.name.clone(),
                    group_size: c.group_size,
                    group_timeout_us: c.group_timeout_us,
                    enable_nodelay: c.enable_nodelay,
                    data_receive_timeout_ms: c.data_receive_timeout_ms,
                    egress_buffer_size_b: c.egress_buffer_size_b,
                    kernel_receive_buffer_size_b: c.kernel_receive_buffer_size_b,
                    kernel_transmit_buffer_size_b: c.kernel_transmit_buffer_size_b,
                    keepalive_s: c.keepalive_s,
                    receive_path: c.receive_path,
                    receive_slot_size_b: c.receive_slot_size_b,
                }
            }
        }
    };
}

connection_settings_from!(crate::config::TcpServerConfig);
connection_settings_from!(crate::config::TcpClientConfig);

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Type};

    fn settings(receive: u64, transmit: u64) -> ConnectionSettings {
        ConnectionSettings {
            stage: "test".into(),
            group_size: 1,
            group_timeout_us: 0,
            enable_nodelay: true,
            data_receive_timeout_ms: 0,
            egress_buffer_size_b: 1,
            kernel_receive_buffer_size_b: receive,
            kernel_transmit_buffer_size_b: transmit,
            keepalive_s: 30,
            receive_path: ReceivePathChoice::GlommioRead,
            receive_slot_size_b: 64 << 10,
        }
    }

    #[test]
    fn buffer_sizes_are_applied_and_read_back() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let wanted = settings(96 << 10, 48 << 10);
        configure(&socket, &wanted).unwrap();
        assert!(socket.recv_buffer_size().unwrap() >= 96 << 10);
        assert!(socket.send_buffer_size().unwrap() >= 48 << 10);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert!(clamped_buffers(&socket, &wanted).is_empty());
    }

    #[test]
    fn a_clamped_buffer_is_reported() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        // Far above any default net.core.rmem_max / wmem_max.
        let greedy = settings(1 << 30, 1 << 30);
        configure(&socket, &greedy).unwrap();
        let clamped = clamped_buffers(&socket, &greedy);
        assert_eq!(clamped.len(), 2, "{clamped:?}");
        assert_eq!(clamped[0].0, "kernel_receive_buffer_size_b");
        assert!(clamped[0].2 < 1 << 30);
    }
}
