//! One connection to the peer: the sending half (this thread: HELLO,
//! offers, records within the peer's window, heartbeats, and the frames the
//! receiving half asks for) and the receiving half (a scoped thread:
//! the peer's frames, records published locally).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::export::Exports;
use crate::import::{ImportError, Imports};
use crate::status::BridgeStatus;
use crate::tls;
use crate::wire::{self, Control, Incoming};

/// Buffer of the receiving half's reads.
const READ_BUFFER: usize = 256 << 10;
/// The sending half writes once this much is queued.
const WRITE_BATCH: usize = 256 << 10;
/// How often the shared status is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(50);
/// Longest idle wait of the sending half (records in the ring do not wake
/// it: it looks again at least this often).
const IDLE_MAX: Duration = Duration::from_millis(1);

/// What the link needs from its bridge.
pub(crate) struct LinkContext<'a> {
    pub(crate) name: &'a str,
    pub(crate) lossless: bool,
    pub(crate) window: u64,
    pub(crate) keepalive: Duration,
    pub(crate) heartbeat_timeout: Duration,
    /// The whole bridge stops.
    pub(crate) stop: &'a AtomicBool,
    pub(crate) status: &'a Mutex<BridgeStatus>,
    pub(crate) epoch: Instant,
}

/// What the receiving half tells the sending half.
enum FromReceiver {
    Hello {
        window: u64,
        lossy: bool,
        name: String,
    },
    /// A frame to send (RESUME, ACK, PONG).
    Send(Control),
    Resume {
        id: u32,
        generation: u64,
        answer: wire::ResumeAnswer,
    },
    Ack {
        id: u32,
        generation: u64,
        shard: u32,
        next_seq: u64,
    },
    Pong {
        sent_ns: u64,
    },
    /// The link is over, and why.
    Ended(String),
}

/// Runs one link until it breaks, the peer closes it, `superseded` says a
/// newer connection replaces it, or the bridge stops. Returns why it ended.
/// `tls`: the connection whose handshake is done on `stream`; none: the
/// link is plaintext.
pub(crate) fn run(
    stream: TcpStream,
    tls: Option<rustls::Connection>,
    peer: SocketAddr,
    ctx: &LinkContext<'_>,
    exports: &mut Exports,
    imports: &mut Imports,
    superseded: &mut dyn FnMut() -> bool,
) -> String {
    let setup = || -> io::Result<(TcpStream, TcpStream)> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(ctx.heartbeat_timeout))?;
        stream.set_read_timeout(Some(ctx.heartbeat_timeout))?;
        Ok((stream.try_clone()?, stream.try_clone()?))
    };
    let (incoming, outgoing) = match setup() {
        Ok(halves) => halves,
        Err(e) => return format!("setting up the connection: {e}"),
    };
    let (incoming, mut outgoing): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match tls {
        Some(connection) => {
            let (reader, writer) = tls::split(connection, incoming, outgoing);
            (Box::new(reader), Box::new(writer))
        }
        None => (Box::new(incoming), Box::new(outgoing)),
    };
    exports.begin_link();
    imports.begin_link();
    let link_over = AtomicBool::new(false);
    let last_heard = AtomicU64::new(ctx.epoch.elapsed().as_nanos() as u64);
    let (to_sender, from_receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = std::thread::Builder::new().name("bridge-recv".into()).spawn_scoped(scope, || {
            let why = receive(incoming, ctx, imports, &to_sender, &link_over, &last_heard);
            let _ = to_sender.send(FromReceiver::Ended(why));
        });
        if let Err(e) = receiver {
            return format!("starting the receiving thread: {e}");
        }
        let why = send(&mut outgoing, peer, ctx, exports, &from_receiver, &last_heard, superseded);
        link_over.store(true, Ordering::Relaxed);
        // Wakes the receiving half from its read.
        let _ = stream.shutdown(Shutdown::Both);
        why
    })
}

/// The sending half; returns why the link ended.
fn send(
    writer: &mut dyn Write,
    peer: SocketAddr,
    ctx: &LinkContext<'_>,
    exports: &mut Exports,
    from_receiver: &mpsc::Receiver<FromReceiver>,
    last_heard: &AtomicU64,
    superseded: &mut dyn FnMut() -> bool,
) -> String {
    let mut out = Vec::with_capacity(WRITE_BATCH + (64 << 10));
    wire::put_control(
        &mut out,
        &Control::Hello { lossy: !ctx.lossless, window: ctx.window, name: ctx.name.into() },
    );
    // At once, whatever the receiving half finds: a peer that is refused
    // still learns what this side speaks.
    if let Err(e) = writer.write_all(&out) {
        return receiver_reason(from_receiver).unwrap_or_else(|| format!("sending: {e}"));
    }
    out.clear();
    // The peer's window: nothing is sent before its HELLO.
    let mut window = 0u64;
    let mut next_ping = Instant::now();
    let mut next_status = Instant::now();
    let mut idle = Duration::from_micros(20);
    let now_ns = || ctx.epoch.elapsed().as_nanos() as u64;
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            wire::put_control(&mut out, &Control::Close { reason: "the bridge stops".into() });
            let _ = writer.write_all(&out);
            return "stopped".into();
        }
        if superseded() {
            return "a new connection from the peer replaces this one".into();
        }
        let mut busy = false;
        while let Ok(event) = from_receiver.try_recv() {
            busy = true;
            if let Err(why) = handle(event, &mut out, &mut window, exports, ctx, peer) {
                return why;
            }
        }
        exports.scan();
        exports.offer(&mut out);
        if window > 0 && exports.pull(&mut out, window) > 0 {
            busy = true;
        }
        let now = Instant::now();
        if now >= next_ping {
            next_ping = now + ctx.keepalive;
            wire::put_control(&mut out, &Control::Ping { sent_ns: now_ns() });
        }
        let silent = Duration::from_nanos(now_ns().saturating_sub(last_heard.load(Ordering::Relaxed)));
        if silent > ctx.heartbeat_timeout {
            return format!("no word from the peer for {} ms", silent.as_millis());
        }
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                return receiver_reason(from_receiver).unwrap_or_else(|| format!("sending: {e}"));
            }
            out.clear();
        }
        if now >= next_status {
            next_status = now + STATUS_EVERY;
            publish_status(ctx, exports);
        }
        if busy {
            idle = Duration::from_micros(20);
            continue;
        }
        match from_receiver.recv_timeout(idle) {
            Ok(event) => {
                if let Err(why) = handle(event, &mut out, &mut window, exports, ctx, peer) {
                    return why;
                }
                idle = Duration::from_micros(20);
            }
            Err(RecvTimeoutError::Timeout) => idle = (idle * 2).min(IDLE_MAX),
            Err(RecvTimeoutError::Disconnected) => return "the receiving half ended".into(),
        }
    }
}

/// Why the receiving half ended the link, if it does so soon: a failed
/// write is often the echo of what the peer said (its CLOSE, a TLS alert).
fn receiver_reason(from_receiver: &mpsc::Receiver<FromReceiver>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_millis(200);
    while let Ok(event) = from_receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let FromReceiver::Ended(why) = event {
            return Some(why);
        }
    }
    None
}

/// Acts on what the receiving half said; `Err`: the link is over.
fn handle(
    event: FromReceiver,
    out: &mut Vec<u8>,
    window: &mut u64,
    exports: &mut Exports,
    ctx: &LinkContext<'_>,
    peer: SocketAddr,
) -> Result<(), String> {
    match event {
        FromReceiver::Hello { window: w, lossy, name } => {
            *window = w;
            tracing::info!(%peer, peer_name = %name, lossy, window = w, "bridge: link up");
            let mut status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
            status.connected = true;
            status.peer = Some(peer);
            status.links += 1;
        }
        FromReceiver::Send(control) => wire::put_control(out, &control),
        FromReceiver::Resume { id, generation, answer } => exports.resume(id, generation, answer)?,
        FromReceiver::Ack { id, generation, shard, next_seq } => exports.ack(id, generation, shard, next_seq),
        FromReceiver::Pong { sent_ns } => {
            let rtt = Duration::from_nanos((ctx.epoch.elapsed().as_nanos() as u64).saturating_sub(sent_ns));
            ctx.status.lock().unwrap_or_else(|e| e.into_inner()).rtt = Some(rtt);
        }
        FromReceiver::Ended(why) => return Err(why),
    }
    Ok(())
}

fn publish_status(ctx: &LinkContext<'_>, exports: &Exports) {
    let mut status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
    for (name, counters) in exports.counters() {
        status.exports.insert(name.to_owned(), counters);
    }
}

/// The receiving half; returns why the link ended.
fn receive(
    incoming: Box<dyn Read + Send>,
    ctx: &LinkContext<'_>,
    imports: &mut Imports,
    to_sender: &mpsc::Sender<FromReceiver>,
    link_over: &AtomicBool,
    last_heard: &AtomicU64,
) -> String {
    let mut stream = BufReader::with_capacity(READ_BUFFER, incoming);
    let mut scratch = Vec::new();
    let mut acks = Vec::new();
    let mut hello = false;
    let mut next_status = Instant::now();
    let heard = || last_heard.store(ctx.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let send = |event| to_sender.send(event).map_err(|_| "the sending half ended".to_owned());
    let result = (|| -> Result<String, String> {
        if let Ok(first) = stream.fill_buf()
            && tls::looks_like_tls(first)
        {
            return Err("the peer speaks TLS, and this bridge has no [bridge.tls]".into());
        }
        loop {
            let frame = match wire::read_frame(&mut stream, &mut scratch) {
                Ok(frame) => frame,
                Err(_) if link_over.load(Ordering::Relaxed) => return Ok("link closed".into()),
                Err(wire::WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok("the peer closed the connection".into());
                }
                Err(e) => return Err(format!("from the peer: {e}")),
            };
            heard();
            match frame {
                Incoming::Control(Control::Hello { window, lossy, name }) if !hello => {
                    hello = true;
                    send(FromReceiver::Hello { window, lossy, name })?;
                }
                Incoming::Control(Control::Close { reason }) if !hello => {
                    return Err(format!("the peer refused the link: {reason}"));
                }
                _ if !hello => return Err("the peer's first frame is not HELLO".into()),
                Incoming::Control(Control::Hello { .. }) => return Err("a second HELLO".into()),
                Incoming::Record(header) => match imports.write(header, &mut stream, ctx.stop, heard) {
                    Ok(()) => {}
                    Err(ImportError::Stopped) => return Ok("stopped".into()),
                    Err(ImportError::Io(e)) => return Err(format!("from the peer: {e}")),
                    Err(ImportError::Protocol(m)) => return Err(format!("the peer broke the protocol: {m}")),
                },
                Incoming::Control(Control::Offer { id, generation, capacity, shards, flags, name }) => {
                    let answer = imports.offer(id, generation, capacity, shards, flags, &name);
                    send(FromReceiver::Send(Control::Resume { id, generation, answer }))?;
                }
                Incoming::Control(Control::Resume { id, generation, answer }) => {
                    send(FromReceiver::Resume { id, generation, answer })?;
                }
                Incoming::Control(Control::Ack { id, generation, shard, next_seq }) => {
                    send(FromReceiver::Ack { id, generation, shard, next_seq })?;
                }
                Incoming::Control(Control::End { id, generation }) => {
                    // Records before it are published first.
                    imports.publish(&mut acks);
                    imports.end(id, generation);
                }
                Incoming::Control(Control::Ping { sent_ns }) => {
                    send(FromReceiver::Send(Control::Pong { sent_ns }))?
                }
                Incoming::Control(Control::Pong { sent_ns }) => send(FromReceiver::Pong { sent_ns })?,
                Incoming::Control(Control::Close { reason }) => {
                    return Ok(format!("the peer closed the link: {reason}"));
                }
            }
            // Publish and acknowledge once what arrived together is in.
            if stream.buffer().is_empty() || acks.len() > 64 {
                imports.publish(&mut acks);
                for ack in acks.drain(..) {
                    send(FromReceiver::Send(ack))?;
                }
            }
            if Instant::now() >= next_status {
                next_status = Instant::now() + STATUS_EVERY;
                let mut status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
                for (name, counters) in imports.counters() {
                    status.imports.insert(name.to_owned(), counters);
                }
            }
        }
    })();
    // What arrived is published (and would be acknowledged on resume).
    imports.publish(&mut acks);
    let mut status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
    for (name, counters) in imports.counters() {
        status.imports.insert(name.to_owned(), counters);
    }
    match result {
        Ok(why) | Err(why) => why,
    }
}
