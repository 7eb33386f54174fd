#!/usr/bin/env python3
"""Reads a HAR file with haralyzer (an independent HAR reader) and checks every field
HAR 1.2 requires (http://www.softwareishard.com/blog/har-12-spec/), then prints a JSON
summary of the entries as haralyzer reads them.

Usage: check_har.py <file.har>
"""
import datetime, json, sys
from haralyzer import HarParser, HarEntry

with open(sys.argv[1], encoding="utf-8") as f:
    raw = json.load(f)
parser = HarParser(raw)
log = parser.har_data
assert log["version"] == "1.2", log["version"]
assert isinstance(log["creator"]["name"], str) and isinstance(log["creator"]["version"], str)


def need(obj, fields, where):
    for name, kind in fields:
        assert name in obj, f"{where} lacks {name}: {obj}"
        assert isinstance(obj[name], kind), f"{where}.{name} is {type(obj[name])}, not {kind}"


def name_values(items, where):
    assert isinstance(items, list), where
    for item in items:
        need(item, [("name", str), ("value", str)], where)


summary = []
for i, e in enumerate(log["entries"]):
    where = f"entries[{i}]"
    need(e, [("startedDateTime", str), ("time", (int, float)), ("request", dict), ("response", dict), ("cache", dict), ("timings", dict)], where)
    datetime.datetime.fromisoformat(e["startedDateTime"].replace("Z", "+00:00"))
    req, resp, t = e["request"], e["response"], e["timings"]
    need(req, [("method", str), ("url", str), ("httpVersion", str), ("cookies", list), ("headers", list), ("queryString", list), ("headersSize", int), ("bodySize", int)], where + ".request")
    for key in ["cookies", "headers", "queryString"]:
        name_values(req[key], f"{where}.request.{key}")
    if "postData" in req:
        need(req["postData"], [("mimeType", str), ("text", str)], where + ".request.postData")
    need(resp, [("status", int), ("statusText", str), ("httpVersion", str), ("cookies", list), ("headers", list), ("content", dict), ("redirectURL", str), ("headersSize", int), ("bodySize", int)], where + ".response")
    for key in ["cookies", "headers"]:
        name_values(resp[key], f"{where}.response.{key}")
    need(resp["content"], [("size", int), ("mimeType", str)], where + ".response.content")
    need(t, [("send", (int, float)), ("wait", (int, float)), ("receive", (int, float))], where + ".timings")
    assert min(t["send"], t["wait"], t["receive"]) >= 0, t
    timed = sum(v for k, v in t.items() if k in ("blocked", "dns", "connect", "send", "wait", "receive") and v >= 0)
    assert abs(timed - e["time"]) < 0.001, (timed, e["time"])
    entry = HarEntry(e)
    summary.append({
        "method": entry.request.method,
        "url": entry.request.url,
        "query": entry.request.queryString,
        "post": entry.request.text,
        "status": entry.response.status,
        "mime": entry.response.mimeType,
        "text": entry.response.text if "text" in resp["content"] else None,
        "encoding": entry.response.textEncoding,
        "start": entry.startTime.isoformat(),
        "wait": entry.timings["wait"],
        "server": e.get("serverIPAddress"),
        "id": e["_captureId"],
        "comment": resp.get("comment"),
    })
print(json.dumps(summary))
