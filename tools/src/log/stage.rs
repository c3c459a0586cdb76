//! Recording one stage: a thread reads the stage's channels and writes
//! their records into the log file.
//!
//! One thread reads all of a stage's channels so that it can pair each
//! connection's first packet with its `Connected` event, which holds the
//! connection's local address: a channel's metadata is written before its
//! first message.
//!
//! A UDP stage publishes datagram groups on the same packet channel (and
//! its own statistics record on the stats channel): each record's kind says
//! which stage wrote it, so one recorder serves both.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::records::{self, ConnectionEvent, PacketMeta, SocketStats, UdpSocketStats};
use mcap::records::MessageHeader;
use serde_json::Value;
use shm_bus::{BusDir, Event, Reader, ReaderOptions, StartAt};

use super::mcap_writer::{DatagramFlow, McapWriter};
use super::{ControlChannel, StageSelection, json};
use crate::flags::StopFlag;

/// Longest wait for a record before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);
/// How long a new connection's first packet waits for its `Connected`
/// event (published before the connection's first packet, but on another
/// channel) before its channel is written without the local address.
const CONNECTED_WAIT: Duration = Duration::from_millis(200);

/// A channel being read.
struct Source {
    reader: Reader,
    /// Whether its records go into the file: connection events may be read
    /// only for the local addresses.
    logged: bool,
    ended: bool,
    /// The file's channel for a logged control channel, by record kind
    /// (added with the first record: its kind says its schema), and its
    /// next message sequence number.
    channels: HashMap<u16, (u16, u32)>,
}

impl Source {
    fn attach(bus: &BusDir, name: &str, options: ReaderOptions, logged: bool) -> anyhow::Result<Self> {
        let reader = Reader::attach(bus, name, options)?;
        Ok(Self { reader, logged, ended: false, channels: HashMap::new() })
    }

    /// Whether recording waits for this channel to end.
    fn active(&self) -> bool {
        self.logged && !self.ended
    }
}

/// A stage's channels, attached.
pub struct StageRecorder {
    stage: String,
    /// When the readers attached (`CLOCK_REALTIME`, like the records'
    /// times): earlier control records are history.
    attached_ns: u64,
    packets: Option<Source>,
    events: Option<Source>,
    stats: Option<Source>,
}

impl StageRecorder {
    /// Attaches to the channels `selection` names; gated readers if
    /// `lossless`. Packets and stats are read from now on; connection events
    /// from the oldest retained, for the local addresses of connections
    /// opened before the logger started (older events are not logged).
    pub fn attach(bus: &BusDir, selection: &StageSelection, lossless: bool) -> anyhow::Result<Self> {
        let stage = &selection.stage;
        let attached_ns = shm_bus::realtime_ns();
        let options = if lossless { ReaderOptions::gated() } else { ReaderOptions::lossy() };
        let channel = |suffix| engine::channel_name(stage, suffix);
        let packets = (selection.packets)
            .then(|| Source::attach(bus, &channel(engine::PACKET_GROUP), options, true))
            .transpose()?;
        let events_name = channel(engine::CONNECTION_EVENTS);
        let events = if selection.events {
            Some(Source::attach(bus, &events_name, options.start(StartAt::Oldest), true)?)
        } else if selection.packets {
            // Only for the local addresses: lossy, so it never slows the
            // engine, and optional.
            Source::attach(bus, &events_name, ReaderOptions::lossy().start(StartAt::Oldest), false).ok()
        } else {
            None
        };
        let stats = (selection.stats)
            .then(|| Source::attach(bus, &channel(engine::SOCKET_STATS), options, true))
            .transpose()?;
        Ok(Self { stage: stage.clone(), attached_ns, packets, events, stats })
    }

    /// Records into `writer` until every logged channel ends or `stop` is
    /// set.
    pub fn run(mut self, writer: Arc<Mutex<McapWriter>>, stop: &StopFlag) -> anyhow::Result<()> {
        let mut log = StageLog {
            stage: self.stage.clone(),
            writer,
            connections: HashMap::new(),
            flows: HashMap::new(),
            sources: HashSet::new(),
            locals: HashMap::new(),
            attached_ns: self.attached_ns,
            warned: false,
        };
        while !stop.is_stopped() && self.recording() {
            self.step(&mut log)?;
            lock(&log.writer).flush_if_due()?;
        }
        Ok(())
    }

    /// Whether a logged channel has not ended yet.
    fn recording(&self) -> bool {
        [&self.packets, &self.events, &self.stats].iter().any(|s| s.as_ref().is_some_and(Source::active))
    }

    /// Waits up to [`POLL`] for a packet group (or, without packets, a
    /// control record), then reads every control record that is ready.
    fn step(&mut self, log: &mut StageLog) -> anyhow::Result<()> {
        match self.packets.as_mut().filter(|s| !s.ended) {
            Some(packets) => log.poll_packets(packets, self.events.as_mut())?,
            None => {
                let (source, kind) = match self.events.as_mut().filter(|s| s.active()) {
                    Some(events) => (events, ControlChannel::ConnectionEvents),
                    None => {
                        (self.stats.as_mut().context("no channel to record")?, ControlChannel::SocketStats)
                    }
                };
                log.poll_control(source, kind, POLL)?;
            }
        }
        for (source, kind) in [
            (&mut self.events, ControlChannel::ConnectionEvents),
            (&mut self.stats, ControlChannel::SocketStats),
        ] {
            if let Some(source) = source {
                while log.poll_control(source, kind, Duration::ZERO)? {}
            }
        }
        Ok(())
    }
}

/// A connection's (or a datagram flow's) channel in the file.
struct ConnectionChannel {
    channel: u16,
    sequence: u32,
}

/// What one stage's records need besides the readers.
struct StageLog {
    stage: String,
    writer: Arc<Mutex<McapWriter>>,
    /// By connection id.
    connections: HashMap<u64, ConnectionChannel>,
    /// Datagram channels, by source, destination and truncation.
    flows: HashMap<DatagramFlow, ConnectionChannel>,
    /// Datagram sources seen: one topic each.
    sources: HashSet<SocketAddr>,
    /// Local addresses from `Connected` events, by connection id.
    locals: HashMap<u64, SocketAddr>,
    /// Control records of earlier times are history: not logged.
    attached_ns: u64,
    /// Whether an undecodable record was reported.
    warned: bool,
}

impl StageLog {
    /// Handles the next event of the packet channel, waiting up to [`POLL`].
    fn poll_packets(&mut self, packets: &mut Source, events: Option<&mut Source>) -> anyhow::Result<()> {
        match packets.reader.recv_timeout(POLL)? {
            Some(Event::Record(sample)) => {
                let (lost, publish_time) = (sample.lost_before(), sample.timestamp_ns());
                // A lossy reader's payload is a copy shm-bus validated before
                // delivery; a gated reader's cannot change under it (invalid
                // only if its slot was reaped): write either straight out.
                match (sample.is_valid().then(|| sample.payload()), sample.kind()) {
                    (None, _) => lock(&self.writer).count_lost(lost + 1),
                    (Some(group), records::KIND_PACKET_GROUP) => {
                        self.write_group(group, publish_time, lost, events)?
                    }
                    (Some(group), records::KIND_DATAGRAM_GROUP) => self.write_datagram_group(group, lost)?,
                    (Some(_), kind) => {
                        lock(&self.writer).count_lost(lost);
                        let channel = engine::channel_name(&self.stage, engine::PACKET_GROUP);
                        self.skip(&channel, &format!("record kind {kind} is not a packet or datagram group"));
                    }
                }
            }
            // Connection ids start again with the new producer.
            Some(Event::Restarted { .. }) => self.connections.clear(),
            Some(Event::Ended) => packets.ended = true,
            None => {}
        }
        Ok(())
    }

    /// Writes each packet of `group` on its connection's channel; `lost`
    /// groups were lost right before it.
    fn write_group(
        &mut self,
        group: &[u8],
        publish_time: u64,
        lost: u64,
        mut events: Option<&mut Source>,
    ) -> anyhow::Result<()> {
        let packets = match records::decode_group(group) {
            Ok(packets) => packets,
            Err(e) => {
                lock(&self.writer).count_lost(lost);
                self.skip(&engine::channel_name(&self.stage, engine::PACKET_GROUP), &e);
                return Ok(());
            }
        };
        for packet in packets.clone() {
            if !self.connections.contains_key(&packet.meta.connection_id) {
                self.open_connection(&packet.meta, events.as_deref_mut())?;
            }
        }
        let mut writer = lock(&self.writer);
        writer.count_group(lost);
        for packet in packets {
            let connection = self.connections.get_mut(&packet.meta.connection_id).expect("opened above");
            let header = MessageHeader {
                channel_id: connection.channel,
                sequence: next(&mut connection.sequence),
                log_time: packet.meta.rx_realtime_ns,
                publish_time,
            };
            writer.write_packet(&header, packet.data)?;
        }
        Ok(())
    }

    /// Writes each datagram of `group` on the channel of its source,
    /// destination and truncation; `lost` groups were lost right before it.
    /// A datagram's log time is the kernel's receive time when the engine
    /// has it, else the engine's; its publish time is the engine's.
    fn write_datagram_group(&mut self, group: &[u8], lost: u64) -> anyhow::Result<()> {
        let datagrams = match records::decode_datagram_group(group) {
            Ok(datagrams) => datagrams,
            Err(e) => {
                lock(&self.writer).count_lost(lost);
                self.skip(&engine::channel_name(&self.stage, engine::PACKET_GROUP), &e);
                return Ok(());
            }
        };
        let mut writer = lock(&self.writer);
        writer.count_group(lost);
        for datagram in datagrams {
            let meta = &datagram.meta;
            // An all-zero destination: the kernel did not say (RECORDS.md §8).
            let destination = (meta.destination.ip != [0; 16]).then(|| SocketAddr::from(meta.destination));
            let flow = DatagramFlow { source: meta.source.into(), destination, truncated: meta.truncated() };
            let channel = match self.flows.entry(flow) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let new_source = self.sources.insert(flow.source);
                    let channel = writer.add_datagram_channel(&self.stage, &flow, new_source)?;
                    entry.insert(ConnectionChannel { channel, sequence: 0 })
                }
            };
            let header = MessageHeader {
                channel_id: channel.channel,
                sequence: next(&mut channel.sequence),
                log_time: meta.kernel_time().map_or(meta.rx_realtime_ns, |(kernel_ns, _)| kernel_ns),
                publish_time: meta.rx_realtime_ns,
            };
            writer.write_datagram(&header, datagram.data, flow.truncated)?;
        }
        Ok(())
    }

    /// Adds the channel of a connection seen for the first time.
    fn open_connection(&mut self, meta: &PacketMeta, events: Option<&mut Source>) -> anyhow::Result<()> {
        let id = meta.connection_id;
        if let Some(events) = events {
            let deadline = Instant::now() + CONNECTED_WAIT;
            while !self.locals.contains_key(&id) && !events.ended {
                let left = deadline.saturating_duration_since(Instant::now());
                if !self.poll_control(events, ControlChannel::ConnectionEvents, left)? {
                    break;
                }
            }
        }
        let local = self.locals.get(&id).copied();
        let channel = lock(&self.writer).add_connection(&self.stage, id, meta.peer.into(), local)?;
        self.connections.insert(id, ConnectionChannel { channel, sequence: 0 });
        Ok(())
    }

    /// Handles the next event of a control channel, waiting up to `wait`;
    /// returns whether there was a record.
    fn poll_control(
        &mut self,
        source: &mut Source,
        kind: ControlChannel,
        wait: Duration,
    ) -> anyhow::Result<bool> {
        let sample = match source.reader.recv_timeout(wait)? {
            Some(Event::Record(sample)) => sample,
            Some(Event::Restarted { .. }) => {
                self.locals.clear();
                return Ok(true);
            }
            Some(Event::Ended) => {
                source.ended = true;
                return Ok(false);
            }
            None => return Ok(false),
        };
        let record_kind = sample.kind();
        let decoded = ControlRecord::decode(kind, record_kind, sample.payload());
        // Decoding copied what it needs: a lossy reader checks now whether
        // the record was overwritten meanwhile.
        let valid = sample.is_valid();
        let (lost, publish_time) = (sample.lost_before() + u64::from(!valid), sample.timestamp_ns());
        drop(sample);
        if source.logged {
            lock(&self.writer).count_lost(lost);
        }
        let record = match decoded {
            _ if !valid => return Ok(true),
            Ok(record) => record,
            Err(e) => {
                self.skip(source.reader.name(), &e);
                return Ok(true);
            }
        };
        if let Some((id, local)) = record.connected {
            self.locals.insert(id, local);
        }
        if source.logged && record.time_ns >= self.attached_ns {
            let mut writer = lock(&self.writer);
            let (channel_id, sequence) = match source.channels.entry(record_kind) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    entry.insert((writer.add_control_channel(&self.stage, kind, record_kind)?, 0))
                }
            };
            let header = MessageHeader {
                channel_id: *channel_id,
                sequence: next(sequence),
                log_time: record.time_ns,
                publish_time,
            };
            writer.write_json(&header, &record.json)?;
        }
        Ok(true)
    }

    /// Counts a record that does not decode; says so the first time.
    fn skip(&mut self, channel: &str, error: &dyn Display) {
        if !self.warned {
            eprintln!("ringest log: skipping undecodable records of {channel}, the first: {error}");
            self.warned = true;
        }
        lock(&self.writer).count_skipped();
    }
}

/// A control record, decoded.
struct ControlRecord {
    json: Value,
    /// The time it carries: the message's log time.
    time_ns: u64,
    /// For a `Connected` event: the connection's id and local address.
    connected: Option<(u64, SocketAddr)>,
}

impl ControlRecord {
    fn decode(kind: ControlChannel, record_kind: u16, payload: &[u8]) -> Result<Self, records::DecodeError> {
        Ok(match kind {
            ControlChannel::ConnectionEvents => {
                let event = records::decode::<ConnectionEvent>(payload)?;
                let (time_ns, connected) = match &event {
                    ConnectionEvent::Connected { connection_id, time_ns, local, .. } => {
                        (*time_ns, Some((*connection_id, SocketAddr::from(*local))))
                    }
                    ConnectionEvent::Disconnected { time_ns, .. } => (*time_ns, None),
                };
                Self { json: json::connection_event(&event), time_ns, connected }
            }
            ControlChannel::SocketStats if record_kind == records::KIND_UDP_SOCKET_STATS => {
                let stats = records::decode::<UdpSocketStats>(payload)?;
                Self { json: json::udp_socket_stats(&stats), time_ns: stats.time_ns, connected: None }
            }
            ControlChannel::SocketStats => {
                let stats = records::decode::<SocketStats>(payload)?;
                Self { json: json::socket_stats(&stats), time_ns: stats.time_ns, connected: None }
            }
        })
    }
}

/// The next message sequence number of a channel (wrapping, as MCAP's are
/// 32 bits).
fn next(sequence: &mut u32) -> u32 {
    let current = *sequence;
    *sequence = sequence.wrapping_add(1);
    current
}

/// The writer, shared by the stages' threads. A poisoned lock means a
/// recorder thread panicked mid-write: nothing sensible is left to do.
fn lock(writer: &Mutex<McapWriter>) -> MutexGuard<'_, McapWriter> {
    writer.lock().expect("a recorder thread panicked while writing the log")
}
