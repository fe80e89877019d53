"""Flow meter behaviour beyond conn_state: Community ID, tunnels, capture points, emission rules,
the flows command, and the counters of damaged input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.l2 import CookedLinuxV2, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from hopscope.cli import main
from hopscope.probes.analyze import analyze_capture
from hopscope.probes.community_id import community_id, community_ids
from hopscope.probes.meter import MeterConfig
from hopscope.probes.meter_common import address_text
from hopscope.probes.packets import addr_halves, format_addr
from tests.probes.crafting import MAC_A, MAC_B, conversation

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("fixture", "seed"), [("community_id_seed0.json", 0), ("community_id_seed1.json", 1)])
def test_community_id_spec_vectors(fixture: str, seed: int) -> None:
    vectors = json.loads((DATA / fixture).read_text())
    assert len(vectors) == 23
    for v in vectors:
        got = community_id(v["proto"], v["saddr"], v["daddr"], v["sport"] or 0, v["dport"] or 0, seed)
        assert got == v["communityid"], v


def test_community_ids_column_wise_match_the_spec_vectors() -> None:
    """The batch form (packed column-wise, used at emission) gives the spec's IDs, both orders."""
    vectors = json.loads((DATA / "community_id_seed0.json").read_text())
    for swap in (False, True):
        ends = [(v["daddr"], v["saddr"]) if swap and v["proto"] in (6, 17) else (v["saddr"], v["daddr"])
                for v in vectors]  # fmt: skip
        ports = [(v["dport"] or 0, v["sport"] or 0) if swap and v["proto"] in (6, 17) else
                 (v["sport"] or 0, v["dport"] or 0) for v in vectors]  # fmt: skip
        src = np.array([addr_halves(s) for s, _ in ends], np.uint64)
        dst = np.array([addr_halves(d) for _, d in ends], np.uint64)
        got = community_ids(np.array([v["proto"] for v in vectors], np.int64), src[:, 0], src[:, 1], dst[:, 0],
                            dst[:, 1], np.array([p for p, _ in ports], np.int64),
                            np.array([p for _, p in ports], np.int64))  # fmt: skip
        assert got == [v["communityid"] for v in vectors]


def test_flow_community_id_is_the_tuples(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    wrpcap(str(path), conversation([">S", "<SA", ">A"]))
    (rec,) = analyze_capture(path).flows.records()
    assert rec.community_id == community_id(6, "10.0.0.1", "10.0.0.2", 40000, 80)  # type: ignore[attr-defined]


def _tunnelled(outer: object) -> list[object]:
    pkts = []
    for pkt in conversation([">S", "<SA", ">A", ">PA:20"]):
        inner = pkt[IP]
        wrapped = outer / inner  # type: ignore[operator]
        wrapped.time = pkt.time
        pkts.append(wrapped)
    return pkts


@pytest.mark.parametrize(
    ("outer", "tunnel"),
    [
        (Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=4789) / VXLAN(vni=9) / Ether(),
         "vxlan vni=9 192.0.2.1>192.0.2.2"),
        (Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2") / GRE(proto=0x0800),
         "gre 192.0.2.1>192.0.2.2"),
        (Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2"), "ipip 192.0.2.1>192.0.2.2"),
    ],
)  # fmt: skip
def test_tunnelled_traffic_yields_the_inner_flow(tmp_path: Path, outer: object, tunnel: str) -> None:
    path = tmp_path / "t.pcap"
    wrpcap(str(path), _tunnelled(outer))
    (rec,) = [r for r in analyze_capture(path).flows.records() if r.proto == 6]  # type: ignore[attr-defined]
    assert (rec.orig_h, rec.resp_p, rec.history, rec.tunnel) == ("10.0.0.1", 80, "ShAD", tunnel)  # type: ignore[attr-defined]
    assert rec.orig_ip_bytes == 40 + 40 + 60  # inner IP bytes  # type: ignore[attr-defined]


def test_sll2_any_capture_gives_one_flow_per_interface(tmp_path: Path) -> None:
    frames = []
    for pkt in conversation([">S", "<SA", ">A"]):
        for ifindex in (4, 7):
            frames.append(bytes(CookedLinuxV2(proto=0x0800, ifindex=ifindex) / pkt[IP]))
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 276)
    for n, frame in enumerate(frames):
        data += struct.pack("<IIII", 1_700_000_000, n, len(frame), len(frame)) + frame
    path = tmp_path / "node.pcap"
    path.write_bytes(data)
    result = analyze_capture(path, points={"if4": "nodeA-pre-nat"})
    points = sorted((r.point, r.conn_state, r.orig_pkts + r.resp_pkts) for r in result.flows.records())  # type: ignore[attr-defined]
    assert points == [("if7", "S1", 3), ("nodeA-pre-nat", "S1", 3)]
    assert len({r.syn_seq for r in result.flows.records()}) == 1  # type: ignore[attr-defined]


def test_interim_records_for_long_flows_and_idle_timeout(tmp_path: Path) -> None:
    pkts = conversation([">S", "<SA", ">A"] + [">PA:10", "<A"] * 10)
    for n, p in enumerate(pkts):  # the handshake within a millisecond, then packets 10 s apart
        p.time = 1_700_000_000 + max(n - 2, 0) * 10.0 + n * 0.001
    late = conversation([">S"])[0]
    late.time = pkts[-1].time + 1000  # long after: the first flow idles out
    late[TCP].sport = 50000
    path = tmp_path / "long.pcap"
    wrpcap(str(path), [*pkts, late])
    config = MeterConfig(interval_s=30.0, tcp_idle_timeout_s=300.0)
    records = list(analyze_capture(path, config=config).flows.records())
    interim = [r for r in records if not r.final]  # type: ignore[attr-defined]
    final = [r for r in records if r.final and r.orig_p == 40000]  # type: ignore[attr-defined]
    assert len(interim) >= 3 and all(r.close_type == "open" for r in interim)  # type: ignore[attr-defined]
    assert [r.orig_pkts for r in interim] == sorted(r.orig_pkts for r in interim)  # type: ignore[attr-defined]
    assert len(final) == 1 and final[0].close_type == "timeout"  # type: ignore[attr-defined]
    assert len({r.flow_id for r in interim + final}) == 1  # type: ignore[attr-defined]


def test_flow_table_limit_evicts_and_counts(tmp_path: Path) -> None:
    pkts = []
    for n in range(50):
        p = conversation([">S"])[0]
        p[TCP].sport = 20000 + n
        p.time = 1_700_000_000 + n * 0.001
        pkts.append(p)
    path = tmp_path / "many.pcap"
    wrpcap(str(path), pkts)
    result = analyze_capture(path, config=MeterConfig(max_flows=10))
    records = list(result.flows.records())
    assert len(records) == 50
    assert result.stats["evictions"] > 0
    assert sum(r.close_type == "evicted" for r in records) == result.stats["evictions"]  # type: ignore[attr-defined]


def test_bad_packets_counted_records_kept(tmp_path: Path) -> None:
    good = conversation([">S", "<SA", ">A"])
    frames = [bytes(good[0]), b"\x00" * 5, bytes(good[1])[:30], bytes(good[1]), bytes(good[2])]
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for n, frame in enumerate(frames):
        data += struct.pack("<IIII", 1_700_000_000, n, len(frame), len(frame)) + frame
    path = tmp_path / "bad.pcap"
    path.write_bytes(data + b"\x01\x02\x03")  # and a cut record header at the end
    result = analyze_capture(path)
    (rec,) = result.flows.records()
    assert (rec.conn_state, rec.orig_pkts + rec.resp_pkts) == ("S1", 3)  # type: ignore[attr-defined]
    assert result.stats["skip_truncated_link"] == 1 and result.stats["skip_truncated_ip"] == 1
    assert result.stats["truncated_tail_bytes"] == 3


def test_flows_command_jsonl_and_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.pcap"
    wrpcap(str(path), conversation([">S", "<SA", ">A", ">PA:5", "<PA:7", ">FA", "<FA", ">A"]))
    assert main(["flows", str(path), "--point", "edge-1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert list(row)[:9] == ["ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "proto", "service", "duration"]
    assert (row["proto"], row["conn_state"], row["history"], row["point"]) == ("tcp", "SF", "ShADdFf", "edge-1")
    assert (row["orig_bytes"], row["resp_bytes"], row["close_type"]) == (5, 7, "normal")
    assert main(["flows", str(path), "--format", "table"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[0] == "point" and "ShADdFf" in table[1]


@pytest.mark.parametrize("flows", [1, 3])
def test_flows_command_escapes_text_written_into_the_line_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flows: int
) -> None:
    """Columns equal in every record go into the line template: '%', quotes and backslashes survive."""
    path = tmp_path / "pct.pcap"
    packets = []
    for k in range(flows):
        for pkt in conversation([">S", "<SA", ">A"]):
            tcp = pkt[TCP]
            tcp.sport, tcp.dport = [40000 + k if port == 40000 else port for port in (tcp.sport, tcp.dport)]
            packets.append(pkt)
    wrpcap(str(path), packets)
    name = 'edge %d "1" \\ %%s'
    assert main(["flows", str(path), "--point", name, "--host", "h%s"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["point"], r["host"]) for r in rows] == [(name, "h%s")] * flows
    assert sorted(r["orig_p"] for r in rows) == [40000 + k for k in range(flows)]


def test_flows_command_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"not a capture at all")
    assert main(["flows", str(path)]) == 4
    assert "offset 0" in capsys.readouterr().err


def test_pcapng_any_interface_uses_the_sll2_ifindex(tmp_path: Path) -> None:
    def block(btype: int, body: bytes) -> bytes:
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += block(1, struct.pack("<HHI", 276, 0, 0) + struct.pack("<HH", 2, 3) + b"any\x00" + b"\x00" * 4)
    for n, pkt in enumerate(conversation([">S", "<SA", ">A"])):
        for ifindex in (2, 5):
            frame = bytes(CookedLinuxV2(proto=0x0800, ifindex=ifindex) / pkt[IP])
            pad = b"\x00" * (-len(frame) % 4)
            ts = 1_700_000_000_000_000 + n
            data += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame + pad)
    path = tmp_path / "any.pcapng"
    path.write_bytes(data)
    records = analyze_capture(path, points={"if5": "nodeA-post-nat"}).flows.records()
    got = sorted((r.point, r.iface, r.orig_pkts + r.resp_pkts) for r in records)  # type: ignore[attr-defined]
    assert got == [("if2", "if2", 3), ("nodeA-post-nat", "if5", 3)]


def test_packet_block_flow_ids_directions_and_payload_rows(tmp_path: Path) -> None:
    path = tmp_path / "l7.pcap"
    wrpcap(str(path), conversation([">S", "<SA", ">A", ">PA:11", "<PA:22", ">FA", "<FA", ">A"], client_isn=500))
    result = analyze_capture(path, keep_blocks=True)
    (rec,) = result.flows.records()
    (block,) = result.blocks
    assert set(block.flow_id.tolist()) == {rec.flow_id}  # type: ignore[attr-defined]
    assert [block.src_str(i) == "10.0.0.1" for i in range(block.count)] == block.from_orig.tolist()
    rows = block.payload_rows_by_flow()[rec.flow_id]  # type: ignore[attr-defined]
    assert [(bool(block.from_orig[i]), int(block.seq[i]), block.payload(i)) for i in rows] == [
        (True, 501, b"x" * 11),
        (False, 5001, b"x" * 22),
    ]


@pytest.mark.parametrize("texts", [
    ["10.0.0.1", "0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.1.20"],
    ["10.0.0.1", "::1", "fe80::1", "::ffff:0:1", "2001:db8::7", "10.0.0.1", "::"],
])  # fmt: skip
def test_record_addresses_match_format_addr(texts: list[str]) -> None:
    """Address text of records (``inet_ntop``'s form) equals the per-address formatting."""
    halves = [addr_halves(t) for t in texts]
    assert [address_text(h, lo) for h, lo in halves] == [format_addr(h, lo) for h, lo in halves]
