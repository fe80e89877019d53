"""``hopscope serve``: the REST API and the trace lookup page of a store."""

from __future__ import annotations

import argparse

from hopscope.store import DEFAULT_URL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument("--inventory", help="YAML inventory or kubectl JSON naming pods/Services/nodes by IP")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from hopscope.store import store_from_url
    from hopscope.topology.inventory import load_inventory

    inventory = load_inventory(args.inventory) if args.inventory else None
    store = store_from_url(args.store)
    store.ensure_schema()
    app = create_app(store, ApiSettings(store_url=args.store), close_store=True, inventory=inventory)
    print(f"hopscope: serving {args.store} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
