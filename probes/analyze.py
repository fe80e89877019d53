"""Read, decode and meter one capture file: the entry points for the CLI, the L7 parsers and the correlator.

``iter_capture`` streams (``PacketBlock``, records closed so far) pairs; ``analyze_capture`` collects
everything. Capture points: ``points`` maps an interface label (an SLL2 interface index written
``"if<N>"``, which wins over the pcapng ``if_name`` because a ``tcpdump -i any`` capture calls its one
pcapng interface "any"), a pcapng ``if_name``, or ``"*"`` (every interface) to a point name; an
interface not mapped is named after its label or, when the file names no interface, after the file
stem. ``"*"`` alone folds all interfaces into one point.

The flow records carry ``service`` (the protocols their payloads show, ``hopscope.probes.service``):
each block is checked after the meter processed it, before its records are handed on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hopscope.errors import CaptureError
from hopscope.probes.decode import Decoder, interface_label
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.meter_native import RawFlows
from hopscope.probes.packet_index import PacketIndexer
from hopscope.probes.packets import PacketBlock
from hopscope.probes.readers import DEFAULT_CHUNK_BYTES, open_capture
from hopscope.probes.service import ServiceDetector
from hopscope.records import Batch, FlowRecord


@dataclass(slots=True)
class CaptureResult:
    """Everything ``analyze_capture`` found in one file."""

    flows: Batch  # FlowRecord batch, in emission order (interim and final records)
    blocks: list[PacketBlock] = field(default_factory=list)  # only with keep_blocks=True
    stats: dict[str, int] = field(default_factory=dict)


def point_resolver(stem: str, points: Mapping[str, str] | None) -> object:
    """Build the decoder's point-name function for one file (see the module docstring)."""
    mapping = dict(points or {})

    def resolve(index: int, name: str, ifindex: int) -> str:
        label = interface_label(name, ifindex)
        for candidate in (label, name, "*"):
            if candidate and candidate in mapping:
                return mapping[candidate]
        return label or stem

    return resolve


class CaptureAnalyzer:
    """Decoder, meter and service detection for one capture source; ``stats()`` merges their counters.

    ``checksums`` validates checksums as Zeek does (``hopscope.probes.checksums``): ``hopscope flows``
    turns it on (its ``-C`` off); off here, for the captures hopscope's own points take on the sending
    hosts, whose outgoing packets carry offloaded checksums.
    """

    def __init__(
        self, path: str | os.PathLike[str], points: Mapping[str, str] | None = None,
        config: MeterConfig | None = None, host: str = "", hop_kind: str = "",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES, strict: bool = False, index: PacketIndexer | None = None,
        checksums: bool = False,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.index = index  # told where each metered packet lies in the file (None: nothing recorded)
        self.reader = open_capture(self.path, chunk_bytes, strict=strict)  # strict: damage is an error
        self.decoder = Decoder(self.path.stem, point_resolver(self.path.stem, points),  # type: ignore[arg-type]
                               checksums=checksums)  # fmt: skip
        self.meter = FlowMeter(config, host=host, hop_kind=hop_kind)
        self.services = ServiceDetector()

    def run(self) -> Iterator[tuple[PacketBlock, Batch]]:
        """Decoded blocks with the flow records each closed, then the records flushed at the end. A strict
        reader's damage error is raised after the flows of the records before the damage were flushed."""
        damage: CaptureError | None = None
        try:
            for raw in self.reader.blocks():
                block = self.decoder.decode(raw)
                closed = self.meter.process_batch(block)
                if self.index is not None:
                    self.index.add(raw, block, self.decoder.row_frames)
                self.services.observe(block)
                yield block, self.services.fill(closed)
        except CaptureError as exc:
            damage = exc
        for batch in self.meter.flush_batches():
            yield PacketBlock.empty(0), self.services.fill(batch)
        if damage is not None:
            raise damage

    def run_raw(self) -> Iterator[tuple[RawFlows, npt.NDArray[np.uint64] | None]]:
        """``run`` with the compiled meter (``meter.native``), without FlowRecord batches: the records
        each block closed and then those flushed, as the kernel emitted them (``RawFlows``), with their
        service codes (``ServiceDetector.codes``; None: no service). For ``hopscope flows``, whose JSON
        lines kernel reads them in place (``output.RawJsonLines``)."""
        damage: CaptureError | None = None
        try:
            for raw in self.reader.blocks():
                block = self.decoder.decode(raw)
                closed = self.meter.process_raw(block)
                if self.index is not None:
                    self.index.add(raw, block, self.decoder.row_frames)
                self.services.observe(block)
                if closed.n:
                    yield closed, self._codes(closed)
        except CaptureError as exc:
            damage = exc
        for closed in self.meter.flush_raw():
            yield closed, self._codes(closed)
        if damage is not None:
            raise damage

    def _codes(self, raw: RawFlows) -> npt.NDArray[np.uint64] | None:
        final: npt.NDArray[Any] = raw.column("final")
        return self.services.codes(raw.column("flow_id").view(np.uint64), final)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {
            "frames": self.reader.stats.frames,
            "bytes": self.reader.stats.bytes,
            "truncated_tail_bytes": self.reader.stats.truncated_tail,
            "slow_path_packets": self.decoder.slow_packets,
        }
        out.update({f"skip_{k}": v for k, v in sorted(self.decoder.skips.items())})
        out.update(self.reader.stats.skipped_blocks)
        if self.reader.stats.damage is not None:  # where reading stopped, and the bytes left unread
            out["damage_offset"] = self.reader.stats.damage.offset
            out["damage_bytes_unread"] = self.reader.stats.damage.bytes_after
        out.update(self.meter.counters)
        out["service_flows_evicted"] = self.services.evicted
        return out


def iter_capture(
    path: str | os.PathLike[str], points: Mapping[str, str] | None = None, config: MeterConfig | None = None,
    strict: bool = False,
) -> Iterator[tuple[PacketBlock, Batch]]:  # fmt: skip
    """Yield each decoded block (flow ids filled) with a ``FlowRecord`` batch of the records it closed.

    The last pairs have empty blocks and the records flushed at the end of the file (in chunks). A damaged
    file ends at its damage (a warning; with ``strict`` a ``CaptureError`` after the records before it).
    """
    yield from CaptureAnalyzer(path, points, config, strict=strict).run()


def analyze_capture(
    path: str | os.PathLike[str], points: Mapping[str, str] | None = None, config: MeterConfig | None = None,
    keep_blocks: bool = False, host: str = "", hop_kind: str = "", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    strict: bool = False,
) -> CaptureResult:  # fmt: skip
    """Read, decode and meter a whole file; ``keep_blocks`` keeps the decoded blocks (memory!)."""
    analyzer = CaptureAnalyzer(path, points, config, host=host, hop_kind=hop_kind, chunk_bytes=chunk_bytes,
                               strict=strict)  # fmt: skip
    batches: list[Batch] = []
    blocks: list[PacketBlock] = []
    for block, closed in analyzer.run():
        if len(closed):
            batches.append(closed)
        if keep_blocks and block.count:
            blocks.append(block)
    flows = Batch.concat(batches) if batches else Batch(FlowRecord, {}, 0)
    return CaptureResult(flows, blocks, analyzer.stats())
