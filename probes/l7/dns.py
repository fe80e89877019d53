"""DNS messages (RFC 1035): a small struct-based decoder, and the TCP length-prefix framing.

Why our own decoder: we need the id, flags, first question and the A/AAAA/CNAME answers, nothing else;
``bench/l7_speed.py`` measures it against dpkt and dnspython on the same messages (ours is several
times faster than dnspython and faster than dpkt, which decodes every record into objects). Compression
pointers are followed with a hop limit, so a malicious message cannot loop.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

from hopscope.probes import kernels
from hopscope.probes.l7.reassembly import DATA, FIN, GAP, Event

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QUESTION_FIXED = struct.Struct("!HH")

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
MAX_POINTER_HOPS: Final = 32
MAX_NAME_BYTES: Final = 255
MAX_ANSWERS: Final = 64


#: The compiled decoder (probes/csrc/l7.c), or None: ``parse_dns_reference`` then runs.
_L7 = kernels.load("_l7")


class DnsDecodeError(ValueError):
    """The bytes are not a DNS message we can read (truncated, bad name, pointer loop)."""


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """The parts of one DNS message hopscope records."""

    dns_id: int  # transaction id
    is_response: bool  # QR bit
    opcode: int
    rcode: int  # response code (0 NOERROR, 3 NXDOMAIN, ...)
    qname: str  # first question's name, lower case, no trailing dot ('' if no question)
    qtype: int  # first question's type (0 if no question)
    answers: tuple[str, ...]  # A and AAAA addresses, CNAME targets, in message order


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Read a (possibly compressed) name at ``pos``; return it and the offset after it in place."""
    labels: list[str] = []
    end = -1
    hops = 0
    total = 0
    while True:
        if pos >= len(data):
            raise DnsDecodeError(f"name runs past the message end at {pos}")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DnsDecodeError("truncated compression pointer")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise DnsDecodeError("compression pointer loop")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise DnsDecodeError(f"unsupported label type {length:#x}")
        label = data[pos + 1 : pos + 1 + length]
        if len(label) != length:
            raise DnsDecodeError("truncated label")
        total += length + 1
        if total > MAX_NAME_BYTES:
            raise DnsDecodeError("name longer than 255 bytes")
        labels.append(label.decode("ascii", "backslashreplace").lower())
        pos += 1 + length
    return ".".join(labels), (end if end >= 0 else pos)


def parse_dns(data: bytes) -> DnsMessage:
    """Decode the header, the first question and the A/AAAA/CNAME answers of one message.

    The ``_l7`` kernel (probes/csrc/l7.c) decodes when it is built and on; ``parse_dns_reference`` is
    its twin (tests/probes/l7/test_l7_native.py). Either raises ``DnsDecodeError`` with the same text.
    """
    if _L7 is None:
        return parse_dns_reference(data)
    got = _L7.parse_dns(data)
    if isinstance(got, str):
        raise DnsDecodeError(got)
    dns_id, is_response, opcode, rcode, qname, qtype, answers = got
    return DnsMessage(dns_id, is_response, opcode, rcode, qname, qtype, answers)


def parse_dns_reference(data: bytes) -> DnsMessage:
    """``parse_dns`` in Python: the reference the kernel follows."""
    if len(data) < _HEADER.size:
        raise DnsDecodeError(f"DNS message of {len(data)} bytes, header needs 12")
    dns_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    pos = _HEADER.size
    qname, qtype = "", 0
    for i in range(qdcount):
        name, pos = read_name(data, pos)
        if pos + 4 > len(data):
            raise DnsDecodeError("truncated question")
        if i == 0:
            qname, qtype = name, _QUESTION_FIXED.unpack_from(data, pos)[0]
        pos += 4
    answers: list[str] = []
    for _ in range(min(ancount, MAX_ANSWERS)):
        answer, pos = _read_answer(data, pos)
        if answer:
            answers.append(answer)
    return DnsMessage(
        dns_id=dns_id,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        qname=qname,
        qtype=qtype,
        answers=tuple(answers),
    )


def _read_answer(data: bytes, pos: int) -> tuple[str, int]:
    _, pos = read_name(data, pos)
    if pos + _RR_FIXED.size > len(data):
        raise DnsDecodeError("truncated resource record")
    rtype, _, _, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += _RR_FIXED.size
    rdata = data[pos : pos + rdlength]
    if len(rdata) != rdlength:
        raise DnsDecodeError("truncated rdata")
    answer = ""
    if rtype == TYPE_A and rdlength == 4:
        answer = socket.inet_ntop(socket.AF_INET, rdata)
    elif rtype == TYPE_AAAA and rdlength == 16:
        answer = socket.inet_ntop(socket.AF_INET6, rdata)
    elif rtype == TYPE_CNAME:
        answer = read_name(data, pos)[0]
    return answer, pos + rdlength


class DnsTcpFramer:
    """Splits one direction of DNS over TCP (RFC 7766: 2-byte length prefix) into messages.

    Yields ``(start_offset, first_ns, last_ns, message)``; a gap drops the buffered partial message and
    everything after it on that stream (length prefixes cannot be found again reliably).
    """

    __slots__ = ("_buf", "_buf_offset", "_first_ns", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._buf_offset = 0
        self._first_ns = 0
        self.broken = False

    def feed(self, events: list[Event]) -> list[tuple[int, int, int, bytes]]:
        out: list[tuple[int, int, int, bytes]] = []
        for kind, offset, ts_ns, value in events:
            if kind in (GAP, FIN):
                self.broken = self.broken or kind == GAP
                self._buf.clear()
                continue
            if kind != DATA or self.broken or not isinstance(value, bytes):
                continue
            if not self._buf:
                self._buf_offset, self._first_ns = offset, ts_ns
            self._buf += value
            self._split(ts_ns, out)
        return out

    def _split(self, ts_ns: int, out: list[tuple[int, int, int, bytes]]) -> None:
        buf = self._buf
        while len(buf) >= 2:
            length = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + length:
                return
            out.append((self._buf_offset, self._first_ns, ts_ns, bytes(buf[2 : 2 + length])))
            del buf[: 2 + length]
            self._buf_offset += 2 + length
            self._first_ns = ts_ns
