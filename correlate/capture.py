"""Read one capture file into flow and request records for one capture point (the probes' stages).

The probes' ``CaptureAnalyzer`` reads, decodes and meters flows; its decoded blocks feed the L7
tracker. The result is two batches whose records carry the point name, host and hop kind given here.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from hopscope.records import Batch, FlowRecord, PacketIndex

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PointRecords:
    """Everything one capture file yielded."""

    point: str
    flows: Batch
    requests: Batch
    packets: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    index: Batch = field(default_factory=lambda: Batch(PacketIndex, {}, 0))  # where each flow's packets lie


def read_point(path: str, point: str, hop_kind: str = "", host: str = "",
               progress: Callable[[int], None] | None = None, strict: bool = False) -> PointRecords:
    """Flow and request records of the capture at ``path``, all attributed to ``point``.

    ``progress`` is called with the bytes read since its last call. A damaged file gives the records
    before its damage (and a warning); with ``strict`` its damage is a ``CaptureError``."""
    from hopscope.probes.analyze import CaptureAnalyzer
    from hopscope.probes.l7.feed import BlockFeeder
    from hopscope.probes.l7.tracker import CapturePoint, L7Tracker
    from hopscope.probes.packet_index import PacketIndexer

    index = PacketIndexer(path, host=socket.gethostname(), point=point)
    analyzer = CaptureAnalyzer(path, {"*": point}, host=host or point, hop_kind=hop_kind, strict=strict, index=index)
    tracker = L7Tracker(CapturePoint(point=point, host=host or point, hop_kind=hop_kind))
    feeder = BlockFeeder(tracker)
    flows: list[Batch] = []
    read = 0
    for block, closed in analyzer.run():
        if len(closed):
            flows.append(closed)
        if block.count:
            feeder.feed(block)
        if progress is not None:
            progress(analyzer.reader.stats.bytes - read)
            read = analyzer.reader.stats.bytes
    tracker.flush()
    stats = analyzer.stats()
    flow_batch = Batch.concat(flows) if flows else Batch(FlowRecord, {}, 0)
    return PointRecords(
        point=point,
        flows=_as_point(flow_batch, point, host or point, hop_kind),
        requests=_as_point(tracker.take_batch(), point, host or point, hop_kind),
        packets=stats.get("frames", 0), stats=stats, index=index.batch(),
    )


def _as_point(batch: Batch, point: str, host: str, hop_kind: str) -> Batch:
    """The records with the point, host and hop kind named on the command line."""
    cols = dict(batch.columns)
    n = len(batch)
    cols["point"] = [point] * n
    cols["host"] = [h or host for h in cols["host"]]
    if hop_kind:
        cols["hop_kind"] = [hop_kind] * n
    return Batch(batch.record_type, cols, n)
