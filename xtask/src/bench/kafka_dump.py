"""Writes every message of a Kafka topic to stdout as `.gor` records (`cargo xtask bench`).

The topic was written by one agent run that has exited and said how many records the
broker acknowledged: read every partition from offset 0 until that many records
arrived, or until none arrived for 3 s (then the bench shows the shortfall). High
watermarks are not used: tansu 0.6 reports them behind the last offset.
A `records`-format value is a record without the file separator: adding it gives the
file format. A `batch`-format value (header capture-format: batch-1) is already whole
records in the file format: written as it is. So the bench counts Kafka and file
captures with the same reader.
Usage: kafka_dump.py <bootstrap> <topic> <expected records>"""
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

SEPARATOR = "\n\U0001f435\U0001f648\U0001f649\n".encode()


def batch_records(value):
    """Records in a batch value: each header line's len= says where the next starts."""
    n, pos = 0, 0
    while pos < len(value):
        nl = value.index(b"\n", pos)
        size = next(int(t[4:]) for t in value[pos:nl].split(b" ") if t.startswith(b"len="))
        pos = nl + 1 + size + len(SEPARATOR)
        n += 1
    return n


IDLE_S = 3

bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "capture-bench-" + uuid.uuid4().hex,
              "enable.auto.commit": False, "auto.offset.reset": "earliest",
              # Large fetches: a 64 KiB run is gigabytes (the default is 1 MB per partition).
              "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 32 << 20})
partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
c.assign([TopicPartition(topic, p, 0) for p in partitions])
out = sys.stdout.buffer
got, last = 0, time.monotonic()
while got < expected and time.monotonic() - last < IDLE_S:
    # consume() waits for the whole batch or the timeout: keep the timeout short.
    messages = c.consume(1000, timeout=0.2)
    if messages:
        last = time.monotonic()
    for m in messages:
        if m.error():
            sys.exit(f"kafka_dump: {m.error()}")
        if ("capture-format", b"batch-1") in (m.headers() or []):
            out.write(m.value())
            got += batch_records(m.value())
        else:
            out.write(m.value())
            out.write(SEPARATOR)
            got += 1
c.close()
out.flush()
