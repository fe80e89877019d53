"""The configuration file of ``hopscope agent``: one YAML document, loaded into a frozen tree.

The fields, their types and meanings are the contract written in deploy/k8s/README.md ("Agent
configuration"); this module follows it field for field. Loading checks everything a later failure
would otherwise hide: unknown and missing fields, wrong types (a ``bool`` is not an ``int``), regular
expressions that do not compile, a point name template with an unknown placeholder, a hop kind that
``hopscope.records.HopKind`` does not define. Any string value may hold ``${env:NAME}``, replaced by
the environment variable ``NAME`` when the file is read; an unset variable is an error. Every error is
a ``ConfigError`` naming the field (``interfaces.rescan_s: expected int, got str``).

Fields the contract lists without a default in this module are required: ``schema`` and
``kafka.bootstrap``. The others default to the values of deploy/k8s/agent-config.yaml (``host``: this
machine's name, ``namespaces.proc_root``: ``/proc``).
"""

from __future__ import annotations

import os
import re
import socket
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from hopscope.errors import ConfigError, one_line
from hopscope.records import HopKind

SCHEMA: Final = "hopscope.agent/1"
ENV_REF: Final = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: The placeholders of ``points.name``.
POINT_FIELDS: Final = frozenset({"host", "netns", "iface"})
REQUIRED: Final = object()  # marks a field without a default


@dataclass(frozen=True, slots=True)
class InterfacesConfig:
    """Which interfaces are captured, and how often the agent looks for new and gone ones."""

    include: re.Pattern[str]  # matched against the whole interface name
    exclude: re.Pattern[str] | None  # None: nothing excluded ('' in the file)
    rescan_s: int

    def selects(self, name: str) -> bool:
        """True when interface ``name`` is included and not excluded."""
        if self.exclude is not None and self.exclude.fullmatch(name):
            return False
        return self.include.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class NamespacesConfig:
    """Where network namespaces are found."""

    root: bool  # capture in the agent's own (the node's) namespace too
    netns_dirs: tuple[str, ...]  # directories of named namespaces (/var/run/netns)
    proc_root: str  # the host's /proc: PID/ns/net finds namespaces without a name


@dataclass(frozen=True, slots=True)
class PointsConfig:
    name: str  # template of {host}, {netns}, {iface}

    def point_name(self, host: str, netns: str, iface: str) -> str:
        return self.name.format(host=host, netns=netns, iface=iface)


@dataclass(frozen=True, slots=True)
class HopKindsConfig:
    infer: bool
    overrides: tuple[tuple[re.Pattern[str], HopKind], ...]  # in file order; the first whole match wins

    def override(self, iface: str) -> HopKind | None:
        return next((kind for pattern, kind in self.overrides if pattern.fullmatch(iface)), None)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    bpf: str  # tcpdump filter on every interface ('': everything)
    l7: bool  # HTTP/1.x and DNS request records
    tls: bool  # TLS exchange records of TLS connections (with l7; off: those connections are not parsed)
    ring_mb: int  # TPACKET_V3 ring per interface, MiB
    max_flows: int  # flow table limit per interface
    checksums: bool  # validate checksums as Zeek does (off: outgoing packets carry offloaded ones)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap: str  # host:port[,host:port]
    topic_prefix: str  # records go to PREFIX.flows and PREFIX.requests


@dataclass(frozen=True, slots=True)
class InventoryConfig:
    kubernetes: bool


@dataclass(frozen=True, slots=True)
class PacketsConfig:
    """The rolling packet store each point keeps on disk (``hopscope.probes.packet_store``)."""

    enabled: bool
    dir: str  # one directory per point below it
    max_mb: int  # per point: all its segments together
    max_age_s: int  # per point: segments whose last packet is older are dropped
    segment_mb: int  # a segment is closed at this size (at most max_mb)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One agent's configuration (deploy/k8s/README.md, "Agent configuration")."""

    schema: str
    host: str
    interfaces: InterfacesConfig
    namespaces: NamespacesConfig
    points: PointsConfig
    hop_kinds: HopKindsConfig
    capture: CaptureConfig
    kafka: KafkaConfig
    inventory: InventoryConfig
    report_interval_s: int
    packets: PacketsConfig = PacketsConfig(False, "/var/lib/hopscope/packets", 1024, 3600, 64)


# --- checking -----------------------------------------------------------------------------------------


def _positive_int(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ConfigError(f"{where}: must be at least 1, got {value}")
    return value


def _typed(kind: type) -> Callable[[str, object], Any]:
    def check(where: str, value: object) -> Any:
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} ({value!r})")
        return value

    return check


def _regex(where: str, value: object) -> re.Pattern[str]:
    text: str = _typed(str)(where, value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {text!r}: {exc}") from exc


def _optional_regex(where: str, value: object) -> re.Pattern[str] | None:
    return _regex(where, value) if _typed(str)(where, value) else None


def _str_list(where: str, value: object) -> tuple[str, ...]:
    items = _typed(list)(where, value)
    return tuple(_typed(str)(f"{where}[{i}]", item) for i, item in enumerate(items))


def _abs_path_list(where: str, value: object) -> tuple[str, ...]:
    paths = _str_list(where, value)
    for i, path in enumerate(paths):
        if not path.startswith("/"):  # a relative one would be looked up from wherever the agent runs
            raise ConfigError(f"{where}[{i}]: {path!r} is not an absolute path")
    return paths


def _template(where: str, value: object) -> str:
    text: str = _typed(str)(where, value)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid template {text!r}: {exc}") from exc
    unknown = used - POINT_FIELDS
    if unknown or "" in used:
        raise ConfigError(f"{where}: unknown placeholder {sorted(unknown)} in {text!r} "
                          f"(known: {', '.join('{' + f + '}' for f in sorted(POINT_FIELDS))})")  # fmt: skip
    if "iface" not in used:
        raise ConfigError(f"{where}: {text!r} must hold {{iface}} (names must differ per interface)")
    return text


def _overrides(where: str, value: object) -> tuple[tuple[re.Pattern[str], HopKind], ...]:
    table = _typed(dict)(where, value if value is not None else {})
    out = []
    for key, kind in table.items():
        pattern = _regex(f"{where}[{key!r}]", key)
        try:
            out.append((pattern, HopKind(_typed(str)(f"{where}[{key!r}]", kind))))
        except ValueError:
            known = ", ".join(k.value for k in HopKind if k.value)
            raise ConfigError(f"{where}[{key!r}]: unknown hop kind {kind!r} (known: {known})") from None
    return tuple(out)


def _schema(where: str, value: object) -> str:
    if _typed(str)(where, value) != SCHEMA:
        raise ConfigError(f"{where}: this agent reads {SCHEMA!r}, not {value!r}")
    return SCHEMA


_BOOL, _STR = _typed(bool), _typed(str)
#: Each section: field -> (check, default). The README's table, as data.
SECTIONS: Final[dict[str, dict[str, tuple[Callable[[str, object], Any], object]]]] = {
    "interfaces": {"include": (_regex, "veth.*|cni0|eth.*|tap.*|lo"), "exclude": (_optional_regex, ""),
                   "rescan_s": (_positive_int, 5)},
    "namespaces": {"root": (_BOOL, True), "netns_dirs": (_abs_path_list, ["/var/run/netns"]),
                   "proc_root": (_STR, "/proc")},
    "points": {"name": (_template, "{host}/{netns}/{iface}")},
    "hop_kinds": {"infer": (_BOOL, True), "overrides": (_overrides, {})},
    "capture": {"bpf": (_STR, ""), "l7": (_BOOL, True), "tls": (_BOOL, True), "ring_mb": (_positive_int, 8),
                "max_flows": (_positive_int, 1_000_000), "checksums": (_BOOL, False)},
    "kafka": {"bootstrap": (_STR, REQUIRED), "topic_prefix": (_STR, "hopscope")},
    "inventory": {"kubernetes": (_BOOL, False)},
    "packets": {"enabled": (_BOOL, False), "dir": (_STR, "/var/lib/hopscope/packets"),
                "max_mb": (_positive_int, 1024), "max_age_s": (_positive_int, 3600),
                "segment_mb": (_positive_int, 64)},
}  # fmt: skip
TOP: Final[dict[str, tuple[Callable[[str, object], Any], object]]] = {
    "schema": (_schema, REQUIRED), "host": (_STR, ""), "report_interval_s": (_positive_int, 10),
}  # fmt: skip
SECTION_TYPES: Final[dict[str, Callable[..., Any]]] = {
    "interfaces": InterfacesConfig, "namespaces": NamespacesConfig, "points": PointsConfig,
    "hop_kinds": HopKindsConfig, "capture": CaptureConfig, "kafka": KafkaConfig, "inventory": InventoryConfig,
    "packets": PacketsConfig,
}  # fmt: skip


def _fields(where: str, raw: object, table: Mapping[str, tuple[Callable[[str, object], Any], object]],
            extra: frozenset[str] = frozenset()) -> dict[str, Any]:  # fmt: skip
    """Check one mapping against its table: no unknown field, every required one, each value's type."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the file'}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(table) - extra)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted({*table, *extra}))})")
    out = {}
    for name, (check, default) in table.items():
        if name not in raw and default is REQUIRED:
            raise ConfigError(f"{prefix}{name}: required field missing")
        out[name] = check(f"{prefix}{name}", raw.get(name, default))
    return out


# --- environment references ------------------------------------------------------------------------


def substitute_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """``value`` with ``${env:NAME}`` replaced in every string (mapping values and list items too)."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{where or 'value'}: environment variable {name} is not set")
            return env[name]

        return ENV_REF.sub(one, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


# --- loading ------------------------------------------------------------------------------------------


def parse_config(text: str, env: Mapping[str, str] | None = None) -> AgentConfig:
    """An ``AgentConfig`` from the YAML ``text`` (``env``: the environment; default ``os.environ``)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the agent configuration is not valid YAML: {one_line(exc)}") from exc
    raw = substitute_env(raw if raw is not None else {}, os.environ if env is None else env)
    top = _fields("", raw, TOP, extra=frozenset(SECTIONS))
    sections = {name: SECTION_TYPES[name](**_fields(name, raw.get(name, {}), table))
                for name, table in SECTIONS.items()}  # fmt: skip
    packets = sections["packets"]
    if packets.segment_mb > packets.max_mb:
        raise ConfigError(f"packets.segment_mb: {packets.segment_mb} exceeds packets.max_mb ({packets.max_mb})")
    return AgentConfig(
        schema=top["schema"], host=top["host"] or socket.gethostname(),
        report_interval_s=top["report_interval_s"], **sections,
    )  # fmt: skip


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and check the agent configuration file at ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the agent configuration {path}: {exc.strerror or exc}") from exc
    try:
        return parse_config(text, env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
