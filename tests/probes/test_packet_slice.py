"""The packet index, the packets read back through it, the exchange rule and the pcapng writer: on the
lab samples, on crafted conversations (keep-alive, retransmissions) and a crafted VXLAN tunnel."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from hopscope.correlate.capture import read_point
from hopscope.paths import lab_samples
from hopscope.probes.analyze import CaptureAnalyzer
from hopscope.probes.packet_index import (
    PacketIndexer,
    PacketsUnavailable,
    pack_frames,
    read_frames,
    unpack_frames,
)
from hopscope.probes.packet_slice import Endpoints, Packet, exchange_packets, flags_text, flow_packets, write_pcapng
from hopscope.probes.readers import LINKTYPE_ETHERNET, open_capture
from hopscope.records import PacketIndex, RequestRecord
from tests.probes.crafting import CLIENT, SERVER, conversation

SAMPLES = sorted(lab_samples().glob("*.pcap"))
HOP = Endpoints(CLIENT[0], CLIENT[1], SERVER[0], SERVER[1])


def _frames_by_offset(path: Path) -> dict[int, bytes]:
    out = {}
    for raw in open_capture(path).blocks():
        for i in range(raw.count):
            out[raw.file_offset + int(raw.offset[i])] = raw.frame(i)
    return out


@pytest.mark.parametrize("path", SAMPLES[:4], ids=lambda p: p.stem)
def test_the_index_names_every_metered_frame_exactly(path: Path) -> None:
    got = read_point(str(path), path.stem)
    frames = _frames_by_offset(path)
    rows: list[PacketIndex] = list(got.index.records())  # type: ignore[arg-type]
    assert {r.flow_id for r in rows} == {f.flow_id for f in got.flows.records()}  # type: ignore[attr-defined]
    indexed = 0
    for row in rows:
        where = unpack_frames(row.frames)
        assert row.pkts == len(where) and row.file == str(path.resolve()) and row.linktype == LINKTYPE_ETHERNET
        assert (row.start_ns, row.end_ns) == (int(where["ts_ns"][0]), int(where["ts_ns"][-1]))
        assert read_frames(row.file, where) == [frames[o] for o in where["offset"].tolist()]
        indexed += row.pkts
    assert indexed == sum(f.orig_pkts + f.resp_pkts for f in got.flows.records() if f.final)  # type: ignore[attr-defined]


def test_the_frames_text_round_trips_and_rejects_damage() -> None:
    rows = PacketIndexer("x").records()
    assert rows == []
    frames = np.zeros(3, dtype=[("offset", "<u8"), ("caplen", "<u4"), ("origlen", "<u4"), ("ts_ns", "<i8")])
    frames["offset"], frames["ts_ns"] = [24, 100, 2**40], [1, 2, 2**62]
    assert unpack_frames(pack_frames(frames)).tolist() == frames.tolist()
    with pytest.raises(PacketsUnavailable, match="corrupt packet index entry"):
        unpack_frames("not base64!")


def test_a_tunnel_frame_is_indexed_under_its_outer_and_inner_flows(tmp_path: Path) -> None:
    inner = Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=40000, dport=80, flags="S", seq=7)
    frames = [Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=50000 + i, dport=4789) / VXLAN(vni=42)
              / inner for i in range(3)]  # fmt: skip
    path = tmp_path / "vxlan.pcap"
    wrpcap(str(path), frames)
    index = PacketIndexer(path)
    for _ in CaptureAnalyzer(path, index=index).run():
        pass
    rows = index.records()
    by_offsets = Counter(tuple(unpack_frames(r.frames)["offset"].tolist()) for r in rows)
    inner_rows = [r for r in rows if r.pkts == 3]
    assert len(inner_rows) == 1  # the inner connection: one flow over the three frames
    inner_offsets = tuple(unpack_frames(inner_rows[0].frames)["offset"].tolist())
    outer = [r for r in rows if r.pkts == 1]
    assert len(outer) == 3 and sorted(o for r in outer for o in unpack_frames(r.frames)["offset"].tolist()) == list(
        inner_offsets
    )  # each outer datagram (its own flow: the source port differs) indexes the same frame
    assert by_offsets[inner_offsets] == 1
    packets = flow_packets(inner_rows, Endpoints("10.1.0.1", 40000, "10.1.0.2", 80))
    assert [(p.dir, p.flags, p.seq) for p in packets] == [("c2s", 0x02, 7)] * 3
    assert [p.retransmission for p in packets] == [False, True, True]  # the SYN twice more
    assert packets[0].frame == bytes(frames[0])


def _crafted(tmp_path: Path, steps: list[str]) -> list[Packet]:
    path = tmp_path / "conversation.pcap"
    wrpcap(str(path), conversation(steps))
    index = PacketIndexer(path)
    for _ in CaptureAnalyzer(path, index=index).run():
        pass
    return flow_packets(index.records(), HOP)


def _request(seq_in_flow: int, req: tuple[int, int], resp: tuple[int, int]) -> RequestRecord:
    return RequestRecord(seq_in_flow=seq_in_flow, req_tcp_seq=req[0], req_bytes=req[1], resp_tcp_seq=resp[0],
                         resp_bytes=resp[1])  # fmt: skip


KEEP_ALIVE = [">S", "<SA", ">A", ">PA:100", "<A", "<PA:300", ">A", ">PA:100", "<PA:200", ">A", ">FA", "<FA", ">A"]


def test_a_keep_alive_connections_requests_split_its_packets(tmp_path: Path) -> None:
    packets = _crafted(tmp_path, KEEP_ALIVE)
    first = exchange_packets(packets, _request(0, (1001, 100), (5001, 300)))
    second = exchange_packets(packets, _request(1, (1101, 100), (5301, 200)))
    assert [flags_text(p.flags) + ":" + str(p.len) for p in first] == [
        "S:0", "SA:0", "A:0", "PA:100", "A:0", "PA:300", "A:0",
    ]  # fmt: skip
    assert [flags_text(p.flags) + ":" + str(p.len) for p in second] == [
        "PA:100", "PA:200", "A:0", "FA:0", "FA:0", "A:0",
    ]  # fmt: skip
    assert sorted(map(id, first + second)) == sorted(map(id, packets))  # every packet, once


def test_a_request_answered_by_a_reset_gets_the_reset(tmp_path: Path) -> None:
    packets = _crafted(tmp_path, [">S", "<SA", ">A", ">PA:100", "<A", "<RA"])
    assert exchange_packets(packets, _request(0, (1001, 100), (0, 0))) == packets


def test_retransmitted_bytes_are_marked_and_belong_to_their_exchange(tmp_path: Path) -> None:
    packets = _crafted(tmp_path, [">S", "<SA", ">A", ">PA:100", ">PA!", "<PA:300", ">A", ">FA", "<FA", ">A"])
    marked = [(flags_text(p.flags), p.len, p.retransmission) for p in packets]
    assert marked[3:5] == [("PA", 100, False), ("PA", 100, True)]
    assert sum(p.retransmission for p in packets) == 1
    assert exchange_packets(packets, _request(0, (1001, 100), (5001, 300))) == packets  # one request: all


def test_the_exchanges_of_every_lab_connection_cover_its_packets_once() -> None:
    checked = 0
    for path in SAMPLES[:3]:
        got = read_point(str(path), path.stem)
        requests: list[RequestRecord] = [r for r in got.requests.records() if r.l7_proto == "http"]  # type: ignore[misc]
        by_flow: dict[int, list[RequestRecord]] = {}
        for r in requests:
            by_flow.setdefault(r.flow_id, []).append(r)
        rows: list[PacketIndex] = list(got.index.records())  # type: ignore[arg-type]
        for fid, reqs in by_flow.items():
            r0 = reqs[0]
            packets = flow_packets([r for r in rows if r.flow_id == fid], Endpoints(r0.orig_h, r0.orig_p, r0.resp_h,
                                                                                    r0.resp_p))  # fmt: skip
            covered = Counter(id(p) for r in reqs for p in exchange_packets(packets, r))
            assert sorted(covered) == sorted(map(id, packets)) and set(covered.values()) == {1}, (path.stem, fid)
            checked += 1
    assert checked >= 10


def test_pcapng_names_an_interface_per_point_and_keeps_every_frame(tmp_path: Path) -> None:
    a = _crafted(tmp_path, KEEP_ALIVE[:6])
    b = [p for p in a if p.dir == "s2c"]
    out = io.BytesIO()
    assert write_pcapng(out, [("pod/a", a), ("node:b", b)]) == len(a) + len(b)
    path = tmp_path / "out.pcapng"
    path.write_bytes(out.getvalue())
    reader = open_capture(path)
    blocks = list(reader.blocks())
    assert [(i.name, i.linktype, i.tsresol) for i in reader.interfaces] == [
        ("pod/a", LINKTYPE_ETHERNET, 10**9), ("node:b", LINKTYPE_ETHERNET, 10**9),
    ]  # fmt: skip
    got = [(int(blk.ts_ns[i]), int(blk.iface[i]), blk.frame(i)) for blk in blocks for i in range(blk.count)]
    expected = sorted([(p.ts_ns, 0, p.frame) for p in a] + [(p.ts_ns, 1, p.frame) for p in b])
    assert got == expected


@pytest.mark.parametrize(("flags", "text"), [(0x02, "S"), (0x12, "SA"), (0x18, "PA"), (0x11, "FA"), (0x04, "R"),
                                             (0x00, ""), (0xFF, "FSRPAUEC")])  # fmt: skip
def test_flag_letters(flags: int, text: str) -> None:
    assert flags_text(flags) == text
