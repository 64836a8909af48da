"""End-of-run plots (issue 6): what drawing costs the RunEngine, and how soon plots appear.

Three contenders, each with its own RunEngine in this process:

  none     RecorderSet[] (the floor: no recorder)
  thread   RecorderSet[EndOfRunPlotsRecorder(draw_in="thread")]: plots drawn on the
           recorder's background thread, in this interpreter
  process  RecorderSet[EndOfRunPlotsRecorder(draw_in="process")] (the default): the
           background thread hands each run to the drawing process and sleeps until
           it answers

One sample of a contender: a short trigger run (``count([det], 5)``: its stop hands
one plot over), then at once the measured run, a 1-D ``scan`` of ophyd.sim ``det``
over ``motor`` (``--points``), which therefore runs while the trigger's plot is
drawn; then wait until every plot is written. The contenders take turns, sample by
sample (``--samples`` each), so a change in the machine's load hits them alike.

Also: what collecting costs the recorder's thread per event (``--events`` events
fed to ``Recorder.process`` directly).

Reported: the measured scan's wall time (median and quartiles) and its ratio to
``none``; for ``thread`` and ``process`` the time from the trigger's stop document
reaching the RecorderSet to its ``plot.json`` on disk (drawn while the RunEngine
scans) and the same for the measured scan (drawn while the RunEngine is idle).

ophyd.sim answers at once, so the RunEngine is CPU-bound here: every millisecond
a drawing thread holds the GIL shows in the scan's wall time (and a drawing
process needs a free CPU core). With real hardware the RunEngine mostly waits.

    .venv/bin/python benchmarks/bench_plots.py [--points 50] [--samples 20]

Timings are wall-clock on a shared machine: compare the ratios, not the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, motor

from bluesky_recorders import RecorderSet
from bluesky_recorders.plots import EndOfRunPlotsRecorder
from bluesky_recorders.testing import scalar_run


class TimedPlots(EndOfRunPlotsRecorder):
    """The library's recorder, noting when each run's plots were on disk."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.done_at: dict[str, float] = {}

    def write_plots(self, job):
        files = super().write_plots(job)  # returns once the files are written
        self.done_at[job.uid] = time.time()
        return files


class StopClock:
    """Subscribed before the RecorderSet: when each stop document arrived."""

    def __init__(self) -> None:
        self.stop_at: dict[str, float] = {}

    def __call__(self, name, doc):
        if name == "stop":
            self.stop_at[doc["run_start"]] = time.time()


class Contender:
    """One RunEngine with its RecorderSet (and plots recorder, if any)."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.RE = RunEngine({})
        self.clock = StopClock()
        if kind == "none":
            self.recorder = None
        else:
            self.recorder = TimedPlots(data_root=root / kind, draw_in=kind)
        self.rs = RecorderSet([self.recorder] if self.recorder is not None else [])
        self.RE.subscribe(self.clock)
        self.RE.subscribe(self.rs)
        self.scan_s: list[float] = []
        self.busy_s: list[float] = []  # stop -> plot.json, drawn while the RunEngine scans
        self.idle_s: list[float] = []  # stop -> plot.json, drawn while the RunEngine is idle

    def sample(self, points: int) -> None:
        (trigger,) = self.RE(count([det], 5))
        t = time.perf_counter()
        (uid,) = self.RE(scan([det], motor, -1, 1, points))
        self.scan_s.append(time.perf_counter() - t)
        if self.recorder is None:
            return
        if not self.recorder.wait(300):
            raise SystemExit(f"{self.kind}: plots not written within 300 s")
        for run, out in ((trigger, self.busy_s), (uid, self.idle_s)):
            if not self.recorder.artifacts.get(run):
                raise SystemExit(f"{self.kind}: no plots for run {run}")
            out.append(self.recorder.done_at[run] - self.clock.stop_at[run])

    def close(self) -> None:
        self.rs.close()


def collect_cost(root: Path, events: int) -> float:
    """Seconds per event the writer spends collecting (on the recorder's thread)."""
    rec = EndOfRunPlotsRecorder(data_root=root / "collect", draw_in="thread")
    docs = scalar_run(events, baseline=False, detectors=("det1", "det2", "det3"))
    head = [p for p in docs if p[0] in ("start", "descriptor")]
    body = [p for p in docs if p[0] == "event"]
    for name, doc in head:
        rec.process(name, doc)
    t = time.perf_counter()
    for name, doc in body:
        rec.process(name, doc)
    per_event = (time.perf_counter() - t) / len(body)
    rec.process(*docs[-1])
    rec.close()
    return per_event


def quartiles(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q2 * 1000:7.1f} [{q1 * 1000:6.1f}, {q3 * 1000:6.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--events", type=int, default=10_000, help="events for the collecting cost")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_plots_"))
    try:
        per_event = collect_cost(root, args.events)
        contenders = [Contender(kind, root) for kind in ("none", "thread", "process")]
        for c in contenders:  # warm-up: imports, the first figure, the drawing process
            c.sample(5)
            c.scan_s.clear(), c.busy_s.clear(), c.idle_s.clear()
        for _ in range(args.samples):
            for c in contenders:
                c.sample(args.points)
        for c in contenders:
            c.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    floor = statistics.median(contenders[0].scan_s)
    print(
        f"{args.samples} samples each; measured run: scan of {args.points} points; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
        f"Python {sys.version.split()[0]}"
    )
    print("ms: median [first quartile, third quartile]")
    print(
        f"{'contender':10} {'measured scan ms':>26} {'/ none':>7} "
        f"{'stop->plot.json, RE scanning':>30} {'stop->plot.json, RE idle':>26}"
    )
    for c in contenders:
        ratio = statistics.median(c.scan_s) / floor
        busy = quartiles(c.busy_s) if c.busy_s else "-"
        idle = quartiles(c.idle_s) if c.idle_s else "-"
        print(f"{c.kind:10} {quartiles(c.scan_s):>26} {ratio:7.3f} {busy:>30} {idle:>26}")
    print(
        f"collecting, on the recorder's thread: {per_event * 1e6:.2f} µs per event "
        f"({args.events} events of a motor and 3 detectors, Recorder.process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
