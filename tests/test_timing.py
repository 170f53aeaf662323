"""Benchmark timing helpers, on a fake clock (no test here depends on the machine's speed)."""

from __future__ import annotations

import pytest

from edgetrain.report import timing


class FakeClock:
    """``perf_counter`` stand-in: calls advance it by their cost times the current slowdown."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slowdown = 1.0
        self.log: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def work(self, name: str, cost: float):
        def call() -> None:
            self.log.append(name)
            self.now += cost * self.slowdown
        return call


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", c.perf_counter)
    return c


def test_paired_ratio_alternates_and_survives_a_drifting_machine(clock):
    fn, ref = clock.work("fn", 0.5), clock.work("ref", 0.125)

    def ref_with_drift() -> None:  # the machine gets 4x slower from the third round on
        if clock.log.count("ref") == 3:  # warm-up and two rounds done
            clock.slowdown = 4.0
        ref()

    out = timing.paired_ratio(fn, ref_with_drift, repeats=5, min_time=0.1)
    assert clock.log == ["ref", "fn"] * 6  # one warm-up each, then ref, fn per round
    assert out["ratio"] == 4.0  # each round sees the same conditions on both sides
    assert out["ref_s"] == 0.5  # median of 0.125, 0.125, 0.5, 0.5, 0.5
    assert out["fn_s"] == 2.0


def test_per_call_loops_until_min_time(clock):
    fn = clock.work("fn", 0.03125)
    assert timing.median_time(fn, repeats=3, min_time=0.1) == 0.03125
    assert clock.log.count("fn") == 1 + 3 * 4  # warm-up, then 4 calls reach 0.125 >= 0.1


@pytest.mark.parametrize("helper", [timing.median_time, lambda f, repeats: timing.paired_ratio(f, f, repeats)])
def test_repeats_must_be_positive(helper):
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        helper(lambda: None, repeats=0)
