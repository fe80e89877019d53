"""``segments._split_bucket`` against the plain loop it speeds up.

The kernel of the split looks only at segments opened within the window before each row (they are a
prefix of the opened ones that can be skipped for good, as rows come in time order); the plain loop
below looks at every segment opened so far. On generated buckets (times in order with repeats and
gaps wider than the window, a few labels, anchors that agree, disagree or are missing, windows from 0
up) both must give the same segments in the same order.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hopscope.correlate.segments import _Open, _split_bucket


def _plain_split(obs: Any, rows: Any, window_ns: int) -> list[list[int]]:
    opened: list[_Open] = []
    for row, t, lab, anc in zip(rows.tolist(), obs.t_req[rows].tolist(), obs.label[rows].tolist(),
                                obs.anchors[rows].tolist(), strict=True):  # fmt: skip
        best: _Open | None = None
        best_score = -1
        for cand in opened:
            if t - cand.first_ns > window_ns or lab in cand.labels:
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


bucket = st.lists(
    st.tuples(st.sampled_from([0, 0, 1, 3, 10, 50]), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(bucket, st.sampled_from([0, 5, 20, 100]))
def test_split_equals_the_plain_loop(rows: list[tuple[int, int, int, int]], window_ns: int) -> None:
    t = np.cumsum([step for step, _, _, _ in rows]).astype(np.int64)
    obs = SimpleNamespace(
        t_req=t,
        label=np.array([lab for _, lab, _, _ in rows], np.int64),
        anchors=np.array([[a, b] for _, _, a, b in rows], np.uint64),
    )
    index = np.arange(len(rows), dtype=np.int64)
    assert _split_bucket(obs, index, window_ns) == _plain_split(obs, index, window_ns)  # type: ignore[arg-type]
