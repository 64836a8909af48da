"""What other work on this machine costs a CPU-bound RunEngine, with no recorder at all.

The control for bench_feed.py's slowdown: there the page's browser and the feed's server
process run on the other core while the RunEngine runs on one. Here a plain load
process takes the place of both: it spins for --busy ms every --period ms (a page
redrawing ten times a second looks like this), and is stopped (SIGSTOP) for the
runs without it, so both kinds of run share everything else. The RunEngine runs
bluesky's scan([det], motor, -1, 1, --points) (ophyd.sim) in --repeat rounds of one
run with and one without the load, in turn; the figure is the median of the paired
ratios with its 95 % bootstrap interval (bench_stats.py). --busy 0 is the null
control: the interval should hold 0.

    .venv/bin/python benchmarks/bench_machine.py [--busy 0 5 10] [--period 50]
        [--points 100] [--repeat 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from bench_feed import SLOWDOWN_GOAL, timed_run
from bench_stats import paired, percent
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, motor

LOAD = """
import sys, time
busy, period = float(sys.argv[1]) / 1000, float(sys.argv[2]) / 1000
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    time.sleep(period - busy)
"""


def load_case(RE: RunEngine, plan_factory, busy: float, period: float, repeat: int) -> dict:
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(busy), str(period)])
    try:
        time.sleep(0.5)
        os.kill(load.pid, signal.SIGSTOP)
        ratios, waited = [], {True: [], False: []}
        for i in range(repeat):
            runs = {}
            for on in (False, True) if i % 2 == 0 else (True, False):
                os.kill(load.pid, signal.SIGCONT if on else signal.SIGSTOP)
                runs[on] = run = timed_run(RE, plan_factory, None)
                waited[on].append(run["waited"] / run["wall"])
            os.kill(load.pid, signal.SIGSTOP)
            ratios.append(runs[True]["wall"] / runs[False]["wall"])
    finally:
        load.kill()
        load.wait()
    return {"paired": paired(ratios, SLOWDOWN_GOAL), "waited": waited}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=float, nargs="+", default=[0.0, 5.0, 10.0])
    ap.add_argument("--period", type=float, default=50.0)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args(argv)
    RE = RunEngine({})
    plan = lambda: scan([det], motor, -1, 1, args.points)  # noqa: E731
    RE(plan())  # warm-up
    print(f"scan([det], motor, -1, 1, {args.points}), {args.repeat} rounds; a load process "
          f"spinning BUSY ms every {args.period:g} ms; {os.cpu_count()} cores")  # fmt: skip
    print(f"{'busy ms':>7s} {'load':>6s} {'paired':>9s} {'95 % interval':>21s} "
          f"{'waited with / without':>22s}")  # fmt: skip
    for busy in args.busy:
        r = load_case(RE, plan, busy, args.period, args.repeat)
        p = r["paired"]
        w = {on: statistics.median(v) * 100 for on, v in r["waited"].items()}
        print(f"{busy:7g} {busy / args.period * 100:5.0f}% {percent(p.median):>9s} "
              f"{percent(p.low):>10s}..{percent(p.high):>9s} "
              f"{w[True]:10.2f}% / {w[False]:.2f}%")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
