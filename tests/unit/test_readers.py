"""The reader harness (tests/readers.py) on hand-made good and broken files, then on ours."""

import os

import h5py
import numpy as np
import pytest

from bluesky_recorders.nexus import NexusRecorder
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    scalar_run,
    stream_resource_run,
)
from readers import nexus_problems, nexus_problems_many, spec_problems, spec_scans

# -- NeXus -----------------------------------------------------------------------------


def make_nexus(folder, *, root_default=True, axes=("x", "."), target=True, external="det.h5"):
    """A small NeXus file: default plot, a soft link, an external link, a virtual dataset."""
    with h5py.File(folder / "det.h5", "w") as f:
        f["data"] = np.arange(6.0)
    with h5py.File(folder / "frames.h5", "w") as f:
        f["frames"] = np.arange(20.0).reshape(5, 4)
    layout = h5py.VirtualLayout(shape=(5, 4), dtype="f8")
    layout[:] = h5py.VirtualSource("frames.h5", "frames", shape=(5, 4))
    path = folder / "good.nxs"
    with h5py.File(path, "w") as f:
        if root_default:
            f.attrs["default"] = "entry"
        entry = group(f, "entry", "NXentry", default="data")
        entry["start_time"] = "2026-11-21T12:00:30+00:00"
        entry["end_time"] = "2026-11-21T12:00:35+00:00"
        detector = group(entry, "instrument/detector", "NXdetector")
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        detector["counts"] = np.linspace(1.0, 20.0, 20).reshape(5, 4)
        if target:
            detector["counts"].attrs["target"] = "/entry/instrument/detector/counts"
        detector["raw"] = h5py.ExternalLink(external, "/data")
        detector.create_virtual_dataset("frames", layout)
        motor = group(entry, "instrument/motor", "NXpositioner")
        motor["value"] = 1.5
        motor["value"].attrs["target"] = "/entry/instrument/motor/value"
        listing = group(entry, "instrument/positioners", "NXcollection")
        listing["motor"] = h5py.SoftLink("/entry/instrument/motor/value")
        data = group(entry, "data", "NXdata", signal="counts", axes=list(axes))
        data["counts"] = h5py.SoftLink("/entry/instrument/detector/counts")
        data["x"] = np.arange(5.0)
    return path


def group(parent, name, nx_class, **attrs):
    g = parent.require_group(name)
    g.attrs.update(NX_class=nx_class, **attrs)
    return g


def test_good_nexus_file_pleases_every_reader(tmp_path):
    path = make_nexus(tmp_path)
    assert nexus_problems(path, expect_signal="counts", expect_axes=["x", "."]) == []


def test_expected_plot(tmp_path):
    problems = nexus_problems(make_nexus(tmp_path), expect_signal="det", expect_axes=["y"])
    assert problems == [
        "silx: default signal is 'counts', not 'det'",
        "silx: default axes are ['x', '.'], not ['y']",
    ]


@pytest.mark.parametrize(
    "broken, expected",
    [
        ({"root_default": False}, ["h5py: /: no @default", "silx: /: get_default finds no NXdata"]),
        (
            {"axes": ("x",)},
            [
                "h5py: /entry/data: @axes has 1 names but signal 'counts' has 2 dimensions",
                "silx: /entry/data: invalid NXdata: No @interpretation and not enough @axes "
                "defined.",
            ],
        ),
        (
            {"target": False},
            [
                "h5py: /entry/data/counts: soft link source /entry/instrument/detector/counts "
                "has @target None, not '/entry/instrument/detector/counts'"
            ],
        ),
        (
            {"external": "missing.h5"},
            [
                "h5py: /entry/instrument/detector/raw: external link to missing.h5:/data "
                "does not resolve",
                "h5ls: /entry/instrument/detector/raw External Link {missing.h5//data} "
                "{**NOT FOUND**}",
            ],
        ),
    ],
    ids=["no-root-default", "axes-length", "no-target", "dangling-external-link"],
)
def test_broken_nexus_file(tmp_path, broken, expected):
    problems = nexus_problems(make_nexus(tmp_path, **broken))
    assert [p for p in expected if p not in problems] == [], problems


def test_missing_virtual_dataset_source(tmp_path):
    path = make_nexus(tmp_path)
    (tmp_path / "frames.h5").unlink()
    assert nexus_problems(path) == [
        "h5py: /entry/instrument/detector/frames: virtual dataset source frames.h5 does not exist"
    ]
    assert nexus_problems(path, allow_external_missing=True) == []


def test_relative_links_resolve_from_the_file_folder_not_the_working_directory(
    tmp_path, monkeypatch
):
    path = make_nexus(tmp_path)
    monkeypatch.chdir(tmp_path)  # the readers still run elsewhere
    assert nexus_problems(path.name) == []


def test_incomplete_run_needs_no_end_time(tmp_path):
    path = make_nexus(tmp_path)
    with h5py.File(path, "a") as f:
        del f["entry/end_time"]
    assert nexus_problems(path) == ["h5py: /entry: no end_time in a complete run"]
    assert nexus_problems(path, complete=False) == []


# -- SPEC ------------------------------------------------------------------------------

GOOD_SPEC = """\
#F good.spec
#E 1795262430
#D Sat Nov 21 12:00:30 2026
#C bluesky  user = ada  host = bl1
#O0 energy  sample_x

#S 1 ascan  motor -1 1 2 0.1
#D Sat Nov 21 12:00:31 2026
#T 0.1  (Seconds)
#P0 8 1.5
#N 3
#L motor  Epoch  det
-1 0.1 367.8
0 1.2 1000
1 2.5 367.8

#S 2 count  1 0.1
#D Sat Nov 21 12:00:35 2026
#T 0.1  (Seconds)
#P0 8.5 2
#N 2
#L Epoch  det
0.1 5
"""


def write_spec(tmp_path, old="", new="", text=GOOD_SPEC):
    path = tmp_path / "scans.spec"
    path.write_bytes(text.replace(old, new).encode())
    return path


def test_good_spec_file_pleases_every_reader(tmp_path):
    assert spec_problems(write_spec(tmp_path)) == []


def test_every_reader_sees_the_same_scans(tmp_path):
    scans = spec_scans(write_spec(tmp_path))
    expected = {
        "1": (["motor", "Epoch", "det"], 3, {"energy": 8.0, "sample_x": 1.5}),
        "2": (["Epoch", "det"], 1, {"energy": 8.5, "sample_x": 2.0}),
    }
    assert scans == dict.fromkeys(
        ["silx SpecFile", "silx.io.open", "spec2nexus", "PyMca5"], expected
    )


DROPPED = "prints 'Error on scan 1 line 2' (a row dropped)"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("\n", "\r\n", "text: carriage returns (CRLF line endings)"),
        ("#L motor  Epoch", "#L motor\tEpoch", "text: line 12: tab"),
        (
            "#L motor  Epoch  det",
            "#L motor Epoch det",
            "text: line 7: #N 3 but #L has 1 names (names are separated by two spaces)",
        ),
        ("#N 3", "#N 4", "text: line 13: 3 values, #N is 4"),
        ("0 1.2 1000", "0 1.2 nan", "text: line 14: not a finite number: nan"),
        ("0 1.2 1000", "0 1.2 nan", f"silx SpecFile: {DROPPED}"),
        ("0 1.2 1000", "0 1.2 nan", f"PyMca5: {DROPPED}"),
        ("#P0 8 1.5", "#P0 8 1.5 3", "text: line 10: #P0 has 3 values, #O0 2 names"),
        ("0.1 5\n", "0.1 5", "text: the last line does not end with \\n"),
        ("#S 2 count", "#S 1 count", "text: line 17: scan number 1 is not unique"),
        (
            "#D Sat Nov 21 12:00:31 2026",
            "#D 2026-11-21T12:00:31",
            "text: line 8: #D is not like 'Sat Nov 21 12:00:30 2026'",
        ),
    ],
    ids=[
        "crlf",
        "tab",
        "single-space",
        "N",
        "nan",
        "nan-silx",
        "nan-pymca",
        "P-count",
        "last-newline",
        "duplicate-S",
        "iso-date",
    ],
)
def test_broken_spec_file(tmp_path, old, new, expected):
    assert old in GOOD_SPEC
    problems = spec_problems(write_spec(tmp_path, old, new))
    assert expected in problems, problems


def test_readers_disagreeing_is_a_problem(tmp_path):
    # silx and PyMca drop the space of the last name of an #O line; spec2nexus keeps it
    path = write_spec(tmp_path, "sample_x", "sample x")
    assert (
        "compare: scan 1: spec2nexus motors {'energy': 8.0, 'sample x': 1.5}, "
        "silx SpecFile {'energy': 8.0, 'samplex': 1.5}"
    ) in spec_problems(path)


# -- our recorder's files --------------------------------------------------------------


def nexus_files(tmp_path, run):
    """Our recorder's files for ``run``, each with whether its run ended (has a stop)."""
    detector_dir = tmp_path / "data" / "detector"
    docs = {
        "scalar_run": lambda: scalar_run(),
        "ad_hdf5_run": lambda: ad_hdf5_run(detector_dir),
        "stream_resource_run": lambda: stream_resource_run(detector_dir),
    }.get(run, lambda: list(realruns(run)))()
    recorder = NexusRecorder(data_root=tmp_path / "data", flush_interval=10)
    feed(recorder, docs)
    recorder.close()
    ended = {doc["run_start"] for name, doc in docs if name == "stop"}
    return {path: uid in ended for uid, paths in recorder.artifacts.items() for path in paths}


@pytest.mark.parametrize(
    "run",
    ["scalar_run", "ad_hdf5_run", "stream_resource_run", "usaxs.json.gz", "apstools.json.gz"],
)
def test_recorder_files_pass_every_reader(tmp_path, run):
    files = nexus_files(tmp_path, run)
    expect = {"expect_signal": "det", "expect_axes": ["motor"]} if run == "scalar_run" else {}
    problems = []
    for complete in (True, False):
        paths = [p for p, ended in files.items() if ended is complete]
        if paths:
            found = nexus_problems_many(paths, complete=complete, **expect)
            problems += [f"{os.path.basename(p)}: {m}" for p, ms in found.items() for m in ms]
    assert problems == []
