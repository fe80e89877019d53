"""The L7 request records of one capture file, through the same stages as a live probe.

Reader, decoder, flow meter and L7 tracker run as they do on an interface, so each request's
``flow_id`` joins the flow records of the same file. ``deep`` adds the HTTP/2 and gRPC streams
tshark's dissectors find (``hopscope.probes.l7.tshark``), joined to the same flow ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hopscope.records import FlowRecord, RequestRecord

if TYPE_CHECKING:
    from hopscope.probes.l7.tracker import CapturePoint

#: (orig_h, orig_p, resp_h, resp_p) of a TCP flow.
FourTuple = tuple[str, int, str, int]


def capture_requests(
    path: str, point: str, host: str = "", hop_kind: str = "", deep: bool = False,
    http2_ports: Sequence[int] = (), strict: bool = False,
) -> tuple[list[RequestRecord], dict[str, int]]:  # fmt: skip
    """The request records of the capture at ``path``, all at ``point``, and the L7 counters.

    ``http2_ports``: TCP ports tshark decodes as cleartext HTTP/2 (``deep`` only; empty: its defaults).
    ``strict``: damage in the file is a ``CaptureError`` (else a warning; the records before it count).
    """
    from hopscope.probes.analyze import iter_capture
    from hopscope.probes.l7.feed import BlockFeeder
    from hopscope.probes.l7.tracker import CapturePoint, L7Tracker

    where = CapturePoint(point, host, point, hop_kind)
    tracker = L7Tracker(where)
    feeder = BlockFeeder(tracker)
    flow_ids: dict[FourTuple, int] = {}
    for block, closed in iter_capture(path, {"*": point}, strict=strict):
        feeder.feed(block)
        for rec in closed.records():
            assert isinstance(rec, FlowRecord)
            if rec.proto == 6:
                flow_ids[(rec.orig_h, rec.orig_p, rec.resp_h, rec.resp_p)] = rec.flow_id
    tracker.flush()
    records = tracker.take_records()
    if deep:
        records += _tshark_requests(path, where, flow_ids, http2_ports)
    return records, tracker.stats.as_dict()


def _tshark_requests(
    path: str, where: CapturePoint, flow_ids: dict[FourTuple, int], http2_ports: Sequence[int]
) -> list[RequestRecord]:
    """HTTP/2 and gRPC request records from tshark, each with the flow id of its TCP connection."""
    from hopscope.probes.l7.tshark import DEFAULT_HTTP2_PORTS, tshark_requests

    def flow_id_of(proto: int, ch: str, cp: int, sh: str, sp: int) -> int:
        return flow_ids.get((ch, cp, sh, sp)) or flow_ids.get((sh, sp, ch, cp), 0)

    ports = list(http2_ports) or list(DEFAULT_HTTP2_PORTS)
    records: list[RequestRecord] = tshark_requests(path, where, http2_ports=ports, flow_id_of=flow_id_of)
    return records
