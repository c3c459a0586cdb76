//! Is a process still there? Pid, start time and pid namespace, read from
//! `/proc`: no daemon, and robust against pid reuse.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use crate::ring::realtime_ns;
use crate::ring::{ReaderIdentity, SlotSnapshot, monotonic_ns, pid_exists};

/// A reader in another pid namespace is judged by its heartbeat instead of
/// its pid; it counts as dead after this much silence.
pub const FOREIGN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/proc/PID/stat` says about process `pid`.
#[derive(Debug, PartialEq, Eq)]
enum Stat {
    /// Running (or sleeping, stopped…) since this start time.
    Started(u64),
    /// No such process, or a zombie.
    Gone,
    /// The file cannot be read (`/proc` mounted with `hidepid`, another
    /// user's process, a restricted container) or parsed.
    Unreadable,
}

fn read_stat(pid: u32) -> Stat {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        // ENOENT alone does not prove the process gone: `hidepid=2` hides
        // other users' processes that way. The caller asks `kill(pid, 0)`.
        Err(_) => return Stat::Unreadable,
    };
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: parse from the last ')'.
    let Some(close) = stat.rfind(')') else { return Stat::Unreadable };
    let mut fields = stat[close + 1..].split_ascii_whitespace();
    match fields.next() {
        // Field 3, the state: a zombie or a dying process is gone.
        Some("Z" | "X") => Stat::Gone,
        // Field 22 is the 19th after the state.
        Some(_) => fields.nth(18).and_then(|t| t.parse().ok()).map_or(Stat::Unreadable, Stat::Started),
        None => Stat::Unreadable,
    }
}

/// The start time (clock ticks since boot) of process `pid`, or `None` when
/// it cannot be read.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    match read_stat(pid) {
        Stat::Started(t) => Some(t),
        Stat::Gone | Stat::Unreadable => None,
    }
}

/// The inode of our pid namespace.
fn own_pid_ns() -> u64 {
    std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0)
}

/// This process, as recorded in channel headers and reader slots.
pub(crate) fn own_identity() -> ReaderIdentity {
    static ME: OnceLock<ReaderIdentity> = OnceLock::new();
    let pid = std::process::id();
    let me = *ME.get_or_init(|| ReaderIdentity {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        pid_ns: own_pid_ns(),
    });
    if me.pid == pid {
        me
    } else {
        // After fork(): recompute rather than report the parent.
        ReaderIdentity { pid, start_time: process_start_time(pid).unwrap_or(0), pid_ns: own_pid_ns() }
    }
}

/// Whether a process is alive: `Some(bool)` when we can tell from its pid
/// (same pid namespace), `None` when we cannot.
///
/// Only proof of absence counts as dead: `kill(pid, 0)` failing with ESRCH,
/// a zombie, or a different start time (the pid was reused). A process we
/// may not signal (EPERM) or whose `/proc` entry is hidden (`hidepid`) is
/// alive: judging it dead would reap a lagging gated reader of another
/// user and silently make it lossy.
pub(crate) fn pid_alive(id: &ReaderIdentity) -> Option<bool> {
    if id.pid_ns != own_identity().pid_ns {
        return None;
    }
    if !pid_exists(id.pid) {
        return Some(false);
    }
    Some(match read_stat(id.pid) {
        Stat::Started(t) => id.start_time == 0 || t == id.start_time,
        Stat::Gone => false,
        Stat::Unreadable => true,
    })
}

/// Whether the producer that wrote a channel header is alive: by its pid
/// in our pid namespace, else by its heartbeat (`heartbeat_ns`, 0: never
/// beat), which a producer refreshes every [`PRODUCER_HEARTBEAT_EVERY`].
pub(crate) fn producer_alive(id: &ReaderIdentity, heartbeat_ns: u64) -> bool {
    producer_liveness(id, heartbeat_ns).unwrap_or(false)
}

/// What introspection can tell of a producer: by its pid in our pid
/// namespace, else by its heartbeat; `None` only for a producer in another
/// pid namespace that never beat (`heartbeat_ns` 0).
pub(crate) fn producer_liveness(id: &ReaderIdentity, heartbeat_ns: u64) -> Option<bool> {
    pid_alive(id).or_else(|| (heartbeat_ns != 0).then(|| heartbeat_fresh(heartbeat_ns)))
}

/// Whether a CLAIMING slot was abandoned: its claimant stores a heartbeat
/// right after claiming and activates the slot microseconds later, so a
/// claim silent for [`FOREIGN_HEARTBEAT_TIMEOUT`] died on the way.
pub(crate) fn claim_abandoned(slot: &SlotSnapshot) -> bool {
    !heartbeat_fresh(slot.heartbeat_ns)
}

/// How often a producer refreshes its heartbeat.
pub(crate) const PRODUCER_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

fn heartbeat_fresh(heartbeat_ns: u64) -> bool {
    monotonic_ns().saturating_sub(heartbeat_ns) <= FOREIGN_HEARTBEAT_TIMEOUT.as_nanos() as u64
}

/// Whether the reader holding a slot is gone, for reaping.
pub(crate) fn slot_holder_dead(slot: &SlotSnapshot) -> bool {
    match pid_alive(&slot.identity) {
        Some(alive) => !alive,
        None => !heartbeat_fresh(slot.heartbeat_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_reused_pid_is_not() {
        let me = own_identity();
        assert!(me.start_time > 0);
        assert_eq!(pid_alive(&me), Some(true));
        let reused = ReaderIdentity { start_time: me.start_time + 1, ..me };
        assert_eq!(pid_alive(&reused), Some(false));
    }

    /// No such process: the pid of a child that exited and was waited
    /// for. Start time 0 ("unknown") so that only the existence check can
    /// decide, not a start-time comparison.
    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let id = ReaderIdentity { pid, start_time: 0, pid_ns: own_identity().pid_ns };
        assert_eq!(pid_alive(&id), Some(false));
    }

    /// A live process with another start time is a different process that
    /// reused the pid: dead, as far as the slot is concerned.
    #[test]
    fn live_child_with_another_start_time_is_not_the_holder() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start_time = process_start_time(pid).expect("a live child has a start time");
        let ns = own_identity().pid_ns;
        assert_eq!(pid_alive(&ReaderIdentity { pid, start_time, pid_ns: ns }), Some(true));
        assert_eq!(pid_alive(&ReaderIdentity { pid, start_time: 0, pid_ns: ns }), Some(true));
        assert_eq!(pid_alive(&ReaderIdentity { pid, start_time: start_time + 1, pid_ns: ns }), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Pid 0 and values that are negative as a `pid_t` name process groups
    /// for `kill`: never a live holder.
    #[test]
    fn pids_that_name_process_groups_are_dead() {
        let ns = own_identity().pid_ns;
        for pid in [0, u32::MAX, 1 << 31] {
            assert_eq!(
                pid_alive(&ReaderIdentity { pid, start_time: 0, pid_ns: ns }),
                Some(false),
                "pid {pid}"
            );
        }
    }

    #[test]
    fn foreign_namespace_is_judged_by_heartbeat() {
        let foreign = ReaderIdentity { pid: 1, start_time: 0, pid_ns: own_identity().pid_ns ^ 1 };
        assert_eq!(pid_alive(&foreign), None);
        assert!(producer_alive(&foreign, monotonic_ns()));
        assert!(!producer_alive(&foreign, 0));
        assert_eq!(producer_liveness(&foreign, monotonic_ns()), Some(true));
        let stale =
            monotonic_ns().saturating_sub(FOREIGN_HEARTBEAT_TIMEOUT.as_nanos() as u64 + 1_000_000_000);
        assert_eq!(producer_liveness(&foreign, stale.max(1)), Some(false));
        assert_eq!(producer_liveness(&foreign, 0), None, "never beat: cannot tell");
    }
}
