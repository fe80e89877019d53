"""The adaptive lateness of the streaming correlator's watermark (``Watermark``): the cap until the
input was watched for a window, then the largest arrival lag of the window plus the minimum; the cap
again while a lag beyond it is remembered; a fixed lateness when the minimum is not below the cap. The
wall clock is the test's, so nothing depends on how fast the test runs. Passes are paced by what the
last one took."""

from __future__ import annotations

import numpy as np
import pytest

from hopscope.correlate.stream import FOREVER, StreamSettings, Watermark
from hopscope.correlate.stream.settings import pass_interval
from hopscope.errors import ConfigError

S = 1_000_000_000  # ns
MS = 1_000_000
BASE = 1_700_000_000 * S
TP = ("hopscope.requests", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watermark(min_lateness_us: int | None = 250_000, window_s: float = 10.0) -> tuple[Watermark, Clock]:
    wm = Watermark(2_000_000, idle_s=3600.0, max_future_us=10**15, min_lateness_us=min_lateness_us,
                   window_s=window_s)
    clock = Clock()
    wm.clock = clock
    return wm, clock


def times(*offsets_ms: float) -> np.ndarray:
    return np.array([BASE + int(o * MS) for o in offsets_ms], np.int64)


def test_the_cap_holds_until_the_input_was_watched_for_a_window() -> None:
    wm, clock = watermark()
    wm.saw(times(0, 100), TP)
    wm.saw(times(150, 200), TP)  # in order: no lag
    assert wm.lateness() == 2 * S
    assert wm.value() == BASE + 200 * MS - 2 * S
    clock.now += 10.0
    wm.saw(times(300), TP)
    assert wm.lateness() == 250 * MS  # ordered input: the minimum
    assert wm.value() == BASE + 300 * MS - 250 * MS


def test_the_largest_lag_of_the_window_sets_the_lateness() -> None:
    wm, clock = watermark()
    wm.saw(times(1000), TP)
    clock.now += 4.0
    wm.saw(times(400, 1100), TP)  # 600 ms behind the partition's newest
    clock.now += 4.0
    wm.saw(times(1000, 1200), TP)  # 100 ms behind
    clock.now += 3.0  # the window has passed since the first record; the 600 ms lag is 7 s old
    assert wm.lateness() == 600 * MS + 250 * MS
    clock.now += 3.5  # ... and now 10.5 s old: forgotten, the 100 ms lag (6.5 s old) remains
    assert wm.lateness() == 100 * MS + 250 * MS
    clock.now += 10.0
    assert wm.lateness() == 250 * MS


def test_a_lag_beyond_the_cap_brings_the_cap_back() -> None:
    wm, clock = watermark()
    wm.saw(times(5000), TP)
    clock.now += 11.0
    assert wm.lateness() == 250 * MS
    wm.saw(times(1000), TP)  # a probe that publishes every 4 s
    assert wm.lateness() == 2 * S


def test_lags_are_per_partition() -> None:
    wm, clock = watermark()
    wm.saw(times(1000), TP)
    wm.saw(times(300), ("hopscope.requests", 1))  # another partition's first record: no lag
    clock.now += 11.0
    assert wm.lateness() == 250 * MS
    assert wm.value() == BASE + 300 * MS - 250 * MS  # the least partition holds the watermark


@pytest.mark.parametrize("min_lateness_us", [None, 2_000_000, 5_000_000])
def test_a_minimum_not_below_the_cap_is_a_fixed_lateness(min_lateness_us: int | None) -> None:
    wm, clock = watermark(min_lateness_us)
    wm.saw(times(0), TP)
    clock.now += 60.0
    wm.saw(times(10), TP)
    assert wm.lateness() == 2 * S


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="min_lateness_us"):
        StreamSettings(min_lateness_us=-1)
    with pytest.raises(ConfigError, match="lateness_window_s"):
        StreamSettings(lateness_window_s=-1.0)


def test_a_pass_waits_twice_what_the_last_took() -> None:
    paced = StreamSettings(stitch_every_s=0.2)
    assert pass_interval(paced, 0.05) == 0.2
    assert pass_interval(paced, 1.5) == 3.0  # a stage short of CPU stitches more at a time
    assert pass_interval(StreamSettings(stitch_every_s=0.0), 1.5) == 0.0  # unpaced: a pass at every chance


def test_a_partition_is_not_idle_when_polls_resume_after_a_long_pause() -> None:
    """A stage kept from polling (a long pass, the other stage's backlog) finds, on its next polls,
    records of some partitions only: the others are not idle yet, and their newest still holds the
    watermark, so their records still to come are not late."""
    wm, clock = watermark(window_s=0.0)
    wm.idle_s = 2.0
    other = ("hopscope.requests", 1)
    wm.polled(set())
    wm.saw(times(1000), TP)
    wm.saw(times(900), other)
    clock.now += 30.0  # no poll for 30 s
    for i in range(3):
        wm.polled(set())
        wm.saw(times(5000 + i), TP)
    assert wm.value() == BASE + 900 * MS - 250 * MS  # ``other`` holds it
    clock.now += 2.0  # polled, without input from ``other``, for the idle time: now it is idle
    wm.polled(set())
    wm.saw(times(6000), TP)
    assert wm.value() == BASE + 6000 * MS - 250 * MS


def test_a_silent_relay_is_dropped_unless_known_alive() -> None:
    """Stage 2 drops a relay silent for twice its idle time (it died, or said "everything"), so the
    other relays' promises move on; this process's own relay, silent while stage 2 works through a
    backlog, is kept: its last promise holds the watermark."""
    for alive, want in ((set(), None), ({"r1"}, BASE + 100 * MS)):
        wm, clock = watermark()
        wm.idle_s, wm.expiry_s = 4.0, 8.0
        wm.assigned = {TP}
        wm.polled(set())
        wm.mark(TP, "r1", BASE + 100 * MS)
        wm.alive = alive
        clock.now += 9.0
        for _ in range(3):
            wm.polled({TP})
        assert wm._marked() == want


def test_the_relays_promise_holds_while_no_input_comes() -> None:
    """Stage 2 with no input for its idle time (a relay releasing seldom under load) keeps the relays'
    least promise: its own partitions' newest records say nothing of what a relay still holds. A relay
    whose input ran dry promises everything."""
    wm, clock = watermark()
    wm.idle_s, wm.expiry_s = 4.0, 8.0
    wm.assigned = {TP}
    wm.alive = {"r1"}
    wm.polled(set())
    wm.saw(times(900), TP)
    wm.mark(TP, "r1", BASE + 1000 * MS)
    wm.polled(set())
    clock.now += 5.0
    for _ in range(3):
        wm.polled(set())
    assert wm.idle()
    assert wm.value() == BASE + 1000 * MS
    wm.mark(TP, "r1", FOREVER)
    assert wm.value() == FOREVER
