"""Tests of the console recorder: its pure format functions, then whole runs."""

from __future__ import annotations

import io
import re
import time

import pytest

from bluesky_recorders.console import (
    RUN_INFO,
    Column,
    ConsoleRecorder,
    count_time,
    end_line,
    format_duration,
    format_row,
    format_value,
    header_lines,
    is_table_stream,
    plan_length,
    render_line,
    run_info,
    start_lines,
    table_columns,
)
from bluesky_recorders.errors import RecorderError
from bluesky_recorders.recorder_set import RecorderSet
from bluesky_recorders.testing import ad_hdf5_run, feed, realruns, scalar_run

T0 = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC for the test, so printed clocks are exact."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fixed_times(docs, *, duration=5.8):
    """Copies of the documents with times T0, T0 + i + 0.25 (events) and T0 + duration."""
    out = []
    for name, doc in docs:
        doc = dict(doc)
        if name == "start":
            doc["time"] = T0
        elif name == "event":
            doc["time"] = T0 + doc["seq_num"] + 0.25
        elif name == "event_page":
            doc["time"] = [T0 + s + 0.25 for s in doc["seq_num"]]
        elif name == "stop":
            doc["time"] = T0 + duration
        out.append((name, doc))
    return out


def descriptor(keys, hints=None, name="primary"):
    return {"uid": "d1", "name": name, "data_keys": keys, "hints": hints or {}}


def num(**extra):
    return {"dtype": "number", "shape": [], "source": "x", **extra}


# -- pure functions -------------------------------------------------------------


def test_format_duration():
    assert format_duration(5.84) == "0:00:05.8"
    assert format_duration(3725.06) == "1:02:05.1"
    assert format_duration(59.96) == "0:01:00.0"
    assert format_duration(-1) == "0:00:00.0"
    assert format_duration(float("nan")) == "0:00:00.0"


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ({"num_points": 11}, 11),
        ({"num_points": None, "shape": [3, 4]}, 12),
        ({"shape": [3, None]}, None),
        ({"plan_args": {"num": 7}}, 7),
        ({"plan_args": {"num": None}}, None),
        ({"num_points": True}, None),
        ({"num_points": 0}, None),
        ({}, None),
    ],
)
def test_plan_length(start, expected):
    assert plan_length(start) == expected


def test_count_time():
    assert count_time({"count_time": 0.5}) == 0.5
    assert count_time({"plan_args": {"exposure_time": 2}}) == 2.0
    assert count_time({"count_time": "fast"}) is None
    assert count_time({"plan_args": None}) is None


def test_run_info_reads_the_experiment_metadata():
    start = {
        "uid": "1a2b3c4d-0000",
        "experiment": {
            "proposal_id": 12345,
            "pi": {"name": "Jane Doe", "email": "jd@example.org"},
            "sample": {"name": "LaB6"},
        },
    }
    assert run_info(start) == [
        ("uid", "1a2b3c4d"),
        ("proposal", "12345"),
        ("PI", "Jane Doe"),
        ("sample", "LaB6"),
    ]
    assert run_info({"uid": "abcdef123456", "sample": "Si"}) == [
        ("uid", "abcdef12"),
        ("sample", "Si"),
    ]
    assert [label for label, _ in RUN_INFO] == ["proposal", "PI", "sample"]
    # what the metadata service puts in the start document when nothing is known
    empty = {"proposal_id": "", "pi": {"name": "", "last_name": "", "email": ""},
             "sample": {"name": "", "description": "", "chemical_formula": "", "extra": {}}}
    assert run_info({"uid": "abcdef123456", "experiment": empty}) == [("uid", "abcdef12")]


def test_start_lines(utc):
    start = {
        "uid": "1a2b3c4d-ffff",
        "time": T0,
        "scan_id": 12,
        "plan_name": "scan",
        "num_points": 11,
        "experiment": {"pi": {"name": "Jane Doe", "last_name": "Doe", "email": ""}},
    }
    assert start_lines(start) == [
        "Scan #12 (scan) started at 2026-11-18 11:06:40. It will take at least 11 points.",
        "Run uid 1a2b3c4d, PI Jane Doe",
    ]
    start.update(count_time=0.5)
    assert start_lines(start)[0].endswith("It will take at least 0:00:05.5 (11 points).")
    assert start_lines({"uid": "abcdefgh-1", "time": T0}) == [
        "Run abcdefgh started at 2026-11-18 11:06:40.",
        "Run uid abcdefgh",
    ]


def test_table_columns_motors_first_then_hinted_fields():
    start = {"hints": {"dimensions": [[["m1"], "primary"]]}, "motors": ["m1"]}
    desc = descriptor(
        {
            "det": num(precision=2),
            "m1": num(precision=3),
            "m1_setpoint": num(),
            "image": {"dtype": "array", "shape": [10, 10], "source": "x"},
            "cam": {"dtype": "array", "shape": [], "source": "x", "external": "FILESTORE:"},
        },
        hints={"det": {"fields": ["det", "image"]}, "m1": {"fields": ["m1"]}},
    )
    cols = table_columns(start, desc)
    assert [c.key for c in cols] == ["seq_num", "time", "m1", "det"]
    assert [c.role for c in cols] == ["seq_num", "time", "motor", "detector"]
    assert cols[2].precision == 3 and cols[3].precision == 2


def test_table_columns_without_hints_uses_every_scalar_key():
    start = {"motors": ["m1"], "hints": {}}
    keys = {
        "a": num(),
        "s": {"dtype": "string", "shape": [], "source": "x"},
        "m1": num(),
        "spectrum": {"dtype": "array", "shape": [100], "source": "x"},
    }
    cols = table_columns(start, descriptor(keys))
    assert [c.key for c in cols] == ["seq_num", "time", "m1", "a", "s"]
    assert [c.key for c in table_columns(start, descriptor(keys), max_columns=2)][2:] == ["m1", "a"]


def test_table_columns_ignores_time_dimension_and_other_streams():
    start = {"hints": {"dimensions": [[["time"], "primary"], [["x"], "other"]]}}
    desc = descriptor({"x": num(), "I0": num(precision=0)}, hints={"s": {"fields": ["I0"]}})
    cols = table_columns(start, desc)
    assert [c.key for c in cols] == ["seq_num", "time", "I0"]
    assert cols[2].precision == 0


def test_is_table_stream():
    assert is_table_stream(descriptor({"a": num()}, {"a": {"fields": ["a"]}}, name="fly"))
    assert not is_table_stream(descriptor({"a": num()}, {"a": {"fields": ["a"]}}, name="baseline"))
    assert not is_table_stream(descriptor({"a": num()}, {"a": {"fields": []}}, name="mca"))
    assert not is_table_stream(descriptor({"a": num()}, {}, name="I0_monitor"))


def test_format_value():
    c = Column("x", "x", "detector", 10)
    assert format_value(1.23456789, c) == "1.23457"
    assert format_value(12, c) == "12"
    assert format_value(None, c) == ""
    assert format_value(True, c) == "True"
    assert format_value([1, 2, 3], c) == "(array)"
    assert format_value("a\nvery long text that goes on and on", c) == "a very long text that..."
    p = Column("x", "x", "motor", 10, precision=3)
    assert format_value(0.5, p) == "0.500"
    assert format_value(2, p) == "2.000"
    assert format_value(2, Column("n", "n", "detector", 10, precision=3, dtype="integer")) == "2"
    np = pytest.importorskip("numpy")
    assert format_value(np.float32(0.25), p) == "0.250"
    assert format_value(np.int64(7), c) == "7"


def test_format_row_and_render_line(utc):
    cols = [
        Column("seq_num", "seq_num", "seq_num", 7),
        Column("time", "time", "time", 10),
        Column("m", "m", "motor", 10, precision=2),
        Column("d", "d", "detector", 10),
    ]
    cells = format_row(cols, {"seq_num": 3, "time": T0 + 0.37, "data": {"m": 1.0, "d": 4}})
    assert cells == ["3", "11:06:40.3", "1.00", "4"]
    assert render_line(cols, cells) == "      3  11:06:40.3        1.00           4"
    assert header_lines(cols) == [
        "seq_num        time           m           d",
        "-------  ----------  ----------  ----------",
    ]
    assert format_row(cols, {"seq_num": 4, "time": T0, "data": {}})[2:] == ["", ""]


def test_end_line(utc):
    start = {"uid": "u", "time": T0, "scan_id": 12}
    stop = {"time": T0 + 5.84, "exit_status": "success", "reason": ""}
    assert end_line(start, stop, 11) == (
        "Scan #12 ended at 11:06:45 after 0:00:05.8: success, 11 events"
    )
    failed = {"time": T0 + 1, "exit_status": "abort", "reason": "Interrupted\nby user"}
    assert end_line(start, failed, 1) == (
        "Scan #12 ended at 11:06:41 after 0:00:01.0: abort, 1 event (reason: Interrupted by user)"
    )
    next_day = {"time": T0 + 86_400, "exit_status": "success"}
    assert "ended at 2026-11-19 11:06:40 after 24:00:00.0" in end_line(start, next_day, 2)


# -- whole runs -----------------------------------------------------------------

EXPECTED_5 = """\
Scan #1 (scan) started at 2026-11-18 11:06:40. It will take at least 5 points.
Run uid {uid}
seq_num        time       motor         det
-------  ----------  ----------  ----------
      1  11:06:41.2      -1.000     367.879
      2  11:06:42.2      -0.500     778.801
      3  11:06:43.2       0.000        1000
      4  11:06:44.2       0.500     778.801
      5  11:06:45.2       1.000     367.879
Scan #1 ended at 11:06:45 after 0:00:05.8: success, 5 events
"""


@pytest.mark.parametrize("pages", [False, True])
def test_plain_output_is_exact(utc, pages):
    docs = fixed_times(scalar_run(5, pages=pages))
    out = io.StringIO()
    with ConsoleRecorder(file=out, force_terminal=False) as rec:
        feed(rec, docs)
    uid = docs[0][1]["uid"][:8]
    assert out.getvalue() == EXPECTED_5.format(uid=uid)
    assert "\x1b" not in out.getvalue()


def test_pipe_is_detected_as_plain(monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    out = io.StringIO()
    feed(ConsoleRecorder(file=out), scalar_run(3))
    assert "\x1b" not in out.getvalue()
    assert len(out.getvalue().splitlines()) == 2 + 2 + 3 + 1


def test_default_file_is_stdout_at_call_time(capsys):
    rec = ConsoleRecorder(force_terminal=False)
    feed(rec, scalar_run(2))
    assert "ended at" in capsys.readouterr().out


def test_file_path_is_appended_to(tmp_path):
    path = tmp_path / "console.log"
    rec = ConsoleRecorder(file=str(path), force_terminal=False)
    feed(rec, scalar_run(2, scan_id=1))
    feed(rec, scalar_run(2, scan_id=2))
    text = path.read_text()
    assert "Scan #1 ended" in text and "Scan #2 ended" in text


def test_terminal_output_has_rows_and_styles(utc):
    docs = fixed_times(scalar_run(5))
    out = io.StringIO()
    feed(ConsoleRecorder(file=out, force_terminal=True, width=100), docs)
    raw = out.getvalue()
    assert "\x1b[" in raw
    plain = ANSI.sub("", raw)
    for line in EXPECTED_5.format(uid=docs[0][1]["uid"][:8]).splitlines():
        if set(line) <= {"-", " "}:  # the rule: the header is underlined instead
            continue
        assert line in plain


def test_terminal_without_progress(utc):
    out = io.StringIO()
    feed(ConsoleRecorder(file=out, force_terminal=True, progress=False), scalar_run(3))
    assert "━" not in out.getvalue()
    assert "ended at" in out.getvalue()


@pytest.mark.parametrize("force", [False, True])
def test_overlapping_runs(force):
    a, b = scalar_run(3, scan_id=1), scalar_run(4, scan_id=2)
    out = io.StringIO()
    rec = ConsoleRecorder(file=out, force_terminal=force)
    feed(rec, a[:4] + b[:4] + a[4:] + b[4:])
    text = ANSI.sub("", out.getvalue())
    assert "Scan #1 ended" in text and "success, 3 events" in text
    assert "Scan #2 ended" in text and "success, 4 events" in text


def test_failed_run_shows_the_reason():
    docs = scalar_run(3, exit_status="fail")
    docs[-1][1]["reason"] = "motor hit the limit switch"
    for force in (False, True):
        out = io.StringIO()
        feed(ConsoleRecorder(file=out, force_terminal=force), docs)
        last = ANSI.sub("", out.getvalue()).splitlines()[-1]
        assert last.endswith(": fail, 3 events (reason: motor hit the limit switch)")
        if force:
            assert "\x1b[1;31m" in out.getvalue()  # bold red


def test_images_are_never_printed(tmp_path):
    docs = ad_hdf5_run(tmp_path, num=3)
    datum_ids = [d["datum_id"] for n, d in docs if n == "datum"]
    out = io.StringIO()
    feed(ConsoleRecorder(file=out, force_terminal=False), docs)
    text = out.getvalue()
    assert "cam_total" in text and "cam_image" not in text
    assert not any(d in text for d in datum_ids)
    assert text.splitlines()[-1].endswith("success, 3 events")


def test_baseline_is_not_in_the_table():
    out = io.StringIO()
    feed(ConsoleRecorder(file=out, force_terminal=False), scalar_run(2, baseline=True))
    assert "energy" not in out.getvalue()


@pytest.mark.parametrize("name", ["usaxs.json.gz", "apstools.json.gz"])
@pytest.mark.parametrize("force", [False, True])
def test_real_runs(name, force):
    docs = list(realruns(name))
    out = io.StringIO()
    with ConsoleRecorder(file=out, force_terminal=force, width=120) as rec:
        feed(rec, docs)
    text = ANSI.sub("", out.getvalue())
    starts = sum(1 for n, _ in docs if n == "start")
    stops = sum(1 for n, _ in docs if n == "stop")
    assert text.count(" started at ") == starts
    assert text.count(" ended at ") == stops
    if not force:
        assert "\x1b" not in out.getvalue()


def test_in_a_recorder_set_everything_is_printed_before_stop_returns():
    docs = scalar_run(20)
    out = io.StringIO()
    rec = ConsoleRecorder(file=out, force_terminal=False)
    with RecorderSet([rec]) as rs:
        assert rs._workers  # the recorder runs on its own thread
        feed(rs, docs)
        text = out.getvalue()
    assert text.splitlines()[-1].endswith("success, 20 events")
    assert len(text.splitlines()) == 2 + 2 + 20 + 1


def test_terminal_in_a_recorder_set():
    out = io.StringIO()
    with RecorderSet([ConsoleRecorder(file=out, force_terminal=True)]) as rs:
        feed(rs, scalar_run(5))
        assert "success, 5 events" in ANSI.sub("", out.getvalue())


def test_a_broken_console_never_stops_a_scan(caplog):
    out = io.StringIO()
    out.close()
    rec = ConsoleRecorder(file=out, force_terminal=False)
    assert rec.on_error == "warn" and rec.when_full == "drop"
    with pytest.raises(RecorderError, match="closed file"):
        rec.process("start", scalar_run(1)[0][1])
    rec("start", scalar_run(1)[0][1])  # subscribed alone: logged, not raised
    with RecorderSet([rec]) as rs:
        feed(rs, scalar_run(2))  # logged, not raised
    assert "policy 'warn'" in caplog.text


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_columns"):
        ConsoleRecorder(max_columns=-1)
    with pytest.raises(ValueError, match="width"):
        ConsoleRecorder(width=3)
    with pytest.raises(ValueError, match="force_terminal"):
        ConsoleRecorder(force_terminal="yes")


def test_options_from_toml():
    from bluesky_recorders.config import load_config, recorder_class

    config = load_config(
        text='[recorders.console]\nforce_terminal = false\nmax_columns = 4\nfile = "stderr"\n'
    )
    (spec,) = config.recorders
    rec = recorder_class(spec.kind)(**spec.options)
    assert isinstance(rec, ConsoleRecorder)
    assert (rec.force_terminal, rec.max_columns, rec.file) == (False, 4, "stderr")


def test_real_run_engine_scan():
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    out = io.StringIO()
    run_engine = RunEngine({})
    run_engine.subscribe(ConsoleRecorder(file=out, force_terminal=False))
    (uid,) = run_engine(scan([det], motor, -1, 1, 5))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Scan #1 (scan) started at ")
    assert lines[0].endswith("It will take at least 5 points.")
    assert lines[1] == f"Run uid {uid[:8]}"
    assert lines[2].split() == ["seq_num", "time", "motor", "det"]
    rows = [line.split() for line in lines[4:9]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [float(r[2]) for r in rows] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert all(float(r[3]) > 0 for r in rows)
    assert lines[9].startswith("Scan #1 ended at ")
    assert lines[9].endswith(": success, 5 events")
    assert len(lines) == 10
