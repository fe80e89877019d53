"""conn_state, history and close_type of hand-checked TCP/UDP cases (scapy-crafted, real bytes).

Each expected value was derived by hand from Zeek's TCP endpoint state machine and main.zeek's
conn_state function (see hopscope.probes.tcpstate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.probes.crafting import conversation, meter, udp_packets

CASES = [
    # name, steps, conn_state, history, close_type
    ("attempt", [">S"], "S0", "S", "server_syn_miss"),
    ("attempt-retried", [">S", ">S!", ">S!"], "S0", "S", "server_syn_miss"),
    ("rejected", [">S", "<RA"], "REJ", "Sr", "server_rst"),
    ("established", [">S", "<SA", ">A"], "S1", "ShA", "unfinished"),
    ("ack-missing", [">S", "<SA"], "S1", "Sh", "client_ack_miss"),
    ("normal", [">S", "<SA", ">A", ">PA:100", "<A", "<PA:500", ">A", ">FA", "<FA", ">A"], "SF", "ShADadFf", "normal"),
    ("server-closes-first", [">S", "<SA", ">A", ">PA:10", "<PA:20", "<FA", ">FA", "<A"], "SF", "ShADdfFa", "normal"),
    ("orig-abort", [">S", "<SA", ">A", ">PA:10", ">R"], "RSTO", "ShADR", "client_rst"),
    ("resp-abort", [">S", "<SA", ">A", ">PA:10", "<R"], "RSTR", "ShADr", "server_rst"),
    ("syn-then-orig-rst", [">S", ">R"], "RSTOS0", "SR", "client_rst"),
    ("synack-then-rst", ["<SA", "<R"], "RSTRH", "^hr", "server_rst"),
    ("syn-then-fin", [">S", ">F"], "SH", "SF", "half_close"),
    ("synack-then-fin", ["<SA", "<F"], "SHR", "^hf", "half_close"),
    ("orig-fin-only", [">S", "<SA", ">A", ">FA"], "S2", "ShAF", "half_close"),
    ("resp-fin-only", [">S", "<SA", ">A", "<FA"], "S3", "ShAf", "half_close"),
    ("midstream", [">PA:10", "<PA:10"], "OTH", "Dd", "unfinished"),
    ("midstream-acks", [">A", "<A"], "OTH", "Aa", "unfinished"),
    ("midstream-server-first", ["<PA:10", ">PA:10"], "OTH", "^dD", "unfinished"),
    ("synack-first-then-ack", ["<SA", ">A", ">PA:5", "<FA", ">FA"], "SF", "^hADfF", "normal"),
    ("retransmission", [">S", "<SA", ">A", ">PA:100", ">PA!", "<A"], "S1", "ShADTa", "unfinished"),
    ("fin-rst", [">S", "<SA", ">A", ">FA", "<RA"], "RSTR", "ShAFr", "server_rst"),
    ("rst-after-fins", [">S", "<SA", ">A", ">FA", "<FA", ">RA"], "SF", "ShAFfR", "normal"),
]


@pytest.mark.parametrize(("name", "steps", "state", "history", "close"), CASES, ids=[c[0] for c in CASES])
def test_tcp_conn_state_and_history(
    tmp_path: Path, name: str, steps: list[str], state: str, history: str, close: str
) -> None:
    records = meter(tmp_path, conversation(steps))
    assert len(records) == 1, [(r.conn_state, r.history) for r in records]
    rec = records[0]
    assert (rec.conn_state, rec.history, rec.close_type) == (state, history, close)
    assert rec.orig_pkts + rec.resp_pkts == len(steps)


def test_originator_is_the_syn_sender_even_when_the_synack_comes_first(tmp_path: Path) -> None:
    rec = meter(tmp_path, conversation(["<SA", ">A"]))[0]
    assert (rec.orig_h, rec.orig_p, rec.resp_h, rec.resp_p) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (rec.orig_pkts, rec.resp_pkts) == (1, 1)


def test_handshake_anchors_and_rtt(tmp_path: Path) -> None:
    rec = meter(tmp_path, conversation([">S", "<SA", ">A", ">PA:10"], client_isn=777, server_isn=999))[0]
    assert (rec.syn_seq, rec.synack_seq) == (777, 999)
    assert rec.rtt_server_us == 1000 and rec.rtt_client_us == 1000  # packets are 1 ms apart
    assert rec.orig_bytes == 10 and rec.resp_bytes == 0
    assert rec.orig_ip_bytes == 40 + 40 + 50 and rec.resp_ip_bytes == 40
    assert rec.orig_payload_hash != 0 and rec.resp_payload_hash == 0


def test_retransmission_and_out_of_order_counts(tmp_path: Path) -> None:
    steps = [">S", "<SA", ">A", "<PA:100", "<PA!", "<PA!", ">A"]
    rec = meter(tmp_path, conversation(steps))[0]
    assert (rec.resp_retrans_pkts, rec.orig_retrans_pkts) == (2, 0)
    pkts = conversation([">S", "<SA", ">A", "<PA:100", "<PA:100", ">A"])
    pkts[3], pkts[4] = pkts[4], pkts[3]  # the second segment overtakes the first
    pkts[3].time, pkts[4].time = pkts[4].time, pkts[3].time
    rec = meter(tmp_path, pkts, "ooo.pcap")[0]
    assert rec.resp_ooo_pkts == 1 and rec.resp_retrans_pkts == 1  # the late one re-covers known space


def test_zero_window_counted_and_in_history(tmp_path: Path) -> None:
    pkts = conversation([">S", "<SA", ">A", "<PA:10", ">A"])
    pkts[4]["TCP"].window = 0
    rec = meter(tmp_path, pkts)[0]
    assert rec.orig_zero_win == 1 and "W" in rec.history


def test_reused_tuple_starts_a_new_flow(tmp_path: Path) -> None:
    first = conversation([">S", "<SA", ">A", ">FA", "<FA", ">A"], client_isn=100)
    second = conversation([">S", "<SA", ">A"], client_isn=90000)
    for p in second:
        p.time += 0.5
    records = sorted(meter(tmp_path, first + second), key=lambda r: r.start_ns)
    assert [(r.conn_state, r.orig_pkts + r.resp_pkts, r.syn_seq) for r in records] == [
        ("SF", 6, 100), ("S1", 3, 90000),
    ]  # fmt: skip
    assert records[0].flow_id != records[1].flow_id


@pytest.mark.parametrize(
    ("orig", "resp", "state", "history"), [(2, 3, "SF", "Dd"), (3, 0, "S0", "D"), (0, 2, "SHR", "^d")]
)
def test_udp_conn_state(tmp_path: Path, orig: int, resp: int, state: str, history: str) -> None:
    rec = meter(tmp_path, udp_packets(orig, resp))[0]
    assert (rec.conn_state, rec.history, rec.orig_pkts, rec.resp_pkts) == (state, history, orig, resp)
    assert (rec.orig_h, rec.orig_p, rec.resp_p) == ("10.0.0.1", 40053, 53)  # the DNS server is the responder
    assert rec.orig_bytes == orig and rec.resp_bytes == 3 * resp
