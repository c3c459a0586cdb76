//! The TCP server stage's own part: listening and accepting. Executor 0
//! binds (retrying until it can), accepts up to `maximum_connections`
//! clients and hands each to an executor of the stage, round robin; the
//! connection is then served by [`super::connection`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::io::PollableFd;
use glommio::timer::sleep;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::connection::{self, Executor, Receiver};
use crate::config::TcpServerConfig;
use crate::inbox::{Command, InboxSender, NewConnection};
use crate::records::ConnectionEvent;
use crate::records::DisconnectReason;
use crate::stage::BoundAddress;

/// Bind retries back off up to this.
const MAX_BIND_BACKOFF: Duration = Duration::from_secs(2);

/// What executor 0 of a server stage needs to accept.
pub(crate) struct AcceptorSetup {
    pub(crate) config: TcpServerConfig,
    pub(crate) executors: Vec<InboxSender>,
    pub(crate) bound: Arc<BoundAddress>,
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
/// failure once and counts every one (socket stats: `bind_failures`).
async fn bind_with_retry(exec: &Executor, config: &TcpServerConfig) -> Socket {
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
                exec.bind_failures.set(exec.bind_failures.get() + 1);
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

/// Accepts connections and hands them to the executors, round robin: with
/// a multishot accept on the io_uring path, else on glommio's readiness.
pub(crate) async fn accept_loop(exec: Rc<Executor>, setup: AcceptorSetup) {
    let config = &setup.config;
    let mut handout = Handout { next_id: 1, next_executor: 0 };
    loop {
        let socket = bind_with_retry(&exec, config).await;
        let local = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(config.address);
        let failure = match &exec.receiver {
            Receiver::Uring(receiver) => {
                let accepted = receiver.accept(socket.as_raw_fd());
                setup.bound.set(local);
                tracing::info!("stage {}: listening on {local} (io_uring multishot accept)", config.name);
                let failure = loop {
                    match accepted.recv().await {
                        Some(Ok(connection)) => handout.hand_out(&exec, &setup, connection, local),
                        Some(Err(e)) if is_transient_accept_error(&e) => {
                            tracing::warn!("stage {}: accept: {e}", config.name);
                            sleep(Duration::from_millis(10)).await;
                        }
                        Some(Err(e)) => break e,
                        None => break io::Error::other("the accept channel closed"),
                    }
                };
                receiver.stop_accepting();
                failure
            }
            Receiver::Read(_) => match PollableFd::new(socket) {
                Ok(listener) => {
                    setup.bound.set(local);
                    tracing::info!("stage {}: listening on {local}", config.name);
                    accept_ready(&exec, &setup, &listener, local, &mut handout).await
                }
                Err(e) => {
                    tracing::error!("stage {}: cannot poll the listener: {e}", config.name);
                    sleep(MAX_BIND_BACKOFF).await;
                    continue;
                }
            },
        };
        tracing::warn!("stage {}: listener failed ({failure}); rebuilding it", config.name);
    }
}

/// Accepts whenever glommio reports the listener readable, until it fails.
async fn accept_ready(
    exec: &Rc<Executor>,
    setup: &AcceptorSetup,
    listener: &PollableFd<Socket>,
    local: SocketAddr,
    handout: &mut Handout,
) -> io::Error {
    loop {
        if let Err(e) = listener.readable().await {
            return e.into();
        }
        loop {
            match listener.get_ref().accept() {
                Ok((socket, _)) => handout.hand_out(exec, setup, socket, local),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!("stage {}: accept: {e}", setup.config.name);
                    sleep(Duration::from_millis(10)).await;
                    break;
                }
                Err(e) => return e,
            }
        }
    }
}

/// Numbers accepted connections and deals them out to the executors.
struct Handout {
    next_id: u64,
    next_executor: usize,
}

impl Handout {
    /// Gives an accepted connection an id and an executor, or rejects it
    /// over `maximum_connections`.
    fn hand_out(&mut self, exec: &Rc<Executor>, setup: &AcceptorSetup, socket: Socket, listener: SocketAddr) {
        let config = &setup.config;
        let id = self.next_id;
        self.next_id += 1;
        let local = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(listener);
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket()).unwrap_or(local);
        if !exec.open.try_open(config.maximum_connections as usize) {
            reject(exec, id, peer, local);
            return;
        }
        if let Err(e) =
            socket.set_nonblocking(true).and_then(|()| connection::configure(&socket, &exec.settings))
        {
            tracing::warn!("stage {}: cannot configure connection {id} from {peer}: {e}", config.name);
        }
        exec.warn_once_if_clamped(&socket);
        let target = self.next_executor % setup.executors.len();
        self.next_executor += 1;
        let conn = NewConnection { socket, id, peer, local };
        if target == exec.index {
            drop(connection::start_connection(exec, conn));
        } else {
            setup.executors[target].send(Command::Connection(conn));
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
