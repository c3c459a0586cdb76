//! The Rust consumer of the Python package's benchmark
//! (python/bench/sum_bytes.py): a gated reader of a stage's packet groups
//! that sums every byte of every packet, until the channel ends, and prints
//! `{"bytes": n, "seconds": s, "sum": n}` (seconds from the first record to
//! the end).
//!
//! cargo run --release -p ringest-python --example sum_bytes -- CHANNEL BUS

use std::time::{Duration, Instant};

use engine::records;
use shm_bus::{BusDir, Event, Reader, ReaderOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, channel, bus] = args.as_slice() else {
        eprintln!("usage: sum_bytes CHANNEL BUS");
        std::process::exit(2);
    };
    let mut reader = Reader::attach(&BusDir::new(bus), channel, ReaderOptions::gated())?;
    println!("attached");
    let (mut bytes, mut sum, mut first) = (0u64, 0u64, None);
    loop {
        match reader.recv_timeout(Duration::from_secs(1))? {
            Some(Event::Record(sample)) => {
                first.get_or_insert_with(Instant::now);
                if sample.kind() != records::KIND_PACKET_GROUP {
                    continue;
                }
                for packet in records::decode_group(sample.payload())? {
                    bytes += packet.data.len() as u64;
                    sum = packet.data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
                }
            }
            Some(Event::Ended) => break,
            Some(Event::Restarted { .. }) | None => {}
        }
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{{\"bytes\": {bytes}, \"seconds\": {seconds}, \"sum\": {sum}}}");
    Ok(())
}
