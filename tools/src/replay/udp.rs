//! `ringest replay FILE --udp ADDR`: sends the datagrams of an MCAP log (its
//! `<stage>/datagrams/<source>` topics) or of a pcap/pcapng capture again,
//! one datagram per logged or captured datagram, in file order, at the
//! original pace (scaled by `--speed`) or as fast as possible (`--max`).
//!
//! Each logged source (each captured source address and port) gets a
//! socket of its own, so the receiver tells them apart as it did the
//! original senders. Datagrams already due go out in `sendmmsg(2)` batches.
//!
//! A first pass over the file counts what will be sent and finds damage:
//! the replay says up front when only the part before it will be sent, and
//! fails at the end.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use super::Pacer;
use super::capture::{CaptureCounts, CaptureDatagrams, CaptureFilter, FileKind};
use super::udp_sender::{BATCH, UdpTarget, send_datagrams};
use crate::human;
use crate::log::mcap_reader::{ConnectionMessages, log_messages};
use crate::log::mcap_writer::{PACKET_ENCODING, TRUNCATED_KEY, is_datagram_topic};
use crate::progress::Progress;

/// What to replay, where and how.
#[derive(Debug)]
pub struct UdpReplay {
    pub file: PathBuf,
    pub kind: FileKind,
    pub target: UdpTarget,
    /// `None`: as fast as possible.
    pub speed: Option<f64>,
    /// Log topics to replay; empty: every datagram topic.
    pub topics: Vec<String>,
    /// Which captured datagrams to replay.
    pub filter: CaptureFilter,
}

/// A datagram to send again.
struct Outgoing {
    /// Log or capture time, ns.
    time_ns: u64,
    /// Its sender: the log topic, or the captured source address.
    source: String,
    data: Vec<u8>,
    /// Logged cut to the stage's `max_datagram_size_b`.
    truncated: bool,
}

/// The datagrams of the file, in file order.
enum Datagrams {
    Log { messages: ConnectionMessages, topics: Vec<String> },
    Capture(CaptureDatagrams),
}

impl Datagrams {
    fn open(replay: &UdpReplay) -> anyhow::Result<Self> {
        Ok(match replay.kind {
            FileKind::Mcap => {
                Self::Log { messages: log_messages(&replay.file)?, topics: replay.topics.clone() }
            }
            kind => Self::Capture(CaptureDatagrams::open(&replay.file, kind, replay.filter.clone())?),
        })
    }

    fn capture_counts(&self) -> Option<CaptureCounts> {
        match self {
            Self::Log { .. } => None,
            Self::Capture(capture) => Some(capture.counts()),
        }
    }
}

impl Iterator for Datagrams {
    type Item = anyhow::Result<Outgoing>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Log { messages, topics } => loop {
                let message = match messages.next()? {
                    Ok(message) => message,
                    Err(e) => return Some(Err(e)),
                };
                let channel = &message.channel;
                let chosen = topics.is_empty() || topics.contains(&channel.topic);
                if channel.message_encoding == PACKET_ENCODING && is_datagram_topic(&channel.topic) && chosen
                {
                    return Some(Ok(Outgoing {
                        time_ns: message.log_time,
                        source: channel.topic.clone(),
                        truncated: channel.metadata.get(TRUNCATED_KEY).is_some_and(|v| v == "true"),
                        data: message.data.into_owned(),
                    }));
                }
            },
            Self::Capture(capture) => Some(capture.next()?.map(|d| Outgoing {
                time_ns: d.time_ns,
                source: d.source.to_string(),
                data: d.payload,
                truncated: false,
            })),
        }
    }
}

/// What the first pass found.
struct Survey {
    datagrams: u64,
    sources: usize,
    truncated: u64,
    /// The damage that ends the readable part of the file.
    damage: Option<anyhow::Error>,
}

fn survey(replay: &UdpReplay) -> anyhow::Result<Survey> {
    let mut sources = std::collections::HashSet::new();
    let (mut datagrams, mut truncated, mut damage) = (0, 0, None);
    for item in Datagrams::open(replay)? {
        match item {
            Ok(datagram) => {
                datagrams += 1;
                truncated += u64::from(datagram.truncated);
                sources.insert(datagram.source);
            }
            Err(e) => damage = Some(e),
        }
    }
    Ok(Survey { datagrams, sources: sources.len(), truncated, damage })
}

/// Replays and reports; fails if a datagram could not be sent or the file
/// is damaged.
pub fn run(replay: UdpReplay) -> anyhow::Result<()> {
    let plan = survey(&replay)?;
    if plan.datagrams == 0 && plan.damage.is_none() {
        // Nothing to send is a mistake worth saying: a wrong filter, or the
        // wrong kind of log.
        let file = replay.file.display();
        match replay.kind {
            FileKind::Mcap if !replay.topics.is_empty() => {
                bail!("no datagram topic of {file} matches --topic")
            }
            FileKind::Mcap => bail!(
                "{file} holds no datagrams (<stage>/datagrams/<source> topics): a log of TCP connections \
                 replays with --connect or --listen"
            ),
            _ if !(replay.filter.ports.is_empty() && replay.filter.sources.is_empty()) => {
                bail!("no UDP datagram of {file} matches --udp-port or --src")
            }
            _ => bail!("{file} holds no UDP datagrams"),
        }
    }
    let what = if replay.kind == FileKind::Mcap { "logged" } else { "captured" };
    println!(
        "sending {} from {} to {}, one socket per {what} source",
        human::plural(plan.datagrams, "datagram"),
        human::plural(plan.sources as u64, "source"),
        replay.target.address,
    );
    if plan.truncated > 0 {
        let noun = if plan.truncated == 1 { "datagram was" } else { "datagrams were" };
        println!(
            "note: {} {noun} logged truncated (longer than the stage's max_datagram_size_b): sent as logged",
            plan.truncated
        );
    }
    if let Some(damage) = &plan.damage {
        println!("warning: {damage:#}: sending the datagrams before the damage, then failing");
    }
    let mut sender = Sender {
        target: &replay.target,
        sockets: Vec::new(),
        by_source: HashMap::new(),
        batch: Vec::new(),
        batch_socket: 0,
        sent: 0,
        bytes: 0,
        failed: 0,
        first_error: None,
    };
    let mut pacer = Pacer { speed: replay.speed, origin: None };
    let started = Instant::now();
    let progress = Progress::new();
    let mut datagrams = Datagrams::open(&replay)?;
    let mut damage = None;
    for item in datagrams.by_ref() {
        let datagram = match item {
            Ok(datagram) => datagram,
            Err(e) => {
                damage = Some(e);
                break;
            }
        };
        if let Some(due) = pacer.due(datagram.time_ns)?
            && due > Instant::now()
        {
            sender.flush();
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        sender.push(datagram)?;
        progress.show(|| {
            format!(
                "replayed {} of {} ({}) from {}",
                sender.sent,
                human::plural(plan.datagrams, "datagram"),
                human::bytes(sender.bytes as f64),
                human::plural(sender.sockets.len() as u64, "source"),
            )
        });
    }
    sender.flush();
    sender.collect_refusals();
    progress.clear();
    let skipped = datagrams.capture_counts().map(|counts| counts.skipped()).filter(|s| !s.is_empty());
    println!(
        "replayed {} ({}) from {} to {} in {:.2} s{}",
        human::plural(sender.sent, "datagram"),
        human::bytes(sender.bytes as f64),
        human::plural(sender.sockets.len() as u64, "source"),
        replay.target.address,
        started.elapsed().as_secs_f64(),
        skipped.map_or(String::new(), |s| format!("; frames skipped: {s}")),
    );
    if let Some(error) = sender.first_error {
        bail!(
            "{} of {} could not be sent to {} or were refused there, the first: {error}",
            sender.failed,
            human::plural(sender.failed + sender.sent, "datagram"),
            replay.target.address
        );
    }
    if let Some(damage) = damage {
        return Err(damage.context(format!("replay stopped after {} datagrams", sender.sent)));
    }
    Ok(())
}

/// Sockets by source, and the batch being gathered for one of them.
struct Sender<'a> {
    target: &'a UdpTarget,
    sockets: Vec<UdpSocket>,
    by_source: HashMap<String, usize>,
    batch: Vec<Vec<u8>>,
    batch_socket: usize,
    sent: u64,
    bytes: u64,
    failed: u64,
    first_error: Option<std::io::Error>,
}

impl Sender<'_> {
    /// Adds `datagram` to the batch of its source's socket, sending the
    /// batch first if it is another socket's or full.
    fn push(&mut self, datagram: Outgoing) -> anyhow::Result<()> {
        let socket = match self.by_source.get(&datagram.source) {
            Some(&socket) => socket,
            None => {
                let socket = self.target.open_socket().with_context(|| format!("for {}", datagram.source))?;
                self.sockets.push(socket);
                self.by_source.insert(datagram.source, self.sockets.len() - 1);
                self.sockets.len() - 1
            }
        };
        if socket != self.batch_socket || self.batch.len() == BATCH {
            self.flush();
            self.batch_socket = socket;
        }
        self.batch.push(datagram.data);
        Ok(())
    }

    /// Counts an error the kernel holds for a socket (a receiver that
    /// refused a datagram sent last, "port unreachable"): it was sent but
    /// did not arrive.
    fn collect_refusals(&mut self) {
        for socket in &self.sockets {
            if let Ok(Some(error)) = socket.take_error() {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    /// Sends the batch; a datagram that fails is counted and skipped.
    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let mut slices: &[Vec<u8>] = &batch;
        while !slices.is_empty() {
            let views: Vec<&[u8]> = slices.iter().map(Vec::as_slice).collect();
            let (sent, error) = send_datagrams(&self.sockets[self.batch_socket], &views);
            self.sent += sent as u64;
            self.bytes += views[..sent].iter().map(|d| d.len() as u64).sum::<u64>();
            slices = &slices[sent..];
            if let Some(error) = error {
                self.failed += 1;
                self.first_error.get_or_insert(error);
                slices = &slices[1..];
            }
        }
    }
}
