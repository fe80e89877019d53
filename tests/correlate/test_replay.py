"""``hopscope replay`` into Kafka, then ``hopscope correlate``, stores what ``hopscope analyze`` stores from
the same captures; a broker that is down, or refuses messages, ends replay with one error line and
claims nothing it did not deliver."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from hopscope.store import store_from_url
from tests.conftest import topic_prefix

LAB = Path(__file__).resolve().parents[2] / "samples" / "lab"
MANIFEST = LAB / "manifest.json"
HOPSCOPE = [sys.executable, "-m", "hopscope"]
FOREVER = 2**63 - 1
needs_lab = pytest.mark.skipif(not MANIFEST.is_file(), reason="no lab samples committed")

#: What a stored trace says about its request, compared field by field.
TRACE_FIELDS = ("kind", "start_ns", "end_ns", "method", "http_host", "path", "status", "dns_qname", "x_request_id",
                "traceparent", "client_h", "client_p", "server_h", "server_p", "hop_count", "points", "error",
                "lost_pkts", "syn_seq")
#: What a stored span says about its hop and the link that joined it.
SPAN_FIELDS = ("hop_index", "point", "host", "hop_kind", "side", "orig_h", "orig_p", "resp_h", "resp_p",
               "request_first_ns", "response_last_ns", "clock_offset_us", "link_reason", "flow_id", "request_id")


def hopscope(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOPSCOPE, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def content(url: str) -> dict[str, tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]]]:
    """Every stored trace by id: its request fields and, per hop in order, the hop and its link."""
    store = store_from_url(url)
    try:
        out = {}
        for trace in store.query_traces(0, FOREVER, limit=1_000_000):
            _, spans = store.get_trace(trace.trace_id)
            out[trace.trace_id] = (tuple(getattr(trace, f) for f in TRACE_FIELDS),
                                   tuple(tuple(getattr(s, f) for f in SPAN_FIELDS) for s in spans))
        return out
    finally:
        store.close()


@needs_lab
@pytest.mark.kafka
def test_replay_then_correlate_stores_what_analyze_stores(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = topic_prefix("replay")
    streamed, analyzed = f"chdb://{tmp_path}?database=streamed", f"chdb://{tmp_path}?database=analyzed"
    # 50 ms publications at real speed: the 0.4 s of the samples go out in several paced ticks
    replayed = hopscope("replay", "--kafka", kafka_bootstrap, "--topic-prefix", prefix, "--manifest", str(MANIFEST),
                        "--speed", "1", "--publish-interval-ms", "50")
    assert replayed.returncode == 0, replayed.stderr
    assert "0 ticks" not in replayed.stderr and "1 ticks" not in replayed.stderr, replayed.stderr
    correlated = hopscope("correlate", "--kafka", kafka_bootstrap, "--store", streamed, "--topic-prefix", prefix,
                          "--group", prefix, "--idle-exit", "5")
    assert correlated.returncode == 0, correlated.stderr
    analysis = hopscope("analyze", "--manifest", str(MANIFEST), "--store", analyzed, "-o", str(tmp_path / "out"))
    assert analysis.returncode == 0, analysis.stderr

    want, got = content(analyzed), content(streamed)
    assert len(want) > 30  # the samples' requests and connections
    assert sum(1 for fields, _ in want.values() if fields[0] == "l7") > 20
    assert set(got) == set(want)  # same deterministic trace ids
    for trace_id, (fields, spans) in want.items():
        assert got[trace_id][0] == fields, trace_id
        assert got[trace_id][1] == spans, trace_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_lab
def test_broker_down_is_one_error_line() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    replayed = hopscope("replay", "--kafka", bootstrap, "--manifest", str(MANIFEST), "--speed", "max")
    assert replayed.returncode == 3  # UnavailableError
    assert replayed.stdout == ""
    lines = replayed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hopscope: error: Kafka broker at {bootstrap} is unreachable")
    assert "published" not in replayed.stderr


@needs_lab
@pytest.mark.kafka
def test_messages_the_broker_refuses_are_not_claimed(kafka_bootstrap: str) -> None:
    """A requests topic that takes only small messages: the broker refuses the request batches, which
    kafka-python's flush would pass over in silence; replay says how much was acknowledged and fails."""
    prefix = topic_prefix("replayrefused")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(f"{prefix}.requests", 4, 1, topic_configs={"max.message.bytes": "600"})])
    finally:
        admin.close()
    replayed = hopscope("replay", "--kafka", kafka_bootstrap, "--topic-prefix", prefix, "--manifest", str(MANIFEST),
                        "--speed", "max", "--publish-interval-ms", "50")
    assert replayed.returncode == 3, replayed.stderr
    errors = [line for line in replayed.stderr.splitlines() if line.startswith("hopscope: error:")]
    assert len(errors) == 1, replayed.stderr  # (before it: kafka-python's own warnings, as for a probe)
    assert errors[0].startswith(f"hopscope: error: Kafka broker at {kafka_bootstrap} did not acknowledge"), errors
    assert " of 466 records acknowledged" in errors[0]
    assert "published in" not in replayed.stderr  # no success summary
