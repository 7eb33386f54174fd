#!/usr/bin/env python3
"""Independent Kafka consumer for the tests (confluent-kafka, not the agent's code).

Reads a topic from the beginning until `count` messages arrived or `timeout` seconds
passed without a new one, and writes one JSON line per message: partition, offset,
key, headers, timestamp and the value in hex.
Usage: kafka_consume.py <bootstrap> <topic> <count> <idle-timeout-s> <out-file>"""
import json, sys, time, uuid
from confluent_kafka import Consumer, KafkaError

bootstrap, topic, count, idle, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-" + uuid.uuid4().hex,
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
got, last = [], time.time()
while len(got) < count and time.time() - last < idle:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        if m.error().code() != KafkaError._PARTITION_EOF:
            print("consumer error:", m.error(), file=sys.stderr)
        continue
    last = time.time()
    got.append({"partition": m.partition(), "offset": m.offset(),
                "key": (m.key() or b"").decode(), "timestamp": m.timestamp()[1],
                "headers": {k: (v or b"").decode() for k, v in (m.headers() or [])},
                "value": m.value().hex()})
c.close()
with open(out, "w") as f:
    for g in got:
        f.write(json.dumps(g) + "\n")
print(len(got))
