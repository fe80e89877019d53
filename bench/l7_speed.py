"""L7 parser speed: hopscope's HTTP/1.x framing and DNS decoder against httptools (llhttp), dpkt, dnspython.

Run: .venv/bin/python bench/l7_speed.py [--messages N]

HTTP: the same stream of pipelined requests (typical headers, X-Request-ID, traceparent, some with a
body) cut into 1448-byte segments, parsed by
  - hopscope ``http_stream_parser`` alone (framing + the headers we record, a message object with
    stream offsets per request, and on_head/on_done callbacks): the ``_l7`` kernel's ``HttpFramer``,
  - hopscope ``HttpStreamParserReference`` (the same in Python: the reference path, HOPSCOPE_NATIVE=0),
  - hopscope ``HttpConnection`` (the parser plus TCP reassembly and pairing bookkeeping),
  - httptools ``HttpRequestParser`` with on_url/on_header/on_message_complete callbacks (C llhttp).
DNS: the same set of responses (A, AAAA, CNAME chain), decoded by hopscope ``parse_dns``,
dpkt ``dns.DNS`` and dnspython ``dns.message.from_wire``.
End to end: a pcap of keep-alive HTTP conversations (handshake, 25 requests, FIN) decoded and metered
once, then fed through ``BlockFeeder`` -> ``L7Tracker`` (reassembly, framing, pairing, records), timed
in CPU seconds so other load on the machine does not count.
TLS: a pcap of pooled mutual-TLS-shaped connections to port 443 (a TLS 1.2 handshake, 25 exchanges of
one application-data record each way, FIN) through the same feeder and tracker, which frames the records
and reports one record per exchange, beside the same capture with ``detect_tls`` off (the flows are
then given up after their first segment, as before TLS exchanges were parsed): the cost they add.
Every rate is the best of 3 runs in CPU seconds of this process (other load on the machine does not
count). Prints messages per second for each; higher is better. Ends with one ``bench:`` line per figure, the
ratio being hopscope's rate over the peer's (higher is better).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _lines import bench_line

from hopscope.probes import kernels
from hopscope.probes.l7.dns import parse_dns
from hopscope.probes.l7.http import (
    HttpConnection,
    HttpMessage,
    HttpStreamParserReference,
    OnDone,
    OnHead,
    StreamParser,
    http_stream_parser,
)
from hopscope.probes.l7.reassembly import DATA

MSS = 1448


def http_stream(count: int) -> bytes:
    parts = []
    for i in range(count):
        body = b"x" * (i % 3) * 100
        head = (
            f"{'POST' if body else 'GET'} /api/v1/items/{i}?q=abc HTTP/1.1\r\n"
            "Host: backend.default.svc.cluster.local:8080\r\n"
            "User-Agent: python-httpx/0.27\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
            f"X-Request-ID: 5f1c7a2e-{i:08d}\r\n"
            f"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{i:016x}-01\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        parts.append(head + body)
    return b"".join(parts)


def segments(stream: bytes) -> list[bytes]:
    return [stream[i : i + MSS] for i in range(0, len(stream), MSS)]


def ours_framing(segs: list[bytes],
                 factory: Callable[[bool, OnHead, OnDone], StreamParser] = http_stream_parser) -> int:  # fmt: skip
    done: list[HttpMessage] = []
    parser = factory(True, lambda m: m.method, done.append, synced=True)  # type: ignore[call-arg]
    offset = 0
    for n, seg in enumerate(segs):
        parser.feed([(DATA, offset, n, seg)])
        offset += len(seg)
    return len(done)


def ours_connection(segs: list[bytes]) -> int:
    conn = HttpConnection()
    conn.segment(0, True, 1000, 0, 0x02, b"")
    seq = 1001
    for n, seg in enumerate(segs):
        conn.segment(n, True, seq, 0, 0x18, seg)
        seq += len(seg)
    return conn.waiting[-1].index + 1


def httptools_parse(segs: list[bytes]) -> int:
    import httptools

    class Proto:
        def __init__(self) -> None:
            self.count = 0
            self.headers: dict[bytes, bytes] = {}

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_message_complete(self) -> None:
            self.count += 1

    proto = Proto()
    parser = httptools.HttpRequestParser(proto)
    for seg in segs:
        parser.feed_data(seg)
    return proto.count


def dns_messages() -> list[bytes]:
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    msgs = []
    for i in range(300):
        name = f"svc{i}.ns.svc.cluster.local"
        an = [DNSRR(rrname=name, rdata=f"10.96.{i % 250}.{i % 200}")]
        if i % 3 == 1:
            an = [DNSRR(rrname=name, type="AAAA", rdata=f"2001:db8::{i:x}")]
        elif i % 3 == 2:
            an = [DNSRR(rrname=name, type="CNAME", rdata="edge.example.net"),
                  DNSRR(rrname="edge.example.net", rdata="192.0.2.7")]  # fmt: skip
        msgs.append(bytes(DNS(id=i, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=an)))
    return msgs


def dns_ours(msgs: list[bytes]) -> int:
    return sum(len(parse_dns(m).answers) for m in msgs)


def dns_dpkt(msgs: list[bytes]) -> int:
    import dpkt

    return sum(len(dpkt.dns.DNS(m).an) for m in msgs)


def dns_dnspython(msgs: list[bytes]) -> int:
    import dns.message

    return sum(len(dns.message.from_wire(m).answer) for m in msgs)


def rate(name: str, func: Callable[[], int], messages: int, repeat: int = 3) -> float:
    best = float("inf")
    result = 0
    for _ in range(repeat):
        t0 = time.process_time()
        result = func()
        best = min(best, time.process_time() - t0)
    per_s = messages / best
    print(f"  {name:<34} {per_s:>12,.0f} msg/s   (result {result})")
    return per_s


def _capture_blocks(conversations: list[Any]) -> list[Any]:
    """The packet blocks of ``conversations`` (``TcpConversation``) written to a pcap and read back as
    the probe reads a capture."""
    import tempfile

    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    from hopscope.probes.analyze import iter_capture

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conversations.pcap"
        writer = PcapWriter(str(path), sync=False)
        for conv in conversations:
            for ts, pkt in conv.packets:
                frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt
                frame.time = ts / 1e9
                writer.write(frame)
        writer.close()
        return [b for b, _ in iter_capture(path) if b.count]


def _feed_rate(blocks: list[Any], settings: Any = None) -> tuple[float, int]:
    """Best of three CPU times of ``BlockFeeder`` -> ``L7Tracker`` over ``blocks``, as packets per second,
    and the records the tracker reported."""
    from hopscope.probes.l7 import CapturePoint, L7Tracker
    from hopscope.probes.l7.feed import BlockFeeder

    best, records = float("inf"), 0
    for _ in range(3):
        t0 = time.process_time()
        tracker = L7Tracker(CapturePoint("bench"), settings)
        feeder = BlockFeeder(tracker)
        for block in blocks:
            feeder.feed(block)
        tracker.flush()
        records = len(tracker.take_batch())  # as the probe and analyze take them
        best = min(best, time.process_time() - t0)
    return sum(b.count for b in blocks) / best, records


def _tcpstreams() -> Any:
    """The tests' TCP conversation builder (``tests/probes/l7/tcpstreams.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    return importlib.import_module("tests.probes.l7.tcpstreams")


def end_to_end(conversations: int = 200) -> tuple[float, float]:
    """Packets and requests per CPU second of ``BlockFeeder`` -> ``L7Tracker``."""
    streams = _tcpstreams()
    convs = []
    for c in range(conversations):
        conv = streams.TcpConversation(client=("10.1.0.2", 20000 + c)).handshake()
        for n in range(25):
            conv.request(streams.get(f"/item/{n}", extra="X-Request-ID: abc\r\nUser-Agent: bench\r\nAccept: */*\r\n"))
            conv.response(streams.ok(b"x" * 300))
        conv.fin(True)
        conv.fin(False)
        convs.append(conv)
    blocks = _capture_blocks(convs)
    packets = sum(b.count for b in blocks)
    rate, records = _feed_rate(blocks)
    print(f"End to end: {packets} packets ({conversations} connections), {records} requests")
    print(f"  BlockFeeder + L7Tracker          {rate:>12,.0f} packets/s  {records * rate / packets:>10,.0f} requests/s")
    return rate, records * rate / packets


def _tls_record(ctype: int, length: int) -> bytes:
    return bytes([ctype, 3, 3, length >> 8, length & 0xFF]) + b"\xab" * length


def tls_end_to_end(conversations: int = 200) -> tuple[float, float, int]:
    """Packets per CPU second of ``BlockFeeder`` -> ``L7Tracker`` on TLS connections, with TLS
    exchanges reported and with ``detect_tls`` off; and the exchanges reported."""
    from hopscope.probes.l7 import L7Settings

    conversation = _tcpstreams().TcpConversation
    hello = b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c" + bytes(44)
    convs = []
    for c in range(conversations):
        conv = conversation(client=("10.1.0.2", 20000 + c), server=("10.2.0.3", 443)).handshake()
        conv.request(hello)
        conv.response(b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c" + bytes(44) + _tls_record(22, 900))
        conv.request(_tls_record(22, 70) + _tls_record(20, 1) + _tls_record(22, 40))
        conv.response(_tls_record(20, 1) + _tls_record(22, 40))
        for _ in range(25):
            conv.request(_tls_record(23, 300))
            conv.response(_tls_record(23, 400))
        conv.fin(True)
        conv.fin(False)
        convs.append(conv)
    blocks = _capture_blocks(convs)
    packets = sum(b.count for b in blocks)
    (tls_on, records), (tls_off, _) = (_feed_rate(blocks, s) for s in (L7Settings(), L7Settings(detect_tls=False)))
    print(f"TLS end to end: {packets} packets ({conversations} connections), {records} exchanges")
    print(f"  TLS exchanges reported            {tls_on:>12,.0f} packets/s  {records * tls_on / packets:>10,.0f} "
          f"exchanges/s")
    print(f"  detect_tls off (flows given up)   {tls_off:>12,.0f} packets/s")
    return tls_on, tls_off, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    args = ap.parse_args()
    segs = segments(http_stream(args.messages))
    print(f"HTTP/1.1 requests: {args.messages} pipelined, {len(segs)} segments of {MSS} bytes")
    native = kernels.load("_l7") is not None
    ours = rate(f"hopscope http_stream_parser{' (kernel)' if native else ''}", lambda: ours_framing(segs),
                args.messages)
    reference = rate("hopscope HttpStreamParserReference",
                     lambda: ours_framing(segs, HttpStreamParserReference), args.messages)  # type: ignore[arg-type]
    connection = rate("hopscope HttpConnection (+reassembly)", lambda: ours_connection(segs), args.messages)
    theirs = None
    try:
        theirs = rate("httptools (llhttp) with callbacks", lambda: httptools_parse(segs), args.messages)
        print(f"  hopscope framing / httptools = {ours / theirs:.2f}, / the reference = {ours / reference:.2f}")
    except ImportError:
        print("  httptools not installed (pip install httptools)")
    # ratio: hopscope's rate over the peer's, higher is better
    http_peer = ("httptools", theirs) if theirs else None
    lines = [bench_line(name, value, "msg/s", http_peer, value / theirs if theirs else None)
             for name, value in (("l7_http_framing_rate", ours), ("l7_http_connection_rate", connection))]
    lines.append(bench_line("l7_http_framing_vs_reference_rate", ours, "msg/s", ("reference", reference),
                            ours / reference))
    msgs = dns_messages() * 20
    print(f"DNS responses: {len(msgs)} (A, AAAA, CNAME+A)")
    ours_dns = rate("hopscope parse_dns", lambda: dns_ours(msgs), len(msgs))
    dns_peers = 0
    for name, func in (("dpkt", dns_dpkt), ("dnspython", dns_dnspython)):
        try:
            peer = rate(name, lambda f=func: f(msgs), len(msgs))  # type: ignore[misc]
            print(f"  hopscope / {name} = {ours_dns / peer:.2f}")
            lines.append(bench_line(f"l7_dns_vs_{name}_rate", ours_dns, "msg/s", (name, peer), ours_dns / peer))
            dns_peers += 1
        except ImportError:
            print(f"  {name} not installed")
    if not dns_peers:
        lines.append(bench_line("l7_dns_rate", ours_dns, "msg/s"))
    packets_s, requests_s = end_to_end()
    lines.append(bench_line("l7_end_to_end_rate", packets_s, "packets/s"))
    lines.append(bench_line("l7_end_to_end_request_rate", requests_s, "requests/s"))
    tls_on, tls_off, _ = tls_end_to_end()
    lines.append(bench_line("l7_tls_end_to_end_rate", tls_on, "packets/s", ("detect_tls_off", tls_off),
                            tls_on / tls_off))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
