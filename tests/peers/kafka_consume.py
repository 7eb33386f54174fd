#!/usr/bin/env python3
"""Independent Kafka consumer for the tests (confluent-kafka, not the agent's code).

Reads a topic from the beginning until messages holding `count` records arrived or
`timeout` seconds passed without a new one, and writes one JSON line per message:
partition, offset, key, headers, timestamp and the value in hex. A batch-format value
(header capture-format: batch-1) holds whole `.gor` records: each header line's len=
says where the next record starts. Any other value is one record.
Usage: kafka_consume.py <bootstrap> <topic> <count> <idle-timeout-s> <out-file>"""
import json, sys, time, uuid
from confluent_kafka import Consumer, KafkaError

SEPARATOR = "\n\U0001f435\U0001f648\U0001f649\n".encode()


def records_in(m):
    if ("capture-format", b"batch-1") not in (m.headers() or []):
        return 1
    value, n, pos = m.value(), 0, 0
    while pos < len(value):
        nl = value.index(b"\n", pos)
        size = next(int(t[4:]) for t in value[pos:nl].split(b" ") if t.startswith(b"len="))
        pos = nl + 1 + size + len(SEPARATOR)
        n += 1
    return n


bootstrap, topic, count, idle, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-" + uuid.uuid4().hex,
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
got, records, last = [], 0, time.time()
while records < count and time.time() - last < idle:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        if m.error().code() != KafkaError._PARTITION_EOF:
            print("consumer error:", m.error(), file=sys.stderr)
        continue
    last = time.time()
    records += records_in(m)
    got.append({"partition": m.partition(), "offset": m.offset(),
                "key": (m.key() or b"").decode(), "timestamp": m.timestamp()[1],
                "headers": {k: (v or b"").decode() for k, v in (m.headers() or [])},
                "value": m.value().hex()})
c.close()
with open(out, "w") as f:
    for g in got:
        f.write(json.dumps(g) + "\n")
print(len(got))
