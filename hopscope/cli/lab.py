"""``hopscope lab up|traffic|down|run|samples|status|check``: the namespaces lab (needs root)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hopscope.errors import ConfigError
from hopscope.lab.lab import ImpairSpec

if TYPE_CHECKING:
    from hopscope.lab.plan import PlanSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    acts = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = acts.add_parser("up", help="build the lab and leave it running")
    _overlay_arg(p)
    _ipv6_arg(p)
    _sidecar_arg(p)
    _mtls_arg(p)
    p = acts.add_parser("traffic", help="drive traffic through a running lab (capture with --out)")
    p.add_argument("--prefix", help="the lab's prefix (default: the only one running)")
    p.add_argument("--server-sidecar", choices=["envoy", "nginx", "haproxy"],
                   help="fail unless the running lab's server sidecar is this one (it is chosen by 'lab up')")
    _traffic_args(p, out_required=False)
    p = acts.add_parser("down", help="remove a lab, or every lab leftover (crashed runs too)")
    p.add_argument("--prefix", help="only this lab (default: all)")
    p = acts.add_parser("run", help="up, traffic with captures into OUT, down (--live: the whole pipeline, scored)")
    _overlay_arg(p)
    _ipv6_arg(p)
    _sidecar_arg(p)
    _mtls_arg(p)
    _traffic_args(p, out_required=True)
    _live_args(p)
    p = acts.add_parser("samples", help="regenerate the shipped sample captures")
    p.add_argument("--out", type=Path, help="directory for pcaps and manifest.json (default: the shipped samples)")
    _sidecar_arg(p)
    acts.add_parser("status", help="list running labs")
    p = acts.add_parser("check", help="check the lab's prerequisites")
    _sidecar_arg(p)
    _mtls_arg(p)


def _overlay_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overlay", choices=["vxlan"], help="route pod traffic between the nodes over VXLAN")


def _ipv6_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ipv6", action="store_true",
                   help="dual-stack: pods, nodes and Services get IPv6 addresses too (ip6tables Service NAT); "
                   "half the web sessions (every other one, client by client) and the second client's attempts "
                   "on the dead Service go over IPv6, the rest, DNS and the long transfer over IPv4 (not with "
                   "--overlay or a client sidecar)")


def _mtls_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mtls", action="store_true",
                   help="the client and server sidecars speak mutual TLS to each other (a CA and one certificate "
                   "per sidecar made at 'lab up', client certificates required, session tickets, the client "
                   "sidecar's pooled upstream connections); needs --client-sidecar")


def _sidecar_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-sidecar", choices=["envoy", "nginx", "haproxy"], default="envoy",
                   help="the server pods' proxy in front of the app (default: envoy; nginx and haproxy from Debian)")
    p.add_argument("--client-sidecar", choices=["none", "envoy", "haproxy"], default="none",
                   help="an egress proxy in each client pod: the client app sends to it on 127.0.0.1, it forwards "
                   "to the Service (default: none)")


def _traffic_args(p: argparse.ArgumentParser, out_required: bool) -> None:
    p.add_argument("--out", type=Path, required=out_required, help="directory for pcaps and manifest.json")
    p.add_argument("--delay", action="append", default=[], metavar="SITE=MS", help="inject delay (repeatable)")
    p.add_argument("--loss", action="append", default=[], metavar="SITE=P", help="inject loss, 0..1 (repeatable)")
    p.add_argument("--seed", type=int, default=1, help="seed of the loss RNG")
    p.add_argument("--requests", type=int, default=10, help="HTTP requests per session")
    p.add_argument("--sessions", type=int, default=1, help="concurrent keep-alive + close sessions per client")
    p.add_argument("--big-bytes", type=int, default=2_000_000, help="size of the long transfer (0: none)")
    p.add_argument("--no-overhead", action="store_true", help="skip measuring the delayer's overhead")
    p.add_argument("--clock-skew", action="append", default=[], metavar="HOST=US",
                   help="shift every capture of HOST by US microseconds after the run, as if its clock were "
                   "off (recorded in the manifest as clock_skew_ns; repeatable)")


def _live_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", action="store_true",
                   help="instead of pcaps: one hopscope agent per lab host into Kafka, hopscope correlate into a "
                   "store, the stored traces scored against the manifest (exit 1 below recall 0.999 or on any "
                   "false link); OUT gets manifest.json, score.json, the agents' configurations and the logs")
    p.add_argument("--kafka", metavar="BOOTSTRAP",
                   help="with --live: Kafka (default 127.0.0.1:9092, started by deploy/kafka/start.sh if silent)")
    p.add_argument("--store", metavar="URL", help="with --live: the store (default: embedded chDB in OUT/store)")


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


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args) or 0


def _plan(args: argparse.Namespace) -> PlanSettings:
    from hopscope.lab.plan import PlanSettings

    return PlanSettings(requests_per_session=args.requests, sessions=args.sessions, big_bytes=args.big_bytes)


def _up(args: argparse.Namespace) -> None:
    from hopscope.lab.lab import Lab

    lab = Lab(overlay=args.overlay, sidecar=args.server_sidecar, client_sidecar=args.client_sidecar,
              ipv6=args.ipv6, mtls=args.mtls).up()
    lab.detach()
    print(f"lab {lab.prefix} up in {lab.up_seconds} s, server sidecar {lab.sidecar}, "
          f"client sidecar {lab.client_sidecar}{', mutual TLS between them' if lab.mtls else ''} "
          f"(namespaces: {' '.join(lab.ns.all())})")
    print("next: hopscope lab traffic --out DIR   |   hopscope lab down")


def _traffic(args: argparse.Namespace) -> None:
    from hopscope.lab.lab import Lab, record
    from hopscope.lab.summary import manifest_summary, traffic_summary

    lab = Lab.attach(args.prefix)
    if args.server_sidecar and args.server_sidecar != lab.sidecar:
        raise ConfigError(f"lab {lab.prefix} runs {lab.sidecar}, not {args.server_sidecar}: "
                          f"hopscope lab down, then hopscope lab up --server-sidecar {args.server_sidecar}")
    impairments = parse_impairments(args.delay, args.loss)
    if args.out is not None:
        path = record(lab, args.out, impairments, _plan(args), args.seed, not args.no_overhead)
        print("\n".join(manifest_summary(_skewed(args, path))))
        return
    for spec in impairments:
        lab.impair(spec.site, spec.delay_ms, spec.loss, args.seed)
    try:
        truth = lab.traffic(_plan(args))
    finally:
        lab.clear_impairments()
    print(traffic_summary(truth))


def _run(args: argparse.Namespace) -> int | None:
    from hopscope.lab.lab import Lab, record
    from hopscope.lab.summary import manifest_summary

    if args.live:
        return _run_live(args)
    if args.kafka or args.store:
        raise ConfigError("--kafka and --store go with --live")
    impairments = parse_impairments(args.delay, args.loss)
    with Lab(overlay=args.overlay, sidecar=args.server_sidecar, client_sidecar=args.client_sidecar,
             ipv6=args.ipv6, mtls=args.mtls) as lab:
        path = record(lab, args.out, impairments, _plan(args), args.seed, not args.no_overhead)
    print("\n".join(manifest_summary(_skewed(args, path))))
    return None


def _run_live(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hopscope.lab.lab import Lab
    from hopscope.lab.live import LiveOptions, LiveRun, score_lines

    if args.clock_skew:
        raise ConfigError("--clock-skew shifts recorded captures: it does not go with --live")
    impairments = parse_impairments(args.delay, args.loss)
    lab = Lab(overlay=args.overlay, sidecar=args.server_sidecar, client_sidecar=args.client_sidecar,
              ipv6=args.ipv6, mtls=args.mtls)
    live = LiveRun(lab, args.out, LiveOptions(kafka=args.kafka, store=args.store))
    # Each request's path names it: identical id-less requests are the one case no record can settle.
    result = live.run(impairments, replace(_plan(args), tag_requests=True), args.seed, not args.no_overhead)
    print(score_lines(result), end="")
    return 0 if result.passed else 1


def _skewed(args: argparse.Namespace, manifest: Path) -> Path:
    """The run's manifest after shifting the captures of every ``--clock-skew`` host in place."""
    from hopscope.lab import skew

    skews = skew.parse_skews(args.clock_skew)
    if not skews:
        return manifest
    path: Path = skew.apply(manifest.parent, skews, manifest.parent)
    print("clock skew applied: " + ", ".join(f"{h} {ns / 1000:+.1f} us" for h, ns in skews.items()))
    return path


def _samples(args: argparse.Namespace) -> None:
    from hopscope.lab.samples import record_samples
    from hopscope.lab.summary import manifest_summary
    from hopscope.paths import lab_samples

    out: Path = args.out or lab_samples()
    print("\n".join(manifest_summary(record_samples(out, sidecar=args.server_sidecar,
                                                                client_sidecar=args.client_sidecar))))
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"{out}: {total / 1e6:.2f} MB")


def _down(args: argparse.Namespace) -> None:
    from hopscope.lab.lab import down_all, down_prefix

    removed = down_prefix(args.prefix) if args.prefix else down_all()
    print(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else ""))


def _status(args: argparse.Namespace) -> None:
    from hopscope.lab.summary import running_labs

    print("\n".join(running_labs()))


def _check(args: argparse.Namespace) -> None:
    from hopscope.lab.lab import check_prerequisites

    check_prerequisites(args.server_sidecar, args.client_sidecar, args.mtls)
    print(f"lab prerequisites (server sidecar {args.server_sidecar}, client sidecar {args.client_sidecar}): "
          "all present")


#: action -> what it does (None or the exit status)
ACTIONS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "up": _up, "traffic": _traffic, "down": _down, "run": _run, "samples": _samples, "status": _status,
    "check": _check,
}  # fmt: skip
