//! `ringest loadgen`: TCP connections writing messages of random bytes, at
//! an optional rate, for a time; reports what each connection sent and its
//! sha256, so a receiver can check every byte. [`run`] is also the load of
//! `ringest demo`. With `--udp`, sources sending datagrams instead
//! ([`udp`]).

mod config_table;
pub mod udp;

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::flags::Total;
use crate::human;
use crate::replay::udp_sender::UdpTarget;

#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    /// Where to connect (or with --udp, where to send), as host:port.
    addr: String,
    /// Connections, each written by its own thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536),
          required_unless_present_any = ["udp", "print_default_config"], conflicts_with = "udp")]
    connections: Option<u32>,
    /// Sends UDP datagrams (to a unicast address or a multicast group)
    /// instead of writing to TCP connections.
    #[arg(long)]
    udp: bool,
    /// With --udp: sources, each a socket of its own (its own port) sending
    /// from its own thread.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "connections",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    sources: u32,
    /// Bytes per message; with --udp, per datagram, or a range MIN-MAX of
    /// random sizes (up to 65507 over IPv4).
    #[arg(long, value_name = "BYTES|MIN-MAX", required_unless_present = "print_default_config")]
    size: Option<udp::SizeRange>,
    /// Messages (datagrams) per second over all connections (sources)
    /// [default: as fast as they go].
    #[arg(long, value_name = "MSG_PER_S", value_parser = positive)]
    rate: Option<f64>,
    /// How long to send.
    #[arg(long, value_name = "S", default_value = "5", value_parser = seconds)]
    seconds: Duration,
    /// Seed of the random bytes: connection (source) i writes the stream of
    /// seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// With --udp to a multicast group: its time to live (hops).
    #[arg(long, value_name = "HOPS", default_value_t = 1, conflicts_with = "connections",
          value_parser = clap::value_parser!(u32).range(0..=255))]
    multicast_ttl: u32,
    /// With --udp to a multicast group: the interface to send on, by name
    /// (eth0) or address [default: the route to the group].
    #[arg(long, value_name = "NAME|ADDR", conflicts_with = "connections")]
    multicast_interface: Option<String>,
    /// Prints the stage table that receives this load (a commented
    /// [[tcp_server]], or with --udp [[udp]], on ADDR), ready for `ringest
    /// run --config`, and exits.
    #[arg(long)]
    print_default_config: bool,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages per second over all connections; `None`: as fast as they go.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Connection i writes the random stream of `seed + i`.
    pub seed: u64,
}

/// What one connection sent.
#[derive(Clone, Debug)]
pub struct ConnectionReport {
    /// Its local address: the peer address the receiver sees.
    pub local: SocketAddr,
    pub bytes: u64,
    /// Complete messages (the last one may have been cut by the deadline).
    pub messages: u64,
    /// Of every byte sent, in order.
    pub sha256: [u8; 32],
}

/// What a run sent.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub elapsed: Duration,
    pub connections: Vec<ConnectionReport>,
}

impl LoadReport {
    pub fn total_bytes(&self) -> u64 {
        self.connections.iter().map(|c| c.bytes).sum()
    }

    pub fn total_messages(&self) -> u64 {
        self.connections.iter().map(|c| c.messages).sum()
    }

    pub fn bytes_per_s(&self) -> f64 {
        self.total_bytes() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn messages_per_s(&self) -> f64 {
        self.total_messages() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// How often [`run`] reports progress.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Longest a write blocks (a receiver pushing back) before the deadline is
/// checked again.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// Far enough never to come: instead of a deadline too far for an `Instant`.
pub(crate) const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects every connection, then writes for `spec.duration` and reports
/// what was sent. Calls `progress` with the bytes sent so far about ten
/// times a second, from the calling thread.
pub fn run(spec: &LoadSpec, progress: &dyn Fn(u64)) -> anyhow::Result<LoadReport> {
    let streams = (0..spec.connections)
        .map(|_| TcpStream::connect_timeout(&spec.addr, CONNECT_TIMEOUT))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("connecting to {}", spec.addr))?;
    // Each connection gets an even share of the rate: seconds between its messages.
    let period = spec.rate.map(|rate| spec.connections as f64 / rate);
    let sent = Total::default();
    let start = Instant::now();
    let deadline = start.checked_add(spec.duration).unwrap_or(start + NEVER);
    let connections = std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let workers: Vec<_> = streams
            .into_iter()
            .zip(0..)
            .map(|(stream, i)| {
                let (done, sent) = (done_tx.clone(), &sent);
                let writer = Writer { size: spec.size, seed: spec.seed.wrapping_add(i), period, deadline };
                scope.spawn(move || {
                    let report = writer.write(stream, sent);
                    drop(done);
                    report
                })
            })
            .collect();
        drop(done_tx);
        // Every worker holds a sender: the channel disconnects once all are done.
        while let Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_EVERY) {
            progress(sent.get());
        }
        progress(sent.get());
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(LoadReport { elapsed: start.elapsed(), connections })
}

/// How one connection writes.
#[derive(Clone, Copy, Debug)]
struct Writer {
    size: usize,
    seed: u64,
    /// Seconds between message starts; `None`: back to back.
    period: Option<f64>,
    deadline: Instant,
}

impl Writer {
    /// Writes messages until the deadline, counting every byte written
    /// into `sent`.
    fn write(self, mut stream: TcpStream, sent: &Total) -> anyhow::Result<ConnectionReport> {
        let local = stream.local_addr()?;
        let context = || format!("connection {local}");
        // Bounded writes, so that a receiver pushing back cannot hold us past the deadline.
        stream.set_write_timeout(Some(WRITE_POLL)).with_context(context)?;
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut message = vec![0; self.size];
        let mut sha256 = Sha256::new();
        let (mut bytes, mut messages) = (0, 0);
        let start = Instant::now();
        'messages: while Instant::now() < self.deadline {
            if let Some(period) = self.period {
                let due = Duration::try_from_secs_f64(messages as f64 * period)
                    .ok()
                    .and_then(|d| start.checked_add(d));
                match due {
                    Some(due) if due < self.deadline => {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()))
                    }
                    _ => break,
                }
            }
            rng.fill_bytes(&mut message);
            let mut at = 0;
            while at < message.len() {
                match stream.write(&message[at..]) {
                    Ok(0) => bail!("{}: the peer closed the connection", context()),
                    Ok(n) => {
                        // Hash only what was written: a message cut by the
                        // deadline counts as far as it went.
                        sha256.update(&message[at..at + n]);
                        at += n;
                        bytes += n as u64;
                        sent.add(n as u64);
                    }
                    Err(e) if is_retryable(&e) => {
                        if Instant::now() >= self.deadline {
                            break 'messages;
                        }
                    }
                    Err(e) => return Err(e).with_context(context),
                }
            }
            messages += 1;
        }
        Ok(ConnectionReport { local, bytes, messages, sha256: sha256.finalize().into() })
    }
}

/// A write that timed out (see [`WRITE_POLL`]) or was interrupted.
fn is_retryable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// `ringest loadgen`: runs the load and prints the report.
pub fn cli(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        let address = resolve(&args.addr)?;
        print!("{}", config_table::stage_table(address, args.udp)?);
        return Ok(());
    }
    if args.udp {
        return udp_cli(&args);
    }
    let spec = args.spec()?;
    let mut out = io::stdout().lock();
    let rate = spec.rate.map_or("as fast as possible".to_owned(), |r| format!("{r} messages/s"));
    writeln!(
        out,
        "{} to {}, {}-byte messages, {rate}, for {:.1} s",
        human::plural(spec.connections as u64, "connection"),
        spec.addr,
        spec.size,
        spec.duration.as_secs_f64()
    )?;
    // A live count on a terminal; nothing when stderr is a log.
    let live = io::stderr().is_terminal();
    let show = |bytes: u64| {
        if live {
            eprint!("\r{} sent ", human::bytes(bytes as f64));
        }
    };
    let report = run(&spec, &show)?;
    if live {
        eprint!("\r\x1b[K");
    }
    for c in &report.connections {
        writeln!(
            out,
            "{}  bytes {}  messages {}  sha256 {}",
            c.local,
            c.bytes,
            c.messages,
            human::hex(&c.sha256)
        )?;
    }
    writeln!(
        out,
        "total: {} bytes ({}) in {} messages over {:.2} s: {}/s, {} messages/s",
        report.total_bytes(),
        human::bytes(report.total_bytes() as f64),
        report.total_messages(),
        report.elapsed.as_secs_f64(),
        human::bytes(report.bytes_per_s()),
        human::count(report.messages_per_s()),
    )?;
    Ok(())
}

/// `ringest loadgen --udp`: runs the load and prints the report; fails if
/// a datagram could not be sent.
fn udp_cli(args: &LoadgenArgs) -> anyhow::Result<()> {
    let target = UdpTarget::resolve(&args.addr, args.multicast_ttl, args.multicast_interface.as_deref())?;
    let spec = udp::UdpLoadSpec {
        target,
        sources: args.sources as usize,
        sizes: args.size.context("--size is required")?,
        rate: args.rate,
        duration: args.seconds,
        seed: args.seed,
    };
    let mut out = io::stdout().lock();
    let rate = spec.rate.map_or("as fast as possible".to_owned(), |r| format!("{r} datagrams/s"));
    writeln!(
        out,
        "{} to {}, {} datagrams, {rate}, for {:.1} s",
        human::plural(spec.sources as u64, "source"),
        spec.target.address,
        spec.sizes,
        spec.duration.as_secs_f64()
    )?;
    let live = io::stderr().is_terminal();
    let show = |bytes: u64| {
        if live {
            eprint!("\r{} sent ", human::bytes(bytes as f64));
        }
    };
    let report = udp::run(&spec, &show)?;
    if live {
        eprint!("\r\x1b[K");
    }
    for s in &report.sources {
        writeln!(
            out,
            "{}  bytes {}  datagrams {}  sha256 {}",
            s.local,
            s.bytes,
            s.datagrams,
            human::hex(&s.sha256)
        )?;
    }
    let bytes: u64 = report.sources.iter().map(|s| s.bytes).sum();
    let datagrams: u64 = report.sources.iter().map(|s| s.datagrams).sum();
    let seconds = report.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    writeln!(
        out,
        "total: {bytes} bytes ({}) in {datagrams} datagrams over {:.2} s: {}/s, {} datagrams/s",
        human::bytes(bytes as f64),
        report.elapsed.as_secs_f64(),
        human::bytes(bytes as f64 / seconds),
        human::count(datagrams as f64 / seconds),
    )?;
    let failed: u64 = report.sources.iter().map(|s| s.failed).sum();
    if let Some(error) = report.sources.iter().find_map(|s| s.first_error.as_ref()) {
        bail!(
            "{} could not be sent to {} (not in the counts or sha256s above), the first: {error}",
            human::plural(failed, "datagram"),
            spec.target.address
        );
    }
    Ok(())
}

/// The first address of `host:port` (a bad one is an error, not a usage
/// error: it may be a name that did not resolve).
fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("bad address {address:?}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

impl LoadgenArgs {
    fn spec(&self) -> anyhow::Result<LoadSpec> {
        let size = self.size.context("--size is required")?;
        if size.min != size.max {
            bail!("a range of sizes is for --udp: TCP messages have one size");
        }
        Ok(LoadSpec {
            addr: resolve(&self.addr)?,
            connections: self.connections.context("--connections is required")? as usize,
            size: size.min,
            rate: self.rate,
            duration: self.seconds,
            seed: self.seed,
        })
    }
}

/// Parses a finite number above 0.
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number above 0")),
    }
}

/// Parses seconds above 0, fractions allowed.
fn seconds(text: &str) -> Result<Duration, String> {
    positive(text).and_then(|s| Duration::try_from_secs_f64(s).map_err(|e| format!("{text} s: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn every_connection_reports_what_the_peer_received() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = LoadSpec {
            addr: listener.local_addr().unwrap(),
            connections: 3,
            size: 1000,
            rate: Some(300.0),
            duration: Duration::from_millis(300),
            seed: 9,
        };
        let receivers = std::thread::spawn(move || {
            (0..3)
                .map(|_| {
                    let (mut stream, peer) = listener.accept().unwrap();
                    std::thread::spawn(move || {
                        let mut data = Vec::new();
                        stream.read_to_end(&mut data).unwrap();
                        (peer, data)
                    })
                })
                .collect::<Vec<_>>()
        });
        let report = run(&spec, &|_| {}).unwrap();
        let received: Vec<_> = receivers.join().unwrap().into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(report.connections.len(), 3);
        for c in &report.connections {
            let (_, data) = received.iter().find(|(peer, _)| *peer == c.local).unwrap();
            assert_eq!(c.bytes, data.len() as u64);
            assert_eq!(c.sha256, <[u8; 32]>::from(Sha256::digest(data)));
            // 100 messages/s each for 0.3 s: 30, give or take the edges.
            assert!((1..=31).contains(&c.messages), "{} messages", c.messages);
            assert_eq!(c.bytes, c.messages * 1000);
        }
    }

    #[test]
    fn rates_and_durations_must_be_positive() {
        assert_eq!(positive("2.5"), Ok(2.5));
        assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "inf", "NaN", "x"] {
            assert!(positive(bad).is_err() && seconds(bad).is_err(), "{bad}");
        }
        assert!(seconds("1e30").is_err());
    }
}
