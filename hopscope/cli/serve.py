"""``hopscope serve``: the REST API and the trace lookup page of a store."""

from __future__ import annotations

import argparse
import ipaddress

from hopscope.store import DEFAULT_URL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument("--inventory", help="YAML inventory or kubectl JSON naming pods/Services/nodes by IP")
    parser.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="a Host name browsers may use to reach the API, besides loopback and the listen address "
        "(repeatable; any other Host header gets 400, against DNS rebinding)",
    )  # fmt: skip


def allowed_hosts(listen_host: str, extra: list[str]) -> tuple[str, ...]:
    """Loopback names, the listen address unless it is loopback or a wildcard, and the names given."""
    from hopscope.api.security import LOOPBACK_HOSTS

    names = list(LOOPBACK_HOSTS)
    try:
        address = ipaddress.ip_address(listen_host)
        if not (address.is_loopback or address.is_unspecified):
            names.append(str(address))
    except ValueError:
        names.append(listen_host)  # a name to listen on: browsers will use it too
    return tuple(dict.fromkeys([*names, *extra]))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from hopscope.store import store_from_url
    from hopscope.topology.inventory import load_inventory

    settings = ApiSettings(store_url=args.store, allowed_hosts=allowed_hosts(args.host, args.allowed_host))
    inventory = load_inventory(args.inventory) if args.inventory else None
    store = store_from_url(args.store)
    store.ensure_schema()
    app = create_app(store, settings, close_store=True, inventory=inventory)
    print(f"hopscope: serving {args.store} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
