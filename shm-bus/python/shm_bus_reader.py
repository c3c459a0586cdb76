#!/usr/bin/env python3
"""Independent lossy reader of shm-bus channels, written from ../FORMAT.md.

Standard library only (Python >= 3.11). It attaches to a channel, validates
both files (FORMAT.md section 6.9), lists the shards and reads every shard as
a *lossy* reader from the oldest retained record (sections 6.3 and 3.4). It
registers no reader slot and never writes to either file; it polls instead of
sleeping on the futex.

Usage:
    python3 shm_bus_reader.py [--bus DIR] CHANNEL [--sha256] [--limit N] [--follow]

Output (JSON lines on stdout):
    first line:   {"channel":..,"generation":..,"state":..,"capacity":..,"shards":[..]}
    per record:   {"shard":..,"seq":..,"kind":..,"timestamp_ns":..,"len":..,"payload_hex":..}
                  (plus "lost":n when n records of that shard were lost before it)
    at the end (--follow, channel ended): {"shard":..,"lost_at_end":n} per shard
                  that lost n records after the last one delivered
    with --sha256, instead of records, one line per shard:
                  {"shard":..,"records":..,"bytes":..,"lost":..,"first_seq":..,
                   "last_seq":..,"sha256":..}   (sha256 of the concatenated payloads)
On a missing, foreign or corrupt file: one line "shm_bus_reader: error: ..."
on stderr and exit code 1.

LIMITATIONS (memory model). Python has no atomics and no fences. This script
reads every shared word with exactly one aligned 4- or 8-byte load
(memoryview.cast("Q"/"I") indexing, which CPython implements as a fixed-size
memcpy, compiled to a single load), and performs those loads in program order.
On x86-64 (TSO) aligned loads are single-copy atomic and every load has
acquire semantics, so "acquire load" and "fence(acquire); relaxed load"
(sync points P and V) are both satisfied by plain loads done in order. On
weakly ordered CPUs (ARM64, POWER) that is NOT true: the tail validation may
then miss a record that was overwritten while it was being copied. The script
warns on such hosts. Big-endian hosts are refused (the format is little-endian
and the word loads are native).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import mmap
import os
import platform
import stat
import struct
import sys
import time

# --- Constants (FORMAT.md section 2) -------------------------------------

RING_MAGIC = b"RNGSTBUS"
READERS_MAGIC = b"RNGSTRDR"
FORMAT_VERSION = 2
PAGE = 4096
READERS_HEADER_SIZE = 256
RECORD_HEADER = 32
KIND_PADDING = 0xFFFF
MAX_SHARDS = 64
MAX_READER_SLOTS = 1024
MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 32
MAX_NAME = 255
MAX64 = (1 << 64) - 1
MAX_POSITION = MAX64 - 2 * MAX_CAPACITY  # section 3.3

STATE_NAMES = {1: "LIVE", 2: "ENDED", 3: "REPLACED"}
STATE_LIVE, STATE_ENDED, STATE_REPLACED = 1, 2, 3

DEFAULT_BUS = "/dev/shm/ringest"
BUS_ENV = "RINGEST_BUS"
TRUST_ENV = "RINGEST_BUS_TRUST"

# Channel header offsets (section 3.1)
CH_VERSION, CH_HEADER_SIZE, CH_SHARD_COUNT, CH_READER_SLOTS = 8, 12, 16, 20
CH_CAPACITY, CH_STRIDE, CH_FILE_SIZE, CH_GENERATION = 24, 32, 40, 48
CH_PRODUCER_PID, CH_STATE, CH_NAME_LEN, CH_NAME = 56, 80, 88, 128
CH_COPY = 384  # bytes of immutable header worth copying

# Shard header offsets (section 3.2)
SH_WRITE_POS, SH_TAIL_POS, SH_RECORDS_WRITTEN = 0, 64, 128

# Readers header offsets (section 4.1)
RH_VERSION, RH_HEADER_SIZE, RH_SLOT_COUNT, RH_SLOT_SIZE = 8, 12, 16, 20
RH_SHARD_COUNT, RH_GENERATION = 24, 32


class FormatError(Exception):
    """A missing, foreign, truncated or corrupt channel."""


def align8(n: int) -> int:
    return (n + 7) & ~7


def record_size(length: int) -> int:
    return RECORD_HEADER + align8(length)


def slot_size(shards: int) -> int:
    raw = 64 + 16 * shards
    return (raw + 63) // 64 * 64


def validate_name(name: str) -> None:
    """Section 1: '/'-separated components of [A-Za-z0-9_.-], 1..255 bytes."""
    if not name:
        raise FormatError(f"invalid channel name {name!r}: empty")
    if len(name.encode()) > MAX_NAME:
        raise FormatError(f"invalid channel name {name!r}: longer than 255 bytes")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    for part in name.split("/"):
        if not part:
            raise FormatError(f"invalid channel name {name!r}: empty path component")
        if part.startswith("."):
            raise FormatError(f"invalid channel name {name!r}: a component starts with '.'")
        if not set(part) <= allowed:
            raise FormatError(f"invalid channel name {name!r}: bad character")


def u32(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


# --- Attaching (section 6.9) ---------------------------------------------


class Channel:
    """Both files of a channel, validated; the .ring mapped read-only."""

    def __init__(self, ring_path: str, fd: int, mm: mmap.mmap, header: bytes, readers_generation: int):
        self.ring_path = ring_path
        self.fd = fd
        st = os.fstat(fd)
        self.ring_id = (st.st_dev, st.st_ino)
        self.mm = mm
        # One aligned load per shared word: index these views, never decode
        # live words byte by byte (a torn write_pos would be fatal).
        self.w64 = memoryview(mm).cast("Q")
        self.w32 = memoryview(mm).cast("I")
        self.shards = u32(header, CH_SHARD_COUNT)
        self.reader_slots = u32(header, CH_READER_SLOTS)
        self.capacity = u64(header, CH_CAPACITY)
        self.stride = u64(header, CH_STRIDE)
        self.generation = u64(header, CH_GENERATION)
        self.producer_pid = u32(header, CH_PRODUCER_PID)
        name_len = u32(header, CH_NAME_LEN)
        self.name = header[CH_NAME : CH_NAME + name_len].decode()
        self.readers_generation = readers_generation

    def load32(self, off: int) -> int:
        return self.w32[off >> 2]

    def load64(self, off: int) -> int:
        return self.w64[off >> 3]

    def state(self) -> int:
        return self.load32(CH_STATE)

    def shard_header(self, i: int) -> int:
        return PAGE + i * self.stride

    def shard_data(self, i: int) -> int:
        return PAGE + i * self.stride + PAGE

    def is_current(self) -> bool:
        try:
            st = os.stat(self.ring_path)
        except OSError:
            return True  # unlinked without replacement: nothing to follow
        return (st.st_dev, st.st_ino) == self.ring_id

    def close(self) -> None:
        self.w64.release()
        self.w32.release()
        self.mm.close()
        os.close(self.fd)


def _check_ring_header(path: str, size: int, h: bytes) -> None:
    """Checks 2..12 of section 6.9 on a private copy of the header."""
    if h[0:8] != RING_MAGIC:
        raise FormatError(f"{path} is not a shm-bus file (magic {h[0:8].hex()})")
    version = u32(h, CH_VERSION)
    if version != FORMAT_VERSION:
        raise FormatError(f"{path} has format version {version}, this reader reads version {FORMAT_VERSION}")
    corrupt = f"{path} is corrupt: "
    if u32(h, CH_HEADER_SIZE) != PAGE:
        raise FormatError(corrupt + f"header size {u32(h, CH_HEADER_SIZE)} is not {PAGE}")
    shards = u32(h, CH_SHARD_COUNT)
    slots = u32(h, CH_READER_SLOTS)
    cap = u64(h, CH_CAPACITY)
    if not 1 <= shards <= MAX_SHARDS:
        raise FormatError(corrupt + f"shard count {shards} outside 1..={MAX_SHARDS}")
    if not 1 <= slots <= MAX_READER_SLOTS:
        raise FormatError(corrupt + f"reader slot count {slots} outside 1..={MAX_READER_SLOTS}")
    if cap & (cap - 1) or not MIN_CAPACITY <= cap <= MAX_CAPACITY:
        raise FormatError(corrupt + f"shard capacity {cap} is not a power of two in range")
    if u64(h, CH_STRIDE) != PAGE + cap:
        raise FormatError(corrupt + f"shard stride {u64(h, CH_STRIDE)} is not {PAGE + cap}")
    expected = PAGE + shards * (PAGE + cap)
    if u64(h, CH_FILE_SIZE) != expected:
        raise FormatError(corrupt + f"file size field {u64(h, CH_FILE_SIZE)} is not {expected}")
    if size < expected:
        raise FormatError(f"{path} is truncated: {size} bytes, its header says {expected}")
    if size > expected:
        raise FormatError(corrupt + f"file is {size} bytes, its header says {expected}")
    name_len = u32(h, CH_NAME_LEN)
    if name_len > MAX_NAME:
        raise FormatError(corrupt + f"name length {name_len} exceeds {MAX_NAME}")
    try:
        h[CH_NAME : CH_NAME + name_len].decode()
    except UnicodeDecodeError:
        raise FormatError(corrupt + "channel name is not UTF-8") from None


def _open_error(path: str, e: OSError) -> FormatError:
    if e.errno == errno.ELOOP:
        return FormatError(f"{path} is not trusted: it is a symbolic link (channel files are never opened through one)")
    return FormatError(f"open {path}: {e.strerror}")


def _trusted_owners() -> tuple[set[int], set[int]]:
    """Own uid, root, and $RINGEST_BUS_TRUST ("uid,uid,g:gid"): section 1."""
    uids, gids = {os.geteuid(), 0}, set()
    for entry in os.environ.get(TRUST_ENV, "").split(","):
        entry = entry.strip()
        target, entry = (gids, entry[2:]) if entry.startswith("g:") else (uids, entry)
        if entry.isdigit():
            target.add(int(entry))
    return uids, gids


def _check_owner(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path} is not trusted: not a regular file")
    uids, gids = _trusted_owners()
    if st.st_uid not in uids and st.st_gid not in gids:
        raise FormatError(
            f"{path} is not trusted: owned by uid {st.st_uid} (gid {st.st_gid}); trust it with {TRUST_ENV}"
        )


def _check_readers(path: str, ring_uid: int, shards: int, slots: int, generation: int) -> bool:
    """Checks 13..19; False to retry (another producer's file: a replacement
    is under way). The owner must be trusted and the .ring's (section 1). The
    generation is checked before the geometry: between the two renames of a
    restart the new .readers sits next to the old .ring and may have another
    shard count (FORMAT.md section 6.9)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # a producer between its two renames
    except OSError as e:
        raise _open_error(path, e) from None
    try:
        st = os.fstat(fd)
        _check_owner(path, st)
        if st.st_uid != ring_uid:
            raise FormatError(f"{path} is not trusted: owned by uid {st.st_uid}, but its .ring by uid {ring_uid}")
        size = st.st_size
        if size < READERS_HEADER_SIZE:
            raise FormatError(f"{path} is truncated: {size} bytes, its header says {READERS_HEADER_SIZE}")
        h = os.pread(fd, READERS_HEADER_SIZE, 0)
    finally:
        os.close(fd)
    if len(h) < READERS_HEADER_SIZE:
        return False
    if h[0:8] != READERS_MAGIC:
        raise FormatError(f"{path} is not a shm-bus file (magic {h[0:8].hex()})")
    version = u32(h, RH_VERSION)
    if version != FORMAT_VERSION:
        raise FormatError(f"{path} has format version {version}, this reader reads version {FORMAT_VERSION}")
    if u64(h, RH_GENERATION) != generation:
        return False
    if (
        u32(h, RH_HEADER_SIZE) != READERS_HEADER_SIZE
        or u32(h, RH_SLOT_COUNT) != slots
        or u32(h, RH_SHARD_COUNT) != shards
        or u32(h, RH_SLOT_SIZE) != slot_size(shards)
    ):
        raise FormatError(f"{path} is corrupt: readers header disagrees with the channel header")
    expected = READERS_HEADER_SIZE + slots * slot_size(shards)
    if size < expected:
        raise FormatError(f"{path} is truncated: {size} bytes, its header says {expected}")
    if size > expected:
        raise FormatError(f"{path} is corrupt: file is {size} bytes, its header says {expected}")
    return True


def _attach_once(bus: str, name: str) -> Channel | None:
    ring_path = os.path.join(bus, name + ".ring")
    readers_path = os.path.join(bus, name + ".readers")
    try:
        fd = os.open(ring_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(f"no channel {name} (no {ring_path})") from None
    except OSError as e:
        raise _open_error(ring_path, e) from None
    keep = False
    try:
        ring_stat = os.fstat(fd)
        _check_owner(ring_path, ring_stat)
        size = ring_stat.st_size
        if size < PAGE:
            raise FormatError(f"{ring_path} is truncated: {size} bytes, expected at least {PAGE}")
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        try:
            header = bytes(mm[0:CH_COPY])  # immutable part: one private copy
            _check_ring_header(ring_path, size, header)
            shards, slots = u32(header, CH_SHARD_COUNT), u32(header, CH_READER_SLOTS)
            generation = u64(header, CH_GENERATION)
            if not _check_readers(readers_path, ring_stat.st_uid, shards, slots, generation):
                return None  # files of two producers: a replacement is under way
            ch = Channel(ring_path, fd, mm, header, generation)
            if ch.state() == STATE_REPLACED:
                ch.close()
                keep = True  # already closed
                return None
            keep = True
            return ch
        finally:
            if not keep:
                mm.close()
    finally:
        if not keep:
            os.close(fd)


def attach(bus: str, name: str, settle_s: float = 2.0) -> Channel:
    validate_name(name)
    deadline = time.monotonic() + settle_s
    while True:
        ch = _attach_once(bus, name)
        if ch is not None:
            return ch
        if time.monotonic() >= deadline:
            raise FormatError(f"channel {name} is being replaced by a new producer and did not settle in time")
        time.sleep(0.002)


# --- Lossy reading (sections 3.4 and 6.3) --------------------------------


class Record:
    __slots__ = ("shard", "pos", "seq", "kind", "timestamp_ns", "payload", "lost")

    def __init__(self, shard, pos, seq, kind, timestamp_ns, payload, lost):
        self.shard = shard
        self.pos = pos
        self.seq = seq
        self.kind = kind
        self.timestamp_ns = timestamp_ns
        self.payload = payload
        self.lost = lost


class LossyCursor:
    """One shard, read from the oldest retained record (StartAt::Oldest)."""

    def __init__(self, ch: Channel, shard: int):
        self.ch = ch
        self.shard = shard
        self.cap = ch.capacity
        self.mask = ch.capacity - 1
        self.max_payload = ch.capacity // 2 - RECORD_HEADER
        self.hdr = ch.shard_header(shard)
        self.data = ch.shard_data(shard)
        self.pos = self.tail()  # relaxed load + fence(acquire): a plain load on x86-64
        if self.pos > self.write_pos():
            raise self._corrupt(self.pos, f"tail_pos {self.pos} is beyond write_pos")
        self.next_seq: int | None = None
        self.delivered_any = False
        self.stop_at: int | None = None  # read no further than this position

    def _position(self, field: str, value: int) -> int:
        """Section 3.3: a position is a multiple of 8, at most MAX_POSITION."""
        if value % 8 or value > MAX_POSITION:
            raise self._corrupt(value, f"{field} {value} is not a multiple of 8 at most {MAX_POSITION}")
        return value

    def write_pos(self) -> int:
        return self._position("write_pos", self.ch.load64(self.hdr + SH_WRITE_POS))

    def tail(self) -> int:
        return self._position("tail_pos", self.ch.load64(self.hdr + SH_TAIL_POS))

    def records_written(self) -> int:
        return self.ch.load64(self.hdr + SH_RECORDS_WRITTEN)

    def drained(self) -> bool:
        return self.pos >= self.write_pos()

    def _corrupt(self, pos: int, what: str) -> FormatError:
        return FormatError(f"channel {self.ch.name} shard {self.shard} is corrupt at position {pos}: {what}")

    def next(self) -> Record | None:
        ch = self.ch
        while True:
            wp = self.write_pos()  # P: acquire load of write_pos
            if self.stop_at is not None:
                wp = min(wp, self.stop_at)
            pos = self.pos
            if pos > wp and self.stop_at is None:
                raise self._corrupt(pos, f"write_pos {wp} went back below this position")
            if pos >= wp:
                return None
            off = pos & self.mask
            room = self.cap - off
            if room < RECORD_HEADER:  # stub: no record starts here
                self.pos = pos + room
                continue
            base = self.data + off
            stamp = ch.load64(base)
            lkf = ch.load64(base + 8)
            seq = ch.load64(base + 16)
            ts = ch.load64(base + 24)
            length = lkf & 0xFFFFFFFF
            kind = (lkf >> 32) & 0xFFFF
            payload = b""
            if kind != KIND_PADDING:  # never read a padding record's inside
                # Copy before validating; bounded to the ring and the largest
                # payload even if the length is torn (section 6.3).
                n = min(length, room - RECORD_HEADER, self.max_payload)
                payload = ch.mm[base + RECORD_HEADER : base + RECORD_HEADER + n]
            # V: (fence(acquire);) load the tail; lapped if it passed pos.
            if self.tail() > pos:
                self.pos = self.tail()
                continue
            if stamp != pos:
                raise self._corrupt(pos, f"record stamp {stamp} does not match its position")
            if length > room - RECORD_HEADER:
                raise self._corrupt(pos, f"record length {length} runs past the end of the ring")
            if kind == KIND_PADDING:
                self.pos = pos + record_size(length)
                continue
            if length > self.max_payload:
                raise self._corrupt(pos, f"record length {length} exceeds the largest payload {self.max_payload}")
            if seq == MAX64:
                raise self._corrupt(pos, f"sequence number {seq} leaves no room for the next")
            if self.next_seq is None:
                lost = 0
            elif seq >= self.next_seq:
                lost = seq - self.next_seq
            elif not self.delivered_any:
                lost = 0
            else:
                raise self._corrupt(pos, f"sequence {seq} goes back (expected {self.next_seq})")
            self.pos = pos + record_size(length)
            self.next_seq = seq + 1
            self.delivered_any = True
            return Record(self.shard, pos, seq, kind, ts, payload, lost)


def read_records(ch: Channel, follow: bool, limit: int | None, end_losses: dict[int, int] | None = None):
    """Yields records of all shards merged by timestamp (each shard in order).
    When the channel ends, fills end_losses with the records of each shard
    lapped after the last one delivered (section 6.3, "Losses at the end")."""
    cursors = [LossyCursor(ch, i) for i in range(ch.shards)]
    if not follow:
        for c in cursors:
            c.stop_at = c.write_pos()  # what is published now
    heads: list[Record | None] = [None] * len(cursors)
    delivered = 0
    last_check = time.monotonic()
    while limit is None or delivered < limit:
        for i, c in enumerate(cursors):
            if heads[i] is None:
                heads[i] = c.next()
        ready = [h for h in heads if h is not None]
        if ready:
            best = min(ready, key=lambda h: h.timestamp_ns)
            heads[best.shard] = None
            delivered += 1
            yield best
            continue
        if not follow:
            return
        state = ch.state()
        if state == STATE_ENDED:
            # ENDED is stored after the last publish: look once more.
            if all(c.drained() for c in cursors):
                if end_losses is not None:
                    for c in cursors:
                        if c.next_seq is not None:
                            end_losses[c.shard] = max(0, c.records_written() - c.next_seq)
                return
            continue
        if state == STATE_REPLACED:
            print("shm_bus_reader: channel replaced by a new producer; stopping", file=sys.stderr)
            return
        now = time.monotonic()
        if now - last_check >= 0.1:
            last_check = now
            if not ch.is_current():
                print("shm_bus_reader: channel replaced by a new producer; stopping", file=sys.stderr)
                return
        time.sleep(0.01)


# --- Command line ---------------------------------------------------------


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def channel_line(ch: Channel) -> str:
    shards = []
    for i in range(ch.shards):
        hdr = ch.shard_header(i)
        write_pos = ch.load64(hdr + SH_WRITE_POS)
        shards.append(
            {
                "shard": i,
                "write_pos": write_pos,
                "tail_pos": ch.load64(hdr + SH_TAIL_POS),
                "records_written": ch.load64(hdr + SH_RECORDS_WRITTEN),
            }
        )
    state = ch.state()
    return dumps(
        {
            "channel": ch.name,
            "generation": ch.generation,
            "state": STATE_NAMES.get(state, f"UNKNOWN({state})"),
            "producer_pid": ch.producer_pid,
            "capacity": ch.capacity,
            "reader_slots": ch.reader_slots,
            "shards": shards,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lossy reader of a shm-bus channel (see FORMAT.md).")
    parser.add_argument("--bus", help=f"bus directory (default: ${BUS_ENV} or {DEFAULT_BUS})")
    parser.add_argument("channel", help="channel name, e.g. lidar/packets")
    parser.add_argument("--sha256", action="store_true", help="print per-shard sha256 of the payloads and counts")
    parser.add_argument("--limit", type=int, default=None, help="stop after N records (over all shards)")
    parser.add_argument("--follow", action="store_true", help="keep polling until the producer ends the channel")
    parser.add_argument("--hex-bytes", type=int, default=32, help="payload bytes shown in payload_hex (default 32)")
    parser.add_argument("--settle-ms", type=int, default=2000, help="how long to wait for a replacement to settle")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")

    if sys.byteorder != "little":
        print("shm_bus_reader: error: big-endian hosts are not supported", file=sys.stderr)
        return 1
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print(
            f"shm_bus_reader: warning: {platform.machine()} is not x86-64; without acquire loads "
            "the lapping check (sync point V) is not reliable",
            file=sys.stderr,
        )
    bus = args.bus or os.environ.get(BUS_ENV) or DEFAULT_BUS

    try:
        ch = attach(bus, args.channel, args.settle_ms / 1000.0)
    except FormatError as e:
        print(f"shm_bus_reader: error: {e}", file=sys.stderr)
        return 1

    out = sys.stdout
    try:
        out.write(channel_line(ch) + "\n")
        if args.sha256:
            stats = [
                {"records": 0, "bytes": 0, "lost": 0, "first_seq": None, "last_seq": None, "h": hashlib.sha256()}
                for _ in range(ch.shards)
            ]
            end_losses: dict[int, int] = {}
            for rec in read_records(ch, args.follow, args.limit, end_losses):
                s = stats[rec.shard]
                s["records"] += 1
                s["bytes"] += len(rec.payload)
                s["lost"] += rec.lost
                if s["first_seq"] is None:
                    s["first_seq"] = rec.seq
                s["last_seq"] = rec.seq
                s["h"].update(rec.payload)
            for i, s in enumerate(stats):
                s["lost"] += end_losses.get(i, 0)
                line = {"shard": i}
                line.update({k: v for k, v in s.items() if k != "h"})
                line["sha256"] = s["h"].hexdigest()
                out.write(dumps(line) + "\n")
        else:
            end_losses = {}
            for rec in read_records(ch, args.follow, args.limit, end_losses):
                line = {
                    "shard": rec.shard,
                    "seq": rec.seq,
                    "kind": rec.kind,
                    "timestamp_ns": rec.timestamp_ns,
                    "len": len(rec.payload),
                    "payload_hex": rec.payload[: args.hex_bytes].hex(),
                }
                if rec.lost:
                    line["lost"] = rec.lost
                out.write(dumps(line) + "\n")
            for shard, lost in sorted(end_losses.items()):
                if lost:
                    out.write(dumps({"shard": shard, "lost_at_end": lost}) + "\n")
        out.flush()
    except FormatError as e:
        out.flush()
        print(f"shm_bus_reader: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Reader of our output went away (e.g. `| head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
