"""Flow metering per capture point: ``PacketBlock`` in, ``FlowRecord``s out.

``FlowMeter`` meters blocks with the compiled kernel (``meter_native.NativeMeter`` over
``probes/csrc/meter.c``) when it is built and ``HOPSCOPE_NATIVE`` is not ``0``, else with the reference
meter (``meter_reference.ReferenceMeter``), the plain per-packet loop that specifies what a flow,
its ``conn_state``/``history`` and its records are. Both give identical records on every input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from hopscope.ids import payload_hash, payload_hashes
from hopscope.probes import kernels
from hopscope.probes.meter_common import FlowNames, MeterConfig, close_type
from hopscope.probes.meter_native import NativeMeter, RawFlows
from hopscope.probes.packets import PacketBlock
from hopscope.records import Batch, FlowRecord

__all__ = ["FlowMeter", "MeterConfig", "close_type", "payload_hash", "payload_hashes"]


class MeterEngine(Protocol):
    """What ``FlowMeter`` asks of a meter: both ``ReferenceMeter`` and ``NativeMeter`` provide it."""

    def process(self, block: PacketBlock) -> Batch: ...

    def flush_batches(self, chunk: int) -> Iterator[Batch]: ...

    def counters(self) -> dict[str, int]: ...


class FlowMeter:
    """Meters flows of ``PacketBlock``s; ``process_batch`` returns a ``FlowRecord`` batch of the records due.

    ``counters`` exposes packets metered, flows created, records emitted (final and interim),
    evictions and reused tuples. ``native`` is the compiled meter in use, or None (the reference).
    """

    def __init__(
        self, config: MeterConfig | None = None, host: str = "", hop_kind: str = "", native: bool = True
    ) -> None:
        self.config = config or MeterConfig()
        self.host = host
        self.hop_kind = hop_kind
        self.names = FlowNames()
        self.counters: Counter[str] = Counter()
        kernel = kernels.load("_meter") if native else None
        self.native = NativeMeter(kernel, self.config, self.names, host, hop_kind) if kernel is not None else None
        if self.native is not None:
            self.engine: MeterEngine = self.native
        else:  # imported here: the compiled path's start-up does without the reference meter's modules
            from hopscope.probes.meter_reference import ReferenceMeter

            self.engine = ReferenceMeter(self.config, self.names, host, hop_kind)

    def process(self, block: PacketBlock) -> list[FlowRecord]:
        """``process_batch`` returning ``FlowRecord`` objects (slower: prefer the batch form)."""
        return list(self.process_batch(block).records())  # type: ignore[arg-type]

    def flush(self) -> list[FlowRecord]:
        """``flush_batch`` returning ``FlowRecord`` objects."""
        return list(self.flush_batch().records())  # type: ignore[arg-type]

    def process_batch(self, block: PacketBlock) -> Batch:
        """Meter the ok rows of ``block`` (filling its ``flow_id``/``from_orig``); return due records.

        The rows are metered in slices of ``sweep_every_s`` of capture time, each followed by the
        idle/linger/interim sweep, so emission follows capture time however big the block is.
        """
        batch = self.engine.process(block)
        self._sync_counters()
        return batch

    def flush_batch(self) -> Batch:
        """Emit a final record for every flow still in the table (end of capture)."""
        parts = [b for b in self.flush_batches() if len(b)]
        if not parts:
            return Batch(FlowRecord, {}, 0)
        return parts[0] if len(parts) == 1 else Batch.concat(parts)

    def flush_batches(self, chunk: int = 8192) -> Iterator[Batch]:
        """``flush_batch`` in batches of at most ``chunk`` records (bounded memory for big tables)."""
        for batch in self.engine.flush_batches(chunk):
            self._sync_counters()
            yield batch
        self._sync_counters()

    def process_raw(self, block: PacketBlock) -> RawFlows:
        """``process_batch`` with the records as the compiled meter emitted them (``native`` only)."""
        if self.native is None:
            raise RuntimeError("records as the kernel emits them need the compiled meter")
        raw = self.native.process_raw(block)
        self._sync_counters()
        return raw

    def flush_raw(self, chunk: int = 8192) -> Iterator[RawFlows]:
        """``flush_batches`` with the records as the compiled meter emitted them (``native`` only)."""
        if self.native is None:
            raise RuntimeError("records as the kernel emits them need the compiled meter")
        for raw in self.native.flush_raw(chunk):
            self._sync_counters()
            yield raw
        self._sync_counters()

    def _sync_counters(self) -> None:
        for name, value in self.engine.counters().items():
            if value:
                self.counters[name] = value
