"""Replay's schedule (ticks of capture time, per point, flows before requests, the live probe's batch
sizes), its pacing by capture time, and its accounting when the broker fails half-way."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from hopscope.cli.replay import speed
from hopscope.correlate.offline import plan_points, read_points
from hopscope.correlate.stream import event_times
from hopscope.errors import ConfigError, UnavailableError
from hopscope.probes.live import ProbeSettings
from hopscope.probes.replay import NS_PER_S, Pacer, ReplaySettings, Tick, replay, schedule
from hopscope.records import Batch, FlowRecord, RequestRecord

MANIFEST = Path(__file__).resolve().parents[2] / "samples" / "lab" / "manifest.json"
MS = 1_000_000


def flows(*rows: tuple[str, int, int]) -> Batch:
    """Flow records of (point, start ms, end ms)."""
    recs = [FlowRecord(point=p, start_ns=s * MS, end_ns=e * MS, flow_id=i + 1) for i, (p, s, e) in enumerate(rows)]
    return Batch.from_records(FlowRecord, recs)


def requests(*rows: tuple[str, int, int]) -> Batch:
    """Request records of (point, first request byte ms, last response byte ms)."""
    recs = [RequestRecord(point=p, req_first_ns=s * MS, req_last_ns=s * MS, resp_first_ns=e * MS,
                          resp_last_ns=e * MS, request_id=i + 1) for i, (p, s, e) in enumerate(rows)]  # fmt: skip
    return Batch.from_records(RequestRecord, recs)


def shape(ticks: list[Tick]) -> list[tuple[int, list[tuple[str, str, list[int]]]]]:
    """Per tick: its time (ms) and its batches as (table, point, ids)."""
    out = []
    for t in ticks:
        batches = []
        for b in t.batches:
            ids = b.columns["flow_id" if b.record_type is FlowRecord else "request_id"]
            batches.append((b.record_type.TABLE, b.columns["point"][0], [int(i) for i in ids]))
            assert set(b.columns["point"]) == {b.columns["point"][0]}  # one point per batch
        out.append((t.at_ns // MS, batches))
    return out


def test_batching_defaults_are_the_live_probes() -> None:
    probe = {f.name: f.default for f in dataclasses.fields(ProbeSettings)}
    replayed = ReplaySettings()
    assert (replayed.publish_interval_s, replayed.publish_max_records) == (
        probe["publish_interval_s"], probe["publish_max_records"])


def test_records_go_out_per_point_at_the_end_of_the_tick_of_their_event_time() -> None:
    f = flows(("b", 1100, 2500), ("a", 1000, 1200), ("a", 1010, 1100), ("b", 3000, 3100))
    r = requests(("a", 1050, 1300), ("b", 1120, 2100))
    got = shape(schedule(f, r, ReplaySettings(publish_interval_s=1.0)).ticks)
    assert got == [
        (2000, [("flows", "a", [3, 2]), ("requests", "a", [1])]),  # event-time order within a batch
        (3000, [("flows", "b", [1]), ("requests", "b", [2])]),  # a flow counts by its end, a request by its response
        (4000, [("flows", "b", [4])]),
    ]


def test_flow_batches_are_sliced_at_the_probes_limit() -> None:
    f = flows(*[("a", 1000 + i, 1001 + i) for i in range(5)])
    r = requests(("a", 1000, 1002))
    got = shape(schedule(f, r, ReplaySettings(publish_max_records=2)).ticks)
    assert got == [(2000, [("flows", "a", [1, 2]), ("flows", "a", [3, 4]), ("flows", "a", [5]),
                           ("requests", "a", [1])])]  # fmt: skip


@pytest.mark.skipif(not MANIFEST.is_file(), reason="no lab samples committed")
@pytest.mark.parametrize("interval_s", [0.05, 1.0])
def test_every_record_of_the_samples_is_scheduled_once_in_its_tick(interval_s: float) -> None:
    f, r = read_points(plan_points(manifest=str(MANIFEST)))
    ticks = schedule(f, r, ReplaySettings(publish_interval_s=interval_s)).ticks
    assert [t.at_ns for t in ticks] == sorted({t.at_ns for t in ticks})
    interval_ns = round(interval_s * NS_PER_S)
    for t in ticks:
        for b in t.batches:
            times = event_times(b)
            assert ((times < t.at_ns) & (times >= t.at_ns - interval_ns)).all()
    out = {rt: Batch.concat([b for t in ticks for b in t.batches if b.record_type is rt])
           for rt in (FlowRecord, RequestRecord)}  # fmt: skip
    assert sorted(out[FlowRecord].columns["flow_id"].tolist()) == sorted(f.columns["flow_id"].tolist())
    assert sorted(out[RequestRecord].columns["request_id"].tolist()) == sorted(r.columns["request_id"].tolist())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("factor", "slept"), [(1.0, [0.5, 2.0]), (10.0, [0.05, 0.2]), (None, [])])
def test_pacing_follows_capture_time(factor: float | None, slept: list[float]) -> None:
    clock = FakeClock()
    pacer = Pacer(factor, first_ns=7 * NS_PER_S, clock=clock, sleep=clock.sleep)
    pacer.wait(7 * NS_PER_S + NS_PER_S // 2)
    pacer.wait(7 * NS_PER_S + NS_PER_S // 2)  # already due
    pacer.wait(9 * NS_PER_S + NS_PER_S // 2)
    assert clock.slept == pytest.approx(slept)


class FailingPublisher:
    """Takes batches; its ``fail_on``-th flush fails as a broker that went away."""

    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.flushes = 0
        self.published: list[Batch] = []

    def publish(self, batch: Batch) -> None:
        self.published.append(batch)

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes == self.fail_on:
            raise UnavailableError("Kafka broker at 127.0.0.1:9 is unreachable (gone)")

    def close(self) -> None:
        pass


def test_only_acknowledged_ticks_are_claimed() -> None:
    f = flows(("a", 0, 10), ("a", 1000, 1010), ("a", 2000, 2010), ("b", 2000, 2010))
    timeline = schedule(f, requests(("b", 0, 5)), ReplaySettings())
    clock = FakeClock()
    with pytest.raises(UnavailableError) as failed:
        replay(timeline, FailingPublisher(fail_on=3), ReplaySettings(speed=None), clock=clock, sleep=clock.sleep)
    assert "3 of 5 records acknowledged (ticks up to 2 of 3)" in str(failed.value)
    summary = replay(timeline, FailingPublisher(fail_on=0), ReplaySettings(speed=None), clock=clock, sleep=clock.sleep)
    assert (summary.ticks, summary.flow_records, summary.request_records, summary.points) == (3, 4, 1, 2)
    assert summary.capture_span_s == pytest.approx(3.0)


@pytest.mark.parametrize(("text", "value"), [("1", 1.0), ("10", 10.0), ("0.5", 0.5), ("max", None)])
def test_speed_option(text: str, value: float | None) -> None:
    assert speed(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "fast", "inf", "nan"])
def test_bad_speed_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="positive number or 'max'"):
        speed(text)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        ReplaySettings(speed=0)
    with pytest.raises(ConfigError):
        ReplaySettings(publish_interval_s=0)


def test_nothing_to_schedule() -> None:
    assert schedule(flows(), requests(), ReplaySettings()).ticks == ()
