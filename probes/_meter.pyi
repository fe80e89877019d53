"""Type stub of the compiled kernel probes/csrc/meter.c (the flow meter; glue in probes/meter_native.py)."""

from typing import Any

RECORD_FIELDS: tuple[str, ...]
COLUMNS: tuple[str, ...]
CONN_STATES: tuple[str, ...]
CLOSE_TYPES: tuple[str, ...]

class Engine:
    def __init__(
        self, tcp_idle_ns: int, udp_idle_ns: int, linger_ns: int, interval_ns: int, sweep_ns: int, max_flows: int,
        payload_hash_bytes: int, likely_server: bytes, icmp4_pair: bytes, icmp4_two_way: bytes, icmp6_pair: bytes,
        icmp6_two_way: bytes,
    ) -> None: ...  # fmt: skip
    def process(
        self, columns: tuple[Any, ...], count: int, buf: Any, rows: Any, point_hashes: Any, point_ids: Any,
        tunnel_hashes: Any, tunnel_ids: Any, /,
    ) -> None: ...  # fmt: skip
    def flush(self, chunk: int, /) -> int: ...
    def take(self) -> tuple[bytes, int, bytes]: ...
    def counters(self) -> dict[str, int]: ...

def blake2b64(data: bytes, /) -> int: ...
def sha1(data: bytes, /) -> bytes: ...
