"""One matcher per correlation key: group observations of one request (or connection) into segments.

A *segment* is one request on one TCP connection (or one DNS exchange, or one L4 connection) as seen
at every capture point it crossed. Observations are grouped by a NAT-invariant bucket key, never by
addresses:

=================  ===========================  =============================================
matcher            bucket key                   anchors that must agree when both are known
=================  ===========================  =============================================
l7:req_tcp_seq     TCP seq of the request's      syn_seq, synack_seq, resp_tcp_seq,
                   first byte                   request payload hash
l7:dns_id          DNS id, name, type           request payload hash
nat:syn_seq        client ISN (L4 connection)   synack_seq, IP id of the SYN, payload hash
=================  ===========================  =============================================

Within a bucket, observations further apart in time than the matcher's window, seen twice at the
same hop, or whose anchors disagree belong to different segments: a sequence-number collision
between unrelated connections does not merge them. Buckets where everything agrees (nearly all) are
resolved with vectorised numpy; only the rest goes through the per-observation loop.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from hopscope.correlate.observations import ObsTable, index_domains, index_labels
from hopscope.correlate.relations import Reason
from hopscope.ids import dns_key
from hopscope.records import Batch, FlowRecord, RequestRecord

#: Tag in the top bits of a bucket key: which matcher made it.
TAG_SHIFT = 60
TAG_TCP = 1
TAG_DNS = 2
TAG_FLOW = 3
TAG_REASON: dict[int, Reason] = {
    TAG_TCP: Reason.L7_REQ_TCP_SEQ,
    TAG_DNS: Reason.L7_DNS_ID,
    TAG_FLOW: Reason.NAT_SYN_SEQ,
}
_LOW_MASK = (1 << TAG_SHIFT) - 1
_NONE = np.uint64(np.iinfo(np.uint64).max)


def _u64(data: object) -> npt.NDArray[np.uint64]:
    return np.asarray(data).astype(np.uint64)


def _i64(data: object) -> npt.NDArray[np.int64]:
    return np.asarray(data).astype(np.int64)


def request_keys(batch: Batch) -> npt.NDArray[np.uint64]:
    """Bucket keys of request records: TCP requests by req_tcp_seq, DNS by id, name and type."""
    cols = batch.columns
    seq = _u64(cols["req_tcp_seq"])
    keys = np.where(seq != 0, (np.uint64(TAG_TCP) << np.uint64(TAG_SHIFT)) | seq, np.uint64(0))
    protos = cols["l7_proto"]
    assert isinstance(protos, list)
    dns_rows = [i for i, p in enumerate(protos) if p == "dns"]
    if dns_rows:
        ids = cols["dns_id"].tolist()  # type: ignore[union-attr]
        qtypes = cols["dns_qtype"].tolist()  # type: ignore[union-attr]
        names = cols["dns_qname"]
        for i in dns_rows:
            if seq[i] == 0:
                low = dns_key(ids[i], names[i], qtypes[i]) & _LOW_MASK
                keys[i] = (TAG_DNS << TAG_SHIFT) | (low or 1)
    return keys


def request_table(batch: Batch, kinds: Mapping[str, str], clock_by_host: bool = False,
                  clocks: Mapping[str, str] | None = None) -> ObsTable:
    """Observations of requests: one per RequestRecord."""
    cols = batch.columns
    labels, label, label_kind, label_host = index_labels(
        cols["point"], cols["iface"], cols["host"], cols["hop_kind"], dict(kinds)  # type: ignore[arg-type]
    )
    domains, domain = index_domains(labels, label, label_host if clock_by_host else None, clocks)
    anchors = np.stack(
        [_u64(cols[c]) for c in ("syn_seq", "synack_seq", "resp_tcp_seq", "req_payload_hash")], axis=1
    ) if len(batch) else np.zeros((0, 4), np.uint64)
    return ObsTable(
        batch=batch, labels=labels, label=label, domains=domains, domain=domain,
        label_kind=label_kind, label_host=label_host, key=request_keys(batch), anchors=anchors,
        t_req=_i64(cols["req_first_ns"]), t_resp=_i64(cols["resp_first_ns"]),
        req_retrans=_i64(cols["req_retrans"]), resp_retrans=_i64(cols["resp_retrans"]),
    )


def latest_flows(batch: Batch) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The newest report of each flow at each point (interim reports are cumulative).

    Returns the rows to keep (in input order) and, for every input row, the index into those rows of
    the report that supersedes it."""
    if len(batch) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = batch.columns
    index: dict[tuple[str, str], int] = {}
    pt = np.array([index.setdefault(pair, len(index)) for pair in zip(cols["point"], cols["iface"], strict=True)],
                  dtype=np.uint64)
    fid = _u64(cols["flow_id"])
    order = np.lexsort((_u64(cols["end_ns"]), fid, pt))
    new_group = np.r_[True, (pt[order][1:] != pt[order][:-1]) | (fid[order][1:] != fid[order][:-1])]
    last = np.r_[new_group[1:], True]
    keep_sorted = order[last]
    rank = np.argsort(np.argsort(keep_sorted))  # position of each kept row in input order
    group = np.cumsum(new_group) - 1
    superseded_by = np.empty(len(batch), np.int64)
    superseded_by[order] = rank[group]
    return np.sort(keep_sorted).astype(np.int64), superseded_by


def flow_table(batch: Batch, kinds: Mapping[str, str], clock_by_host: bool = False,
               clocks: Mapping[str, str] | None = None) -> ObsTable:
    """Observations of TCP connections: one per (newest) FlowRecord; SYN and SYN-ACK are the anchors."""
    cols = batch.columns
    labels, label, label_kind, label_host = index_labels(
        cols["point"], cols["iface"], cols["host"], cols["hop_kind"], dict(kinds)  # type: ignore[arg-type]
    )
    domains, domain = index_domains(labels, label, label_host if clock_by_host else None, clocks)
    syn = _u64(cols["syn_seq"])
    tcp = _u64(cols["proto"]) == 6
    keys = np.where(tcp & (syn != 0), (np.uint64(TAG_FLOW) << np.uint64(TAG_SHIFT)) | syn, np.uint64(0))
    anchors = np.stack(
        [_u64(cols[c]) for c in ("synack_seq", "syn_ip_id", "orig_payload_hash")], axis=1
    ) if len(batch) else np.zeros((0, 3), np.uint64)
    start = _i64(cols["start_ns"])
    rtt_server_ns = _i64(cols["rtt_server_us"]) * 1000
    synack = _u64(cols["synack_seq"])
    t_resp = np.where((rtt_server_ns > 0) | (synack != 0), start + rtt_server_ns, 0)
    return ObsTable(
        batch=batch, labels=labels, label=label, domains=domains, domain=domain,
        label_kind=label_kind, label_host=label_host, key=keys, anchors=anchors,
        t_req=start, t_resp=t_resp,
        req_retrans=_i64(cols["orig_retrans_pkts"]), resp_retrans=_i64(cols["resp_retrans_pkts"]),
    )


def empty_batch(record_type: type[RequestRecord] | type[FlowRecord]) -> Batch:
    return Batch(record_type, {}, 0)


def window_of(obs: ObsTable, request_window_ns: int, dns_window_ns: int) -> npt.NDArray[np.int64]:
    """Matching window (ns) of each row, by its matcher."""
    tags = (obs.key >> np.uint64(TAG_SHIFT)).astype(np.int64)
    return np.where(tags == TAG_DNS, dns_window_ns, request_window_ns).astype(np.int64)
