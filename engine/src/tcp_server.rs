//! The TCP server stage: listens, accepts up to `maximum_connections`
//! clients, spreads them over the stage's executors, and publishes what they
//! send as packet groups, with connection events and socket statistics.
//!
//! Executor 0 accepts and hands each connection to an executor (round
//! robin) through that executor's [`Inbox`]. A connection then lives on that
//! executor until it closes: its task waits for readability and reads
//! straight into the executor's open group ([`GroupPublisher`]). A flusher
//! task per executor publishes a partial group as soon as a turn of the
//! executor adds no packet (latency first), and at the latest after
//! `group_timeout_us`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::PollableFd;
use glommio::timer::sleep;
use glommio::{Task, spawn_local};
use shm_bus::ShardWriter;
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use crate::config::TcpServerConfig;
use crate::ingest::{EventPublisher, GroupPublisher, Received};
use crate::records::{Addr, ConnectionEvent, DisconnectReason};
use crate::stats::{ClosedTotals, ConnectionCounters, ExecutorReport, StatsSink};
use crate::sys::OpenConnections;

/// Receives per connection before it yields to the others.
const RECVS_PER_TURN: usize = 16;
/// Bind retries back off up to this.
const MAX_BIND_BACKOFF: Duration = Duration::from_secs(2);
/// While the channel is full, a connection retries at most this often.
const MAX_STALL_BACKOFF: Duration = Duration::from_millis(2);

/// A connection handed from the acceptor to an executor.
pub(crate) struct NewConnection {
    socket: Socket,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
}

/// Bytes to send to the stage's clients.
#[derive(Debug)]
pub(crate) struct Egress {
    /// One connection, or every connection.
    pub(crate) target: Option<u64>,
    pub(crate) bytes: Vec<u8>,
}

/// What an executor is told from outside.
pub(crate) enum Command {
    Connection(NewConnection),
    Egress(Arc<Egress>),
    Stop,
}

/// The sending side of an executor's inbox: usable from any thread.
pub(crate) struct InboxSender {
    commands: mpsc::Sender<Command>,
    wake: UnixStream,
}

impl InboxSender {
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { commands: self.commands.clone(), wake: self.wake.try_clone()? })
    }

    pub(crate) fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A full socket buffer means a wake-up is pending anyway.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// An executor's inbox: commands, plus a socket to await them on.
pub(crate) struct Inbox {
    commands: mpsc::Receiver<Command>,
    wake: UnixStream,
}

pub(crate) fn inbox() -> io::Result<(InboxSender, Inbox)> {
    let (tx, rx) = mpsc::channel();
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    Ok((InboxSender { commands: tx, wake: wake_tx }, Inbox { commands: rx, wake: wake_rx }))
}

/// The receiving side of an inbox, on its executor.
struct PolledInbox {
    commands: mpsc::Receiver<Command>,
    wake: PollableFd<UnixStream>,
}

impl PolledInbox {
    /// The next command; waits (parked, no spinning) until one comes.
    async fn next(&self) -> Command {
        let wake = &self.wake;
        loop {
            if let Ok(command) = self.commands.try_recv() {
                return command;
            }
            let mut drain = [0u8; 64];
            while matches!(wake.get_ref().read(&mut drain), Ok(n) if n > 0) {}
            if let Ok(command) = self.commands.try_recv() {
                return command;
            }
            // Disconnected senders also make it readable (EOF): a stage
            // whose handle is gone stops.
            if wake.readable().await.is_err() || matches!(wake.get_ref().read(&mut drain), Ok(0)) {
                return Command::Stop;
            }
        }
    }
}

/// Where the stage's listener ended up, for the handle (OS-chosen ports).
#[derive(Debug, Default)]
pub(crate) struct BoundAddress {
    addr: Mutex<Option<SocketAddr>>,
    changed: Condvar,
}

impl BoundAddress {
    fn set(&self, addr: SocketAddr) {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        self.changed.notify_all();
    }

    pub(crate) fn wait(&self, timeout: Duration) -> Option<SocketAddr> {
        let guard = self.addr.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |a| a.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// Everything one executor of the stage shares between its tasks.
struct Executor {
    index: usize,
    config: Rc<TcpServerConfig>,
    groups: RefCell<GroupPublisher>,
    events: RefCell<EventPublisher>,
    /// Packets committed so far: the flusher compares it across a turn to
    /// tell a busy executor from an idle one.
    packets: Cell<u64>,
    flush_kick: LocalSender<()>,
    connections: RefCell<HashMap<u64, Connection>>,
    open: Arc<OpenConnections>,
    /// Connections refused over `maximum_connections` (acceptor only).
    rejected: Cell<u64>,
    closed: RefCell<ClosedTotals>,
}

/// A live connection, as its executor tracks it.
struct Connection {
    task: Task<DisconnectReason>,
    counters: Rc<RefCell<ConnectionCounters>>,
    egress: Rc<EgressQueue>,
}

/// A connection's egress buffer: at most `egress_buffer_size_b` bytes wait
/// for the socket; a record that does not fit is dropped and counted, so a
/// slow client neither grows memory nor stalls the others.
struct EgressQueue {
    bytes: RefCell<VecDeque<u8>>,
    capacity: usize,
    kick: LocalSender<()>,
}

impl EgressQueue {
    /// Queues `data` whole, or drops it; returns whether it was queued.
    fn push(&self, data: &[u8]) -> bool {
        let mut bytes = self.bytes.borrow_mut();
        if bytes.len() + data.len() > self.capacity {
            return false;
        }
        bytes.extend(data);
        let _ = self.kick.try_send(());
        true
    }
}

/// What a stage's executor needs to start.
pub(crate) struct ExecutorSetup {
    pub(crate) index: usize,
    pub(crate) config: Arc<TcpServerConfig>,
    pub(crate) packets: ShardWriter,
    pub(crate) events: ShardWriter,
    pub(crate) inbox: Inbox,
    pub(crate) open: Arc<OpenConnections>,
    pub(crate) stats: StatsSink,
    /// Only for executor 0: it accepts and hands connections out.
    pub(crate) acceptor: Option<AcceptorSetup>,
}

pub(crate) struct AcceptorSetup {
    pub(crate) executors: Vec<InboxSender>,
    pub(crate) bound: Arc<BoundAddress>,
}

/// Runs one executor of the stage until told to stop.
pub(crate) async fn run_executor(setup: ExecutorSetup) {
    let ExecutorSetup { index, config, packets, events, inbox, open, stats, acceptor } = setup;
    let config = Rc::new((*config).clone());
    let (flush_kick, flush_wait) = local_channel::new_bounded(1);
    let exec = Rc::new(Executor {
        index,
        groups: RefCell::new(GroupPublisher::new(packets, config.group_size)),
        events: RefCell::new(EventPublisher::new(events)),
        packets: Cell::new(0),
        flush_kick,
        connections: RefCell::new(HashMap::new()),
        open,
        rejected: Cell::new(0),
        closed: RefCell::new(ClosedTotals::default()),
        config,
    });
    let flusher = spawn_local(flusher(exec.clone(), flush_wait));
    let reporter = spawn_local(report_stats(exec.clone(), stats));
    let acceptor = acceptor.map(|a| spawn_local(accept_loop(exec.clone(), a)));
    let inbox = match PollableFd::new(inbox.wake) {
        Ok(wake) => PolledInbox { commands: inbox.commands, wake },
        Err(e) => {
            tracing::error!("stage {}: executor {index} cannot poll its inbox: {e}", exec.config.name);
            return;
        }
    };
    loop {
        match inbox.next().await {
            Command::Connection(conn) => start_connection(&exec, conn),
            Command::Egress(egress) => deliver_egress(&exec, &egress),
            Command::Stop => break,
        }
    }
    // Graceful stop: no new connections, close the open ones, publish what
    // was received.
    if let Some(acceptor) = acceptor {
        acceptor.cancel().await;
    }
    let connections: Vec<(u64, Connection)> = exec.connections.borrow_mut().drain().collect();
    for (id, conn) in connections {
        if conn.task.cancel().await.is_some() {
            continue; // it ended on its own meanwhile and reported that
        }
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
    exec.groups.borrow_mut().flush();
    exec.events.borrow_mut().retry();
    flusher.cancel().await;
    reporter.cancel().await;
}

/// Publishes partial groups: as soon as a turn of the executor added no
/// packet, or when the oldest packet has waited `group_timeout_us`.
async fn flusher(exec: Rc<Executor>, kicks: LocalReceiver<()>) {
    let timeout = Duration::from_micros(exec.config.group_timeout_us);
    while kicks.recv().await.is_some() {
        loop {
            let before = exec.packets.get();
            future::yield_now().await;
            let mut groups = exec.groups.borrow_mut();
            let Some(age) = groups.open_age() else { break };
            if exec.packets.get() == before || age >= timeout {
                groups.flush();
                break;
            }
        }
        let mut events = exec.events.borrow_mut();
        if events.has_backlog() {
            events.retry();
        }
    }
}

/// Sends this executor's counters to the stage's statistics thread once a
/// second.
async fn report_stats(exec: Rc<Executor>, sink: StatsSink) {
    loop {
        sleep(Duration::from_secs(1)).await;
        let report = ExecutorReport {
            executor: exec.index,
            publish: exec.groups.borrow().counters(),
            rejected: exec.rejected.get(),
            closed: *exec.closed.borrow(),
            connections: exec
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
        };
        if !sink.send(report) {
            return;
        }
        let mut events = exec.events.borrow_mut();
        if events.has_backlog() {
            events.retry();
        }
    }
}

/// Queues an egress record for its target connection(s) on this executor.
fn deliver_egress(exec: &Executor, egress: &Egress) {
    for (&id, conn) in exec.connections.borrow().iter() {
        if egress.target.is_some_and(|t| t != id) {
            continue;
        }
        let mut c = conn.counters.borrow_mut();
        if conn.egress.push(&egress.bytes) {
            c.packets_out += 1;
        } else {
            c.egress_drops += 1;
            c.egress_dropped_bytes += egress.bytes.len() as u64;
        }
    }
}

fn start_connection(exec: &Rc<Executor>, conn: NewConnection) {
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
        capacity: exec.config.egress_buffer_size_b as usize,
        kick,
    });
    let task = spawn_local(serve_connection(
        exec.clone(),
        socket,
        id,
        peer,
        counters.clone(),
        egress.clone(),
        kicked,
    ));
    exec.connections.borrow_mut().insert(id, Connection { task, counters, egress });
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
            future::or(
                receive(&exec, &fd, id, peer.into(), &counters),
                send_egress(&fd, &egress, egress_kicks, &counters),
            )
            .await
        }
        Err(e) => DisconnectReason::Error(format!("cannot poll the socket: {e}")),
    };
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
    fd: &PollableFd<Socket>,
    id: u64,
    peer: Addr,
    counters: &RefCell<ConnectionCounters>,
) -> DisconnectReason {
    let silence = Duration::from_millis(exec.config.data_receive_timeout_ms);
    let mut stall_backoff = Duration::from_micros(50);
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
            let received = exec.groups.borrow_mut().recv_from(fd.get_ref(), id, peer);
            match received {
                Received::Packet(n) => {
                    counters.borrow_mut().count_packet(n);
                    exec.packets.set(exec.packets.get() + 1);
                    stall_backoff = Duration::from_micros(50);
                    if exec.config.group_timeout_us == 0 {
                        exec.groups.borrow_mut().flush();
                    } else {
                        let _ = exec.flush_kick.try_send(());
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
            Some(Ok(n)) => counters.borrow_mut().count_sent(n),
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

/// Builds the listening socket.
fn listen(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Binds, retrying with capped backoff until it works; logs each distinct
/// failure once.
async fn bind_with_retry(config: &TcpServerConfig) -> Socket {
    let mut backoff = Duration::from_millis(20);
    let mut last_error = String::new();
    loop {
        match listen(config.address) {
            Ok(socket) => {
                if !last_error.is_empty() {
                    tracing::info!("stage {}: bound {} after retrying", config.name, config.address);
                }
                return socket;
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(
                        "stage {}: cannot listen on {} ({text}); retrying",
                        config.name,
                        config.address
                    );
                    last_error = text;
                }
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BIND_BACKOFF);
            }
        }
    }
}

/// Applies the stage's socket options to an accepted connection.
fn configure(socket: &Socket, config: &TcpServerConfig) -> io::Result<()> {
    socket.set_nonblocking(true)?;
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

/// Warns once if the kernel clamped the requested buffer sizes (Linux
/// reports twice the usable size it granted; less than asked means clamped).
fn warn_if_clamped(socket: &Socket, config: &TcpServerConfig) {
    let checks = [
        ("kernel_receive_buffer_size_b", config.kernel_receive_buffer_size_b, socket.recv_buffer_size()),
        ("kernel_transmit_buffer_size_b", config.kernel_transmit_buffer_size_b, socket.send_buffer_size()),
    ];
    for (key, asked, got) in checks {
        if let Ok(got) = got
            && asked > 0
            && (got as u64) < asked
        {
            tracing::warn!(
                "stage {}: {key} = {asked} was clamped by the kernel to {got} \
                 (raise net.core.rmem_max / wmem_max)",
                config.name
            );
        }
    }
}

/// Accepts connections and hands them to the executors, round robin.
async fn accept_loop(exec: Rc<Executor>, setup: AcceptorSetup) {
    let config = exec.config.clone();
    let max = config.maximum_connections as usize;
    let mut next_id = 1u64;
    let mut next_executor = 0usize;
    let mut warned_clamp = false;
    'rebuild: loop {
        let socket = bind_with_retry(&config).await;
        let local = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(config.address);
        let listener = match PollableFd::new(socket) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("stage {}: cannot poll the listener: {e}", config.name);
                sleep(MAX_BIND_BACKOFF).await;
                continue 'rebuild;
            }
        };
        setup.bound.set(local);
        tracing::info!("stage {}: listening on {local}", config.name);
        loop {
            if let Err(e) = listener.readable().await {
                tracing::warn!("stage {}: listener failed ({e}); rebuilding it", config.name);
                continue 'rebuild;
            }
            loop {
                let (socket, peer) = match listener.get_ref().accept() {
                    Ok(accepted) => accepted,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient_accept_error(&e) => {
                        tracing::warn!("stage {}: accept: {e}", config.name);
                        sleep(Duration::from_millis(10)).await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("stage {}: listener failed ({e}); rebuilding it", config.name);
                        continue 'rebuild;
                    }
                };
                let id = next_id;
                next_id += 1;
                let peer = peer.as_socket().unwrap_or(local);
                let conn_local = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(local);
                if !exec.open.try_open(max) {
                    reject(&exec, id, peer, conn_local);
                    continue;
                }
                if let Err(e) = configure(&socket, &config) {
                    tracing::warn!(
                        "stage {}: cannot configure connection {id} from {peer}: {e}",
                        config.name
                    );
                }
                if !warned_clamp {
                    warned_clamp = true;
                    warn_if_clamped(&socket, &config);
                }
                let target = next_executor % setup.executors.len();
                next_executor += 1;
                let conn = NewConnection { socket, id, peer, local: conn_local };
                if target == exec.index {
                    start_connection(&exec, conn);
                } else {
                    setup.executors[target].send(Command::Connection(conn));
                }
            }
        }
    }
}

/// Closes a connection over `maximum_connections` at once, with events.
fn reject(exec: &Executor, id: u64, peer: SocketAddr, local: SocketAddr) {
    let now = shm_bus::realtime_ns();
    let mut events = exec.events.borrow_mut();
    events.publish(&ConnectionEvent::Connected {
        connection_id: id,
        peer: peer.into(),
        local: local.into(),
        time_ns: now,
    });
    events.publish(&ConnectionEvent::Disconnected {
        connection_id: id,
        reason: DisconnectReason::Rejected,
        bytes_in: 0,
        bytes_out: 0,
        time_ns: now,
    });
    exec.rejected.set(exec.rejected.get() + 1);
}

/// Accept errors that say nothing about the listener itself.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
        )
    ) || e.kind() == io::ErrorKind::Interrupted
}
