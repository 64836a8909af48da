"""ophyd v1 devices in front of the simulated beamline's IOCs.

- :class:`SimADHDF5Detector`: the emulated areaDetector HDF5 writer
  (:mod:`bluesky_recorders.sim.ad_ioc`), emitting ``resource``/``datum`` (spec ``AD_HDF5``).
- :class:`SimADStreamDetector`: the same IOC, emitting ``stream_resource``/``stream_datum``.
- :class:`MiniMotor`, :class:`DotMotor`, :class:`PointDetector`: caproto's
  ``mini_beamline`` IOC.

All use ophyd's caproto control layer. Call :func:`configure_ca_env` (or put the EPICS
variables in ``os.environ`` yourself) before the first device is created.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from event_model import ComposeResource, ComposeStreamResource, StreamRange
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, EpicsSignal, EpicsSignalRO, Kind
from ophyd import FormattedComponent as FCpt

from ..epics import ca_env_summary, use_caproto
from ..errors import BeamlineError

__all__ = [
    "CAConnectionError",
    "DotMotor",
    "MiniMotor",
    "PointDetector",
    "SimADHDF5Detector",
    "SimADStreamDetector",
    "ca_env_summary",
    "configure_ca_env",
    "connect_all",
    "make_beamline",
]


class CAConnectionError(BeamlineError):
    """Some PVs did not connect; ``.pvs`` lists them."""

    def __init__(self, message: str, pvs: list[str]):
        super().__init__(message)
        self.pvs = pvs


def _existing_caproto_context():
    """The shared caproto context ophyd uses, or None if none was created yet."""
    from caproto.threading import pyepics_compat

    if pyepics_compat._make_context.cache_info().currsize == 0:  # noqa: SLF001
        return None
    return pyepics_compat._make_context()  # noqa: SLF001


def configure_ca_env(
    port: int, *, addr_list: str = "127.0.0.1", repeater_port: int | None = None
) -> dict[str, str]:
    """Point this process's Channel Access clients at IOCs on ``addr_list:port``.

    Sets ``EPICS_CA_ADDR_LIST``, ``EPICS_CA_AUTO_ADDR_LIST=NO`` and
    ``EPICS_CA_SERVER_PORT`` (and ``EPICS_CA_REPEATER_PORT`` if given) in ``os.environ``
    and returns them. It works also after ophyd made its caproto client context (which
    ``import ophyd`` does when caproto is its default control layer): caproto reads the
    address list from ``os.environ`` at every search, and the few values the context
    cached at creation are updated here.
    """
    env = {
        "EPICS_CA_ADDR_LIST": addr_list,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(int(port)),
    }
    if repeater_port is not None:
        env["EPICS_CA_REPEATER_PORT"] = str(int(repeater_port))
    os.environ.update(env)
    ctx = _existing_caproto_context()
    if ctx is not None:
        cached = ctx.broadcaster.environ
        for key in ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST"):
            cached[key] = env[key]
        cached["EPICS_CA_SERVER_PORT"] = int(port)
        ctx.broadcaster.ca_server_port = int(port)
    return env


class _CaprotoDevice(Device):
    """A Device whose signals use ophyd's caproto control layer."""

    def __init__(self, *args, **kwargs):
        use_caproto()
        super().__init__(*args, **kwargs)


class _MotorBase(_CaprotoDevice):
    """A settable axis: ``set()`` completes with the IOC's put-completion."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.readback.name = self.name

    def set(self, value, **kwargs):
        """Move to ``value``; the status finishes when the IOC's put completes."""
        return self.setpoint.set(value, **kwargs)

    @property
    def position(self):
        """The current readback."""
        return self.readback.get()


class MiniMotor(_MotorBase):
    """An axis of a ``mini_beamline`` group (``ph:``, ``edge:``, ``slit:``).

    ``prefix`` is the group's prefix, e.g. ``mini:ph:``.
    """

    readback = Cpt(EpicsSignalRO, "mtr", kind="hinted")
    setpoint = Cpt(EpicsSignal, "mtr", put_complete=True, kind="normal")
    velocity = Cpt(EpicsSignal, "vel", kind="config")
    tick_rate = Cpt(EpicsSignal, "mtr_tick_rate", kind="config")


class DotMotor(_MotorBase):
    """An axis of the moving dot: ``prefix`` is ``mini:dot:``, ``axis`` ``mtrx``/``mtry``."""

    readback = FCpt(EpicsSignalRO, "{prefix}{_axis}", kind="hinted")
    setpoint = FCpt(EpicsSignal, "{prefix}{_axis}", put_complete=True, kind="normal")

    def __init__(self, prefix, *, axis, **kwargs):
        self._axis = axis
        super().__init__(prefix, **kwargs)


class PointDetector(_CaprotoDevice):
    """A scalar detector PV of ``mini_beamline``, refreshed by the IOC every 0.5 s.

    ``trigger()`` waits for the next update stamped after the trigger (at most
    ``max_wait`` seconds), so a reading taken after a move reflects the new position.
    """

    value = FCpt(EpicsSignalRO, "{prefix}{_field}", kind="hinted")
    exposure = FCpt(EpicsSignal, "{prefix}{_exp}", kind="config")

    def __init__(self, prefix, *, field="det", exposure="exp", max_wait=0.75, **kwargs):
        self._field, self._exp = field, exposure
        self.max_wait = max_wait
        super().__init__(prefix, **kwargs)
        self.value.name = self.name

    def trigger(self):
        """Finish on the first update stamped after this call (or after ``max_wait`` s)."""
        status = DeviceStatus(self)
        lock = threading.Lock()
        t0 = time.time()
        cid = None

        def finish(*args, timestamp=None, **kwargs):
            if timestamp is not None and timestamp < t0:
                return  # computed before the trigger (e.g. during the last move)
            with lock:
                if status.done:
                    return
                status.set_finished()
            if cid is not None:
                self.value.unsubscribe(cid)

        cid = self.value.subscribe(finish, run=False)
        timer = threading.Timer(self.max_wait, finish)
        timer.daemon = True
        timer.start()
        return status


class _SimADBase(_CaprotoDevice):
    """Common PVs and staging of the emulated areaDetector + HDF5 plugin.

    ``stage()`` points the plugin at a new file (``<ioc_root>/<YYYY>/<MM>/<DD>/<uuid>_
    000000.h5`` on the IOC side) and starts capturing; each ``trigger()`` acquires
    ``frames_per_point`` frames; ``unstage()`` closes the file. ``describe()`` always
    gives the image shape as ``[frames_per_point, y, x]``, also when it is 1.
    """

    acquire = Cpt(EpicsSignal, "cam1:Acquire", put_complete=True, kind="omitted")
    acquire_time = Cpt(EpicsSignal, "cam1:AcquireTime", kind="config")
    num_images = Cpt(EpicsSignal, "cam1:NumImages", kind="omitted")
    size_x = Cpt(EpicsSignal, "cam1:SizeX", kind="omitted")
    size_y = Cpt(EpicsSignal, "cam1:SizeY", kind="omitted")
    array_size_x = Cpt(EpicsSignalRO, "cam1:ArraySizeX_RBV", kind="config")
    array_size_y = Cpt(EpicsSignalRO, "cam1:ArraySizeY_RBV", kind="config")
    array_counter = Cpt(EpicsSignalRO, "cam1:ArrayCounter_RBV", kind="omitted")
    file_path = Cpt(EpicsSignal, "HDF1:FilePath", string=True, kind="omitted")
    file_name = Cpt(EpicsSignal, "HDF1:FileName", string=True, kind="omitted")
    file_number = Cpt(EpicsSignal, "HDF1:FileNumber", kind="omitted")
    file_template = Cpt(EpicsSignal, "HDF1:FileTemplate", string=True, kind="omitted")
    full_file_name = Cpt(
        EpicsSignalRO,
        "HDF1:FullFileName_RBV",
        string=True,
        auto_monitor=False,
        kind="omitted",
    )
    file_path_exists = Cpt(
        EpicsSignalRO, "HDF1:FilePathExists_RBV", auto_monitor=False, kind="omitted"
    )
    capture = Cpt(EpicsSignal, "HDF1:Capture", put_complete=True, kind="omitted")
    capture_rbv = Cpt(EpicsSignalRO, "HDF1:Capture_RBV", auto_monitor=False, kind="omitted")
    num_captured = Cpt(EpicsSignalRO, "HDF1:NumCaptured_RBV", kind="omitted")
    write_status = Cpt(EpicsSignalRO, "HDF1:WriteStatus", auto_monitor=False, kind="omitted")
    write_message = Cpt(
        EpicsSignalRO, "HDF1:WriteMessage", string=True, auto_monitor=False, kind="omitted"
    )
    stats_total = Cpt(EpicsSignalRO, "Stats1:Total_RBV", auto_monitor=False, kind="hinted")

    dataset = "/entry/data/data"
    dtype_numpy = "<u2"

    def __init__(
        self,
        prefix,
        *,
        name,
        ioc_root: str = "/detector-disk",
        frames_per_point: int = 1,
        subdir_template: str = "%Y/%m/%d",
        put_timeout: float = 10.0,
        **kwargs,
    ):
        super().__init__(prefix, name=name, **kwargs)
        self.ioc_root = posixpath.normpath(ioc_root)
        self.frames_per_point = int(frames_per_point)
        self.subdir_template = subdir_template
        self.put_timeout = put_timeout
        self._asset_docs_cache: deque[tuple[str, dict]] = deque()
        self._point = 0
        self._last_reading: dict[str, Any] | None = None
        self.ioc_file: str | None = None

    @property
    def image_key(self) -> str:
        """The data key of the image in events."""
        return f"{self.name}_image"

    # -- staging ----------------------------------------------------------------

    def stage(self):
        staged = super().stage()
        try:
            self._open_file()
        except BaseException:
            super().unstage()
            raise
        return staged

    def _put(self, signal, value) -> None:
        signal.set(value, timeout=self.put_timeout).wait(self.put_timeout + 1)

    def _open_file(self) -> None:
        subdir = datetime.datetime.now().strftime(self.subdir_template)
        ioc_dir = posixpath.join(self.ioc_root, subdir) + "/"
        self._put(self.num_images, self.frames_per_point)
        self._put(self.file_path, ioc_dir)
        self._put(self.file_name, uuid.uuid4().hex)
        self._put(self.file_number, 0)
        self._put(self.capture, 1)
        if self.capture_rbv.get() != 1:
            raise RuntimeError(
                f"{self.name}: the HDF5 plugin at {self.prefix}HDF1: refused to "
                f"capture: {self.write_message.get()}"
            )
        self.ioc_file = self.full_file_name.get()
        self._point = 0
        self._last_reading = None
        self._asset_docs_cache.clear()
        self._start_assets()

    def unstage(self):
        try:
            self._put(self.capture, 0)
        finally:
            self._asset_docs_cache.clear()
            self._last_reading = None
            unstaged = super().unstage()
        return unstaged

    # -- acquisition ----------------------------------------------------------------

    def trigger(self):
        if self.ioc_file is None or self.capture_rbv.get() != 1:
            raise RuntimeError(f"{self.name} must be staged before trigger()")
        n = self.frames_per_point
        timeout = n * (self.acquire_time.get() + 1.0) + self.put_timeout
        status = self.acquire.set(1, timeout=timeout)
        self._point_assets(self._point)
        self._point += 1
        return status

    def read(self):
        reading = super().read()
        if self._last_reading is not None:
            reading[self.image_key] = self._last_reading
        return reading

    def describe(self):
        desc = super().describe()
        shape = [self.frames_per_point, int(self.array_size_y.get()), int(self.array_size_x.get())]
        desc[self.image_key] = {
            "source": f"PV:{self.prefix}",
            "dtype": "array",
            "shape": shape,
            "dtype_numpy": self.dtype_numpy,
            "external": self.external,
        }
        return desc

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        items = list(self._asset_docs_cache)
        self._asset_docs_cache.clear()
        yield from items

    # -- for subclasses -------------------------------------------------------------

    external = "FILESTORE:"

    def _start_assets(self) -> None:
        raise NotImplementedError

    def _point_assets(self, point: int) -> None:
        raise NotImplementedError


class SimADHDF5Detector(_SimADBase):
    """Emits ``resource`` (spec ``AD_HDF5``, IOC-side ``root``) and one ``datum`` per
    point (``{"point_number": i}``); events hold the ``datum_id`` under
    ``<name>_image``."""

    external = "FILESTORE:"

    def _start_assets(self) -> None:
        bundle = ComposeResource(None)(
            spec="AD_HDF5",
            root=self.ioc_root,
            resource_path=posixpath.relpath(self.ioc_file, self.ioc_root),
            resource_kwargs={"frame_per_point": self.frames_per_point},
            path_semantics="posix",
        )
        self._compose_datum = bundle.compose_datum
        self._asset_docs_cache.append(("resource", bundle.resource_doc))

    def _point_assets(self, point: int) -> None:
        datum = self._compose_datum(datum_kwargs={"point_number": point})
        self._asset_docs_cache.append(("datum", datum))
        self._last_reading = {"value": datum["datum_id"], "timestamp": time.time()}


class SimADStreamDetector(_SimADBase):
    """Emits ``stream_resource`` (``application/x-hdf5``, ``file://localhost`` + the
    IOC-side path) once and one ``stream_datum`` per point, indices in points."""

    external = "STREAM:"

    def _start_assets(self) -> None:
        ny, nx = int(self.array_size_y.get()), int(self.array_size_x.get())
        bundle = ComposeStreamResource()(
            mimetype="application/x-hdf5",
            uri="file://localhost" + self.ioc_file,
            data_key=self.image_key,
            parameters={
                "dataset": self.dataset,
                "chunk_shape": [1, ny, nx],
                "multiplier": self.frames_per_point,
            },
        )
        self._compose_stream_datum = bundle.compose_stream_datum
        self._asset_docs_cache.append(("stream_resource", bundle.stream_resource_doc))

    def _point_assets(self, point: int) -> None:
        doc = self._compose_stream_datum(indices=StreamRange(start=point, stop=point + 1))
        self._asset_docs_cache.append(("stream_datum", doc))


def make_beamline(
    *,
    mini_prefix: str = "mini:",
    ad_prefix: str = "SIMDET:",
    ioc_root: str = "/detector-disk",
    frames_per_point: int = 1,
) -> dict[str, Any]:
    """Create (not connect) the simulated beamline's devices, keyed by their names.

    Motors ``ph_mtr``, ``edge_mtr``, ``slit_mtr``, ``dot_mtrx``, ``dot_mtry``; point
    detectors ``ph_det``, ``edge_det``, ``slit_det``, ``dot_sum``; the ``beam_current``
    signal; ``ad_det`` (AD_HDF5 resource/datum) and ``ad_stream_det``
    (stream_resource/stream_datum), both on the same IOC: stage only one at a time.
    """
    use_caproto()
    devices: dict[str, Any] = {}
    for group in ("ph", "edge", "slit"):
        prefix = f"{mini_prefix}{group}:"
        devices[f"{group}_mtr"] = MiniMotor(prefix, name=f"{group}_mtr")
        devices[f"{group}_det"] = PointDetector(prefix, name=f"{group}_det")
    for axis in ("mtrx", "mtry"):
        devices[f"dot_{axis}"] = DotMotor(f"{mini_prefix}dot:", axis=axis, name=f"dot_{axis}")
    devices["dot_sum"] = PointDetector(
        f"{mini_prefix}dot:", field="img_sum", max_wait=2.3, name="dot_sum"
    )
    devices["beam_current"] = EpicsSignalRO(
        f"{mini_prefix}current", name="beam_current", kind=Kind.hinted
    )
    common = {"ioc_root": ioc_root, "frames_per_point": frames_per_point}
    devices["ad_det"] = SimADHDF5Detector(ad_prefix, name="ad_det", **common)
    devices["ad_stream_det"] = SimADStreamDetector(ad_prefix, name="ad_stream_det", **common)
    return devices


def _signals(obj) -> list:
    """The leaf signals of a device (or the signal itself)."""
    if hasattr(obj, "walk_signals"):
        return [w.item for w in obj.walk_signals(include_lazy=True)]
    return [obj]


def _pv_names(signal) -> list[str]:
    names = [getattr(signal, "pvname", None), getattr(signal, "setpoint_pvname", None)]
    return [n for n in dict.fromkeys(names) if n]


def connect_all(devices: Mapping[str, Any] | list, timeout: float = 5.0) -> None:
    """Wait (``timeout`` seconds in all) until every PV of ``devices`` is connected.

    Raises :class:`CAConnectionError` naming every unconnected PV and the EPICS address
    list and port in use. Never waits much longer than ``timeout``.
    """
    objs = list(devices.values()) if isinstance(devices, Mapping) else list(devices)
    deadline = time.monotonic() + timeout
    for obj in objs:
        remaining = max(deadline - time.monotonic(), 0.01)
        try:
            obj.wait_for_connection(timeout=remaining)
        except TimeoutError:
            continue
    missing: list[str] = []
    for obj in objs:
        for sig in _signals(obj):
            if not getattr(sig, "connected", True):
                missing.extend(_pv_names(sig) or [sig.name])
    missing = list(dict.fromkeys(missing))
    if missing:
        raise CAConnectionError(
            f"{len(missing)} PV(s) did not connect within {timeout:g} s: "
            f"{', '.join(missing)} (client settings: {ca_env_summary()}). "
            "Is the simulated beamline running (`bsrec sim status`) and is this process "
            "configured for its port?",
            missing,
        )
