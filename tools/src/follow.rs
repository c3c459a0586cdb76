//! Following a channel: its records as they arrive, until it ends or
//! SIGINT/SIGTERM, leaving the bus cleanly (the reader detaches).

use std::time::Duration;

use shm_bus::{Event, Reader, Sample};

use crate::shutdown::StopSignals;

/// Longest wait for a record before looking for a stop signal again.
const POLL: Duration = Duration::from_millis(200);

/// Hands each record of `reader` to `show` until the channel ends, a stop
/// signal arrives, or `count` things were shown (`show` returns how many it
/// showed: a record may hold several packets, or nothing worth showing).
pub fn follow(
    reader: &mut Reader,
    count: Option<u64>,
    mut show: impl FnMut(Sample<'_>) -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let mut stop = StopSignals::install()?;
    let channel = reader.name().to_owned();
    let mut shown = 0;
    while stop.received().is_none() && count.is_none_or(|n| shown < n) {
        match reader.recv_timeout(POLL)? {
            Some(Event::Record(sample)) => shown += show(sample)?,
            Some(Event::Restarted { .. }) => {
                eprintln!("ringest: the producer of {channel} restarted; following the new one");
            }
            Some(Event::Ended) => break,
            None => {}
        }
    }
    Ok(())
}
