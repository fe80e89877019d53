"""The agent on namespaces the test creates (root needed), publishing to the real broker.

The agent is pointed at a directory of its own (symbolic links to the test's namespaces, by the names
the points should carry) and at a ``proc_root`` of its own (links to the namespace of one process the
test starts), never at the machine's: it sees only the test's namespaces. Traffic: HTTP from namespace
"client" to a server in namespace "server", and from the server namespace to itself over its loopback
(the sidecar leg: a ``proxy`` hop). Every namespace and process is removed whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from hopscope.lab.services import start_watched
from hopscope.probes.agent import Agent, AgentSummary
from hopscope.probes.agent_config import AgentConfig, parse_config
from hopscope.records import FlowRecord, RequestRecord
from tests.netns import add_veth_pair, delete_namespaces, sh

pytestmark = [pytest.mark.lab]

TAG = os.getpid() % 100000
NS_A, NS_B, NS_C, NS_D = (f"hsag{x}{TAG}" for x in "abcd")
VETH_A, VETH_B, VETH_C, VETH_D = (f"hg{x}{TAG}" for x in "abcd")
ADDR_A, ADDR_B, ADDR_C, ADDR_D = "10.250.9.1", "10.250.9.2", "10.250.10.1", "10.250.10.2"
PORT = 8080
HOST = "agent-test"

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

CLIENT = """
import http.client, sys
for path in sys.argv[3:]:
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
    c.request("GET", path)
    c.getresponse().read()
    c.close()
"""

UDP = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
      "[s.sendto(b'x' * 64, (sys.argv[1], 9999)) for _ in range(5)]"  # fmt: skip


def _in(ns: str, script: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args], check=True, timeout=30,
                   capture_output=True)  # fmt: skip


def _wait_for_server() -> None:
    probe = f"import socket; socket.create_connection(('{ADDR_B}', {PORT}), timeout=0.5).close()"
    for _ in range(100):
        run = subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", probe], capture_output=True)
        if run.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("the test HTTP server did not start")


@dataclass
class Site:
    """The test's namespaces as the agent is shown them."""

    netns_dir: Path
    proc_root: Path
    lone_inode: int = 0  # the namespace only a process holds
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    s = Site(tmp_path / "netns", tmp_path / "proc")
    s.netns_dir.mkdir()
    s.proc_root.mkdir()
    try:
        add_veth_pair(NS_A, NS_B, VETH_A, VETH_B, ADDR_A, ADDR_B)
        (s.netns_dir / "client").symlink_to(f"/var/run/netns/{NS_A}")
        (s.netns_dir / "server").symlink_to(f"/var/run/netns/{NS_B}")
        s.procs.append(subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", SERVER, str(PORT)]))
        lone = subprocess.Popen(["unshare", "--net", "sleep", "120"])
        s.procs.append(lone)
        _link_process(s, lone.pid, f"/proc/{lone.pid}/ns/net")
        _link_process(s, 1, f"/var/run/netns/{NS_A}")  # a process in a named namespace: listed by its name
        _wait_for_server()
        s.lone_inode = os.stat(f"/proc/{lone.pid}/ns/net").st_ino
        assert s.lone_inode != os.stat("/proc/self/ns/net").st_ino
        yield s
    finally:
        for proc in s.procs:
            proc.kill()
            proc.wait()
        delete_namespaces(NS_A, NS_B, NS_C, NS_D)


def _link_process(s: Site, pid: int, target: str) -> None:
    (s.proc_root / str(pid) / "ns").mkdir(parents=True)
    (s.proc_root / str(pid) / "ns" / "net").symlink_to(target)


def _config(s: Site, bootstrap: str, prefix: str) -> AgentConfig:
    raw = {
        "schema": "hopscope.agent/1", "host": HOST,
        "interfaces": {"include": r"hg[a-d]\d+|lo", "exclude": "", "rescan_s": 1},
        "namespaces": {"root": False, "netns_dirs": [str(s.netns_dir)], "proc_root": str(s.proc_root)},
        "points": {"name": "{host}/{netns}/{iface}"},
        "capture": {"bpf": "tcp or udp", "l7": True, "ring_mb": 2, "max_flows": 10_000},
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
        "report_interval_s": 1,
    }  # fmt: skip
    return parse_config(yaml.safe_dump(raw), {})


@contextmanager
def running(agent: Agent) -> Iterator[list[AgentSummary]]:
    """The agent in a thread; stopped and joined on leaving, whatever happened."""
    summaries: list[AgentSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(agent.run(120)))
    thread.start()
    try:
        yield summaries
    finally:
        agent.stop()
        thread.join(60)
    assert summaries, "the agent did not finish"


def wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def consume(bootstrap: str, prefix: str, done: Callable[[list[FlowRecord], list[RequestRecord]], bool]
            ) -> tuple[list[FlowRecord], list[RequestRecord]]:  # fmt: skip
    from hopscope.transport.kafka import KafkaRecordConsumer

    consumer = KafkaRecordConsumer(bootstrap, f"agent-{prefix}", tables=["flows", "requests"], prefix=prefix)
    flows: list[FlowRecord] = []
    requests: list[RequestRecord] = []
    deadline = time.monotonic() + 30
    try:
        while not done(flows, requests) and time.monotonic() < deadline:
            for d in consumer.poll(timeout_s=0.5):
                target: list = flows if d.batch.record_type is FlowRecord else requests  # type: ignore[type-arg]
                target.extend(d.batch.records())
    finally:
        consumer.close()
    return flows, requests


@pytest.mark.kafka
def test_the_agent_names_points_infers_kinds_and_publishes(site: Site, kafka_bootstrap: str) -> None:
    from tests.conftest import topic_prefix

    prefix = topic_prefix("agent")
    agent = Agent(_config(site, kafka_bootstrap, prefix))
    lone = f"{HOST}/ns-{site.lone_inode}/lo"
    expected = {f"{HOST}/client/{VETH_A}", f"{HOST}/client/lo", f"{HOST}/server/{VETH_B}", f"{HOST}/server/lo", lone}
    with running(agent) as summaries:
        wait_for(lambda: agent.capturing() == expected)
        wait_for(lambda: agent.sender.state.connected)
        _in(NS_A, CLIENT, ADDR_B, str(PORT), "/pod/1", "/pod/2")
        _in(NS_B, CLIENT, "127.0.0.1", str(PORT), "/sidecar")
    kinds = {p.point: p.hop_kind for p in summaries[0].points}
    assert kinds == {f"{HOST}/client/{VETH_A}": "pod", f"{HOST}/client/lo": "proxy", f"{HOST}/server/{VETH_B}": "pod",
                     f"{HOST}/server/lo": "proxy", lone: "proxy"}  # fmt: skip

    def paths(requests: list[RequestRecord], point: str) -> list[str]:
        return sorted(r.path for r in requests if r.point == point and r.l7_proto == "http")

    summary = summaries[0]
    flows, requests = consume(kafka_bootstrap, prefix, lambda f, r: len(f) + len(r) >= summary.records_sent)
    assert paths(requests, f"{HOST}/client/{VETH_A}") == ["/pod/1", "/pod/2"]
    assert paths(requests, f"{HOST}/server/{VETH_B}") == ["/pod/1", "/pod/2"]
    assert paths(requests, f"{HOST}/server/lo") == ["/sidecar"]
    sidecar = [r for r in requests if r.point == f"{HOST}/server/lo"]
    assert all((r.hop_kind, r.host, r.iface) == ("proxy", HOST, "lo") for r in sidecar)
    client_flows = [f for f in flows if f.point == f"{HOST}/client/{VETH_A}" and f.resp_p == PORT]
    assert {(f.hop_kind, f.iface, f.host) for f in client_flows} == {("pod", VETH_A, HOST)}
    assert summary.batches_dropped == 0 and summary.records_sent == len(flows) + len(requests)
    assert all(p.kernel_drops == 0 and p.state == "stopped" for p in summary.points)


@pytest.mark.kafka
def test_namespaces_that_come_and_go_are_followed(site: Site, kafka_bootstrap: str) -> None:
    from tests.conftest import topic_prefix

    prefix = topic_prefix("agent")
    agent = Agent(_config(site, kafka_bootstrap, prefix))
    late = f"{HOST}/late/{VETH_C}"
    with running(agent) as summaries:
        wait_for(lambda: f"{HOST}/client/{VETH_A}" in agent.capturing())
        assert late not in {p.point for p in agent.points()}
        add_veth_pair(NS_C, NS_D, VETH_C, VETH_D, ADDR_C, ADDR_D)  # a pod starts
        (site.netns_dir / "late").symlink_to(f"/var/run/netns/{NS_C}")
        wait_for(lambda: late in agent.capturing())
        _in(NS_D, UDP, ADDR_C)  # an open UDP flow: its record comes from the stopping capture's flush
        (site.netns_dir / "late").unlink()  # the pod ends
        sh("ip", "netns", "del", NS_C)
        wait_for(lambda: agent.summary.points_stopped == 2)  # the late namespace's veth and lo, collected
        assert late not in agent.capturing() and f"{HOST}/client/{VETH_A}" in agent.capturing()
    flows, _ = consume(kafka_bootstrap, prefix, lambda f, r: any(x.point == late for x in f))
    (flow,) = [f for f in flows if f.point == late and f.proto == 17]
    assert (flow.orig_h, flow.resp_h, flow.resp_p, flow.orig_pkts) == (ADDR_D, ADDR_C, 9999, 5)
    assert summaries[0].points_started == 5 + 2


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refusing_broker_is_outlived_and_dropped_batches_are_reported(site: Site, tmp_path: Path) -> None:
    """The command itself, against a port nothing listens on: it keeps capturing, its buffer of one batch
    overflows, the drops are in its log lines and its summary, and SIGTERM ends it with status 0."""
    config = tmp_path / "agent.yaml"
    raw = _config(site, f"127.0.0.1:{_unused_port()}", "unused")
    text = yaml.safe_dump({
        "schema": raw.schema, "host": HOST, "kafka": {"bootstrap": raw.kafka.bootstrap},
        "interfaces": {"include": rf"{VETH_A}", "rescan_s": 1}, "report_interval_s": 1,
        "namespaces": {"root": False, "netns_dirs": [str(site.netns_dir)], "proc_root": str(site.proc_root)},
    })  # fmt: skip
    config.write_text(text)
    cmd = [sys.executable, "-m", "hopscope", "-v", "agent", "--config", str(config), "--buffer-batches", "1"]
    agent = start_watched(cmd, "agent: capturing", cwd="/")
    try:
        # A connection per publish interval of the probe, one flow batch each, until the health line
        # reports two batches dropped (a busy machine may fold two connections into one interval)
        deadline = time.monotonic() + 90
        n = 0
        while _health(agent.lines, "dropped") < 2 or _health(agent.lines, "records") < 3:
            assert time.monotonic() < deadline and agent.proc.poll() is None, agent.lines[-3:]
            if n < 20:
                _in(NS_A, CLIENT, ADDR_B, str(PORT), f"/{n}")
                n += 1
            time.sleep(1.2)
        assert agent.proc.poll() is None  # still running
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        stderr = agent.finish()
    assert agent.proc.returncode == 0, stderr
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["kafka_connected"] is False and summary["kafka_outages"] == 1
    assert summary["batches_dropped"] >= 2 and summary["records_dropped"] >= 2 and summary["records_sent"] == 0
    (point,) = summary["points"]
    assert point["point"] == f"{HOST}/client/{VETH_A}" and point["records"] >= 3


def _health(lines: list[str], figure: str) -> int:
    """The largest ``dropped N batches`` or per-point ``records N`` of the agent's health lines."""
    pattern = re.compile(r"dropped (\d+) batches" if figure == "dropped" else r" records (\d+) sent")
    return max((int(m.group(1)) for line in list(lines) if "agent: " in line and (m := pattern.search(line))),
               default=0)  # fmt: skip


class Forwarder:
    """A TCP port that forwards to the broker once ``open`` is called: a broker that comes back."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = _unused_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.mark.kafka
def test_publishing_resumes_when_the_broker_returns(site: Site, kafka_bootstrap: str) -> None:
    from tests.conftest import topic_prefix

    prefix = topic_prefix("agent")
    forwarder = Forwarder(kafka_bootstrap)
    agent = Agent(_config(site, f"127.0.0.1:{forwarder.port}", prefix), retry_s=0.2)
    point = f"{HOST}/client/{VETH_A}"
    try:
        with running(agent) as summaries:
            wait_for(lambda: point in agent.capturing())
            _in(NS_A, CLIENT, ADDR_B, str(PORT), "/while-down")
            wait_for(lambda: agent.buffer.held(point) > 0)  # records waiting for the broker
            assert agent.sender.state.outages == 1 and not agent.sender.state.connected
            forwarder.open()  # the broker returns (bootstrap through the forwarder, then its own address)
            wait_for(lambda: agent.sender.state.connected and agent.buffer.held() == 0)
    finally:
        forwarder.close()
    _, requests = consume(kafka_bootstrap, prefix, lambda f, r: any(x.path == "/while-down" for x in r))
    assert [r.path for r in requests if r.point == point] == ["/while-down"]
    assert summaries[0].batches_dropped == 0 and summaries[0].kafka_outages == 1
