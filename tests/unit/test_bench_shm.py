"""benchmarks/bench_shm.py's latency runs: the Reader and the raw reader (the anchor) both
follow a real run, at a tiny size. No timing is asserted (benchmarks are not tests)."""

import os

import pytest

from benches import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("bench_shm") as module:
        yield module


def test_raw_latencies_give_each_point_the_first_look_that_covered_it(bench):
    stamps = [100, 200, 300, 400]
    seen = [[1, 150], [3, 350], [3, 360], [4, 420]]  # (total, seen)
    assert bench.raw_latencies(seen, stamps) == [50, 150, 50, 20]


def test_both_readers_see_every_point_of_a_run(bench):
    both = bench.latency(1000.0, 60, 100e-6, f"bsrec-test-bench-{os.getpid()}")
    assert set(both) == {"Reader", "raw"}
    for label, r in both.items():
        assert r["seen"] == 60, label  # every point, once
        assert 0 < r["p50"] <= r["p99"] <= r["max"], label
