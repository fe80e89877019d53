"""Records as JSON, generated from ``hopscope.records`` with one rule for 64-bit values.

JavaScript numbers are exact only up to 2**53: a nanosecond time of today (about 1.7e18) loses up to
256 ns in a browser, and a 64-bit id changes. So in JSON, **identities and times of 64 bits are
decimal strings**: every UInt64/Int64 field named ``*_id``, ``*_hash``, ``*_ns`` or ``version``
(``"start_ns": "1700000000123456789"``). Counters (``*_pkts``, ``*_bytes``) and durations in
microseconds (``*_us``) stay numbers: they stay below 2**53 (9 PB; 285 years). The OpenAPI schema
says which fields are strings (``type: string`` with a digits pattern); ``record_from_json`` reads a
record back.

The routes keep returning the record dataclasses: ``FlowJson`` and friends are the dataclass with a
serializer (one dict per record, the wide fields as ``str``) and the schema of the JSON it makes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field, PlainSerializer, WithJsonSchema, create_model

from hopscope.records import Column, ColumnType, FlowRecord, Record, RequestRecord, Span, Trace

R = TypeVar("R", bound=Record)

_WIDE = (ColumnType.U64, ColumnType.I64)
_STRING_NAME = re.compile(r".*(_id|_hash|_ns)|version")
_DIGITS = r"^-?[0-9]+$"


def sent_as_string(col: Column) -> bool:
    """The rule: 64-bit identities and ns times are strings in JSON."""
    return col.type in _WIDE and bool(_STRING_NAME.fullmatch(col.name))


def string_fields(record_type: type[Record]) -> frozenset[str]:
    return frozenset(c.name for c in record_type.columns() if sent_as_string(c))


def _json_type(col: Column) -> Any:
    if sent_as_string(col):
        return Annotated[str, Field(pattern=_DIGITS)]
    return str if col.type is ColumnType.STR else float if col.type is ColumnType.F32 else int


def json_schema(record_type: type[Record]) -> dict[str, Any]:
    """The JSON schema of a record as sent: every field documented, the wide ones strings."""
    fields: dict[str, Any] = {}
    for col in record_type.columns():
        doc = col.doc + (" (decimal string: 64 bits)" if sent_as_string(col) else "")
        fields[col.name] = (_json_type(col), Field(description=doc))
    model = create_model(record_type.__name__, __doc__=record_type.__doc__, **fields)
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def to_json(record_type: type[Record]) -> Callable[[Record], dict[str, Any]]:
    """A function making the JSON object of one record of ``record_type``."""
    names = [c.name for c in record_type.columns()]
    wide = [i for i, c in enumerate(record_type.columns()) if sent_as_string(c)]

    def convert(record: Record) -> dict[str, Any]:
        values = [getattr(record, name) for name in names]
        for i in wide:
            values[i] = str(values[i])
        return dict(zip(names, values, strict=True))

    return convert


def record_from_json(record_type: type[R], data: dict[str, Any]) -> R:
    """A record from its JSON object (the string fields back to ints)."""
    wide = string_fields(record_type)
    return record_type(**{k: int(v) if k in wide else v for k, v in data.items()})


def as_json(record_type: type[Record]) -> tuple[PlainSerializer, WithJsonSchema]:
    """The metadata that makes ``Annotated[record_type, *as_json(record_type)]`` a response type: the
    record serialized by ``to_json``, documented by ``json_schema``."""
    return (PlainSerializer(to_json(record_type), return_type=dict[str, Any]),
            WithJsonSchema(json_schema(record_type)))


FlowJson = Annotated[FlowRecord, *as_json(FlowRecord)]
RequestJson = Annotated[RequestRecord, *as_json(RequestRecord)]
SpanJson = Annotated[Span, *as_json(Span)]
TraceJson = Annotated[Trace, *as_json(Trace)]


def wide_as_strings(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON object (a graph's attributes, a node, a link) with its integer ids and ns times as
    strings, by the same names as the records' rule."""
    return {
        k: str(v) if isinstance(v, int) and not isinstance(v, bool) and _STRING_NAME.fullmatch(k) else v
        for k, v in obj.items()
    }
