"""``bsrec export``: recorded runs written again through the recorders."""

import csv
import gzip
import json
import os

import h5py
import pytest

from bluesky_recorders.cli import main
from bluesky_recorders.csv_recorder import CsvRecorder
from bluesky_recorders.export import export, runs_of
from bluesky_recorders.jsonl import load_documents
from bluesky_recorders.nexus import NexusRecorder
from bluesky_recorders.testing import ad_hdf5_run, feed, realruns_dir, scalar_run


def write_jsonl(path, docs):
    with open(path, "w") as fh:
        for name, doc in docs:
            fh.write(json.dumps([name, doc]) + "\n")
    return path


def nexus_file(tmp_path, docs):
    recorder = NexusRecorder(data_root=tmp_path / "nexus")
    feed(recorder, docs)
    recorder.close()
    return recorder.artifacts[docs[0][1]["uid"]][0]


def test_csv_recorder_writes_a_file_per_stream(tmp_path):
    docs = ad_hdf5_run(tmp_path / "det")
    recorder = CsvRecorder(data_root=tmp_path / "csv")
    feed(recorder, docs)
    recorder.close()
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["seq_num", "time", "cam_image", "cam_total"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[2][2].endswith(".h5:/entry/data/data[2:4]")
    assert [float(r[3]) for r in rows[1:]] == [0.0, 1.0, 2.0]


def test_a_nexus_file_exported_to_every_format(tmp_path, capsys):
    docs = scalar_run(4)
    source = nexus_file(tmp_path, docs)
    out = tmp_path / "out"
    code = main(["export", source, "--to", "nexus,csv,jsonl", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "1 of 1 run(s) written completely" in printed
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".csv", ".jsonl", ".nxs"]
    (jsonl,) = out.glob("*.jsonl")
    back, problems = load_documents(jsonl)
    assert problems == []
    assert sorted(n for n, _ in back) == sorted(n for n, _ in docs)  # descriptors come first
    (nxs,) = out.glob("*.nxs")
    from readers import nexus_problems

    assert nexus_problems(nxs) == []
    with h5py.File(nxs, "r") as f:
        assert f["entry/instrument/bluesky/streams/primary/det"].shape == (4,)
        assert f["entry/exit_status"][()] == b"success"
    # the same export again never overwrites: it fails and says which file exists
    code = main(["export", source, "--to", "csv", "--out", str(out)])
    assert code == 1
    assert "exists" in capsys.readouterr().out


def test_real_runs_exported(tmp_path):
    source = realruns_dir() / "usaxs.json.gz"
    results = export([str(source)], ["nexus", "csv"], tmp_path / "out")
    assert len(results) == 10
    assert all(r.ok for r in results), [r.problems for r in results if not r.ok]
    assert all(len(r.files["nexus"]) == 1 for r in results)


def test_bad_input_is_named_and_the_rest_converted(tmp_path, capsys):
    good = scalar_run(3, scan_id=1)
    unfinished = scalar_run(3, scan_id=2)[:-1]  # no stop document
    early = scalar_run(2, scan_id=3)
    primary = next(
        i for i, (n, d) in enumerate(early) if n == "descriptor" and d["name"] == "primary"
    )
    event = next(i for i, (n, _) in enumerate(early) if n == "event" and i > primary)
    early.insert(1, early.pop(event))  # an event before its descriptor
    path = write_jsonl(tmp_path / "docs.jsonl", [*good, *unfinished, *early])
    with open(path, "a") as fh:
        fh.write('["event", {"uid": "cut sh')  # a file cut short
    code = main(["export", str(path), "--to", "csv", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 1
    lines = printed.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 2  # the early event is kept
    assert sum(line.startswith("partial") for line in lines) == 1
    assert "no stop document" in printed
    assert "arrived before its descriptor; recorded after it" in printed
    cut = len(good) + len(unfinished) + len(early) + 1
    assert f"docs.jsonl:{cut}: not valid JSON" in printed
    assert "2 of 3 run(s) written completely" in printed
    # the unfinished run's files are there, and say they are partial in the jsonl export
    results = export([str(path)], ["jsonl"], tmp_path / "out2")
    partial = next(r for r in results if r.partial)
    (jsonl,) = partial.files["jsonl"]
    back, _ = load_documents(jsonl)
    assert back[-1][0] == "stop" and back[-1][1]["reason"].startswith("partial:")


def test_unknown_format_and_source(tmp_path, capsys):
    assert main(["export", "x.nxs", "--to", "pdf", "--out", str(tmp_path)]) == 1
    assert "unknown export format" in capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    assert main(["export", str(other), "--to", "csv", "--out", str(tmp_path / "o")]) == 1
    assert "not a known source" in capsys.readouterr().out


def test_runs_of_splits_and_reports(tmp_path):
    docs = [*scalar_run(2, scan_id=5), *scalar_run(2, scan_id=6)]
    runs, orphans = runs_of([("descriptor", {"uid": "d", "run_start": "nowhere"}), *docs], "x")
    assert len(runs) == 2 and [len(r.documents) for r in runs] == [len(docs) // 2] * 2
    assert len(orphans) == 1 and "belongs to no run" in orphans[0]


@pytest.fixture
def catalog_with_runs(tmp_path):
    from bluesky_recorders.catalog import CatalogRecorder

    recorder = CatalogRecorder(data_root=tmp_path / "data", batch_size=10)
    runs = [scalar_run(3, scan_id=41), scalar_run(5, scan_id=42)]
    runs[1][0][1]["sample"] = "Si"
    for docs in runs:
        feed(recorder, docs)
    yield recorder, runs
    recorder.close()


def test_catalog_runs_exported_by_uid_prefix_scan_id_and_query(tmp_path, catalog_with_runs):
    recorder, runs = catalog_with_runs
    cat = recorder.catalog
    first, second = (docs[0][1]["uid"] for docs in runs)
    by_prefix = export([first[:8]], ["csv"], tmp_path / "a", catalog=cat)
    by_scan_id = export(["42"], ["csv"], tmp_path / "b", catalog=cat)
    by_query = export(["sample=Si"], ["jsonl"], tmp_path / "c", catalog=cat)
    assert [r.run_uid for r in by_prefix] == [first] and by_prefix[0].ok
    assert [r.run_uid for r in by_scan_id] == [second] and by_scan_id[0].ok
    assert [r.run_uid for r in by_query] == [second] and by_query[0].ok
    (primary,) = [p for p in by_scan_id[0].files["csv"] if p.endswith("_primary.csv")]
    with open(primary) as fh:
        assert len(fh.readlines()) == 1 + 5
    missing = export(["ffffffff"], ["csv"], tmp_path / "d", catalog=cat)
    assert not missing[0].ok and "no catalog run" in missing[0].problems[0]


def test_a_uid_prefix_of_eight_digits_is_not_taken_for_a_scan_id(tmp_path):
    """1 run in 50 has a uid beginning with 8 digits: its prefix names it, as any other."""
    from bluesky_recorders.catalog import CatalogRecorder

    docs = scalar_run(3, scan_id=41)
    old = docs[0][1]["uid"]
    uid = "01179295" + old[8:]
    for _, doc in docs:
        for key in ("uid", "run_start"):
            if doc.get(key) == old:
                doc[key] = uid
    recorder = CatalogRecorder(data_root=tmp_path / "data", batch_size=10)
    feed(recorder, docs)
    try:
        (result,) = export(["01179295"], ["jsonl"], tmp_path / "out", catalog=recorder.catalog)
        (by_scan_id,) = export(["41"], ["jsonl"], tmp_path / "out2", catalog=recorder.catalog)
    finally:
        recorder.close()
    assert result.ok and result.run_uid == uid
    assert by_scan_id.ok and by_scan_id.run_uid == uid


def test_gzipped_document_lists_are_sources(tmp_path):
    docs = scalar_run(2)
    path = tmp_path / "run.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump([[n, d] for n, d in docs], fh)
    (result,) = export([str(path)], ["csv"], tmp_path / "out")
    assert result.ok and len(result.files["csv"]) == 2


@pytest.mark.parametrize("stream", ["usaxs.json.gz", "apstools.json.gz"])
def test_real_runs_exported_to_spec_pass_every_spec_reader(tmp_path, stream):
    """formats.md, SPEC: silx (no dropped row), spec2nexus (parser and converter) and
    PyMca see the same scans, labels, rows and motor positions."""
    from readers import spec_problems

    results = export([str(realruns_dir() / stream)], ["spec"], tmp_path / "out")
    assert len(results) == {"usaxs.json.gz": 10, "apstools.json.gz": 53}[stream]
    # the one interrupted run of the apstools stream is finished as partial
    assert sum(r.partial for r in results) == {"usaxs.json.gz": 0, "apstools.json.gz": 1}[stream]
    assert all(r.ok for r in results if not r.partial), [r.problems for r in results]
    files = sorted({p for r in results for p in r.files["spec"]})
    assert files
    problems = [f"{os.path.basename(p)}: {m}" for p in files for m in spec_problems(p)]
    assert problems == []
