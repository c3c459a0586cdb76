//! Fan-out: one producer, 1, 4 and 8 lossless reader processes, 10k
//! records/s. With 8 readers on 2 cores busy-polling is meaningless, so
//! readers sleep in the transport's blocking wait (shm-bus
//! `Reader::recv_timeout`, a futex; iceoryx2 `Listener::timed_wait` on an
//! event service the producer notifies after each record) and this
//! measures wake-up latency under fan-out. Beside the two transports runs
//! the machine's floor for it (`futex_floor`: stamps in a shared page and
//! one futex broadcast, no transport). Prints p50/p99/p99.9 per reader;
//! `--json PATH` also writes them for `bench-report`.

use std::error::Error;
use std::path::Path;

use ringest_benches::Transport;
use ringest_benches::one_way;
use ringest_benches::results::{Mode, OneWay};

const READERS: [usize; 3] = [1, 4, 8];

fn main() -> Result<(), Box<dyn Error>> {
    let configs = READERS.into_iter().flat_map(|readers| {
        // The peers alternate, so drifting machine load hits both alike.
        Transport::FANOUT.map(|transport| OneWay {
            transport,
            mode: Mode::Block,
            size: 64,
            readers,
            rate_hz: 10_000,
            warmup: 1_000,
            samples: 30_000,
        })
    });
    one_way::bench_main(Path::new(env!("CARGO_BIN_EXE_bench-peer")), configs)
}
