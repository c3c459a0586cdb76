"""Type hints of the ringest package (the native module ringest._ringest)."""

from os import PathLike
from types import TracebackType
from typing import Any, Iterator, Literal, final

KIND_PACKET_GROUP: int
KIND_CONNECTION_EVENT: int
KIND_SOCKET_STATS: int
KIND_EGRESS: int
KIND_EGRESS_OUTCOME: int
KIND_DATAGRAM_GROUP: int
KIND_UDP_SOCKET_STATS: int
KIND_DATAGRAM_EGRESS: int

_Bus = str | PathLike[str] | None

class RingestError(Exception):
    """An error of the bus (attach, receive) or of a record's decoding."""

@final
class Packet:
    """One packet of a packet group: the bytes of one receive."""

    connection_id: int
    peer: tuple[str, int]
    rx_realtime_ns: int
    rx_monotonic_ns: int
    data: memoryview
    """Read-only, within the sample's payload; valid while the sample is held."""

@final
class Datagram:
    """One datagram of a datagram group (a UDP stage's packet_group): one
    whole message of its sender."""

    source: tuple[str, int]
    destination: tuple[str, int] | None
    """The address it was sent to (the host's, or the multicast group); None if the kernel did not say."""
    rx_realtime_ns: int
    rx_monotonic_ns: int
    kernel_rx_ns: int | None
    """The kernel's (or, with hardware_time, the card's) receive time; None without a kernel timestamp."""
    hardware_time: bool
    truncated: bool
    """Longer than the stage's max_datagram_size_b: data holds its first bytes only."""
    control_truncated: bool
    original_len: int
    flags: int
    data: memoryview
    """Read-only, within the sample's payload; valid while the sample is held."""

@final
class Restarted:
    """A new producer replaced the channel; its records follow from its oldest."""

    generation: int

@final
class Ended:
    """The producer ended the channel and every record was read."""

@final
class Sample:
    """One record, held by its reader until release(), the end of a `with`
    block, deletion, or the reader's next recv. Its memoryviews raise
    ValueError once released; numpy arrays over them keep it held (releasing
    then raises BufferError)."""

    @property
    def payload(self) -> memoryview: ...
    @property
    def held(self) -> bool: ...
    @property
    def kind(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def shard(self) -> int: ...
    @property
    def lost_before(self) -> int: ...
    def copy(self) -> bytes: ...
    def release(self) -> None: ...
    def packets(self) -> list[Packet]: ...
    def datagrams(self) -> list[Datagram]: ...
    def decode(self) -> list[Packet] | list[Datagram] | dict[str, Any]: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __enter__(self) -> Sample: ...
    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None, /
    ) -> bool: ...

@final
class Reader:
    """A reader of one channel: gated (lossless) or lossy; one held sample at a time."""

    def __init__(
        self,
        channel: str,
        bus: _Bus = None,
        gated: bool = False,
        start: Literal["next", "latest", "oldest"] = "next",
    ) -> None: ...
    def recv(self, timeout: float | None = None) -> Sample | Restarted | Ended | None: ...
    def __iter__(self) -> Iterator[Sample | Restarted]: ...
    def __next__(self) -> Sample | Restarted: ...
    def close(self) -> None: ...
    def __enter__(self) -> Reader: ...
    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None, /
    ) -> bool: ...
    @property
    def channel(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def stats(self) -> dict[str, int]: ...
    @property
    def gated(self) -> bool | None: ...
    @property
    def generation(self) -> int | None: ...

def list_channels(bus: _Bus = None) -> list[dict[str, Any]]: ...
def publish_egress(
    stage: str,
    data: bytes | bytearray | memoryview,
    connection: int | None = None,
    bus: _Bus = None,
    timeout: float = 30.0,
    *,
    destination: tuple[str, int] | str | None = None,
) -> list[dict[str, Any]]: ...
def decode_connection_event(data: bytes) -> dict[str, Any]: ...
def decode_socket_stats(data: bytes) -> dict[str, Any]: ...
def decode_udp_socket_stats(data: bytes) -> dict[str, Any]: ...
def decode_datagram_group(data: bytes | bytearray | memoryview) -> list[Datagram]: ...
