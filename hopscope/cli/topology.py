"""``hopscope topology``: the service map and the capture-point topology of a store's traces."""

from __future__ import annotations

import argparse
import sys

from hopscope.store import DEFAULT_URL

NS_MAX = 2**63 - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hopscope.topology.text import FORMATS

    parser.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--inventory", help="YAML inventory or kubectl get pods,services,nodes -A -o json")
    parser.add_argument("--start-ns", type=int, default=0, help="window start, ns since the epoch")
    parser.add_argument("--end-ns", type=int, default=NS_MAX, help="window end (exclusive), ns")
    parser.add_argument("--limit", type=int, default=10_000, help="most flows read with --flows (traces: all)")
    parser.add_argument("--flows", action="store_true", help="add L4 flows to the service map")
    parser.add_argument("--format", choices=FORMATS, default="text")


def run(args: argparse.Namespace) -> int:
    from hopscope.store import open_for_reading
    from hopscope.topology.inventory import EMPTY, load_inventory
    from hopscope.topology.source import load_point_topology, load_service_map
    from hopscope.topology.text import render

    inventory = load_inventory(args.inventory) if args.inventory else EMPTY
    store = open_for_reading(args.store)
    try:
        services = load_service_map(store, args.start_ns, args.end_ns, args.limit, inventory, args.flows)
        points = load_point_topology(store, args.start_ns, args.end_ns, args.limit)
    finally:
        store.close()
    sys.stdout.write(render(services, points, args.format))
    return 0
