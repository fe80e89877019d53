"""Fuzzing: mutated packets and mutated capture files never crash or hang the reader, decoder or meter.

Each packet example mutates 1,000 real frames (bit flips, truncations, insertions, field smashes), so
one run feeds well over 100,000 mutated packets; file examples mutate whole pcap/pcapng files.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from hopscope.errors import CaptureError
from hopscope.probes.analyze import analyze_capture
from hopscope.probes.decode import Decoder
from hopscope.probes.layers import MAX_DEPTH
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.packets import PacketStatus
from hopscope.probes.readers import Interface, RawBlock, open_capture
from tests.probes import encap_frames as E
from tests.probes.test_meter_native import _compare
from tests.probes.test_readers import pcapng_bytes

M = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
OUTER = IP(src="192.0.2.1", dst="192.0.2.2")
T = (
    IP(src="10.0.0.1", dst="10.0.0.2")
    / TCP(sport=1000, dport=80, flags="PA", seq=1, options=[("MSS", 1460)])
    / (b"GET / HTTP/1.1\r\n\r\n")
)
BASE_FRAMES = [
    bytes(p)
    for p in (
        Ether(**M) / T,
        Ether(**M) / IP(options=b"\x01\x01\x01\x00") / UDP(dport=53) / (b"\x00" * 20),
        Ether(**M) / Dot1Q(vlan=7) / T,
        Ether(**M) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / T,
        Ether(**M) / IPv6() / IPv6ExtHdrHopByHop() / UDP() / b"x",
        Ether(**M) / IPv6() / IPv6ExtHdrFragment(m=1) / TCP() / b"y",
        Ether(**M) / IP() / ICMP() / b"ping",
        Ether(**M) / OUTER / UDP(dport=4789) / VXLAN(vni=5) / Ether(**M) / T,
        Ether(**M) / OUTER / UDP(dport=6081) / GENEVE(vni=5, proto=0x6558) / Ether(**M) / T,
        Ether(**M) / OUTER / GRE(key_present=1, key=3, proto=0x0800) / T,
        Ether(**M) / OUTER / GRE(seqnum_present=1, proto=0x88BE) / ERSPAN_II() / Ether(**M) / T,
        Ether(**M) / OUTER / GRE(seqnum_present=1, proto=0x22EB) / ERSPAN_III() / Ether(**M) / T,
        Ether(**M) / OUTER / T,
        Ether(**M) / IPv6() / IP() / TCP(),
        Ether(**M) / OUTER / UDP(dport=4789) / VXLAN() / Ether(**M) / OUTER / UDP(dport=4789) / VXLAN() / Ether() / T,
    )
] + [
    E.mpls(T),
    E.pppoe(T),
    E.pppoe_qinq(T),
    E.pbb(T),
    E.vntag(T),
    E.fabricpath(T),
    E.teredo(IPv6(src=E.TEREDO_CLIENT, dst=E.TEREDO_PEER) / TCP()),
    E.teredo(IPv6(src="2001:db8::1", dst="2001:0::1") / UDP() / b"z", dport=9999, origin=True),
    E.ayiya(T),
    E.ayiya(IPv6() / UDP(), dport=9999),
    E.gtpu(T),
    E.gre_udp(T),
    E.pptp(T),
    E.gtpu(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(dport=4789) / VXLAN() / Ether(**M) / T),
]
LINKTYPES = [1, 113, 276, 101, 0, 9, 50, 105, 127]
#: The link header put before the IPv4 packet of a base frame (its Ethernet header stripped).
LINK_HEADERS = {
    113: b"\x00" * 14 + b"\x08\x00",
    276: b"\x08\x00" + b"\x00" * 18,
    0: struct.pack("<I", 2),
    9: b"\xff\x03\x00\x21",
    50: b"\xff\x03\x00\x21",
    105: E.dot11(IP())[:32],  # 802.11 data header, LLC/SNAP with ethertype IPv4
    127: E.radiotap(IP())[:44],  # radiotap, 802.11 QoS data header, LLC/SNAP
}
PACKETS_PER_EXAMPLE = 1000


def mutate(rng: np.random.Generator, frame: bytes, rate: float) -> bytes:
    data = bytearray(frame)
    choice = rng.integers(0, 5)
    if choice == 0 and data:  # bit flips
        for pos in rng.integers(0, len(data), max(1, int(len(data) * rate))).tolist():
            data[pos] ^= 1 << int(rng.integers(0, 8))
    elif choice == 1:  # truncation
        data = data[: int(rng.integers(0, len(data) + 1))]
    elif choice == 2:  # insertion of random bytes
        pos = int(rng.integers(0, len(data) + 1))
        data[pos:pos] = rng.bytes(int(rng.integers(1, 16)))
    elif choice == 3 and len(data) > 4:  # smash a header byte with an extreme value
        pos = int(rng.integers(0, min(len(data), 80)))
        data[pos] = int(rng.choice([0x00, 0xFF, 0x45, 0x60, 0x81, 0x08, 0x86, 0x0F]))
    else:  # garbage frame
        data = bytearray(rng.bytes(int(rng.integers(0, 120))))
    return bytes(data)


def raw_block(frames: list[bytes], linktype: int) -> RawBlock:
    offsets, pos = [], 0
    for f in frames:
        offsets.append(pos)
        pos += len(f)
    buf = np.zeros(pos + 512, np.uint8)
    buf[:pos] = np.frombuffer(b"".join(frames), np.uint8)
    n = len(frames)
    return RawBlock(
        buf=buf, offset=np.array(offsets, np.int64), caplen=np.array([len(f) for f in frames], np.uint32),
        origlen=np.array([len(f) for f in frames], np.uint32),
        ts_ns=1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1000,
        iface=np.zeros(n, np.uint16), interfaces=(Interface(0, linktype, 0),),
    )  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.002, 0.02, 0.1]),
    linktype=st.sampled_from(LINKTYPES),
)
def test_mutated_packets_never_crash(seed: int, rate: float, linktype: int) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(PACKETS_PER_EXAMPLE):
        base = BASE_FRAMES[int(rng.integers(0, len(BASE_FRAMES)))]
        if linktype != 1:  # strip Ethernet; prepend the link header of the type
            base = LINK_HEADERS.get(linktype, b"") + base[14:]
        frames.append(mutate(rng, base, rate) if rng.random() < 0.9 else base)
    decoder = Decoder("fuzz")
    block = decoder.decode(raw_block(frames, linktype))
    assert block.count == PACKETS_PER_EXAMPLE + decoder.added_rows  # UDP tunnels: outer and inner rows
    ok = block.ok
    assert int(ok.sum()) + int((~ok).sum()) == block.count
    assert sum(decoder.skips.values()) >= int((~ok).sum())  # plus inner packets behind outer datagrams
    assert set(np.unique(block.status).tolist()) <= {int(s) for s in PacketStatus}
    assert (block.payload_caplen[ok] <= block.payload_len[ok]).all()
    assert (block.payload_off[ok] + block.payload_caplen[ok] <= len(block.buf)).all()
    meter = FlowMeter(MeterConfig(max_flows=200))
    records = len(meter.process_batch(block)) + len(meter.flush_batch())
    assert meter.counters["packets"] == int(ok.sum())
    assert records == meter.counters["flows"]


FILES = {
    "pcap": b"".join(
        [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
        + [struct.pack("<IIII", 1, i, len(f), len(f)) + f for i, f in enumerate(BASE_FRAMES * 4)]
    ),
    "pcapng": pcapng_bytes(),
}


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(FILES)), seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 40))
def test_mutated_files_raise_capture_error_or_decode(kind: str, seed: int, flips: int) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(FILES[kind])
    for pos in rng.integers(0, len(data), flips).tolist():
        data[pos] = int(rng.integers(0, 256))
    if rng.random() < 0.3:
        data = data[: int(rng.integers(0, len(data)))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{kind}"
        path.write_bytes(bytes(data))
        try:
            result = analyze_capture(path)
        except CaptureError as exc:
            assert (str(path) in str(exc) and "offset" in str(exc)) or "cannot open" in str(exc)
            return
        # a frame yields at most one packet per nested UDP tunnel (its outer datagram) and its inner packet
        assert result.stats["frames"] * (1 + MAX_DEPTH) >= result.stats.get("packets", 0)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 25, 39, 40])
def test_short_pcap_prefixes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(FILES["pcap"][:size])
    try:
        reader = open_capture(path)
        frames = sum(b.count for b in reader.blocks())
    except CaptureError:
        assert size < 24
        return
    assert frames == 0 and size >= 24


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), rate=st.sampled_from([0.002, 0.02, 0.1]))
def test_mutated_packets_validate_and_meter_alike(seed: int, rate: float) -> None:
    """Checksum validation on mutated frames (most mutations break a checksum): the numpy and C
    validators mark the same rows, and both meters, fed the rows with bad checksums, UDP tunnels (outer
    rows, tunnel parents), DNS ports and gapped TCP, give the same records and per-packet flows; the
    service check in C finds what numpy finds."""
    from hopscope.probes import checksums, kernels, service

    decode_kernel, meter_kernel = kernels.load("_decode"), kernels.load("_meter")
    if decode_kernel is None or meter_kernel is None or not kernels.enabled():
        pytest.skip("the kernels are not built")
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(300):
        base = BASE_FRAMES[int(rng.integers(0, len(BASE_FRAMES)))]
        frames.append(mutate(rng, base, rate) if rng.random() < 0.8 else base)
    raw = raw_block(frames, 1)
    blocks = []
    for kernel in (decode_kernel, None):
        decoder = Decoder("fuzz", checksums=True)
        decoder._kernel = kernel
        blocks.append(decoder.decode(raw))
    native, reference = blocks
    np.testing.assert_array_equal(native.status, reference.status)
    assert set(np.unique(native.status).tolist()) <= {int(s) for s in PacketStatus}
    rows = np.flatnonzero(native.status == PacketStatus.OK)
    code = np.zeros(native.count, np.uint8)
    cols = (native.status, native.ip_version, native.proto, native.src_hi, native.src_lo, native.dst_hi,
            native.dst_lo, native.sport, native.dport, native.seq, native.ip_len, native.payload_off,
            native.payload_len, native.payload_caplen)  # fmt: skip
    decode_kernel.checksums(native.buf, native.count, cols, code)  # a validated block: nothing left to fail
    assert not code[rows].any() and not checksums._codes(native, rows).any()
    _compare([native], MeterConfig(max_flows=50))
    got, want = service.block_hits(native), service.block_hits_reference(native)
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
