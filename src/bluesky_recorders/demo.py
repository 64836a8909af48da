"""``bsrec demo``: the whole chain once, on the simulated beamline, with no questions.

Starts the IOCs on a free loopback port, records a step scan, a 2-D grid scan
and a count with the area detector through the default recorder set, checks
what was written (the run log, and the catalog reading back the detector
images), prints where each recorder put its output and how to open it, and
stops the IOCs. Exit code 0 only if all of that worked.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

log = logging.getLogger("bluesky_recorders.demo")


def run_demo(*, config: str | Path | None = None, data_root: Path | None = None) -> int:
    from bluesky import RunEngine
    from bluesky.plans import count, grid_scan, scan
    from bluesky.utils import PersistentDict

    from .config import load_config, load_recorder_set
    from .metadata.device import attach_metadata
    from .preflight import install_preflight
    from .sim import SimBeamline, connect_all, make_beamline

    root = (data_root or Path("demo-data")).expanduser().absolute()
    settings = load_config(config, data_root=root).settings
    local = settings.path_map.translate("/detector-disk")
    if local == "/detector-disk":
        local = str(root / "detector-disk")
    print(f"bsrec demo: data root {root}")
    t0 = time.monotonic()
    sim = SimBeamline.start(root / ".sim", local_detector_root=local)
    rs = None
    try:
        print(f"  simulated beamline IOCs up on 127.0.0.1 port {sim.port} ({sim.addr_list})")
        sim.configure_client()
        devices = make_beamline(
            mini_prefix=sim.mini_prefix, ad_prefix=sim.ad_prefix, ioc_root=sim.ioc_root
        )
        connect_all(devices)
        metadata = _demo_metadata(sim, root)
        rs = load_recorder_set(
            config, data_root=root, path_map={sim.ioc_root: str(sim.local_detector_root)}
        )
        RE = RunEngine(PersistentDict(str(root / ".runengine-md")))
        RE.subscribe(rs)
        attach_metadata(RE, metadata)
        install_preflight(RE, rs.preflight)
        d = devices
        plans = [
            ("step scan", scan([d["ph_det"]], d["ph_mtr"], -1, 1, 11)),
            (
                "grid scan",
                grid_scan(
                    [d["ph_det"], d["slit_det"]], d["ph_mtr"], -1, 1, 3, d["slit_mtr"], -1, 1, 4
                ),
            ),
            ("area-detector count", count([d["ad_det"]], 5)),
        ]
        uids = []
        for label, plan in plans:
            print(f"\n== {label} ==")
            (uid,) = RE(plan)
            uids.append(uid)
        problems = _check(rs, uids, sim)
        _report(rs, uids)
    finally:
        if rs is not None:
            rs.close()
        sim.stop()
        print(f"\n  simulated beamline stopped; demo took {time.monotonic() - t0:.1f} s")
    if problems:
        print("\nbsrec demo FAILED:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nbsrec demo: all three runs recorded and read back.")
    return 0


#: What the demo puts into the metadata service, as `bsrec metadata set` would.
DEMO_METADATA = {
    "proposal.id": "demo-0001",
    "proposal.title": "bluesky-recorders demo",
    "pi.name": "Ada Lovelace",
    "pi.last_name": "Lovelace",
    "pi.email": "ada@example.org",
    "sample.name": "Si powder",
    "sample.formula": "Si",
    "beamline.id": "SIM-1",
}


def _demo_metadata(sim: Any, root: Path) -> Any:
    """Fill the simulated metadata service for the demo's experiment; return the device."""
    from .metadata.device import MetadataService
    from .metadata.model import set_dotted
    from .paths import experiment_dir

    service = MetadataService(sim.metadata_prefix, name="metadata")
    current = service.read_values()
    values = dict(current)
    for key, text in DEMO_METADATA.items():
        values = set_dotted(values, key, text)
    values = set_dotted(
        values,
        "data_directory",
        str(experiment_dir(root, when=time.time(), pi_last_name=DEMO_METADATA["pi.last_name"])),
    )
    service.write_values(
        {k: v for k, v in values.items() if k != "updated" and v != current.get(k)}
    )
    print(f"  metadata service {sim.metadata_prefix}: proposal demo-0001, PI Ada Lovelace")
    return service


def _check(rs: Any, uids: list[str], sim: Any) -> list[str]:
    """What went wrong, read back from what the recorders wrote."""
    problems = []
    records = {r.uid: r for r in rs.run_log.recent(50)} if rs.run_log else {}
    for uid in uids:
        rec = records.get(uid)
        if rec is None:
            problems.append(f"run {uid} is missing from the run log")
        elif rec.exit_status != "success":
            problems.append(f"run {uid} ended with {rec.exit_status}: {rec.reason}")
    catalog_rec = next((r for r in rs.recorders.values() if r.kind == "catalog"), None)
    if catalog_rec is not None:
        from .catalog import open_catalog

        cat = open_catalog(catalog_rec.directory, readable=rs.settings.path_map.local_roots)
        try:
            for uid in uids:
                if uid not in cat:
                    problems.append(f"run {uid} is not in the catalog {catalog_rec.directory}")
                    continue
                pi = cat[uid].start.get("experiment", {}).get("pi", {}).get("name")
                if pi != DEMO_METADATA["pi.name"]:
                    problems.append(f"run {uid}: the catalog's start document has PI {pi!r}")
            images = cat[uids[-1]].primary.read()["ad_det_image"]
            print(f"\n  catalog reads back the detector images: shape {tuple(images.shape)}")
            if images.shape[0] != 5:
                problems.append(f"expected 5 images from the catalog, got shape {images.shape}")
        except Exception as err:  # report, do not hide, what the catalog could not do
            problems.append(f"reading the catalog failed: {type(err).__name__}: {err}")
        finally:
            close = getattr(cat, "close", None)
            if callable(close):
                close()
    problems += _check_nexus(rs, uids)
    return problems


def _check_nexus(rs: Any, uids: list[str]) -> list[str]:
    """Each run has a NeXus file whose default plot and detector link read back."""
    import h5py

    if not any(r.kind == "nexus" for r in rs.recorders.values()):
        return []
    problems = []
    for uid in uids:
        paths = rs.artifacts(uid).get("nexus", [])
        if len(paths) != 1:
            problems.append(f"run {uid}: expected one NeXus file, got {paths}")
            continue
        with h5py.File(paths[0], "r") as f:
            if f["entry/exit_status"][()] != b"success" or "end_time" not in f["entry"]:
                problems.append(f"{paths[0]}: not a finished run")
            streams = f["entry/instrument/bluesky/streams/primary"]
            if "ad_det_image" in streams:
                images = streams["ad_det_image"]
                if not images.is_virtual or images.shape[0] != 5 or images[:].sum() == 0:
                    problems.append(f"{paths[0]}: the detector frames do not read back")
                else:
                    print(f"  NeXus file links the detector frames: shape {images.shape}")
    return problems


def _report(rs: Any, uids: list[str]) -> None:
    print("\nWhere each recorder put its output:")
    for uid in uids:
        for name, paths in rs.artifacts(uid).items():
            for path in paths:
                print(f"  {name:<8} {path}")
    catalog_rec = next((r for r in rs.recorders.values() if r.kind == "catalog"), None)
    bindir = Path(sys.executable).parent
    print("\nHow to open it:")
    print(f"  {bindir / 'bsrec'} runs --data-root {rs.settings.data_root}")
    if catalog_rec is not None:
        print(
            f"  {bindir / 'python'} -c "
            '"from bluesky_recorders.catalog import open_catalog; '
            f"cat = open_catalog('{catalog_rec.directory}'); print(cat[-1].primary.read())\""
        )
    if any(r.kind == "nexus" for r in rs.recorders.values()):
        print(
            f"  {bindir / 'python'} -c \"import h5py; d = h5py.File('<file.nxs>')['entry/data']; "
            "print(dict(d.attrs), {k: d[k][:] for k in d})\""
        )
        print("  or any NeXus viewer (silx view, NeXpy, PyMca): the default plot is entry/data")
    print(f"  detector files (HDF5, /entry/data/data): {rs.settings.path_map.local_roots}")
