//! Is a process still there? Pid, start time and pid namespace, read from
//! `/proc`: no daemon, and robust against pid reuse.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use crate::ring::realtime_ns;
use crate::ring::{ReaderIdentity, SlotSnapshot, monotonic_ns};

/// A reader in another pid namespace is judged by its heartbeat instead of
/// its pid; it counts as dead after this much silence.
pub const FOREIGN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// The start time (clock ticks since boot) of process `pid`, or `None` when
/// there is no such process or it is a zombie.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: parse from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 22 is the 19th after the state.
    fields.nth(18)?.parse().ok()
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
pub(crate) fn pid_alive(id: &ReaderIdentity) -> Option<bool> {
    if id.pid_ns != own_identity().pid_ns {
        return None;
    }
    Some(process_start_time(id.pid).is_some_and(|t| id.start_time == 0 || t == id.start_time))
}

/// Whether the reader holding a slot is gone, for reaping.
pub(crate) fn slot_holder_dead(slot: &SlotSnapshot) -> bool {
    match pid_alive(&slot.identity) {
        Some(alive) => !alive,
        None => {
            monotonic_ns().saturating_sub(slot.heartbeat_ns) > FOREIGN_HEARTBEAT_TIMEOUT.as_nanos() as u64
        }
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

    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let id = ReaderIdentity { pid, start_time: 1, pid_ns: own_identity().pid_ns };
        assert_eq!(pid_alive(&id), Some(false));
    }
}
