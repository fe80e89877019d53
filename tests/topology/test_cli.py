"""``hopscope topology`` on a real embedded store (chDB) holding traces built by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hopscope.cli import main
from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.topology.paths import INVENTORY, T0, lab_trace


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('topo')}/chdb"
    made = [lab_trace(1, 1, 1), lab_trace(2, 2, 2, error=1), lab_trace(3, 1, 2, lost_on="nodeB")]
    store = store_from_url(url)
    try:
        store.ensure_schema()
        store.insert("traces", Batch.from_records(Trace, [t for t, _ in made]))
        store.insert("spans", Batch.from_records(Span, [s for _, spans in made for s in spans]))
    finally:
        store.close()
    return url


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(INVENTORY))
    return path


def test_json(store_url: str, inventory_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--store", store_url, "--inventory", str(inventory_file), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    services = {(e["source"], e["target"]): e for e in out["services"]["links"]}
    assert services["service:default/web", "pod:default/server2"]["requests"] == 2
    assert services["pod:default/client2", "service:default/web"]["errors"] == 1
    points = {(e["source"], e["target"]): e for e in out["points"]["links"]}
    assert points["switch-mirror", "nodeB"]["traces"] == 3
    assert points["hv-tap", "switch-mirror"]["lost_pkts"] == 0
    assert points["switch-mirror", "nodeB"]["lost_pkts"] == 1


def test_text_and_dot(store_url: str, inventory_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--store", store_url, "--inventory", str(inventory_file)]) == 0
    text = capsys.readouterr().out
    assert "service map: 3 traces" in text and "capture-point topology: 3 traces, 11 points" in text
    assert any(line.split()[:2] == ["web", "server2"] for line in text.splitlines())
    assert "nodeB>server1-pod" in text
    assert main(["topology", "--store", store_url, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.count("digraph") == 2 and '"switch-mirror" -> "nodeB"' in dot


def test_window_excludes_traces(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # the graphs count every trace of the window's whole minutes: all three started in T0's minute
    for start_ns, traces in ((T0 + 2_500_000, 3), (T0 + 60 * 10**9, 0)):
        assert main(["topology", "--store", store_url, "--format", "json", "--start-ns", str(start_ns)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["points"]["graph"]["traces"] == traces and out["services"]["graph"]["traces"] == traces


def test_bad_inventory_is_a_config_error(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pods: [{name: x, ip: 999.1.1.1}]\n")
    assert main(["topology", "--store", store_url, "--inventory", str(bad)]) == 2
    assert "not an IP address" in capsys.readouterr().err
