//! Cross-process one-way latency with busy-polling readers: the producer
//! (this process, core 0) publishes a record every 20 µs; one reader
//! process on core 1 busy-polls (shm-bus `Reader::recv_spin`, iceoryx2
//! `Subscriber::receive` in a loop). Prints p50/p99/p99.9 per run;
//! `--json PATH` also writes them for `bench-report`.

use std::error::Error;
use std::path::Path;

use ringest_benches::one_way::{self, PRODUCER_CORE};
use ringest_benches::results::{Mode, OneWay};
use ringest_benches::{Transport, pin_to_core};

const SIZES: [usize; 3] = [64, 4 << 10, 64 << 10];

fn main() -> Result<(), Box<dyn Error>> {
    pin_to_core(PRODUCER_CORE);
    let configs = SIZES.into_iter().flat_map(|size| {
        // The peers alternate, so drifting machine load hits both alike.
        Transport::ALL.map(|transport| OneWay {
            transport,
            mode: Mode::Spin,
            size,
            readers: 1,
            rate_hz: 50_000,
            warmup: 10_000,
            samples: 100_000,
        })
    });
    one_way::bench_main(Path::new(env!("CARGO_BIN_EXE_bench-peer")), configs)
}
