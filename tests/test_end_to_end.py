"""One record end to end: probe-side publisher -> Kafka -> `hopscope ingest` -> ClickHouse server
-> `hopscope serve` -> GET /api/v1/flows; and the same on the embedded default (in-process
transport, chDB). Real broker, real server, real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from hopscope.api.app import create_app
from hopscope.api.models import record_from_json
from hopscope.pipeline import Ingestor, RetryPolicy
from hopscope.records import Batch, FlowRecord
from hopscope.store import store_from_url
from hopscope.transport import Delivery, InProcessTransport
from hopscope.transport.kafka import KafkaPublisher, ensure_topics
from tests.conftest import CLICKHOUSE_URL, KAFKA_BOOTSTRAP, require_service, topic_prefix
from tests.tcpproxy import TcpProxy

HOPSCOPE = [sys.executable, "-m", "hopscope"]
NOW_NS = time.time_ns()


def _flows(n: int, point: str) -> list[FlowRecord]:
    rng = np.random.default_rng(11)
    return [
        FlowRecord(
            point=point, host="nodeA", hop_kind="node", flow_id=i + 1, start_ns=NOW_NS + i * 1000,
            end_ns=NOW_NS + i * 1000 + 500, final=1, ip_version=4, proto=6, orig_h=f"10.244.1.{i % 250 + 1}",
            orig_p=int(p), resp_h="10.96.0.10", resp_p=80, orig_pkts=5, resp_pkts=4, syn_seq=int(s),
            conn_state="SF", history="ShADadFf", community_id="1:abc=",
        )
        for i, (p, s) in enumerate(zip(rng.integers(1024, 65535, n), rng.integers(1, 2**32, n), strict=True))
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_db() -> Iterator[str]:
    require_service("ClickHouse", "127.0.0.1:9000")
    url = CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/hs_e2e_{uuid.uuid4().hex[:8]}"
    yield url
    store = store_from_url(url)
    store.drop_schema()
    store.close()


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_kafka_to_clickhouse_to_api(server_db: str) -> None:
    require_service("Kafka", KAFKA_BOOTSTRAP)
    prefix = topic_prefix("e2e")
    ensure_topics(KAFKA_BOOTSTRAP, prefix=prefix)
    sent = _flows(3000, point=f"e2e-{prefix}")
    publisher = KafkaPublisher(KAFKA_BOOTSTRAP, prefix=prefix)
    publisher.publish_raw(f"{prefix}.flows", b"not a batch", key=b"0")  # must not stop the consumer
    for lo in range(0, len(sent), 1000):
        publisher.publish(Batch.from_records(FlowRecord, sent[lo : lo + 1000]))
    publisher.flush()
    publisher.close()

    ingest = subprocess.run(
        [*HOPSCOPE, "ingest", "--kafka", KAFKA_BOOTSTRAP, "--store", server_db, "--topic-prefix", prefix,
         "--group", prefix, "--idle-exit", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr
    assert "3000 flows stored" in ingest.stderr and "1 bad messages dead-lettered" in ingest.stderr

    port = _free_port()
    serve = subprocess.Popen([*HOPSCOPE, "serve", "--store", server_db, "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a process start on a busy machine: imports, store check
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and serve.poll() is None, "hopscope serve did not come up"
            time.sleep(0.2)
        r = httpx.get(
            f"{base}/api/v1/flows",
            params={"start_ns": NOW_NS, "end_ns": NOW_NS + 10**10, "limit": 10_000, "point": sent[0].point},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        got = [record_from_json(FlowRecord, f) for f in r.json()["flows"]]
        assert got == sent
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_embedded_default_in_process_to_chdb(tmp_path: Path) -> None:
    transport = InProcessTransport()
    sent = _flows(500, point="embedded")
    transport.publish(Batch.from_records(FlowRecord, sent))
    store = store_from_url(f"chdb://{tmp_path}/db")
    store.ensure_schema()
    try:
        stats = Ingestor(transport, store).run(idle_exit_s=0.5)
        assert stats.rows == {"flows": 500}
        assert transport.committed == {"hopscope.flows": 0}
        r = TestClient(create_app(store), base_url="http://127.0.0.1").get("/api/v1/flows", params={"limit": 1000})
        assert [record_from_json(FlowRecord, f) for f in r.json()["flows"]] == sent
    finally:
        store.close()


class _Joining(InProcessTransport):
    """A group member that holds no partition (and gets nothing) for its first ``polls`` polls."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls_left = polls

    def assignment(self) -> set[tuple[str, int]]:
        return set() if self.polls_left > 0 else {("hopscope.flows", 0)}

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]:
        if self.polls_left > 0:
            self.polls_left -= 1
            return []
        return super().poll(timeout_s, max_records)


def test_idle_exit_counts_from_the_first_partitions(tmp_path: Path) -> None:
    """A member still joining its group has read nothing: ``idle_exit_s`` does not run out meanwhile,
    however long the join takes (here with no idle time allowed at all)."""
    transport = _Joining(polls=5)
    sent = _flows(20, point="joining")
    transport.publish(Batch.from_records(FlowRecord, sent))
    store = store_from_url(f"chdb://{tmp_path}/db")
    store.ensure_schema()
    try:
        stats = Ingestor(transport, store).run(idle_exit_s=0.0)
        assert transport.polls_left == 0
        assert stats.rows == {"flows": 20} and store.count("flows") == 20
    finally:
        store.close()


@pytest.mark.clickhouse
def test_store_outage_holds_rows_and_commits_nothing(server_db: str) -> None:
    """ClickHouse unreachable mid-stream: the ingestor retries, commits nothing until the rows are in."""
    proxy = TcpProxy(("127.0.0.1", 9000))
    url = server_db.replace("127.0.0.1:9000", f"127.0.0.1:{proxy.port}")
    store = store_from_url(url)
    store.ensure_schema()
    transport = InProcessTransport()
    ingestor = Ingestor(transport, store, RetryPolicy(first_s=0.1, max_s=0.3))
    try:
        transport.publish(Batch.from_records(FlowRecord, _flows(10, point="before")))
        assert ingestor.step(timeout_s=1) == 1
        proxy.cut()
        transport.publish(Batch.from_records(FlowRecord, _flows(20, point="during")))
        worker = threading.Thread(target=ingestor.step, kwargs={"timeout_s": 1})
        worker.start()
        deadline = time.monotonic() + 20
        while ingestor.stats.store_retries < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingestor.stats.store_retries >= 3
        assert transport.committed == {"hopscope.flows": 0}  # the second batch is not committed
        proxy.restore()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert transport.committed == {"hopscope.flows": 1}
        assert ingestor.stats.rows == {"flows": 30}
        assert store.count("flows") == 30
    finally:
        store.close()
        proxy.close()


def test_cli_errors_are_one_line_with_the_address(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for args, address in [
        (["ingest", "--kafka", "127.0.0.1:1", "--store", f"chdb://{tmp_path}/x"], "127.0.0.1:1"),
        (["ingest", "--kafka", "127.0.0.1:9092", "--store", "clickhouse://127.0.0.1:2/x"], "127.0.0.1:2"),
    ]:
        r = subprocess.run([*HOPSCOPE, *args], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 3, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and address in lines[0] and "unreachable" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
