"""Deep dissection through tshark: RequestRecords for protocols hopscope does not parse itself (HTTP/2, gRPC).

Optional and offline: ``tshark_requests(path, point)`` runs Wireshark's dissectors over a capture file
(``tshark -T json``; pyshark is not used because its per-packet objects are slow and its
``only_summaries`` mode is broken in 0.6) and pairs HTTP/2 streams into records:

- the request is the stream's HEADERS with ``:method`` (its sender is the client); the response is the
  first HEADERS with ``:status`` from the other side; ``*_last_ns`` is the frame with END_STREAM;
- ``l7_proto`` is ``grpc`` when the request's content-type is ``application/grpc...``, else ``http2``;
  ``status`` is the HTTP ``:status`` (a gRPC error shows in ``grpc-status`` trailers, not recorded);
- ``req_tcp_seq``/``resp_tcp_seq`` are the raw TCP seq of the *segment* that carried the HEADERS frame
  (a frame may start inside a segment; every point on the path sees the same segments, so the value
  still matches across NAT);
- ``req_bytes``/``resp_bytes`` count HTTP/2 frames of the stream (9-byte header + payload).

Cleartext HTTP/2 (h2c) on ports other than tshark's defaults must be named in ``http2_ports``. TLS is
not decrypted. tshark reads the whole file into one JSON document, so this mode is for captures of
modest size; the fast path (``L7Tracker``) is for everything else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hopscope.errors import CaptureError
from hopscope.ids import request_id, tuple_flow_id
from hopscope.probes.l7.tracker import CapturePoint
from hopscope.records import RequestRecord

Pairs = list[tuple[str, Any]]
FlowIdOf = Callable[[int, str, int, str, int], int]  # (proto, orig_h, orig_p, resp_h, resp_p) -> flow_id
DEFAULT_HTTP2_PORTS: tuple[int, ...] = (80, 8080, 50051)


def _all(pairs: Pairs, key: str) -> Iterator[Any]:
    return (v for k, v in pairs if k == key)


def _one(pairs: Pairs, key: str, default: Any = None) -> Any:
    return next(_all(pairs, key), default)


@dataclass(slots=True)
class _Frame:
    """One HTTP/2 frame with the packet that carried it."""

    ts_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    tcp_stream: int
    seq: int
    stream_id: int
    ftype: int
    length: int
    end_stream: bool
    headers: list[tuple[str, str]]


@dataclass(slots=True)
class _Stream:
    client: tuple[str, int]
    server: tuple[str, int]
    tcp_stream: int
    stream_id: int
    req: _Frame
    headers: dict[str, str]
    req_last_ns: int = 0
    req_bytes: int = 0
    resp: _Frame | None = None
    resp_headers: dict[str, str] = field(default_factory=dict)
    resp_last_ns: int = 0
    resp_bytes: int = 0


def run_tshark(path: str, http2_ports: Iterable[int] = DEFAULT_HTTP2_PORTS, tshark: str = "tshark") -> list[Pairs]:
    """Run tshark over ``path``; return its JSON packets as lists of (key, value) pairs."""
    exe = shutil.which(tshark)
    if exe is None:
        raise CaptureError(f"{tshark} not found: install Debian's tshark package for --deep dissection")
    cmd = [exe, "-r", str(path), "-n", "-Y", "http2 or tcp.flags.syn == 1", "-T", "json",
           "-J", "frame ip ipv6 tcp http2"]  # fmt: skip
    for port in http2_ports:
        cmd += ["-d", f"tcp.port=={port},http2"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CaptureError(f"tshark failed on {path}: {done.stderr.strip()[-400:]}")
    packets: list[Pairs] = json.loads(done.stdout or "[]", object_pairs_hook=list)
    return packets


def _ts_ns(epoch: str) -> int:
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _packet_frames(packet: Pairs, syns: dict[int, list[int]]) -> Iterator[_Frame]:
    layers: Pairs = _one(_one(packet, "_source", []), "layers", [])
    frame, tcp = _one(layers, "frame", []), _one(layers, "tcp", [])
    ip = _one(layers, "ip") or _one(layers, "ipv6") or []
    if not tcp or not ip:
        return
    src_h = _one(ip, "ip.src") or _one(ip, "ipv6.src", "")
    dst_h = _one(ip, "ip.dst") or _one(ip, "ipv6.dst", "")
    stream, seq = int(_one(tcp, "tcp.stream", -1)), int(_one(tcp, "tcp.seq_raw", 0))
    flags = int(_one(tcp, "tcp.flags", "0x0"), 16)
    if flags & 0x02:
        syns.setdefault(stream, [0, 0])[1 if flags & 0x10 else 0] = seq
    ts_ns = _ts_ns(_one(frame, "frame.time_epoch", "0"))
    src, dst = (src_h, int(_one(tcp, "tcp.srcport", 0))), (dst_h, int(_one(tcp, "tcp.dstport", 0)))
    for layer in _all(layers, "http2"):
        for st in _all(layer, "http2.stream"):
            if _one(st, "http2.type") is None:
                continue  # the connection preface
            headers = [
                (str(_one(h, "http2.header.name", "")).lower(), str(_one(h, "http2.header.value", "")))
                for h in _all(st, "http2.header")
            ]
            end_stream = _one(_one(st, "http2.flags_tree", []), "http2.flags.end_stream") == "1"
            sid, ftype, length = (int(_one(st, name, 0)) for name in ("http2.streamid", "http2.type", "http2.length"))
            yield _Frame(ts_ns, src, dst, stream, seq, sid, ftype, length, end_stream, headers)


def _pair_streams(frames: Iterable[_Frame]) -> list[_Stream]:
    streams: dict[tuple[int, int], _Stream] = {}
    for f in frames:
        key = (f.tcp_stream, f.stream_id)
        names = dict(f.headers)
        if f.ftype == 1 and ":method" in names and key not in streams:
            streams[key] = _Stream(f.src, f.dst, f.tcp_stream, f.stream_id, f, names)
        s = streams.get(key)
        if s is None or f.stream_id == 0:
            continue
        if f.src == s.client:
            s.req_bytes += f.length + 9
            s.req_last_ns = f.ts_ns
            continue
        if f.ftype == 1 and s.resp is None and ":status" in names:
            s.resp = f
        if f.ftype == 1:
            s.resp_headers.update(names)
        s.resp_bytes += f.length + 9
        s.resp_last_ns = f.ts_ns
    return sorted(streams.values(), key=lambda s: (s.tcp_stream, s.req.ts_ns, s.stream_id))


def tshark_requests(
    path: str,
    point: CapturePoint,
    *,
    http2_ports: Iterable[int] = DEFAULT_HTTP2_PORTS,
    flow_id_of: FlowIdOf | None = None,
    tshark: str = "tshark",
) -> list[RequestRecord]:
    """HTTP/2 and gRPC request records of the capture ``path`` as seen at ``point``.

    ``flow_id_of`` maps a connection to the ``flow_id`` the flow meter gave it (so records join their
    FlowRecord); without it the id is ``ids.tuple_flow_id`` of the point and the 5-tuple.
    """
    syns: dict[int, list[int]] = {}
    frames = [f for packet in run_tshark(path, http2_ports, tshark) for f in _packet_frames(packet, syns)]
    records: list[RequestRecord] = []
    index: dict[int, int] = {}
    for s in _pair_streams(frames):
        n = index.get(s.tcp_stream, 0)
        index[s.tcp_stream] = n + 1
        records.append(_record(point, s, n, syns.get(s.tcp_stream, [0, 0]), flow_id_of))
    return records


def _record(point: CapturePoint, s: _Stream, n: int, syn: list[int], flow_id_of: FlowIdOf | None) -> RequestRecord:
    (ch, cp), (sh, sp) = s.client, s.server
    flow_id = flow_id_of(6, ch, cp, sh, sp) if flow_id_of else tuple_flow_id(point.point, 6, ch, cp, sh, sp)
    h, resp = s.headers, s.resp
    b3 = h.get("b3", "").split("-")
    grpc = h.get("content-type", "").startswith("application/grpc")
    return RequestRecord(
        point=point.point, host=point.host, iface=point.iface, hop_kind=point.hop_kind,
        request_id=request_id(point.point, flow_id, s.req.seq, s.req.ts_ns, s.stream_id),
        flow_id=flow_id, l7_proto="grpc" if grpc else "http2", proto=6,
        orig_h=ch, orig_p=cp, resp_h=sh, resp_p=sp, syn_seq=syn[0], synack_seq=syn[1], seq_in_flow=n,
        req_tcp_seq=s.req.seq, resp_tcp_seq=resp.seq if resp else 0,
        req_first_ns=s.req.ts_ns, req_last_ns=s.req_last_ns or s.req.ts_ns,
        resp_first_ns=resp.ts_ns if resp else 0, resp_last_ns=s.resp_last_ns if resp else 0,
        req_bytes=s.req_bytes, resp_bytes=s.resp_bytes if resp else 0,
        method=h.get(":method", ""), http_host=h.get(":authority", ""), path=h.get(":path", ""),
        status=int(s.resp_headers.get(":status", "0") or 0) if resp else 0,
        x_request_id=h.get("x-request-id", ""), traceparent=h.get("traceparent", ""),
        b3_trace_id=h.get("x-b3-traceid", "") or (b3[0] if len(b3) >= 2 else ""),
        b3_span_id=h.get("x-b3-spanid", "") or (b3[1] if len(b3) >= 2 else ""),
    )  # fmt: skip
