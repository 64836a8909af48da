"""The NeXus recorder: one NeXus HDF5 file per run, written while the run goes on.

Layout of ``<run directory>/<file_template>``::

    /                                   @default="entry"
    /entry                  NXentry     @default="data"
        title, start_time, end_time (written last), entry_identifier (uid),
        scan_id, plan_name, program_name @version, exit_status [, reason]
        data                NXdata      default plot: soft links into the stream
                                        @signal, @axes, <axis>_indices
        sample              NXsample    from start["experiment"]["sample"]
        user_1 ...          NXuser      PI and users from start["experiment"]
        instrument          NXinstrument
            positioners/<key>  NXpositioner   baseline stream, first reading
            bluesky         NXcollection
                streams/<stream>/<key>    one dataset per data key (units, @source)
                streams/<stream>/time, seq_num
                streams/<stream>/<key>    virtual dataset of HDF5 detector frames
                external/<stream>/<key>   NXnote: one row per piece of external data
                                          (path, dataset, frames, events), compound
                metadata    start, stop and descriptors/<stream> as JSON text

Live reading: the file is opened with ``libver="latest"`` and switched to SWMR
at the first flush after a descriptor, so ``h5py.File(path, "r", swmr=True)``
reads the points flushed so far (call ``dataset.refresh()`` to see more). SWMR
forbids creating objects, so a new descriptor, a rebuild of the virtual
datasets and the stop reopen the file without SWMR (and without a file lock,
so a reader holding it never blocks the writer) for the change, then turn SWMR
on again. A SWMR reader reading during that short window may fail and must
reopen. See ``docs/explanations/decisions/0009-nexus.md``.

Format logic is in pure functions (:func:`column_spec`, :func:`default_plot`,
:func:`frame_mappings`, ...); :class:`NexusWriter` holds the open file and the
run's state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import RecorderError
from .external import ExternalFrames, PathMap
from .paths import DirectoryPolicy
from .recorder import Recorder, RunWriter

__all__ = [
    "NexusRecorder",
    "NexusWriter",
    "ColumnSpec",
    "column_spec",
    "column_block",
    "default_plot",
    "frame_mappings",
    "iso_time",
    "safe_key",
]

log = logging.getLogger("bluesky_recorders.nexus")

STREAMS = "/entry/instrument/bluesky/streams"
EXTERNAL = "/entry/instrument/bluesky/external"
METADATA = "/entry/instrument/bluesky/metadata"
_STR = h5py.string_dtype("utf-8")
_CHUNK = 1024
_REFERENCE = np.dtype(
    [
        ("seq_start", "<i8"),
        ("seq_stop", "<i8"),
        ("frame_start", "<i8"),
        ("frame_stop", "<i8"),
        ("path", _STR),
        ("dataset", _STR),
        ("source_path", _STR),
    ]
)


# -- pure functions: documents in, layout out -----------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """How one data key is stored: numpy dtype (``None``: JSON/UTF-8 text) and row shape."""

    dtype: np.dtype[Any] | None
    shape: tuple[int, ...] = ()

    @property
    def is_text(self) -> bool:
        return self.dtype is None

    @property
    def fill(self) -> Any:
        if self.dtype is None:
            return ""
        if self.dtype.kind == "f":
            return math.nan
        return 0


def column_spec(data_key: Mapping[str, Any]) -> ColumnSpec | None:
    """The dataset for a descriptor data key; ``None`` for external data (linked instead).

    Numbers are float64, integers int64, booleans bool, strings UTF-8 text;
    arrays of a known 1-D or 2-D shape are stored inline (``dtype_numpy`` when
    the descriptor gives it, else float64); any other value is kept as JSON text.
    """
    if data_key.get("external"):
        return None
    dtype = data_key.get("dtype")
    shape = tuple(data_key.get("shape") or ())
    if dtype == "string":
        return ColumnSpec(None)
    if dtype == "number" and not shape:
        return ColumnSpec(np.dtype("float64"))
    if dtype == "integer" and not shape:
        return ColumnSpec(np.dtype("int64"))
    if dtype == "boolean" and not shape:
        return ColumnSpec(np.dtype("bool"))
    if (
        dtype in ("array", "number", "integer")
        and 1 <= len(shape) <= 2
        and all(isinstance(n, int) and n > 0 for n in shape)
    ):
        numpy = data_key.get("dtype_numpy")
        try:
            np_dtype = np.dtype(numpy) if isinstance(numpy, str) and numpy else None
        except TypeError:
            np_dtype = None
        if np_dtype is None or np_dtype.kind not in "biuf":
            np_dtype = np.dtype("float64")
        return ColumnSpec(np_dtype, shape)
    return ColumnSpec(None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def column_block(values: Sequence[Any], spec: ColumnSpec) -> tuple[np.ndarray, int]:
    """``values`` as one array for ``spec``, and how many could not be converted (filled)."""
    n = len(values)
    if spec.is_text:
        return np.array([_text(v) for v in values], dtype=object), 0
    assert spec.dtype is not None
    try:
        block = np.asarray(values, dtype=spec.dtype)
        if block.shape == (n, *spec.shape):
            return block, 0
    except (TypeError, ValueError, OverflowError):
        pass
    block = np.full((n, *spec.shape), spec.fill, dtype=spec.dtype)
    bad = 0
    for i, value in enumerate(values):
        try:
            block[i] = np.asarray(value, dtype=spec.dtype).reshape(spec.shape)
        except (TypeError, ValueError, OverflowError):
            bad += 1
    return block, bad


def safe_key(name: str) -> str:
    """A data key as an HDF5 link name (no ``/``, not ``.``)."""
    out = name.replace("/", "_")
    return out if out not in ("", ".", "..") else f"_{out}"


def iso_time(t: float | None) -> str:
    """POSIX time as ISO 8601 with the local offset."""
    when = datetime.now() if t is None else datetime.fromtimestamp(t)
    return when.astimezone().isoformat()


def default_plot(
    start: Mapping[str, Any], descriptor: Mapping[str, Any]
) -> tuple[str, list[str]] | None:
    """(signal, axes) of the default plot from the primary descriptor, or None.

    Signal: the first hinted field of the first detector in ``start["detectors"]``,
    else the first hinted field that is not an axis. Axes: the fields of the
    first ``hints.dimensions`` entry for this stream (``time`` is the stream's
    own time). Only keys stored inline and numeric can be the signal; the
    plot is 1-D over the points (the first axis field is ``@axes``, the
    others are alternative axes with ``_indices`` 0).
    """
    keys = descriptor.get("data_keys", {})
    hints = descriptor.get("hints") or {}
    stream = descriptor.get("name", "primary")

    def numeric(key: str) -> bool:
        spec = column_spec(keys.get(key, {})) if key in keys else None
        return spec is not None and not spec.is_text

    axes: list[str] = []
    dims = (start.get("hints") or {}).get("dimensions") or []
    for dim in dims:
        if isinstance(dim, Sequence) and len(dim) == 2 and dim[1] == stream:
            axes = [f for f in dim[0] if f == "time" or numeric(f)]
            break
    hinted: list[str] = []
    for det in start.get("detectors") or []:
        fields = (hints.get(det) or {}).get("fields") or [] if isinstance(hints, Mapping) else []
        hinted.extend(f for f in fields if numeric(f) and f not in axes)
    if not hinted and isinstance(hints, Mapping):
        for obj in hints.values():
            if isinstance(obj, Mapping):
                hinted.extend(f for f in obj.get("fields") or [] if numeric(f) and f not in axes)
    if not hinted:
        return None
    return hinted[0], axes


def frame_mappings(
    records: Sequence[ExternalFrames],
) -> list[tuple[int, int, ExternalFrames, int, int]]:
    """``(point_start, point_stop, record, frame_start, frame_stop)`` blocks for a VDS.

    Points are ``seq_num - 1``. A record covering several events with one
    frame each is one block; with several frames per point, one block per point.
    """
    out = []
    for rec in records:
        points = rec.seq_stop - rec.seq_start
        if points <= 0:
            continue
        per = max(1, (rec.frame_stop - rec.frame_start) // points)
        if per == 1:
            out.append((rec.seq_start - 1, rec.seq_stop - 1, rec, rec.frame_start, rec.frame_stop))
            continue
        for i in range(points):
            f0 = rec.frame_start + i * per
            out.append((rec.seq_start - 1 + i, rec.seq_start + i, rec, f0, f0 + per))
    return out


def _program_version() -> str:
    try:
        return version("bluesky-recorders")
    except PackageNotFoundError:
        return "unknown"


def _set_text(group: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    return group.create_dataset(name, data=_text(value), dtype=_STR)


# -- the writer -------------------------------------------------------------------


@dataclass
class _Stream:
    name: str
    group: str
    columns: dict[str, tuple[str, ColumnSpec]]
    external: list[str]
    rows: int = 0
    frames: dict[str, list[ExternalFrames]] = field(default_factory=dict)


class NexusWriter(RunWriter):
    """Writes one run into one NeXus file (see the module docstring for the layout)."""

    recorder: NexusRecorder

    def __init__(self, start: Mapping[str, Any], recorder: NexusRecorder) -> None:
        super().__init__(start, recorder)
        self.policy = recorder.policy
        directory = self.policy.prepare_run(recorder.data_root, start, path_map=recorder.path_map)
        name = self.policy.file_name(recorder.file_template, start)
        target = directory / name
        self.path = str(target)
        # create-only: claim the name with O_EXCL, then let HDF5 write into it
        self.policy.open_new(target, "xb", root=recorder.data_root).close()
        self.artifacts.append(self.path)
        self.root = Path(os.path.realpath(recorder.data_root))
        libver = "latest" if recorder.swmr else None
        self.file: h5py.File | None = h5py.File(target, "w", libver=libver)
        self._swmr = False
        self._streams: dict[str, _Stream] = {}
        self._group_names: set[str] = set()
        self._vds_dirty: set[tuple[str, str]] = set()
        self._last_flush = time.monotonic()
        self._warned: set[str] = set()
        try:
            self._write_start(start)
            self._flush()
        except BaseException:
            self.close()
            raise

    # layout --------------------------------------------------------------
    def _write_start(self, start: Mapping[str, Any]) -> None:
        f = self._f
        f.attrs["default"] = "entry"
        f.attrs["file_name"] = os.path.basename(self.path)
        f.attrs["file_time"] = iso_time(None)
        f.attrs["creator"] = "bluesky_recorders.nexus"
        f.attrs["HDF5_Version"] = h5py.version.hdf5_version
        f.attrs["h5py_version"] = h5py.version.version
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        plan = start.get("plan_name", "")
        scan_id = start.get("scan_id")
        _set_text(entry, "title", start.get("title") or f"{plan} {scan_id if scan_id else ''}")
        _set_text(entry, "start_time", iso_time(start.get("time")))
        _set_text(entry, "entry_identifier", start["uid"])
        if isinstance(scan_id, int):
            entry.create_dataset("scan_id", data=scan_id)
        _set_text(entry, "plan_name", plan)
        prog = _set_text(entry, "program_name", "bluesky")
        prog.attrs["version"] = _bluesky_version()
        prog.attrs["configuration"] = f"bluesky_recorders {_program_version()}"
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        bs = inst.create_group("bluesky")
        bs.attrs["NX_class"] = "NXcollection"
        for sub in ("streams", "external", "metadata"):
            bs.create_group(sub).attrs["NX_class"] = "NXcollection"
        _set_text(f[METADATA], "start", dict(start))
        f[METADATA].create_group("descriptors").attrs["NX_class"] = "NXcollection"
        experiment = start.get("experiment")
        if isinstance(experiment, Mapping):
            self._write_experiment(entry, experiment)

    @staticmethod
    def _write_experiment(entry: h5py.Group, experiment: Mapping[str, Any]) -> None:
        sample = experiment.get("sample")
        if isinstance(sample, Mapping) and any(sample.values()):
            grp = entry.create_group("sample")
            grp.attrs["NX_class"] = "NXsample"
            for name, keys in (
                ("name", ("name",)),
                ("chemical_formula", ("chemical_formula", "formula")),
                ("description", ("description",)),
            ):
                value = next((sample[k] for k in keys if sample.get(k)), None)
                if value:
                    _set_text(grp, name, value)
        people: list[tuple[str, Mapping[str, Any]]] = []
        pi = experiment.get("pi")
        if isinstance(pi, Mapping) and pi.get("name"):
            people.append(("principal investigator", pi))
        for user in experiment.get("users") or []:
            if isinstance(user, Mapping) and user.get("name"):
                if pi and user.get("name") == pi.get("name"):
                    continue
                people.append(("user", user))
        for i, (role, person) in enumerate(people, 1):
            grp = entry.create_group(f"user_{i}")
            grp.attrs["NX_class"] = "NXuser"
            _set_text(grp, "name", person["name"])
            _set_text(grp, "role", role)
            for key in ("email", "affiliation"):
                if person.get(key):
                    _set_text(grp, key, person[key])
        proposal = experiment.get("proposal_id") or (experiment.get("proposal") or {}).get("id")
        if proposal:
            _set_text(entry, "experiment_identifier", proposal)

    @property
    def _f(self) -> h5py.File:
        if self.file is None:
            raise RuntimeError(f"{self.path} is closed")
        return self.file

    def _restructure(self) -> h5py.File:
        """The file open without SWMR, so objects can be created (see module docstring)."""
        if self._swmr:
            self._f.flush()
            self._f.close()
            self.file = None
            # no lock: a reader holding the file must not block the run
            self.file = h5py.File(self.path, "r+", libver="latest", locking=False)
            self._swmr = False
        return self._f

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        f = self._restructure()
        name = doc.get("name", "primary")
        gname = safe_key(name)
        n = 2
        while gname in self._group_names:
            gname, n = f"{safe_key(name)}_{n}", n + 1
        self._group_names.add(gname)
        group = f[STREAMS].create_group(gname)
        group.attrs["NX_class"] = "NXcollection"
        group.attrs["stream_name"] = name
        group.attrs["descriptor_uid"] = doc["uid"]
        _set_text(f[METADATA]["descriptors"], gname, dict(doc))
        columns: dict[str, tuple[str, ColumnSpec]] = {}
        external: list[str] = []
        used = {"time", "seq_num"}
        for key, dk in doc.get("data_keys", {}).items():
            ds_name = safe_key(key)
            while ds_name in used:
                ds_name += "_"
            used.add(ds_name)
            spec = column_spec(dk)
            if spec is None:
                external.append(key)
                self._make_reference(gname, key, dk)
                continue
            ds = group.create_dataset(
                ds_name,
                shape=(0, *spec.shape),
                maxshape=(None, *spec.shape),
                chunks=(max(1, _CHUNK // max(1, int(np.prod(spec.shape)))), *spec.shape),
                dtype=_STR if spec.is_text else spec.dtype,
            )
            _describe(ds, key, dk)
            columns[key] = (ds_name, spec)
        t = group.create_dataset(
            "time", shape=(0,), maxshape=(None,), chunks=(_CHUNK,), dtype="float64"
        )
        t.attrs["units"] = "s"
        t.attrs["long_name"] = "time (POSIX seconds)"
        group.create_dataset(
            "seq_num", shape=(0,), maxshape=(None,), chunks=(_CHUNK,), dtype="int64"
        )
        stream = _Stream(name, f"{STREAMS}/{gname}", columns, external)
        self._streams[doc["uid"]] = stream
        if name == "primary" and "data" not in f["entry"]:
            self._make_plot(doc, stream)
        self._flush()

    def _make_reference(self, gname: str, key: str, dk: Mapping[str, Any]) -> None:
        f = self._f
        grp = f[EXTERNAL].require_group(gname)
        grp.attrs["NX_class"] = "NXcollection"
        note = grp.create_group(safe_key(key))
        note.attrs["NX_class"] = "NXnote"
        _set_text(note, "type", "application/json")
        _set_text(note, "description", f"external data of {key!r}: frames per event range")
        _set_text(note, "data_key", dict(dk))
        ds = note.create_dataset(
            "frames", shape=(0,), maxshape=(None,), chunks=(256,), dtype=_REFERENCE
        )
        ds.attrs["long_name"] = "events [seq_start, seq_stop) = frames [frame_start, frame_stop)"

    def _make_plot(self, doc: Mapping[str, Any], stream: _Stream) -> None:
        plot = default_plot(self.start_doc, doc)
        if plot is None:
            log.info("%s: no hinted detector field in the primary stream: no NXdata", self.path)
            return
        signal, axes = plot
        f = self._f
        data = f["entry"].create_group("data")
        data.attrs["NX_class"] = "NXdata"
        for key in [signal, *axes]:
            ds_name = "time" if key == "time" else stream.columns[key][0]
            source = f"{stream.group}/{ds_name}"
            f[source].attrs["target"] = source
            if key not in data:
                data[key] = h5py.SoftLink(source)
        data.attrs["signal"] = signal
        data.attrs["axes"] = axes[:1] if axes else ["."]
        for axis in axes:
            data.attrs[f"{axis}_indices"] = 0
        f["entry"].attrs["default"] = "data"

    # data ----------------------------------------------------------------
    def event_page(self, doc: Mapping[str, Any]) -> None:
        stream = self._streams[doc["descriptor"]]
        n = len(doc["seq_num"])
        if n == 0:
            return
        f = self._f
        group = f[stream.group]
        data = doc.get("data", {})
        for key, (ds_name, spec) in stream.columns.items():
            values = data.get(key)
            if values is None or len(values) != n:
                values = [None] * n if values is None else list(values)[:n]
                values += [None] * (n - len(values))
            block, bad = column_block(values, spec)
            if bad:
                self._warn_once(f"fill:{key}", "%d value(s) of %r stored as fill", bad, key)
            _append(group[ds_name], block, stream.rows)
        _append(group["time"], np.asarray(doc["time"], dtype="float64"), stream.rows)
        _append(group["seq_num"], np.asarray(doc["seq_num"], dtype="int64"), stream.rows)
        stream.rows += n
        self._maybe_flush()

    def external(self, frames: ExternalFrames) -> None:
        stream = self._streams.get(frames.descriptor)
        if stream is None:
            self._warn_once(
                f"nodesc:{frames.descriptor}",
                "external data for unknown descriptor %s ignored",
                frames.descriptor,
            )
            return
        gname = stream.group.rsplit("/", 1)[1]
        key = frames.data_key
        note = f"{EXTERNAL}/{gname}/{safe_key(key)}"
        if note not in self._f:
            self._restructure()
            self._make_reference(gname, key, {})
        row = np.array(
            [
                (
                    frames.seq_start,
                    frames.seq_stop,
                    frames.frame_start,
                    frames.frame_stop,
                    frames.path,
                    frames.dataset or "",
                    frames.source_path,
                )
            ],
            dtype=_REFERENCE,
        )
        ds = self._f[note]["frames"]
        _append(ds, row, ds.shape[0])
        if frames.is_hdf5 and frames.dataset:
            stream.frames.setdefault(key, []).append(frames)
            self._vds_dirty.add((frames.descriptor, key))
        self._maybe_flush()

    def _build_vds(self, descriptor: str, key: str) -> None:
        stream = self._streams[descriptor]
        records = stream.frames.get(key, [])
        if not records:
            return
        dk = self.descriptors.get(descriptor, {}).get("data_keys", {}).get(key, {})
        first = records[0]
        per = max(1, first.frames_per_point)
        frame_shape, dtype = self._source_layout(first, dk)
        blocks = frame_mappings(records)
        points = max(b[1] for b in blocks)
        shape = (points, per, *frame_shape) if per > 1 else (points, *frame_shape)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        nexus_dir = os.path.dirname(self.path)
        sources: dict[tuple[str, str], h5py.VirtualSource] = {}
        for p0, p1, rec, f0, f1 in blocks:
            if per > 1 and (f1 - f0) != per:
                continue
            src_key = (rec.path, rec.dataset or "")
            src = sources.get(src_key)
            if src is None:
                src = h5py.VirtualSource(
                    self._link_path(rec.path, nexus_dir),
                    rec.dataset or "",
                    shape=(max(r.frame_stop for r in records if r.path == rec.path), *frame_shape),
                    dtype=dtype,
                )
                sources[src_key] = src
            if per > 1:
                layout[p0] = src[f0:f1]
            else:
                layout[p0:p1] = src[f0:f1]
        f = self._restructure()
        group = f[stream.group]
        name = safe_key(key)
        if name in group:
            del group[name]
        fill = math.nan if np.dtype(dtype).kind == "f" else 0
        ds = group.create_virtual_dataset(name, layout, fillvalue=fill)
        _describe(ds, key, dk)
        ds.attrs["frames_per_point"] = per

    def _source_layout(
        self, rec: ExternalFrames, dk: Mapping[str, Any]
    ) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Frame shape and dtype: from the detector file, else from the descriptor.

        A detector file still open for writing by its IOC can be read only as a SWMR
        reader (the AD HDF5 plugin writes in SWMR mode): that is tried second.
        """
        err: Exception | None = None
        for swmr in (False, True):
            try:
                with h5py.File(rec.path, "r", locking=False, swmr=swmr) as src:
                    ds = src[rec.dataset or ""]
                    return tuple(ds.shape[1:]), ds.dtype
            except (OSError, KeyError, TypeError) as exc:
                err = exc
        self._warn_once(
            f"src:{rec.path}",
            "cannot read detector file %s (%s); linking it by the descriptor's shape",
            rec.path,
            err,
        )
        shape = tuple(int(n) for n in dk.get("shape") or ())
        if len(shape) >= 3 or (rec.frames_per_point > 1 and len(shape) > 2):
            shape = shape[1:]
        numpy = dk.get("dtype_numpy")
        try:
            dtype = np.dtype(numpy) if isinstance(numpy, str) and numpy else np.dtype("float64")
        except TypeError:
            dtype = np.dtype("float64")
        return shape, dtype

    def _link_path(self, path: str, nexus_dir: str) -> str:
        """Relative to the NeXus file when both are under the data root, else absolute."""
        real = os.path.realpath(path)
        root = str(self.root)
        if os.path.commonpath([root, real]) == root:
            return os.path.relpath(real, os.path.realpath(nexus_dir))
        return real

    # flushing and the end -------------------------------------------------
    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.recorder.flush_interval:
            self._flush()

    def _flush(self) -> None:
        for descriptor, key in sorted(self._vds_dirty):
            self._build_vds(descriptor, key)
        self._vds_dirty.clear()
        f = self._f
        if self.recorder.swmr and not self._swmr and self._streams:
            f.swmr_mode = True
            self._swmr = True
        f.flush()
        self._last_flush = time.monotonic()

    def stop(self, doc: Mapping[str, Any]) -> None:
        for descriptor, key in sorted(self._vds_dirty):
            self._build_vds(descriptor, key)
        self._vds_dirty.clear()
        f = self._restructure()
        entry = f["entry"]
        self._write_positioners(entry)
        status = doc.get("exit_status", "")
        _set_text(entry, "exit_status", status)
        if status != "success":
            _set_text(entry, "reason", doc.get("reason", ""))
        _set_text(f[METADATA], "stop", dict(doc))
        f.flush()
        _set_text(entry, "end_time", iso_time(doc.get("time")))  # last: "the run is over"
        f.flush()

    def _write_positioners(self, entry: h5py.Group) -> None:
        """Each numeric scalar of the baseline stream's first reading as an NXpositioner."""
        for stream in self._streams.values():
            if stream.name != "baseline" or stream.rows == 0:
                continue
            dks = self.descriptors.get(self._uid_of(stream), {}).get("data_keys", {})
            group = self._f[stream.group]
            for key, (ds_name, spec) in stream.columns.items():
                if spec.is_text or spec.shape:
                    continue
                inst = entry["instrument"]
                positioners = inst.require_group("positioners")
                positioners.attrs["NX_class"] = "NXcollection"
                if ds_name in positioners:
                    continue
                pos = positioners.create_group(ds_name)
                pos.attrs["NX_class"] = "NXpositioner"
                _set_text(pos, "name", key)
                value = pos.create_dataset("value", data=group[ds_name][0])
                units = dks.get(key, {}).get("units")
                if units:
                    value.attrs["units"] = units
            break

    def _uid_of(self, stream: _Stream) -> str:
        return next(uid for uid, s in self._streams.items() if s is stream)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None

    def _warn_once(self, tag: str, msg: str, *args: Any) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning("%s: " + msg, self.path, *args)


def _describe(ds: h5py.Dataset, key: str, dk: Mapping[str, Any]) -> None:
    if dk.get("units"):
        ds.attrs["units"] = str(dk["units"])
    if dk.get("source"):
        ds.attrs["source"] = str(dk["source"])
    if ds.name and ds.name.rsplit("/", 1)[-1] != key:
        ds.attrs["data_key"] = key


def _append(ds: h5py.Dataset, block: np.ndarray, at: int) -> None:
    """One resize and one slice assignment."""
    n = len(block)
    ds.resize(at + n, axis=0)
    ds[at : at + n] = block


def _bluesky_version() -> str:
    try:
        return version("bluesky")
    except PackageNotFoundError:
        return "unknown"


class NexusRecorder(Recorder):
    """One NeXus HDF5 file per run, written while the run goes on.

    data_root
        Root of the data directories; each run's file goes into
        :func:`~bluesky_recorders.paths.run_directory` (required).
    policy
        The :class:`~bluesky_recorders.paths.DirectoryPolicy` creating
        directories and files (create-only).
    file_template
        File name from the start document (default
        ``"{scan_id:05d}_{plan_name}_{uid:.8}.nxs"``).
    flush_interval
        Seconds between flushes (0: after every event page); also at stop.
    swmr
        Write with HDF5 SWMR (``libver="latest"``) so readers open the file
        with ``swmr=True`` during the run. Off by default: a SWMR file left by
        a killed writer opens only with ``swmr=True`` (or after ``h5clear -s``),
        while a default file opens everywhere; live readers of a default file
        open it with ``HDF5_USE_FILE_LOCKING=FALSE`` (``locking=False``).
    """

    kind = "nexus"
    saves_data = True
    writer_class = NexusWriter

    def __init__(
        self,
        *,
        data_root: str | os.PathLike[str] | None = None,
        policy: DirectoryPolicy | None = None,
        file_template: str = "{scan_id:05d}_{plan_name}_{uid:.8}.nxs",
        flush_interval: float = 1.0,
        swmr: bool = False,
        path_map: Mapping[str, str] | PathMap | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path_map=path_map, **kwargs)
        if data_root is None:
            raise ValueError("a nexus recorder needs a data_root")
        self.data_root = Path(os.path.expanduser(os.fspath(data_root))).absolute()
        self.policy = policy or DirectoryPolicy()
        self.file_template = file_template
        self.flush_interval = float(flush_interval)
        self.swmr = bool(swmr)
        if not self.flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, not {flush_interval!r}")

    def make_writer(self, start: Mapping[str, Any]) -> NexusWriter:
        try:
            return NexusWriter(start, self)
        except Exception as err:  # no file yet, or it exists: name it
            raise RecorderError(
                self.name,
                cause=err,
                run_uid=start.get("uid", ""),
                path=getattr(err, "filename", "") or "",
                doc_name="start",
                doc_uid=start.get("uid", ""),
            ) from err
