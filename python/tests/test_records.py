"""Connection events, socket stats and egress through the ringest package,
against a real `ringest run`."""

import os
import socket
import time

import pytest

import ringest
from conftest import wait_until_disconnected

DEADLINE = 30.0


def next_record(reader, kind):
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        event = reader.recv(timeout=1.0)
        if isinstance(event, ringest.Sample) and event.kind == kind:
            return event.decode()
    raise AssertionError(f"no record of kind {kind} on {reader.channel}")


def test_connection_events_stats_and_egress(bus, daemons):
    daemon = daemons(bus, ["lidar"])
    events = ringest.Reader("lidar/connection_events", bus=bus, start="oldest")
    stats = ringest.Reader("lidar/socket_stats", bus=bus)
    client = socket.create_connection(daemon.addr("lidar"))
    port = client.getsockname()[1]
    connected = next_record(events, ringest.KIND_CONNECTION_EVENT)
    assert connected["event"] == "connected"
    assert connected["peer"] == ("127.0.0.1", port)
    assert connected["local"] == daemon.addr("lidar")
    conn = connected["connection_id"]

    client.sendall(b"x" * 1000)
    deadline = time.monotonic() + DEADLINE
    while True:
        sample = next_record(stats, ringest.KIND_SOCKET_STATS)
        assert sample["receive_path"] in ("glommio_read", "io_uring_multishot")
        ours = [c for c in sample["connections"] if c["connection_id"] == conn]
        if ours and ours[0]["traffic"]["bytes_received"] == 1000:
            assert ours[0]["peer"] == ("127.0.0.1", port)
            assert sample["stage"]["open_connections"] == 1
            break
        assert time.monotonic() < deadline, sample

    # Egress: three records' worth to our connection, every byte back.
    data = os.urandom(150_000)
    outcomes = ringest.publish_egress("lidar", data, connection=conn, bus=bus)
    assert [o["delivered"] for o in outcomes] == [1, 1, 1]
    assert sum(o["bytes"] for o in outcomes) == len(data)
    assert all(o["target"] == conn for o in outcomes)
    got = bytearray()
    client.settimeout(DEADLINE)
    while len(got) < len(data):
        chunk = client.recv(1 << 16)
        assert chunk, "connection closed early"
        got += chunk
    assert bytes(got) == data

    # A connection that is not open: an error, not a silent drop.
    with pytest.raises(ringest.RingestError, match="not open"):
        ringest.publish_egress("lidar", b"nobody", connection=conn + 1000, bus=bus)

    client.close()
    disconnected = next_record(events, ringest.KIND_CONNECTION_EVENT)
    assert disconnected == {
        "event": "disconnected",
        "connection_id": conn,
        "time_ns": disconnected["time_ns"],
        "bytes_in": 1000,
        "bytes_out": len(data),
        "reason": "peer_closed",
    }
    assert disconnected["time_ns"] >= connected["time_ns"]


def test_publish_egress_to_a_stage_that_is_not_running(bus):
    with pytest.raises(ringest.RingestError, match="not running"):
        ringest.publish_egress("nosuchstage", b"data", bus=bus)


def test_decoders_reject_bad_bytes():
    with pytest.raises(ringest.RingestError, match="connection event"):
        ringest.decode_connection_event(b"\xff" * 3)
    with pytest.raises(ringest.RingestError, match="socket stats"):
        ringest.decode_socket_stats(b"")


def test_the_lidar_example_decodes_every_point(bus, daemons):
    import pathlib
    import subprocess
    import sys

    import numpy as np

    example = pathlib.Path(__file__).resolve().parents[1] / "examples" / "lidar_points.py"
    daemon = daemons(bus, ["lidar_front"])
    events = ringest.Reader("lidar_front/connection_events", bus=bus, start="oldest")
    child = subprocess.Popen(
        [sys.executable, str(example), "lidar_front/packet_group", bus], stdout=subprocess.PIPE, text=True
    )
    # Gated: wait until it reads, so that it sees every point.
    deadline = time.monotonic() + DEADLINE
    while not any(
        r["gated"] for c in ringest.list_channels(bus) if c["name"] == "lidar_front/packet_group" for r in c["readers"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    rng = np.random.default_rng(18)
    points = rng.random((100_003, 4), dtype=np.float32)
    data = points.astype("<f4").tobytes()
    client = socket.create_connection(daemon.addr("lidar_front"))
    for at in range(0, len(data), 1499):  # splits points across receives
        client.sendall(data[at : at + 1499])
    client.close()
    wait_until_disconnected(events)
    assert daemon.stop() == 0
    out, _ = child.communicate(timeout=DEADLINE)
    assert child.returncode == 0
    lines = out.splitlines()
    assert len(lines) == 1, out
    mean = points.astype(np.float64).mean(axis=0)
    assert lines[0].split(":")[1] == f" {len(points)} points, mean " + " ".join(f"{v:.6f}" for v in mean)
