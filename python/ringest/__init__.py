"""ringest: zero-copy Python readers of ringest's shared-memory channels.

A ``Reader`` reads one channel of a bus (gated: lossless, or lossy), and
hands out ``Sample`` objects whose ``payload`` is a read-only memoryview of
the record (in the shared mapping itself for gated readers). Records of the
engine (engine/RECORDS.md) decode with ``Sample.packets()`` (TCP),
``Sample.datagrams()`` (UDP) and ``Sample.decode()`` (every kind);
``publish_egress`` sends bytes to a TCP stage's connections or a datagram
through a UDP stage; ``list_channels`` shows a bus.

The protocol code is shm-bus's and the engine's own (Rust, through PyO3):
nothing here reimplements it.
"""

from ringest._ringest import (
    KIND_CONNECTION_EVENT,
    KIND_DATAGRAM_EGRESS,
    KIND_DATAGRAM_GROUP,
    KIND_EGRESS,
    KIND_EGRESS_OUTCOME,
    KIND_PACKET_GROUP,
    KIND_SOCKET_STATS,
    KIND_UDP_SOCKET_STATS,
    Datagram,
    Ended,
    Packet,
    Reader,
    Restarted,
    RingestError,
    Sample,
    decode_connection_event,
    decode_datagram_group,
    decode_socket_stats,
    decode_udp_socket_stats,
    list_channels,
    publish_egress,
)

__all__ = [
    "KIND_CONNECTION_EVENT",
    "KIND_DATAGRAM_EGRESS",
    "KIND_DATAGRAM_GROUP",
    "KIND_EGRESS",
    "KIND_EGRESS_OUTCOME",
    "KIND_PACKET_GROUP",
    "KIND_SOCKET_STATS",
    "KIND_UDP_SOCKET_STATS",
    "Datagram",
    "Ended",
    "Packet",
    "Reader",
    "Restarted",
    "RingestError",
    "Sample",
    "decode_connection_event",
    "decode_datagram_group",
    "decode_socket_stats",
    "decode_udp_socket_stats",
    "list_channels",
    "publish_egress",
]
