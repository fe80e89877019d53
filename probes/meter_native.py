"""The compiled flow meter (``probes/csrc/meter.c``) behind ``FlowMeter``'s interface.

``FlowMeter`` uses this class when the ``_meter`` kernel is built and ``HOPSCOPE_NATIVE`` is not ``0``
(``hopscope.probes.kernels``). Per block, Python only maps the block's point and tunnel names to the
meter-wide ids and name hashes (a handful per block) and hands the columns to the kernel, which meters
every ok row in C (flow table, TCP state machine, counters, payload hashes, Community IDs, sweeps) and
fills ``flow_id``/``from_orig``. Records come back as one int64 matrix plus one text buffer (per record
the two addresses, history, Community ID and tunnel parents, NUL-separated: one ``str.split`` yields all five text
columns), turned into a ``FlowRecord`` batch by ``meter_common.record_batch``. ``hopscope flows`` takes
them as they come (``RawFlows``: the JSON lines kernel reads the matrix and the text buffer in place,
without a Python object per record).

The kernel follows the reference meter (``meter_reference.py``) function for function;
tests/probes/test_meter_native.py runs both on the same inputs and demands identical records.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from hopscope.probes.meter_common import (
    ICMP4_TABLE,
    ICMP6_TABLE,
    LIKELY_SERVER,
    NS,
    RECORD_FIELDS,
    FlowNames,
    MeterConfig,
    metered_rows,
    outer_rows,
    record_batch,
)  # fmt: skip
from hopscope.probes.packets import PacketBlock
from hopscope.records import Batch

_NO_ROWS = np.zeros(0, np.int64)  # outer_rows of a block without tunnels: none
_NO_WORDS = np.zeros((0, len(RECORD_FIELDS)), np.int64)


class RawFlows(NamedTuple):
    """Records as the kernel emits them: ``words`` holds one row of ``RECORD_FIELDS`` per record,
    ``text`` five NUL-terminated ASCII values per record (``meter_common.TEXT_FIELDS``), in order."""

    words: npt.NDArray[np.int64]
    text: bytes
    n: int

    def column(self, name: str) -> npt.NDArray[np.int64]:
        """The ``RECORD_FIELDS`` column ``name`` (a strided view)."""
        return self.words[:, RECORD_FIELDS.index(name)]


class NativeMeter:
    """One ``_meter.Engine`` and the glue between it and ``FlowMeter``: same interface as ``ReferenceMeter``."""

    def __init__(self, module: ModuleType, config: MeterConfig, names: FlowNames, host: str = "",
                 hop_kind: str = "") -> None:  # fmt: skip
        cfg = config
        p4, t4, p6, t6 = (table.astype(np.uint8).tobytes() for table in (*ICMP4_TABLE, *ICMP6_TABLE))
        self.engine = module.Engine(
            int(cfg.tcp_idle_timeout_s * NS), int(cfg.udp_idle_timeout_s * NS), int(cfg.linger_s * NS),
            int(cfg.interval_s * NS), max(int(cfg.sweep_every_s * NS), 1), int(cfg.max_flows),
            int(cfg.payload_hash_bytes), int(cfg.tcp_attempt_delay_s * NS), LIKELY_SERVER.astype(np.uint8).tobytes(),
            p4, t4, p6, t6,
        )  # fmt: skip
        if tuple(module.RECORD_FIELDS) != RECORD_FIELDS:
            raise RuntimeError("the _meter kernel's record layout differs from meter_common.RECORD_FIELDS: rebuild it")
        self.names = names
        self.host = host
        self.hop_kind = hop_kind
        self.columns: tuple[str, ...] = module.COLUMNS

    def process(self, block: PacketBlock) -> Batch:
        """Meter the ok rows of ``block`` (filling ``flow_id``/``from_orig``); return the records due."""
        return self.batch(self.process_raw(block))

    def process_raw(self, block: PacketBlock) -> RawFlows:
        """``process`` with the records as the kernel emitted them."""
        rows = metered_rows(block).astype(np.int64)
        if len(rows):
            pt_hash, pt_id, tun_hash, tun_id = self.names.of_block(block)
            cols = tuple(getattr(block, name) for name in self.columns)
            outer = outer_rows(block) if len(block.tunnels) > 1 else _NO_ROWS
            self.engine.process(cols, block.count, block.buf, rows, pt_hash, pt_id, tun_hash, tun_id, outer)
        return self.take_raw()

    def flush_batches(self, chunk: int) -> Iterator[Batch]:
        """Final records of every flow still open, ``chunk`` flows per batch."""
        for raw in self.flush_raw(chunk):
            yield self.batch(raw)

    def flush_raw(self, chunk: int) -> Iterator[RawFlows]:
        """``flush_batches`` with the records as the kernel emitted them (none empty)."""
        while True:
            done = self.engine.flush(chunk)
            raw = self.take_raw()
            if raw.n:
                yield raw
            if done < chunk:
                return

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.counters()
        return out

    def take(self) -> Batch:
        """The records the engine emitted since the last call, as a FlowRecord batch."""
        return self.batch(self.take_raw())

    def take_raw(self) -> RawFlows:
        """The records the engine emitted since the last call, as it emitted them."""
        raw, n, text = self.engine.take()
        if n == 0:
            return RawFlows(_NO_WORDS, b"", 0)
        return RawFlows(np.frombuffer(raw, np.int64).reshape(n, len(RECORD_FIELDS)), text, n)

    def batch(self, raw: RawFlows) -> Batch:
        """Records as the kernel emitted them as a FlowRecord batch."""
        if raw.n == 0:
            return record_batch({}, [], 0, self.names, self.host, self.hop_kind)
        ints = {name: raw.words[:, k] for k, name in enumerate(RECORD_FIELDS)}
        texts = raw.text.decode("ascii").split("\0")  # 5 per record (and an empty one after the last NUL)
        return record_batch(ints, texts, raw.n, self.names, self.host, self.hop_kind)
