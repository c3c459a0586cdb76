"""Benchmark of the ringest Python package (issue 18): a Python consumer
summing the bytes of every packet through the package, against the Rust
consumer (python/examples/sum_bytes.rs) in the same run, and against a
Python program reading the same TCP stream directly from its socket.

    cargo build --release -p ringest && cargo build --release -p ringest-python --example sum_bytes
    pip install ./python numpy
    python python/bench/sum_bytes.py --size 65536 --seconds 5
    python python/bench/sum_bytes.py --size 1024 --seconds 5

Prints one JSON line per consumer: bytes, seconds, GB/s, and the byte sum
(the same for both ringest consumers: both saw every byte).
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"


def python_consumer(channel, bus):
    import ringest

    total = count = 0
    first = None

    def add(packet):  # a function: the array is gone before the next recv
        return int(np.frombuffer(packet.data, np.uint8).sum(dtype=np.uint64)), len(packet.data)

    with ringest.Reader(channel, bus=bus, gated=True) as reader:
        print("attached", flush=True)
        for event in reader:
            if not isinstance(event, ringest.Sample):
                continue
            first = first or time.monotonic()
            for packet in event.packets():
                s, n = add(packet)
                total += s
                count += n
    seconds = time.monotonic() - first if first else 0.0
    print(json.dumps({"bytes": count, "seconds": seconds, "sum": total}), flush=True)


def direct_socket(size, seconds):
    """Loadgen straight into a Python socket reader: what a Python user
    would write without ringest."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    result = {}

    def serve():
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total = count = 0
        first = None
        while n := conn.recv_into(view):
            first = first or time.monotonic()
            total += int(np.frombuffer(view[:n], np.uint8).sum(dtype=np.uint64))
            count += n
        result.update(bytes=count, seconds=time.monotonic() - first, sum=total)

    thread = threading.Thread(target=serve)
    thread.start()
    loadgen(f"127.0.0.1:{port}", size, seconds, tempfile.gettempdir())
    thread.join()
    return result


def loadgen(addr, size, seconds, bus):
    subprocess.run(
        [RELEASE / "ringest", "loadgen", "--bus", bus, "--connections", "1", "--size", str(size),
         "--seconds", str(seconds), addr],
        check=True, stdout=subprocess.DEVNULL,
    )


def report(name, size, r):
    gbps = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] else 0.0
    print(json.dumps({"consumer": name, "size": size, **r, "GB/s": round(gbps, 3)}), flush=True)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--consume":
        return python_consumer(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringest-bench", dir="/dev/shm") as bus:
        config = pathlib.Path(bus) / "bench.toml"
        config.write_text('[[tcp_server]]\nname = "bench"\naddress = "127.0.0.1:0"\n')
        daemon = subprocess.Popen([RELEASE / "ringest", "run", "--bus", bus, "--config", config],
                                  stdout=subprocess.PIPE, text=True)
        addr = None
        for line in daemon.stdout:
            if ": listening on " in line:
                addr = line.split(": listening on ")[1].strip()
            if line.startswith("running"):
                break
        channel = "bench/packet_group"
        consumers = {
            "python (ringest)": subprocess.Popen([sys.executable, __file__, "--consume", channel, bus],
                                                 stdout=subprocess.PIPE, text=True),
            "rust (shm-bus)": subprocess.Popen([RELEASE / "examples" / "sum_bytes", channel, bus],
                                               stdout=subprocess.PIPE, text=True),
        }
        for proc in consumers.values():
            assert proc.stdout.readline() == "attached\n"
        loadgen(addr, args.size, args.seconds, bus)
        daemon.terminate()
        daemon.wait()
        for name, proc in consumers.items():
            report(name, args.size, json.loads(proc.stdout.read()))
            proc.wait()
    report("python (direct socket)", args.size, direct_socket(args.size, args.seconds))


if __name__ == "__main__":
    main()
