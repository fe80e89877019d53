"""TLS exchanges linked to the plaintext legs around them, on crafted records shaped as the mutual-TLS
lab makes them: the client app's leg on the client pod's loopback (a proxy hop), the egress sidecar's
TLS exchange on a pooled connection (client pod NIC, server pod NIC: no method, path, status or id,
only seqs, times and byte counts), the server sidecar's leg to the app on the server pod's loopback."""

from __future__ import annotations

import dataclasses
import itertools

from hopscope.correlate import CorrelateSettings, Correlator, StitchResult
from hopscope.records import Batch, RequestRecord

T0 = 1_700_000_000_000_000_000
US = 1_000
_IDS = itertools.count(1)
TLS_OVERHEAD = 29  # a TLS 1.2 AES-GCM record: 5 header + 8 nonce + 16 tag bytes


@dataclasses.dataclass
class Request:
    """One request through both sidecars: times in µs after T0 at the client app's leg."""

    start_us: int
    tls_conn: int  # syn_seq of the pooled TLS connection it rides
    tls_offset: int  # byte offset of its exchange on that connection
    app_conn: int  # syn_seq of the client app's connection (and of the server sidecar's upstream one + 1)
    service_us: int = 300  # time the app takes
    resp_body: int = 16
    xrid: str = ""  # the client app's own id (the sidecars pass it on)
    upstream_xrid: str = ""  # the id the server sidecar's upstream leg carries ('' : xrid)
    status: int = 200
    forward_us: int = 10  # time the egress sidecar takes to send it on
    handover_us: int = 10  # time the egress sidecar takes to pass the response back
    app_delay_us: int = 20  # time the server sidecar takes to send the request on to the app
    server_return_us: int = 20  # time the server sidecar takes to pass the app's answer back
    path: str = "/ok"
    upstream_path: str = ""  # the path the app got ('': path)

    def records(self) -> list[RequestRecord]:
        # client app -> egress sidecar (client pod loopback) at t; its exchange leaves the client pod
        # forward_us later and takes 40 µs to the server pod; the app leg starts 20 µs after that
        t, e0 = self.start_us, self.start_us + self.forward_us
        e1 = e0 + 40
        c0 = e1 + self.app_delay_us
        c_resp = c0 + self.service_us
        e1_resp = c_resp + self.server_return_us
        a = self._rec("client-egress", "client", "proxy", "http", self.app_conn, 0, t, e1_resp + 40 + self.handover_us,
                      self.resp_body)
        tls = [self._rec(p, h, "pod", "tls", self.tls_conn, self.tls_offset, req, resp, 0,
                         req_bytes=300 + TLS_OVERHEAD, resp_bytes=self.resp_body + 120 + TLS_OVERHEAD)
               for p, h, req, resp in (("client-pod", "client", e0, e1_resp + 40),
                                       ("server-pod", "server", e1, e1_resp))]
        c = self._rec("server-app", "server", "proxy", "http", self.app_conn + 1000, 0, c0, c_resp, self.resp_body,
                      xrid=self.upstream_xrid or self.xrid, path=self.upstream_path or self.path)
        return [a, *tls, c]

    def _rec(self, point: str, host: str, kind: str, proto: str, conn: int, offset: int, req_us: int, resp_us: int,
             resp_body: int, xrid: str | None = None, req_bytes: int = 300, resp_bytes: int = 0,
             path: str | None = None) -> RequestRecord:
        http = proto == "http"
        return RequestRecord(
            point=point, host=host, hop_kind=kind, iface="eth0", l7_proto=proto, proto=6, request_id=next(_IDS),
            method="GET" if http else "", path=(path or self.path) if http else "", status=self.status if http else 0,
            syn_seq=conn, synack_seq=conn + 7, req_tcp_seq=conn + 1 + offset, resp_tcp_seq=conn + 8 + offset,
            req_first_ns=T0 + req_us * US, req_last_ns=T0 + req_us * US + 5 * US,
            resp_first_ns=T0 + resp_us * US, resp_last_ns=T0 + resp_us * US + 5 * US,
            x_request_id=(self.xrid if xrid is None else xrid) if http else "",
            req_bytes=req_bytes, resp_bytes=resp_bytes or resp_body + 120, resp_body_bytes=resp_body if http else 0)


def chains(requests: list[Request], records: list[RequestRecord] | None = None,
           ) -> tuple[StitchResult, list[tuple[tuple[int, ...], tuple[str, ...]]]]:
    """Stitch; per trace, the connections (syn_seq) of its hops in order and their link reasons."""
    records = records if records is not None else [r for q in requests for r in q.records()]
    res = Correlator(CorrelateSettings()).stitch(Batch.from_records(RequestRecord, records), version_ns=1)
    conn_of = {r.request_id: (r.syn_seq, r.req_tcp_seq) for r in records}
    cols = res.spans.columns
    hops = list(zip(cols["trace_id"], cols["request_id"].tolist(), cols["link_reason"], strict=True))  # type: ignore[union-attr]
    out = []
    for t in res.traces.columns["trace_id"]:
        mine = [(conn_of[r], why) for tid, r, why in hops if tid == t]
        out.append((tuple(c[0] for c, _ in mine), tuple(w for _, w in mine)))
    return res, sorted(out)


CHAIN = ("origin", "tls:nested", "l7:req_tcp_seq", "tls:nested")


def test_requests_on_one_pooled_tls_connection_are_chained_through_their_exchanges() -> None:
    reqs = [Request(i * 2_000, tls_conn=10_000, tls_offset=i * 500, app_conn=100 + i) for i in range(4)]
    res, got = chains(reqs)
    assert got == [((100 + i, 10_000, 10_000, 1100 + i), CHAIN) for i in range(4)]
    assert res.stats["tls_links"] == 8


def test_an_id_on_both_sides_of_the_tls_hop_links_the_chain_through_the_one_exchange_between() -> None:
    """The client app's leg and the app's leg share the client's id (the server sidecar kept it):
    the one exchange nested between them is linked to both (``tls:nested+id``)."""
    reqs = [Request(0, 10_000, 0, 100, xrid="a1"), Request(2_000, 10_000, 500, 101)]
    records = [r for q in reqs for r in q.records()]
    res, got = chains(reqs, records)
    assert got == [((100, 10_000, 10_000, 1100), ("origin", "tls:nested+id", "l7:req_tcp_seq", "tls:nested+id")),
                   ((101, 10_000, 10_000, 1101), CHAIN)]
    conf = dict(zip(res.spans.columns["request_id"].tolist(), res.spans.columns["link_confidence"], strict=True))  # type: ignore[union-attr]
    app = [r for r in records if r.point == "server-app"]
    assert [round(conf[r.request_id], 2) for r in app] == [0.95, 0.8]


def test_concurrent_requests_on_two_tls_connections_pair_in_arrival_order() -> None:
    """Two requests 100 µs apart ride two pooled connections; the second is answered first (a
    quicker app call): each exchange still nests in its own legs only."""
    reqs = [Request(0, 10_000, 0, 100, service_us=900), Request(100, 20_000, 0, 101, service_us=200)]
    _, got = chains(reqs)
    assert got == [((100, 10_000, 10_000, 1100), CHAIN), ((101, 20_000, 20_000, 1101), CHAIN)]


def test_the_exchange_must_hold_the_plaintext_body() -> None:
    """The egress sidecar sends a later small request on before an earlier big one: in arrival order
    the first exchange (136 bytes of response) would pair with the big request's leg, and only moving
    pairs would repair it (ambiguous); a 136-byte exchange cannot hold a 60,000-byte body, so the
    bytes pair both at once."""
    big = Request(0, 20_000, 0, 100, resp_body=60_000, service_us=900, forward_us=200)
    small = Request(100, 10_000, 0, 101, forward_us=5)
    res, got = chains([big, small])
    assert got == [((100, 20_000, 20_000, 1100), CHAIN), ((101, 10_000, 10_000, 1101), CHAIN)]
    cols = res.spans.columns
    assert {round(float(c), 2) for c, why in zip(cols["link_confidence"], cols["link_reason"], strict=True)
            if why == "tls:nested"} == {0.8}


def test_a_server_leg_with_another_id_is_linked_by_nesting_alone() -> None:
    """A server sidecar may replace the request id (nginx and haproxy do): the exchange carries the
    client's "a1", the app leg "zz"; linked by nesting, unconfirmed (both requests are GET /ok: the
    path names neither)."""
    _, got = chains([Request(0, 10_000, 0, 100, xrid="a1", upstream_xrid="zz"), Request(2_000, 10_000, 500, 101)])
    assert got == [((100, 10_000, 10_000, 1100), CHAIN), ((101, 10_000, 10_000, 1101), CHAIN)]


def test_an_exchange_with_no_plaintext_leg_around_it_stays_alone() -> None:
    """Only the TLS hop was captured: the exchange is a trace of its own (l7_proto tls), not forced
    onto anything."""
    records = [r for r in Request(0, 10_000, 0, 100).records() if r.l7_proto == "tls"]
    res = Correlator(CorrelateSettings()).stitch(Batch.from_records(RequestRecord, records), version_ns=1)
    assert res.traces.columns["l7_proto"] == ["tls"] and res.stats["tls_links"] == 0


def test_the_client_side_pairs_in_response_order_when_handshakes_reorder_the_requests() -> None:
    """The egress sidecar sets up a TLS connection per queued request and sends each on when its
    handshake finishes: the later request leaves first. Both exchanges nest in both legs; the
    responses keep the order (each is passed back 300 µs after its exchange's answer)."""
    first = Request(0, 10_000, 0, 100, forward_us=5_100, service_us=780, handover_us=300)
    second = Request(100, 20_000, 0, 101, forward_us=4_900, service_us=980, handover_us=300)
    _, got = chains([first, second])
    assert got == [((100, 10_000, 10_000, 1100), CHAIN), ((101, 20_000, 20_000, 1101), CHAIN)]


def test_the_client_side_leg_answers_with_the_status_the_server_side_leg_got() -> None:
    """Two id-less requests at once, one answered 503 by the app: the exchange carrying the 503 (what
    the server sidecar's leg answered) pairs with the client leg that got the 503."""
    # the exchanges' answers reach the client pod 20 µs apart, the client legs' answers leave 10 µs apart
    # in the other order: by timing alone the 200's exchange would go to the 503's leg
    ok = Request(0, 10_000, 0, 100, forward_us=200, service_us=300, handover_us=40)
    failed = Request(10, 20_000, 0, 101, forward_us=20, service_us=480, handover_us=10, status=503)
    records = [r for q in (ok, failed) for r in q.records()]
    _, got = chains([], records)
    assert got == [((100, 10_000, 10_000, 1100), CHAIN), ((101, 20_000, 20_000, 1101), CHAIN)]


def test_a_path_no_other_request_has_links_the_chain_across_a_sidecar_that_replaces_ids() -> None:
    """The server sidecar replaces the id and strips a /web prefix, and answers the two requests in the
    other order than it forwarded them (by timing alone they cross); each path names one request on
    both sides: both chains are linked through their exchanges (``tls:nested+path``)."""
    one = Request(0, 10_000, 0, 100, xrid="c1", upstream_xrid="s1", path="/web/a?req=1", upstream_path="/a?req=1",
                  service_us=900)
    two = Request(100, 20_000, 0, 101, upstream_xrid="s2", path="/web/a?req=2", upstream_path="/a?req=2",
                  service_us=500)
    _, got = chains([one, two])
    path_chain = ("origin", "tls:nested+path", "l7:req_tcp_seq", "tls:nested+path")
    assert got == [((100, 10_000, 10_000, 1100), path_chain), ((101, 20_000, 20_000, 1101), path_chain)]


def test_two_chains_sharing_their_two_exchanges_take_the_assignment_keeping_the_most_orders() -> None:
    """Both exchanges fit between both pairs of legs (paths name the pairs, 100 µs apart at each
    sidecar); the client sidecar passed the answers back in the other order than the exchanges
    brought them, every other passage kept its order: the exchanges go to the chains that keep three
    of four orders, with no guess."""
    k = Request(0, 10_000, 0, 100, path="/a?k", forward_us=200, app_delay_us=160, service_us=400,
                server_return_us=100, handover_us=360)
    c = Request(100, 20_000, 0, 101, path="/a?c", forward_us=200, app_delay_us=160, service_us=360,
                server_return_us=100, handover_us=200)
    res, got = chains([c, k])
    path_chain = ("origin", "tls:nested+path", "l7:req_tcp_seq", "tls:nested+path")
    assert got == [((100, 10_000, 10_000, 1100), path_chain), ((101, 20_000, 20_000, 1101), path_chain)]
    cols = res.spans.columns
    assert {round(float(x), 2) for x, why in zip(cols["link_confidence"], cols["link_reason"], strict=True)
            if why == "tls:nested+path"} == {0.9}  # not a tie: no guess


def test_an_exchange_carries_its_app_legs_id_to_the_client_side() -> None:
    """Both exchanges fit between the legs sharing the client's id, and the other request is an
    id-less ``GET /ok`` like it: no chain can pick one. The server side pairs by timing; the exchange
    paired with the app leg carrying "a1" then goes to the client leg that sent "a1"."""
    res, got = chains([Request(0, 10_000, 0, 100, xrid="a1"), Request(10, 20_000, 0, 101)])
    assert got == [((100, 10_000, 10_000, 1100), ("origin", "tls:nested+id", "l7:req_tcp_seq", "tls:nested")),
                   ((101, 20_000, 20_000, 1101), CHAIN)]
    cols = res.spans.columns
    by_id = [round(float(x), 2) for x, why in zip(cols["link_confidence"], cols["link_reason"], strict=True)
             if why == "tls:nested+id"]
    assert by_id == [0.95]  # by the id, not a guess between answers 10 µs apart
