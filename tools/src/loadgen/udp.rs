//! `ringest loadgen ADDR --udp`: datagrams of random bytes and sizes from
//! several sources (one socket, one ephemeral port and one thread each), at
//! an optional rate; reports what each source sent and the sha256 of its
//! datagrams' bytes in order, which is what a log's topic of that source
//! concatenates to when nothing was lost.
//!
//! Datagrams that are due go out in `sendmmsg(2)` batches (up to 64): all
//! of them when sending as fast as possible, those the rate allows so far
//! otherwise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use super::{NEVER, PROGRESS_EVERY};
use crate::flags::Total;
use crate::replay::udp_sender::{BATCH, UdpTarget, send_datagrams};

/// Datagram sizes: each drawn uniformly from `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for SizeRange {
    type Err = String;

    /// `BYTES` or `MIN-MAX`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a size in bytes (1200) or a range (64-65507)");
        let number = |s: &str| s.trim().parse::<usize>().ok().filter(|n| (1..=1 << 30).contains(n));
        let (min, max) = match text.split_once('-') {
            Some((min, max)) => (number(min).ok_or_else(bad)?, number(max).ok_or_else(bad)?),
            None => {
                let n = number(text).ok_or_else(bad)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("{text}: the range's start is above its end"));
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}-byte", self.min)
        } else {
            write!(f, "{}- to {}-byte", self.min, self.max)
        }
    }
}

/// The largest UDP payload: over IPv4 (65,535 less the IP and UDP headers),
/// and over IPv6 (less the UDP header only).
pub const MAX_UDP_PAYLOAD_V4: usize = 65_507;
pub const MAX_UDP_PAYLOAD_V6: usize = 65_527;

/// What to send.
#[derive(Clone, Debug)]
pub struct UdpLoadSpec {
    pub target: UdpTarget,
    pub sources: usize,
    pub sizes: SizeRange,
    /// Datagrams per second over all sources; `None`: as fast as they go.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Source i sends the random stream of `seed + i`.
    pub seed: u64,
}

/// What one source sent.
#[derive(Clone, Debug)]
pub struct SourceReport {
    /// Its address: the source the receiver sees.
    pub local: SocketAddr,
    pub datagrams: u64,
    pub bytes: u64,
    /// Of the bytes of every datagram sent, in order.
    pub sha256: [u8; 32],
    /// Datagrams the kernel refused (not in the counts or the sha256), and
    /// refusals reported by the receiving host.
    pub failed: u64,
    pub first_error: Option<String>,
}

/// What a run sent.
#[derive(Clone, Debug)]
pub struct UdpLoadReport {
    pub elapsed: Duration,
    pub sources: Vec<SourceReport>,
}

/// Opens every source's socket, then sends for `spec.duration`. Calls
/// `progress` with the bytes sent so far about ten times a second.
pub fn run(spec: &UdpLoadSpec, progress: &dyn Fn(u64)) -> anyhow::Result<UdpLoadReport> {
    let limit = if spec.target.address.is_ipv4() { MAX_UDP_PAYLOAD_V4 } else { MAX_UDP_PAYLOAD_V6 };
    anyhow::ensure!(
        spec.sizes.max <= limit,
        "a {}-byte datagram does not fit in UDP over {} (at most {limit} bytes)",
        spec.sizes.max,
        if spec.target.address.is_ipv4() { "IPv4" } else { "IPv6" }
    );
    let sockets = (0..spec.sources)
        .map(|_| spec.target.open_socket())
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("sending to {}", spec.target.address))?;
    // Each source gets an even share of the rate: seconds between its datagrams.
    let period = spec.rate.map(|rate| spec.sources as f64 / rate);
    let sent = Total::default();
    let start = Instant::now();
    let deadline = start.checked_add(spec.duration).unwrap_or(start + NEVER);
    let sources = std::thread::scope(|scope| {
        let workers: Vec<_> = sockets
            .into_iter()
            .zip(0..)
            .map(|(socket, i)| {
                let source =
                    Source { sizes: spec.sizes, seed: spec.seed.wrapping_add(i), period, start, deadline };
                let sent = &sent;
                scope.spawn(move || source.send(&socket, sent))
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            progress(sent.get());
            std::thread::sleep(PROGRESS_EVERY);
        }
        progress(sent.get());
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(UdpLoadReport { elapsed: start.elapsed(), sources })
}

/// How one source sends.
#[derive(Clone, Copy, Debug)]
struct Source {
    sizes: SizeRange,
    seed: u64,
    /// Seconds between datagrams; `None`: back to back.
    period: Option<f64>,
    start: Instant,
    deadline: Instant,
}

impl Source {
    fn send(self, socket: &std::net::UdpSocket, sent: &Total) -> anyhow::Result<SourceReport> {
        let local = socket.local_addr()?;
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut sha256 = Sha256::new();
        let mut report =
            SourceReport { local, datagrams: 0, bytes: 0, sha256: [0; 32], failed: 0, first_error: None };
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        // Datagrams generated so far, sent or failed: the schedule's count.
        let mut generated: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            let due = match self.period {
                None => BATCH,
                Some(period) => {
                    // The first datagram is due at the start, each next one
                    // a period later: those due by now and not yet sent.
                    let elapsed = now.duration_since(self.start).as_secs_f64();
                    let owed = ((elapsed / period) as u64 + 1).saturating_sub(generated);
                    if owed == 0 {
                        let next = Duration::try_from_secs_f64(generated as f64 * period)
                            .ok()
                            .and_then(|d| self.start.checked_add(d))
                            .unwrap_or(self.deadline);
                        std::thread::sleep(next.min(self.deadline).saturating_duration_since(now));
                        continue;
                    }
                    owed.min(BATCH as u64) as usize
                }
            };
            batch.resize_with(due, Vec::new);
            for datagram in &mut batch {
                datagram.resize(rng.random_range(self.sizes.min..=self.sizes.max), 0);
                rng.fill_bytes(datagram);
            }
            generated += due as u64;
            let mut rest: &[Vec<u8>] = &batch;
            while !rest.is_empty() {
                let views: Vec<&[u8]> = rest.iter().map(Vec::as_slice).collect();
                let (count, error) = send_datagrams(socket, &views);
                for datagram in &views[..count] {
                    sha256.update(datagram);
                    report.datagrams += 1;
                    report.bytes += datagram.len() as u64;
                    sent.add(datagram.len() as u64);
                }
                rest = &rest[count..];
                if let Some(error) = error {
                    report.failed += 1;
                    report.first_error.get_or_insert_with(|| error.to_string());
                    rest = &rest[1..];
                }
            }
        }
        // A refusal of the last datagrams ("port unreachable") waits on
        // the socket: nobody received them.
        if let Ok(Some(error)) = socket.take_error() {
            report.failed += 1;
            report.first_error.get_or_insert_with(|| error.to_string());
        }
        report.sha256 = sha256.finalize().into();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn sizes_parse_as_a_number_or_a_range() {
        assert_eq!("1206".parse(), Ok(SizeRange { min: 1206, max: 1206 }));
        assert_eq!("1-65507".parse(), Ok(SizeRange { min: 1, max: 65507 }));
        for bad in ["0", "9-3", "a-b", "", "-5", "5-"] {
            assert!(bad.parse::<SizeRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_source_reports_what_the_receiver_got() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20).unwrap();
        receiver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let spec = UdpLoadSpec {
            target: UdpTarget::resolve(&receiver.local_addr().unwrap().to_string(), 1, None).unwrap(),
            sources: 3,
            sizes: SizeRange { min: 1, max: 3000 },
            rate: Some(600.0),
            duration: Duration::from_millis(300),
            seed: 5,
        };
        let receiving = std::thread::spawn(move || {
            let mut by_source: std::collections::HashMap<SocketAddr, (u64, Sha256)> = Default::default();
            let mut buf = vec![0; 65536];
            while let Ok((len, from)) = receiver.recv_from(&mut buf) {
                let (count, sha) = by_source.entry(from).or_default();
                *count += 1;
                sha.update(&buf[..len]);
            }
            by_source
        });
        let report = run(&spec, &|_| {}).unwrap();
        let received = receiving.join().unwrap();
        assert_eq!(report.sources.len(), 3);
        for source in &report.sources {
            let (count, sha) = received[&source.local].clone();
            assert_eq!((source.failed, count), (0, source.datagrams));
            assert_eq!(source.sha256, <[u8; 32]>::from(sha.finalize()));
            // 200 datagrams/s each for 0.3 s: 60, give or take the edges.
            assert!((1..=61).contains(&source.datagrams), "{} datagrams", source.datagrams);
        }
    }
}
