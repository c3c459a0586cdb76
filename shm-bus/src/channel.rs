//! Channel files: naming, creating (producer), attaching (readers) and
//! validating them.
//!
//! A producer builds both files under temporary names and renames them into
//! place (`.readers` first, then `.ring`), so nobody ever sees a half-made
//! file. An older file of the same channel is never truncated (that would
//! SIGBUS its readers): it is marked REPLACED and unlinked by the rename,
//! and its readers reattach to the new one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{AttachError, CreateError};
use crate::layout::{
    self, FORMAT_VERSION, MAX_CAPACITY, MAX_NAME, MAX_READER_SLOTS, MAX_SHARDS, MIN_CAPACITY, PAGE,
    READERS_HEADER_SIZE, READERS_MAGIC, RING_MAGIC, channel_header as ch, channel_state,
    readers_header as rh,
};
use crate::liveness;
use crate::ring::{
    Arc, ChannelWords, Mapping, Region, ShardMem, Slots, effective_uid, monotonic_ns, producer_heartbeat,
    set_channel_state,
};

/// The environment variable that overrides the default bus directory.
pub const BUS_ENV: &str = "RINGEST_BUS";
/// Where channels live unless told otherwise.
pub const DEFAULT_BUS_DIR: &str = "/dev/shm/ringest";

/// The environment variable listing the other owners whose channel files
/// readers trust (see [`BusDir::trust_uid`]): comma-separated uids, and
/// gids prefixed with `g:` (`1001,g:1002`).
pub const TRUST_ENV: &str = "RINGEST_BUS_TRUST";

/// A bus directory: the namespace that channels live in.
///
/// **Trust.** A producer creates channels only in directories that no other
/// user can change: each directory from the bus directory down to the
/// channel's is checked with `lstat` (not a symbolic link; owned by this
/// user, or by root with the sticky bit; not writable by its group or by
/// others unless sticky or the channel's `mode` grants that class write
/// access), and created with mode 0755 when missing. Channel files are never
/// opened through a symbolic link (`O_NOFOLLOW`). A reader attaches only to
/// files owned by this user or root, or by a uid or gid trusted with
/// [`BusDir::trust_uid`] / [`BusDir::trust_gid`] (or [`TRUST_ENV`]): the
/// group-read case, where the producer runs as another user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusDir {
    path: PathBuf,
    trusted_uids: Vec<u32>,
    trusted_gids: Vec<u32>,
}

impl BusDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), trusted_uids: Vec::new(), trusted_gids: Vec::new() }
    }

    /// `$RINGEST_BUS`, or `/dev/shm/ringest`, trusting the owners listed in
    /// `$RINGEST_BUS_TRUST`.
    pub fn from_env() -> Self {
        match std::env::var_os(BUS_ENV) {
            Some(dir) if !dir.is_empty() => Self::new(dir),
            _ => Self::new(DEFAULT_BUS_DIR),
        }
        .trust_from_env()
    }

    /// Also trusts the owners listed in `$RINGEST_BUS_TRUST` (see
    /// [`TRUST_ENV`]; entries that do not parse are ignored).
    pub fn trust_from_env(mut self) -> Self {
        if let Ok(list) = std::env::var(TRUST_ENV) {
            for entry in list.split(',').map(str::trim) {
                match entry.strip_prefix("g:") {
                    Some(gid) => self.trusted_gids.extend(gid.parse::<u32>().ok()),
                    None => self.trusted_uids.extend(entry.parse::<u32>().ok()),
                }
            }
        }
        self
    }

    /// Also trusts channel files owned by `uid` (by default only this
    /// process's effective uid and root are trusted).
    pub fn trust_uid(mut self, uid: u32) -> Self {
        self.trusted_uids.push(uid);
        self
    }

    /// Also trusts channel files whose group is `gid`.
    pub fn trust_gid(mut self, gid: u32) -> Self {
        self.trusted_gids.push(gid);
        self
    }

    /// Whether a reader may trust a file with this owner and group.
    fn trusts(&self, uid: u32, gid: u32) -> bool {
        uid == effective_uid()
            || uid == 0
            || self.trusted_uids.contains(&uid)
            || self.trusted_gids.contains(&gid)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data file of channel `name` (which must be valid).
    pub fn ring_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.ring"))
    }

    /// The reader-slot file of channel `name` (which must be valid).
    pub fn readers_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.readers"))
    }
}

impl Default for BusDir {
    fn default() -> Self {
        Self::from_env()
    }
}

/// Checks a channel name: `/`-separated components of ASCII letters, digits,
/// `_`, `-` and `.`, none empty or starting with `.`, at most 255 bytes.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME {
        return Err("longer than 255 bytes");
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err("empty path component");
        }
        if part.starts_with('.') {
            return Err("a component starts with '.'");
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return Err("only ASCII letters, digits, '_', '-', '.' and '/' are allowed");
        }
    }
    Ok(())
}

/// How a producer lays out a new channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// One shard per producer thread (1..=64).
    pub shards: u32,
    /// Data ring bytes per shard: a power of two, at least 4096. A record's
    /// payload may be up to half of it, minus its 32-byte header.
    pub capacity: u64,
    /// How many readers can attach at once (1..=1024).
    pub reader_slots: u32,
    /// Permission bits of the `.ring` file (default 0600). Whoever may read
    /// it also gets write access to the `.readers` file, which readers need
    /// to register.
    pub mode: u32,
    /// Bytes of ring a writer cycles through while its readers keep up
    /// ([`DEFAULT_HOT_WINDOW`] by default; 0 = always the whole ring). Once
    /// this many bytes of a lap are used and every registered reader is
    /// less than half a window behind, the writer starts over at the
    /// beginning of the ring, where the memory is still in the CPU cache:
    /// a ring larger than the cache is otherwise written and read from
    /// DRAM, which costs large records more than half their throughput
    /// (docs/BENCHMARKS.md). Only rings larger than the window start over;
    /// the window is at least four times the record being reserved, so
    /// that a reader a record or two behind still counts as keeping up.
    ///
    /// Buffering is not reduced: when a registered reader (gated or lossy)
    /// falls behind, the writer skips ahead into the part of the ring it
    /// skipped, so a stalled reader still has the whole ring before the
    /// writer reports Full (gated) or laps it (lossy). What is reduced is
    /// history: a reader starting at [`crate::StartAt::Oldest`] finds
    /// about a window of records, not a ring. Unregistered lossy readers
    /// (no free slot, or foreign readers) are not waited for either way.
    pub hot_window: u64,
    /// The channel's generation number (FORMAT.md §3.1). `None` (the
    /// default): a fresh random one, as every producer incarnation should
    /// have. `Some(g)` (never 0): for a bridge that republishes another
    /// bus's channel, which keeps the origin's generation so that records
    /// cross unchanged (egress outcomes name the generation of the egress
    /// channel they answer). Readers follow a replacement by the file's
    /// identity and the REPLACED state, not by the number, so a producer
    /// that re-creates a channel under the same generation is followed too.
    pub generation: Option<u64>,
}

/// The default [`ChannelOptions::hot_window`], chosen by measurement on a
/// machine with 1 MiB of L2 per core and 32 MiB of L3 (docs/BENCHMARKS.md,
/// three interleaved rounds against iceoryx2): 4 MiB gave 64 KiB records
/// 1.29x iceoryx2's p50 latency, 2 MiB 0.96x; 1 MiB moved 4 KiB records at
/// 0.97x iceoryx2's throughput, 2 MiB at 2.14x.
pub const DEFAULT_HOT_WINDOW: u64 = 2 << 20;

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            shards: 1,
            capacity: 64 << 20,
            reader_slots: 64,
            mode: 0o600,
            hot_window: DEFAULT_HOT_WINDOW,
            generation: None,
        }
    }
}

impl ChannelOptions {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(format!("shards must be 1..={MAX_SHARDS}, got {}", self.shards));
        }
        if !self.capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(format!(
                "capacity must be a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}, got {}",
                self.capacity
            ));
        }
        if !(1..=MAX_READER_SLOTS).contains(&self.reader_slots) {
            return Err(format!("reader_slots must be 1..={MAX_READER_SLOTS}, got {}", self.reader_slots));
        }
        if self.mode & !0o777 != 0 || self.mode & 0o600 != 0o600 {
            return Err(format!("mode must be within 0777 and include 0600, got {:o}", self.mode));
        }
        if self.generation == Some(0) {
            return Err("generation must not be 0".to_owned());
        }
        Ok(())
    }
}

/// Producer state of a channel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// A producer owns it (it may have died: see `producer_alive`).
    Live,
    /// The producer ended it: no more records.
    Ended,
    /// A newer producer replaced it.
    Replaced,
    /// A value this build does not know.
    Unknown(u32),
}

impl ChannelState {
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            channel_state::LIVE => Self::Live,
            channel_state::ENDED => Self::Ended,
            channel_state::REPLACED => Self::Replaced,
            other => Self::Unknown(other),
        }
    }
}

/// The immutable part of a channel header, copied out and validated once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) name: String,
    pub(crate) shards: u32,
    pub(crate) reader_slots: u32,
    pub(crate) capacity: u64,
    pub(crate) generation: u64,
    pub(crate) producer_pid: u32,
    pub(crate) producer_start_time: u64,
    pub(crate) producer_pid_ns: u64,
    pub(crate) created_realtime_ns: u64,
}

impl Geometry {
    pub(crate) fn producer_identity(&self) -> crate::ring::ReaderIdentity {
        crate::ring::ReaderIdentity {
            pid: self.producer_pid,
            start_time: self.producer_start_time,
            pid_ns: self.producer_pid_ns,
        }
    }
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A mapped channel: both files, validated.
#[derive(Debug)]
pub(crate) struct ChannelMap {
    pub(crate) geometry: Geometry,
    pub(crate) ring_path: PathBuf,
    /// (device, inode) of the `.ring` file we mapped, to notice replacement.
    pub(crate) ring_id: (u64, u64),
    pub(crate) words: ChannelWords,
    pub(crate) slots: Slots,
    pub(crate) shards: Vec<ShardMem>,
    /// Whether `.readers` is mapped writable. A lossy reader without write
    /// access maps it read-only and never touches it: no slot, no waiter
    /// count (it polls instead, FORMAT.md §6.5).
    pub(crate) readers_writable: bool,
}

impl ChannelMap {
    fn from_mappings(
        geometry: Geometry,
        ring_path: PathBuf,
        ring_id: (u64, u64),
        ring: Mapping,
        readers: Mapping,
    ) -> Self {
        let ring = Region::whole(Arc::new(ring));
        let readers = Region::whole(Arc::new(readers));
        let stride = (PAGE + geometry.capacity) as usize;
        let shards = (0..geometry.shards as usize)
            .map(|i| {
                let base = PAGE as usize + i * stride;
                ShardMem {
                    header: ring.sub(base, PAGE as usize),
                    data: ring.sub(base + PAGE as usize, geometry.capacity as usize),
                    capacity: geometry.capacity,
                }
            })
            .collect();
        let slot_size = layout::reader_slot_size(geometry.shards) as usize;
        let slot_count = geometry.reader_slots as usize;
        let slots = Slots {
            region: readers.sub(READERS_HEADER_SIZE as usize, slot_count * slot_size),
            count: slot_count,
            slot_size,
            shards: geometry.shards as usize,
        };
        let words = ChannelWords {
            channel: ring.sub(0, PAGE as usize),
            readers: readers.sub(0, READERS_HEADER_SIZE as usize),
        };
        Self { geometry, ring_path, ring_id, words, slots, shards, readers_writable: true }
    }

    pub(crate) fn state(&self) -> ChannelState {
        ChannelState::from_raw(self.words.state())
    }

    /// Whether the file we mapped is still the one at the channel's path.
    pub(crate) fn is_current(&self) -> bool {
        std::fs::metadata(&self.ring_path).is_ok_and(|m| (m.dev(), m.ino()) == self.ring_id)
    }
}

fn create_io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CreateError + 'a {
    move |source| CreateError::Io { op, path: path.to_owned(), source }
}

fn attach_io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AttachError + 'a {
    move |source| AttachError::Io { op, path: path.to_owned(), source }
}

/// A name for a temporary file next to `path`, unique to this call: the
/// pid, and a random number (`create_new` makes a clash an error, not a
/// shared file).
fn temp_path(path: &Path) -> PathBuf {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{file}.tmp.{}.{:x}", std::process::id(), new_generation()))
}

/// Creates `path` anew with exactly `mode` and `size` zero bytes, writes
/// each `(offset, bytes)` of `parts` (headers), and renames it into place.
fn create_file(path: &Path, mode: u32, size: u64, parts: &[(usize, &[u8])]) -> Result<(), CreateError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(create_io("create", &tmp))?;
        // The umask may have masked bits off: set exactly what was asked.
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(create_io("chmod", &tmp))?;
        file.set_len(size).map_err(create_io("resize", &tmp))?;
        let map = Mapping::map(&file, true).map_err(create_io("map", &tmp))?;
        for &(offset, bytes) in parts {
            map.copy_in(offset, bytes);
        }
        std::fs::rename(&tmp, path).map_err(create_io("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Looks at an existing channel file before replacing it. Fails when a live
/// producer owns it; marks it REPLACED (waking its readers) when not.
///
/// "This process" is the whole identity (pid, start time, pid namespace),
/// never the pid alone: two containers that share a bus may both run their
/// producer as pid 1. A producer in another pid namespace is judged by its
/// heartbeat: it keeps the channel while it beats, and a producer started
/// anywhere takes the channel over once it stopped.
fn retire_old(name: &str, path: &Path) -> Result<(), CreateError> {
    // Never through a symbolic link: one planted here would get another
    // channel's file marked REPLACED. The rename replaces the link itself.
    let Ok(file) = OpenOptions::new().read(true).write(true).custom_flags(NO_FOLLOW).open(path) else {
        return Ok(()); // absent, a link, or unreadable: the rename replaces it anyway
    };
    let Ok((geometry, _)) = read_geometry(&file, path) else {
        return Ok(()); // corrupt or foreign: nothing can be attached to it
    };
    let Ok(map) = Mapping::map(&file, true) else {
        return Ok(()); // cannot be mapped: nothing can be attached to it either
    };
    let page = Region::whole(Arc::new(map)).sub(0, PAGE as usize);
    let owner = geometry.producer_identity();
    if owner != liveness::own_identity() && liveness::producer_alive(&owner, producer_heartbeat(&page)) {
        return Err(CreateError::Busy {
            name: name.to_owned(),
            pid: geometry.producer_pid,
            path: path.to_owned(),
        });
    }
    set_channel_state(&page, channel_state::REPLACED);
    Ok(())
}

/// A fresh generation number: random, never zero.
fn new_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(liveness::realtime_ns());
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// Creates (or re-creates) channel `name` and maps it for its producer.
/// Shard `k` starts at sequence number `first_seq[k]` (all 0 when `None`):
/// its header's `records_written` holds it before the file is renamed into
/// place, so no reader ever sees the shard at 0 and then a jump.
pub(crate) fn create(
    bus: &BusDir,
    name: &str,
    opts: &ChannelOptions,
    first_seq: Option<&[u64]>,
) -> Result<ChannelMap, CreateError> {
    validate_name(name).map_err(|reason| CreateError::InvalidName { name: name.to_owned(), reason })?;
    let invalid = |reason: String| CreateError::InvalidOptions { name: name.to_owned(), reason };
    opts.validate().map_err(invalid)?;
    if let Some(first_seq) = first_seq {
        if first_seq.len() != opts.shards as usize {
            return Err(invalid(format!(
                "{} first sequence numbers for {} shards",
                first_seq.len(),
                opts.shards
            )));
        }
        if first_seq.contains(&u64::MAX) {
            return Err(invalid("first sequence number u64::MAX leaves no room for a record".into()));
        }
    }
    let ring_path = bus.ring_path(name);
    let readers_path = bus.readers_path(name);
    prepare_directories(bus, name, opts.mode)?;
    retire_old(name, &ring_path)?;

    let me = liveness::own_identity();
    let generation = opts.generation.unwrap_or_else(new_generation);
    // Whoever may read the data may register as a reader: group/other
    // read bits (0o040, 0o004) grant the matching write bits (0o020, 0o002).
    let readers_mode = opts.mode | ((opts.mode & 0o044) >> 1);

    let mut rhdr = vec![0u8; READERS_HEADER_SIZE as usize];
    rhdr[rh::MAGIC..rh::MAGIC + 8].copy_from_slice(&READERS_MAGIC);
    put_u32(&mut rhdr, rh::VERSION, FORMAT_VERSION);
    put_u32(&mut rhdr, rh::HEADER_SIZE, READERS_HEADER_SIZE as u32);
    put_u32(&mut rhdr, rh::SLOT_COUNT, opts.reader_slots);
    put_u32(&mut rhdr, rh::SLOT_SIZE, layout::reader_slot_size(opts.shards) as u32);
    put_u32(&mut rhdr, rh::SHARD_COUNT, opts.shards);
    put_u64(&mut rhdr, rh::GENERATION, generation);
    let readers_size = layout::readers_file_size(opts.shards, opts.reader_slots);
    create_file(&readers_path, readers_mode, readers_size, &[(0, &rhdr)])?;

    let mut chdr = vec![0u8; ch::END];
    chdr[ch::MAGIC..ch::MAGIC + 8].copy_from_slice(&RING_MAGIC);
    put_u32(&mut chdr, ch::VERSION, FORMAT_VERSION);
    put_u32(&mut chdr, ch::HEADER_SIZE, PAGE as u32);
    put_u32(&mut chdr, ch::SHARD_COUNT, opts.shards);
    put_u32(&mut chdr, ch::READER_SLOTS, opts.reader_slots);
    put_u64(&mut chdr, ch::SHARD_CAPACITY, opts.capacity);
    put_u64(&mut chdr, ch::SHARD_STRIDE, PAGE + opts.capacity);
    put_u64(&mut chdr, ch::FILE_SIZE, layout::ring_file_size(opts.shards, opts.capacity));
    put_u64(&mut chdr, ch::GENERATION, generation);
    put_u32(&mut chdr, ch::PRODUCER_PID, me.pid);
    put_u64(&mut chdr, ch::PRODUCER_START_TIME, me.start_time);
    put_u64(&mut chdr, ch::CREATED_REALTIME_NS, liveness::realtime_ns());
    put_u32(&mut chdr, ch::STATE, channel_state::LIVE);
    put_u32(&mut chdr, ch::NAME_LEN, name.len() as u32);
    put_u64(&mut chdr, ch::PRODUCER_PID_NS, me.pid_ns);
    put_u64(&mut chdr, ch::PRODUCER_HEARTBEAT_NS, monotonic_ns());
    chdr[ch::NAME..ch::NAME + name.len()].copy_from_slice(name.as_bytes());
    let ring_size = layout::ring_file_size(opts.shards, opts.capacity);
    let first_seq: Vec<[u8; 8]> =
        (0..opts.shards as usize).map(|k| first_seq.map_or(0, |f| f[k]).to_le_bytes()).collect();
    let mut parts: Vec<(usize, &[u8])> = vec![(0, &chdr)];
    for (k, seq) in first_seq.iter().enumerate() {
        let shard_header = PAGE as usize + k * (PAGE + opts.capacity) as usize;
        parts.push((shard_header + layout::shard_header::RECORDS_WRITTEN, seq));
    }
    create_file(&ring_path, opts.mode, ring_size, &parts)?;

    // Map what we just renamed into place. A racing producer of the same
    // name would show up as a different generation here.
    let map = attach_files(bus, name, &ring_path, &readers_path, Access::Producer).map_err(|e| {
        CreateError::Io {
            op: "map new channel",
            path: ring_path.clone(),
            source: io::Error::other(e.to_string()),
        }
    })?;
    if map.geometry.generation != generation {
        return Err(CreateError::Busy {
            name: name.to_owned(),
            pid: map.geometry.producer_pid,
            path: ring_path,
        });
    }
    Ok(map)
}

/// Reads and validates the immutable channel header of an open `.ring` file.
fn read_geometry(file: &File, path: &Path) -> Result<(Geometry, u64), AttachError> {
    let size = file.metadata().map_err(attach_io("stat", path))?.len();
    if size < PAGE {
        return Err(AttachError::Truncated { path: path.to_owned(), expected: PAGE, actual: size });
    }
    let map = Mapping::map(file, false).map_err(attach_io("map", path))?;
    let mut h = [0u8; ch::END];
    map.copy_out(0, &mut h);
    let corrupt = |what: String| AttachError::Corrupt { path: path.to_owned(), what };
    let magic: [u8; 8] = h[..8].try_into().expect("8 bytes");
    if magic != RING_MAGIC {
        return Err(AttachError::BadMagic { path: path.to_owned(), found: magic });
    }
    let version = u32_at(&h, ch::VERSION);
    if version != FORMAT_VERSION {
        return Err(AttachError::BadVersion {
            path: path.to_owned(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    if u32_at(&h, ch::HEADER_SIZE) as u64 != PAGE {
        return Err(corrupt(format!("header size {} is not {PAGE}", u32_at(&h, ch::HEADER_SIZE))));
    }
    let shards = u32_at(&h, ch::SHARD_COUNT);
    let reader_slots = u32_at(&h, ch::READER_SLOTS);
    let capacity = u64_at(&h, ch::SHARD_CAPACITY);
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(corrupt(format!("shard count {shards} outside 1..={MAX_SHARDS}")));
    }
    if !(1..=MAX_READER_SLOTS).contains(&reader_slots) {
        return Err(corrupt(format!("reader slot count {reader_slots} outside 1..={MAX_READER_SLOTS}")));
    }
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(corrupt(format!("shard capacity {capacity} is not a power of two in range")));
    }
    if u64_at(&h, ch::SHARD_STRIDE) != PAGE + capacity {
        return Err(corrupt(format!(
            "shard stride {} is not {}",
            u64_at(&h, ch::SHARD_STRIDE),
            PAGE + capacity
        )));
    }
    let expected = layout::ring_file_size(shards, capacity);
    if u64_at(&h, ch::FILE_SIZE) != expected {
        return Err(corrupt(format!("file size field {} is not {expected}", u64_at(&h, ch::FILE_SIZE))));
    }
    if size < expected {
        return Err(AttachError::Truncated { path: path.to_owned(), expected, actual: size });
    }
    if size > expected {
        return Err(corrupt(format!("file is {size} bytes, its header says {expected}")));
    }
    let name_len = u32_at(&h, ch::NAME_LEN) as usize;
    if name_len > MAX_NAME {
        return Err(corrupt(format!("name length {name_len} exceeds {MAX_NAME}")));
    }
    let name = std::str::from_utf8(&h[ch::NAME..ch::NAME + name_len])
        .map_err(|_| corrupt("channel name is not UTF-8".into()))?
        .to_owned();
    let geometry = Geometry {
        name,
        shards,
        reader_slots,
        capacity,
        generation: u64_at(&h, ch::GENERATION),
        producer_pid: u32_at(&h, ch::PRODUCER_PID),
        producer_start_time: u64_at(&h, ch::PRODUCER_START_TIME),
        producer_pid_ns: u64_at(&h, ch::PRODUCER_PID_NS),
        created_realtime_ns: u64_at(&h, ch::CREATED_REALTIME_NS),
    };
    Ok((geometry, size))
}

/// Reads and validates the readers header against the channel's geometry.
/// `Ok(false)`: the file belongs to another producer generation (checked
/// before the geometry: during a restart the new `.readers` may sit next
/// to the old `.ring`, with another shard count): retry.
fn check_readers_header(file: &File, path: &Path, g: &Geometry) -> Result<bool, AttachError> {
    let size = file.metadata().map_err(attach_io("stat", path))?.len();
    if size < READERS_HEADER_SIZE {
        return Err(AttachError::Truncated {
            path: path.to_owned(),
            expected: READERS_HEADER_SIZE,
            actual: size,
        });
    }
    let map = Mapping::map(file, false).map_err(attach_io("map", path))?;
    let mut h = [0u8; rh::END];
    map.copy_out(0, &mut h);
    let magic: [u8; 8] = h[..8].try_into().expect("8 bytes");
    if magic != READERS_MAGIC {
        return Err(AttachError::BadMagic { path: path.to_owned(), found: magic });
    }
    let version = u32_at(&h, rh::VERSION);
    if version != FORMAT_VERSION {
        return Err(AttachError::BadVersion {
            path: path.to_owned(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    if u64_at(&h, rh::GENERATION) != g.generation {
        return Ok(false);
    }
    let corrupt = |what: String| AttachError::Corrupt { path: path.to_owned(), what };
    if u32_at(&h, rh::HEADER_SIZE) as u64 != READERS_HEADER_SIZE
        || u32_at(&h, rh::SLOT_COUNT) != g.reader_slots
        || u32_at(&h, rh::SHARD_COUNT) != g.shards
        || u32_at(&h, rh::SLOT_SIZE) as u64 != layout::reader_slot_size(g.shards)
    {
        return Err(corrupt("readers header disagrees with the channel header".into()));
    }
    let expected = layout::readers_file_size(g.shards, g.reader_slots);
    if size < expected {
        return Err(AttachError::Truncated { path: path.to_owned(), expected, actual: size });
    }
    if size > expected {
        return Err(corrupt(format!("file is {size} bytes, its header says {expected}")));
    }
    Ok(true)
}

/// Outcome of one attach attempt.
enum Attempt {
    Done(Box<ChannelMap>),
    /// Files of two different producers (a replacement is under way).
    Mismatch,
}

/// Who maps a channel, and so how its files are opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Both files read-write.
    Producer,
    /// `.ring` read-only, `.readers` read-write (registering, introspection).
    Reader,
    /// As `Reader`, or `.readers` read-only when that is all we may do.
    LossyReader,
}

fn attach_once(
    bus: &BusDir,
    name: &str,
    ring_path: &Path,
    readers_path: &Path,
    access: Access,
) -> Result<Attempt, AttachError> {
    let ring_file = match OpenOptions::new().read(true).custom_flags(NO_FOLLOW).open(ring_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AttachError::NotFound { name: name.to_owned(), path: ring_path.to_owned() });
        }
        Err(e) => return Err(open_error("open", ring_path, e)),
    };
    let ring_owner = check_owner(bus, &ring_file, ring_path)?;
    let (geometry, _) = read_geometry(&ring_file, ring_path)?;
    let open_readers =
        |write| OpenOptions::new().read(true).write(write).custom_flags(NO_FOLLOW).open(readers_path);
    let (readers_file, readers_writable) = match open_readers(true) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Mismatch),
        // A lossy reader needs only read access (FORMAT.md §1).
        Err(e) if access == Access::LossyReader && e.kind() == io::ErrorKind::PermissionDenied => {
            match open_readers(false) {
                Ok(f) => (f, false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Mismatch),
                Err(e) => return Err(open_error("open", readers_path, e)),
            }
        }
        Err(e) => return Err(open_error("open for writing (readers register there)", readers_path, e)),
    };
    // The pair comes from one producer: a `.readers` file of another owner
    // is forged (or a replacement is under way, which the owner check of
    // the next attempt settles).
    let readers_owner = check_owner(bus, &readers_file, readers_path)?;
    if readers_owner.0 != ring_owner.0 {
        return Err(AttachError::Untrusted {
            path: readers_path.to_owned(),
            reason: format!("owned by uid {}, but its .ring by uid {}", readers_owner.0, ring_owner.0),
        });
    }
    if !check_readers_header(&readers_file, readers_path, &geometry)? {
        return Ok(Attempt::Mismatch);
    }
    let meta = ring_file.metadata().map_err(attach_io("stat", ring_path))?;
    let ring_id = (meta.dev(), meta.ino());
    let producer = access == Access::Producer;
    let ring_map = if producer {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NO_FOLLOW)
            .open(ring_path)
            .map_err(|e| open_error("open", ring_path, e))?;
        Mapping::map(&f, true)
    } else {
        Mapping::map(&ring_file, false)
    }
    .map_err(attach_io("map", ring_path))?;
    let readers_map =
        Mapping::map(&readers_file, readers_writable).map_err(attach_io("map", readers_path))?;
    // The sizes were checked on the same open files, and the producer never
    // resizes a file after renaming it into place.
    if ring_map.len() as u64 != layout::ring_file_size(geometry.shards, geometry.capacity) {
        return Err(AttachError::Truncated {
            path: ring_path.to_owned(),
            expected: layout::ring_file_size(geometry.shards, geometry.capacity),
            actual: ring_map.len() as u64,
        });
    }
    let mut map = ChannelMap::from_mappings(geometry, ring_path.to_owned(), ring_id, ring_map, readers_map);
    map.readers_writable = readers_writable;
    if !producer && map.state() == ChannelState::Replaced {
        return Ok(Attempt::Mismatch);
    }
    Ok(Attempt::Done(Box::new(map)))
}

fn attach_files(
    bus: &BusDir,
    name: &str,
    ring_path: &Path,
    readers_path: &Path,
    access: Access,
) -> Result<ChannelMap, AttachError> {
    // A producer replacing the channel renames two files one after the
    // other; give it a moment to finish.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match attach_once(bus, name, ring_path, readers_path, access)? {
            Attempt::Done(map) => return Ok(*map),
            Attempt::Mismatch if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Attempt::Mismatch => return Err(AttachError::NotSettled { name: name.to_owned() }),
        }
    }
}

/// Maps an existing channel for reading (`access`: `Reader` or
/// `LossyReader`).
pub(crate) fn attach(bus: &BusDir, name: &str, access: Access) -> Result<ChannelMap, AttachError> {
    validate_name(name).map_err(|reason| AttachError::InvalidName { name: name.to_owned(), reason })?;
    attach_files(bus, name, &bus.ring_path(name), &bus.readers_path(name), access)
}

/// Channel files are never opened through a symbolic link (std adds
/// `O_CLOEXEC` to every open).
const NO_FOLLOW: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// An open error, naming a symbolic link as what it is.
fn open_error(op: &'static str, path: &Path, e: io::Error) -> AttachError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return AttachError::Untrusted {
            path: path.to_owned(),
            reason: "it is a symbolic link (channel files are never opened through one)".into(),
        };
    }
    AttachError::Io { op, path: path.to_owned(), source: e }
}

/// Checks that an open channel file is a regular file whose owner the bus
/// trusts; returns its (uid, gid).
fn check_owner(bus: &BusDir, file: &File, path: &Path) -> Result<(u32, u32), AttachError> {
    let meta = file.metadata().map_err(attach_io("stat", path))?;
    let untrusted = |reason: String| AttachError::Untrusted { path: path.to_owned(), reason };
    if !meta.file_type().is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    if !bus.trusts(meta.uid(), meta.gid()) {
        return Err(untrusted(format!(
            "owned by uid {} (gid {}), which this reader does not trust (only uid {} and root, \
             and what BusDir::trust_uid / trust_gid or ${TRUST_ENV} add)",
            meta.uid(),
            meta.gid(),
            effective_uid()
        )));
    }
    Ok((meta.uid(), meta.gid()))
}

/// Creates the directories a channel's files go in, as needed, and checks
/// each one from the bus directory down (see [`BusDir`], "Trust").
fn prepare_directories(bus: &BusDir, name: &str, mode: u32) -> Result<(), CreateError> {
    let root = bus.path();
    if let Some(parent) = root.parent()
        && !parent.as_os_str().is_empty()
    {
        // Above the bus directory nothing is checked: that is the system's.
        std::fs::create_dir_all(parent).map_err(create_io("create directory", parent))?;
    }
    let mut dir = root.to_owned();
    make_trusted_dir(&dir, mode)?;
    let components: Vec<&str> = name.split('/').collect();
    for part in &components[..components.len() - 1] {
        dir.push(part);
        make_trusted_dir(&dir, mode)?;
    }
    Ok(())
}

/// Creates `dir` (mode 0755, less the umask) unless it exists, then checks
/// it with `lstat`.
fn make_trusted_dir(dir: &Path, mode: u32) -> Result<(), CreateError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CreateError::Io { op: "create directory", path: dir.to_owned(), source: e }),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(create_io("lstat", dir))?;
    check_dir(&meta, mode).map_err(|reason| CreateError::UntrustedDirectory { path: dir.to_owned(), reason })
}

/// Whether a directory keeps other users from swapping or planting files:
/// the rules of [`BusDir`] ("Trust"). `mode` is the channel's file mode.
fn check_dir(meta: &std::fs::Metadata, mode: u32) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    let me = effective_uid();
    let bits = meta.mode();
    let sticky = bits & 0o1000 != 0;
    if meta.uid() != me && !(meta.uid() == 0 && sticky) {
        return Err(format!(
            "it is owned by uid {}, not by this user (uid {me}) nor by root with the sticky bit",
            meta.uid()
        ));
    }
    for (class, write) in [("its group", 0o020), ("other users", 0o002)] {
        if bits & write != 0 && !sticky && mode & write == 0 {
            return Err(format!(
                "it is writable by {class} (mode {:o}) without the sticky bit, and the channel mode {mode:o} \
                 does not grant them write access",
                bits & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("lidar_front/packet_group").is_ok());
        assert!(validate_name("a.b-c/d_e/1").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../x", "a/.hidden", "a b", "ä"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn options() {
        assert!(ChannelOptions::default().validate().is_ok());
        let bad = [
            ChannelOptions { shards: 0, ..Default::default() },
            ChannelOptions { shards: 65, ..Default::default() },
            ChannelOptions { capacity: 5000, ..Default::default() },
            ChannelOptions { capacity: 2048, ..Default::default() },
            ChannelOptions { reader_slots: 0, ..Default::default() },
            ChannelOptions { mode: 0o400, ..Default::default() },
            ChannelOptions { mode: 0o1600, ..Default::default() },
        ];
        for opts in bad {
            assert!(opts.validate().is_err(), "{opts:?} accepted");
        }
    }
}
