//! The UDP stage: one socket per executor (`SO_REUSEPORT`), each datagram
//! received straight into the executor's shard of `<name>/packet_group`,
//! bundled into DatagramGroup records (`RECORDS.md` §8), by io_uring
//! multishot `recvmsg` ([`uring_path`]) or by `recvmmsg` when the socket is
//! readable ([`read_path`]). Executor 0 also sends the stage's egress
//! datagrams. Statistics ([`stats`]) come from the executors' counters and
//! the kernel's drop counter of each socket.
//!
//! UDP cannot push back on a sender. While a gated reader holds the ring
//! full the executor stops reading: the socket's kernel buffer absorbs the
//! burst, and what does not fit the kernel drops and counts; the stage
//! reports that count per socket, so nothing is lost without a counter
//! saying where.

pub(crate) mod control;
mod read_path;
mod socket;
mod stats;
mod uring_path;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use glommio::io::PollableFd;
use glommio::spawn_local;
use glommio::timer::sleep;
use shm_bus::{BusDir, ShardWriter};
use socket2::{SockAddr, Socket};

use self::read_path::{DatagramPublisher, Received};
use self::stats::{ExecutorReport, StatsSink};
use self::uring_path::UringDatagramReceiver;
use crate::config::{ReceivePathChoice, UdpConfig};
use crate::egress::{OutcomeReport, OutcomeSender, Settled};
use crate::inbox::{self, Command, Egress, EgressTarget, Inbox, InboxSender};
use crate::records::{self, ReceivePath};
use crate::runtime::{self, Activity, Groups, MAX_STALL_BACKOFF, MIN_STALL_BACKOFF};
use crate::stage::{
    self, BoundAddress, CONNECTION_EVENTS, CONTROL_RING, EGRESS_OUTCOMES, LatestStats, PACKET_GROUP,
    SOCKET_STATS, Stage,
};
use crate::sys::udp as sys;
use crate::{EngineError, egress, executor};

/// Batches one executor reads before it lets its other tasks run.
const BATCHES_PER_TURN: usize = 8;
/// How long a stopping executor waits for its recvmsg to end.
const URING_DRAIN: Duration = Duration::from_secs(1);
/// The largest datagram payload over IPv6 (65,535 less the UDP header);
/// anything longer cannot be sent.
const MAX_DATAGRAM: usize = 65_527;

/// What an executor's receive path counted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DatagramCounters {
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    pub(crate) truncated: u64,
    pub(crate) groups: u64,
    /// Times reading paused because the ring was full.
    pub(crate) ring_full_stalls: u64,
    /// io_uring path: times the recvmsg ended for want of a free slot.
    pub(crate) buffer_exhaustions: u64,
    /// Largest datagram since the last report.
    pub(crate) max_recent: u64,
}

impl DatagramCounters {
    fn count(&mut self, kept: usize, truncated: bool) {
        self.datagrams += 1;
        self.bytes += kept as u64;
        self.truncated += u64::from(truncated);
        self.max_recent = self.max_recent.max(kept as u64);
    }
}

/// A datagram header's `kernel_rx_ns` and flags for a kernel time.
fn kernel_time_fields(time: Option<(u64, bool)>) -> (u64, u16) {
    match time {
        Some((ns, false)) => (ns, records::FLAG_KERNEL_TIME),
        Some((ns, true)) => (ns, records::FLAG_KERNEL_TIME | records::FLAG_HARDWARE_TIME),
        None => (0, 0),
    }
}

/// How an executor receives.
#[allow(clippy::large_enum_variant, reason = "one per executor, made once and never moved")]
enum Receiver {
    Read(RefCell<DatagramPublisher>),
    Uring(Rc<UringDatagramReceiver>),
}

/// Everything one executor of the stage shares between its tasks.
struct UdpExecutor {
    index: usize,
    config: UdpConfig,
    socket: PollableFd<Socket>,
    local: SocketAddr,
    receiver: Receiver,
    activity: Rc<Activity>,
    egress_sent: Cell<u64>,
    egress_drops: Cell<u64>,
    outcomes: OutcomeSender,
}

impl Groups for UdpExecutor {
    fn open_age(&self) -> Option<Duration> {
        match &self.receiver {
            Receiver::Read(publisher) => publisher.borrow().open_age(),
            Receiver::Uring(receiver) => receiver.open_age(),
        }
    }

    fn flush_groups(&self) {
        match &self.receiver {
            Receiver::Read(publisher) => publisher.borrow_mut().flush(),
            Receiver::Uring(receiver) => receiver.flush(),
        }
    }
}

impl UdpExecutor {
    fn receive_path(&self) -> ReceivePath {
        match self.receiver {
            Receiver::Read(_) => ReceivePath::GlommioRead,
            Receiver::Uring(_) => ReceivePath::IoUringMultishot,
        }
    }

    fn report(&self) -> ExecutorReport {
        let counters = match &self.receiver {
            Receiver::Read(publisher) => publisher.borrow_mut().take_counters(),
            Receiver::Uring(receiver) => receiver.take_counters(),
        };
        let fd = self.socket.get_ref().as_raw_fd();
        ExecutorReport {
            executor: self.index,
            local: self.local,
            receive_path: self.receive_path(),
            counters,
            kernel_drops: sys::kernel_drops(fd).unwrap_or(0),
            kernel_receive_buffer_b: self.socket.get_ref().recv_buffer_size().map_or(0, |b| b as u64 / 2),
            egress_sent: self.egress_sent.get(),
            egress_drops: self.egress_drops.get(),
        }
    }
}

/// What an executor needs to start.
struct ExecutorSetup {
    index: usize,
    config: UdpConfig,
    receive_path: ReceivePathChoice,
    socket: Socket,
    local: SocketAddr,
    packets: ShardWriter,
    inbox: Inbox,
    stats: StatsSink,
    outcomes: OutcomeSender,
}

/// Runs one executor of the stage until told to stop.
async fn run_executor(setup: ExecutorSetup) {
    let ExecutorSetup { index, config, receive_path, socket, local, packets, inbox, stats, outcomes } = setup;
    let stage = config.name.clone();
    let receiver = receiver_for(&config, receive_path, index, &socket, local, packets);
    let socket = match PollableFd::new(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!("stage {stage}: executor {index} cannot poll its socket: {e}");
            return;
        }
    };
    let (activity, kicks) = Activity::new(config.group_timeout_us);
    let exec = Rc::new(UdpExecutor {
        index,
        config,
        socket,
        local,
        receiver,
        activity: activity.clone(),
        egress_sent: Cell::new(0),
        egress_drops: Cell::new(0),
        outcomes,
    });
    let flusher = spawn_local(runtime::flusher(exec.clone(), activity.clone(), kicks));
    let receiving = match &exec.receiver {
        Receiver::Uring(receiver) => {
            let (stage, receiver, activity) = (stage.clone(), receiver.clone(), activity.clone());
            spawn_local(async move { runtime::drive_uring(&stage, receiver, activity).await })
        }
        Receiver::Read(_) => spawn_local(receive(exec.clone())),
    };
    let reporter = spawn_local(report_stats(exec.clone(), stats.clone()));
    let inbox = match inbox.poll_here() {
        Ok(inbox) => inbox,
        Err(e) => {
            tracing::error!("stage {stage}: executor {index} cannot poll its inbox: {e}");
            return;
        }
    };
    loop {
        match inbox.next().await {
            Command::Egress(egress) => send_egress(&exec, &egress).await,
            Command::Connection(_) => {}
            Command::Stop => break,
        }
    }
    // Graceful stop: end the receive, publish what was received.
    receiving.cancel().await;
    if let Receiver::Uring(receiver) = &exec.receiver {
        receiver.stop();
        let deadline = std::time::Instant::now() + URING_DRAIN;
        loop {
            receiver.pass();
            if !receiver.is_armed() || std::time::Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(1)).await;
        }
        receiver.pass();
    }
    exec.flush_groups();
    flusher.cancel().await;
    reporter.cancel().await;
    // The stage's last statistics record covers everything up to the stop.
    stats.send(exec.report());
}

/// The read path: batches of `recvmmsg` whenever the socket is readable.
async fn receive(exec: Rc<UdpExecutor>) {
    let Receiver::Read(publisher) = &exec.receiver else { return };
    let fd = exec.socket.get_ref().as_raw_fd();
    let mut stall_backoff = MIN_STALL_BACKOFF;
    let mut warned = false;
    loop {
        if let Err(e) = exec.socket.readable().await {
            tracing::error!("stage {}: polling the socket failed: {e}", exec.config.name);
            sleep(Duration::from_millis(10)).await;
            continue;
        }
        for _ in 0..BATCHES_PER_TURN {
            let received = publisher.borrow_mut().recv_from(fd);
            match received {
                Received::Datagrams(n) => {
                    stall_backoff = MIN_STALL_BACKOFF;
                    exec.activity.added(n as u64);
                    if exec.activity.flush_each_packet() {
                        publisher.borrow_mut().flush();
                    }
                }
                Received::WouldBlock => break,
                Received::Full => {
                    // A gated reader lags: leave the datagrams in the
                    // kernel's buffer and look again shortly.
                    sleep(stall_backoff).await;
                    stall_backoff = (stall_backoff * 2).min(MAX_STALL_BACKOFF);
                    break;
                }
                Received::Error(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!("stage {}: receiving failed: {e}", exec.config.name);
                    }
                    sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
        future::yield_now().await;
    }
}

/// Sends this executor's counters to the stage's statistics thread once a
/// second.
async fn report_stats(exec: Rc<UdpExecutor>, sink: StatsSink) {
    loop {
        sleep(Duration::from_secs(1)).await;
        if !sink.send(exec.report()) {
            return;
        }
    }
}

/// Sends one egress record as a datagram, and reports its outcome.
async fn send_egress(exec: &UdpExecutor, egress: &Egress) {
    let destination = match egress.target {
        EgressTarget::Datagram(Some(to)) => Some(to),
        EgressTarget::Datagram(None) | EgressTarget::Connections(None) => exec.config.egress_destination,
        // A connection id means nothing to a UDP stage.
        EgressTarget::Connections(Some(_)) => None,
    };
    let bytes = egress.bytes.len() as u64;
    let report = |connections| OutcomeReport::Matched { record: egress.id, target: None, bytes, connections };
    let Some(to) = destination else {
        exec.egress_drops.set(exec.egress_drops.get() + 1);
        let _ = exec.outcomes.send(report(0));
        return;
    };
    let _ = exec.outcomes.send(report(1));
    let how = if egress.bytes.len() > MAX_DATAGRAM {
        Settled::TooLarge
    } else {
        match send_to(exec, &egress.bytes, to).await {
            Ok(()) => Settled::Delivered,
            Err(e) => {
                tracing::warn!("stage {}: egress datagram to {to}: {e}", exec.config.name);
                Settled::ConnectionClosed
            }
        }
    };
    match how {
        Settled::Delivered => exec.egress_sent.set(exec.egress_sent.get() + 1),
        _ => exec.egress_drops.set(exec.egress_drops.get() + 1),
    }
    let _ = exec.outcomes.send(OutcomeReport::Settled { record: egress.id, how });
}

/// Sends one datagram, waiting while the socket's send buffer is full.
async fn send_to(exec: &UdpExecutor, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
    // An IPv6 socket sends to IPv4 addresses as IPv4-mapped ones.
    let to = match (exec.local, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    };
    let to = SockAddr::from(to);
    loop {
        match exec.socket.get_ref().send_to(bytes, &to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => exec.socket.writable().await?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sets up the executor's receive path; falls back to the read path (with
/// a warning) where io_uring cannot be set up.
fn receiver_for(
    config: &UdpConfig,
    path: ReceivePathChoice,
    index: usize,
    socket: &Socket,
    local: SocketAddr,
    packets: ShardWriter,
) -> Receiver {
    let max = config.max_datagram_size_b;
    let read = |packets| {
        // The stage checked at start that the ring holds a datagram.
        let publisher = DatagramPublisher::new(packets, config.group_size, max as usize, local.port())
            .unwrap_or_else(|e| panic!("stage {}: {e}", config.name));
        Receiver::Read(RefCell::new(publisher))
    };
    if path == ReceivePathChoice::GlommioRead {
        return read(packets);
    }
    let fd = socket.as_raw_fd();
    match UringDatagramReceiver::new(
        packets,
        fd,
        local.port(),
        max,
        config.group_size,
        config.group_timeout_us,
    ) {
        Ok(receiver) => Receiver::Uring(Rc::new(receiver)),
        Err((packets, e)) => {
            tracing::warn!(
                "stage {}: executor {index} cannot set up io_uring receive ({e}); using recvmmsg",
                config.name
            );
            read(packets)
        }
    }
}

/// Starts a UDP stage publishing into `bus`: one executor and socket per
/// configured core. Binding happens here: a taken address fails the start.
pub(crate) fn start(
    bus: &BusDir,
    mode: u32,
    heartbeat: Option<Duration>,
    config: UdpConfig,
) -> Result<Stage, EngineError> {
    let name = config.name.clone();
    let io_error = |what: String| {
        let stage = name.clone();
        move |source: std::io::Error| EngineError::Io {
            stage,
            source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
        }
    };
    let placements = executor::placements(&config.thread_processor_affinity);
    let Some((_, buffers)) = uring_path::geometry(config.ring_size_b, config.max_datagram_size_b) else {
        let message = format!(
            "ring_size_b = {} holds fewer than {} datagrams of max_datagram_size_b = {}: raise ring_size_b \
             or lower max_datagram_size_b",
            config.ring_size_b,
            uring_path::MIN_SLOTS,
            config.max_datagram_size_b
        );
        return Err(io_error("configuration".into())(std::io::Error::other(message)));
    };
    let what = "io_uring multishot recvmsg into shared memory";
    let receive_path = stage::choose_receive_path(&name, config.receive_path, buffers as u16, what)?;

    // Bind every socket first: a taken address fails the start cleanly.
    // SO_REUSEPORT would let this stage share a port with another process
    // of the same user, which would then get part of the flows: unless the
    // stage joins multicast groups (where receivers share a port by
    // design), it first binds the address alone, so that a taken port
    // fails here.
    if config.multicast_groups.is_empty() && config.address.port() != 0 {
        std::net::UdpSocket::bind(config.address).map_err(io_error(format!(
            "bind {} (alone, to check that no other socket receives there)",
            config.address
        )))?;
    }
    let socket_error = |e: socket::SocketError| EngineError::Io {
        stage: name.clone(),
        source: std::io::Error::other(e.to_string()),
    };
    let interface = socket::interface_index(&config).map_err(socket_error)?;
    let mut sockets = Vec::new();
    let mut address = config.address;
    for index in 0..placements.len() {
        let groups: Vec<IpAddr> = config
            .multicast_groups
            .iter()
            .enumerate()
            .filter(|(i, _)| i % placements.len() == index)
            .map(|(_, &g)| g)
            .collect();
        let (socket, clamped) = socket::open(&config, address, &groups, interface).map_err(socket_error)?;
        if index == 0 {
            address = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| io_error("local address".into())(std::io::Error::last_os_error()))?;
            if let Some((key, asked, granted)) = clamped {
                tracing::warn!(
                    "stage {name}: {key} = {asked} was clamped by the kernel to {granted} \
                     (raise net.core.rmem_max, or run with CAP_NET_ADMIN)"
                );
            }
        }
        sockets.push(socket);
    }
    tracing::info!("stage {name}: receiving UDP on {address} with {} socket(s)", sockets.len());
    let bound = Arc::new(BoundAddress::default());
    bound.set(address);

    let shards = placements.len() as u32;
    let create = |channel: &str, capacity: u64, shards: u32| {
        stage::create_channel(bus, mode, &name, channel, capacity, shards)
    };
    let packets = create(PACKET_GROUP, config.ring_size_b, shards)?;
    // Nothing connects over UDP; the channel is there so that every stage
    // has the same channels.
    let events = create(CONNECTION_EVENTS, CONTROL_RING, 1)?;
    let stats_channel = create(SOCKET_STATS, CONTROL_RING, 1)?;
    let outcomes_channel = create(EGRESS_OUTCOMES, CONTROL_RING, 1)?;
    let (outcomes, outcome_reports) = std::sync::mpsc::channel();
    // Only executor 0 sends: it alone answers for each egress record.
    let outcome_thread = egress::spawn_outcome_publisher(
        name.clone(),
        stage::shard(&outcomes_channel, 0)?,
        1,
        outcome_reports,
    )
    .map_err(io_error("start the egress outcome thread".into()))?;
    let latest = Arc::new(Mutex::new(None));
    let (sink, stats_thread) = stats::spawn_publisher(
        name.clone(),
        stage::shard(&stats_channel, 0)?,
        placements.len(),
        latest.clone(),
    )
    .map_err(io_error("start the statistics thread".into()))?;

    let mut senders: Vec<InboxSender> = Vec::new();
    let mut executors = Vec::new();
    let mut heartbeats = Vec::new();
    let mut placements_got = Vec::new();
    for (index, (core, socket)) in placements.iter().zip(sockets).enumerate() {
        let (sender, inbox) = inbox::inbox().map_err(io_error("create an inbox".into()))?;
        senders.push(sender);
        let setup = ExecutorSetup {
            index,
            config: config.clone(),
            receive_path,
            socket,
            local: address,
            packets: stage::shard(&packets, index as u32)?,
            inbox,
            stats: sink.clone(),
            outcomes: outcomes.clone(),
        };
        let beating = stage::heartbeat(&name, index, heartbeat, &mut heartbeats);
        let (handle, placement) =
            executor::spawn(&name, index, *core, config.thread_priority, beating, move || {
                run_executor(setup)
            })?;
        executors.push(handle);
        placements_got.push(placement);
    }
    drop(sink);
    drop(outcomes);
    let egress_thread = egress::spawn_reader(bus.clone(), name.clone(), &senders[..1])
        .map_err(io_error("start the egress thread".into()))?;
    Ok(Stage {
        name,
        executors,
        inboxes: senders,
        bound,
        stats: LatestStats::Udp(latest),
        receive_path: match receive_path {
            ReceivePathChoice::IoUring => ReceivePath::IoUringMultishot,
            _ => ReceivePath::GlommioRead,
        },
        heartbeats,
        placements: placements_got,
        stats_thread: Some(stats_thread),
        egress_thread: Some(egress_thread),
        outcome_thread: Some(outcome_thread),
        producers: vec![packets, events, stats_channel, outcomes_channel],
    })
}
