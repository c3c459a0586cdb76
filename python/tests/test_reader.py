"""End-to-end tests of the ringest package against a real `ringest run`
with real TCP senders on 127.0.0.1."""

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ringest
from conftest import wait_until_disconnected, wait_until_stalled

DEADLINE = 30.0


def connect(addr):
    sock = socket.create_connection(addr)
    return sock, sock.getsockname()[1]


def send_all_and_close(sock, data, chunk=65536):
    for at in range(0, len(data), chunk):
        sock.sendall(data[at : at + chunk])
    sock.close()


def recv_record(reader, timeout=DEADLINE):
    """The next sample (Restarted events are not expected here)."""
    event = reader.recv(timeout=timeout)
    assert isinstance(event, ringest.Sample), f"expected a record, got {event!r}"
    return event


def test_gated_reader_gets_every_byte_of_every_connection(bus, daemons):
    daemon = daemons(bus, ["lidar"])
    streams = {}
    with ringest.Reader("lidar/packet_group", bus=bus, gated=True, start="oldest") as reader:
        senders = []
        rng = random.Random(18)
        for i in range(4):
            data = rng.randbytes(1_000_000 + i * 77_777)
            sock, port = connect(daemon.addr("lidar"))
            streams[port] = data
            thread = threading.Thread(target=send_all_and_close, args=(sock, data, 1000 + i * 3000))
            thread.start()
            senders.append(thread)
        hashes = {port: hashlib.sha256() for port in streams}
        counts = dict.fromkeys(streams, 0)
        deadline = time.monotonic() + DEADLINE
        while counts != {port: len(data) for port, data in streams.items()}:
            assert time.monotonic() < deadline, f"bytes received by port: {counts}"
            sample = reader.recv(timeout=1.0)
            if sample is None:
                continue
            assert sample.kind == ringest.KIND_PACKET_GROUP
            assert sample.lost_before == 0
            for packet in sample.packets():
                host, port = packet.peer
                assert host == "127.0.0.1"
                assert packet.rx_realtime_ns > 0 and packet.rx_monotonic_ns > 0
                assert isinstance(packet.data, memoryview) and packet.data.readonly
                hashes[port].update(packet.data)
                counts[port] += len(packet.data)
        for thread in senders:
            thread.join()
        for port, data in streams.items():
            assert hashes[port].hexdigest() == hashlib.sha256(data).hexdigest(), f"stream of port {port}"
        assert reader.stats["lost"] == 0
        # The end: the daemon stops, every record was read.
        assert daemon.stop() == 0
        event = reader.recv(timeout=DEADLINE)
        while isinstance(event, ringest.Sample):
            assert not event.packets(), "no bytes after every stream was complete"
            event = reader.recv(timeout=DEADLINE)
        assert isinstance(event, ringest.Ended), event


def test_a_paused_lossy_reader_reports_exact_losses(bus, daemons):
    daemon = daemons(bus, ["lidar"], ring_size_b=64 << 10)
    reader = ringest.Reader("lidar/packet_group", bus=bus, start="next")
    events = ringest.Reader("lidar/connection_events", bus=bus, start="oldest")
    sock, _ = connect(daemon.addr("lidar"))
    # Many times the 64 KiB ring, while the reader does not read.
    send_all_and_close(sock, os.urandom(8 << 20), 4096)
    wait_until_disconnected(events)
    assert daemon.stop() == 0
    seqs = {}
    received = lost = 0
    while True:
        event = reader.recv(timeout=DEADLINE)
        if isinstance(event, ringest.Ended):
            break
        assert isinstance(event, ringest.Sample), event
        received += 1
        lost += event.lost_before
        # Per shard, a gap in the sequence is exactly the losses reported.
        last = seqs.get(event.shard)
        expected = (last + 1 if last is not None else event.seq - event.lost_before) + event.lost_before
        assert event.seq == expected
        seqs[event.shard] = event.seq
    stats = reader.stats
    written = next(c for c in ringest.list_channels(bus) if c["name"] == "lidar/packet_group")["records_written"]
    assert lost > 0, "the paused reader was lapped"
    assert stats["received"] == received
    assert stats["received"] + stats["lost"] == written, (stats, written)
    reader.close()


def test_holding_a_gated_sample_blocks_the_writer_and_releasing_frees_it(bus, daemons):
    ring = 64 << 10
    daemon = daemons(bus, ["lidar"], ring_size_b=ring)
    reader = ringest.Reader("lidar/packet_group", bus=bus, gated=True)
    data = os.urandom(16 << 20)
    sock, _ = connect(daemon.addr("lidar"))
    sender = threading.Thread(target=send_all_and_close, args=(sock, data))
    sender.start()
    held = recv_record(reader)
    head = b"".join(bytes(packet.data) for packet in held.packets())
    array = np.frombuffer(held.payload, dtype=np.uint8)
    snapshot = array.tobytes()
    wait_until_stalled(bus, "lidar")
    # The producer could not write over it: same bytes, and the sender is
    # stuck behind the full ring.
    assert array.tobytes() == snapshot
    assert sender.is_alive()
    with pytest.raises(BufferError):
        held.release()
    assert held.held
    del array
    held.release()
    assert not held.held
    with pytest.raises(ValueError):
        held.payload
    with pytest.raises(ValueError):
        held.copy()
    # Everything else arrives, byte for byte, after the held record's bytes.
    got = bytearray(head)
    while len(got) < len(data):
        sample = recv_record(reader)
        for packet in sample.packets():
            got += packet.data
    sender.join(timeout=DEADLINE)
    assert not sender.is_alive()
    assert bytes(got) == data
    reader.close()


GATED_CHILD = """
import sys, time, ringest
reader = ringest.Reader(sys.argv[1], bus=sys.argv[2], gated=True)
sample = reader.recv(timeout=30)
assert isinstance(sample, ringest.Sample), sample
print("holding", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_gated_python_reader_stops_gating_within_a_second(bus, daemons):
    ring = 64 << 10
    daemon = daemons(bus, ["lidar"], ring_size_b=ring)
    child = subprocess.Popen(
        [sys.executable, "-c", GATED_CHILD, "lidar/packet_group", bus], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not any(r["pid"] == child.pid and r["gated"] for r in channel(bus)["readers"]):
            assert time.monotonic() < deadline, "the child reader did not attach"
            time.sleep(0.01)
        data = os.urandom(16 << 20)
        sock, _ = connect(daemon.addr("lidar"))
        sender = threading.Thread(target=send_all_and_close, args=(sock, data))
        sender.start()
        assert child.stdout.readline() == "holding\n"
        wait_until_stalled(bus, "lidar")
        # The child holds its first record: the ring is full, the sender stuck.
        assert sender.is_alive()
        written = channel(bus)["records_written"]
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        while channel(bus)["records_written"] == written:
            assert time.monotonic() - killed < 1.0, "the producer still waits for the dead reader"
            time.sleep(0.01)
        sender.join(timeout=DEADLINE)
        assert not sender.is_alive()
    finally:
        child.kill()
        child.wait()


def channel(bus, name="lidar/packet_group"):
    return next(c for c in ringest.list_channels(bus) if c["name"] == name)


def test_producer_restart_and_end_are_events(bus, daemons):
    first = daemons(bus, ["lidar"])
    reader = ringest.Reader("lidar/packet_group", bus=bus)
    generation = reader.generation
    assert first.stop() == 0
    assert isinstance(reader.recv(timeout=DEADLINE), ringest.Ended)
    # Ended again until a new producer starts.
    assert isinstance(reader.recv(timeout=0.1), ringest.Ended)
    second = daemons(bus, ["lidar"])
    event = reader.recv(timeout=DEADLINE)
    assert isinstance(event, ringest.Restarted), event
    assert event.generation != generation
    assert reader.generation == event.generation
    assert reader.stats["restarts"] == 1
    # The new producer's records arrive.
    sock, port = connect(second.addr("lidar"))
    send_all_and_close(sock, b"after the restart")
    got = b""
    while len(got) < len(b"after the restart"):
        for packet in recv_record(reader).packets():
            assert packet.peer[1] == port
            got += bytes(packet.data)
    assert got == b"after the restart"
    # Iteration stops at the end.
    assert second.stop() == 0
    assert all(not s.packets() for s in reader if isinstance(s, ringest.Sample))
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError):
        reader.recv(timeout=0)


def test_list_channels_shows_the_stage_and_a_gated_reader(bus, daemons):
    daemons(bus, ["lidar"])
    with ringest.Reader("lidar/packet_group", bus=bus, gated=True) as reader:
        names = [c["name"] for c in ringest.list_channels(bus)]
        assert "lidar/packet_group" in names and "lidar/connection_events" in names
        listed = channel(bus)
        assert listed["state"] == "live" and listed["producer_alive"] is True
        assert [r["gated"] for r in listed["readers"] if r["pid"] == os.getpid()] == [True]
        assert reader.gated is True
    assert not [r for r in channel(bus)["readers"] if r["pid"] == os.getpid()], "close() frees the slot"


def test_bad_arguments_are_clear_errors(bus, daemons):
    with pytest.raises(ringest.RingestError):
        ringest.Reader("no/such_channel", bus=bus)
    daemons(bus, ["lidar"])
    with pytest.raises(ValueError, match="start must be"):
        ringest.Reader("lidar/packet_group", bus=bus, start="newest")
    with ringest.Reader("lidar/packet_group", bus=bus) as reader:
        with pytest.raises(ValueError, match="timeout"):
            reader.recv(timeout=-1)
        assert reader.recv(timeout=0.05) is None


def test_recv_releases_the_gil_while_it_sleeps(bus, daemons):
    daemons(bus, ["lidar"])
    counted = 0
    stop = threading.Event()

    def count():
        nonlocal counted
        while not stop.is_set():
            counted += 1

    with ringest.Reader("lidar/packet_group", bus=bus, gated=True) as reader:
        thread = threading.Thread(target=count)
        thread.start()
        # What the thread counts in 0.2 s while this one sleeps in Python.
        before = counted
        time.sleep(0.2)
        baseline = counted - before
        # In 0.5 s of recv it counts more than that: with the GIL held it
        # would count at most a switch interval's worth (5 ms).
        before = counted
        started = time.monotonic()
        assert reader.recv(timeout=0.5) is None
        during = counted - before
        assert time.monotonic() - started >= 0.5
        stop.set()
        thread.join()
    assert during > baseline > 0, (during, baseline)


def test_a_lossy_reader_that_keeps_up_gets_every_byte_from_its_copy(bus, daemons):
    daemon = daemons(bus, ["lidar"])
    data = os.urandom(2_000_000)
    with ringest.Reader("lidar/packet_group", bus=bus) as reader:
        assert reader.gated is False
        sock, _ = connect(daemon.addr("lidar"))
        sender = threading.Thread(target=send_all_and_close, args=(sock, data, 10_000))
        sender.start()
        got = bytearray()
        kept = []
        while len(got) < len(data):
            with recv_record(reader) as sample:
                assert sample.lost_before == 0
                kept.append(sample.copy())
                got += b"".join(bytes(p.data) for p in sample.packets())
                assert len(sample) == len(sample.payload)
            assert not sample.held
            with pytest.raises(ValueError):
                sample.payload
        sender.join()
        assert bytes(got) == data
        assert reader.stats["lost"] == 0
        # The copies outlive their samples, and hold the whole records.
        assert sum(len(k) for k in kept) > len(data)
