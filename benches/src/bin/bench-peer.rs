//! A reader process of the one-way latency and fan-out benchmarks (see
//! `ringest_benches::one_way`); they start it, nobody else does.

use std::error::Error;

use ringest_benches::one_way::{self, PeerArgs};

fn main() -> Result<(), Box<dyn Error>> {
    let arg = std::env::args().nth(1).ok_or("usage: bench-peer PEER_ARGS_JSON")?;
    let args: PeerArgs = serde_json::from_str(&arg)?;
    one_way::serve(&args)
}
