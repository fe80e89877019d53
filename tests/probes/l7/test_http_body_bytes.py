"""Body lengths of HTTP/1.x request records: what a proxy passes on while it rewrites the headers."""

from __future__ import annotations

import pytest

from tests.probes.l7.tcpstreams import TcpConversation, get, ok, run

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n"
    b"7;ext=1\r\n, world\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)


@pytest.mark.parametrize(
    ("response", "body_bytes"),
    [
        (ok(b"hello"), 5),
        (ok(b""), 0),
        (ok(b"x" * 3000), 3000),
        (CHUNKED, 12),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 0),
    ],
)
def test_response_body_bytes(response: bytes, body_bytes: int) -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/a"))
    conv.response(response, cuts=[7, 60])
    conv.request(get("/after"))
    conv.response(ok(b"12345678"))
    first, after = run(conv)
    assert (first.resp_body_bytes, after.resp_body_bytes) == (body_bytes, 8)
    assert (first.req_body_bytes, after.req_body_bytes) == (0, 0)


def test_same_body_under_different_headers() -> None:
    """The proxy's two legs: other Host, other headers, other framing; the body lengths agree."""
    down, up = TcpConversation().handshake(), TcpConversation().handshake()
    down.request(b"POST /web/up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    down.response(CHUNKED)
    up.request(get("/up", host="app", extra="Content-Length: 3\r\nX-Request-ID: 1f\r\n").replace(b"GET", b"POST")
               + b"abc")
    up.response(ok(b"hello, world", extra="Connection: keep-alive\r\n"))
    (d,), (u,) = run(down), run(up)
    assert (d.req_body_bytes, d.resp_body_bytes) == (u.req_body_bytes, u.resp_body_bytes) == (3, 12)
    assert d.resp_bytes != u.resp_bytes and d.http_host != u.http_host


def test_body_until_close() -> None:
    conv = TcpConversation().handshake()
    conv.request(get("/old"))
    conv.response(b"HTTP/1.0 200 OK\r\n\r\nbody-to-fin", cuts=[20])
    conv.fin(False)
    (r,) = run(conv)
    assert r.resp_body_bytes == len(b"body-to-fin")
