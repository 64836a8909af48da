"""The feed's messages: pure functions from documents, every one valid by the schema."""

import asyncio
import math

import jsonschema
import pytest
from bluesky import RunEngine
from bluesky.plans import count, grid_scan, scan
from ophyd.sim import det, det4, motor, motor1, motor2

from bluesky_recorders.feed import (
    SEND_DELAY,
    SEND_ROWS,
    FeedRecorder,
    parse_address,
    read_token,
)
from bluesky_recorders.feed_messages import (
    MESSAGE_SCHEMA,
    column_kind,
    columns_message,
    detector_keys,
    dropped_message,
    extend_points,
    grid_hints,
    json_value,
    merge_points,
    motor_keys,
    points_message,
    run_end_message,
    run_start_message,
)
from bluesky_recorders.feed_server import FeedServerError
from bluesky_recorders.testing import collect, realruns, scalar_run

VALIDATOR = jsonschema.Draft202012Validator(MESSAGE_SCHEMA)


def valid(msg):
    errors = sorted(VALIDATOR.iter_errors(msg), key=str)
    assert not errors, [e.message for e in errors]
    return msg


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(MESSAGE_SCHEMA)


def test_json_value_keeps_numbers_and_turns_nan_and_infinities_into_null():
    import numpy as np

    assert json_value(1.5) == 1.5
    assert json_value(np.float32(2.0)) == 2.0
    assert json_value(np.int64(7)) == 7 and isinstance(json_value(np.int64(7)), int)
    # numpy.float64 is a float subclass: it is made a plain float (pickled for the server
    # process as a float, not through numpy's reduce)
    assert type(json_value(np.float64(0.25))) is float
    assert json_value(math.nan) is None
    assert json_value(-math.inf) is None
    assert json_value(np.float64("inf")) is None
    assert json_value("x" * 5000) == "x" * 1024
    assert json_value([1, 2]) is None  # arrays are not scalars


def test_column_kinds():
    assert column_kind({"dtype": "number", "shape": []}) == "number"
    assert column_kind({"dtype": "integer", "shape": []}) == "integer"
    assert column_kind({"dtype": "string", "shape": []}) == "string"
    assert column_kind({"dtype": "array", "shape": [10]}) == "array"
    assert column_kind({"dtype": "number", "shape": [5, 5]}) == "array"
    assert column_kind({"dtype": "array", "shape": [5, 5], "external": "FILESTORE:"}) == "array"


def run_of(plan):
    docs, cb = collect()
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(plan)
    return docs


def test_a_step_scan_gives_its_motor_and_hinted_detector():
    docs = run_of(scan([det], motor, -1, 1, 5))
    start = docs[0][1]
    desc = next(d for n, d in docs if n == "descriptor")
    msg = valid(run_start_message(start, desc))
    assert msg["hints"] == {"motors": ["motor"], "detectors": ["det"], "grid": None}
    assert msg["scan_id"] == start["scan_id"] and msg["plan_name"] == "scan"
    cols = valid(columns_message(start["uid"], desc))
    assert [c["name"] for c in cols["columns"]] == list(desc["data_keys"])
    events = [d for n, d in docs if n == "event"]
    stop = docs[-1][1]
    page = {
        "seq_num": [e["seq_num"] for e in events],
        "time": [e["time"] for e in events],
        "data": {k: [e["data"][k] for e in events] for k in events[0]["data"]},
    }
    pts = valid(points_message(start["uid"], "primary", page, ["motor", "det"]))
    assert pts["data"]["motor"] == pytest.approx([-1, -0.5, 0, 0.5, 1])
    assert pts["data"]["det"] == [e["data"]["det"] for e in events]
    end = valid(run_end_message(stop))
    assert end["exit_status"] == "success" and end["num_points"] == {"primary": 5}


def test_a_count_has_no_motor():
    docs = run_of(count([det4], 3))
    desc = next(d for n, d in docs if n == "descriptor")
    msg = valid(run_start_message(docs[0][1], desc))
    assert msg["hints"]["motors"] == []
    assert msg["hints"]["detectors"] == ["det4"]


def test_a_grid_scan_gives_shape_extents_snaking_and_both_motors():
    docs = run_of(grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=True))
    start = docs[0][1]
    desc = next(d for n, d in docs if n == "descriptor")
    msg = valid(run_start_message(start, desc))
    grid = msg["hints"]["grid"]
    assert grid["shape"] == [3, 4]
    assert grid["motors"] == ["motor1", "motor2"]
    assert grid["snaking"] == [False, True]
    assert grid["extents"] == [[-1, 1], [-2, 2]]


def test_hints_without_hints():
    assert motor_keys({"motors": ["m"]}, ["m", "d"]) == ["m"]
    assert motor_keys({"hints": {"dimensions": [[["time"], "primary"]]}}, ["d"]) == []
    kinds = {"m": "number", "d": "number", "s": "string"}
    assert detector_keys({"hints": {}}, ["m"], kinds) == ["d"]
    assert grid_hints({"shape": [3]}, ["a", "b"]) is None
    assert grid_hints({"shape": [3, 4]}, ["a"]) is None


def test_merge_points_fills_missing_columns_with_null():
    a = points_message("r", "primary", {"seq_num": [1], "time": [1.0], "data": {"x": [1]}}, ["x"])
    b = points_message(
        "r", "primary", {"seq_num": [2, 3], "time": [2.0, 3.0], "data": {"y": [5, 6]}}, ["y"]
    )
    m = valid(merge_points(a, b))
    assert m["seq_num"] == [1, 2, 3]
    assert m["data"] == {"x": [1, None, None], "y": [None, 5, 6]}
    assert a["seq_num"] == [1] and a["data"] == {"x": [1]}  # the merged ones are untouched
    three = merge_points(a, b, a)
    assert three["seq_num"] == [1, 2, 3, 1]
    assert three["data"] == {"x": [1, None, None, 1], "y": [None, 5, 6, None]}


def test_extend_points_keeps_one_value_a_row_when_a_column_comes_short():
    held = merge_points(
        {"v": 1, "type": "points", "run": "r", "stream": "primary", "seq_num": [1],
         "time": [1.0], "data": {"x": [1], "y": [2]}}
    )  # fmt: skip
    same = {"seq_num": [2], "time": [2.0], "data": {"x": [3], "y": [4]}}
    extend_points(held, same)
    assert held["data"] == {"x": [1, 3], "y": [2, 4]}
    short = {"seq_num": [3, 4], "time": [3.0, 4.0], "data": {"x": [5, 6], "y": [7]}}
    extend_points(held, short)  # the same columns, but y has one value for two rows
    assert held["seq_num"] == [1, 2, 3, 4]
    assert held["data"] == {"x": [1, 3, 5, 6], "y": [2, 4, 7, None]}


def test_dropped_message():
    assert valid(dropped_message("r", 12))["points"] == 12


def watched(recorder: FeedRecorder) -> list[dict]:
    """The messages ``recorder`` publishes from now on (each checked by the schema)."""
    seen: list[dict] = []
    publish = recorder.hub.publish

    def keep(msg, start_doc=None):
        seen.append(valid(msg))
        publish(msg, start_doc)

    recorder.hub.publish = keep
    return seen


def test_the_recorder_turns_runs_into_valid_messages_for_the_real_aps_runs():
    recorder = FeedRecorder()
    seen = watched(recorder)
    for name in ("usaxs.json.gz", "apstools.json.gz"):
        for doc_name, doc in realruns(name):
            recorder(doc_name, doc)
    recorder.close()
    starts = [m for m in seen if m["type"] == "run_start"]
    ends = [m for m in seen if m["type"] == "run_end"]
    assert len(starts) == 63
    assert len(ends) == 62  # one recorded run has no stop document
    assert sum(len(m["seq_num"]) for m in seen if m["type"] == "points") > 0


def test_recorder_state_for_a_run_and_the_runs_list():
    recorder = FeedRecorder(history=2)
    for scan_id in (1, 2, 3):
        for name, doc in scalar_run(4, scan_id=scan_id):
            recorder(name, doc)
    runs = valid(recorder.hub.runs_message())["runs"]
    assert [r["scan_id"] for r in runs] == [3, 2]
    assert runs[0]["num_points"] == 4 and runs[0]["exit_status"] == "success"
    current = recorder.hub.current_messages()
    assert [m["type"] for m in current] == ["run_start", "columns", "points", "run_end"]
    assert current[2]["seq_num"] == [1, 2, 3, 4]


def test_on_an_event_loop_rows_wait_and_go_on_together_in_order():
    """On the loop's thread rows wait up to SEND_DELAY (or SEND_ROWS rows); a new
    descriptor, the stop, or closing the recorder (a run with no stop) sends them first."""
    recorder = FeedRecorder(streams=("primary", "baseline"))
    seen = watched(recorder)
    n = SEND_ROWS + 5
    run = scalar_run(n)  # start, baseline (descriptor, event), primary (descriptor,
    # n events), the baseline's second event, stop
    first_primary = 4

    def points():
        return [(m["stream"], m["seq_num"]) for m in seen if m["type"] == "points"]

    async def feed_run():
        for name, doc in run[: first_primary + 3]:
            recorder(name, doc)
        # the baseline's row went on when the primary descriptor came; 3 rows wait
        assert points() == [("baseline", [1])]
        await asyncio.sleep(SEND_DELAY * 5)  # nothing else comes: the timer sends them
        assert points() == [("baseline", [1]), ("primary", [1, 2, 3])]
        for name, doc in run[first_primary + 3 : -1]:  # all but the stop
            recorder(name, doc)

    asyncio.run(feed_run())
    assert all(len(rows) <= SEND_ROWS for _, rows in points())
    assert "run_end" not in [m["type"] for m in seen]
    recorder.close()  # the run never stopped: what waited goes all the same
    primary = [s for stream, rows in points() if stream == "primary" for s in rows]
    baseline = [s for stream, rows in points() if stream == "baseline" for s in rows]
    assert primary == list(range(1, n + 1)) and baseline == [1, 2]
    # with no loop on the caller's thread, or send_delay=0 (bsrec feed --zmq), every
    # row goes on at once
    async def on_a_loop(recorder):
        for name, doc in scalar_run(3, baseline=False):
            recorder(name, doc)

    for recorder, call in ((FeedRecorder(), None), (FeedRecorder(send_delay=0), asyncio.run)):
        got = watched(recorder)
        if call is None:
            for name, doc in scalar_run(3, baseline=False):
                recorder(name, doc)
        else:
            call(on_a_loop(recorder))
        assert [m["type"] for m in got] == ["run_start", "columns", *["points"] * 3, "run_end"]


def test_addresses_and_tokens(tmp_path, monkeypatch):
    assert parse_address("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("8765", "host:", "host:99999", ":80"):
        with pytest.raises(FeedServerError):
            parse_address(bad)
    monkeypatch.delenv("BSREC_FEED_TOKEN", raising=False)
    assert read_token(None) is None
    monkeypatch.setenv("BSREC_FEED_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    assert read_token(token) == "s3cret"
    token.chmod(0o644)
    with pytest.raises(FeedServerError, match="readable by everyone"):
        read_token(token)
    with pytest.raises(FeedServerError, match="No such file"):
        read_token(tmp_path / "missing")


def test_the_schema_in_the_docs_is_the_one_the_code_uses():
    from pathlib import Path

    docs = Path(__file__).parents[2] / "docs" / "reference" / "feed-schema.json"
    import json

    assert json.loads(docs.read_text()) == json.loads(json.dumps(MESSAGE_SCHEMA))
