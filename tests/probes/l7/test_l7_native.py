"""The compiled L7 steps (probes/csrc/l7.c) against their Python twins.

``parse_head`` (the ``_l7`` kernel behind it) and ``parse_head_reference`` read the same header blocks:
generated ones that mix valid and broken request and status lines (every method, HTTP/1.0 and 1.1,
whitespace and CRs in odd places, a reason phrase with a tab or a CR), the recorded and framing
headers in any letter case among others, values with surrounding whitespace (vertical tab and form
feed too), latin-1 bytes, a header repeated, a missing colon, no line end; and arbitrary bytes. Every
``HttpMessage`` field, the framing result (chunked, content length) and any error must be equal. The
kernel's payload hash is checked against ``hopscope.ids.payload_hash``. ``parse_dns`` (the kernel)
and ``parse_dns_reference`` decode generated DNS messages (questions and A, AAAA, CNAME and other
answers, names with upper-case, non-ASCII and control bytes, compression pointers forward, backward,
looping and past the end, reserved label types, counts larger than the records present, cuts at every
length) and arbitrary bytes: equal messages, or DnsDecodeError with the same text. End to end, the
tracker's records of the lab captures are the same with the kernel and with the reference path.
"""

from __future__ import annotations

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
        b"GET /a HTTP/1.1\r\nContent-Length: \xb2",  # '²' is a digit to str.isdigit, not to int(): both raise
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
    assert _parse(parse_head, cases[4], True) == ("error", "ValueError")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(block, st.binary(max_size=30)), max_size=3), st.sampled_from([b"\r\n\r\n", b"\n\n", b""]),
       st.binary(max_size=80), st.integers(0, 400), st.booleans())  # fmt: skip
def test_head_block_is_find_parse_and_hash(parts: list[bytes], blank: bytes, body: bytes, pos: int,
                                           is_request: bool) -> None:  # fmt: skip
    """``head_block`` (a header block inside one segment) equals the Python steps it replaces."""
    payload = b"\r\n".join(parts) + blank + body
    pos = min(pos, len(payload))
    end = payload.find(b"\r\n\r\n", pos)
    found = _l7.head_block(payload, pos, is_request)
    if end < 0:
        assert found is None
        return
    assert found is not None and found[0] == end
    assert found[1] == _l7.parse_head(payload[pos:end], is_request)
    assert found[2] == payload_hash(payload[pos : pos + 64])
    native, reference = HttpMessage(0, 0), HttpMessage(0, 0)
    head = http._apply_parsed(found[1], is_request, native)
    ref_head = parse_head_reference(payload[pos:end], is_request, reference)
    assert (head is None) == (ref_head is None)
    assert [getattr(native, n) for n in HttpMessage.__slots__ if n != "payload_hash"] == [
        getattr(reference, n) for n in HttpMessage.__slots__ if n != "payload_hash"]  # fmt: skip
    with pytest.raises(ValueError):
        _l7.head_block(payload, len(payload) + 1, is_request)


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
