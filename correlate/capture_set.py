"""The capture-set file: which capture file is which point, on which host, of which kind, on which clock.

``hopscope analyze --capture-set set.yaml`` reads it; a YAML mapping with one key, ``points``, a
list of points::

    points:
      - point: client        # the capture point's name (unique in the set)
        file: client.pcap    # relative to the set file's folder, or absolute
        host: web-1          # the machine it was taken on (clock and proxy host)
        kind: pod            # pod, node, nat, hypervisor, switch, gateway, proxy
        clock: rack-a        # optional: a clock group; points of one group share a clock

``point`` and ``file`` are required; a point without ``host`` or ``kind`` gets them inferred from
its records as a capture named on the command line does (``correlate.infer``). Validation is strict
and happens before any capture is read: an unknown key, a missing file, a duplicate point name or an
unknown kind is a ``ConfigError`` naming the entry.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from hopscope.errors import ConfigError
from hopscope.records import HopKind

#: Keys of one point: required, then optional.
REQUIRED = ("point", "file")
OPTIONAL = ("host", "kind", "clock")
KINDS = tuple(k.value for k in HopKind if k.value)


@dataclass(frozen=True, slots=True)
class SetPoint:
    """One point of a capture set, its file resolved against the set file's folder."""

    point: str
    file: str
    host: str = ""
    kind: str = ""
    clock: str = ""


def load_capture_set(path: str) -> list[SetPoint]:
    """The points of the capture-set file at ``path``, validated (see the module docstring)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"capture set {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"capture set {path}: not valid YAML ({_first_line(exc)})") from exc
    return parse_capture_set(doc, path)


def parse_capture_set(doc: Any, path: str) -> list[SetPoint]:
    """The points of an already parsed capture-set document; ``path`` names it in errors and anchors
    relative file names."""
    if not isinstance(doc, dict) or "points" not in doc:
        raise ConfigError(f"capture set {path}: expected a mapping with a 'points' list")
    extra = sorted(set(doc) - {"points"})
    if extra:
        raise ConfigError(f"capture set {path}: unknown key {_unknown(extra[0], ('points',))} at the top level")
    entries = doc["points"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"capture set {path}: 'points' must be a non-empty list")
    base = os.path.dirname(os.path.abspath(path))
    out: list[SetPoint] = []
    where: dict[str, int] = {}
    for i, entry in enumerate(entries, start=1):
        sp = _entry(entry, i, path, base)
        if sp.point in where:
            raise ConfigError(f"capture set {path}: point {sp.point!r} is listed twice (entries {where[sp.point]} "
                              f"and {i}); point names must be unique")
        where[sp.point] = i
        out.append(sp)
    return out


def _entry(entry: Any, i: int, path: str, base: str) -> SetPoint:
    at = f"capture set {path}, entry {i}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{at}: expected a mapping with {', '.join(REQUIRED)} (and {', '.join(OPTIONAL)})")
    unknown = sorted(set(map(str, entry)) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ConfigError(f"{at}: unknown key {_unknown(unknown[0], REQUIRED + OPTIONAL)}")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ConfigError(f"{at}: missing {' and '.join(repr(k) for k in missing)}")
    values: dict[str, str] = {}
    for key in REQUIRED + OPTIONAL:
        value = entry.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"{at}: {key} must be a string, got {type(value).__name__}")
        values[key] = str(value).strip()
    name = values["point"]
    at = f"capture set {path}, point {name!r}" if name else at
    for key in REQUIRED:
        if not values[key]:
            raise ConfigError(f"{at}: {key} is empty")
    if values["kind"] and values["kind"] not in KINDS:
        raise ConfigError(f"{at}: unknown kind {values['kind']!r}; one of {', '.join(KINDS)}")
    file = os.path.join(base, os.path.expanduser(values["file"]))
    if not os.path.isfile(file):
        raise ConfigError(f"{at}: no file {file}")
    return SetPoint(name, file, values["host"], values["kind"], values["clock"])


def _unknown(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def dump_capture_set(points: list[SetPoint], path: str) -> None:
    """Write ``points`` as a capture-set file at ``path`` (files relative to its folder when inside it)."""
    import yaml

    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for p in points:
        rel = os.path.relpath(os.path.abspath(p.file), base)
        row = {"point": p.point, "file": os.path.abspath(p.file) if rel.startswith("..") else rel}
        row.update({k: getattr(p, k) for k in OPTIONAL if getattr(p, k)})
        rows.append(row)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"points": rows}, fh, sort_keys=False)
