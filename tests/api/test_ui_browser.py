"""The UI in a real browser: `hopscope demo` stores the lab samples, `hopscope serve` serves them on a
free loopback port, and Debian's headless Chromium loads the page; the test reads the DOM Chromium
dumps after the page's scripts ran (trace rows, a trace's detail, the topology SVGs) and takes a
screenshot. Skipped when Chromium is absent (deploy/setup.sh installs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.topology.paths import lab_trace

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "lab"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (deploy/setup.sh installs it)")

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]  # fmt: skip
#: The lab path of a request from client1 to server1 (manifest capture points), left to right.
LAB_PATH = ["client1-pod", "nodeA-pre-nat", "nodeA-post-nat", "hv-tap", "switch-mirror", "nodeB", "server1-pod",
            "server1-app"]  # fmt: skip
LOSSY_LINK = ("nodeA-post-nat", "hv-tap")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# --- a small DOM of Chromium's --dump-dom output -----------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)
    parent: Element | None = None

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Element]:
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def find_all(self, pred: Callable[[Element], bool]) -> list[Element]:
        return [e for e in self.iter() if pred(e)]

    def by_id(self, ident: str) -> Element:
        found = self.find_all(lambda e: e.attrs.get("id") == ident)
        assert len(found) == 1, f"expected one #{ident}, found {len(found)}"
        return found[0]

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    return builder.root


# --- the served demo ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hopscope serve exited with {proc.returncode}")
        try:
            if _get(f"{base}/healthz")["status"] == "ok":
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"hopscope serve did not answer on {base}")


def _add_lossy_trace(url: str) -> None:
    """The samples lost nothing: add one hand-built trace along the lab path that lost a segment
    between the NAT node and the hypervisor, so the drawing has a link to highlight."""
    trace, spans = lab_trace(1, lost_on=LOSSY_LINK[1])
    store = store_from_url(url)
    try:
        store.insert("traces", Batch.from_records(Trace, [trace]))
        store.insert("spans", Batch.from_records(Span, spans))
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's store served by `hopscope serve --inventory`; yields the base URL. The server runs
    from a directory outside the tree, so it imports the installed package as a user's does."""
    var = tmp_path_factory.mktemp("var")
    env = {**os.environ, "HOPSCOPE_VAR": str(var)}
    store_dir = var / "demo" / "chdb"
    demo = subprocess.run(
        [sys.executable, "-m", "hopscope", "demo", "--store-dir", str(store_dir)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    _add_lossy_trace(f"chdb://{store_dir}")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", f"chdb://{store_dir}", "--port", str(port),
         "--inventory", str(SAMPLES / "inventory.yaml")],
        env=env, cwd=var, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium(url: str, *extra: str) -> str:
    """Load ``url`` in headless Chromium with a throwaway profile; its stdout (the DOM for --dump-dom)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="hopscope-chromium-", ignore_cleanup_errors=True) as profile:
        r = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def svg_nodes(dom: Element, svg_id: str) -> dict[str, Element]:
    svg = dom.by_id(svg_id)
    return {g.attrs["data-id"]: g for g in svg.find_all(lambda e: e.tag == "g" and "node" in e.classes())}


def svg_edges(dom: Element, svg_id: str) -> list[Element]:
    return dom.by_id(svg_id).find_all(lambda e: e.tag == "g" and "edge" in e.classes())


# --- the tests ------------------------------------------------------------------------------------------


def test_trace_list_and_topology(served: str) -> None:
    traces = _get(f"{served}/api/v1/traces?limit=200")["traces"]
    points = _get(f"{served}/api/v1/topology/points?limit=1000")
    assert traces and points["nodes"]
    dom = parse(chromium(f"{served}/", "--dump-dom"))

    assert dom.by_id("error").attrs.get("hidden") is not None, dom.by_id("error").text()
    rows = dom.by_id("traces").find_all(lambda e: e.tag == "tr" and e.parent is not None and e.parent.tag == "tbody")
    assert len(rows) == len(traces)
    assert dom.by_id("count").text() == f"({len(traces)})"
    first_cells = [c.text() for c in rows[0].children if isinstance(c, Element)]
    start_cell = next(c for c in rows[0].children if isinstance(c, Element))
    assert start_cell.attrs["title"] == f"{traces[0]['start_ns']} ns"  # the exact string, not a rounded double
    t0 = traces[0]
    assert (t0["path"] or t0["dns_qname"] or t0["client_h"]) in first_cells[1]
    failed = [r for r in rows if any("err" in c.classes() for c in r.children if isinstance(c, Element))]
    assert len(failed) >= sum(1 for t in traces if t["status"] >= 500)

    # the path topology: one box per capture point, laid out left to right in path order
    nodes = svg_nodes(dom, "points-graph-svg")
    assert set(nodes) == {n["id"] for n in points["nodes"]}
    xs = [float(nodes[p].find_all(lambda e: e.tag == "rect")[0].attrs["x"]) for p in LAB_PATH]
    assert xs == sorted(xs) and len(set(xs)) == len(LAB_PATH), xs
    assert {"hypervisor", "switch", "proxy", "nat"} <= {n["hop_kind"] for n in points["nodes"]}
    edges = svg_edges(dom, "points-graph-svg")
    assert len(edges) == len(points["links"])
    labels = [e.find_all(lambda x: x.tag == "text")[0].text() for e in edges]
    assert all("µs" in t or "ms" in t for t in labels), labels
    lossy = [e for e in edges if "loss" in e.classes()]
    assert len(lossy) == 1 and "loss 1" in lossy[0].text(), [e.text() for e in lossy]
    assert lossy[0].text().startswith(" → ".join(LOSSY_LINK)), lossy[0].text()  # its tooltip names the link

    # the service map names pods and Services from the inventory
    services = svg_nodes(dom, "services-graph-svg")
    assert {"service:default/web", "pod:default/server1", "pod:default/server2", "pod:default/client1"} <= set(services)
    assert svg_edges(dom, "services-graph-svg")


def test_trace_detail(served: str, tmp_path: Path) -> None:
    slowest = _get(f"{served}/api/v1/traces?order=slowest&limit=200")["traces"][0]
    url = f"{served}/?trace={slowest['trace_id']}"
    dom = parse(chromium(url, "--dump-dom"))

    detail = dom.by_id("detail-section")
    assert detail.attrs.get("hidden") is None
    assert slowest["path"] in dom.by_id("detail-title").text()
    assert slowest["trace_id"] in dom.by_id("detail-meta").text()
    hops = dom.by_id("hops").find_all(lambda e: e.tag == "tr" and e.parent is not None and e.parent.tag == "tbody")
    assert len(hops) == slowest["hop_count"]
    assert [c.text() for c in hops[0].children if isinstance(c, Element)][1] == slowest["points"].split(",")[0]
    path_nodes = svg_nodes(dom, "trace-graph-svg")
    assert list(path_nodes) == slowest["points"].split(",")
    slow = [e for e in svg_edges(dom, "trace-graph-svg") if "slow" in e.classes()]
    assert len(slow) == 1 and slowest["slowest_link"].replace(">", " → ") in slow[0].text()

    shot = Path(os.environ.get("HOPSCOPE_UI_SCREENSHOT", tmp_path / "ui.png"))
    chromium(url, f"--screenshot={shot}", "--window-size=2300,1500")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
