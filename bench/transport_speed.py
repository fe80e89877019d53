"""Records per second through the real Kafka broker with kafka-python: one record per message
versus a batch of records per message (hopscope's codec), both directions.

Run after deploy/kafka/start.sh:  .venv/bin/python bench/transport_speed.py [--records N]
Prints a table; the peer here is kafka-python itself at one record per message, the way a naive
exporter would publish. Ends with one ``bench:`` line per figure, each batched figure beside the same
direction at one record per message (ratio: batched over one per message, higher is better).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _lines import bench_line
from _topics import RunTopics

from hopscope.codec import decode_batch, encode_batch
from hopscope.records import Batch, FlowRecord
from hopscope.transport.kafka import KafkaPublisher, KafkaRecordConsumer, ensure_topics


def make_batch(n: int) -> Batch:
    rng = np.random.default_rng(7)
    cols = {
        "point": ["nodeA-post-nat"] * n,
        "host": ["nodeA"] * n,
        "orig_h": [f"10.244.{i % 250}.{i % 200 + 2}" for i in range(n)],
        "resp_h": ["10.96.0.10"] * n,
        "orig_p": rng.integers(1024, 65535, n),
        "resp_p": np.full(n, 80),
        "flow_id": np.arange(n, dtype=np.uint64),
        "syn_seq": rng.integers(1, 2**32, n),
        "orig_pkts": rng.integers(1, 100, n),
        "conn_state": ["SF"] * n,
        "history": ["ShADadFf"] * n,
        "community_id": ["1:LQU9qZlK+B5F3KDmev6m5PMibrg="] * n,
    }
    return Batch(FlowRecord, cols, n)


def produce(bootstrap: str, prefix: str, batch: Batch, per_message: int) -> float:
    publisher = KafkaPublisher(bootstrap, linger_ms=20, prefix=prefix)
    start = time.perf_counter()
    if per_message == 1:
        # The naive way: one record, one message (still our encoding, so the cost is Kafka's).
        producer = publisher._producer
        for i in range(len(batch)):
            producer.send(f"{prefix}.flows", encode_batch(batch.slice(i, i + 1)), key=b"%d" % i)
    else:
        for lo in range(0, len(batch), per_message):
            publisher.publish(batch.slice(lo, lo + per_message))
    publisher.flush()
    elapsed = time.perf_counter() - start
    publisher.close()
    return elapsed


def consume(bootstrap: str, prefix: str, want: int) -> float:
    """Seconds from the first delivery (the group join is not counted) until ``want`` records."""
    consumer = KafkaRecordConsumer(bootstrap, f"{prefix}-c", tables=["flows"], prefix=prefix)
    got = 0
    start = None
    deadline = time.perf_counter() + 300
    while got < want and time.perf_counter() < deadline:
        n = sum(len(d.batch) for d in consumer.poll(timeout_s=1.0))
        if n and start is None:
            start = time.perf_counter()
        got += n
    elapsed = time.perf_counter() - (start or 0.0)
    consumer.close()
    return elapsed if got >= want else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--unbatched-records", type=int, default=50_000)
    args = parser.parse_args()
    with RunTopics(args.bootstrap) as topics:
        prefix = topics.prefix("bench", ("-c",))  # fresh topics: the consumer reads exactly this run
        ensure_topics(args.bootstrap, prefix=prefix)
        batch = make_batch(args.records)
        t0 = time.perf_counter()
        message = encode_batch(batch.slice(0, 1000))
        for _ in range(50):
            decode_batch(message)
        codec_s = (time.perf_counter() - t0) / 50
        print(f"codec: 1,000 flow records = {len(message):,} bytes; decode {1000 / codec_s:,.0f} records/s")
        lines = [bench_line("transport_codec_decode_rate", 1000 / codec_s, "records/s")]
        print(f"{'mode':<32}{'records':>12}{'produce rec/s':>16}")
        small = batch.slice(0, args.unbatched_records)
        unbatched = topics.prefix("benchu", ("-c",))  # its own topics: consumed below separately
        ensure_topics(args.bootstrap, prefix=unbatched)
        secs = produce(args.bootstrap, unbatched, small, 1)
        single = ("produce_1_per_message", len(small) / secs)
        print(f"{'1 record per message':<32}{len(small):>12,}{single[1]:>16,.0f}")
        for per in (100, 1000, 5000):
            secs = produce(args.bootstrap, prefix, batch, per)
            rate = len(batch) / secs
            print(f"{f'{per} records per message':<32}{len(batch):>12,}{rate:>16,.0f}")
            lines.append(bench_line(f"transport_produce_{per}_per_message_rate", rate, "records/s", single,
                                    rate / single[1]))  # fmt: skip
        print(f"{'mode':<32}{'records':>12}{'consume rec/s':>16}")
        secs = consume(args.bootstrap, unbatched, len(small))
        single = ("consume_1_per_message", len(small) / secs)
        print(f"{'1 record per message':<32}{len(small):>12,}{single[1]:>16,.0f}")
        total = 3 * len(batch)
        secs = consume(args.bootstrap, prefix, total)
        rate = total / secs
        print(f"{'100-5000 records per message':<32}{total:>12,}{rate:>16,.0f}")
        lines.append(bench_line("transport_consume_batched_rate", rate, "records/s", single, rate / single[1]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
