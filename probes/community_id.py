"""Community ID v1 flow hashing (https://github.com/corelight/community-id-spec).

``community_id(proto, src, dst, sport, dport, seed=0)`` takes text or packed addresses; ICMP and ICMPv6
"ports" are the message type and code, mapped as the spec does (request and reply types share one ID;
types without a counterpart are one-way and never reordered).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from hopscope.probes.packets import ICMP, ICMP6, TCP, UDP, packed_addr

U64 = npt.NDArray[np.uint64]

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
    import hashlib  # imported where used: the compiled meter hashes in C (ids.h), hashlib is 4 ms of start-up

    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


_V4: Final = np.dtype([("seed", ">u2"), ("src", ">u4"), ("dst", ">u4"), ("proto", "u1"), ("pad", "u1"),
                       ("sport", ">u2"), ("dport", ">u2")])  # fmt: skip
_V6: Final = np.dtype([("seed", ">u2"), ("src_hi", ">u8"), ("src_lo", ">u8"), ("dst_hi", ">u8"), ("dst_lo", ">u8"),
                       ("proto", "u1"), ("pad", "u1"), ("sport", ">u2"), ("dport", ">u2")])  # fmt: skip


def community_ids(
    proto: npt.NDArray[np.int64], src_hi: U64, src_lo: U64, dst_hi: U64, dst_lo: U64,
    sport: npt.NDArray[np.int64], dport: npt.NDArray[np.int64],
) -> list[str]:  # fmt: skip
    """``community_id`` of many tuples (addresses as ``packets`` halves, IPv4-mapped for IPv4), seed 0.

    TCP and UDP tuples of one address family are packed column-wise (one SHA-1 call per tuple left);
    ICMP, other protocols and mixed families go through ``community_id``.
    """
    n = len(proto)
    out = [""] * n
    src4, dst4 = _is_v4(src_hi, src_lo), _is_v4(dst_hi, dst_lo)
    v4, v6 = src4 & dst4, ~src4 & ~dst4
    ported = (proto == TCP) | (proto == UDP)
    for family, dtype in ((v4, _V4), (v6, _V6)):
        rows = np.flatnonzero(family & ported)
        if len(rows) == 0:
            continue
        sh, sl, dh, dl = src_hi[rows], src_lo[rows], dst_hi[rows], dst_lo[rows]
        sp, dp = sport[rows], dport[rows]
        swap = (sh > dh) | ((sh == dh) & ((sl > dl) | ((sl == dl) & (sp > dp))))
        rec = np.zeros(len(rows), dtype)
        rec["proto"] = proto[rows]
        rec["sport"], rec["dport"] = np.where(swap, dp, sp), np.where(swap, sp, dp)
        if dtype is _V4:
            mask = np.uint64(0xFFFFFFFF)
            rec["src"], rec["dst"] = np.where(swap, dl, sl) & mask, np.where(swap, sl, dl) & mask
        else:
            rec["src_hi"], rec["src_lo"] = np.where(swap, dh, sh), np.where(swap, dl, sl)
            rec["dst_hi"], rec["dst_lo"] = np.where(swap, sh, dh), np.where(swap, sl, dl)
        raw, size = memoryview(rec.tobytes()), dtype.itemsize
        import hashlib  # imported where used (see community_id)

        sha1, b64 = hashlib.sha1, binascii.b2a_base64
        texts = ["1:" + b64(sha1(raw[k : k + size]).digest(), newline=False).decode()
                 for k in range(0, len(rows) * size, size)]  # fmt: skip
        for r, text in zip(rows.tolist(), texts, strict=True):
            out[r] = text
    rest = np.flatnonzero(~((v4 | v6) & ported)).tolist()
    for r in rest:
        out[r] = community_id(int(proto[r]), packed_addr(int(src_hi[r]), int(src_lo[r])),
                              packed_addr(int(dst_hi[r]), int(dst_lo[r])), int(sport[r]), int(dport[r]))  # fmt: skip
    return out


def _is_v4(hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
    """IPv4-mapped halves (``packets.packed_addr`` gives 4 bytes for them)."""
    mapped: npt.NDArray[np.bool_] = (hi == 0) & ((lo >> np.uint64(32)) == 0xFFFF)
    return mapped
