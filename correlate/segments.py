"""Group observations into segments: the same request on the same connection at different hops.

``cluster`` assigns a segment number to every eligible observation. Buckets (same key) in which the
times fit the window, no hop repeats and every anchor agrees become one segment in one vectorised
pass; the remaining buckets (sequence-number collisions, keep-alive reuse of a key, retries) are
split by ``_split_bucket``, which puts each observation into the oldest compatible segment with the
most agreeing anchors (packets keep their order along a path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hopscope.correlate.observations import ObsTable

I64 = npt.NDArray[np.int64]
_NONE = np.iinfo(np.uint64).max


@dataclass(slots=True)
class ClusterStats:
    """How the buckets were resolved (exposed in ``StitchResult.stats``)."""

    buckets: int = 0
    fast_buckets: int = 0
    split_buckets: int = 0
    ineligible: int = 0


@dataclass(slots=True)
class _Open:
    """A segment being built inside one bucket."""

    first_ns: int
    anchors: list[int]
    labels: set[int] = field(default_factory=set)
    rows: list[int] = field(default_factory=list)


def _bucket_bounds(keys_sorted: npt.NDArray[np.uint64]) -> tuple[I64, I64]:
    n = len(keys_sorted)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]]).astype(np.int64)
    ends = np.r_[starts[1:], n].astype(np.int64)
    return starts, ends


def _consistent(values: npt.NDArray[np.uint64], starts: I64) -> npt.NDArray[np.bool_]:
    """Per bucket: all non-zero values are equal."""
    vmax = np.maximum.reduceat(values, starts)
    vmin = np.minimum.reduceat(np.where(values == 0, np.uint64(_NONE), values), starts)
    consistent: npt.NDArray[np.bool_] = (vmin == _NONE) | (vmin == vmax)
    return consistent


def cluster(obs: ObsTable, window_ns: I64) -> tuple[I64, int, ClusterStats]:
    """Segment number per row (-1: not eligible), the number of segments, and statistics."""
    stats = ClusterStats()
    seg = np.full(len(obs), -1, dtype=np.int64)
    elig = np.flatnonzero(obs.key != 0)
    stats.ineligible = len(obs) - len(elig)
    if len(elig) == 0:
        return seg, 0, stats
    order = elig[np.lexsort((obs.t_req[elig], obs.key[elig]))]
    keys = obs.key[order]
    starts, ends = _bucket_bounds(keys)
    stats.buckets = len(starts)
    t = obs.t_req[order]
    ok = (t[ends - 1] - t[starts]) <= window_ns[order[starts]]
    by_label = elig[np.lexsort((obs.label[elig], obs.key[elig]))]
    lab = obs.label[by_label]
    dup = np.r_[False, (obs.key[by_label][1:] == obs.key[by_label][:-1]) & (lab[1:] == lab[:-1])]
    ok &= ~np.maximum.reduceat(dup, starts)
    for k in range(obs.anchors.shape[1]):
        ok &= _consistent(obs.anchors[order, k], starts)
    stats.fast_buckets = int(ok.sum())
    bucket_of = np.repeat(np.arange(len(starts)), ends - starts)
    fast_rows = ok[bucket_of]
    fast_ids = np.cumsum(ok) - 1
    seg[order[fast_rows]] = fast_ids[bucket_of[fast_rows]]
    next_id = stats.fast_buckets
    for b in np.flatnonzero(~ok).tolist():
        stats.split_buckets += 1
        rows = order[starts[b]:ends[b]]
        for group in _split_bucket(obs, rows, int(window_ns[rows[0]])):
            seg[group] = next_id
            next_id += 1
    return seg, next_id, stats


def _split_bucket(obs: ObsTable, rows: I64, window_ns: int) -> list[list[int]]:
    """Split one bucket (rows in time order) into segments."""
    opened: list[_Open] = []
    anchors = obs.anchors[rows].tolist()
    times = obs.t_req[rows].tolist()
    labels = obs.label[rows].tolist()
    live = 0  # opened[:live] began more than a window before this row: never a candidate again
    for row, t, lab, anc in zip(rows.tolist(), times, labels, anchors, strict=True):
        # rows come in time order and segments open in it, so the ones out of the window are a prefix
        while live < len(opened) and t - opened[live].first_ns > window_ns:
            live += 1
        # packets keep their order along a path: among equally good segments the oldest wins (FIFO)
        best: _Open | None = None
        best_score = -1
        for cand in opened[live:] if live else opened:
            if lab in cand.labels:
                continue
            agree = 0
            for a, c in zip(anc, cand.anchors, strict=True):
                if a and c:
                    if a != c:
                        break
                    agree += 1
            else:
                if agree > best_score:
                    best, best_score = cand, agree
        if best is None:
            best = _Open(first_ns=t, anchors=list(anc))
            opened.append(best)
        best.rows.append(row)
        best.labels.add(lab)
        best.anchors = [c or a for a, c in zip(anc, best.anchors, strict=True)]
    return [o.rows for o in opened]
