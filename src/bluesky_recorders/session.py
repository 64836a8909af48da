"""A beamline session: RunEngine, simulated beamline devices and recorders.

``bsrec session`` opens IPython with the profile in ``profiles/profile_bsrec``,
whose start-up file calls :func:`setup_session` and puts what it returns into
the user namespace. The simulated beamline's IOCs are started when they are
not running, and stopped at exit if this session started them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Session",
    "default_state_dir",
    "experiment_summary",
    "setup_session",
    "start_ipython",
]

log = logging.getLogger("bluesky_recorders.session")

#: Environment variables through which ``bsrec session`` passes its options to the profile.
_ENV_OPTIONS = {
    "config": "BSREC_SESSION_CONFIG",
    "data_root": "BSREC_SESSION_DATA_ROOT",
    "state_dir": "BSREC_SESSION_STATE_DIR",
    "start_sim": "BSREC_SESSION_START_SIM",
}


def default_state_dir() -> Path:
    """``$BSREC_STATE_DIR`` or ``~/.bsrec``: simulated IOCs' pid files and logs, RunEngine md."""
    return Path(os.environ.get("BSREC_STATE_DIR", "~/.bsrec")).expanduser()


@dataclass
class Session:
    """What a session holds; :meth:`namespace` is what IPython users see."""

    RE: Any
    recorders: Any
    devices: dict[str, Any]
    sim: Any = None
    started_sim: bool = False
    metadata: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def namespace(self) -> dict[str, Any]:
        import bluesky.plan_stubs as bps
        import bluesky.plans as bp

        ns: dict[str, Any] = {"RE": self.RE, "recorders": self.recorders, "bp": bp, "bps": bps}
        for name in ("count", "scan", "rel_scan", "list_scan", "grid_scan", "rel_grid_scan"):
            ns[name] = getattr(bp, name)
        ns.update(self.devices)
        if self.metadata is not None:
            ns["metadata"] = self.metadata
        ns.update(self.extras)
        ns["session"] = self
        return ns

    def banner(self) -> str:
        settings = self.recorders.settings
        motors = [n for n, d in self.devices.items() if hasattr(d, "position")]
        dets = [n for n in self.devices if n not in motors]
        lines = [
            "bluesky-recorders session",
            f"  recorders : {', '.join(self.recorders.recorders)} -> {settings.data_root}",
            f"  motors    : {', '.join(motors)}",
            f"  detectors : {', '.join(dets)}",
            "  try       : RE(scan([ph_det], ph_mtr, -1, 1, 11))",
            "              RE(count([ad_det], 3))      # area detector, HDF5 files linked",
            "  then      : !bsrec runs                   # what each recorder wrote",
            "              cat = catalog(); cat[-1].primary.read()",
        ]
        for recorder in self.recorders.recorders.values():
            server = getattr(recorder, "server", None)
            if recorder.kind == "feed" and server is not None:
                lines.append(f"  live page : {server.url.split('?')[0]}")
            if recorder.kind == "shm" and getattr(recorder, "segment", None):
                lines.append(f"  shared mem: {recorder.segment}   (bsrec shm show --follow)")
        if self.sim is not None:
            lines.append(f"  IOCs      : simulated beamline on 127.0.0.1, port {self.sim.port}")
        lines.append(f"  experiment: {self.experiment_line()}")
        return "\n".join(lines)

    def experiment_line(self) -> str:
        """The active experiment, as the metadata service says now."""
        if self.metadata is None:
            return "no metadata service configured"
        try:
            snap = self.metadata.snapshot(timeout=2.0)
        except Exception as err:  # the banner must never stop the session
            return f"metadata service {self.metadata.prefix} unavailable ({err})"
        return experiment_summary(snap)

    def close(self) -> None:
        self.recorders.close()
        if self.started_sim and self.sim is not None:
            self.sim.stop()


def experiment_summary(snapshot: dict[str, Any]) -> str:
    """One line naming the proposal, PI, sample and data directory of a snapshot."""
    parts = []
    if snapshot.get("proposal_id"):
        title = snapshot.get("title") or ""
        parts.append(f"proposal {snapshot['proposal_id']}" + (f" ({title})" if title else ""))
    pi = (snapshot.get("pi") or {}).get("name")
    if pi:
        parts.append(f"PI {pi}")
    sample = (snapshot.get("sample") or {}).get("name")
    if sample:
        parts.append(f"sample {sample}")
    if snapshot.get("data_directory"):
        parts.append(f"data in {snapshot['data_directory']}")
    return ", ".join(parts) or "none set (bsrec metadata sync, or bsrec metadata set ...)"


def setup_session(
    *,
    config: str | Path | None = None,
    data_root: str | Path | None = None,
    state_dir: str | Path | None = None,
    start_sim: bool = True,
) -> Session:
    """Build a session: start (or attach to) the simulated beamline, connect the
    devices, build the recorder set and subscribe it to a new RunEngine."""
    from bluesky import RunEngine
    from bluesky.utils import PersistentDict

    from .config import load_config, load_recorder_set
    from .preflight import install_preflight

    state = Path(state_dir).expanduser() if state_dir else default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    sim, started, devices, path_map = None, False, {}, {}
    try:
        if start_sim:
            from .sim import SimBeamline, connect_all, make_beamline

            settings = load_config(config, data_root=data_root).settings
            sim_dir = state / "sim"
            sim = _attach(SimBeamline, sim_dir)
            if sim is None:
                local = settings.path_map.translate("/detector-disk")
                if local == "/detector-disk":
                    local = str(settings.data_root / "detector-disk")
                sim = SimBeamline.start(sim_dir, local_detector_root=local)
                started = True
            path_map = {sim.ioc_root: str(sim.local_detector_root)}
            sim.configure_client()
            devices = make_beamline(
                mini_prefix=sim.mini_prefix, ad_prefix=sim.ad_prefix, ioc_root=sim.ioc_root
            )
            connect_all(devices)
        rs = load_recorder_set(config, data_root=data_root, path_map=path_map)
        RE = RunEngine(PersistentDict(str(state / "runengine-md")))
        RE.subscribe(rs)
        metadata = None
        prefix = rs.settings.metadata_prefix if sim is None else sim.metadata_prefix
        if prefix:
            from .metadata.device import MetadataService, attach_metadata

            metadata = MetadataService(prefix, name="metadata")
            attach_metadata(RE, metadata, require_metadata=rs.settings.require_metadata)
        # after attach_metadata: the check sees the experiment's data directory
        install_preflight(RE, rs.preflight)

        def catalog() -> Any:
            """Open the catalog the catalog recorder writes."""
            from .catalog import open_catalog

            rec = next((r for r in rs.recorders.values() if r.kind == "catalog"), None)
            directory = getattr(rec, "directory", rs.settings.data_root / "catalog")
            return open_catalog(directory, readable=rs.settings.path_map.local_roots)

        session = Session(RE, rs, devices, sim, started, metadata, extras={"catalog": catalog})
        atexit.register(session.close)
        return session
    except BaseException:
        if started and sim is not None:  # do not leave IOCs behind a failed start-up
            sim.stop()
        raise


def _attach(cls: Any, sim_dir: Path) -> Any:
    if not (sim_dir / "sim.json").exists():
        return None
    sim = cls.load(sim_dir)
    return sim if sim.running else None


def profile_dir() -> Path | None:
    """The IPython profile shipped in the repository's ``profiles/`` folder, if present."""
    env = os.environ.get("BSREC_PROFILE_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "profiles" / "profile_bsrec"
    return repo if repo.is_dir() else None


def options_from_env() -> dict[str, Any]:
    """The options ``bsrec session`` passed to the profile's start-up file."""
    opts: dict[str, Any] = {}
    for key, var in _ENV_OPTIONS.items():
        value = os.environ.get(var)
        if value:
            opts[key] = value != "0" if key == "start_sim" else value
    return opts


def start_ipython(
    *,
    config: str | Path | None = None,
    data_root: str | Path | None = None,
    state_dir: str | Path | None = None,
    start_sim: bool = True,
) -> int:
    """Open IPython with the session (what ``bsrec session`` does)."""
    import IPython

    values = {"config": config, "data_root": data_root, "state_dir": state_dir}
    for key, value in values.items():
        if value:
            os.environ[_ENV_OPTIONS[key]] = str(Path(value).expanduser().absolute())
    # so that `!bsrec runs` in the session looks where this session records
    if data_root:
        os.environ["BSREC_DATA_ROOT"] = os.environ[_ENV_OPTIONS["data_root"]]
    if config:
        os.environ["BSREC_CONFIG"] = os.environ[_ENV_OPTIONS["config"]]
    if state_dir:  # `!bsrec metadata set ...` finds this session's simulated beamline
        os.environ["BSREC_STATE_DIR"] = os.environ[_ENV_OPTIONS["state_dir"]]
    os.environ[_ENV_OPTIONS["start_sim"]] = "1" if start_sim else "0"
    profile = profile_dir()
    if profile is not None:
        # IPython writes history, logs and pid files into its profile folder: run a copy
        # in the state folder so the repository's profile stays as it is.
        state = Path(state_dir).expanduser() if state_dir else default_state_dir()
        work = state / "ipython" / profile.name
        shutil.copytree(profile, work, dirs_exist_ok=True)
        IPython.start_ipython(argv=["--profile-dir", str(work)])
    else:  # installed without the repository: same session, default IPython profile
        session = setup_session(**options_from_env())
        print(session.banner())
        IPython.start_ipython(argv=[], user_ns=session.namespace())
    return 0
