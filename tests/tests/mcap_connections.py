#!/usr/bin/env python3
"""Reads an MCAP file of `ringest log` with the `mcap` package (an
independent reader) and prints, as JSON, each TCP connection's bytes by its
`peer` metadata: {peer: {"bytes", "sha256", "messages", "channels"}}.

A connection may span several MCAP channels of the same topic (the logger
opens a new one when the channel it reads restarts, e.g. after the
importing bridge restarted): their messages are joined in file order.
"""

import hashlib
import json
import sys

from mcap.reader import make_reader


def main():
    peers = {}
    with open(sys.argv[1], "rb") as f:
        for _schema, channel, message in make_reader(f, validate_crcs=True).iter_messages(log_time_order=False):
            if channel.message_encoding != "application/octet-stream":
                continue
            peer = channel.metadata.get("peer", channel.topic)
            entry = peers.setdefault(peer, {"hash": hashlib.sha256(), "bytes": 0, "messages": 0, "channels": set()})
            entry["hash"].update(message.data)
            entry["bytes"] += len(message.data)
            entry["messages"] += 1
            entry["channels"].add(channel.id)
    json.dump(
        {
            peer: {
                "bytes": e["bytes"],
                "sha256": e["hash"].hexdigest(),
                "messages": e["messages"],
                "channels": len(e["channels"]),
            }
            for peer, e in peers.items()
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
