"""``hopscope lab up | traffic | down | run | samples | status``: the namespaces lab from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hopscope.errors import ConfigError
from hopscope.lab.lab import ImpairSpec, Lab, check_prerequisites, down_all, down_prefix, record, state_root
from hopscope.lab.netns import lab_prefixes
from hopscope.lab.plan import PlanSettings
from hopscope.paths import lab_samples

#: What ``lab samples`` records: small enough to commit (a few MB of pcaps), every case present.
SAMPLE_SETTINGS = {
    "requests_per_session": 8,
    "sessions": 1,
    "big_bytes": 60_000,
    "dead_attempts": 1,
    "dns_lookups": 3,
}
SAMPLE_IMPAIRMENT = "nodeB-ingress=5"
DEFAULT_SAMPLES_DIR = lab_samples()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser("lab", help="the multi-hop namespaces lab (root): up, traffic, down, run, samples")
    acts = lab.add_subparsers(dest="lab_action", metavar="ACTION", required=True)

    p = acts.add_parser("up", help="build the lab and leave it running")
    p.add_argument("--overlay", choices=["vxlan"], help="route pod traffic between the nodes over VXLAN")
    p.set_defaults(func=cmd_up)

    p = acts.add_parser("traffic", help="drive traffic through a running lab (capture with --out)")
    p.add_argument("--prefix", help="the lab's prefix (default: the only one running)")
    _traffic_args(p, out_required=False)
    p.set_defaults(func=cmd_traffic)

    p = acts.add_parser("down", help="remove a lab, or every lab leftover (crashed runs too)")
    p.add_argument("--prefix", help="only this lab (default: all)")
    p.set_defaults(func=cmd_down)

    p = acts.add_parser("run", help="up, traffic with captures into OUT, down")
    p.add_argument("--overlay", choices=["vxlan"])
    _traffic_args(p, out_required=True)
    p.set_defaults(func=cmd_run)

    p = acts.add_parser("samples", help="regenerate the committed sample captures (samples/lab)")
    p.add_argument("--out", type=Path, default=DEFAULT_SAMPLES_DIR)
    p.set_defaults(func=cmd_samples)

    p = acts.add_parser("status", help="list running labs")
    p.set_defaults(func=cmd_status)

    p = acts.add_parser("check", help="check the lab's prerequisites")
    p.set_defaults(func=cmd_check)


def _traffic_args(p: argparse.ArgumentParser, out_required: bool) -> None:
    p.add_argument("--out", type=Path, required=out_required, help="directory for pcaps and manifest.json")
    p.add_argument("--delay", action="append", default=[], metavar="SITE=MS", help="inject delay (repeatable)")
    p.add_argument("--loss", action="append", default=[], metavar="SITE=P", help="inject loss, 0..1 (repeatable)")
    p.add_argument("--seed", type=int, default=1, help="seed of the loss RNG")
    p.add_argument("--requests", type=int, default=10, help="HTTP requests per session")
    p.add_argument("--sessions", type=int, default=1, help="concurrent keep-alive + close sessions per client")
    p.add_argument("--big-bytes", type=int, default=2_000_000, help="size of the long transfer (0: none)")
    p.add_argument("--no-overhead", action="store_true", help="skip measuring the delayer's overhead")


def parse_impairments(delays: list[str], losses: list[str]) -> list[ImpairSpec]:
    """``SITE=VALUE`` options folded into one ImpairSpec per site."""
    found: dict[str, dict[str, float]] = {}
    for opts, key in ((delays, "delay_ms"), (losses, "loss")):
        for opt in opts:
            site, sep, value = opt.partition("=")
            try:
                found.setdefault(site, {})[key] = float(value.removesuffix("ms"))
            except ValueError:
                sep = ""
            if not sep or not site:
                raise ConfigError(f"bad impairment {opt!r}: expected SITE=NUMBER, e.g. nodeB-ingress=5")
    return [ImpairSpec(site, **vals) for site, vals in found.items()]


def _settings(args: argparse.Namespace) -> PlanSettings:
    return PlanSettings(requests_per_session=args.requests, sessions=args.sessions, big_bytes=args.big_bytes)


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(overlay=args.overlay).up()
    lab.detach()
    print(f"lab {lab.prefix} up in {lab.up_seconds} s (namespaces: {' '.join(lab.ns.all())})")
    print("next: hopscope lab traffic --out DIR   |   hopscope lab down")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.prefix)
    impairments = parse_impairments(args.delay, args.loss)
    if args.out is None:
        for spec in impairments:
            lab.impair(spec.site, spec.delay_ms, spec.loss, args.seed)
        try:
            truth = lab.traffic(_settings(args))
        finally:
            lab.clear_impairments()
        _print_summary(truth)
        return 0
    path = record(lab, args.out, impairments, _settings(args), args.seed, not args.no_overhead)
    _print_manifest(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    impairments = parse_impairments(args.delay, args.loss)
    with Lab(overlay=args.overlay) as lab:
        path = record(lab, args.out, impairments, _settings(args), args.seed, not args.no_overhead)
    _print_manifest(path)
    return 0


def cmd_samples(args: argparse.Namespace) -> int:

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.pcap"):
        old.unlink()
    with Lab() as lab:
        path = record(lab, out, parse_impairments([SAMPLE_IMPAIRMENT], []), PlanSettings(**SAMPLE_SETTINGS))
    _print_manifest(path)
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"{out}: {total / 1e6:.2f} MB")
    return 0


def cmd_down(args: argparse.Namespace) -> int:

    removed = down_prefix(args.prefix) if args.prefix else down_all()
    print(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:

    prefixes = lab_prefixes()
    for prefix in prefixes:
        state_file = state_root() / prefix / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        age = (time.time_ns() - state["created_ns"]) / 1e9 if "created_ns" in state else None
        note = f"up {age:.0f} s, overlay {state.get('overlay')}" if age is not None else "no state (crashed run?)"
        print(f"{prefix}  {note}")
    if not prefixes:
        print("no lab running")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    check_prerequisites()
    print("lab prerequisites: all present")
    return 0


def _print_summary(truth: list[dict[str, Any]]) -> None:
    http = [r for r in truth if r["type"] == "http"]
    errors = sum(1 for r in http if r["error"])
    print(f"{len(http)} HTTP requests ({errors} errors), {len(truth) - len(http)} DNS lookups")


def _print_manifest(path: Path) -> None:
    m = json.loads(path.read_text())
    c = m["counts"]
    print(
        f"{path}: {c['requests']} requests ({c['without_client_request_id']} without a client id, "
        f"{c['status_5xx']} 5xx, {c['errors']} errors), {c['dns']} DNS, "
        f"{len(m['capture_points'])} capture points"
    )
    for imp in m["impairments"]:
        stats = imp["delayer_stats"]
        print(f"  impairment {imp['site']}: delay {imp['delay_ms']} ms, loss {imp['loss']}: {stats}")
    if m.get("delayer_overhead"):
        print(f"  delayer overhead: {m['delayer_overhead']['overhead_us']} us per packet")
