"""Correlation keys (the Kafka message keys and partitions of records) come from hopscope.ids."""

from __future__ import annotations

import numpy as np

from hopscope import ids
from hopscope.records import Batch, RequestRecord, Span
from hopscope.transport.base import correlation_keys


def _dns(point: str, qname: str, syn_seq: int = 0) -> RequestRecord:
    return RequestRecord(point=point, l7_proto="dns", flow_id=7, syn_seq=syn_seq, dns_id=4660, dns_qname=qname,
                         dns_qtype=1)  # fmt: skip


def test_one_dns_exchange_has_one_key_at_every_hop() -> None:
    hops = [_dns("pod", "Example.COM."), _dns("node", "example.com"), _dns("tap", "example.com.")]
    keys = correlation_keys(Batch.from_records(RequestRecord, hops)).tolist()
    assert keys == [ids.dns_correlation_key(4660, "example.com", 1)] * 3


def test_tcp_requests_key_on_the_isn_and_the_rest_on_their_flow() -> None:
    records = [_dns("pod", "example.com", syn_seq=99), RequestRecord(point="pod", l7_proto="http", flow_id=7)]
    assert correlation_keys(Batch.from_records(RequestRecord, records)).tolist() == [99, 7]


def test_spans_key_on_their_trace_id() -> None:
    trace = "c5d747ae53fd5ebec985f9019d61114c"
    spans = Batch.from_records(Span, [Span(trace_id=trace, span_id="ab16bebca3bf9b1d")])
    assert correlation_keys(spans).tolist() == [0xC5D747AE53FD5EBE]
    assert correlation_keys(spans).dtype == np.uint64
