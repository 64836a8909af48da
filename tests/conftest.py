"""Fixtures shared by the system and fault tests (real IOCs and servers on loopback).

``sim`` starts the IOCs once per session on free 127.0.0.1 ports and points this
process's Channel Access clients at them; ``beamline`` is the connected devices dict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bluesky_recorders.sim.manager import SimBeamline
from procs import free_port


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    """A started :class:`SimBeamline`; this process's CA client env points at it."""
    root = tmp_path_factory.mktemp("sim")
    with SimBeamline.start(root / "state", root / "detector-disk") as beamline:
        beamline.configure_client()
        yield beamline


@pytest.fixture(scope="session")
def beamline(sim):
    """The simulated beamline's devices (``make_beamline``), connected.

    The area detectors take 2 frames per point.
    """
    from bluesky_recorders.sim.devices import connect_all, make_beamline

    devices = make_beamline(
        mini_prefix=sim.mini_prefix,
        ad_prefix=sim.ad_prefix,
        ioc_root=sim.ioc_root,
        frames_per_point=2,
    )
    connect_all(devices, timeout=10)
    return devices


@pytest.fixture(scope="session")
def metadata_service(sim):
    """A connected :class:`MetadataService` on the simulated beamline's metadata IOC."""
    from bluesky_recorders.metadata.device import MetadataService

    service = MetadataService(sim.metadata_prefix, name="metadata")
    service.wait_for_connection(timeout=10)
    return service


@pytest.fixture
def proxy():
    """bluesky's 0MQ proxy on two free loopback ports: (in_port, out_port)."""
    pin, pout = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "bluesky-0MQ-proxy"),
            "--in-address",
            f"127.0.0.1:{pin}",
            "--out-address",
            f"127.0.0.1:{pout}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield pin, pout
    proc.terminate()
    proc.wait(10)
