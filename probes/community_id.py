"""Community ID v1 flow hashing (https://github.com/corelight/community-id-spec).

``community_id(proto, src, dst, sport, dport, seed=0)`` takes text or packed addresses; ICMP and ICMPv6
"ports" are the message type and code, mapped as the spec does (request and reply types share one ID;
types without a counterpart are one-way and never reordered).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from typing import Final

from hopscope.probes.packets import ICMP, ICMP6, TCP, UDP

SCTP: Final = 132
PORT_PROTOS: Final = frozenset((TCP, UDP, SCTP, ICMP, ICMP6))

#: ICMP type -> the type of its counterpart (echo <-> echo reply, ...): two-way message pairs.
ICMP4_PAIRS: Final[dict[int, int]] = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_PAIRS: Final[dict[int, int]] = {
    128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133,
    135: 136, 136: 135, 139: 140, 140: 139, 144: 145, 145: 144,
}  # fmt: skip


def icmp_ports(proto: int, icmp_type: int, code: int) -> tuple[int, int, bool]:
    """The (sport, dport, one_way) the spec uses for an ICMP/ICMPv6 message."""
    pairs = ICMP4_PAIRS if proto == ICMP else ICMP6_PAIRS
    if icmp_type in pairs:
        return icmp_type, pairs[icmp_type], False
    return icmp_type, code, True


def community_id(proto: int, src: str | bytes, dst: str | bytes, sport: int = 0, dport: int = 0, seed: int = 0) -> str:
    """Community ID v1 ("1:" + base64 SHA-1) of one flow tuple."""
    saddr = src if isinstance(src, bytes) else ipaddress.ip_address(src).packed
    daddr = dst if isinstance(dst, bytes) else ipaddress.ip_address(dst).packed
    one_way = False
    if proto in (ICMP, ICMP6):
        sport, dport, one_way = icmp_ports(proto, sport, dport)
    if not one_way and (saddr > daddr or (saddr == daddr and sport > dport)):
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
    data = struct.pack("!H", seed) + saddr + daddr + struct.pack("!BB", proto, 0)
    if proto in PORT_PROTOS:
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()
