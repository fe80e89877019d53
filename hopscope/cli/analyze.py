"""``hopscope analyze``: read captures from several points, stitch, store, print traces.

    hopscope analyze --point client=c.pcap --point node=n.pcap --hop-kind node=nat --format json
    hopscope analyze --manifest samples/lab/manifest.json          # points, kinds and hosts from the lab
    hopscope analyze a.pcap b.pcap                                  # point names from the file names,
                                                                    # hosts and kinds inferred
    hopscope analyze --capture-set set.yaml                         # points, files, hosts, kinds, clocks

Metadata comes from the manifest or the capture-set file, then the command line: files and --point
add points (a name already in the file takes the new file), --hop-kind, --host and --clock override
the file's values for the points they name. Whatever is still missing (a point's host or kind) is
inferred from the captures themselves and reported on stderr, one line per point with its evidence
and confidence (--no-infer: a point without a host is a host of its own, its kind as the probe saw it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hopscope.cli import add_alias, check_output
from hopscope.correlate.settings import ClockDomain, ClockMode
from hopscope.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("files", nargs="*", help="capture files; the point is the file name without extension")
    p.add_argument("--point", action="append", default=[], metavar="NAME=FILE", help="a capture point's file")
    kind = p.add_argument("--hop-kind", action="append", default=[], metavar="NAME=KIND",
                          help="hop kind of a point: pod, node, nat, hypervisor, switch, gateway, proxy")
    add_alias(p, kind, "--kind")
    p.add_argument("--host", action="append", default=[], metavar="NAME=HOST",
                   help="host (clock and proxy host) of a point; default: the point name")
    p.add_argument("--clock", action="append", default=[], metavar="NAME=GROUP",
                   help="clock group of a point: points of one group share a clock (default: the host's)")
    p.add_argument("--manifest", help="a lab manifest.json: its capture points, kinds, hosts and files; "
                   "the output then also scores the traces against its ground truth (precision, recall)")
    p.add_argument("--capture-set", metavar="FILE",
                   help="a YAML capture-set file: its points with file, host, kind and clock (README)")
    p.add_argument("--no-infer", action="store_true",
                   help="do not infer missing hosts and kinds from the captures")
    p.add_argument("--save-capture-set", metavar="FILE",
                   help="write the points as analysed (given and inferred hosts, kinds, clocks) as a capture-set "
                   "file, to check and reuse with --capture-set")
    p.add_argument("--format", choices=("text", "json"), default="text")
    out = p.add_argument("-o", "--out", metavar="FILE", help="write to this file instead of stdout")
    add_alias(p, out, "--output")
    p.add_argument("--store", metavar="URL", help="store URL (default: the embedded chDB store, $HOPSCOPE_STORE)")
    p.add_argument("--no-store", action="store_true", help="do not store records and traces")
    p.add_argument("--clock-mode", choices=[m.value for m in ClockMode], default=ClockMode.AUTO.value,
                   help="auto: correct a point's clock only when causality demands (default); ntp; none")
    p.add_argument("--clock-domain", choices=[m.value for m in ClockDomain], default=ClockDomain.HOST.value,
                   help="host: the points of one host (--host, the manifest) share its clock, a point without "
                   "a host is its own (default); point: every capture its own clock")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: for inputs over 20 MB on a terminal)")
    p.add_argument("--otlp", metavar="ENDPOINT",
                   help="also send the traces as OpenTelemetry spans to this OTLP/HTTP endpoint, "
                   "e.g. http://127.0.0.1:4318 (one span per hop)")
    p.add_argument("--strict", action="store_true",
                   help="a damaged capture (corrupt record, file cut short) is an error (exit 4) instead of a "
                   "warning; either way the records before the damage are kept")
    p.add_argument("--inventory", help="YAML inventory or kubectl JSON: the pod or Service names --otlp gives "
                   "as service.name (default: the host)")


def pairs(values: list[str], option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; anything else is a ``ConfigError`` naming ``option``."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{option} expects NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def run(args: argparse.Namespace) -> int:
    from hopscope.correlate.offline import analyze_points, plan_points, store_tables
    from hopscope.correlate.report import render
    from hopscope.correlate.settings import CorrelateSettings
    from hopscope.store import DEFAULT_URL

    check_inputs(args)
    plan = plan_points(args.files, pairs(args.point, "--point"), pairs(args.hop_kind, "--hop-kind"),
                       pairs(args.host, "--host"), args.manifest, args.capture_set, pairs(args.clock, "--clock"))
    settings = CorrelateSettings(clock_mode=ClockMode(args.clock_mode), clock_domain=ClockDomain(args.clock_domain))
    analysis = analyze_points(plan, settings, args.manifest, args.progress, args.strict, infer=not args.no_infer)
    text = render(analysis.result, analysis.evaluation, args.format)
    if analysis.inference is not None:
        report_inference(analysis.inference)
        if args.format == "json":  # the inference beside the traces, as a tool reading the JSON needs it
            text = with_key(text, "inference", analysis.inference.as_dict())
    if args.save_capture_set:
        save_capture_set(args.save_capture_set, plan, analysis.inference)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not args.no_store:  # after the output: a store that cannot be opened does not cost the result
        store_tables(args.store or DEFAULT_URL, analysis.tables())
    if args.otlp:
        from hopscope.correlate.otlp import export_traces

        export_traces(args.otlp, args.inventory, analysis.result.traces, analysis.result.spans)
    return 0


def check_inputs(args: argparse.Namespace) -> None:
    """What can be checked before reading any capture: the output paths, the store URL's scheme, the
    OTLP endpoint and the inventory, so that a typo is one error line at once, not after the analysis.
    (The store itself is opened after the output: a store that is down does not cost the result.)"""
    from urllib.parse import urlsplit

    check_output(args.out, "-o")
    check_output(args.save_capture_set, "--save-capture-set")
    if args.store and not args.no_store and urlsplit(args.store).scheme not in ("clickhouse", "chdb"):
        raise ConfigError(f"unknown store URL {args.store!r}: use clickhouse://host:port/db or chdb:///path/to/dir")
    if args.otlp:
        from hopscope.correlate.otlp import traces_url
        from hopscope.topology.inventory import load_inventory

        traces_url(args.otlp)
        if args.inventory:
            load_inventory(args.inventory)


def with_key(text: str, key: str, value: Any) -> str:
    """A JSON object's text with one more key at its end, without parsing the (possibly large) rest."""
    body = text.rstrip()
    if not body.endswith("}"):
        raise ValueError("not a JSON object")
    inner = json.dumps(value, indent=1).replace("\n", "\n ")
    return f"{body[:-1].rstrip()},\n {json.dumps(key)}: {inner}\n}}\n"


def report_inference(inference: Any) -> None:
    """The inferred hosts and kinds on stderr, one line per point, then the path order and warnings."""
    sys.stderr.write("inferred capture points (point, host, kind, confidence, why):\n")
    for line in inference.lines():
        sys.stderr.write(f"  {line}\n")
    sys.stderr.flush()


def save_capture_set(path: str, plan: Any, inference: Any) -> None:
    """Write the plan, with what was inferred, as a capture-set file."""
    from hopscope.correlate.capture_set import SetPoint, dump_capture_set

    planned = inference.plan(plan) if inference is not None else plan
    dump_capture_set([SetPoint(p.name, p.file, p.host, p.hop_kind, p.clock) for p in planned], path)
