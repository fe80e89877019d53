"""Identity hashes (hopscope/ids.py and probes/csrc/ids.h) against one table of frozen vectors.

The expected values were computed once and written down: a change to either implementation, or to a
definition, changes stored flow, request, trace and span ids and fails here. The C header is reached
through the test hooks of the compiled ``_meter`` kernel. The flow ids the meter gives the lab
captures are recomputed from the records' own fields.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hopscope import ids
from hopscope.probes import kernels
from hopscope.probes.analyze import analyze_capture
from hopscope.probes.packets import addr_halves

_meter = kernels.load("_meter")
_V4 = 0xFFFF_0000_0000  # IPv4-mapped prefix in the low half
SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples").rglob("*.pcap"))

#: function name -> [(arguments, expected value)]
VECTORS: dict[str, list[tuple[tuple[Any, ...], int]]] = {
    "mix64": [
        ((0x0,), 0x0000000000000000),
        ((0x1,), 0x5692161D100B05E5),
        ((0x8000000000000000,), 0x25C26EA579CEA98A),
        ((0xFFFFFFFFFFFFFFFF,), 0xB4D055FCF2CBBD7B),
        ((0x9E3779B97F4A7C15,), 0xE220A8397B1DCDAF),  # splitmix64's first output for seed 0
        ((0x0123456789ABCDEF,), 0xB2C058E4EBB5112C),
    ],
    "payload_hash": [
        ((b"",), 0x0000000000000000),
        ((b"a",), 0x40F89E395B66422F),
        ((b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n",), 0x5EA93349D5A9FE47),
        ((bytes(range(128)),), 0xC2D13DF1B6617E82),  # exactly one BLAKE2b block
        ((bytes(range(129)),), 0xF667E47A6D5350A6),
        ((bytes(range(256)) * 2,), 0xE4AC345F5AEB2A0E),
    ],
    "text_hash64": [
        (("",), 0xE4A6A0577479B2B4),
        (("eth0",), 0xDF8BEBAE1E675213),
        (("client1-pod",), 0x0086DD73605AA0EC),
        (("zürich-节点-🚀",), 0x6231D630C24CAC4C),
        (("vxlan vni=42 10.0.0.1>10.0.0.2",), 0x7F189DCEBDC49CEE),
        (("x" * 200,), 0x56304C0E1B76A18D),
    ],
    "endpoint_hash": [
        ((0x0, _V4 | 0x0A000001, 443), 0xB8C86E74B69C5AC1),  # 10.0.0.1:443
        ((0x0, _V4 | 0xC0A80102, 51234), 0x4830EE3240D159AD),  # 192.168.1.2:51234
        ((0x20010DB800000000, 0x1, 8080), 0x041CDD156C9F399D),  # [2001:db8::1]:8080
        ((0x0, 0x0, 0), 0xAA012A1F84211910),
        ((0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 65535), 0x21C244681AC69FEC),
    ],
    "flow_key": [
        # (src_ep, dst_ep, proto, point_hash): both directions give one key; no tunnel, no VLAN (Zeek's fivetuple)
        ((0xB8C86E74B69C5AC1, 0x4830EE3240D159AD, 6, 0x0086DD73605AA0EC), 0x8D5DC63E02597BEF),
        ((0x4830EE3240D159AD, 0xB8C86E74B69C5AC1, 6, 0x0086DD73605AA0EC), 0x8D5DC63E02597BEF),
        ((0x041CDD156C9F399D, 0xAA012A1F84211910, 17, 0x0086DD73605AA0EC), 0xD81271A09869B84B),
        ((0x0, 0x0, 0, 0x0), 0x1957A7604E215178),
        ((0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 255, 0xFFFFFFFFFFFFFFFF), 0x79D3FE047660A134),
    ],
    "flow_id": [
        ((0x874026F39EA0B02F, 1_700_000_000_123_456_789), 0x98FAA43681E6D28B),
        ((0x874026F39EA0B02F, 0), 0xDB4951E7C5AD4A25),
        ((0x1, 0), 0x5692161D100B05E5),
        ((0xFFFFFFFFFFFFFFFF, 2**63 - 1), 0x96447D3327BE0615),
        ((0x874026F39EA0B02F, -1), 0x8FEF60EDE9D22BB5),
    ],
    "sha1": [  # Community ID's digest (only in C here; Python's is hashlib's), as a 160-bit integer
        ((b"",), 0xDA39A3EE5E6B4B0D3255BFEF95601890AFD80709),
        ((b"abc",), 0xA9993E364706816ABA3E25717850C26C9CD0D89D),
        ((bytes(range(55)),), 0x8AE2D46729CFE68FF927AF5EEC9C7D1B66D65AC2),  # padding fits one block
        ((bytes(range(56)),), 0x636E2EC698DAC903498E648BD2F3AF641D3C88CB),  # padding needs a second
        ((bytes(range(119)),), 0x41C89D06001BAB4AB78736B44EFE7CE18CE6AE08),
    ],
    "parts_hash64": [
        ((), 0xE4A6A0577479B2B4),
        (("",), 0xE4A6A0577479B2B4),
        (("edge", 42), 0x748C8B50801FE38D),
        (("a", "b"), 0xF84C4D669FE0D410),
        (("a\x1fb",), 0xF84C4D669FE0D410),  # the separator is not escaped: parts must not contain it
        (("点", -1, ""), 0xCAB9DA857E6EC29B),
    ],
    "request_id": [
        (("edge-pod", 0x8F3E2A1B4C5D6E7F, 1001, 1_700_000_000_000_000_000, 0), 0xB3C45AB978A0F6C0),
        (("edge-pod", 1, 0, 0, 53124), 0xDB27388CEE55890D),
        (("", 0, 0, 0, 0), 0x7907356F67A15441),
    ],
    "dns_key": [
        ((4660, "Example.COM.", 1), 0x6C16D243DF0761AA),
        ((4660, "example.com", 1), 0x6C16D243DF0761AA),
        ((0, "", 0), 0x3B6B4663A1B3CEF7),
        ((65535, "bücher.example.", 28), 0xF673C1EC4F6FFAD1),
    ],
    "dns_correlation_key": [
        ((4660, "Example.COM.", 1), 0x6C16D243DF0761AA),
        ((0, "api.shop.svc.cluster.local", 28), 0x60AD2811506BA7C9),  # dns_key 0x60AD2810506BA7C9, bit 32 set
    ],
    "trace_key": [
        (("c5d747ae53fd5ebec985f9019d61114c",), 0xC5D747AE53FD5EBE),
        (("",), 0x0),
    ],
    "tuple_flow_id": [
        (("edge-pod", 6, "10.0.0.1", 51234, "10.0.0.2", 443), 0x13920E636119F389),
    ],
    "hop_hash": [
        (("hv-tap", "eth0"), 0x0F8E68722E811341),
        (("client1-pod", ""), 0x2E42D42C25C2FF1A),
    ],
    "span_id": [
        ((0x0123456789ABCDEF, 0x0F8E68722E811341, 0x8F3E2A1B4C5D6E7F, 0x55, 0), 0xAB16BEBCA3BF9B1D),
        ((0, 0, 0, 0, 0), 0x0000000000000000),
        ((2**64 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1, 3), 0xBF341D649E16FE0D),
    ],
}

#: (matcher key, anchors, earliest request time, seeds) -> trace id
TRACE_VECTORS: list[tuple[tuple[int, tuple[int, ...], int, tuple[int, int]], str]] = [
    ((0x10000000000003E9, (1000, 5000, 5001, 77), 1_700_000_000_000_000_000, ids.TRACE_SEEDS_L7),
     "c5d747ae53fd5ebec985f9019d61114c"),
    ((0x30000000000003E8, (5000, 4321, 9), 1_700_000_000_000_000_000, ids.TRACE_SEEDS_L4),
     "7be943bb5a33a788bec9aabbeb2416ea"),
    ((0, (), 0, ids.TRACE_SEEDS_L7), "83cd62b96d17d77864d518a44ffc1d6e"),
]  # fmt: skip


def _sha1(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest(), "big")


PYTHON: dict[str, Callable[..., int]] = {
    "mix64": ids.mix64, "payload_hash": ids.payload_hash, "text_hash64": ids.text_hash64,
    "endpoint_hash": ids.endpoint_hash, "flow_key": ids.flow_key, "flow_id": ids.flow_id, "sha1": _sha1,
    "parts_hash64": ids.parts_hash64, "request_id": ids.request_id, "dns_key": ids.dns_key,
    "dns_correlation_key": ids.dns_correlation_key, "trace_key": ids.trace_key,
    "tuple_flow_id": ids.tuple_flow_id, "hop_hash": ids.hop_hash, "span_id": ids.span_id,
}  # fmt: skip


def _c_functions() -> dict[str, Callable[..., int]]:
    """The hashes of ids.h, through the ``_meter`` kernel's test hooks."""
    m: Any = _meter
    return {
        "mix64": m.mix64, "payload_hash": m.payload_hash, "endpoint_hash": m.endpoint_hash,
        "flow_key": m.flow_key, "flow_id": m.flow_id, "text_hash64": m.text_hash64,
        "sha1": lambda data: int.from_bytes(m.sha1(data), "big"),
    }  # fmt: skip


C_NAMES = ("mix64", "payload_hash", "text_hash64", "endpoint_hash", "flow_key", "flow_id", "sha1")


def _cases(names: tuple[str, ...] | None = None) -> list[Any]:
    return [pytest.param(name, args, want, id=f"{name}-{k}")
            for name, rows in VECTORS.items() if names is None or name in names
            for k, (args, want) in enumerate(rows)]  # fmt: skip


@pytest.mark.parametrize(("name", "args", "want"), _cases())
def test_python_matches_vectors(name: str, args: tuple[Any, ...], want: int) -> None:
    assert PYTHON[name](*args) == want


@pytest.mark.skipif(
    _meter is None and (os.environ.get("HOPSCOPE_REQUIRE_SERVICES") != "1" or not kernels.enabled()),
    reason="the _meter kernel is not built (or HOPSCOPE_NATIVE=0)",
)
@pytest.mark.parametrize(("name", "args", "want"), _cases(C_NAMES))
def test_c_header_matches_vectors(name: str, args: tuple[Any, ...], want: int) -> None:
    assert _meter is not None, "the _meter kernel is not built"
    assert _c_functions()[name](*args) == want


def _column(name: str, k: int) -> np.ndarray[Any, Any]:
    """Argument ``k`` of every vector of ``name`` as a column (uint64, or int64 for signed values)."""
    values = [args[k] for args, _ in VECTORS[name]]
    return np.array(values, np.int64 if min(values) < 0 else np.uint64)


def _wants(name: str) -> list[int]:
    return [want for _, want in VECTORS[name]]


def test_array_forms_match_vectors() -> None:
    assert ids.mix64_array(_column("mix64", 0)).tolist() == _wants("mix64")
    assert ids.endpoint_hash_array(*(_column("endpoint_hash", k) for k in range(3))).tolist() == _wants("endpoint_hash")
    assert ids.flow_key_array(*(_column("flow_key", k) for k in range(4))).tolist() == _wants("flow_key")
    assert ids.flow_id_array(_column("flow_id", 0), _column("flow_id", 1)).tolist() == _wants("flow_id")
    assert ids.span_id_array(*(_column("span_id", k) for k in range(5))).tolist() == _wants("span_id")
    assert ids.span_id_texts(np.array(_wants("span_id"), np.uint64))[0] == "ab16bebca3bf9b1d"


def test_payload_hashes_column_form_matches_vectors() -> None:
    datas = [args[0] for args, _ in VECTORS["payload_hash"]]
    buf = np.frombuffer(b"--" + b"".join(datas), np.uint8)
    lengths = np.array([len(d) for d in datas], np.int64)
    offsets = 2 + np.cumsum(lengths) - lengths
    assert ids.payload_hashes(buf, offsets, lengths).tolist() == _wants("payload_hash")


@pytest.mark.parametrize(("args", "want"), TRACE_VECTORS)
def test_trace_ids_match_vectors(args: tuple[int, tuple[int, ...], int, tuple[int, int]], want: str) -> None:
    key, anchors, t_min_ns, seeds = args
    assert ids.trace_id(key, anchors, t_min_ns, seeds) == want
    first, second = ids.trace_id_halves(
        np.array([key], np.uint64),
        np.array([anchors], np.uint64).reshape(1, len(anchors)),
        np.array([t_min_ns], np.uint64),
        seeds,
    )
    assert ids.trace_id_texts(first, second) == [want]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_lab_flow_ids_are_ids_flow_id_of_their_fields(path: Path) -> None:
    """Every TCP/UDP flow the meter reports has the flow id ids.py computes from its own fields."""
    c = analyze_capture(path).flows.columns
    rows = [i for i, proto in enumerate(c["proto"].tolist()) if proto in (6, 17)]
    assert rows
    for i in rows:
        (orig_hi, orig_lo), (resp_hi, resp_lo) = addr_halves(c["orig_h"][i]), addr_halves(c["resp_h"][i])
        orig = ids.endpoint_hash(orig_hi, orig_lo, int(c["orig_p"][i]))
        resp = ids.endpoint_hash(resp_hi, resp_lo, int(c["resp_p"][i]))
        key = ids.flow_key(orig, resp, int(c["proto"][i]), ids.text_hash64(c["point"][i]))
        assert ids.flow_id(key, int(c["start_ns"][i])) == int(c["flow_id"][i])
