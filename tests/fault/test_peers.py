"""Peers failing for real: one part of the beamline dies, the other recorders carry on and
the RunEngine is clean for the next run.

- The metadata IOC is killed (SIGKILL) in the middle of a run, then restarted.
- The area detector's IOC is killed in the middle of a run, leaving its HDF5 file open for
  writing; its file disappears in the middle of a run; its file is still held open by its
  writer when the run's NeXus file is finished.
- bluesky's 0MQ proxy is killed while ``bsrec record`` listens, then restarted on its ports.
- The console's pipe is closed by its reader (``head -n 1``).
- Live-feed clients stall (WebSocket and Server-Sent Events) during a real scan.
- A recorder raises on one document, under the policies ``abort`` and ``warn``.

The IOCs are this module's own simulated beamline (its own prefixes, ports and folders;
the session's ``sim`` is never touched): the CA address list of this process is extended
with it for the module and put back afterwards.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import psutil
import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.plans import count, scan
from ophyd import Component, Device, Signal
from ophyd.sim import det, motor

from bluesky_recorders import FileRecorder, RecorderError, RecorderSet, RunWriter
from bluesky_recorders.console import ConsoleRecorder
from bluesky_recorders.epics import CLIENT_ENV_KEYS
from bluesky_recorders.feed import FeedRecorder
from bluesky_recorders.jsonl import JsonlRecorder, load_documents
from bluesky_recorders.metadata.device import (
    MetadataService,
    MetadataUnavailableError,
    attach_metadata,
)
from bluesky_recorders.metadata.model import empty_snapshot
from bluesky_recorders.nexus import NexusRecorder
from bluesky_recorders.nexus_layout import decode_rows
from bluesky_recorders.runlog import RunLog
from bluesky_recorders.sim.devices import configure_ca_env, connect_all, make_beamline
from bluesky_recorders.sim.manager import SimBeamline
from bluesky_recorders.spec import SpecRecorder
from bluesky_recorders.testing import collect
from procs import free_port, wait_for
from readers import spec_text_problems

BIN = Path(sys.executable).parent
STREAMS = "entry/instrument/bluesky/streams"
EXTERNAL = "entry/instrument/bluesky/external"
EXPERIMENT = {
    "proposal:id": "GUP-PEER",
    "pi:name": "Ada Peer",
    "pi:last_name": "Peer",
    "sample:name": "LaB6",
}

pytestmark = pytest.mark.ioc


# -- this module's own simulated beamline ---------------------------------------------------


@pytest.fixture(scope="module")
def peer_sim(tmp_path_factory):
    """A SimBeamline of our own (prefixes ``PEER:...``): ours to kill and restart."""
    root = tmp_path_factory.mktemp("peer-sim")
    saved = {key: os.environ.get(key) for key in CLIENT_ENV_KEYS}
    with SimBeamline.start(
        root / "state",
        root / "detector-disk",
        mini_prefix="PEER:mini:",
        ad_prefix="PEER:AD:",
        metadata_prefix="PEER:MD:",
    ) as sim:
        # this process's CA clients reach its IOCs too (the session's stay in the list)
        addresses = " ".join(a for a in (saved["EPICS_CA_ADDR_LIST"], sim.addr_list) if a)
        port = int(saved["EPICS_CA_SERVER_PORT"] or sim.port)
        configure_ca_env(port, addr_list=addresses)
        try:
            yield sim
        finally:
            if saved["EPICS_CA_ADDR_LIST"] is not None:
                configure_ca_env(port, addr_list=saved["EPICS_CA_ADDR_LIST"])
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def peer_devices(peer_sim):
    """Its devices, connected; the area detector takes 2 frames a point."""
    devices = make_beamline(
        mini_prefix=peer_sim.mini_prefix,
        ad_prefix=peer_sim.ad_prefix,
        ioc_root=peer_sim.ioc_root,
        frames_per_point=2,
    )
    connect_all(devices, timeout=15)
    yield devices
    for device in devices.values():
        device.destroy()


@pytest.fixture
def sim_up(peer_sim):
    """The beamline, every IOC running again after the test (whatever it killed)."""
    yield peer_sim
    for name, state in peer_sim.status().items():
        if state != "running":
            _restart(peer_sim, name)


def _kill(sim: SimBeamline, name: str) -> None:
    """SIGKILL the IOC ``name``, and wait until it is gone."""
    os.kill(sim.state["iocs"][name]["pid"], signal.SIGKILL)
    wait_for(lambda: sim.status()[name] == "stale", 10, f"IOC {name!r} to die")


def _restart(sim: SimBeamline, name: str) -> None:
    """Start the IOC ``name`` again with its command line and port; wait until it answers."""
    sim._launch(name, sim.state["iocs"][name]["argv"])
    sim._write_state()
    sim._wait_ready(30)


# -- plans, recorders and what they wrote -------------------------------------------------


def _steps(mtr, dets, points, *, at=None, action=None, stage=(), after_run=None):
    """A step scan of ``points`` points; ``action()`` runs before point ``at`` (0-based)
    and ``after_run()`` after the run closed, while ``stage`` is still staged."""

    def body():
        for i in range(points):
            if i == at:
                action()
            yield from bps.mv(mtr, 0.1 * i)
            yield from bps.trigger_and_read([*dets, mtr])

    def run_then():
        yield from bpp.run_wrapper(body(), md={"plan_name": "peer_steps"})
        if after_run is not None:
            after_run()

    return (yield from bpp.stage_wrapper(run_then(), list(stage)))


def _file_recorders(data_root: Path, **nexus_options: Any) -> list:
    return [
        NexusRecorder(data_root=data_root, **nexus_options),
        SpecRecorder(data_root=data_root),
        JsonlRecorder(data_root=data_root),
    ]


def _files(rs: RecorderSet, uid: str) -> dict[str, str]:
    """Recorder name -> the one file it wrote for the run."""
    out = {}
    for name, paths in rs.artifacts(uid).items():
        (out[name],) = paths
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nexus(path: str) -> dict[str, Any]:
    """What a NeXus file says about its run."""
    with h5py.File(path, "r") as f:
        entry = f["entry"]

        def text(key: str) -> str | None:
            return _text(entry[key][()]) if key in entry else None

        return {
            "exit_status": text("exit_status"),
            "reason": text("reason"),
            "end_time": "end_time" in entry,
            "proposal": text("experiment_identifier"),
            "seq_num": f[f"{STREAMS}/primary/seq_num"][()].tolist(),
        }


def _spec_scan(path: str, uid: str) -> tuple[int, str | None]:
    """(data rows, exit status) of the run in a SPEC file, which must be well formed; a run
    interrupted by another one goes on in a continuation scan: the rows of both count."""
    raw = Path(path).read_bytes()
    assert spec_text_problems(raw) == [], path
    blocks = [b for b in raw.decode().split("\n#S ")[1:] if f"#C uid = {uid}\n" in b]
    assert blocks, f"no scan of run {uid} in {path}"
    rows = sum(1 for b in blocks for ln in b.splitlines()[1:] if ln and not ln.startswith("#"))
    status = re.search(r"exit_status = (\w+)", blocks[-1])
    return rows, status.group(1) if status else None


def _jsonl(path: str) -> tuple[list[str], dict[str, Any] | None]:
    """(document names, the stop document or None) of a JSON-lines file."""
    pairs, problems = load_documents(path)
    assert problems == []
    stops = [doc for name, doc in pairs if name == "stop"]
    return [name for name, _ in pairs], stops[-1] if stops else None


def _assert_complete(rs: RecorderSet, uid: str, points: int, status: str = "success") -> dict:
    """The run's NeXus, SPEC and JSON-lines files hold ``points`` points and its end."""
    files = _files(rs, uid)
    nexus = _nexus(files["nexus"])
    assert nexus["exit_status"] == status and nexus["end_time"], nexus
    assert nexus["seq_num"] == list(range(1, points + 1))
    assert _spec_scan(files["spec"], uid) == (points, status)
    names, stop = _jsonl(files["jsonl"])
    assert stop is not None and stop["exit_status"] == status
    assert stop["num_events"].get("primary", 0) == points
    return files


def _docs_of(docs: list, uid: str) -> dict[str, Any]:
    """The start and stop documents of run ``uid`` among the collected ones."""
    out = {}
    for name, doc in docs:
        if name == "start" and doc["uid"] == uid:
            out["start"] = doc
        elif name == "stop" and doc["run_start"] == uid:
            out["stop"] = doc
    return out


def _run_bounded(RE, plan, timeout: float = 120.0):
    """``RE(plan)`` on a thread, waited for at most ``timeout`` s: (uids, error)."""
    result: dict[str, Any] = {}

    def target():
        try:
            result["uids"] = RE(plan)
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=target, name="peer-RE", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the RunEngine hangs: still running after {timeout} s"
    return result.get("uids"), result.get("error")


# -- 1. the metadata IOC ------------------------------------------------------------------


def _answers(service: MetadataService) -> bool:
    try:
        service.snapshot(timeout=1.0)
    except Exception:
        return False
    return True


def test_metadata_ioc_killed_mid_run(sim_up, peer_devices, tmp_path, caplog):
    """The run goes on with the metadata read at its start; the next starts 'unavailable'
    with a WARNING, or is refused with require_metadata=True; after a restart, metadata."""
    sim = sim_up
    service = MetadataService(sim.metadata_prefix, name="metadata")
    service.wait_for_connection(timeout=10)
    service.write_values(EXPERIMENT)
    RE = RunEngine({})
    detach = attach_metadata(RE, service, timeout=1.0)
    data = tmp_path / "data"
    rs = RecorderSet(_file_recorders(data), run_log=None)
    docs, keep = collect()
    RE.subscribe(rs)
    RE.subscribe(keep)
    mtr, dets = peer_devices["ph_mtr"], [peer_devices["beam_current"]]
    try:
        # the IOC dies before the third point
        (uid,) = RE(_steps(mtr, dets, 5, at=2, action=lambda: _kill(sim, "metadata")))
        assert sim.status()["metadata"] == "stale"
        run = _docs_of(docs, uid)
        assert run["start"]["metadata_status"] == "ok"
        assert run["start"]["experiment"]["proposal_id"] == "GUP-PEER"
        assert run["stop"]["num_events"] == {"primary": 5, "metadata": 1}
        files = _assert_complete(rs, uid, 5)
        assert _nexus(files["nexus"])["proposal"] == "GUP-PEER"
        assert Path(files["nexus"]).parent.name == "peer"  # the experiment's folder (PI)

        # the next run: no metadata, said loudly, recorded in full
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders.metadata"):
            (uid,) = RE(_steps(mtr, dets, 3))
        run = _docs_of(docs, uid)
        assert run["start"]["metadata_status"] == "unavailable"
        assert run["start"]["experiment"] == empty_snapshot()
        (warning,) = [r for r in caplog.records if r.name == "bluesky_recorders.metadata"]
        assert warning.levelno == logging.WARNING
        assert "METADATA UNAVAILABLE" in warning.getMessage()
        assert f"{sim.metadata_prefix}proposal:id" in warning.getMessage()
        assert run["stop"]["num_events"] == {"primary": 3}  # no metadata stream
        files = _assert_complete(rs, uid, 3)
        assert _nexus(files["nexus"])["proposal"] is None
        assert Path(files["nexus"]).parent.name == "commissioning"

        # the same with require_metadata=True: refused before it starts, nothing written
        detach()
        detach = attach_metadata(RE, service, timeout=1.0, require_metadata=True)
        seen, written = len(docs), sorted(data.rglob("*"))
        with pytest.raises(MetadataUnavailableError) as info:
            RE(_steps(mtr, dets, 3))
        assert "run refused" in str(info.value) and sim.metadata_prefix in str(info.value)
        assert len(docs) == seen and sorted(data.rglob("*")) == written
        assert RE.state == "idle"

        # the IOC is back (its values kept in its state file): runs get metadata again
        _restart(sim, "metadata")
        wait_for(lambda: _answers(service), 60, "the metadata service to answer again")
        (uid,) = RE(_steps(mtr, dets, 3))
        run = _docs_of(docs, uid)
        assert run["start"]["metadata_status"] == "ok"
        assert run["start"]["experiment"]["proposal_id"] == "GUP-PEER"
        assert run["stop"]["num_events"] == {"primary": 3, "metadata": 1}
        files = _assert_complete(rs, uid, 3)
        assert _nexus(files["nexus"])["proposal"] == "GUP-PEER"
    finally:
        detach()
        rs.close()
        service.destroy()


# -- 2. the area detector's IOC and its file ------------------------------------------------


def _local_file(sim: SimBeamline, ad) -> Path:
    """Where the detector file the IOC writes now is on this machine."""
    return sim.local_detector_root / posixpath.relpath(ad.ioc_file, sim.ioc_root)


def _frames(path: Path, *, swmr: bool = False) -> np.ndarray:
    with h5py.File(path, "r", locking=False, swmr=swmr) as f:
        return f["/entry/data/data"][()]


def _connects(devices: list) -> bool:
    try:
        connect_all(devices, timeout=1.0)
    except Exception:
        return False
    return True


def _ad_recorders(sim: SimBeamline, data_root: Path) -> RecorderSet:
    return RecorderSet(
        _file_recorders(data_root, path_map={sim.ioc_root: str(sim.local_detector_root)}),
        run_log=None,
    )


def test_area_detector_ioc_killed_mid_run(sim_up, peer_devices, tmp_path):
    """The run fails at once naming the IOC's PV; every file ends the run ('fail'); the
    detector file, left open for writing, is linked; after a restart the next run is whole."""
    sim = sim_up
    ad, mtr = peer_devices["ad_det"], peer_devices["ph_mtr"]
    dets = [ad, peer_devices["beam_current"]]
    rs = _ad_recorders(sim, tmp_path / "data")
    RE = RunEngine({}, context_managers=[])  # called on a thread: no SIGINT handler
    docs, keep = collect()
    RE.subscribe(rs)
    RE.subscribe(keep)
    det_files: list[Path] = []

    def kill_ad():
        det_files.append(_local_file(sim, ad))
        _kill(sim, "ad")

    try:
        uids, error = _run_bounded(RE, _steps(mtr, dets, 5, at=2, action=kill_ad, stage=[ad]))
        assert uids is None and error is not None
        assert sim.ad_prefix in str(error)  # names the PV that could not be reached
        assert RE.state == "idle"
        (start,) = [d for n, d in docs if n == "start"]
        stop = _docs_of(docs, start["uid"])["stop"]
        assert stop["exit_status"] == "fail" and f"{sim.ad_prefix}HDF1:" in stop["reason"]
        files = _assert_complete(rs, start["uid"], 2, status="fail")
        names, _ = _jsonl(files["jsonl"])
        assert names.count("resource") == 1 and names.count("datum") == 2
        assert _nexus(files["nexus"])["reason"] == stop["reason"]

        # the IOC died with its file open: HDF5 says so to every reader but a SWMR one
        (det_file,) = det_files
        with pytest.raises(OSError, match="already open for write"):
            _frames(det_file)
        frames = _frames(det_file, swmr=True)  # the 2 points taken: 4 frames
        assert frames.shape[0] == 4
        with h5py.File(files["nexus"], "r") as f:
            vds = f[f"{STREAMS}/primary/ad_det_image"]
            assert vds.is_virtual and vds.shape == (2, 2, *frames.shape[1:])
            refs = f[f"{EXTERNAL}/primary/ad_det_image"]
            assert decode_rows(refs["path"][()]) == [str(det_file)] * 2
            with pytest.raises(OSError, match="already open for write"):
                vds[()]  # through the link too, until the flags are cleared
        # the repair HDF5 documents for a crashed writer's file: clear the flags, and set
        # the end of allocation the writer never wrote back to the end of the file
        subprocess.run(
            ["h5clear", "-s", "--increment=0", str(det_file)], check=True, capture_output=True
        )
        with h5py.File(files["nexus"], "r") as f:
            got = f[f"{STREAMS}/primary/ad_det_image"][()]
        np.testing.assert_array_equal(got, frames.reshape(2, 2, *frames.shape[1:]))

        # the IOC is back: the next run is whole, its detector file still open for writing
        # by the IOC when the NeXus file is finished (unstaging closes it after the run)
        _restart(sim, "ad")
        wait_for(lambda: _connects([ad]), 60, "the area detector to reconnect")
        held: list[bool] = []

        def still_open():
            try:
                _frames(_local_file(sim, ad))
            except OSError as err:
                held.append("already open for write" in str(err))

        uids, error = _run_bounded(RE, _steps(mtr, dets, 3, stage=[ad], after_run=still_open))
        assert error is None, error
        assert held == [True]
        files = _assert_complete(rs, uids[0], 3)
        with h5py.File(files["nexus"], "r") as f:
            got = f[f"{STREAMS}/primary/ad_det_image"][()]
        np.testing.assert_array_equal(got, _frames(_local_file(sim, ad)).reshape(got.shape))
    finally:
        rs.close()


def test_detector_file_gone_mid_run(sim_up, peer_devices, tmp_path, caplog):
    """The run and every file complete; the NeXus recorder names the missing file in a
    WARNING and links it by the descriptor's shape (fill values); the next run is whole."""
    sim = sim_up
    ad, mtr = peer_devices["ad_det"], peer_devices["ph_mtr"]
    dets = [ad, peer_devices["beam_current"]]
    rs = _ad_recorders(sim, tmp_path / "data")
    RE = RunEngine({}, context_managers=[])
    docs, keep = collect()
    RE.subscribe(rs)
    RE.subscribe(keep)
    gone: list[Path] = []

    def remove():  # the IOC goes on writing into its open (now nameless) file
        gone.append(_local_file(sim, ad))
        gone[0].unlink()

    try:
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
            uids, error = _run_bounded(RE, _steps(mtr, dets, 4, at=2, action=remove, stage=[ad]))
        assert error is None, error
        files = _assert_complete(rs, uids[0], 4)
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "bluesky_recorders.nexus" and "cannot read detector file" in r.getMessage()
        ]
        assert len(warned) == 1 and str(gone[0]) in warned[0], warned
        (desc,) = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
        shape = desc["data_keys"]["ad_det_image"]["shape"]  # [frames, y, x]
        with h5py.File(files["nexus"], "r") as f:
            vds = f[f"{STREAMS}/primary/ad_det_image"]
            assert vds.shape == (4, *shape)
            assert not vds[()].any()  # the frames read as fill values, no error
        assert not gone[0].exists()

        uids, error = _run_bounded(RE, _steps(mtr, dets, 2, stage=[ad]))
        assert error is None, error
        files = _assert_complete(rs, uids[0], 2)
        with h5py.File(files["nexus"], "r") as f:
            got = f[f"{STREAMS}/primary/ad_det_image"][()]
        np.testing.assert_array_equal(got, _frames(_local_file(sim, ad)).reshape(got.shape))
    finally:
        rs.close()


# -- 3. the 0MQ proxy between the RunEngine and `bsrec record` ------------------------------


def _start_proxy(pin: int, pout: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(BIN / "bluesky-0MQ-proxy"),
            "--in-address",
            f"127.0.0.1:{pin}",
            "--out-address",
            f"127.0.0.1:{pout}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _connected_to(proxy: subprocess.Popen, ports: set[int]) -> bool:
    """Whether the proxy has a TCP connection established on each of ``ports``."""
    try:
        conns = psutil.Process(proxy.pid).net_connections("tcp")
    except psutil.Error:
        return False
    return ports <= {c.laddr.port for c in conns if c.status == psutil.CONN_ESTABLISHED}


def _both_ends_connected(proxy: subprocess.Popen, pin: int, pout: int) -> None:
    """The publisher and ``bsrec record`` are connected to the proxy, and subscribed."""
    wait_for(lambda: _connected_to(proxy, {pin, pout}), 30, "both ends to reach the proxy")
    # PUB/SUB slow joiner: the subscription follows the connection through the proxy
    threading.Event().wait(1.0)


def _received(data: Path, uid: str) -> list[int]:
    """The seq_num of every event of run ``uid`` in its JSON-lines file (written at once)."""
    files = list(data.rglob(f"*_{uid[:8]}.jsonl"))
    if not files:
        return []
    lines = files[0].read_text().splitlines()
    return [json.loads(line)[1]["seq_num"] for line in lines if line.startswith('["event"')]


def _steps_sim(points: int, *, at: int | None = None, action=None):
    """``points`` readings of ophyd's simulated ``det``; ``action()`` before point ``at``."""

    def body():
        for i in range(points):
            if i == at:
                action()
            yield from bps.trigger_and_read([det])

    return (yield from bpp.run_wrapper(body(), md={"plan_name": "peer_count"}))


#: Events published while the proxy is down: more than a 0MQ socket queues for a peer (its
#: high-water mark, 1000 messages at most), so that a publisher that waited for room would
#: hang here, and the run's stop document is sure to be lost.
OUTAGE_EVENTS = 1100


def test_0mq_proxy_killed_while_bsrec_record_listens(tmp_path):
    """The RunEngine is never held; `bsrec record` goes on listening, silently, and records
    the runs published after the proxy is back on its ports; the run cut by the outage is
    closed at exit with the points it received, and said so."""
    pin, pout = free_port(), free_port()
    proxy = _start_proxy(pin, pout)
    data = tmp_path / "data"
    config = tmp_path / "record.toml"
    config.write_text(
        "[recorders.nexus]\nflush_interval = 60.0\n\n"  # points stay buffered until the end
        "[recorders.spec]\n\n[recorders.jsonl]\nenabled = true\n"
    )
    out = tmp_path / "record.out"
    with open(out, "w") as sink:
        rec = subprocess.Popen(
            [
                str(BIN / "bsrec"),
                "record",
                "--zmq",
                f"127.0.0.1:{pout}",
                "--config",
                str(config),
                "--data-root",
                str(data),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    RE = RunEngine({}, context_managers=[])  # the cut run is run on a thread (bounded)
    publisher = Publisher(f"127.0.0.1:{pin}")
    RE.subscribe(publisher)
    docs, keep = collect()
    RE.subscribe(keep)
    log = RunLog(data / "bsrec-runs.sqlite")

    def status(uid: str) -> str | None:
        return next((r.exit_status for r in log.recent() if r.uid == uid), None)

    def kill_proxy():
        (uid,) = [d["uid"] for n, d in docs if n == "start"][-1:]
        wait_for(lambda: len(_received(data, uid)) >= 3, 30, "bsrec record to write 3 events")
        proxy.kill()
        proxy.wait(10)

    try:
        wait_for(lambda: "listening" in out.read_text(), 30, "bsrec record to listen")
        _both_ends_connected(proxy, pin, pout)
        (first,) = RE(scan([det], motor, -1, 1, 5))
        wait_for(lambda: status(first) == "success", 30, "the first run to be recorded")

        # the proxy dies 3 points into a run; the run goes on publishing into the void
        uids, error = _run_bounded(RE, _steps_sim(3 + OUTAGE_EVENTS, at=3, action=kill_proxy))
        assert error is None, error
        (cut,) = uids
        assert proxy.poll() is not None
        stop = _docs_of(docs, cut)["stop"]
        assert stop["exit_status"] == "success"
        assert stop["num_events"] == {"primary": 3 + OUTAGE_EVENTS}
        assert rec.poll() is None  # still listening

        # the proxy is back on the same ports: 0MQ reconnects both ends by itself
        proxy = _start_proxy(pin, pout)
        _both_ends_connected(proxy, pin, pout)
        (after,) = RE(scan([det], motor, -1, 1, 5))
        wait_for(lambda: status(after) == "success", 30, "the run after the restart")
        assert rec.poll() is None  # the same process recorded it
        assert status(cut) == "running"  # its stop document never arrived
    finally:
        rec.send_signal(signal.SIGTERM)
        code = rec.wait(30)
        publisher.close()
        proxy.terminate()
        proxy.wait(10)
    text = out.read_text()
    assert code == 0, text
    assert "ERROR" not in text and "Traceback" not in text, text

    runs = {r.uid: r for r in log.recent()}
    for uid in (first, after):
        assert runs[uid].exit_status == "success" and runs[uid].num_events == {"primary": 5}
        (nexus,) = runs[uid].artifacts["nexus"]
        assert _nexus(nexus)["seq_num"] == [1, 2, 3, 4, 5]
        assert _spec_scan(runs[uid].artifacts["spec"][0], uid) == (5, "success")
    # the cut run: its files were closed when bsrec record stopped, keeping what arrived
    received = _received(data, cut)  # the points before the kill, maybe some queued ones
    assert received[:3] == [1, 2, 3]
    (nexus,) = data.rglob(f"*_{cut[:8]}.nxs")
    cut_nexus = _nexus(str(nexus))
    assert cut_nexus["seq_num"] == received
    assert not cut_nexus["end_time"] and cut_nexus["exit_status"] is None
    (spec,) = data.rglob("*.spec")
    assert _spec_scan(str(spec), cut) == (len(received), "unknown")
    for recorder in ("nexus", "spec"):
        assert re.search(
            rf"WARNING bluesky_recorders\.{recorder}: .*run {cut} closed without a stop", text
        ), text


# -- 4. the console's pipe ------------------------------------------------------------------


def _console_failures(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "recorder 'console' failed" in r.getMessage()
    ]


def test_console_pipe_closed_by_its_reader(tmp_path, caplog):
    """The console writes into a pipe whose reader (``head -n 1``) exits: BrokenPipeError
    is a WARNING (policy 'warn'), once a run; the run and the other recorders go on."""
    read_end, write_end = os.pipe()
    head = subprocess.Popen(["head", "-n", "1"], stdin=read_end, stdout=subprocess.PIPE)
    os.close(read_end)  # head holds the only reading end
    pipe = os.fdopen(write_end, "w")
    console = ConsoleRecorder(file=pipe, force_terminal=False)
    rs = RecorderSet([console, *_file_recorders(tmp_path / "data")], run_log=None)
    RE = RunEngine({})
    RE.subscribe(rs)
    try:
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
            # head has read the run's first line and exited before the fourth point
            (cut,) = RE(_steps_sim(10, at=3, action=lambda: head.wait(10)))
            assert head.returncode == 0
            failures = _console_failures(caplog)
            (b,) = RE(scan([det], motor, -1, 1, 5))
        assert RE.state == "idle"
        first_line = head.stdout.read().decode()
        assert first_line.startswith("Scan #") and "(peer_count) started" in first_line
        (failure,) = failures  # once for the run, then its other documents are skipped
        assert re.search(
            rf"recorder 'console' failed on (start|descriptor|event) document \S+ \(run {cut}\)"
            r": BrokenPipeError: \[Errno 32\] Broken pipe \(policy 'warn': the run goes on\)",
            failure,
        ), failure
        _assert_complete(rs, cut, 10)
        # the next run: the console fails at its start (the pipe is still closed), alone
        (again,) = _console_failures(caplog)[1:]
        assert f"failed on start document {b} (run {b})" in again
        _assert_complete(rs, b, 5)
        # the console itself is sound: given a file, it prints the next run whole
        console.file = str(tmp_path / "console.txt")
        (c,) = RE(scan([det], motor, -1, 1, 3))
        lines = (tmp_path / "console.txt").read_text().splitlines()
        assert lines[0].startswith("Scan #3 (scan) started") and "success, 3 events" in lines[-1]
        assert len(_console_failures(caplog)) == 2
        _assert_complete(rs, c, 3)
    finally:
        rs.close()
        head.stdout.close()
        try:
            pipe.close()
        except BrokenPipeError:  # what it still buffers cannot go anywhere
            pass


def test_bsrec_record_output_piped_into_head(tmp_path):
    """``bsrec record ... | head -n 1``: its console (on stdout) loses its reader after one
    line; the process goes on recording with its other recorders and exits with 0."""
    pin, pout = free_port(), free_port()
    proxy = _start_proxy(pin, pout)
    data = tmp_path / "data"
    config = tmp_path / "record.toml"
    config.write_text("[recorders.console]\nprogress = false\n\n[recorders.nexus]\n")
    err = tmp_path / "record.err"
    with open(err, "w") as sink:
        rec = subprocess.Popen(
            [str(BIN / "bsrec"), "record", "--zmq", f"127.0.0.1:{pout}"]
            + ["--config", str(config), "--data-root", str(data)],
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    head = subprocess.Popen(["head", "-n", "1"], stdin=rec.stdout, stdout=subprocess.PIPE)
    rec.stdout.close()  # head holds the only reading end
    RE = RunEngine({})
    publisher = Publisher(f"127.0.0.1:{pin}")
    RE.subscribe(publisher)
    log = RunLog(data / "bsrec-runs.sqlite")
    uids = []
    try:
        first_line = head.communicate(timeout=60)[0].decode()
        assert first_line == f"bsrec record: listening on 127.0.0.1:{pout}\n"
        _both_ends_connected(proxy, pin, pout)
        for points in (5, 3):
            (uid,) = RE(scan([det], motor, -1, 1, points))
            uids.append(uid)
            wait_for(
                lambda u=uid: any(r.uid == u and r.exit_status == "success" for r in log.recent()),
                30,
                "the run to be recorded",
            )
        assert rec.poll() is None
    finally:
        rec.send_signal(signal.SIGTERM)
        code = rec.wait(30)
        head.stdout.close()
        publisher.close()
        proxy.terminate()
        proxy.wait(10)
    text = err.read_text()
    assert code == 0, text
    for uid in uids:
        assert f"recorder 'console' failed on start document {uid} (run {uid}): BrokenPipe" in text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    runs = {r.uid: r for r in log.recent()}
    for uid, points in zip(uids, (5, 3), strict=True):
        (nexus,) = runs[uid].artifacts["nexus"]
        assert _nexus(nexus)["seq_num"] == list(range(1, points + 1))


# -- 5. live-feed clients that stall ----------------------------------------------------------

#: 16 text fields of 1000 characters (the feed sends up to 1024): 16 kB of JSON a point.
Notes = type(
    "Notes",
    (Device,),
    {f"n{i:02d}": Component(Signal, value=chr(65 + i) * 1000, kind="hinted") for i in range(16)},
)
#: 400 points of 16 kB (6.4 MB) are more than a stalled client's socket buffers (the
#: kernel's at most 4 MB on the server's side) and its queue of 20 points can hold.
FEED_POINTS = 400


class _StalledSSE:
    """An SSE client on a plain socket with a 4 kB receive buffer that reads nothing until
    asked (a browser tab in the background)."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())

    def read_run(self) -> list[dict]:
        """Every message up to the end of the run (whole lines only: a read may end in
        the middle of one)."""
        self.sock.settimeout(60)
        buf = b""
        while True:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the stream"
            buf += chunk
            lines = buf.rpartition(b"\n")[0].decode().split("\n")
            messages = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
            if any(m["type"] == "run_end" for m in messages):
                return messages

    def close(self):
        self.sock.close()


def test_stalled_feed_clients_during_a_real_scan(tmp_path, caplog):
    """Two clients that read nothing (WebSocket, SSE) during a real RE run: the run ends,
    the NeXus, SPEC and JSON-lines files are whole, no recorder (the feed neither) falls
    behind; each stalled client, when it reads at last, finds the points it was given and
    a ``dropped`` count for the rest.

    (tests/system/test_feed_server.py covers a stalled WebSocket client fed directly, with
    a fast client that gets everything meanwhile.)"""
    from system.test_feed_server import RawClient

    feed = FeedRecorder(serve="127.0.0.1:0", client_queue=20)
    rs = RecorderSet([feed, *_file_recorders(tmp_path / "data")], run_log=None)
    RE = RunEngine({})
    RE.subscribe(rs)
    ws = RawClient(feed.server.port)
    sse = _StalledSSE(feed.server.port)
    try:
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
            (uid,) = RE(count([det, Notes(name="notes")], FEED_POINTS))
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("bluesky_recorders")]
        assert ours == []  # no drain timeout, no queue dropping documents
        files = _assert_complete(rs, uid, FEED_POINTS)
        with h5py.File(files["nexus"], "r") as f:
            column = decode_rows(f[f"{STREAMS}/primary/notes_n15"][()])
        assert column == ["P" * 1000] * FEED_POINTS
        ws_messages = []
        while not ws_messages or ws_messages[-1]["type"] != "run_end":
            ws_messages.append(json.loads(ws.recv()))
        for messages in (ws_messages, sse.read_run()):
            got = sum(len(m["seq_num"]) for m in messages if m["type"] == "points")
            lost = [m for m in messages if m["type"] == "dropped"]
            assert lost and all(m["reason"] == "client queue full" for m in lost)
            assert got + sum(m["points"] for m in lost) == FEED_POINTS
    finally:
        ws.close()
        sse.close()
        rs.close()
        feed.close()


# -- 6. a recorder that raises on one document ------------------------------------------------


class FlakyWriter(RunWriter):
    """One line per event into a text file; raises on the recorder's ``fail_on_event``-th
    event (once: the next runs go through)."""

    def __init__(self, start, recorder):
        super().__init__(start, recorder)
        recorder.data_root.mkdir(parents=True, exist_ok=True)
        self.path = str(recorder.data_root / f"flaky_{start['uid'][:8]}.txt")
        self.file = open(self.path, "x")  # closed by close()
        self.artifacts.append(self.path)
        self.events = 0

    def event_page(self, doc):
        for seq in doc["seq_num"]:
            self.events += 1
            if self.events == self.recorder.fail_on_event:
                self.recorder.fail_on_event = None
                self.recorder.raised.set()
                raise OSError(errno.EIO, "Input/output error", self.path)
            self.file.write(f"{seq}\n")
            self.file.flush()

    def stop(self, doc):
        self.file.write(f"stop {doc['exit_status']}\n")

    def close(self):
        self.file.close()


class FlakyRecorder(FileRecorder):
    kind = "flaky"
    writer_class = FlakyWriter

    def __init__(self, *, fail_on_event: int, **options):
        super().__init__(**options)
        self.fail_on_event: int | None = fail_on_event
        self.raised = threading.Event()


@pytest.mark.parametrize("policy", ["abort", "warn"])
def test_a_recorder_raising_on_one_document(policy, tmp_path, caplog):
    """Its failure names the recorder, its file and the document; the other recorders
    have the run up to the abort ('abort') or whole ('warn'); the next scan is whole for
    every recorder, the one that failed too."""
    flaky = FlakyRecorder(fail_on_event=5, data_root=tmp_path / "flaky", on_error=policy)
    rs = RecorderSet([*_file_recorders(tmp_path / "data"), flaky], run_log=None)
    RE = RunEngine({})
    docs, keep = collect()
    RE.subscribe(rs)
    RE.subscribe(keep)

    def failed():  # the next document the RunEngine emits carries the failure back
        wait_for(flaky.raised.is_set, 10, "the flaky recorder to fail")

    points = 30
    try:
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
            if policy == "abort":
                with pytest.raises(RecorderError) as info:
                    RE(_steps_sim(points, at=6, action=failed))
                err = info.value
            else:
                RE(_steps_sim(points, at=6, action=failed))
        (start,) = [d for n, d in docs if n == "start"]
        uid = start["uid"]
        stop = _docs_of(docs, uid)["stop"]
        (fifth,) = [d for n, d in docs if n == "event" and d["seq_num"] == 5]
        flaky_file = tmp_path / "flaky" / f"flaky_{uid[:8]}.txt"
        message = (
            f"recorder 'flaky' failed writing {flaky_file} on event document {fifth['uid']} "
            f"(run {uid}): OSError: [Errno 5] Input/output error"
        )
        logged = [r.getMessage() for r in caplog.records if "recorder 'flaky'" in r.getMessage()]
        assert len(logged) == 1 and logged[0].startswith(message), logged
        if policy == "abort":
            assert str(err).startswith(message)
            assert (err.recorder, err.doc_name, err.doc_uid) == ("flaky", "event", fifth["uid"])
            assert stop["exit_status"] == "fail" and stop["reason"].startswith(message)
            done = stop["num_events"]["primary"]
            assert 5 <= done < points  # the run stopped soon after the failing event
            files = _assert_complete(rs, uid, done, status="fail")
            assert _nexus(files["nexus"])["reason"] == stop["reason"]
        else:
            assert "(policy 'warn': the run goes on)" in logged[0]
            assert stop["exit_status"] == "success"
            _assert_complete(rs, uid, points)
        assert flaky_file.read_text().split() == ["1", "2", "3", "4"]  # closed at the failure
        assert RE.state == "idle"

        (uid,) = RE(scan([det], motor, -1, 1, 7))
        _assert_complete(rs, uid, 7)
        lines = (tmp_path / "flaky" / f"flaky_{uid[:8]}.txt").read_text().splitlines()
        assert lines == [str(i) for i in range(1, 8)] + ["stop success"]
    finally:
        rs.close()
