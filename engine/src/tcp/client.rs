//! The TCP client stage's own part: connecting, and reconnecting forever.
//! Each connection gets a new connection id and is served by
//! [`super::connection`] like an accepted one; when it ends (peer closed,
//! error, receive timeout) the stage connects again after a capped,
//! jittered exponential backoff. Host names are resolved on every attempt.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::io::PollableFd;
use glommio::timer::sleep;
use socket2::{Domain, Protocol, Socket, Type};

use super::connection::{self, Executor};
use crate::backoff::Backoff;
use crate::config::TcpClientConfig;
use crate::inbox::NewConnection;

/// What the executor of a client stage needs to connect.
pub(crate) struct ConnectorSetup {
    pub(crate) config: TcpClientConfig,
}

/// Connects, serves the connection until it ends, and connects again;
/// forever (until the stage stops and cancels this task).
pub(crate) async fn connect_loop(exec: Rc<Executor>, setup: ConnectorSetup) {
    let config = setup.config;
    let mut backoff = Backoff::new(
        Duration::from_millis(config.reconnect_backoff_initial_ms),
        Duration::from_millis(config.reconnect_backoff_max_ms),
    );
    let mut last_failure = String::new();
    let mut next_id = 1u64;
    loop {
        match connect(&config, &exec).await {
            Ok((socket, peer, local)) => {
                if !last_failure.is_empty() {
                    tracing::info!("stage {}: connected to {peer} after retrying", config.name);
                    last_failure.clear();
                }
                backoff.reset();
                exec.open.try_open(usize::MAX);
                let id = next_id;
                next_id += 1;
                let ended = connection::start_connection(&exec, NewConnection { socket, id, peer, local });
                // Yields or closes when the connection has ended.
                let _ = ended.recv().await;
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_failure {
                    tracing::warn!(
                        "stage {}: cannot connect to {}: {text}; retrying",
                        config.name,
                        config.address
                    );
                    last_failure = text;
                }
            }
        }
        sleep(backoff.delay()).await;
    }
}

/// Resolves the configured address (again, every time) and tries each of
/// its addresses in turn.
async fn connect(config: &TcpClientConfig, exec: &Executor) -> io::Result<(Socket, SocketAddr, SocketAddr)> {
    let address = config.address.clone();
    // Name resolution blocks: run it off the executor.
    let addrs: Vec<SocketAddr> =
        glommio::executor().spawn_blocking(move || address.to_socket_addrs().map(Iterator::collect)).await?;
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut last_error =
        io::Error::new(io::ErrorKind::NotFound, format!("{} resolved to no address", config.address));
    for addr in addrs {
        match connect_to(addr, config, exec, timeout).await {
            Ok(socket) => {
                let local = socket.local_addr()?.as_socket().unwrap_or(addr);
                return Ok((socket, addr, local));
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// One non-blocking connect to `addr`, bounded by `timeout`.
async fn connect_to(
    addr: SocketAddr,
    config: &TcpClientConfig,
    exec: &Executor,
    timeout: Duration,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if config.reuse_address {
        socket.set_reuse_address(true)?;
    }
    // Buffer sizes must be set before connecting to shape the TCP window.
    connection::configure(&socket, &exec.settings)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let socket = PollableFd::new(socket)?;
    let connected = future::or(async { socket.writable().await.map(|()| true) }, async {
        sleep(timeout).await;
        Ok(false)
    })
    .await?;
    let socket = socket.into_inner();
    if !connected {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out after {} ms", timeout.as_millis()),
        ));
    }
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    exec.warn_once_if_clamped(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let delay = backoff.delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_millis(1000));
        }
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(100));
    }
}
