"""Fixtures of the ringest package's tests: a private bus directory per test
and a real `ringest run` daemon (the workspace's `target/debug/ringest`, or
`$RINGEST_BIN`) with TCP server stages on OS-chosen ports."""

import os
import pathlib
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

for _module, _install in (("ringest", "pip install ./python"), ("numpy", "pip install numpy")):
    try:
        __import__(_module)
    except ImportError as _error:
        pytest.exit(f"Python package {_module} missing ({_error}): run scripts/test (or {_install})", returncode=1)

import ringest  # noqa: E402 (after the check above)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 30.0


def ringest_bin():
    path = pathlib.Path(os.environ.get("RINGEST_BIN", ROOT / "target" / "debug" / "ringest"))
    if not path.is_file():
        pytest.fail(f"{path} missing: build it with `cargo build -p ringest` (scripts/test does)")
    return str(path)


@pytest.fixture
def bus():
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="ringest-pytest", dir=root)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """`ringest run` with one TCP server stage per name in `stages`, and
    one UDP stage per name in `udp` (a dict: name -> extra keys of its
    table)."""

    def __init__(self, bus, stages, ring_size_b=4 << 20, executors=None, udp=None):
        config = "".join(
            f'[[tcp_server]]\nname = "{s}"\naddress = "127.0.0.1:0"\nring_size_b = {ring_size_b}\n'
            for s in stages
        )
        config += "".join(
            f'[[udp]]\nname = "{s}"\naddress = "127.0.0.1:0"\nring_size_b = {ring_size_b}\n{extra}\n'
            for s, extra in (udp or {}).items()
        )
        self.bus = bus
        self.config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        self.config.write(config)
        self.config.close()
        env = dict(os.environ, RINGEST_BUS=bus)
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(
            [ringest_bin(), "run", "--bus", bus, "--config", self.config.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.listening = {}
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("ringest run did not say 'running'") from None
            if line is None:
                raise AssertionError(f"ringest run exited: {self.proc.wait()}")
            if line.startswith("stage ") and ": listening on " in line:
                stage, address = line[len("stage ") :].split(": listening on ")
                host, port = address.rsplit(":", 1)
                self.listening[stage] = (host, int(port))
            if line.startswith("running"):
                break

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def addr(self, stage):
        return self.listening[stage]

    def udp_addr(self, stage):
        """Where UDP stage `stage` receives: its sockets' address, as its
        statistics say (port 0 resolved)."""
        with ringest.Reader(f"{stage}/socket_stats", bus=self.bus, start="latest") as stats:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                event = stats.recv(timeout=1.0)
                if isinstance(event, ringest.Sample):
                    assert event.kind == ringest.KIND_UDP_SOCKET_STATS, f"{stage} is not a UDP stage"
                    sockets = event.decode()["sockets"]
                    if sockets:
                        return sockets[0]["local"]
        raise AssertionError(f"UDP stage {stage} published no statistics")

    def stop(self):
        """SIGTERM, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=DEADLINE)
        os.unlink(self.config.name)
        return status

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def daemons():
    """Starts daemons (`daemons(bus, [stages])`) and stops them at the end."""
    started = []

    def start(bus, stages, **kwargs):
        daemon = Daemon(bus, stages, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def wait_until_disconnected(events):
    """Waits for a ``disconnected`` event on ``events``, a reader of the
    stage's ``connection_events`` opened before the connection: by then the
    stage has received every byte the peer sent before closing."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        event = events.recv(timeout=1.0)
        if (
            isinstance(event, ringest.Sample)
            and event.kind == ringest.KIND_CONNECTION_EVENT
            and event.decode()["event"] == "disconnected"
        ):
            return
    raise AssertionError("the stage saw no connection end")


def wait_until_stalled(bus, stage):
    """Waits until the stage's statistics count a backpressure stall: its
    ``packet_group`` ring was full and receiving paused (a gated reader
    holds the writer back)."""
    with ringest.Reader(f"{stage}/socket_stats", bus=bus, start="oldest") as stats:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            event = stats.recv(timeout=1.0)
            if (
                isinstance(event, ringest.Sample)
                and event.kind == ringest.KIND_SOCKET_STATS
                and event.decode()["stage"]["backpressure_stalls"] > 0
            ):
                return
    raise AssertionError(f"stage {stage} never paused receiving")
