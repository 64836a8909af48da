"""End-of-run plots: the layout rules alone, atomic files, and real RunEngine runs."""

import json
import logging
import math
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, grid_scan, scan
from matplotlib.image import imread
from ophyd.sim import det, det4, motor, motor1, motor2

from bluesky_recorders import RecorderSet
from bluesky_recorders.config import recorder_class
from bluesky_recorders.metadata.model import snapshot_from_values
from bluesky_recorders.paths import DirectoryPolicy, PathExistsError, run_directory
from bluesky_recorders.plots import (
    EndOfRunPlotsRecorder,
    claim_plots_dir,
    find_run_plots,
    render_png,
    write_new_file,
)
from bluesky_recorders.plots_layout import (
    HeatMap,
    LinePlot,
    axis_label,
    choose_plot,
    grid_edges,
    grid_image,
    json_safe,
    layout_run,
    plot_files,
    plots_dir,
    plotted_keys,
    run_title,
    to_number,
)
from bluesky_recorders.testing import collect, feed, realruns, scalar_run

SIZE = (320, 200)


@pytest.fixture
def RE():
    return RunEngine({})


def run_docs(RE, plan):
    docs, cb = collect()
    token = RE.subscribe(cb)
    RE(plan)
    RE.unsubscribe(token)
    return docs


def primary(docs):
    return next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")


def events(docs):
    desc = primary(docs)["uid"]
    return [d for n, d in docs if n == "event" and d["descriptor"] == desc]


def columns_of(docs, keys):
    evs = events(docs)
    out = {"seq_num": [e["seq_num"] for e in evs]}
    for key in keys:
        out[key] = [to_number(e["data"].get(key)) for e in evs]
    return out


def sidecar_of(files):
    (path,) = [f for f in files if f.endswith("plot.json")]
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# -- the layout, alone ---------------------------------------------------------------


def test_choose_plot_for_scan_grid_and_count(RE):
    one = run_docs(RE, scan([det], motor, -1, 1, 5))
    plot = choose_plot(one[0][1], primary(one))
    assert (plot.signal, plot.axes, plot.grid) == ("det", ["motor"], None)
    assert plotted_keys(plot) == ["motor", "det"]
    grid = run_docs(RE, grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=True))
    plot = choose_plot(grid[0][1], primary(grid))
    assert (plot.signal, plot.axes, plot.grid, plot.snake) == (
        "det4",
        ["motor1", "motor2"],
        (3, 4),
        True,
    )
    counted = run_docs(RE, count([det], 3))
    plot = choose_plot(counted[0][1], primary(counted))
    assert (plot.signal, plotted_keys(plot)) == ("det", ["det"])


def test_choose_plot_stand_ins_for_missing_hints():
    docs = scalar_run(3, baseline=True)
    start = {k: v for k, v in docs[0][1].items() if k != "hints"}  # no dimensions: motors
    desc = primary(docs)
    assert choose_plot(start, desc).axes == ["motor"]
    # a detector hinting no field (as in the recorded APS runs): its object_keys stand in
    quiet = {**desc, "hints": {"det": {"fields": []}, "motor": {"fields": ["motor"]}}}
    plot = choose_plot(docs[0][1], quiet)
    assert (plot.signal, plot.axes) == ("det", ["motor"])
    baseline = next(d for n, d in docs if n == "descriptor" and d["name"] == "baseline")
    assert choose_plot(docs[0][1], baseline) is None  # only the primary stream is plotted


def test_strings_and_arrays_are_never_plotted():
    docs = scalar_run(2, baseline=False)
    desc = primary(docs)
    keys = {
        "motor": desc["data_keys"]["motor"],
        "name": {"source": "x", "dtype": "string", "shape": []},
        "spectrum": {"source": "x", "dtype": "array", "shape": [16]},
    }
    desc = {**desc, "data_keys": keys, "hints": {"name": {"fields": ["name", "spectrum"]}}}
    start = {**docs[0][1], "detectors": ["name"]}
    assert choose_plot(start, desc) is None
    plots = layout_run(start, desc, {"seq_num": [1, 2]}, docs[-1][1])
    assert plots.figures == [] and "no numeric scalar field" in plots.reason


def test_to_number_and_json_safe():
    assert to_number(np.float32(1.5)) == 1.5 and to_number(np.int64(3)) == 3.0
    assert to_number(True) == 1.0 and to_number(np.bool_(False)) == 0.0
    for bad in ("3", None, [1, 2], {"a": 1}):
        assert math.isnan(to_number(bad))
    out = json_safe({"a": [1.0, math.nan, math.inf], "b": np.arange(2), "c": (np.float64(2),)})
    assert out == {"a": [1.0, None, None], "b": [0, 1], "c": [2.0]}
    json.dumps(out, allow_nan=False)


def test_names_labels_and_titles():
    assert plot_files(["I0", "i0", "TR diode", "plot"]) == {
        "I0": "i0.png",
        "i0": "i0_2.png",
        "TR diode": "tr_diode.png",
        "plot": "plot.png",
    }
    desc = {"data_keys": {"m": {"units": "mm"}, "d": {}}}
    assert (axis_label("m", desc), axis_label("d", desc)) == ("m [mm]", "d")
    assert axis_label("seq_num", desc) == "point (seq_num)"
    experiment = snapshot_from_values({"sample:name": "Si wafer"})
    start = {"scan_id": 7, "plan_name": "scan", "experiment": experiment}
    assert run_title(start) == "scan 7 · scan · Si wafer"
    assert run_title({"uid": "abcdef0123", "sample": {"name": "foil"}}) == "run abcdef01 · foil"
    assert str(plots_dir("/d/exp", 7, "ABCDEF0123")) == "/d/exp/end_of_run/7"
    assert str(plots_dir("/d/exp", 7, "ABCDEF0123", 1)) == "/d/exp/end_of_run/7_abcdef01"
    assert str(plots_dir("/d/exp", None, "abcdef0123", 2)) == "/d/exp/end_of_run/0_abcdef01_2"


def test_grid_image_places_snaked_rows_and_edges():
    image = grid_image([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], (3, 3), snake=True)
    expected = [[1, 2, 3], [6, 5, 4], [7, np.nan, np.nan]]
    np.testing.assert_array_equal(image, np.array(expected, dtype=float))
    assert np.isnan(grid_image([9], [11], (2, 2), snake=False)).all()  # beyond the grid
    assert grid_edges([0.0, 1.0, 2.0]) == (-0.5, 2.5)
    assert grid_edges([2.0, math.nan, 0.0]) == (2.5, -0.5)  # decreasing, one unknown
    assert grid_edges([4.0]) == (3.5, 4.5) and grid_edges([math.nan, math.nan]) is None


def test_layout_of_a_grid_scan_uses_the_motor_positions(RE):
    docs = run_docs(RE, grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=True))
    start, desc = docs[0][1], primary(docs)
    cols = columns_of(docs, plotted_keys(choose_plot(start, desc)))
    plots = layout_run(start, desc, cols, docs[-1][1])
    (fig,) = plots.figures
    assert isinstance(fig, HeatMap) and fig.file == "det4.png"
    # every column of the image is one position of the fast motor (snaking undone)
    fast = grid_image(cols["motor2"], cols["seq_num"], (3, 4), True)
    assert np.allclose(fast, fast[0]) and np.allclose(fast[0], np.linspace(-2, 2, 4))
    assert np.allclose(fig.extent, (-2 - 2 / 3, 2 + 2 / 3, -1.5, 1.5))
    assert plots.sidecar["grid"] == {"shape": [3, 4], "snake": True, "axes": ["motor1", "motor2"]}


def test_layout_handles_nan_no_events_and_no_primary():
    docs = scalar_run(4, baseline=False)
    start, desc, stop = docs[0][1], primary(docs), docs[-1][1]
    cols = {
        "seq_num": [1, 2, 3, 4],
        "motor": [0.0, 1.0, 2.0, math.nan],
        "det": [5.0, math.nan, 7.0, 8.0],
    }
    plots = layout_run(start, desc, cols, stop)
    (fig,) = plots.figures
    assert isinstance(fig, LinePlot) and (fig.x, fig.y) == ([0.0, 2.0], [5.0, 7.0])
    assert plots.sidecar["data"] == {
        "seq_num": [1, 2, 3, 4],
        "motor": [0.0, 1.0, 2.0, None],
        "det": [5.0, None, 7.0, 8.0],
    }
    json.dumps(plots.sidecar, allow_nan=False)
    all_nan = layout_run(start, desc, {**cols, "det": [math.nan] * 4}, stop)
    assert all_nan.figures == [] and "det: no finite value" in all_nan.reason
    empty = layout_run(start, desc, {"seq_num": [], "motor": [], "det": []}, stop)
    assert empty.figures == [] and empty.reason == "the 'primary' stream has no events"
    none = layout_run(start, None, {"seq_num": []}, stop, streams=["mca", "baseline"])
    assert none.reason == "the run has no 'primary' stream (its streams: mca, baseline)"
    assert none.sidecar["run"]["exit_status"] == "success" and none.sidecar["data"] == {}


def test_layout_caps_the_number_of_plots():
    docs = scalar_run(2, baseline=False, detectors=("a", "b", "c"))
    start, desc = docs[0][1], primary(docs)
    cols = columns_of(docs, ["motor", "a", "b", "c"])
    plots = layout_run(start, desc, cols, docs[-1][1], max_plots=2)
    assert [f.file for f in plots.figures] == ["a.png", "b.png"]
    assert plots.sidecar["not_plotted"] == {"c": "more than max_plots = 2 signals"}
    assert set(plots.sidecar["data"]) == {"seq_num", "motor", "a", "b"}


def test_render_png_has_the_asked_size(tmp_path):
    line = LinePlot("a.png", "t", "d", "m", "m [mm]", "d", [0.0, 1.0], [2.0, 3.0])
    heat = HeatMap("b.png", "t", "d", "x", "y", "d", np.array([[1.0, np.nan]]), (0, 1, 0, 1))
    for fig in (line, heat):
        path = tmp_path / fig.file
        path.write_bytes(render_png(fig, size=(300, 200), dpi=50))
        assert imread(path).shape[:2] == (200, 300)


# -- files -----------------------------------------------------------------------------


def test_write_new_file_is_create_only_and_leaves_no_temporary(tmp_path):
    policy = DirectoryPolicy(file_mode=0o640)
    path = tmp_path / "a.png"
    write_new_file(policy, tmp_path, path, b"first")
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(PathExistsError, match="refusing to overwrite"):
        write_new_file(policy, tmp_path, path, b"second")
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["a.png"]


def test_claim_plots_dir_never_shares_a_folder(tmp_path):
    policy = DirectoryPolicy(dir_mode=0o2750)
    exp = tmp_path / "2026-11" / "doe"
    first = claim_plots_dir(policy, tmp_path, exp, 5, "abcdef0123")
    second = claim_plots_dir(policy, tmp_path, exp, 5, "fedcba9876")
    third = claim_plots_dir(policy, tmp_path, exp, 5, "fedcba9876")
    assert [p.name for p in (first, second, third)] == ["5", "5_fedcba98", "5_fedcba98_2"]
    assert stat.S_IMODE(first.stat().st_mode) == 0o2750


# -- real runs ---------------------------------------------------------------------------


class GatedPlots(EndOfRunPlotsRecorder):
    """Draws only once the test opens the gate."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write_plots(self, job):
        self.entered.set()
        self.gate.wait(60)
        return super().write_plots(job)


def test_scan_and_grid_scan_give_pngs_and_a_sidecar_of_the_events(RE, tmp_path):
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=SIZE)
    rs = RecorderSet([rec])
    RE.subscribe(rs)
    RE.md["experiment"] = snapshot_from_values(
        {"pi:last_name": "Doe", "sample:name": "Si wafer", "proposal:id": "GUP-1"}
    )
    one = run_docs(RE, scan([det], motor, -1, 1, 7))
    grid = run_docs(RE, grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 5, snake_axes=True))
    assert rec.wait(60)
    for docs, png, keys in (
        (one, "det.png", ["motor", "det"]),
        (grid, "det4.png", ["motor1", "motor2", "det4"]),
    ):
        start = docs[0][1]
        files = rec.artifacts[start["uid"]]
        folder = run_directory(tmp_path, start) / "end_of_run" / str(start["scan_id"])
        assert files == [str(folder / png), str(folder / "plot.json")]
        assert imread(folder / png).shape == (SIZE[1], SIZE[0], 4)
        side = sidecar_of(files)
        expected = columns_of(docs, keys)
        assert side["data"] == expected  # exactly the plotted values of the events
        assert side["run"]["uid"] == start["uid"] and side["run"]["exit_status"] == "success"
        assert side["run"]["scan_id"] == start["scan_id"]
        assert side["run"]["plan_name"] == start["plan_name"]
        assert side["run"]["time"] == start["time"]
        assert side["experiment"] == start["experiment"]
        assert side["title"] == f"scan {start['scan_id']} · {start['plan_name']} · Si wafer"
        assert folder.parent.parent.name == "doe"  # the experiment directory of the PI
        assert find_run_plots(folder.parent.parent, start["uid"]) == folder
    assert sidecar_of(rec.artifacts[grid[0][1]["uid"]])["kind"] == "heatmap"
    rs.close()


def test_runs_sharing_a_scan_id_never_overwrite(RE, tmp_path):
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=SIZE, draw_in="thread")
    rs = RecorderSet([rec])
    RE.subscribe(rs)
    (first,) = RE(scan([det], motor, -1, 1, 3))
    assert rec.wait(60)
    before = {p: Path(p).read_bytes() for p in rec.artifacts[first]}
    RE.md["scan_id"] = 0  # the next run gets scan id 1 again
    (second,) = RE(count([det], 2))
    assert rec.wait(60)
    folder = os.path.dirname(rec.artifacts[first][0])
    assert os.path.basename(folder) == "1"
    assert os.path.basename(os.path.dirname(rec.artifacts[second][0])) == f"1_{second[:8]}"
    assert {p: Path(p).read_bytes() for p in rec.artifacts[first]} == before
    assert sidecar_of(rec.artifacts[second])["run"]["plan_name"] == "count"
    experiment = Path(folder).parent.parent
    for uid in (first, second):  # found by the folders their scan id can give them
        own = Path(os.path.dirname(rec.artifacts[uid][0]))
        assert find_run_plots(experiment, uid, 1) == own
        assert find_run_plots(experiment, uid) == own
    assert find_run_plots(experiment, first, 2) is None  # no folder for that scan id
    rs.close()


def test_the_stop_is_not_delayed_by_drawing(RE, tmp_path, caplog):
    rec = GatedPlots(data_root=tmp_path, size=SIZE)
    rs = RecorderSet([rec], drain_timeout=5)
    seen = []

    def after_the_set(name, doc):  # subscribed after the set: runs once the set has the stop
        if name == "stop":
            seen.append((rec.entered.is_set(), rec.gate.is_set(), rec.artifacts[doc["run_start"]]))

    RE.subscribe(rs)
    RE.subscribe(after_the_set)
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        (first,) = RE(scan([det], motor, -1, 1, 5))
        assert rec.entered.wait(30)  # the worker holds the first run, blocked on the gate
        (second,) = RE(count([det], 2))  # the next run starts and stops meanwhile
    assert seen[0][1:] == (False, []) and seen[1] == (True, False, [])
    assert rec.pending == 2
    assert "did not finish" not in caplog.text
    rec.gate.set()
    assert rec.wait(60)
    assert rec.artifacts[first] and rec.artifacts[second]
    rs.close()


def test_close_waits_for_pending_plots_and_plots_open_runs(tmp_path):
    rec = GatedPlots(data_root=tmp_path, size=SIZE, draw_in="thread")
    docs = scalar_run(3, baseline=False)
    feed(rec, docs)  # a whole run: handed over, blocked on the gate
    open_run = scalar_run(2, baseline=False, scan_id=2)
    feed(rec, open_run[:-1])  # no stop document

    def open_gate_once_closing():
        while not rec.closing:
            threading.Event().wait(0.01)
        rec.gate.set()

    helper = threading.Thread(target=open_gate_once_closing)
    helper.start()
    rec.close()
    helper.join()
    assert rec.pending == 0
    done = sidecar_of(rec.artifacts[docs[0][1]["uid"]])
    unfinished = sidecar_of(rec.artifacts[open_run[0][1]["uid"]])
    assert done["run"]["exit_status"] == "success" and unfinished["run"]["exit_status"] is None
    assert unfinished["data"]["seq_num"] == [1, 2]
    rec.close()  # idempotent


def test_close_gives_up_after_close_timeout(tmp_path, caplog):
    rec = GatedPlots(data_root=tmp_path, size=SIZE, close_timeout=0.2)
    docs = scalar_run(2, baseline=False)
    feed(rec, docs)
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders.plots"):
        rec.close()
    assert "1 runs' plots are not written after 0.2 s" in caplog.text
    rec.gate.set()
    assert rec.wait(60) and rec.artifacts[docs[0][1]["uid"]]
    rec._background._thread.join(60)  # the thread ends once done, and ends the child
    assert rec._drawing._proc is None


def test_a_failure_is_logged_and_never_reaches_the_run_engine(RE, tmp_path, caplog):
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=SIZE)
    assert rec.on_error == "warn" and rec.when_full == "block"
    rs = RecorderSet([rec])
    RE.subscribe(rs)
    start_docs = []
    RE.subscribe(lambda n, d: start_docs.append(d) if n == "start" else None)
    (uid,) = RE(count([det], 1))
    exp = run_directory(tmp_path, start_docs[0])
    assert rec.wait(60)
    blocker = exp / "end_of_run"
    for path in rec.artifacts[uid]:
        os.unlink(path)
    for folder in sorted(blocker.iterdir(), reverse=True):
        folder.rmdir()
    blocker.rmdir()
    blocker.write_text("a regular file where the plots folder should be")
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        (failed,) = RE(scan([det], motor, -1, 1, 3))
        assert rec.wait(60)
    assert RE.state == "idle"
    msg = caplog.text
    assert "recorder 'plots' failed" in msg and str(blocker) in msg and "is not one" in msg
    assert failed in msg and "the scan is not affected" in msg
    assert rec.artifacts[failed] == []
    assert blocker.read_text().startswith("a regular file")
    rs.close()


def test_only_temporary_names_are_ever_opened_for_writing(RE, tmp_path):
    class RecordingPolicy(DirectoryPolicy):
        def __init__(self):
            super().__init__()
            self.opened = []

        def open_new(self, path, mode="xb", **kwargs):
            self.opened.append(os.path.basename(path))
            return super().open_new(path, mode, **kwargs)

    policy = RecordingPolicy()
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=SIZE, policy=policy, draw_in="thread")
    rs = RecorderSet([rec])
    RE.subscribe(rs)
    (uid,) = RE(scan([det], motor, -1, 1, 4))
    assert rec.wait(60)
    rs.close()
    assert len(policy.opened) == 2
    assert all(
        n.startswith((".det.png.", ".plot.json.")) and n.endswith(".tmp") for n in policy.opened
    )
    folder = os.path.dirname(rec.artifacts[uid][0])
    assert sorted(os.listdir(folder)) == ["det.png", "plot.json"]  # no temporary left
    for path in rec.artifacts[uid]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660 and os.stat(path).st_nlink == 1


def test_a_drawing_process_that_died_is_replaced(RE, tmp_path, caplog):
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=SIZE)
    rs = RecorderSet([rec])
    RE.subscribe(rs)
    (first,) = RE(count([det], 2))
    assert rec.wait(60) and rec.artifacts[first]
    child = rec._drawing._proc
    assert child.pid != os.getpid() and child.poll() is None  # drawn in another process
    child.kill()
    child.wait()
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        (second,) = RE(count([det], 2))
        assert rec.wait(60)
    assert "failed" not in caplog.text
    assert sidecar_of(rec.artifacts[second])["run"]["uid"] == second
    assert rec._drawing._proc.pid != child.pid
    rs.close()
    assert rec._drawing._proc is None and child.returncode is not None


def test_options_are_checked():
    cls = recorder_class("plots")
    assert cls is EndOfRunPlotsRecorder
    with pytest.raises(ValueError, match="names its files itself"):
        cls(data_root="/tmp/x", file_template="{uid}.png")
    with pytest.raises(ValueError, match=r"size must be \[width, height\]"):
        cls(data_root="/tmp/x", size=(800,))
    with pytest.raises(ValueError, match="max_plots must be a positive integer"):
        cls(data_root="/tmp/x", max_plots=0)
    with pytest.raises(ValueError, match="draw_in must be 'process' or 'thread'"):
        cls(data_root="/tmp/x", draw_in="gpu")
    with pytest.raises(ValueError, match="needs a data_root"):
        cls()


def test_all_recorded_runs_are_accepted_and_plotted(tmp_path):
    rec = EndOfRunPlotsRecorder(data_root=tmp_path, size=(160, 120), dpi=40, max_plots=1)
    rs = RecorderSet([rec], validate=False)  # test_realruns validates; here: the plots
    failures = []
    rs._report = lambda recorder, err: failures.append(err)
    starts, stopped = [], set()
    for name in ("usaxs.json.gz", "apstools.json.gz"):
        for doc_name, doc in realruns(name):
            rs(doc_name, doc)
            if doc_name == "start":
                starts.append(doc["uid"])
            elif doc_name == "stop":
                stopped.add(doc["run_start"])
    rs.close()  # plots the run that never stopped, and waits for every plot
    (no_stop,) = [u for u in starts if u not in stopped]
    assert failures == [] and len(starts) == 63
    kinds, sidecars = {}, []
    for uid in starts:
        files = rec.artifacts[uid]
        side = sidecar_of(files)
        sidecars.append(side)
        assert side["run"]["uid"] == uid
        assert (side["run"]["exit_status"] is None) == (uid == no_stop)
        assert (len(files) > 1) == (side["why_no_plot"] is None)
        kinds[side["kind"]] = kinds.get(side["kind"], 0) + 1
        for png in files[:-1]:
            assert imread(png).shape == (120, 160, 4)
    assert kinds == {"line": 59, None: 4}
    reasons = sorted(s["why_no_plot"] for s in sidecars if s["why_no_plot"])
    assert reasons == [
        "the 'primary' stream has no numeric scalar field to plot",
        "the run has no 'primary' stream (it has no stream at all)",
        "the run has no 'primary' stream (its streams: mca, baseline)",
        "the run has no 'primary' stream (its streams: mca, baseline)",
    ]
    left = [f for _, _, names in os.walk(tmp_path) for f in names if f.endswith(".tmp")]
    assert left == []
