//! `bench-tokio`: what a user would write with tokio instead of ringest.
//! A multi-threaded runtime (one worker per core) runs a task per
//! connection that reads into a 64 KiB buffer and copies each receive into
//! an owned packet (connection id, timestamp, bytes); a connection's
//! packets are batched into groups of `--group-size` and handed through a
//! bounded queue (`tokio::sync::mpsc`, `--queue` groups) to a consumer
//! thread that reads every packet's length and counts it (hashing and
//! latency reassembly as `bench-consumer` does, when asked). A partial
//! group is handed over as soon as its socket has nothing more to read:
//! like the engine, which publishes as soon as an executor turn adds no
//! packet, it never holds packets back for a timer.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use ringest_benches::ingest::control::{self, Command, Hello};
use ringest_benches::ingest::results::{ReceiverReport, ReceiverTotals};
use ringest_benches::ingest::tracker::{LatencyOptions, StreamStats};
use ringest_benches::ingest::{monotonic_ns, raise_fd_limit};
use ringest_benches::results::LatencySummary;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "bench-tokio")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Packets per group (the engine's default group_size).
    #[arg(long, default_value_t = 64)]
    group_size: usize,
    /// Groups the queue to the consumer holds.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Bytes one read may return (the engine's largest receive).
    #[arg(long, default_value_t = 64 << 10)]
    read_size: usize,
    /// Runtime worker threads [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    hash: bool,
    #[arg(long)]
    latency_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    warmup_messages: u64,
}

/// One receive, owned.
struct Packet {
    connection: u64,
    #[allow(dead_code)] // carried as a user's packet would; the consumer only needs the length
    timestamp_ns: u64,
    bytes: Vec<u8>,
}

enum Message {
    Group(Vec<Packet>),
    Command(Command),
}

type Peers = Arc<Mutex<HashMap<u64, SocketAddr>>>;

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_io();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.build()?;
    let listener = runtime.block_on(TcpListener::bind(args.listen))?;
    let local = listener.local_addr()?;
    let (tx, mut rx) = mpsc::channel::<Message>(args.queue.max(1));
    let peers = Peers::default();
    runtime.spawn(accept(listener, tx.clone(), peers.clone(), args.group_size.max(1), args.read_size.max(1)));
    control::read_commands(move |c| {
        let _ = tx.blocking_send(Message::Command(c));
    });
    control::answer(&Hello { listening: Some(local.to_string()), ready: true });

    // The consumer: this thread.
    let latency = args.latency_size.map(|size| LatencyOptions { size, warmup: args.warmup_messages });
    let mut streams: HashMap<u64, StreamStats> = HashMap::new();
    let mut totals = ReceiverTotals::default();
    let mut samples = Vec::new();
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Group(group) => {
                let now = monotonic_ns();
                let mut bytes = 0;
                for packet in &group {
                    let len = std::hint::black_box(packet.bytes.len());
                    bytes += len as u64;
                    streams
                        .entry(packet.connection)
                        .or_insert_with(|| StreamStats::new(args.hash, latency))
                        .on_packet(&packet.bytes, now, &mut samples);
                }
                totals.seen(bytes, group.len() as u64, now);
                totals.streams = streams.len() as u64;
            }
            Message::Command(Command::Totals) => control::answer(&totals),
            Message::Command(Command::Final) => {
                let peers = peers.lock().expect("no panics");
                let name =
                    |id: &u64| peers.get(id).map_or_else(|| format!("connection {id}"), |p| p.to_string());
                control::answer(&ReceiverReport {
                    totals: totals.clone(),
                    streams: streams.iter().map(|(id, s)| s.report(name(id))).collect(),
                    latency: (!samples.is_empty()).then(|| LatencySummary::from_samples(samples.clone())),
                    latency_to_engine: None,
                });
            }
            Message::Command(Command::Quit) => break,
        }
    }
    runtime.shutdown_background();
    Ok(())
}

async fn accept(
    listener: TcpListener,
    tx: mpsc::Sender<Message>,
    peers: Peers,
    group_size: usize,
    read_size: usize,
) {
    let mut next_id = 1u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("bench-tokio: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        peers.lock().expect("no panics").insert(id, peer);
        tokio::spawn(connection(stream, id, tx.clone(), group_size, read_size));
    }
}

/// Reads one connection until it closes.
async fn connection(
    stream: TcpStream,
    id: u64,
    tx: mpsc::Sender<Message>,
    group_size: usize,
    read_size: usize,
) {
    let mut buf = vec![0u8; read_size];
    let mut group = Vec::with_capacity(group_size);
    loop {
        if let Err(e) = stream.readable().await {
            eprintln!("bench-tokio: connection {id}: {e}");
            break;
        }
        let closed = loop {
            match stream.try_read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    group.push(Packet {
                        connection: id,
                        timestamp_ns: monotonic_ns(),
                        bytes: buf[..n].to_vec(),
                    });
                    if group.len() == group_size {
                        let full = std::mem::replace(&mut group, Vec::with_capacity(group_size));
                        if tx.send(Message::Group(full)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("bench-tokio: connection {id}: {e}");
                    break true;
                }
            }
        };
        if !group.is_empty() {
            let partial = std::mem::replace(&mut group, Vec::with_capacity(group_size));
            if tx.send(Message::Group(partial)).await.is_err() {
                return;
            }
        }
        if closed {
            return;
        }
    }
}
