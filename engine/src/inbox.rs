//! An executor's inbox: how other threads (the acceptor on another
//! executor, the egress reader, the engine handle) talk to an executor.
//! Commands go through a std channel; a byte on a socket pair wakes the
//! executor, which awaits that socket like any other (so it parks when idle).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc;

use glommio::io::PollableFd;
use socket2::Socket;

use crate::egress::EgressId;

/// A connection handed to an executor (by the acceptor, or by itself).
pub(crate) struct NewConnection {
    pub(crate) socket: Socket,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// Bytes to send: to the stage's connections, or as a datagram.
#[derive(Debug)]
pub(crate) struct Egress {
    /// Which record of the egress channel: its outcome names it.
    pub(crate) id: EgressId,
    pub(crate) target: EgressTarget,
    pub(crate) bytes: Vec<u8>,
}

/// Where an egress record goes, as its record kind says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EgressTarget {
    /// An egress record (kind 4): one connection, or every connection
    /// (a UDP stage sends the latter to its `egress_destination`).
    Connections(Option<u64>),
    /// A datagram egress record (kind 8): this address, or the stage's
    /// `egress_destination`.
    Datagram(Option<SocketAddr>),
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

impl Inbox {
    /// Registers the inbox with the current executor's reactor.
    pub(crate) fn poll_here(self) -> io::Result<PolledInbox> {
        Ok(PolledInbox { commands: self.commands, wake: PollableFd::new(self.wake)? })
    }
}

pub(crate) fn inbox() -> io::Result<(InboxSender, Inbox)> {
    let (tx, rx) = mpsc::channel();
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    Ok((InboxSender { commands: tx, wake: wake_tx }, Inbox { commands: rx, wake: wake_rx }))
}

/// The receiving side of an inbox, on its executor.
pub(crate) struct PolledInbox {
    commands: mpsc::Receiver<Command>,
    wake: PollableFd<UnixStream>,
}

impl PolledInbox {
    /// The next command; waits (parked, no spinning) until one comes.
    pub(crate) async fn next(&self) -> Command {
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
