"""Writes every message of a Kafka topic to stdout as `.gor` records (`cargo xtask bench`).

The topic was written by one agent run that has exited, so its high watermarks are
final: read each partition from offset 0 up to them, then stop. The value of a
message is a record without the file separator; adding it gives the file format,
so the bench counts Kafka and file captures with the same reader.
Usage: kafka_dump.py <bootstrap> <topic>"""
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

SEPARATOR = "\n\U0001f435\U0001f648\U0001f649\n".encode()

bootstrap, topic = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "capture-bench-" + uuid.uuid4().hex,
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
left = {p for p, end in ends.items() if end > 0}
c.assign([TopicPartition(topic, p, 0) for p in left])
out = sys.stdout.buffer
last = time.monotonic()
while left:
    # consume() waits for the whole batch or the timeout: keep the timeout short.
    messages = c.consume(1000, timeout=0.2)
    if not messages:
        if time.monotonic() - last > 30:
            sys.exit(f"kafka_dump: no message for 30 s with partitions {sorted(left)} unread up to {ends}")
        continue
    last = time.monotonic()
    for m in messages:
        if m.error():
            sys.exit(f"kafka_dump: {m.error()}")
        out.write(m.value())
        out.write(SEPARATOR)
        if m.offset() + 1 >= ends[m.partition()]:
            left.discard(m.partition())
c.close()
out.flush()
