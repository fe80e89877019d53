"""The Kafka topics and consumer groups a benchmark run makes, deleted when the run ends.

A broker that keeps every run's topics recovers each of their partitions at its next start: a few
thousand left behind by benchmarks and tests make ``deploy/kafka/start.sh`` wait for minutes.
"""

from __future__ import annotations

import uuid
from types import TracebackType

from hopscope.lab.live import delete_topics


class RunTopics:
    """Hands out fresh topic prefixes and deletes their topics (and groups) on leaving the block."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._made: list[tuple[str, list[str]]] = []

    def prefix(self, stem: str, groups: tuple[str, ...] = ()) -> str:
        """A new prefix ``stem`` + 8 hex digits; ``groups`` are suffixes of consumer groups named after
        it (``("-s1", "-s2")`` for a correlator run with ``--group PREFIX``)."""
        name = f"{stem}{uuid.uuid4().hex[:8]}"
        self._made.append((name, [name + g for g in groups]))
        return name

    def __enter__(self) -> RunTopics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        for prefix, groups in self._made:
            print(delete_topics(self.bootstrap, prefix, groups))
