//! What every executor runs besides its sockets, whatever its stage's kind:
//! the flusher that publishes partial groups, and the driver of an io_uring
//! receive path. Stages plug in through [`Groups`] and [`UringDriven`].
//!
//! The flusher publishes a partial group as soon as a turn of the executor
//! adds no packet (latency first), and at the latest after
//! `group_timeout_us`; the receive paths kick it whenever they add packets.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::PollableFd;
use glommio::timer::sleep;

/// While a channel is full, a receive path retries at most this often.
pub(crate) const MAX_STALL_BACKOFF: Duration = Duration::from_millis(2);
/// The first retry of a full channel.
pub(crate) const MIN_STALL_BACKOFF: Duration = Duration::from_micros(50);

/// What one pass of an io_uring receive path did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Completions were handled: this many packets.
    Busy { packets: u64 },
    /// Nothing happened: wait for the ring.
    Idle,
    /// A gated reader holds ring space the kernel needs: retry the claim
    /// after a pause.
    Stalled,
}

/// A receive path driven by [`drive_uring`].
pub(crate) trait UringDriven {
    /// Handles what completed, publishes, and gives buffers back.
    fn pass(&self) -> Pass;
    /// Readable when the ring has work for a pass.
    fn wake_fd(&self) -> RawFd;
}

/// The groups an executor is filling, for the flusher.
pub(crate) trait Groups {
    /// How long the open group has waited, if it has packets.
    fn open_age(&self) -> Option<Duration>;
    /// Publishes the open group.
    fn flush_groups(&self);
    /// Runs after each flush and with each kick: retries held-back work
    /// (e.g. connection events waiting for room).
    fn after_flush(&self) {}
}

/// How busy an executor is: packets committed so far, and the flusher's
/// kick. Every receive path of the executor counts here.
pub(crate) struct Activity {
    packets: Cell<u64>,
    kick: LocalSender<()>,
    group_timeout_us: u64,
}

impl Activity {
    /// The activity and the flusher's end of the kick channel.
    pub(crate) fn new(group_timeout_us: u64) -> (Rc<Self>, LocalReceiver<()>) {
        let (kick, kicks) = local_channel::new_bounded(1);
        (Rc::new(Self { packets: Cell::new(0), kick, group_timeout_us }), kicks)
    }

    /// Whether every packet is published at once (`group_timeout_us` = 0).
    pub(crate) fn flush_each_packet(&self) -> bool {
        self.group_timeout_us == 0
    }

    /// Counts `packets` more packets in the open groups and wakes the
    /// flusher (unless groups are flushed at once).
    pub(crate) fn added(&self, packets: u64) {
        if packets == 0 {
            return;
        }
        self.packets.set(self.packets.get() + packets);
        if !self.flush_each_packet() {
            let _ = self.kick.try_send(());
        }
    }
}

/// Publishes partial groups: as soon as a turn of the executor added no
/// packet, or when the oldest packet has waited `group_timeout_us`.
pub(crate) async fn flusher(groups: Rc<impl Groups>, activity: Rc<Activity>, kicks: LocalReceiver<()>) {
    let timeout = Duration::from_micros(activity.group_timeout_us);
    while kicks.recv().await.is_some() {
        loop {
            let before = activity.packets.get();
            future::yield_now().await;
            let Some(age) = groups.open_age() else { break };
            if activity.packets.get() == before || age >= timeout {
                groups.flush_groups();
                break;
            }
        }
        groups.after_flush();
    }
}

/// Runs an executor's io_uring receive path: passes while there is work,
/// yielding between passes; parks on the ring's eventfd when idle, or
/// retries on a backing-off timer while a gated reader holds the ring.
pub(crate) async fn drive_uring(stage: &str, path: Rc<impl UringDriven>, activity: Rc<Activity>) {
    let ring = match PollableFd::new(WakeFd(path.wake_fd())) {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!("stage {stage}: cannot poll the io_uring: {e}");
            return;
        }
    };
    let mut stall_backoff = MIN_STALL_BACKOFF;
    loop {
        match path.pass() {
            Pass::Busy { packets } => {
                stall_backoff = MIN_STALL_BACKOFF;
                activity.added(packets);
                future::yield_now().await;
            }
            Pass::Idle => {
                if let Err(e) = ring.readable().await {
                    tracing::error!("stage {stage}: polling the io_uring failed: {e}");
                    sleep(Duration::from_millis(10)).await;
                }
            }
            Pass::Stalled => {
                let _ = future::or(async { ring.readable().await.is_ok() }, async {
                    sleep(stall_backoff).await;
                    true
                })
                .await;
                stall_backoff = (stall_backoff * 2).min(MAX_STALL_BACKOFF);
            }
        }
    }
}

/// A ring's eventfd, for glommio to poll; the ring owns (and closes) it.
struct WakeFd(RawFd);

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
