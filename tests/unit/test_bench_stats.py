"""benchmarks/bench_stats.py: the paired slowdown's interval and verdict."""

import statistics

import pytest

from benches import bench_module


@pytest.fixture(scope="module")
def stats():
    with bench_module("bench_stats") as module:
        yield module


def test_the_interval_holds_the_median_and_repeats(stats):
    ratios = [1.0 + 0.01 * ((i * 7) % 11 - 5) for i in range(40)]
    first = stats.paired(ratios, 1.05)
    assert first.median == statistics.median(ratios)
    assert first.low <= first.median <= first.high
    assert min(ratios) <= first.low < first.high <= max(ratios)
    assert stats.paired(ratios, 1.05) == first  # seeded: the same figures every time


def test_verdicts(stats):
    tight_low = [1.01, 1.02, 1.015, 1.012, 1.018] * 8
    assert stats.paired(tight_low, 1.05).verdict == "met"
    tight_high = [1.08, 1.09, 1.085, 1.082, 1.088] * 8
    assert stats.paired(tight_high, 1.05).verdict == "NOT met"
    spread = [0.90, 1.20, 0.95, 1.15, 1.04, 1.06] * 3  # median 1.05, wide interval
    undecided = stats.paired(spread, 1.05)
    assert undecided.low < 1.05 <= undecided.high
    assert undecided.verdict == "undecided"


def test_overall_verdict(stats):
    assert stats.overall(["met", "met"]) == "met"
    assert stats.overall(["met", "undecided", "met"]) == "undecided"
    assert stats.overall(["undecided", "NOT met", "met"]) == "NOT met"
    assert stats.overall([]) == "met"


def test_no_rounds_is_an_error(stats):
    with pytest.raises(ValueError, match="no paired rounds"):
        stats.paired([], 1.05)


def test_percent(stats):
    assert stats.percent(1.0312) == "+3.12 %"
    assert stats.percent(0.98) == "-2.00 %"
