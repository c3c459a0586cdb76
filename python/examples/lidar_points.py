"""Decodes a lidar-like TCP stream (points of four little-endian float32:
x, y, z, intensity) into numpy arrays, straight from the shared mapping.

    python lidar_points.py lidar_front/packet_group [BUS]

Prints, at the end of the channel, the points and their mean per connection.
"""

import sys

import numpy as np

import ringest

POINT = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])


def main(channel, bus=None):
    totals = {}  # connection id -> [points, sum of x, y, z, intensity]
    partial = {}  # connection id -> the bytes of a point split across receives

    def add(connection_id, points):
        # Reduces the view at once: no array outlives the sample.
        total = totals.setdefault(connection_id, [0, np.zeros(4)])
        total[0] += len(points)
        total[1] += [points[f].sum(dtype=np.float64) for f in POINT.names]

    def consume(packet):
        # A function: its slices and arrays of the payload are gone when it
        # returns, before the reader receives the next record (which
        # releases this one, and raises BufferError while views of it live).
        conn, data = packet.connection_id, packet.data
        head = partial.pop(conn, b"")
        if head:  # complete a point split across receives (a small copy)
            take = min(len(data), POINT.itemsize - len(head))
            head, data = head + data[:take], data[take:]
            if len(head) < POINT.itemsize:
                partial[conn] = head
                return
            add(conn, np.frombuffer(head, POINT))
        whole = len(data) - len(data) % POINT.itemsize
        add(conn, np.frombuffer(data[:whole], POINT))  # zero copy
        if whole < len(data):
            partial[conn] = bytes(data[whole:])

    with ringest.Reader(channel, bus=bus, gated=True, start="oldest") as reader:
        for event in reader:  # stops when the producer ends the channel
            if isinstance(event, ringest.Restarted):
                partial.clear()  # new producer, new connections
                continue
            for packet in event.packets():
                consume(packet)
    for conn, (count, sums) in sorted(totals.items()):
        mean = sums / max(count, 1)
        print(f"connection {conn}: {count} points, mean " + " ".join(f"{v:.6f}" for v in mean))
    for conn, rest in partial.items():
        print(f"connection {conn}: {len(rest)} trailing bytes (not a whole point)")


if __name__ == "__main__":
    main(*sys.argv[1:])
