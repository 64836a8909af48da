"""The shared-memory segment read live from other processes: a Reader and `bsrec shm show`.

Each test hands points over in lock step with the other process (it reports what it saw
before the run goes on), so nothing here depends on timing.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, motor

from bluesky_recorders import RecorderSet
from bluesky_recorders.shm import SharedMemoryRecorder, segment_path
from bluesky_recorders.testing import collect, scalar_run

BIN = Path(sys.executable).parent
TIMEOUT = 60


@pytest.fixture
def name():
    seg = f"bsrec-live-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield seg
    try:
        segment_path(seg).unlink()
    except FileNotFoundError:
        pass


class Lines:
    """A subprocess's stdout, line by line, with a timeout on each line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Wait for the process to end (kill it after the timeout), close the pipe."""
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(timeout=TIMEOUT)
        self.proc.stdout.close()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<EOF>")

    def next(self) -> str:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no line from the process in {TIMEOUT} s: {self.seen}") from None
        self.seen.append(line)
        assert line != "<EOF>", f"the process ended early: {self.seen}"
        return line

    def until(self, predicate) -> str:
        while True:
            line = self.next()
            if predicate(line):
                return line


FOLLOWER = textwrap.dedent(
    """
    import json, sys
    from bluesky_recorders.shm import Reader
    seen, run, snap = {}, None, None
    with Reader(sys.argv[1]) as reader:
        print("ready", flush=True)
        for snap in reader.follow(timeout=60):
            if not snap.run_uid:
                continue
            run = run or snap.run_uid
            if snap.run_uid != run:
                continue
            for row in snap.points.tolist():
                if int(row[0]) not in seen:
                    seen[int(row[0])] = dict(zip(snap.columns, row))
                    print("seen", int(row[0]), flush=True)
            if snap.state == "ended":
                break
    print(json.dumps({"run": run, "state": snap.state, "points": [seen[k] for k in sorted(seen)]}))
    """
)


def test_a_reader_in_another_process_follows_a_live_scan(name):
    rec = SharedMemoryRecorder(segment=name)
    RE = RunEngine({})
    docs, cb = collect()
    RE.subscribe(RecorderSet([rec]))
    RE.subscribe(cb)
    proc = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, name], stdout=subprocess.PIPE, text=True
    )
    out = Lines(proc)
    try:
        assert out.next() == "ready"
        acks = []

        def per_step(detectors, step, pos_cache):
            yield from bps.one_nd_step(detectors, step, pos_cache)
            # the event is in the segment now: go on once the other process has seen it
            acks.append(out.until(lambda line: line.startswith("seen")))

        (uid,) = RE(scan([det], motor, -1, 1, 15, per_step=per_step))
        result = json.loads(out.until(lambda line: line.startswith("{")))
    finally:
        out.close()
        rec.close()
    assert acks == [f"seen {i}" for i in range(1, 16)]  # each point seen before the next
    assert result["run"] == uid and result["state"] == "ended"
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    events = [d for n, d in docs if n == "event" and d["descriptor"] == primary]
    assert result["points"] == [
        {"seq_num": e["seq_num"], "time": e["time"], **e["data"]} for e in events
    ]


CHECKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from bluesky_recorders.shm import Reader
    checked, problems = 0, []
    with Reader(sys.argv[1]) as reader:
        print("ready", flush=True)
        while checked < int(sys.argv[2]):
            snap = reader.snapshot()
            if snap.total == 0 or not snap.frames:
                continue
            checked += 1
            expect = np.arange(snap.first + 1, snap.total + 1, dtype=float)
            if not (snap.points == expect[:, None]).all():
                problems.append(["rows", snap.seq, snap.total])
            frame = snap.frames["img"]
            if frame.seq_num != snap.total or not (frame.data == snap.total).all():
                problems.append(["frame", snap.seq, snap.total, frame.seq_num])
    print(json.dumps({"checked": checked, "problems": problems[:10]}), flush=True)
    """
)


def test_a_reader_in_another_process_never_sees_a_torn_update(name):
    """Writer and reader run on two CPUs at once: every column of a row equals its point
    number by construction, and the frame is that point's."""
    docs = scalar_run(1, detectors=("a", "b", "c"))
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    desc["data_keys"]["img"] = {"source": "x", "dtype": "array", "shape": [32, 32]}
    rec = SharedMemoryRecorder(segment=name, capacity=128, frames=["img"])
    rec("start", docs[0][1])
    rec("descriptor", desc)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHECKER, name, "5000"], stdout=subprocess.PIPE, text=True
    )
    out = Lines(proc)
    try:
        assert out.next() == "ready"
        i = 0
        while proc.poll() is None and out.lines.empty():
            i += 1
            v = float(i)
            rec("event", {"descriptor": desc["uid"], "uid": f"e{i}", "seq_num": i, "time": v,
                          "data": {"a": v, "b": v, "c": v, "motor": v,
                                   "img": np.full((32, 32), v)},
                          "timestamps": {}})  # fmt: skip
        result = json.loads(out.next())
    finally:
        out.close()
        rec.close()
    assert result == {"checked": 5000, "problems": []}
    assert i > 1


def test_bsrec_shm_show_follow_prints_each_new_point(name):
    rec = SharedMemoryRecorder(segment=name)
    proc = subprocess.Popen(
        [str(BIN / "bsrec"), "shm", "show", "--name", name, "--follow", "--timeout", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = Lines(proc)
    try:
        out.until(lambda line: line.startswith("state") and "idle" in line)
        docs = scalar_run(5)
        events = [d for n, d in docs if n == "event" and d["seq_num"] and "det" in d["data"]]
        uid = docs[0][1]["uid"]
        rec(*docs[0])
        out.until(lambda line: uid in line)
        for doc_name, doc in docs[1:-1]:
            rec(doc_name, doc)
            if doc in events:
                seq = str(doc["seq_num"])
                row = out.until(lambda line, seq=seq: line.split()[:1] == [seq])
                assert row.split()[-2:] == [f"{doc['data']['motor']:.8g}",
                                            f"{doc['data']['det']:.8g}"]  # fmt: skip
        rec(*docs[-1])
        assert out.until(lambda line: line.startswith("--")) == "-- ended (success): 5 points"
    finally:
        proc.terminate()
        out.close()
        rec.close()
    assert any(line.split() == ["seq_num", "time", "motor", "det"] for line in out.seen)
