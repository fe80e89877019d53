"""Property tests: the parsers never crash or hang on arbitrary input, and segmentation never matters."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopscope.probes.l7.dns import DnsDecodeError, DnsTcpFramer, parse_dns
from hopscope.probes.l7.http import HttpConnection
from hopscope.probes.l7.reassembly import DATA
from tests.probes.l7.tcpstreams import TcpConversation, get, ok, run

_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HTTP_PIECES = [
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"zz\r\n",
    b"HEAD /h HTTP/1.0\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\n",
]
http_bytes = st.lists(st.sampled_from(HTTP_PIECES) | st.binary(max_size=40), max_size=30).map(b"".join)


@_FAST
@given(
    client=http_bytes,
    server=http_bytes,
    segments=st.lists(
        st.tuples(st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 0x1F), st.integers(0, 200)),
        max_size=40,
    ),
)
def test_http_connection_survives_arbitrary_segments(
    client: bytes, server: bytes, segments: list[tuple[bool, int, int, int]]
) -> None:
    conn = HttpConnection()
    for ts, (from_client, seq, flags, cut) in enumerate(segments):
        data = client if from_client else server
        conn.segment(ts, from_client, seq, seq ^ 0x5A5A, flags, data[cut : cut + 60])
    conn.flush(len(segments) + 1)
    for ex in conn.take(10**12, 0, 0, final=True):
        assert ex.request.end_offset >= ex.request.start_offset


@_FAST
@given(client=http_bytes, server=http_bytes, isn=st.integers(0, 2**32 - 1), step=st.integers(1, 50))
def test_http_connection_survives_arbitrary_streams_in_order(client: bytes, server: bytes, isn: int, step: int) -> None:
    conn = HttpConnection()
    conn.segment(0, True, isn, 0, 0x02, b"")
    conn.segment(1, False, isn ^ 1, 0, 0x12, b"")
    for i in range(0, max(len(client), len(server)), step):
        conn.segment(2 + i, True, (isn + 1 + i) % 2**32, 0, 0x18, client[i : i + step])
        conn.segment(3 + i, False, ((isn ^ 1) + 1 + i) % 2**32, 0, 0x18, server[i : i + step])
    conn.flush(10**9)
    conn.take(10**12, 0, 0, final=True)


EXCHANGES = [
    (get("/a"), ok(b"abc")),
    (
        get("/b", extra="X-Request-ID: r\r\n"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n",
    ),
    (b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    (b"POST /d HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", ok(b"", "204 No Content")),
]


@settings(max_examples=60, deadline=None)
@given(
    order=st.lists(st.sampled_from(range(len(EXCHANGES))), min_size=1, max_size=5),
    req_cuts=st.lists(st.integers(1, 400), max_size=6),
    resp_cuts=st.lists(st.integers(1, 400), max_size=6),
    isn=st.integers(0, 2**32 - 1),
)
def test_segmentation_and_wrap_never_change_the_records(
    order: list[int], req_cuts: list[int], resp_cuts: list[int], isn: int
) -> None:
    conv = TcpConversation(isn_client=isn, isn_server=(isn * 7) % 2**32).handshake()
    for n in order:
        req, resp = EXCHANGES[n]
        conv.request(req, cuts=req_cuts)
        conv.response(resp, cuts=resp_cuts)
    records = run(conv)
    expected = [(EXCHANGES[n][0].split(b" ")[1].decode(), len(EXCHANGES[n][1])) for n in order]
    assert [(r.path, r.resp_bytes) for r in records] == expected


@_FAST
@given(st.binary(max_size=600))
def test_dns_decoder_raises_only_decode_error(wire: bytes) -> None:
    try:
        msg = parse_dns(wire)
    except DnsDecodeError:
        return
    assert 0 <= msg.dns_id < 65536


@_FAST
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_dns_tcp_framer_takes_any_bytes(chunks: list[bytes]) -> None:
    framer = DnsTcpFramer()
    offset = 0
    for i, chunk in enumerate(chunks):
        for start, _, _, data in framer.feed([(DATA, offset, i, chunk)]):
            assert start >= 0 and len(data) < 65536
        offset += len(chunk)


@settings(max_examples=60, deadline=None)
@given(
    order=st.lists(st.sampled_from(range(len(EXCHANGES))), min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    seed=st.randoms(use_true_random=False),
)
def test_reordering_and_duplicates_within_a_burst_never_change_the_records(
    order: list[int], cuts: list[int], seed: random.Random
) -> None:
    """Segments of one burst (one direction, same ACK) shuffled and some sent twice: same records."""
    conv = TcpConversation().handshake()
    bursts: list[list[int]] = []
    for n in order:
        req, resp = EXCHANGES[n]
        bursts += [conv.request(req, cuts=cuts), conv.response(resp, cuts=cuts)]
    expected = [(r.path, r.status, r.req_tcp_seq, r.resp_tcp_seq, r.req_bytes, r.resp_bytes) for r in run(conv)]
    shuffled = TcpConversation()
    shuffled.packets = conv.packets[:3]
    for burst in bursts:
        picked = [conv.packets[i] for i in burst]
        picked += [p for p in picked if seed.random() < 0.3]  # duplicates (retransmissions)
        seed.shuffle(picked)
        shuffled.packets += picked
    got = [(r.path, r.status, r.req_tcp_seq, r.resp_tcp_seq, r.req_bytes, r.resp_bytes) for r in run(shuffled)]
    assert got == expected
