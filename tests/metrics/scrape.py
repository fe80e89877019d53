"""Scraping a ``--metrics-port`` endpoint as Prometheus does: HTTP on loopback, the text format parsed
by prometheus_client's own parser."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """(sample name, sorted labels) -> value of every sample at http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scrape_until(port: int, done: Callable[[Samples], bool], alive: Callable[[], bool],
                 timeout_s: float = 60) -> Samples:  # fmt: skip
    """Scrape until ``done`` holds (the endpoint may still be starting); fails after ``timeout_s`` or
    when the process behind it ended."""
    deadline = time.monotonic() + timeout_s
    last: Samples = {}
    while time.monotonic() < deadline:
        assert alive(), "the process serving the metrics ended"
        try:
            last = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
            continue
        if done(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out; last scrape: {sorted((n, ls, v) for (n, ls), v in last.items())[:80]}")
