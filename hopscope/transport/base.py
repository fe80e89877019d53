"""The transport interface and the correlation key that partitions records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hopscope.ids import GOLDEN, dns_correlation_key, trace_key
from hopscope.records import Batch, FlowRecord, RequestRecord

#: Default topic prefix; a record table's topic is ``f"{prefix}.{table}"``.
DEFAULT_TOPIC_PREFIX = "hopscope"
TABLES = ("flows", "requests", "spans", "traces")
#: Topic (or in-process channel) per record table, with the default prefix.
TOPICS: dict[str, str] = {t: f"{DEFAULT_TOPIC_PREFIX}.{t}" for t in TABLES}
DEAD_LETTER_TOPIC = f"{DEFAULT_TOPIC_PREFIX}.deadletter"


def topic_of(table: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The topic of a record table (``flows`` -> ``hopscope.flows``)."""
    return f"{prefix}.{table}"

_GOLDEN = np.uint64(GOLDEN)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded message: its batch and its position in the transport."""

    batch: Batch
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class TransportStats:
    """Counters a transport exposes (and logs): nothing is lost without being counted here."""

    messages_out: int = 0
    records_out: int = 0
    bytes_out: int = 0
    messages_failed: int = 0  # sent, but the broker never acknowledged them
    messages_in: int = 0
    records_in: int = 0
    bytes_in: int = 0
    bad_messages: int = 0
    dead_lettered: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)

    def count_bad(self, reason: str) -> None:
        self.bad_messages += 1
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + 1


class Publisher(Protocol):
    def publish(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Consumer(Protocol):
    stats: TransportStats

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]: ...

    def commit(self, deliveries: list[Delivery]) -> None: ...

    def close(self) -> None: ...


def correlation_keys(batch: Batch) -> npt.NDArray[np.uint64]:
    """The NAT-invariant key of every record of ``batch`` (DESIGN.md, "Partitioning for scale").

    TCP observations key on the client ISN (``syn_seq``), which routing, bridging and NAT leave
    alone. DNS requests key on their transaction id, name and type (``ids.dns_correlation_key``).
    Records with neither (UDP flows, TCP caught mid-connection) fall back to their own ``flow_id``:
    they cannot be stitched across NAT by key anyway. Spans and traces key on their trace id
    (``ids.trace_key``).
    """
    cols = batch.columns
    n = len(batch)
    if batch.record_type in (FlowRecord, RequestRecord):
        syn: Any = cols["syn_seq"]
        keys = np.asarray(syn, dtype=np.uint64).copy()
        fallback = np.asarray(cols["flow_id"], dtype=np.uint64)
        if batch.record_type is RequestRecord:
            names: Any = cols["dns_qname"]
            if any(names):  # DNS requests among them
                ids: Any = cols["dns_id"]
                qtypes: Any = cols["dns_qtype"]
                rows = zip(ids.tolist(), names, qtypes.tolist(), strict=True)
                dns = np.fromiter(
                    (dns_correlation_key(i, q, t) if q else 0 for i, q, t in rows),
                    dtype=np.uint64,
                    count=n,
                )
                keys = np.where(keys == 0, dns, keys)
        return np.where(keys == 0, fallback, keys)
    trace_ids: Any = cols["trace_id"]
    return np.fromiter((trace_key(t) for t in trace_ids), dtype=np.uint64, count=n)


def partition_of(keys: npt.NDArray[np.uint64], partitions: int) -> npt.NDArray[np.intp]:
    """Map correlation keys to partitions (Fibonacci hashing: spreads consecutive ISNs evenly)."""
    with np.errstate(over="ignore"):
        mixed = (keys * _GOLDEN) >> np.uint64(32)
    return (mixed % np.uint64(max(1, partitions))).astype(np.intp)


def split_by_partition(batch: Batch, partitions: int) -> list[tuple[int, Batch]]:
    """Split ``batch`` into one batch per partition its records' correlation keys map to."""
    if partitions <= 1:
        return [(0, batch)]
    parts = partition_of(correlation_keys(batch), partitions)
    order = np.argsort(parts, kind="stable")
    sorted_parts = parts[order]
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    out: list[tuple[int, Batch]] = []
    for chunk in np.split(order, bounds):
        if len(chunk):
            out.append((int(parts[chunk[0]]), batch.take(chunk)))
    return out
