"""HTTP/1.x request records from crafted TCP conversations (real packets, built with scapy)."""

from __future__ import annotations

from typing import Any

import pytest

from hopscope.probes.l7 import L7Settings
from hopscope.probes.l7.http import HttpMessage, HttpStreamParserReference, http_stream_parser
from hopscope.probes.l7.reassembly import DATA, FIN, GAP
from tests.probes.l7.tcpstreams import MOD, POINT, TcpConversation, feed, get, ok, run, tracker


def _seq(base: int, offset: int) -> int:
    return (base + 1 + offset) % MOD


def test_keep_alive_three_requests_with_seq_anchors_and_times() -> None:
    conv = TcpConversation().handshake()
    reqs = [get("/a"), get("/bb"), get("/ccc")]
    resps = [ok(b"1"), ok(b"22", "404 Not Found"), ok(b"", "500 Oops")]
    times = []
    for req, resp in zip(reqs, resps, strict=True):
        i = conv.request(req)[0]
        j = conv.response(resp)[0]
        times.append((conv.packets[i][0], conv.packets[j][0]))
    records = run(conv)
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", "/a", 200),
        ("GET", "/bb", 404),
        ("GET", "/ccc", 500),
    ]
    req_off = resp_off = 0
    for n, (r, req, resp, (t_req, t_resp)) in enumerate(zip(records, reqs, resps, times, strict=True)):
        assert r.req_tcp_seq == _seq(conv.isn_client, req_off)
        assert r.resp_tcp_seq == _seq(conv.isn_server, resp_off)
        assert (r.req_bytes, r.resp_bytes) == (len(req), len(resp))
        assert (r.req_first_ns, r.req_last_ns, r.resp_first_ns, r.resp_last_ns) == (
            t_req,
            t_req,
            t_resp,
            t_resp,
        )
        assert (r.syn_seq, r.synack_seq) == (conv.isn_client, conv.isn_server)
        assert r.seq_in_flow == n
        assert (r.orig_h, r.orig_p, r.resp_h, r.resp_p) == ("10.1.0.2", 40001, "10.2.0.3", 80)
        assert (r.point, r.host, r.iface, r.hop_kind, r.l7_proto, r.proto) == (
            POINT.point, POINT.host, POINT.iface, POINT.hop_kind, "http", 6,
        )  # fmt: skip
        assert r.http_host == "svc"
        req_off += len(req)
        resp_off += len(resp)
    assert len({r.request_id for r in records}) == 3


def test_request_id_is_deterministic() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/x"))
    conv.response(ok())
    assert [r.request_id for r in run(conv)] == [r.request_id for r in run(conv)]


def test_pipelined_requests_pair_in_order() -> None:
    conv = TcpConversation().handshake()
    reqs = get("/1") + get("/2", extra="Content-Length: 3\r\n") + b"abc" + get("/3")
    conv.request(reqs, cuts=[10, 40])
    conv.response(ok(b"one") + ok(b"two", "201 Created") + ok(b"three", "202 Accepted"), cuts=[5, 50])
    records = run(conv)
    assert [(r.path, r.status) for r in records] == [("/1", 200), ("/2", 201), ("/3", 202)]
    assert records[1].req_bytes == len(get("/2", extra="Content-Length: 3\r\n")) + 3
    assert records[2].req_tcp_seq == _seq(conv.isn_client, len(reqs) - len(get("/3")))
    assert records[2].resp_tcp_seq == _seq(conv.isn_server, len(ok(b"one") + ok(b"two", "201 Created")))


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n"
    b"7;ext=1\r\n, world\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)


@pytest.mark.parametrize("cuts", [[], [3], [40, 50, 51, 52, 60], list(range(1, len(CHUNKED)))])
def test_chunked_response_in_any_segmentation(cuts: list[int]) -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/chunked"))
    conv.response(CHUNKED, cuts=cuts)
    conv.request(get("/after"))
    conv.response(ok(b"x"))
    records = run(conv)
    assert [(r.path, r.status) for r in records] == [("/chunked", 200), ("/after", 200)]
    assert records[0].resp_bytes == len(CHUNKED)
    assert records[1].resp_tcp_seq == _seq(conv.isn_server, len(CHUNKED))


def test_chunked_request_body() -> None:
    conv = TcpConversation().handshake()
    body = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    conv.request(body, cuts=[20, 61])
    conv.response(ok())
    (r,) = run(conv)
    assert (r.method, r.path, r.status, r.req_bytes) == ("POST", "/up", 200, len(body))


def test_headers_split_byte_by_byte() -> None:
    conv = TcpConversation().handshake()
    req = get("/slow", extra="X-Request-ID: abc\r\n")
    i = conv.request(req, cuts=range(1, len(req)))
    conv.response(ok())
    (r,) = run(conv)
    assert (r.path, r.x_request_id, r.req_bytes) == ("/slow", "abc", len(req))
    assert (r.req_first_ns, r.req_last_ns) == (conv.packets[i[0]][0], conv.packets[i[-1]][0])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("X-Request-ID: 5f1c-77\r\n", {"x_request_id": "5f1c-77"}),
        (
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
            {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        ),
        (
            "X-B3-TraceId: 80f198ee56343ba864fe8b2a57d3eff7\r\nX-B3-SpanId: e457b5a2e4d86bd1\r\n",
            {"b3_trace_id": "80f198ee56343ba864fe8b2a57d3eff7", "b3_span_id": "e457b5a2e4d86bd1"},
        ),
        (
            "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90\r\n",
            {"b3_trace_id": "80f198ee56343ba864fe8b2a57d3eff7", "b3_span_id": "e457b5a2e4d86bd1"},
        ),
        ("b3: 0\r\n", {"b3_trace_id": "", "b3_span_id": ""}),
        ("x-REQUEST-id:   spaced  \r\n", {"x_request_id": "spaced"}),
    ],
)
def test_trace_headers(extra: str, expected: dict[str, str]) -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/t", extra=extra))
    conv.response(ok())
    (r,) = run(conv)
    for name, value in expected.items():
        assert getattr(r, name) == value


@pytest.mark.parametrize(
    ("method", "response", "status"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 200),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", 304),
    ],
)
def test_responses_without_body(method: str, response: bytes, status: int) -> None:
    conv = TcpConversation().handshake()
    conv.request(f"{method} /nb HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    conv.response(response)
    conv.request(get("/next"))
    conv.response(ok(b"z"))
    records = run(conv)
    assert [(r.method, r.path, r.status) for r in records] == [(method, "/nb", status), ("GET", "/next", 200)]
    assert records[0].resp_bytes == len(response)
    assert records[1].resp_tcp_seq == _seq(conv.isn_server, len(response))


def test_100_continue_then_final_response() -> None:
    conv = TcpConversation().handshake()
    conv.request(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    j = conv.response(b"HTTP/1.1 100 Continue\r\n\r\n")[0]
    conv.request(b"data")
    conv.response(ok(b"", "201 Created"))
    (r,) = run(conv)
    assert (r.method, r.status) == ("PUT", 201)
    assert r.resp_tcp_seq == _seq(conv.isn_server, 0)
    assert r.resp_first_ns == conv.packets[j][0]
    assert r.resp_bytes == len(b"HTTP/1.1 100 Continue\r\n\r\n") + len(ok(b"", "201 Created"))


def test_connection_close_body_until_fin() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/close", extra="Connection: close\r\n"))
    resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 3000
    idx = conv.response(resp, cuts=[1000, 2000])
    conv.fin(False)
    conv.fin(True)
    (r,) = run(conv)
    assert (r.status, r.resp_bytes) == (200, len(resp))
    assert r.resp_last_ns == conv.packets[idx[-1]][0]


def test_http10_response_until_fin_then_record_on_close_without_flush() -> None:
    conv = TcpConversation().handshake()
    conv.request(b"GET /old HTTP/1.0\r\n\r\n")
    conv.response(b"HTTP/1.0 200 OK\r\n\r\nbody")
    conv.fin(False)
    conv.fin(True)
    trk = tracker()
    feed(trk, conv.packets)
    (r,) = trk.take_records()  # both FINs: the connection is done, no flush needed
    assert (r.path, r.status, r.resp_bytes) == ("/old", 200, len(b"HTTP/1.0 200 OK\r\n\r\nbody"))


def test_request_without_response() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/lost"))
    (r,) = run(conv)
    assert (r.path, r.status, r.resp_tcp_seq, r.resp_first_ns, r.resp_last_ns) == ("/lost", 0, 0, 0, 0)


def test_request_timeout_reports_without_flush() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/slow"))
    trk = tracker(L7Settings(request_timeout_ns=5_000_000_000))
    feed(trk, conv.packets)
    trk.expire(conv.now_ns + 1_000_000_000)
    assert trk.take_records() == []
    trk.expire(conv.now_ns + 6_000_000_000)
    assert [r.path for r in trk.take_records()] == ["/slow"]


def test_retransmissions_are_charged_to_their_message() -> None:
    conv = TcpConversation().handshake()
    i = conv.request(get("/r1"))[0]
    conv.retransmit(i)
    j = conv.response(ok(b"a" * 100), cuts=[30])
    conv.retransmit(j[1])  # the last response segment, after the response was complete
    conv.request(get("/r2"))
    conv.response(ok())
    r1, r2 = run(conv)
    assert (r1.req_retrans, r1.resp_retrans) == (1, 1)
    assert (r2.req_retrans, r2.resp_retrans) == (0, 0)
    assert (r1.status, r1.resp_bytes) == (200, len(ok(b"a" * 100)))
    assert r1.req_first_ns == conv.packets[i][0]  # the original, not the retransmission


def test_partial_overlap_retransmission_delivers_new_tail() -> None:
    conv = TcpConversation().handshake()
    req = get("/overlap")
    conv.request(req[:10])
    conv.seq[True] = (conv.seq[True] - 10) % MOD  # resend the first 10 bytes with the rest
    conv.request(req)
    conv.response(ok())
    (r,) = run(conv)
    assert (r.path, r.status, r.req_retrans, r.req_bytes) == ("/overlap", 200, 1, len(req))


def test_out_of_order_segments_are_reordered() -> None:
    conv = TcpConversation().handshake()
    req = get("/ooo", extra="X-Request-ID: q\r\n")
    i = conv.request(req, cuts=[12, 30])
    conv.swap(i[0], i[2])
    resp = ok(b"b" * 50)
    j = conv.response(resp, cuts=[20])
    conv.swap(j[0], j[1])
    (r,) = run(conv)
    assert (r.path, r.x_request_id, r.status, r.req_bytes, r.resp_bytes) == (
        "/ooo",
        "q",
        200,
        len(req),
        len(resp),
    )
    assert r.req_tcp_seq == _seq(conv.isn_client, 0)
    assert r.req_first_ns == conv.packets[i[2]][0]  # the segment holding the first byte came last
    assert r.resp_first_ns == conv.packets[j[1]][0]


@pytest.mark.parametrize("isn", [MOD - 1, MOD - 5, MOD - 100])
def test_sequence_wrap_around(isn: int) -> None:
    conv = TcpConversation(isn_client=isn, isn_server=isn - 7).handshake()
    conv.request(get("/wrap"), cuts=[3, 9])
    conv.response(ok(b"w" * 40), cuts=[2, 20])
    conv.request(get("/wrap2"))
    conv.response(ok())
    r1, r2 = run(conv)
    assert [(r.path, r.status) for r in (r1, r2)] == [("/wrap", 200), ("/wrap2", 200)]
    assert r1.req_tcp_seq == (isn + 1) % MOD
    assert r2.req_tcp_seq == (isn + 1 + len(get("/wrap"))) % MOD
    assert r2.resp_tcp_seq == (isn - 7 + 1 + len(ok(b"w" * 40))) % MOD


def test_capture_starting_mid_connection_resyncs_on_next_request() -> None:
    conv = TcpConversation().handshake()
    old_request = b"POST /before HTTP/1.1\r\nContent-Length: 20\r\n\r\n" + b"p" * 20
    i = conv.request(old_request, cuts=[50])
    j = conv.response(ok(b"q" * 30), cuts=[40])
    k = conv.request(get("/seen"))
    m = conv.response(ok(b"r", "202 Accepted"))
    # the capture starts inside the first request's body and the first response's body
    conv.packets = [conv.packets[n] for n in (i[1], j[1], k[0], m[0])]
    records = run(conv)
    assert [(r.path, r.status, r.syn_seq, r.synack_seq) for r in records] == [("/seen", 202, 0, 0)]
    assert records[0].req_tcp_seq == _seq(conv.isn_client, len(old_request))
    assert records[0].resp_tcp_seq == _seq(conv.isn_server, len(ok(b"q" * 30)))


def test_capture_starting_mid_connection_server_first() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/missed"))
    j = conv.response(ok(b"late"))
    k = conv.request(get("/seen"))
    m = conv.response(ok(b"r"))
    conv.packets = [conv.packets[n] for n in (j[0], k[0], m[0])]
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    records = trk.take_records()
    assert [(r.path, r.status, r.orig_p, r.resp_p) for r in records] == [("/seen", 200, 40001, 80)]
    assert trk.stats.http_orphan_responses == 1


def test_lost_segment_in_body_keeps_framing() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/big"))
    j = conv.response(ok(b"z" * 300), cuts=[100, 200])
    conv.drop(j[1])  # never captured, never retransmitted
    conv.request(get("/then"))
    conv.response(ok())
    records = run(conv)
    assert [(r.path, r.status) for r in records] == [("/big", 200), ("/then", 200)]


def test_lost_segment_in_headers_resyncs() -> None:
    conv = TcpConversation().handshake()
    i = conv.request(get("/gone", extra="X-Pad: " + "p" * 40 + "\r\n"), cuts=[30])
    conv.drop(i[1])
    j = conv.response(ok(b"resp"))
    conv.request(get("/then"))
    conv.response(ok(b"2", "201 Created"))
    trk = tracker(L7Settings(linger_ns=0))
    feed(trk, conv.packets)
    trk.flush()
    records = trk.take_records()
    paths = sorted((r.path, r.status) for r in records)
    assert ("/then", 201) in paths
    assert all(r.path != "/gone" or r.status in (0, 200) for r in records)
    assert j


def test_rst_ends_the_connection() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/rst"))
    conv.rst(False)
    trk = tracker()
    feed(trk, conv.packets)
    assert [(r.path, r.status) for r in trk.take_records()] == [("/rst", 0)]
    assert trk.tables_size() == (0, 0)


def test_any_port_detection_and_ignoring_non_http() -> None:
    conv = TcpConversation(server=("10.2.0.3", 12345)).handshake()
    conv.request(get("/odd-port"))
    conv.response(ok())
    assert [r.path for r in run(conv)] == ["/odd-port"]
    other = TcpConversation(server=("10.2.0.3", 22)).handshake()
    other.send(True, b"SSH-2.0-OpenSSH_9.2\r\n")
    other.send(False, b"SSH-2.0-OpenSSH_9.2\r\n")
    assert run(other) == []
    assert run(conv, L7Settings(detect_http=False)) == []


def test_connection_table_is_bounded_and_evictions_counted() -> None:
    trk = tracker(L7Settings(max_connections=2))
    for flow_id in range(1, 6):
        conv = TcpConversation(client=("10.1.0.2", 40000 + flow_id)).handshake()
        conv.request(get(f"/{flow_id}"))
        feed(trk, conv.packets, flow_id=flow_id)
    assert trk.tables_size()[0] == 2
    assert trk.stats.evicted_connections == 3
    trk.flush()
    assert sorted(r.path for r in trk.take_records()) == ["/1", "/2", "/3", "/4", "/5"]


def test_pipelined_requests_beyond_the_bound_are_reported_early_and_pairing_stays_aligned() -> None:
    from hopscope.probes.l7.http import MAX_WAITING

    conv = TcpConversation().handshake()
    count = MAX_WAITING + 10
    conv.request(b"".join(get(f"/{n}") for n in range(count)))
    conv.response(b"".join(ok(str(n).encode()) for n in range(count)))
    records = run(conv)
    assert len(records) == count
    answered = [r for r in records if r.status]
    assert len(answered) >= count - 10
    assert all(r.resp_bytes == len(ok(r.path[1:].encode())) for r in answered)


@pytest.mark.parametrize("port", [80, 8080])
def test_non_http_on_an_http_port_is_given_up(port: int) -> None:
    conv = TcpConversation(server=("10.2.0.3", port)).handshake()
    tls_like = bytes([0x16, 0x03, 0x01]) + bytes(range(256)) * 40
    for _ in range(8):
        conv.request(tls_like, cuts=range(1400, len(tls_like), 1400))
        conv.response(tls_like, cuts=range(1400, len(tls_like), 1400))
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    assert trk.take_records() == []
    assert trk.stats.http_given_up == 1
    assert trk.tables_size() == (0, 0)


def test_websocket_upgrade_stops_parsing_both_directions() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/ws", extra="Upgrade: websocket\r\nConnection: Upgrade\r\n"))
    conv.response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    conv.request(b"\x81\x85" + b"GET / HTTP/1.1\r\n\r\n" * 3)  # frames that happen to contain HTTP text
    conv.response(b"\x81\x05HTTP/1.1 200 OK\r\n\r\n")
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    assert [(r.path, r.status) for r in trk.take_records()] == [("/ws", 101)]
    assert trk.stats.http_orphan_responses == 0


def test_lost_last_body_segment_keeps_the_next_message_in_sync() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/tail"))
    j = conv.response(ok(b"t" * 200), cuts=[len(ok(b"t" * 200)) - 50])
    conv.drop(j[1])  # the last 50 body bytes were never captured
    conv.request(get("/next"))
    conv.response(ok(b"n", "201 Created"))
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    records = trk.take_records()
    assert [(r.path, r.status) for r in records] == [("/tail", 200), ("/next", 201)]
    assert trk.stats.http_resyncs == 0  # framing carried on without searching


# --- the stream parser alone (the kernel's HttpFramer when built, and always the reference) ----------

_PARSERS = [pytest.param(http_stream_parser, id="default"),
            pytest.param(HttpStreamParserReference, id="reference")]  # fmt: skip


def _frame(factory: Any, is_request: bool, *events: tuple[int, int, int, Any]) -> list[HttpMessage]:
    done: list[HttpMessage] = []
    parser = factory(is_request, lambda m: "GET", done.append, synced=True)
    parser.feed(list(events))
    return done


@pytest.mark.parametrize("factory", _PARSERS)
def test_a_response_with_content_length_0_ends_with_its_head(factory: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    (msg,) = _frame(factory, False, (DATA, 0, 7, head))  # no further byte needed to know it is complete
    assert (msg.complete, msg.truncated, msg.end_offset, msg.last_ns, msg.body_bytes) == (True, False, len(head), 7, 0)


@pytest.mark.parametrize("factory", _PARSERS)
def test_a_body_until_close_with_a_gap_stays_truncated_at_fin(factory: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    (msg,) = _frame(factory, False, (DATA, 0, 1, head + b"ab"), (GAP, len(head) + 2, 2, 10),
                    (DATA, len(head) + 12, 3, b"cd"), (FIN, len(head) + 14, 4, 0))  # fmt: skip
    assert (msg.complete, msg.truncated, msg.body_bytes) == (True, True, 14)


@pytest.mark.parametrize("factory", _PARSERS)
@pytest.mark.parametrize("size", [b"0x5", b"+5", b"5_0", b"-0", b"\xb5", b"1000000000000000"])
def test_a_chunk_size_that_is_not_1_to_15_hex_digits_is_a_bad_chunk(factory: Any, size: bytes) -> None:
    """Python's int(x, 16) takes a sign, a 0x prefix and underscores; HTTP's chunk-size does not."""
    stream = (b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + size
              + b"\r\nhello\r\n0\r\n\r\nGET /n HTTP/1.1\r\n\r\n")  # fmt: skip
    msgs = _frame(factory, True, (DATA, 0, 1, stream))
    assert [(m.target, m.truncated) for m in msgs] == [("/c", True), ("/n", False)]  # resynced on the next request


@pytest.mark.parametrize("factory", _PARSERS)
@pytest.mark.parametrize("value", [b"\xb2", b"1" * 19, b"1" * 5000, b"-1", b"1 2"])
def test_a_content_length_that_is_not_1_to_18_ascii_digits_is_ignored(factory: Any, value: bytes) -> None:
    """'²' is a digit to str.isdigit but not to int(), and int() refuses 5000 digits: neither raises."""
    stream = b"GET /a HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    msgs = _frame(factory, True, (DATA, 0, 1, stream))
    assert [(m.target, m.body_bytes, m.truncated) for m in msgs] == [("/a", 0, False), ("/b", 0, False)]
