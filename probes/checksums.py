"""Checksum validation of decoded packets, as Zeek validates them (its ``ignore_checksums`` off).

``verify(block)`` runs after decoding, on the rows that decoded down to L4, and changes their status:

- an IPv4 header whose checksum does not verify: ``PacketStatus.BAD_IP_CHECKSUM``, the packet is
  dropped (Zeek's ``IPAnalyzer::AnalyzePacket``: weird ``bad_IP_checksum``, before the connection
  lookup);
- a TCP, UDP, ICMP or ICMPv6 checksum that does not verify: ``PacketStatus.BAD_L4_CHECKSUM``. The flow
  meter still finds or creates the packet's flow and adds ``C``/``c`` to its history; nothing else
  counts or parses the packet (``TCPAnalyzer::ValidateChecksum``, ``UDPAnalyzer::DeliverPacket``,
  ``ICMPAnalyzer::DeliverPacket``; Zeek 8.2's connection handling notes). A packet whose payload the
  snaplen cut is not checked (Zeek checks only what it has whole). UDP over IPv4 with a zero checksum
  (none sent) is not checked; over IPv6 a zero checksum is bad, except a VXLAN datagram to port 4789
  (``UDPAnalyzer::DeliverPacket``'s VXLAN rule);
- the inner packets of a UDP tunnel whose outer datagram failed: ``PacketStatus.OUTER_BAD_CHECKSUM``
  (Zeek does not decapsulate what it dropped).

Not checked: the outer headers of IP-in-IP and GRE (no row of their own) and the IP header of a
datagram reassembled from fragments (Zeek checks each fragment's header).

Locating the headers needs no decoder state: a UDP or ICMP header is the 8 bytes before the payload; a
TCP header is the one of 20 to 60 bytes before the payload whose data offset is its length and whose
ports and sequence number are the row's; the IPv4 header (``ip_len`` less the L4 length) lies before
it. The numpy code here is the reference; ``_decode.checksums`` (probes/csrc/decode.c) does the same
in C when the kernel is built (tests/probes/test_checksums.py compares them).

Checksum offload: a capture taken on the sending host (live, or a file written there) holds outgoing
packets whose checksums the NIC fills in later, so they fail. Zeek users turn validation off for such
captures (``-C``); hopscope validates capture files by default and not live captures.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final

import numpy as np
import numpy.typing as npt

from hopscope.probes.meter_common import outer_rows
from hopscope.probes.packets import ICMP, ICMP6, TCP, UDP, PacketBlock, PacketStatus

I64 = npt.NDArray[np.int64]
VXLAN_PORT: Final = 4789
_VXLAN_MIN: Final = 8 + 8 + 14  # UDP header, VXLAN header, inner Ethernet header


def verify(block: PacketBlock, kernel: ModuleType | None = None) -> tuple[int, int]:
    """Mark the rows of ``block`` whose checksums fail (module docstring); returns the number of bad
    IPv4 headers and of bad L4 checksums."""
    rows = np.flatnonzero(block.status == PacketStatus.OK)
    if not len(rows):
        return 0, 0
    if kernel is not None:
        code = np.zeros(block.count, np.uint8)
        cols = (block.status, block.ip_version, block.proto, block.src_hi, block.src_lo, block.dst_hi,
                block.dst_lo, block.sport, block.dport, block.seq, block.ip_len, block.payload_off,
                block.payload_len, block.payload_caplen)  # fmt: skip
        kernel.checksums(block.buf, block.count, cols, code)
        code = code[rows]
    else:
        code = _codes(block, rows)
    bad_ip, bad_l4 = rows[code == 1], rows[code == 2]
    block.status[bad_ip] = PacketStatus.BAD_IP_CHECKSUM
    block.status[bad_l4] = PacketStatus.BAD_L4_CHECKSUM
    if len(bad_ip) or len(bad_l4):
        _drop_inner(block, np.concatenate([bad_ip, bad_l4]))
    return len(bad_ip), len(bad_l4)


def _drop_inner(block: PacketBlock, bad: I64) -> None:
    """Inner packets whose outer datagram (or an outer one of that) failed: not decapsulated."""
    outer = outer_rows(block)
    failed = np.zeros(block.count, np.bool_)
    failed[bad] = True
    for i in np.flatnonzero(outer >= 0).tolist():  # ascending: an outer row comes before its inner rows
        if failed[outer[i]]:
            failed[i] = True
            if block.status[i] in (PacketStatus.OK, PacketStatus.BAD_L4_CHECKSUM, PacketStatus.BAD_IP_CHECKSUM):
                block.status[i] = PacketStatus.OUTER_BAD_CHECKSUM


def _codes(block: PacketBlock, rows: I64) -> npt.NDArray[np.uint8]:
    """Per row: 0 fine (or not checked), 1 bad IPv4 header, 2 bad L4 checksum (the numpy reference)."""
    buf = block.buf
    n = len(buf)
    code = np.zeros(len(rows), np.uint8)
    proto = block.proto[rows].astype(np.int64)
    pay = block.payload_off[rows].astype(np.int64)
    plen = block.payload_len[rows].astype(np.int64)
    l4 = np.full(len(rows), -1, np.int64)
    eight = (proto == UDP) | (proto == ICMP) | (proto == ICMP6)
    l4[eight] = pay[eight] - 8
    tcp = np.flatnonzero(proto == TCP)
    l4[tcp] = _tcp_header(block, rows[tcp], pay[tcp])
    end = pay + plen
    found = (l4 >= 0) & (end <= n)
    seg = np.where(found, end - l4, 0)
    # the IPv4 header, before the L4 header: ip_len less the L4 length
    v4 = found & (block.ip_version[rows] == 4)
    ihl = block.ip_len[rows].astype(np.int64) - seg
    l3 = l4 - ihl
    sane = v4 & (ihl >= 20) & (ihl <= 60) & (ihl % 4 == 0) & (l3 >= 0)
    sane[sane] &= buf[l3[sane]].astype(np.int64) == 0x40 | (ihl[sane] // 4)
    sums = _ones_sums(buf, l3, np.where(sane, ihl, 0))
    code[sane & (_fold(sums) != 0xFFFF)] = 1
    # L4: whole payloads only
    whole = found & (code == 0) & (block.payload_caplen[rows] >= block.payload_len[rows])
    whole &= (proto == TCP) | (proto == UDP) | (proto == ICMP) | (proto == ICMP6)
    is_v6 = block.ip_version[rows] == 6
    if whole.any():
        udp_sum = np.zeros(len(rows), np.int64)
        has = np.flatnonzero(whole & (proto == UDP))
        udp_sum[has] = (buf[l4[has] + 6].astype(np.int64) << 8) | buf[l4[has] + 7]
        zero = whole & (proto == UDP) & (udp_sum == 0)
        vxlan = zero & (block.dport[rows] == VXLAN_PORT) & (seg > _VXLAN_MIN)
        vxlan[vxlan] &= (buf[np.minimum(pay[vxlan], n - 1)] & 0x08) != 0
        whole &= ~(zero & (~is_v6 | vxlan))  # IPv4: no checksum sent; VXLAN: a zero one accepted
        sums = _ones_sums(buf, l4, np.where(whole, seg, 0))
        sums += np.where(proto == ICMP, 0, _pseudo(block, rows, proto, seg))
        code[whole & (_fold(sums) != 0xFFFF)] = 2
    return code


def _tcp_header(block: PacketBlock, rows: I64, pay: I64) -> I64:
    """Where each TCP header starts: 20 to 60 bytes before the payload, its data offset its length, its
    ports and sequence number the row's (-1: not found)."""
    buf = block.buf
    out = np.full(len(rows), -1, np.int64)
    sport, dport = block.sport[rows].astype(np.int64), block.dport[rows].astype(np.int64)
    seq = block.seq[rows].astype(np.int64)
    words = np.ndarray((max(len(buf) - 3, 0),), ">u4", buffer=buf, strides=(1,))
    for h in range(20, 64, 4):
        at = pay - h
        ok = (out < 0) & (at >= 0) & (at + 16 <= len(buf))
        idx = np.flatnonzero(ok)
        a = at[idx]
        match = (buf[a + 12] >> 4).astype(np.int64) == h // 4
        match &= words[a].astype(np.int64) == (sport[idx] << 16 | dport[idx])
        match &= words[a + 4].astype(np.int64) == seq[idx]
        out[idx[match]] = a[match]
    return out


def _ones_sums(buf: npt.NDArray[np.uint8], start: I64, length: I64) -> I64:
    """Per range: the sum of its big-endian 16-bit words (a last odd byte as the high byte), unfolded."""
    out = np.zeros(len(start), np.int64)
    some = np.flatnonzero(length > 0)
    if not len(some):
        return out
    s, m = start[some], length[some]
    words = np.zeros(len(buf) + 1, np.int64)
    words[:-1] = buf.astype(np.int64) << 8
    words[:-2] |= buf[1:]
    even, odd = np.zeros(len(words) // 2 + 2, np.int64), np.zeros(len(words) // 2 + 2, np.int64)
    even[1 : 1 + len(words[0::2])] = np.cumsum(words[0::2])
    odd[1 : 1 + len(words[1::2])] = np.cumsum(words[1::2])
    pairs = m // 2
    first = s // 2
    total = np.where(s % 2 == 0, even[first + pairs] - even[first], odd[first + pairs] - odd[first])
    last = np.flatnonzero(m % 2 == 1)
    total[last] += buf[s[last] + m[last] - 1].astype(np.int64) << 8
    out[some] = total
    return out


def _pseudo(block: PacketBlock, rows: I64, proto: I64, seg: I64) -> I64:
    """The pseudo-header sum: addresses, protocol and L4 length (IPv6: 32-bit length)."""
    total = proto + (seg >> 16) + (seg & 0xFFFF)
    for col in (block.src_hi, block.src_lo, block.dst_hi, block.dst_lo):
        v = col[rows].astype(np.uint64)
        for shift in (48, 32, 16, 0):
            total += ((v >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64)
    # an IPv4-mapped address adds 0xffff over what the IPv4 pseudo header holds: take it out
    v4 = block.ip_version[rows] == 4
    out: I64 = total - np.where(v4, 2 * 0xFFFF, 0)
    return out


def _fold(sums: I64) -> I64:
    for _ in range(4):
        sums = (sums & 0xFFFF) + (sums >> 16)
    return sums
