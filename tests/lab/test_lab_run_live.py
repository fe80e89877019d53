"""``hopscope lab run --live`` as a user runs it: a small plan with delay and loss at node B's ingress,
one agent per lab host into the running Kafka, the streaming correlator into an embedded chDB store
(and into a database of its own on the ClickHouse server), the stored traces scored. Root and Kafka
needed. Also: a broker that does not answer stops the run before the lab is built, and Ctrl-C in the
middle of a run leaves no lab, process or topic behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLICKHOUSE_URL, require_service

pytestmark = [pytest.mark.lab, pytest.mark.kafka]
SITE, DELAY_MS, LOSS = "nodeB-ingress", 3, 0.05
SMALL_PLAN = ["--requests", "6", "--big-bytes", "100000", "--seed", "3"]


def live_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hopscope", "lab", "run", "--live", "--out", str(out), *SMALL_PLAN,
            "--delay", f"{SITE}={DELAY_MS}", "--loss", f"{SITE}={LOSS}", *extra]  # fmt: skip


def run_prefix(stdout: str) -> tuple[str, str]:
    """(lab namespace prefix, Kafka topic prefix) the run printed."""
    lab = re.search(r"^lab (hs[0-9a-f]{6}-) up", stdout, re.M)
    topics = re.search(r"topics (\S+)\.\*", stdout)
    assert lab and topics, stdout
    return lab.group(1), topics.group(1)


def leftovers(out: Path, lab_prefix: str, topic_prefix: str, bootstrap: str) -> list[str]:
    """What a finished run left behind: namespaces, processes started with its files, topics."""
    from kafka.admin import KafkaAdminClient

    found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [line for line in found.splitlines() if line.startswith(lab_prefix)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmdline:
            left.append(f"process {pid}: {cmdline}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        left += [t for t in admin.list_topics() if t.startswith(topic_prefix + ".")]
    finally:
        admin.close()
    return left


@pytest.fixture
def clickhouse_store() -> Iterator[str]:
    """A database of its own on the ClickHouse server, dropped afterwards."""
    from hopscope.store import store_from_url

    server = CLICKHOUSE_URL.removeprefix("clickhouse://").split("/", 1)[0]
    require_service("ClickHouse", server)
    url = f"clickhouse://{server}/hslive_{uuid.uuid4().hex[:10]}"
    yield url
    store = store_from_url(url)
    try:
        store.drop_schema()
    finally:
        store.close()


def check_scored_run(done: subprocess.CompletedProcess[str], out: Path, bootstrap: str) -> dict[str, Any]:
    """The run passed, printed its score as analyze --manifest does, and left nothing behind."""
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    recall = re.search(r"recall +(\d+)/(\d+) = 1\.0000", text)
    precision = re.search(r"precision +(\d+)/(\d+) = 1\.0000", text)
    assert recall and precision and int(recall.group(2)) > 20, text
    assert recall.group(1) == recall.group(2) and precision.group(1) == precision.group(2), text
    assert "traces shared by two requests 0, hop records in two traces 0" in text
    assert re.search(rf"delay nodeB>server1-pod .*injected {DELAY_MS}000 us", text), text
    assert "\nPASS (bar: recall >= 0.999, no false link)" in text
    assert not leftovers(out, *run_prefix(text), bootstrap)
    score: dict[str, Any] = json.loads((out / "score.json").read_text())
    return score


def check_loss_and_delay(ev: dict[str, Any]) -> None:
    """Loss pinned to the impaired link; the injected delay measured on it, held against the delay the
    delayer reports each segment really got (so some of them must be known), median within 500 us: the
    scorer's own tolerance is 150 us; a link measured wrong is off by ms."""
    assert set(ev["lossy_links"]) <= set(ev["impaired_loss_links"])
    assert ev["dropped_pinned"] == ev["dropped_request_segments"]
    assert {d["link"] for d in ev["delays"]} == {"nodeB>server1-pod", "nodeB>server2-pod"}
    for d in ev["delays"]:
        assert d["n"] > 0 and d["held_known"] > 0 and abs(d["median_error_us"]) <= 500, d


def test_live_run_on_chdb(tmp_path: Path, kafka_bootstrap: str) -> None:
    from tests.lab.conftest import require_lab

    require_lab()
    out = tmp_path / "live"
    done = subprocess.run(live_cmd(out, "--kafka", kafka_bootstrap), capture_output=True, text=True, timeout=600)
    score = check_scored_run(done, out, kafka_bootstrap)
    print(done.stdout)
    assert score["passed"] and score["store"] == f"chdb://{out / 'store'}"
    check_loss_and_delay(score["evaluation"])
    agents = {a["agent"]: a for a in score["agents"]}
    assert set(agents) == {"client1", "client2", "nodeA", "hv", "probe", "nodeB", "server1", "server2"}
    assert all(a["records_sent"] > 0 and a["batches_dropped"] == 0 for a in agents.values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {cp["name"]: cp["agent_point"] for cp in manifest["capture_points"]}["nodeA-pre-nat"] == "nodeA/cni0"


@pytest.mark.clickhouse
def test_live_run_on_the_clickhouse_server(tmp_path: Path, kafka_bootstrap: str, clickhouse_store: str) -> None:
    from hopscope.store import store_from_url
    from tests.lab.conftest import require_lab

    require_lab()
    out = tmp_path / "live"
    cmd = live_cmd(out, "--kafka", kafka_bootstrap, "--store", clickhouse_store)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    score = check_scored_run(done, out, kafka_bootstrap)
    store = store_from_url(clickhouse_store)
    try:
        assert store.count("traces") == score["traces_stored"] > 20
    finally:
        store.close()
    assert not (out / "store").exists()


def test_a_silent_broker_stops_the_run_before_the_lab(tmp_path: Path) -> None:
    """The broker is checked first: nothing is built, the error names the address."""
    from tests.lab.conftest import require_lab

    require_lab()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    done = subprocess.run(live_cmd(tmp_path / "live", "--kafka", f"127.0.0.1:{port}"), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert f"Kafka broker at 127.0.0.1:{port} is unreachable" in done.stderr
    assert "lab hs" not in done.stdout


def test_ctrl_c_tears_everything_down(tmp_path: Path, kafka_bootstrap: str) -> None:
    """SIGINT once the agents capture: the run ends interrupted, and its namespaces, agents, correlator
    and topics are gone."""
    from tests.lab.conftest import require_lab

    require_lab()
    out = tmp_path / "live"
    proc = subprocess.Popen(live_cmd(out, "--kafka", kafka_bootstrap), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("agents: 8 processes capturing"):
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = "".join(lines) + rest
    assert proc.returncode == 130 and "hopscope: interrupted" in err, stdout + err
    assert "deleted" in stdout and "topics" in stdout
    assert not leftovers(out, *run_prefix(stdout), kafka_bootstrap)
