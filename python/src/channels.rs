//! `ringest.list_channels`.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shm_bus::{BusDir, ChannelState};

use crate::reader::RingestError;

/// list_channels(bus=None) -> list[dict]
///
/// The channels of a bus (default ``$RINGEST_BUS`` or ``/dev/shm/ringest``),
/// sorted by name, each a dict with ``name`` and either ``error`` (a
/// channel whose files cannot be read) or ``generation``,
/// ``producer_pid``, ``producer_alive`` (``None``: another pid namespace),
/// ``state`` (``"live"``, ``"ended"`` or ``"replaced"``), ``capacity``,
/// ``shards``, ``records_written``, ``bytes_written`` and ``readers`` (each
/// with ``slot``, ``pid``, ``alive``, ``gated``, ``received``, ``lost``,
/// ``lag_records``, ``lag_bytes``).
#[pyfunction]
#[pyo3(signature = (bus=None))]
pub(crate) fn list_channels(
    py: Python<'_>,
    bus: Option<std::path::PathBuf>,
) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let bus = bus.map(BusDir::new).unwrap_or_else(BusDir::from_env);
    let listings = shm_bus::list_channels(&bus)
        .map_err(|e| RingestError::new_err(format!("cannot list the bus {}: {e}", bus.path().display())))?;
    let mut out = Vec::with_capacity(listings.len());
    for listing in listings {
        let dict = PyDict::new(py);
        dict.set_item("name", &listing.name)?;
        match listing.info {
            Err(e) => dict.set_item("error", e.to_string())?,
            Ok(info) => {
                dict.set_item("generation", info.generation)?;
                dict.set_item("producer_pid", info.producer_pid)?;
                dict.set_item("producer_alive", info.producer_alive)?;
                let state = match info.state {
                    ChannelState::Live => "live".to_owned(),
                    ChannelState::Ended => "ended".to_owned(),
                    ChannelState::Replaced => "replaced".to_owned(),
                    ChannelState::Unknown(value) => format!("unknown ({value})"),
                };
                dict.set_item("state", state)?;
                dict.set_item("capacity", info.capacity)?;
                dict.set_item("shards", info.shards.len())?;
                dict.set_item("records_written", info.records_written())?;
                dict.set_item("bytes_written", info.bytes_written())?;
                let mut readers = Vec::with_capacity(info.readers.len());
                for r in &info.readers {
                    let reader = PyDict::new(py);
                    reader.set_item("slot", r.slot)?;
                    reader.set_item("pid", r.pid)?;
                    reader.set_item("alive", r.alive)?;
                    reader.set_item("gated", r.gated)?;
                    reader.set_item("received", r.received)?;
                    reader.set_item("lost", r.lost)?;
                    reader.set_item("lag_records", r.lag_records)?;
                    reader.set_item("lag_bytes", r.lag_bytes)?;
                    readers.push(reader);
                }
                dict.set_item("readers", readers)?;
            }
        }
        out.push(dict);
    }
    Ok(out)
}
