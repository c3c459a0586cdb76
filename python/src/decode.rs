//! Python forms of the engine's records (engine/RECORDS.md), decoded by
//! the engine's own decoders.

use std::net::SocketAddr;

use engine::records::{
    self, Addr, ConnectionEvent, DatagramMeta, DisconnectReason, EgressOutcome, ReceivePath, SocketStats,
    TrafficStats, UdpSocketCounters, UdpSocketStats,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMemoryView, PySlice};

use crate::reader::{PySample, RingestError};

/// One packet of a packet group: the bytes of one receive on a connection.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", frozen, get_all)]
pub struct Packet {
    /// The connection (as in connection events, stats and egress).
    connection_id: u64,
    /// The remote end: ``(host, port)``.
    peer: (String, u16),
    /// When received, ``CLOCK_REALTIME`` ns since the Unix epoch.
    rx_realtime_ns: u64,
    /// When received, ``CLOCK_MONOTONIC`` ns.
    rx_monotonic_ns: u64,
    /// The bytes: a read-only memoryview within the sample's payload,
    /// valid while the sample is held.
    data: Py<PyAny>,
}

#[pymethods]
impl Packet {
    fn __repr__(&self, py: Python<'_>) -> String {
        let len = self.data.bind(py).len().unwrap_or(0);
        format!(
            "<ringest.Packet connection_id={} peer={}:{} len={len}>",
            self.connection_id, self.peer.0, self.peer.1
        )
    }
}

/// One datagram of a datagram group (a UDP stage's ``packet_group``): one
/// whole message of its sender.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", frozen, get_all)]
pub struct Datagram {
    /// The sender: ``(host, port)``.
    source: (String, u16),
    /// The address it was sent to (the host's own, or the multicast group):
    /// ``(host, port)``, or ``None`` when the kernel did not say.
    destination: Option<(String, u16)>,
    /// When the engine received it, ``CLOCK_REALTIME`` ns since the Unix epoch.
    rx_realtime_ns: u64,
    /// When the engine received it, ``CLOCK_MONOTONIC`` ns.
    rx_monotonic_ns: u64,
    /// When the kernel (or the network card: ``hardware_time``) received
    /// it, ``CLOCK_REALTIME`` ns; ``None`` without a kernel timestamp.
    kernel_rx_ns: Option<u64>,
    /// Whether ``kernel_rx_ns`` is the network card's clock.
    hardware_time: bool,
    /// Whether the datagram was longer than the stage's
    /// ``max_datagram_size_b``: ``data`` holds its first bytes only.
    truncated: bool,
    /// Whether the kernel had more control data than the engine took (the
    /// destination or the kernel time may be missing).
    control_truncated: bool,
    /// The datagram's length as sent (more than ``len(data)`` when truncated).
    original_len: u32,
    /// The ``FLAG_*`` bits of engine/RECORDS.md §8.
    flags: u16,
    /// The bytes: a read-only memoryview within the sample's payload,
    /// valid while the sample is held.
    data: Py<PyAny>,
}

#[pymethods]
impl Datagram {
    fn __repr__(&self, py: Python<'_>) -> String {
        let len = self.data.bind(py).len().unwrap_or(0);
        let to = self.destination.as_ref().map_or("?".to_owned(), |(host, port)| format!("{host}:{port}"));
        let truncated = if self.truncated { " truncated" } else { "" };
        format!("<ringest.Datagram {}:{} -> {to} len={len}{truncated}>", self.source.0, self.source.1)
    }
}

impl Datagram {
    fn new(meta: &DatagramMeta, data: Py<PyAny>) -> Self {
        let kernel = meta.kernel_time();
        Self {
            source: peer(meta.source),
            destination: (meta.destination.ip != [0; 16]).then(|| peer(meta.destination)),
            rx_realtime_ns: meta.rx_realtime_ns,
            rx_monotonic_ns: meta.rx_monotonic_ns,
            kernel_rx_ns: kernel.map(|(ns, _)| ns),
            hardware_time: kernel.is_some_and(|(_, hardware)| hardware),
            truncated: meta.truncated(),
            control_truncated: meta.flags & records::FLAG_CONTROL_TRUNCATED != 0,
            original_len: meta.original_len,
            flags: meta.flags,
            data,
        }
    }
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> PyErr {
    RingestError::new_err(format!("cannot decode {what}: {e}"))
}

fn peer(addr: Addr) -> (String, u16) {
    let addr = SocketAddr::from(addr);
    (addr.ip().to_canonical().to_string(), addr.port())
}

/// The sub-view of `view` (a memoryview of `payload`) over `part`, a slice
/// of `payload`.
/// Released with `sample`.
fn sub_view<'py>(
    sample: &PySample,
    view: &Bound<'py, PyMemoryView>,
    payload: &[u8],
    part: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let start = part.as_ptr() as usize - payload.as_ptr() as usize;
    let slice = PySlice::new(view.py(), start as isize, (start + part.len()) as isize, 1);
    let sub = view.get_item(slice)?;
    sample.track(&sub)?;
    Ok(sub)
}

/// The packets of the packet group `payload`, whose memoryview is `view`.
pub(crate) fn packets(
    sample: &PySample,
    view: &Bound<'_, PyMemoryView>,
    payload: &[u8],
) -> PyResult<Vec<Packet>> {
    let group = records::decode_group(payload).map_err(|e| decode_error("packet group", e))?;
    let mut packets = Vec::with_capacity(group.len());
    for packet in group {
        packets.push(Packet {
            connection_id: packet.meta.connection_id,
            peer: peer(packet.meta.peer),
            rx_realtime_ns: packet.meta.rx_realtime_ns,
            rx_monotonic_ns: packet.meta.rx_monotonic_ns,
            data: sub_view(sample, view, payload, packet.data)?.unbind(),
        });
    }
    Ok(packets)
}

/// The datagrams of the datagram group `payload`, whose memoryview is `view`.
pub(crate) fn datagrams(
    sample: &PySample,
    view: &Bound<'_, PyMemoryView>,
    payload: &[u8],
) -> PyResult<Vec<Datagram>> {
    let group = records::decode_datagram_group(payload).map_err(|e| decode_error("datagram group", e))?;
    let mut datagrams = Vec::with_capacity(group.len());
    for datagram in group {
        let data = sub_view(sample, view, payload, datagram.data)?.unbind();
        datagrams.push(Datagram::new(&datagram.meta, data));
    }
    Ok(datagrams)
}

/// decode_datagram_group(data) -> list[Datagram]
///
/// The datagrams of a datagram group record (``KIND_DATAGRAM_GROUP``) held
/// in a bytes-like object (e.g. ``Sample.copy()``); each datagram's
/// ``data`` is a read-only memoryview into ``data`` (no copy). A held
/// sample decodes with ``Sample.datagrams()`` instead.
#[pyfunction]
pub(crate) fn decode_datagram_group<'py>(data: &Bound<'py, PyAny>) -> PyResult<Vec<Datagram>> {
    let py = data.py();
    let view = PyMemoryView::from(data)?;
    let bytes = pyo3::buffer::PyBuffer::<u8>::get(data)?;
    if !bytes.is_c_contiguous() {
        return Err(pyo3::exceptions::PyValueError::new_err("a datagram group must be contiguous bytes"));
    }
    // The headers are decoded from a copy (reading the object in place
    // would need unsafe code here); the data views are into the object.
    let copy = bytes.to_vec(py)?;
    let group = records::decode_datagram_group(&copy).map_err(|e| decode_error("datagram group", e))?;
    // Flat bytes, whatever the object's shape (e.g. a 2-D uint8 array).
    let read_only = view.call_method1("cast", ("B",))?.call_method0("toreadonly")?;
    let mut datagrams = Vec::with_capacity(group.len());
    for datagram in group {
        let start = datagram.data.as_ptr() as usize - copy.as_ptr() as usize;
        let slice = PySlice::new(py, start as isize, (start + datagram.data.len()) as isize, 1);
        let data = read_only.get_item(slice)?.unbind();
        datagrams.push(Datagram::new(&datagram.meta, data));
    }
    Ok(datagrams)
}

/// A non-packet record by its kind.
pub(crate) fn by_kind(
    sample: &PySample,
    kind: u16,
    payload: &[u8],
    view: &Bound<'_, PyMemoryView>,
) -> PyResult<PyObject> {
    let py = view.py();
    let dict = match kind {
        records::KIND_CONNECTION_EVENT => decode_connection_event(py, payload)?,
        records::KIND_SOCKET_STATS => decode_socket_stats(py, payload)?,
        records::KIND_UDP_SOCKET_STATS => decode_udp_socket_stats(py, payload)?,
        records::KIND_DATAGRAM_EGRESS => {
            let (header, data) = records::decode_datagram_egress(payload)
                .map_err(|e| decode_error("datagram egress record", e))?;
            let dict = PyDict::new(py);
            dict.set_item("destination", header.destination.map(peer))?;
            dict.set_item("data", sub_view(sample, view, payload, data)?)?;
            dict
        }
        records::KIND_EGRESS => {
            let (header, data) =
                records::decode_egress(payload).map_err(|e| decode_error("egress record", e))?;
            let dict = PyDict::new(py);
            dict.set_item("target", header.target)?;
            dict.set_item("data", sub_view(sample, view, payload, data)?)?;
            dict
        }
        records::KIND_EGRESS_OUTCOME => {
            let outcome: EgressOutcome =
                records::decode(payload).map_err(|e| decode_error("egress outcome", e))?;
            egress_outcome(py, &outcome)?
        }
        other => return Err(RingestError::new_err(format!("unknown record kind {other}"))),
    };
    Ok(dict.into_any().unbind())
}

pub(crate) fn egress_outcome<'py>(py: Python<'py>, o: &EgressOutcome) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("egress_generation", o.egress_generation)?;
    dict.set_item("egress_shard", o.egress_shard)?;
    dict.set_item("egress_seq", o.egress_seq)?;
    dict.set_item("target", o.target)?;
    dict.set_item("bytes", o.bytes)?;
    dict.set_item("delivered", o.delivered)?;
    dict.set_item("dropped_buffer_full", o.dropped_buffer_full)?;
    dict.set_item("dropped_too_large", o.dropped_too_large)?;
    dict.set_item("dropped_connection_closed", o.dropped_connection_closed)?;
    Ok(dict)
}

/// decode_connection_event(data: bytes) -> dict
///
/// A connection event record (``KIND_CONNECTION_EVENT``): ``{"event":
/// "connected", "connection_id", "time_ns", "peer", "local"}`` or
/// ``{"event": "disconnected", "connection_id", "time_ns", "bytes_in",
/// "bytes_out", "reason"}`` (reason: ``"peer_closed"``,
/// ``"receive_timeout"``, ``"rejected"``, ``"shutdown"`` or
/// ``"error: <text>"``).
#[pyfunction]
pub(crate) fn decode_connection_event<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let event: ConnectionEvent = records::decode(data).map_err(|e| decode_error("connection event", e))?;
    let dict = PyDict::new(py);
    match event {
        ConnectionEvent::Connected { connection_id, time_ns, peer: remote, local } => {
            dict.set_item("event", "connected")?;
            dict.set_item("connection_id", connection_id)?;
            dict.set_item("time_ns", time_ns)?;
            dict.set_item("peer", peer(remote))?;
            dict.set_item("local", peer(local))?;
        }
        ConnectionEvent::Disconnected { connection_id, time_ns, bytes_in, bytes_out, reason } => {
            dict.set_item("event", "disconnected")?;
            dict.set_item("connection_id", connection_id)?;
            dict.set_item("time_ns", time_ns)?;
            dict.set_item("bytes_in", bytes_in)?;
            dict.set_item("bytes_out", bytes_out)?;
            let reason = match reason {
                DisconnectReason::PeerClosed => "peer_closed".to_owned(),
                DisconnectReason::ReceiveTimeout => "receive_timeout".to_owned(),
                DisconnectReason::Error(text) => format!("error: {text}"),
                DisconnectReason::Rejected => "rejected".to_owned(),
                DisconnectReason::Shutdown => "shutdown".to_owned(),
            };
            dict.set_item("reason", reason)?;
        }
    }
    Ok(dict)
}

fn traffic<'py>(py: Python<'py>, t: &TrafficStats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("bytes_received", t.bytes_received)?;
    dict.set_item("packets_received", t.packets_received)?;
    dict.set_item("bytes_sent", t.bytes_sent)?;
    dict.set_item("packets_sent", t.packets_sent)?;
    dict.set_item("bytes_received_per_s", t.bytes_received_per_s)?;
    dict.set_item("packets_received_per_s", t.packets_received_per_s)?;
    dict.set_item("bytes_sent_per_s", t.bytes_sent_per_s)?;
    dict.set_item("packets_sent_per_s", t.packets_sent_per_s)?;
    dict.set_item("mean_packet_size", t.mean_packet_size)?;
    dict.set_item("max_packet_size", t.max_packet_size)?;
    dict.set_item("egress_drops", t.egress_drops)?;
    Ok(dict)
}

/// decode_socket_stats(data: bytes) -> dict
///
/// A socket stats record (``KIND_SOCKET_STATS``) as nested dicts with the
/// field names of engine/RECORDS.md: ``time_ns``, ``interval_ns``,
/// ``receive_path``, ``stage`` (with ``traffic``) and ``connections``
/// (each with ``connection_id``, ``peer``, ``traffic``).
#[pyfunction]
pub(crate) fn decode_socket_stats<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let stats: SocketStats = records::decode(data).map_err(|e| decode_error("socket stats", e))?;
    let dict = PyDict::new(py);
    dict.set_item("time_ns", stats.time_ns)?;
    dict.set_item("interval_ns", stats.interval_ns)?;
    dict.set_item("receive_path", receive_path_name(stats.receive_path))?;
    let stage = PyDict::new(py);
    let s = &stats.stage;
    stage.set_item("open_connections", s.open_connections)?;
    stage.set_item("rejected_connections", s.rejected_connections)?;
    stage.set_item("groups_published", s.groups_published)?;
    stage.set_item("backpressure_stalls", s.backpressure_stalls)?;
    stage.set_item("receive_buffer_exhaustions", s.receive_buffer_exhaustions)?;
    stage.set_item("bind_failures", s.bind_failures)?;
    stage.set_item("traffic", traffic(py, &s.traffic)?)?;
    dict.set_item("stage", stage)?;
    let mut connections = Vec::with_capacity(stats.connections.len());
    for c in &stats.connections {
        let conn = PyDict::new(py);
        conn.set_item("connection_id", c.connection_id)?;
        conn.set_item("peer", peer(c.peer))?;
        conn.set_item("traffic", traffic(py, &c.traffic)?)?;
        connections.push(conn);
    }
    dict.set_item("connections", connections)?;
    Ok(dict)
}

fn receive_path_name(path: ReceivePath) -> &'static str {
    match path {
        ReceivePath::GlommioRead => "glommio_read",
        ReceivePath::IoUringMultishot => "io_uring_multishot",
    }
}

fn udp_counters<'py>(py: Python<'py>, c: &UdpSocketCounters) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("executor", c.executor)?;
    dict.set_item("local", peer(c.local))?;
    dict.set_item("datagrams", c.datagrams)?;
    dict.set_item("bytes", c.bytes)?;
    dict.set_item("datagrams_per_s", c.datagrams_per_s)?;
    dict.set_item("bytes_per_s", c.bytes_per_s)?;
    dict.set_item("kernel_drops", c.kernel_drops)?;
    dict.set_item("truncated", c.truncated)?;
    dict.set_item("ring_full_stalls", c.ring_full_stalls)?;
    dict.set_item("max_datagram_size", c.max_datagram_size)?;
    dict.set_item("egress_sent", c.egress_sent)?;
    dict.set_item("egress_drops", c.egress_drops)?;
    dict.set_item("kernel_receive_buffer_b", c.kernel_receive_buffer_b)?;
    Ok(dict)
}

/// decode_udp_socket_stats(data: bytes) -> dict
///
/// A UDP stage's socket stats record (``KIND_UDP_SOCKET_STATS``) as a dict
/// with the field names of engine/RECORDS.md §9: ``time_ns``,
/// ``interval_ns``, ``receive_path``, ``groups_published``, ``sockets``
/// (one dict per socket: ``executor``, ``local`` as ``(host, port)``,
/// ``datagrams``, ``bytes``, ``datagrams_per_s``, ``bytes_per_s``,
/// ``kernel_drops``, ``truncated``, ``ring_full_stalls``,
/// ``max_datagram_size``, ``egress_sent``, ``egress_drops``,
/// ``kernel_receive_buffer_b``) and ``total`` (the sockets' counters added
/// up, without ``executor`` and ``local``).
#[pyfunction]
pub(crate) fn decode_udp_socket_stats<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let stats: UdpSocketStats = records::decode(data).map_err(|e| decode_error("UDP socket stats", e))?;
    let dict = PyDict::new(py);
    dict.set_item("time_ns", stats.time_ns)?;
    dict.set_item("interval_ns", stats.interval_ns)?;
    dict.set_item("receive_path", receive_path_name(stats.receive_path))?;
    dict.set_item("groups_published", stats.groups_published)?;
    let sockets = stats.sockets.iter().map(|c| udp_counters(py, c)).collect::<PyResult<Vec<_>>>()?;
    dict.set_item("sockets", sockets)?;
    let total = udp_counters(py, &stats.total())?;
    total.del_item("executor")?;
    total.del_item("local")?;
    dict.set_item("total", total)?;
    Ok(dict)
}
