"""``hopscope serve``: the REST API and the trace lookup page of a store.

Start-up is checked before anything is announced: the port at parse time, then the listening socket is
bound here and handed to uvicorn, and only then does the ``serving`` line appear. A port in use, an
address this host does not have or a name that does not resolve is one line on stderr and exit
status 2. The store is opened read-only and must exist (``hopscope store init`` creates it): a typo in
a database name is an error, not an empty UI.

Exposure is checked before any of that. With ``--token-file`` the API needs a bearer token of the file
(``hopscope token add`` makes them; ``hopscope.api.auth``), and ``--tenant-store TENANT=URL`` gives each
tenant its own store, so a tenant's token reads only its rows. Without a token file the API is open, so
serving on an address other than loopback is refused unless ``--insecure`` accepts that. ``--tls-cert``
and ``--tls-key`` serve HTTPS; the pair is loaded once here, so a bad file is one line, not a traceback."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hopscope.errors import ConfigError
from hopscope.store import DEFAULT_URL

if TYPE_CHECKING:
    from hopscope.api.tokens import TokenVerifier
    from hopscope.store import SqlStore

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
    parser.add_argument("--token-file", metavar="FILE",
                        help="API tokens (hopscope token add): /api needs a bearer token of this file")
    parser.add_argument("--tenant-store", action="append", default=[], type=tenant_store, metavar="TENANT=URL",
                        help="the store of a tenant the tokens name (repeatable); tokens without a tenant "
                        "read --store")
    parser.add_argument("--insecure", action="store_true",
                        help="serve an address other than loopback without a token file: anyone reaching it reads "
                        "every trace")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--packet-store", action="append", default=[], metavar="DIR",
                        help="a rolling packet store directory of live probes or agents whose packets the pcap "
                        "routes serve, besides those the store's packet index names (repeatable)")
    parser.add_argument("--max-packets", type=lambda t: int(positive(t)), default=200_000, metavar="N",
                        help="most packets one pcap or packets answer reads; a trace beyond is 413 (default 200000)")
    parser.add_argument("--store-connections", type=lambda t: int(positive(t)), metavar="N",
                        help=f"store connections, one per running query (default: max heavy queries + "
                        f"{LOOKUP_CONNECTIONS})")


def tenant_store(text: str) -> tuple[str, str]:
    """``TENANT=URL`` (argparse type)."""
    tenant, equals, url = text.partition("=")
    if not (equals and tenant and url):
        raise argparse.ArgumentTypeError(f"expected TENANT=URL, not {text!r}")
    from hopscope.api.tokens import NAME

    if not NAME.fullmatch(tenant):
        raise argparse.ArgumentTypeError(f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return tenant, url


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``: a listener only this host can reach."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def check_exposure(args: argparse.Namespace) -> None:
    """Refuse an open API (no token file) on an address other hosts can reach, unless ``--insecure``."""
    if args.token_file or args.insecure or is_loopback(args.host):
        return
    raise ConfigError(
        f"refusing to serve {args.host} without --token-file: anyone who reaches it could read every trace "
        "(give --token-file, listen on 127.0.0.1, or accept that with --insecure)"
    )


def tls_files(args: argparse.Namespace) -> tuple[str, str] | None:
    """The certificate and key files, checked by loading them; None without TLS."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {exc}") from None
    return args.tls_cert, args.tls_key


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


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    """``http://address:port/`` of a listening socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


@dataclass(frozen=True, slots=True)
class Access:
    """Who may read what: the tokens (None: an open API) and each tenant's store URL."""

    tokens: TokenVerifier | None
    tenant_urls: dict[str, str]


def load_access(args: argparse.Namespace) -> Access:
    from hopscope.api.tokens import TokenVerifier, load_tokens

    tenant_urls = dict(args.tenant_store)
    if len(tenant_urls) != len(args.tenant_store):
        raise ConfigError("--tenant-store names a tenant twice")
    tokens = TokenVerifier(load_tokens(args.token_file)) if args.token_file else None
    if tokens is None and tenant_urls:
        raise ConfigError("--tenant-store needs --token-file: the token says which tenant a request is")
    missing = sorted(tokens.tenants - set(tenant_urls)) if tokens else []
    if missing:
        raise ConfigError(f"{args.token_file} names tenants without a store: {', '.join(missing)} "
                          "(give --tenant-store TENANT=URL)")  # fmt: skip
    return Access(tokens, tenant_urls)


def open_stores(args: argparse.Namespace, access: Access) -> tuple[SqlStore, dict[str, SqlStore]]:
    """The server's store and each tenant's, read-only; all closed again if one fails to open."""
    from hopscope.store import open_for_reading

    opened: list[SqlStore] = []
    try:
        for url in (args.store, *access.tenant_urls.values()):
            opened.append(open_for_reading(  # read-only: serving never creates a database or table
                url,
                pool_size=args.store_connections or args.max_heavy_queries + LOOKUP_CONNECTIONS,
                query_timeout_s=args.query_timeout,
            ))  # fmt: skip
    except BaseException:
        for store in opened:
            store.close()
        raise
    return opened[0], dict(zip(access.tenant_urls, opened[1:], strict=True))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from hopscope.api.app import create_app
    from hopscope.api.config import ApiSettings
    from hopscope.topology.inventory import load_inventory

    check_exposure(args)
    access = load_access(args)
    tls = tls_files(args)
    settings = ApiSettings(
        store_url=args.store,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
        max_heavy_queries=args.max_heavy_queries,
        packet_stores=tuple(args.packet_store),
        max_packets=args.max_packets,
    )
    inventory = load_inventory(args.inventory) if args.inventory else None
    store, tenant_stores = open_stores(args, access)
    try:
        sock = listen_socket(args.host, args.port)
    except BaseException:
        for each in (store, *tenant_stores.values()):
            each.close()
        raise
    app = create_app(
        store, settings, close_store=True, inventory=inventory, tokens=access.tokens, tenant_stores=tenant_stores
    )
    print(f"hopscope: serving {store.url} on {url_of(sock, 'https' if tls else 'http')}", flush=True)
    certfile, keyfile = tls or (None, None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ssl_certfile=certfile, ssl_keyfile=keyfile))
    with sock:
        server.run(sockets=[sock])
    return 0
