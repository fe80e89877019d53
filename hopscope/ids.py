"""Every identity hash that leaves a process: flow keys and ids, payload hashes, request, trace and span ids.

Each function's docstring states its definition byte for byte, so another implementation can be written
from it; ``probes/csrc/ids.h`` is the C one (flow keys, flow ids, payload hashes) and ``tests/test_ids.py``
holds frozen vectors both are checked against. Changing a definition here changes stored ids: the
vectors then fail on purpose.

Conventions used throughout:

- all values are unsigned 64-bit integers; arithmetic wraps modulo 2^64;
- a 64-bit digest is BLAKE2b (RFC 7693) with an 8-byte digest, no key, salt or personalisation, and
  its 8 digest bytes are read **big-endian** (``int.from_bytes(digest, "big")``);
- text is encoded as UTF-8 (lone surrogates, as from ``surrogateescape`` decoding, are written back
  as the bytes they stand for);
- a hash of several parts hashes the text of each part (``str(part)``: ints in decimal) joined with
  the ASCII unit separator ``0x1F`` (parts must not contain it);
- "never 0" means a result of 0 is replaced by 1, so that 0 can mean "none".

Community ID v1 (``community_id`` of flow records) is defined by its public specification and
implemented in ``hopscope.probes.community_id`` (SHA-1, base64); ``ids.h`` holds its SHA-1.
"""

from __future__ import annotations

try:  # what hashlib.blake2b is, without the OpenSSL hashes hashlib loads (4 ms of every command's start-up)
    from _blake2 import blake2b
except ImportError:  # an interpreter without CPython's _blake2 module
    from hashlib import blake2b
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Ints = npt.NDArray[np.integer[Any]]

MASK64: Final = (1 << 64) - 1
#: 2^64 / golden ratio: added to inputs of ``mix64`` so that 0 does not map to 0.
GOLDEN: Final = 0x9E3779B97F4A7C15
MIX_M1: Final = 0xBF58476D1CE4E5B9
MIX_M2: Final = 0x94D049BB133111EB
#: How many leading payload bytes of a message or flow direction ``payload_hash`` is given.
PAYLOAD_HASH_BYTES: Final = 64
#: Separator between the parts of ``parts_hash64`` (ASCII unit separator).
PART_SEPARATOR: Final = "\x1f"
#: Seeds of the two 64-bit halves of a trace id, for traces of requests and of L4 connections.
TRACE_SEEDS_L7: Final = (0x6A09E667F3BCC908, 0xBB67AE8584CAA73B)
TRACE_SEEDS_L4: Final = (0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1)

_M1, _M2, _GOLD = np.uint64(MIX_M1), np.uint64(MIX_M2), np.uint64(GOLDEN)


# --- primitives ----------------------------------------------------------------------------------


def mix64(x: int) -> int:
    """splitmix64's finaliser of ``x`` taken modulo 2^64.

    ``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31``
    with logical shifts and products modulo 2^64. A bijection; ``mix64(0) == 0``.
    """
    x &= MASK64
    x = ((x ^ (x >> 30)) * MIX_M1) & MASK64
    x = ((x ^ (x >> 27)) * MIX_M2) & MASK64
    return x ^ (x >> 31)


def mix64_array(a: U64) -> U64:
    """``mix64`` of every element of a uint64 array (a new array)."""
    x = np.asarray(a, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    out: U64 = x ^ (x >> np.uint64(31))
    return out


def blake2b64(data: bytes | memoryview) -> int:
    """BLAKE2b with an 8-byte digest (no key) of ``data``, its digest bytes read big-endian; may be 0."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def text_hash64(text: str) -> int:
    """``blake2b64`` of the UTF-8 bytes of ``text`` (may be 0; ``text_hash64("")`` is the empty digest).

    Hashes of capture point names and tunnel descriptions in flow keys.
    """
    return blake2b64(_utf8(text))


def parts_hash64(*parts: object) -> int:
    """``text_hash64`` of ``"\\x1f".join(str(p) for p in parts)`` (may be 0).

    For example ``parts_hash64("edge", 42)`` hashes the 8 bytes ``b"edge\\x1f42"``.
    """
    return text_hash64(PART_SEPARATOR.join(str(p) for p in parts))


# --- payload hashes ------------------------------------------------------------------------------


def payload_hash(data: bytes | memoryview) -> int:
    """Hash of payload bytes (callers pass the first ``PAYLOAD_HASH_BYTES``): 0 for empty data.

    ``blake2b64(data)``, never 0 for non-empty data. A flow direction's first payload bytes
    (``orig_payload_hash``) and a request's first bytes (``req_payload_hash``) hash alike.
    """
    if not len(data):
        return 0
    return blake2b64(data) or 1


def payload_hashes(buf: npt.NDArray[np.uint8], offsets: I64, lengths: I64) -> U64:
    """``payload_hash`` of ``buf[offsets[k] : offsets[k] + lengths[k]]`` for every k (0 where the length is 0)."""
    out = np.zeros(len(offsets), np.uint64)
    has = np.flatnonzero(np.asarray(lengths) > 0)
    if len(has) == 0:
        return out
    raw, blake = buf.data, blake2b
    digests = b"".join([blake(raw[o : o + n], digest_size=8).digest()
                        for o, n in zip(offsets[has].tolist(), lengths[has].tolist(), strict=True)])  # fmt: skip
    values = np.frombuffer(digests, ">u8").astype(np.uint64)
    values[values == 0] = 1
    out[has] = values
    return out


# --- flows ---------------------------------------------------------------------------------------


def endpoint_hash(addr_hi: int, addr_lo: int, port: int) -> int:
    """Hash of one endpoint: ``mix64(mix64(addr_hi ^ GOLDEN) ^ addr_lo) ^ mix64(port + GOLDEN)``.

    ``addr_hi``/``addr_lo`` are the two big-endian 64-bit halves of the 16-byte address (IPv4 as
    IPv4-mapped IPv6, ``::ffff:a.b.c.d``); ``port`` is the TCP/UDP port, or for ICMP/ICMPv6 the
    message type (source side) and the type of its counterpart (destination side) as the meter
    normalises them.
    """
    return mix64(mix64(addr_hi ^ GOLDEN) ^ addr_lo) ^ mix64(port + GOLDEN)


def endpoint_hash_array(addr_hi: U64, addr_lo: U64, port: U64) -> U64:
    """``endpoint_hash`` column-wise."""
    hi, lo = np.asarray(addr_hi, np.uint64), np.asarray(addr_lo, np.uint64)
    return mix64_array(mix64_array(hi ^ _GOLD) ^ lo) ^ mix64_array(np.asarray(port, np.uint64) + _GOLD)


def flow_key(src_ep: int, dst_ep: int, proto: int, point_hash: int) -> int:
    """Direction-normalised 64-bit key of a flow at one capture point, never 0.

    ``ctx = proto << 56 ^ mix64(point_hash + GOLDEN)``;
    ``key = mix64(mix64(min(src_ep, dst_ep) ^ mix64(ctx)) + max(src_ep, dst_ep))``.
    ``src_ep``/``dst_ep`` are ``endpoint_hash`` values, ``proto`` the IP protocol number and
    ``point_hash`` the ``text_hash64`` of the capture point name. Both directions give one key.
    As Zeek's default ``fivetuple`` connection key (``IPBasedConnKey::InitTuple``), neither the
    enclosing tunnel nor the VLAN is part of it: a connection is its own 5-tuple, at one capture point.
    """
    ctx = (proto << 56) ^ mix64(point_hash + GOLDEN)
    lo, hi = min(src_ep, dst_ep), max(src_ep, dst_ep)
    return mix64(mix64(lo ^ mix64(ctx)) + hi) or 1


def flow_key_array(src_ep: U64, dst_ep: U64, proto: U64, point_hash: U64) -> U64:
    """``flow_key`` column-wise (all arguments uint64 arrays of one length, or broadcastable)."""
    ea, eb = np.asarray(src_ep, np.uint64), np.asarray(dst_ep, np.uint64)
    ctx = np.asarray(proto, np.uint64) << np.uint64(56) ^ mix64_array(np.asarray(point_hash, np.uint64) + _GOLD)
    key = mix64_array(mix64_array(np.minimum(ea, eb) ^ mix64_array(ctx)) + np.maximum(ea, eb))
    key[key == 0] = 1
    return key


def flow_id(key: int, start_ns: int) -> int:
    """Id of one flow: ``mix64(key ^ mix64(start_ns)) | 1`` (odd, so never 0).

    ``key`` is the ``flow_key``, ``start_ns`` the flow's first packet time (ns since the epoch,
    taken modulo 2^64: a negative time is its two's complement).
    """
    return mix64(key ^ mix64(start_ns)) | 1


def flow_id_array(keys: U64, start_ns: I64) -> U64:
    """``flow_id`` column-wise."""
    starts = np.asarray(start_ns).astype(np.uint64)
    return mix64_array(np.asarray(keys, np.uint64) ^ mix64_array(starts)) | np.uint64(1)


def tuple_flow_id(point: str, proto: int, orig_h: str, orig_p: int, resp_h: str, resp_p: int) -> int:
    """Flow id for records whose flow was not metered (no ``flow_key``): odd, so never 0.

    ``parts_hash64(point, proto, orig_h, orig_p, resp_h, resp_p) | 1``, addresses as text.
    """
    return parts_hash64(point, proto, orig_h, orig_p, resp_h, resp_p) | 1


# --- requests ------------------------------------------------------------------------------------


def request_id(point: str, flow_id: int, req_tcp_seq: int, req_first_ns: int, dns_id: int) -> int:
    """Id of one request at one capture point, never 0.

    ``parts_hash64(point, flow_id, req_tcp_seq, req_first_ns, dns_id)`` (0 becomes 1); ``dns_id`` is
    the DNS transaction id, or the HTTP/2 stream id, or 0.
    """
    # parts_hash64's text, formatted in one step (this runs once per request record)
    return text_hash64(f"{point}\x1f{flow_id}\x1f{req_tcp_seq}\x1f{req_first_ns}\x1f{dns_id}") or 1


def dns_key(dns_id: int, qname: str, qtype: int) -> int:
    """Key of one DNS exchange, the same at every hop: ``parts_hash64(dns_id, name, qtype)`` (may be 0).

    ``name`` is ``qname`` lower-cased with trailing dots removed (``"Example.COM."`` -> ``"example.com"``).
    """
    return parts_hash64(dns_id, qname.lower().rstrip("."), qtype)


# --- partitioning --------------------------------------------------------------------------------


def dns_correlation_key(dns_id: int, qname: str, qtype: int) -> int:
    """Correlation (Kafka message) key of a DNS request seen without a TCP handshake.

    ``dns_key(dns_id, qname, qtype) | 2**32``: bit 32 set, so it is never 0 and never equal to a
    TCP ISN (``syn_seq``, below 2^32), the key of TCP observations.
    """
    return dns_key(dns_id, qname, qtype) | (1 << 32)


def trace_key(trace_id: str) -> int:
    """Correlation (Kafka message) key of a span or trace: the first 64 bits of its trace id.

    The integer value of the first 16 hex digits of ``trace_id`` (0 for an empty id).
    """
    return int(trace_id[:16] or "0", 16)


# --- traces and spans ----------------------------------------------------------------------------


def hop_hash(point: str, iface: str) -> int:
    """Hash of one hop's name, input of ``span_id``: ``parts_hash64(point, iface)``."""
    return parts_hash64(point, iface)


def trace_id_halves(keys: U64, anchors: U64, t_min_ns: U64, seeds: tuple[int, int]) -> tuple[U64, U64]:
    """The two 64-bit halves of trace ids, one per root segment (``anchors``: one row per segment).

    Per seed ``s`` (``TRACE_SEEDS_L7`` or ``TRACE_SEEDS_L4``): ``h = mix64(key ^ s)``, then
    ``h = mix64(h ^ a)`` for each anchor ``a`` of the row in column order, then ``mix64(h ^ t_min_ns)``.
    ``key`` is the segment's matcher key, ``t_min_ns`` its earliest raw request time.
    """
    halves = []
    for seed in seeds:
        h = mix64_array(np.asarray(keys, np.uint64) ^ np.uint64(seed))
        for k in range(anchors.shape[1]):
            h = mix64_array(h ^ anchors[:, k])
        halves.append(mix64_array(h ^ np.asarray(t_min_ns, np.uint64)))
    return halves[0], halves[1]


def trace_id_texts(first: U64, second: U64) -> list[str]:
    """Trace ids as text: 32 lowercase hex digits, the first half's 16 then the second's."""
    text = np.stack([first, second], axis=1).astype(">u8").tobytes().hex()
    return [text[i : i + 32] for i in range(0, len(text), 32)]


def trace_id(key: int, anchors: Sequence[int], t_min_ns: int, seeds: tuple[int, int]) -> str:
    """One trace id as text (``trace_id_halves`` and ``trace_id_texts`` of one root segment)."""
    halves = []
    for seed in seeds:
        h = mix64(key ^ seed)
        for a in anchors:
            h = mix64(h ^ a)
        halves.append(mix64(h ^ t_min_ns))
    return f"{halves[0]:016x}{halves[1]:016x}"


def span_id(trace_first: int, hop: int, request_id: int, flow_id: int, hop_index: int) -> int:
    """Id of one span: ``mix64(mix64(mix64(mix64(trace_first ^ hop) ^ request_id) ^ flow_id) ^ hop_index)``.

    ``trace_first`` is the first half of the trace id, ``hop`` the ``hop_hash`` of the span's point
    and interface, ``request_id`` 0 for spans of L4 connections, ``hop_index`` the span's position
    in its trace. Written as 16 lowercase hex digits (``span_id_texts``).
    """
    h = mix64(trace_first ^ hop)
    h = mix64(h ^ request_id)
    h = mix64(h ^ flow_id)
    return mix64(h ^ hop_index)


def span_id_array(trace_first: U64, hop: U64, request_id: U64, flow_id: U64, hop_index: Ints) -> U64:
    """``span_id`` column-wise."""
    h = mix64_array(np.asarray(trace_first, np.uint64) ^ np.asarray(hop, np.uint64))
    h = mix64_array(h ^ np.asarray(request_id, np.uint64))
    h = mix64_array(h ^ np.asarray(flow_id, np.uint64))
    return mix64_array(h ^ np.asarray(hop_index).astype(np.uint64))


def span_id_texts(values: U64) -> list[str]:
    """Span ids as text: 16 lowercase hex digits each."""
    text = np.asarray(values, np.uint64).astype(">u8").tobytes().hex()
    return [text[i : i + 16] for i in range(0, len(text), 16)]
