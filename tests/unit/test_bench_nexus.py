"""Smoke test of benchmarks/bench_nexus.py: its documents and our side, at a tiny size.

No timing is asserted (benchmarks are not tests) and the apstools environment
is not needed.
"""

import h5py
import pytest

from benches import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("bench_nexus") as module:
        yield module


def test_documents_are_deterministic(bench):
    docs = list(bench.scalar_docs(5))
    assert [n for n, _ in docs] == ["start", "descriptor", *["event"] * 5, "stop"]
    assert docs == list(bench.scalar_docs(5))
    assert len(docs[2][1]["data"]) == 10
    pages = list(bench.fly_docs(2, 7))
    assert [len(d["seq_num"]) for n, d in pages if n == "event_page"] == [7, 7]
    assert len({uid for n, d in pages if n == "event_page" for uid in d["uid"]}) == 14


def test_documents_round_trip_through_the_file(bench, tmp_path):
    path = tmp_path / "docs.pkl"
    assert bench.write_docs(path, bench.scalar_docs(3)) == 6
    assert list(bench.read_docs(path)) == list(bench.scalar_docs(3))


def test_ours_scalar_events(bench, tmp_path):
    result = bench.run_ours(bench.scalar_docs(50), tmp_path / "ours")
    assert result["rows"] == 50
    assert result["total"] >= result["handover"] > 0
    with h5py.File(result["path"], "r") as f:
        primary = f["/entry/instrument/bluesky/streams/primary"]
        assert primary["seq_num"][-1] == 50
        assert primary["det9"].shape == (50,)


def test_ours_fly_pages_and_h5py(bench, tmp_path):
    result = bench.run_ours(bench.fly_docs(1, 1000), tmp_path / "ours")
    assert result["rows"] == 1000
    floor = bench.run_h5py_docs(bench.fly_docs(1, 1000), tmp_path / "h5py")
    assert floor["rows"] == 1000


def test_ours_detector_frames_are_linked(bench, tmp_path):
    docs = bench.detector_docs(tmp_path / "det", 4, (8, 10))
    result = bench.run_ours(docs, tmp_path / "ours")
    assert result["frames"] == 4 and result["virtual"]


def test_each_rounds_ratio_is_shown_and_a_missing_round_is_a_dash(bench):
    ours = {"rounds": [0.5, None, 0.6]}
    anchor = {"rounds": [1.0, 1.0, 0.4]}
    assert bench._round_ratios(ours, anchor) == "0.50, -, 1.50"
    assert bench._round_ratios(None, anchor) == "-"
