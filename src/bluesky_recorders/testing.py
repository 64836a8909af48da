"""Example document streams and helpers for testing recorders (ours and yours).

Every function returns a list of ``(name, doc)`` pairs made with event-model's
composers, so the documents are valid by construction. The ones with detector
data also write the detector file, as a detector machine would.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import event_model
import numpy as np

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "CHROMIUM_PAGE_ONLY_ARGS",
    "Docs",
    "ad_hdf5_run",
    "collect",
    "feed",
    "realruns",
    "realruns_dir",
    "scalar_run",
    "stream_resource_run",
    "write_detector_file",
]

Docs = list[tuple[str, dict[str, Any]]]

#: Debian's chromium, which the browser tests and bench_feed.py drive with Playwright.
CHROMIUM = "/usr/bin/chromium"
#: Headless, and never reaching for outside addresses (without the background-networking
#: flags Chromium tries Google's hosts at every start).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Headless chromium 156 keeps the omnibox's suggestion popup (a WebUI page of the
#: browser's own, never shown) drawing a frame with every frame of the page: a page
#: following fast runs cost the browser 156.5 ms of CPU a run with it, 87.5 ms without
#: (a windowed chromium on Xvfb: 100.0 ms, its popup idle). For a chromium started
#: directly, as a user starts one, with the page's address (bench_feed.py's viewer): not
#: with Playwright, which passes a --disable-features list of its own that a second one
#: would replace (Chromium keeps the last).
CHROMIUM_PAGE_ONLY_ARGS = [
    *CHROMIUM_ARGS,
    "--disable-features=WebUIOmniboxAimPopup,WebUIOmniboxFullPopup,WebUIOmniboxPopup",
]


def collect() -> tuple[Docs, Callable[[str, dict[str, Any]], None]]:
    """A list and a callback that appends ``(name, doc)`` to it."""
    docs: Docs = []

    def cb(name: str, doc: dict[str, Any]) -> None:
        docs.append((name, doc))

    return docs, cb


def feed(recorder: Callable[[str, Any], Any], docs: Iterable[tuple[str, Any]]) -> None:
    """Call ``recorder(name, doc)`` for every pair."""
    for name, doc in docs:
        recorder(name, doc)


def scalar_run(
    num: int = 5,
    *,
    pages: bool = False,
    baseline: bool = True,
    scan_id: int = 1,
    plan_name: str = "scan",
    exit_status: str = "success",
    motor: str = "motor",
    detectors: tuple[str, ...] = ("det",),
) -> Docs:
    """A 1-D step scan of ``motor`` with scalar ``detectors``, plus a baseline stream."""
    t0 = time.time()
    run = event_model.compose_run(
        metadata={
            "scan_id": scan_id,
            "plan_name": plan_name,
            "plan_args": {"num": num},
            "num_points": num,
            "motors": [motor],
            "detectors": list(detectors),
            "hints": {"dimensions": [[[motor], "primary"]]},
        }
    )
    docs: Docs = [("start", dict(run.start_doc))]
    keys = {
        motor: {
            "source": f"SIM:{motor}",
            "dtype": "number",
            "shape": [],
            "units": "mm",
            "precision": 3,
            "object_name": motor,
        }
    }
    for d in detectors:
        keys[d] = {
            "source": f"SIM:{d}",
            "dtype": "number",
            "shape": [],
            "units": "counts",
            "object_name": d,
        }
    primary = run.compose_descriptor(
        data_keys=keys,
        name="primary",
        object_keys={k: [k] for k in keys},
        hints={k: {"fields": [k]} for k in keys},
    )
    if baseline:
        bl = run.compose_descriptor(
            data_keys={
                "energy": {"source": "SIM:energy", "dtype": "number", "shape": [], "units": "keV"}
            },
            name="baseline",
        )
        docs.append(("descriptor", dict(bl.descriptor_doc)))
        docs.append(
            (
                "event",
                dict(bl.compose_event(data={"energy": 8.0}, timestamps={"energy": t0}, seq_num=1)),
            )
        )
    docs.append(("descriptor", dict(primary.descriptor_doc)))
    positions = np.linspace(-1, 1, num)
    rows = []
    for x in positions:
        data: dict[str, Any] = {motor: float(x)}
        for j, d in enumerate(detectors):
            data[d] = float(np.exp(-(x**2)) * 1000 + j)
        rows.append(data)
    if pages and num:
        page = primary.compose_event_page(
            data={k: [r[k] for r in rows] for k in rows[0]},
            timestamps={k: [t0 + i for i in range(num)] for k in rows[0]},
            seq_num=list(range(1, num + 1)),
        )
        docs.append(("event_page", dict(page)))
    else:
        for i, data in enumerate(rows):
            ev = primary.compose_event(
                data=data, timestamps=dict.fromkeys(data, t0 + i), seq_num=i + 1
            )
            docs.append(("event", dict(ev)))
    if baseline:
        docs.append(
            (
                "event",
                dict(bl.compose_event(data={"energy": 8.0}, timestamps={"energy": t0}, seq_num=2)),
            )
        )
    docs.append(("stop", dict(run.compose_stop(exit_status=exit_status))))
    return docs


def write_detector_file(
    path: str | os.PathLike[str], frames: int, shape: tuple[int, int] = (8, 10)
) -> None:
    """Write ``frames`` frames into ``/entry/data/data``, as the AD HDF5 plugin does."""
    import h5py

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(frames * shape[0] * shape[1], dtype="uint16").reshape(frames, *shape)
    with h5py.File(path, "x") as f:
        f.create_dataset("/entry/data/data", data=data, chunks=(1, *shape))


def ad_hdf5_run(
    detector_dir: str | os.PathLike[str],
    num: int = 3,
    *,
    frames_per_point: int = 2,
    ioc_root: str | None = None,
    shape: tuple[int, int] = (8, 10),
    datum_pages: bool = False,
) -> Docs:
    """A count with an area detector announced by ``AD_HDF5`` resource/datum.

    The file is written under ``detector_dir``; the resource names it under
    ``ioc_root`` when given (an IOC-side path, to exercise path maps).
    """
    detector_dir = Path(detector_dir)
    rel = f"img_{time.time_ns()}.h5"
    write_detector_file(detector_dir / rel, num * frames_per_point, shape)
    run = event_model.compose_run(
        metadata={"scan_id": 2, "plan_name": "count", "num_points": num, "detectors": ["cam"]}
    )
    docs: Docs = [("start", dict(run.start_doc))]
    res = run.compose_resource(
        spec="AD_HDF5",
        root=ioc_root or str(detector_dir),
        resource_path=rel,
        resource_kwargs={"frame_per_point": frames_per_point},
    )
    docs.append(("resource", dict(res.resource_doc)))
    desc = run.compose_descriptor(
        data_keys={
            "cam_image": {
                "source": "SIM:cam",
                "dtype": "array",
                "shape": [frames_per_point, *shape],
                "external": "FILESTORE:",
            },
            "cam_total": {"source": "SIM:cam:total", "dtype": "number", "shape": []},
        },
        name="primary",
        object_keys={"cam": ["cam_image", "cam_total"]},
    )
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    datums = [res.compose_datum(datum_kwargs={"point_number": i}) for i in range(num)]
    if datum_pages:
        docs.append(("datum_page", dict(event_model.pack_datum_page(*datums))))
    for i, datum in enumerate(datums):
        if not datum_pages:
            docs.append(("datum", dict(datum)))
        ev = desc.compose_event(
            data={"cam_image": datum["datum_id"], "cam_total": float(i)},
            timestamps={"cam_image": time.time(), "cam_total": time.time()},
            filled={"cam_image": False},
            seq_num=i + 1,
        )
        docs.append(("event", dict(ev)))
    docs.append(("stop", dict(run.compose_stop())))
    return docs


def stream_resource_run(
    detector_dir: str | os.PathLike[str],
    num: int = 3,
    *,
    shape: tuple[int, int] = (8, 10),
    ioc_root: str | None = None,
) -> Docs:
    """A count whose detector is announced by ``stream_resource``/``stream_datum``."""
    detector_dir = Path(detector_dir)
    rel = f"stream_{time.time_ns()}.h5"
    write_detector_file(detector_dir / rel, num, shape)
    run = event_model.compose_run(metadata={"scan_id": 3, "plan_name": "count", "num_points": num})
    docs: Docs = [("start", dict(run.start_doc))]
    desc = run.compose_descriptor(
        data_keys={
            "cam_image": {
                "source": "SIM:cam",
                "dtype": "array",
                "shape": list(shape),
                "external": "STREAM:",
            }
        },
        name="primary",
    )
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    root = ioc_root or str(detector_dir)
    sres = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{root}/{rel}",
        data_key="cam_image",
        parameters={"dataset": "/entry/data/data", "chunk_shape": [1, *shape]},
    )
    docs.append(("stream_resource", dict(sres.stream_resource_doc)))
    for i in range(num):
        sd = sres.compose_stream_datum(indices={"start": i, "stop": i + 1})
        sd = dict(sd)
        sd["descriptor"] = desc.descriptor_doc["uid"]
        sd["seq_nums"] = {"start": i + 1, "stop": i + 2}
        docs.append(("stream_datum", sd))
        ev = desc.compose_event(data={}, timestamps={}, seq_num=i + 1)
        docs.append(("event", dict(ev)))
    docs.append(("stop", dict(run.compose_stop())))
    return docs


def realruns_dir() -> Path:
    """Where the recorded APS streams are: ``$BSREC_REALRUNS`` or ``../shared/realruns``."""
    env = os.environ.get("BSREC_REALRUNS")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "realruns"
        if candidate.is_dir():
            return candidate
    return Path("../shared/realruns")


def realruns(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(name, doc)`` pairs of one recorded stream, e.g. ``realruns("usaxs.json.gz")``."""
    with gzip.open(realruns_dir() / name, "rt") as fh:
        yield from ((n, d) for n, d in json.load(fh))
