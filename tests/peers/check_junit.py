#!/usr/bin/env python3
"""Reads a JUnit XML report with Python's xml.etree (an independent parser), checks the
attributes the JUnit schema requires and that the counts agree with the test cases,
and prints a JSON summary: {"suite": {...}, "cases": {name: {"status": ..., "type": ...,
"message": ..., "out": ...}}}.

Usage: check_junit.py <report.xml>
"""
import json, re, sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
suites = root.findall("testsuite")
assert len(suites) == 1, suites
suite = suites[0]
# The Ant/Jenkins JUnit schema: testsuite needs name, tests, failures, errors, time,
# timestamp (ISO 8601 without a time zone), hostname, and in <testsuites> id and package.
for attr in ["name", "tests", "failures", "errors", "time", "timestamp", "hostname", "id", "package"]:
    assert attr in suite.attrib, f"testsuite lacks {attr}: {suite.attrib}"
assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.attrib["timestamp"]), suite.attrib["timestamp"]
float(suite.attrib["time"])
cases = {}
counts = {"failure": 0, "error": 0, "skipped": 0}
for case in suite.findall("testcase"):
    for attr in ["name", "classname", "time"]:
        assert attr in case.attrib, f"testcase lacks {attr}: {case.attrib}"
    float(case.attrib["time"])
    problems = [c for c in case if c.tag in ("failure", "error", "skipped")]
    assert len(problems) <= 1, f"{case.attrib['name']}: {problems}"
    entry = {"status": "passed"}
    for p in problems:
        counts[p.tag] += 1
        if p.tag in ("failure", "error"):
            assert "type" in p.attrib, f"{p.tag} lacks type"
        entry = {"status": p.tag, "type": p.attrib.get("type"), "message": p.attrib.get("message"), "text": p.text or ""}
    out = case.find("system-out")
    entry["out"] = out.text if out is not None and out.text else ""
    cases[case.attrib["name"]] = entry
assert int(suite.attrib["tests"]) == len(cases), (suite.attrib, len(cases))
assert int(suite.attrib["failures"]) == counts["failure"], (suite.attrib, counts)
assert int(suite.attrib["errors"]) == counts["error"], (suite.attrib, counts)
assert int(suite.attrib.get("skipped", "0")) == counts["skipped"], (suite.attrib, counts)
for attr in ["tests", "failures", "errors"]:
    assert root.attrib[attr] == suite.attrib[attr], attr
print(json.dumps({"suite": dict(suite.attrib), "cases": cases}))
