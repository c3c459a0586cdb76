//! The `ringest` Python package's native module (`ringest._ringest`): a
//! binding of shm-bus's [`shm_bus::Reader`] and of the engine's record
//! decoders, so that Python consumers run the same protocol code as the
//! Rust ones (no second implementation to keep in step).
//!
//! The Python-facing documentation is in `ringest/__init__.pyi` and in the
//! docstrings below.

#![deny(unsafe_code)]

mod channels;
mod decode;
mod egress;
#[allow(unsafe_code)]
mod reader;

use pyo3::prelude::*;

#[pymodule]
fn _ringest(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<reader::PyReader>()?;
    m.add_class::<reader::PySample>()?;
    m.add_class::<reader::Restarted>()?;
    m.add_class::<reader::Ended>()?;
    m.add_class::<decode::Packet>()?;
    m.add_class::<decode::Datagram>()?;
    m.add_function(wrap_pyfunction!(channels::list_channels, m)?)?;
    m.add_function(wrap_pyfunction!(egress::publish_egress, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_connection_event, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_socket_stats, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_udp_socket_stats, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_datagram_group, m)?)?;
    m.add("RingestError", m.py().get_type::<reader::RingestError>())?;
    m.add("KIND_PACKET_GROUP", engine::records::KIND_PACKET_GROUP)?;
    m.add("KIND_CONNECTION_EVENT", engine::records::KIND_CONNECTION_EVENT)?;
    m.add("KIND_SOCKET_STATS", engine::records::KIND_SOCKET_STATS)?;
    m.add("KIND_EGRESS", engine::records::KIND_EGRESS)?;
    m.add("KIND_EGRESS_OUTCOME", engine::records::KIND_EGRESS_OUTCOME)?;
    m.add("KIND_DATAGRAM_GROUP", engine::records::KIND_DATAGRAM_GROUP)?;
    m.add("KIND_UDP_SOCKET_STATS", engine::records::KIND_UDP_SOCKET_STATS)?;
    m.add("KIND_DATAGRAM_EGRESS", engine::records::KIND_DATAGRAM_EGRESS)?;
    Ok(())
}
