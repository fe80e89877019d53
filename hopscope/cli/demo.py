"""``hopscope demo``: the main job on the embedded default.

Analyse the shipped lab captures (11 capture points from client pod through NAT, hypervisor, switch
mirror and envoy to the app), stitch every request end to end, store flows, requests, spans and
traces in an embedded chDB store, and print the summary and the slowest request hop by hop.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from hopscope.errors import ConfigError

#: Stored traces the demo looks through for the slowest request.
SLOWEST_OF = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--manifest", type=Path, help="a lab manifest.json (default: the shipped lab samples)")
    parser.add_argument("--store-dir", type=Path, help="chDB directory (default: var/demo/chdb, emptied first)")
    parser.add_argument("--strict", action="store_true",
                        help="a damaged capture (corrupt record, file cut short) is an error (exit 4) instead of a "
                        "warning; either way the records before the damage are kept")


def run(args: argparse.Namespace) -> int:
    from hopscope.correlate.offline import analyze_points, plan_points, store_tables
    from hopscope.correlate.report import render
    from hopscope.paths import lab_samples, var_dir

    manifest: Path = args.manifest or lab_samples() / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"no lab manifest at {manifest}: pass --manifest")
    store_dir: Path = args.store_dir or var_dir() / "demo" / "chdb"
    if args.store_dir is None and store_dir.exists():
        shutil.rmtree(store_dir)  # the demo's own store: start clean so repeated runs show the same
    store_dir.mkdir(parents=True, exist_ok=True)
    url = f"chdb://{store_dir.resolve()}"
    print(f"== hopscope analyze --manifest {manifest} --store {url}\n", flush=True)
    analysis = analyze_points(plan_points(manifest=str(manifest)), manifest=str(manifest), progress="auto",
                              strict=args.strict)  # fmt: skip
    print(render(analysis.result, analysis.evaluation), end="")
    store_tables(url, analysis.tables())
    counts = _print_slowest(url)
    print("\nstored: " + ", ".join(f"{n} {t}" for t, n in counts.items()) + f" in {url}")
    print(f"browse them: .venv/bin/hopscope serve --store {url}   (then open http://127.0.0.1:8080/)")
    return 0


def _print_slowest(url: str) -> dict[str, int]:
    """Print the slowest stored request hop by hop, read back from the store; return the row counts."""
    from hopscope.correlate.report import trace_hops_text
    from hopscope.store import store_from_url

    store: Any = store_from_url(url)
    try:
        traces = store.query_traces(0, 2**63 - 1, {"kind": "l7"}, limit=SLOWEST_OF)
        if traces:
            slowest = max(traces, key=lambda t: t.duration_us)
            _, spans = store.get_trace(slowest.trace_id)
            print(f"\n== the slowest request, hop by hop (trace {slowest.trace_id}, read back from the store)")
            print("\n".join(trace_hops_text(slowest, spans)))
            print(f"its packets, hop by hop: .venv/bin/hopscope pcap {slowest.trace_id} --store {url} -o slow.pcapng")
        else:
            print("\nno request traces were stitched")
        return {t: store.count(t) for t in ("flows", "requests", "spans", "traces", "packet_index")}
    finally:
        store.close()
