"""Properties of the engine over generated scenarios (hypothesis): input order does not matter,
shifted capture clocks do not change per-link latencies, and every request is stitched whole."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hopscope.correlate import CorrelateSettings, Correlator, StitchResult
from hopscope.correlate.settings import ClockDomain
from hopscope.correlate.synthetic import DEFAULT_PATH, Scenario, generate

scenarios = st.builds(
    Scenario,
    requests=st.integers(5, 60),
    per_connection=st.integers(1, 4),
    request_id_mode=st.just("client"),
    conn_spacing_us=st.integers(200, 3000),
    seed=st.integers(0, 10_000),
    l4_connections=st.integers(0, 5),
)


@settings(max_examples=25, deadline=None)
@given(sc=scenarios, order_seed=st.integers(0, 1000))
def test_input_order_does_not_matter(sc: Scenario, order_seed: int) -> None:
    syn = generate(sc)
    a = Correlator().stitch(syn.requests, syn.flows, version_ns=1)
    rng = np.random.default_rng(order_seed)
    b = Correlator().stitch(syn.requests.take(rng.permutation(len(syn.requests))),
                            syn.flows.take(rng.permutation(len(syn.flows))), version_ns=1)
    assert sorted(zip(a.traces.columns["trace_id"], a.traces.columns["points"], strict=True)) == \
        sorted(zip(b.traces.columns["trace_id"], b.traces.columns["points"], strict=True))
    full = [p for p in a.traces.columns["points"] if p.split(",") == syn.expected_points]
    assert len(full) == sc.requests


HOSTS = sorted({h.host for h in DEFAULT_PATH})


@settings(max_examples=25, deadline=None)
@given(sc=scenarios, shifted=st.dictionaries(
    # multiples of 1000 us plus 500: every two hosts differ by 0 or by at least 500 us
    st.sampled_from(HOSTS), st.integers(-50, 49).map(lambda k: 1000 * k + 500), max_size=3))
def test_shifted_clocks_leave_link_latencies(sc: Scenario, shifted: dict[str, int]) -> None:
    """Host clocks shifted against each other beyond the one-way delays: causality shows it and auto
    mode corrects it. (A relative shift smaller than the delay of the link between two hosts cannot be
    told from that delay; auto mode leaves it, by design.) The points of one host share its clock
    (clock domain ``host``), which also ties the sidecar's upstream side to the rest of node-b."""
    per_point = {h.point: shifted[h.host] for h in DEFAULT_PATH if h.host in shifted}
    base = generate(sc)
    moved = generate(Scenario(**{**{f: getattr(sc, f) for f in sc.__dataclass_fields__},
                                 "clock_shift_us": per_point}))
    by_host = CorrelateSettings(clock_domain=ClockDomain.HOST)
    a = Correlator(by_host).stitch(base.requests, base.flows, version_ns=1)
    b = Correlator(by_host).stitch(moved.requests, moved.flows, version_ns=1)
    assert _links(a).keys() == _links(b).keys()
    for key, (req_us, resp_us) in _links(a).items():
        other = _links(b)[key]
        assert abs(req_us - other[0]) <= 25 and abs(resp_us - other[1]) <= 25, (key, shifted, b.clock_offsets_us)


def _links(res: StitchResult) -> dict[tuple[str, int, int], tuple[int, int]]:
    c = res.spans.columns
    cols = [np.asarray(c[n]).tolist() for n in ("request_id", "flow_id", "req_link_us", "resp_link_us")]
    return {(p, r, f): (q, s) for p, r, f, q, s in zip(c["point"], *cols, strict=True)}
