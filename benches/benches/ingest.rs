//! Micro-benchmarks of the hot pieces of the ingest path, single-threaded:
//!
//! - `group_encode`: filling a TcpPacketGroup in place with
//!   `engine::records::GroupWriter` (copy each packet's bytes where a
//!   `recv` would put them, commit its header, close the group);
//! - `group_decode`: `engine::records::decode_group` and a pass over every
//!   packet header, as a consumer does;
//! - `shm_publish_consume`: one group per iteration through a one-shard
//!   shm-bus channel: reserve, fill, commit, publish, then a gated reader
//!   takes it and decodes it;
//! - `mcap_write`: the logger's MCAP writer (mcap 0.26, 4 MiB chunks) writing
//!   packets to a file on tmpfs (`/dev/shm`), uncompressed and lz4. The
//!   packets are pseudo-random bytes, which lz4 cannot shrink: the worst
//!   case, and what already compressed sensor data looks like.
//!
//! Throughput is in packet bytes (group headers and padding not counted),
//! except for decoding, which reads headers only: packets per second.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::records::{GroupWriter, KIND_PACKET_GROUP, PacketMeta, decode_group};
use ringest_benches::ingest::message::filler;
use ringest_benches::shm::PrivateBus;
use shm_bus::{ChannelOptions, Event, Producer, Reader, ReaderOptions};

/// (packets per group, bytes per packet): the engine's default group size
/// with small packets, and as many 64 KiB receives as a 1 MiB group holds.
const GROUPS: [(usize, usize); 3] = [(64, 256), (64, 1 << 10), (15, 64 << 10)];

fn meta(i: usize) -> PacketMeta {
    PacketMeta {
        connection_id: i as u64 % 16,
        peer: "127.0.0.1:40000".parse::<std::net::SocketAddr>().expect("address").into(),
        rx_realtime_ns: 1_700_000_000_000_000_000 + i as u64,
        rx_monotonic_ns: i as u64,
    }
}

/// Fills `buf` with a group of `packets` packets of `data`; returns its length.
fn encode(buf: &mut [u8], packets: usize, data: &[u8]) -> usize {
    let mut group = GroupWriter::new();
    for i in 0..packets {
        group.packet_space(buf)[..data.len()].copy_from_slice(data);
        group.commit_packet(buf, &meta(i), data.len());
    }
    group.close(buf)
}

/// Touches every packet header of a group; returns the bytes it carries.
fn consume(record: &[u8]) -> usize {
    let packets = decode_group(record).expect("a valid group");
    packets
        .map(|p| {
            std::hint::black_box(p.meta.connection_id);
            p.data.len()
        })
        .sum()
}

fn label(packets: usize, size: usize) -> String {
    format!("{packets}x{}", ringest_benches::size_label(size))
}

fn group_codec(c: &mut Criterion) {
    let mut encode_group = c.benchmark_group("group_encode");
    for (packets, size) in GROUPS {
        let data = filler(1, size);
        let mut buf = vec![0u8; GroupWriter::capacity_for(packets, size)];
        encode_group.throughput(Throughput::Bytes((packets * size) as u64));
        encode_group.bench_function(BenchmarkId::from_parameter(label(packets, size)), |b| {
            b.iter(|| std::hint::black_box(encode(&mut buf, packets, &data)))
        });
    }
    encode_group.finish();
    let mut decode = c.benchmark_group("group_decode");
    for (packets, size) in GROUPS {
        let data = filler(1, size);
        let mut buf = vec![0u8; GroupWriter::capacity_for(packets, size)];
        let len = encode(&mut buf, packets, &data);
        // Decoding reads headers only: packets per second is the figure.
        decode.throughput(Throughput::Elements(packets as u64));
        decode.bench_function(BenchmarkId::from_parameter(label(packets, size)), |b| {
            b.iter(|| std::hint::black_box(consume(&buf[..len])))
        });
    }
    decode.finish();
}

fn shm_publish_consume(c: &mut Criterion) {
    let bus = PrivateBus::new().expect("a private bus in /dev/shm");
    let mut group = c.benchmark_group("shm_publish_consume");
    for (packets, size) in GROUPS {
        let name = format!("groups-{packets}-{size}");
        let opts = ChannelOptions { capacity: 64 << 20, ..ChannelOptions::default() };
        let producer = Producer::create(&bus.bus(), &name, opts).expect("channel");
        let mut writer = producer.shard(0).expect("shard");
        let mut reader = Reader::attach(&bus.bus(), &name, ReaderOptions::gated()).expect("reader");
        let data = filler(2, size);
        let capacity = GroupWriter::capacity_for(packets, size);
        group.throughput(Throughput::Bytes((packets * size) as u64));
        group.bench_function(BenchmarkId::from_parameter(label(packets, size)), |b| {
            b.iter(|| {
                let pending = writer.reserve_pending(capacity).expect("the reader keeps up");
                let len = encode(writer.pending_buf(&pending), packets, &data);
                writer.commit_pending(pending, len, KIND_PACKET_GROUP, 0);
                writer.publish();
                match reader.try_recv().expect("receive") {
                    Some(Event::Record(sample)) => std::hint::black_box(consume(sample.payload())),
                    other => panic!("expected the group, got {other:?}"),
                }
            })
        });
        drop(reader);
        drop(writer);
        drop(producer);
    }
    group.finish();
}

/// The MCAP writer set-ups measured: the name and the options on top of
/// 4 MiB chunks.
fn mcap_variants() -> Vec<(&'static str, mcap::WriteOptions)> {
    let chunked = |compression| mcap::WriteOptions::new().compression(compression).chunk_size(Some(4 << 20));
    vec![
        ("none", chunked(None)),
        ("none-no-crc", chunked(None).calculate_data_section_crc(false).calculate_chunk_crcs(false)),
        ("unchunked", mcap::WriteOptions::new().use_chunks(false)),
        ("lz4", chunked(Some(mcap::Compression::Lz4))),
    ]
}

fn mcap_write(c: &mut Criterion) {
    let dir = tempfile::Builder::new().prefix("ringest-bench-mcap-").tempdir_in("/dev/shm").expect("a tmpfs");
    let mut group = c.benchmark_group("mcap_write");
    for (name, options) in mcap_variants() {
        for size in [1 << 10, 64 << 10] {
            let data = filler(3, size);
            group.throughput(Throughput::Bytes(size as u64));
            let id = BenchmarkId::new(name, ringest_benches::size_label(size));
            group.bench_function(id, |b| {
                b.iter_custom(|messages| {
                    let path = dir.path().join("bench.mcap");
                    let file = BufWriter::with_capacity(1 << 20, File::create(&path).expect("file"));
                    let mut writer = options.clone().create(file).expect("writer");
                    let channel = writer
                        .add_channel(0, "ingest/packet_group/1", "application/octet-stream", &BTreeMap::new())
                        .expect("channel");
                    let start = Instant::now();
                    for seq in 0..messages {
                        let header = mcap::records::MessageHeader {
                            channel_id: channel,
                            sequence: seq as u32,
                            log_time: seq,
                            publish_time: seq,
                        };
                        writer.write_to_known_channel(&header, &data).expect("write");
                    }
                    writer.finish().expect("finish");
                    drop(writer);
                    let elapsed = start.elapsed();
                    std::fs::remove_file(&path).expect("remove");
                    elapsed
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = group_codec, shm_publish_consume, mcap_write
}
criterion_main!(benches);
