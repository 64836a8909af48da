"""The NeXus recorder: files read back by h5py, silx and nexusformat."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import event_model
import h5py
import numpy as np
import pytest
from silx.io import nxdata as silx_nxdata

from bluesky_recorders import RecorderError
from bluesky_recorders.nexus import NexusRecorder, column_block, column_spec, default_plot
from bluesky_recorders.nexus_layout import decode_rows
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    scalar_run,
    stream_resource_run,
)

#: Every file the tests of this module write; the last test opens them all with every reader.
WRITTEN = []


def write_run(tmp_path, docs, **options):
    options.setdefault("data_root", tmp_path / "data")
    recorder = NexusRecorder(**options)
    feed(recorder, docs)
    recorder.close()
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    WRITTEN.append(path)
    return path


def tree(path):
    """Every dataset's value (JSON metadata and times left out) keyed by its path."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "metadata" not in name and "time" not in name:
                if "entry_identifier" not in name:
                    out[name] = (obj.shape, obj[()].tolist() if obj.shape else obj[()])

        f.visititems(visit)
    return out


def nexusformat_errors(path):
    from nexusformat.nexus.validate import validate_file

    warnings, errors = validate_file(str(path))
    return errors


# -- pure functions ---------------------------------------------------------------


def test_column_spec_and_block():
    assert column_spec({"dtype": "number", "shape": []}).dtype == np.float64
    assert column_spec({"dtype": "string", "shape": []}).is_text
    assert column_spec({"dtype": "array", "shape": [3]}).shape == (3,)
    assert column_spec({"dtype": "array", "shape": [25, 27, 0]}).is_text
    assert column_spec({"dtype": "array", "shape": [2, 2], "external": "FILESTORE:"}) is None
    block, bad = column_block([1.0, "x", None], column_spec({"dtype": "number", "shape": []}))
    assert bad == 1 and block[0] == 1.0 and np.isnan(block[1]) and np.isnan(block[2])
    block, bad = column_block(["a", 3], column_spec({"dtype": "string", "shape": []}))
    assert block.tolist() == ["a", "3"] and bad == 0


def test_default_plot_from_hints():
    docs = scalar_run(3, detectors=("d1", "d2"))
    start = docs[0][1]
    primary = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    plot = default_plot(start, primary)
    assert (plot.signal, plot.axes, plot.auxiliary, plot.grid) == ("d1", ["motor"], ["d2"], None)
    assert default_plot({}, {"data_keys": {}}) is None


def test_frame_mappings_merge_frames_that_continue_one_another():
    from bluesky_recorders.external import ExternalFrames
    from bluesky_recorders.nexus_layout import frame_mappings

    def rec(seq, frame, path="a.h5", per=1):
        return ExternalFrames(
            "d", "k", seq, seq + 1, path, path, "application/x-hdf5", "/x",
            frame, frame + per, per,
        )  # fmt: skip

    merged = frame_mappings([rec(1, 0), rec(2, 1), rec(3, 2), rec(4, 0, "b.h5"), rec(5, 5)])
    assert [(b[0], b[1], b[2].path, b[3], b[4]) for b in merged] == [
        (0, 3, "a.h5", 0, 3),
        (3, 4, "b.h5", 0, 1),
        (4, 5, "a.h5", 5, 6),
    ]
    per_two = frame_mappings([rec(1, 0, per=2), rec(2, 2, per=2)])
    assert [(b[0], b[1], b[3], b[4]) for b in per_two] == [(0, 1, 0, 2), (1, 2, 2, 4)]


# -- files ------------------------------------------------------------------------


def test_events_and_event_page_give_the_same_file(tmp_path):
    a = tree(write_run(tmp_path / "a", scalar_run(7)))
    b = tree(write_run(tmp_path / "b", scalar_run(7, pages=True)))
    assert a == b
    assert a["entry/instrument/bluesky/streams/primary/det"][0] == (7,)
    assert a["entry/instrument/bluesky/streams/primary/seq_num"][1] == list(range(1, 8))


def test_rows_converted_in_blocks_keep_their_order_and_fill(tmp_path, caplog):
    """Events of float scalars are converted to arrays every 1,024 rows; a value that
    does not convert, and an event page after converted rows, keep every row in place."""
    n = 2600
    primary = "entry/instrument/bluesky/streams/primary"
    plain = tree(write_run(tmp_path / "plain", scalar_run(n)))
    assert plain[f"{primary}/seq_num"][1] == list(range(1, n + 1))

    # a page of the last 300 events, after 2,300 events (two blocks converted)
    docs = scalar_run(n)
    first = next(i for i, (name, d) in enumerate(docs) if name == "event" and "det" in d["data"])
    events = [doc for _, doc in docs[first + 2300 : first + n]]
    mixed = [*docs[: first + 2300], ("event_page", event_model.pack_event_page(*events))]
    mixed += docs[first + n :]
    assert tree(write_run(tmp_path / "mixed", mixed)) == plain

    # a value that does not convert (after the first block), and a key missing
    docs = scalar_run(n)
    docs[first + 1500][1]["data"]["det"] = "over range"
    del docs[first + 2000][1]["data"]["det"]
    with caplog.at_level("WARNING"):
        bad = tree(write_run(tmp_path / "bad", docs))
    det = np.array(bad[f"{primary}/det"][1])
    expected = np.array(plain[f"{primary}/det"][1])
    expected[[1500, 2000]] = np.nan
    np.testing.assert_array_equal(det, expected)
    assert bad[f"{primary}/motor"] == plain[f"{primary}/motor"]
    assert bad[f"{primary}/seq_num"] == plain[f"{primary}/seq_num"]
    assert "1 value(s) of 'det' stored as fill" in caplog.text  # the text; None is a fill


def test_events_handed_over_together_give_the_same_file(tmp_path, caplog):
    """What a RecorderSet's thread does with events that queued up (process_events):
    the same file as one event at a time, also when a batch has an event without a
    key (that batch then goes one event at a time) or a value that does not convert."""
    n = 1500
    docs = scalar_run(n)
    docs[-40][1]["data"]["det"] = "over range"  # in the primary stream's last rows
    del docs[700][1]["data"]["det"]
    plain = tree(write_run(tmp_path / "plain", docs))

    recorder = NexusRecorder(data_root=tmp_path / "together" / "data")
    batch: list = []
    for name, doc in docs:
        if name == "event":
            batch.append(doc)
            if len(batch) == 256:
                assert recorder.process_events(batch) == []
                batch = []
            continue
        if batch:
            assert recorder.process_events(batch) == []
            batch = []
        recorder(name, doc)
    recorder.close()
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    WRITTEN.append(path)
    same = json.dumps(tree(path), sort_keys=True, default=str)  # NaN equals NaN here
    assert same == json.dumps(plain, sort_keys=True, default=str)
    primary = "entry/instrument/bluesky/streams/primary"
    assert plain[f"{primary}/seq_num"][1] == list(range(1, n + 1))
    assert np.isnan(plain[f"{primary}/det"][1][docs[700][1]["seq_num"] - 1])
    # tree() leaves times out: the event times and timestamps too are the same
    with h5py.File(path) as a, h5py.File(WRITTEN[-2]) as b:
        for name in ("time", "timestamps/det", "timestamps/motor"):
            np.testing.assert_array_equal(a[f"{primary}/{name}"][()], b[f"{primary}/{name}"][()])
        assert a[f"{primary}/time"].shape == (n,)


def test_default_plot_is_valid_for_silx_and_nexusformat(tmp_path):
    path = write_run(tmp_path, scalar_run(5, detectors=("d1", "d2")))
    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "entry" and f["entry"].attrs["default"] == "data"
        plot = silx_nxdata.get_default(f)
        assert plot is not None and plot.is_valid, plot and plot.issues
        assert plot.signal.name.endswith("/d1")
        assert plot.axes_dataset_names == ["motor"]
        np.testing.assert_allclose(plot.axes[0][()], np.linspace(-1, 1, 5))
        link = f["entry/data"].get("d1", getlink=True)
        assert isinstance(link, h5py.SoftLink)
        assert f["entry/data/d1"].attrs["target"] == link.path
        assert f["entry/data/motor"].attrs["units"] == "mm"
        positioner = f["entry/instrument/energy"]
        assert positioner.attrs["NX_class"] == "NXpositioner"
        assert positioner["value"][()] == 8.0 and positioner["value"].attrs["units"] == "keV"
        assert positioner["end_value"][()] == 8.0
        # PyMca and silx read plain datasets in instrument/positioners
        assert f["entry/instrument/positioners/energy"][()] == 8.0
        assert f["entry/instrument/positioners/motor"].shape == (5,)
        assert f["entry/instrument/motor"].attrs["NX_class"] == "NXpositioner"
        assert f["entry/data"].attrs["auxiliary_signals"].tolist() == ["d2"]
        det = f["entry/instrument/d1"]
        assert det.attrs["NX_class"] == "NXdetector"
        np.testing.assert_array_equal(det["data"][()], f["entry/data/d1"][()])
        start = json.loads(f["entry/instrument/bluesky/metadata/start"][()])
        assert start["plan_name"] == "scan"
        assert json.loads(f["entry/instrument/bluesky/metadata/stop"][()])["exit_status"]
    from nexusformat.nexus import nxload

    root = nxload(str(path))
    assert root.plottable_data.nxsignal.nxname == "d1"
    root.nxfile.close()
    assert nexusformat_errors(path) == 0


def test_times_and_exit_status_of_a_failed_run(tmp_path):
    docs = scalar_run(3)
    stop = dict(docs[-1][1], exit_status="fail", reason="motor stalled")
    path = write_run(tmp_path, [*docs[:-1], ("stop", stop)])
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry["exit_status"][()] == b"fail"
        assert entry["reason"][()] == b"motor stalled"
        start = entry["start_time"][()].decode()
        end = entry["end_time"][()].decode()
        assert start[:4] == end[:4] and start <= end
        assert entry["entry_identifier"][()].decode() == docs[0][1]["uid"]
        assert entry["scan_id"][()] == 1 and entry["program_name"].attrs["version"]
        assert list(entry).index("end_time") >= 0


def test_create_only_names_the_existing_file(tmp_path):
    docs = scalar_run(2)
    path = write_run(tmp_path, docs)
    recorder = NexusRecorder(data_root=tmp_path / "data")
    with pytest.raises(RecorderError) as info:
        recorder("start", docs[0][1])
    assert os.path.basename(path) in str(info.value)
    recorder.close()


@pytest.mark.parametrize("swmr", [False, True])
@pytest.mark.parametrize("make", [ad_hdf5_run, stream_resource_run])
def test_detector_frames_are_linked_not_copied(tmp_path, make, swmr):
    detector_dir = tmp_path / "data" / "detector"
    docs = make(detector_dir)
    path = write_run(tmp_path, docs, flush_interval=0, swmr=swmr)
    (det_file,) = list(detector_dir.iterdir())
    with h5py.File(det_file, "r") as src:
        frames = src["/entry/data/data"][()]
    reader = textwrap.dedent(
        f"""
        import h5py, numpy as np
        with h5py.File({str(path)!r}, "r") as f:
            ds = f["entry/instrument/bluesky/streams/primary/cam_image"]
            assert ds.is_virtual
            np.save("out.npy", ds[()])
            print(ds.virtual_sources()[0].file_name)
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", reader], cwd=elsewhere, capture_output=True, text=True, check=True
    )
    assert not os.path.isabs(run.stdout.strip())  # under the same data root: relative
    got = np.load(elsewhere / "out.npy")
    per = 2 if make is ad_hdf5_run else 1
    expected = frames.reshape(3, per, *frames.shape[1:]) if per > 1 else frames
    np.testing.assert_array_equal(got, expected)
    with h5py.File(path, "r") as f:
        refs = f["entry/instrument/bluesky/external/primary/cam_image"]
        assert refs["frame_start"][()].tolist() == [0, per, 2 * per]
        assert decode_rows(refs["path"][()])[0] == str(det_file)
    assert nexusformat_errors(path) == 0


def test_missing_detector_file_does_not_break_the_run(tmp_path, caplog):
    docs = ad_hdf5_run(tmp_path / "det")
    for f in (tmp_path / "det").iterdir():
        f.unlink()
    path = write_run(tmp_path, docs)
    WRITTEN.remove(path)  # its detector file is gone on purpose: checked here instead
    from readers import nexus_problems

    assert nexus_problems(path, allow_external_missing=True) == []
    with h5py.File(path, "r") as f:
        ds = f["entry/instrument/bluesky/streams/primary/cam_image"]
        assert ds.shape == (3, 2, 8, 10)
        assert os.path.isabs(ds.virtual_sources()[0].file_name)  # outside the data root
        assert f["entry/exit_status"][()] == b"success"
    assert any("cannot read detector file" in r.getMessage() for r in caplog.records)


def test_experiment_metadata(tmp_path):
    run = event_model.compose_run(
        metadata={
            "scan_id": 4,
            "plan_name": "count",
            "experiment": {
                "proposal_id": "GUP-1",
                "pi": {"name": "Ada Lovelace", "last_name": "Lovelace", "email": "ada@x.org"},
                "users": [{"name": "Ada Lovelace"}, {"name": "Bob", "email": "bob@x.org"}],
                "sample": {"name": "Si", "chemical_formula": "Si", "description": "wafer"},
                "beamline_id": "BL-9",
                "instrument": {
                    "source": "bending magnet",
                    "monochromator_energy": 8.05,
                    "energy_units": "keV",
                },
            },
        }
    )
    path = write_run(tmp_path, [("start", run.start_doc), ("stop", run.compose_stop())])
    assert os.path.basename(os.path.dirname(path)) == "lovelace"
    with h5py.File(path, "r") as f:
        sample = f["entry/sample"]
        assert sample.attrs["NX_class"] == "NXsample"
        assert [sample[k][()].decode() for k in ("name", "chemical_formula", "description")] == [
            "Si",
            "Si",
            "wafer",
        ]
        assert f["entry/user_1/name"][()] == b"Ada Lovelace"
        assert f["entry/user_1/email"][()] == b"ada@x.org"
        assert f["entry/user_2/name"][()] == b"Bob" and "user_3" not in f["entry"]
        assert f["entry/experiment_identifier"][()] == b"GUP-1"
        inst = f["entry/instrument"]
        assert inst["name"][()] == b"BL-9"
        assert inst["source"].attrs["NX_class"] == "NXsource"
        assert inst["source/name"][()] == b"bending magnet"
        assert inst["monochromator/energy"][()] == 8.05
        assert inst["monochromator/energy"].attrs["units"] == "keV"
    assert nexusformat_errors(path) == 0


@pytest.mark.parametrize("stream", ["usaxs.json.gz", "apstools.json.gz"])
def test_real_runs_convert(tmp_path, stream):
    recorder = NexusRecorder(data_root=tmp_path, flush_interval=10)
    feed(recorder, realruns(stream))
    recorder.close()
    paths = [p for ps in recorder.artifacts.values() for p in ps]
    assert len(paths) == {"usaxs.json.gz": 10, "apstools.json.gz": 53}[stream]
    for path in paths:  # every file has a default plot (a placeholder when nothing to plot)
        with h5py.File(path, "r") as f:
            plot = silx_nxdata.get_default(f)
            assert plot is not None and plot.is_valid, (path, plot and plot.issues)


# -- live reading and crashes -----------------------------------------------------

READER = textwrap.dedent(
    """
    import os, sys, h5py
    kw = {"swmr": True} if sys.argv[2] == "swmr" else {}
    with h5py.File(sys.argv[1], "r", **kw) as f:
        print(f["entry/instrument/bluesky/streams/primary/det"].shape[0])
    """
)


@pytest.mark.parametrize("mode", ["swmr", "nolock"])
def test_a_reader_sees_the_points_flushed_so_far(tmp_path, mode):
    docs = scalar_run(6)
    recorder = NexusRecorder(data_root=tmp_path, flush_interval=0, swmr=mode == "swmr")
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE") if mode == "nolock" else None
    seen = []
    primary_events = 0
    for name, doc in docs:
        recorder(name, doc)
        if name == "event" and doc["descriptor"] == docs[3][1]["uid"]:
            primary_events += 1
            if primary_events in (2, 5):
                (path,) = recorder.artifacts[docs[0][1]["uid"]]
                out = subprocess.run(
                    [sys.executable, "-c", READER, path, mode],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                seen.append(int(out.stdout))
    recorder.close()
    assert seen == [2, 5]


WRITER = textwrap.dedent(
    """
    import sys, time
    from bluesky_recorders.nexus import NexusRecorder
    from bluesky_recorders.testing import scalar_run
    docs = scalar_run(10)
    recorder = NexusRecorder(
        data_root=sys.argv[1], flush_interval=0, swmr=sys.argv[2] == "swmr"
    )
    events = 0
    for name, doc in docs:
        recorder(name, doc)
        if name == "event" and doc["descriptor"] == docs[3][1]["uid"]:
            events += 1
            if events == 4:
                print(recorder.artifacts[docs[0][1]["uid"]][0], flush=True)
                time.sleep(60)
    """
)


@pytest.mark.parametrize("mode", ["swmr", "default"])
def test_a_killed_writer_leaves_the_flushed_points(tmp_path, mode):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        path = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert path
    # a SWMR file keeps its "open for write" flag after a crash: SWMR readers only
    with h5py.File(path, "r", swmr=mode == "swmr") as f:
        det = f["entry/instrument/bluesky/streams/primary/det"][()]
        assert len(det) == 4 and "end_time" not in f["entry"]
    if mode == "swmr":
        return
    from silx.io import open as silx_open

    with silx_open(path) as f:
        assert f["entry/instrument/bluesky/streams/primary/motor"].shape == (4,)
        plot = silx_nxdata.get_default(f)
        assert plot is not None and plot.is_valid


# -- layout: grids, images, monitors, instrument ------------------------------------


def run_plan(tmp_path, plan, **options):
    """Run ``plan`` in a real RunEngine with the NeXus recorder subscribed."""
    from bluesky import RunEngine

    options.setdefault("data_root", tmp_path / "data")
    recorder = NexusRecorder(**options)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(recorder)
    result = RE(plan)
    recorder.close()
    (path,) = recorder.artifacts[result.run_start_uids[0]]
    WRITTEN.append(path)
    return path


@pytest.mark.parametrize("snake", [False, True])
def test_a_grid_scan_is_an_image_with_both_motor_axes(tmp_path, snake):
    from bluesky.plans import grid_scan
    from ophyd.sim import det4, motor1, motor2

    plan = grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=snake)
    path = run_plan(tmp_path, plan)
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "det4"
        assert data.attrs["axes"].tolist() == ["motor1", "motor2"]
        assert (data.attrs["motor1_indices"], data.attrs["motor2_indices"]) == (0, 1)
        image = data["det4"][()]
        assert image.shape == (3, 4)
        np.testing.assert_allclose(data["motor1"][()], [-1, 0, 1])
        np.testing.assert_allclose(data["motor2"][()], [-2, -2 / 3, 2 / 3, 2])
        # the image is the stream's column, row by row, odd rows reversed when snaking
        stream = f["entry/instrument/bluesky/streams/primary"]
        flat = stream["det4"][()].reshape(3, 4)
        m2 = stream["motor2"][()].reshape(3, 4)
        if snake:
            flat[1] = flat[1, ::-1]
            m2[1] = m2[1, ::-1]
        np.testing.assert_array_equal(image, flat)
        np.testing.assert_allclose(m2, np.tile(data["motor2"][()], (3, 1)))
        plot = silx_nxdata.get_default(f)
        assert plot.is_valid and plot.signal_is_2d, plot.issues
    assert nexusformat_errors(path) == 0


def test_detector_frames_are_the_signal_when_nothing_scalar_is_hinted(tmp_path):
    docs = ad_hdf5_run(tmp_path / "data" / "det")
    path = write_run(tmp_path, docs)
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        assert data.attrs["signal"] == "cam_image"
        assert data["cam_image"].shape == (3, 2, 8, 10)
        assert data.attrs["axes"].tolist() == [".", ".", ".", "."]
        cam = f["entry/instrument/cam"]
        assert cam.attrs["NX_class"] == "NXdetector" and cam["data"].is_virtual
        assert f["entry/instrument/cam/data"].shape == (3, 2, 8, 10)
        assert silx_nxdata.get_default(f).is_valid
    assert nexusformat_errors(path) == 0


def test_a_hinted_monitor_is_an_nxmonitor(tmp_path):
    docs = scalar_run(4, detectors=("d1", "I0"))
    docs[0][1]["hints"]["monitor"] = "I0"
    path = write_run(tmp_path, docs)
    with h5py.File(path, "r") as f:
        monitor = f["entry/monitor"]
        assert monitor.attrs["NX_class"] == "NXmonitor"
        assert monitor["data"].shape == (4,)
        assert isinstance(monitor.get("data", getlink=True), h5py.SoftLink)
        assert monitor["data"].attrs["target"].endswith("/primary/I0")
    assert nexusformat_errors(path) == 0


def test_timestamps_and_datum_ids_are_kept(tmp_path):
    docs = ad_hdf5_run(tmp_path / "data" / "det")
    path = write_run(tmp_path, docs)
    events = [d for n, d in docs if n == "event"]
    with h5py.File(path, "r") as f:
        stream = f["entry/instrument/bluesky/streams/primary"]
        np.testing.assert_array_equal(
            stream["timestamps/cam_total"][()], [e["timestamps"]["cam_total"] for e in events]
        )
        ids = decode_rows(f["entry/instrument/bluesky/external/primary/cam_image/event_data"][()])
        assert ids == [e["data"]["cam_image"] for e in events]
        assets = [
            json.loads(a) for a in decode_rows(f["entry/instrument/bluesky/metadata/assets"][()])
        ]
        assert [name for name, _ in assets] == ["resource", "datum", "datum", "datum"]


# -- export: the file gives the run's documents back --------------------------------


def comparable(docs):
    """Documents with what the file does not keep (event uids) left out, events by stream."""
    out = {"other": [], "events": {}}
    for name, doc in docs:
        if name == "event_page":
            for ev in event_model.unpack_event_page(doc):
                out["events"].setdefault(ev["descriptor"], []).append(strip(ev))
        elif name == "event":
            out["events"].setdefault(doc["descriptor"], []).append(strip(doc))
        elif name == "datum_page":
            out["other"].extend(("datum", d) for d in event_model.unpack_datum_page(doc))
        else:
            out["other"].append((name, json.loads(json.dumps(doc))))
    out["other"].sort(key=lambda item: (item[0], json.dumps(item[1], sort_keys=True)))
    return out


def strip(event):
    event = json.loads(json.dumps(event))
    event.pop("uid")
    if not event.get("filled"):
        event.pop("filled", None)
    return event


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: scalar_run(6),
        lambda tmp: scalar_run(6, pages=True),
        lambda tmp: ad_hdf5_run(tmp / "data" / "det"),
        lambda tmp: ad_hdf5_run(tmp / "data" / "det", datum_pages=True),
        lambda tmp: stream_resource_run(tmp / "data" / "det"),
    ],
    ids=["events", "pages", "ad_hdf5", "datum_pages", "stream_resource"],
)
def test_the_file_gives_back_the_runs_documents(tmp_path, make):
    from bluesky_recorders.nexus_export import read_nexus_run

    docs = make(tmp_path)
    path = write_run(tmp_path / "first", docs)
    run = read_nexus_run(path)
    assert run.complete
    assert comparable(run.documents) == comparable(docs)
    # and they record again into the same file content
    again = write_run(tmp_path / "second", run.documents)
    assert tree(again) == tree(path)


def test_a_killed_run_gives_back_what_was_flushed(tmp_path):
    from bluesky_recorders.nexus_export import read_nexus_run

    docs = scalar_run(5)
    recorder = NexusRecorder(data_root=tmp_path, flush_interval=0)
    feed(recorder, docs[:-2])  # stop and the last event never arrive
    recorder.close()  # closes the file as it is, as a killed process leaves it
    (path,) = recorder.artifacts[docs[0][1]["uid"]]
    run = read_nexus_run(path)
    assert not run.complete
    sent = [n for n, _ in docs[:-2]].count("event")
    assert [n for n, _ in run.documents].count("event") == sent
    with pytest.raises(Exception, match="not a NeXus file written by bluesky_recorders"):
        other = tmp_path / "other.h5"
        h5py.File(other, "w").close()
        read_nexus_run(other)


@pytest.mark.parametrize("stream", ["usaxs.json.gz", "apstools.json.gz"])
def test_real_runs_come_back_from_their_files(tmp_path, stream):
    from bluesky_recorders.nexus_export import read_nexus_run

    docs = list(realruns(stream))
    recorder = NexusRecorder(data_root=tmp_path, flush_interval=10)
    feed(recorder, docs)
    recorder.close()
    runs, run_of = {}, {}
    for name, doc in docs:
        if name == "start":
            uid = doc["uid"]
        elif name == "descriptor":
            uid = run_of[doc["uid"]] = doc["run_start"]
        elif name in ("event", "event_page"):
            uid = run_of[doc["descriptor"]]
        else:
            uid = doc.get("run_start")
        runs.setdefault(uid, []).append((name, doc))
    checked = 0
    for uid, paths in recorder.artifacts.items():
        back = read_nexus_run(paths[0]).documents
        original = comparable(runs[uid])
        got = comparable(back)
        assert got["events"] == original["events"], paths[0]
        checked += 1
    assert checked == {"usaxs.json.gz": 10, "apstools.json.gz": 53}[stream]


def test_a_reader_follows_a_real_run(tmp_path):
    """Another process reads the points of a RunEngine scan while it runs."""
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    recorder = NexusRecorder(data_root=tmp_path, flush_interval=0)
    RE = RunEngine({})
    RE.subscribe(recorder)
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc["uid"]), "start")
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    seen = []

    def per_step(detectors, step, pos_cache):
        yield from bps.one_nd_step(detectors, step, pos_cache)
        (path,) = recorder.artifacts[starts[-1]]
        out = subprocess.run(
            [sys.executable, "-c", READER, path, "nolock"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        seen.append(int(out.stdout))

    RE(scan([det], motor, -1, 1, 4, per_step=per_step))
    recorder.close()
    assert seen == [1, 2, 3, 4]


def test_a_new_descriptor_in_a_stream_gets_its_own_group(tmp_path):
    run = event_model.compose_run(metadata={"scan_id": 9, "plan_name": "count"})
    first = run.compose_descriptor(
        data_keys={"a": {"source": "s", "dtype": "number", "shape": []}}, name="primary"
    )
    # same keys, new configuration (e.g. an exposure time changed between readings)
    second = run.compose_descriptor(
        data_keys={"a": {"source": "s", "dtype": "number", "shape": []}},
        name="primary",
        configuration={
            "det": {
                "data": {"exposure": 2.0},
                "timestamps": {"exposure": 2.0},
                "data_keys": {"exposure": {"source": "e", "dtype": "number", "shape": []}},
            }
        },
    )
    docs = [
        ("start", run.start_doc),
        ("descriptor", first.descriptor_doc),
        ("event", first.compose_event(data={"a": 1.0}, timestamps={"a": 1.0}, seq_num=1)),
        ("descriptor", second.descriptor_doc),
        ("event", second.compose_event(data={"a": 2.0}, timestamps={"a": 2.0}, seq_num=1)),
        ("stop", run.compose_stop()),
    ]
    path = write_run(tmp_path, docs)
    with h5py.File(path, "r") as f:
        streams = f["entry/instrument/bluesky/streams"]
        assert sorted(streams) == ["primary", "primary_2"]
        assert streams["primary"]["a"][()].tolist() == [1.0]
        assert streams["primary_2"]["a"][()].tolist() == [2.0]
        assert streams["primary_2"].attrs["stream_name"] == "primary"
    from bluesky_recorders.nexus_export import read_nexus_run

    assert comparable(read_nexus_run(path).documents) == comparable(docs)


def test_every_file_written_above_passes_every_reader(tmp_path):
    """formats.md, NeXus: h5py, silx, nexusformat, punx, h5ls and nxtraverse, each
    opening the files from another working directory."""
    from bluesky.plans import grid_scan
    from ophyd.sim import det4, motor1, motor2

    from readers import nexus_problems_many

    if len(WRITTEN) < 10:  # run alone: write a few of the kinds above
        write_run(tmp_path / "a", scalar_run(3))
        write_run(tmp_path / "b", ad_hdf5_run(tmp_path / "b" / "data" / "det"))
        run_plan(tmp_path / "c", grid_scan([det4], motor1, -1, 1, 2, motor2, -1, 1, 3))
    found = nexus_problems_many([p for p in WRITTEN if os.path.exists(p)])
    problems = [f"{os.path.basename(p)}: {m}" for p, ms in found.items() for m in ms]
    assert problems == []


def test_non_hdf5_detector_data_is_kept_as_references(tmp_path):
    """ophyd.sim's ``img`` writes NPY_SEQ files: not linkable, so referenced per event."""
    from bluesky.plans import count
    from ophyd.sim import img

    saved, img.save_path = img.save_path, str(tmp_path / "data" / "npy")
    os.makedirs(img.save_path)
    try:
        path = run_plan(tmp_path, count([img], 3))
    finally:
        img.save_path = saved
    with h5py.File(path, "r") as f:
        refs = f["entry/instrument/bluesky/external/primary/img"]
        assert refs["seq_start"][()].tolist() == [1, 2, 3]
        assert refs["seq_stop"][()].tolist() == [2, 3, 4]
        paths = decode_rows(refs["path"][()])
        assert all(p.startswith(str(tmp_path / "data" / "npy")) for p in paths)
        assert "img" not in f["entry/instrument/bluesky/streams/primary"]  # nothing copied


HOLDER = textwrap.dedent(
    """
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "a")  # the detector's writer keeps its file open
    print("open", flush=True)
    time.sleep(60)
    """
)


def test_a_detector_file_held_by_its_writer_never_blocks_the_run(tmp_path):
    docs = ad_hdf5_run(tmp_path / "data" / "det")
    (det_file,) = (tmp_path / "data" / "det").iterdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(det_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        path = write_run(tmp_path, docs)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with h5py.File(path, "r") as f:
        ds = f["entry/instrument/bluesky/streams/primary/cam_image"]
        assert ds.shape == (3, 2, 8, 10) and ds.dtype == np.uint16  # read from the file
        assert ds[2, 1].tolist() == (np.arange(5 * 80, 6 * 80).reshape(8, 10)).tolist()


def test_a_key_that_is_no_nexus_name_comes_back_under_its_own_name(tmp_path):
    """ "cam image" is stored as cam_image (@data_key keeps the key); the export finds it."""
    from bluesky_recorders.nexus_export import read_nexus_run

    def renamed(mapping):
        return {("cam image" if k == "cam_image" else k): v for k, v in mapping.items()}

    docs = []
    for name, doc in ad_hdf5_run(tmp_path / "data" / "det"):
        doc = dict(doc)
        if name == "descriptor":
            doc["data_keys"] = renamed(doc["data_keys"])
            doc["object_keys"] = {"cam": ["cam image", "cam_total"]}
        elif name == "event":
            for part in ("data", "timestamps", "filled"):
                doc[part] = renamed(doc[part])
        docs.append((name, doc))
    path = write_run(tmp_path, docs)
    with h5py.File(path, "r") as f:
        assert f["entry/instrument/bluesky/streams/primary/cam_image"].attrs["data_key"] == (
            "cam image"
        )
    assert comparable(read_nexus_run(path).documents) == comparable(docs)


def test_a_point_followed_by_a_pause_reaches_the_file_within_the_flush_interval(tmp_path):
    """No event comes after it to trigger the flush: the RecorderSet's idle tick does."""
    from bluesky_recorders import RecorderSet
    from procs import wait_for

    docs = scalar_run(3, baseline=False)
    recorder = NexusRecorder(data_root=tmp_path, flush_interval=0.2)
    rs = RecorderSet([recorder], validate=False)
    events = [d for n, d in docs if n == "event"]
    for name, doc in docs:
        if name == "event" and doc is not events[0]:
            continue
        if name == "stop":
            break
        rs(name, doc)
    wait_for(lambda: recorder.artifacts, timeout=30, what="the NeXus file")
    (path,) = recorder.artifacts[docs[0][1]["uid"]]

    def rows() -> int:
        # in a child process: HDF5 would hand this process the writer's own open file
        code = (
            "import h5py, sys; f = h5py.File(sys.argv[1], 'r', locking=False); "
            "print(len(f['entry/data/det']))"
        )
        return int(
            subprocess.run(
                [sys.executable, "-c", code, path], capture_output=True, text=True, check=True
            ).stdout
        )

    wait_for(lambda: rows() == 1, timeout=30, what="the paused point to reach the file")
    for doc in events[1:]:
        rs("event", doc)
    rs(*docs[-1])
    rs.close()
    assert rows() == 3
