"""DNS decoding and query/response pairing, on messages built with scapy (and checked with dnspython)."""

from __future__ import annotations

import dns.message
import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP

from hopscope.probes.l7.dns import DnsDecodeError, parse_dns
from tests.probes.l7.tcpstreams import MS, T0_NS, TcpConversation, feed, tracker

CLIENT = ("10.1.0.2", 53001)
RESOLVER = ("10.0.0.53", 53)


def query(qname: str, qtype: str = "A", dns_id: int = 0x1234) -> DNS:
    return DNS(id=dns_id, rd=1, qd=DNSQR(qname=qname, qtype=qtype))


def answer(q: DNS, rrs: list[DNSRR], rcode: int = 0) -> DNS:
    return DNS(id=q.id, qr=1, rd=1, ra=1, rcode=rcode, qd=q.qd, an=rrs)


def udp(src: tuple[str, int], dst: tuple[str, int], msg: DNS) -> IP:
    return IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / msg


CNAME_CHAIN = [
    DNSRR(rrname="www.example.com", type="CNAME", rdata="edge.example.net"),
    DNSRR(rrname="edge.example.net", type="A", rdata="93.184.216.34"),
    DNSRR(rrname="edge.example.net", type="A", rdata="93.184.216.35"),
]


@pytest.mark.parametrize(
    ("qname", "qtype", "rrs", "rcode", "answers"),
    [
        ("svc.ns.svc.cluster.local", "A", [DNSRR(rrname="svc.ns.svc.cluster.local", rdata="10.96.0.10")], 0,
         "10.96.0.10"),
        ("v6.example.org", "AAAA", [DNSRR(rrname="v6.example.org", type="AAAA", rdata="2001:db8::1")], 0,
         "2001:db8::1"),
        ("www.example.com", "A", CNAME_CHAIN, 0, "edge.example.net,93.184.216.34,93.184.216.35"),
        ("nope.example.com", "A", [], 3, ""),
    ],
)  # fmt: skip
def test_udp_query_response_pairs(qname: str, qtype: str, rrs: list[DNSRR], rcode: int, answers: str) -> None:
    q = query(qname, qtype)
    trk = tracker()
    packets = [(T0_NS, udp(CLIENT, RESOLVER, q)), (T0_NS + 3 * MS, udp(RESOLVER, CLIENT, answer(q, rrs, rcode)))]
    feed(trk, packets, flow_id=9)
    (r,) = trk.take_records()
    assert (r.l7_proto, r.proto, r.dns_id, r.dns_qname, r.dns_rcode, r.dns_answers) == (
        "dns", 17, 0x1234, qname, rcode, answers,
    )  # fmt: skip
    assert r.dns_qtype == {"A": 1, "AAAA": 28}[qtype]
    assert (r.req_first_ns, r.resp_first_ns, r.resp_last_ns) == (T0_NS, T0_NS + 3 * MS, T0_NS + 3 * MS)
    assert (r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.flow_id) == (*CLIENT, *RESOLVER, 9)
    assert r.req_bytes == len(bytes(q))


def test_compressed_names_agree_with_dnspython() -> None:
    q = query("www.example.com")
    wire = bytes(answer(q, CNAME_CHAIN))
    ours = parse_dns(wire)
    theirs = dns.message.from_wire(wire)
    assert ours.qname == str(theirs.question[0].name).rstrip(".")
    expected = [str(rd).rstrip(".") for rrset in theirs.answer for rd in rrset]
    assert sorted(ours.answers) == sorted(expected)


def test_query_without_response_and_retransmitted_query() -> None:
    q = query("slow.example.com", dns_id=7)
    trk = tracker()
    feed(trk, [(T0_NS, udp(CLIENT, RESOLVER, q)), (T0_NS + 1000 * MS, udp(CLIENT, RESOLVER, q))], flow_id=3)
    trk.expire(T0_NS + 2000 * MS)
    assert trk.take_records() == []
    trk.expire(T0_NS + 6000 * MS)
    (r,) = trk.take_records()
    assert (r.dns_qname, r.resp_first_ns, r.req_retrans, r.dns_rcode) == ("slow.example.com", 0, 1, 0)


def test_same_id_on_different_flows_is_not_confused() -> None:
    trk = tracker()
    q1, q2 = query("one.example", dns_id=5), query("two.example", dns_id=5)
    other = ("10.1.0.3", 53002)
    feed(trk, [(T0_NS, udp(CLIENT, RESOLVER, q1))], flow_id=1)
    feed(trk, [(T0_NS + 1, udp(other, RESOLVER, q2))], flow_id=2)
    rr2 = [DNSRR(rrname="two.example", rdata="10.0.0.2")]
    feed(trk, [(T0_NS + 2, udp(RESOLVER, other, answer(q2, rr2)))], flow_id=2)
    (r,) = trk.take_records()
    assert (r.dns_qname, r.dns_answers, r.flow_id) == ("two.example", "10.0.0.2", 2)


def test_orphan_response_and_garbage_are_counted() -> None:
    trk = tracker()
    q = query("x.example")
    feed(trk, [(T0_NS, udp(RESOLVER, CLIENT, answer(q, [])))], flow_id=4)
    trk.udp_datagram(4, T0_NS, b"\x00\x01junk", RESOLVER, CLIENT)
    assert trk.take_records() == []
    assert (trk.stats.dns_orphan_responses, trk.stats.dns_decode_errors) == (1, 1)


def test_dns_over_tcp_with_length_prefix_and_split_segments() -> None:
    conv = TcpConversation(client=("10.1.0.2", 41000), server=("10.0.0.53", 53)).handshake()
    q = bytes(query("tcp.example", dns_id=77))
    a = bytes(answer(query("tcp.example", dns_id=77), [DNSRR(rrname="tcp.example", rdata="192.0.2.1")]))
    framed_q = len(q).to_bytes(2, "big") + q
    framed_a = len(a).to_bytes(2, "big") + a
    conv.request(framed_q, cuts=[1, 5])
    conv.response(framed_a, cuts=[2])
    trk = tracker()
    feed(trk, conv.packets)
    (r,) = trk.take_records()
    assert (r.proto, r.dns_qname, r.dns_answers, r.dns_id) == (6, "tcp.example", "192.0.2.1", 77)
    assert r.req_tcp_seq == conv.isn_client + 1
    assert r.resp_tcp_seq == conv.isn_server + 1
    assert (r.syn_seq, r.synack_seq) == (conv.isn_client, conv.isn_server)
    assert (r.req_bytes, r.resp_bytes) == (len(framed_q), len(framed_a))


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00" * 11,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc",  # label runs past the end
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        b"\x12\x34\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x01",
    ],
)
def test_malformed_messages_raise_decode_error(wire: bytes) -> None:
    with pytest.raises(DnsDecodeError):
        parse_dns(wire)
