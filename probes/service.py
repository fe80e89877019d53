"""Zeek's ``service`` of a flow: the protocols its content shows, found from payload bytes, never ports.

A packet confirms a service when its L4 payload starts with that protocol's message start:

=======  =====  ==========================================================================================
service  proto  the payload starts with
=======  =====  ==========================================================================================
http     TCP    an HTTP/1.x request line start: ``GET /``, ``POST /``, ``PUT /``, ``DELETE /``, ``HEAD /``,
                ``PATCH /``, ``TRACE /``, ``OPTIONS /`` or ``OPTIONS *``, ``CONNECT`` and an authority; or
                a status line start: ``HTTP/1.0`` or ``HTTP/1.1``, a space, three digits and a space, tab
                or line end (the start lines the L7 HTTP parser reads, probes/l7/http.py)
http2    TCP    the cleartext HTTP/2 connection preface, ``PRI * HTTP/2.0\\r\\n``
ssl      TCP    a TLS handshake record (type 22, version 3.x) holding a ClientHello or ServerHello of
                version 3.x (Zeek's ``dpd_tls_client``/``dpd_tls_server`` signatures)
ssh      TCP    an SSH banner, ``SSH-2.`` or ``SSH-1.`` (Zeek's ``dpd_ssh_*``; ``SSH-1.99`` is SSH 2)
dns      UDP    a DNS header (one to 16 questions, opcode QUERY, NOTIFY or UPDATE, the reserved Z bit
         TCP    clear) whose first question parses: labels of 1..63 bytes, a name of at most 255,
                a non-zero type and class IN, CH, HS, NONE or ANY; on TCP after the 2-byte length
                prefix (RFC 7766), which must hold the question
=======  =====  ==========================================================================================

Names are Zeek's analyzer names (``ssl`` covers TLS). A flow's ``service`` lists every service any of
its packets confirmed, in the order they were first seen, comma-separated ("http", "http,ssl" for TLS
in a CONNECT tunnel). Zeek looks only at the start of each direction's stream; this stage checks the
start of every packet's payload, which is what makes it cheap (no per-flow stream state) and finds a
protocol started later on the connection too (CONNECT, STARTTLS). Not found: a message start split
across segments (a request line cut after one byte), absolute-form proxy requests (``GET http://``;
their responses still confirm http), DNS messages without a question (mDNS announcements).

The flow meter names the tunnel on the outer flow of a UDP tunnel (``vxlan``, ``geneve``, ...: Zeek
confirms the tunnel's packet analyzer there); ``fill`` puts content services after it.

``ServiceDetector`` runs beside the flow meter, which stays a pure L4 stage: ``observe(block)`` checks a
metered block and remembers the services per ``flow_id``; ``fill(batch)`` writes them into the
``service`` column of the FlowRecords the meter emitted for that block and forgets a flow at its final
record. The check is one C pass over the rows with payload when the ``_meter`` kernel is built
(``service_hits`` in probes/csrc/meter.c: the first two payload bytes select a signature, prefetched a
few rows ahead); ``block_hits_reference`` is its numpy twin and specification (the first 8 payload bytes
of every packet, then fixed-offset compares on the few whose first two bytes can start a signature, or
whose header could be DNS). Packets whose checksum failed confirm nothing (Zeek does not pass them to
its analyzers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hopscope.probes import kernels
from hopscope.probes.packets import TCP, UDP, PacketBlock, PacketStatus
from hopscope.records import Batch

#: Service names by code (code 0: none).
SERVICE_NAMES: Final = ("", "http", "http2", "ssl", "ssh", "dns")
HTTP, HTTP2, SSL, SSH, DNS = 1, 2, 3, 4, 5

#: Flows remembered with a service at once (their final record not yet emitted); the oldest go first.
DEFAULT_MAX_FLOWS: Final = 1 << 20

_ANY = -1  # a pattern position that matches any byte


@dataclass(frozen=True, slots=True)
class Signature:
    """A TCP payload start: ``pattern`` bytes (``_ANY`` or a partial ``masks`` entry relaxes one), and
    at most one position whose byte must be one of ``choice``. The first two bytes are exact."""

    service: int
    pattern: tuple[int, ...]
    masks: tuple[tuple[int, int], ...] = ()  # (position, mask): the byte & mask must equal pattern & mask
    choice: tuple[int, bytes] | None = None  # (position, allowed byte values)


def _sig(service: int, text: bytes, masks: tuple[tuple[int, int], ...] = (),
         choice: tuple[int, bytes] | None = None) -> Signature:  # fmt: skip
    pattern = tuple(_ANY if choice and i == choice[0] else b for i, b in enumerate(text))
    return Signature(service, pattern, masks, choice)


_AUTHORITY = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789[_-."
_DIGIT_MASKS = ((9, 0xF0), (10, 0xF0), (11, 0xF0))  # 0x30..0x3F: the three digits of a status code

SIGNATURES: Final[tuple[Signature, ...]] = (
    *(_sig(HTTP, m + b" /") for m in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"TRACE")),
    _sig(HTTP, b"OPTIONS ?", choice=(8, b"/*")),
    _sig(HTTP, b"CONNECT ?", choice=(8, _AUTHORITY)),
    _sig(HTTP, b"HTTP/1.0 000?", masks=((7, 0xFE), *_DIGIT_MASKS), choice=(12, b" \t\r\n")),
    _sig(HTTP2, b"PRI * HTTP/2.0\r\n"),
    _sig(SSH, b"SSH-?.", choice=(4, b"12")),
    # record: type 22, version 3.0-3.4 (3.x, x < 8), length; handshake: type 1 or 2, length, version 3.x
    _sig(SSL, b"\x16\x03\x00\x00\x00?\x00\x00\x00\x03\x00",
         masks=((2, 0xF8), (3, 0), (4, 0), (6, 0), (7, 0), (8, 0), (10, 0xF8)), choice=(5, b"\x01\x02")),
)  # fmt: skip

#: DNS opcodes that confirm dns: QUERY, NOTIFY, UPDATE.
DNS_OPCODES: Final = (0, 4, 5)
#: DNS question classes that confirm dns (the mDNS unicast-response bit 0x8000 masked off).
DNS_CLASSES: Final = (1, 3, 4, 254, 255)
DNS_MAX_QUESTIONS: Final = 16
_DNS_MIN_BYTES = 12 + 1 + 4  # header, root name, type and class
_DNS_MAX_LABELS = 128


class _SignatureTable:
    """``SIGNATURES`` as arrays, looked up by a payload's first two bytes."""

    def __init__(self, signatures: Iterable[Signature]) -> None:
        sigs = list(signatures)
        n = len(sigs)
        self.of_key = np.zeros(1 << 16, np.uint8)  # first two bytes -> signature index + 1
        self.value = np.zeros((2, n), np.uint64)  # bytes 0-7 and 8-15, big-endian words
        self.mask = np.zeros((2, n), np.uint64)
        self.length = np.zeros(n, np.uint32)
        self.choice_pos = np.zeros(n, np.int64)
        self.choice = np.ones((n, 256), np.bool_)
        self.service = np.array([s.service for s in sigs], np.uint8)
        for k, sig in enumerate(sigs):
            key = (sig.pattern[0] << 8) | sig.pattern[1]
            if self.of_key[key]:
                raise ValueError(f"signatures {self.of_key[key] - 1} and {k} start with the same two bytes")
            self.of_key[key] = k + 1
            self._fill(k, sig)

    def _fill(self, k: int, sig: Signature) -> None:
        masks = dict(sig.masks)
        value, mask = bytearray(16), bytearray(16)
        for i, b in enumerate(sig.pattern):
            m = 0 if b == _ANY else masks.get(i, 0xFF)
            value[i], mask[i] = (b & m if b != _ANY else 0), m
        self.value[:, k] = np.frombuffer(bytes(value), ">u8")
        self.mask[:, k] = np.frombuffer(bytes(mask), ">u8")
        self.length[k] = len(sig.pattern)
        if sig.choice is not None:
            pos, allowed = sig.choice
            self.choice_pos[k] = pos
            self.choice[k] = False
            self.choice[k, list(allowed)] = True


_TABLE = _SignatureTable(SIGNATURES)
_OPCODE_OK = np.zeros(16, np.bool_)
_OPCODE_OK[list(DNS_OPCODES)] = True
_CLASS_OK = np.zeros(1 << 15, np.bool_)
_CLASS_OK[list(DNS_CLASSES)] = True
#: First payload bytes worth a closer look on TCP: a signature's, or a DNS length prefix below 4 KiB.
_TCP_FIRST = np.zeros(256, np.bool_)
_TCP_FIRST[np.flatnonzero(_TABLE.of_key) >> 8] = True  # (np.unique would import numpy.ma: 20 ms of start-up)
_TCP_FIRST[:16] = True


class _Candidates:
    """The payloads of one block that may start a service's message, and their first 8 bytes."""

    def __init__(self, block: PacketBlock) -> None:
        self.buf = block.buf
        payload = np.flatnonzero((block.payload_caplen != 0) & (block.status == PacketStatus.OK))
        off = block.payload_off[payload]
        proto = block.proto[payload]
        first = self.buf[off]
        keep = np.flatnonzero((_TCP_FIRST[first] & (proto == TCP)) | (proto == UDP))
        self.rows = payload[keep]
        self.off = off[keep]
        self.caplen = block.payload_caplen[self.rows]
        self.tcp = proto[keep] == TCP
        self.dns_like = ~self.tcp | (first[keep] < 16)  # UDP, or TCP whose length prefix is below 4 KiB
        self.words = np.ndarray((max(len(self.buf) - 7, 0),), ">u8", buffer=self.buf, strides=(1,))
        self.w0 = self.word(self.off)

    def word(self, at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        """The 8 bytes at each offset as a big-endian integer (clipped at the buffer's end: callers
        check the payload length before trusting bytes past it)."""
        return self.words[np.minimum(at, len(self.words) - 1)]

    def byte(self, at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        result: npt.NDArray[np.uint8] = self.buf[np.minimum(at, len(self.buf) - 1)]
        return result


def tcp_signature_hits(p: _Candidates) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
    """(positions into ``p.rows``, service codes) of the TCP payloads that start with a signature."""
    t = _TABLE
    sig = t.of_key[(p.w0 >> np.uint64(48)).astype(np.intp)]
    cand = np.flatnonzero((sig != 0) & p.tcp)
    if not len(cand):
        return cand, np.zeros(0, np.uint8)
    s = sig[cand].astype(np.intp) - 1
    off = p.off[cand]
    ok = (p.w0[cand] & t.mask[0, s]) == t.value[0, s]
    ok &= (p.word(off + 8) & t.mask[1, s]) == t.value[1, s]
    ok &= p.caplen[cand] >= t.length[s]
    ok &= t.choice[s, p.byte(off + t.choice_pos[s])]
    return cand[ok], t.service[s[ok]]


def dns_hits(p: _Candidates) -> npt.NDArray[np.intp]:
    """Positions into ``p.rows`` of the payloads holding a DNS message start (see the module table)."""
    cand: npt.NDArray[np.intp] = np.flatnonzero(p.dns_like)
    header = p.w0[cand] >> np.where(p.tcp[cand], np.uint64(0), np.uint64(16))  # TCP: after the length prefix
    questions = header & np.uint64(0xFFFF)
    flags = header >> np.uint64(16)  # and the id above it on UDP: masked below
    ok = (questions - np.uint64(1) < np.uint64(DNS_MAX_QUESTIONS)) & ((flags & np.uint64(0x40)) == 0)
    cand, flags = np.asarray(cand[ok], np.intp), flags[ok]
    if not len(cand):
        return cand
    ok = _OPCODE_OK[((flags >> np.uint64(11)) & np.uint64(0xF)).astype(np.intp)]
    tcp = p.tcp[cand]
    length = (p.w0[cand] >> np.uint64(48)).astype(np.int64)  # TCP: the length prefix
    base = tcp.astype(np.int64) * 2
    ok &= (p.caplen[cand] >= base + _DNS_MIN_BYTES) & (~tcp | (length >= _DNS_MIN_BYTES))
    cand, base, length, tcp = np.asarray(cand[ok], np.intp), base[ok], length[ok], tcp[ok]
    start = p.off[cand] + base
    end = p.off[cand] + p.caplen[cand]
    end = np.where(tcp, np.minimum(end, start + length), end)  # the question lies inside the message
    hits: npt.NDArray[np.intp] = cand[_question_parses(p, start + 12, end)]
    return hits


def _question_parses(p: _Candidates, pos: npt.NDArray[np.int64], end: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Whether a DNS question starts at each ``pos`` and ends by ``end`` (buffer offsets)."""
    ok = np.zeros(len(pos), np.bool_)
    active = np.arange(len(pos))
    name_start = pos.copy()
    for _ in range(_DNS_MAX_LABELS):
        if not len(active):
            break
        length = p.byte(pos[active]).astype(np.int64)
        last = length == 0
        ok[active[last]] = True
        pos[active] += 1 + length
        step = active[~last]
        alive = (length[~last] <= 63) & (pos[step] < end[step]) & (pos[step] - name_start[step] <= 255)
        active = step[alive]
    ok &= pos + 4 <= end
    qtype = (p.byte(pos).astype(np.int64) << 8) | p.byte(pos + 1)
    qclass = ((p.byte(pos + 2).astype(np.int64) & 0x7F) << 8) | p.byte(pos + 3)
    parses: npt.NDArray[np.bool_] = ok & (qtype != 0) & _CLASS_OK[qclass]
    return parses


def block_hits(block: PacketBlock) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """(flow ids, service codes) of every packet of a metered block that confirms a service, in
    capture order: the ``_meter`` kernel's ``service_hits`` when it is built, else
    ``block_hits_reference`` (the same hits)."""
    kernel = _kernel()
    if kernel is None:
        return block_hits_reference(block)
    rows, codes = np.empty(block.count, np.int64), np.empty(block.count, np.uint8)
    n = kernel.service_hits(block.buf, block.count, block.status, block.proto, block.payload_off,
                            block.payload_caplen, _native_tables(), rows, codes)  # fmt: skip
    return block.flow_id[rows[:n]], codes[:n]


def _kernel() -> Any:
    """The ``_meter`` kernel (probes/csrc/meter.c) if it is built and on, else None."""
    global _KERNEL_LOADED, _KERNEL
    if not _KERNEL_LOADED:
        _KERNEL, _KERNEL_LOADED = kernels.load("_meter"), True
    return _KERNEL


_KERNEL: Any = None
_KERNEL_LOADED = False
_TABLES: tuple[npt.NDArray[Any], ...] = ()


def _native_tables() -> tuple[npt.NDArray[Any], ...]:
    """``SIGNATURES`` and the DNS tables as the kernel reads them (contiguous, native byte order)."""
    global _TABLES
    if not _TABLES:
        t = _TABLE
        _TABLES = (
            t.of_key, np.ascontiguousarray(t.value), np.ascontiguousarray(t.mask), t.length, t.choice_pos,
            t.choice.astype(np.uint8), t.service, _OPCODE_OK.astype(np.uint8), _CLASS_OK.astype(np.uint8),
        )  # fmt: skip
    return _TABLES


def block_hits_reference(block: PacketBlock) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """``block_hits`` with numpy: the specification of what confirms a service."""
    p = _Candidates(block)
    if not len(p.rows) or not len(p.words):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    sig_at, sig_codes = tcp_signature_hits(p)
    dns_at = dns_hits(p)
    if not len(dns_at):
        return block.flow_id[p.rows[sig_at]], sig_codes
    at = np.concatenate([sig_at, dns_at])
    codes = np.concatenate([sig_codes, np.full(len(dns_at), DNS, np.uint8)])
    order = np.argsort(at, kind="stable")
    return block.flow_id[p.rows[at[order]]], codes[order]


def detect(payloads: Iterable[tuple[int, bytes]]) -> str:
    """The ``service`` of payloads given as (IP protocol, payload) in capture order: what
    ``ServiceDetector`` gives a flow with these packets (for tests and one-off checks)."""
    names: list[str] = []
    for proto, payload in payloads:
        block = _one_packet_block(proto, payload)
        for code in block_hits(block)[1].tolist():
            if SERVICE_NAMES[code] not in names:
                names.append(SERVICE_NAMES[code])
    return ",".join(names)


def _one_packet_block(proto: int, payload: bytes) -> PacketBlock:
    block = PacketBlock.empty(1, np.frombuffer(payload + bytes(16), np.uint8))
    block.proto[0], block.flow_id[0] = proto, 1
    block.payload_caplen[0] = block.payload_len[0] = len(payload)
    return block


class ServiceDetector:
    """The services found per flow, from metered blocks into the flow records of the same flows.

    Call ``observe(block)`` for each block after the meter processed it and before ``fill`` on the
    records the meter emitted for it (a flow's record then reflects every packet metered so far).
    State is two columns sorted by flow id, so both steps are a few numpy passes per block: the flow
    ids, and ``age << 16 | code`` (age: the block count when the flow was found; code: its service
    codes in the order found, 3 bits each, the first in the lowest bits; 0: forgotten, dropped by an
    ``observe`` once a quarter of the entries are).
    """

    def __init__(self, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self._ids = np.zeros(0, np.uint64)  # sorted
        self._state = np.zeros(0, np.uint64)  # age << 16 | code
        self._forgotten = 0  # entries whose state is 0
        self._blocks = 0
        self.evicted = 0  # flows forgotten before their final record (table full)

    def observe(self, block: PacketBlock) -> None:
        """Remember the services the packets of a metered block confirm."""
        self._blocks += 1
        flow_ids, codes = block_hits(block)
        if not len(flow_ids):
            return
        if self._forgotten * 4 > len(self._ids):  # compacted once a quarter is forgotten: amortised O(1)
            keep = self._state != 0
            self._ids, self._state, self._forgotten = self._ids[keep], self._state[keep], 0
        ids, found = _codes_by_flow(flow_ids, codes)
        pos = np.searchsorted(self._ids, ids)
        known = pos < len(self._ids)
        known[known] = self._ids[pos[known]] == ids[known]
        if known.any():
            at = pos[known]
            old = self._state[at]
            merged = (old & ~_CODE_MASK) | _merge_codes(old & _CODE_MASK, found[known])
            gone = old == 0  # forgotten, not yet compacted: remembered afresh
            if gone.any():
                merged[gone] |= np.uint64(self._blocks << 16)
                self._forgotten -= int(np.count_nonzero(gone))
            self._state[at] = merged
        fresh = ~known
        self._insert(pos[fresh], ids[fresh], found[fresh] | np.uint64(self._blocks << 16))
        if len(self._ids) > self.max_flows:
            self._evict(len(self._ids) - self.max_flows)

    def fill(self, batch: Batch) -> Batch:
        """Set the ``service`` column of a FlowRecord batch (in place; returns it) and forget the flows
        whose final record it holds."""
        if not len(batch):
            return batch
        codes = self.codes(np.asarray(batch.columns["flow_id"], np.uint64), np.asarray(batch.columns["final"]))
        return batch if codes is None else set_services(batch, codes)

    def codes(self, flow_ids: npt.NDArray[np.uint64], final: npt.NDArray[Any]) -> npt.NDArray[np.uint64] | None:
        """``fill`` for records given as their flow ids and final flags: the service code of each (None
        when none has a service); forgets the flows whose final record is among them."""
        if len(self._ids) == self._forgotten or not len(flow_ids):
            return None
        pos = np.minimum(np.searchsorted(self._ids, flow_ids), len(self._ids) - 1)
        codes = np.where(self._ids[pos] == flow_ids, self._state[pos] & _CODE_MASK, np.uint64(0))
        if not codes.any():
            return None
        done = np.sort(pos[(codes != 0) & (final != 0)])
        self._state[done] = 0
        if len(done):  # distinct entries (a flow has one final record; counted safely all the same)
            self._forgotten += 1 + int(np.count_nonzero(done[1:] != done[:-1]))
        return codes

    def pending(self) -> int:
        """Flows remembered with a service whose final record has not been filled yet."""
        return len(self._ids) - self._forgotten

    def _insert(self, pos: npt.NDArray[np.intp], ids: npt.NDArray[np.uint64], state: npt.NDArray[np.uint64]) -> None:
        """Insert entries before the positions ``pos`` (ascending, as ``searchsorted`` gives them)."""
        at = pos + np.arange(len(pos))
        size = len(self._ids) + len(pos)
        old = np.ones(size, np.bool_)
        old[at] = False
        out_ids, out_state = np.empty(size, np.uint64), np.empty(size, np.uint64)
        out_ids[at], out_state[at] = ids, state
        out_ids[old], out_state[old] = self._ids, self._state
        self._ids, self._state = out_ids, out_state

    def _evict(self, count: int) -> None:
        oldest = np.argsort(self._state >> np.uint64(16), kind="stable")[:count]
        self._state[oldest] = 0
        keep = self._state != 0
        self._ids, self._state, self._forgotten = self._ids[keep], self._state[keep], 0
        self.evicted += count


_CODE_MASK: Final = np.uint64(0xFFFF)


def encode(services: Iterable[int]) -> int:
    """The code of service codes in order (duplicates dropped)."""
    code = 0
    for shift, service in enumerate(dict.fromkeys(services)):
        code |= service << (3 * shift)
    return code


def decode(code: int) -> list[int]:
    """The service codes of a code, in order."""
    out = []
    while code:
        out.append(code & 7)
        code >>= 3
    return out


def set_services(batch: Batch, codes: npt.NDArray[np.uint64]) -> Batch:
    """Set the ``service`` column of a FlowRecord batch from the codes ``ServiceDetector.codes`` gave
    (in place; returns it): after the tunnel a UDP tunnel's outer flows already name."""
    names = service_names(codes)
    tunnels = batch.columns.get("service")  # a UDP tunnel's outer flows already name it (meter_common)
    if tunnels is not None and any(tunnels):
        names = [f"{t},{n}" if t and n else t or n for t, n in zip(tunnels, names, strict=True)]
    batch.columns["service"] = names
    return batch


def service_names(codes: npt.NDArray[np.uint64]) -> list[str]:
    """The ``service`` text of each code."""
    if not len(codes) or int(codes.max()) < len(SERVICE_NAMES):  # one service each: the usual case
        return np.array(SERVICE_NAMES, object)[codes.astype(np.intp)].tolist()  # type: ignore[no-any-return]
    distinct, inverse = np.unique(codes, return_inverse=True)
    texts = [",".join(SERVICE_NAMES[c] for c in decode(code)) for code in distinct.tolist()]
    return np.array(texts, object)[inverse.reshape(-1)].tolist()  # type: ignore[no-any-return]


def _codes_by_flow(
    flow_ids: npt.NDArray[np.uint64], codes: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(sorted distinct flow ids, their codes in capture order) of the hits of one block."""
    order = np.argsort(flow_ids)  # not stable (a stable sort costs 4x): order within a flow comes below
    ids, sorted_codes = flow_ids[order], codes[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    found = sorted_codes[starts].astype(np.uint64)
    mixed = np.flatnonzero(np.maximum.reduceat(sorted_codes, starts) != np.minimum.reduceat(sorted_codes, starts))
    for k in mixed.tolist():  # rare: one flow confirmed two services in one block
        found[k] = encode(codes[flow_ids == ids[starts[k]]].tolist())
    return ids[starts], found


def _merge_codes(old: npt.NDArray[np.uint64], new: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``old`` followed by the services of ``new`` it lacks, per flow."""
    merged = old.copy()
    for k in np.flatnonzero(old != new).tolist():  # rare: a flow found a second service
        merged[k] = encode([*decode(int(old[k])), *decode(int(new[k]))])
    return merged
