"""``hopscope correlate --metrics-port`` and ``hopscope ingest --metrics-port`` on the real broker and
ClickHouse server: the lab samples' records replayed into topics of a prefix of this test, scraped over
HTTP on loopback while the command runs, compared with what the store holds afterwards (traces written,
rows, the service map's requests and errors per edge)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopscope.store import store_from_url
from hopscope.topology.inventory import load_inventory
from hopscope.topology.source import NS_MAX, load_service_map
from tests.conftest import clickhouse_database, require_service, topic_prefix
from tests.metrics.scrape import Samples, free_port, scrape_until, total, value

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lab"
HOPSCOPE = [sys.executable, "-m", "hopscope"]


@pytest.fixture(scope="module")
def replayed() -> tuple[str, int]:
    """A topic prefix holding the lab samples' records, and how many records it holds."""
    from tests.conftest import KAFKA_BOOTSTRAP

    require_service("Kafka", KAFKA_BOOTSTRAP)
    prefix = topic_prefix("metrics")
    done = subprocess.run([*HOPSCOPE, "replay", "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", prefix,
                           "--manifest", str(SAMPLES / "manifest.json"), "--speed", "max"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = re.search(r"(\d+) flow and (\d+) request records", done.stderr)
    assert counts, done.stderr
    return prefix, int(counts[1]) + int(counts[2])


@pytest.fixture
def store_url() -> Iterator[str]:
    with clickhouse_database("hs_metrics") as url:
        yield url


def run_scraped(cmd: list[str], port: int, done: object) -> tuple[Samples, str]:
    """Run ``cmd``, scrape its endpoint until ``done(samples)``, then stop it (SIGTERM) and return the
    last scrape and its stderr."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        got = scrape_until(port, done, lambda: proc.poll() is None, timeout_s=180)  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return got, stderr


def settled(ready: object) -> object:
    """``ready(samples)`` holds and nothing moved since the previous scrape (0.2 s before)."""
    seen: list[list[float]] = []

    def done(s: Samples) -> bool:
        seen.append(sorted(v for (n, _), v in s.items() if n.endswith("_total") and "duration" not in n))
        return bool(ready(s)) and len(seen) > 1 and seen[-2] == seen[-1]  # type: ignore[operator]

    return done


def correlated(records: int) -> object:
    """Every record relayed and stitched, nothing held, traces written."""
    def ready(s: Samples) -> bool:
        relayed = value(s, "hopscope_correlate_relay_records_out_total")
        return (value(s, "hopscope_correlate_relay_records_in_total") >= records and relayed >= records
                and value(s, "hopscope_correlate_records_in_total") >= relayed
                and total(s, "hopscope_correlate_records_held") == 0
                and value(s, "hopscope_correlate_traces_written_total") > 0)

    return settled(ready)


def ingested(records: int, group: str) -> object:
    def ready(s: Samples) -> bool:
        return (value(s, "hopscope_kafka_records_consumed_total", group=group) >= records
                and total(s, "hopscope_store_rows_inserted_total") >= records)

    return settled(ready)


def test_correlate_metrics_match_the_store(replayed: tuple[str, int], store_url: str) -> None:
    from tests.conftest import KAFKA_BOOTSTRAP

    prefix, records = replayed
    port = free_port()
    inventory = SAMPLES / "inventory.yaml"
    cmd = [*HOPSCOPE, "correlate", "--kafka", KAFKA_BOOTSTRAP, "--store", store_url, "--topic-prefix", prefix,
           "--group", f"{prefix}-correlate", "--idle-flush-ms", "500", "--inventory", str(inventory),
           "--metrics-port", str(port)]  # fmt: skip
    got, stderr = run_scraped(cmd, port, correlated(records))
    assert value(got, "hopscope_correlate_relay_records_in_total") == records
    store = store_from_url(store_url)
    try:
        traces = store.count("traces")
        assert traces > 30
        assert value(got, "hopscope_correlate_traces_written_total") == traces
        assert value(got, "hopscope_store_rows_inserted_total", table="traces") == traces
        assert value(got, "hopscope_store_rows_inserted_total", table="spans") == store.count("spans")
        assert value(got, "hopscope_correlate_spans_written_total") == store.count("spans")
        assert total(got, "hopscope_store_insert_errors_total") == 0
        assert value(got, "hopscope_store_insert_retries_total") == 0
        graph = load_service_map(store, 0, NS_MAX, 100_000, load_inventory(inventory))
    finally:
        store.close()
    assert f"stitched into {traces} traces" in stderr
    # the service map's requests and errors per edge, from the metrics alone
    edges = {(graph.nodes[u]["label"], graph.nodes[v]["label"]): d for u, v, d in graph.edges(data=True)
             if d.get("requests")}  # fmt: skip
    assert len(edges) >= 3 and any(d["errors"] for d in edges.values())
    for (client, server), data in edges.items():
        assert total(got, "hopscope_service_requests_total", client=client, server=server) == data["requests"]
        assert total(got, "hopscope_service_request_errors_total", client=client, server=server) == data["errors"]
        assert total(got, "hopscope_service_request_duration_seconds_count", client=client,
                     server=server) == data["requests"]  # fmt: skip
    assert total(got, "hopscope_service_requests_total") == sum(d["requests"] for d in edges.values())
    # consumer lag of both stages' topics, watermarks of both stages
    lagged = {dict(labels)["topic"] for name, labels in got if name == "hopscope_kafka_consumer_lag_messages"}
    assert {f"{prefix}.requests", f"{prefix}.flows", f"{prefix}.s2.requests", f"{prefix}.s2.flows"} <= lagged
    for stage in ("relay", "stitch"):
        assert ("hopscope_correlate_watermark_delay_seconds", (("stage", stage),)) in got
    assert value(got, "hopscope_correlate_trace_emit_delay_seconds_count") == traces


def test_ingest_metrics_match_the_store(replayed: tuple[str, int], store_url: str) -> None:
    from tests.conftest import KAFKA_BOOTSTRAP

    prefix, records = replayed
    port = free_port()
    cmd = [*HOPSCOPE, "ingest", "--kafka", KAFKA_BOOTSTRAP, "--store", store_url, "--topic-prefix", prefix,
           "--group", f"{prefix}-ingest", "--metrics-port", str(port)]  # fmt: skip
    got, stderr = run_scraped(cmd, port, ingested(records, f"{prefix}-ingest"))
    store = store_from_url(store_url)
    try:
        for table in ("flows", "requests"):
            assert value(got, "hopscope_store_rows_inserted_total", table=table) == store.count(table)
        assert store.count("flows") + store.count("requests") == records
    finally:
        store.close()
    assert value(got, "hopscope_kafka_records_consumed_total", group=f"{prefix}-ingest") == records
    assert value(got, "hopscope_ingest_messages_total") == value(got, "hopscope_kafka_messages_consumed_total",
                                                                 group=f"{prefix}-ingest")  # fmt: skip
    assert total(got, "hopscope_kafka_consumer_lag_messages") == 0
    assert total(got, "hopscope_store_insert_errors_total") == 0
    assert "store retries" in stderr
