"""Proxies chained across hosts in the streaming correlator: an egress sidecar on one host, a server
sidecar on another. The relay (stage 1) joins the hosts a proxied connection leaves and reaches
into one group, so the client app's leg, the egress sidecar's upstream leg and the server sidecar's
legs meet in one stage-2 partition; stage 2 then stitches them as the offline engine does."""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from hopscope.codec import decode_batch
from hopscope.correlate.stream import HostGroups, Relay, StreamCorrelator, StreamStats, connection_ends, event_times
from hopscope.correlate.synthetic import CHAIN_PATH, DEFAULT_PATH, Hop, Scenario, generate
from hopscope.records import Batch
from hopscope.store.embedded import EmbeddedStore
from tests.correlate.test_stream import SETTINGS, Log, LogConsumer, offline, store, stored

__all__ = ["store"]  # the fixture, used by name
FOREVER = 2**63 - 1
#: The relay publishes in 5 ms event-time slices of at most 300 records: stage 2 gets many messages.
RELAY_SETTINGS = dataclasses.replace(SETTINGS, relay_lateness_us=10_000, relay_chunk_records=300)


class Published:
    """The relay's publisher in-process: every stage-2 message with its key."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []

    def publish_raw(self, topic: str, value: bytes, key: bytes) -> None:
        self.messages.append((topic, value, key))

    def flush(self) -> None:
        pass

    def by_key(self) -> dict[str, list[Batch]]:
        out: dict[str, list[Batch]] = defaultdict(list)
        for _, value, key in self.messages:
            out[key.decode()].append(decode_batch(value))
        return out


def copies(paths: list[tuple[Hop, ...]], ids: str = "generated") -> tuple[Batch, Batch]:
    """One synthetic run per path, copy k on hosts and points suffixed k, ids unique per copy."""
    reqs, flows = [], []
    for k, path in enumerate(paths):
        moved = tuple(dataclasses.replace(h, point=f"{h.point}-{k}", host=f"{h.host}-{k}") for h in path)
        syn = generate(Scenario(requests=300, per_connection=4, conn_spacing_us=300, l4_connections=5,
                                request_id_mode=ids, path=moved, seed=11 + k))
        xrid: list[str] = syn.requests.columns["x_request_id"]  # type: ignore[assignment]
        syn.requests.columns["x_request_id"] = [f"{k}-{x}" if x else "" for x in xrid]
        reqs.append(syn.requests)
        flows.append(syn.flows)
    return Batch.concat(reqs), Batch.concat(flows)


def input_log(requests: Batch, flows: Batch, chunk: int = 500) -> Log:
    """Both tables in event-time order, in chunks, on two partitions (as the probes key them)."""
    parts = []
    for batch in (requests, flows):
        times = event_times(batch)
        order = np.argsort(times, kind="stable")
        parts += [(int(times[i[0]]), batch.take(i)) for i in np.array_split(order, max(1, len(batch) // chunk))]
    log = Log()
    for _, batch in sorted(parts, key=lambda p: p[0]):
        log.append(batch)
    return log


def relay(requests: Batch, flows: Batch) -> Published:
    """Stage 1 over the whole input, released to the end."""
    pub = Published()
    r = Relay(LogConsumer(input_log(requests, flows)), pub, "chain", RELAY_SETTINGS, StreamStats())
    while r.step(0.0):
        pass
    r.release(FOREVER)
    return pub


def stage2(store: EmbeddedStore, pub: Published) -> list[StreamStats]:
    """One stage-2 correlator per stage-2 key (a partition each), all writing into one store."""
    out = []
    for batches in pub.by_key().values():
        log = Log()
        for b in batches:
            log.append(b)
        sc = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
        sc.run(threading.Event(), exit_when_idle=True)
        out.append(sc.stats)
    return out


def test_a_chain_crosses_hosts_offline() -> None:
    requests, flows = copies([CHAIN_PATH])
    res = offline(requests, flows)
    full = [p for _, p in res if p.split(",") == [f"{h.point}-0" for h in CHAIN_PATH]]
    assert len(full) == 300
    ends = connection_ends(requests, flows)
    assert {(ends[1][k], h) for k, h in ends[0].items()} >= {("node-a-0", "node-b-0")}, "the middle leg crosses"


def test_host_groups_join_only_connections_leaving_a_proxy_host() -> None:
    g = HostGroups()
    g.join("client-1", "server-1")  # no proxy seen on client-1 yet: a plain client
    assert g.find("client-1") == "client-1" and g.find("server-1") == "server-1"
    g.proxy_hosts.update({"client-1", "client-2"})
    g.join("client-1", "server-1")
    g.join("client-2", "server-2")
    g.join("client-2", "server-1")
    assert {g.find(h) for h in ("client-1", "client-2", "server-1", "server-2")} == {"client-1"}
    assert g.find("server-3") == "server-3"


def test_relay_sends_every_leg_of_a_chain_to_one_partition() -> None:
    requests, flows = copies([CHAIN_PATH, DEFAULT_PATH])
    keys = relay(requests, flows).by_key()
    points = {k: {p for b in v for p in b.columns["point"]} for k, v in keys.items()}  # type: ignore[attr-defined]
    assert set(points) == {"node-a-0", "node-b-1"}  # the chain's group, the server-side-only path's host
    assert {p for p in points["node-a-0"]} == {f"{h.point}-0" for h in CHAIN_PATH}
    assert {p for p in points["node-b-1"]} == {f"{h.point}-1" for h in DEFAULT_PATH}


@pytest.mark.parametrize("ids", ["client", "generated", "none"])
def test_streaming_equals_offline_on_chains_across_hosts(store: EmbeddedStore, ids: str) -> None:
    requests, flows = copies([CHAIN_PATH, CHAIN_PATH, DEFAULT_PATH], ids=ids)
    stats = stage2(store, relay(requests, flows))
    want = offline(requests, flows)
    assert len(stats) == 3 and all(s.passes > 2 for s in stats), "three partitions, windows that split"
    assert stored(store) == want
    assert sum(1 for _, p in want if len(p.split(",")) == len(CHAIN_PATH)) == 600


def test_without_groups_the_chain_splits(store: EmbeddedStore, monkeypatch: Any) -> None:
    """The test above can fail: keyed by rendezvous host alone, the client app's leg (on its own
    host) never meets the egress sidecar's upstream leg (on the server's host)."""
    monkeypatch.setattr(HostGroups, "join", lambda self, a, b: None)
    requests, flows = copies([CHAIN_PATH], ids="client")
    stage2(store, relay(requests, flows))
    got = stored(store)
    assert got != offline(requests, flows)
    assert all(len(p.split(",")) < len(CHAIN_PATH) for _, p in got)
