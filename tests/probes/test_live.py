"""The live probe on a real veth pair between two network namespaces the test creates (root needed).

Traffic: a Python HTTP/1.1 server in namespace B, a keep-alive client and a DNS exchange from namespace
A; the probe captures on A's veth end from this process (setns for the socket only). The namespaces
are removed whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from hopscope.lab.services import Watched, start_watched
from hopscope.records import Batch, FlowRecord, RequestRecord
from tests.netns import add_veth_pair, delete_namespaces

if TYPE_CHECKING:
    from hopscope.lab.flood import FloodResult
    from hopscope.probes.live import ProbeSettings, ProbeSummary

T = TypeVar("T")

pytestmark = pytest.mark.lab

NS_A, NS_B = f"hsl7a{os.getpid()}", f"hsl7b{os.getpid()}"
VETH_A, VETH_B = f"hva{os.getpid() % 100000}", f"hvb{os.getpid() % 100000}"
ADDR_A, ADDR_B = "10.250.7.1", "10.250.7.2"
PORT = 8080

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("hello " + self.path).encode()
        self.send_response(404 if self.path.endswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

DNS_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, addr = s.recvfrom(512)
    # answer with one A record 192.0.2.9 for the question, name by pointer to offset 12
    r = q[:2] + b"\\x81\\x80" + q[4:6] + b"\\x00\\x01\\x00\\x00\\x00\\x00" + q[12:]
    r += b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04\\xc0\\x00\\x02\\x09"
    s.sendto(r, addr)
"""

CLIENT = """
import http.client, socket, struct, sys, time
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
for path in sys.argv[3:]:
    c.request("GET", path, headers={"X-Request-ID": "rid" + path.replace("/", "-")})
    c.getresponse().read()
c.close()
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\\x03svc\\x04test\\x00\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (sys.argv[1], 53))
s.recvfrom(512)
"""

PATHS = ["/a", "/b/c", "/missing", "/d?x=1"]


@pytest.fixture
def netns_pair() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        add_veth_pair(NS_A, NS_B, VETH_A, VETH_B, ADDR_A, ADDR_B)
        for script, args in ((SERVER, [ADDR_B, str(PORT)]), (DNS_SERVER, [ADDR_B])):
            servers.append(subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", script, *args]))
        _wait_for_port()
        yield
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        delete_namespaces(NS_A, NS_B)


def _wait_for_port() -> None:
    probe = f"import socket; socket.create_connection(('{ADDR_B}', {PORT}), timeout=0.5).close()"
    for _ in range(50):
        if (
            subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", probe], capture_output=True).returncode
            == 0
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("the test HTTP server in the namespace did not start")


def _client() -> None:
    subprocess.run(
        ["ip", "netns", "exec", NS_A, sys.executable, "-c", CLIENT, ADDR_B, str(PORT), *PATHS],
        check=True,
        timeout=30,
    )


def run_probe(settings: ProbeSettings, traffic: Callable[[], T]) -> tuple[ProbeSummary, list[Batch], T]:
    """Run a live probe with ``settings`` in a thread while ``traffic`` runs (once the probe has opened its
    ring); the probe's summary, the record batches it published and what ``traffic`` returned."""
    from hopscope.probes.live import LiveProbe
    from hopscope.transport import InProcessTransport

    transport = InProcessTransport()
    probe = LiveProbe(settings, transport)
    summaries: list[ProbeSummary] = []
    runner = threading.Thread(target=lambda: summaries.append(probe.run(60)))
    runner.start()
    try:
        assert probe.started.wait(30), "the probe did not open its ring"
        sent = traffic()
    finally:
        probe.stop()
        runner.join(30)
    (summary,) = summaries
    return summary, [d.batch for d in transport.poll(timeout_s=0.1, max_records=10**7)], sent


def capture_client(settings: ProbeSettings) -> tuple[ProbeSummary, list[FlowRecord], list[RequestRecord]]:
    """Run a live probe with ``settings`` while the client runs in namespace A; its summary and the
    records it published."""
    summary, batches, _ = run_probe(settings, _client)
    flows: list[FlowRecord] = [r for b in batches if b.record_type is FlowRecord for r in b.records()]  # type: ignore[misc]
    requests: list[RequestRecord] = [r for b in batches if b.record_type is RequestRecord for r in b.records()]  # type: ignore[misc]
    return summary, flows, requests


def _start_probe(cmd: list[str]) -> Watched:
    """Start ``hopscope -v probe ...`` and return once it logged that it is capturing."""
    return start_watched([*cmd[:3], "-v", *cmd[3:]], "capturing on", cwd="/")  # python -m hopscope -v probe ...


def _check_records(flows: list[FlowRecord], requests: list[RequestRecord]) -> None:
    http = sorted((r for r in requests if r.l7_proto == "http"), key=lambda r: r.seq_in_flow)
    assert [(r.method, r.path, r.status) for r in http] == [("GET", p, 404 if p == "/missing" else 200) for p in PATHS]
    assert [r.x_request_id for r in http] == ["rid" + p.replace("/", "-") for p in PATHS]
    assert all(r.syn_seq and r.synack_seq and r.req_tcp_seq and r.resp_tcp_seq for r in http)
    assert all(r.resp_last_ns >= r.resp_first_ns >= r.req_first_ns for r in http)
    (dns,) = [r for r in requests if r.l7_proto == "dns"]
    assert (dns.dns_id, dns.dns_qname, dns.dns_answers, dns.resp_h) == (0x4242, "svc.test", "192.0.2.9", ADDR_B)
    conn = [f for f in flows if f.proto == 6 and f.resp_p == PORT]
    assert conn and conn[-1].syn_seq == http[0].syn_seq
    assert {r.flow_id for r in http} == {conn[-1].flow_id}
    assert conn[-1].service == "http"  # from the payloads, as hopscope flows finds it
    assert [f.service for f in flows if f.flow_id == dns.flow_id][-1] == "dns"


def test_live_probe_in_namespace_sees_http_and_dns(netns_pair: None) -> None:
    from hopscope.probes.live import ProbeSettings

    summary, flows, requests = capture_client(
        ProbeSettings(iface=VETH_A, point="client-veth", host="lab", hop_kind="pod", netns=NS_A, bpf="tcp or udp",
                      publish_interval_s=0.2))  # fmt: skip
    _check_records(flows, requests)
    assert summary.kernel_drops == 0
    assert summary.frames_read >= 12
    assert all(r.point == "client-veth" and r.iface == VETH_A for r in requests)


def test_probe_command_flushes_on_sigterm_and_exits_zero(netns_pair: None, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    cmd = [sys.executable, "-m", "hopscope", "probe", "--iface", VETH_A, "--point", "cli-point",
           "--netns", NS_A, "--out", str(out), "--filter", "tcp port 8080 or udp port 53"]  # fmt: skip
    probe = _start_probe(cmd)
    try:
        _client()
    finally:
        probe.proc.send_signal(signal.SIGTERM)
        stderr = probe.finish()
    assert probe.proc.returncode == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    flows = [FlowRecord(**{k: v for k, v in r.items() if k != "table"}) for r in rows if r["table"] == "flows"]
    requests = [RequestRecord(**{k: v for k, v in r.items() if k != "table"}) for r in rows if r["table"] == "requests"]
    _check_records(flows, requests)
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["kernel_drops"] == 0 and summary["request_records"] == len(PATHS) + 1


@pytest.mark.kafka
def test_probe_command_publishes_to_kafka(netns_pair: None, kafka_bootstrap: str) -> None:
    from hopscope.transport.kafka import KafkaRecordConsumer, ensure_topics
    from tests.conftest import topic_prefix

    prefix = topic_prefix("t")
    ensure_topics(kafka_bootstrap, prefix=prefix)
    consumer = KafkaRecordConsumer(kafka_bootstrap, f"probe-{prefix}", tables=["flows", "requests"], prefix=prefix)
    cmd = [sys.executable, "-m", "hopscope", "probe", "--iface", VETH_A, "--point", "kafka-point", "--netns", NS_A,
           "--kafka", kafka_bootstrap, "--topic-prefix", prefix,
           "--filter", "tcp port 8080 or udp port 53"]  # fmt: skip
    probe = _start_probe(cmd)
    try:
        _client()
    finally:
        probe.proc.send_signal(signal.SIGINT)
        stderr = probe.finish()
    assert probe.proc.returncode == 0, stderr
    flows: list[FlowRecord] = []
    requests: list[RequestRecord] = []
    deadline = time.monotonic() + 30
    try:
        complete = False
        while not complete and time.monotonic() < deadline:
            for d in consumer.poll(timeout_s=0.5):
                target = flows if d.batch.record_type is FlowRecord else requests
                target.extend(d.batch.records())  # type: ignore[arg-type]
            complete = len(requests) >= len(PATHS) + 1 and any(f.proto == 6 and f.final for f in flows)
    finally:
        consumer.close()
    _check_records(flows, requests)


def test_live_probe_on_any_interface_names_points_by_interface(netns_pair: None) -> None:
    from hopscope.probes.live import ProbeSettings

    _, flows, requests = capture_client(
        ProbeSettings(iface="any", point="nodeA", hop_kind="nat", netns=NS_A, bpf="tcp or udp"))
    _check_records(flows, requests)
    assert {(r.point, r.iface) for r in requests} == {(f"nodeA:{VETH_A}", VETH_A)}
    assert {(f.point, f.iface) for f in flows} == {(f"nodeA:{VETH_A}", VETH_A)}  # type: ignore[attr-defined]


def test_two_probes_in_a_fanout_group_share_the_traffic_by_connection(netns_pair: None) -> None:
    from hopscope.probes.live import LiveProbe, ProbeSettings
    from hopscope.transport import InProcessTransport

    transports = [InProcessTransport(), InProcessTransport()]
    probes = [
        LiveProbe(ProbeSettings(iface=VETH_A, point="fan", netns=NS_A, bpf="tcp or udp", fanout=4242), t)
        for t in transports
    ]
    runners = [threading.Thread(target=p.run, args=(60,)) for p in probes]
    for runner in runners:
        runner.start()
    try:
        assert all(p.started.wait(30) for p in probes), "a probe did not open its ring"
        _client()
    finally:
        for p in probes:
            p.stop()
        for runner in runners:
            runner.join(30)
    per_probe = []
    for t in transports:
        batches = [d.batch for d in t.poll(timeout_s=0.1, max_records=10**6)]
        per_probe.append([r for b in batches for r in b.records()])
    everything = [r for records in per_probe for r in records]
    flows = [r for r in everything if isinstance(r, FlowRecord)]
    requests = [r for r in everything if isinstance(r, RequestRecord)]
    _check_records(flows, requests)  # each request once, paired: no connection was split
    http_owners = {
        i for i, records in enumerate(per_probe) if any(getattr(r, "l7_proto", "") == "http" for r in records)
    }
    assert len(http_owners) == 1


# --- the C ring walk and the flood generator on a live ring ----------------------------------------------

FLOOD_CLIENTS = 40  # TCP conversations in the flood's capture (plus one DNS exchange each)


def _flood_capture(path: Path) -> int:
    """A capture of FLOOD_CLIENTS HTTP-like TCP conversations and DNS exchanges; returns its frame count."""
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:09")  # not B's address: B's stack drops them
    frames = []
    for i in range(FLOOD_CLIENTS):
        c, s = IP(src=f"10.0.1.{i + 1}", dst="10.100.0.1"), IP(src="10.100.0.1", dst=f"10.0.1.{i + 1}")
        cp, req, resp = (
            30000 + i,
            b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        frames += [
            eth / c / TCP(sport=cp, dport=80, flags="S", seq=100),
            eth / s / TCP(sport=80, dport=cp, flags="SA", seq=500, ack=101),
            eth / c / TCP(sport=cp, dport=80, flags="A", seq=101, ack=501),
            eth / c / TCP(sport=cp, dport=80, flags="PA", seq=101, ack=501) / req,
            eth / s / TCP(sport=80, dport=cp, flags="PA", seq=501, ack=101 + len(req)) / resp,
            eth / c / TCP(sport=cp, dport=80, flags="FA", seq=101 + len(req), ack=501 + len(resp)),
            eth / s / TCP(sport=80, dport=cp, flags="FA", seq=501 + len(resp), ack=102 + len(req)),
            eth / c / TCP(sport=cp, dport=80, flags="A", seq=102 + len(req), ack=502 + len(resp)),
            eth / c / UDP(sport=cp, dport=53) / DNS(id=i, qd=DNSQR(qname="svc.test")),
        ]
    wrpcap(str(path), frames)
    return len(frames)


@pytest.mark.parametrize("iface", ["veth", "any"])
def test_c_ring_walk_equals_the_reference_on_a_live_ring(netns_pair: None, tmp_path: Path, iface: str) -> None:
    import numpy as np

    from hopscope.lab.flood import run_flood
    from hopscope.probes import kernels
    from hopscope.probes.live import PacketRing, RingSettings, gather_reference
    from hopscope.probes.readers import PAD_BYTES

    native = kernels.load("_ring")
    if native is None:
        pytest.skip("the _ring kernel is not built")
    capture = tmp_path / "flood.pcap"
    _flood_capture(capture)
    settings = RingSettings(block_bytes=1 << 16, block_count=8, retire_ms=10)
    with PacketRing(VETH_B if iface == "veth" else "any", netns=NS_B, settings=settings) as ring:
        sent = run_flood(VETH_A, capture, pps=20_000, seconds=0.2, netns=NS_A)
        time.sleep(0.1)  # the kernel retires the last block after retire_ms
        assert ring._map is not None and ring._words is not None
        block_words = settings.block_bytes // 4
        ready = [i for i in range(settings.block_count) if ring._words[i * block_words + 2] & 1]
        total = sum(min(ring._words[i * block_words + 3], block_words) for i in ready)
        results = []
        for walk in (native.gather, gather_reference):
            buf = np.empty(len(ready) * settings.block_bytes + PAD_BYTES, np.uint8)
            cols = [np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.uint32)]
            cols.append(np.empty(total, np.uint32))
            count, bad = walk(ring._map, settings.block_bytes, ready, buf, *cols, ring.cooked)
            results.append((count, bad, buf, [c[:count] for c in cols]))
    (count, bad, buf, cols), (ref_count, ref_bad, ref_buf, ref_cols) = results
    assert (count, bad) == (ref_count, ref_bad) and bad == 0
    assert 0 < count <= sent.sent and np.array_equal(buf, ref_buf)
    assert all(np.array_equal(a, b) for a, b in zip(cols, ref_cols, strict=True))


@pytest.mark.parametrize(
    "ring",
    [
        {},  # 64 blocks of 1 MiB: the flood fits, blocks read in place
        {"block_bytes": 1 << 16, "block_count": 24},  # the ring wraps: its last block is copied
        {"block_bytes": 1 << 16, "block_count": 24, "zero_copy": False},  # every block copied
    ],
    ids=["big-ring", "wrapping", "copying"],
)
def test_probe_meters_every_frame_of_a_flood_without_drops(
    netns_pair: None, tmp_path: Path, ring: dict[str, int]
) -> None:
    """The flood generator's frames (a capture replayed in cycles, each cycle renumbered) all reach the
    probe's meter: as many frames read as sent, no kernel drops, every cycle's conversations as flows."""
    from hopscope.lab.flood import run_flood
    from hopscope.probes.live import ProbeSettings, RingSettings

    capture = tmp_path / "flood.pcap"
    per_cycle = _flood_capture(capture)
    settings = ProbeSettings(
        iface=VETH_B,
        point="flood",
        netns=NS_B,
        bpf="ip",
        l7=False,
        ring=RingSettings(**ring),  # type: ignore[arg-type]
    )

    def flood() -> FloodResult:
        # ~3.4 MB of frames: the small rings wrap twice yet hold ~1.8 s of traffic (no drop on a busy host,
        # where the probe's thread may wait its turn for a second)
        sent = run_flood(VETH_A, capture, pps=5_000 if ring else 50_000, seconds=4.0 if ring else 0.5, netns=NS_A)
        time.sleep(0.2)
        return sent

    summary, batches, sent = run_probe(settings, flood)
    assert sent.errors == 0 and sent.cycles >= 2 and summary.meter.get("reused_tuples", 0) == 0, summary
    assert summary.kernel_drops == 0 and summary.frames_read == summary.kernel_packets == sent.sent
    flows = [r for b in batches for r in b.records()]
    final = [f for f in flows if isinstance(f, FlowRecord) and f.final]
    assert sum(f.orig_pkts + f.resp_pkts for f in final) == sent.sent
    complete = sent.sent // per_cycle  # cycles replayed in full: each one a new set of conversations
    tcp_sf = {(f.orig_h, f.orig_p) for f in final if f.proto == 6 and f.conn_state == "SF"}
    assert len(tcp_sf) >= complete * FLOOD_CLIENTS
    assert len({f.orig_h.split(".")[1] for f in final}) == min(sent.cycles + 1, 256)  # renumbered per cycle


def test_flood_renumbers_each_cycle_with_valid_checksums(netns_pair: None, tmp_path: Path) -> None:
    """Every replayed frame keeps correct IPv4, TCP and UDP checksums after the per-cycle renumbering
    (RFC 1624 incremental updates in lab/flood.c), and cycles differ only in the addresses' second octet."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    from hopscope.lab.flood import run_flood
    from hopscope.probes.live import PacketRing, RingSettings

    capture = tmp_path / "flood.pcap"
    per_cycle = _flood_capture(capture)
    frames: list[bytes] = []
    with PacketRing(VETH_B, bpf="ip", netns=NS_B, settings=RingSettings(retire_ms=10, zero_copy=False)) as ring:
        sent = run_flood(VETH_A, capture, pps=20_000, seconds=0.1, netns=NS_A)
        # every frame sent, as the kernel hands its blocks over (the last once retire_ms passed), then
        # whatever else comes within one more read
        deadline = time.monotonic() + 30
        while len(frames) < sent.sent and time.monotonic() < deadline:
            if (raw := ring.read(50)) is not None:
                frames += [raw.frame(i) for i in range(raw.count)]
        while (raw := ring.read(50)) is not None:
            frames += [raw.frame(i) for i in range(raw.count)]
    assert len(frames) == sent.sent > 2 * per_cycle
    for n, frame in enumerate(frames):
        packet = Ether(frame)
        ip = packet[IP]
        cycle = n // per_cycle  # client addresses 10.0.1.x become 10.C.1.x, the server 10.100.0.1 10.(100^C).0.1
        assert sorted(int(a.split(".")[1]) for a in (ip.src, ip.dst)) == sorted((cycle, cycle ^ 100))
        l4 = packet[TCP] if TCP in packet else packet[UDP]
        wire = (ip.chksum, l4.chksum)
        del ip.chksum, l4.chksum
        rebuilt = Ether(bytes(packet))
        assert wire == (rebuilt[IP].chksum, (rebuilt[TCP] if TCP in rebuilt else rebuilt[UDP]).chksum), n
