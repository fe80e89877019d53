"""HTTP/2 and gRPC records through tshark's dissectors, on an h2c conversation crafted frame by frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from hopscope.probes.l7 import CapturePoint
from hopscope.probes.l7.tshark import tshark_requests
from tests.probes.l7.tcpstreams import TcpConversation

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian package) not installed")

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def lit(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def h2c_capture(path: Path) -> TcpConversation:
    conv = TcpConversation(server=("10.2.0.3", 8080)).handshake()
    conv.request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    conv.response(frame(4, 0, 0, b"") + frame(4, 1, 0, b""))
    common = lit(b":scheme", b"http") + lit(b":authority", b"svc:8080")
    get = lit(b":method", b"GET") + lit(b":path", b"/h2/a") + common + lit(b"x-request-id", b"rid-h2-1")
    call = (lit(b":method", b"POST") + lit(b":path", b"/pkg.Svc/Call") + common
            + lit(b"content-type", b"application/grpc") + lit(b"traceparent", TRACEPARENT))  # fmt: skip
    conv.request(frame(4, 1, 0, b"") + frame(1, 5, 1, get) + frame(1, 4, 3, call))
    conv.request(frame(0, 1, 3, b"\x00\x00\x00\x00\x02hi"))
    conv.response(frame(1, 4, 1, lit(b":status", b"404")) + frame(0, 1, 1, b"nope"))
    ok = lit(b":status", b"200") + lit(b"content-type", b"application/grpc")
    conv.response(frame(1, 4, 3, ok) + frame(0, 0, 3, b"\x00\x00\x00\x00\x01x"))
    conv.response(frame(1, 5, 3, lit(b"grpc-status", b"0")))
    packets = []
    for ts_ns, pkt in conv.packets:
        eth = Ether() / pkt
        eth.time = ts_ns / 1e9
        packets.append(eth)
    wrpcap(str(path), packets)
    return conv


def test_http2_and_grpc_streams_become_records(tmp_path: Path) -> None:
    conv = h2c_capture(tmp_path / "h2c.pcap")
    records = tshark_requests(str(tmp_path / "h2c.pcap"), CapturePoint("pod-a", "node-1", "eth0", "pod"))
    t = [ts for ts, _ in conv.packets]
    got = [(r.l7_proto, r.method, r.path, r.http_host, r.status, r.seq_in_flow) for r in records]
    assert got == [("http2", "GET", "/h2/a", "svc:8080", 404, 0), ("grpc", "POST", "/pkg.Svc/Call", "svc:8080", 200, 1)]
    get, call = records
    assert (get.x_request_id, call.traceparent) == ("rid-h2-1", TRACEPARENT.decode())
    assert (get.syn_seq, get.synack_seq) == (conv.isn_client, conv.isn_server)
    assert (get.orig_p, get.resp_p, get.point, get.hop_kind) == (40001, 8080, "pod-a", "pod")
    # packet 5 carries both requests' HEADERS; 6 ends the call; 7, 8, 9 carry the responses
    assert (get.req_first_ns, get.resp_first_ns, get.resp_last_ns) == (t[5], t[7], t[7])
    assert (call.req_first_ns, call.req_last_ns, call.resp_first_ns, call.resp_last_ns) == (t[5], t[6], t[8], t[9])
    assert get.req_tcp_seq == call.req_tcp_seq == int(conv.packets[5][1]["TCP"].seq)
    assert get.resp_tcp_seq == int(conv.packets[7][1]["TCP"].seq)
    assert len({r.request_id for r in records}) == 2
