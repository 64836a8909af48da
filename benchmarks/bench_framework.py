"""RunEngine overhead of the recorder framework (issue 2), side by side in one process.

A 1,000-point ``scan`` over in-process ophyd.sim signals, run with:

  none      no callback at all (the floor)
  ours      RecorderSet[console + catalog]: writers on their own threads
  inline    the anchor: bluesky's LiveTable + bluesky-tiled-plugins' TiledWriter
            subscribed directly, so they run on the RunEngine thread

and, for ``ours``, the cost per document on the RunEngine thread (the time
spent inside ``RecorderSet.__call__``), whose goal is 20 µs or less.

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

from bluesky_recorders import RecorderSet
from bluesky_recorders.catalog import CatalogRecorder, open_catalog
from bluesky_recorders.console import ConsoleRecorder


class TimedSet:
    """Wraps a RecorderSet and records the time each call takes on the caller's thread."""

    def __init__(self, rs: RecorderSet) -> None:
        self.rs = rs
        self.ns: dict[str, list[int]] = {}

    def __call__(self, name, doc):
        t = time.perf_counter_ns()
        self.rs(name, doc)
        self.ns.setdefault(name, []).append(time.perf_counter_ns() - t)


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
    results: dict[str, list[float]] = {"none": [], "ours": [], "inline": []}
    per_doc: dict[str, list[int]] = {}

    # ours: console + catalog behind a RecorderSet
    rs = RecorderSet(
        [
            ConsoleRecorder(file=sink, force_terminal=False),
            CatalogRecorder(directory=tmp / "ours-catalog"),
        ]
    )
    timed = TimedSet(rs)
    # the anchor: the same kind of work, subscribed inline on the RunEngine thread
    from bluesky_tiled_plugins import TiledWriter

    anchor_cat = open_catalog(tmp / "anchor-catalog")
    anchor = [LiveTable([det, motor], out=sink.write), TiledWriter(anchor_cat)]

    for _ in range(args.repeat):
        results["none"].append(run_once(RE, args.points))
        token = RE.subscribe(timed)
        results["ours"].append(run_once(RE, args.points))
        RE.unsubscribe(token)
        tokens = [RE.subscribe(cb) for cb in anchor]
        results["inline"].append(run_once(RE, args.points))
        for tok in tokens:
            RE.unsubscribe(tok)
    rs.close()
    for name, values in timed.ns.items():
        per_doc[name] = values

    best = {k: min(v) for k, v in results.items()}
    print(f"{args.points}-point scan, best of {args.repeat} (s):")
    for k in ("none", "ours", "inline"):
        print(f"  {k:<7} {best[k]:8.3f} s   ({best[k] / best['none']:.2f} x no recorders)")
    print(f"  ours / inline anchor: {best['ours'] / best['inline']:.2f}")
    overhead = (best["ours"] - best["none"]) / args.points * 1e6
    print(f"  RunEngine overhead of ours per point: {overhead:.1f} µs")
    print("cost on the RunEngine thread per document (RecorderSet.__call__), µs:")
    for name, values in sorted(per_doc.items()):
        us = [v / 1000 for v in values]
        p99 = sorted(us)[max(0, int(len(us) * 0.99) - 1)]
        print(
            f"  {name:<10} n={len(us):<6} median {statistics.median(us):7.1f}  "
            f"p99 {p99:8.1f}  mean {statistics.fmean(us):7.1f}"
        )
    events = [v / 1000 for v in per_doc.get("event", [])]
    goal = statistics.median(events) <= 20 if events else False
    print(f"goal (event enqueue median <= 20 µs): {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
