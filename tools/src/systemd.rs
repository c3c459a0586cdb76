//! systemd's service protocol for `ringest run` under `Type=notify`,
//! without libsystemd (`sd_notify(3)`): one datagram per notification to
//! `$NOTIFY_SOCKET`, a socket path, or a name in the abstract namespace
//! when it starts with `@`. (The `sd-notify` crate connects to the value as
//! a path, which fails for the abstract sockets systemd uses by default;
//! the protocol is small enough to speak here.)
//!
//! - `READY=1` once every stage is bound (servers) or connecting (clients);
//! - `STATUS=` lines saying what the daemon does or waits for;
//! - `STOPPING=1` when a stop signal arrives;
//! - `WATCHDOG=1` every half `$WATCHDOG_USEC` (`WatchdogSec=`), sent only
//!   while every executor proves it runs its tasks (the engine's heartbeat,
//!   [`engine::Liveness`]). A wedged executor stops the pings, so systemd
//!   kills and restarts the daemon.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::Liveness;

const READY: &str = "READY=1";
const STOPPING: &str = "STOPPING=1";
const WATCHDOG: &str = "WATCHDOG=1";

/// Heartbeats per watchdog ping interval: an executor has several chances
/// to beat between two checks, so a busy machine does not miss a ping.
const BEATS_PER_PING: u32 = 4;
/// Shortest interval between watchdog pings.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(20);

/// The daemon's link to systemd.
#[derive(Debug)]
pub struct Systemd {
    /// `$WATCHDOG_USEC` when the watchdog is on for this process.
    watchdog: Option<Duration>,
    pinger: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Systemd {
    /// Reads `$WATCHDOG_USEC`, and `$WATCHDOG_PID` which, when set, must be
    /// this process (`sd_watchdog_enabled(3)`).
    pub fn from_env() -> Self {
        let variable = |name| std::env::var(name).ok().and_then(|value| value.parse::<u64>().ok());
        let ours = variable("WATCHDOG_PID").is_none_or(|pid| pid == u64::from(std::process::id()));
        let watchdog = variable("WATCHDOG_USEC").filter(|&usec| usec > 0 && ours).map(Duration::from_micros);
        Self { watchdog, pinger: None }
    }

    /// How often the engine's executors must beat for the watchdog, if on.
    pub fn heartbeat_period(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| ping_interval(timeout) / BEATS_PER_PING)
    }

    /// Starts pinging the watchdog (if on) while every executor of
    /// `liveness` beats.
    pub fn start_watchdog(&mut self, liveness: Liveness) -> anyhow::Result<()> {
        let Some(timeout) = self.watchdog else { return Ok(()) };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("watchdog".to_owned())
            .spawn(move || watch(&liveness, ping_interval(timeout), &stopped))?;
        self.pinger = Some((stop, thread));
        Ok(())
    }

    pub fn status(&self, text: &str) {
        send(&[&status(text)]);
    }

    pub fn ready(&self, text: &str) {
        send(&[READY, &status(text)]);
    }

    /// Says the daemon stops, and stops the watchdog pings: stopping is
    /// bounded by systemd's stop timeout instead.
    pub fn stopping(&mut self, text: &str) {
        send(&[STOPPING, &status(text)]);
        if let Some((stop, thread)) = self.pinger.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// Half the watchdog timeout, as `sd_watchdog_enabled(3)` advises; at
/// least [`MIN_PING_INTERVAL`], so that an absurd `WatchdogSec` cannot make
/// the watchdog thread or the heartbeat tasks spin.
fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(MIN_PING_INTERVAL)
}

/// A `STATUS=` line: one line of text.
fn status(text: &str) -> String {
    format!("STATUS={}", text.replace('\n', " "))
}

/// Sends `assignments` in one notification, if the service manager asked
/// for them; a failure is logged once (the daemon runs on without).
fn send(assignments: &[&str]) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = notify(&target, assignments) {
        static WARN_ONCE: Once = Once::new();
        WARN_ONCE.call_once(|| {
            tracing::warn!("cannot notify systemd at NOTIFY_SOCKET={}: {e}", target.to_string_lossy());
        });
    }
}

fn notify(target: &OsStr, assignments: &[&str]) -> io::Result<()> {
    let bytes = target.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(target)?,
        None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "neither a path nor @name")),
    };
    let mut message = assignments.join("\n");
    message.push('\n');
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    if sent == message.len() { Ok(()) } else { Err(io::Error::new(io::ErrorKind::WriteZero, "truncated")) }
}

/// Every `interval`, pings the watchdog if every executor has beaten since
/// the previous check; otherwise says which have not, and does not ping.
fn watch(liveness: &Liveness, interval: Duration, stopped: &mpsc::Receiver<()>) {
    let mut previous: Vec<u64> = liveness.beats().iter().map(|&(_, count)| count).collect();
    let mut last_seen = vec![Instant::now(); previous.len()];
    let mut wedged_before = false;
    send(&[WATCHDOG]);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        let now = Instant::now();
        let mut wedged = Vec::new();
        for (i, (name, count)) in liveness.beats().into_iter().enumerate() {
            if count != previous[i] {
                previous[i] = count;
                last_seen[i] = now;
            } else {
                wedged.push(format!("{name} ({:.1} s)", now.duration_since(last_seen[i]).as_secs_f64()));
            }
        }
        if wedged.is_empty() {
            if wedged_before {
                tracing::warn!("watchdog: every executor runs again");
                send(&[&status("running"), WATCHDOG]);
            } else {
                send(&[WATCHDOG]);
            }
        } else {
            let text = format!("watchdog: executor not running its tasks: {}", wedged.join(", "));
            if !wedged_before {
                tracing::error!("{text}; no watchdog ping, systemd will restart the daemon");
            }
            send(&[&status(&text)]);
        }
        wedged_before = !wedged.is_empty();
    }
}
