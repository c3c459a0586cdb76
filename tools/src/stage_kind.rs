//! Whether a stage is a TCP or a UDP stage, told by the records it
//! publishes on `<stage>/socket_stats`: SocketStats (kind 3) for TCP,
//! UdpSocketStats (kind 7) for UDP. The engine writes one a second from
//! the stage's start, traffic or not, so the answer comes within a second
//! and never depends on a flag the user could get wrong.

use std::time::{Duration, Instant};

use anyhow::Context;
use engine::records;
use engine::{SOCKET_STATS, channel_name};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

/// Longest wait for a stage's first statistics record: it publishes one a
/// second, so a stage that just started has one within this.
pub const FIRST_STATS_WAIT: Duration = Duration::from_millis(2500);

/// What kind of sockets a stage owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// A TCP server or client stage: connections.
    Tcp,
    /// A UDP stage: datagrams.
    Udp,
}

impl StageKind {
    /// The kind of stage whose socket_stats carry records of `kind`.
    pub fn of_stats_record(kind: u16) -> Option<Self> {
        match kind {
            records::KIND_SOCKET_STATS => Some(Self::Tcp),
            records::KIND_UDP_SOCKET_STATS => Some(Self::Udp),
            _ => None,
        }
    }

    /// The kind of `stage`, from its latest statistics record, waiting up
    /// to `wait` for one; `None` when none came in time. Fails when the
    /// stage has no statistics channel.
    pub fn detect(bus: &BusDir, stage: &str, wait: Duration) -> anyhow::Result<Option<Self>> {
        let channel = channel_name(stage, SOCKET_STATS);
        let mut reader = Reader::attach(bus, &channel, ReaderOptions::lossy().start(StartAt::Latest))
            .with_context(|| format!("stage {stage}"))?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match reader.recv_timeout(left)? {
                Some(Event::Record(sample)) => {
                    if let Some(kind) = Self::of_stats_record(sample.kind()) {
                        return Ok(Some(kind));
                    }
                }
                Some(Event::Restarted { .. }) => {}
                Some(Event::Ended) | None => return Ok(None),
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}
