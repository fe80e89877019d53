"""The UI in a real browser: `hopscope demo` stores the lab samples (plus a trace that lost a segment and
one whose request carries markup in its path, Host header and a capture point name), `hopscope serve`
serves them on a free loopback port, and Debian's headless Chromium, driven over the DevTools
protocol (tests/api/browser.py), searches with filters, opens a trace, checks the waterfall's numbers
against the API's, opens a hop's packets, compares two traces and opens the topology. Each view is
checked with axe-core (vendored in tests/api/assets, injected by the test): no serious or critical
violation. Screenshots go to a folder under pytest's tmp path (printed). Skipped when Chromium is
absent (deploy/setup.sh installs it)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.api.browser import CHROMIUM, DevTools
from tests.topology.paths import lab_trace

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "lab"
AXE = Path(__file__).parent / "assets" / "axe.min.js"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (deploy/setup.sh installs it)")

LOSSY_LINK = ("nodeA-post-nat", "hv-tap")
HOSTILE_PATH = "/<img src=x onerror=alert(1)>"
HOSTILE_HOST = '<script>alert(2)</script>"><svg onload=alert(3)>'
HOSTILE_POINT = "<img src=y onerror=alert(4)>"
#: Runs before the page's scripts: any alert, confirm or prompt is recorded instead of shown.
NO_DIALOGS = (
    "window.__dialogs = [];"
    " for (const f of ['alert', 'confirm', 'prompt']) window[f] = (m) => { window.__dialogs.push(String(m)); };"
)


# --- the served demo ----------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


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


def _add_traces(url: str) -> str:
    """The samples lost nothing and carry no markup: add one trace along the lab path that lost a segment
    between the NAT node and the hypervisor, and one whose path, Host header and last capture point are
    markup (what a hostile client or a misnamed probe could store). Returns the hostile trace's id."""
    lossy, lossy_spans = lab_trace(1, lost_on=LOSSY_LINK[1])
    hostile, spans = lab_trace(2, client=2, server=2, duration_us=4000)
    spans[-1] = dataclasses.replace(spans[-1], point=HOSTILE_POINT)
    hostile = dataclasses.replace(hostile, path=HOSTILE_PATH, http_host=HOSTILE_HOST, x_request_id="<b>rid</b>",
                                  points=",".join(s.point for s in spans))  # fmt: skip
    store = store_from_url(url)
    try:
        store.insert("traces", Batch.from_records(Trace, [lossy, hostile]))
        store.insert("spans", Batch.from_records(Span, [*lossy_spans, *spans]))
    finally:
        store.close()
    return hostile.trace_id


@dataclasses.dataclass
class Served:
    base: str
    hostile_id: str

    def api(self, path: str, **params: Any) -> Any:
        return _get(f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo's store served by `hopscope serve --inventory`. The server runs from a directory outside
    the tree, so it imports the installed package as a user's does."""
    var = tmp_path_factory.mktemp("var")
    env = {**os.environ, "HOPSCOPE_VAR": str(var)}
    store_dir = var / "demo" / "chdb"
    demo = subprocess.run(
        [sys.executable, "-m", "hopscope", "demo", "--store-dir", str(store_dir)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    hostile_id = _add_traces(f"chdb://{store_dir}")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", f"chdb://{store_dir}", "--port", str(port),
         "--inventory", str(SAMPLES / "inventory.yaml")],
        env=env, cwd=var, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield Served(base, hostile_id)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-screenshots")
    print(f"\nUI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def page() -> Iterator[DevTools]:
    """One Chromium for the module (starting one per test costs seconds), 1280 px wide, dialogs recorded."""
    with tempfile.TemporaryDirectory(prefix="hopscope-chromium-", ignore_cleanup_errors=True) as profile:
        devtools = DevTools(profile)
        try:
            devtools.open("about:blank")
            devtools.viewport(1280, 900)
            devtools.before_each_page(NO_DIALOGS)
            yield devtools
        finally:
            devtools.close()


def load(page: DevTools, url: str, ready: str) -> None:
    """Open ``url`` and wait until ``ready`` (a JS expression) holds and no request is pending."""
    page.navigate(url)
    page.wait_for(f"document.readyState === 'complete' && document.querySelector('#view-search') !== null && ({ready})")


def js(page: DevTools, expression: str) -> Any:
    return page.evaluate(expression)


def no_error(page: DevTools) -> None:
    assert js(page, "document.querySelector('#error').hidden"), js(page, "document.querySelector('#error').textContent")


def axe_check(page: DevTools, view: str) -> None:
    """axe-core over the page as it is: no serious or critical violation."""
    if not js(page, "typeof window.axe === 'object'"):
        js(page, AXE.read_text())
    found = page.evaluate_async(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations"
        ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))"
    )
    assert found == [], f"{view}: {json.dumps(found, indent=1)}"


def rows(page: DevTools) -> list[str]:
    return list(js(page, "[...document.querySelectorAll('#traces tbody tr')].map(r => r.dataset.trace)"))


# --- the tests ------------------------------------------------------------------------------------------


def test_search_with_filters(served: Served, page: DevTools, shots: Path) -> None:
    # the state is the URL: a shared link shows the same search
    params = {"status_class": "5xx", "order": "slowest", "min_duration_us": 40000}
    expected = [t["trace_id"] for t in served.api("/api/v1/traces", limit=50, **params)["traces"]]
    assert expected
    load(
        page,
        f"{served.base}/?view=search&{urllib.parse.urlencode(params)}",
        "document.querySelectorAll('#traces tbody tr').length > 0",
    )
    no_error(page)
    assert rows(page) == expected
    assert js(page, "document.querySelector('#status_class').value") == "5xx"
    assert js(page, "document.querySelector('#min_ms').value") == "40"
    assert js(page, "document.querySelectorAll('#scatter-svg circle.dot').length") == len(expected)
    assert js(page, "document.querySelectorAll('#scatter-svg circle.dot.err').length") == len(expected)  # all 5xx
    page.screenshot(shots / "search.png")
    axe_check(page, "search")

    # the form: a capture point, a hop kind and an inventory entity, sent with the Search button
    js(page, "document.querySelector('#status_class').value = ''; document.querySelector('#min_ms').value = ''")
    page.wait_for("document.querySelector('#entity option[value=\"pod:default/server1\"]') !== null")  # the inventory
    js(page, "document.querySelector('#entity').value = 'pod:default/server1'")
    js(page, "document.querySelector('#hop_kind').value = 'proxy'")
    page.type_into("#path_contains", "ok")
    js(page, "document.querySelector('#search button[type=submit]').click()")
    want = served.api("/api/v1/traces", limit=50, order="slowest", path_contains="ok", hop_kind="proxy",
                      entity="pod:default/server1")["traces"]  # fmt: skip
    assert want
    page.wait_for(
        f"document.querySelectorAll('#traces tbody tr').length === {len(want)}"
        " && location.search.includes('path_contains=ok')"
    )
    assert rows(page) == [t["trace_id"] for t in want]
    query = urllib.parse.parse_qs(js(page, "location.search")[1:])
    assert query["entity"] == ["pod:default/server1"] and query["hop_kind"] == ["proxy"] and "status_class" not in query

    # pages: the second page of 20 is the API's offset 20
    load(
        page,
        f"{served.base}/?view=search&limit=20&order=time",
        "document.querySelectorAll('#traces tbody tr').length === 20",
    )
    js(page, "document.querySelector('#next').click()")
    second = [t["trace_id"] for t in served.api("/api/v1/traces", limit=20, offset=20, order="time")["traces"]]
    page.wait_for(
        "location.search.includes('offset=20')"
        f" && document.querySelector('#traces tbody tr')?.dataset.trace === '{second[0]}'"
    )
    assert rows(page) == second
    # a dot of the scatter opens its trace (keyboard: focus it and press Enter)
    js(page, "document.querySelector('#scatter-svg circle.dot').focus()")
    page.call(
        "Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
    )
    page.wait_for(f"location.search.includes('view=trace') && location.search.includes('{second[0]}')")


def test_trace_waterfall_numbers(served: Served, page: DevTools, shots: Path) -> None:
    slowest = served.api("/api/v1/traces", order="slowest", limit=1)["traces"][0]
    detail = served.api(f"/api/v1/traces/{slowest['trace_id']}")
    spans = sorted(detail["spans"], key=lambda s: s["hop_index"])
    network = sum(s["req_link_us"] + s["resp_link_us"] for s in spans[1:])
    server = (int(spans[-1]["response_last_ns"]) - int(spans[-1]["request_first_ns"])) // 1000
    total = slowest["duration_us"]
    links = {(lk["source"], lk["target"]): lk for lk in served.api("/api/v1/topology/points", limit=1000)["links"]}
    slow = max(spans[1:], key=lambda s: s["req_link_us"] + s["resp_link_us"])
    prev = spans[spans.index(slow) - 1]
    p50 = links[prev["point"], slow["point"]]

    load(
        page,
        f"{served.base}/?view=trace&trace={slowest['trace_id']}",
        "document.querySelectorAll('.wf-row[data-point]').length > 0",
    )
    no_error(page)
    summary = js(page, "(({dataset: d, textContent: t}) => ({...d, text: t}))(document.querySelector('#summary'))")
    assert (int(summary["networkUs"]), int(summary["serverUs"]), int(summary["totalUs"])) == (network, server, total)
    half_up = lambda part: int(100 * part / total + 0.5)  # noqa: E731
    assert f"network {network / 1000:.1f} ms ({half_up(network)}%)" in summary["text"], summary["text"]
    assert f"server {server / 1000:.1f} ms ({half_up(server)}%)" in summary["text"], summary["text"]
    typical = (p50["req_p50_us"] + p50["resp_p50_us"]) / 1000
    slow_ms = (slow["req_link_us"] + slow["resp_link_us"]) / 1000
    assert (f"slowest link {prev['point']} → {slow['point']} {slow_ms:.1f} ms"
            f" (p50 of that link: {typical:.1f} ms)") in summary["text"], summary["text"]  # fmt: skip
    assert server > network  # the demo's slow requests: the time went to the app, not the network
    hops = js(page, "[...document.querySelectorAll('.wf-row[data-point]')].map(r => ({...r.dataset}))")
    assert [h["point"] for h in hops] == [s["point"] for s in spans]
    t0 = int(spans[0]["request_first_ns"])
    for h, s in zip(hops, spans, strict=True):
        assert int(h["reqUs"]) == (int(s["request_first_ns"]) - t0) // 1000
        assert int(h["respUs"]) == (int(s["response_first_ns"]) - t0) // 1000
        if s is not spans[0]:
            assert (int(h["reqLinkUs"]), int(h["respLinkUs"])) == (s["req_link_us"], s["resp_link_us"])
    # the link's reason and confidence show on focus (keyboard), not only on hover
    key = f"{prev['point']}>{slow['point']}"
    js(page, f"document.querySelector('.linkinfo[data-link=\"{key}\"]').focus()")
    tip = js(
        page,
        "(e => [getComputedStyle(e).display, e.textContent])"
        f"(document.querySelector('.linkinfo[data-link=\"{key}\"] .tip'))",
    )
    assert tip[0] == "block" and slow["link_reason"] in tip[1] and f"{slow['link_confidence']:.2f}" in tip[1], tip
    page.screenshot(shots / "trace.png")
    axe_check(page, "trace")


def test_loss_marked_on_its_link(served: Served, page: DevTools) -> None:
    lossy = served.api("/api/v1/traces", min_lost_pkts=1)["traces"]
    assert [t["loss_link"] for t in lossy] == [f"x>{LOSSY_LINK[1]}"]
    load(
        page,
        f"{served.base}/?view=trace&trace={lossy[0]['trace_id']}",
        "document.querySelectorAll('.wf-row[data-point]').length > 0",
    )
    marked = js(
        page,
        "[...document.querySelectorAll('.badge.loss')].map(b => [b.closest('.linkinfo').dataset.link, b.textContent])",
    )
    assert marked == [[">".join(LOSSY_LINK), "lost 1"]]


def test_packets_of_a_hop(served: Served, page: DevTools, shots: Path) -> None:
    trace = served.api("/api/v1/traces", order="slowest", limit=1)["traces"][0]
    point = trace["points"].split(",")[-2]  # the server pod
    load(
        page,
        f"{served.base}/?view=trace&trace={trace['trace_id']}",
        "document.querySelectorAll('.wf-row[data-point]').length > 0",
    )
    js(page, f"document.querySelector('button[data-point=\"{point}\"]').click()")
    page.wait_for("document.querySelector('#packets table.packets, #packets-missing') !== null")
    assert f"hop={point}" in js(page, "location.search")
    url = f"{served.base}/api/v1/traces/{trace['trace_id']}/packets?point={point}"
    if _status(url) == 200:
        packets = _get(url)["points"][0]["packets"]
        assert js(page, "document.querySelectorAll('#packets table.packets tbody tr').length") == len(packets)
        flags = js(page, "[...document.querySelectorAll('#packets table.packets td.flags')].map(t => t.textContent)")
        assert flags == [p["flags"] for p in packets]
        retrans = js(page, "document.querySelectorAll('#packets tr.retrans').length")
        assert retrans == sum(p["retransmission"] for p in packets)
        href = js(page, "document.querySelector('#pcap-link').getAttribute('href')")
        assert href == f"api/v1/traces/{trace['trace_id']}/pcap?point={point}"
    else:
        assert "packets not available" in js(page, "document.querySelector('#packets-missing').textContent")
    page.screenshot(shots / "packets.png")
    # a trace without indexed packets: the API's 404 is said, not an error
    load(
        page,
        f"{served.base}/?view=trace&trace={served.hostile_id}&hop=nodeB",
        "document.querySelector('#packets-missing') !== null",
    )
    assert _status(f"{served.base}/api/v1/traces/{served.hostile_id}/packets?point=nodeB") == 404
    assert js(page, "document.querySelector('#packets-missing').textContent").startswith("packets not available")
    no_error(page)


def test_compare_two_traces(served: Served, page: DevTools, shots: Path) -> None:
    found = served.api("/api/v1/traces", order="slowest", limit=200, path_contains="/ok")["traces"]
    a, b = found[-1], found[0]  # the fastest and the slowest /ok through the same path
    load(
        page,
        f"{served.base}/?view=search&order=slowest&path_contains=%2Fok&limit=200",
        f"document.querySelectorAll('#traces tbody tr').length === {len(found)}",
    )
    for t in (a, b):
        js(page, f"document.querySelector('tr[data-trace=\"{t['trace_id']}\"] input[type=checkbox]').click()")
    js(page, "document.querySelector('#compare-picked').click()")
    page.wait_for("document.querySelectorAll('#compare-hops tbody tr').length > 0")
    assert f"a={a['trace_id']}" in js(page, "location.search") and f"b={b['trace_id']}" in js(page, "location.search")
    total = js(page, "document.querySelector('#compare-totals tbody tr td.delta').dataset.deltaUs")
    assert int(total) == b["duration_us"] - a["duration_us"]
    spans_a = {s["point"]: s for s in served.api(f"/api/v1/traces/{a['trace_id']}")["spans"]}
    spans_b = {s["point"]: s for s in served.api(f"/api/v1/traces/{b['trace_id']}")["spans"]}
    table = js(page, "[...document.querySelectorAll('#compare-hops tbody tr')].map(r => [r.dataset.point, "
                     "[...r.querySelectorAll('td.delta')].map(d => d.dataset.deltaUs ?? null)])")  # fmt: skip
    if set(spans_a) == set(spans_b):
        for point, deltas in table[1:]:
            assert int(deltas[0]) == spans_b[point]["req_link_us"] - spans_a[point]["req_link_us"], point
            assert int(deltas[1]) == spans_b[point]["resp_link_us"] - spans_a[point]["resp_link_us"], point
    assert js(page, "document.querySelectorAll('#compare-totals td.delta.worse').length") >= 1  # B is notably slower
    page.screenshot(shots / "compare.png")
    axe_check(page, "compare")


def test_topology(served: Served, page: DevTools, shots: Path) -> None:
    points = served.api("/api/v1/topology/points", limit=1000)
    services = served.api("/api/v1/topology/services", limit=1000)
    load(page, f"{served.base}/?view=topology", "document.querySelector('#services-graph-svg') !== null")
    no_error(page)
    for svg, graph in (("points-graph-svg", points), ("services-graph-svg", services)):
        ids = js(page, f"[...document.querySelectorAll('#{svg} g.node')].map(g => g.dataset.id)")
        assert sorted(ids) == sorted(n["id"] for n in graph["nodes"])
        edges = js(
            page, f"[...document.querySelectorAll('#{svg} g.edge')].map(g => [g.dataset.source, g.dataset.target])"
        )
        assert sorted(map(tuple, edges)) == sorted((lk["source"], lk["target"]) for lk in graph["links"])
        # no label box overlaps another label or a node box
        boxes = js(page, f"[...document.querySelectorAll('#{svg} rect')].filter(r => r.closest('marker') === null)"
                         ".map(r => r.getBBox()).map(b => [b.x, b.y, b.x + b.width, b.y + b.height])")  # fmt: skip
        for i, p in enumerate(boxes):
            for q in boxes[i + 1 :]:
                overlap = min(p[2], q[2]) - max(p[0], q[0]) > 1 and min(p[3], q[3]) - max(p[1], q[1]) > 1
                assert not overlap, (svg, p, q)
    lossy = js(
        page,
        "[...document.querySelectorAll('#points-graph-svg g.edge.loss')]"
        ".map(g => [g.dataset.source, g.dataset.target])",
    )
    assert lossy == [list(LOSSY_LINK)]
    bad = {(lk["source"], lk["target"]) for lk in services["links"] if lk["error_rate"] >= 0.05}
    coloured = js(
        page,
        "[...document.querySelectorAll('#services-graph-svg g.edge.bad')]"
        ".map(g => [g.dataset.source, g.dataset.target])",
    )
    assert {tuple(e) for e in coloured} == bad
    page.screenshot(shots / "topology.png")
    axe_check(page, "topology")
    # a link of the path topology, chosen with the keyboard, lists the traces that crossed it
    js(
        page,
        "document.querySelector('#points-graph-svg g.edge"
        f'[data-source="{LOSSY_LINK[0]}"][data-target="{LOSSY_LINK[1]}"]\').focus()',
    )
    page.call(
        "Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
    )
    crossed = served.api("/api/v1/traces", link=">".join(LOSSY_LINK), limit=50, order="time_desc")["traces"]
    page.wait_for(
        "location.search.includes('view=search')"
        f" && document.querySelectorAll('#traces tbody tr').length === {len(crossed)}"
    )
    assert rows(page) == [t["trace_id"] for t in crossed]
    assert "link nodeA-post-nat → hv-tap" in js(page, "document.querySelector('#chips').textContent")
    # an edge of the service map: the traces with a hop at both ends
    load(page, f"{served.base}/?view=topology", "document.querySelector('#services-graph-svg g.edge') !== null")
    js(
        page,
        "document.querySelector('#services-graph-svg g.edge[data-target=\"pod:default/server2\"]')"
        ".dispatchEvent(new MouseEvent('click'))",
    )
    page.wait_for("location.search.includes('entity=')")
    query = urllib.parse.parse_qs(js(page, "location.search")[1:])
    want = served.api("/api/v1/traces", entity=query["entity"], limit=50, order="time_desc")["traces"]
    page.wait_for(f"document.querySelectorAll('#traces tbody tr').length === {len(want)}")
    assert rows(page) == [t["trace_id"] for t in want] and query["entity"][1] == "pod:default/server2"


def test_user_controlled_strings_are_text(served: Served, page: DevTools, shots: Path) -> None:
    """A path, Host header, request id and capture point that are markup show as text in every view:
    no element is made from them and no script runs."""
    trace = served.api(f"/api/v1/traces/{served.hostile_id}")["trace"]
    assert trace["path"] == HOSTILE_PATH and trace["http_host"] == HOSTILE_HOST

    def clean(view: str) -> None:
        assert js(page, "window.__dialogs") == [], view
        assert js(page, "document.querySelectorAll('img, iframe, object, embed, main svg svg').length") == 0, view
        assert not js(page, "[...document.querySelectorAll('b')].some(e => e.textContent === 'rid')"), view
        assert js(page, "document.querySelectorAll('script').length") == 1, view  # the app's own
        onattrs = js(page, "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
                           ".filter(n => n.startsWith('on'))")  # fmt: skip
        assert onattrs == [], view

    load(
        page,
        f"{served.base}/?view=search&path_contains=%3Cimg",
        "document.querySelectorAll('#traces tbody tr').length === 1",
    )
    assert HOSTILE_HOST + HOSTILE_PATH in js(page, "document.querySelector('#traces tbody tr').textContent")
    clean("search")
    load(
        page,
        f"{served.base}/?view=trace&trace={served.hostile_id}",
        "document.querySelectorAll('.wf-row[data-point]').length > 0",
    )
    assert HOSTILE_PATH in js(page, "document.querySelector('#detail-title').textContent")
    assert "<b>rid</b>" in js(page, "document.querySelector('#detail-meta').textContent")
    assert js(page, "[...document.querySelectorAll('.wf-row[data-point]')].pop().dataset.point") == HOSTILE_POINT
    clean("trace")
    load(
        page,
        f"{served.base}/?view=compare&a={served.hostile_id}&b={served.hostile_id}",
        "document.querySelectorAll('#compare-hops tbody tr').length > 0",
    )
    clean("compare")
    load(page, f"{served.base}/?view=topology", "document.querySelector('#points-graph-svg') !== null")
    assert HOSTILE_POINT in js(
        page, "[...document.querySelectorAll('#points-graph-svg g.node')].map(g => g.dataset.id)"
    )
    clean("topology")
    # the page's own markup in the URL is not rendered either
    load(page, f"{served.base}/?view=trace&trace=%3Cimg%20src%3Dx%20onerror%3Dalert(5)%3E", "true")
    time.sleep(0.5)
    clean("a hostile URL")
    page.screenshot(shots / "hostile.png")


def test_absolute_range_in_the_users_time_zone(served: Served, page: DevTools) -> None:
    """From/to are shown in the browser's time zone (here Asia/Kolkata, +05:30) and kept as exact ns in
    the URL and the API query: the rows are the API's for that range to the nanosecond."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    every = served.api("/api/v1/traces", order="time", limit=200)["traces"]
    start, end = every[3]["start_ns"], every[10]["start_ns"]  # end is exclusive: traces 3..9
    want = served.api("/api/v1/traces", order="time", start_ns=start, end_ns=end)["traces"]
    assert len(want) == 7
    page.call("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    try:
        load(page, f"{served.base}/?view=search&order=time&range=abs&start={start}&end={end}",
             "document.querySelectorAll('#traces tbody tr').length === 7")  # fmt: skip
        assert rows(page) == [t["trace_id"] for t in want]
        local = datetime.fromtimestamp(int(start) // 10**9, ZoneInfo("Asia/Kolkata"))
        frac = f"{int(start) % 10**9:09d}"
        shown = f"{local:%Y-%m-%dT%H:%M:%S}.{frac[:3]}".rstrip("0").rstrip(".")  # the input drops trailing zeros
        assert js(page, "document.querySelector('#start').value") == shown
        assert js(page, "document.querySelector('#start').title") == f"{start} ns"
        zone = js(page, "document.querySelector('#zone').textContent")
        assert zone in ("times in Asia/Kolkata", "times in Asia/Calcutta"), zone  # ICU may name it the old way
        first = js(page, "document.querySelector('#traces tbody tr td:nth-child(2)').textContent")
        assert first == f"{local:%Y-%m-%d %H:%M:%S}.{frac[:6]}"
        # a preset replaces the range: the demo's traces are older than the last hour
        js(page, "(s => { s.value = '1h'; s.dispatchEvent(new Event('change')); })(document.querySelector('#range'))")
        page.wait_for("location.search.includes('range=1h') && document.querySelector('#page-info').textContent !== ''")
        assert "start=" not in js(page, "location.search")
        page.wait_for("document.querySelectorAll('#traces tbody tr').length === 0")
    finally:
        page.call("Emulation.setTimezoneOverride", {"timezoneId": ""})
