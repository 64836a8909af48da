"""The metadata service over real Channel Access: IOC, persistence, device, RunEngine hook."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.plans import count
from caproto import ErrorResponseReceived
from caproto.sync.client import read as ca_read
from caproto.sync.client import write as ca_write

from bluesky_recorders.errors import BeamlineError
from bluesky_recorders.metadata.device import (
    METADATA_STREAM,
    MetadataService,
    MetadataUnavailableError,
    attach_metadata,
)
from bluesky_recorders.metadata.model import (
    PVS,
    MetadataValueError,
    empty_snapshot,
    set_dotted,
    snapshot_from_values,
)
from bluesky_recorders.sim.devices import configure_ca_env
from bluesky_recorders.sim.manager import HOST, find_free_port

pytestmark = pytest.mark.ioc

LONG = "Ünïcødé 日本語 🧪 " + "x" * 3000
VALUES = {
    "proposal:id": "GUP-12345",
    "proposal:title": LONG,
    "safety_form:id": "ESAF-2027-1",
    "pi:name": "Zoë Ñúñez-Łukasiewicz",
    "pi:last_name": "Ñúñez-Łukasiewicz",
    "pi:email": "zoe@example.org",
    "users": '[{"name":"Ann Lee","email":"ann@example.org"},{"name":"李雷","email":""}]',
    "sample:name": "SiO₂",
    "sample:description": "wafer, 5 × 5 mm²",
    "sample:formula": "SiO2",
    "sample:extra": '{"temperature":"300 K"}',
    "beamline:id": "BL-9",
    "instrument:source": "bending magnet",
    "instrument:mono_energy": 8.333,
    "instrument:description": "Si(111) DCM",
    "instrument:extra": '{"slits":"0.1 mm"}',
    "data_directory": "/data/2026-11/Ñúñez-Łukasiewicz",
}


def _docs(RE, plan):  # noqa: N803
    docs: list[tuple[str, dict]] = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


# -- a separate metadata IOC (own port, own state file) ----------------------------------------


class MetadataIOCProcess:
    """``python -m bluesky_recorders.metadata.ioc`` on its own free loopback port."""

    def __init__(self, sim, state_file: Path, prefix: str):
        self.sim, self.state_file, self.prefix = sim, state_file, prefix
        self.port = find_free_port(exclude=tuple(sim.ports.values()))
        self.log = state_file.parent / "ioc.log"
        self.proc: subprocess.Popen | None = None

    @property
    def ca_env(self) -> dict[str, str]:
        return {"EPICS_CA_ADDR_LIST": f"{HOST}:{self.port}", "EPICS_CA_AUTO_ADDR_LIST": "NO"}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(
            self.ca_env,
            EPICS_CA_SERVER_PORT=str(self.port),
            EPICS_CAS_SERVER_PORT=str(self.port),
            EPICS_CAS_INTF_ADDR_LIST=HOST,
            EPICS_CAS_BEACON_ADDR_LIST=HOST,
            EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
            EPICS_CAS_BEACON_PORT=str(self.sim.state["repeater_port"]),
        )
        argv = [sys.executable, "-m", "bluesky_recorders.metadata.ioc", "--prefix", self.prefix]
        argv += ["--state-file", str(self.state_file), "--interfaces", HOST]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 20
        while True:  # until the IOC answers (its own sync client: our env is untouched)
            try:
                self.read("updated")
                return
            except Exception:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    @contextlib.contextmanager
    def _own_env(self):
        """caproto's sync client, which reads os.environ, pointed at this IOC only."""
        saved = {k: os.environ.get(k) for k in self.ca_env}
        os.environ.update(self.ca_env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def read(self, suffix: str):
        """One PV over CA with caproto's sync client."""
        with self._own_env():
            data = ca_read(self.prefix + suffix, timeout=1, repeater=False).data
        if suffix == "instrument:mono_energy":
            return float(data[0])
        return data.tobytes().partition(b"\0")[0].decode("utf-8")

    def write(self, suffix: str, data: bytes) -> None:
        """Put raw bytes to one PV with caproto's sync client, waiting for completion."""
        with self._own_env():
            ca_write(self.prefix + suffix, data, notify=True, timeout=2, repeater=False)

    def read_all(self) -> dict:
        return {spec.suffix: self.read(spec.suffix) for spec in PVS}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


@pytest.fixture
def md_ioc(sim, tmp_path):
    """A factory of separate metadata IOCs; this process's CA clients can reach them."""
    started: list[MetadataIOCProcess] = []

    def make(prefix: str, state_file: Path | None = None) -> MetadataIOCProcess:
        ioc = MetadataIOCProcess(sim, state_file or tmp_path / "state" / "md.json", prefix)
        ioc.state_file.parent.mkdir(parents=True, exist_ok=True)
        started.append(ioc)
        configure_ca_env(
            sim.port,
            addr_list=" ".join([sim.addr_list, *(f"{HOST}:{i.port}" for i in started)]),
            repeater_port=sim.state["repeater_port"],
        )
        return ioc

    try:
        yield make
    finally:
        for ioc in started:
            if ioc.proc is not None and ioc.proc.poll() is None:
                ioc.stop(signal.SIGKILL)
        sim.configure_client()


# -- the sim's metadata IOC through the device ---------------------------------------------


def test_every_pv_round_trips_long_and_unicode_text(metadata_service):
    metadata_service.write_values(VALUES)
    values = metadata_service.read_values()
    assert {k: values[k] for k in VALUES} == VALUES
    assert len(values["proposal:title"]) == len(LONG) > 3000
    snap = metadata_service.snapshot()
    assert snap == snapshot_from_values(values)
    assert snap["users"][1] == {"name": "李雷", "email": ""}
    assert snap["instrument"]["monochromator_energy"] == 8.333
    assert snap["updated"]  # set by the IOC
    config = metadata_service.read_configuration()
    assert config["metadata_proposal_title"]["value"] == LONG
    assert len(config) == len(PVS)


def test_updated_is_set_by_the_ioc_on_change(metadata_service):
    metadata_service.write_values({"sample:name": "first"})
    before = metadata_service.read_values()["updated"]
    time.sleep(1.1)  # `updated` has a resolution of one second
    metadata_service.write_values({"sample:name": "second"})
    after = metadata_service.read_values()["updated"]
    assert after > before
    with pytest.raises(MetadataValueError, match="updated"):
        metadata_service.write_values({"updated": "2000-01-01"})


def test_energy_can_be_cleared_and_set_dotted_values_are_written(metadata_service):
    values = set_dotted(metadata_service.read_values(), "instrument.mono_energy", "")
    values = set_dotted(values, "sample.humidity", "40 %")
    del values["updated"]
    metadata_service.write_values(values)
    snap = metadata_service.snapshot()
    assert snap["instrument"]["monochromator_energy"] is None
    assert snap["sample"]["extra"]["humidity"] == "40 %"
    assert math.isnan(metadata_service.read_values()["instrument:mono_energy"])


def test_text_can_be_cleared(metadata_service):
    metadata_service.write_values({"sample:description": "x", "users": '[{"name":"A"}]'})
    metadata_service.write_values({"sample:description": "", "users": ""})
    values = metadata_service.read_values()
    assert values["sample:description"] == "" and values["users"] == ""
    assert metadata_service.snapshot()["users"] == []


def test_device_refuses_bad_values_before_writing(metadata_service):
    metadata_service.write_values({"pi:name": "unchanged"})
    with pytest.raises(MetadataValueError, match="PV users"):
        metadata_service.write_values({"pi:name": "changed", "users": "[oops"})
    with pytest.raises(MetadataValueError, match="5000 characters"):
        metadata_service.write_values({"proposal:title": "y" * 5000})
    assert metadata_service.read_values()["pi:name"] == "unchanged"


def test_unreachable_service_raises_quickly_naming_pvs_and_addresses():
    service = MetadataService("NOBODY:MD:", name="nobody")
    with pytest.raises(BeamlineError) as info:
        service.snapshot(timeout=0.3)
    message = str(info.value)
    assert "NOBODY:MD:proposal:id" in message and "NOBODY:MD:updated" in message
    assert "EPICS_CA_ADDR_LIST=" in message


# -- the IOC alone: refusals, persistence, corrupt state --------------------------------------


def test_ioc_refuses_bad_json_and_overlong_text_from_any_client(md_ioc):
    ioc = md_ioc("T1:MD:")
    ioc.start()
    ioc.write("users", b'[{"name":"A"}]\0')
    for suffix, data in [("users", b"[nope\0"), ("proposal:id", b"z" * 4200)]:
        with pytest.raises(ErrorResponseReceived, match="ECA_PUTFAIL"):
            ioc.write(suffix, data)
    ioc_values = ioc.read_all()
    assert json.loads(ioc_values["users"]) == [{"name": "A"}]
    assert ioc_values["proposal:id"] == ""
    ioc.write("users", b"\0")  # an empty string is accepted
    assert ioc.read("users") == ""
    assert "not valid JSON" in ioc.log.read_text()
    ioc.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_values_survive_an_ioc_restart(md_ioc, tmp_path, sig):
    prefix = f"T{int(sig)}:MD:"
    ioc = md_ioc(prefix)
    ioc.start()
    service = MetadataService(prefix, name="restart")
    service.write_values(VALUES)
    written = service.read_values()
    assert oct(ioc.state_file.stat().st_mode & 0o777) in ("0o640", "0o600")
    ioc.stop(sig)
    assert sorted(p.name for p in ioc.state_file.parent.iterdir()) == ["ioc.log", "md.json"]
    ioc.start()
    assert ioc.read_all() == written  # (the device reconnects too, after ~7 s of backoff)
    ioc.stop()


def test_corrupt_state_file_is_kept_aside_and_the_ioc_starts_empty(md_ioc, tmp_path):
    state = tmp_path / "state" / "md.json"
    state.parent.mkdir()
    state.write_text('{"values": {"proposal:id": "GUP-1", ')  # cut short
    ioc = md_ioc("T2:MD:", state)
    ioc.start()
    assert ioc.read_all()["proposal:id"] == ""
    (aside,) = state.parent.glob("md.json.corrupt-*")
    assert aside.read_text().startswith('{"values"')
    log = ioc.log.read_text()
    assert "is corrupt" in log and str(aside) in log
    assert not state.exists()
    service = MetadataService("T2:MD:", name="corrupt")
    service.write_values({"proposal:id": "GUP-2"})
    assert json.loads(state.read_text())["values"]["proposal:id"] == "GUP-2"
    ioc.stop()


# -- the RunEngine hook ---------------------------------------------------------------------


def test_run_start_gets_the_snapshot_and_the_run_a_metadata_stream(metadata_service, beamline):
    metadata_service.write_values({**VALUES, "proposal:id": "GUP-RUN"})
    RE = RunEngine({})
    detach = attach_metadata(RE, metadata_service)
    docs = _docs(RE, count([beamline["ph_det"]], 2))
    (start,) = [d for n, d in docs if n == "start"]
    assert start["metadata_status"] == "ok"
    assert start["experiment"] == metadata_service.snapshot()
    assert start["experiment"]["proposal_id"] == "GUP-RUN"
    assert start["experiment"]["title"] == LONG
    descriptors = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descriptors) == {"primary", METADATA_STREAM}
    config = descriptors[METADATA_STREAM]["configuration"]["metadata"]
    assert config["data"]["metadata_proposal_id"] == "GUP-RUN"
    assert config["data"]["metadata_sample_name"] == "SiO₂"
    assert len(config["data"]) == len(PVS)
    json.dumps(config["data_keys"])  # JSON-able (no CHAR control limits as bytes)
    (md_event,) = [
        d for n, d in docs if n == "event" and d["descriptor"] == descriptors["metadata"]["uid"]
    ]
    assert md_event["data"] == {"metadata_updated": start["experiment"]["updated"]}
    assert sum(1 for n, d in docs if n == "event") == 3
    (stop,) = [d for n, d in docs if n == "stop"]
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"primary": 2, METADATA_STREAM: 1}

    detach()
    detach()  # idempotent
    docs = _docs(RE, count([beamline["ph_det"]], 1))
    (start,) = [d for n, d in docs if n == "start"]
    assert "experiment" not in start and "metadata_status" not in start


def test_service_down_run_goes_on_with_a_warning(caplog):
    RE = RunEngine({})
    down = MetadataService("NOBODY:MD:", name="down")
    attach_metadata(RE, down, timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="bluesky_recorders.metadata"):
        docs = _docs(RE, count([], 1))
    (start,) = [d for n, d in docs if n == "start"]
    assert start["metadata_status"] == "unavailable"
    assert start["experiment"] == empty_snapshot()
    assert [d["name"] for n, d in docs if n == "descriptor"] == []
    (record,) = [r for r in caplog.records if r.name == "bluesky_recorders.metadata"]
    assert record.levelno == logging.WARNING
    assert "METADATA UNAVAILABLE" in record.getMessage()
    assert "NOBODY:MD:proposal:id" in record.getMessage()


def test_required_metadata_refuses_the_run_and_the_engine_stays_usable(metadata_service):
    RE = RunEngine({})
    down = MetadataService("NOBODY:MD:", name="down")
    detach = attach_metadata(RE, down, require_metadata=True, timeout=0.3)
    docs: list = []
    with pytest.raises(MetadataUnavailableError) as info:
        RE(count([], 1), lambda name, doc: docs.append(name))
    assert docs == []
    assert "run refused" in str(info.value) and "'down'" in str(info.value)
    assert "NOBODY:MD:" in str(info.value)
    assert isinstance(info.value, BeamlineError)
    assert RE.state == "idle"

    detach()
    attach_metadata(RE, metadata_service, require_metadata=True)
    docs = _docs(RE, count([], 1))
    (start,) = [d for n, d in docs if n == "start"]
    assert start["metadata_status"] == "ok"
