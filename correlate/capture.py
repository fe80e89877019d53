"""Read one capture file into flow and request records for one capture point (the probes' stages).

Uses ``hopscope.probes.analyze.iter_capture`` when the probes package offers it, else wires the
stages itself: read, decode, meter flows, feed the L7 tracker. Either way the result is two batches
whose records carry the point name, host and hop kind given here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hopscope.records import Batch, FlowRecord, RequestRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PointRecords:
    """Everything one capture file yielded."""

    point: str
    flows: Batch
    requests: Batch
    packets: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def read_point(path: str, point: str, hop_kind: str = "", host: str = "",
               progress: Callable[[int], None] | None = None) -> PointRecords:
    """Flow and request records of the capture at ``path``, all attributed to ``point``.

    ``progress`` is called with the bytes of each block read (frames plus record headers)."""
    from hopscope.probes.decode import Decoder
    from hopscope.probes.l7.feed import BlockFeeder
    from hopscope.probes.l7.tracker import CapturePoint, L7Tracker
    from hopscope.probes.meter import FlowMeter
    from hopscope.probes.readers import open_capture

    reader = open_capture(path)
    decoder = Decoder(default_point=point)
    meter = FlowMeter(host=host or point, hop_kind=hop_kind)
    tracker = L7Tracker(CapturePoint(point=point, host=host or point, hop_kind=hop_kind))
    feeder = BlockFeeder(tracker)
    flows: list[FlowRecord] = []
    packets = 0
    for raw in reader.blocks():
        block = decoder.decode(raw)
        flows += meter.process(block)
        feeder.feed(block)
        packets += raw.count
        if progress is not None:
            progress(int(raw.caplen.sum()) + 16 * raw.count)
    flows += meter.flush()
    tracker.flush()
    requests = tracker.take_records()
    stats = {f"skip_{k}": v for k, v in decoder.skips.items()}
    return PointRecords(
        point=point,
        flows=_as_point(FlowRecord, flows, point, host or point, hop_kind),
        requests=_as_point(RequestRecord, requests, point, host or point, hop_kind),
        packets=packets, stats=stats,
    )


def _as_point(rtype: type[FlowRecord] | type[RequestRecord], records: list[FlowRecord] | list[RequestRecord],
              point: str, host: str, hop_kind: str) -> Batch:
    """Records with the point, host and hop kind named on the command line."""
    fixed = [dataclasses.replace(r, point=point, host=r.host or host, hop_kind=hop_kind or r.hop_kind)
             for r in records]
    return Batch.from_records(rtype, fixed)
