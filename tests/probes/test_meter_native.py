"""The compiled flow meter (probes/csrc/meter.c) against the reference meter (probes/meter_reference.py).

Both meter the same blocks; every record (all FlowRecord columns), every packet's ``flow_id`` and
``from_orig``, and the counters must be equal. Inputs: the committed lab captures, the 1M-packet-style
benchmark traffic in miniature, and hypothesis-generated packet sequences with random flags, sequence
and acknowledgement numbers (retransmitted and overlapping data, SYNs after a close), windows,
payloads (payload-less UDP too), out-of-order times, ICMP types and codes (one-way types too),
broadcast and server-port endpoints, VLANs, points and tunnels, metered under random timeouts, linger,
attempt delay, interim interval and flow-table limits (so sweeps, interim records, reuse, expired
attempts and eviction all run). The hash primitives of the kernel are checked against hashlib.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.utils import wrpcap

from hopscope.probes import kernels
from hopscope.probes.decode import Decoder
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.meter_common import CLOSE_TYPES, CONN_STATES, RECORD_FIELDS
from hopscope.probes.packets import COLUMN_NAMES, PacketBlock, PacketStatus
from hopscope.probes.readers import open_capture
from hopscope.records import Batch
from tests.probes.crafting import conversation

_meter = kernels.load("_meter")
# CI (HOPSCOPE_REQUIRE_SERVICES=1) builds the kernels: there a missing kernel fails instead of skipping
pytestmark = pytest.mark.skipif(
    _meter is None and (os.environ.get("HOPSCOPE_REQUIRE_SERVICES") != "1" or not kernels.enabled()),
    reason="the _meter kernel is not built (or HOPSCOPE_NATIVE=0)",
)
SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").rglob("*.pcap"))


def _rows(batches: list[Batch]) -> list[tuple[Any, ...]]:
    """Records as tuples of all columns, in emission order (both meters emit in flow-table slot order)."""
    out: list[tuple[Any, ...]] = []
    for batch in batches:
        names = sorted(batch.columns)
        cols = [batch.columns[n] for n in names]
        lists = [c if isinstance(c, list) else c.tolist() for c in cols]
        out.extend(zip(*lists, strict=True))
    return out


def _run(blocks: list[PacketBlock], config: MeterConfig, native: bool, chunk: int = 7
         ) -> tuple[list[tuple[Any, ...]], Any, Any]:  # fmt: skip
    meter = FlowMeter(config, host="h", hop_kind="pod", native=native)
    assert (meter.native is not None) == native
    batches, fids, fos = [], [], []
    for block in blocks:
        block.flow_id[:] = 0
        block.from_orig[:] = False
        batches.append(meter.process_batch(block))
        fids.append(block.flow_id.copy())
        fos.append(block.from_orig.copy())
    batches.extend(meter.flush_batches(chunk=chunk))
    return _rows(batches), dict(meter.counters), (fids, fos)


def _compare(blocks: list[PacketBlock], config: MeterConfig, chunk: int = 7) -> int:
    native = _run(blocks, config, True, chunk)
    reference = _run(blocks, config, False, chunk)
    assert native[1] == reference[1]  # counters
    for got, want in zip(native[2][0], reference[2][0], strict=True):
        np.testing.assert_array_equal(got, want)  # flow_id per packet
    for got, want in zip(native[2][1], reference[2][1], strict=True):
        np.testing.assert_array_equal(got, want)  # from_orig per packet
    assert len(native[0]) == len(reference[0])
    for got, want in zip(native[0], reference[0], strict=True):
        assert got == want
    return len(native[0])


def _decoded(path: Path, chunk_bytes: int = 1 << 16) -> list[PacketBlock]:
    decoder = Decoder(path.stem)
    return [decoder.decode(raw) for raw in open_capture(path, chunk_bytes).blocks()]


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(64)), bytes(range(256)) * 3, os.urandom(129)])
def test_hash_primitives_equal_hashlib(data: bytes) -> None:
    assert _meter is not None
    want = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") if data else 0
    assert _meter.blake2b64(data) == want
    if len(data) <= 119:
        assert _meter.sha1(data) == hashlib.sha1(data).digest()


def test_kernel_record_layout_is_meter_common() -> None:
    """The kernel hands records over in the layout the reference and the batch builder use."""
    assert _meter is not None
    assert tuple(_meter.RECORD_FIELDS) == RECORD_FIELDS
    assert tuple(_meter.CONN_STATES) == CONN_STATES
    assert tuple(_meter.CLOSE_TYPES) == CLOSE_TYPES


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_lab_captures_meter_identically(path: Path) -> None:
    blocks = _decoded(path)
    assert _compare(blocks, MeterConfig()) > 0
    # short timeouts and an interim interval: sweeps, interim records and timeouts on real traffic
    assert _compare(blocks, MeterConfig(tcp_idle_timeout_s=0.05, udp_idle_timeout_s=0.02, linger_s=0.01,
                                        interval_s=0.03, sweep_every_s=0.01)) > 0  # fmt: skip


def test_eviction_meters_identically() -> None:
    blocks = _decoded(SAMPLES[0], chunk_bytes=1 << 12)
    assert _compare(blocks, MeterConfig(max_flows=3)) > 0


def test_flow_table_growth_meters_identically(tmp_path: Path) -> None:
    """34,000 UDP flows at once, then 4,000 more after the first ones timed out: the slot table grows
    twice (16,384 slots, doubled each time) and then reuses freed slots; the records and their order
    are the reference meter's."""
    frames = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for k in range(38_000):
        second = k // 1000 if k < 34_000 else 200 + k // 1000  # the last 4,000 after a 60 s UDP timeout
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 30, k & 0xFFFF, 0, 64, 17, 0, bytes([10, 0, k >> 8 & 255, k & 255]),
                         bytes([10, 1, 0, 1]))  # fmt: skip
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 1024 + k % 60000, 53, 10, 0) + b"hi"
        frames += struct.pack("<IIII", 1_700_000_000 + second, k % 1000, len(frame), len(frame)) + frame
    path = tmp_path / "many.pcap"
    path.write_bytes(bytes(frames))
    assert _compare(_decoded(path, chunk_bytes=1 << 20), MeterConfig(), chunk=4096) == 38_000


def test_kernel_rejects_bad_columns() -> None:
    """Hostile calls into the kernel raise instead of reading out of bounds."""
    meter = FlowMeter(native=True)
    assert meter.native is not None
    block = PacketBlock.empty(2)
    block.proto[:] = 6
    block.point[1] = 5  # no such point name
    with pytest.raises(ValueError, match="out of range"):
        meter.native.process(block)
    engine, cols = meter.native.engine, tuple(getattr(block, n) for n in meter.native.columns)
    rows, ids, none = np.array([0, 7], np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="out of range"):
        engine.process(cols, 2, block.buf, rows, np.zeros(1, np.uint64), ids, np.zeros(1, np.uint64), ids, none)
    bad = list(cols)
    bad[0] = np.zeros(2, np.int32)  # ts_ns of the wrong width
    with pytest.raises(ValueError, match="ts_ns"):
        engine.process(tuple(bad), 2, block.buf, rows[:1], np.zeros(1, np.uint64), ids, np.zeros(1, np.uint64), ids,
                       none)  # fmt: skip
    # an outer row must be an earlier row of the block (the packet's tunnel came before it) or -1
    for outer in (np.array([-1, 1], np.int64), np.array([-1, 5], np.int64), np.array([-2, -1], np.int64)):
        with pytest.raises(ValueError, match="outer rows"):
            engine.process(cols, 2, block.buf, rows[:1], np.zeros(1, np.uint64), ids, np.zeros(1, np.uint64), ids,
                           outer)  # fmt: skip


# --- generated traffic -----------------------------------------------------------------------------

_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x01, 0x04, 0x14, 0x06, 0x03, 0x05, 0x00, 0x19, 0x16]
_V4 = 0xFFFF_0000_0000
# (address hi, address lo, port): IPv4-mapped, IPv6 (text form by inet_ntop in both meters), IPv4-compatible
_ENDPOINTS = [
    (0, _V4 | 0x0A000001, 40000), (0, _V4 | 0x0A000002, 80), (0, _V4 | 0x0A000003, 53), (0, _V4 | 0x0A000001, 40001),
    (0, _V4 | 0x0A000002, 8080), (0x20010DB8_00000000, 1, 443), (0x20010DB8_00000000, 0xAB, 50000),
    (0, 0x0A000009, 9999), (0xFE800000_00000000, 0x0211_22FF_FE33_4455, 22), (0, _V4 | 0xFFFFFFFF, 68),
    (0, _V4 | 0x0A000005, 67), (0, _V4 | 0x0A000006, 123), (0, _V4, 68), (0, _V4 | 0xC0A86409, 5353),
]  # fmt: skip
# (the kernel writes IPv4 text itself: 0.0.0.0, 192.168.100.9 and 255.255.255.255 cover 1 to 3 digits)

packet = st.tuples(
    st.integers(0, len(_ENDPOINTS) - 1), st.integers(0, len(_ENDPOINTS) - 1),  # src, dst endpoint
    st.sampled_from([6, 6, 6, 17, 1, 58]),  # protocol
    st.sampled_from(_FLAGS),
    st.sampled_from([1000, 1001, 2000, 5000, 0, 4294967295, 3000]),  # seq
    st.sampled_from([0, 0, 1, 100, 1448]),  # payload length
    st.integers(-3, 40),  # time step in ms (negative: out of order)
    st.sampled_from([0, 65535, 512]),  # window
    st.integers(0, 2),  # vlan / point / tunnel selector
    st.sampled_from([0, 3, 8, 11, 13, 14, 128, 129, 135, 136, 137]),  # ICMP type (code: seq % 4)
    st.sampled_from([0, 1001, 1101, 2000, 2501, 5001, 4294967295, 3001]),  # ack
)


def _block(packets: list[tuple[int, ...]]) -> PacketBlock:
    n = len(packets)
    block = PacketBlock.empty(n, np.frombuffer(bytes(range(256)) * 8, np.uint8).copy())
    block.point_names = ("p0", "p1")
    block.point_ifaces = ("eth0", "eth1")
    block.tunnels = ["", "vxlan vni=7 192.0.2.1>192.0.2.2"]
    ts = 1_700_000_000_000_000_000
    for i, (s, d, proto, flags, seq, plen, step, window, sel, itype, ack) in enumerate(packets):
        ts += step * 1_000_000
        (sh, sl, sp), (dh, dl, dp) = _ENDPOINTS[s], _ENDPOINTS[d]
        block.ts_ns[i] = ts
        block.status[i] = PacketStatus.OK if i % 17 != 16 else PacketStatus.NOT_IP
        block.ip_version[i] = 4 if sh == 0 and sl >> 32 == 0xFFFF else 6
        block.proto[i] = proto
        block.src_hi[i], block.src_lo[i], block.dst_hi[i], block.dst_lo[i] = sh, sl, dh, dl
        block.sport[i], block.dport[i] = (itype, seq % 4) if proto in (1, 58) else (sp, dp)
        block.tcp_flags[i] = flags if proto == 6 else 0
        block.seq[i] = seq if proto == 6 else 0
        block.ack[i] = ack if proto == 6 else 0
        block.window[i] = window if proto == 6 else 0
        block.ip_len[i] = 40 + plen
        block.payload_len[i] = plen
        block.payload_caplen[i] = min(plen, 60) if sel != 2 else 0
        block.payload_off[i] = (i * 13) % 1800
        block.vlan[i] = 7 if sel == 1 else 0
        block.point[i] = 1 if sel == 2 else 0
        block.tunnel[i] = 1 if sel == 1 else 0
    return block


def _split(block: PacketBlock, cuts: list[int]) -> list[PacketBlock]:
    """The same packets as several blocks (block boundaries must not change the result)."""
    cuts = sorted({c for c in cuts if 0 < c < block.count})
    parts, start = [], 0
    for stop in [*cuts, block.count]:
        part = PacketBlock.empty(stop - start, block.buf)
        for name in COLUMN_NAMES:
            getattr(part, name)[:] = getattr(block, name)[start:stop]
        part.point_names, part.point_ifaces, part.tunnels = block.point_names, block.point_ifaces, block.tunnels
        parts.append(part)
        start = stop
    return parts


EXAMPLES = int(os.environ.get("HOPSCOPE_METER_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(packet, min_size=1, max_size=120),
    cuts=st.lists(st.integers(1, 119), max_size=3),
    config=st.builds(
        MeterConfig,
        tcp_idle_timeout_s=st.sampled_from([0.05, 0.3, 300.0]),
        udp_idle_timeout_s=st.sampled_from([0.02, 0.2, 60.0]),
        linger_s=st.sampled_from([0.0, 0.01, 1.0]),
        interval_s=st.sampled_from([0.0, 0.04, 60.0]),
        max_flows=st.sampled_from([2, 5, 1_000_000]),
        sweep_every_s=st.sampled_from([0.005, 0.02, 1.0]),
        payload_hash_bytes=st.sampled_from([0, 16, 64]),
        tcp_attempt_delay_s=st.sampled_from([0.0, 0.02, 5.0]),
    ),
)
def test_generated_traffic_meters_identically(packets: list[tuple[int, ...]], cuts: list[int],
                                              config: MeterConfig) -> None:  # fmt: skip
    packets = [p for p in packets if p[0] != p[1]]  # a packet to itself has no direction
    if not packets:
        return
    _compare(_split(_block(packets), cuts), config)


# --- cases where the meters once disagreed, with the value Zeek's rules give ------------------------


def _records_of(tmp_path: Path, steps: list[str], native: bool) -> list[Any]:
    path = tmp_path / "case.pcap"
    wrpcap(str(path), conversation(steps))
    meter = FlowMeter(MeterConfig(), native=native)
    batches = [meter.process_batch(block) for block in _decoded(path)]
    batches.extend(meter.flush_batches())
    return [record for batch in batches for record in batch.records()]


@pytest.mark.parametrize(
    ("steps", "field", "want"),
    [
        # The responder's first packet (no flags, no payload, an answer to the SYN) leaves it INACTIVE
        # (Zeek's rule for an ACK of a SYN before the SYN-ACK); its pure ACK after that still goes
        # through the history and state machine, as every packet does in Zeek: "Sa", not "S".
        ([">S", "<", "<A"], "history", "Sa"),
        ([">S", "<", "<A"], "conn_state", "S0"),
        # The client RTT ends at the originator's first ACK without SYN after the SYN-ACK (the third
        # packet of the handshake); an originator's SYN-ACK (or SYN+RST+ACK) is not that packet.
        ([">S", "<SA", ">SA", ">A"], "rtt_client_us", 2000),
        ([">S", "<SA", ">SRA", ">A"], "rtt_client_us", 2000),
        ([">S", "<SA", ">A"], "rtt_client_us", 1000),
    ],
    ids=["inactive-endpoint-history", "inactive-endpoint-state", "rtt-not-at-orig-synack", "rtt-not-at-syn-rst-ack",
         "rtt-at-ack"],
)  # fmt: skip
def test_disagreements_resolved_as_zeek(tmp_path: Path, steps: list[str], field: str, want: object) -> None:
    native, reference = _records_of(tmp_path, steps, True), _records_of(tmp_path, steps, False)
    assert native == reference
    (record,) = reference
    assert getattr(record, field) == want


def test_history_is_bounded_on_both_meters() -> None:
    """A flow whose every packet adds a letter (RSTs with new sequence numbers) keeps at most 65,535."""
    packets = [(0, 1, 6, 0x04, seq, 0, 0, 512, 0, 0, 0) for seq in range(65_600)]
    block = _block(packets)
    block.status[:] = PacketStatus.OK
    block.seq[:] = np.arange(65_600)
    for native in (True, False):
        meter = FlowMeter(MeterConfig(), native=native)
        meter.process_batch(block)
        (history,) = meter.flush_batch().columns["history"]
        assert history == "R" * 65_535
    assert _compare([block], MeterConfig()) == 1
