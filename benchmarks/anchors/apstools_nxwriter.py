"""The apstools NXWriter side of ``bench_nexus.py``: run in the anchor environment.

apstools >= 1.6 (which has ``NXWriter``) pins databroker < 2, so it cannot share
our environment; ``make bench-venv`` builds ``.venv-anchors`` for it and
``bench_nexus.py`` runs this script with that environment's Python. It reads
the documents ``bench_nexus.py`` wrote (a stream of pickled ``(name, doc)``
pairs), hands them to ``NXWriter.receiver`` as the RunEngine would, waits for
the writer thread NXWriter starts at the stop, and prints one JSON line.
It imports nothing from bluesky_recorders.

How NXWriter finds detector frames: ``resource`` and ``datum`` documents are
kept in ``NXWriter.externals`` (by uid and by datum_id); at the stop each
event's datum id leads to its resource, ``getResourceFile`` joins
``root``/``resource_path`` (spec ``AD_HDF5`` only) and the whole of
``/entry/data/data`` is read and copied into the NeXus file (lzf, shuffle,
fletcher32). No databroker handler is involved, so the documents of
``bluesky_recorders.testing.ad_hdf5_run`` are all it needs.

    .venv-anchors/bin/python benchmarks/anchors/apstools_nxwriter.py \\
        --docs FILE --out DIR [--mode time|memory] [--repeat 3] [--warmup FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from apstools.callbacks import NXWriter
from procstats import peak_kb, read_docs, reset_peak  # beside this script

STREAMS = "/entry/instrument/bluesky/streams"


def run_apstools(
    docs: Iterable[tuple[str, dict[str, Any]]], out: Path, *, check: bool = True
) -> dict[str, Any]:
    """Feed one run to a fresh NXWriter; wait for its file. Timings in seconds.

    ``check``: also open the file and count what it holds (see :func:`check_file`).
    """
    out.mkdir(parents=True, exist_ok=True)
    writer = NXWriter()
    writer.warn_on_missing_content = False  # the synthetic run has no APS metadata
    path = out / "apstools.hdf"
    writer.file_name = path
    before = set(threading.enumerate())
    t_stop = tc_stop = None
    t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
    for name, doc in docs:
        if name == "stop":
            t_stop, tc_stop = time.perf_counter(), time.thread_time()
        writer.receiver(name, doc)
    # NXWriter.writer() starts a thread at the stop and does not return it; its
    # name carries the target's (other new threads are ophyd's, which live on)
    for thread in set(threading.enumerate()) - before:
        if "_threaded_writer" in thread.name:
            thread.join()
    t1, c1 = time.perf_counter(), time.process_time()
    if t_stop is None:
        raise RuntimeError("the documents have no stop")
    return {
        "handover": t_stop - t0,
        "drain": t1 - t_stop,
        "total": t1 - t0,
        "cpu": c1 - c0,
        "caller_cpu": tc_stop - tc0,
        **(check_file(path) if check else {"path": str(path)}),
    }


def check_file(path: Path) -> dict[str, Any]:
    """Rows of the primary stream (and frames of the detector key) in NXWriter's file."""
    out: dict[str, Any] = {
        "path": str(path),
        "file_bytes": path.stat().st_size if path.exists() else 0,
    }
    if not path.exists():
        out["error"] = f"NXWriter wrote no file {path}"
        return out
    with h5py.File(path, "r") as f:
        primary = f.get(f"{STREAMS}/primary")
        if primary is None:
            out["error"] = "no primary stream in NXWriter's file"
            return out
        for key, group in primary.items():
            value = group.get("value") if isinstance(group, h5py.Group) else None
            if value is None:
                continue
            if value.ndim >= 3:
                out["frames"] = int(value.shape[0])
                out["frame_sum"] = int(np.asarray(value[-1], dtype="int64").sum())
                out["frame_key"] = key
            else:
                out["rows"] = max(out.get("rows", 0), int(value.shape[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", required=True, help="file of pickled (name, doc) pairs")
    ap.add_argument("--out", required=True, help="scratch directory for the files written")
    ap.add_argument("--mode", choices=("time", "memory"), default="time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", help="a small run fed once first, not measured")
    args = ap.parse_args(argv)
    out = Path(args.out)
    result: dict[str, Any] = {"contender": "apstools", "runs": []}
    import apstools

    result["version"] = apstools.__version__
    if args.warmup:  # first use imports more of apstools (1.5 s): not part of a run
        run_apstools(read_docs(args.warmup), out / "apstools-warmup")
        shutil.rmtree(out / "apstools-warmup", ignore_errors=True)
    if args.mode == "time":
        docs = list(read_docs(args.docs))
        gc.collect()
        gc.freeze()  # the loaded documents stay out of the collector's way
        for i in range(max(1, args.repeat)):
            target = out / f"apstools-{i}"
            result["runs"].append(run_apstools(docs, target))
            shutil.rmtree(target, ignore_errors=True)
    else:
        gc.collect()
        base, method = reset_peak()
        # streamed: one document in memory at a time, as from a RunEngine
        run = run_apstools(read_docs(args.docs), out / "apstools-memory", check=False)
        peak = peak_kb()  # before reading the file back
        run.update(check_file(Path(run["path"])))
        run["memory"] = {
            "baseline_mb": base / 1024,
            "peak_mb": peak / 1024,
            "growth_mb": (peak - base) / 1024,
            "method": method,
        }
        result["runs"].append(run)
        shutil.rmtree(out / "apstools-memory", ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # ophyd's pyepics callback threads, started on first use, are not daemons and
    # never end: leave without waiting for them
    os._exit(code)
