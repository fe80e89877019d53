"""Kafka transport (kafka-python): batches of records per message, keyed by correlation key.

kafka-python moves some tens of thousands of messages per second, so a message carries a whole
batch (``hopscope.codec``). The publisher splits a probe's batch by the partition of each record's
correlation key, so all observations of one connection reach one partition; the message key is the
correlation key of the message's first record, its partition is set explicitly.

The consumer belongs to a consumer group, never auto-commits, and commits a partition's offset only
when ``commit`` is called with the deliveries the caller has stored. A message that fails to decode
is counted, logged with topic, partition and offset, and copied to ``<prefix>.deadletter`` with the
error in its headers; its offset is committed once every good message before it is committed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from hopscope.codec import decode_batch, encode_batch
from hopscope.errors import ConfigError, DecodeError, UnavailableError
from hopscope.records import Batch
from hopscope.transport.base import (
    DEFAULT_TOPIC_PREFIX,
    TABLES,
    Delivery,
    TransportStats,
    correlation_keys,
    split_by_partition,
    topic_of,
)

log = logging.getLogger(__name__)

#: Largest message the publisher sends; the broker's message.max.bytes must be at least this.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def _unavailable(bootstrap: str, exc: Exception) -> UnavailableError:
    return UnavailableError(f"Kafka broker at {bootstrap} is unreachable ({type(exc).__name__}: {exc})")


def check_reachable(bootstrap: str, timeout_s: float = 3.0) -> None:
    """Fail fast, with the address, when no bootstrap server accepts a TCP connection
    (kafka-python itself would retry for 30 s and then say little); ``ConfigError`` when one of them
    is not ``HOST:PORT``."""
    servers = [server.strip().rpartition(":") for server in bootstrap.split(",")]
    for _host, _, port in servers:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"Kafka bootstrap {bootstrap!r} is not HOST:PORT[,HOST:PORT...] (port 1-65535)")
    errors = []
    for host, _, port in servers:
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
            return
        except (OSError, ValueError) as exc:
            errors.append(exc)
    raise _unavailable(bootstrap, errors[-1])


def ensure_topics(
    bootstrap: str,
    partitions: int = 4,
    prefix: str = DEFAULT_TOPIC_PREFIX,
    tables: Iterable[str] = (*TABLES, "deadletter"),
) -> None:
    """Create the topics of ``tables`` (default: one per record table, and the dead-letter topic)
    if they do not exist (one replica: a single-node broker)."""
    names = [topic_of(t, prefix) for t in tables]
    check_reachable(bootstrap)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    except (KafkaError, OSError) as exc:
        raise _unavailable(bootstrap, exc) from exc
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another process
                admin.create_topics(missing)
    finally:
        admin.close()


class KafkaPublisher:
    """Publishes batches to the topic of their record type.

    ``flush`` waits for every message sent and raises ``UnavailableError`` when the broker did not
    acknowledge one of them: kafka-python's own flush only waits, and a send whose retries ran out
    completes with an error nobody reads. Failed messages are counted in ``stats.messages_failed``.
    """

    def __init__(
        self, bootstrap: str, *, compress: bool = False, linger_ms: int = 5, prefix: str = DEFAULT_TOPIC_PREFIX
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.compress = compress
        self.stats = TransportStats()
        check_reachable(bootstrap)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                linger_ms=linger_ms,
                max_request_size=MAX_MESSAGE_BYTES,
                request_timeout_ms=30_000,
            )
        except (KafkaError, OSError) as exc:
            raise _unavailable(bootstrap, exc) from exc
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()  # delivery callbacks run on the producer's I/O thread
        self._failed_since_flush = 0
        self._first_failure: BaseException | None = None

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            parts = self._producer.partitions_for(topic)
            if not parts:
                raise UnavailableError(f"Kafka topic {topic} does not exist at {self.bootstrap}")
            count = self._partitions[topic] = len(parts)
        return count

    def publish(self, batch: Batch) -> None:
        if not len(batch):
            return
        topic = topic_of(batch.record_type.TABLE, self.prefix)
        for partition, part in split_by_partition(batch, self._partition_count(topic)):
            key = b"%d" % int(correlation_keys(part.slice(0, 1))[0])
            value = encode_batch(part, compress=self.compress)
            future = self._producer.send(topic, value=value, key=key, partition=partition)
            future.add_errback(self._delivery_failed)
            self.stats.messages_out += 1
            self.stats.records_out += len(part)
            self.stats.bytes_out += len(value)

    def publish_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (tests and tools that need a malformed message)."""
        self._producer.send(topic, value=value, key=key)

    def _delivery_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failed_since_flush += 1
            self.stats.messages_failed += 1
            self._first_failure = self._first_failure or exc

    def flush(self) -> None:
        """Wait for every message sent; raise ``UnavailableError`` unless the broker acknowledged all
        of those sent since the previous flush."""
        waited: KafkaError | None = None
        deadline = time.monotonic() + 60
        while True:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
            except KafkaTimeoutError as exc:
                waited = exc
                break
            except KafkaError as exc:  # refused messages, if any, say more than this
                # kafka-python splits a batch the broker refused as too large and wakes the flush on the
                # old batch without completing it ("Future not done"): wait again for the new batches.
                waited = exc
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            else:
                waited = None
                break
        with self._lock:
            failed, first = self._failed_since_flush, self._first_failure
            self._failed_since_flush, self._first_failure = 0, None
        if failed:
            raise UnavailableError(
                f"Kafka broker at {self.bootstrap} did not acknowledge {failed} messages "
                f"({type(first).__name__}: {first})"
            ) from waited
        if waited is not None:
            raise _unavailable(self.bootstrap, waited) from waited

    def close(self) -> None:
        self._producer.close(timeout=10)


class KafkaRecordConsumer:
    """Consumes record batches as a member of ``group``; commits only what ``commit`` is given.

    ``session_timeout_ms`` bounds how long the partitions of a member that died (kill -9) stay
    unread before the group hands them to another member.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        tables: Iterable[str] = ("flows", "requests"),
        prefix: str = DEFAULT_TOPIC_PREFIX,
        *,
        session_timeout_ms: int = 10_000,
        metadata_wait_s: float = 15.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.prefix = prefix
        self.tables = list(tables)
        self.dead_letter_topic = topic_of("deadletter", prefix)
        self.stats = TransportStats()
        #: per partition: dead-lettered offsets not yet committed, each with the offset of the last
        #: good message delivered before it (-1: none since this consumer started)
        self._pending_bad: dict[TopicPartition, list[tuple[int, int]]] = {}
        self._last_good: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        check_reachable(bootstrap)
        try:
            self._consumer = KafkaConsumer(
                *[topic_of(t, prefix) for t in self.tables],
                bootstrap_servers=bootstrap,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=max(100, session_timeout_ms // 3),
            )
        except (KafkaError, OSError) as exc:
            raise _unavailable(bootstrap, exc) from exc
        self._dead_letter: KafkaProducer | None = None
        self._wait_for_metadata(metadata_wait_s)

    def _wait_for_metadata(self, wait_s: float) -> None:
        """A group leader without its topics' metadata assigns nothing until the next metadata
        refresh (minutes later): fetch it before the first poll joins the group."""
        deadline = time.monotonic() + wait_s
        for topic in (topic_of(t, self.prefix) for t in self.tables):
            while not self._consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
                time.sleep(0.1)

    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this member holds now (they change on a rebalance)."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def partition_count(self, table: str) -> int:
        """Partitions of a table's topic; ``UnavailableError`` when the topic has none."""
        topic = topic_of(table, self.prefix)
        parts = self._consumer.partitions_for_topic(topic)
        if not parts:
            raise UnavailableError(f"Kafka topic {topic} has no partitions at {self.bootstrap}")
        return len(parts)

    def lagging(self) -> set[tuple[str, int]]:
        """Assigned partitions whose position is behind their high watermark (records to come);
        a partition whose position is unknown counts as lagging."""
        out: set[tuple[str, int]] = set()
        for tp in self._consumer.assignment():
            try:
                position, highwater = self._consumer.position(tp, timeout_ms=100), self._consumer.highwater(tp)
            except KafkaError:
                position, highwater = None, None
            if position is None or highwater is None or position < highwater:
                out.add((tp.topic, tp.partition))
        return out

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages each assigned partition is behind its high watermark, as the fetcher last saw them
        (partitions whose position or high watermark is not known yet are left out).

        No network round trip: it reads kafka-python's subscription state, which guards itself with a
        lock, so another thread (a metrics scrape) may call it while this consumer polls."""
        from kafka.errors import IllegalStateError

        out: dict[tuple[str, int], int] = {}
        state = self._consumer._subscription
        for tp in self._consumer.assignment():
            try:
                position, highwater = state.position(tp), self._consumer.highwater(tp)
            except (IllegalStateError, KeyError):  # revoked by a rebalance meanwhile
                continue
            offset = getattr(position, "offset", position)  # kafka-python 3: OffsetAndMetadata; 2: int
            if offset is not None and highwater is not None:
                out[(tp.topic, tp.partition)] = max(0, int(highwater) - int(offset))
        return out

    def poll(self, timeout_s: float = 1.0, max_records: int = 100_000) -> list[Delivery]:
        polled: dict[Any, list[Any]] = self._consumer.poll(
            timeout_ms=int(timeout_s * 1000), max_records=max(1, max_records // 500)
        )
        out: list[Delivery] = []
        for tp, messages in polled.items():
            for msg in messages:
                self.stats.messages_in += 1
                self.stats.bytes_in += len(msg.value or b"")
                try:
                    batch = decode_batch(msg.value or b"")
                except DecodeError as exc:
                    self._reject(tp, msg, str(exc))
                    continue
                self.stats.records_in += len(batch)
                self._last_good[tp] = msg.offset
                out.append(Delivery(batch, tp.topic, tp.partition, msg.offset))
        return out

    def _reject(self, tp: TopicPartition, msg: Any, reason: str) -> None:
        self.stats.count_bad(reason.split(":")[0])
        log.warning("skipping bad message %s[%d]@%d: %s", tp.topic, tp.partition, msg.offset, reason)
        if self._dead_letter is None:
            self._dead_letter = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        headers = [
            ("hopscope.error", reason.encode()),
            ("hopscope.source", f"{tp.topic}/{tp.partition}/{msg.offset}".encode()),
        ]
        self._dead_letter.send(self.dead_letter_topic, value=msg.value, key=msg.key, headers=headers)
        self._dead_letter.flush(timeout=30)
        self.stats.dead_lettered += 1
        self._pending_bad.setdefault(tp, []).append((msg.offset, self._last_good.get(tp, -1)))

    def commit(self, deliveries: list[Delivery]) -> None:
        """Commit, per partition, past the last delivery given, and past a dead-lettered message
        once every good message delivered before it is committed (a caller that buffers records
        commits only up to its oldest buffered delivery: a dead letter after it must wait)."""
        upto: dict[TopicPartition, int] = {}
        for d in deliveries:
            tp = TopicPartition(d.topic, d.partition)
            upto[tp] = max(upto.get(tp, -1), d.offset)
        for tp, bad in list(self._pending_bad.items()):
            mark = max(upto.get(tp, -1), self._committed.get(tp, -1))
            while bad and bad[0][1] <= mark:  # the last good message before it is committed
                mark = max(mark, bad.pop(0)[0])
            if mark > upto.get(tp, -1):
                upto[tp] = mark
            if not bad:
                del self._pending_bad[tp]
        upto = {tp: off for tp, off in upto.items() if off > self._committed.get(tp, -1)}
        if not upto:
            return
        offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in upto.items()}
        self._consumer.commit(offsets=offsets)
        self._committed.update(upto)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        if self._dead_letter is not None:
            self._dead_letter.close(timeout=10)
