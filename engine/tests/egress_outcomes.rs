//! What became of each egress record, as the stage publishes it on
//! `<stage>/egress_outcomes`: delivered, dropped (buffer full, larger than
//! the buffer, connection closed), or meant for no open connection. Real
//! sockets on 127.0.0.1, a private bus.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{DEADLINE, Events, bus, server_config, start, wait_for_egress_reader};
use engine::records::{self, ConnectionEvent, EgressHeader, EgressOutcome};
use shm_bus::{ChannelOptions, Event, Producer, Reader, ReaderOptions, ShardWriter};

/// Publishes egress records and reads their outcomes.
struct Egress {
    _producer: Producer,
    writer: ShardWriter,
    generation: u64,
    outcomes: Reader,
}

impl Egress {
    fn new(bus: &shm_bus::BusDir, stage: &str) -> Self {
        let outcomes =
            Reader::attach(bus, &format!("{stage}/egress_outcomes"), ReaderOptions::lossy()).unwrap();
        let name = format!("{stage}/egress_packets");
        let producer =
            Producer::create(bus, &name, ChannelOptions { capacity: 1 << 20, ..Default::default() }).unwrap();
        let writer = producer.shard(0).unwrap();
        wait_for_egress_reader(bus, &name);
        Self { generation: producer.generation(), _producer: producer, writer, outcomes }
    }

    /// Publishes `len` bytes for `target`; returns the record's seq.
    fn send(&mut self, target: Option<u64>, len: usize) -> u64 {
        let record = records::encode_egress(&EgressHeader { target }, &vec![0x5a; len]);
        self.writer.send(records::KIND_EGRESS, &record).unwrap()
    }

    /// The outcome of record `seq` (outcomes come in the order records settle).
    fn outcome(&mut self, seq: u64) -> EgressOutcome {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(Event::Record(sample)) =
                self.outcomes.recv_timeout(Duration::from_millis(50)).unwrap()
            {
                assert_eq!(sample.kind(), records::KIND_EGRESS_OUTCOME);
                let outcome: EgressOutcome = records::decode(sample.payload()).unwrap();
                assert_eq!((outcome.egress_generation, outcome.egress_shard), (self.generation, 0));
                if outcome.egress_seq == seq {
                    return outcome;
                }
            }
        }
        panic!("no outcome for egress record {seq}");
    }
}

#[test]
fn each_egress_record_gets_its_outcome() {
    let t = bus();
    let mut config = server_config("out");
    config.egress_buffer_size_b = 16 << 10;
    config.kernel_transmit_buffer_size_b = 4096;
    let (engine, addr) = start(&t.bus, config);
    let mut events = Events::attach(&t.bus, "out");
    let mut egress = Egress::new(&t.bus, "out");
    let mut client = TcpStream::connect(addr).unwrap();
    let mut id = None;
    events.until("the client", |e| {
        id = e.iter().find_map(|e| match e {
            ConnectionEvent::Connected { connection_id, .. } => Some(*connection_id),
            _ => None,
        });
        id.is_some()
    });
    let id = id.unwrap();

    let seq = egress.send(Some(id), 100);
    let delivered = egress.outcome(seq);
    assert_eq!(
        delivered,
        EgressOutcome {
            egress_generation: egress.generation,
            egress_shard: 0,
            egress_seq: seq,
            target: Some(id),
            bytes: 100,
            delivered: 1,
            ..Default::default()
        }
    );
    let mut first = [0; 100];
    client.read_exact(&mut first).unwrap();
    assert_eq!(first, [0x5a; 100]);

    let seq = egress.send(Some(id + 1000), 10);
    let unmatched = egress.outcome(seq);
    assert!(unmatched.unmatched() && unmatched.target == Some(id + 1000), "{unmatched:?}");

    let seq = egress.send(None, (16 << 10) + 1);
    let too_large = egress.outcome(seq);
    assert_eq!((too_large.dropped_too_large, too_large.dropped()), (1, 1), "{too_large:?}");

    // The client reads nothing more: the socket's buffers fill, then the
    // egress buffer, then records are dropped.
    let mut queued = Vec::new();
    let full = loop {
        assert!(queued.len() < 10_000, "the egress buffer never filled");
        let seq = egress.send(Some(id), 4000);
        queued.push(seq);
        std::thread::sleep(Duration::from_millis(1));
        // Delivered ones settle at once; drops too; the rest wait.
        let deadline = Instant::now() + Duration::from_millis(20);
        let mut full = None;
        while Instant::now() < deadline {
            if let Ok(Some(Event::Record(sample))) = egress.outcomes.recv_timeout(Duration::from_millis(5)) {
                let outcome: EgressOutcome = records::decode(sample.payload()).unwrap();
                queued.retain(|&s| s != outcome.egress_seq);
                if outcome.dropped_buffer_full == 1 {
                    full = Some(outcome);
                }
            }
        }
        if let Some(outcome) = full {
            break outcome;
        }
    };
    assert_eq!((full.delivered, full.dropped()), (0, 1), "{full:?}");
    // What waits in the egress buffer is dropped when the connection closes.
    assert!(!queued.is_empty(), "records wait in the egress buffer");
    drop(client);
    let mut closed = 0;
    let deadline = Instant::now() + DEADLINE;
    while !queued.is_empty() {
        assert!(Instant::now() < deadline, "no outcome for records {queued:?}");
        if let Some(Event::Record(sample)) = egress.outcomes.recv_timeout(Duration::from_millis(50)).unwrap()
        {
            let outcome: EgressOutcome = records::decode(sample.payload()).unwrap();
            queued.retain(|&s| s != outcome.egress_seq);
            // Written before the close (the socket took it late), or dropped by it.
            assert_eq!(outcome.delivered + outcome.dropped_connection_closed, 1, "{outcome:?}");
            closed += outcome.dropped_connection_closed;
        }
    }
    assert!(closed > 0, "no record was waiting when the connection closed");
    engine.stop().unwrap();
}
