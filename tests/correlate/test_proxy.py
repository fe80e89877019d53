"""Proxy linking on crafted records shaped as real proxies send them: Host rewritten, path prefixes
stripped, ids added upstream only, pooled upstream connections, retries, errors the proxy answers."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from hopscope.correlate import CorrelateSettings, Correlator, StitchResult
from hopscope.correlate.proxy import path_agrees
from hopscope.records import Batch, RequestRecord

T0 = 1_700_000_000_000_000_000
US = 1_000
_IDS = itertools.count(1)
#: The lab's shape: the client leg seen at the client pod and the server pod's NIC, the sidecar's
#: upstream leg on the pod's loopback (a ``proxy`` hop); both legs end on host "server".
DOWN = (("client", "nodeA", "pod", 0), ("server-pod", "server", "pod", 40))
UP = (("server-app", "server", "proxy", 0),)


@dataclasses.dataclass
class Leg:
    """One request on one TCP connection, seen at each point of ``points`` (µs after T0)."""

    points: tuple[tuple[str, str, str, int], ...]
    conn: int  # connection: syn_seq
    req_us: int
    resp_us: int  # 0: no response
    path: str = "/ok"
    host: str = "web"
    status: int = 200
    xrid: str = ""
    resp_body: int = 16
    req_body: int = 0
    offset: int = 0  # request's byte offset on its keep-alive connection
    method: str = "GET"

    def records(self) -> list[RequestRecord]:
        out = []
        for point, host, kind, delay in self.points:
            sign = 1 if self.points is DOWN else 0
            req_ns = T0 + (self.req_us + sign * delay) * US
            resp_ns = T0 + (self.resp_us - sign * delay) * US if self.resp_us else 0
            out.append(RequestRecord(
                point=point, host=host, hop_kind=kind, iface="eth0", l7_proto="http", proto=6,
                method=self.method, path=self.path, http_host=self.host, status=self.status if self.resp_us else 0,
                syn_seq=self.conn, synack_seq=self.conn + 7, req_tcp_seq=self.conn + 1 + self.offset,
                resp_tcp_seq=self.conn + 8 + self.offset if self.resp_us else 0, request_id=next(_IDS),
                req_first_ns=req_ns, req_last_ns=req_ns + 5 * US, resp_first_ns=resp_ns,
                resp_last_ns=resp_ns + 5 * US if resp_ns else 0, x_request_id=self.xrid,
                req_body_bytes=self.req_body, resp_body_bytes=self.resp_body if self.resp_us else 0))
        return out


def run(legs: list[Leg]) -> tuple[StitchResult, list[tuple[tuple[int, ...], tuple[str, ...]]]]:
    """Stitch the legs; per trace, the connections (syn_seq) of its hops and their link reasons."""
    records = [r for leg in legs for r in leg.records()]
    res = Correlator(CorrelateSettings()).stitch(Batch.from_records(RequestRecord, records), version_ns=1)
    conn_of = {r.request_id: r.syn_seq for r in records}
    cols = res.spans.columns
    hops = list(zip(cols["trace_id"], cols["request_id"].tolist(), cols["link_reason"], strict=True))  # type: ignore[union-attr]
    got = []
    for t in res.traces.columns["trace_id"]:
        mine = [(conn_of[r], why) for tid, r, why in hops if tid == t]
        got.append((tuple(c for c, _ in mine), tuple(w for _, w in mine)))
    return res, sorted(got)


def confidences(res: StitchResult, point: str = "server-app") -> list[float]:
    cols = res.spans.columns
    return [round(float(c), 3) for p, c in zip(cols["point"], cols["link_confidence"], strict=True) if p == point]


NESTED = ("origin", "l7:req_tcp_seq", "proxy:nested")


@pytest.mark.parametrize(
    ("up", "reason", "confidence"),
    [
        # nginx: proxy_pass http://app sends Host: app and its own X-Request-ID upstream only
        ({"host": "app", "xrid": "5f0c"}, NESTED, 0.8),
        # haproxy: a /web prefix stripped, a unique-id header set upstream
        ({"host": "web", "path": "/ok", "xrid": "ab12"}, NESTED, 0.8),
        # a rewrite beyond prefixes: linked, with less confidence
        ({"path": "/v2/health"}, NESTED, 0.72),
        # an id the proxy passed on links whatever Host and path became
        ({"host": "app", "path": "/ok", "xrid": "rid"}, ("origin", "l7:req_tcp_seq", "proxy:x-request-id"), 0.99),
    ],
)
def test_linked_across_what_proxies_rewrite(up: dict[str, Any], reason: tuple[str, ...], confidence: float) -> None:
    down = Leg(DOWN, 100, 0, 900, path="/web/ok" if up.get("path") == "/ok" else "/ok",
               xrid="rid" if up.get("xrid") == "rid" else "")
    res, got = run([down, Leg(UP, 500, 100, 800, **up)])
    assert got == [((100, 100, 500), reason)]
    assert confidences(res) == [confidence]


@pytest.mark.parametrize(
    "up",
    [
        {"status": 500, "resp_body": 24},  # another status (not a gateway error the proxy made)
        {"resp_body": 17},  # another response body
        {"req_body": 3},  # another request body
        {"method": "POST"},  # another method
    ],
)
def test_not_linked_when_what_survives_a_proxy_disagrees(up: dict[str, Any]) -> None:
    _, got = run([Leg(DOWN, 100, 0, 900), Leg(UP, 500, 100, 800, **up)])
    assert got == [((100, 100), NESTED[:2]), ((500,), ("origin",))]


def test_not_linked_when_not_nested() -> None:
    _, got = run([Leg(DOWN, 100, 0, 900), Leg(UP, 500, 100, 950)])  # upstream answered after the proxy
    assert got == [((100, 100), NESTED[:2]), ((500,), ("origin",))]


@pytest.mark.parametrize(
    ("up", "linked"),
    [
        ({"resp_us": 0}, True),  # upstream leg got no answer: the proxy answered 504 itself
        ({"status": 503, "resp_body": 40}, True),  # upstream said 503, the proxy its own 502 page
        ({"status": 200}, False),  # a 200 upstream never becomes the proxy's 502
    ],
)
def test_error_the_proxy_answered_itself(up: dict[str, Any], linked: bool) -> None:
    down = Leg(DOWN, 100, 0, 900, status=502, resp_body=150)
    _, got = run([down, dataclasses.replace(Leg(UP, 500, 100, 800), **up)])
    want = [((100, 100, 500), NESTED)] if linked else [((100, 100), NESTED[:2]), ((500,), ("origin",))]
    assert got == want


def test_error_answered_without_upstream_leg_is_its_own_trace() -> None:
    _, got = run([Leg(DOWN, 100, 0, 900, status=503, resp_body=19), Leg(DOWN, 200, 2000, 2900),
                  Leg(UP, 500, 2100, 2800)])
    assert got == [((100, 100), NESTED[:2]), ((200, 200, 500), NESTED)]


def test_pooled_upstream_connection_serves_many_inbound_ones() -> None:
    """One upstream keep-alive connection (500) carries the requests of three inbound connections;
    one inbound keep-alive connection (400) fans out over two upstream connections (500, 600)."""
    legs = [Leg(DOWN, 100 * (i + 1), 1000 * i, 1000 * i + 700) for i in range(3)]
    legs += [Leg(UP, 500, 1000 * i + 100, 1000 * i + 600, offset=90 * i) for i in range(3)]
    legs += [Leg(DOWN, 400, 5000, 5700, path="/a", resp_body=5), Leg(DOWN, 400, 6000, 6700, offset=80, resp_body=7)]
    legs += [Leg(UP, 500, 5100, 5600, offset=270, path="/a", resp_body=5), Leg(UP, 600, 6100, 6600, resp_body=7)]
    res, got = run(legs)
    assert got == [((100, 100, 500), NESTED), ((200, 200, 500), NESTED), ((300, 300, 500), NESTED),
                   ((400, 400, 500), NESTED), ((400, 400, 600), NESTED)]
    assert set(confidences(res)) == {0.8}


def test_concurrent_requests_forwarded_out_of_order_are_told_apart_by_status_and_body() -> None:
    """Two requests reach the proxy 10 µs apart and leave it in the other order."""
    legs = [Leg(DOWN, 100, 0, 900, path="/status/500", status=500, resp_body=24), Leg(DOWN, 200, 10, 800),
            Leg(UP, 600, 110, 700), Leg(UP, 500, 130, 790, path="/status/500", status=500, resp_body=24)]
    _, got = run(legs)
    assert got == [((100, 100, 500), NESTED), ((200, 200, 600), NESTED)]


@pytest.mark.parametrize("first_status", [0, 503])
def test_retry_without_ids_is_a_branch_of_one_trace(first_status: int) -> None:
    """The first attempt failed (no answer, or 503); the proxy retried on another connection."""
    first = Leg(UP, 500, 100, 300 if first_status else 0, status=first_status, resp_body=19)
    _, got = run([Leg(DOWN, 100, 0, 2000), first, Leg(UP, 600, 400, 1800)])
    (conns, reasons), = got
    assert conns[:2] == (100, 100) and sorted(conns[2:]) == [500, 600]
    assert sorted(reasons[2:]) == ["proxy:nested", "proxy:retry"]


def test_a_later_request_is_not_taken_for_a_retry() -> None:
    """Two sequential requests on one inbound connection, each with its own upstream leg: no retry."""
    legs = [Leg(DOWN, 100, 0, 900, status=503, resp_body=19), Leg(DOWN, 100, 1000, 1900, offset=80),
            Leg(UP, 500, 100, 800, status=503, resp_body=19), Leg(UP, 500, 1100, 1800, offset=80)]
    _, got = run(legs)
    assert got == [((100, 100, 500), NESTED), ((100, 100, 500), NESTED)]


@pytest.mark.parametrize(
    ("down", "up", "agrees"),
    [("/ok", "/ok", True), ("/web/ok", "/ok", True), ("/ok", "/api/ok", True), ("/web/ok?a=1", "/ok?a=1", True),
     ("/ok", "/okay", False), ("/web/ok", "b/ok", False), ("/a/b", "/ab", False), ("/status/500", "/500", True)],
)
def test_path_hint(down: str, up: str, agrees: bool) -> None:
    assert path_agrees(down, up) is agrees


def test_burst_after_a_stall_is_paired_by_path() -> None:
    """Seen with haproxy in the lab: two requests reached the proxy 115 µs apart, it stalled 4.5 ms,
    then forwarded both within 36 µs in the other order. Arrival order cannot tell; paths that
    differ can (a prefix stripped on the way)."""
    legs = [Leg(DOWN, 100, 0, 9282, path="/web/ok?req=a"), Leg(DOWN, 200, 75, 7998, path="/web/ok?req=b"),
            Leg(UP, 600, 4655, 5720, path="/ok?req=b"), Leg(UP, 500, 4691, 6941, path="/ok?req=a")]
    res, got = run(legs)
    assert got == [((100, 100, 500), NESTED), ((200, 200, 600), NESTED)]
    assert confidences(res) == [0.8, 0.8]


def test_identical_requests_in_a_burst_are_paired_in_arrival_order() -> None:
    """The known limit: identical requests, no id, a proxy that reordered them. Arrival order is a
    guess, and the links say so only when the legs reached the proxy within its jitter."""
    legs = [Leg(DOWN, 100, 0, 9282), Leg(DOWN, 200, 75, 7998), Leg(UP, 600, 4655, 5720), Leg(UP, 500, 4691, 6941)]
    _, got = run(legs)
    assert got == [((100, 100, 600), NESTED), ((200, 200, 500), NESTED)]  # swapped: no field tells them apart
