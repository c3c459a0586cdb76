//! Every `unsafe` block and every atomic of the engine: a few system calls
//! libc offers only as `unsafe fn`, the counters shared between executor
//! threads and other threads, and ([`uring`]) the raw io_uring of the receive path
//! with its provided buffer ring.

pub(crate) mod udp;
pub(crate) mod uring;

use std::io;

/// Nanoseconds of `CLOCK_MONOTONIC` (the packets' `rx_monotonic_ns`).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the calling thread under `SCHED_FIFO` at `priority` (1..=99).
/// Fails with `EPERM` without CAP_SYS_NICE (or an `RLIMIT_RTPRIO` that
/// allows it).
pub(crate) fn set_fifo_priority(priority: u8) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 means the calling thread. No memory is retained by the kernel.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Takes ownership of a socket fd that io_uring's accept just created.
pub(crate) fn adopt_socket(fd: i32) -> socket2::Socket {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the result of a completed accept: a new open socket
    // that nothing else refers to, so the `Socket` may own and close it.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}

/// How many connections a stage has open, across its executors. The
/// acceptor counts up; the executor that closes a connection counts down.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections(std::sync::atomic::AtomicUsize);

impl OpenConnections {
    /// Counts a new connection if fewer than `max` are open.
    pub(crate) fn try_open(&self, max: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Relaxed: a counter; it orders no other memory. Only the acceptor
        // increments, so the check-then-add cannot overshoot `max`.
        if self.0.load(Relaxed) >= max {
            return false;
        }
        self.0.fetch_add(1, Relaxed);
        true
    }

    pub(crate) fn close(&self) {
        // Relaxed: as above.
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many times an executor has proven that it runs its tasks: bumped by
/// a task on that executor, read by a watchdog thread.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat(std::sync::atomic::AtomicU64);

impl Heartbeat {
    pub(crate) fn beat(&self) {
        // Relaxed: a counter that publishes no other memory; the watchdog
        // only compares its values over time.
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        // Relaxed: see `beat`.
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
