"""Type stub of the compiled kernel probes/csrc/l7.c (HTTP/1.x header blocks, payload hashes)."""

HEAD_NAMES: tuple[bytes, ...]

def parse_head(
    block: bytes | bytearray | memoryview, is_request: bool, /
) -> tuple[str, str, int, bool, tuple[str | None, ...]] | None: ...
def payload_hash(data: bytes | bytearray | memoryview, /) -> int: ...
def parse_dns(
    data: bytes | bytearray | memoryview, /
) -> tuple[int, bool, int, int, str, int, tuple[str, ...]] | str: ...
def head_block(
    payload: bytes | bytearray | memoryview, pos: int, is_request: bool, /
) -> tuple[int, tuple[str, str, int, bool, tuple[str | None, ...]] | None, int] | None: ...
