"""RunEngine overhead of the recorder framework (issue 2), side by side in one process.

A 1,000-point ``scan`` over in-process ophyd.sim signals, run with:

  none       no callback at all (the floor)
  framework  RecorderSet[a recorder that writes nothing]: the framework alone
  ours       RecorderSet[console + catalog]: writers on their own threads
  inline     the anchor: bluesky's LiveTable + bluesky-tiled-plugins' TiledWriter
             subscribed directly, so they run on the RunEngine thread

and, for ``framework`` and ``ours``, the cost per document on the RunEngine
thread inside ``RecorderSet.__call__``: CPU time of that thread
(``time.thread_time_ns``, what the enqueue costs) and wall time (which also
counts waiting for the GIL while recorder threads run). Goal: 20 µs or less.

ophyd.sim devices answer at once, so here the RunEngine is CPU-bound and every
microsecond a recorder thread runs shows in its wall time; with real hardware
the RunEngine mostly waits and the recorder threads use that time.

    .venv/bin/python benchmarks/bench_framework.py [--points 1000] [--repeat 3]

Timings are wall-clock on a shared machine: compare the ratios, not the numbers.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bluesky import RunEngine
from bluesky.callbacks import LiveTable
from bluesky.plans import scan
from ophyd.sim import det, motor

from bluesky_recorders import Recorder, RecorderSet
from bluesky_recorders.catalog import CatalogRecorder, close_catalog, open_catalog
from bluesky_recorders.console import ConsoleRecorder


class TimedSet:
    """Wraps a RecorderSet; records wall and thread-CPU time of each call on the caller's thread."""

    def __init__(self, rs: RecorderSet) -> None:
        self.rs = rs
        self.wall: dict[str, list[int]] = {}
        self.cpu: dict[str, list[int]] = {}

    def __call__(self, name, doc):
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        self.rs(name, doc)
        self.cpu.setdefault(name, []).append(time.thread_time_ns() - c)
        self.wall.setdefault(name, []).append(time.perf_counter_ns() - t)


class Nothing(Recorder):
    """A recorder whose writer writes nothing: what the framework alone costs."""

    kind = "nothing"


def stats(values_ns: list[int]) -> str:
    us = sorted(v / 1000 for v in values_ns)
    p99 = us[max(0, int(len(us) * 0.99) - 1)]
    return f"median {statistics.median(us):8.1f}  p99 {p99:9.1f}  mean {statistics.fmean(us):8.1f}"


def run_once(RE: RunEngine, points: int) -> float:
    t = time.perf_counter()
    RE(scan([det], motor, -1, 1, points))
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bsrec-bench-"))
    sink = io.StringIO()

    RE = RunEngine({})
    RE(scan([det], motor, -1, 1, 5))  # warm up ophyd and bluesky
    configs = ("none", "framework", "ours", "inline")
    results: dict[str, list[float]] = {k: [] for k in configs}

    framework = TimedSet(RecorderSet([Nothing()]))
    ours = TimedSet(
        RecorderSet(
            [
                ConsoleRecorder(file=sink, force_terminal=False),
                CatalogRecorder(directory=tmp / "ours-catalog"),
            ]
        )
    )
    # the anchor: the same kind of work, subscribed inline on the RunEngine thread
    from bluesky_tiled_plugins import TiledWriter

    anchor_cat = open_catalog(tmp / "anchor-catalog")
    anchor = [LiveTable([det, motor], out=sink.write), TiledWriter(anchor_cat)]
    callbacks = {"none": [], "framework": [framework], "ours": [ours], "inline": anchor}

    for _ in range(args.repeat):
        for config in configs:
            tokens = [RE.subscribe(cb) for cb in callbacks[config]]
            results[config].append(run_once(RE, args.points))
            for tok in tokens:
                RE.unsubscribe(tok)
    framework.rs.close()
    ours.rs.close()
    close_catalog(anchor_cat)

    best = {k: min(v) for k, v in results.items()}
    print(f"{args.points}-point scan over ophyd.sim, best of {args.repeat}:")
    for k in configs:
        extra = (best[k] - best["none"]) / args.points * 1e6
        print(
            f"  {k:<10} {best[k]:7.3f} s  {best[k] / best['none']:5.2f} x none  "
            f"(+{extra:7.1f} µs per point)"
        )
    print(f"  ours / inline anchor: {best['ours'] / best['inline']:.2f}")
    for label, timed in (("framework", framework), ("ours", ours)):
        print(f"{label}: per document on the RunEngine thread, µs (all runs)")
        for name in sorted(timed.cpu):
            print(f"  {name:<10} n={len(timed.cpu[name]):<6} cpu  {stats(timed.cpu[name])}")
            print(f"  {'':<10} {'':<8} wall {stats(timed.wall[name])}")
    median_cpu = statistics.median(ours.cpu["event"]) / 1000
    verdict = "met" if median_cpu <= 20 else "NOT met"
    print(f"goal (ours: event enqueue, RunEngine-thread CPU median <= 20 µs): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
