"""``GET /api/v1/traces/{id}/pcap`` and ``/packets`` on the lab samples, stored as ``hopscope demo``
stores them, on both stores: the pcapng read back with tshark holds, per capture point (an interface
named after it), the packets of that hop's request, which are the bytes its request record counts;
the JSON view is the same packets; missing files and unknown traces are 404 saying why."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hopscope.correlate.offline import Analysis, analyze_points, plan_points
from hopscope.paths import lab_samples
from hopscope.records import Batch, FlowRecord, RequestRecord, Span, Trace
from hopscope.store import SqlStore

MANIFEST = lab_samples() / "manifest.json"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    return analyze_points(plan_points(manifest=str(MANIFEST)), manifest=str(MANIFEST))


def _store_all(store: SqlStore, analysis: Analysis, skip: tuple[str, ...] = ()) -> None:
    for table, batch in analysis.tables().items():
        if table not in skip and len(batch):
            store.insert(table, batch)


@pytest.fixture
def demo(store: SqlStore, client: TestClient, analysis: Analysis) -> Iterator[TestClient]:
    _store_all(store, analysis)
    yield client


def _traces(analysis: Analysis) -> list[Trace]:
    return list(analysis.result.traces.records())  # type: ignore[arg-type]


def _spans(analysis: Analysis, trace_id: str) -> list[Span]:
    spans: list[Span] = [s for s in analysis.result.spans.records() if s.trace_id == trace_id]  # type: ignore[misc]
    return sorted(spans, key=lambda s: s.hop_index)


def _requests(analysis: Analysis) -> dict[tuple[str, int], RequestRecord]:
    return {(r.point, r.request_id): r for r in analysis.requests.records()}  # type: ignore[attr-defined]


def _pick(analysis: Analysis) -> dict[str, str]:
    """Trace ids of: the first request of a keep-alive connection, a later one, a DNS query."""
    requests = _requests(analysis)
    picked: dict[str, str] = {}
    for trace in _traces(analysis):
        first = _spans(analysis, trace.trace_id)[0]
        request = requests.get((first.point, first.request_id))
        if request is None:
            continue
        if trace.l7_proto == "dns":
            picked.setdefault("dns", trace.trace_id)
        elif trace.l7_proto == "http":
            picked.setdefault("first" if request.seq_in_flow == 0 else "later", trace.trace_id)
    assert set(picked) == {"dns", "first", "later"}
    return picked


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for name in fields:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def _check_against_request(packets: list[dict[str, Any]], request: RequestRecord) -> None:
    """The exchange's data packets are the bytes and times the hop's request record counts."""
    new = [p for p in packets if p["len"] and not p["retransmission"]]
    sent = {d: sum(p["len"] for p in new if p["dir"] == d) for d in ("c2s", "s2c")}
    assert (sent["c2s"], sent["s2c"]) == (request.req_bytes, request.resp_bytes)
    c2s = [p for p in new if p["dir"] == "c2s"]
    s2c = [p for p in new if p["dir"] == "s2c"]
    assert c2s[0]["seq"] == request.req_tcp_seq and int(c2s[0]["ts_ns"]) == request.req_first_ns
    assert s2c[0]["seq"] == request.resp_tcp_seq and int(s2c[-1]["ts_ns"]) == request.resp_last_ns


@needs_tshark
@pytest.mark.parametrize("which", ["first", "later", "dns"])
def test_the_pcap_holds_each_hops_request_and_equals_the_json(
    demo: TestClient, analysis: Analysis, tmp_path: Path, which: str
) -> None:
    trace_id = _pick(analysis)[which]
    r = demo.get(f"/api/v1/traces/{trace_id}/pcap")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-pcapng"
    assert r.headers["content-disposition"] == f'attachment; filename="{trace_id}.pcapng"'
    path = tmp_path / "trace.pcapng"
    path.write_bytes(r.content)
    view = demo.get(f"/api/v1/traces/{trace_id}/packets").json()
    assert view["trace_id"] == trace_id
    spans = _spans(analysis, trace_id)
    assert [p["point"] for p in view["points"]] == list(dict.fromkeys(s.point for s in spans))
    rows = tshark_fields(path, "frame.interface_name", "frame.time_epoch", "tcp.seq_raw", "tcp.ack_raw", "tcp.len",
                         "udp.length")  # fmt: skip
    from_json = [
        [p["point"], f"{int(k['ts_ns']) // 10**9}.{int(k['ts_ns']) % 10**9:09d}", *_tcp_or_udp(k)]
        for p in view["points"] for k in p["packets"]
    ]  # fmt: skip
    assert sorted(rows) == sorted(from_json)
    assert {row[0] for row in rows} == {s.point for s in spans}  # an interface per point, named after it
    requests = _requests(analysis)
    for span in spans:
        packets = next(p["packets"] for p in view["points"] if p["point"] == span.point)
        request = requests[(span.point, span.request_id)]
        if which == "dns":
            assert [p["dir"] for p in packets] == ["c2s", "s2c"] and packets[0]["dport"] == 53
            assert int(packets[0]["ts_ns"]) == request.req_first_ns
        elif span.point == spans[0].point or which == "first":
            _check_against_request(packets, request)
        flags = [p["flags"] for p in packets]
        if which == "first" and request.seq_in_flow == 0:
            assert flags[:2] == ["S", "SA"], span.point  # the handshake comes with the first request
        if which == "later":
            assert "S" not in flags and "SA" not in flags, span.point


def _tcp_or_udp(packet: dict[str, Any]) -> list[str]:
    if packet["flags"]:
        return [str(packet["seq"]), str(packet["ack"]), str(packet["len"]), ""]
    return ["", "", "", str(packet["len"] + 8)]


@needs_tshark
def test_a_connection_carrying_one_request_gives_it_all_its_packets(
    demo: TestClient, analysis: Analysis, tmp_path: Path
) -> None:
    """Where a connection carried one request, its exchange is the whole connection, as tshark counts it
    in the original capture."""
    requests = list(_requests(analysis).values())
    per_flow: dict[tuple[str, int], int] = {}
    for req in requests:
        per_flow[(req.point, req.flow_id)] = per_flow.get((req.point, req.flow_id), 0) + 1
    flows = {(f.point, f.flow_id): f for f in analysis.flows.records()}  # type: ignore[attr-defined]
    checked = 0
    for trace in _traces(analysis):
        span = _spans(analysis, trace.trace_id)[0]
        request = _requests(analysis).get((span.point, span.request_id))
        if request is None or request.l7_proto != "http" or per_flow[(span.point, span.flow_id)] != 1:
            continue
        flow: FlowRecord = flows[(span.point, span.flow_id)]
        view = demo.get(f"/api/v1/traces/{trace.trace_id}/packets", params={"point": span.point}).json()
        (point,) = view["points"]
        assert len(point["packets"]) == flow.orig_pkts + flow.resp_pkts
        source = next(p.file for p in plan_points(manifest=str(MANIFEST)) if p.name == span.point)
        ports = f"tcp.port == {span.orig_p} && tcp.port == {span.resp_p} && ip.addr == {span.orig_h}"
        counted = subprocess.run(["tshark", "-n", "-r", source, "-Y", ports], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.splitlines()  # fmt: skip
        assert len(point["packets"]) == len(counted)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_one_point_alone(demo: TestClient, analysis: Analysis) -> None:
    trace_id = _pick(analysis)["first"]
    whole = demo.get(f"/api/v1/traces/{trace_id}/packets").json()
    point = whole["points"][-1]["point"]
    one = demo.get(f"/api/v1/traces/{trace_id}/packets", params={"point": point}).json()
    assert one["points"] == [whole["points"][-1]]
    r = demo.get(f"/api/v1/traces/{trace_id}/pcap", params={"point": point})
    assert r.status_code == 200 and r.content.count(point.encode()) == 1  # one interface block names it
    assert r.headers["content-disposition"].endswith(f'-{point}.pcapng"')


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/traces/{absent}/pcap", "no trace {absent}"),
        ("/api/v1/traces/{absent}/packets", "no trace {absent}"),
        ("/api/v1/traces/{trace}/packets?point=elsewhere", "has no hop at point 'elsewhere'"),
        ("/api/v1/traces/{trace}/pcap?point=elsewhere", "has no hop at point 'elsewhere'"),
    ],
)
def test_unknown_trace_or_point_is_404(demo: TestClient, analysis: Analysis, path: str, message: str) -> None:
    names = {"absent": "f" * 32, "trace": _pick(analysis)["first"]}
    r = demo.get(path.format(**names))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and message.format(**names) in r.json()["error"]["message"]


def test_a_missing_capture_file_is_404_naming_it(
    store: SqlStore, client: TestClient, analysis: Analysis, tmp_path: Path
) -> None:
    trace_id = _pick(analysis)["first"]
    point = _spans(analysis, trace_id)[0].point
    moved = str(tmp_path / "gone.pcap")
    index = analysis.packet_index
    assert index is not None
    cols = dict(index.columns)
    cols["file"] = [moved if p == point else f for p, f in zip(cols["point"], cols["file"], strict=True)]
    _store_all(store, analysis, skip=("packet_index",))
    store.insert("packet_index", Batch(index.record_type, cols, len(index)))
    r = client.get(f"/api/v1/traces/{trace_id}/pcap")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert f"packets of point {point} are not available: capture file {moved} cannot be read" in message
    assert "rolling packet store" in message
    other = _spans(analysis, trace_id)[-1].point  # the other points' packets are still there
    assert client.get(f"/api/v1/traces/{trace_id}/packets", params={"point": other}).status_code == 200


def test_packets_never_indexed_are_404(store: SqlStore, client: TestClient, analysis: Analysis) -> None:
    _store_all(store, analysis, skip=("packet_index",))
    trace_id = _pick(analysis)["later"]
    r = client.get(f"/api/v1/traces/{trace_id}/packets")
    assert r.status_code == 404 and "are indexed" in r.json()["error"]["message"]


def test_the_routes_need_pcap_read(store: SqlStore, analysis: Analysis, tmp_path: Path) -> None:
    """401 without a token, 403 with a token of traces:read alone, served with pcap:read (see test_auth
    for every route)."""
    from hopscope.api.app import create_app
    from hopscope.api.tokens import TokenVerifier, add_token, load_tokens

    _store_all(store, analysis)
    file = tmp_path / "tokens.json"
    reader, pcap = add_token(file, "reader", ["traces:read"]), add_token(file, "pcap", ["pcap:read"])
    client = TestClient(create_app(store, tokens=TokenVerifier(load_tokens(file))), base_url="http://127.0.0.1")
    trace_id = _pick(analysis)["later"]
    for route in ("pcap", "packets"):
        path = f"/api/v1/traces/{trace_id}/{route}"
        assert client.get(path).status_code == 401
        refused = client.get(path, headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403 and "lacks the scope pcap:read" in refused.json()["error"]["message"]
        assert client.get(path, headers={"Authorization": f"Bearer {pcap}"}).status_code == 200
    assert client.get(f"/api/v1/traces/{trace_id}", headers={"Authorization": f"Bearer {pcap}"}).status_code == 403


def test_a_trace_beyond_the_servers_packet_limit_is_413(store: SqlStore, analysis: Analysis) -> None:
    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings

    _store_all(store, analysis)
    trace_id = _pick(analysis)["first"]
    point = _spans(analysis, trace_id)[0].point
    flow = next(r for r in analysis.packet_index.records() if r.point == point  # type: ignore[union-attr]
                and r.flow_id == _spans(analysis, trace_id)[0].flow_id)  # fmt: skip
    client = TestClient(create_app(store, ApiSettings(max_packets=flow.pkts)), base_url="http://127.0.0.1")
    r = client.get(f"/api/v1/traces/{trace_id}/packets")
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert f"more than this server reads for one answer ({flow.pkts})" in r.json()["error"]["message"]
    assert client.get(f"/api/v1/traces/{trace_id}/pcap").status_code == 413
    assert client.get(f"/api/v1/traces/{trace_id}/packets", params={"point": point}).status_code == 200


def test_rolling_packet_stores_given_to_the_server_serve_the_same_packets(
    store: SqlStore, client: TestClient, analysis: Analysis, tmp_path: Path
) -> None:
    """A store without a packet index, and the points' packets in rolling stores (written as the
    captures are metered, as a live probe writes them): the same answer as through the index."""
    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from tests.cli.test_pcap import write_packet_stores

    trace_id = _pick(analysis)["first"]
    _store_all(store, analysis)
    expected = client.get(f"/api/v1/traces/{trace_id}/packets").json()
    store.drop_schema()
    store.ensure_schema()
    _store_all(store, analysis, skip=("packet_index",))
    write_packet_stores(tmp_path, segment_bytes=64 << 10)
    served = TestClient(create_app(store, ApiSettings(packet_stores=(str(tmp_path),))), base_url="http://127.0.0.1")
    assert served.get(f"/api/v1/traces/{trace_id}/packets").json() == expected
    assert client.get(f"/api/v1/traces/{trace_id}/packets").status_code == 404  # the server without them
