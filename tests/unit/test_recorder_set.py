"""RecorderSet: threads, draining at stop, the failure policy, validation, the run log."""

import logging
import threading
import time

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, motor

from bluesky_recorders import recorder_set
from bluesky_recorders.errors import DocumentError, DrainTimeoutError, RecorderError
from bluesky_recorders.recorder import Recorder, RunWriter
from bluesky_recorders.recorder_set import RecorderSet
from bluesky_recorders.runlog import RunLog
from bluesky_recorders.testing import feed, scalar_run


class SlowWriter(RunWriter):
    def start(self, doc):
        self.rows = []
        self.path = f"/data/{doc.get('scan_id')}.txt"
        self.artifacts.append(self.path)

    def event_page(self, doc):
        rec = self.recorder
        if rec.fail_on and rec.fail_on in doc["seq_num"] and doc["descriptor"] in rec.primary:
            raise OSError(5, "Input/output error")
        time.sleep(rec.delay)
        if rec.gate is not None:
            rec.gate.wait()
        self.rows.extend(doc["seq_num"])
        rec.threads.add(threading.current_thread().name)

    def descriptor(self, doc):
        if doc.get("name") == "primary":
            self.recorder.primary.add(doc["uid"])

    def stop(self, doc):
        self.recorder.done[doc["run_start"]] = list(self.rows)


class SlowRecorder(Recorder):
    kind = "slow"
    writer_class = SlowWriter

    def __init__(self, *, delay=0.0, fail_on=None, saves=True, **common):
        self.saves_data = saves
        super().__init__(**common)
        self.delay, self.fail_on, self.gate = delay, fail_on, None
        self.done, self.threads, self.primary = {}, set(), set()


@pytest.fixture
def RE():
    return RunEngine({})


def test_stop_drains_every_recorder_before_RE_returns(RE, tmp_path):
    slow = SlowRecorder(name="slow", delay=0.02)
    rs = RecorderSet([slow], run_log=RunLog(tmp_path / "runs.sqlite"))
    RE.subscribe(rs)
    (uid,) = RE(scan([det], motor, -1, 1, 10))
    assert slow.done[uid] == list(range(1, 11))  # complete when RE(...) returns
    assert slow.threads == {"bsrec-slow"}  # written on its own thread
    rs.close()


def test_abort_policy_aborts_the_run_with_a_message_naming_recorder_and_file(RE, tmp_path):
    bad = SlowRecorder(name="nexus-like", fail_on=2)
    good = SlowRecorder(name="other")
    rs = RecorderSet([bad, good], run_log=RunLog(tmp_path / "runs.sqlite"))
    stops = []
    RE.subscribe(rs)
    RE.subscribe(lambda n, d: stops.append(d) if n == "stop" else None)
    with pytest.raises(RecorderError) as info:
        RE(scan([det], motor, -1, 1, 50))
    msg = str(info.value)
    assert "'nexus-like'" in msg and "/data/1.txt" in msg and "Input/output error" in msg
    assert stops[-1]["exit_status"] == "fail" and "nexus-like" in stops[-1]["reason"]
    # the other recorder finished its (shortened) run and the RunEngine is clean
    assert RE.state == "idle"
    (first_uid,) = list(good.done)
    assert len(good.done[first_uid]) < 50
    bad.fail_on = None
    (uid,) = RE(count([det], 3))
    assert bad.done[uid] == [1, 2, 3] and good.done[uid] == [1, 2, 3]
    log = {r.uid: r for r in RunLog(tmp_path / "runs.sqlite").recent()}
    assert log[first_uid].exit_status == "fail" and log[uid].exit_status == "success"
    rs.close()


def test_warn_policy_only_logs(RE, caplog):
    flaky = SlowRecorder(name="feed", fail_on=2, on_error="warn")
    rs = RecorderSet([flaky])
    RE.subscribe(rs)
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        (uid,) = RE(scan([det], motor, -1, 1, 5))
    assert "recorder 'feed' failed" in caplog.text and "policy 'warn'" in caplog.text
    rs.close()


def test_inline_recorder_failure_follows_the_same_policy(RE):
    bad = SlowRecorder(name="inline", fail_on=1, threaded=False)
    rs = RecorderSet([bad])
    RE.subscribe(rs)
    with pytest.raises(RecorderError, match="'inline'"):
        RE(count([det], 3))
    assert RE.state == "idle"
    rs.close()


def test_drain_timeout_is_reported_and_the_recorder_goes_on(tmp_path):
    slow = SlowRecorder(name="slow", delay=0.2)
    rs = RecorderSet([slow], drain_timeout=0.1)
    docs = scalar_run(5, baseline=False)
    with pytest.raises(DrainTimeoutError, match="did not finish the run within 0.1 s"):
        feed(rs, docs)
    rs.close(timeout=30)  # close waits for the rest
    assert slow.done[docs[0][1]["uid"]] == [1, 2, 3, 4, 5]


def test_drop_policy_never_blocks_and_keeps_start_and_stop(caplog):
    live = SlowRecorder(name="live", on_error="warn", when_full="drop", queue_size=2)
    live.gate = threading.Event()  # the writer is stuck until the gate opens
    rs = RecorderSet([live])
    docs = scalar_run(20, baseline=False)
    feeder = threading.Thread(target=feed, args=(rs, docs[:-1]))
    feeder.start()
    feeder.join(30)
    assert not feeder.is_alive()  # a full queue of a 'drop' recorder never blocks the caller
    live.gate.set()
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        feed(rs, docs[-1:])  # the stop is never dropped, and drains the rest
    rows = live.done[docs[0][1]["uid"]]  # start and stop reached the writer
    assert len(rows) < 20 and rows == sorted(rows)
    assert f"live: dropped {20 - len(rows)} documents" in caplog.text
    rs.close()


def test_block_policy_waits_for_room_and_loses_nothing():
    rec = SlowRecorder(name="nexus-like", queue_size=2)
    rec.gate = threading.Event()
    rs = RecorderSet([rec])
    docs = scalar_run(20, baseline=False)
    feeder = threading.Thread(target=feed, args=(rs, docs))
    feeder.start()
    feeder.join(0.5)
    assert feeder.is_alive()  # held back by the full queue, as the policy says
    rec.gate.set()
    feeder.join(30)
    assert not feeder.is_alive()
    assert rec.done[docs[0][1]["uid"]] == list(range(1, 21))
    rs.close()


def test_a_page_counts_its_rows_in_the_queue():
    """Memory stays bounded in fly scans: queue_size counts rows, not documents."""
    rec = SlowRecorder(name="live", on_error="warn", when_full="drop", queue_size=10)
    rec.gate = threading.Event()  # the writer is stuck until the gate opens
    rs = RecorderSet([rec])
    docs = scalar_run(40, pages=True, baseline=False)  # one page of 40 rows
    page = next(d for n, d in docs if n == "event_page")
    half = {**page, **{k: page[k][:20] for k in ("seq_num", "time", "uid")}}
    half["data"] = {k: v[:20] for k, v in page["data"].items()}
    half["timestamps"] = {k: v[:20] for k, v in page["timestamps"].items()}
    rest = {**page, **{k: page[k][20:] for k in ("seq_num", "time", "uid")}}
    rest["data"] = {k: v[20:] for k, v in page["data"].items()}
    rest["timestamps"] = {k: v[20:] for k, v in page["timestamps"].items()}
    head = [(n, d) for n, d in docs if n in ("start", "descriptor")]
    feed(rs, [*head, ("event_page", half), ("event_page", rest)])
    rec.gate.set()
    feed(rs, docs[-1:])
    # the first page (20 rows) filled the queue of 10 rows: the second was dropped
    assert rec.done[docs[0][1]["uid"]] == list(range(1, 21))
    rs.close()


def test_a_document_breaking_the_schema_is_refused_with_name_and_uid():
    rec = SlowRecorder()
    rs = RecorderSet([rec])
    docs = scalar_run(2)
    bad_start = dict(docs[0][1], time="yesterday")
    with pytest.raises(DocumentError) as info:
        rs("start", bad_start)
    assert info.value.name == "start" and info.value.uid == bad_start["uid"]
    assert bad_start["uid"] in str(info.value) and "time" in str(info.value)
    feed(rs, scalar_run(3))  # the next run is fine
    assert len(rec.done) == 1
    rs.close()


def test_numpy_values_and_tuples_are_judged_by_event_model():
    """jsonschema-rs answers first but reads only JSON types; event-model's validator,
    which takes tuples and numpy arrays for arrays, decides the rest."""
    rec = SlowRecorder()
    rs = RecorderSet([rec])
    docs = scalar_run(2, baseline=False)
    start = docs[0][1]
    start["plan_args"] = {"positions": np.arange(3), "shape": (2, 3), "step": np.float64(0.5)}
    descriptor = next(d for n, d in docs if n == "descriptor")
    for key in descriptor["data_keys"].values():
        key["shape"] = tuple(key["shape"])
    with pytest.raises(ValueError, match="ndarray"):  # jsonschema-rs cannot read it
        recorder_set._fast_validator("start").is_valid(start)
    feed(rs, docs)
    assert rec.done[start["uid"]] == [1, 2]
    bad = dict(descriptor, uid="d2", data_keys={"x": {"dtype": "number", "shape": (), "source": 5}})
    with pytest.raises(DocumentError, match="source"):
        rs("descriptor", bad)
    rs.close()


def test_the_rest_of_a_refused_run_is_skipped_quietly(caplog):
    rec = SlowRecorder()
    rs = RecorderSet([rec])
    docs = scalar_run(3)
    with pytest.raises(DocumentError):
        rs("start", dict(docs[0][1], scan_id="seven"))
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
        feed(rs, docs[1:])  # descriptors, events and stop of the refused run
    assert caplog.text == "" and rec.done == {}
    rs.close()


def test_names_must_be_unique():
    with pytest.raises(ValueError, match="already in this set"):
        RecorderSet([SlowRecorder(), SlowRecorder()])


def test_artifacts_per_run_and_run_log(tmp_path):
    log = RunLog(tmp_path / "runs.sqlite")
    rs = RecorderSet([SlowRecorder(name="a"), SlowRecorder(name="b")], run_log=log)
    docs = scalar_run(3, scan_id=7)
    feed(rs, docs)
    uid = docs[0][1]["uid"]
    assert rs.artifacts(uid) == {"a": ["/data/7.txt"], "b": ["/data/7.txt"]}
    (rec,) = log.recent()
    assert (rec.uid, rec.scan_id, rec.plan_name, rec.exit_status) == (uid, 7, "scan", "success")
    assert rec.artifacts == {"a": ["/data/7.txt"], "b": ["/data/7.txt"]}
    assert rec.num_events == {"baseline": 2, "primary": 3}
    rs.close()


def test_run_without_stop_stays_running_in_the_log(tmp_path):
    log = RunLog(tmp_path / "runs.sqlite")
    rs = RecorderSet([SlowRecorder()], run_log=log)
    feed(rs, scalar_run(3)[:-1])
    assert log.recent()[0].exit_status == "running"
    rs.close()


class BatchingWriter(SlowWriter):
    def descriptor(self, doc):
        self.recorder.gate.wait()  # the thread is held here while the events queue up

    def events(self, docs):
        self.recorder.batches.append(len(docs))
        self.rows.extend(d["seq_num"] for d in docs)
        return True


class BatchingRecorder(SlowRecorder):
    writer_class = BatchingWriter

    def __init__(self, **common):
        super().__init__(**common)
        self.batches = []


def test_events_queued_while_the_thread_is_busy_are_handed_over_together(monkeypatch):
    monkeypatch.setattr(recorder_set, "_EVENT_BATCH", 8)
    rec = BatchingRecorder(name="batching")
    rec.gate = threading.Event()
    rs = RecorderSet([rec])
    docs = scalar_run(20, baseline=False)  # start, descriptor, 20 events, stop
    first = next(i for i, (name, _) in enumerate(docs) if name == "event")
    feed(rs, docs[: first + 20])
    rec.gate.set()
    feed(rs, docs[first + 20 :])
    assert rec.done[docs[0][1]["uid"]] == list(range(1, 21))  # all, in order
    assert rec.batches == [8, 8, 4]  # at most _EVENT_BATCH at a time
    rs.close()
