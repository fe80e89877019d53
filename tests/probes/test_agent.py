"""The agent's parts that need neither root nor a broker: hop kind inference, namespace discovery and
deduplication, the bounded batch buffer and the sender's outage handling."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hopscope.errors import UnavailableError
from hopscope.probes.agent_buffer import BatchBuffer, KafkaSender, PointSink
from hopscope.probes.agent_config import NamespacesConfig, parse_config
from hopscope.probes.agent_discovery import discover_namespaces, hop_kind_of
from hopscope.records import Batch, FlowRecord, HopKind


def wait_for(condition: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def flows(n: int, point: str = "p") -> Batch:
    return Batch.from_records(FlowRecord, [FlowRecord(point=point, orig_p=i) for i in range(n)])


@pytest.mark.parametrize(("iface", "in_root", "kind"), [
    ("eth0", False, HopKind.POD),  # a pod's interface
    ("lo", False, HopKind.PROXY),  # a pod's loopback: application <-> sidecar
    ("tap0", False, HopKind.HYPERVISOR),  # a VM's tap inside a pod (KubeVirt)
    ("veth1a2b", True, HopKind.NODE),  # the node's end of a pod veth
    ("cni0", True, HopKind.NODE),
    ("eth0", True, HopKind.NODE),  # the node's NIC
    ("lo", True, HopKind.NODE),
    ("tap3", True, HopKind.HYPERVISOR),
    ("eth1", True, HopKind.GATEWAY),  # an override wins over inference
])  # fmt: skip
def test_hop_kinds_are_inferred_after_the_overrides(iface: str, in_root: bool, kind: HopKind) -> None:
    text = "schema: hopscope.agent/1\nkafka: {bootstrap: 'x:1'}\nhop_kinds: {overrides: {'eth1': gateway}}\n"
    assert hop_kind_of(iface, in_root, parse_config(text, {}).hop_kinds) is kind


def test_without_inference_only_overrides_name_kinds() -> None:
    text = "schema: hopscope.agent/1\nkafka: {bootstrap: 'x:1'}\nhop_kinds: {infer: false, overrides: {lo: proxy}}\n"
    config = parse_config(text, {}).hop_kinds
    assert (hop_kind_of("eth0", False, config), hop_kind_of("lo", False, config)) == (HopKind.UNKNOWN, HopKind.PROXY)


def test_a_namespace_is_listed_once_and_non_namespaces_are_skipped(tmp_path: Path) -> None:
    netns, proc = tmp_path / "netns", tmp_path / "proc"
    netns.mkdir()
    (netns / "stale").write_text("")  # an entry whose mount is gone: a plain file
    (netns / "mine").symlink_to("/proc/self/ns/net")  # the agent's own namespace under a name
    (proc / "1" / "ns").mkdir(parents=True)
    (proc / "1" / "ns" / "net").symlink_to("/proc/self/ns/net")
    (proc / "2" / "ns").mkdir(parents=True)  # a process that exited: no ns/net
    own = os.stat("/proc/self/ns/net").st_ino
    found = discover_namespaces(NamespacesConfig(True, (str(netns), str(tmp_path / "absent")), str(proc)))
    assert [(ns.name, ns.path, ns.inode) for ns in found] == [("root", None, own)]
    found = discover_namespaces(NamespacesConfig(False, (str(netns),), str(proc)))
    assert found == []  # the agent's own namespace is never captured under another name


def test_the_buffer_drops_the_oldest_beyond_its_bound_and_counts_them() -> None:
    buffer = BatchBuffer(max_batches=2)
    for n in (1, 2, 3):
        buffer.put("a", flows(n))
    assert buffer.stats.batches_dropped == 1 and buffer.stats.records_dropped == 1
    taken = buffer.take(10, timeout_s=0)
    assert [len(e.batch) for e in taken] == [2, 3]
    buffer.put("b", flows(4))  # the in-flight ones count against the bound: the new one pushes out nothing in flight
    assert buffer.held() == 2 and buffer.stats.records_dropped == 1 + 4
    buffer.failed(taken)  # back to the front, in order
    assert [len(e.batch) for e in buffer.take(10, timeout_s=0)] == [2, 3]


def test_a_points_flush_waits_until_its_batches_were_sent() -> None:
    buffer = BatchBuffer(8)
    sink = PointSink(buffer, "a", flush_timeout_s=5)
    sink.publish(flows(3))
    assert not buffer.wait_sent("a", 5)  # the broker is down: no wait
    buffer.set_broker_up(True)
    sink.publish(flows(0))  # empty batches are not buffered
    taken = buffer.take(8, timeout_s=0)
    assert buffer.lag_s("a") >= 0 and buffer.lag_s("b") == 0
    threading.Timer(0.2, buffer.sent, [taken]).start()
    sink.flush()
    assert buffer.held("a") == 0 and buffer.stats.records_sent_by_point == {"a": 3}


class FlakyPublisher:
    """Refuses while ``down`` is set: at connect, or at flush (the broker did not acknowledge)."""

    def __init__(self, down: threading.Event, published: list[Batch]) -> None:
        self.down, self.published, self.pending = down, published, list[Batch]()

    def publish(self, batch: Batch) -> None:
        self.pending.append(batch)

    def flush(self) -> None:
        if self.down.is_set():
            raise UnavailableError("broker gone")
        self.published += self.pending
        self.pending = []

    def close(self) -> None:
        pass


def test_the_sender_buffers_through_an_outage_and_resumes() -> None:
    down, published = threading.Event(), list[Batch]()
    down.set()

    def connect() -> FlakyPublisher:
        if down.is_set():
            raise UnavailableError("connection refused")
        return FlakyPublisher(down, published)

    buffer = BatchBuffer(max_batches=3)
    sender = KafkaSender(buffer, connect, retry_s=0.05)
    sender.start()
    assert wait_for(lambda: sender.state.outages == 1)
    for n in range(1, 6):
        buffer.put("a", flows(n))
    assert not sender.state.connected and published == []
    assert buffer.stats.batches_dropped == 2  # the two oldest
    down.clear()
    assert wait_for(lambda: not buffer.held())
    assert [len(b) for b in published] == [3, 4, 5] and sender.state.connected
    down.set()  # the broker goes away while connected: the flush fails, the batch waits
    buffer.put("a", flows(6))
    assert wait_for(lambda: sender.state.outages == 2)
    assert buffer.held() == 1 and not sender.state.connected
    down.clear()
    assert sender.close(timeout_s=5) == 0
    assert [len(b) for b in published] == [3, 4, 5, 6]
    assert (buffer.stats.batches_sent, buffer.stats.records_sent) == (4, 18)


def test_what_cannot_be_sent_at_exit_is_counted_as_dropped() -> None:
    def connect() -> FlakyPublisher:
        raise UnavailableError("connection refused")

    buffer = BatchBuffer(max_batches=8)
    sender = KafkaSender(buffer, connect, retry_s=0.05)
    sender.start()
    buffer.put("a", flows(2))
    assert sender.close(timeout_s=0.2) == 1
    assert (buffer.stats.batches_dropped, buffer.stats.records_dropped, buffer.held()) == (1, 2, 0)


def test_batches_dropped_at_exit_stay_counted_when_a_late_send_returns() -> None:
    buffer = BatchBuffer(max_batches=8)
    buffer.put("a", flows(2))
    taken = buffer.take(8, timeout_s=0)
    assert buffer.drop_all() == 1  # the sender was stuck in a flush when the agent gave up on it
    buffer.sent(taken)
    buffer.failed(taken)
    assert (buffer.stats.batches_dropped, buffer.stats.batches_sent, buffer.held()) == (1, 0, 0)
