"""``json.dumps(obj, indent=n)`` at the speed of the stdlib's C encoder, byte for byte the same text.

With ``indent`` set, the stdlib encodes in pure Python (its C encoder only writes compact text), which
made the JSON of ``hopscope analyze`` (tens of thousands of traces, each with its hops) the largest
part of its run. Most containers in such a document hold only scalars (a hop, a request, an address):
their indented text is the C encoder's compact text with the item separator ``",\\n" + padding``, so
each is one C call; containers holding containers are walked here, their scalars written as the stdlib
writes them (``encode_basestring_ascii``, ``int.__repr__``, ``float.__repr__``, ``NaN``/``Infinity``).

Defaults only: ``ensure_ascii``, ``allow_nan``, no ``sort_keys``, no ``default`` (a value JSON cannot
hold raises ``TypeError`` as ``json.dumps`` does). tests/correlate/test_json_indent.py compares the two.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final

_INF = float("inf")


def dumps(obj: Any, indent: int = 1) -> str:
    """``json.dumps(obj, indent=indent)``."""
    parts: list[str] = []
    _value(obj, 0, " " * indent, parts, {})
    return "".join(parts)


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == _INF:
        return "Infinity"
    if o == -_INF:
        return "-Infinity"
    return float.__repr__(o)


def _scalar(o: Any) -> str | None:
    """The JSON text of a scalar, or None for a container (or a value JSON cannot hold)."""
    if isinstance(o, str):
        return encode_basestring_ascii(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, int):
        return int.__repr__(o)
    if isinstance(o, float):
        return _float(o)
    return None


def _key(k: Any) -> str:
    """A dict key as json.dumps writes it (str, or a number, bool or None turned into text)."""
    if isinstance(k, str):
        return encode_basestring_ascii(k)
    if isinstance(k, float):
        return encode_basestring_ascii(_float(k))
    if k is True:
        return '"true"'
    if k is False:
        return '"false"'
    if k is None:
        return '"null"'
    if isinstance(k, int):
        return encode_basestring_ascii(int.__repr__(k))
    raise TypeError(f"keys must be str, int, float, bool or None, not {k.__class__.__name__}")


#: Types whose values the C encoder writes as ``_scalar`` does (subclasses take the walk, which is exact)
_SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def _flat(values: Any) -> bool:
    return set(map(type, values)) <= _SCALAR_TYPES


def _encoder(inner: str, cache: dict[str, Any]) -> Any:
    """A function writing a container of scalars compactly, items joined by ``",\n" + inner``: the C
    encoder made once per padding (``JSONEncoder.encode`` makes one per call), else the stdlib's."""
    enc = cache.get(inner)
    if enc is None:
        plain = json.JSONEncoder(separators=(",\n" + inner, ": "))
        if c_make_encoder is None:
            enc = plain.encode
        else:  # no circular check: a container of scalars holds no container
            make = c_make_encoder(None, plain.default, encode_basestring_ascii, None, ": ", ",\n" + inner,
                                  False, False, True)  # fmt: skip
            enc = lambda o: "".join(make(o, 0))  # noqa: E731
        cache[inner] = enc
    return enc


def _value(o: Any, level: int, pad: str, out: list[str], cache: dict[str, Any]) -> None:
    text = _scalar(o)
    if text is not None:
        out.append(text)
        return
    if isinstance(o, dict):
        if not o:
            out.append("{}")
            return
        inner = pad * (level + 1)
        if _flat(o.values()):  # keys: the C encoder turns numbers, bools and None into text as _key does
            compact = _encoder(inner, cache)(o)  # "{" items "}", items joined by ",\n" + inner
            out.append("{\n" + inner + compact[1:-1] + "\n" + pad * level + "}")
            return
        out.append("{")
        first = True
        for k, v in o.items():
            out.append(("\n" if first else ",\n") + inner + _key(k) + ": ")
            first = False
            _value(v, level + 1, pad, out, cache)
        out.append("\n" + pad * level + "}")
        return
    if isinstance(o, (list, tuple)):
        if not o:
            out.append("[]")
            return
        inner = pad * (level + 1)
        if _flat(o):
            compact = _encoder(inner, cache)(o)
            out.append("[\n" + inner + compact[1:-1] + "\n" + pad * level + "]")
            return
        out.append("[")
        first = True
        for v in o:
            out.append(("\n" if first else ",\n") + inner)
            first = False
            _value(v, level + 1, pad, out, cache)
        out.append("\n" + pad * level + "]")
        return
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")
