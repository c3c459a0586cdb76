//! `ringest.Reader` and `ringest.Sample`: the zero-copy read path.
//!
//! Python cannot hold a Rust borrow, so the reader keeps its current
//! [`Sample`] itself (a self-referential pair, [`HeldReader`]): the record
//! stays valid, and a gated reader keeps the producer off it, until the
//! Python sample is released, dropped, or the reader receives the next
//! event. The Python sample exports the payload through the buffer
//! protocol and counts its exports, so the record is never released while
//! a memoryview or numpy array still points into it. This is the crate's
//! only module with `unsafe`.

use std::ffi::{CStr, c_int};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyMemoryView, PyWeakrefMethods, PyWeakrefReference};
use pyo3::{create_exception, ffi};
use shm_bus::{BusDir, Event, Reader, ReaderOptions, ReaderStats, Sample, StartAt};

use crate::decode;

create_exception!(
    _ringest,
    RingestError,
    pyo3::exceptions::PyException,
    "An error of the ringest bus (attach, receive) or of a record's decoding."
);

/// Longest sleep with the GIL released before looking for Python signals
/// (Ctrl-C) again.
const SIGNAL_CHECK_EVERY: Duration = Duration::from_millis(100);

/// A reader and the sample it currently holds, which borrows it.
#[derive(Debug)]
struct HeldReader {
    /// Owned (from `Box::into_raw`); freed in `Drop` after `sample`.
    reader: NonNull<Reader>,
    /// Borrows `*reader` mutably: while it is `Some`, nothing else touches
    /// the reader.
    sample: Option<Sample<'static>>,
    /// The reader's stats as of the last event (the reader itself is
    /// borrowed by `sample`).
    stats: ReaderStats,
}

// SAFETY: `HeldReader` owns the `Reader` behind `reader` (like a `Box`) and
// the sample borrowing it; both are `Send` (asserted below), so moving the
// pair to another thread is moving a `Box<Reader>` and a `&mut Reader` into
// it together.
unsafe impl Send for HeldReader {}
// SAFETY: through `&HeldReader` the reader is only read (`generation`,
// `is_gated`), and only while no sample borrows it, as a `&Reader` that is
// `Sync` (asserted below); `sample` and `stats` are not reachable mutably.
unsafe impl Sync for HeldReader {}

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Reader>();
    send_and_sync::<Sample<'static>>();
};

/// What `HeldReader::recv` got.
#[derive(Debug)]
enum Received {
    Record(SampleInfo),
    Restarted(u64),
    Ended,
}

/// A held sample's description; `ptr..ptr + len` is its payload.
#[derive(Clone, Copy, Debug)]
struct SampleInfo {
    /// The payload's address (an integer: a pointer would make the
    /// description `!Send`; it is dereferenced only in `with_payload` and
    /// `__getbuffer__`, while the sample is held).
    ptr: usize,
    len: usize,
    kind: u16,
    seq: u64,
    timestamp_ns: u64,
    shard: u32,
    lost_before: u64,
}

impl HeldReader {
    fn new(reader: Reader) -> Self {
        let stats = reader.stats();
        Self { reader: NonNull::from(Box::leak(Box::new(reader))), sample: None, stats }
    }

    /// Releases the held sample (a gated reader lets the producer reuse
    /// its space).
    fn release(&mut self) {
        self.sample = None;
    }

    fn generation(&self) -> Option<u64> {
        // SAFETY: no sample borrows the reader (checked), so this shared
        // borrow is the only one; `reader` is live until `Drop`.
        self.sample.is_none().then(|| unsafe { self.reader.as_ref() }.generation())
    }

    fn is_gated(&self) -> Option<bool> {
        // SAFETY: as in `generation`.
        self.sample.is_none().then(|| unsafe { self.reader.as_ref() }.is_gated())
    }

    /// Releases the held sample and waits up to `timeout` for the next
    /// event; a record is held until the next call or `release`.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Received>, shm_bus::RecvError> {
        self.sample = None;
        // SAFETY: the previous sample, the only other borrow of the reader,
        // was just dropped; the new borrow lives in `self.sample` at most,
        // which is dropped before the reader (`Drop`) and before any other
        // access (every method checks `self.sample` or clears it first).
        let reader: &'static mut Reader = unsafe { &mut *self.reader.as_ptr() };
        let before = reader.stats();
        let event = reader.recv_timeout(timeout)?;
        let received = match event {
            None => {
                self.stats = before;
                None
            }
            Some(Event::Record(sample)) => {
                let payload = sample.payload();
                let info = SampleInfo {
                    ptr: payload.as_ptr() as usize,
                    len: payload.len(),
                    kind: sample.kind(),
                    seq: sample.seq(),
                    timestamp_ns: sample.timestamp_ns(),
                    shard: sample.shard(),
                    lost_before: sample.lost_before(),
                };
                // What `try_recv` added for this record.
                self.stats = ReaderStats {
                    received: before.received + 1,
                    lost: before.lost + info.lost_before,
                    restarts: before.restarts,
                };
                self.sample = Some(sample);
                Some(Received::Record(info))
            }
            Some(Event::Restarted { generation }) => Some(Received::Restarted(generation)),
            Some(Event::Ended) => Some(Received::Ended),
        };
        if self.sample.is_none() {
            // SAFETY: no sample borrows the reader now (the event borrowed
            // nothing we keep).
            self.stats = unsafe { self.reader.as_ref() }.stats();
        }
        Ok(received)
    }
}

impl Drop for HeldReader {
    fn drop(&mut self) {
        self.sample = None;
        // SAFETY: `reader` came from `Box::leak` in `new`, is freed only
        // here, and the sample borrowing it was dropped above.
        drop(unsafe { Box::from_raw(self.reader.as_ptr()) });
    }
}

/// The sample a reader holds, as its Python object knows it.
#[derive(Debug)]
struct Held {
    /// Which `Sample` object holds it.
    id: u64,
    info: SampleInfo,
    /// Buffers exported over its payload, shared with the Python sample.
    exports: Arc<Mutex<Exports>>,
}

/// The buffers exported over a held sample's payload. Counted apart from
/// the reader (a buffer may be released while the reader is busy).
#[derive(Debug, Default)]
struct Exports {
    /// Buffers exported and not yet released (`__getbuffer__` minus
    /// `__releasebuffer__`).
    count: usize,
    /// The memoryviews the sample handed out (`payload`, packets' `data`):
    /// released with the sample, so that they raise afterwards instead of
    /// keeping it held. Weak: a view refers to the sample.
    views: Vec<Py<PyWeakrefReference>>,
}

impl Exports {
    fn lock(exports: &Mutex<Exports>) -> std::sync::MutexGuard<'_, Exports> {
        exports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reader(channel, bus=None, gated=False, start="next")
///
/// Reads one channel of a ringest bus: every shard as one stream, in
/// timestamp order across shards.
///
/// - ``channel``: the channel's name, e.g. ``"lidar/packet_group"``.
/// - ``bus``: the bus directory (default ``$RINGEST_BUS`` or ``/dev/shm/ringest``).
/// - ``gated``: lossless; the producer never overwrites a record this reader
///   has not released, and waits (reports Full) instead. A gated reader that
///   dies stops gating within a second. A lossy reader (the default) never
///   slows the producer; when lapped it skips ahead and reports the records
///   it lost in ``Sample.lost_before`` and ``stats``.
/// - ``start``: ``"next"`` (records published after attaching), ``"latest"``
///   (the newest one already published, then the rest) or ``"oldest"`` (the
///   oldest one still in the ring).
///
/// ``recv`` and iteration sleep on the channel's futex with the GIL
/// released. The reader holds **one** sample at a time: receiving the next
/// event releases the previous sample (its payload memoryview then raises
/// ``ValueError``); call ``Sample.copy()`` to keep bytes longer. Use it as
/// a context manager, or call ``close()``, to give back a gated reader's
/// slot at once.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", name = "Reader")]
pub struct PyReader {
    inner: Option<HeldReader>,
    channel: String,
    held: Option<Held>,
    next_id: u64,
}

impl PyReader {
    fn inner(&mut self) -> PyResult<&mut HeldReader> {
        let channel = &self.channel;
        self.inner.as_mut().ok_or_else(|| PyValueError::new_err(format!("reader of {channel} is closed")))
    }

    /// Releases the held sample and the memoryviews it handed out, unless
    /// other buffers (numpy arrays, memoryviews of memoryviews) still point
    /// into it.
    fn release_held(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(held) = &self.held {
            // Not under the lock: releasing a view calls `__releasebuffer__`.
            let views = std::mem::take(&mut Exports::lock(&held.exports).views);
            let mut kept = Vec::new();
            for weak in views {
                if let Some(view) = weak.bind(py).upgrade() {
                    // Fails while the view is itself exported (a numpy
                    // array over it): it stays, and so does the sample.
                    if view.call_method0("release").is_err() {
                        kept.push(weak);
                    }
                }
            }
            let exports = {
                let mut exports = Exports::lock(&held.exports);
                exports.views.extend(kept);
                exports.count
            };
            if exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "sample seq {} of {} is still exported by {} buffer(s) (memoryviews or numpy arrays of \
                     its payload): delete them, or keep a copy (Sample.copy()), before releasing it or \
                     receiving the next one",
                    held.info.seq, self.channel, exports
                )));
            }
            self.held = None;
        }
        if let Some(inner) = &mut self.inner {
            inner.release();
        }
        Ok(())
    }

    /// The next event within `timeout` (`None`: wait forever).
    fn recv_event(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Option<PyObject>> {
        let py = slf.py();
        let deadline = match timeout {
            None => None,
            Some(t) if t.is_finite() && t >= 0.0 => Some(Instant::now() + Duration::from_secs_f64(t)),
            Some(t) => return Err(PyValueError::new_err(format!("timeout must be >= 0 seconds, not {t}"))),
        };
        let mut this = slf.try_borrow_mut()?;
        this.release_held(py)?;
        loop {
            let wait = match deadline {
                None => SIGNAL_CHECK_EVERY,
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(SIGNAL_CHECK_EVERY),
            };
            let inner = this.inner()?;
            let received = py.allow_threads(|| inner.recv(wait));
            let received = received.map_err(|e| RingestError::new_err(e.to_string()))?;
            match received {
                Some(Received::Record(info)) => {
                    let id = this.next_id;
                    this.next_id += 1;
                    let exports = Arc::new(Mutex::new(Exports::default()));
                    this.held = Some(Held { id, info, exports: exports.clone() });
                    let sample = PySample {
                        reader: slf.clone().unbind(),
                        id,
                        exports,
                        len: info.len,
                        kind: info.kind,
                        seq: info.seq,
                        timestamp_ns: info.timestamp_ns,
                        shard: info.shard,
                        lost_before: info.lost_before,
                    };
                    return Ok(Some(Py::new(py, sample)?.into_any()));
                }
                Some(Received::Restarted(generation)) => {
                    return Ok(Some(Py::new(py, Restarted { generation })?.into_any()));
                }
                Some(Received::Ended) => return Ok(Some(Py::new(py, Ended {})?.into_any())),
                None => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

#[pymethods]
impl PyReader {
    #[new]
    #[pyo3(signature = (channel, bus=None, gated=false, start="next"))]
    fn new(
        py: Python<'_>,
        channel: String,
        bus: Option<std::path::PathBuf>,
        gated: bool,
        start: &str,
    ) -> PyResult<Self> {
        let start = match start {
            "next" => StartAt::Next,
            "latest" => StartAt::Latest,
            "oldest" => StartAt::Oldest,
            other => {
                return Err(PyValueError::new_err(format!(
                    "start must be \"next\", \"latest\" or \"oldest\", not {other:?}"
                )));
            }
        };
        let bus = bus.map(BusDir::new).unwrap_or_else(BusDir::from_env);
        let opts = if gated { ReaderOptions::gated() } else { ReaderOptions::lossy() }.start(start);
        let reader = py
            .allow_threads(|| Reader::attach(&bus, &channel, opts))
            .map_err(|e| RingestError::new_err(e.to_string()))?;
        Ok(Self { inner: Some(HeldReader::new(reader)), channel, held: None, next_id: 0 })
    }

    /// recv(timeout=None) -> Sample | Restarted | Ended | None
    ///
    /// The next event: a record (``Sample``), a producer restart
    /// (``Restarted``) or the channel's end (``Ended``, every record read;
    /// returned again until a new producer starts). Sleeps up to ``timeout``
    /// seconds (``None``: forever) with the GIL released; ``None`` on
    /// timeout. Releases the previously received sample first.
    #[pyo3(signature = (timeout=None))]
    fn recv(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Option<PyObject>> {
        Self::recv_event(slf, timeout)
    }

    /// Iterates over the events: samples and ``Restarted``; stops at
    /// ``Ended``.
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<PyObject>> {
        let event = Self::recv_event(slf, None)?;
        Ok(event.filter(|e| !e.bind(slf.py()).is_instance_of::<Ended>()))
    }

    /// Releases the held sample and detaches (a gated reader frees its slot
    /// at once). Idempotent.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        self.release_held(py)?;
        self.inner = None;
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// The channel's name.
    #[getter]
    fn channel(&self) -> &str {
        &self.channel
    }

    /// Whether the reader is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    /// ``{"received": n, "lost": n, "restarts": n}`` so far: records
    /// delivered, records overwritten before this reader got to them (lossy
    /// readers), producer restarts followed.
    #[getter]
    fn stats(&mut self) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
        let stats = self.inner()?.stats;
        Ok([("received", stats.received), ("lost", stats.lost), ("restarts", stats.restarts)].into())
    }

    /// Whether the reader gates the producer (``None`` while a sample is
    /// held: the reader is busy with it).
    #[getter]
    fn gated(&mut self) -> PyResult<Option<bool>> {
        Ok(self.inner()?.is_gated())
    }

    /// The generation (identity) of the producer's channel files (``None``
    /// while a sample is held).
    #[getter]
    fn generation(&mut self) -> PyResult<Option<u64>> {
        Ok(self.inner()?.generation())
    }

    fn __repr__(&self) -> String {
        format!(
            "<ringest.Reader channel={:?}{}>",
            self.channel,
            if self.inner.is_none() { " closed" } else { "" }
        )
    }
}

/// One record of a channel, held by its reader.
///
/// ``payload`` is a read-only ``memoryview`` of the record's bytes
/// (``numpy.frombuffer(sample.payload, dtype)`` works on it) that stays
/// valid while the sample is held: until ``release()``, the end of a
/// ``with`` block, the sample's deletion, or the reader's next ``recv``.
/// Releasing releases the memoryviews the sample handed out (``payload``,
/// ``Packet.data``): using them afterwards raises ``ValueError``. Buffers
/// made from those (a numpy array) keep the sample held: releasing it, or
/// receiving the next event, raises ``BufferError`` until they are deleted
/// (``numpy.array(...)``/``copy()`` makes a copy that outlives the sample).
///
/// - Gated reader: the payload is the record in place in the shared
///   mapping (zero copy); the producer cannot overwrite it while held.
/// - Lossy reader: the payload is the reader's private copy of the record,
///   made with atomic loads when it was received and validated against the
///   producer's tail afterwards. The producer may overwrite a lossy
///   reader's records at any moment, and reading shared bytes while another
///   process writes them is a data race that could hand Python torn data;
///   the copy is what makes every delivered lossy record exactly the bytes
///   the producer wrote (an overwritten one is counted as lost, never
///   delivered). It is still one copy only: no bytes object is made.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", name = "Sample", frozen)]
pub struct PySample {
    reader: Py<PyReader>,
    id: u64,
    /// Buffers exported over the payload (shared with the reader's `Held`).
    exports: Arc<Mutex<Exports>>,
    len: usize,
    kind: u16,
    seq: u64,
    timestamp_ns: u64,
    shard: u32,
    lost_before: u64,
}

impl PySample {
    /// Runs `f` on the payload while the sample is held.
    pub(crate) fn with_payload<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&[u8]) -> PyResult<T>,
    ) -> PyResult<T> {
        let reader = self.reader.bind(py).try_borrow()?;
        let held =
            reader.held.as_ref().filter(|h| h.id == self.id).ok_or_else(|| released_error(self.seq))?;
        // SAFETY: the reader holds this sample (`held.id`), so its payload
        // `info.ptr..+len` is valid and unchanged (gated: the producer is
        // gated off it; lossy: the reader's private copy) until the reader
        // releases it, which needs the reader borrowed mutably, which our
        // shared borrow `reader` excludes while `f` runs.
        let payload = unsafe { std::slice::from_raw_parts(held.info.ptr as *const u8, held.info.len) };
        f(payload)
    }

    /// A new memoryview of the payload, released with the sample.
    pub(crate) fn view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        let view = PyMemoryView::from(slf.as_any())?;
        slf.get().track(&view)?;
        Ok(view)
    }

    /// Releases `view` (a memoryview over the payload) with the sample.
    pub(crate) fn track(&self, view: &Bound<'_, PyAny>) -> PyResult<()> {
        let weak = PyWeakrefReference::new(view)?.unbind();
        Exports::lock(&self.exports).views.push(weak);
        Ok(())
    }
}

fn released_error(seq: u64) -> PyErr {
    PyValueError::new_err(format!(
        "sample seq {seq} was released (its reader received the next event, was closed, or release() was called)"
    ))
}

#[pymethods]
impl PySample {
    /// A read-only memoryview of the record's bytes, valid while the
    /// sample is held (see the class docstring).
    #[getter]
    fn payload<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        Self::view(slf)
    }

    /// The record's bytes as a new ``bytes`` object (outlives the sample).
    fn copy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        self.with_payload(py, |payload| Ok(pyo3::types::PyBytes::new(py, payload)))
    }

    /// Releases the record (a gated reader lets the producer reuse its
    /// space). Raises ``BufferError`` while memoryviews or arrays of the
    /// payload are alive. Idempotent.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let mut reader = self.reader.bind(py).try_borrow_mut()?;
        if reader.held.as_ref().is_some_and(|h| h.id == self.id) {
            reader.release_held(py)?;
        }
        Ok(())
    }

    /// Whether the reader still holds this sample.
    #[getter]
    fn held(&self, py: Python<'_>) -> bool {
        self.reader.bind(py).try_borrow().is_ok_and(|r| r.held.as_ref().is_some_and(|h| h.id == self.id))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// The record kind (``KIND_PACKET_GROUP`` etc.).
    #[getter]
    fn kind(&self) -> u16 {
        self.kind
    }

    /// Sequence number within its shard (gapless per shard: gaps are losses).
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The producer's timestamp, ns since the Unix epoch.
    #[getter]
    fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The shard (producer thread) that wrote it.
    #[getter]
    fn shard(&self) -> u32 {
        self.shard
    }

    /// Records of this shard lost (overwritten before this lossy reader got
    /// to them) right before this one.
    #[getter]
    fn lost_before(&self) -> u64 {
        self.lost_before
    }

    /// packets() -> list[Packet]
    ///
    /// Decodes a packet group (``KIND_PACKET_GROUP``): its packets, each
    /// with a memoryview of its bytes within ``payload`` (valid while the
    /// sample is held).
    fn packets(slf: &Bound<'_, Self>) -> PyResult<Vec<decode::Packet>> {
        let view = Self::view(slf)?;
        let this = slf.get();
        this.with_payload(slf.py(), |payload| decode::packets(this, &view, payload))
    }

    /// datagrams() -> list[Datagram]
    ///
    /// Decodes a datagram group (``KIND_DATAGRAM_GROUP``, a UDP stage's
    /// ``packet_group``): its datagrams, each with a memoryview of its bytes
    /// within ``payload`` (valid while the sample is held).
    fn datagrams(slf: &Bound<'_, Self>) -> PyResult<Vec<decode::Datagram>> {
        let view = Self::view(slf)?;
        let this = slf.get();
        this.with_payload(slf.py(), |payload| decode::datagrams(this, &view, payload))
    }

    /// decode() -> list[Packet] | list[Datagram] | dict
    ///
    /// Decodes the record by its kind: packets of a packet group, datagrams
    /// of a datagram group, a dict for a connection event, socket stats (of
    /// a TCP or a UDP stage) or egress outcome, for an egress record
    /// ``{"target": id or None, "data": memoryview}`` and for a datagram
    /// egress record ``{"destination": (host, port) or None, "data":
    /// memoryview}``.
    fn decode(slf: &Bound<'_, Self>) -> PyResult<PyObject> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == engine::records::KIND_PACKET_GROUP {
            return Ok(Self::packets(slf)?.into_pyobject(py)?.into_any().unbind());
        }
        if this.kind == engine::records::KIND_DATAGRAM_GROUP {
            return Ok(Self::datagrams(slf)?.into_pyobject(py)?.into_any().unbind());
        }
        let view = Self::view(slf)?;
        this.with_payload(py, |payload| decode::by_kind(this, this.kind, payload, &view))
    }

    fn __repr__(&self) -> String {
        format!(
            "<ringest.Sample kind={} seq={} shard={} len={} lost_before={}>",
            self.kind, self.seq, self.shard, self.len, self.lost_before
        )
    }

    /// Buffer protocol: a read-only, one-dimensional byte buffer over the
    /// payload, counted so that the record is not released under it.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a sample's payload is read-only"));
        }
        let this = slf.get();
        let reader = this.reader.bind(slf.py()).try_borrow()?;
        let held =
            reader.held.as_ref().filter(|h| h.id == this.id).ok_or_else(|| released_error(this.seq))?;
        Exports::lock(&held.exports).count += 1;
        let info = held.info;
        // SAFETY: `view` is a valid `Py_buffer` to fill (the buffer
        // protocol's contract, checked non-null above). The memory stays
        // valid while `exports` > 0: the reader refuses to release the
        // sample until `__releasebuffer__` brought it back to 0, and
        // `view.obj` keeps this sample (and so its reader) alive.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = info.ptr as *mut std::os::raw::c_void;
            (*view).len = info.len as ffi::Py_ssize_t;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                FORMAT_BYTES.as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape =
                if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(slf: Bound<'_, Self>, _view: *mut ffi::Py_buffer) {
        let mut exports = Exports::lock(&slf.get().exports);
        exports.count = exports.count.saturating_sub(1);
    }
}

impl Drop for PySample {
    /// A dropped sample is released (no buffer can be exported: each holds
    /// a reference to the sample). Should the reader be borrowed right now
    /// (this drop runs inside one of its calls), its next `recv` or `close`
    /// releases it instead.
    fn drop(&mut self) {
        Python::with_gil(|py| {
            if let Ok(mut reader) = self.reader.bind(py).try_borrow_mut()
                && reader.held.as_ref().is_some_and(|h| h.id == self.id)
            {
                // Cannot fail: no exports (see above).
                let _ = reader.release_held(py);
            }
        });
    }
}

/// The `struct` format of unsigned bytes.
const FORMAT_BYTES: &CStr = c"B";

/// A new producer replaced the channel; the reader reattached and delivers
/// the new producer's records from its oldest.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", frozen)]
pub struct Restarted {
    /// The new producer's generation.
    #[pyo3(get)]
    generation: u64,
}

#[pymethods]
impl Restarted {
    fn __repr__(&self) -> String {
        format!("<ringest.Restarted generation={:#x}>", self.generation)
    }
}

/// The producer ended the channel and every record was read.
#[derive(Debug)]
#[pyclass(module = "ringest._ringest", frozen)]
pub struct Ended {}

#[pymethods]
impl Ended {
    fn __repr__(&self) -> &'static str {
        "<ringest.Ended>"
    }
}
