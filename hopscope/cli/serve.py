"""``hopscope serve``: the REST API and the trace lookup page of a store.

Start-up is checked before anything is announced: the port at parse time, then the listening socket is
bound here and handed to uvicorn, and only then does the ``serving`` line appear. A port in use, an
address this host does not have or a name that does not resolve is one line on stderr and exit
status 2. The store is opened read-only and must exist (``hopscope store init`` creates it): a typo in
a database name is an error, not an empty UI."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket

from hopscope.errors import ConfigError
from hopscope.store import DEFAULT_URL

#: Why a bind failed, in the words of the one line the user sees (others: the OS's own words).
_BIND_ERRORS = {
    errno.EADDRINUSE: "address in use",
    errno.EADDRNOTAVAIL: "address not available on this host",
    errno.EACCES: "permission denied",
}


def port_number(text: str) -> int:
    """A TCP port, 1-65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, not {port}")
    return port


#: Store connections kept beyond the heavy queries' share, so trace lookups never wait behind a scan.
LOOKUP_CONNECTIONS = 4


def positive(text: str) -> float:
    """A number above zero (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_URL, metavar="URL", help=f"store URL (default {DEFAULT_URL})")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8080, help="listen port, 1-65535 (default 8080)")
    parser.add_argument("--inventory", help="YAML inventory or kubectl JSON naming pods/Services/nodes by IP")
    parser.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="a Host name browsers may use to reach the API, besides loopback and the listen address "
        "(repeatable; any other Host header gets 400, against DNS rebinding)",
    )  # fmt: skip
    parser.add_argument("--query-timeout", type=positive, default=30.0, metavar="SECONDS",
                        help="the store ends a query running longer; the API answers 504 (default 30)")
    parser.add_argument("--max-heavy-queries", type=lambda t: int(positive(t)), default=4, metavar="N",
                        help="list and topology queries running at once; more get 429 with Retry-After "
                        f"(default 4; trace lookups have {LOOKUP_CONNECTIONS} store connections of their own)")
    parser.add_argument("--store-connections", type=lambda t: int(positive(t)), metavar="N",
                        help=f"store connections, one per running query (default: max heavy queries + "
                        f"{LOOKUP_CONNECTIONS})")


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


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, or ``ConfigError`` saying why not."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = _BIND_ERRORS.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise ConfigError(f"cannot listen on {where}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://address:port/`` of a listening socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from hopscope.store import open_for_reading
    from hopscope.topology.inventory import load_inventory

    settings = ApiSettings(
        store_url=args.store,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
        max_heavy_queries=args.max_heavy_queries,
    )
    inventory = load_inventory(args.inventory) if args.inventory else None
    store = open_for_reading(  # read-only: serving never creates a database or table
        args.store,
        pool_size=args.store_connections or args.max_heavy_queries + LOOKUP_CONNECTIONS,
        query_timeout_s=args.query_timeout,
    )
    try:
        sock = listen_socket(args.host, args.port)
    except BaseException:
        store.close()
        raise
    app = create_app(store, settings, close_store=True, inventory=inventory)
    print(f"hopscope: serving {store.url} on {url_of(sock)}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with sock:
        server.run(sockets=[sock])
    return 0
