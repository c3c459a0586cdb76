"""Decodes Velodyne VLP-16 data packets (1206-byte UDP datagrams) received
by a ringest UDP stage into numpy arrays of points, straight from the shared
mapping.

    python velodyne_points.py lidar/packet_group [BUS]

Reads the channel losslessly (gated) from its oldest record until the
producer ends it, then prints per sensor (source address) the packets, the
points (returns with a distance) and their mean x, y, z in metres.
Datagrams of another size, or truncated ones, are counted and skipped.

A VLP-16 packet: 12 firing blocks of 100 bytes (flag 0xFFEE, azimuth in
hundredths of a degree, then 32 returns of a 2 mm distance and a
reflectivity: two firings of the 16 lasers), a 4-byte timestamp and 2
factory bytes. The second firing's azimuth is taken as the block's (a real
driver interpolates it).
"""

import sys

import numpy as np

import ringest

RETURN = np.dtype([("distance", "<u2"), ("reflectivity", "u1")])
BLOCK = np.dtype([("flag", "<u2"), ("azimuth", "<u2"), ("returns", RETURN, (32,))])
PACKET = np.dtype([("blocks", BLOCK, (12,)), ("timestamp", "<u4"), ("factory", "u1", (2,))])
assert PACKET.itemsize == 1206

# Elevation of lasers 0..15 (degrees), as the VLP-16 manual lists them.
ELEVATION = np.radians([-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15] * 2)


def points(data):
    """The points of one packet: an (n, 4) float32 array of x, y, z (m) and
    reflectivity, for the returns that have a distance."""
    packet = np.frombuffer(data, PACKET)[0]  # a view of the datagram: no copy
    blocks = packet["blocks"]
    distance = blocks["returns"]["distance"] * 0.002  # (12, 32) metres
    azimuth = np.radians(blocks["azimuth"] / 100.0)[:, None]  # (12, 1)
    horizontal = distance * np.cos(ELEVATION)
    xyz = np.stack(
        [horizontal * np.sin(azimuth), horizontal * np.cos(azimuth), distance * np.sin(ELEVATION)], axis=-1
    )
    hit = distance > 0
    out = np.empty((int(hit.sum()), 4), np.float32)
    out[:, :3] = xyz[hit]
    out[:, 3] = blocks["returns"]["reflectivity"][hit]
    return out


def main(channel, bus=None):
    sensors = {}  # source -> [packets, points, sum of x, y, z]
    skipped = 0
    with ringest.Reader(channel, bus=bus, gated=True, start="oldest") as reader:
        for event in reader:  # stops when the producer ends the channel
            if isinstance(event, ringest.Restarted):
                continue
            for datagram in event.datagrams():
                if datagram.truncated or len(datagram.data) != PACKET.itemsize:
                    skipped += 1
                    continue
                cloud = points(datagram.data)  # no view of the sample outlives this loop
                sensor = sensors.setdefault(datagram.source, [0, 0, np.zeros(3)])
                sensor[0] += 1
                sensor[1] += len(cloud)
                sensor[2] += cloud[:, :3].sum(axis=0, dtype=np.float64)
    for (host, port), (packets, count, sums) in sorted(sensors.items()):
        mean = sums / max(count, 1)
        print(f"{host}:{port}: {packets} packets, {count} points, mean " + " ".join(f"{v:.4f}" for v in mean))
    print(f"skipped {skipped} datagrams")


if __name__ == "__main__":
    main(*sys.argv[1:])
