"""FlowRecord.service: protocols found from content, on crafted captures (scapy) and the lab samples."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from hopscope.cli import main
from hopscope.probes.analyze import analyze_capture
from hopscope.probes.service import SIGNATURES, ServiceDetector, decode, detect, encode, service_names
from hopscope.records import Batch, FlowRecord
from tests.probes.crafting import MAC_A, MAC_B, T0

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lab"
CLIENT_H, SERVER_H = "10.0.0.1", "10.0.0.2"

# A TLS 1.2 ClientHello and ServerHello (record and handshake headers, then a plausible body).
CLIENT_HELLO = bytes.fromhex("160301005a010000560303") + bytes(32) + bytes.fromhex("00" "0004c02fc030" "0100" "0029")
SERVER_HELLO = bytes.fromhex("160303004a0200004603030000") + bytes(30) + bytes.fromhex("00c02f00")
TLS_DATA = bytes.fromhex("1703030020") + bytes(range(32))
HTTP_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: shop.example\r\n\r\n"
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CONNECT = b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\n"
CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
DNS_QUERY = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="www.example.com", qtype="A")))
DNS_ANSWER = bytes(DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname="www.example.com"),
                       an=DNSRR(rrname="www.example.com", rdata="93.184.216.34")))  # fmt: skip


def tcp_flow(port: int, client: Sequence[bytes], server: Sequence[bytes], handshake: bool = True) -> list[Packet]:
    """One TCP connection to ``port``: handshake, the client's payloads, the server's, FINs.
    Without ``handshake`` the capture starts mid-stream (no SYN) and only payloads are seen."""
    seq = {"c": 1000, "s": 5000}
    out: list[Packet] = []

    def send(side: str, flags: str, payload: bytes = b"") -> None:
        src, dst = ((CLIENT_H, 40000), (SERVER_H, port)) if side == "c" else ((SERVER_H, port), (CLIENT_H, 40000))
        other = "s" if side == "c" else "c"
        tcp = TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq[side], ack=seq[other] if "A" in flags else 0)
        pkt = Ether(src=MAC_A, dst=MAC_B) / IP(src=src[0], dst=dst[0]) / tcp / payload
        pkt.time = T0 + len(out) * 0.001
        out.append(pkt)
        seq[side] += len(payload) + ("S" in flags) + ("F" in flags)

    if handshake:
        send("c", "S")
        send("s", "SA")
        send("c", "A")
    for payload in client:
        send("c", "PA", payload)
    for payload in server:
        send("s", "PA", payload)
    if handshake:
        send("c", "FA")
        send("s", "FA")
        send("c", "A")
    return out


def udp_flow(port: int, client: Sequence[bytes], server: Sequence[bytes]) -> list[Packet]:
    eth = Ether(src=MAC_A, dst=MAC_B)
    out: list[Packet] = [eth / IP(src=CLIENT_H, dst=SERVER_H) / UDP(sport=40053, dport=port) / p for p in client]
    out += [eth / IP(src=SERVER_H, dst=CLIENT_H) / UDP(sport=port, dport=40053) / p for p in server]
    for n, pkt in enumerate(out):
        pkt.time = T0 + n * 0.001
    return out


def services(tmp_path: Path, packets: Sequence[Packet], chunk_bytes: int | None = None) -> list[str]:
    """The ``service`` of each final flow record of a capture of ``packets``."""
    path = tmp_path / "svc.pcap"
    wrpcap(str(path), list(packets))
    result = analyze_capture(path) if chunk_bytes is None else analyze_capture(path, chunk_bytes=chunk_bytes)
    return [r.service for r in result.flows.records() if r.final]  # type: ignore[attr-defined]


def _prefixed(message: bytes) -> bytes:
    """A DNS message as DNS over TCP sends it: after its 2-byte length."""
    return struct.pack("!H", len(message)) + message


CASES = {
    "http on 80": (tcp_flow(80, [HTTP_REQUEST], [HTTP_RESPONSE]), "http"),
    "http on 8081": (tcp_flow(8081, [HTTP_REQUEST], [HTTP_RESPONSE]), "http"),
    "http on 5555, request only": (tcp_flow(5555, [HTTP_REQUEST], []), "http"),
    "http on 5555, response only, mid-stream": (tcp_flow(5555, [], [HTTP_RESPONSE], handshake=False), "http"),
    "not http on 80": (tcp_flow(80, [b"\x00\x01binary hello"], [b"\x02\x03binary answer"]), ""),
    "redis inline GET on 6379": (tcp_flow(6379, [b"GET foo\r\n"], [b"$3\r\nbar\r\n"]), ""),
    "ssh on 22": (tcp_flow(22, [b"SSH-2.0-OpenSSH_9.2p1\r\n"], [b"SSH-2.0-OpenSSH_9.6\r\n"]), "ssh"),
    "ssh on 2222": (tcp_flow(2222, [b"SSH-2.0-OpenSSH_9.2p1\r\n"], [b"SSH-1.99-Cisco-1.25\r\n"]), "ssh"),
    "ssh banner text on 80": (tcp_flow(80, [b"SSH-2.0-x\r\n"], []), "ssh"),
    "tls on 443": (tcp_flow(443, [CLIENT_HELLO], [SERVER_HELLO, TLS_DATA]), "ssl"),
    "tls on 8443, server hello only": (tcp_flow(8443, [], [SERVER_HELLO]), "ssl"),
    "tls application data only on 443": (tcp_flow(443, [TLS_DATA], [TLS_DATA]), ""),
    "tls in a CONNECT tunnel": (tcp_flow(3128, [CONNECT, CLIENT_HELLO], [CONNECTED, SERVER_HELLO]), "http,ssl"),
    "http2 preface on 8080": (tcp_flow(8080, [H2_PREFACE], [bytes.fromhex("000000040000000000")]), "http2"),
    "dns on udp 53": (udp_flow(53, [DNS_QUERY], [DNS_ANSWER]), "dns"),
    "dns on udp 5300": (udp_flow(5300, [DNS_QUERY], [DNS_ANSWER]), "dns"),
    "dns answer only on udp 53": (udp_flow(53, [], [DNS_ANSWER]), "dns"),
    "dns on tcp 53": (tcp_flow(53, [_prefixed(DNS_QUERY)], [_prefixed(DNS_ANSWER)]), "dns"),
    "not dns on udp 53": (udp_flow(53, [b"\x00\x07\x01\x00\x00\x01" + b"\xff" * 20], []), ""),
    "truncated dns question on udp 53": (udp_flow(53, [DNS_QUERY[:-3]], []), ""),
    "no payload": (tcp_flow(80, [], []), ""),
}


@pytest.mark.parametrize(("packets", "expected"), list(CASES.values()), ids=list(CASES))
def test_service_from_content(tmp_path: Path, packets: list[Packet], expected: str) -> None:
    assert services(tmp_path, packets) == [expected]


def test_service_does_not_depend_on_block_boundaries(tmp_path: Path) -> None:
    packets = tcp_flow(3128, [CONNECT, CLIENT_HELLO], [CONNECTED, SERVER_HELLO]) + udp_flow(53, [DNS_QUERY], [])
    packets.sort(key=lambda p: float(p.time))
    assert services(tmp_path, packets, chunk_bytes=200) == services(tmp_path, packets) == ["http,ssl", "dns"]


@pytest.mark.parametrize(
    ("payloads", "expected"),
    [
        ([(6, HTTP_REQUEST)], "http"),
        ([(6, b"GET /")], "http"),
        ([(6, b"GET")], ""),
        ([(6, b"get / HTTP/1.1\r\n")], ""),  # methods are case-sensitive
        ([(6, b"OPTIONS * HTTP/1.1\r\n")], "http"),
        ([(6, b"CONNECT  x")], ""),
        ([(6, b"HTTP/1.0 404\r\n")], "http"),
        ([(6, b"HTTP/1.1 2000 OK\r\n")], ""),
        ([(6, b"HTTP/2 200\r\n")], ""),
        ([(6, b"SSH-3.0-x")], ""),
        ([(17, HTTP_REQUEST)], ""),  # the TCP signatures are not looked for in UDP
        ([(6, SERVER_HELLO), (6, HTTP_RESPONSE), (6, CLIENT_HELLO)], "ssl,http"),
        ([(17, DNS_QUERY[:12] + b"\x40" + DNS_QUERY[13:])], ""),  # a label of 64 bytes
        ([(17, DNS_QUERY[:3] + b"\x40" + DNS_QUERY[4:])], ""),  # the reserved Z bit set
        ([(17, DNS_QUERY[:2] + b"\x11" + DNS_QUERY[3:])], ""),  # opcode 2 (STATUS)
        ([(6, struct.pack("!H", 12) + DNS_QUERY)], ""),  # the length prefix cuts the question
    ],
)
def test_detect(payloads: list[tuple[int, bytes]], expected: str) -> None:
    assert detect(payloads) == expected


def test_signatures_start_with_distinct_bytes() -> None:
    assert len({sig.pattern[:2] for sig in SIGNATURES}) == len(SIGNATURES)


def _records(flow_ids: list[int], final: list[int]) -> Batch:
    return Batch(FlowRecord, {"flow_id": np.array(flow_ids, np.uint64), "final": np.array(final, np.uint8)},
                 len(flow_ids))  # fmt: skip


def _block_of(*payloads: tuple[int, int, bytes]) -> object:
    """A block of (flow id, IP protocol, payload) rows, as a metered block holds them."""
    from hopscope.probes.packets import PacketBlock

    buf = b"".join(p for _, _, p in payloads) + bytes(16)
    block = PacketBlock.empty(len(payloads), np.frombuffer(buf, np.uint8))
    offset = 0
    for i, (flow_id, proto, payload) in enumerate(payloads):
        block.flow_id[i], block.proto[i], block.payload_off[i] = flow_id, proto, offset
        block.payload_caplen[i] = block.payload_len[i] = len(payload)
        offset += len(payload)
    return block


def test_detector_keeps_flows_until_their_final_record() -> None:
    det = ServiceDetector()
    det.observe(_block_of((11, 6, HTTP_REQUEST), (12, 17, DNS_QUERY), (13, 6, b"\x00nothing")))  # type: ignore[arg-type]
    interim = det.fill(_records([11, 12, 13], [0, 1, 0]))
    assert interim.columns["service"] == ["http", "dns", ""]
    assert det.pending() == 1  # 12 had its final record
    det.observe(_block_of((11, 6, CLIENT_HELLO), (11, 6, HTTP_RESPONSE)))  # type: ignore[arg-type]
    assert det.fill(_records([11], [1])).columns["service"] == ["http,ssl"]
    assert det.pending() == 0


def test_detector_forgets_the_oldest_flows_when_full() -> None:
    det = ServiceDetector(max_flows=2)
    for flow_id in (1, 2, 3):
        det.observe(_block_of((flow_id, 6, HTTP_REQUEST)))  # type: ignore[arg-type]
    assert det.evicted == 1
    assert det.fill(_records([1, 2, 3], [1, 1, 1])).columns["service"] == ["", "http", "http"]


@pytest.mark.parametrize("services_in_order", [[1], [3, 1], [5, 4, 3, 2, 1], [2, 2, 1]])
def test_codes_keep_the_order_found(services_in_order: list[int]) -> None:
    code = encode(services_in_order)
    assert decode(code) == list(dict.fromkeys(services_in_order))
    expected = ",".join(("", "http", "http2", "ssl", "ssh", "dns")[s] for s in dict.fromkeys(services_in_order))
    assert service_names(np.array([code, 0], np.uint64)) == [expected, ""]


def test_flows_command_prints_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two.pcap"
    wrpcap(str(path), tcp_flow(2222, [b"SSH-2.0-a\r\n"], [b"SSH-2.0-b\r\n"]) + udp_flow(5300, [DNS_QUERY], []))
    assert main(["flows", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["resp_p"], r["service"]) for r in rows] == [(2222, "ssh"), (5300, "dns")]
    assert list(rows[0])[7] == "service"  # after proto, as in Zeek's conn.log
    assert main(["flows", "--format", "table", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[6] == "service" and lines[1].split()[6] == "ssh"


@pytest.mark.parametrize("capture", ["client1-pod", "nodeB", "server1-pod"])
def test_lab_flows_name_the_protocols_of_their_requests(capture: str) -> None:
    """Every flow that carried an HTTP or DNS request record (the L7 parsers) lists that protocol."""
    from hopscope.probes.l7.capture import capture_requests

    path = SAMPLES / f"{capture}.pcap"
    result = analyze_capture(path, {"*": capture})
    service = {r.flow_id: r.service for r in result.flows.records() if r.final}  # type: ignore[attr-defined]
    requests, _ = capture_requests(str(path), capture)
    assert requests
    for req in requests:
        assert req.l7_proto in service[req.flow_id].split(","), req
    assert {req.l7_proto for req in requests} <= set(service.values())


def _payload_block(payloads: list[tuple[int, bytes]]) -> object:
    return _block_of(*((n + 1, proto, payload) for n, (proto, payload) in enumerate(payloads)))


def test_kernel_finds_what_the_reference_finds() -> None:
    """``_meter.service_hits`` (C) against ``block_hits_reference`` (numpy): every signature and DNS
    message of the cases above, each cut at every length and with bytes flipped, in one block."""
    from hopscope.probes import kernels, service

    if not kernels.enabled() or kernels.load("_meter") is None:
        pytest.skip("the _meter kernel is not built")
    rng = np.random.default_rng(5)
    seeds = [HTTP_REQUEST, HTTP_RESPONSE, CLIENT_HELLO, SERVER_HELLO, DNS_QUERY, b"SSH-2.0-x\r\n",
             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", struct.pack("!H", len(DNS_QUERY)) + DNS_QUERY]  # fmt: skip
    payloads: list[tuple[int, bytes]] = []
    for seed in seeds:
        for proto in (6, 17):
            for cut in range(len(seed) + 1):
                payloads.append((proto, seed[:cut]))
            for _ in range(40):
                raw = bytearray(seed)
                raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
                payloads.append((proto, bytes(raw)))
    block = _payload_block(payloads)
    want = service.block_hits_reference(block)  # type: ignore[arg-type]
    got = service.block_hits(block)  # type: ignore[arg-type]
    assert len(want[0]) > 100
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_bad_checksum_packets_confirm_nothing() -> None:
    """A packet whose checksum failed is not passed to Zeek's analyzers: it confirms no service."""
    from hopscope.probes import service
    from hopscope.probes.packets import PacketStatus

    block = _payload_block([(6, HTTP_REQUEST), (17, DNS_QUERY)])
    block.status[0] = PacketStatus.BAD_L4_CHECKSUM  # type: ignore[attr-defined]
    for hits in (service.block_hits, service.block_hits_reference):
        assert hits(block)[1].tolist() == [5]  # type: ignore[arg-type]


def test_content_service_follows_the_tunnel_name() -> None:
    """The meter names a UDP tunnel on its outer flow; a content service found there comes after it."""
    det = ServiceDetector()
    det.observe(_block_of((21, 17, DNS_QUERY)))  # type: ignore[arg-type]
    batch = _records([21, 22], [1, 1])
    batch.columns["service"] = ["vxlan", "geneve"]
    assert det.fill(batch).columns["service"] == ["vxlan,dns", "geneve"]
