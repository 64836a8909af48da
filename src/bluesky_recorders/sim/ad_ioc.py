"""A caproto IOC emulating an areaDetector camera with its HDF5 file-writer plugin.

Only what a bluesky/ophyd file-writing detector needs is emulated (see
``docs/explanations/decisions/0003-simulated-beamline.md``):

- ``cam1:``: ``Acquire`` (a put of 1 takes ``NumImages`` frames and completes, with
  put-completion, only once they are written; the value returns to 0), ``AcquireTime``,
  ``NumImages``, ``SizeX``/``SizeY`` and their ``ArraySize*_RBV``, ``ArrayCounter_RBV``,
  ``Acquire_RBV`` and ``DetectorState_RBV`` (0 idle, 1 acquiring).
- ``HDF1:``: ``FilePath``, ``FileName``, ``FileNumber``, ``FileTemplate``,
  ``FullFileName_RBV``, ``Capture`` (1 opens a new file, 0 closes it), ``Capture_RBV``,
  ``NumCaptured_RBV``, ``FileWriteMode`` (Stream only), ``AutoIncrement``,
  ``FilePathExists_RBV``, ``WriteStatus`` (0 ok, 1 error) and ``WriteMessage``.
- ``Stats1:Total_RBV``: the sum of the frames of the last acquisition.

``FilePath`` is a path on the "detector machine": it must lie under ``--ioc-root``,
which the IOC maps to ``--local-root`` to find where to really write. Frames (uint16, a
gaussian spot with Poisson noise) go to ``/entry/data/data`` with shape (n, y, x), one
frame per chunk, flushed after every frame, in SWMR mode so live readers can follow.
Existing files are never overwritten.

Run it with::

    python -m bluesky_recorders.sim.ad_ioc --prefix SIMDET: --ioc-root /detector-disk \
        --local-root /some/real/dir --interfaces 127.0.0.1 --list-pvs
"""

from __future__ import annotations

import contextvars
import logging
import os
import posixpath
import signal
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty, run, template_arg_parser

__all__ = ["ADHDF5IOC", "DATASET", "main", "map_ioc_path"]

#: Where frames go in every file, as in the areaDetector HDF5 plugin's default layout.
DATASET = "/entry/data/data"
#: Longest path/name string accepted by the long-string PVs.
MAX_PATH = 1024

logger = logging.getLogger(__name__)
_internal_write = contextvars.ContextVar("_internal_write", default=False)


def _long_string(doc: str, value: str = "", **kwargs) -> pvproperty:
    """A CHAR waveform PV holding a long string, as areaDetector serves paths.

    Not ``report_as_string``: that makes the native type DBR_STRING, cut at 40 chars.
    Clients read it as a string with e.g. ophyd's ``EpicsSignal(..., string=True)``.
    """
    return pvproperty(
        **kwargs,
        value=value,
        dtype=ChannelType.CHAR,
        max_length=MAX_PATH,
        string_encoding="utf-8",
        doc=doc,
    )


def map_ioc_path(ioc_path: str, ioc_root: str, local_root: str | os.PathLike) -> Path:
    """Map an IOC-side absolute POSIX directory to the local directory it stands for.

    Raises ``ValueError`` when ``ioc_path`` is not absolute or lies outside ``ioc_root``.
    """
    if not ioc_path or not posixpath.isabs(ioc_path):
        raise ValueError(f"FilePath {ioc_path!r} is not an absolute path")
    norm = posixpath.normpath(ioc_path)
    root = posixpath.normpath(ioc_root)
    if norm != root and not norm.startswith(root.rstrip("/") + "/"):
        raise ValueError(f"FilePath {ioc_path!r} is outside the IOC root {ioc_root!r}")
    rel = posixpath.relpath(norm, root)
    return Path(local_root) if rel == "." else Path(local_root, *rel.split("/"))


def make_frame(
    rng: np.random.Generator, shape: tuple[int, int], t: float, exposure: float
) -> np.ndarray:
    """A synthetic frame: a gaussian spot drifting slowly in a circle, with Poisson noise."""
    ny, nx = shape
    cy = ny / 2 + ny / 8 * np.sin(t / 3)
    cx = nx / 2 + nx / 8 * np.cos(t / 3)
    sy, sx = max(ny / 10, 1.0), max(nx / 10, 1.0)
    y, x = np.ogrid[:ny, :nx]
    spot = np.exp(-((x - cx) ** 2 / (2 * sx**2) + (y - cy) ** 2 / (2 * sy**2)))
    scale = max(exposure, 1e-3) / 0.1
    expected = scale * (10.0 + 2000.0 * spot)
    return np.clip(rng.poisson(expected), 0, np.iinfo(np.uint16).max).astype(np.uint16)


class CamGroup(PVGroup):
    """The ``cam1:`` part: acquisition control and frame size."""

    Acquire = pvproperty(value=0, dtype=int, doc="1 acquires NumImages frames, then 0")
    Acquire_RBV = pvproperty(value=0, dtype=int, read_only=True)
    DetectorState_RBV = pvproperty(value=0, dtype=int, read_only=True, doc="0 idle, 1 busy")
    AcquireTime = pvproperty(value=0.01, dtype=float, precision=4, units="s")
    NumImages = pvproperty(value=1, dtype=int)
    SizeX = pvproperty(value=64, dtype=int)
    SizeY = pvproperty(value=48, dtype=int)
    ArraySizeX_RBV = pvproperty(value=64, dtype=int, read_only=True)
    ArraySizeY_RBV = pvproperty(value=48, dtype=int, read_only=True)
    ArrayCounter_RBV = pvproperty(value=0, dtype=int, read_only=True)

    @Acquire.putter
    async def Acquire(self, instance, value):  # noqa: N802 - PV name
        if _internal_write.get():
            return value
        if not value:
            self.parent.abort_requested = True
            return 0
        if self.Acquire_RBV.value:
            return 1  # already acquiring: AD ignores a second start
        token = _internal_write.set(True)
        try:
            await instance.write(1)
            await self.parent.acquire()
        finally:
            _internal_write.reset(token)
        return 0

    @SizeX.putter
    async def SizeX(self, instance, value):  # noqa: N802
        value = max(1, int(value))
        await self.ArraySizeX_RBV.write(value)
        return value

    @SizeY.putter
    async def SizeY(self, instance, value):  # noqa: N802
        value = max(1, int(value))
        await self.ArraySizeY_RBV.write(value)
        return value

    @NumImages.putter
    async def NumImages(self, instance, value):  # noqa: N802
        return max(1, int(value))


class HDF5Group(PVGroup):
    """The ``HDF1:`` part: the HDF5 file-writer plugin in Stream mode."""

    FilePath = _long_string("IOC-side directory (under the IOC root)", alarm_group="path")
    FileName = _long_string("File name stem")
    FileNumber = pvproperty(value=0, dtype=int)
    FileTemplate = _long_string("printf template (path, name, number)", "%s%s_%6.6d.h5")
    FullFileName_RBV = _long_string("IOC-side path of the last file opened")
    FilePathExists_RBV = pvproperty(value=0, dtype=int, read_only=True)
    AutoIncrement = pvproperty(value=1, dtype=int)
    FileWriteMode = pvproperty(
        value="Stream",
        dtype=ChannelType.ENUM,
        enum_strings=("Single", "Capture", "Stream"),
        doc="Only Stream is emulated",
    )
    Capture = pvproperty(value=0, dtype=int, doc="1 opens a new file, 0 closes it")
    Capture_RBV = pvproperty(value=0, dtype=int, read_only=True)
    NumCaptured_RBV = pvproperty(value=0, dtype=int, read_only=True)
    WriteStatus = pvproperty(
        value=0, dtype=int, read_only=True, alarm_group="write", doc="0 ok, 1 error"
    )
    WriteMessage = _long_string("Last error message, empty when fine")

    @FilePath.putter
    async def FilePath(self, instance, value):  # noqa: N802
        path = value if value.endswith("/") or not value else value + "/"
        try:
            map_ioc_path(path, self.parent.ioc_root, self.parent.local_root)
        except ValueError as exc:
            await self.FilePathExists_RBV.write(0)
            await instance.alarm.write(status=AlarmStatus.WRITE, severity=AlarmSeverity.MAJOR_ALARM)
            await self.parent.report_error(str(exc))
            return path
        await self.FilePathExists_RBV.write(1)
        await instance.alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)
        await self.parent.report_error("")
        return path

    @FileWriteMode.putter
    async def FileWriteMode(self, instance, value):  # noqa: N802
        if value != "Stream":
            await self.parent.report_error(f"FileWriteMode {value!r} is not emulated")
            return "Stream"
        return value

    @Capture.putter
    async def Capture(self, instance, value):  # noqa: N802
        if value:
            return 1 if await self.parent.open_file() else 0
        await self.parent.close_file()
        return 0

    @Capture.shutdown
    async def Capture(self, instance, async_lib):  # noqa: N802
        await self.parent.close_file()


class ADHDF5IOC(PVGroup):
    """An emulated areaDetector with an HDF5 file-writer plugin (``HDF1:``)."""

    cam = SubGroup(CamGroup, prefix="cam1:")
    hdf = SubGroup(HDF5Group, prefix="HDF1:")
    stats_total = pvproperty(
        name="Stats1:Total_RBV",
        value=0.0,
        dtype=float,
        read_only=True,
        doc="Sum of the frames of the last acquisition",
    )

    def __init__(self, *args, ioc_root: str, local_root: str | os.PathLike, **kwargs):
        super().__init__(*args, **kwargs)
        self.ioc_root = posixpath.normpath(ioc_root)
        self.local_root = Path(local_root)
        self.abort_requested = False
        self._file: h5py.File | None = None
        self._dset: h5py.Dataset | None = None
        self._rng = np.random.default_rng()

    async def report_error(self, message: str) -> None:
        """Set ``WriteMessage``/``WriteStatus`` (an empty message clears the error)."""
        await self.hdf.WriteMessage.write(message)
        if message:
            await self.hdf.WriteStatus.write(
                1, status=AlarmStatus.WRITE, severity=AlarmSeverity.MAJOR_ALARM
            )
        else:
            await self.hdf.WriteStatus.write(
                0, status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM
            )
        if message:
            logger.warning("%s", message)

    async def open_file(self) -> bool:
        """Open a new HDF5 file from FilePath/FileName/FileNumber; False on refusal."""
        hdf = self.hdf
        if self._file is not None:
            return True
        ioc_dir = hdf.FilePath.value
        try:
            local_dir = map_ioc_path(ioc_dir, self.ioc_root, self.local_root)
        except ValueError as exc:
            await self.report_error(f"Capture refused: {exc}")
            return False
        if not hdf.FileName.value:
            await self.report_error("Capture refused: FileName is empty")
            return False
        number = hdf.FileNumber.value
        try:
            ioc_file = hdf.FileTemplate.value % (ioc_dir, hdf.FileName.value, number)
        except (TypeError, ValueError) as exc:
            await self.report_error(f"Capture refused: bad FileTemplate: {exc}")
            return False
        local_file = map_ioc_path(posixpath.dirname(ioc_file), self.ioc_root, self.local_root)
        local_file = local_file / posixpath.basename(ioc_file)
        ny, nx = self.cam.ArraySizeY_RBV.value, self.cam.ArraySizeX_RBV.value
        try:
            local_dir.mkdir(parents=True, exist_ok=True)
            f = h5py.File(local_file, "x", libver="latest")
        except FileExistsError:
            await self.report_error(f"Capture refused: {ioc_file} exists, not overwriting")
            return False
        except OSError as exc:
            await self.report_error(f"Capture refused: cannot create {ioc_file}: {exc}")
            return False
        try:
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            self._dset = data.create_dataset(
                "data",
                shape=(0, ny, nx),
                maxshape=(None, ny, nx),
                chunks=(1, ny, nx),
                dtype="<u2",
            )
            f.swmr_mode = True
        except Exception as exc:
            f.close()
            await self.report_error(f"Capture refused: cannot set up {ioc_file}: {exc}")
            return False
        self._file = f
        await hdf.FullFileName_RBV.write(ioc_file)
        await hdf.NumCaptured_RBV.write(0)
        await hdf.Capture_RBV.write(1)
        if hdf.AutoIncrement.value:
            await hdf.FileNumber.write(number + 1)
        await self.report_error("")
        logger.info("Opened %s (local %s)", ioc_file, local_file)
        return True

    async def close_file(self) -> None:
        """Close the open file, if any (Capture=0 or IOC shutdown)."""
        f, self._file, self._dset = self._file, None, None
        if f is not None:
            f.close()
            logger.info("Closed %s", self.hdf.FullFileName_RBV.value)
        await self.hdf.Capture_RBV.write(0)

    def close_file_sync(self) -> None:
        """Close the open file without the event loop (last-resort cleanup)."""
        f, self._file, self._dset = self._file, None, None
        if f is not None:
            f.close()

    async def acquire(self) -> None:
        """Take NumImages frames; append them to the open file, if capturing."""
        cam = self.cam
        self.abort_requested = False
        await cam.Acquire_RBV.write(1)
        await cam.DetectorState_RBV.write(1)
        total = 0.0
        try:
            shape = (cam.ArraySizeY_RBV.value, cam.ArraySizeX_RBV.value)
            for _ in range(cam.NumImages.value):
                if self.abort_requested:
                    break
                exposure = cam.AcquireTime.value
                await self.async_lib.library.sleep(max(exposure, 0.0))
                frame = make_frame(self._rng, shape, time.monotonic(), exposure)
                total += float(frame.sum())
                await self._store(frame)
                await cam.ArrayCounter_RBV.write(cam.ArrayCounter_RBV.value + 1)
        finally:
            await self.stats_total.write(total)
            await cam.DetectorState_RBV.write(0)
            await cam.Acquire_RBV.write(0)

    async def _store(self, frame: np.ndarray) -> None:
        dset = self._dset
        if dset is None:
            return
        if dset.shape[1:] != frame.shape:
            await self.report_error(
                f"frame shape {frame.shape} differs from the open file's {dset.shape[1:]}"
            )
            return
        n = dset.shape[0]
        dset.resize(n + 1, axis=0)
        dset[n] = frame
        dset.flush()
        await self.hdf.NumCaptured_RBV.write(n + 1)

    @stats_total.startup
    async def stats_total(self, instance, async_lib):
        self.async_lib = async_lib


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse caproto's standard options plus the roots, run."""
    parser, split_args = template_arg_parser(
        default_prefix="SIMDET:",
        desc=textwrap.dedent(ADHDF5IOC.__doc__ or ""),
        supported_async_libs=["asyncio"],
    )
    parser.add_argument(
        "--ioc-root",
        default="/detector-disk",
        help="IOC-side directory that FilePath must lie under",
    )
    parser.add_argument(
        "--local-root", required=True, help="Local directory the IOC root stands for"
    )
    args = parser.parse_args(argv)
    ioc_options, run_options = split_args(args)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s ad_ioc] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    ioc = ADHDF5IOC(ioc_root=args.ioc_root, local_root=args.local_root, **ioc_options)
    # SIGTERM behaves like Ctrl-C so shutdown hooks close the open file.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(ioc.pvdb, **run_options)
    except KeyboardInterrupt:
        pass
    finally:
        ioc.close_file_sync()


if __name__ == "__main__":
    main()
