"""``json_indent.dumps`` writes exactly what ``json.dumps(obj, indent=n)`` writes.

Generated documents: nested dicts and lists (tuples too) of str (escapes, non-ASCII, astral code
points), ints of any size, bools, None and floats (NaN, infinities, -0.0, tiny and huge ones), dicts
with int, float, bool and None keys beside str ones, empty containers; indents 0 to 3. A value JSON
cannot hold raises TypeError on both; the analyze document of the lab captures comes out the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopscope.correlate.json_indent import dumps

scalars = st.one_of(
    st.text(max_size=12), st.integers(), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 1e16, 5e-324, 1.5, 0.1]),
)  # fmt: skip
keys = st.one_of(st.text(max_size=6), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(), st.none())
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=5),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=40,
)


@settings(max_examples=800, deadline=None)
@given(documents, st.integers(0, 3))
def test_generated_documents(doc: Any, indent: int) -> None:
    assert dumps(doc, indent) == json.dumps(doc, indent=indent)


def test_values_json_cannot_hold() -> None:
    for bad in ({"a": {1, 2}}, [object()], {"k": [1, {"x": b"bytes"}]}, {(1, 2): 3}):
        with pytest.raises(TypeError):
            json.dumps(bad, indent=1)
        with pytest.raises(TypeError):
            dumps(bad, 1)


def test_analyze_document_of_the_lab_captures() -> None:
    from pathlib import Path

    from hopscope.correlate.offline import analyze_points, plan_points
    from hopscope.correlate.report import traces_json
    from hopscope.correlate.settings import CorrelateSettings

    manifest = Path(__file__).resolve().parents[2] / "samples" / "lab" / "manifest.json"
    plan = plan_points([], {}, {}, {}, str(manifest), None, {})
    analysis = analyze_points(plan, CorrelateSettings(), str(manifest))
    doc = traces_json(analysis.result)
    assert len(doc["traces"]) > 10
    assert dumps(doc, 1) == json.dumps(doc, indent=1)
