"""``hopscope analyze``: read captures from several points, stitch, store, print traces.

    hopscope analyze --point client=c.pcap --point node=n.pcap --kind node=nat --format json
    hopscope analyze --manifest samples/lab/manifest.json          # points, kinds and hosts from the lab
    hopscope analyze a.pcap b.pcap                                  # point names from the file names
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from hopscope.correlate.settings import ClockDomain, ClockMode, CorrelateSettings
from hopscope.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("analyze", help="stitch captures from several points into per-request traces",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="capture files; the point is the file name without extension")
    p.add_argument("--point", action="append", default=[], metavar="NAME=FILE", help="a capture point's file")
    p.add_argument("--kind", action="append", default=[], metavar="NAME=KIND",
                   help="hop kind of a point: pod, node, nat, hypervisor, switch, gateway, proxy")
    p.add_argument("--host", action="append", default=[], metavar="NAME=HOST",
                   help="host (clock and proxy host) of a point; default: the point name")
    p.add_argument("--manifest", help="a lab manifest.json: its capture points, kinds, hosts and files; "
                   "the output then also scores the traces against its ground truth (precision, recall)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--store", help="store URL (default: the embedded chDB store, $HOPSCOPE_STORE)")
    p.add_argument("--no-store", action="store_true", help="do not store records and traces")
    p.add_argument("--clock-mode", choices=[m.value for m in ClockMode], default=ClockMode.AUTO.value,
                   help="auto: correct a point's clock only when causality demands (default); ntp; none")
    p.add_argument("--clock-domain", choices=[m.value for m in ClockDomain], default=ClockDomain.POINT.value,
                   help="point: every capture its own clock (default); host: the points of one --host share one")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: for inputs over 20 MB on a terminal)")
    p.set_defaults(func=run)
    _register_streaming(sub)


def _register_streaming(sub: Any) -> None:
    """``hopscope correlate`` (streaming) lives in correlate/stream_cli.py, owned by the streaming
    engineer; it is registered here, once, when that module is present."""
    if "correlate" in getattr(sub, "choices", {}):
        return
    try:
        from hopscope.correlate import stream_cli
    except ImportError:
        return
    register_stream = getattr(stream_cli, "register", None)
    if register_stream is not None:
        register_stream(sub)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--{what} expects NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def plan_points(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(point, file, kind, host) for every capture named on the command line or in the manifest."""
    kinds, hosts = _pairs(args.kind, "kind"), _pairs(args.host, "host")
    points: dict[str, str] = {}
    if args.manifest:
        with open(args.manifest, encoding="utf-8") as fh:
            manifest = json.load(fh)
        base = os.path.dirname(args.manifest)
        for cp in manifest.get("capture_points", []):
            points[cp["name"]] = os.path.join(base, cp["file"])
            kinds.setdefault(cp["name"], cp.get("kind", ""))
            hosts.setdefault(cp["name"], cp.get("host", ""))
    for f in args.files:
        points[os.path.splitext(os.path.basename(f))[0]] = f
    points.update(_pairs(args.point, "point"))
    if not points:
        raise ConfigError("no captures: give --point NAME=FILE, files, or --manifest")
    unknown = (set(kinds) | set(hosts)) - set(points)
    if unknown:
        raise ConfigError(f"--kind/--host name points that have no capture: {', '.join(sorted(unknown))}")
    for name, path in points.items():
        if not os.path.isfile(path):
            raise ConfigError(f"capture of point {name}: no file {path}")
    return [(n, f, kinds.get(n, ""), hosts.get(n, "")) for n, f in sorted(points.items())]


def run(args: argparse.Namespace) -> int:
    from hopscope.correlate.engine import Correlator
    from hopscope.correlate.report import evaluation_text, summary_text, traces_json

    plan = plan_points(args)
    flow_batch, req_batch = _read_all(plan, args.progress)
    settings = CorrelateSettings(clock_mode=ClockMode(args.clock_mode), clock_domain=ClockDomain(args.clock_domain))
    result = Correlator(settings, {n: k for n, _, k, _ in plan if k}).stitch(req_batch, flow_batch)
    evaluation = _evaluate(args.manifest, result, req_batch) if args.manifest else None
    if args.format == "json":
        doc = traces_json(result)
        if evaluation is not None:
            doc["evaluation"] = evaluation
        text = json.dumps(doc, indent=1) + "\n"
    else:
        text = summary_text(result) + (evaluation_text(evaluation) if evaluation is not None else "")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not args.no_store:  # after the output: a store that cannot be opened does not cost the result
        _store(args.store, {"flows": flow_batch, "requests": req_batch, "spans": result.spans,
                            "traces": result.traces})
    return 0


def _read_all(plan: list[tuple[str, str, str, str]], progress: str) -> tuple[Any, Any]:
    """Flow and request records of every capture, with a progress bar over their bytes."""
    from hopscope.correlate.capture import read_point
    from hopscope.correlate.progress import Progress
    from hopscope.records import Batch, FlowRecord, RequestRecord

    bar = Progress(sum(os.path.getsize(f) for _, f, _, _ in plan), progress)
    flows, requests = [], []
    for name, path, kind, host in plan:
        bar.label = name
        got = read_point(path, name, kind, host, progress=bar.advance)
        log.info("point %s: %d packets, %d flow and %d request records", name, got.packets,
                 len(got.flows), len(got.requests))
        flows.append(got.flows)
        requests.append(got.requests)
    bar.close()
    return (Batch.concat(flows) if flows else Batch(FlowRecord, {}, 0),
            Batch.concat(requests) if requests else Batch(RequestRecord, {}, 0))


def _store(url: str | None, tables: dict[str, Any]) -> None:
    """Insert everything into the store; without the store package, say so and go on."""
    try:
        from hopscope.store import DEFAULT_URL, store_from_url
    except ImportError as exc:
        log.warning("not storing: the store package is not available (%s)", exc)
        return
    store = store_from_url(url or DEFAULT_URL)
    try:
        store.ensure_schema()
        for table, batch in tables.items():
            if len(batch):
                store.insert(table, batch)
        log.info("stored %s in %s", ", ".join(f"{len(b)} {t}" for t, b in tables.items()), store.url)
    finally:
        store.close()



def _evaluate(manifest_path: str, result: Any, requests: Any) -> dict[str, Any]:
    """Precision and recall against the lab manifest's ground truth."""
    from hopscope.correlate.evaluate import evaluate

    with open(manifest_path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    return evaluate(manifest, result, requests).as_dict()
