"""Start, find and stop the simulated beamline's IOCs (subprocesses on 127.0.0.1).

:meth:`SimBeamline.start` launches caproto's ``mini_beamline`` IOC, our emulated
areaDetector HDF5 IOC (:mod:`bluesky_recorders.sim.ad_ioc`) and the metadata service IOC
(:mod:`bluesky_recorders.metadata.ioc`, its values kept in
``<state_dir>/metadata-state.json``), each on its own free loopback port, waits until they
answer over Channel Access, and writes ``<state_dir>/sim.json`` so that
another process (``bsrec sim status``/``stop``) can find them with
:meth:`SimBeamline.load`. Nothing binds anything but 127.0.0.1.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import BeamlineError

__all__ = ["HOST", "SimBeamline", "SimBeamlineRunningError", "SimBeamlineError", "find_free_port"]

HOST = "127.0.0.1"
STATE_FILE = "sim.json"
METADATA_STATE_FILE = "metadata-state.json"
_SRC_DIR = Path(__file__).resolve().parents[2]  # so children import this very package

# Children started by this process, kept so that they are reaped (no zombies, no
# "subprocess still running" ResourceWarning) even when the SimBeamline object is gone.
_CHILDREN: dict[int, subprocess.Popen] = {}

# Run in a subprocess, with the IOCs' environment: wait until each PV answers over CA,
# then apply "pv=value" settings. Our own process's os.environ is left alone.
_PROBE = r"""
import sys, time
from caproto.sync.client import read, write
deadline = time.monotonic() + float(sys.argv[1])
for arg in sys.argv[2:]:
    if "=" in arg:
        pv, value = arg.split("=", 1)
        write(pv, float(value), notify=True, timeout=2, repeater=False)
        continue
    while True:
        try:
            read(arg, timeout=0.5, repeater=False)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                sys.exit(f"{arg} did not answer: {exc}")
            time.sleep(0.05)
"""


# A CA repeater bound to 127.0.0.1 only (caproto's default binds 0.0.0.0): it receives
# the IOCs' beacons and forwards them to registered clients.
_REPEATER = "from caproto.sync.repeater import run; run(host='127.0.0.1')"


class SimBeamlineError(BeamlineError, RuntimeError):
    """The simulated beamline could not be started, found or stopped."""


class SimBeamlineRunningError(SimBeamlineError):
    """``start()`` found a running beamline in the state dir (``.beamline``)."""

    def __init__(self, message: str, beamline: SimBeamline):
        super().__init__(message)
        self.beamline = beamline


def find_free_port(*, exclude: tuple[int, ...] = (), attempts: int = 50) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (as far as one can tell now)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            if port in exclude:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((HOST, port))
            except OSError:
                continue
        return port
    raise SimBeamlineError(f"no free TCP+UDP port on {HOST} after {attempts} attempts")


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as dead; reaps our own children)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of ours started by another SimBeamline object: reap it if it ended
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # not Linux: os.kill said it exists
    if state in ("Z", "X"):
        return False
    return start_ticks is None or _start_ticks(pid) in (None, start_ticks)


def _tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class SimBeamline:
    """The simulated beamline's IOCs (mini, ad, metadata), as in ``<state_dir>/sim.json``.

    Use :meth:`start` (or :meth:`load` to reattach), then :attr:`env` for clients, and
    :meth:`stop`. As a context manager, it stops the IOCs on exit.
    """

    def __init__(self, state_dir: str | os.PathLike, state: dict[str, Any]):
        self.state_dir = Path(state_dir)
        self.state = state

    # -- accessors ------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def port(self) -> int:
        """``EPICS_CA_SERVER_PORT`` for clients: the mini_beamline IOC's port."""
        return int(self.state["port"])

    @property
    def mini_prefix(self) -> str:
        return self.state["mini_prefix"]

    @property
    def ad_prefix(self) -> str:
        return self.state["ad_prefix"]

    @property
    def metadata_prefix(self) -> str:
        """The metadata service IOC's prefix (default ``BL:MD:``)."""
        return self.state["metadata_prefix"]

    @property
    def metadata_state_file(self) -> Path:
        """Where the metadata IOC keeps its values (they survive restarts of the sim)."""
        return Path(self.state["metadata_state_file"])

    @property
    def ioc_root(self) -> str:
        """The detector IOC's root (IOC-side paths)."""
        return self.state["ioc_root"]

    @property
    def local_detector_root(self) -> Path:
        """Where the IOC root really is on this machine."""
        return Path(self.state["local_detector_root"])

    @property
    def ports(self) -> dict[str, int]:
        """Each IOC's own UDP search (and TCP) port."""
        return {name: int(p) for name, p in self.state["ports"].items()}

    @property
    def addr_list(self) -> str:
        """``EPICS_CA_ADDR_LIST`` for clients: one ``127.0.0.1:<port>`` per IOC."""
        return " ".join(f"{HOST}:{p}" for p in self.ports.values())

    @property
    def env(self) -> dict[str, str]:
        """The EPICS variables a Channel Access client needs to reach the IOCs."""
        return {
            "EPICS_CA_ADDR_LIST": self.addr_list,
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(self.port),
            "EPICS_CA_REPEATER_PORT": str(self.state["repeater_port"]),
        }

    def server_env(self, name: str) -> dict[str, str]:
        """The EPICS variables IOC ``name`` runs with (all bound to 127.0.0.1)."""
        port = str(self.ports[name])
        return {
            **self.env,
            "EPICS_CA_SERVER_PORT": port,
            "EPICS_CAS_SERVER_PORT": port,
            "EPICS_CAS_INTF_ADDR_LIST": HOST,
            "EPICS_CAS_BEACON_ADDR_LIST": HOST,
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_CAS_BEACON_PORT": str(self.state["repeater_port"]),
        }

    def configure_client(self) -> dict[str, str]:
        """Point this process's CA clients (ophyd) at the IOCs; see ``configure_ca_env``."""
        from .devices import configure_ca_env

        return configure_ca_env(
            self.port, addr_list=self.addr_list, repeater_port=self.state["repeater_port"]
        )

    def export_lines(self) -> list[str]:
        """``export NAME=value`` lines for a shell."""
        return [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]

    # -- lifecycle --------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        state_dir: str | os.PathLike,
        local_detector_root: str | os.PathLike,
        ioc_root: str = "/detector-disk",
        *,
        mini_prefix: str = "mini:",
        ad_prefix: str = "SIMDET:",
        metadata_prefix: str = "BL:MD:",
        timeout: float = 20.0,
    ) -> SimBeamline:
        """Launch the IOCs, each on a free loopback port, and wait until they answer.

        Raises :class:`SimBeamlineRunningError` if ``state_dir`` holds a running
        beamline, :class:`SimBeamlineError` (with the IOC's log tail) if an IOC fails.
        """
        state_dir = Path(state_dir).expanduser().resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        if (state_dir / STATE_FILE).exists():
            old = cls.load(state_dir)
            if old.running:
                raise SimBeamlineRunningError(
                    f"the simulated beamline in {state_dir} is already running (port {old.port})",
                    old,
                )
            old.stop()  # stale: clean up what is left
        local_root = Path(local_detector_root).expanduser().resolve()
        local_root.mkdir(parents=True, exist_ok=True)
        ports: list[int] = []
        for _ in range(4):
            ports.append(find_free_port(exclude=tuple(ports)))
        state: dict[str, Any] = {
            "version": 1,
            "host": HOST,
            "port": ports[0],
            "ports": {"mini": ports[0], "ad": ports[1], "metadata": ports[3]},
            "repeater_port": ports[2],
            "mini_prefix": mini_prefix,
            "ad_prefix": ad_prefix,
            "metadata_prefix": metadata_prefix,
            "metadata_state_file": str(state_dir / METADATA_STATE_FILE),
            "ioc_root": ioc_root,
            "local_detector_root": str(local_root),
            "started_at": datetime.datetime.now().astimezone().isoformat(),
            "iocs": {},
        }
        self = cls(state_dir, state)
        commands = {
            "repeater": [sys.executable, "-c", _REPEATER],
            "mini": [
                sys.executable,
                "-m",
                "caproto.ioc_examples.mini_beamline",
                "--prefix",
                mini_prefix,
            ],
            "ad": [
                sys.executable,
                "-m",
                "bluesky_recorders.sim.ad_ioc",
                "--prefix",
                ad_prefix,
                "--ioc-root",
                ioc_root,
                "--local-root",
                str(local_root),
            ],
            "metadata": [
                sys.executable,
                "-m",
                "bluesky_recorders.metadata.ioc",
                "--prefix",
                metadata_prefix,
                "--state-file",
                str(state_dir / METADATA_STATE_FILE),
            ],
        }
        try:
            for name, argv in commands.items():
                if name != "repeater":
                    argv = [*argv, "--interfaces", HOST, "--list-pvs"]
                self._launch(name, argv)
            self._write_state()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _child_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(self.server_env(name) if name in self.ports else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_SRC_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        return env

    def _launch(self, name: str, argv: list[str]) -> None:
        log = self.state_dir / f"ioc-{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._child_env(name),
                cwd=self.state_dir,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        self.state["iocs"][name] = {
            "pid": proc.pid,
            "start_ticks": _start_ticks(proc.pid),
            "log": str(log),
            "argv": argv,
        }

    def _wait_ready(self, timeout: float) -> None:
        pvs = [f"{self.mini_prefix}current", f"{self.ad_prefix}cam1:Acquire"]
        if "metadata" in self.state["iocs"]:
            pvs.append(f"{self.metadata_prefix}updated")
        fast = []  # motors quick enough for tests and demos: 2 units in 0.1 s
        for group in ("ph", "edge", "slit"):
            fast += [
                f"{self.mini_prefix}{group}:mtr_tick_rate=20",
                f"{self.mini_prefix}{group}:vel=20",
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(self.env)
        probe = subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(timeout), *pvs, *fast],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout + 5
        try:
            while probe.poll() is None:
                for name, info in self.state["iocs"].items():
                    if not _pid_alive(info["pid"]):
                        raise SimBeamlineError(
                            f"IOC {name!r} exited during startup; log {info['log']}:\n"
                            + _tail(info["log"])
                        )
                if time.monotonic() > deadline:
                    raise SimBeamlineError(f"IOCs not ready within {timeout:g} s")
                time.sleep(0.05)
        finally:
            if probe.poll() is None:
                probe.kill()
            output = probe.communicate()[0].decode(errors="replace").strip()
        if probe.returncode != 0:
            tails = "\n".join(
                f"--- {n} ({i['log']}):\n{_tail(i['log'])}" for n, i in self.state["iocs"].items()
            )
            raise SimBeamlineError(
                f"the simulated IOCs did not answer at {self.addr_list}: "
                f"{output.splitlines()[-1] if output else 'probe failed'}\n{tails}"
            )

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, state_dir: str | os.PathLike) -> SimBeamline:
        """Reattach to the beamline recorded in ``state_dir`` (running or stale)."""
        state_dir = Path(state_dir).expanduser().resolve()
        path = state_dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise SimBeamlineError(f"no simulated beamline recorded in {state_dir}") from None
        except (OSError, ValueError) as exc:
            raise SimBeamlineError(f"cannot read {path}: {exc}") from exc
        return cls(state_dir, state)

    def status(self) -> dict[str, str]:
        """``{"mini": "running"|"stale", "ad": ..., "metadata": ...}``: stale = pid dead."""
        return {
            name: "running" if _pid_alive(info["pid"], info.get("start_ticks")) else "stale"
            for name, info in self.state["iocs"].items()
        }

    @property
    def running(self) -> bool:
        """Whether every IOC runs."""
        status = self.status()
        return bool(status) and all(s == "running" for s in status.values())

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the IOCs, SIGKILL them after ``timeout`` s; remove the state file.

        A pid is signalled only while it still is the process that was started (same
        start time), never a process that reused the pid.
        """

        def alive() -> list[dict]:
            return [
                info
                for info in self.state["iocs"].values()
                if _pid_alive(info["pid"], info.get("start_ticks"))
            ]

        def kill(sig: int) -> None:
            for info in alive():
                try:
                    os.kill(info["pid"], sig)
                except ProcessLookupError:
                    pass

        kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = False
        while alive():
            if time.monotonic() > deadline:
                if killed:
                    pids = [i["pid"] for i in alive()]
                    raise SimBeamlineError(f"IOC processes {pids} survived SIGKILL")
                kill(signal.SIGKILL)
                killed, deadline = True, time.monotonic() + timeout
            time.sleep(0.05)
        for info in self.state["iocs"].values():
            child = _CHILDREN.pop(info["pid"], None)
            if child is not None:
                child.wait()
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> SimBeamline:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"SimBeamline(state_dir={str(self.state_dir)!r}, port={self.port}, "
            f"status={self.status()})"
        )
