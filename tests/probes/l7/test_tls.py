"""TLS exchanges without decryption: record framing, exchange boundaries, what a record carries.

Records are literal bytes (a 5-byte header and an opaque body, as on the wire); conversations are
real packets built with scapy and fed to the L7 tracker as a capture would."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopscope.probes.l7 import L7Settings
from hopscope.probes.l7.reassembly import DATA, GAP
from hopscope.probes.l7.tls import TlsRecordFramer, looks_like_tls, record_header
from tests.probes.l7.tcpstreams import MS, TcpConversation, feed, get, ok, run, tracker

SERVER_80 = ("10.2.0.3", 80)


def record(ctype: int, body_len: int, fill: int = 0xAB, version: int = 0x0303) -> bytes:
    return bytes([ctype, version >> 8, version & 0xFF, body_len >> 8, body_len & 0xFF]) + bytes([fill]) * body_len


def client_hello() -> bytes:
    return record(22, 0, version=0x0301)[:5 - 2] + b"\x00\x30" + b"\x01\x00\x00\x2c" + bytes(44)


def server_hello() -> bytes:
    return b"\x16\x03\x03\x00\x30" + b"\x02\x00\x00\x2c" + bytes(44)


def tls12_handshake(conv: TcpConversation) -> None:
    """A TLS 1.2 full handshake: everything is handshake or change_cipher_spec, nothing is data."""
    conv.handshake()
    conv.request(client_hello())
    conv.response(server_hello() + record(22, 900) + record(22, 300))
    conv.request(record(22, 70) + record(20, 1) + record(22, 40))
    conv.response(record(20, 1) + record(22, 40))


@pytest.mark.parametrize(("data", "expected"), [
    (record(23, 100), (23, 100)),
    (record(21, 2), (21, 2)),
    (bytes([24, 3, 3, 0, 10]), None),  # unknown content type
    (bytes([23, 2, 0, 0, 10]), None),  # SSL 2 version
    (bytes([23, 3, 3, 0x48, 0x01]), None),  # longer than 2**14 + 2048
    (b"GET / HTTP/1.1\r\n", None),
    (bytes([23, 3, 3]), None),  # truncated header
])  # fmt: skip
def test_record_header(data: bytes, expected: tuple[int, int] | None) -> None:
    assert record_header(data) == expected


@pytest.mark.parametrize(("payload", "tls"), [
    (client_hello(), True), (server_hello(), True), (record(23, 64), True),
    (record(22, 8, fill=0x0B), False),  # a handshake record that is no hello: not a first payload
    (record(21, 2), False), (get("/"), False), (b"\x16\x03", False),
])  # fmt: skip
def test_looks_like_tls(payload: bytes, tls: bool) -> None:
    assert looks_like_tls(payload) is tls


def test_framer_splits_records_across_segments_and_skips_a_gap_in_a_body() -> None:
    stream = record(23, 300, fill=1) + record(23, 10, fill=2) + record(21, 2)
    framer = TlsRecordFramer()
    events = [(DATA, 0, 1, stream[:3]), (DATA, 3, 2, stream[3:100]), (GAP, 100, 3, 50),
              (DATA, 150, 4, stream[150:307]), (DATA, 307, 5, stream[307:])]
    recs = framer.feed(events)
    assert [(r.content_type, r.start, r.end, r.first_ns, r.last_ns) for r in recs] == [
        (23, 0, 305, 1, 4), (23, 305, 320, 4, 5), (21, 320, 327, 5, 5)]
    assert recs[0].head == stream[:64] and not framer.broken


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([20, 21, 22, 23]), st.integers(0, 200)), max_size=8),
       st.lists(st.integers(1, 1200), max_size=10), st.binary(max_size=6))  # fmt: skip
def test_framer_gives_the_same_records_however_the_bytes_are_cut(
    recs: list[tuple[int, int]], cuts: list[int], tail: bytes
) -> None:
    """Whole records in one segment (the framer's fast path) or cut anywhere, byte by byte included:
    the same records, with their first 64 bytes; a bad header after them breaks the direction alike."""
    stream = b"".join(record(ctype, n, fill=k) for k, (ctype, n) in enumerate(recs)) + tail
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    ways = [[(DATA, 0, 1, stream)] if stream else [],
            [(DATA, a, a, stream[a:b]) for a, b in itertools.pairwise(points)],
            [(DATA, i, i, stream[i : i + 1]) for i in range(len(stream))]]  # fmt: skip
    results = []
    for events in ways:
        framer = TlsRecordFramer()
        got = [(r.content_type, r.start, r.end, r.head) for r in framer.feed(events)]
        results.append((got, framer.broken))
    assert results[0] == results[1] == results[2]
    expected, at = [], 0
    for ctype, n in recs:
        expected.append((ctype, at, at + 5 + n, stream[at : min(at + 5 + n, at + 64)]))
        at += 5 + n
    assert results[0][0][: len(recs)] == expected


def test_framer_breaks_on_a_gap_where_a_header_is_expected() -> None:
    framer = TlsRecordFramer()
    assert framer.feed([(DATA, 0, 1, record(23, 5)), (GAP, 10, 2, 7), (DATA, 17, 3, record(23, 5))]) != []
    assert framer.broken  # the second record is never framed: its boundary is unknown


def test_pooled_tls12_connection_gives_one_record_per_exchange_with_seqs_times_and_bytes() -> None:
    """Three requests on one connection after a full handshake; the second request spans two records
    and the second response three segments; the handshake and a trailing close_notify alert make none."""
    conv = TcpConversation(server=SERVER_80)
    tls12_handshake(conv)
    marks = []
    for req, resp in ((record(23, 120), record(23, 400)),
                      (record(23, 16384) + record(23, 500), record(23, 3000)),
                      (record(23, 90), record(23, 60))):
        conv.tick(5)
        start = conv.seq[True]
        conv.request(req, cuts=range(1448, len(req), 1448))
        t_req = conv.now_ns
        conv.tick(2)
        resp_start = conv.seq[False]
        conv.response(resp, cuts=(1000, 2000) if len(resp) > 2000 else ())
        marks.append((start, len(req), resp_start, len(resp), t_req))
    conv.request(record(21, 26))
    conv.fin(True)
    conv.fin(False)
    recs = run(conv)
    assert [r.l7_proto for r in recs] == ["tls"] * 3
    for i, (r, (seq, n_req, resp_seq, n_resp, _)) in enumerate(zip(recs, marks, strict=True)):
        assert (r.seq_in_flow, r.req_tcp_seq, r.req_bytes, r.resp_tcp_seq, r.resp_bytes) == (
            i, seq, n_req, resp_seq, n_resp)
        assert (r.method, r.path, r.status, r.resp_p) == ("", "", 0, 80)
        assert r.req_first_ns <= r.req_last_ns < r.resp_first_ns <= r.resp_last_ns
        assert r.syn_seq == conv.isn_client and r.synack_seq == conv.isn_server
    assert recs[1].resp_last_ns - recs[1].resp_first_ns == 2 * MS  # three segments, 1 ms apart


def test_tls13_encrypted_server_flight_is_not_an_exchange() -> None:
    """TLS 1.3: the server's encrypted handshake flight (application data before any client data) is
    skipped; the client's last flight opens the first exchange (the module's documented failure mode:
    session tickets sent before the answer start its response)."""
    conv = TcpConversation(server=("10.2.0.3", 8443))
    conv.handshake()
    conv.request(client_hello())
    conv.response(server_hello() + record(20, 1) + record(23, 1200) + record(23, 80))
    conv.request(record(20, 1) + record(23, 53) + record(23, 200))
    conv.tick(3)
    conv.response(record(23, 500))
    conv.request(record(23, 100))
    conv.response(record(23, 40))
    recs = run(conv)
    assert [(r.seq_in_flow, r.req_bytes, r.resp_bytes) for r in recs] == [(0, 53 + 5 + 200 + 5, 505), (1, 105, 45)]


def test_tls_is_detected_on_an_http_port_and_a_response_missing_is_counted() -> None:
    conv = TcpConversation(server=SERVER_80)
    tls12_handshake(conv)
    conv.request(record(23, 50))
    conv.rst(False)
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    (r,) = trk.take_records()
    assert (r.l7_proto, r.resp_tcp_seq, r.resp_first_ns, r.req_bytes) == ("tls", 0, 0, 55)
    assert (trk.stats.tls_exchanges, trk.stats.tls_no_response, trk.stats.http_given_up) == (1, 1, 0)


def test_detect_tls_off_leaves_the_connection_to_http_detection() -> None:
    conv = TcpConversation(server=SERVER_80)
    tls12_handshake(conv)
    conv.request(get("/x"))
    conv.response(ok())
    recs = run(conv, L7Settings(detect_tls=False))
    assert [(r.l7_proto, r.path) for r in recs] == [("http", "/x")]  # found by resync past the TLS bytes
    trk = tracker()
    feed(trk, conv.packets)
    trk.flush()
    # detected as TLS, the plaintext that follows is no record header: framing is lost, and counted
    assert (trk.take_records(), trk.stats.tls_broken) == ([], 1)
