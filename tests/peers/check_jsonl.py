#!/usr/bin/env python3
"""Reads a JSON lines file line by line with Python's json module (an independent
parser); every line must be one JSON object with the fields a log pipeline keys on.
Prints the objects as one JSON array.

Usage: check_jsonl.py <file.jsonl>
"""
import json, sys

out = []
with open(sys.argv[1], encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        assert line.endswith("\n"), f"line {n} is not terminated"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"line {n}: {obj!r}"
        for key in ["time", "id", "outcome"]:
            assert key in obj, f"line {n} lacks {key}: {obj}"
        assert obj["outcome"] in ("equal", "different", "partial", "not_compared", "error", "skipped"), obj
        out.append(obj)
print(json.dumps(out))
