"""The Kafka transport against the real broker started by deploy/kafka/start.sh."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from hopscope.errors import ConfigError, UnavailableError
from hopscope.records import Batch, FlowRecord
from hopscope.transport.base import correlation_keys, partition_of, split_by_partition
from hopscope.transport.kafka import KafkaPublisher, KafkaRecordConsumer, ensure_topics
from tests.conftest import topic_prefix

pytestmark = pytest.mark.kafka


def _flows(n: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    isns = rng.integers(1, 2**32, n)
    return Batch.from_records(
        FlowRecord,
        [FlowRecord(point=f"p{i % 3}", flow_id=int(i), syn_seq=int(s), orig_h="10.0.0.1") for i, s in enumerate(isns)],
    )


@pytest.fixture
def prefix(kafka_bootstrap: str) -> str:
    """Topics of this test alone, so nothing earlier on the broker is read again."""
    name = topic_prefix("t")
    ensure_topics(kafka_bootstrap, prefix=name)
    return name


def _drain(consumer: KafkaRecordConsumer, want: int, deadline_s: float = 30.0) -> list:
    got: list = []
    end = time.monotonic() + deadline_s
    while sum(len(d.batch) for d in got) < want and time.monotonic() < end:
        got += consumer.poll(timeout_s=0.5)
    return got


def test_split_keeps_a_connection_on_one_partition() -> None:
    batch = _flows(1000, seed=1)
    # The same ISN observed at three points (NAT changed everything else) lands on one partition.
    observations = [FlowRecord(point=p, syn_seq=1234567, flow_id=i) for i, p in enumerate("abc")]
    same = Batch.from_records(FlowRecord, observations)
    assert len(set(partition_of(correlation_keys(same), 4).tolist())) == 1
    parts = split_by_partition(batch, 4)
    assert sorted(p for p, _ in parts) == [0, 1, 2, 3]
    assert sum(len(b) for _, b in parts) == 1000
    for p, b in parts:
        assert set(partition_of(correlation_keys(b), 4).tolist()) == {p}


def test_publish_consume_commit_resume(kafka_bootstrap: str, prefix: str) -> None:
    group = f"test-{uuid.uuid4().hex[:8]}"
    consumer = KafkaRecordConsumer(kafka_bootstrap, group, tables=["flows"], prefix=prefix)
    publisher = KafkaPublisher(kafka_bootstrap, prefix=prefix)
    sent = _flows(2000, seed=2)
    publisher.publish(sent)
    publisher.flush()
    assert publisher.stats.messages_out == 4  # one message per partition, not one per record
    got = _drain(consumer, want=2000)
    ids = sorted(i for d in got for i in d.batch.columns["flow_id"].tolist())
    assert ids == list(range(2000))
    # Commit only half the deliveries; a new consumer of the group gets the rest again.
    by_partition: dict[int, list] = {}
    for d in got:
        by_partition.setdefault(d.partition, []).append(d)
    committed = [ds[0] for ds in by_partition.values()]
    consumer.commit(committed)
    consumer.close()
    again = KafkaRecordConsumer(kafka_bootstrap, group, tables=["flows"], prefix=prefix)
    redelivered = _drain(again, want=2000 - sum(len(d.batch) for d in committed))
    assert {(d.partition, d.offset) for d in redelivered} == {
        (d.partition, d.offset) for d in got if d not in committed
    }
    again.commit(redelivered)
    again.close()
    publisher.close()


def test_bad_message_is_dead_lettered_not_fatal(kafka_bootstrap: str, prefix: str) -> None:
    group = f"test-{uuid.uuid4().hex[:8]}"
    consumer = KafkaRecordConsumer(kafka_bootstrap, group, tables=["flows"], prefix=prefix)
    dead = KafkaRecordConsumer(kafka_bootstrap, f"{group}-dl", tables=["deadletter"], prefix=prefix)
    publisher = KafkaPublisher(kafka_bootstrap, prefix=prefix)
    marker = uuid.uuid4().hex.encode()
    publisher.publish_raw(f"{prefix}.flows", b"garbage-" + marker, key=b"1")
    publisher.publish(_flows(10, seed=3))
    publisher.flush()
    got = _drain(consumer, want=10)
    assert sum(len(d.batch) for d in got) == 10
    assert consumer.stats.bad_messages == 1 and consumer.stats.dead_lettered == 1
    consumer.commit(got)
    seen = False
    end = time.monotonic() + 20
    while not seen and time.monotonic() < end:
        for msgs in dead._consumer.poll(timeout_ms=500).values():
            for m in msgs:
                headers = dict(m.headers)
                if m.value.endswith(marker):
                    assert b"not a hopscope record batch" in headers["hopscope.error"]
                    seen = True
    assert seen, "the bad message did not reach the dead-letter topic"
    for c in (consumer, dead):
        c.close()
    publisher.close()


def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(UnavailableError, match=r"Kafka broker at 127\.0\.0\.1:1 is unreachable"):
        KafkaPublisher("127.0.0.1:1")


@pytest.mark.parametrize("bootstrap", ["kafkahost", "127.0.0.1:port", "127.0.0.1:99999", "127.0.0.1:9092,kafkahost"])
def test_a_bootstrap_that_is_not_host_port_is_a_config_error(bootstrap: str) -> None:
    """Said before any connection, even when another server of the list would answer (kafka-python
    would otherwise retry the bad one's DNS lookup for ever)."""
    with pytest.raises(ConfigError, match=r"is not HOST:PORT\[,HOST:PORT\.\.\.\]"):
        KafkaPublisher(bootstrap)


@pytest.mark.parametrize(
    ("layout", "commit_upto", "redelivered"),
    [
        # good 0, bad 1, good 2: committing 0 also commits past the dead letter right after it.
        ("GBG", 0, [2]),
        # good 0, good 1, bad 2, good 3: committing 0 must not skip 1, nor the dead letter after it.
        ("GGBG", 0, [1, 3]),
        # committing 1 covers the dead letter at 2 as well.
        ("GGBG", 1, [3]),
    ],
)
def test_dead_letters_are_committed_only_behind_committed_records(
    kafka_bootstrap: str, layout: str, commit_upto: int, redelivered: list[int]
) -> None:
    """A caller that buffers commits only up to its oldest buffered record: a dead-lettered
    message later in the partition must not be committed past records still buffered."""
    prefix = topic_prefix("t")
    ensure_topics(kafka_bootstrap, partitions=1, prefix=prefix)
    publisher = KafkaPublisher(kafka_bootstrap, prefix=prefix)
    for kind in layout:  # one message each, in this order, on the one partition
        if kind == "G":
            publisher.publish(_flows(1, seed=len(kind)))
        else:
            publisher.publish_raw(f"{prefix}.flows", b"garbage", key=b"1")
        publisher.flush()
    publisher.close()
    group = f"test-{uuid.uuid4().hex[:8]}"
    consumer = KafkaRecordConsumer(kafka_bootstrap, group, tables=["flows"], prefix=prefix)
    got = _drain(consumer, want=layout.count("G"))
    assert [d.offset for d in got] == [i for i, k in enumerate(layout) if k == "G"]
    consumer.commit([d for d in got if d.offset == commit_upto])
    consumer.close()
    again = KafkaRecordConsumer(kafka_bootstrap, group, tables=["flows"], prefix=prefix)
    # One partition, read in offset order: a message wrongly delivered again would come before the
    # ones expected. Wait for as many as expected (joining the group takes a while on a busy machine),
    # then poll once more for any beyond them.
    got = _drain(again, want=len(redelivered))
    got += again.poll(timeout_s=1.0)
    assert [d.offset for d in got] == redelivered
    again.close()


def test_flush_fails_when_the_broker_refuses_messages(kafka_bootstrap: str) -> None:
    """A topic that takes only small messages: the broker refuses every batch. kafka-python's own flush
    returns as if all were delivered; the publisher's flush says how many were not, and counts them."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = topic_prefix("refused")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(f"{name}.flows", 4, 1, topic_configs={"max.message.bytes": "200"})])
    finally:
        admin.close()
    publisher = KafkaPublisher(kafka_bootstrap, prefix=name)
    try:
        publisher.publish(_flows(400, seed=7))
        sent = publisher.stats.messages_out
        with pytest.raises(UnavailableError, match=rf"did not acknowledge {sent} messages"):
            publisher.flush()
        assert publisher.stats.messages_failed == sent
        publisher.flush()  # nothing sent since: the failures were reported once
    finally:
        publisher.close()
