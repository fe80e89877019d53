"""Stitch the capture files of several points at once (``hopscope analyze``, ``hopscope demo``).

A plan names each point's capture file, hop kind and host, from a lab manifest and from points named
one by one; the files go through the probes' stages (``correlate.capture``), the ``Correlator``
stitches the records, and a manifest's ground truth scores the traces (``correlate.evaluate``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hopscope.correlate.settings import CorrelateSettings
from hopscope.errors import CaptureError, ConfigError
from hopscope.records import Batch, HopKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedPoint:
    """One capture point to read."""

    name: str
    file: str
    hop_kind: str = ""  # empty: the correlator infers it
    host: str = ""  # clock and proxy host; empty: the point name
    clock: str = ""  # clock group shared with other points; empty: the host's (or the point's)


@dataclass(slots=True)
class Analysis:
    """The records read from every point, the traces stitched from them, and the score against the
    manifest's ground truth (``None`` without a manifest)."""

    flows: Batch
    requests: Batch
    result: Any  # correlate.engine.StitchResult
    evaluation: dict[str, Any] | None = None
    inference: Any = None  # correlate.infer.Inference, when hosts or kinds were inferred
    packet_index: Batch | None = None  # PacketIndex rows: where each flow's packets lie in its capture

    def tables(self) -> dict[str, Batch]:
        """Everything to store, by store table."""
        tables = {"flows": self.flows, "requests": self.requests, "spans": self.result.spans,
                  "traces": self.result.traces}
        if self.packet_index is not None:
            tables["packet_index"] = self.packet_index
        return tables


def plan_points(
    files: Sequence[str] = (), points: Mapping[str, str] | None = None, hop_kinds: Mapping[str, str] | None = None,
    hosts: Mapping[str, str] | None = None, manifest: str | None = None, capture_set: str | None = None,
    clocks: Mapping[str, str] | None = None,
) -> list[PlannedPoint]:  # fmt: skip
    """Every capture to read, by point name: the manifest's or the capture-set file's points, then
    ``files`` (the point is the file name without extension), then ``points`` (name -> file);
    ``hop_kinds``, ``hosts`` and ``clocks`` override the file's. Raises ``ConfigError`` for no
    capture, a missing file, an unknown kind, or a kind, host or clock given for a point that has no
    capture."""
    kinds, host_of, clock_of = dict(hop_kinds or {}), dict(hosts or {}), dict(clocks or {})
    found: dict[str, str] = {}
    known = [k.value for k in HopKind if k.value]
    for name, kind in kinds.items():
        if kind not in known:
            raise ConfigError(f"--hop-kind {name}={kind}: unknown kind; one of {', '.join(known)}")
    if manifest and capture_set:
        raise ConfigError("give --manifest or --capture-set, not both")
    if manifest:
        for cp in _load_manifest(manifest).get("capture_points", []):
            found[cp["name"]] = os.path.join(os.path.dirname(manifest), cp["file"])
            kinds.setdefault(cp["name"], cp.get("kind", ""))
            host_of.setdefault(cp["name"], cp.get("host", ""))
    if capture_set:
        from hopscope.correlate.capture_set import load_capture_set

        for sp in load_capture_set(capture_set):
            found[sp.point] = sp.file
            for given, value in ((kinds, sp.kind), (host_of, sp.host), (clock_of, sp.clock)):
                given.setdefault(sp.point, value)
    for f in files:
        found[os.path.splitext(os.path.basename(f))[0]] = f
    found.update(points or {})
    if not found:
        raise ConfigError("no captures: give --point NAME=FILE, files, --capture-set or --manifest")
    unknown = (set(kinds) | set(host_of) | set(clock_of)) - set(found)
    if unknown:
        raise ConfigError(f"--hop-kind/--host/--clock name points that have no capture: {', '.join(sorted(unknown))}")
    for name, path in found.items():
        if not os.path.isfile(path):
            raise ConfigError(f"capture of point {name}: no file {path}")
    return [PlannedPoint(n, f, kinds.get(n, ""), host_of.get(n, ""), clock_of.get(n, ""))
            for n, f in sorted(found.items())]


def read_points(
    plan: Sequence[PlannedPoint], progress: str = "off", strict: bool = False, index: list[Batch] | None = None
) -> tuple[Batch, Batch]:
    """Flow and request records of every capture, with a progress bar over their bytes
    (``progress``: auto, on or off, see ``correlate.progress``); ``index`` receives each point's
    ``PacketIndex`` batch (where its flows' packets lie in the file).

    A damaged capture gives the records before its damage (the reader warns); a point whose file is not
    a capture at all is left out with a warning, and the other points are read. With ``strict`` either
    is a ``CaptureError``; so is no point readable at all."""
    from hopscope.correlate.capture import read_point
    from hopscope.correlate.progress import Progress
    from hopscope.records import FlowRecord, RequestRecord

    bar = Progress(sum(os.path.getsize(p.file) for p in plan), progress)
    flows, requests = [], []
    failed: list[CaptureError] = []
    for p in plan:
        bar.label = p.name
        try:
            got = read_point(p.file, p.name, p.hop_kind, p.host, progress=bar.advance, strict=strict)
        except CaptureError as exc:
            if strict:
                raise
            log.warning("point %s left out: %s", p.name, exc)
            failed.append(exc)
            continue
        log.info("point %s: %d packets, %d flow and %d request records", p.name, got.packets,
                 len(got.flows), len(got.requests))
        flows.append(got.flows)
        requests.append(got.requests)
        if index is not None:
            index.append(got.index)
    bar.close()
    if failed and len(failed) == len(plan):
        raise failed[0]
    return (Batch.concat(flows) if flows else Batch(FlowRecord, {}, 0),
            Batch.concat(requests) if requests else Batch(RequestRecord, {}, 0))


def analyze_points(
    plan: Sequence[PlannedPoint], settings: CorrelateSettings | None = None, manifest: str | None = None,
    progress: str = "off", strict: bool = False, infer: bool = False,
) -> Analysis:  # fmt: skip
    """Read every planned capture and stitch; with ``manifest``, score the traces against its ground truth.
    ``strict``: a damaged capture is a ``CaptureError`` (see ``read_points``). ``infer``: the host
    and hop kind of points the plan lacks them for are inferred from the records (``correlate.infer``)."""
    from hopscope.correlate.engine import Correlator
    from hopscope.correlate.evaluate import evaluate

    index: list[Batch] = []
    flows, requests = read_points(plan, progress, strict, index)
    inference = None
    if infer and any(not (p.host and p.hop_kind) for p in plan):
        from hopscope.correlate.infer import infer_points

        inference = infer_points(plan, flows, requests)
        plan, flows, requests = inference.plan(plan), inference.relabel(flows), inference.relabel(requests)
    result = Correlator(settings, {p.name: p.hop_kind for p in plan if p.hop_kind},
                        {p.name: p.clock for p in plan if p.clock}).stitch(requests, flows)
    evaluation = evaluate(_load_manifest(manifest), result, requests).as_dict() if manifest else None
    return Analysis(flows, requests, result, evaluation, inference, Batch.concat(index) if index else None)


def store_tables(url: str, tables: Mapping[str, Batch]) -> None:
    """Insert every non-empty batch into its table of the store at ``url`` (schema created first)."""
    from hopscope.store import store_from_url

    store = store_from_url(url)
    try:
        store.ensure_schema()
        for table, batch in tables.items():
            if len(batch):
                store.insert(table, batch)
        log.info("stored %s in %s", ", ".join(f"{len(b)} {t}" for t, b in tables.items()), store.url)
    finally:
        store.close()


def _load_manifest(path: str) -> dict[str, Any]:
    """The lab manifest at ``path``; ``ConfigError`` (one line) for a missing or unreadable file, or one
    that is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"manifest {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"manifest {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"manifest {path}: not a lab manifest (a JSON object with capture_points)")
    return doc
