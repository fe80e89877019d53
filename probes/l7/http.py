"""HTTP/1.x over one TCP connection: message framing per direction, and request/response pairing.

Why our own parser and not llhttp (``httptools``) or ``h11``: a passive observer needs the stream
offset of every message's first and last byte (for ``req_tcp_seq``/``resp_tcp_seq`` and per-hop
timing), must frame a response by the method of the request it answers (HEAD, CONNECT), must resync
on the next start line after a capture gap or a mid-connection start, and must accept pipelining;
httptools reports no byte offsets and cannot be told "this response has no body", h11 refuses
pipelined requests and is a protocol endpoint, not an observer. Only the headers we record are
decoded. The framing runs in the ``_l7`` kernel (probes/csrc/l7.c ``HttpFramer``: a segment's whole
messages in one call, Python only in the ``on_head``/``on_done`` callbacks) when it is built;
``HttpStreamParserReference`` is its Python twin (``HOPSCOPE_NATIVE=0``), and ``http_stream_parser``
picks one. ``bench/l7_speed.py`` measures both against httptools on the same stream.

Framing rules (RFC 9112 section 6.3): a response to HEAD, a 1xx, 204 or 304 has no body; a 2xx to
CONNECT and a 101 turn the connection into a tunnel (not parsed further); ``Transfer-Encoding:
chunked`` wins over ``Content-Length``; a response with neither is read until the server's FIN
(``Connection: close``); a request with neither has no body. A Content-Length is 1 to 18 ASCII digits
(else ignored), a chunk size 1 to 15 hex digits (else a bad chunk: the message ends truncated and the
parser searches for the next start line).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from hopscope.ids import PAYLOAD_HASH_BYTES, payload_hash
from hopscope.probes import kernels
from hopscope.probes.l7.reassembly import (
    DATA,
    FIN,
    GAP,
    Event,
    Reassembler,
    retrans_overlapping,
    stream_reassembler,
)

# parser modes
SEEK: Final = 0  # looking for a start line (mid-stream start, after a gap or garbage)
HEAD: Final = 1  # reading a start line and header block
BODY: Final = 2  # ``remaining`` body bytes (or chunk bytes + CRLF) to skip
CHUNK_SIZE: Final = 3  # reading a chunk-size line
CHUNK_TRAILER: Final = 4  # reading trailer lines after the last chunk
UNTIL_CLOSE: Final = 5  # body runs until FIN
TUNNEL: Final = 6  # after CONNECT/101: not HTTP any more
CLOSED: Final = 7  # after FIN

MAX_HEAD_BYTES: Final = 64 * 1024
#: A Content-Length of more digits is ignored (as one that is not a number), like a chunk size of more
#: than MAX_CHUNK_SIZE_DIGITS hex digits (a bad chunk): both fit 64 bits in the kernel.
MAX_CONTENT_LENGTH_DIGITS: Final = 18
MAX_CHUNK_SIZE_DIGITS: Final = 15
#: A chunk-size line (up to its newline) longer than this without a newline is a bad chunk.
MAX_CHUNK_LINE_BYTES: Final = 1024
#: In SEEK mode this many trailing bytes are kept, so a start line split across segments is found.
SEEK_KEEP_BYTES: Final = 8 * 1024

_METHODS = rb"GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE"
_REQUEST_LINE = re.compile(rb"(" + _METHODS + rb") (\S+) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?:[ \t][^\r\n]*)?")
_SEEK_REQUEST = re.compile(rb"(?:" + _METHODS + rb") \S+ HTTP/1\.[01]\r?\n")
_SEEK_RESPONSE = re.compile(rb"HTTP/1\.[01] [0-9]{3}[^\r\n]*\r?\n")
_REQUEST_START = re.compile(rb"(?:" + _METHODS + rb") ")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,%d}" % MAX_CHUNK_SIZE_DIGITS)

#: Headers we record or frame by; every other header is skipped without decoding.
_WANTED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"x-request-id",
        b"traceparent",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"b3",
    }
)


#: (name, b"\nname:") for each wanted header: found by ``bytes.find`` in the lower-cased block (RFC 9112
#: allows no whitespace between a field name and its colon).
_NEEDLES: Final = tuple((name, b"\n" + name + b":") for name in sorted(_WANTED))


#: The compiled header-block parser (probes/csrc/l7.c), or None: ``parse_head_reference`` then runs.
_L7 = kernels.load("_l7")
_HEAD_NAMES: Final = tuple(name for name, _ in _NEEDLES)
if _L7 is not None and tuple(_L7.HEAD_NAMES) != _HEAD_NAMES:
    raise RuntimeError("the _l7 kernel's header names differ from http._NEEDLES: rebuild it")


def looks_like_request(payload: bytes) -> bool:
    """True when ``payload`` starts with an HTTP/1 method and a space (cheap protocol detection)."""
    return _REQUEST_START.match(payload) is not None


def looks_like_response(payload: bytes) -> bool:
    return payload.startswith((b"HTTP/1.0 ", b"HTTP/1.1 "))


class HttpMessage:
    """One request or response as framed so far (mutable while it is being read)."""

    __slots__ = (
        "b3_span_id",
        "b3_trace_id",
        "body_bytes",
        "body_start",
        "close",
        "complete",
        "end_offset",
        "first_ns",
        "host",
        "last_ns",
        "method",
        "payload_hash",
        "start_offset",
        "status",
        "target",
        "traceparent",
        "truncated",
        "x_request_id",
    )

    def __init__(self, start_offset: int, first_ns: int) -> None:
        self.start_offset = start_offset  # stream offset of the first byte
        self.end_offset = start_offset  # stream offset one past the last byte read so far
        self.first_ns = first_ns
        self.last_ns = first_ns
        self.method = ""
        self.target = ""
        self.status = 0
        self.host = ""
        self.x_request_id = ""
        self.traceparent = ""
        self.b3_trace_id = ""
        self.b3_span_id = ""
        self.close = False  # Connection: close
        self.complete = False
        self.truncated = False  # bytes of it were lost (capture gap)
        self.payload_hash = 0
        #: body bytes as framed: Content-Length, the sum of chunk sizes, or bytes up to FIN; a proxy
        #: that rewrites the header block (and the chunking) passes this on unchanged
        self.body_bytes = 0
        self.body_start = -1  # stream offset of the first body byte of a body read until FIN


class _Head:
    """What the framing needs from a header block."""

    __slots__ = ("chunked", "content_length")

    def __init__(self) -> None:
        self.chunked = False
        self.content_length: int | None = None


def parse_head(block: bytes, is_request: bool, msg: HttpMessage) -> _Head | None:
    """Parse a header block (without the blank line) into ``msg``; None if the start line is invalid.

    The ``_l7`` kernel reads the start line and finds the values of the headers of ``_NEEDLES`` when it
    is built and on; ``parse_head_reference`` is its twin (tests/probes/l7/test_l7_native.py).
    """
    if _L7 is None:
        return parse_head_reference(block, is_request, msg)
    return _apply_parsed(_L7.parse_head(block, is_request), is_request, msg)


def _apply_parsed(parsed: tuple[str, str, int, bool, tuple[str | None, ...]] | None, is_request: bool,
                  msg: HttpMessage) -> _Head | None:  # fmt: skip
    """The kernel's reading of a header block (``_l7.parse_head``) put into ``msg``, as
    ``parse_head_reference`` puts its own."""
    if parsed is None:
        return None
    method, target, status, close, values = parsed
    if is_request:
        msg.method, msg.target = method, target
    else:
        msg.status = status
    msg.close = close
    head = _Head()
    for name, value in zip(_HEAD_NAMES, values, strict=True):
        if value is not None:
            _apply_header(name, value, msg, head)
    return head


def parse_head_reference(block: bytes, is_request: bool, msg: HttpMessage) -> _Head | None:
    """``parse_head`` in Python: the reference the kernel follows."""
    line_end = block.find(b"\n")
    first = (block if line_end < 0 else block[:line_end]).rstrip(b"\r")
    if is_request:
        m = _REQUEST_LINE.fullmatch(first)
        if m is None:
            return None
        msg.method = m.group(1).decode("ascii")
        msg.target = m.group(2).decode("latin-1")
        msg.close = m.group(3) == b"0"
    else:
        m = _STATUS_LINE.fullmatch(first)
        if m is None:
            return None
        msg.status = int(m.group(2))
        msg.close = m.group(1) == b"0"
    head = _Head()
    low = block.lower()
    for name, needle in _NEEDLES:
        at = low.find(needle)
        if at >= 0:
            start = at + len(needle)
            end = block.find(b"\n", start)
            value = block[start:] if end < 0 else block[start:end]
            _apply_header(name, value.strip().decode("latin-1"), msg, head)
    return head


def _apply_header(name: bytes, value: str, msg: HttpMessage, head: _Head) -> None:
    if name == b"content-length":
        if len(value) <= MAX_CONTENT_LENGTH_DIGITS and value.isascii() and value.isdigit():
            head.content_length = int(value)
    elif name == b"transfer-encoding":
        head.chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
    elif name == b"connection":
        lowered = value.lower()
        if "close" in lowered:
            msg.close = True
        elif "keep-alive" in lowered:
            msg.close = False
    elif name == b"host":
        msg.host = value
    elif name == b"x-request-id":
        msg.x_request_id = value
    elif name == b"traceparent":
        msg.traceparent = value
    elif name == b"x-b3-traceid":
        msg.b3_trace_id = value
    elif name == b"x-b3-spanid":
        msg.b3_span_id = value
    elif name == b"b3":
        parts = value.split("-")
        if len(parts) >= 2:
            msg.b3_trace_id, msg.b3_span_id = parts[0], parts[1]


OnHead = Callable[[HttpMessage], str]
OnDone = Callable[[HttpMessage], None]


class StreamParser(Protocol):
    """What ``HttpConnection`` needs of a parser of one direction (``http_stream_parser``)."""

    @property
    def resyncs(self) -> int: ...
    @property
    def skipped_bytes(self) -> int: ...
    @property
    def mode(self) -> int: ...
    def feed(self, events: list[Event], /) -> None: ...
    def data(self, offset: int, ts_ns: int, payload: bytes, /) -> None: ...
    def gap(self, offset: int, length: int, /) -> None: ...
    def fin(self, offset: int, /) -> None: ...
    def tunnel(self) -> None: ...


def http_stream_parser(is_request: bool, on_head: OnHead, on_done: OnDone, *, synced: bool) -> StreamParser:
    """The parser of one direction: the ``_l7`` kernel's ``HttpFramer`` when it is built and on, else
    ``HttpStreamParserReference`` (its twin: tests/probes/l7/test_l7_native.py). Both call ``on_head`` and
    ``on_done`` with ``HttpMessage`` objects alike, field for field."""
    if _L7 is None:
        return HttpStreamParserReference(is_request, on_head, on_done, synced=synced)
    framer: StreamParser = _L7.HttpFramer(HttpMessage, is_request, on_head, on_done, synced)
    return framer


class HttpStreamParserReference:
    """Frames the HTTP messages of one direction from in-order stream bytes, gaps and FIN.

    ``on_head(msg)`` is called when a message's header block is read; for a response it returns the
    method of the request it answers ('' if unknown), which decides the response's framing.
    ``on_done(msg)`` is called when a message is complete (or given up, ``truncated``). The callbacks
    must not call the parser that calls them (the kernel refuses it). This is the reference the
    ``_l7`` kernel's ``HttpFramer`` follows (``http_stream_parser`` picks one).
    """

    __slots__ = (
        "_chunked",
        "_marks",
        "_next_mode",
        "_pos",
        "_scan_from",
        "buf",
        "buf_offset",
        "is_request",
        "mode",
        "msg",
        "on_done",
        "on_head",
        "remaining",
        "resyncs",
        "skipped_bytes",
    )

    def __init__(self, is_request: bool, on_head: OnHead, on_done: OnDone, *, synced: bool) -> None:
        self.is_request = is_request
        self.on_head = on_head
        self.on_done = on_done
        self.mode = HEAD if synced else SEEK
        self.buf = bytearray()
        self.buf_offset = 0  # stream offset of buf[0]
        self._pos = 0  # index in buf of the first unread byte
        self._marks: list[tuple[int, int]] = []  # (stream offset, ts_ns) where buffered data began
        self._scan_from = 0
        self._chunked = False
        self._next_mode = HEAD
        self.msg: HttpMessage | None = None
        self.remaining = 0
        self.resyncs = 0  # times a start line was searched for and found
        self.skipped_bytes = 0  # bytes passed over while searching for a start line

    def feed(self, events: list[Event], /) -> None:
        for kind, offset, ts_ns, value in events:
            if kind == DATA:
                assert isinstance(value, bytes)
                self.data(offset, ts_ns, value)
            elif kind == GAP:
                assert isinstance(value, int)
                self.gap(offset, value)
            elif kind == FIN:
                self.fin(offset)

    def data(self, offset: int, ts_ns: int, payload: bytes) -> None:
        pos, n = 0, len(payload)
        while pos < n:
            mode, msg = self.mode, self.msg
            if mode == BODY and not self.buf and msg is not None:
                take = min(self.remaining, n - pos)
                self.remaining -= take
                pos += take
                msg.end_offset, msg.last_ns = offset + pos, ts_ns
                if self.remaining == 0:
                    self._body_done()
                continue
            if mode == UNTIL_CLOSE and msg is not None:
                msg.end_offset, msg.last_ns = offset + n, ts_ns
                return
            if mode >= TUNNEL:
                return
            if mode == HEAD and not self.buf:
                after = self._head_in_segment(offset, ts_ns, payload, pos)
                if after > pos:
                    pos = after
                    continue
            if not self.buf:
                self.buf_offset = offset + pos
            self._marks.append((offset + pos, ts_ns))
            self.buf += payload[pos:] if pos else payload
            pos = n
            self._run()

    def gap(self, offset: int, length: int) -> None:
        """``length`` bytes at ``offset`` will never arrive."""
        msg = self.msg
        if self.mode == BODY and not self.buf and msg is not None and self.remaining >= length:
            self.remaining -= length
            msg.end_offset = offset + length
            msg.truncated = True
            if self.remaining == 0:
                self._body_done()
            return
        if self.mode == UNTIL_CLOSE and msg is not None:
            msg.end_offset = offset + length
            msg.truncated = True
            return
        if self.mode >= TUNNEL:
            return
        if msg is not None:
            msg.truncated = True
            self._complete()
        self._reset_buffer(offset + length)
        self.mode = SEEK

    def fin(self, offset: int) -> None:
        msg = self.msg
        if msg is not None:
            msg.truncated = msg.truncated or self.mode != UNTIL_CLOSE
            self._complete()
        self.mode = CLOSED
        self._reset_buffer(offset)

    def tunnel(self) -> None:
        """Stop parsing after the current message: the connection switched protocols."""
        self._next_mode = TUNNEL
        if self.msg is None and self.mode in (HEAD, SEEK):
            self.mode = TUNNEL
            self.buf.clear()
            self._pos = 0

    # --- buffered modes -------------------------------------------------------------------------

    def _run(self) -> None:
        steps = (self._seek, self._head, self._body, self._chunk_size, self._trailer)
        while self.mode < UNTIL_CLOSE and steps[self.mode]():
            pass
        if self.mode >= UNTIL_CLOSE and self.msg is not None and self.mode == UNTIL_CLOSE:
            self.msg.end_offset = self.buf_offset + len(self.buf)
            self.msg.last_ns = self._marks[-1][1]
            self._pos = len(self.buf)
        elif self.mode >= UNTIL_CLOSE:
            self._pos = len(self.buf)
        self._compact()

    def _compact(self) -> None:
        if self._pos:
            del self.buf[: self._pos]
            self.buf_offset += self._pos
            self._scan_from = max(0, self._scan_from - self._pos)
            self._pos = 0
        marks = self._marks
        keep = 0
        for i, (mark_offset, _) in enumerate(marks):
            if mark_offset <= self.buf_offset:
                keep = i
        if keep:
            del marks[:keep]
        if not self.buf and len(marks) > 1:
            del marks[:-1]

    def _reset_buffer(self, offset: int) -> None:
        self.buf.clear()
        self.buf_offset = offset
        self._pos = 0
        self._scan_from = 0
        self._marks.clear()
        self.msg = None
        self.remaining = 0
        self._chunked = False

    def _ts_at(self, offset: int) -> int:
        for mark_offset, ts_ns in reversed(self._marks):
            if mark_offset <= offset:
                return ts_ns
        return self._marks[0][1] if self._marks else 0

    def _seek(self) -> bool:
        """Search for a start line at the beginning of a line or of a segment."""
        pattern = _SEEK_REQUEST if self.is_request else _SEEK_RESPONSE
        buf = self.buf
        found = pattern.search(buf, self._pos)
        while found is not None and not self._at_boundary(found.start()):
            found = pattern.search(buf, found.start() + 1)
        if found is None:
            keep_from = max(self._pos, len(buf) - SEEK_KEEP_BYTES)
            self.skipped_bytes += keep_from - self._pos
            self._pos = keep_from
            return False
        self.skipped_bytes += found.start() - self._pos
        self._pos = found.start()
        self._scan_from = self._pos
        self.resyncs += 1
        self.mode = HEAD
        return True

    def _at_boundary(self, index: int) -> bool:
        if index == 0 or self.buf[index - 1] == 0x0A:
            return True
        offset = self.buf_offset + index
        return any(mark_offset == offset for mark_offset, _ in self._marks)

    def _head(self) -> bool:
        buf, pos = self.buf, self._pos
        start = max(pos, self._scan_from)
        end = buf.find(b"\r\n\r\n", start)
        term = 4
        if end < 0:
            end, term = buf.find(b"\n\n", start), 2
        if end < 0:
            self._scan_from = max(pos, len(buf) - 3)
            if len(buf) - pos > MAX_HEAD_BYTES or (len(buf) - pos > 512 and not self._first_line_ok()):
                self._give_up_head()
            return False
        msg = HttpMessage(self.buf_offset + pos, self._ts_at(self.buf_offset + pos))
        head = parse_head_reference(bytes(buf[pos:end]), self.is_request, msg)
        if head is None:
            self._give_up_head()
            return True
        msg.payload_hash = payload_hash(bytes(buf[pos : pos + PAYLOAD_HASH_BYTES]))
        self._pos = end + term
        msg.end_offset = self.buf_offset + self._pos
        msg.last_ns = self._ts_at(msg.end_offset - 1)
        self._scan_from = self._pos
        self.msg = msg
        self._frame(msg, head, self.on_head(msg))
        return True

    def _head_in_segment(self, offset: int, ts_ns: int, payload: bytes, pos: int) -> int:
        """Fast path: a whole header block inside one segment is parsed without buffering.

        Returns the position after the block, or ``pos`` when the block is not complete or not valid
        here (the buffered path then takes the bytes, and resyncs if need be).
        """
        end = payload.find(b"\r\n\r\n", pos)
        if end < 0:
            return pos
        msg = HttpMessage(offset + pos, ts_ns)
        head = parse_head_reference(payload[pos:end], self.is_request, msg)
        if head is None:
            return pos
        msg.payload_hash = payload_hash(payload[pos : pos + PAYLOAD_HASH_BYTES])
        msg.end_offset = offset + end + 4
        self.msg = msg
        self._frame(msg, head, self.on_head(msg))
        return end + 4

    def _first_line_ok(self) -> bool:
        line_end = self.buf.find(b"\n", self._pos)
        if line_end < 0:
            return True
        line = bytes(self.buf[self._pos : line_end]).rstrip(b"\r")
        pattern = _REQUEST_LINE if self.is_request else _STATUS_LINE
        return pattern.fullmatch(line) is not None

    def _give_up_head(self) -> None:
        self.skipped_bytes += 1
        self._pos += 1
        self.mode = SEEK

    def _frame(self, msg: HttpMessage, head: _Head, request_method: str) -> None:
        status = msg.status
        self._next_mode = HEAD
        if self.is_request:
            if msg.method == "CONNECT":
                self._next_mode = TUNNEL
            no_body = not head.chunked and not head.content_length
        else:
            if status == 101 or (request_method == "CONNECT" and 200 <= status < 300):
                self._next_mode = TUNNEL
            no_body = (
                100 <= status < 200
                or status in (204, 304)
                or request_method == "HEAD"
                or self._next_mode == TUNNEL
                or (not head.chunked and head.content_length == 0)
            )
        if no_body:
            self._complete()
        elif head.chunked:
            self._chunked = True
            self.mode = CHUNK_SIZE
        elif head.content_length is not None:
            self._chunked = False
            self.remaining = msg.body_bytes = head.content_length
            self.mode = BODY
        else:
            msg.body_start = msg.end_offset
            self.mode = UNTIL_CLOSE

    def _body(self) -> bool:
        avail = len(self.buf) - self._pos
        msg = self.msg
        if not avail or msg is None:
            return False
        take = min(self.remaining, avail)
        self.remaining -= take
        self._pos += take
        msg.end_offset = self.buf_offset + self._pos
        msg.last_ns = self._ts_at(msg.end_offset - 1)
        if self.remaining:
            return False
        self._body_done()
        return True

    def _body_done(self) -> None:
        if self._chunked:
            self.mode = CHUNK_SIZE
        else:
            self._complete()

    def _chunk_size(self) -> bool:
        line_end = self.buf.find(b"\n", self._pos)
        if line_end < 0:
            if len(self.buf) - self._pos > MAX_CHUNK_LINE_BYTES:
                self._bad_chunk()
                return True
            return False
        line = bytes(self.buf[self._pos : line_end]).split(b";", 1)[0].strip()
        if _CHUNK_SIZE.fullmatch(line) is None:
            self._bad_chunk()
            return True
        size = int(line, 16)
        self._advance(line_end + 1)
        if size == 0:
            self.mode = CHUNK_TRAILER
        else:
            self.remaining = size + 2  # chunk data and its CRLF
            if self.msg is not None:
                self.msg.body_bytes += size
            self.mode = BODY
        return True

    def _trailer(self) -> bool:
        line_end = self.buf.find(b"\n", self._pos)
        if line_end < 0:
            if len(self.buf) - self._pos > MAX_HEAD_BYTES:
                self._bad_chunk()
                return True
            return False
        blank = not self.buf[self._pos : line_end].strip()
        self._advance(line_end + 1)
        if blank:
            self._complete()
        return True

    def _advance(self, pos: int) -> None:
        self._pos = pos
        if self.msg is not None:
            self.msg.end_offset = self.buf_offset + pos
            self.msg.last_ns = self._ts_at(self.msg.end_offset - 1)

    def _bad_chunk(self) -> None:
        if self.msg is not None:
            self.msg.truncated = True
            self._complete()
        self.mode = SEEK

    def _complete(self) -> None:
        msg = self.msg
        self.msg = None
        self._chunked = False
        self.remaining = 0
        self.mode = self._next_mode
        if msg is not None:
            if msg.body_start >= 0:
                msg.body_bytes = msg.end_offset - msg.body_start
            msg.complete = True
            self.on_done(msg)


class HttpExchange:
    """One request and the response that answered it (None until its head was read)."""

    __slots__ = ("index", "request", "resp_first_ns", "resp_start_offset", "response")

    def __init__(self, index: int, request: HttpMessage) -> None:
        self.index = index  # position on the connection, 0 for the first request seen
        self.request = request
        self.response: HttpMessage | None = None
        self.resp_start_offset = -1  # first response byte (a 1xx counts), -1: none yet
        self.resp_first_ns = 0


#: Exchanges a connection holds at most (pipelined requests awaiting responses, lingering exchanges);
#: past it the oldest is reported at once.
MAX_WAITING: Final = 256
#: A connection that has passed over this many bytes without finding one HTTP message is not HTTP.
GIVE_UP_BYTES: Final = 64 * 1024

#: TCP flag bits as on the wire.
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10


class HttpSegmentsReference:
    """The per-segment step of an ``HttpConnection``: ACKs that give up held data, SYN, RST, FIN, the
    segment to its direction's reassembler and the events to that direction's parser (made by the
    connection's ``_parser`` on first use). The ``_l7`` kernel's ``HttpSegments`` is its twin
    (tests/probes/l7/test_l7_native.py); ``HttpConnection`` derives from the kernel's when it is
    built and on, else from this class."""

    __slots__ = ("client", "closed", "last_ns", "request_parser", "response_parser", "server")
    client: Reassembler
    server: Reassembler
    request_parser: StreamParser | None
    response_parser: StreamParser | None
    closed: bool
    last_ns: int

    def segment(self, ts_ns: int, from_client: bool, seq: int, ack: int, flags: int, payload: bytes) -> None:
        """One TCP segment of this connection, in capture order."""
        self.last_ns = ts_ns
        if from_client:
            stream, other, parser = self.client, self.server, self.request_parser
        else:
            stream, other, parser = self.server, self.client, self.response_parser
        if flags & TCP_ACK and other.pending_bytes:  # only held data (never empty) can be given up by an ACK
            events = other.acked(ack, ts_ns)
            if events:
                self._parser(not from_client, other).feed(events)
        if flags & TCP_SYN:
            stream.syn(seq)
            return
        if flags & TCP_RST:
            self.closed = True
        if not payload and not flags & TCP_FIN:
            return
        events = stream.segment(ts_ns, seq, payload, bool(flags & TCP_FIN))
        if events:
            (parser or self._parser(from_client, stream)).feed(events)
        if stream.fin_sent and other.fin_sent:
            self.closed = True

    def _parser(self, from_client: bool, stream: Reassembler) -> StreamParser:
        raise NotImplementedError  # HttpConnection's


if TYPE_CHECKING:
    _SegmentsBase = HttpSegmentsReference
else:
    _SegmentsBase = HttpSegmentsReference if _L7 is None else _L7.HttpSegments


class HttpConnection(_SegmentsBase):
    """HTTP/1.x on one TCP connection: reassembly, framing, pairing, retransmission accounting.

    Responses pair with requests in order (HTTP/1.1 pipelining keeps order). A response whose first
    byte passed before the oldest waiting request's first byte answers a request we never saw
    (capture started mid-connection, or the request was lost in a gap): it is counted in
    ``orphan_responses`` and not paired. Its per-segment step is its base's (``HttpSegmentsReference``,
    or the ``_l7`` kernel's twin ``HttpSegments`` when it is built and on).
    """

    __slots__ = ("_pending", "_replying", "next_index", "orphan_responses", "overflow", "waiting")

    def __init__(self) -> None:
        self.client = stream_reassembler()
        self.server = stream_reassembler()
        self.request_parser = None
        self.response_parser = None
        self._pending: deque[HttpExchange] = deque()  # requests whose response head is not read yet
        self._replying: HttpExchange | None = None  # exchange whose response body is being read
        self.waiting: list[HttpExchange] = []  # every exchange not yet taken, in request order
        self.overflow: list[HttpExchange] = []  # pushed out of ``waiting`` by MAX_WAITING, to report
        self.next_index = 0
        self.orphan_responses = 0
        self.closed = False  # RST seen, or FIN in both directions
        self.last_ns = 0

    def flush(self, ts_ns: int) -> None:
        """Give up on holes in both directions (end of capture, connection closed or evicted)."""
        for from_client, stream in ((True, self.client), (False, self.server)):
            events = stream.flush(ts_ns)
            if events:
                self._parser(from_client, stream).feed(events)

    def take(self, now_ns: int, linger_ns: int, request_timeout_ns: int, final: bool) -> list[HttpExchange]:
        """Exchanges ready to report.

        A complete exchange is held ``linger_ns`` after its response's last byte, so retransmissions
        that follow it (a loss downstream of this point) are still counted; a request without a
        response is reported after ``request_timeout_ns``, or at once when ``final``.
        """
        overflow, self.overflow = self.overflow, []
        ready: list[HttpExchange] = []
        keep: list[HttpExchange] = []
        for ex in self.waiting:
            resp = ex.response
            if final:
                ready.append(ex)
            elif resp is not None and resp.complete:
                (ready if resp.last_ns + linger_ns <= now_ns else keep).append(ex)
            elif resp is None and ex.request.last_ns + request_timeout_ns <= now_ns:
                ready.append(ex)
            else:
                keep.append(ex)
        if ready:
            self.waiting = keep
            if self._pending:
                gone = {id(ex) for ex in ready}
                self._pending = deque(ex for ex in self._pending if id(ex) not in gone)
        return overflow + ready if overflow else ready

    def due(self, now_ns: int, linger_ns: int, request_timeout_ns: int) -> bool:
        """Cheap test whether ``take`` would return anything (looks at the oldest exchange only)."""
        if self.overflow:
            return True
        if not self.waiting:
            return False
        ex = self.waiting[0]
        resp = ex.response
        if resp is None:
            return ex.request.last_ns + request_timeout_ns <= now_ns
        return resp.complete and resp.last_ns + linger_ns <= now_ns

    @property
    def hopeless(self) -> bool:
        """True when no HTTP message was found after GIVE_UP_BYTES: this connection is not HTTP/1."""
        if self.next_index:
            return False
        skipped = sum(p.skipped_bytes for p in (self.request_parser, self.response_parser) if p is not None)
        return skipped > GIVE_UP_BYTES

    def retrans_of(self, ex: HttpExchange) -> tuple[int, int]:
        """Retransmitted segments that overlap the request and the response of ``ex``."""
        req = ex.request
        req_count = retrans_overlapping(self.client.retrans_ranges, req.start_offset, req.end_offset)
        resp_count = 0
        if ex.response is not None and ex.resp_start_offset >= 0:
            resp_count = retrans_overlapping(self.server.retrans_ranges, ex.resp_start_offset, ex.response.end_offset)
        return req_count, resp_count

    def _parser(self, from_client: bool, stream: Reassembler) -> StreamParser:
        parser = self.request_parser if from_client else self.response_parser
        if parser is None:
            synced = not stream.started_mid_stream
            if from_client:
                parser = http_stream_parser(True, self._on_request, _ignore, synced=synced)
                self.request_parser = parser
            else:
                parser = http_stream_parser(False, self._on_response, self._on_response_done, synced=synced)
                self.response_parser = parser
        return parser

    def _on_request(self, msg: HttpMessage) -> str:
        ex = HttpExchange(self.next_index, msg)
        self.next_index += 1
        self._pending.append(ex)
        self.waiting.append(ex)
        if len(self.waiting) > MAX_WAITING:
            # reported early; still paired in order (its response, if any, then goes unreported)
            self.overflow.append(self.waiting.pop(0))
        return msg.method

    def _on_response(self, msg: HttpMessage) -> str:
        self._replying = None
        if not self._pending or self._pending[0].request.first_ns > msg.first_ns:
            self.orphan_responses += 1
            return ""
        ex = self._pending[0]
        if ex.resp_start_offset < 0:
            ex.resp_start_offset, ex.resp_first_ns = msg.start_offset, msg.first_ns
        if 100 <= msg.status < 200 and msg.status != 101:
            return ex.request.method  # interim response: the final one follows
        self._pending.popleft()
        ex.response = msg
        self._replying = ex
        method = ex.request.method
        if msg.status == 101 or (method == "CONNECT" and 200 <= msg.status < 300):
            self._tunnel_requests()
        return method

    def _tunnel_requests(self) -> None:
        """After a protocol switch (101, CONNECT 2xx) the client's bytes are not HTTP/1 any more."""
        if self.request_parser is not None:
            self.request_parser.tunnel()

    def _on_response_done(self, msg: HttpMessage) -> None:
        if self._replying is not None and self._replying.response is msg:
            self._replying = None


def _ignore(msg: HttpMessage) -> None:
    """Requests need no action when complete: their exchange already holds them."""
