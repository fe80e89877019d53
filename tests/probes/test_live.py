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
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopscope.records import FlowRecord, RequestRecord

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


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns_pair() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        _sh("ip", "netns", "add", NS_A)
        _sh("ip", "netns", "add", NS_B)
        _sh("ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B)
        for ns, dev, addr in ((NS_A, VETH_A, ADDR_A), (NS_B, VETH_B, ADDR_B)):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        for script, args in ((SERVER, [ADDR_B, str(PORT)]), (DNS_SERVER, [ADDR_B])):
            servers.append(subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", script, *args]))
        _wait_for_port()
        yield
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


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


def _start_probe(cmd: list[str]) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """Start ``hopscope -v probe ...`` and return once it logged that it is capturing."""
    cmd = [*cmd[:3], "-v", *cmd[3:]]  # python -m hopscope -v probe ...
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd="/")
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "capturing on" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(60):
        proc.kill()
        raise AssertionError("the probe did not start capturing:\n" + "".join(lines))
    return proc, lines, reader


def _finish_probe(proc: subprocess.Popen[str], lines: list[str], reader: threading.Thread) -> str:
    proc.wait(60)
    reader.join(10)  # stderr is closed once the probe exited
    return "".join(lines)


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


def test_live_probe_in_namespace_sees_http_and_dns(netns_pair: None) -> None:
    from hopscope.probes.live import LiveProbe, ProbeSettings
    from hopscope.transport import InProcessTransport

    transport = InProcessTransport()
    settings = ProbeSettings(iface=VETH_A, point="client-veth", host="lab", hop_kind="pod", netns=NS_A,
                             bpf="tcp or udp", publish_interval_s=0.2)  # fmt: skip
    probe = LiveProbe(settings, transport)
    summaries = []
    runner = threading.Thread(target=lambda: summaries.append(probe.run(60)))
    runner.start()
    try:
        assert probe.started.wait(30), "the probe did not open its ring"
        _client()
    finally:
        probe.stop()
        runner.join(30)
    (summary,) = summaries
    batches = [d.batch for d in transport.poll(timeout_s=0.1, max_records=10**6)]
    flows = [r for b in batches if b.record_type is FlowRecord for r in b.records()]
    requests = [r for b in batches if b.record_type is RequestRecord for r in b.records()]
    _check_records(flows, requests)  # type: ignore[arg-type]
    assert summary.kernel_drops == 0
    assert summary.frames_read >= 12
    assert all(r.point == "client-veth" and r.iface == VETH_A for r in requests)


def test_probe_command_flushes_on_sigterm_and_exits_zero(netns_pair: None, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    cmd = [sys.executable, "-m", "hopscope", "probe", "--iface", VETH_A, "--point", "cli-point",
           "--netns", NS_A, "--out", str(out), "--filter", "tcp port 8080 or udp port 53"]  # fmt: skip
    proc, lines, reader = _start_probe(cmd)
    try:
        _client()
    finally:
        proc.send_signal(signal.SIGTERM)
        stderr = _finish_probe(proc, lines, reader)
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    flows = [FlowRecord(**{k: v for k, v in r.items() if k != "table"}) for r in rows if r["table"] == "flows"]
    requests = [RequestRecord(**{k: v for k, v in r.items() if k != "table"}) for r in rows if r["table"] == "requests"]
    _check_records(flows, requests)
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["kernel_drops"] == 0 and summary["request_records"] == len(PATHS) + 1


@pytest.mark.kafka
def test_probe_command_publishes_to_kafka(netns_pair: None, kafka_bootstrap: str) -> None:
    import uuid

    from hopscope.transport.kafka import KafkaRecordConsumer, ensure_topics

    prefix = f"t{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, prefix=prefix)
    consumer = KafkaRecordConsumer(kafka_bootstrap, f"probe-{prefix}", tables=["flows", "requests"], prefix=prefix)
    cmd = [sys.executable, "-m", "hopscope", "probe", "--iface", VETH_A, "--point", "kafka-point", "--netns", NS_A,
           "--kafka", kafka_bootstrap, "--topic", prefix, "--filter", "tcp port 8080 or udp port 53"]  # fmt: skip
    proc, lines, reader = _start_probe(cmd)
    try:
        _client()
    finally:
        proc.send_signal(signal.SIGINT)
        stderr = _finish_probe(proc, lines, reader)
    assert proc.returncode == 0, stderr
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
    from hopscope.probes.live import LiveProbe, ProbeSettings
    from hopscope.transport import InProcessTransport

    transport = InProcessTransport()
    settings = ProbeSettings(iface="any", point="nodeA", hop_kind="nat", netns=NS_A, bpf="tcp or udp")
    probe = LiveProbe(settings, transport)
    runner = threading.Thread(target=probe.run, args=(60,))
    runner.start()
    try:
        assert probe.started.wait(30), "the probe did not open its ring"
        _client()
    finally:
        probe.stop()
        runner.join(30)
    batches = [d.batch for d in transport.poll(timeout_s=0.1, max_records=10**6)]
    flows = [r for b in batches if b.record_type is FlowRecord for r in b.records()]
    requests = [r for b in batches if b.record_type is RequestRecord for r in b.records()]
    _check_records(flows, requests)  # type: ignore[arg-type]
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
