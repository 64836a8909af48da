"""The lifecycle every recorder shares: routing, external data, failures, artifacts."""

import pytest

from bluesky_recorders.errors import RecorderError
from bluesky_recorders.recorder import Recorder, RunWriter
from bluesky_recorders.testing import (
    ad_hdf5_run,
    feed,
    realruns,
    scalar_run,
    stream_resource_run,
)


class LogWriter(RunWriter):
    """Keeps what it saw; fails on demand."""

    def start(self, doc):
        self.recorder.seen[doc["uid"]] = self.seen = {"rows": [], "external": [], "stop": None}
        self.path = f"/tmp/{doc['uid']}.log"
        self.artifacts.append(self.path)

    def event_page(self, doc):
        if self.recorder.fail_on_row is not None and self.recorder.fail_on_row in doc["seq_num"]:
            raise OSError(28, "No space left on device")
        self.seen["rows"].extend(doc["seq_num"])

    def external(self, frames):
        self.seen["external"].append(frames)

    def stop(self, doc):
        self.seen["stop"] = doc["exit_status"]

    def close(self):
        self.seen["closed"] = self.seen.get("closed", 0) + 1


class LogRecorder(Recorder):
    kind = "log"
    writer_class = LogWriter

    def __init__(self, *, fail_on_row=None, **common):
        super().__init__(**common)
        self.fail_on_row = fail_on_row
        self.seen = {}


def test_events_and_event_pages_reach_event_page():
    rec = LogRecorder()
    a, b = scalar_run(5), scalar_run(5, pages=True)
    feed(rec, a)
    feed(rec, b)
    uid_a, uid_b = a[0][1]["uid"], b[0][1]["uid"]
    # the baseline stream's 2 events and the 5 primary rows, in order
    assert rec.seen[uid_a]["rows"] == [1, 1, 2, 3, 4, 5, 2]
    assert rec.seen[uid_b]["rows"] == [1, 1, 2, 3, 4, 5, 2]
    assert rec.seen[uid_a]["stop"] == "success"
    assert rec.seen[uid_a]["closed"] == 1
    assert rec.artifacts[uid_a] == [f"/tmp/{uid_a}.log"]


@pytest.mark.parametrize("datum_pages", [False, True])
def test_legacy_external_data_reaches_external(tmp_path, datum_pages):
    rec = LogRecorder(path_map={"/ioc": str(tmp_path)})
    docs = ad_hdf5_run(tmp_path, 3, ioc_root="/ioc", datum_pages=datum_pages)
    feed(rec, docs)
    frames = rec.seen[docs[0][1]["uid"]]["external"]
    assert [(f.seq_start, f.frame_start, f.frame_stop) for f in frames] == [
        (1, 0, 2),
        (2, 2, 4),
        (3, 4, 6),
    ]
    assert all(f.path.startswith(str(tmp_path)) for f in frames)


def test_stream_external_data_reaches_external(tmp_path):
    rec = LogRecorder(path_map={"/ioc": str(tmp_path)})
    docs = stream_resource_run(tmp_path, 4, ioc_root="/ioc")
    feed(rec, docs)
    frames = rec.seen[docs[0][1]["uid"]]["external"]
    assert [(f.seq_start, f.seq_stop) for f in frames] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    assert frames[0].data_key == "cam_image"


def test_event_before_its_descriptor_names_the_document():
    rec = LogRecorder()
    docs = scalar_run(3, baseline=False)
    start, desc, event = docs[0], docs[1], docs[2]
    rec(*start)
    with pytest.raises(RecorderError) as info:
        rec(*event)
    msg = str(info.value)
    assert "'log'" in msg and event[1]["uid"] in msg and "before its descriptor" in msg
    rec(*desc)  # the run goes on
    rec(*event)
    assert rec.seen[start[1]["uid"]]["rows"] == [1]


def test_unknown_document_name():
    with pytest.raises(RecorderError, match="unknown document name 'bogus'"):
        LogRecorder()("bogus", {"uid": "x"})


def test_descriptor_of_unknown_run():
    docs = scalar_run(2)
    with pytest.raises(RecorderError, match="start document was not received"):
        LogRecorder()("descriptor", docs[1][1])


def test_failure_names_recorder_file_document_and_cause_and_next_run_is_clean():
    rec = LogRecorder(fail_on_row=3)
    docs = scalar_run(5, baseline=False)
    uid = docs[0][1]["uid"]
    with pytest.raises(RecorderError) as info:
        feed(rec, docs)
    err = info.value
    assert err.recorder == "log" and err.run_uid == uid
    assert err.path == f"/tmp/{uid}.log" and err.doc_name == "event"
    assert "No space left on device" in str(err) and f"/tmp/{uid}.log" in str(err)
    assert isinstance(err.__cause__, OSError)
    # the writer was closed once, keeping what it had
    assert rec.seen[uid]["rows"] == [1, 2] and rec.seen[uid]["closed"] == 1
    # the rest of that run is ignored quietly, and the next run is recorded
    rec.fail_on_row = None
    feed(rec, docs[docs.index(next(d for d in docs if d[0] == "event")) + 3 :])
    nxt = scalar_run(4, baseline=False)
    feed(rec, nxt)
    assert rec.seen[nxt[0][1]["uid"]]["rows"] == [1, 2, 3, 4]
    assert rec.seen[nxt[0][1]["uid"]]["stop"] == "success"


class RefusingRecorder(LogRecorder):
    def make_writer(self, start):
        if start.get("scan_id") == 1:
            raise PermissionError(13, "Permission denied", "/data/locked/00001.log")
        return super().make_writer(start)


def test_a_writer_that_cannot_start_loses_only_its_run_and_says_so_once():
    rec = RefusingRecorder()
    docs = scalar_run(3, scan_id=1)
    with pytest.raises(RecorderError) as info:
        rec(*docs[0])
    err = info.value
    assert err.doc_name == "start" and err.path == "/data/locked/00001.log"
    assert "Permission denied" in str(err) and isinstance(err.__cause__, PermissionError)
    feed(rec, docs[1:])  # the rest of that run: skipped quietly, no error per document
    nxt = scalar_run(2, scan_id=2)
    feed(rec, nxt)
    assert rec.seen[nxt[0][1]["uid"]]["stop"] == "success"


def test_duplicate_start_is_refused():
    rec = LogRecorder()
    docs = scalar_run(2)
    rec(*docs[0])
    with pytest.raises(RecorderError, match="second start document"):
        rec(*docs[0])


def test_close_is_idempotent_and_closes_open_runs():
    rec = LogRecorder()
    docs = scalar_run(3)
    feed(rec, docs[:-1])  # no stop
    rec.close()
    rec.close()
    assert rec.seen[docs[0][1]["uid"]]["closed"] == 1


def test_context_manager():
    docs = scalar_run(2)
    with LogRecorder() as rec:
        feed(rec, docs[:-1])
    assert rec.seen[docs[0][1]["uid"]]["closed"] == 1


@pytest.mark.parametrize("name", ["usaxs.json.gz", "apstools.json.gz"])
def test_real_beamline_streams(name):
    rec = LogRecorder()
    docs = list(realruns(name))
    feed(rec, docs)
    stops = {d["run_start"] for n, d in docs if n == "stop"}
    assert stops <= set(rec.seen)
    events = sum(1 for n, _ in docs if n == "event")
    assert sum(len(s["rows"]) for s in rec.seen.values()) == events


def test_standalone_warn_recorder_logs_and_goes_on(caplog):
    rec = LogRecorder(fail_on_row=2, on_error="warn")
    docs = scalar_run(4, baseline=False)
    with caplog.at_level("WARNING", logger="bluesky_recorders"):
        feed(rec, docs)  # no exception
    assert "recorder 'log' failed" in caplog.text and "policy 'warn'" in caplog.text
    assert rec.seen[docs[0][1]["uid"]]["rows"] == [1]


class BatchWriter(LogWriter):
    """Takes events in batches (``events``) unless told not to; fails on demand."""

    def events(self, docs):
        rec = self.recorder
        if not rec.take_batches:
            return False
        if rec.fail_on_row is not None and any(d["seq_num"] == rec.fail_on_row for d in docs):
            raise OSError(5, "Input/output error")
        self.seen.setdefault("batches", []).append(len(docs))
        self.seen["rows"].extend(d["seq_num"] for d in docs)
        return True


class BatchRecorder(LogRecorder):
    writer_class = BatchWriter
    take_batches = True


def _events_of(docs):
    """The run's documents before its events (start, descriptors), its events in
    order, and its stop."""
    head = [(name, doc) for name, doc in docs if name not in ("event", "stop")]
    return head, [doc for name, doc in docs if name == "event"], [docs[-1]]


def test_process_events_hands_runs_of_one_descriptor_to_the_writer_in_order():
    head, events, tail = _events_of(scalar_run(6))  # baseline, 6 primary, baseline
    rec = BatchRecorder()
    feed(rec, head)
    assert rec.process_events(events) == []
    feed(rec, tail)
    seen = rec.seen[head[0][1]["uid"]]
    assert seen["rows"] == [1, 1, 2, 3, 4, 5, 6, 2]  # the order of the documents
    assert seen["batches"] == [6]  # the baseline events come one at a time (runs of one)
    assert seen["stop"] == "success" and seen["closed"] == 1

    # a writer declining the batch gets the same events one at a time
    rec = BatchRecorder()
    rec.take_batches = False
    feed(rec, head)
    assert rec.process_events(events) == []
    assert rec.seen[head[0][1]["uid"]]["rows"] == [1, 1, 2, 3, 4, 5, 6, 2]
    assert "batches" not in rec.seen[head[0][1]["uid"]]


def test_process_events_returns_failures_and_goes_on_with_the_other_events():
    head, events, tail = _events_of(scalar_run(6, baseline=False))
    uid = head[0][1]["uid"]
    rec = BatchRecorder(fail_on_row=3)
    feed(rec, head)
    (err,) = rec.process_events([*events, {"descriptor": "nobody's"}, "not a document"])[:1]
    # named after the last event of the call that failed, with file and cause
    assert err.recorder == "log" and err.run_uid == uid and err.doc_name == "event"
    assert err.doc_uid == events[-1]["uid"] and f"/tmp/{uid}.log" in str(err)
    assert isinstance(err.__cause__, OSError)
    assert rec.seen[uid]["closed"] == 1 and rec.seen[uid]["rows"] == []
    # the two bad documents after it were each reported as process() would
    errors = rec.process_events([{"descriptor": "nobody's"}, "not a document"])
    assert [e.doc_name for e in errors] == ["event", "event"]
    assert "must be a mapping" in str(errors[1])
    # the rest of the failed run is skipped quietly; the next run is recorded
    rec.fail_on_row = None
    feed(rec, tail)
    head2, events2, tail2 = _events_of(scalar_run(4, baseline=False))
    feed(rec, head2)
    assert rec.process_events(events2) == []
    feed(rec, tail2)
    assert rec.seen[head2[0][1]["uid"]]["rows"] == [1, 2, 3, 4]
