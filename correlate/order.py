"""Path order of the hops of each segment, without trusting clocks.

A hop nearer the server sees the request later and the response earlier than a hop nearer the
client, so the *residence* ``t_resp - t_req`` (both stamped by the same clock) shrinks along the path.
Segments whose every hop saw the response are ordered by residence, longest first, which needs no
clock correction at all; the others are ordered by their (clock-corrected) request time. Exact ties
fall back to the request time, then to the hop kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hopscope.correlate.observations import KIND_RANK, ObsTable

I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class SegmentOrder:
    """Rows of each segment in path order: ``rows[starts[s]:ends[s]]`` is segment ``s``."""

    rows: I64
    starts: I64
    ends: I64
    #: per segment: every hop saw the response (ordering by residence was used)
    full: npt.NDArray[np.bool_]

    def first(self) -> I64:
        return self.rows[self.starts]

    def last(self) -> I64:
        return self.rows[self.ends - 1]


def order_segments(obs: ObsTable, seg: I64, nseg: int, t_req: I64) -> SegmentOrder:
    """Order the eligible rows by segment, then along the path; ``t_req`` may be clock-corrected."""
    rows = np.flatnonzero(seg >= 0)
    s = seg[rows]
    has_resp = obs.t_resp[rows] > 0
    full = np.ones(nseg, dtype=bool)
    np.logical_and.at(full, s, has_resp)
    residence = obs.t_resp[rows] - obs.t_req[rows]
    primary = np.where(full[s], -residence, t_req[rows])
    rank_of_label = np.array([KIND_RANK.get(k, 8) for k in obs.label_kind] or [0], dtype=np.int64)
    rank = rank_of_label[obs.label[rows]]
    order = rows[np.lexsort((rank, t_req[rows], primary, s))]
    counts = np.bincount(seg[order], minlength=nseg)
    ends = np.cumsum(counts)
    starts = ends - counts
    return SegmentOrder(rows=order, starts=starts.astype(np.int64), ends=ends.astype(np.int64), full=full)


def adjacent_pairs(order: SegmentOrder, only_full: bool) -> tuple[I64, I64]:
    """(previous row, row) for every hop after the first within a segment."""
    if len(order.rows) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    seg_of = np.repeat(np.arange(len(order.starts)), order.ends - order.starts)
    same = seg_of[1:] == seg_of[:-1]
    if only_full:
        same &= order.full[seg_of[1:]]
    idx = np.flatnonzero(same)
    return order.rows[idx], order.rows[idx + 1]
