"""``hopscope correlate --kafka`` for real: records through Kafka (4 partitions) into the two-stage
streaming correlator and ClickHouse 18.16, compared with the offline engine on the same records.

Synthetic load: several copies of the synthetic path (client pod, NAT, hypervisor, switch, node, envoy
sidecar in and out, app), each on its own hosts, with keep-alive connections, raw TCP connections
without L7, x-request-id on every hop (proxy links by id) or only upstream of envoy (proxy links by
timing), published in event-time order with neighbouring chunks swapped (out of order).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from clickhouse_driver import Client
from kafka import KafkaAdminClient

from hopscope.correlate import Correlator
from hopscope.correlate.stream import StreamPipeline, StreamSettings, ensure_relay_topics, event_times
from hopscope.correlate.synthetic import CHAIN_PATH, Scenario, generate
from hopscope.records import Batch
from hopscope.store import store_from_url
from hopscope.transport.kafka import KafkaPublisher
from tests.conftest import KAFKA_BOOTSTRAP, clickhouse_database, require_service, topic_prefix
from tests.correlate.test_stream_chain import copies
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

HOPSCOPE = [sys.executable, "-m", "hopscope"]
FOREVER = 2**63 - 1
#: How long ClickHouse stays unreachable in the outage test: 4 s by default, to keep the suite short;
#: ``HOPSCOPE_OUTAGE_S=30`` runs a 30 s outage.
OUTAGE_S = float(os.environ.get("HOPSCOPE_OUTAGE_S", "4"))
WINDOWS = ["--lateness-ms", "300", "--trace-spread-ms", "100", "--idle-flush-ms", "1500"]
SETTINGS = StreamSettings(lateness_us=300_000, trace_spread_us=100_000, idle_flush_s=1.5, poll_timeout_s=0.05)


def load(hosts: int = 3, requests: int = 600, seed: int = 1, ids: str = "client") -> tuple[Batch, Batch]:
    """``hosts`` copies of the synthetic path, copy k on hosts and points suffixed k; ``ids``: which
    legs carry x-request-id ("client": all; "generated": envoy's upstream leg only, so the proxy's
    legs are linked by timing, a heuristic whose pairing can differ from offline at window edges)."""
    reqs, flows = [], []
    for k in range(hosts):
        path = tuple(dataclasses.replace(h, point=f"{h.point}-{k}", host=f"{h.host}-{k}") for h in Scenario().path)
        syn = generate(Scenario(requests=requests, per_connection=4, conn_spacing_us=4000, l4_connections=10,
                                request_id_mode=ids, path=path, seed=seed + k))
        ids: list[str] = syn.requests.columns["x_request_id"]  # type: ignore[assignment]
        syn.requests.columns["x_request_id"] = [f"{k}-{x}" if x else "" for x in ids]  # unique per copy
        reqs.append(syn.requests)
        flows.append(syn.flows)
    return Batch.concat(reqs), Batch.concat(flows)


def chunks(requests: Batch, flows: Batch, n: int) -> list[Batch]:
    """Both tables in event-time order, cut into about ``n`` chunks each, neighbours swapped."""
    parts: list[tuple[int, Batch]] = []
    for batch in (requests, flows):
        times = event_times(batch)
        order = np.argsort(times, kind="stable")
        parts += [(int(times[i[0]]), batch.take(i)) for i in np.array_split(order, n) if len(i)]
    parts.sort(key=lambda p: p[0])
    for i in range(0, len(parts) - 1, 2):
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return [b for _, b in parts]


def publish(prefix: str, batches: list[Batch], pause_s: float = 0.0) -> None:
    publisher = KafkaPublisher(KAFKA_BOOTSTRAP, prefix=prefix)
    try:
        for b in batches:
            publisher.publish(b)
            if pause_s:
                publisher.flush()
                time.sleep(pause_s)
        publisher.flush()
    finally:
        publisher.close()


def offline(requests: Batch, flows: Batch) -> dict[str, str]:
    res = Correlator().stitch(requests, flows)
    return dict(zip(res.traces.columns["trace_id"], res.traces.columns["points"], strict=True))


def stored(url: str) -> dict[str, str]:
    store = store_from_url(url)
    try:
        return {t.trace_id: t.points for t in store.query_traces(0, FOREVER, limit=1_000_000)}
    finally:
        store.close()


def final_and_distinct(url: str) -> tuple[int, int]:
    """count() FINAL and count(DISTINCT trace_id) of the traces table."""
    db = url.rsplit("/", 1)[1]
    client = Client("127.0.0.1", 9000)
    try:
        rows = client.execute(f"SELECT count(), uniqExact(trace_id) FROM `{db}`.traces FINAL")
        return int(rows[0][0]), int(rows[0][1])
    finally:
        client.disconnect()


def wait_for_members(groups: list[str], members: int, timeout_s: float = 60) -> None:
    """Until every group is Stable with ``members`` members (a sleep is too short on a busy machine)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_groups(groups)
            if all(
                described[g]["group_state"] == "Stable" and len(described[g]["members"]) == members for g in groups
            ):
                return
            assert time.monotonic() < deadline, f"groups did not reach {members} members: {described}"
            time.sleep(0.2)
    finally:
        admin.close()


def correlate(prefix: str, url: str, group: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HOPSCOPE, "correlate", "--kafka", KAFKA_BOOTSTRAP, "--store", url, "--topic-prefix", prefix,
         "--group", group, *WINDOWS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout_s: float = 90) -> str:
    _, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def db() -> Iterator[str]:
    require_service("Kafka", KAFKA_BOOTSTRAP)
    with clickhouse_database("hs_stream") as url:
        yield url


@pytest.fixture
def prefix() -> str:
    name = topic_prefix("st")
    ensure_relay_topics(KAFKA_BOOTSTRAP, name)
    return name


def run_pipeline(prefix: str, url: str, group: str, stop: threading.Event, idle_exit_s: float) -> Any:
    """One pipeline in this process until ``stop`` or idle; returns its stats."""
    store = store_from_url(url)
    pipeline = StreamPipeline(KAFKA_BOOTSTRAP, store, group=group, prefix=prefix, stream=SETTINGS)
    try:
        return pipeline.run(stop, idle_exit_s=idle_exit_s)
    finally:
        pipeline.close()
        store.close()


@pytest.mark.parametrize("ids", ["client", "generated"])
def test_one_correlator_equals_offline(db: str, prefix: str, ids: str) -> None:
    requests, flows = load(ids=ids)
    publish(prefix, chunks(requests, flows, 12))
    stats = run_pipeline(prefix, db, prefix, threading.Event(), idle_exit_s=4)
    want = offline(requests, flows)
    got = stored(db)
    assert got == want  # same trace ids, same hops in the same order
    assert final_and_distinct(db) == (len(want), len(want))
    assert stats.relay_records_out == len(requests) + len(flows)
    assert stats.passes > 2 and stats.late_records == 0
    assert stats.relay_messages_out >= 3  # three rendezvous hosts


def test_two_correlators_in_one_group_equal_one(db: str, prefix: str) -> None:
    requests, flows = load(seed=5)
    # --idle-exit counts from a process's partition assignment: it must outlast the other member's start,
    # the rebalance and the publisher's start on a loaded machine (6 s did not: one member left idle
    # before any record came, the other relayed everything)
    procs = [correlate(prefix, db, prefix, "--idle-exit", "20") for _ in range(2)]
    try:
        wait_for_members([f"{prefix}-s1", f"{prefix}-s2"], 2)  # both join before any record arrives
    except AssertionError as exc:
        for p in procs:
            p.kill()
        logs = [p.communicate(timeout=10)[1].strip().splitlines()[-8:] for p in procs]
        raise AssertionError(f"{exc}\ncorrelator logs: {logs}") from None
    publish(prefix, chunks(requests, flows, 16), pause_s=0.15)
    errs = [finish(p) for p in procs]
    relayed = [int(e.split("hopscope correlate: ")[1].split(" records relayed")[0]) for e in errs]
    assert all(n > 0 for n in relayed), [e.strip().splitlines()[-3:] for e in errs]  # both processes took part
    assert stored(db) == offline(requests, flows)
    count, distinct = final_and_distinct(db)
    assert count == distinct


def test_kill_9_mid_stream_and_restart(db: str, prefix: str) -> None:
    requests, flows = load(seed=9)
    batches = chunks(requests, flows, 20)
    proc = correlate(prefix, db, prefix)
    publisher = threading.Thread(target=publish, args=(prefix, batches, 0.1))
    publisher.start()
    store = store_from_url(db)
    try:
        deadline = time.monotonic() + 60
        while store.count("traces") < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.count("traces") >= 200
    finally:
        store.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    publisher.join(timeout=60)
    written_before = len(stored(db))
    assert 0 < written_before < len(offline(requests, flows))  # killed mid-stream
    finish(correlate(prefix, db, prefix, "--idle-exit", "5"))
    assert stored(db) == offline(requests, flows)
    count, distinct = final_and_distinct(db)
    assert count == distinct


def test_sigterm_writes_what_is_complete_commits_and_exits_0(db: str, prefix: str) -> None:
    requests, flows = load(hosts=2, seed=17)
    publisher = threading.Thread(target=publish, args=(prefix, chunks(requests, flows, 20), 0.1))
    proc = correlate(prefix, db, prefix)
    publisher.start()
    store = store_from_url(db)
    try:
        deadline = time.monotonic() + 60
        while store.count("traces") < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        store.close()
    proc.send_signal(signal.SIGTERM)
    err = finish(proc, timeout_s=30)
    assert "stitched into" in err and "Traceback" not in err
    assert committed(f"{prefix}-s1") and committed(f"{prefix}-s2")  # committed on the way out
    publisher.join(timeout=60)
    finish(correlate(prefix, db, prefix, "--idle-exit", "4"))
    assert stored(db) == offline(requests, flows)
    assert final_and_distinct(db)[0] == final_and_distinct(db)[1]


def committed(group: str) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()}


def test_clickhouse_down_holds_offsets_and_loses_nothing(db: str, prefix: str) -> None:
    requests, flows = load(hosts=2, seed=13)
    batches = chunks(requests, flows, 12)
    proxy = TcpProxy(("127.0.0.1", 9000))
    store = store_from_url(db.replace("127.0.0.1:9000", f"127.0.0.1:{proxy.port}"))
    pipeline = StreamPipeline(KAFKA_BOOTSTRAP, store, group=prefix, prefix=prefix, stream=SETTINGS)
    stop = threading.Event()
    worker = threading.Thread(target=pipeline.run, args=(stop, 6))
    publisher = threading.Thread(target=publish, args=(prefix, batches, 0.25))
    try:
        worker.start()
        publisher.start()
        deadline = time.monotonic() + 60
        while not stored(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored(db), "nothing written before the outage"
        proxy.cut()
        deadline = time.monotonic() + 60  # the next insert: after the current pass, however long it takes
        while pipeline.stats.store_retries == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipeline.stats.store_retries, "no insert failed while the store was cut off"
        retries, before = pipeline.stats.store_retries, committed(f"{prefix}-s2")
        time.sleep(OUTAGE_S)
        assert committed(f"{prefix}-s2") == before  # nothing committed while waiting for the store
        assert pipeline.stats.store_retries > retries
        written_during = len(stored(db))
        proxy.restore()
        publisher.join(timeout=60)
        worker.join(timeout=120)
        assert not worker.is_alive()
    finally:
        stop.set()
        worker.join(timeout=30)
        pipeline.close()
        store.close()
        proxy.close()
    print(pipeline.stats.as_dict() | {"emit_delay_ms": None})
    assert written_during < len(offline(requests, flows))
    assert stored(db) == offline(requests, flows)
    assert final_and_distinct(db)[0] == final_and_distinct(db)[1]
    after = committed(f"{prefix}-s2")
    assert all(after[tp] >= off for tp, off in before.items()) and after != before


def test_chains_across_hosts_equal_offline(db: str, prefix: str) -> None:
    """An egress sidecar on one host and a server sidecar on another (``CHAIN_PATH``), twice, beside
    a server-side-only path: the relay's host groups bring every leg of a chain to one stage-2
    partition, and the stored traces are the offline engine's."""
    requests, flows = copies([CHAIN_PATH, CHAIN_PATH, Scenario().path], ids="generated")
    publish(prefix, chunks(requests, flows, 12))
    stats = run_pipeline(prefix, db, prefix, threading.Event(), idle_exit_s=4)
    want = offline(requests, flows)
    assert stored(db) == want
    assert sum(1 for p in want.values() if len(p.split(",")) == len(CHAIN_PATH)) == 600
    assert stats.relay_records_out == len(requests) + len(flows) and stats.late_records == 0
