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
