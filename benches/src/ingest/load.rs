//! The load generator of every ingest run (`bench-load`): a few threads
//! drive many non-blocking sockets through epoll, so 10,000 connections are
//! 10,000 sockets, not 10,000 threads.
//!
//! Every message has the same size and starts with a
//! [`MessageHeader`](super::message::MessageHeader) stamped right before
//! its first byte is written (`CLOCK_MONOTONIC`) and a per-connection
//! sequence number; the rest of it is fixed per connection. Without a rate
//! each connection writes as fast as the socket takes bytes (at most
//! [`WRITES_PER_TURN`] writes before the thread turns to its next
//! connection). With an aggregate rate each thread schedules its share of
//! the messages at even intervals, round robin over its connections; a
//! connection that the receiver pushes back on owes its messages and
//! writes them as soon as it can (stamped then). The report gives every
//! connection's bytes and, with hashing on, their sha256.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU64;
use std::sync::Barrier;
use std::time::Duration;

use rustix::event::epoll;
use sha2::{Digest, Sha256};

use super::message::{HEADER_LEN, MessageHeader, filler};
use super::monotonic_ns;
use super::procfs;
use super::results::{LoadReport, SentStream};

/// Writes one connection may do before its thread turns to the next.
pub const WRITES_PER_TURN: usize = 16;
/// How long connecting one socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait in one epoll call, so the deadline is never missed by much.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Bytes per message, at least [`HEADER_LEN`].
    pub size: usize,
    /// Messages per second over all connections; `None`: as fast as possible.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Sending threads (at most one per connection).
    pub threads: usize,
    /// Whether to hash what each connection sends.
    pub hash: bool,
    /// Connection i's bytes come from seed + i.
    pub seed: u64,
}

/// One connection being written.
struct Conn {
    stream: TcpStream,
    local: SocketAddr,
    index: u32,
    /// The current message; `at` bytes of it are written (`at` =
    /// `buf.len()`: none in progress).
    buf: Vec<u8>,
    at: usize,
    seq: u64,
    /// Messages due but not started (rate mode).
    owed: u64,
    bytes: u64,
    messages: u64,
    hasher: Option<Sha256>,
    /// The socket said EAGAIN; epoll says when it takes bytes again.
    blocked: bool,
    /// In the thread's ready queue.
    queued: bool,
}

/// What [`Conn::pump`] stopped at.
enum Pumped {
    /// Nothing more to write now (rate mode).
    Idle,
    /// The socket is full.
    Blocked,
    /// The turn's writes are used up; more to write.
    More,
}

impl Conn {
    fn in_message(&self) -> bool {
        self.at < self.buf.len()
    }

    /// Writes until the socket blocks, nothing is owed (`paced`), or
    /// [`WRITES_PER_TURN`] writes were done.
    fn pump(&mut self, paced: bool) -> io::Result<Pumped> {
        let mut writes = 0;
        loop {
            if !self.in_message() {
                if paced {
                    if self.owed == 0 {
                        return Ok(Pumped::Idle);
                    }
                    self.owed -= 1;
                }
                let header = MessageHeader { seq: self.seq, sent_ns: monotonic_ns(), connection: self.index };
                header.write(&mut self.buf);
                self.at = 0;
            }
            if writes == WRITES_PER_TURN {
                return Ok(Pumped::More);
            }
            match (&self.stream).write(&self.buf[self.at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&self.buf[self.at..self.at + n]);
                    }
                    self.at += n;
                    self.bytes += n as u64;
                    writes += 1;
                    if !self.in_message() {
                        self.messages += 1;
                        self.seq += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(Pumped::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn report(self) -> SentStream {
        SentStream {
            local: self.local.to_string(),
            bytes: self.bytes,
            messages: self.messages,
            sha256: self.hasher.map(|h| super::hex(&h.finalize())),
        }
    }
}

/// Connects every connection, writes for `spec.duration`, and reports.
pub fn run(spec: &LoadSpec) -> io::Result<LoadReport> {
    assert!(spec.size >= HEADER_LEN, "messages need at least {HEADER_LEN} bytes");
    let threads = spec.threads.clamp(1, spec.connections.max(1));
    let barrier = Barrier::new(threads);
    let results: Vec<io::Result<(Vec<Conn>, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                std::thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn_scoped(scope, move || worker(spec, t, threads, barrier))
                    .expect("cannot start a load thread")
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut streams = Vec::new();
    let mut elapsed_ns = 0;
    let mut owed = 0;
    for result in results {
        let (conns, elapsed) = result?;
        elapsed_ns = elapsed_ns.max(elapsed);
        for c in conns {
            owed += c.owed + u64::from(c.in_message());
            streams.push((c.index, c.report()));
        }
    }
    streams.sort_by_key(|(index, _)| *index);
    let streams: Vec<SentStream> = streams.into_iter().map(|(_, s)| s).collect();
    Ok(LoadReport {
        connections: spec.connections,
        size: spec.size,
        rate: spec.rate,
        threads,
        elapsed_s: elapsed_ns as f64 / 1e9,
        bytes: streams.iter().map(|s| s.bytes).sum(),
        messages: streams.iter().map(|s| s.messages).sum(),
        messages_owed: if spec.rate.is_some() { owed } else { 0 },
        cpu: procfs::stat("self")?.cpu,
        streams,
    })
}

/// Thread `t` of `threads`: connects connections t, t + threads, ...,
/// waits for the others, then writes. Returns its connections and how long
/// it wrote (ns).
fn worker(spec: &LoadSpec, t: usize, threads: usize, barrier: &Barrier) -> io::Result<(Vec<Conn>, u64)> {
    // Sleeps end when asked, not up to 50 µs later: paced messages go out on time.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
    let connected: io::Result<Vec<Conn>> =
        (t..spec.connections).step_by(threads).map(|i| connect(spec, i)).collect();
    // Everyone waits for everyone, even after an error, or the others hang.
    barrier.wait();
    let mut conns = connected?;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, c) in conns.iter().enumerate() {
        epoll::add(
            &epoll,
            &c.stream,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::OUT | epoll::EventFlags::ET,
        )?;
    }
    let paced = spec.rate.is_some();
    // Messages per ns for this thread: its share of the connections' share.
    let rate = spec.rate.map(|r| r * conns.len() as f64 / spec.connections as f64 / 1e9);
    let mut ready: VecDeque<usize> = VecDeque::new();
    if !paced {
        ready.extend(0..conns.len());
        conns.iter_mut().for_each(|c| c.queued = true);
    }
    let mut blocked = 0usize;
    let mut scheduled = 0u64;
    let mut events = Vec::with_capacity(1024);
    let start = monotonic_ns();
    let deadline = start + spec.duration.as_nanos() as u64;
    let mut last_write = start;
    let n = conns.len() as u64;
    loop {
        let now = monotonic_ns();
        if now >= deadline || n == 0 {
            break;
        }
        if let Some(rate) = rate {
            let due = ((now - start) as f64 * rate) as u64 + 1;
            while scheduled < due {
                let i = (scheduled % n) as usize;
                scheduled += 1;
                let c = &mut conns[i];
                c.owed += 1;
                if !c.blocked && !c.queued {
                    c.queued = true;
                    ready.push_back(i);
                }
            }
        }
        for _ in 0..ready.len() {
            let Some(i) = ready.pop_front() else { break };
            let c = &mut conns[i];
            c.queued = false;
            match c.pump(paced)? {
                Pumped::Idle => {}
                Pumped::Blocked => blocked += 1,
                Pumped::More => {
                    c.queued = true;
                    ready.push_back(i);
                }
            }
            last_write = monotonic_ns();
        }
        let now = monotonic_ns();
        // Until the next paced message or the deadline, at most MAX_WAIT;
        // no wait while connections are ready.
        let mut wait = deadline.saturating_sub(now);
        if let Some(rate) = rate {
            let next_due = start + ((scheduled as f64) / rate) as u64;
            wait = wait.min(next_due.saturating_sub(now));
        }
        if !ready.is_empty() {
            wait = 0;
        }
        let wait = Duration::from_nanos(wait).min(MAX_WAIT);
        if blocked > 0 {
            let timeout =
                rustix::time::Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
            events.clear();
            match epoll::wait(&epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                let i = event.data.u64() as usize;
                let c = &mut conns[i];
                if c.blocked {
                    c.blocked = false;
                    blocked -= 1;
                    if !c.queued && (!paced || c.owed > 0 || c.in_message()) {
                        c.queued = true;
                        ready.push_back(i);
                    }
                }
            }
        } else if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    Ok((conns, last_write - start))
}

/// Connects connection `i`, non-blocking, TCP_NODELAY.
fn connect(spec: &LoadSpec, i: usize) -> io::Result<Conn> {
    let stream = TcpStream::connect_timeout(&spec.addr, CONNECT_TIMEOUT)
        .map_err(|e| io::Error::new(e.kind(), format!("connection {i} to {}: {e}", spec.addr)))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let local = stream.local_addr()?;
    let buf = filler(spec.seed.wrapping_add(i as u64), spec.size);
    Ok(Conn {
        stream,
        local,
        index: i as u32,
        at: buf.len(),
        buf,
        seq: 0,
        owed: 0,
        bytes: 0,
        messages: 0,
        hasher: spec.hash.then(Sha256::new),
        blocked: false,
        queued: false,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;
    use crate::ingest::tracker::{LatencyOptions, StreamStats};

    /// Runs `spec` against a blocking receiver; returns the load report
    /// and what each peer address delivered (with latency reassembly).
    fn against_receiver(
        mut spec: LoadSpec,
    ) -> (LoadReport, Vec<(String, crate::ingest::results::StreamReport, usize)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        spec.addr = listener.local_addr().unwrap();
        let (connections, size) = (spec.connections, spec.size);
        let receivers = std::thread::spawn(move || {
            (0..connections)
                .map(|_| {
                    let (mut stream, peer) = listener.accept().unwrap();
                    std::thread::spawn(move || {
                        let mut stats = StreamStats::new(true, Some(LatencyOptions { size, warmup: 0 }));
                        let (mut samples, mut buf) = (Vec::new(), vec![0; 4096]);
                        loop {
                            let n = stream.read(&mut buf).unwrap();
                            if n == 0 {
                                break;
                            }
                            stats.on_packet(&buf[..n], monotonic_ns(), &mut samples);
                        }
                        (peer.to_string(), stats.report(peer.to_string()), samples.len())
                    })
                })
                .collect::<Vec<_>>()
        });
        let report = run(&spec).unwrap();
        let received = receivers.join().unwrap().into_iter().map(|r| r.join().unwrap()).collect();
        (report, received)
    }

    fn check(report: &LoadReport, received: &[(String, crate::ingest::results::StreamReport, usize)]) {
        assert_eq!(report.streams.len(), received.len());
        for sent in &report.streams {
            let (_, got, samples) = received.iter().find(|(peer, ..)| *peer == sent.local).unwrap();
            assert_eq!(got.bytes, sent.bytes, "{}", sent.local);
            assert_eq!(got.sha256, sent.sha256);
            assert_eq!(got.bad_messages, 0);
            assert_eq!(*samples as u64, sent.messages);
        }
    }

    #[test]
    fn paced_connections_deliver_what_they_report() {
        let spec = LoadSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            connections: 5,
            size: 100,
            rate: Some(1000.0),
            duration: Duration::from_millis(300),
            // One thread: its schedule is the whole rate, so the bounds
            // below are exact.
            threads: 1,
            hash: true,
            seed: 3,
        };
        let (report, received) = against_receiver(spec);
        check(&report, &received);
        assert_eq!(report.bytes, report.messages * 100);
        // 1000 messages/s: every message due (the first one at the start)
        // is written or owed, never more than the 0.3 s ask for (301), and
        // at least those due by the thread's last write (less 10 ms, in
        // case that write itself was held off the CPU): a thread held off
        // past the deadline writes fewer, or owes some, and a schedule
        // that ignores the rate fails one side.
        let scheduled = report.messages + report.messages_owed;
        let due_by_last_write = ((1000.0 * report.elapsed_s) as u64).saturating_sub(10);
        assert!(
            (due_by_last_write..=301).contains(&scheduled),
            "{} messages written, {} owed, {} s of writing",
            report.messages,
            report.messages_owed,
            report.elapsed_s
        );
    }

    #[test]
    fn unpaced_connections_deliver_what_they_report() {
        let spec = LoadSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            connections: 3,
            size: 70_000,
            rate: None,
            duration: Duration::from_millis(200),
            threads: 2,
            hash: true,
            seed: 9,
        };
        let (report, received) = against_receiver(spec);
        check(&report, &received);
        assert!(report.bytes > 1 << 20, "{} bytes", report.bytes);
        assert_eq!(report.threads, 2);
    }
}
