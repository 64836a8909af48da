"""The shared-memory recorder: the writer's cost per event, and how soon another process
sees a point.

1. Writer cost. 20,000 events of a primary stream of 10 scalars (a motor and 9
   detectors; the ring has 12 columns with seq_num and time) are handed, one at a time,
   to ``ShmWriter.event`` (the writer alone) and to ``SharedMemoryRecorder(...)("event",
   doc)`` (the facade as well: what a RecorderSet's inline call costs). Each call is timed
   with ``time.perf_counter_ns``; an empty call is timed the same way (the timer's own
   cost, included in the figures). Median and p99 of the best of ``--repeat`` runs.
   Goal: under 5 µs per event (median of the writer).

2. Latency. A ``Reader`` in a second process waits (``Reader.wait``, polling every
   ``--poll`` seconds) and, for each new point, takes ``time.monotonic_ns()`` (the same
   clock in both processes) minus the stamp the writer put into the event just before
   handing it over (through the facade). 2,000 events at 100 and at 1,000 events per
   second. The reader's CPU time while waiting is reported too. Goal: a new point seen
   within 1 ms (p99).
   The anchor, in the same runs: a raw reader in a third process, the least a polling
   reader can do (mmap of the segment, ``struct`` reads of the documented header's
   ``seq`` and ``total``, ``time.sleep(poll)``, no library). For each point, the time
   it saw ``total`` cover it minus the stamp. Its p99 is how soon this machine, at
   that moment, lets a process that sleeps ``poll`` at a time look again; the
   Reader's p99 is given as a ratio to it.

3. A waiting reader's CPU time with no points coming: while it polls every ``poll`` s,
   and once it polls every ``idle_poll`` s (after ``idle_after`` s without a change).

    .venv/bin/python benchmarks/bench_shm.py [--events 20000] [--repeat 3]
                                             [--latency-events 2000] [--poll 0.0001]

Timings are wall-clock on a shared machine: give the load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

from bluesky_recorders.shm import (
    IDLE_AFTER,
    IDLE_POLL,
    POLL,
    Reader,
    SharedMemoryRecorder,
    segment_path,
)
from bluesky_recorders.shm_layout import SEQ_OFFSET, TOTAL_OFFSET
from bluesky_recorders.testing import scalar_run

DETECTORS = tuple(f"det{i}" for i in range(9))

READER = textwrap.dedent(
    """
    import json, sys, time
    from bluesky_recorders.shm import Reader
    name, count, poll = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    latencies, done = [], 0
    with Reader(name, poll=poll) as reader:
        print("ready", flush=True)
        cpu = time.process_time()
        while done < count:
            if not reader.wait(timeout=60):
                break
            seen = time.monotonic_ns()
            snap = reader.snapshot(last=64)  # the new points (one or two per wake-up)
            if not snap.run_uid or "stamp" not in snap.columns:
                continue
            j = snap.columns.index("stamp")
            for k, row in enumerate(snap.points, start=snap.first):
                if k >= done:
                    latencies.append(seen - int(row[j]))
            done = max(done, snap.total)
        cpu = time.process_time() - cpu
    print(json.dumps({"latencies": latencies, "cpu": cpu}), flush=True)
    """
)


# The anchor: a raw polling reader of the documented header (shm_layout), no library.
# Prints "ready", then, when its stdin closes, the (total, seen) of every change it saw.
RAW = textwrap.dedent(
    """
    import json, mmap, os, struct, sys, threading, time
    path, poll = sys.argv[1], float(sys.argv[2])
    seq_at, total_at = int(sys.argv[3]), int(sys.argv[4])
    fd = os.open(path, os.O_RDONLY)
    mm = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
    word = struct.Struct("<Q").unpack_from
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    seen, last = [], word(mm, seq_at)[0]
    print("ready", flush=True)
    while not stop.is_set():
        s = word(mm, seq_at)[0]
        if s != last and not s & 1:
            now = time.monotonic_ns()
            total = word(mm, total_at)[0]
            if word(mm, seq_at)[0] == s:
                seen.append((total, now))
                last = s
        time.sleep(poll)
    print(json.dumps(seen), flush=True)
    """
)


def percentiles(values_ns: list[int], q: tuple[float, ...] = (50, 99, 100)) -> tuple[float, ...]:
    """Percentiles ``q`` (default median, p99, max), in µs."""
    a = np.asarray(values_ns, dtype=float) / 1000
    return tuple(float(v) for v in np.percentile(a, q))


def make_docs(n: int) -> tuple[list, list]:
    docs = scalar_run(n, detectors=DETECTORS, baseline=False)
    head = [(name, doc) for name, doc in docs if name in ("start", "descriptor")]
    events = [doc for name, doc in docs if name == "event"]
    return head, events


def writer_cost(n: int, repeat: int, segment: str) -> dict[str, tuple[float, float, float]]:
    head, events = make_docs(n)
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(repeat):
        rec = SharedMemoryRecorder(segment=segment)
        try:
            for name, doc in head:
                rec(name, doc)
            (writer,) = rec._writers.values()  # noqa: SLF001 - the writer alone is measured
            cases = {
                "ShmWriter.event": writer.event,
                'recorder("event", doc)': lambda doc, rec=rec: rec("event", doc),
                "empty call (timer cost)": lambda doc: None,
            }
            for label, call in cases.items():
                times = []
                for doc in events:
                    t = time.perf_counter_ns()
                    call(doc)
                    times.append(time.perf_counter_ns() - t)
                stats = percentiles(times)
                if label not in best or stats[0] < best[label][0]:
                    best[label] = stats
        finally:
            rec.close()
    return best


def raw_latencies(seen: list[list[int]], stamps: list[int]) -> list[int]:
    """Per point, the first time the raw reader saw ``total`` cover it minus its stamp."""
    out, done = [], 0
    for total, when in seen:
        out += [when - stamps[k] for k in range(done, min(total, len(stamps)))]
        done = max(done, total)
    return out


def summary(lat: list[int]) -> dict[str, float]:
    p50, p90, p99, worst = percentiles(lat, (50, 90, 99, 100))
    within = 100 * float(np.mean(np.asarray(lat) < 1_000_000))
    return {"seen": len(lat), "p50": p50, "p90": p90, "p99": p99, "max": worst,
            "within 1 ms": within}  # fmt: skip


def latency(rate: float, n: int, poll: float, segment: str) -> dict[str, dict[str, float]]:
    """The Reader's and the raw reader's latencies on the same run."""
    rec = SharedMemoryRecorder(segment=segment)
    head, events = make_docs(n)
    desc = head[1][1]
    desc["data_keys"]["stamp"] = {"source": "clock", "dtype": "integer", "shape": []}
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, segment, str(n), str(poll)],
        stdout=subprocess.PIPE,
        text=True,
    )
    raw = None
    stamps: list[int] = []
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the reader did not start")
        for name, doc in head:
            rec(name, doc)
        raw = subprocess.Popen(
            [sys.executable, "-c", RAW, str(segment_path(segment)), str(poll),
             str(SEQ_OFFSET), str(TOTAL_OFFSET)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if raw.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw reader did not start")
        period = 1e9 / rate
        t0 = time.monotonic_ns()
        for i, doc in enumerate(events):
            due = t0 + i * period
            while (left := due - time.monotonic_ns()) > 0:
                if left > 300_000:
                    time.sleep((left - 200_000) / 1e9)
            doc["data"]["stamp"] = stamp = time.monotonic_ns()
            rec("event", doc)
            stamps.append(stamp)
        out = json.loads(proc.stdout.readline())
        time.sleep(0.05)  # the raw reader's last look
        raw_out, _ = raw.communicate(timeout=60)
        seen = json.loads(raw_out)
    finally:
        proc.wait(timeout=120)
        proc.stdout.close()
        if raw is not None and raw.poll() is None:
            raw.kill()
            raw.wait()
        rec.close()
    ours = summary(out["latencies"])
    ours["cpu"] = 100 * out["cpu"] / (n / rate)
    ours["load"] = os.getloadavg()[0]
    return {"Reader": ours, "raw": summary(raw_latencies(seen, stamps))}


def idle_cpu(segment: str) -> tuple[float, float]:
    """Per cent of a core a Reader's wait() uses before and after it goes idle."""
    with SharedMemoryRecorder(segment=segment), Reader(segment) as reader:
        out = []
        for seconds in (IDLE_AFTER, 3.0):
            cpu, wall = time.thread_time(), time.monotonic()
            reader.wait(timeout=seconds)
            out.append(100 * (time.thread_time() - cpu) / (time.monotonic() - wall))
    return out[0], out[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-events", type=int, default=2_000)
    ap.add_argument("--rates", default="100,1000", help="events per second, comma-separated")
    ap.add_argument("--poll", type=float, default=100e-6, help="the reader's poll interval, s")
    args = ap.parse_args(argv)
    segment = f"bsrec-bench-{os.getpid()}"
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")

    cost = writer_cost(args.events, args.repeat, segment)
    print(f"\n1. writer cost: {args.events} events of 10 scalars, best of {args.repeat} runs")
    print(f"{'call':28s} {'median µs':>10s} {'p99 µs':>10s} {'max µs':>10s}")
    for label, (p50, p99, worst) in cost.items():
        print(f"{label:28s} {p50:10.2f} {p99:10.2f} {worst:10.1f}")
    met = cost["ShmWriter.event"][0] < 5
    print(f"goal < 5 µs per event (writer median): {'met' if met else 'NOT met'}")

    print(f"\n2. latency, write -> a reader in another process (poll {args.poll * 1e6:g} µs);"
          " the raw reader (the anchor) in a third, on the same runs")  # fmt: skip
    print(f"{'events/s':>9s} {'reader':>7s} {'seen':>6s} {'p50 µs':>8s} {'p90 µs':>8s} "
          f"{'p99 µs':>9s} {'max µs':>9s} {'< 1 ms %':>9s} {'CPU %':>6s} {'load':>5s}")  # fmt: skip
    worst_p99 = 0.0
    ratios = []
    for rate in (float(r) for r in args.rates.split(",")):
        both = latency(rate, args.latency_events, args.poll, segment)
        worst_p99 = max(worst_p99, both["Reader"]["p99"])
        ratios.append((rate, both["Reader"]["p99"] / both["raw"]["p99"]))
        for label, r in both.items():
            extra = f"{r['cpu']:6.1f} {r['load']:5.2f}" if "cpu" in r else ""
            print(f"{rate:9g} {label:>7s} {r['seen']:6d} {r['p50']:8.1f} {r['p90']:8.1f} "
                  f"{r['p99']:9.1f} {r['max']:9.1f} {r['within 1 ms']:9.2f} {extra}")  # fmt: skip
    print("Reader p99 / raw p99: "
          + ", ".join(f"{ratio:.2f} at {rate:g} events/s" for rate, ratio in ratios))  # fmt: skip
    print(f"goal: a new point seen within 1 ms (p99): {'met' if worst_p99 < 1000 else 'NOT met'}")

    fast, idle = idle_cpu(segment)
    print("\n3. a waiting reader's CPU with no points coming (Reader.wait, this process)")
    print(f"first {IDLE_AFTER:g} s (poll {POLL * 1e6:g} µs): {fast:.1f} %; "
          f"then (idle_poll {IDLE_POLL * 1e6:g} µs): {idle:.1f} % of one core")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
