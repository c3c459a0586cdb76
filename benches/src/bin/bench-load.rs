//! `bench-load`: the load generator of the ingest benchmark (see
//! `ringest_benches::ingest::load`), and the loopback ping-pong that gives
//! the one-way latency of TCP itself. Prints one JSON line: a `LoadReport`,
//! or with `--ping-pong` a `RunFile::PingPong`.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroU64;
use std::time::Duration;

use clap::Parser;
use ringest_benches::ingest::load::{self, LoadSpec};
use ringest_benches::ingest::results::{PingPongRun, RunFile};
use ringest_benches::ingest::{message, monotonic_ns, raise_fd_limit};
use ringest_benches::results::LatencySummary;

#[derive(Parser, Debug)]
#[command(name = "bench-load")]
struct Args {
    /// Where to connect (host:port); not with --ping-pong.
    #[arg(required_unless_present = "ping_pong")]
    addr: Option<SocketAddr>,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Bytes per message (write).
    #[arg(long)]
    size: usize,
    /// Messages per second over all connections [default: as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Sending threads [default: min(connections, 2)].
    #[arg(long)]
    threads: Option<usize>,
    /// Hash every connection's bytes (sha256).
    #[arg(long)]
    hash: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead: a TCP ping-pong of --size-byte messages on loopback at
    /// --rate round trips per second; one-way latency = round trip / 2.
    #[arg(long)]
    ping_pong: bool,
    /// Leading seconds left out of the ping-pong statistics.
    #[arg(long, default_value_t = 0.2)]
    warmup_seconds: f64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    raise_fd_limit();
    let line = if args.ping_pong {
        serde_json::to_string(&RunFile::PingPong(ping_pong(&args)?))?
    } else {
        let spec = LoadSpec {
            addr: args.addr.ok_or("an address is needed")?,
            connections: args.connections,
            size: args.size.max(message::HEADER_LEN),
            rate: args.rate,
            duration: Duration::from_secs_f64(args.seconds),
            threads: args.threads.unwrap_or(args.connections.min(2)),
            hash: args.hash,
            seed: args.seed,
        };
        serde_json::to_string(&load::run(&spec)?)?
    };
    println!("{line}");
    Ok(())
}

/// Round trips of `size`-byte messages, paced at `rate`, against an echo
/// thread; both ends blocking, TCP_NODELAY.
fn ping_pong(args: &Args) -> Result<PingPongRun, Box<dyn Error>> {
    let size = args.size.max(message::HEADER_LEN);
    let rate = args.rate.ok_or("--ping-pong needs --rate")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = vec![0; size];
        while stream.read_exact(&mut buf).is_ok() {
            stream.write_all(&buf)?;
        }
        Ok(())
    });
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut out = message::filler(1, size);
    let mut back = vec![0; size];
    let period = 1e9 / rate;
    let start = monotonic_ns();
    let warmup_end = start + (args.warmup_seconds * 1e9) as u64;
    let deadline = start + (args.seconds * 1e9) as u64;
    let mut samples = Vec::new();
    // Paced; when a round trip takes longer than the period, back to back
    // until the deadline.
    for seq in 0.. {
        let due = start + (seq as f64 * period) as u64;
        if due >= deadline {
            break;
        }
        let now = monotonic_ns();
        if now >= deadline {
            break;
        }
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        let sent = monotonic_ns();
        message::MessageHeader { seq, sent_ns: sent, connection: 0 }.write(&mut out);
        stream.write_all(&out)?;
        stream.read_exact(&mut back)?;
        let round_trip = monotonic_ns() - sent;
        if back != out {
            return Err("the echo differs from the message".into());
        }
        if sent >= warmup_end {
            samples.push(round_trip / 2);
        }
    }
    drop(stream);
    echo.join().map_err(|_| "the echo thread panicked")??;
    if samples.is_empty() {
        return Err("no ping-pong samples: raise --seconds or --rate".into());
    }
    Ok(PingPongRun { size, rate, seconds: args.seconds, one_way: LatencySummary::from_samples(samples) })
}
