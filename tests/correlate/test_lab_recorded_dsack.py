"""A recorded lossy lab run (3 ms delay, 5% loss at node B's ingress, seed 7) where the delayer dropped,
on one keep-alive connection, a request segment and, 207 ms later, a pure ACK carrying a D-SACK block.

Trimmed to that connection (client2's port 40688 to server2) at the client pod, node B and server2's pod
NIC; the manifest keeps its requests and its two drops. The ACK is 64 bytes long (IPv4, TCP with
timestamps and one SACK block), as a data segment of 12 bytes with timestamps is, and its sequence
number is the first byte of the next request, which the client sent 14 ms later. Counted as a request
segment, it was a "drop" no retransmission could pin, which failed the lossy lab test in about one run
in five. The delayer now records each drop's TCP payload length; a manifest without it is read by the
time of the drop against the request's first byte at the drop site's upstream point.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hopscope.correlate import Correlator
from hopscope.correlate.capture import read_point
from hopscope.correlate.evaluate import evaluate
from hopscope.records import Batch

RUN = Path(__file__).parent / "data" / "lossy_dsack_ack"
#: the dropped request segment (86 bytes of GET) and the dropped D-SACK ACK, by IP id
DATA_ID, ACK_ID = 10304, 10305


@pytest.fixture(scope="module")
def recorded() -> tuple[dict[str, Any], Any, Batch]:
    manifest = json.loads((RUN / "manifest.json").read_text())
    got = [read_point(str(RUN / cp["file"]), cp["name"], cp["kind"], cp["host"]) for cp in manifest["capture_points"]]
    requests = Batch.concat([g.requests for g in got])
    return manifest, Correlator().stitch(requests, Batch.concat([g.flows for g in got])), requests


def _drops(manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    (imp,) = manifest["impairments"]
    return {d["ip_id"]: d for d in imp["delayer_stats"]["dropped_packets"]}


def test_the_ack_looks_like_a_small_data_segment(recorded: Any) -> None:
    manifest, _, requests = recorded
    drops = _drops(manifest)
    assert set(drops) == {DATA_ID, ACK_ID} and "payload_len" not in drops[ACK_ID]
    assert drops[ACK_ID]["ip_len"] == 64 and drops[DATA_ID]["ip_len"] == 138
    # the ACK points at the first byte of a request sent after it
    cols = requests.columns
    starts = {(p, int(s)): int(t)
              for p, s, t in zip(cols["point"], cols["req_tcp_seq"], cols["req_first_ns"], strict=True)}
    assert starts[("nodeB", drops[ACK_ID]["seq"])] > drops[ACK_ID]["time_ns"]


def test_only_the_request_segment_is_counted_and_it_is_pinned(recorded: Any) -> None:
    manifest, result, requests = recorded
    ev = evaluate(manifest, result, requests)
    assert ev.lossy_links == ["nodeB>server2-pod"] == ev.impaired_loss_links
    assert ev.dropped_request_segments == 1 and ev.dropped_pinned == 1


def test_payload_length_as_the_delayer_now_records_it(recorded: Any) -> None:
    manifest, result, requests = recorded
    manifest = copy.deepcopy(manifest)
    drops = _drops(manifest)
    drops[DATA_ID]["payload_len"], drops[ACK_ID]["payload_len"] = 86, 0
    ev = evaluate(manifest, result, requests)
    assert ev.dropped_request_segments == 1 and ev.dropped_pinned == 1
    drops[ACK_ID]["payload_len"] = 12  # were it data, it would be a segment of the next request, and unpinned
    ev = evaluate(manifest, result, requests)
    assert ev.dropped_request_segments == 2 and ev.dropped_pinned == 1
