"""Every request the lab sent (samples/lab/manifest.json) is found at its client pod's capture point.

The captures are real (the lab's namespaces, kube-proxy NAT, envoy); the records come from the whole
probe path: reader -> decoder -> meter -> BlockFeeder -> L7Tracker.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hopscope.probes.analyze import iter_capture
from hopscope.probes.l7 import CapturePoint, L7Tracker
from hopscope.probes.l7.feed import BlockFeeder
from hopscope.records import RequestRecord

LAB = Path(__file__).resolve().parents[3] / "samples" / "lab"
MANIFEST = LAB / "manifest.json"


def _manifest() -> dict[str, Any]:
    if not MANIFEST.exists():
        pytest.skip(f"no lab samples: {MANIFEST} is absent (make them with 'hopscope lab samples')")
    data: dict[str, Any] = json.loads(MANIFEST.read_text())
    return data


def _client_points() -> list[str]:
    if not MANIFEST.exists():
        return ["client-pod (samples absent)"]
    points = json.loads(MANIFEST.read_text())["capture_points"]
    return [p["name"] for p in points if p["kind"] == "pod" and p["side"] == "client"]


def _records(point: dict[str, Any]) -> list[RequestRecord]:
    path = LAB / point["file"]
    if not path.exists():
        pytest.skip(f"capture {path} listed in the manifest is absent")
    tracker = L7Tracker(CapturePoint(point["name"], point["host"], point["interface"], point["kind"]))
    feeder = BlockFeeder(tracker)
    for block, _ in iter_capture(path):
        feeder.feed(block)
    tracker.flush()
    return tracker.take_records()


@pytest.mark.parametrize("point_name", _client_points())
def test_every_manifest_request_is_seen_at_the_client_pod(point_name: str) -> None:
    manifest = _manifest()
    point = next(p for p in manifest["capture_points"] if p["name"] == point_name)
    records = _records(point)
    http = [r for r in records if r.l7_proto == "http"]
    sent = [r for r in manifest["requests"] if r["client"] == point["host"] and r["type"] == "http"]
    answered = [r for r in sent if r["status"] is not None]
    expected = Counter((r["local"], r["method"], r["path"], r["status"]) for r in answered)
    seen = Counter((f"{r.orig_h}:{r.orig_p}", r.method, r.path, r.status) for r in http)
    assert expected - seen == Counter(), f"requests of the manifest not found at {point_name}"
    assert sum(seen.values()) == len(answered)
    ids = {r["request_id"] for r in answered if r["sent_request_id"]}
    assert ids <= {r.x_request_id for r in http}
    assert all(r.syn_seq and r.req_tcp_seq and r.resp_tcp_seq and r.resp_first_ns > r.req_first_ns for r in http)


@pytest.mark.parametrize("point_name", _client_points())
def test_every_manifest_dns_query_is_seen_at_the_client_pod(point_name: str) -> None:
    manifest = _manifest()
    point = next(p for p in manifest["capture_points"] if p["name"] == point_name)
    dns = {r.dns_id: r for r in _records(point) if r.l7_proto == "dns"}
    sent = [q for q in manifest.get("dns", []) if q["client"] == point["host"]]
    for query in sent:
        rec = dns.get(query["txid"])
        assert rec is not None, f"DNS query {query['txid']} ({query['name']}) not found"
        assert (rec.dns_qname, rec.dns_rcode) == (query["name"], query["rcode"])
        assert rec.dns_answers.split(",") if rec.dns_answers else query["answers"] == []
