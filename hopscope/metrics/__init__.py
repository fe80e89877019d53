"""Prometheus metrics of the long-running commands (``--metrics-port``) and their naming.

``hopscope probe``, ``agent``, ``correlate`` and ``ingest`` take ``--metrics-port PORT`` (and
``--metrics-host``, default 127.0.0.1: the counters say how much traffic a host carries, so they are not
offered beyond loopback unless asked) and then answer ``GET /metrics`` in Prometheus' text format from
a thread of their own. ``hopscope serve`` has ``/metrics`` on its API port (``hopscope.api.metrics``).

The collectors read the counters the components already keep (the probe's ring and summary, the
agent's health, ``StreamStats``, ``IngestStats``, the transports' ``TransportStats``) when Prometheus
scrapes, so the capture and stitching loops do no extra work for them; only the store wrapper
(``hopscope.metrics.store``) counts as rows go in, and the service map's RED metrics per edge
(``hopscope.metrics.red``) are computed from each batch of traces the correlator writes.

Names follow Prometheus' conventions: ``hopscope_<component>_<what>``, counters end in ``_total``,
durations are ``_seconds``, every value in base units; labels name the capture point, table, topic,
partition or service map edge. docs/METRICS.md lists every metric. Each process keeps its metrics in
a ``CollectorRegistry`` of its own (no module-level registry), so tests and several apps in one process
do not share counters.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import TYPE_CHECKING

from hopscope.errors import ConfigError

if TYPE_CHECKING:  # prometheus_client is imported only by a command that serves metrics
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return port


def _address(text: str) -> str:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``, the same in every command that has them (checked when
    the command line is parsed, before the command connects to anything)."""
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: no metrics endpoint)")
    p.add_argument("--metrics-host", type=_address, default=DEFAULT_METRICS_HOST, metavar="HOST",
                   help=f"address the metrics endpoint listens on (default {DEFAULT_METRICS_HOST})")  # fmt: skip


class MetricsServer:
    """``GET /metrics`` of one registry, served from a daemon thread until ``close``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        from prometheus_client import start_wsgi_server

        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port {port}: not a TCP port")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError as exc:
            raise ConfigError(f"--metrics-host {host!r}: not an IP address") from exc
        try:
            self._server, self._thread = start_wsgi_server(port, host.strip("[]"), registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror})") from exc
        self.host, self.port = host, int(self._server.server_port)
        log.info("metrics at http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(args: argparse.Namespace, registry: CollectorRegistry) -> MetricsServer | None:
    """The metrics endpoint the command's ``--metrics-port`` asks for (None without one)."""
    if args.metrics_port is None:
        return None
    return MetricsServer(registry, args.metrics_host, args.metrics_port)
