"""The simulated beamline over real Channel Access: IOCs, devices, documents, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan

from bluesky_recorders.sim import cli
from bluesky_recorders.sim.manager import _pid_alive, find_free_port

pytestmark = pytest.mark.ioc

FRAMES = 2  # frames per point of the beamline fixture's area detectors


@pytest.fixture(scope="module")
def run_engine():
    return RunEngine({})


def _run(run_engine, plan):  # noqa: N803
    docs: list[tuple[str, dict]] = []
    run_engine(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def _of(docs, name):
    return [doc for n, doc in docs if n == name]


def _local(sim, ioc_path: str) -> Path:
    rel = os.path.relpath(ioc_path, sim.ioc_root)
    assert not rel.startswith(".."), ioc_path
    return sim.local_detector_root / rel


def test_ad_hdf5_count_emits_resource_datum_and_writes_frames(sim, beamline, run_engine):
    det = beamline["ad_det"]
    docs = _run(run_engine, count([det], 3))

    (resource,) = _of(docs, "resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["root"] == sim.ioc_root == "/detector-disk"
    assert resource["path_semantics"] == "posix"
    assert resource["resource_kwargs"] == {"frame_per_point": FRAMES}
    assert not resource["resource_path"].startswith("/")

    datums = _of(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"point_number": i} for i in range(3)]
    assert all(d["resource"] == resource["uid"] for d in datums)
    events = _of(docs, "event")
    assert [e["data"]["ad_det_image"] for e in events] == [d["datum_id"] for d in datums]
    assert all(e["filled"] == {"ad_det_image": False} for e in events)
    assert all(e["data"]["ad_det_stats_total"] > 0 for e in events)

    (descriptor,) = _of(docs, "descriptor")
    key = descriptor["data_keys"]["ad_det_image"]
    assert key["external"] == "FILESTORE:"
    assert key["shape"] == [FRAMES, 48, 64]
    assert key["dtype_numpy"] == "<u2"
    assert "ad_det_stats_total" in descriptor["hints"]["ad_det"]["fields"]

    local = sim.local_detector_root / resource["resource_path"]
    assert local.is_file()
    with h5py.File(local, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (3 * FRAMES, 48, 64)
        assert data.dtype == np.uint16
        assert data.chunks == (1, 48, 64)
        assert data[...].max() > 0


def test_stream_detector_emits_stream_resource_and_datum(sim, beamline, run_engine):
    det = beamline["ad_stream_det"]
    docs = _run(run_engine, count([det], 3))

    names = [n for n, _ in docs]
    assert "resource" not in names and "datum" not in names
    (sres,) = _of(docs, "stream_resource")
    assert sres["mimetype"] == "application/x-hdf5"
    assert sres["uri"].startswith("file://localhost/detector-disk/")
    assert sres["data_key"] == "ad_stream_det_image"
    assert sres["parameters"]["dataset"] == "/entry/data/data"
    assert sres["parameters"]["chunk_shape"] == [1, 48, 64]

    sdatums = _of(docs, "stream_datum")
    assert [(d["indices"]["start"], d["indices"]["stop"]) for d in sdatums] == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    assert [(d["seq_nums"]["start"], d["seq_nums"]["stop"]) for d in sdatums] == [
        (1, 2),
        (2, 3),
        (3, 4),
    ]
    assert all(d["stream_resource"] == sres["uid"] for d in sdatums)
    (descriptor,) = _of(docs, "descriptor")
    assert descriptor["data_keys"]["ad_stream_det_image"]["external"] == "STREAM:"
    assert len(_of(docs, "event")) == 3

    local = _local(sim, sres["uri"][len("file://localhost") :])
    with h5py.File(local, "r") as f:
        assert f["/entry/data/data"].shape == (3 * FRAMES, 48, 64)


def test_scan_pinhole(beamline, run_engine):
    motor, det = beamline["ph_mtr"], beamline["ph_det"]
    assert motor.hints == {"fields": ["ph_mtr"]}
    docs = _run(run_engine, scan([det, beamline["beam_current"]], motor, -10, 10, 11))
    events = _of(docs, "event")
    assert len(events) == 11
    positions = [e["data"]["ph_mtr"] for e in events]
    np.testing.assert_allclose(positions, np.linspace(-10, 10, 11), atol=1e-6)
    counts = np.array([e["data"]["ph_det"] for e in events])
    assert counts.argmax() in (4, 5, 6)  # the pinhole is centred at 0
    assert counts[5] > 3 * counts[0]
    assert all(400 < e["data"]["beam_current"] < 600 for e in events)


def test_dot_motors_move(beamline):
    x = beamline["dot_mtrx"]
    x.set(3.5).wait(5)
    assert x.position == pytest.approx(3.5)
    x.set(0).wait(5)


def test_ioc_refuses_path_outside_root(sim, beamline):
    det = beamline["ad_det"]
    det.file_path.set("/etc/").wait(5)
    try:
        assert det.write_status.get() == 1
        assert "outside the IOC root" in det.write_message.get()
        assert det.file_path_exists.get() == 0
        det.capture.set(1).wait(5)
        assert det.capture_rbv.get() == 0
        assert "Capture refused" in det.write_message.get()
    finally:
        det.file_path.set(sim.ioc_root + "/").wait(5)
    assert det.write_status.get() == 0

    from bluesky_recorders.sim.devices import SimADHDF5Detector

    wrong = SimADHDF5Detector(sim.ad_prefix, name="wrong", ioc_root="/not-the-root")
    wrong.wait_for_connection(timeout=5)
    with pytest.raises(RuntimeError, match="refused to capture.*outside the IOC root"):
        wrong.stage()


def test_ioc_never_overwrites(sim, beamline):
    det = beamline["ad_det"]
    local_dir = sim.local_detector_root / "overwrite"
    local_dir.mkdir(parents=True, exist_ok=True)
    existing = local_dir / "dup_000007.h5"
    existing.write_bytes(b"precious")
    det.file_path.set(f"{sim.ioc_root}/overwrite/").wait(5)
    det.file_name.set("dup").wait(5)
    det.file_number.set(7).wait(5)
    det.capture.set(1).wait(5)
    assert det.capture_rbv.get() == 0
    assert det.write_status.get() == 1
    assert "exists" in det.write_message.get()
    assert existing.read_bytes() == b"precious"


def test_cli_start_status_stop(tmp_path, capsys):
    state = tmp_path / "state"
    assert cli.main(["start", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "export EPICS_CA_SERVER_PORT=" in out
    pids = []
    try:
        assert (state / "sim.json").is_file()
        assert cli.main(["sim", "status", "--state-dir", str(state)]) == 0
        assert cli.main(["start", "--state-dir", str(state)]) == 0
        assert "Already running" in capsys.readouterr().out
        from bluesky_recorders.sim.manager import SimBeamline

        pids = [i["pid"] for i in SimBeamline.load(state).state["iocs"].values()]
        assert (state / "detector-disk").is_dir()
    finally:
        assert cli.main(["stop", "--state-dir", str(state)]) == 0
    assert cli.main(["status", "--state-dir", str(state)]) == 1
    assert not (state / "sim.json").exists()
    assert pids and not any(_pid_alive(pid) for pid in pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unreachable_pv_fails_fast_and_clearly(tmp_path):
    port = find_free_port()  # nothing serves CA here
    script = textwrap.dedent(f"""
        from bluesky_recorders.sim.devices import configure_ca_env, connect_all, make_beamline
        configure_ca_env({port})
        connect_all(make_beamline(), timeout=2)
    """)
    # connect_all(timeout=2) must give up by itself: a hang is a TimeoutExpired failure here
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "CAConnectionError" in proc.stderr
    assert "mini:ph:mtr" in proc.stderr and "SIMDET:cam1:Acquire" in proc.stderr
    assert "EPICS_CA_ADDR_LIST=127.0.0.1" in proc.stderr
    assert f"EPICS_CA_SERVER_PORT={port}" in proc.stderr


def test_configure_ca_env_works_after_ophyd_made_its_context(sim):
    """`import ophyd` makes the caproto context when caproto is ophyd's default layer
    (no pyepics installed): the beamline must still be reachable afterwards."""
    code = (
        "import ophyd; ophyd.set_cl('caproto'); "
        "from ophyd import EpicsSignal; EpicsSignal('nobody:home', name='x'); "
        "from caproto.threading import pyepics_compat as p; "
        "assert p._make_context.cache_info().currsize == 1; "
        "from bluesky_recorders.sim import SimBeamline, connect_all, make_beamline; "
        f"sim = SimBeamline.load({str(sim.state_dir)!r}); sim.configure_client(); "
        "d = make_beamline(mini_prefix=sim.mini_prefix, ad_prefix=sim.ad_prefix); "
        "connect_all(d); print('POS', d['ph_mtr'].position)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "POS" in out.stdout
