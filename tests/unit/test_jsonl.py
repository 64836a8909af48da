"""The jsonl documents recorder and the loader: lossless round trips, clear errors."""

import gzip
import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import event_model
import numpy as np
import pytest

from bluesky_recorders import DocumentError, RecorderError
from bluesky_recorders.jsonl import JsonlRecorder, load_documents, read_documents
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    realruns_dir,
    scalar_run,
    stream_resource_run,
)


def canon(docs):
    """Documents as JSON text (NaN == NaN, tuples == lists), key order kept."""
    return [json.dumps([name, doc]) for name, doc in docs]


def record(tmp_path, docs, **options):
    options.setdefault("data_root", tmp_path / "data")
    recorder = JsonlRecorder(**options)
    feed(recorder, docs)
    recorder.close()
    return recorder


def by_run(docs):
    """The documents of each run, in arrival order (a document names its run)."""
    runs, of = {}, {}
    for name, doc in docs:
        if name == "start":
            run = doc["uid"]
        elif name in ("descriptor", "stop", "resource", "stream_resource"):
            run = doc.get("run_start") or next(reversed(runs))
        elif name in ("event", "event_page"):
            run = of[doc["descriptor"]]
        elif name in ("datum", "datum_page"):
            run = of[doc["resource"]]
        else:
            run = of[doc["stream_resource"]]
        if name in ("descriptor", "resource", "stream_resource"):
            of[doc["uid"]] = run
        runs.setdefault(run, []).append((name, doc))
    return runs


@pytest.mark.parametrize(
    "make",
    [
        lambda d: scalar_run(5),
        lambda d: scalar_run(4, pages=True),
        lambda d: ad_hdf5_run(d),
        lambda d: ad_hdf5_run(d, datum_pages=True),
        lambda d: stream_resource_run(d),
    ],
    ids=["events", "event_pages", "ad_hdf5", "datum_pages", "stream_resource"],
)
def test_round_trip(tmp_path, make):
    docs = make(tmp_path / "detector")
    recorder = record(tmp_path, docs)
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    start = docs[0][1]
    name = f"{start['scan_id']:05d}_{start['plan_name']}_{start['uid'][:8]}.jsonl"
    assert Path(path).name == name
    with read_documents(path) as reader:
        back = list(reader)
    assert canon(back) == canon(docs)  # every document, raw, in arrival order
    assert len(Path(path).read_text().splitlines()) == len(docs)


@pytest.mark.parametrize("stream", ["usaxs.json.gz", "apstools.json.gz"])
def test_real_runs_round_trip_and_the_loader_reads_json_lists(tmp_path, stream):
    docs, problems = load_documents(realruns_dir() / stream)
    assert problems == [] and canon(docs) == canon(realruns(stream))
    recorder = record(tmp_path, docs)
    runs = by_run(docs)
    assert set(recorder.artifacts) == set(runs)
    for uid, run_docs in runs.items():
        (path,) = recorder.artifacts[uid]
        back, problems = load_documents(path)
        assert problems == [] and canon(back) == canon(run_docs)


def test_numbers_json_has_no_word_for_and_numpy_values(tmp_path):
    run = event_model.compose_run(metadata={"scan_id": 1, "plan_name": "count"})
    desc = run.compose_descriptor(
        data_keys={
            "x": {"source": "s", "dtype": "number", "shape": []},
            "a": {"source": "s", "dtype": "array", "shape": [3]},
        },
        name="primary",
    )
    data = {"x": float("nan"), "a": np.array([1.5, np.inf, -np.inf])}
    ev = desc.compose_event(data=data, timestamps={"x": 0.0, "a": 0.0}, seq_num=1)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc), ("event", ev),
            ("stop", run.compose_stop())]  # fmt: skip
    recorder = record(tmp_path, docs)
    (path,) = recorder.artifacts[run.start_doc["uid"]]
    line = Path(path).read_text().splitlines()[2]
    assert '"x":NaN' in line and '"a":[1.5,Infinity,-Infinity]' in line
    back, _ = load_documents(path)
    data = back[2][1]["data"]
    assert math.isnan(data["x"]) and data["a"] == [1.5, math.inf, -math.inf]


def test_bad_lines_name_the_file_and_line(tmp_path):
    docs = scalar_run(3)
    recorder = record(tmp_path, docs)
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    lines = Path(path).read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"descriptor"', '"descriptr"')
    lines[4] = "{not json\n"
    lines[-1] = lines[-1][:20]  # a crash cut the last line short
    Path(path).write_text("".join(lines))
    with pytest.raises(DocumentError, match=rf"{path}:2: unknown document name 'descriptr'"):
        load_documents(path)
    back, problems = load_documents(path, errors="collect")
    assert len(back) == len(docs) - 3
    assert [(p.path, p.line) for p in problems] == [(path, 2), (path, 5), (path, len(lines))]
    assert "not valid JSON" in str(problems[1]) and "cut short" in str(problems[2])
    with pytest.raises(ValueError, match="errors"):
        read_documents(path, errors="ignore")


def test_a_cut_json_list_keeps_the_pairs_before_the_cut(tmp_path):
    docs = scalar_run(3)
    text = json.dumps(docs, indent=1)
    cut = tmp_path / "cut.json.gz"
    with gzip.open(cut, "wt") as fh:
        fh.write(text[: len(text) * 2 // 3])
    with pytest.raises(DocumentError, match=r"cut\.json\.gz:\d+: not valid JSON"):
        load_documents(cut)
    back, problems = load_documents(cut, errors="collect")
    assert 0 < len(back) < len(docs) and canon(back) == canon(docs[: len(back)])
    assert len(problems) == 1
    empty = tmp_path / "empty.json"
    empty.write_text("[]\n")
    assert load_documents(empty) == ([], [])


def test_files_are_created_only(tmp_path):
    docs = scalar_run(2)
    record(tmp_path, docs)
    recorder = JsonlRecorder(data_root=tmp_path / "data")
    with pytest.raises(RecorderError, match="refusing to overwrite"):
        recorder(*docs[0])
    recorder.close()


def test_events_before_their_descriptor_are_refused_and_the_rest_kept(tmp_path):
    docs = scalar_run(2, baseline=False)
    recorder = JsonlRecorder(data_root=tmp_path / "data")
    recorder(*docs[0])
    with pytest.raises(RecorderError, match="arrived before its descriptor"):
        recorder(*docs[2])
    feed(recorder, docs[1:])
    recorder.close()
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    back, _ = load_documents(path)
    assert canon(back) == canon(docs)


def test_replaying_a_jsonl_file_gives_the_same_spec_file(tmp_path):
    """The round-trip format: a live RunEngine run recorded as jsonl and as SPEC; the
    jsonl replayed into a second SPEC recorder writes the same SPEC file."""
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    from bluesky_recorders.spec import SpecRecorder

    live_spec = SpecRecorder(data_root=tmp_path / "live")
    jsonl = JsonlRecorder(data_root=tmp_path / "live")
    RE = RunEngine({})
    RE.subscribe(live_spec)
    RE.subscribe(jsonl)
    (uid,) = RE(scan([det], motor, -1, 1, 5))
    live_spec.close()
    jsonl.close()
    (jsonl_path,) = jsonl.artifacts[uid]
    replay = SpecRecorder(data_root=tmp_path / "replay")
    with read_documents(jsonl_path) as docs:
        feed(replay, docs)
    replay.close()
    (live_path,) = live_spec.artifacts[uid]
    (replay_path,) = replay.artifacts[uid]
    assert Path(replay_path).read_text() == Path(live_path).read_text()


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from bluesky_recorders.jsonl import JsonlRecorder
    from bluesky_recorders.testing import scalar_run
    recorder = JsonlRecorder(data_root=sys.argv[1])
    for i, (name, doc) in enumerate(scalar_run(10)):
        recorder(name, doc)
        if i == 6:
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_recorder_leaves_every_document_written(tmp_path):
    run = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], check=False)
    assert run.returncode == -signal.SIGKILL
    (path,) = tmp_path.rglob("*.jsonl")
    back, problems = load_documents(path)
    assert problems == [] and [n for n, _ in back][:3] == ["start", "descriptor", "event"]
    assert len(back) == 7


def test_options_are_checked():
    with pytest.raises(ValueError, match="data_root"):
        JsonlRecorder()
