"""Type stub of the compiled kernel probes/csrc/jsonl.c (JSON lines of record columns)."""

from collections.abc import Sequence
from typing import Any

FLOAT6: int
HEX16: int
INT: int
TEXT: int
TABLE: int
LITERAL: int
SPANS: int

def format_rows(n: int, fields: Sequence[tuple[bytes, int, Any]], out: bytearray, /) -> int: ...
