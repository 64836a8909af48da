"""The shared-memory recorder: layout, writer, reader, recovery, permissions, CLI."""

from __future__ import annotations

import grp
import logging
import math
import os
import pwd
import stat
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, direct_img, motor

from bluesky_recorders import RecorderSet, load_recorder_set
from bluesky_recorders.cli import main
from bluesky_recorders.errors import RecorderError
from bluesky_recorders.shm import (
    Reader,
    SegmentError,
    SegmentInUseError,
    SegmentNotFoundError,
    SharedMemoryRecorder,
    default_segment,
    segment_path,
)
from bluesky_recorders.shm_cli import format_value
from bluesky_recorders.shm_layout import (
    FIXED_SIZE,
    FrameSpec,
    Header,
    LayoutError,
    choose,
    compute_layout,
    pack_header,
    page_rows,
    ring_slots,
    row_values,
    unpack_fixed,
    unpack_header,
)
from bluesky_recorders.testing import ad_hdf5_run, collect, feed, realruns, scalar_run


@pytest.fixture
def name():
    """A segment name of this test alone; its file is removed afterwards."""
    seg = f"bsrec-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield seg
    try:
        segment_path(seg).unlink()
    except FileNotFoundError:
        pass


@pytest.fixture
def RE():
    return RunEngine({})


def events_of(docs, stream="primary"):
    uids = {d["uid"] for n, d in docs if n == "descriptor" and d.get("name") == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in uids]


# -- the pure layout ------------------------------------------------------------------
def test_header_round_trip_and_alignment():
    frames = [("img", "<u2", (10, 12)), FrameSpec("spectrum", ">f4", (7,))]
    layout = compute_layout(["seq_num", "time", "det", "ü-motor"], frames, capacity=100)
    assert layout.ring_offset == layout.header_size and layout.header_size % 64 == 0
    assert [f.offset % 64 for f in layout.frames] == [0, 0]
    assert layout.frames[0].offset >= layout.ring_offset + 8 * 100 * 4
    assert layout.frames[1].offset >= layout.frames[0].offset + 2 * 120
    assert layout.size % 4096 == 0 and layout.size >= layout.frames[1].offset + 28
    header = Header(
        layout,
        seq=42,
        generation=7,
        segment_size=layout.size + 4096,
        writer_pid=1234,
        state=2,
        total=123,
        scan_id=17,
        start_time=1.5e9,
        run_uid="0f1e2d3c-aaaa-bbbb-cccc-0123456789ab",
        plan_name="rel_scan",
        exit_status="success",
        frame_points=((5, 1.5e9 + 5), (-1, 0.0)),
    )
    raw = pack_header(header)
    assert len(raw) == layout.header_size
    back = unpack_header(raw + bytes(header.segment_size - len(raw)))
    assert back == header
    assert back.layout.frames[1].dtype == ">f4" and back.state_name == "ended"
    fixed = unpack_fixed(raw)
    assert (fixed.seq, fixed.total, fixed.run_uid) == (42, 123, header.run_uid)


def test_header_cuts_long_text_at_a_character_boundary():
    layout = compute_layout(["seq_num", "time"], capacity=4)
    raw = pack_header(Header(layout, plan_name="é" * 40, exit_status="x" * 30))
    fixed = unpack_fixed(raw)
    assert fixed.plan_name == "é" * 31 and fixed.exit_status == "x" * 15


def test_bad_headers_are_refused_with_the_cause():
    layout = compute_layout(["seq_num", "time"], capacity=4)
    raw = bytearray(pack_header(Header(layout)) + bytes(layout.size))
    with pytest.raises(LayoutError, match="too short"):
        unpack_fixed(raw[:100])
    bad = bytearray(raw)
    bad[:8] = b"NOTOURS!"
    with pytest.raises(LayoutError, match="bad magic b'NOTOURS!'"):
        unpack_fixed(bad)
    bad = bytearray(raw)
    bad[8:12] = (99).to_bytes(4, "little")
    with pytest.raises(LayoutError, match="unknown layout version 99"):
        unpack_header(bad)
    bad = bytearray(raw)
    bad[64:68] = (10_000).to_bytes(4, "little")  # n_columns beyond the header
    with pytest.raises(LayoutError, match="damaged header"):
        unpack_header(bad)
    with pytest.raises(LayoutError, match="capacity"):
        compute_layout(["seq_num"], capacity=0)
    with pytest.raises(LayoutError, match="not a number type"):
        compute_layout(["seq_num"], [("img", "<U4", (3,))])
    with pytest.raises(LayoutError, match="not 1-D or 2-D"):
        compute_layout(["seq_num"], [("img", "<f8", (2, 3, 4))])
    with pytest.raises(LayoutError, match="longer than 127 bytes"):
        compute_layout(["x" * 128])


def test_ring_slots_are_the_latest_points_oldest_first():
    assert ring_slots(0, 4).tolist() == []
    assert ring_slots(3, 4).tolist() == [0, 1, 2]
    assert ring_slots(10, 4).tolist() == [2, 3, 0, 1]  # points 6, 7, 8, 9
    assert ring_slots(10, 4, last=2).tolist() == [0, 1]
    assert ring_slots(10, 4, last=0).tolist() == []


def test_choose_keeps_numeric_scalars_and_names_what_it_leaves_out():
    keys = {
        "det": {"dtype": "number", "shape": []},
        "count": {"dtype": "integer", "shape": []},
        "flag": {"dtype": "boolean", "shape": []},
        "label": {"dtype": "string", "shape": []},
        "spectrum": {"dtype": "array", "shape": [16]},
        "cam": {"dtype": "array", "shape": [4, 5], "external": "FILESTORE:"},
        "img": {"dtype": "array", "shape": [4, 5], "dtype_numpy": "<u2"},
        "cube": {"dtype": "array", "shape": [2, 2, 2]},
        "time": {"dtype": "number", "shape": []},
        "y" * 130: {"dtype": "number", "shape": []},
    }
    c = choose(keys, frames=["img", "spectrum", "cam", "cube", "missing"], max_columns=256)
    assert c.columns == ("seq_num", "time", "det", "count", "flag")
    assert [(f.name, f.dtype, f.shape) for f in c.frames] == [
        ("img", "<u2", (4, 5)),
        ("spectrum", "<f8", (16,)),
    ]
    notes = "\n".join(c.notes)
    for expected in ("'time' left out", "longer than 127", "'cam' left out: external",
                     "'cube' left out", "'missing' is not in this stream"):  # fmt: skip
        assert expected in notes
    assert choose(keys, max_columns=3).columns == ("seq_num", "time", "det")


def test_rows_turn_anything_not_a_number_into_nan():
    data = {"a": 1, "b": "text", "c": None, "d": np.float32(2.5), "e": [1, 2], "f": True}
    row = row_values(3, 10.0, data, ["a", "b", "c", "d", "e", "f", "missing"])
    assert row[:2] == [3.0, 10.0] and row[2] == 1.0 and row[5] == 2.5 and row[7] == 1.0
    assert all(math.isnan(row[i]) for i in (3, 4, 6, 8))
    page = {"seq_num": [1, 2], "time": [5.0, 6.0], "data": {"a": [1.0, "x"]}}
    rows = page_rows(page, ["a", "b"])
    assert rows.shape == (2, 4) and rows[0, :3].tolist() == [1.0, 5.0, 1.0]
    assert math.isnan(rows[1, 2]) and np.isnan(rows[:, 3]).all()


# -- a real run -----------------------------------------------------------------------
def test_a_scan_through_a_recorder_set_is_seen_by_a_reader(RE, name):
    rec = SharedMemoryRecorder(segment=name)
    rs = RecorderSet([rec])
    docs, cb = collect()
    RE.subscribe(rs)
    RE.subscribe(cb)
    with Reader(name) as reader:
        assert reader.snapshot().state == "idle"
        (uid,) = RE(scan([det], motor, -1, 1, 7))
        snap = reader.snapshot()
        events = events_of(docs)
        assert (snap.state, snap.exit_status, snap.run_uid) == ("ended", "success", uid)
        assert snap.scan_id == docs[0][1]["scan_id"] and snap.plan_name == "scan"
        assert snap.writer_pid == os.getpid() and snap.total == 7 and snap.first == 0
        assert snap.columns == ("seq_num", "time", "det", "motor", "motor_setpoint")
        assert snap.data["seq_num"].tolist() == [e["seq_num"] for e in events]
        assert snap.data["time"].tolist() == [e["time"] for e in events]
        for key in ("det", "motor", "motor_setpoint"):
            assert snap.data[key].tolist() == [e["data"][key] for e in events]
        assert snap.seq % 2 == 0 and snap.seq > 0
        rs.close()
        assert reader.snapshot().state == "closed"
    assert not segment_path(name).exists()


def test_the_ring_keeps_the_latest_points_for_events_and_pages(name):
    with SharedMemoryRecorder(segment=name, capacity=8) as rec, Reader(name) as reader:
        docs = scalar_run(21)
        feed(rec, docs)
        snap = reader.snapshot()
        assert snap.total == 21 and snap.first == 13
        assert snap.data["seq_num"].tolist() == list(range(14, 22))
        assert snap.data["det"].tolist() == [e["data"]["det"] for e in events_of(docs)][-8:]
        assert reader.snapshot(last=3).data["seq_num"].tolist() == [19, 20, 21]
        docs = scalar_run(21, pages=True)  # one page of 21 rows into 8 slots
        feed(rec, docs)
        snap = reader.snapshot()
        assert snap.total == 21 and snap.data["seq_num"].tolist() == list(range(14, 22))
        page = next(d for n, d in docs if n == "event_page")
        assert snap.data["motor"].tolist() == page["data"]["motor"][-8:]


def test_frames_of_1d_and_2d_keys(RE, name, tmp_path, caplog):
    rec = SharedMemoryRecorder(segment=name, frames=["img", "cam_image"])
    docs, cb = collect()
    RE.subscribe(RecorderSet([rec]))
    RE.subscribe(cb)
    images = iter([np.arange(100.0).reshape(10, 10) * k for k in range(1, 4)])
    direct_img.img.sim_set_func(lambda: next(images))
    try:
        RE(count([det, direct_img], num=3))
    finally:
        direct_img.img.sim_set_func(lambda: np.ones((10, 10)))
    with Reader(name) as reader:
        snap = reader.snapshot()
        frame = snap.frames["img"]
        assert frame.seq_num == 3 and frame.data.dtype == np.float64
        np.testing.assert_array_equal(frame.data, np.arange(100.0).reshape(10, 10) * 3)
        assert frame.time == events_of(docs)[-1]["time"]
        assert "img" not in snap.columns and "det" in snap.columns
        # a 1-D key arriving in an event page, and an external key left out with a note
        caplog.set_level(logging.INFO, "bluesky_recorders.shm")
        docs = ad_hdf5_run(tmp_path, num=2)
        feed(rec, docs)
        assert "'cam_image' left out: external data" in caplog.text
        spectra = scalar_run(3, pages=True, detectors=("det",))
        desc = next(d for n, d in spectra if n == "descriptor" and d["name"] == "primary")
        desc["data_keys"]["spectrum"] = {"source": "x", "dtype": "array", "shape": [5]}
        page = next(d for n, d in spectra if n == "event_page")
        page["data"]["spectrum"] = [[i] * 5 for i in range(3)]
        page["timestamps"]["spectrum"] = page["time"]
        rec.frames = ("spectrum",)
        feed(rec, spectra)
        snap = reader.snapshot()
        assert snap.frames["spectrum"].data.tolist() == [2.0] * 5
        assert snap.frames["spectrum"].seq_num == 3
    rec.close()


def test_a_frame_of_the_wrong_shape_is_skipped_with_one_warning(name, caplog):
    docs = scalar_run(3)
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    desc["data_keys"]["img"] = {"source": "x", "dtype": "array", "shape": [2, 2]}
    for ev in events_of(docs):
        ev["data"]["img"] = [[1, 2, 3]]
        ev["timestamps"]["img"] = ev["time"]
    with SharedMemoryRecorder(segment=name, frames=["img"]) as rec, Reader(name) as reader:
        feed(rec, docs)
        snap = reader.snapshot()
        assert snap.total == 3 and snap.frames["img"].seq_num == -1
    warnings = [r for r in caplog.records if "frame 'img'" in r.message]
    assert len(warnings) == 1
    assert "shape [1, 3] differs from [2, 2]" in warnings[0].message and name in warnings[0].message


def test_a_new_run_lays_the_segment_out_again_and_grows_it(name):
    many = tuple(f"d{i:03d}" for i in range(120))  # 122 columns x 4096 points: 3.8 MiB
    with SharedMemoryRecorder(segment=name) as rec, Reader(name) as reader:
        feed(rec, scalar_run(4))
        first = reader.snapshot()
        size = segment_path(name).stat().st_size
        docs = scalar_run(5, detectors=many, motor="m2")
        feed(rec, docs)
        snap = reader.snapshot()
        assert segment_path(name).stat().st_size > size
        assert snap.generation > first.generation and snap.run_uid != first.run_uid
        assert snap.columns == ("seq_num", "time", "m2", *many)
        assert snap.total == 5
        assert snap.data["d119"].tolist() == [e["data"]["d119"] for e in events_of(docs)]
        feed(rec, scalar_run(2))  # fewer columns again: the file keeps its size
        assert reader.snapshot().columns == first.columns
        assert segment_path(name).stat().st_size == os.fstat(rec._segment.fd).st_size


def test_only_the_primary_stream_of_the_latest_run_is_shown(name):
    a, b = scalar_run(3, scan_id=1), scalar_run(4, scan_id=2)
    with SharedMemoryRecorder(segment=name) as rec, Reader(name) as reader:
        feed(rec, a[:-1])  # run 1 open (its baseline and primary events in)
        feed(rec, b[:3])  # run 2 starts: it owns the segment
        feed(rec, a[-1:])  # run 1's stop does not end run 2
        feed(rec, b[3:])
        snap = reader.snapshot()
        assert snap.run_uid == b[0][1]["uid"] and snap.scan_id == 2
        assert snap.total == 4 and "energy" not in snap.columns


# -- consistency --------------------------------------------------------------------
def test_every_snapshot_is_consistent_while_a_writer_thread_hammers(name):
    docs = scalar_run(1, detectors=("a", "b", "c"))
    start = docs[0][1]
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    desc["data_keys"]["img"] = {"source": "x", "dtype": "array", "shape": [8, 8]}
    rec = SharedMemoryRecorder(segment=name, capacity=64, frames=["img"])
    rec("start", start)
    rec("descriptor", desc)
    stop = threading.Event()
    written = []

    def hammer():
        i = 0
        while not stop.is_set():
            i += 1
            v = float(i)
            rec("event", {"descriptor": desc["uid"], "uid": f"e{i}", "seq_num": i, "time": v,
                          "data": {"a": v, "b": v, "c": v, "motor": v, "img": np.full((8, 8), v)},
                          "timestamps": {}})  # fmt: skip
        written.append(i)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=hammer)
    thread.start()
    problems, checked = [], 0
    try:
        with Reader(name) as reader:
            while checked < 3000 and thread.is_alive():
                snap = reader.snapshot()
                rows = snap.points
                if snap.total == 0:
                    continue
                checked += 1
                expect = np.arange(snap.first + 1, snap.total + 1, dtype=float)
                if not (rows == expect[:, None]).all():
                    problems.append((snap.seq, snap.total, rows[:2].tolist()))
                frame = snap.frames["img"]
                if frame.seq_num != snap.total or not (frame.data == snap.total).all():
                    problems.append((snap.seq, "frame", frame.seq_num, snap.total))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
        rec.close()
    assert checked == 3000 and problems == []
    assert written[0] > 0


# -- the segment's life ---------------------------------------------------------------
CRASHED_WRITER = textwrap.dedent(
    """
    import os, sys
    from bluesky_recorders.shm import SharedMemoryRecorder
    from bluesky_recorders.testing import feed, scalar_run
    rec = SharedMemoryRecorder(segment=sys.argv[1])
    feed(rec, scalar_run(3)[:-1])
    print(os.getpid(), flush=True)
    os._exit(0)  # no close, no finalizers: as after a crash
    """
)

LIVE_WRITER = textwrap.dedent(
    """
    import os, sys
    from bluesky_recorders.shm import SharedMemoryRecorder
    rec = SharedMemoryRecorder(segment=sys.argv[1])
    print(os.getpid(), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    rec.close()
    """
)


def test_a_stale_segment_of_a_dead_writer_is_replaced(name, caplog):
    out = subprocess.run(
        [sys.executable, "-c", CRASHED_WRITER, name], capture_output=True, text=True, check=True
    )
    dead = int(out.stdout.strip())
    with Reader(name) as old:
        snap = old.snapshot()
        assert (snap.writer_pid, snap.state, snap.total) == (dead, "running", 3)
    with SharedMemoryRecorder(segment=name) as rec, Reader(name) as reader:
        assert f"its writer (pid {dead}) is gone" in caplog.text and name in caplog.text
        assert reader.snapshot().writer_pid == os.getpid()
        feed(rec, scalar_run(2))
        assert reader.snapshot().total == 2


def test_a_damaged_segment_is_replaced(name, caplog):
    segment_path(name).write_bytes(b"garbage" * 100)
    with SharedMemoryRecorder(segment=name), Reader(name) as reader:
        assert "it was damaged (bad magic" in caplog.text
        assert reader.snapshot().state == "idle"


def test_a_segment_held_by_a_live_process_is_refused(name, caplog):
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(proc.stdout.readline())
        rec = SharedMemoryRecorder(segment=name)  # a live view: it only warns here
        assert f"is in use by process {pid}" in caplog.text
        docs = scalar_run(2)
        with pytest.raises(RecorderError) as info:
            rec.process(*docs[0])
        msg = str(info.value)
        assert f"'{name}'" in msg and f"in use by process {pid}" in msg and "'shm'" in msg
        assert str(segment_path(name)) in msg and docs[0][1]["uid"] in msg
        assert isinstance(info.value.cause, SegmentInUseError) and info.value.cause.pid == pid
        with Reader(name) as reader:  # the owner's segment is untouched
            assert reader.snapshot().writer_pid == pid
        rec.close()
    finally:
        proc.communicate("", timeout=30)
    assert proc.returncode == 0 and not segment_path(name).exists()
    with SharedMemoryRecorder(segment=name) as rec:  # free again: taken at once
        feed(rec, scalar_run(2))


def test_a_reader_follows_a_new_writer_of_the_same_name(name):
    first = SharedMemoryRecorder(segment=name)
    with Reader(name, check_every=0.01) as reader:
        first.close()
        assert reader.snapshot().state == "closed"
        with SharedMemoryRecorder(segment=name) as second:
            docs = scalar_run(3)
            feed(second, docs)
            assert reader.wait(timeout=30)
            snap = reader.snapshot()
            assert snap.state == "ended" and snap.run_uid == docs[0][1]["uid"]
            assert not reader.wait(timeout=0.05)  # nothing new since


def test_mode_is_owner_only_unless_a_group_is_given(name):
    with SharedMemoryRecorder(segment=name):
        st = segment_path(name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
    gid = pwd.getpwuid(os.getuid()).pw_gid  # this user's primary group
    for group in (gid, grp.getgrgid(gid).gr_name):
        with SharedMemoryRecorder(segment=name, group=group):
            st = segment_path(name).stat()
            assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid
    with pytest.raises(ValueError, match="unknown group"):
        SharedMemoryRecorder(segment=name, group="no-such-group-here")


def test_reader_errors_name_the_segment_and_the_cause(name):
    path = segment_path(name)
    with pytest.raises(SegmentNotFoundError, match=f"'{name}' \\({path}\\) does not exist"):
        Reader(name)
    layout = compute_layout(["seq_num", "time"], capacity=4)
    raw = bytearray(pack_header(Header(layout)).ljust(layout.size, b"\0"))
    raw[:8] = b"OTHERAPP"
    path.write_bytes(raw)
    with pytest.raises(LayoutError, match=f"'{name}'.*bad magic b'OTHERAPP'"):
        Reader(name)
    raw[:8] = b"BSRECSHM"
    raw[8:12] = (2).to_bytes(4, "little")
    path.write_bytes(raw)
    with pytest.raises(LayoutError, match=f"'{name}'.*unknown layout version 2"):
        Reader(name)
    path.write_bytes(b"x" * 10)
    with pytest.raises(SegmentError, match="shorter than a header"):
        Reader(name)
    for bad in ("../etc/passwd", "", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="segment name"):
            Reader(bad)
    assert FIXED_SIZE == 256


def test_options_are_checked_and_named(name):
    for options, match in (
        ({"capacity": 0}, "capacity"),
        ({"max_columns": 1}, "max_columns"),
        ({"frames": "img"}, "frames must be a list"),
        ({"segment": "a/b"}, "segment name"),
    ):
        with pytest.raises(ValueError, match=match):
            SharedMemoryRecorder(**{"segment": name, **options})
    rec = SharedMemoryRecorder(segment=name)
    assert (rec.saves_data, rec.on_error, rec.when_full, rec.threaded) == (
        False, "warn", "drop", False
    )  # fmt: skip
    rec.close()
    rec.close()  # idempotent


def test_default_segment_names():
    user = default_segment().removeprefix("bsrec-")
    assert user and "/" not in user
    assert default_segment("live") == f"bsrec-{user}-live"
    assert SharedMemoryRecorder.kind == "shm"


def test_built_from_a_recorder_set_file(name, tmp_path):
    text = f"""
        [settings]
        data_root = "{tmp_path}"
        [recorders.shm]
        segment = "{name}"
        capacity = 16
        frames = ["img"]
        max_columns = 8
    """
    rs = load_recorder_set(text=textwrap.dedent(text))
    rec = rs["shm"]
    assert (rec.segment, rec.capacity, rec.frames, rec.max_columns) == (name, 16, ("img",), 8)
    assert segment_path(name).exists()
    rs.close()
    assert not segment_path(name).exists()


# -- the command ----------------------------------------------------------------------
def test_bsrec_shm_show_prints_the_header_and_the_last_points(name, capsys):
    docs = scalar_run(12)
    with SharedMemoryRecorder(segment=name, capacity=10) as rec:
        feed(rec, docs)
        assert main(["shm", "show", "--name", name, "-n", "3"]) == 0
        out = capsys.readouterr().out
        events = events_of(docs)
        assert f"segment     {name}" in out and "ended (success)" in out
        assert docs[0][1]["uid"] in out and f"writer pid  {os.getpid()}" in out
        assert "12 written, the last 10 kept (capacity 10)" in out
        assert "seq_num, time, motor, det" in out
        rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
        assert [[cell.strip() for cell in row] for row in rows] == [
            [str(ev["seq_num"]), format_value("time", ev["time"]),
             f"{ev['data']['motor']:.8g}", f"{ev['data']['det']:.8g}"]
            for ev in events[-3:]
        ]  # fmt: skip
        assert main(["shm", "show", "--name", name, "--columns", "nope"]) == 1
        assert "no column nope; columns: seq_num, time, motor, det" in capsys.readouterr().err
    assert main(["shm", "show", "--name", name]) == 1
    assert "does not exist" in capsys.readouterr().err


# -- the recorded APS streams ---------------------------------------------------------
def test_every_real_aps_run_is_accepted(name):
    docs = list(realruns("usaxs.json.gz")) + list(realruns("apstools.json.gz"))
    runs = 0
    with SharedMemoryRecorder(segment=name, capacity=256) as rec, Reader(name) as reader:
        primary, rows = set(), []
        for doc_name, doc in docs:
            rec.process(doc_name, doc)  # raises on any failure
            if doc_name == "start":
                primary, rows = set(), []
            elif doc_name == "descriptor" and doc.get("name") == "primary" and not primary:
                primary.add(doc["uid"])
            elif doc_name == "event" and doc["descriptor"] in primary:
                rows.append(doc)
            elif doc_name == "stop":
                runs += 1
                snap = reader.snapshot()
                assert snap.run_uid == doc["run_start"] and snap.state == "ended"
                assert snap.total == len(rows)
                assert snap.data["seq_num"].tolist() == [e["seq_num"] for e in rows][-256:]
                for col in snap.columns[2:]:
                    want = [e["data"].get(col) for e in rows][-256:]
                    got = snap.data[col].tolist()
                    assert [g if not math.isnan(g) else None for g in got] == [
                        float(w) if isinstance(w, int | float) else None for w in want
                    ], col
    assert runs == 62
