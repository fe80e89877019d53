"""Type stub of the compiled kernel probes/csrc/l7.c (HTTP/1.x framing and header blocks, payload hashes, DNS)."""

from collections.abc import Callable, Sequence
from typing import Any

HEAD_NAMES: tuple[bytes, ...]

def parse_head(
    block: bytes | bytearray | memoryview, is_request: bool, /
) -> tuple[str, str, int, bool, tuple[str | None, ...]] | None: ...
def payload_hash(data: bytes | bytearray | memoryview, /) -> int: ...
def parse_dns(
    data: bytes | bytearray | memoryview, /
) -> tuple[int, bool, int, int, str, int, tuple[str, ...]] | str: ...

class HttpFramer:
    """probes/l7/http.py ``HttpStreamParserReference`` in C (built by ``http.http_stream_parser``)."""

    is_request: int
    mode: int
    remaining: int
    resyncs: int
    skipped_bytes: int
    msg: Any
    buffered: int
    def __init__(
        self,
        message_type: type,
        is_request: bool,
        on_head: Callable[[Any], Any],
        on_done: Callable[[Any], Any],
        synced: bool,
        /,
    ) -> None: ...
    def feed(self, events: Sequence[tuple[int, int, int, bytes | int]], /) -> None: ...
    def data(self, offset: int, ts_ns: int, payload: bytes | bytearray | memoryview, /) -> None: ...
    def gap(self, offset: int, length: int, /) -> None: ...
    def fin(self, offset: int, /) -> None: ...
    def tunnel(self) -> None: ...
