#!/usr/bin/env python3
"""Summarizes an MCAP file with the `mcap` package (pip install mcap): an
independent reader for the tests of `ringest log`.

    mcap_summary.py FILE            # a complete file, through its summary section
    mcap_summary.py FILE --stream   # front to back, tolerating a truncated end

Prints one JSON object:
    {"indexed": bool, "chunks": int or null, "error": str or null,
     "topics": {topic: {"count", "bytes", "sha256", "metadata",
                        "message_encoding", "schema_name", "schema_encoding",
                        "log_time_sorted", "json": [decoded messages] or null,
                        "channels": int}},
     "channels": [{"topic", "count", "bytes", "sha256", "metadata", ...}]}
Each topic's messages are taken in file order, over all its channels (a UDP
source's topic has a channel per destination); a topic's metadata is its
first channel's. "channels" reports each channel on its own.
"""

import hashlib
import json
import sys

from mcap.reader import NonSeekingReader, make_reader


class Topic:
    def __init__(self, schema, channel):
        self.channel = channel
        self.schema = schema
        self.count = 0
        self.bytes = 0
        self.sha256 = hashlib.sha256()
        self.last_log_time = 0
        self.log_time_sorted = True
        self.json = [] if channel.message_encoding == "json" else None

    def add(self, message):
        self.count += 1
        self.bytes += len(message.data)
        self.sha256.update(message.data)
        self.log_time_sorted &= message.log_time >= self.last_log_time
        self.last_log_time = message.log_time
        if self.json is not None:
            self.json.append(json.loads(message.data))

    def report(self):
        return {
            "count": self.count,
            "bytes": self.bytes,
            "sha256": self.sha256.hexdigest(),
            "metadata": dict(self.channel.metadata),
            "message_encoding": self.channel.message_encoding,
            "schema_name": self.schema.name if self.schema else None,
            "schema_encoding": self.schema.encoding if self.schema else None,
            "schema": json.loads(self.schema.data) if self.schema and self.schema.encoding == "jsonschema" else None,
            "log_time_sorted": self.log_time_sorted,
            "json": self.json,
        }


def main():
    path = sys.argv[1]
    stream = "--stream" in sys.argv[2:]
    topics = {}
    channels = {}
    result = {"indexed": False, "chunks": None, "error": None}
    with open(path, "rb") as f:
        try:
            if stream:
                # Reads records front to back, never seeking to the summary.
                reader = NonSeekingReader(f, validate_crcs=True)
                messages = reader.iter_messages(log_time_order=False)
            else:
                reader = make_reader(f, validate_crcs=True)
                summary = reader.get_summary()
                if summary is not None:
                    result["indexed"] = len(summary.chunk_indexes) > 0
                    result["chunks"] = len(summary.chunk_indexes)
                messages = reader.iter_messages(log_time_order=False)
            for schema, channel, message in messages:
                for key, table in ((channel.topic, topics), (channel.id, channels)):
                    entry = table.get(key)
                    if entry is None:
                        entry = table[key] = Topic(schema, channel)
                    entry.add(message)
        except Exception as e:  # the tests look at what was read before the damage
            result["error"] = f"{type(e).__name__}: {e}"
    result["topics"] = {}
    for topic, entry in topics.items():
        report = result["topics"][topic] = entry.report()
        report["channels"] = sum(1 for c in channels.values() if c.channel.topic == topic)
    result["channels"] = [dict(c.report(), topic=c.channel.topic) for c in channels.values()]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
