"""Proxy links in the streaming correlator: legs a proxy rewrote (Host, a path prefix, an id added
upstream only) are linked as the offline engine links them."""

from __future__ import annotations

import threading
from collections import Counter

from hopscope.correlate import Correlator
from hopscope.correlate.stream import StreamCorrelator
from hopscope.correlate.synthetic import Scenario, generate
from hopscope.store.embedded import EmbeddedStore
from tests.correlate.test_stream import SETTINGS, LogConsumer, offline, store, stored, stream_log

__all__ = ["store"]  # the fixture, used by name
REWRITTEN = Scenario(requests=1500, l4_connections=20, conn_spacing_us=200, request_id_mode="generated",
                     upstream_rewrite=True)


def test_rewritten_legs_are_linked_offline() -> None:
    syn = generate(REWRITTEN)
    res = Correlator().stitch(syn.requests, syn.flows, version_ns=1)
    hops = Counter(res.traces.columns["hop_count"].tolist())  # type: ignore[union-attr]
    assert hops[len(syn.expected_points)] == REWRITTEN.requests
    cols = res.spans.columns
    reasons = Counter(r for p, r in zip(cols["point"], cols["link_reason"], strict=True) if p == "sidecar-out")
    assert set(reasons) == {"proxy:nested"}


def test_streaming_links_rewritten_legs_as_offline(store: EmbeddedStore) -> None:
    log, requests, flows = stream_log(REWRITTEN)
    sc = StreamCorrelator(LogConsumer(log), store, stream=SETTINGS)
    sc.run(threading.Event(), exit_when_idle=True)
    want = offline(requests, flows)
    assert sc.stats.commits > 3, "the windows must really split the input"
    assert stored(store) == want
    assert sum(1 for _, points in want if len(points.split(",")) == 9) == REWRITTEN.requests
