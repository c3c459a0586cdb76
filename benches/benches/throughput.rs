//! Publish + consume throughput, lossless, shm-bus against iceoryx2.
//!
//! The producer runs on this thread, pinned to core 0; a consumer thread
//! pinned to core 1 busy-polls. Criterion times rounds of N records from
//! the first publish until the consumer has read the last one, so one
//! criterion iteration is one record.
//!
//! shm-bus runs with its default options (a hot window of 2 MiB) on a ring
//! of iceoryx2's queue depth. Variants reported apart from the comparison:
//! `shm-bus-batch16` publishes once per 16 records (iceoryx2 has no
//! counterpart), and where the equal-depth ring is larger than 4 MiB,
//! `shm-bus-ring4MiB` uses a 4 MiB ring and `shm-bus-whole-ring` the
//! equal-depth ring without a hot window: the writer then cycles through
//! all of its memory, more than stays in cache.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringest_benches::iceoryx::{IoxConsumer, IoxPublisher, unique_service_name};
use ringest_benches::shm::{PrivateBus, ShmConsumer, ShmPublisher, ring_capacity};
use ringest_benches::{Consume, Publish, Stamps, THROUGHPUT_SIZES, pin_to_core, record_template, size_label};

const PRODUCER_CORE: usize = 0;
const CONSUMER_CORE: usize = 1;
const BATCH: usize = 16;
const SMALL_RING: u64 = 4 << 20;

/// A producer and its consumer thread, kept across criterion's rounds.
struct Pipeline<P: Publish> {
    publisher: P,
    record: Vec<u8>,
    next_seq: u64,
    /// Records to consume in the next round; dropping it stops the consumer.
    rounds: Option<mpsc::Sender<u64>>,
    /// When the consumer read the last record of a round.
    finished: mpsc::Receiver<Instant>,
    consumer: Option<JoinHandle<()>>,
}

impl<P: Publish> Pipeline<P> {
    /// Starts a consumer thread that opens its end with `open` (transport
    /// ports may not move between threads) and waits until it has.
    fn start<C: Consume>(publisher: P, size: usize, open: impl FnOnce() -> C + Send + 'static) -> Self {
        let (rounds, round_sizes) = mpsc::channel::<u64>();
        let (finish, finished) = mpsc::channel();
        let consumer = std::thread::spawn(move || {
            pin_to_core(CONSUMER_CORE);
            let mut consumer = open();
            // Opened: the producer may start.
            finish.send(Instant::now()).expect("producer gone");
            let mut expected = 0;
            for n in round_sizes {
                for _ in 0..n {
                    let stamps = consumer.next_spin();
                    assert_eq!(stamps, Stamps { head: expected, tail: expected }, "lost or torn record");
                    expected += 1;
                }
                finish.send(Instant::now()).expect("producer gone");
            }
        });
        finished.recv().expect("the consumer failed to open");
        Self {
            publisher,
            record: record_template(size),
            next_seq: 0,
            rounds: Some(rounds),
            finished,
            consumer: Some(consumer),
        }
    }

    fn round(&mut self, records: u64) -> Duration {
        self.rounds.as_ref().expect("running").send(records).expect("consumer gone");
        let start = Instant::now();
        for _ in 0..records {
            Stamps { head: self.next_seq, tail: self.next_seq }.write(&mut self.record);
            self.publisher.publish(&self.record);
            self.next_seq += 1;
        }
        self.publisher.flush();
        self.finished.recv().expect("consumer gone") - start
    }
}

impl<P: Publish> Drop for Pipeline<P> {
    fn drop(&mut self) {
        drop(self.rounds.take());
        if let Some(consumer) = self.consumer.take()
            && consumer.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the consumer thread panicked");
        }
    }
}

fn shm_pipeline(bus: &PrivateBus, size: usize, capacity: u64, batch: usize) -> Pipeline<ShmPublisher> {
    let channel = format!("throughput-{}-ring{capacity}-batch{batch}", size_label(size));
    let publisher =
        ShmPublisher::create(&bus.bus(), &channel, capacity, batch).expect("create shm-bus channel");
    let bus = bus.bus();
    Pipeline::start(publisher, size, move || ShmConsumer::attach(&bus, &channel).expect("attach"))
}

/// The equal-depth ring without a hot window: the writer cycles through
/// all of it, as it did before hot windows were the default.
fn whole_ring_pipeline(bus: &PrivateBus, size: usize, capacity: u64) -> Pipeline<ShmPublisher> {
    let channel = format!("throughput-{}-ring{capacity}-whole", size_label(size));
    let opts = shm_bus::ChannelOptions { capacity, hot_window: 0, ..Default::default() };
    let publisher = ShmPublisher::create_with(&bus.bus(), &channel, opts, 1).expect("create shm-bus channel");
    let bus = bus.bus();
    Pipeline::start(publisher, size, move || ShmConsumer::attach(&bus, &channel).expect("attach"))
}

fn iceoryx_pipeline(size: usize) -> Pipeline<IoxPublisher> {
    let service = unique_service_name(&format!("throughput-{}", size_label(size)));
    let publisher = IoxPublisher::create(&service, size, 1, false).expect("create iceoryx2 publisher");
    Pipeline::start(publisher, size, move || IoxConsumer::open(&service, size, 1, false).expect("subscribe"))
}

fn throughput(c: &mut Criterion) {
    pin_to_core(PRODUCER_CORE);
    let bus = PrivateBus::new().expect("bus directory");
    for size in THROUGHPUT_SIZES {
        let mut group = c.benchmark_group(format!("throughput-{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        // The peers alternate, so drifting machine load hits both alike.
        let mut shm = shm_pipeline(&bus, size, ring_capacity(size), 1);
        group.bench_function("shm-bus", |b| b.iter_custom(|n| shm.round(n)));
        drop(shm);
        let mut iceoryx = iceoryx_pipeline(size);
        group.bench_function("iceoryx2", |b| b.iter_custom(|n| iceoryx.round(n)));
        drop(iceoryx);
        let mut batched = shm_pipeline(&bus, size, ring_capacity(size), BATCH);
        group.bench_function(format!("shm-bus-batch{BATCH}"), |b| b.iter_custom(|n| batched.round(n)));
        drop(batched);
        if ring_capacity(size) > SMALL_RING {
            let mut small = shm_pipeline(&bus, size, SMALL_RING, 1);
            let name = format!("shm-bus-ring{}", size_label(SMALL_RING as usize));
            group.bench_function(name, |b| b.iter_custom(|n| small.round(n)));
            drop(small);
            let mut whole = whole_ring_pipeline(&bus, size, ring_capacity(size));
            group.bench_function("shm-bus-whole-ring", |b| b.iter_custom(|n| whole.round(n)));
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = throughput
}
criterion_main!(benches);
