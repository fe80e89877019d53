"""The compiled L7 steps (probes/csrc/l7.c) against their Python twins.

``parse_head`` (the ``_l7`` kernel behind it) and ``parse_head_reference`` read the same header blocks:
generated ones that mix valid and broken request and status lines (every method, HTTP/1.0 and 1.1,
whitespace and CRs in odd places, a reason phrase with a tab or a CR), the recorded and framing headers
in any letter case among others, values with surrounding whitespace (vertical tab and form feed too),
latin-1 bytes, a header repeated, a missing colon, no line end; and arbitrary bytes. Every
``HttpMessage`` field, the framing result (chunked, content length) and any error must be equal. The
kernel's payload hash is checked against ``hopscope.ids.payload_hash``. The kernel's ``HttpFramer`` and
``HttpStreamParserReference`` frame generated streams (valid and broken messages of every framing,
garbage, any segmentation, gaps, FIN, mid-stream starts, protocol switches) with equal callbacks,
messages and counters. ``parse_dns`` (the kernel) and ``parse_dns_reference`` decode generated DNS
messages (questions and A, AAAA, CNAME and other answers, names with upper-case, non-ASCII and control
bytes, compression pointers forward, backward, looping and past the end, reserved label types, counts
larger than the records present, cuts at every length) and arbitrary bytes: equal messages, or
DnsDecodeError with the same text. The kernel's ``feed_rows`` and ``feed_rows_reference`` hand every
block of the lab captures to a logging tracker with equal calls. The kernel's ``TcpStream`` and
``StreamReassembler`` take generated segment streams (reordered, duplicated, overlapping, dropped, past
the sequence wrap, with SYN, ACKs, FIN, flushes, tight limits) with equal events and state after every
step. An ``HttpConnection`` on the kernel's per-segment step (``HttpSegments``) and one on
``HttpSegmentsReference`` take generated HTTP conversations (cut anywhere, reordered, repeated, lost,
with ACKs, FINs and an RST) with equal exchanges and state after every segment. End to end, the
tracker's records of the lab captures are the same with the kernel and with the reference path.
"""

from __future__ import annotations

import gc
import itertools
import os
import struct
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopscope.ids import payload_hash
from hopscope.probes import kernels
from hopscope.probes.l7 import http
from hopscope.probes.l7.dns import DnsDecodeError, parse_dns, parse_dns_reference
from hopscope.probes.l7.http import HttpMessage, parse_head, parse_head_reference
from hopscope.probes.l7.reassembly import DATA, FIN, GAP

_l7 = kernels.load("_l7")
# CI (HOPSCOPE_REQUIRE_SERVICES=1) builds the kernels: there a missing kernel fails instead of skipping
pytestmark = pytest.mark.skipif(
    _l7 is None and (os.environ.get("HOPSCOPE_REQUIRE_SERVICES") != "1" or not kernels.enabled()),
    reason="the _l7 kernel is not built (or HOPSCOPE_NATIVE=0)",
)

_NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
          b"Connection", b"X-Request-ID", b"x-request-id", b"traceparent", b"Traceparent", b"X-B3-TraceId",
          b"x-b3-spanid", b"b3", b"B3", b"Accept", b"User-Agent", b"Hostname", b"X-Request-IDs", b"b", b""]  # fmt: skip
_VALUES = [b"example.com", b" 12 ", b"12", b"1x", b"chunked", b"gzip, chunked", b"chunked, gzip", b"close",
           b"Keep-Alive", b"keep-alive, close", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
           b"abc-def", b"abc", b"\x0b\x0cv\x0b", b"\tcaf\xe9\t", b"", b" ", b"a:b", b"\xff\x80", b"7\r"]  # fmt: skip
_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"get",
            b"GETX", b"BREW"]  # fmt: skip



def _mostly(valid: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``valid`` three times in four, else one of ``odd`` (so most generated lines parse)."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(odd))


request_line = st.builds(
    lambda m, sp1, target, sp2, ver, end: m + sp1 + target + sp2 + ver + end,
    _mostly(_METHODS[:9], [b"get", b"GETX", b"BREW", b""]),
    _mostly([b" "], [b"  ", b"\t", b""]),
    _mostly([b"/", b"/a?b=c", b"*", b"http://x/y", b"/caf\xe9"], [b"/a\x0bb", b"", b"/a b", b"/HTTP/1.1"]),
    _mostly([b" "], [b"  ", b""]),
    _mostly([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]),
    _mostly([b"", b"\r"], [b"\r\r", b"\r \r"]),
)
status_line = st.builds(
    lambda ver, sp, code, reason, end: ver + sp + code + reason + end,
    _mostly([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"HTTP/1.1x"]),
    _mostly([b" "], [b"  ", b""]),
    _mostly([b"200", b"404", b"101", b"304"], [b"20", b"2000", b"abc"]),
    _mostly([b"", b" OK", b"\tOK", b" caf\xe9"], [b" Not\rFound", b"OK", b" "]),
    _mostly([b"", b"\r"], [b"\r\r"]),
)
header = st.builds(
    lambda name, colon, value, end: name + colon + value + end,
    st.sampled_from(_NAMES),
    st.sampled_from([b":", b": ", b" :", b""]),
    st.sampled_from(_VALUES),
    st.sampled_from([b"\r\n", b"\n", b"\r\r\n"]),
)
block = st.builds(
    lambda first, sep, headers, cut: (first + sep + b"".join(headers))[: len(first + sep + b"".join(headers)) - cut],
    st.one_of(request_line, status_line),
    st.sampled_from([b"\r\n", b"\n"]),
    st.lists(header, max_size=8),
    st.integers(0, 2),
)


def _parse(func: Any, data: bytes, is_request: bool) -> tuple[Any, ...]:
    msg = HttpMessage(7, 11)
    try:
        head = func(data, is_request, msg)
    except Exception as exc:  # both must fail alike (e.g. a Content-Length of digits int() refuses)
        return ("error", type(exc).__name__)
    fields = tuple(getattr(msg, name) for name in HttpMessage.__slots__)
    return fields if head is None else (*fields, head.chunked, head.content_length)


def _same(data: bytes) -> None:
    for is_request in (True, False):
        native, reference = _parse(parse_head, data, is_request), _parse(parse_head_reference, data, is_request)
        assert native == reference, (data, is_request)


def test_the_kernel_is_the_one_parse_head_uses() -> None:
    assert http._L7 is _l7
    assert tuple(_l7.HEAD_NAMES) == tuple(name for name, _ in http._NEEDLES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block)
def test_generated_header_blocks(data: bytes) -> None:
    _same(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    _same(data)
    _same(b"GET / HTTP/1.1\r\n" + data)
    _same(b"HTTP/1.1 200 OK\n" + data)


def test_known_blocks() -> None:
    cases = [
        b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Request-ID:  r1 \r\nb3: t-s-1\r\nX-B3-SpanId: s2",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 204\r\nconnection: close",
        b"CONNECT host:443 HTTP/1.1\r\nHost: host:443",
        b"GET /a HTTP/1.1\r\nContent-Length: \xb2",  # '²' is a digit to str.isdigit, not to int(): ignored
        b"GET /a HTTP/1.1\r\nHost: first\r\nHost: second",
        b"", b"\n", b"GET", b"HTTP/1.1 200\r\n\r\n",
    ]  # fmt: skip
    for data in cases:
        _same(data)
    msg = HttpMessage(0, 0)
    head = parse_head(cases[0], True, msg)
    assert head is not None and head.content_length == 5
    assert (msg.method, msg.target, msg.host, msg.x_request_id, msg.b3_trace_id, msg.b3_span_id) == (
        "GET", "/a", "x", "r1", "t", "s2")  # fmt: skip
    assert _parse(parse_head, cases[4], True)[-1] is None  # no Content-Length


# --- HttpFramer (the kernel) against HttpStreamParserReference --------------------------------------

_CHUNK_SIZES = [b"5", b"05", b"a", b"A", b" 5 ", b"5;ext=1", b"5 ; x", b"zz", b"0x5", b"-1", b"+5", b"", b"1_0",
                b"fffffffffffffff", b"1000000000000000", b"\xb5"]  # fmt: skip


def _chunked_body(chunks: list[bytes], sizes: list[bytes], trailers: list[bytes]) -> bytes:
    """Chunks, some under an odd size line (from ``sizes``), then the last chunk and trailer lines."""
    out = []
    for n, data in enumerate(chunks):
        size = b"%x" % len(data) if n >= len(sizes) else sizes[n]
        out.append(size + b"\r\n" + data + b"\r\n")
    return b"".join(out) + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


framing = st.one_of(
    st.builds(lambda body, delta: (b"Content-Length: %d\r\n" % max(0, len(body) + delta), body),
              st.binary(max_size=60), st.sampled_from([0, 0, 0, -1, 3])),
    st.builds(lambda chunks, sizes, trailers: (b"Transfer-Encoding: chunked\r\n",
                                               _chunked_body(chunks, sizes, trailers)),
              st.lists(st.binary(min_size=1, max_size=20), max_size=3),
              st.lists(st.sampled_from(_CHUNK_SIZES), max_size=2),
              st.lists(st.sampled_from([b"X-T: 1", b"", b" ", b"a"]), max_size=2)),
    st.builds(lambda body: (b"", body), st.binary(max_size=30)),
    st.just((b"Content-Length: 0\r\n", b"")),
    st.just((b"Content-Length: 99999999999999999999\r\n", b"x")),
)  # fmt: skip
_VALID_REQUESTS = [b"GET /a HTTP/1.1", b"POST /p?q=1 HTTP/1.1", b"HEAD /h HTTP/1.0", b"CONNECT a:443 HTTP/1.1",
                   b"PUT * HTTP/1.0", b"DELETE /d HTTP/1.1"]  # fmt: skip
_VALID_RESPONSES = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Switching",
                    b"HTTP/1.1 204 No Content", b"HTTP/1.1 304", b"HTTP/1.1 404 Not Found",
                    b"HTTP/1.1 201 X"]  # fmt: skip


def http_stream(is_request: bool) -> st.SearchStrategy[bytes]:
    """Messages of one direction (start lines mostly valid), a few with broken parts, garbage between."""
    valid = _VALID_REQUESTS if is_request else _VALID_RESPONSES
    first = st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid),
                      request_line if is_request else status_line)  # fmt: skip
    message = st.builds(
        lambda first, headers, frame, term: first + b"\r\n" + b"".join(headers) + frame[0] + term + frame[1],
        first,
        st.lists(header, max_size=4),
        framing,
        st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b""]),  # the blank line (the framing header has its CRLF)
    )
    return st.lists(st.one_of(message, message, message, st.binary(max_size=20)), min_size=1, max_size=6).map(b"".join)


stream_of_a_direction = st.booleans().flatmap(
    lambda is_request: st.tuples(st.just(is_request), http_stream(is_request))
)


def _events(data: bytes, cuts: list[int], dropped: set[int], fin: bool) -> list[tuple[int, int, int, Any]]:
    """``data`` as reassembly events: a segment per cut, the ``dropped`` ones as gaps, then FIN."""
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    events: list[tuple[int, int, int, Any]] = []
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        events.append((GAP, lo, 1000 + n, hi - lo) if n in dropped else (DATA, lo, 1000 + n, data[lo:hi]))
    if fin:
        events.append((FIN, len(data), 5000, 0))
    return events


def _run_parser(factory: Any, is_request: bool, synced: bool, events: list[tuple[int, int, int, Any]],
                methods: list[str], tunnel_at: int, batch: int) -> list[Any]:  # fmt: skip
    """Everything a parser shows: each callback with the message's fields then, the parser's counters
    after each call, and every message's fields at the end."""
    log: list[Any] = []
    seen: list[HttpMessage] = []

    def fields(msg: HttpMessage) -> tuple[Any, ...]:
        if not any(m is msg for m in seen):
            seen.append(msg)
        return (next(i for i, m in enumerate(seen) if m is msg), *(getattr(msg, n) for n in HttpMessage.__slots__))

    def on_head(msg: HttpMessage) -> str:
        log.append(("head", fields(msg)))
        return methods[len(log) % len(methods)] if methods else ""

    def on_done(msg: HttpMessage) -> None:
        log.append(("done", fields(msg)))

    parser = factory(is_request, on_head, on_done, synced=synced)
    for start in range(0, len(events), batch):
        if start <= tunnel_at < start + batch:
            parser.tunnel()
        parser.feed(events[start : start + batch])
        log.append(("state", parser.mode, parser.resyncs, parser.skipped_bytes))
    log.append(("end", [fields(m) for m in seen]))
    return log


def _framer(is_request: bool, on_head: Any, on_done: Any, *, synced: bool) -> Any:
    return _l7.HttpFramer(HttpMessage, is_request, on_head, on_done, synced)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_of_a_direction, st.lists(st.integers(0, 10**6), max_size=12), st.sets(st.integers(0, 12), max_size=2),
       st.booleans(), st.booleans(), st.lists(st.sampled_from(["GET", "HEAD", "CONNECT", ""]), max_size=4),
       st.integers(-1, 14), st.sampled_from([1, 1, 2, 50]))  # fmt: skip
def test_framer_equals_the_reference(stream: tuple[bool, bytes], cuts: list[int], dropped: set[int], fin: bool,
                                     synced: bool, methods: list[str], tunnel_at: int, batch: int) -> None:  # fmt: skip
    """Generated streams of valid and broken messages (Content-Length, chunked with odd size lines and
    trailers, until close, no body; 1xx, 101, 204, 304, HEAD and CONNECT answers; garbage between), cut
    into segments anywhere, some lost (gaps), FIN or not, mid-stream starts, a protocol switch at any
    point: the kernel's callbacks, messages and counters equal the reference's."""
    is_request, data = stream
    events = _events(data, cuts, dropped, fin)
    args = (is_request, synced, events, methods, tunnel_at, batch)
    assert _run_parser(_framer, *args) == _run_parser(http.HttpStreamParserReference, *args)


def test_framer_known_streams() -> None:
    """Pipelined requests with a chunked one and garbage before the last, split byte by byte and whole, data
    after FIN (ignored)."""
    data = (b"GET /a HTTP/1.1\r\nHost: h\r\nX-Request-ID: r1\r\n\r\n"
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"
            b"PUT /c HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody"
            b"garbage\r\nDELETE /d HTTP/1.1\r\n\r\n")  # fmt: skip
    for cuts in ([], list(range(len(data)))):
        for synced in (True, False):
            events = [*_events(data, cuts, set(), True), (DATA, len(data), 9, b"GET / HTTP/1.1\r\n\r\n")]
            args = (True, synced, events, [], -1, 1)
            native = _run_parser(_framer, *args)
            assert native == _run_parser(http.HttpStreamParserReference, *args)
    heads = [entry[1] for entry in native if entry[0] == "head"]
    assert [h[1 + HttpMessage.__slots__.index("method")] for h in heads] == ["GET", "POST", "PUT", "DELETE"]


@pytest.mark.parametrize("is_request", [True, False])
@pytest.mark.parametrize("mss", [300, 1448, 70_000])
def test_framer_limits_equal_the_reference(is_request: bool, mss: int) -> None:
    """The bounds the generated streams are too short to reach: garbage past SEEK_KEEP_BYTES, a header
    block past MAX_HEAD_BYTES, a bad start line with 512 bytes and no blank line, a chunk-size line past
    1,024 bytes, a trailer line past MAX_HEAD_BYTES; each followed by a good message."""
    good = b"GET /ok HTTP/1.1\r\n\r\n" if is_request else b"HTTP/1.1 204 No Content\r\n\r\n"
    first = b"POST /c HTTP/1.1\r\n" if is_request else b"HTTP/1.1 200 OK\r\n"
    chunked = first + b"Transfer-Encoding: chunked\r\n\r\n"
    streams = [
        b"x" * (http.SEEK_KEEP_BYTES * 2 + 5) + b"\n" + good,
        first + b"Content-Length: 0\r\nX-Long: " + b"a" * (http.MAX_HEAD_BYTES + 3000) + b"\r\n\r\n" + good,
        b"BREW /pot HTTP/1.1\r\n" + b"H: v\r\n" * 120 + good,
        chunked + b"1" * 2000 + b"\r\n" + good,
        chunked + b"3\r\nabc\r\n0\r\nT: " + b"t" * (http.MAX_HEAD_BYTES + 3000) + b"\r\n\r\n" + good,
    ]
    for n, data in enumerate(streams):
        events = _events(data, list(range(mss, len(data), mss)), set(), n % 2 == 0)
        args = (is_request, True, events, ["GET"], -1, 1)
        native = _run_parser(_framer, *args)
        assert native == _run_parser(http.HttpStreamParserReference, *args), n
        assert any(entry[0] == "done" for entry in native), n


def test_framer_refuses_a_reentrant_call_and_passes_callback_errors_on() -> None:
    def again(msg: HttpMessage) -> str:
        framer.data(100, 0, b"x")
        return ""

    framer = _l7.HttpFramer(HttpMessage, True, again, lambda m: None, True)
    with pytest.raises(RuntimeError, match="own on_head"):
        framer.data(0, 0, b"GET / HTTP/1.1\r\n\r\n")

    def boom(msg: HttpMessage) -> str:
        raise KeyError("from on_head")

    for factory in (_framer, http.HttpStreamParserReference):
        parser = factory(True, boom, lambda m: None, synced=True)
        with pytest.raises(KeyError, match="from on_head"):
            parser.data(0, 0, b"GET / HTTP/1.1\r\n\r\n")


def test_framer_needs_the_message_slots_it_fills() -> None:
    class Short:
        __slots__ = HttpMessage.__slots__[:-1]

    class Renamed:
        __slots__ = (*HttpMessage.__slots__[:-1], "other")

    for cls in (Short, Renamed):
        with pytest.raises(RuntimeError, match="rebuild"):
            _l7.HttpFramer(cls, True, lambda m: "", lambda m: None, True)


def test_framers_of_a_dropped_connection_are_collected() -> None:
    """A connection and its kernel parsers hold each other (callbacks): the garbage collector frees them."""
    def framers() -> int:
        gc.collect()
        return sum(isinstance(obj, _l7.HttpFramer) for obj in gc.get_objects())

    before = framers()
    conns = [http.HttpConnection() for _ in range(20)]
    for conn in conns:
        conn.segment(1, True, 1000, 0, 0x02, b"")
        conn.segment(2, True, 1001, 0, 0x18, b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\npartial")
        conn.segment(3, False, 7, 1001, 0x18, b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert framers() == before + 40
    del conns, conn
    assert framers() == before


@given(st.binary(max_size=300))
def test_payload_hash(data: bytes) -> None:
    assert _l7.payload_hash(data) == payload_hash(data)
    assert _l7.payload_hash(memoryview(data)) == payload_hash(data)


def test_lab_capture_records_equal_on_both_paths(tmp_path: Any) -> None:
    """``hopscope requests`` on a lab capture prints the same records with the kernel and without."""
    from pathlib import Path

    samples = sorted((Path(__file__).resolve().parents[3] / "samples").rglob("*.pcap"))
    sample = max(samples, key=lambda p: p.stat().st_size)
    exe = str(Path(sys.executable).with_name("hopscope"))
    outs = []
    for native in ("1", "0"):
        env = {**os.environ, "HOPSCOPE_NATIVE": native}
        proc = subprocess.run([exe, "requests", str(sample)], capture_output=True, env=env, check=True)
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert outs[0].count(b"\n") > 10


# --- TcpStream -------------------------------------------------------------------------------------

_STATE = ("base_seq", "started_mid_stream", "next_offset", "pending_bytes", "fin_offset", "fin_sent",
          "retrans_ranges", "retrans_segments", "ooo_segments", "gap_bytes")  # fmt: skip


@st.composite
def stream_ops(draw: Any) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
    """Limits and the operations of one direction: segments of a stream (in order, reordered,
    duplicated, overlapping, dropped, with a FIN, from before the ISN, far ahead), SYNs, ACKs, flushes."""
    isn = draw(st.sampled_from([0, 1000, 2**32 - 1, 2**32 - 300, 2**31]))
    size = draw(st.integers(0, 1500))
    cuts = sorted(set(draw(st.lists(st.integers(0, size), max_size=12))) | {0, size})
    pieces = [(a, b) for a, b in itertools.pairwise(cuts)]
    ops: list[tuple[Any, ...]] = []
    if draw(st.booleans()):
        ops.append(("syn", isn))
    order = draw(st.permutations(pieces)) if draw(st.booleans()) else pieces
    for n, (a, b) in enumerate(order):
        kind = draw(st.sampled_from(["seg", "seg", "seg", "seg", "dup", "overlap", "drop", "ack", "far", "flush"]))
        fin = b == size and draw(st.booleans())
        if kind == "drop":
            continue
        if kind == "overlap":
            a = max(0, a - draw(st.integers(1, 40)))
        if kind == "far":
            ops.append(("seg", n, isn + 1 + a + (1 << 30) + 7, b - a, False))
        if kind == "ack":
            ops.append(("ack", isn + 1 + draw(st.integers(0, size + 10)), n))
        if kind == "flush":
            ops.append(("flush", n))
        ops.append(("seg", n, isn + 1 + a - draw(st.sampled_from([0, 0, 0, 2**32])), b - a, fin))
        if kind == "dup":
            ops.append(("seg", n, isn + 1 + a, b - a, fin))
    ops.append(("seg", 99, isn + 1 + size, 0, True))
    ops.append(("flush", 100))
    limits = draw(st.sampled_from([{}, {"max_pending_segments": 3}, {"max_pending_bytes": 200},
                                   {"max_retrans_ranges": 2}]))  # fmt: skip
    return limits, ops


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_ops())
def test_tcp_stream_equals_the_reference(case: tuple[dict[str, int], list[tuple[Any, ...]]]) -> None:
    """The kernel's TcpStream and StreamReassembler give equal events and equal state after every step."""
    from hopscope.probes.l7.reassembly import StreamReassembler

    limits, ops = case
    data = bytes(range(256)) * 6
    pair = (_l7.TcpStream(**limits), StreamReassembler(**limits))
    for op in ops:
        out = []
        for r in pair:
            if op[0] == "syn":
                out.append(r.syn(op[1]))
            elif op[0] == "ack":
                out.append(r.acked(op[1] % 2**32, op[2]))
            elif op[0] == "flush":
                out.append(r.flush(op[1]))
            else:
                _, ts, seq, length, fin = op
                start = (seq - 1) % 256
                out.append(r.segment(ts, seq % 2**32, data[start : start + length], fin))
        assert out[0] == out[1], op
        assert [getattr(pair[0], k) for k in _STATE] == [getattr(pair[1], k) for k in _STATE], op
    assert pair[0].seq_of(5) == pair[1].seq_of(5) and pair[0].offset_of(7) == pair[1].offset_of(7)


# --- HttpSegments ----------------------------------------------------------------------------------


def _reference_connection() -> type:
    """``HttpConnection`` on the Python per-segment step (``HttpSegmentsReference``) instead of the
    kernel's ``HttpSegments``: the same class body, the other base."""
    from hopscope.probes.l7.http import HttpConnection, HttpSegmentsReference

    body = {k: v for k, v in vars(HttpConnection).items()
            if k not in ("__dict__", "__weakref__") and k not in HttpConnection.__slots__}  # fmt: skip
    return type("HttpConnectionReference", (HttpSegmentsReference,), body)


def _connection_state(conn: Any) -> tuple[Any, ...]:
    def msg(m: Any) -> Any:
        return None if m is None else tuple(getattr(m, k) for k in HttpMessage.__slots__)

    exchanges = [(ex.index, msg(ex.request), msg(ex.response), ex.resp_start_offset, ex.resp_first_ns)
                 for ex in (*conn.overflow, *conn.waiting)]  # fmt: skip
    streams = [tuple(getattr(r, k) for k in _STATE) for r in (conn.client, conn.server)]
    parsers = [None if p is None else (p.mode, p.resyncs, p.skipped_bytes)
               for p in (conn.request_parser, conn.response_parser)]  # fmt: skip
    return (exchanges, streams, parsers, conn.closed, conn.last_ns, conn.orphan_responses, conn.next_index)


@st.composite
def http_conversation(draw: Any) -> list[tuple[int, bool, int, int, int, bytes]]:
    """Segments (ts, from_client, seq, ack, flags, payload) of one HTTP connection: requests and
    responses cut anywhere, some segments reordered, repeated or lost, ACKs, FINs, maybe an RST."""
    n = draw(st.integers(1, 4))
    bodies = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))
    client = b"".join(b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (i, k) + b"q" * k
                      for i, k in enumerate(bodies))  # fmt: skip
    server = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % k + b"r" * k for k in bodies)
    isn = (draw(st.sampled_from([1000, 2**32 - 100])), draw(st.sampled_from([5000, 2**32 - 30])))
    handshake = draw(st.booleans())
    pieces = []
    for side, data in ((True, client), (False, server)):
        cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))) | {0, len(data)})
        pieces += [(side, a, data[a:b]) for a, b in itertools.pairwise(cuts)]
    pieces = draw(st.permutations(pieces)) if draw(st.booleans()) else pieces
    segs: list[tuple[int, bool, int, int, int, bytes]] = []
    if handshake:
        segs += [(0, True, isn[0], 0, 0x02, b""), (1, False, isn[1], isn[0] + 1, 0x12, b"")]
    for side, at, data in pieces:
        fate = draw(st.sampled_from(["send", "send", "send", "twice", "lost"]))
        if fate == "lost":
            continue
        own, peer, peer_len = (isn[0], isn[1], len(server)) if side else (isn[1], isn[0], len(client))
        ack = (peer + 1 + draw(st.integers(0, peer_len))) % 2**32
        seg = (len(segs) + 2, side, (own + 1 + at) % 2**32, ack, 0x18, data)
        segs += [seg, seg] if fate == "twice" else [seg]
    for side in draw(st.permutations([True, False])):
        own, end = (isn[0], len(client)) if side else (isn[1], len(server))
        segs.append((len(segs) + 2, side, (own + 1 + end) % 2**32, 0, 0x11, b""))
    if draw(st.integers(0, 5)) == 0:
        segs.insert(draw(st.integers(0, len(segs))), (len(segs) + 2, True, isn[0] + 1, 0, 0x04, b""))
    return segs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http_conversation())
def test_http_segments_equal_the_reference(segs: list[tuple[int, bool, int, int, int, bytes]]) -> None:
    """An HttpConnection on the kernel's per-segment step and one on HttpSegmentsReference: the same
    exchanges, reassembly, parsers and flags after every segment and after the final flush."""
    from hopscope.probes.l7.http import HttpConnection

    kernel, reference = HttpConnection(), _reference_connection()()
    assert type(kernel).__mro__[1] is _l7.HttpSegments
    for seg in segs:
        kernel.segment(*seg)
        reference.segment(*seg)
        assert _connection_state(kernel) == _connection_state(reference), seg
    kernel.flush(10**6)
    reference.flush(10**6)
    assert _connection_state(kernel) == _connection_state(reference)
    assert kernel.take(10**7, 0, 0, True) is not None


def test_http_segments_refuses_bad_calls() -> None:
    """Wrong arguments are a TypeError; a connection whose reassemblers are not set says so."""
    seg = _l7.HttpSegments()
    with pytest.raises(AttributeError, match="client and server"):
        seg.segment(1, True, 0, 0, 0x18, b"x")
    with pytest.raises(TypeError):
        seg.segment(1, True, 0)  # type: ignore[call-arg]


# --- feed_rows -------------------------------------------------------------------------------------


class _Calls:
    """A tracker stand-in that logs every call, its arguments and their types; it tracks the TCP
    flows whose ids are even after their first segment (so both address branches are taken)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.tracked: dict[int, None] = {}

    def tcp_segment(self, *args: Any) -> None:
        self.calls.append(("tcp", *((type(a), a) for a in args)))
        if args[0] % 2 == 0:
            self.tracked[args[0]] = None

    def udp_datagram(self, *args: Any) -> None:
        self.calls.append(("udp", *((type(a), a) for a in args)))


def _feed_both(block: Any, rows: Any) -> list[list[tuple[Any, ...]]]:
    from hopscope.probes.l7.feed import _FED, _NO_ADDR, feed_rows_reference

    logs = []
    for feed_rows in (_l7.feed_rows, feed_rows_reference):
        calls = _Calls()
        cols = [getattr(block, name)[rows] for name in _FED]

        def ends(i: int, sp: int, dp: int) -> Any:
            return (block.src_str(i), sp), (block.dst_str(i), dp)

        feed_rows(rows, *cols, block.buf, calls.tracked, calls.tcp_segment, calls.udp_datagram, ends, _NO_ADDR)
        logs.append(calls.calls)
    return logs


def test_feed_rows_equals_the_reference() -> None:
    """The kernel's row loop makes the same tracker calls, with arguments of the same values and types,
    as ``feed_rows_reference`` on every block of the lab captures (HTTP, DNS over UDP and TCP, TLS)."""
    from pathlib import Path

    import numpy as np

    from hopscope.probes.analyze import iter_capture
    from hopscope.probes.l7 import CapturePoint, L7Tracker
    from hopscope.probes.l7.feed import BlockFeeder

    samples = sorted((Path(__file__).resolve().parents[3] / "samples" / "lab").glob("*.pcap"))
    if not samples:
        pytest.skip("no lab samples")
    calls = 0
    for sample in samples:
        feeder = BlockFeeder(L7Tracker(CapturePoint("p")))
        for block, _ in iter_capture(sample):
            if not block.count:
                continue
            rows = feeder.select(block)
            kernel, reference = _feed_both(block, rows)
            assert kernel == reference
            calls += len(kernel)
            every = np.arange(block.count, dtype=np.intp)  # every row, whatever its protocol or payload
            kernel, reference = _feed_both(block, every)
            assert kernel == reference
    assert calls > 1000


def test_feed_rows_refuses_bad_columns() -> None:
    """Columns of another item size or length, or a payload outside the buffer, are a ValueError before
    any call; a tracker's exception passes on and stops the loop."""
    import numpy as np

    def cols(n: int, off: int = 0) -> list[Any]:
        return [np.arange(n, dtype=np.intp), np.full(n, 2, np.uint64), np.zeros(n, np.int64), np.ones(n, bool),
                np.full(n, 6, np.uint8), np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.zeros(n, np.uint32),
                np.zeros(n, np.uint32), np.zeros(n, np.uint8), np.full(n, off, np.int64),
                np.full(n, 4, np.uint32)]  # fmt: skip

    buf = np.zeros(8, np.uint8)
    calls = _Calls()
    ends = lambda i, sp, dp: (("a", sp), ("b", dp))  # noqa: E731
    args = (buf, calls.tracked, calls.tcp_segment, calls.udp_datagram, ends, ("", 0))
    bad = cols(3)
    bad[7] = np.zeros(3, np.uint64)  # seq of 8-byte items
    with pytest.raises(ValueError, match="seq"):
        _l7.feed_rows(*bad, *args)
    short = cols(3)
    short[2] = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="ts_ns"):
        _l7.feed_rows(*short, *args)
    assert calls.calls == []
    with pytest.raises(ValueError, match="outside the buffer"):
        _l7.feed_rows(*cols(2, off=6), *args)
    assert calls.calls == []

    def boom(*_: Any) -> None:
        raise KeyError("tracker")

    with pytest.raises(KeyError, match="tracker"):
        _l7.feed_rows(*cols(3), buf, {}, boom, boom, ends, ("", 0))
    _l7.feed_rows(*cols(3), *args)
    assert [c[1] for c in calls.calls] == [(int, 2)] * 3


# --- DNS -------------------------------------------------------------------------------------------

_LABELS = [b"www", b"Example", b"COM", b"a", b"caf\xe9", b"x\x00y", b"a.b", b"k" * 63]
plain_name = st.lists(st.sampled_from(_LABELS), max_size=5).map(
    lambda ls: b"".join(bytes([len(x)]) + x for x in ls) + b"\0"
)
pointer_name = st.builds(
    lambda ls, ptr: b"".join(bytes([len(x)]) + x for x in ls) + bytes([0xC0 | ptr >> 8, ptr & 255]),
    st.lists(st.sampled_from(_LABELS), max_size=3),
    st.sampled_from([12, 12, 12, 0, 13, 20, 40, 300, 0x3FFF]),
)
bad_name = st.sampled_from([b"\x40abc\0", b"\x80\0", b"\x05ab", b"\xc0", b"\0"])
name = st.one_of(*[plain_name] * 8, pointer_name, pointer_name, bad_name)  # mostly readable names
rdata = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16), name, st.binary(max_size=6))
record = st.builds(
    lambda n, rtype, data: n + struct.pack("!HHIH", rtype, 1, 60, len(data)) + data,
    name,
    st.sampled_from([1, 28, 5, 5, 15, 1, 28]),
    rdata,
)
message = st.builds(
    lambda hdr, questions, answers, extra, cut: (
        struct.pack("!HHHHHH", *hdr, len(questions), max(0, len(answers) + extra), 0, 0)
        + b"".join(q + b"\0\1\0\1" for q in questions)
        + b"".join(answers)
    )[: None if cut == 0 else -cut],
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.lists(name, max_size=2),
    st.lists(record, max_size=5),
    st.sampled_from([0, 0, 0, 0, 1, -1, 70]),  # answer count beside the records present
    st.sampled_from([0, 0, 0, 0, 1, 2, 5]),
)

good_record = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda a: plain_pair(1, a)),
    st.binary(min_size=16, max_size=16).map(lambda a: plain_pair(28, a)),
    plain_name.map(lambda n: plain_pair(5, n)),
    st.just(b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 2) + b"\xc0\x0c"),  # CNAME to the question
)
well_formed = st.builds(
    lambda hdr, q, answers: struct.pack("!HHHHHH", *hdr, 1, len(answers), 0, 0) + q + b"\0\1\0\1" + b"".join(answers),
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    plain_name,
    st.lists(good_record, max_size=6),
)


def plain_pair(rtype: int, data: bytes) -> bytes:
    """A resource record named by a pointer to the question, of ``rtype`` with ``data``."""
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(data)) + data


def _dns(func: Any, data: bytes) -> Any:
    try:
        return func(data)
    except DnsDecodeError as exc:
        return ("error", str(exc))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(message, well_formed))
def test_generated_dns_messages(data: bytes) -> None:
    assert _dns(parse_dns, data) == _dns(parse_dns_reference, data), data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_dns_arbitrary_bytes(data: bytes) -> None:
    assert _dns(parse_dns, data) == _dns(parse_dns_reference, data), data


def test_dns_known_messages() -> None:
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03WWW\x07example\x03com\x00\x00\x01\x00\x01"
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 1])
    response = query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x01" + query[8:] + answer
    msg = parse_dns(response)
    assert msg == parse_dns_reference(response)
    assert (msg.dns_id, msg.is_response, msg.qname, msg.qtype, msg.answers) == (7, True, "www.example.com", 1,
                                                                                 ("10.0.0.1",))  # fmt: skip
    loop = query[:12] + b"\xc0\x0c"
    for data in (b"", query[:11], loop, query[:-1]):
        assert _dns(parse_dns, data) == _dns(parse_dns_reference, data)
        assert _dns(parse_dns, data)[0] == "error"
