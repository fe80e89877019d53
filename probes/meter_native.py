"""The compiled flow meter (``probes/csrc/meter.c``) behind ``FlowMeter``'s interface.

``FlowMeter`` uses this class when the ``_meter`` kernel is built and ``HOPSCOPE_NATIVE`` is not ``0``
(``hopscope.probes.kernels``). Per block, Python only maps the block's point and tunnel names to the
meter-wide ids and name hashes (a handful per block) and hands the columns to the kernel, which meters
every ok row in C (flow table, TCP state machine, counters, payload hashes, Community IDs, sweeps) and
fills ``flow_id``/``from_orig``. Records come back as one int64 matrix plus one text buffer (per record
the two addresses, history and Community ID, NUL-separated: one ``str.split`` yields all four text
columns), turned into a ``FlowRecord`` batch column-wise here.

The numpy path in ``meter.py`` stays the reference: tests/probes/test_meter_native.py runs both on the
same captures and compares every record.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from hopscope.probes.flowtable import ANCHOR_NAMES, STAT_NAMES
from hopscope.probes.packets import PacketBlock
from hopscope.records import Batch, FlowRecord

if TYPE_CHECKING:
    from hopscope.probes.meter import FlowMeter

_INTS: Final = ("start_ns", "end_ns", "ip_version", "proto", "orig_p", "resp_p", "vlan", "final", *STAT_NAMES)


class NativeMeter:
    """One ``_meter.Engine`` and the glue between it and its owning ``FlowMeter``."""

    def __init__(self, module: ModuleType, owner: FlowMeter) -> None:
        from hopscope.probes.meter import _ICMP4, _ICMP6, _NS, LIKELY_SERVER

        cfg = owner.config
        p4, t4, p6, t6 = (table.astype(np.uint8).tobytes() for table in (*_ICMP4, *_ICMP6))
        self.engine = module.Engine(
            int(cfg.tcp_idle_timeout_s * _NS), int(cfg.udp_idle_timeout_s * _NS), int(cfg.linger_s * _NS),
            int(cfg.interval_s * _NS), max(int(cfg.sweep_every_s * _NS), 1), int(cfg.max_flows),
            int(cfg.payload_hash_bytes), LIKELY_SERVER.astype(np.uint8).tobytes(), p4, t4, p6, t6,
        )  # fmt: skip
        self.owner = owner
        self.columns: tuple[str, ...] = module.COLUMNS
        self.field = {name: k for k, name in enumerate(module.RECORD_FIELDS)}
        self.conn_states = np.array(module.CONN_STATES, object)
        self.close_types = np.array(module.CLOSE_TYPES, object)

    def process(self, block: PacketBlock) -> Batch:
        """Meter the ok rows of ``block`` (filling ``flow_id``/``from_orig``); return the records due."""
        rows = np.flatnonzero(block.ok).astype(np.int64)
        if len(rows):
            o = self.owner
            ifaces = block.point_ifaces if len(block.point_ifaces) == len(block.point_names) else block.point_names
            pt_hash = np.array([o._stable_hash(p) for p in block.point_names], np.uint64)
            pt_id = np.array([o._name_id(0, p, f) for p, f in zip(block.point_names, ifaces, strict=True)], np.int64)
            tun_hash = np.array([o._stable_hash(t) for t in block.tunnels], np.uint64)
            tun_id = np.array([o._name_id(1, t) for t in block.tunnels], np.int64)
            cols = tuple(getattr(block, name) for name in self.columns)
            self.engine.process(cols, block.count, block.buf, rows, pt_hash, pt_id, tun_hash, tun_id)
        return self.take()

    def flush_batches(self, chunk: int) -> Iterator[Batch]:
        """Final records of every flow still open, ``chunk`` flows per batch."""
        while True:
            done = self.engine.flush(chunk)
            batch = self.take()
            if len(batch):
                yield batch
            if done < chunk:
                return

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = self.engine.counters()
        return out

    def take(self) -> Batch:
        """The records the engine emitted since the last call, as a FlowRecord batch."""
        raw, n, text = self.engine.take()
        if n == 0:
            return Batch(FlowRecord, {}, 0)
        words = np.frombuffer(raw, np.int64).reshape(n, len(self.field))
        unsigned = words.view(np.uint64)
        f, o = self.field, self.owner
        points = words[:, f["point"]]
        texts = text.decode("ascii").split("\0")  # 4 per record (and an empty one after the last NUL)
        cols: dict[str, Any] = {
            "point": np.array(o.point_names, object)[points].tolist(),
            "iface": np.array(o.point_ifaces, object)[points].tolist(),
            "tunnel": np.array(o.tunnel_names, object)[words[:, f["tunnel"]]].tolist(),
            "host": [o.host] * n, "hop_kind": [o.hop_kind] * n,
            "orig_h": texts[0 : 4 * n : 4], "resp_h": texts[1 : 4 * n : 4],
            "history": texts[2 : 4 * n : 4], "community_id": texts[3 : 4 * n : 4],
            "flow_id": unsigned[:, f["flow_id"]],
            "orig_payload_hash": unsigned[:, f["orig_payload_hash"]],
            "resp_payload_hash": unsigned[:, f["resp_payload_hash"]],
            "conn_state": self.conn_states[words[:, f["conn_state"]]].tolist(),
            "close_type": self.close_types[words[:, f["close_type"]]].tolist(),
        }  # fmt: skip
        for name in _INTS:
            cols[name] = words[:, f[name]]
        for name in ANCHOR_NAMES:
            cols[name] = np.minimum(words[:, f[name]], 0xFFFFFFFF)
        return Batch(FlowRecord, cols, n)

