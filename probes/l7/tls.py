"""TLS on one TCP connection, seen without decryption: record framing and request/response *exchanges*.

Between two mutual-TLS sidecars the probe sees no HTTP, but a request is still visible: the client
sends a burst of application-data records, the server answers with a burst of its own. One such
pair is an *exchange*, identified (as an HTTP request is by ``req_tcp_seq``) by the TCP sequence
number of its first byte, which crosses NAT unchanged. A pooled connection carries many exchanges,
one after the other.

Record layer (RFC 5246 section 6.2, RFC 8446 section 5.1): a 5-byte header (content type, legacy
version 0x0300-0x0304, length at most 2**14 + 2048) and an opaque body. Content types:

=====  ==================  =================================================================
type   name                role here
=====  ==================  =================================================================
20     change_cipher_spec  handshake: not part of an exchange
21     alert               not part of an exchange (close_notify at the end of a connection)
22     handshake           not part of an exchange (TLS 1.2 renegotiation included)
23     application_data    the bytes of exchanges
=====  ==================  =================================================================

The exchange rule: a client application-data record that starts after the server sent application
data on the current exchange opens a new exchange; every other client record joins the current one;
server application-data records form the current exchange's response. Failure modes (docs/DESIGN.md,
"TLS exchanges"): pipelined or multiplexed requests (HTTP/2) on one connection merge into one
exchange; in TLS 1.3 the rest of the handshake is encrypted as application data too: the server's
encrypted flight comes before any client data and is skipped, but the client's last flight
(Certificate, Finished) opens the first exchange and the server's session tickets, sent when that
flight arrives, start its response, so the first exchange of a TLS 1.3 connection has its response
time too early; a capture gap inside a record header loses the rest of that direction (no resync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hopscope.ids import PAYLOAD_HASH_BYTES, payload_hash
from hopscope.probes.l7.reassembly import DATA, GAP, Event, retrans_overlapping, stream_reassembler

CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23
HEADER_BYTES: Final = 5
#: Largest record body (TLSCiphertext: 2**14 plus the largest expansion TLS 1.2 allows).
MAX_RECORD_BYTES: Final = (1 << 14) + 2048
_CONTENT_TYPES: Final = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA})

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10


def record_header(data: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """(content type, body length) of the record header at ``pos``; None if these bytes are not one."""
    if len(data) - pos < HEADER_BYTES:
        return None
    ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
    length = (data[pos + 3] << 8) | data[pos + 4]
    if ctype not in _CONTENT_TYPES or major != 3 or minor > 4 or length > MAX_RECORD_BYTES:
        return None
    return ctype, length


def looks_like_tls(payload: bytes) -> bool:
    """The first payload of a direction is a TLS record: a ClientHello or ServerHello (handshake
    record whose first message is type 1 or 2), or, on a connection picked up mid-stream, an
    application-data record header (cheap protocol detection)."""
    head = record_header(payload)
    if head is None:
        return False
    ctype, length = head
    if ctype == HANDSHAKE:
        return len(payload) > HEADER_BYTES and payload[HEADER_BYTES] in (1, 2) and length >= 4
    return ctype == APPLICATION_DATA and length > 0


@dataclass(slots=True)
class TlsRecord:
    """One record of one direction: stream offsets of its first and past-last byte, capture times."""

    content_type: int
    start: int
    end: int
    first_ns: int
    last_ns: int
    #: the record's first bytes (up to PAYLOAD_HASH_BYTES), header included
    head: bytes


class TlsRecordFramer:
    """Splits one direction's reassembled bytes into TLS records (bodies are skipped, not kept).

    ``feed`` returns the records completed by the events, in stream order. A gap inside a body is
    skipped (its length is known); a gap or an invalid header where a header is expected breaks the
    direction (``broken``): record boundaries cannot be found again reliably.
    """

    __slots__ = ("_first_ns", "_head", "_remaining", "_start", "_type", "broken")

    def __init__(self) -> None:
        self._head = bytearray()  # bytes of the record being read, up to PAYLOAD_HASH_BYTES
        self._remaining = 0  # body bytes still to come of the current record (0: at a header)
        self._start = 0
        self._first_ns = 0
        self._type = 0
        self.broken = False

    def feed(self, events: list[Event]) -> list[TlsRecord]:
        out: list[TlsRecord] = []
        for kind, offset, ts_ns, value in events:
            if self.broken:
                break
            if kind == GAP and isinstance(value, int):
                self._gap(offset, value)
            elif kind == DATA and isinstance(value, bytes):
                self._data(offset, ts_ns, value, out)
        return out

    def _gap(self, offset: int, length: int) -> None:
        if self._type and length <= self._remaining:
            self._remaining -= length  # inside a body of known length
        else:
            self.broken = True

    def _data(self, offset: int, ts_ns: int, data: bytes, out: list[TlsRecord]) -> None:
        pos, n = 0, len(data)
        while pos < n and not self.broken:
            if not self._type and not self._head and n - pos >= HEADER_BYTES:
                # a header at a boundary: the common case, and often its whole record is here as well
                parsed = record_header(data, pos)
                if parsed is None:
                    self.broken = True
                    return
                ctype, length = parsed
                end = pos + HEADER_BYTES + length
                if end <= n:
                    out.append(TlsRecord(ctype, offset + pos, offset + end, ts_ns, ts_ns,
                                         data[pos : pos + min(HEADER_BYTES + length, PAYLOAD_HASH_BYTES)]))  # fmt: skip
                    pos = end
                    continue
            if not self._type:  # reading a header
                if not self._head:
                    self._start, self._first_ns = offset + pos, ts_ns
                take = min(HEADER_BYTES - len(self._head), len(data) - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) < HEADER_BYTES:
                    return
                parsed = record_header(self._head)
                if parsed is None:
                    self.broken = True
                    return
                self._type, self._remaining = parsed
            take = min(self._remaining, len(data) - pos)
            room = PAYLOAD_HASH_BYTES - len(self._head)
            if room > 0:
                self._head += data[pos : pos + min(take, room)]
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                out.append(TlsRecord(self._type, self._start, offset + pos, self._first_ns, ts_ns, bytes(self._head)))
                self._head.clear()
                self._type = 0


@dataclass(slots=True)
class TlsExchange:
    """A client burst of application data and the server burst answering it (stream offsets, times)."""

    index: int
    req_start: int
    req_end: int
    req_first_ns: int
    req_last_ns: int
    req_hash: int
    resp_start: int = -1  # -1: no response yet
    resp_end: int = -1
    resp_first_ns: int = 0
    resp_last_ns: int = 0


class TlsConnection:
    """TLS on one TCP connection: reassembly and record framing per direction, exchanges in order.

    The interface mirrors ``HttpConnection`` (segment, flush, take, due, retrans_of, closed), so the
    tracker drives both alike.
    """

    __slots__ = (
        "_framers",
        "_next_index",
        "client",
        "client_data_seen",
        "closed",
        "current",
        "done",
        "last_ns",
        "orphan_records",
        "server",
        "server_data_seen",
    )

    def __init__(self) -> None:
        self.client = stream_reassembler()
        self.server = stream_reassembler()
        self._framers = (TlsRecordFramer(), TlsRecordFramer())
        self.current: TlsExchange | None = None
        self.done: list[TlsExchange] = []
        self._next_index = 0
        self.client_data_seen = False
        self.server_data_seen = False
        self.orphan_records = 0  # server application data with no client data before it
        self.closed = False
        self.last_ns = 0

    @property
    def broken(self) -> bool:
        return self._framers[0].broken or self._framers[1].broken

    def segment(self, ts_ns: int, from_client: bool, seq: int, ack: int, flags: int, payload: bytes) -> None:
        """One TCP segment of this connection, in capture order."""
        self.last_ns = ts_ns
        stream = self.client if from_client else self.server
        other = self.server if from_client else self.client
        if flags & TCP_ACK and other.pending_bytes:  # only held data (never empty) can be given up by an ACK
            events = other.acked(ack, ts_ns)
            if events:
                self._records(not from_client, events)
        if flags & TCP_SYN:
            stream.syn(seq)
            return
        if flags & TCP_RST:
            self.closed = True
        if payload or flags & TCP_FIN:
            events = stream.segment(ts_ns, seq, payload, bool(flags & TCP_FIN))
            if events:
                self._records(from_client, events)
        if stream.fin_sent and other.fin_sent:
            self.closed = True

    def flush(self, ts_ns: int) -> None:
        """Give up on holes in both directions and close the current exchange."""
        for from_client, stream in ((True, self.client), (False, self.server)):
            events = stream.flush(ts_ns)
            if events:
                self._records(from_client, events)
        self._close_current()

    def take(self, now_ns: int, linger_ns: int, final: bool) -> list[TlsExchange]:
        """Exchanges ready to report: every closed one, and (``final``, or ``linger_ns`` after its
        response's last byte with nothing since) the current one."""
        cur = self.current
        if cur is not None and (final or (cur.resp_last_ns and cur.resp_last_ns + linger_ns <= now_ns)):
            self._close_current()
        out, self.done = self.done, []
        return out

    def due(self, now_ns: int, linger_ns: int) -> bool:
        cur = self.current
        return bool(self.done) or (cur is not None and cur.resp_last_ns > 0 and cur.resp_last_ns + linger_ns <= now_ns)

    def retrans_of(self, ex: TlsExchange) -> tuple[int, int]:
        """Retransmitted segments overlapping the exchange's request and response bytes."""
        req = retrans_overlapping(self.client.retrans_ranges, ex.req_start, ex.req_end)
        resp = retrans_overlapping(self.server.retrans_ranges, ex.resp_start, ex.resp_end) if ex.resp_start >= 0 else 0
        return req, resp

    def _records(self, from_client: bool, events: list[Event]) -> None:
        for rec in self._framers[0 if from_client else 1].feed(events):
            if rec.content_type != APPLICATION_DATA:
                continue
            if from_client:
                self._client_data(rec)
            else:
                self._server_data(rec)

    def _client_data(self, rec: TlsRecord) -> None:
        self.client_data_seen = True
        cur = self.current
        if cur is None or cur.resp_start >= 0:
            self._close_current()
            self.current = TlsExchange(self._next_index, rec.start, rec.end, rec.first_ns, rec.last_ns,
                                       payload_hash(rec.head[:PAYLOAD_HASH_BYTES]))
            self._next_index += 1
        else:
            cur.req_end, cur.req_last_ns = rec.end, rec.last_ns

    def _server_data(self, rec: TlsRecord) -> None:
        cur = self.current
        self.server_data_seen = True
        if cur is None:
            if self.client_data_seen:
                self.orphan_records += 1
            return  # TLS 1.3: the server's encrypted handshake flight
        if cur.resp_start < 0:
            cur.resp_start, cur.resp_first_ns = rec.start, rec.first_ns
        cur.resp_end, cur.resp_last_ns = rec.end, rec.last_ns

    def _close_current(self) -> None:
        cur, self.current = self.current, None
        if cur is not None:
            self.done.append(cur)
