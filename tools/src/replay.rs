//! `ringest replay`: sends the connections of a log again over TCP, one
//! connection per logged connection, one write per logged packet, at the
//! original pace (scaled by `--speed`) or as fast as possible (`--max`).
//! With `--udp` it sends the datagrams of a log or of a pcap/pcapng capture
//! instead (see [`udp`]).
//!
//! One thread writes every connection in file order: the packets keep their
//! interleaving across connections, and a peer that reads slowly holds up
//! the others, as a blocking sensor host would.
//!
//! A first pass over the file finds the connections to replay (all, or
//! those chosen with `--conn` and `--topic`) and which of them the log saw
//! end (a `disconnected` event on `<stage>/connection_events`): their
//! streams close after their last packet, so a peer that reads to the end
//! of the stream (e.g. one client after the other with `--listen`) does
//! not wait for the whole replay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ArgGroup;

mod capture;
mod udp;
pub mod udp_sender;

use crate::human;
use crate::log::mcap_reader::{connection_messages, log_messages};
use crate::log::mcap_writer::{PACKET_ENCODING, is_connection_topic};
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["connect", "listen", "udp"])))]
pub struct ReplayArgs {
    /// The MCAP log to replay (written by `ringest log`), or, with --udp, a
    /// log or a pcap/pcapng capture.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Connect to this address (host:port) once per logged connection.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Listen on this address (host:port) and replay each logged connection
    /// to the next client that connects.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Pace factor of the original timing: 2 replays twice as fast.
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed)]
    speed: f64,
    /// Send as fast as the peers read, ignoring the original timing.
    #[arg(long, conflicts_with = "speed")]
    max: bool,
    /// Replays connection ID only (of every stage in the log; repeat for
    /// more) [default: every connection].
    #[arg(long = "conn", value_name = "ID")]
    conns: Vec<u64>,
    /// Replays the connection logged on TOPIC only, like
    /// ingest/packet_group/3, or with --udp the datagrams of one source,
    /// like lidar/datagrams/10.0.0.5:2368 (repeat for more) [default: all].
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    /// Sends the datagrams of the log (its `<stage>/datagrams/<source>`
    /// topics) or of a pcap/pcapng capture to this address (host:port, a
    /// unicast address or a multicast group), one socket per source.
    #[arg(long, value_name = "ADDR", conflicts_with = "conns")]
    udp: Option<String>,
    /// With --udp to a multicast group: its time to live (hops).
    #[arg(long, value_name = "HOPS", default_value_t = 1, conflicts_with_all = ["connect", "listen"],
          value_parser = clap::value_parser!(u32).range(0..=255))]
    multicast_ttl: u32,
    /// With --udp to a multicast group: the interface to send on, by name
    /// (eth0) or address [default: the route to the group].
    #[arg(long, value_name = "NAME|ADDR", conflicts_with_all = ["connect", "listen"])]
    multicast_interface: Option<String>,
    /// With a capture: replays the datagrams sent to this UDP port only
    /// (repeat for more) [default: every port].
    #[arg(long = "udp-port", value_name = "PORT", conflicts_with_all = ["connect", "listen"])]
    udp_ports: Vec<u16>,
    /// With a capture: replays the datagrams of this sender only, IP or
    /// ip:port (repeat for more) [default: every sender].
    #[arg(long = "src", value_name = "IP[:PORT]", conflicts_with_all = ["connect", "listen"])]
    sources: Vec<capture::SourceFilter>,
}

impl ReplayArgs {
    /// Whether the connection logged on `topic`, with id `id`, is replayed.
    fn chooses(&self, topic: &str, id: u64) -> bool {
        (self.conns.is_empty() && self.topics.is_empty())
            || self.conns.contains(&id)
            || self.topics.iter().any(|t| t == topic)
    }
}

/// A logged connection to replay, as the first pass found it.
#[derive(Debug)]
struct Logged {
    topic: String,
    /// Its packets in the log.
    messages: u64,
    /// Whether the log saw it end: its stream closes after its last packet.
    ended: bool,
}

/// The stage and connection id of a connection topic,
/// `<stage>/packet_group/<id>`.
fn split_topic(topic: &str) -> Option<(&str, u64)> {
    let (rest, id) = topic.rsplit_once('/')?;
    let stage = rest.strip_suffix(engine::PACKET_GROUP)?.strip_suffix('/')?;
    Some((stage, id.parse().ok()?))
}

/// The connections of the log that `args` chooses, by channel id. Stops
/// at a damaged part of the file: the replay reports it when it gets there.
fn survey(args: &ReplayArgs) -> anyhow::Result<BTreeMap<u16, Logged>> {
    let mut chosen = BTreeMap::new();
    let mut ids: HashMap<u16, (String, u64)> = HashMap::new();
    let mut ended: HashSet<(String, u64)> = HashSet::new();
    for message in log_messages(&args.file)?.map_while(Result::ok) {
        let channel = &message.channel;
        if channel.message_encoding == PACKET_ENCODING && is_connection_topic(&channel.topic) {
            let Some((stage, id)) = split_topic(&channel.topic) else { continue };
            if args.chooses(&channel.topic, id) {
                ids.entry(channel.id).or_insert_with(|| (stage.to_owned(), id));
                chosen
                    .entry(channel.id)
                    .or_insert_with(|| Logged { topic: channel.topic.clone(), messages: 0, ended: false })
                    .messages += 1;
            }
        } else if let Some(stage) = channel.topic.strip_suffix(&format!("/{}", engine::CONNECTION_EVENTS))
            && let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.data)
            && event["event"] == "disconnected"
            && let Some(id) = event["connection_id"].as_u64()
        {
            ended.insert((stage.to_owned(), id));
        }
    }
    for (channel, logged) in &mut chosen {
        logged.ended = ids.get(channel).is_some_and(|key| ended.contains(key));
    }
    Ok(chosen)
}

/// The line that says what the replay will open.
fn plan_line(plan: &BTreeMap<u16, Logged>) -> String {
    const SHOWN: usize = 8;
    let mut topics: Vec<&str> = plan.values().map(|l| l.topic.as_str()).take(SHOWN).collect();
    let more = format!("and {} more", plan.len().saturating_sub(SHOWN));
    if plan.len() > SHOWN {
        topics.push(&more);
    }
    let list = if topics.is_empty() { String::new() } else { format!(": {}", topics.join(", ")) };
    format!("opening {}, one per logged connection{list}", human::plural(plan.len() as u64, "connection"))
}

/// After the last packet, how long the peers get to read everything and
/// close their side.
const LINGER: Duration = Duration::from_secs(5);

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let kind = capture::file_kind(&args.file)?;
    if let Some(address) = &args.udp {
        if kind == capture::FileKind::Mcap && !(args.udp_ports.is_empty() && args.sources.is_empty()) {
            bail!(
                "--udp-port and --src choose datagrams of a capture: {} is an MCAP log",
                args.file.display()
            );
        }
        let target =
            udp_sender::UdpTarget::resolve(address, args.multicast_ttl, args.multicast_interface.as_deref())?;
        return udp::run(udp::UdpReplay {
            file: args.file,
            kind,
            target,
            speed: (!args.max).then_some(args.speed),
            topics: args.topics,
            filter: capture::CaptureFilter { ports: args.udp_ports, sources: args.sources },
        });
    }
    if kind != capture::FileKind::Mcap {
        bail!("{} is a packet capture: it replays over UDP only (--udp ADDR)", args.file.display());
    }
    let messages = connection_messages(&args.file)?;
    let plan = survey(&args)?;
    if plan.is_empty() && !(args.conns.is_empty() && args.topics.is_empty()) {
        bail!("no connection of {} matches --conn or --topic", args.file.display());
    }
    println!("{}", plan_line(&plan));
    let target = match (&args.connect, &args.listen) {
        (Some(address), _) => Target::Connect { addresses: resolve(address)?, name: address.clone() },
        (None, Some(address)) => {
            let listener = TcpListener::bind(resolve(address)?.as_slice())
                .with_context(|| format!("cannot listen on {address}"))?;
            println!("listening on {}", listener.local_addr()?);
            Target::Listen(listener)
        }
        (None, None) => unreachable!("clap requires --connect or --listen"),
    };
    let mut replay = Replay {
        target,
        plan,
        connections: HashMap::new(),
        pacer: Pacer { speed: (!args.max).then_some(args.speed), origin: None },
        messages: 0,
        bytes: 0,
    };
    let started = Instant::now();
    let progress = Progress::new();
    let total_messages: u64 = replay.plan.values().map(|l| l.messages).sum();
    for message in messages {
        let message =
            message.with_context(|| format!("replay stopped after {} messages", replay.messages))?;
        replay.send(&message)?;
        progress.show(|| {
            format!(
                "replayed {} of {} ({}) on {}",
                replay.messages,
                human::plural(total_messages, "message"),
                human::bytes(replay.bytes as f64),
                human::plural(replay.connections.len() as u64, "connection"),
            )
        });
    }
    progress.clear();
    replay.finish();
    println!(
        "replayed {} ({}) on {} in {:.2} s",
        human::plural(replay.messages, "message"),
        human::bytes(replay.bytes as f64),
        human::plural(replay.connections.len() as u64, "connection"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Target {
    Connect { addresses: Vec<SocketAddr>, name: String },
    Listen(TcpListener),
}

struct Replay {
    target: Target,
    /// The connections to replay, by the log's channel id; `messages`
    /// counts down as they are sent.
    plan: BTreeMap<u16, Logged>,
    /// By the log's channel id.
    connections: HashMap<u16, TcpStream>,
    pacer: Pacer,
    messages: u64,
    bytes: u64,
}

impl Replay {
    fn send(&mut self, message: &mcap::Message<'_>) -> anyhow::Result<()> {
        let channel = &message.channel;
        let Some(logged) = self.plan.get_mut(&channel.id) else { return Ok(()) };
        logged.messages = logged.messages.saturating_sub(1);
        let last = logged.messages == 0 && logged.ended;
        if !self.connections.contains_key(&channel.id) {
            let stream = self.open(&channel.topic)?;
            // One segment per packet where the network allows it.
            stream.set_nodelay(true)?;
            self.connections.insert(channel.id, stream);
        }
        self.pacer.wait_for(message.log_time)?;
        let stream = self.connections.get_mut(&channel.id).expect("opened above");
        stream.write_all(&message.data).with_context(|| {
            let peer = stream.peer_addr().map_or_else(|_| "the peer".to_owned(), |a| a.to_string());
            format!("cannot send {} to {peer}", channel.topic)
        })?;
        self.messages += 1;
        self.bytes += message.data.len() as u64;
        if last {
            // The logged connection ended here: so does this one (its
            // peer reads the rest; `finish` waits for it).
            let _ = stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// The connection replaying `topic`.
    fn open(&mut self, topic: &str) -> anyhow::Result<TcpStream> {
        match &self.target {
            Target::Connect { addresses, name } => {
                TcpStream::connect(addresses.as_slice()).with_context(|| format!("cannot connect to {name}"))
            }
            Target::Listen(listener) => {
                let waiting = Instant::now();
                let (stream, _) =
                    listener.accept().with_context(|| format!("cannot accept a client for {topic}"))?;
                // The original pace starts again when the client arrives.
                self.pacer.delay(waiting.elapsed());
                Ok(stream)
            }
        }
    }

    /// Closes our side of every connection, then lets the peers read the
    /// rest and close theirs (up to [`LINGER`]): closing with unread data
    /// would reset the connection and could drop what the peer has not
    /// read yet.
    fn finish(&mut self) {
        let deadline = Instant::now() + LINGER;
        for stream in self.connections.values_mut() {
            let _ = stream.shutdown(Shutdown::Write);
            let mut sink = [0; 4096];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match stream.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// Maps log times to wall-clock times.
#[derive(Debug)]
struct Pacer {
    /// `None`: as fast as possible.
    speed: Option<f64>,
    /// The first message's log time and when it was sent.
    origin: Option<(u64, Instant)>,
}

impl Pacer {
    /// Sleeps until the message logged at `log_time` is due.
    fn wait_for(&mut self, log_time: u64) -> anyhow::Result<()> {
        if let Some(due) = self.due(log_time)? {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        Ok(())
    }

    /// When the message logged at `log_time` is due; `None`: at once (no
    /// pacing).
    fn due(&mut self, log_time: u64) -> anyhow::Result<Option<Instant>> {
        let Some(speed) = self.speed else { return Ok(None) };
        let (origin_time, origin) = *self.origin.get_or_insert((log_time, Instant::now()));
        // A message logged before the first one (clocks of several
        // stages) is due at once.
        let offset_s = log_time.saturating_sub(origin_time) as f64 / 1e9 / speed;
        let due = Duration::try_from_secs_f64(offset_s)
            .ok()
            .and_then(|offset| origin.checked_add(offset))
            .with_context(|| format!("a message {offset_s:.0} s into the log cannot be scheduled"))?;
        Ok(Some(due))
    }

    /// Shifts the schedule by `by` (time spent waiting for a client).
    fn delay(&mut self, by: Duration) {
        if let Some((_, origin)) = &mut self.origin {
            *origin += by;
        }
    }
}

/// The addresses of `host:port`.
fn resolve(address: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addresses: Vec<SocketAddr> =
        address.to_socket_addrs().with_context(|| format!("invalid address {address}"))?.collect();
    if addresses.is_empty() {
        bail!("{address} resolves to no address");
    }
    Ok(addresses)
}

/// A positive, finite pace factor.
fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!("{text} is not a positive number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_follows_log_times_scaled() {
        let mut pacer = Pacer { speed: Some(10.0), origin: None };
        let start = Instant::now();
        pacer.wait_for(1_000_000_000).unwrap();
        pacer.wait_for(2_000_000_000).unwrap(); // 1 s of log at 10x: 100 ms
        let first = start.elapsed();
        pacer.wait_for(4_000_000_000).unwrap(); // 2 s more: 300 ms in all
        let second = start.elapsed();
        pacer.wait_for(1_200_000_000).unwrap(); // already due
        let elapsed = start.elapsed();
        // Both sides bounded: ignoring the speed would take 1 s and 3 s,
        // multiplying by it 10 s and 30 s. The upper bounds leave room
        // for a loaded machine.
        let slack = Duration::from_millis(400);
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(100) + slack,
            "{first:?}"
        );
        assert!(
            second >= Duration::from_millis(300) && second < Duration::from_millis(300) + slack,
            "{second:?}"
        );
        assert!(
            elapsed - second < Duration::from_millis(50),
            "a message already due waited {:?}",
            elapsed - second
        );
        let mut max = Pacer { speed: None, origin: None };
        max.wait_for(u64::MAX).unwrap();
    }

    #[test]
    fn connection_topics_split_into_stage_and_id() {
        assert_eq!(split_topic("ingest/packet_group/3"), Some(("ingest", 3)));
        assert_eq!(split_topic("a/b/packet_group/18446744073709551615"), Some(("a/b", u64::MAX)));
        assert_eq!(split_topic("ingest/socket_stats/3"), None);
        assert_eq!(split_topic("ingest/packet_group/x"), None);
    }

    #[test]
    fn speed_must_be_positive() {
        assert_eq!(parse_speed("2"), Ok(2.0));
        for bad in ["0", "-1", "nan", "inf", "fast"] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
    }
}
