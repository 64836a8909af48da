"""The SPEC recorder: files read back by silx, spec2nexus and PyMca, which must agree."""

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import event_model
import numpy as np
import pytest

from bluesky_recorders import RecorderError
from bluesky_recorders.spec import (
    FileState,
    SpecRecorder,
    comment_lines,
    format_number,
    mca_lines,
    read_file_state,
    sanitize_label,
    scan_command,
    scan_layout,
    spec_date,
    unique_labels,
)
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    scalar_run,
    stream_resource_run,
)

SPEC_RULES_LINE = re.compile(r"^(#[A-Za-z@]\S*( .*)?|@A( .*)?| .*|-?[0-9].*|)$")


# -- helpers: the three readers ---------------------------------------------------------


def silx_scans(path):
    from silx.io.specfile import SpecFile

    sf = SpecFile(str(path))
    try:
        out = []
        for i in range(len(sf)):
            scan = sf[i]
            mca = [np.asarray(scan.mca[j]).tolist() for j in range(len(scan.mca))]
            out.append(
                {
                    "number": scan.number,
                    "labels": list(scan.labels),
                    "rows": scan.data.T.tolist() if scan.data.size else [],
                    "motors": list(scan.motor_names),
                    "positions": list(scan.motor_positions),
                    "mca": mca,
                    "command": scan.scan_header_dict["S"].split(None, 1)[1].strip(),
                }
            )
        return out
    finally:
        sf.close()


def spec2nexus_scans(path):
    from spec2nexus.spec import SpecDataFile

    with warnings.catch_warnings():
        # spec2nexus's is_spec_file_with_header() leaves a file to the garbage collector
        warnings.simplefilter("ignore", ResourceWarning)
        sdf = SpecDataFile(str(path))
        out = []
        for key in sdf.getScanNumbers():
            scan = sdf.getScan(key)
            scan.interpret()
            columns = [scan.data[label] for label in scan.L] if scan.data.get(scan.L[0]) else []
            mca = scan.data.get("_mca_", {}).get("mca", [])
            out.append(
                {
                    "number": int(scan.scanNum),
                    "labels": list(scan.L),
                    "rows": [list(r) for r in zip(*columns, strict=True)],
                    "motors": list(scan.positioner),
                    "positions": list(scan.positioner.values()),
                    "mca": [[float(v) for v in m] for m in mca],
                    "command": scan.scanCmd.strip(),
                }
            )
        gc.collect()
    return out


def pymca_scans(path):
    from PyMca5.PyMcaIO import specfilewrapper

    sf = specfilewrapper.Specfile(str(path))
    sf.allmotors()  # the first scan's motor names: raises when it has no #O
    out = []
    for i in range(sf.scanno()):
        scan = sf[i]
        # SystemError (PyList_New(-1)) for a scan without #O or #P: every scan has them
        motors, positions = list(scan.allmotors()), list(scan.allmotorpos())
        labels = list(scan.alllabels())
        try:  # PyMca raises for a scan without rows (a run with no events)...
            rows = scan.data().T.tolist() if scan.lines() else []
        except specfilewrapper.specfile.error:
            rows = []
        if not rows and not labels:  # ... and gives no labels: read its #L line
            labels = scan.header("L")[0][3:].split("  ")
        out.append(
            {
                "number": int(scan.number()),
                "labels": labels,
                "rows": rows,
                "motors": motors,
                "positions": positions,
                "mca": [scan.mca(j + 1).tolist() for j in range(scan.nbmca())],
                "command": scan.command().strip(),
            }
        )
    del sf
    return out


def read_spec(path, capfd):
    """The scans as silx, spec2nexus and PyMca see them; they must agree, the C parser
    must not report a dropped row, and every line must follow formats.md."""
    capfd.readouterr()
    scans = silx_scans(path)
    out = capfd.readouterr()
    assert "Error" not in out.out + out.err, out.out + out.err
    by_number = sorted(scans, key=lambda s: s["number"])  # spec2nexus sorts by number
    assert spec2nexus_scans(path) == by_number
    assert pymca_scans(path) == scans
    out = capfd.readouterr()
    assert "Error" not in out.out + out.err, out.out + out.err
    check_rules(path)
    return scans


def check_rules(path):
    data = Path(path).read_bytes()
    assert data.startswith(b"#F ") and data.endswith(b"\n")
    assert b"\r" not in data and b"\t" not in data
    text = data.decode()
    lines = text.split("\n")[:-1]
    assert lines[1].startswith("#E ") and lines[2].startswith("#D ") and lines[3].startswith("#C ")
    numbers = []
    n_labels = None
    o_count = 0
    for line in lines:
        assert line == line.rstrip(), f"trailing space: {line!r}"
        assert SPEC_RULES_LINE.match(line), line
        if line.startswith("#F "):
            o_count = 0
        if line.startswith("#O"):
            o_count += len(line.split(" ", 1)[1].split("  "))
        if line.startswith("#S "):
            numbers.append(int(line.split()[1]))
            p_count = 0
        if line.startswith("#P"):
            p_count += len(line.split(" ", 1)[1].split())
        if line.startswith("#D "):
            assert re.match(r"#D [A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \d{4}$", line)
        if line.startswith("#N "):
            n_labels = int(line.split()[1])
            assert p_count == o_count, "#P and #O differ in length"
        if line.startswith("#L "):
            assert len(line[3:].split("  ")) == n_labels
        if line[:1] == "-" or line[:1].isdigit():
            values = line.split()
            assert len(values) == n_labels, line
            for v in values:
                assert np.isfinite(float(v)), line
    assert len(numbers) == len(set(numbers)) and all(n > 0 for n in numbers)


def write(tmp_path, *runs, **options):
    options.setdefault("data_root", tmp_path / "data")
    recorder = SpecRecorder(**options)
    for docs in runs:
        feed(recorder, docs)
    recorder.close()
    paths = {p for ps in recorder.artifacts.values() for p in ps}
    return recorder, paths


def one_path(tmp_path, *runs, **options):
    _, paths = write(tmp_path, *runs, **options)
    (path,) = paths
    return path


def compose(metadata, streams, *, stop=True):
    """A run with given streams: {name: (data_keys, [data dict per event])}."""
    run = event_model.compose_run(metadata=metadata)
    docs = [("start", dict(run.start_doc))]
    for name, (keys, rows) in streams.items():
        desc = run.compose_descriptor(
            data_keys=keys,
            name=name,
            hints={k: {"fields": [k]} for k in keys if name == "primary"},
        )
        docs.append(("descriptor", dict(desc.descriptor_doc)))
        for i, data in enumerate(rows):
            ev = desc.compose_event(data=data, timestamps=dict.fromkeys(data, 1.0), seq_num=i + 1)
            docs.append(("event", dict(ev)))
    if stop:
        docs.append(("stop", dict(run.compose_stop())))
    return docs


def number_key(dtype="number", shape=()):
    return {"source": "SIM:x", "dtype": dtype, "shape": list(shape)}


# -- pure functions ---------------------------------------------------------------------


def test_spec_date_is_english_and_zero_padded():
    from datetime import datetime

    t = datetime(2026, 3, 5, 7, 8, 9).timestamp()
    assert spec_date(t) == "Thu Mar 05 07:08:09 2026"


def test_labels_and_numbers():
    assert sanitize_label("TR diode") == "TR_diode"
    assert sanitize_label(" a \t b\n") == "a_b"
    assert sanitize_label("") == "unnamed"
    assert unique_labels(["a b", "a_b", "x"]) == ["a_b", "a_b_2", "x"]
    assert format_number(1.5) == "1.5" and format_number(3) == "3" and format_number(True) == "1"
    assert format_number(np.float32(0.5)) == "0.5" and format_number(np.int64(7)) == "7"
    assert format_number(np.bool_(False)) == "0"
    for bad in (float("nan"), float("inf"), -float("inf"), None, "1.0", "x", [1], {}):
        assert format_number(bad) is None, bad


def test_mca_lines_cut_every_16_channels():
    lines, bad = mca_lines(np.arange(40), "-999999")
    assert lines[0].startswith("@A 0 1 ") and lines[0].endswith("15\\")
    assert lines[1].startswith(" 16 ") and lines[2] == " " + " ".join(map(str, range(32, 40)))
    lines, bad = mca_lines([1.0, float("nan"), None], "-999999")
    assert lines == ["@A 1.0 -999999 -999999"] and bad == 2


def test_long_comments_are_cut_and_wide_scans_keep_what_fits():
    text = "x " * 5000 + "end"
    lines = comment_lines(text)
    assert len(lines) == 3 and all(len(line) <= 4096 and line == line.rstrip() for line in lines)
    assert lines[1].startswith("#C ... ")
    assert lines[0][3:] + "".join(line[7:] for line in lines[1:]) == text
    keys = {f"signal_{i:04d}": number_key() for i in range(1000)}
    layout = scan_layout({"detectors": []}, {"data_keys": keys, "hints": {}})
    assert len("#L " + "  ".join(layout.labels)) <= 4096
    assert len(layout.labels) + len(layout.text) == 1001  # with Epoch


def start_of(plan_name, plan_args, **more):
    return {"uid": "u", "time": 0.0, "plan_name": plan_name, "plan_args": plan_args, **more}


def test_scan_commands_for_common_plans():
    dims = {"hints": {"dimensions": [[["m1"], "primary"]]}, "motors": ["m1"]}
    cmd = scan_command(start_of("count", {"detectors": ["d"], "num": 5, "delay": 0.5}))
    assert cmd.text == "loopscan 5 0 0.5" and cmd.motors == ()
    assert scan_command(start_of("count", {"num": None})).text == "timescan 0 0"
    cmd = scan_command(start_of("scan", {"num": 11, "args": ["M", -1, 1.5]}, **dims))
    assert cmd.text == "ascan  m1 -1 1.5  10  0" and cmd.motors == ("m1",)
    cmd = scan_command(
        start_of("rel_scan", {"num": 3, "args": ["M", -1, 1], "count_time": 0.2}, **dims)
    )
    assert cmd.text == "dscan  m1 -1 1  2  0.2"
    two = {"hints": {"dimensions": [[["a"], "primary"], [["b"], "primary"]]}}
    cmd = scan_command(start_of("scan", {"num": 4, "args": ["A", 0, 1, "B", 2, 3]}, **two))
    assert cmd.text == "a2scan  a 0 1 b 2 3  3  0"
    cmd = scan_command(start_of("list_scan", {"args": ["M", [0, 1, 2.5]]}, **dims))
    assert cmd.text == "list_scan  m1 [0,1,2.5]  0"
    grid = start_of(
        "grid_scan", {"args": []}, shape=[3, 5], extents=[[-1, 1], [-2, 2]], count_time=0.1, **two
    )
    cmd = scan_command(grid)
    assert cmd.text == "mesh  b -2 2 4  a -1 1 2  0.1" and cmd.motors == ("b", "a")
    cmd = scan_command(start_of("tune_mr", {"width": 2}, num_points=31, motors=["mr"]))
    assert cmd.text == "tune_mr  mr  31" and not cmd.mapped and '"width":2' in cmd.note
    many = start_of("list_scan", {"args": ["M", list(range(100))]}, **dims)
    cmd = scan_command(many)
    assert cmd.text == "list_scan  m1 [0,...,99]  0" and "[0,1,2," in cmd.note


def test_layout_puts_motors_first_and_the_main_detector_last():
    docs = scalar_run(3, detectors=("d1", "d2"))
    start = docs[0][1]
    primary = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    layout = scan_layout(start, primary)
    assert layout.labels == ("motor", "Epoch", "d2", "d1")


def test_read_file_state():
    lines = [b"#F x\n", b"#E 100\n", b"#O0 a  b c\n", b"\n", b"#S 3 ascan\n", b"1 2\n",
             b"#F x\n", b"#E 200\n", b"#O0 q\n", b"#S 7  x\n", b"1"]  # fmt: skip
    state = read_file_state(lines)
    assert state.numbers == {3, 7} and state.positioners == ("q",) and state.epoch == 200
    assert not state.ends_with_newline
    assert FileState(numbers={1, 5}).next_number(5) == 6
    assert FileState(numbers={1, 5}).next_number(2) == 2
    assert FileState().next_number(None) == 1 and FileState().next_number(-3) == 1


# -- files --------------------------------------------------------------------------------


def test_scalar_runs_appended_to_one_file(tmp_path, capfd):
    runs = [scalar_run(5), scalar_run(4, pages=True), scalar_run(3, scan_id=7)]
    path = one_path(tmp_path, *runs)
    scans = read_spec(path, capfd)
    assert [s["number"] for s in scans] == [1, 2, 7]
    first = scans[0]
    assert first["labels"] == ["motor", "Epoch", "det"]
    np.testing.assert_allclose([r[0] for r in first["rows"]], np.linspace(-1, 1, 5))
    assert first["motors"] == ["energy"] and first["positions"] == [8.0]
    text = Path(path).read_text()
    assert text.count("#F ") == 1  # same positioners: one file header
    assert "#C scan_id = 1 (RunEngine) is already used in this file: written as #S 2" in text
    assert text.count("exit_status = success") == 3
    assert f"#C uid = {runs[1][0][1]['uid']}" in text


@pytest.mark.parametrize("hinted", [True, False])
def test_the_metadata_stream_before_primary_never_makes_the_rows(tmp_path, capfd, hinted):
    """The metadata service's one-event stream comes first in every run (bsrec demo)."""
    metadata = {"scan_id": 1, "plan_name": "scan", "motors": ["m"], "detectors": ["d"]}
    if hinted:
        metadata["hints"] = {"dimensions": [[["m"], "primary"]]}
    docs = compose(
        metadata,
        {
            "metadata": (
                {"metadata_updated": {**number_key("string")}},
                [{"metadata_updated": "t"}],
            ),
            "primary": (
                {"m": number_key(), "d": number_key()},
                [{"m": i, "d": 10 * i} for i in range(3)],
            ),
        },
    )
    (scan,) = read_spec(one_path(tmp_path, docs), capfd)
    assert scan["labels"] == ["m", "Epoch", "d"]
    assert [r[-1] for r in scan["rows"]] == [0.0, 10.0, 20.0]


def test_a_real_runengine_scan_grid_scan_baseline_and_monitor(tmp_path, capfd):
    from bluesky import RunEngine
    from bluesky.plans import count, grid_scan, scan
    from bluesky.preprocessors import SupplementalData, monitor_during_wrapper
    from ophyd.sim import det, det4, motor, motor1, motor2, motor3

    RE = RunEngine({})
    sd = SupplementalData(baseline=[motor3])
    RE.preprocessors.append(sd)
    recorder = SpecRecorder(data_root=tmp_path / "data")
    RE.subscribe(recorder)
    RE(monitor_during_wrapper(scan([det], motor, -1, 1, 5), [det]))
    RE(grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=True))
    RE(count([det], num=2))
    recorder.close()
    (path,) = {p for ps in recorder.artifacts.values() for p in ps}
    scans = read_spec(path, capfd)
    one, mesh, cnt = scans
    assert one["command"] == "ascan  motor -1 1  4  0"
    assert one["labels"][:2] == ["motor", "Epoch"] and one["labels"][-1] == "det"
    assert len(one["rows"]) == 5 and "motor3" in one["motors"]
    assert mesh["command"] == "mesh  motor2 -2 2 3  motor1 -1 1 2  0"
    assert mesh["labels"][:3] == ["motor2", "motor1", "Epoch"] and mesh["labels"][-1] == "det4"
    grid = np.array(mesh["rows"])
    np.testing.assert_allclose(grid[:4, 0], np.linspace(-2, 2, 4))  # fast motor first
    np.testing.assert_allclose(grid[4:8, 0], np.linspace(2, -2, 4))  # snaking
    np.testing.assert_allclose(grid[::4, 1], np.linspace(-1, 1, 3))
    assert cnt["command"] == "loopscan 2 0 0.0" and cnt["labels"] == ["Epoch", "det"]
    text = Path(path).read_text()
    monitor = re.findall(r"#C det_monitor seq_num \d+, Epoch ([0-9.]+): det=", text)
    assert len(monitor) >= 5 and all(0 <= float(t) < 60 for t in monitor)  # comments
    assert "#C snaking = [false,true]: the fast motor goes both ways" in text
    assert "#C baseline seq_num 2, Epoch " in text  # the baseline's end reading


def test_positioners_change_writes_a_new_file_header(tmp_path, capfd):
    other = compose(
        {"scan_id": 9, "plan_name": "count"},
        {
            "baseline": ({"th": number_key(), "tth": number_key()}, [{"th": 1.0, "tth": 2.0}]),
            "primary": ({"det": number_key()}, [{"det": 5.0}]),
        },
    )
    path = one_path(tmp_path, scalar_run(2), other, scalar_run(2, scan_id=9))
    scans = read_spec(path, capfd)
    assert [s["motors"] for s in scans] == [["energy"], ["th", "tth"], ["energy"]]
    assert [s["positions"] for s in scans] == [[8.0], [1.0, 2.0], [8.0]]
    assert [s["number"] for s in scans] == [1, 9, 10]
    assert Path(path).read_text().count("#F ") == 3


def test_configured_positioners_and_eight_per_line(tmp_path, capfd):
    names = [f"m{i}" for i in range(10)]
    docs = compose(
        {"scan_id": 1, "plan_name": "count"},
        {
            "baseline": ({n: number_key() for n in names[:9]}, [dict.fromkeys(names[:9], 1.0)]),
            "primary": ({"det": number_key()}, [{"det": 5.0}]),
        },
    )
    path = one_path(tmp_path, docs, positioners=names)
    (scan,) = read_spec(path, capfd)
    assert scan["motors"] == names and scan["positions"] == [1.0] * 9 + [-999999.0]
    text = Path(path).read_text()
    assert "#O1 m8  m9" in text and "#C positioner m9 = (absent): written as -999999" in text


def test_missing_strings_and_non_numeric_values(tmp_path, capfd):
    keys = {
        "x": number_key(),
        "status": number_key("string"),
        "flag": number_key("boolean"),
        "det": number_key(),
    }
    rows = [
        {"x": 0.0, "status": "Idle", "flag": True, "det": 1.0},
        {"x": 1.0, "status": "Idle", "flag": False, "det": float("nan")},
        {"x": 2.0, "status": "Moving\nfast", "flag": False, "det": None},
        {"x": 3.0, "status": "Done", "flag": True, "det": "overflow"},
        {"x": float("inf"), "status": "Done", "flag": True, "det": 4.0},
    ]
    docs = compose({"scan_id": 3, "plan_name": "count", "detectors": ["det"]},
                   {"primary": (keys, rows)})  # fmt: skip
    path = one_path(tmp_path, docs)
    (scan,) = read_spec(path, capfd)
    assert scan["labels"] == ["Epoch", "x", "flag", "det"]
    assert [r[1:] for r in scan["rows"]] == [
        [0.0, 1.0, 1.0],
        [1.0, 0.0, -999999.0],
        [2.0, 0.0, -999999.0],
        [3.0, 1.0, -999999.0],
        [-999999.0, 1.0, 4.0],
    ]
    text = Path(path).read_text()
    assert "#C seq_num 2: missing or non-numeric, written as -999999:  det=NaN" in text
    assert "#C seq_num 3: missing or non-numeric, written as -999999:  det=null" in text
    assert '#C seq_num 4: missing or non-numeric, written as -999999:  det="overflow"' in text
    assert "x=Infinity" in text
    assert '#C seq_num 1: status = "Idle"' in text and "#C seq_num 2: status" not in text
    assert '#C seq_num 3: status = "Moving\\nfast"' in text


def test_one_dimensional_arrays_are_mca_spectra(tmp_path, capfd):
    keys = {
        "x": number_key(),
        "spec1": number_key("array", [20]),
        "spec2": number_key("array", [20]),
        "short": number_key("array", [5]),
        "det": number_key(),
    }
    rows = [
        {
            "x": float(i),
            "spec1": list(range(i, i + 20)),
            "spec2": [0.5 * i] * 20,
            "short": [i] * 5,
            "det": 1.0,
        }
        for i in range(3)
    ]
    rows[1]["spec2"] = [1.0, float("nan"), *range(2, 20)]
    docs = compose({"scan_id": 1, "plan_name": "count", "detectors": ["det"]},
                   {"primary": (keys, rows)})  # fmt: skip
    path = one_path(tmp_path, docs)
    (scan,) = read_spec(path, capfd)
    assert len(scan["rows"]) == 3 and scan["labels"] == ["Epoch", "x", "det"]
    assert len(scan["mca"]) == 6  # two spectra per row, in the order of #C MCA lines
    assert scan["mca"][0] == [float(v) for v in range(20)]
    assert scan["mca"][3] == [1.0, -999999.0, *map(float, range(2, 20))]
    written = [[1.0, -999999.0, *range(2, 20)] if r == 1 else rows[r]["spec2"] for r in range(3)]
    text = Path(path).read_text()
    assert "#@CHANN 20 0 19 1\n#@CALIB 0 1 0\n#@CHANN 20 0 19 1\n#@CALIB 0 1 0\n" in text
    assert "#C MCA 1: spec2 (20 channels)" in text
    # spec2nexus's converter fails on spectra of several lengths: "short" is text
    assert "#C short: array of another length than the MCA spectra" in text
    assert "#C seq_num 1: short = [0,0,0,0,0]\n" in text
    # silx.io.open (SpecH5) gives analyser i the i-th #@CALIB when there are several
    # #@CHANN, and failed (IndexError) with fewer #@CALIB lines than analysers
    import silx.io

    with silx.io.open(str(path)) as f:
        for i, expected in enumerate([[r["spec1"] for r in rows], written]):
            assert f[f"1.1/measurement/mca_{i}/data"][()].tolist() == expected
            assert f[f"1.1/instrument/mca_{i}/calibration"][()].tolist() == [0.0, 1.0, 0.0]
            assert f[f"1.1/instrument/mca_{i}/channels"][()].tolist() == list(range(20))
    # PyMca: "scan.order.point.analyser" (from 1), calibration per analyser
    from PyMca5.PyMcaCore.SpecFileDataSource import SpecFileDataSource

    source = SpecFileDataSource(str(path))
    for point in (1, 2, 3):
        for det, expected in ((1, rows[point - 1]["spec1"]), (2, written[point - 1])):
            mca = source.getDataObject(f"1.1.{point}.{det}")
            assert mca.y[0].tolist() == expected
            assert mca.info["McaCalib"] == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("make", [ad_hdf5_run, stream_resource_run])
def test_images_are_referenced_by_file_and_frame(tmp_path, capfd, make):
    detector_dir = tmp_path / "data" / "detector"
    path = one_path(tmp_path, make(detector_dir))
    (scan,) = read_spec(path, capfd)
    (det_file,) = list(detector_dir.iterdir())
    frame = scan["labels"].index("cam_image_frame")
    per = 2 if make is ad_hdf5_run else 1
    assert [r[frame] for r in scan["rows"]] == [0.0, per, 2.0 * per]
    text = Path(path).read_text()
    note = "cam_image_frame: index of the first frame of each point in the detector file"
    assert f"{note} {det_file}" in text
    assert "dataset /entry/data/data" in text


def test_repeated_scan_ids_are_renumbered(tmp_path, capfd):
    path = one_path(tmp_path, *[scalar_run(2, scan_id=5) for _ in range(3)])
    scans = read_spec(path, capfd)
    assert [s["number"] for s in scans] == [5, 6, 7]
    text = Path(path).read_text()
    assert text.count("#C scan_id = 5 (RunEngine) is already used in this file") == 2


def test_a_run_without_stop_followed_by_another_run(tmp_path, capfd, caplog):
    a = scalar_run(4, scan_id=1)
    b = scalar_run(2, scan_id=2)
    a_events = [i for i, (n, d) in enumerate(a) if n == "event"]
    cut = a_events[3]  # the baseline event and two primary events
    recorder = SpecRecorder(data_root=tmp_path / "data")
    feed(recorder, a[:cut])  # run a: no stop yet
    feed(recorder, b)  # run b, complete
    feed(recorder, a[cut:-1])  # more of run a, still no stop
    recorder.close()
    (path,) = {p for ps in recorder.artifacts.values() for p in ps}
    scans = read_spec(path, capfd)
    assert [s["number"] for s in scans] == [1, 2, 3]
    assert [len(s["rows"]) for s in scans] == [2, 2, 2]
    text = Path(path).read_text()
    assert f"#C run {a[0][1]['uid']} has no stop document yet" in text
    assert "#C continuation of scan 1" in text
    assert "no stop document was received" in text
    assert any("without a stop document" in r.getMessage() for r in caplog.records)


def test_events_before_their_descriptor_are_refused_and_nothing_is_lost(tmp_path, capfd):
    docs = scalar_run(3, baseline=False)
    desc = docs[1]
    recorder = SpecRecorder(data_root=tmp_path / "data")
    recorder(*docs[0])
    with pytest.raises(RecorderError, match="arrived before its descriptor"):
        recorder(*docs[2])
    feed(recorder, docs[1:])
    recorder.close()
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    (scan,) = read_spec(path, capfd)
    assert len(scan["rows"]) == 3 and desc[0] == "descriptor"


def test_an_existing_file_that_is_not_spec_is_refused_untouched(tmp_path):
    docs = scalar_run(2)
    recorder = SpecRecorder(data_root=tmp_path / "data")
    target = recorder.policy.prepare_run(recorder.data_root, docs[0][1]) / recorder.file_name(
        docs[0][1]
    )
    target.write_bytes(b"my notes\n")
    with pytest.raises(RecorderError, match="is not a SPEC file") as info:
        recorder(*docs[0])
    assert str(target) in str(info.value)
    recorder.close()
    assert target.read_bytes() == b"my notes\n"
    link = target.with_name("link.spec")
    link.symlink_to(target)
    other = SpecRecorder(data_root=tmp_path / "data", file_template="link.spec",
                         fallback_template="link.spec")  # fmt: skip
    with pytest.raises(RecorderError, match="symbolic link"):
        other(*docs[0])
    other.close()


def test_appending_to_a_file_spec_wrote(tmp_path, capfd):
    docs = scalar_run(2, scan_id=2)
    recorder = SpecRecorder(data_root=tmp_path / "data")
    target = recorder.policy.prepare_run(recorder.data_root, docs[0][1]) / recorder.file_name(
        docs[0][1]
    )
    original = (
        "#F old.spec\n#E 1700000000\n#D Tue Nov 14 22:13:20 2023\n#C old  User = spec\n"
        "#O0 energy\n\n#S 2  ascan  th 0 1 1  1\n#D Tue Nov 14 22:13:20 2023\n#P0 8\n"
        "#N 2\n#L th  det\n0 1\n1 2"  # the last line cut short by a crash
    )
    target.write_text(original)
    feed(recorder, docs)
    feed(recorder, scalar_run(2, scan_id=2))
    recorder.close()
    text = target.read_text()
    assert text.startswith(original + "\n\n#S 3 ")  # same #O: no new header
    scans = read_spec(target, capfd)
    assert [s["number"] for s in scans] == [2, 3, 4]
    assert scans[0]["rows"] == [[0.0, 1.0], [1.0, 2.0]]


def test_every_real_run_converts(tmp_path, capfd):
    starts = 0
    for stream in ("usaxs.json.gz", "apstools.json.gz"):
        docs = list(realruns(stream))
        starts += sum(n == "start" for n, _ in docs)
        recorder, paths = write(tmp_path / stream, docs)
        scans = [s for path in sorted(paths) for s in read_spec(path, capfd)]
        assert len(scans) == sum(n == "start" for n, _ in docs)
        assert len(recorder.artifacts) == len(scans)
    assert starts == 63
    usaxs = (tmp_path / "usaxs.json.gz").rglob("*.spec")
    text = "".join(p.read_text() for p in usaxs)
    assert "TR_diode" in text and "#C MCA 2: struck_mca2_spectrum (7999 channels)" in text


def test_metadata_names_the_file_and_fills_comments(tmp_path, capfd):
    docs = scalar_run(2)
    docs[0][1]["experiment"] = {
        "proposal_id": "GUP-12345",
        "pi": {"name": "Ada Lovelace", "last_name": "Lovelace"},
        "sample": {"name": "LaB6 powder"},
    }
    path = one_path(tmp_path, docs)
    assert os.path.basename(path) == "gup-12345_lovelace.spec"
    assert os.path.basename(os.path.dirname(path)) == "lovelace"
    text = Path(path).read_text()
    assert "#C proposal = GUP-12345\n#C PI = Ada Lovelace\n#C sample = LaB6 powder\n" in text
    read_spec(path, capfd)


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from bluesky_recorders.spec import SpecRecorder
    from bluesky_recorders.testing import scalar_run
    docs = scalar_run(10)
    recorder = SpecRecorder(data_root=sys.argv[1])
    events = 0
    for name, doc in docs:
        recorder(name, doc)
        if name == "event" and doc["descriptor"] == docs[3][1]["uid"]:
            events += 1
            if events == 6:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writer_leaves_every_row_written(tmp_path, capfd):
    run = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], check=False)
    assert run.returncode == -signal.SIGKILL
    (path,) = tmp_path.rglob("*.spec")
    (scan,) = read_spec(path, capfd)
    assert len(scan["rows"]) == 6


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="data_root"):
        SpecRecorder()
    with pytest.raises(ValueError, match="missing_value"):
        SpecRecorder(data_root=tmp_path, missing_value=float("nan"))
    with pytest.raises(ValueError, match="positioners"):
        SpecRecorder(data_root=tmp_path, positioners="m1")


def test_a_run_of_monitors_only_is_written_without_holding_it_all(tmp_path, capfd):
    from bluesky_recorders.spec import MAX_PENDING

    rows = [{"I0": float(i)} for i in range(MAX_PENDING + 5)]
    docs = compose({"scan_id": 1, "plan_name": "count"},
                   {"I0_monitor": ({"I0": number_key()}, rows)}, stop=False)  # fmt: skip
    recorder = SpecRecorder(data_root=tmp_path / "data")
    feed(recorder, docs)
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    assert Path(path).read_text().count("#C I0_monitor seq_num") == MAX_PENDING + 5
    recorder.close()
    (scan,) = read_spec(path, capfd)
    assert scan["labels"] == ["Epoch"] and scan["rows"] == []


def test_the_reader_check_catches_a_dropped_row(tmp_path, capfd):
    """The helper itself: a row with nan (as suitcase-specfile writes it) is caught."""
    bad = tmp_path / "bad.spec"
    bad.write_text(
        "#F bad.spec\n#E 1\n#D Thu Jan 01 00:00:01 1970\n#C bad  User = x\n#O0 m\n\n"
        "#S 1  ascan  m 0 1 1  0\n#D Thu Jan 01 00:00:01 1970\n#P0 1\n#N 2\n#L m  det\n"
        "0 1\n1 nan\n"
    )
    with pytest.raises(AssertionError, match="Error on scan 1"):
        read_spec(bad, capfd)


def test_value_types_change_between_rows(tmp_path, capfd):
    """numpy scalars, ints, booleans and NaN after plain floats: each written right."""
    values = [1.0, np.float64(2.5), 3, np.float32(0.5), True, float("nan"), np.int64(7), 1e-300]
    rows = [{"x": float(i), "det": v} for i, v in enumerate(values)]
    keys = {"x": number_key(), "det": number_key()}
    for pages in (False, True):
        docs = compose({"scan_id": 1, "plan_name": "count", "detectors": ["det"]},
                       {"primary": (keys, rows)})  # fmt: skip
        if pages:
            events = [d for n, d in docs if n == "event"]
            page = event_model.pack_event_page(*events)
            docs = [x for x in docs if x[0] != "event"]
            docs.insert(2, ("event_page", page))
        path = one_path(tmp_path / str(pages), docs)
        (scan,) = read_spec(path, capfd)
        assert [r[-1] for r in scan["rows"]] == [1.0, 2.5, 3.0, 0.5, 1.0, -999999.0, 7.0, 1e-300]
        assert "det=NaN" in Path(path).read_text()


# -- what the readers need (regressions from exporting whole beamline runs) -------------


def baseline_run(scan_id, baseline, *, mca=False):
    """A count with ``baseline`` values (a dict; None: no baseline stream) and, with
    ``mca``, three 1-D arrays per event (several MCA analysers)."""
    keys = {"det": number_key()}
    rows = [{"det": 1.0}, {"det": 2.0}]
    if mca:
        for k, n in (("mca1", 4), ("mca2", 3), ("mca3", 4)):
            keys[k] = number_key("array", [n])
            for r, row in enumerate(rows):
                row[k] = [float(10 * r + c) for c in range(n)]
    streams = {"primary": (keys, rows)}
    if baseline is not None:
        streams = {"baseline": ({k: number_key() for k in baseline}, [baseline]), **streams}
    return compose({"scan_id": scan_id, "plan_name": "count", "detectors": ["det"]}, streams)


def test_a_run_without_positioners_gets_a_placeholder_pymca_can_read(tmp_path, capfd):
    """PyMca's allmotors()/allmotorpos() raised SystemError (PyList_New(-1)) for a scan
    without #O/#P, and Specfile.allmotors() raised when the first scan had none."""
    runs = [
        scalar_run(2, baseline=False),
        scalar_run(2, scan_id=2),
        scalar_run(2, baseline=False, scan_id=3),
    ]
    path = one_path(tmp_path, *runs)
    scans = read_spec(path, capfd)  # PyMca: per scan and for the file, nothing raises
    assert [s["motors"] for s in scans] == [["no_positioners"], ["energy"], ["no_positioners"]]
    assert [s["positions"] for s in scans] == [[-999999.0], [8.0], [-999999.0]]
    text = Path(path).read_text()
    assert text.count("#O0 no_positioners\n") == 2 and text.count("#F ") == 3
    assert text.count("#C positioner no_positioners = -999999 is a placeholder: this run "
                      "recorded no positioner (the run has no baseline)") == 2  # fmt: skip


def test_the_same_positioners_in_another_order_keep_the_file_header(tmp_path, capfd):
    runs = [
        baseline_run(1, {"th": 1.0, "tth": 2.0}),
        baseline_run(2, {"tth": 4.0, "th": 3.0}),
    ]
    path = one_path(tmp_path, *runs)
    scans = read_spec(path, capfd)
    assert [s["motors"] for s in scans] == [["th", "tth"], ["th", "tth"]]
    assert [s["positions"] for s in scans] == [[1.0, 2.0], [3.0, 4.0]]
    assert Path(path).read_text().count("#F ") == 1


def test_at_most_300_positioners(tmp_path, capfd):
    """silx reads #P into a static array of 300: 320 positions gave a wrong value, 1000
    a crash."""
    baseline = {f"p{i}": float(i) for i in range(310)}
    path = one_path(tmp_path, baseline_run(1, baseline))
    (scan,) = read_spec(path, capfd)
    assert scan["motors"] == [f"p{i}" for i in range(300)]
    assert scan["positions"] == [float(i) for i in range(300)]
    text = Path(path).read_text()
    assert "#C baseline p309 = 309.0\n" in text and "#C 10 positioners beyond the first" in text
    with pytest.raises(ValueError, match="at most 300 positioners"):
        SpecRecorder(data_root=tmp_path, positioners=[f"p{i}" for i in range(301)])


def test_names_keep_the_255_characters_silx_and_pymca_read(tmp_path, capfd):
    """Their C parser cuts a #L or #O name at 255 characters, spec2nexus does not."""
    long = "x" * 300
    assert len(sanitize_label(long)) == 255
    assert [len(n) for n in unique_labels([long, long + " "])] == [255, 255]
    keys = {long: number_key(), long + "_": number_key(), "det": number_key()}
    rows = [{long: 1.0, long + "_": 2.0, "det": 3.0}]
    streams = {"baseline": ({long: number_key()}, [{long: 5.0}]), "primary": (keys, rows)}
    docs = compose({"scan_id": 1, "plan_name": "count", "detectors": ["det"]}, streams)
    path = one_path(tmp_path, docs)
    (scan,) = read_spec(path, capfd)
    assert [len(label) for label in scan["labels"]] == [5, 255, 255, 3]
    assert scan["motors"] == ["x" * 255] and scan["positions"] == [5.0]


def test_every_reader_of_the_shared_check_agrees_on_headers_mca_and_empty_scans(tmp_path):
    """tests/readers.py on what real runs hold: file header blocks with other positioners
    (PyMca names a scan's motors from its own block), several MCA analysers per row
    (silx.io.open: groups measurement/mca_<i>, one #@CALIB each), a run without events
    (PyMca: lines() raises), runs without a baseline."""
    from readers import spec_problems

    empty = compose({"scan_id": 5, "plan_name": "count"}, {"primary": ({"det": number_key()}, [])})
    runs = [
        baseline_run(1, {"a": 1.0, "b": 2.0}),
        baseline_run(2, {"c": 3.0, "d": 4.0, "e": 5.0}, mca=True),
        baseline_run(3, None, mca=True),
        baseline_run(4, {"a": 6.0, "b": 7.0}),
        empty,
    ]
    path = one_path(tmp_path, *runs)
    assert Path(path).read_text().count("#F ") == 5
    assert spec_problems(path) == []
