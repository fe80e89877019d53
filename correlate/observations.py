"""Observations: the rows the matchers group, one per record, as typed columns.

A request record or a flow record becomes one observation of a request (or a connection) at one
capture point. The table keeps the source ``Batch`` and adds what stitching needs as numpy columns:
which hop (``label``: point and interface) saw it, which clock (``domain``: the capture point) stamped
it, the times the request and the response passed, the retransmissions seen in each direction, the
bucket key of its matcher and the anchors that must agree for two observations to be one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hopscope.records import Batch, HopKind

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Rank of a hop kind nearer the client on the client half of a path; only breaks exact time ties.
KIND_RANK: dict[str, int] = {
    HopKind.PROCESS: 0,
    HopKind.POD: 1,
    HopKind.PROXY: 2,
    HopKind.NODE: 3,
    HopKind.NAT: 4,
    HopKind.HYPERVISOR: 5,
    HopKind.GATEWAY: 6,
    HopKind.SWITCH: 7,
    HopKind.UNKNOWN: 8,
}


@dataclass(slots=True)
class ObsTable:
    """Observations as columns; every array has one entry per row of ``batch``."""

    batch: Batch
    #: (point, iface) of each distinct hop; ``label`` indexes it.
    labels: list[tuple[str, str]]
    label: npt.NDArray[np.int64]
    #: distinct capture points (clock domains); ``domain`` indexes it.
    domains: list[str]
    domain: npt.NDArray[np.int64]
    #: hop kind per label, after ``--kind`` overrides.
    label_kind: list[str]
    label_host: list[str]
    #: bucket key of the matcher (0: the row is not eligible for matching).
    key: U64
    #: anchors that must agree when both are non-zero; shape (rows, k).
    anchors: U64
    #: raw times (ns) the request's (SYN's) and the response's (SYN-ACK's) first byte passed.
    t_req: I64
    t_resp: I64
    req_retrans: I64
    resp_retrans: I64

    def __len__(self) -> int:
        return len(self.batch)


def runs(values: list[str]) -> npt.NDArray[np.int64]:
    """Start of every run of equal values (records arrive in batches per point: few, long runs)."""
    if not values:
        return np.zeros(0, np.int64)
    arr = np.asarray(values, dtype=object)
    return np.flatnonzero(np.r_[True, arr[1:] != arr[:-1]]).astype(np.int64)


def index_labels(
    points: list[str], ifaces: list[str], hosts: list[str], kinds: list[str], overrides: dict[str, str]
) -> tuple[list[tuple[str, str]], npt.NDArray[np.int64], list[str], list[str]]:
    """Number the distinct (point, iface) pairs; returns labels, index per row, kind and host per label.

    Only the first row of each run of equal (point, iface) is looked up (numpy finds the runs)."""
    n = len(points)
    starts = np.union1d(runs(points), runs(ifaces)) if n else np.zeros(0, np.int64)
    index: dict[tuple[str, str], int] = {}
    label_kind: list[str] = []
    label_host: list[str] = []
    codes = np.empty(len(starts), dtype=np.int64)
    for k, i in enumerate(starts.tolist()):
        pair = (points[i], ifaces[i])
        j = index.get(pair)
        if j is None:
            j = index[pair] = len(index)
            label_kind.append(overrides.get(pair[0], kinds[i]))
            label_host.append(hosts[i])
        codes[k] = j
    label = np.repeat(codes, np.diff(np.r_[starts, n])) if n else np.zeros(0, np.int64)
    return list(index), label, label_kind, label_host


def index_domains(labels: list[tuple[str, str]], label: npt.NDArray[np.int64],
                  hosts: list[str] | None = None, clocks: Mapping[str, str] | None = None) -> tuple[list[str], I64]:
    """Clock domain of each row: its capture point (one capture file, one clock), or with ``hosts``
    (one per label) its host when known (every capture on one machine shares its clock); a point
    named in ``clocks`` (point -> clock group, stated by the user) is in its group's domain either way."""
    names: dict[str, int] = {}
    keys = [h or p for (p, _), h in zip(labels, hosts, strict=True)] if hosts is not None else [p for p, _ in labels]
    if clocks:
        keys = [clocks.get(p) or k for (p, _), k in zip(labels, keys, strict=True)]
    per_label = np.array([names.setdefault(k, len(names)) for k in keys], dtype=np.int64)
    return list(names), per_label[label] if len(label) else np.zeros(0, np.int64)
