"""UDP records through the ringest package: datagram groups (kind 6), UDP
socket stats (kind 7) and datagram egress (kind 8). The decoders are checked
against bytes laid out here from engine/RECORDS.md §8-§9 alone (and against
its hex example), so that the document, the engine and the package agree."""

import pathlib
import re
import struct

import pytest

import ringest

ROOT = pathlib.Path(__file__).resolve().parents[2]

FLAG_TRUNCATED = 1
FLAG_KERNEL_TIME = 2
FLAG_HARDWARE_TIME = 4
FLAG_CONTROL_TRUNCATED = 8


def addr_ip(host):
    """An Addr's 16 ip bytes (RECORDS.md §1): IPv4 as ::ffff:a.b.c.d."""
    import ipaddress

    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def datagram(data, source, destination, flags=0, rt=0, mono=0, kernel=0, original_len=None, data_offset=80, size=None):
    """One datagram of a group (RECORDS.md §8): header, gap, data, padding."""
    if size is None:
        size = data_offset + (len(data) + 7) // 8 * 8
    dst_ip = b"\0" * 16 if destination is None else addr_ip(destination[0])
    dst_port = 0 if destination is None else destination[1]
    header = struct.pack(
        "<IHHQQQ16sHHI16sI4x",
        size,
        data_offset,
        flags,
        rt,
        mono,
        kernel,
        addr_ip(source[0]),
        source[1],
        dst_port,
        len(data),
        dst_ip,
        len(data) if original_len is None else original_len,
    )
    assert len(header) == 80
    body = header + b"\xee" * (data_offset - 80) + data
    return body + b"\xee" * (size - len(body))


def group(*datagrams):
    return struct.pack("<B3xI", 1, len(datagrams)) + b"".join(datagrams)


def test_the_records_md_example_decodes_as_documented():
    doc = (ROOT / "engine" / "RECORDS.md").read_text()
    section = doc[doc.index("## 8. DatagramGroup") : doc.index("## 9.")]
    dump = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    record = bytes.fromhex("".join(line[6:] for line in dump.splitlines()))
    (d,) = ringest.decode_datagram_group(record)
    assert d.source == ("192.168.1.201", 2368)
    assert d.destination == ("239.1.2.3", 2368)
    assert (d.rx_realtime_ns, d.rx_monotonic_ns, d.kernel_rx_ns) == (0x0102, 0x0304, 0x0506)
    assert (d.hardware_time, d.truncated, d.control_truncated) == (False, False, False)
    assert (d.flags, d.original_len) == (FLAG_KERNEL_TIME, 5)
    assert bytes(d.data) == b"hello"
    assert record == group(
        datagram(
            b"hello",
            ("192.168.1.201", 2368),
            ("239.1.2.3", 2368),
            flags=FLAG_KERNEL_TIME,
            rt=0x0102,
            mono=0x0304,
            kernel=0x0506,
        )
    ).replace(b"\xee", b"\0")


def test_datagrams_of_both_layouts_with_flags_times_and_addresses():
    payloads = [bytes(range(256)) * 4 + b"tail", b"", b"\x00\x01\x02"]
    record = group(
        # As the read path lays it out: data right after the header.
        datagram(payloads[0], ("10.0.0.7", 40000), ("10.0.0.1", 2368), flags=FLAG_KERNEL_TIME, rt=5, mono=6, kernel=4),
        # As the io_uring path: data after the kernel's header, in a fixed slot.
        datagram(payloads[1], ("::1", 5353), ("ff02::fb", 5353), data_offset=168, size=2048),
        datagram(
            payloads[2],
            ("10.0.0.8", 1),
            None,
            flags=FLAG_TRUNCATED | FLAG_KERNEL_TIME | FLAG_HARDWARE_TIME | FLAG_CONTROL_TRUNCATED,
            kernel=99,
            original_len=9000,
            data_offset=128,
            size=512,
        ),
    )
    datagrams = ringest.decode_datagram_group(record)
    assert [bytes(d.data) for d in datagrams] == payloads
    first, second, third = datagrams
    assert (first.source, first.destination, first.kernel_rx_ns, first.hardware_time) == (
        ("10.0.0.7", 40000),
        ("10.0.0.1", 2368),
        4,
        False,
    )
    assert (first.rx_realtime_ns, first.rx_monotonic_ns) == (5, 6)
    assert (second.source, second.destination, second.kernel_rx_ns) == (("::1", 5353), ("ff02::fb", 5353), None)
    assert third.destination is None
    assert (third.truncated, third.original_len, third.hardware_time, third.control_truncated) == (True, 9000, True, True)
    assert third.kernel_rx_ns == 99
    assert "truncated" in repr(third)
    # Views into the record, not copies; read-only.
    assert first.data.obj is record
    assert first.data.readonly
    with pytest.raises(TypeError):
        first.data[0] = 1


def test_a_damaged_datagram_group_is_an_error_not_a_crash():
    good = group(datagram(b"hello", ("10.0.0.7", 1), ("10.0.0.1", 2)))
    for cut in range(len(good)):
        with pytest.raises(ringest.RingestError, match="datagram group"):
            ringest.decode_datagram_group(good[:cut])
    with pytest.raises(ringest.RingestError, match="datagram group"):
        ringest.decode_datagram_group(b"\x02" + good[1:])  # another version
    bad_offset = bytearray(good)
    bad_offset[8 + 4] = 72  # data_offset below the header
    with pytest.raises(ringest.RingestError, match="datagram group"):
        ringest.decode_datagram_group(bytes(bad_offset))


def udp_counters(executor, local, values):
    """UdpSocketCounters (RECORDS.md §9, 110 bytes)."""
    host, port = local
    return struct.pack("<I16sHQQddQQQQQQQ", executor, addr_ip(host), port, *values)


def test_udp_socket_stats_decode_by_the_documented_layout():
    first = [100, 120600, 10.5, 12663.0, 3, 1, 2, 1206, 4, 0, 212992]
    second = [50, 60300, 5.0, 6030.0, 0, 0, 1, 900, 1, 2, 212992]
    sockets = udp_counters(0, ("0.0.0.0", 2368), first) + udp_counters(1, ("0.0.0.0", 2368), second)
    record = struct.pack("<QQIQQ", 7, 1_000_000_000, 1, 42, 2) + sockets
    assert len(record) == 36 + 110 * 2
    stats = ringest.decode_udp_socket_stats(record)
    assert stats["time_ns"] == 7
    assert stats["interval_ns"] == 1_000_000_000
    assert stats["receive_path"] == "io_uring_multishot"
    assert stats["groups_published"] == 42
    names = [
        "datagrams",
        "bytes",
        "datagrams_per_s",
        "bytes_per_s",
        "kernel_drops",
        "truncated",
        "ring_full_stalls",
        "max_datagram_size",
        "egress_sent",
        "egress_drops",
        "kernel_receive_buffer_b",
    ]
    for socket, values, executor in zip(stats["sockets"], [first, second], [0, 1]):
        assert socket == {"executor": executor, "local": ("0.0.0.0", 2368), **dict(zip(names, values))}
    total = stats["total"]
    assert "executor" not in total and "local" not in total
    assert total["datagrams"] == 150
    assert total["kernel_drops"] == 3
    assert total["max_datagram_size"] == 1206
    assert total["egress_drops"] == 2
    with pytest.raises(ringest.RingestError, match="UDP socket stats"):
        ringest.decode_udp_socket_stats(record[:-1])


# End to end: a real `ringest run` with a [[udp]] table, real datagrams.

import hashlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

DEADLINE = 30.0
# Room for every test's bursts in the kernel, whatever the engine's pace.
RCVBUF = "kernel_receive_buffer_size_b = 8388608\n"


def collect(reader, count, into):
    """Reads datagrams until `into` holds `count`: (source, destination,
    kernel_rx_ns, rx_realtime_ns, truncated, original_len, bytes)."""
    deadline = time.monotonic() + DEADLINE
    while len(into) < count:
        assert time.monotonic() < deadline, f"{len(into)} of {count} datagrams arrived"
        event = reader.recv(timeout=1.0)
        if not isinstance(event, ringest.Sample):
            continue
        assert event.kind == ringest.KIND_DATAGRAM_GROUP
        for d in event.datagrams():
            # In place: a view of the sample itself, in the shared mapping.
            assert d.data.obj is event
            into.append(
                (d.source, d.destination, d.kernel_rx_ns, d.rx_realtime_ns, d.truncated, d.original_len, bytes(d.data))
            )


# The two receive paths lay datagrams out differently (slots with a gap
# before the data, or packed).
@pytest.mark.parametrize("path", ["io_uring", "glommio_read"])
def test_every_datagram_of_every_source_through_a_gated_python_reader(bus, daemons, path):
    config = f'max_datagram_size_b = 1500\nreceive_path = "{path}"\n' + RCVBUF
    daemon = daemons(bus, [], udp={"lidar": config})
    address = daemon.udp_addr("lidar")
    rng = np.random.default_rng(15)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in senders:
        s.bind(("127.0.0.1", 0))
    sent = {s.getsockname(): [] for s in senders}
    got = []
    with ringest.Reader("lidar/packet_group", bus=bus, gated=True, start="oldest") as reader:
        for burst in range(10):
            for s in senders:
                for _ in range(20):
                    data = rng.bytes(int(rng.integers(0, 1501)))
                    s.sendto(data, address)
                    sent[s.getsockname()].append(data)
            collect(reader, sum(map(len, sent.values())), got)
        long = rng.bytes(2000)  # longer than max_datagram_size_b
        senders[0].sendto(long, address)
        collect(reader, len(got) + 1, got)
    for source, datagrams in sent.items():
        ours = [g for g in got if g[0] == source]
        if source == senders[0].getsockname():
            last = ours.pop()
            assert last[4:] == (True, 2000, long[:1500])
        assert [g[6] for g in ours] == datagrams, f"datagrams of {source}"
        digest = lambda parts: hashlib.sha256(b"".join(parts)).hexdigest()  # noqa: E731
        assert digest(g[6] for g in ours) == digest(datagrams)
        assert not any(g[4] for g in ours)
    for source, destination, kernel_ns, engine_ns, *_ in got:
        assert destination == address
        assert kernel_ns is not None and kernel_ns <= engine_ns


def test_publish_egress_sends_a_datagram_through_a_udp_stage(bus, daemons):
    commands = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    commands.bind(("127.0.0.1", 0))
    commands.settimeout(DEADLINE)
    sensor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sensor.bind(("127.0.0.1", 0))
    sensor.settimeout(DEADLINE)
    host, port = sensor.getsockname()
    daemon = daemons(
        bus, ["tcp"], udp={"lidar": f'egress_destination = "{host}:{port}"\n', "mute": ""}
    )
    address = daemon.udp_addr("lidar")
    data = np.random.default_rng(2).bytes(60_000)
    (outcome,) = ringest.publish_egress("lidar", data, bus=bus, destination=commands.getsockname())
    assert (outcome["delivered"], outcome["bytes"], outcome["target"]) == (1, len(data), None)
    got, source = commands.recvfrom(1 << 16)
    assert got == data
    assert source == address
    # Without a destination: to the stage's egress_destination ("host:port" works too).
    ringest.publish_egress("lidar", b"START", bus=bus)
    assert sensor.recvfrom(100) == (b"START", address)
    ringest.publish_egress("lidar", memoryview(b"STOP"), bus=bus, destination=f"{host}:{port}")
    assert sensor.recvfrom(100)[0] == b"STOP"

    # The last record on the egress channel, decoded (kind 8).
    with ringest.Reader("lidar/egress_packets", bus=bus, start="oldest") as egress:
        sample = egress.recv(timeout=DEADLINE)
        assert sample.kind == ringest.KIND_DATAGRAM_EGRESS
        record = sample.decode()
        assert (record["destination"], bytes(record["data"])) == ((host, port), b"STOP")
        del record
        sample.release()

    with pytest.raises(ValueError, match="UDP stage: it has no connections"):
        ringest.publish_egress("lidar", b"x", connection=1, bus=bus)
    with pytest.raises(ValueError, match="at most 65527 bytes"):
        ringest.publish_egress("lidar", bytes(70_000), bus=bus)
    with pytest.raises(ValueError, match="TCP stage: destination= is for UDP stages"):
        ringest.publish_egress("tcp", b"x", bus=bus, destination=("127.0.0.1", 9))
    with pytest.raises(ValueError, match="destination"):
        ringest.publish_egress("lidar", b"x", bus=bus, destination=42)
    # A stage with nowhere to send: an error, not a silent drop.
    with pytest.raises(ringest.RingestError, match="not sent \\(no destination"):
        ringest.publish_egress("mute", b"lost?", bus=bus)


# The Velodyne example's packet layout, written out here from the VLP-16
# manual (not imported from the example, which this checks).
VLP16_ELEVATION = [-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15]


def vlp16_packet(rng):
    """A random VLP-16 data packet (1206 bytes) and its points' x, y, z."""
    import math
    import struct

    body = b""
    points = []
    for _ in range(12):
        azimuth = int(rng.integers(0, 36000))
        distances = [int(d) if rng.random() > 0.2 else 0 for d in rng.integers(1, 60000, 32)]
        body += struct.pack("<HH", 0xEEFF, azimuth)
        for j, distance in enumerate(distances):
            body += struct.pack("<HB", distance, int(rng.integers(0, 256)))
            if distance:
                r, el, az = distance * 0.002, math.radians(VLP16_ELEVATION[j % 16]), math.radians(azimuth / 100)
                points.append((r * math.cos(el) * math.sin(az), r * math.cos(el) * math.cos(az), r * math.sin(el)))
    body += struct.pack("<I", int(rng.integers(0, 1 << 32))) + b"\x37\x22"
    assert len(body) == 1206
    return body, points


def test_the_velodyne_example_decodes_every_point(bus, daemons):
    example = ROOT / "python" / "examples" / "velodyne_points.py"
    daemon = daemons(bus, [], udp={"lidar": "max_datagram_size_b = 1206\n" + RCVBUF})
    address = daemon.udp_addr("lidar")
    child = subprocess.Popen([sys.executable, str(example), "lidar/packet_group", bus], stdout=subprocess.PIPE, text=True)
    # Gated: wait until it reads, so that it sees every packet.
    deadline = time.monotonic() + DEADLINE
    while not any(
        r["gated"] for c in ringest.list_channels(bus) if c["name"] == "lidar/packet_group" for r in c["readers"]
    ):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    rng = np.random.default_rng(1206)
    sensors = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    expected = {}
    for sensor in sensors:
        sensor.bind(("127.0.0.1", 0))
        packets = [vlp16_packet(rng) for _ in range(150)]
        for data, _ in packets:
            sensor.sendto(data, address)
        expected[sensor.getsockname()] = packets
    sensors[1].sendto(b"\x00" * 100, address)  # not a data packet: skipped, counted
    sensors[1].sendto(b"\x00" * 1300, address)  # truncated to 1206: skipped, counted
    # Everything received before the stop: the stage's statistics say so.
    deadline = time.monotonic() + DEADLINE
    with ringest.Reader("lidar/socket_stats", bus=bus, start="latest") as stats:
        while True:
            event = stats.recv(timeout=1.0)
            if isinstance(event, ringest.Sample) and event.decode()["total"]["datagrams"] == 302:
                break
            assert time.monotonic() < deadline, "the stage did not count 302 datagrams"
    assert daemon.stop() == 0
    out, _ = child.communicate(timeout=DEADLINE)
    assert child.returncode == 0, out
    lines = out.splitlines()
    assert lines[-1] == "skipped 2 datagrams", out
    assert len(lines) == 3, out
    for line, ((host, port), packets) in zip(lines, sorted(expected.items())):
        points = [p for _, ps in packets for p in ps]
        head, means = line.split(" points, mean ")
        assert head == f"{host}:{port}: {len(packets)} packets, {len(points)}"
        want = np.array(points, np.float32).astype(np.float64).mean(axis=0)
        assert np.allclose([float(v) for v in means.split()], want, atol=2e-4), (line, want)
