"""Every recorder kind accepts the real APS document streams (bluesky 1.5 era) without error."""

import io
import os

import pytest

from bluesky_recorders import RECORDER_KINDS, RecorderSet
from bluesky_recorders.config import recorder_class
from bluesky_recorders.testing import realruns


def make(kind, tmp_path):
    cls = recorder_class(kind)
    options = {"console": {"file": io.StringIO(), "force_terminal": False}}.get(kind, {})
    if kind == "catalog":
        options = {"directory": tmp_path / "catalog"}
    if kind in ("nexus", "spec", "jsonl", "csv", "plots"):
        options = {"data_root": tmp_path / kind}
    if kind == "shm":
        options = {"segment": f"bsrec-test-realruns-{os.getpid()}"}
    return cls(**options)


@pytest.fixture(scope="module")
def streams():
    return {name: list(realruns(name)) for name in ("usaxs.json.gz", "apstools.json.gz")}


def test_all_recorder_kinds_together_accept_both_streams(tmp_path, streams):
    rs = RecorderSet([make(kind, tmp_path) for kind in sorted(RECORDER_KINDS)])
    failures = []
    rs._report = lambda recorder, err: failures.append(err)  # collect instead of raising
    for docs in streams.values():
        for name, doc in docs:
            rs(name, doc)
    rs.close()
    assert failures == []
    starts = [d["uid"] for docs in streams.values() for n, d in docs if n == "start"]
    assert len(starts) == 63
    for recorder in rs.recorders.values():
        if recorder.kind in ("catalog", "nexus", "jsonl", "csv", "spec"):  # it names its files
            assert set(recorder.artifacts) == set(starts)
