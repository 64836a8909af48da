"""The NeXus recorder: one NeXus HDF5 file per run, written while the run goes on.

Layout of ``<run directory>/<file_template>``::

    /                                   @default="entry"
    /entry                  NXentry     @default="data"
        title, start_time, end_time (written last), entry_identifier (uid),
        experiment_identifier (proposal), scan_id, plan_name, plan_args (JSON),
        program_name @version, exit_status [, reason]
        data                NXdata      default plot: soft links into the streams
                                        @signal, @axes, <axis>_indices,
                                        @auxiliary_signals; a 2-D grid scan is an
                                        image (virtual datasets over the stream)
        monitor             NXmonitor   data -> the hinted monitor's column
        sample              NXsample    from start["experiment"]["sample"]
        user_1 ...          NXuser      PI and users from start["experiment"]
        instrument          NXinstrument
            name                         beamline id
            source          NXsource     from start["experiment"]["instrument"]
            monochromator   NXmonochromator  energy
            <detector>      NXdetector   links to the detector's columns; data
            <positioner>    NXpositioner value (baseline start), end_value
                                         (baseline end); scanned motors: value ->
                                         the primary stream's column
            positioners     NXcollection one dataset per positioner (links), as
                                         PyMca and silx look for them
            bluesky         NXcollection
                streams/<stream>/<key>    one dataset per data key (units, @source)
                streams/<stream>/time, seq_num, timestamps/<key>
                streams/<stream>/<key>    virtual dataset of HDF5 detector frames
                external/<stream>/<key>   NXnote: frames (one row per piece of
                                          external data: path, dataset, frames,
                                          events) and event_data (datum ids)
                metadata    start, stop, descriptors/<stream> as JSON text,
                            assets (resource/datum documents, JSON lines)

Rows are kept in memory and written in blocks at every flush (at most
``flush_interval`` seconds apart, and at stop), so a reader sees the run up to
the last flush, and so does the file left by a killed process.

Live reading: with ``swmr=True`` the file is opened with ``libver="v110"`` (the
oldest format SWMR allows, so that readers built on HDF5 1.10, as Debian's
hdf5-tools and nexus-tools are, can read it) and switched to SWMR
at the first flush after a descriptor, so ``h5py.File(path, "r", swmr=True)``
reads the points flushed so far (call ``dataset.refresh()`` to see more). SWMR
forbids creating objects, so a new descriptor, a rebuild of the virtual
datasets and the stop reopen the file without SWMR (and without a file lock,
so a reader holding it never blocks the writer) for the change, then turn SWMR
on again. A SWMR reader reading during that short window may fail and must
reopen. See ``docs/explanations/decisions/0009-nexus.md``.

Format logic is in pure functions (:mod:`bluesky_recorders.nexus_layout`);
:class:`NexusWriter` holds the open file and the run's state;
:mod:`bluesky_recorders.nexus_export` reads a file back into documents.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import operator
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .external import ExternalFrames
from .h5objects import growing_dataset, new_group, set_attr, soft_link, text_dataset
from .nexus_layout import (
    RESERVED_INSTRUMENT_NAMES,
    ColumnSpec,
    Plot,
    baseline_positioners,
    column_block,
    column_spec,
    default_plot,
    fallback_plot,
    frame_mappings,
    iso_time,
    monitor_key,
    safe_key,
    text_rows,
    to_text,
)
from .preflight import format_size, free_bytes, is_disk_full, parse_size
from .recorder import FileRecorder, RunWriter

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
    "STREAMS",
    "EXTERNAL",
    "METADATA",
]

log = logging.getLogger("bluesky_recorders.nexus")

STREAMS = "/entry/instrument/bluesky/streams"
EXTERNAL = "/entry/instrument/bluesky/external"
METADATA = "/entry/instrument/bluesky/metadata"
#: Version of this layout (root attribute ``bsrec_layout``), read by the exporter.
LAYOUT_VERSION = 2
_STR = h5py.string_dtype("utf-8")
#: File format bounds for SWMR: the oldest that allows it, readable by HDF5 1.10 tools.
_SWMR_LIBVER = ("v110", "v110")
_CHUNK = 1024
#: Rows a stream keeps in memory at most before they are written (a fast run is
#: written in blocks of this size, not all at the next flush).
_MAX_BUFFERED = 8192
#: Rows of a stream of float64 scalars converted to arrays at once, while the values
#: are still in the processor's cache: 1.6-2.0 µs per event of 10 keys against
#: 2.6-3.0 µs when 8,192 rows are converted at the write (measured here).
_PACK_ROWS = 1024
#: Bytes of HDF5's chunk cache per open dataset. The writer keeps its columns open
#: between writes (see ``_Handles``); each holds its cache, 8 MiB by default in HDF5 2
#: (1 MiB before), which for 22 columns would be most of the memory a run takes. A
#: block is written whole, so only the last, partial chunk of a column is worth keeping.
_CHUNK_CACHE = 128 * 1024
#: Columns of an external-data reference table (one row per ExternalFrames).
_REFERENCE_NUMBERS = ("seq_start", "seq_stop", "frame_start", "frame_stop")
_REFERENCE_TEXTS = ("path", "dataset", "source_path")


@functools.cache
def _program_version() -> str:
    try:
        return version("bluesky-recorders")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def _bluesky_version() -> str:
    try:
        return version("bluesky")
    except PackageNotFoundError:
        return "unknown"


def _set_text(group: h5py.Group, name: str, value: Any) -> h5py.h5d.DatasetID:
    return text_dataset(group, name, to_text(value))


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = new_group(parent, name)
    set_attr(group, "NX_class", nx_class)
    return group


def _growing(group: h5py.Group, name: str, spec: ColumnSpec) -> h5py.Dataset:
    """A resizable, chunked dataset of rows of ``spec`` (float fill: NaN; text: a
    rank-2 array of UTF-8 characters whose width grows, see ``text_rows``)."""
    if spec.is_text:
        ds = growing_dataset(group, name, np.dtype("S1"), (0, 0), (None, None), (256, 64), gzip=1)
        set_attr(ds, "text", "utf-8 rows, NUL-padded: ds[()].view(f'S{ds.shape[1]}')[:, 0]")
        return ds
    assert spec.dtype is not None
    rows = max(1, _CHUNK // max(1, int(np.prod(spec.shape))))
    fill = math.nan if spec.dtype.kind == "f" else None
    return growing_dataset(
        group,
        name,
        spec.dtype,
        (0, *spec.shape),
        (None, *spec.shape),
        (rows, *spec.shape),
        fill=fill,
    )


def _append(ds: h5py.Dataset, block: np.ndarray, at: int) -> None:
    """Rows of :func:`text_rows` appended to a rank-2 dataset of characters, which
    widens to the longest row (shorter rows are NUL-padded), through h5py's low-level
    API like :func:`_append_numbers`."""
    n, width = block.shape
    dsid = ds.id
    wide = max(dsid.shape[1], width)
    if width < wide:
        padded = np.zeros((n, wide), dtype="S1")
        padded[:, :width] = block
        block = padded
    _append_numbers(ds, block, at)


def _append_numbers(ds: h5py.Dataset, block: np.ndarray, at: int) -> None:
    """:func:`_append` for a numeric block of ``ds``'s dtype, through h5py's low-level
    API: one extent change and one hyperslab write (the high-level ``resize`` and
    slice assignment cost about four times as much)."""
    block = np.ascontiguousarray(block)
    shape = block.shape
    dsid = ds.id
    dsid.set_extent((at + shape[0], *shape[1:]))
    if not shape[0]:
        return
    space = dsid.get_space()
    space.select_hyperslab((at,) + (0,) * (len(shape) - 1), shape)
    dsid.write(h5py.h5s.create_simple(shape), space, block)


def _describe(ds: h5py.Dataset, key: str, dk: Mapping[str, Any]) -> None:
    if dk.get("units"):
        set_attr(ds, "units", str(dk["units"]))
    if dk.get("source"):
        set_attr(ds, "source", str(dk["source"]))
    if ds.name and ds.name.rsplit("/", 1)[-1] != key:
        set_attr(ds, "data_key", key)


def _link(
    group: h5py.Group, name: str, source: h5py.Dataset, marked: set[str] | None = None
) -> None:
    """A soft link ``group/name`` -> ``source``, whose ``@target`` names itself
    (written once if ``marked`` holds the paths whose ``@target`` is written)."""
    path = source.name
    if marked is None or path not in marked:
        set_attr(source, "target", path)
        if marked is not None:
            marked.add(path)
    soft_link(group, name, path)


# -- the writer -------------------------------------------------------------------

#: One row of ``metadata/assets``: ``json.dumps(pair, default=str)`` with the encoder
#: made once (json.dumps makes one per call when given ``default``).
_asset_json = json.JSONEncoder(default=str).encode

_FLOAT = ColumnSpec(np.dtype("float64"))
_NO_DATA: Mapping[str, Any] = {}
_INT = ColumnSpec(np.dtype("int64"))
_TEXT = ColumnSpec(None)


def _row_getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``mapping -> tuple of its values of keys`` (KeyError when one is missing)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda mapping: (mapping[key],)
    if not keys:
        return lambda mapping: ()
    return operator.itemgetter(*keys)


@dataclass
class _Stream:
    """One descriptor's group and the rows not yet written.

    Events are buffered as rows (one tuple of values and one of timestamps per
    event, in the order of ``keys``), event pages as columns (``values`` and
    ``stamps``, one list per key); rows are moved into the columns
    (:meth:`fold`) before a page is added, so that the order of the rows is kept.
    ``times`` and ``seqs`` hold every buffered row. The rows of a stream of float64
    scalars are converted, every ``_PACK_ROWS``, to 2-D arrays (:meth:`pack`), which
    come before the rows still kept as tuples.
    """

    name: str
    uid: str
    group: str
    columns: dict[str, tuple[str, ColumnSpec]]
    external: dict[str, str]  # data key -> its NXnote (datum ids per event, frames)
    rows: int = 0
    values: dict[str, list[Any]] = field(default_factory=dict)
    stamps: dict[str, list[Any]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    refs: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    frames: dict[str, list[ExternalFrames]] = field(default_factory=dict)
    stamp_names: dict[str, str] = field(default_factory=dict)  # key -> its timestamps dataset
    keys: tuple[str, ...] = ()
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(default=_row_getter(()))
    row_values: list[tuple[Any, ...]] = field(default_factory=list)
    row_stamps: list[tuple[Any, ...]] = field(default_factory=list)
    #: every key a float64 scalar column (rows convert to one 2-D array at once)
    all_float: bool = False
    #: rows converted by :meth:`pack`: (values, timestamps), each rows x keys
    packed: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: a value that does not convert was met: rows stay tuples until they are written
    unpackable: bool = False

    def all_keys(self) -> list[str]:
        return [*self.columns, *self.external]

    def reset_keys(self) -> None:
        """Buffer every key of :meth:`all_keys` (after a change of the keys, with
        nothing buffered)."""
        self.keys = tuple(self.all_keys())
        self.getter = _row_getter(self.keys)
        for key in self.keys:
            self.values.setdefault(key, [])
            self.stamps.setdefault(key, [])
        self.all_float = not self.external and all(
            spec == _FLOAT for _, spec in self.columns.values()
        )

    def pack(self) -> None:
        """Convert the rows kept as tuples to float64 arrays (see ``_PACK_ROWS``)."""
        n, width = len(self.row_values), len(self.keys)
        try:
            values = np.fromiter(chain.from_iterable(self.row_values), "float64", n * width)
            stamps = np.fromiter(chain.from_iterable(self.row_stamps), "float64", n * width)
        except (TypeError, ValueError, OverflowError):  # written column by column
            self.unpackable = True
            return
        self.packed.append((values.reshape(n, width), stamps.reshape(n, width)))
        self.row_values = []
        self.row_stamps = []

    def fold(self) -> None:
        """Move the buffered rows (packed ones first) into the per-key columns."""
        for values, stamps in self.packed:
            for j, key in enumerate(self.keys):
                self.values[key].extend(values[:, j].tolist())
                self.stamps[key].extend(stamps[:, j].tolist())
        self.packed = []
        if not self.row_values:
            return
        for key, column in zip(self.keys, zip(*self.row_values, strict=True), strict=True):
            self.values[key].extend(column)
        for key, column in zip(self.keys, zip(*self.row_stamps, strict=True), strict=True):
            self.stamps[key].extend(column)
        self.row_values = []
        self.row_stamps = []


@dataclass
class _Handles:
    """Open h5py objects of one stream's datasets (looking one up by its path costs
    more than writing a block to it); valid until the file is reopened."""

    columns: list[tuple[str, h5py.Dataset, ColumnSpec]]
    stamps: list[tuple[str, h5py.Dataset]]
    time: h5py.Dataset
    seq_num: h5py.Dataset
    event_data: dict[str, h5py.Dataset]


class NexusWriter(RunWriter):
    """Writes one run into one NeXus file (see the module docstring for the layout)."""

    recorder: NexusRecorder
    #: The stop document was written (else closing writes the points received, see close).
    stopped = False

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
        libver = _SWMR_LIBVER if recorder.swmr else None
        self.file: h5py.File | None = h5py.File(
            target, "w", libver=libver, rdcc_nbytes=_CHUNK_CACHE
        )
        self._swmr = False
        self._streams: dict[str, _Stream] = {}
        self._handles: dict[str, _Handles] = {}  # descriptor uid -> its datasets
        self._groups: dict[str, Any] = {}  # open groups and datasets by path (see _node)
        self._targets: set[str] = set()  # paths of datasets whose @target is written
        self._group_names: set[str] = set()
        self._vds_dirty: set[tuple[str, str]] = set()
        self._assets: list[str] = []
        self._assets_written = 0
        self._plot: Plot | None = None
        self._plot_stream: _Stream | None = None
        self._has_plot = False
        self._positioners: dict[str, str] = {}  # data key -> NXpositioner path
        self._last_flush = time.monotonic()
        self._flush_due = self._last_flush + recorder.flush_interval
        self._warned: set[str] = set()
        try:
            self._write_start(start)
            self._flush()
        except BaseException:
            self.stopped = True  # nothing to keep: close as it is
            self.close()
            raise

    # layout --------------------------------------------------------------
    def _write_start(self, start: Mapping[str, Any]) -> None:
        f = self._f
        set_attr(f, "default", "entry")
        set_attr(f, "file_name", os.path.basename(self.path))
        set_attr(f, "file_time", iso_time(None))
        set_attr(f, "creator", "bluesky_recorders.nexus")
        set_attr(f, "bsrec_layout", LAYOUT_VERSION)
        set_attr(f, "HDF5_Version", h5py.version.hdf5_version)
        set_attr(f, "h5py_version", h5py.version.version)
        entry = _nx_group(f, "entry", "NXentry")
        plan = start.get("plan_name", "")
        scan_id = start.get("scan_id")
        _set_text(entry, "title", start.get("title") or f"{plan} {scan_id if scan_id else ''}")
        _set_text(entry, "start_time", iso_time(start.get("time")))
        _set_text(entry, "entry_identifier", start["uid"])
        if isinstance(scan_id, int):
            entry.create_dataset("scan_id", data=scan_id)
        _set_text(entry, "plan_name", plan)
        if "plan_args" in start:
            _set_text(entry, "plan_args", start["plan_args"])
        prog = h5py.Dataset(_set_text(entry, "program_name", "bluesky"))
        set_attr(prog, "version", _bluesky_version())
        set_attr(prog, "configuration", f"bluesky_recorders {_program_version()}")
        inst = _nx_group(entry, "instrument", "NXinstrument")
        bs = _nx_group(inst, "bluesky", "NXcollection")
        for sub in ("streams", "external", "metadata"):
            _nx_group(bs, sub, "NXcollection")
        meta = f[METADATA]
        _set_text(meta, "start", dict(start))
        _nx_group(meta, "descriptors", "NXcollection")
        assets = self._groups[f"{METADATA}/assets"] = _growing(meta, "assets", _TEXT)
        set_attr(assets, "long_name", "resource and datum documents, one [name, doc] JSON per row")
        experiment = start.get("experiment")
        if isinstance(experiment, Mapping):
            _write_experiment(entry, experiment)
        self._make_placeholder_plot(entry)

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
            self._handles.clear()
            self._groups.clear()
            # no lock: a reader holding the file must not block the run
            self.file = h5py.File(
                self.path, "r+", libver=_SWMR_LIBVER, locking=False, rdcc_nbytes=_CHUNK_CACHE
            )
            self._swmr = False
        return self._f

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        self._write_pending()
        f = self._restructure()
        name = doc.get("name", "primary")
        gname = safe_key(name)
        n = 2
        while gname in self._group_names:
            gname, n = f"{safe_key(name)}_{n}", n + 1
        self._group_names.add(gname)
        group = _nx_group(f[STREAMS], gname, "NXcollection")
        set_attr(group, "stream_name", name)
        set_attr(group, "descriptor_uid", doc["uid"])
        set_attr(group, "order", len(self._streams))
        _set_text(f[METADATA]["descriptors"], gname, dict(doc))
        stamps = _nx_group(group, "timestamps", "NXcollection")
        columns: dict[str, tuple[str, ColumnSpec]] = {}
        external: dict[str, str] = {}
        column_handles: list[tuple[str, h5py.Dataset, ColumnSpec]] = []
        stamp_handles: dict[str, h5py.Dataset] = {}
        stamp_names: dict[str, str] = {}
        used = {"time", "seq_num", "timestamps"}
        for key, dk in doc.get("data_keys", {}).items():
            ds_name = safe_key(key)
            while ds_name in used:
                ds_name += "_"
            used.add(ds_name)
            ts = _growing(stamps, ds_name, _FLOAT)
            set_attr(ts, "units", "s")
            if ds_name != key:
                set_attr(ts, "data_key", key)
            stamp_handles[key], stamp_names[key] = ts, ds_name
            spec = column_spec(dk)
            if spec is None:
                external[key] = self._make_reference(gname, key, dk)
                continue
            column = _growing(group, ds_name, spec)
            _describe(column, key, dk)
            columns[key] = (ds_name, spec)
            column_handles.append((key, column, spec))
        t = _growing(group, "time", _FLOAT)
        set_attr(t, "units", "s")
        set_attr(t, "long_name", "time (POSIX seconds)")
        seq_num = _growing(group, "seq_num", _INT)
        stream = _Stream(name, doc["uid"], f"{STREAMS}/{gname}", columns, external)
        stream.stamp_names = stamp_names
        stream.reset_keys()
        self._streams[doc["uid"]] = stream
        self._handles[doc["uid"]] = _Handles(
            column_handles,
            [(key, stamp_handles[key]) for key in stream.keys if key in stamp_handles],
            t,
            seq_num,
            {key: self._node(f"{note}/event_data") for key, note in external.items()},
        )
        if name == "primary" and self._plot_stream is None:
            self._plot_stream = stream
            self._plot = default_plot(self.start_doc, doc) or fallback_plot(doc)
            if self._plot is None:
                log.info("%s: no hinted detector field in the primary stream: no NXdata", self.path)
            elif not self._plot.image:
                self._make_plot(stream)
            self._make_detectors(doc, stream)
            self._make_monitor(doc, stream)
        self._flush()

    def _make_reference(self, gname: str, key: str, dk: Mapping[str, Any]) -> str:
        f = self._f
        grp = f[EXTERNAL].require_group(gname)
        set_attr(grp, "NX_class", "NXcollection")
        note = _nx_group(grp, safe_key(key), "NXnote")
        _set_text(note, "type", "application/json")
        _set_text(note, "description", f"external data of {key!r}: frames per event range")
        _set_text(note, "data_key", dict(dk))
        _set_text(
            note,
            "frames",
            "one row per piece of external data: events [seq_start, seq_stop) are frames "
            "[frame_start, frame_stop) of dataset in the file at path (source_path: as the "
            "documents named it)",
        )
        path = note.name
        # kept open: they are written at every flush (see _node)
        for column in _REFERENCE_NUMBERS:
            self._groups[f"{path}/{column}"] = _growing(note, column, _INT)
        for column in _REFERENCE_TEXTS:
            self._groups[f"{path}/{column}"] = _growing(note, column, _TEXT)
        values = self._groups[f"{path}/event_data"] = _growing(note, "event_data", _TEXT)
        set_attr(values, "long_name", "the events' own value of this key (datum id), per row")
        return path

    def _stream_dataset(self, stream: _Stream, key: str) -> h5py.Dataset | None:
        if key == "time":
            return self._handles_of(stream).time
        if key in stream.columns:
            return self._column(stream, key)
        return self._f[stream.group].get(safe_key(key))

    def _column(self, stream: _Stream, key: str) -> h5py.Dataset:
        """The dataset of ``key``, a column of ``stream``."""
        for column, ds, _ in self._handles_of(stream).columns:
            if column == key:
                return ds
        raise KeyError(key)

    def _name(self, stream: _Stream, key: str) -> str:
        """The dataset name of ``key`` in ``stream`` (a valid NeXus name)."""
        if key == "time":
            return "time"
        return stream.columns[key][0] if key in stream.columns else safe_key(key)

    def _make_plot(self, stream: _Stream) -> None:
        plot = self._plot
        assert plot is not None
        f = self._f
        if "data" in f["entry"]:  # the placeholder
            del f["entry"]["data"]
        self._has_plot = True
        data = _nx_group(f["entry"], "data", "NXdata")
        signal = self._name(stream, plot.signal)
        if plot.grid is not None:
            self._make_grid(data, stream, plot)
        else:
            for key in [plot.signal, *plot.axes, *plot.auxiliary]:
                source = self._stream_dataset(stream, key)
                if source is not None:
                    _link(data, self._name(stream, key), source, self._targets)
            rank = len(data[signal].shape)
            axes = [self._name(stream, a) for a in plot.axes]
            set_attr(data, "axes", (axes[:1] or ["."]) + ["."] * (rank - 1))
            for axis in axes:
                set_attr(data, f"{axis}_indices", 0)
            if plot.auxiliary:
                set_attr(data, "auxiliary_signals", [self._name(stream, k) for k in plot.auxiliary])
        set_attr(data, "signal", signal)
        set_attr(f["entry"], "default", "data")

    def _make_fallback_plot(self) -> None:
        """At stop, a run still without a plot gets the first numeric column of the
        first stream that has one (the primary stream first)."""
        if self._has_plot:
            return
        streams = sorted(self._streams.values(), key=lambda s: s.name != "primary")
        for stream in streams:
            plot = fallback_plot(self.descriptors.get(stream.uid, {}))
            if plot is not None and plot.signal in stream.columns:
                self._plot, self._plot_stream = plot, stream
                self._make_plot(stream)
                return

    def _make_placeholder_plot(self, entry: h5py.Group) -> None:
        """Until the run has something to plot, ``/entry/data`` is an empty ``events``
        signal, so that a file always has a default plot (also after a crash)."""
        data = _nx_group(entry, "data", "NXdata")
        empty = data.create_dataset("events", data=np.zeros(0, dtype="int64"))
        set_attr(empty, "long_name", "nothing to plot was recorded (yet)")
        set_attr(data, "signal", "events")
        set_attr(data, "axes", ["."])
        set_attr(entry, "default", "data")

    def _make_grid(self, data: h5py.Group, stream: _Stream, plot: Plot) -> None:
        """The signal as a (rows, columns) image with both motors' axes, filled in
        at every flush (:meth:`_update_grid`). These are small copies of the stream's
        scalar columns, not virtual datasets: nexusformat and punx take a virtual
        dataset's first dimension to be its number of source mappings."""
        assert plot.grid is not None
        rows, cols = plot.grid
        signal, slow, fast = (self._name(stream, k) for k in (plot.signal, *plot.axes))
        for key, shape in (
            (plot.signal, (rows, cols)),
            (plot.axes[0], (rows,)),
            (plot.axes[1], (cols,)),
        ):
            column = self._stream_dataset(stream, key)
            assert column is not None
            ds = data.create_dataset(
                self._name(stream, key),
                shape=shape,
                dtype="float64",
                fillvalue=math.nan,
                chunks=True,
            )
            for name in ("units", "source"):
                if name in column.attrs:
                    set_attr(ds, name, column.attrs[name])
        set_attr(data[signal], "long_name", f"{plot.signal} on the {rows} x {cols} grid")
        set_attr(data[slow], "long_name", f"{slow} (first point of each row)")
        set_attr(data[fast], "long_name", f"{fast} (first row)")
        set_attr(data, "axes", [slow, fast])
        set_attr(data, f"{slow}_indices", 0)
        set_attr(data, f"{fast}_indices", 1)
        set_attr(data, "points_from", stream.group)

    def _update_grid(self, stream: _Stream, before: int) -> None:
        """Copy the points written since ``before`` into the grid image and its axes."""
        plot = self._plot
        if plot is None or plot.grid is None or stream is not self._plot_stream:
            return
        rows, cols = plot.grid
        stop = min(stream.rows, rows * cols)
        if stop <= before:
            return
        f = self._f
        data = f["entry/data"]
        slow, fast = plot.axes
        names = {k: self._name(stream, k) for k in (plot.signal, slow, fast)}

        def column(key: str) -> np.ndarray:
            ds = self._stream_dataset(stream, key)
            assert ds is not None
            return np.asarray(ds[:stop], dtype="float64")

        image = np.full(rows * cols, math.nan)
        image[:stop] = column(plot.signal)
        image = image.reshape(rows, cols)
        if plot.snake:
            image[1::2] = image[1::2, ::-1].copy()
        data[names[plot.signal]][...] = image
        data[names[slow]][...] = np.concatenate(
            [column(slow), np.full(rows * cols - stop, math.nan)]
        )[::cols]
        if before < cols:
            first = np.full(cols, math.nan)
            values = column(fast)[:cols]
            first[: len(values)] = values
            data[names[fast]][...] = first

    def _instrument_name(self, key: str, suffix: str) -> str:
        inst = self._node("/entry/instrument")
        name = safe_key(key)
        if name in RESERVED_INSTRUMENT_NAMES or name in inst:
            name = f"{name}_{suffix}"
        while name in inst:
            name += "_"
        return name

    def _make_detectors(self, doc: Mapping[str, Any], stream: _Stream) -> None:
        """An NXdetector per detector of ``start["detectors"]`` with links to its columns."""
        object_keys = doc.get("object_keys") or {}
        hints = doc.get("hints") or {}
        inst = self._node("/entry/instrument")
        for det in self.start_doc.get("detectors") or []:
            keys = [k for k in object_keys.get(det) or [] if k in stream.columns]
            if not isinstance(det, str) or not (keys or object_keys.get(det)):
                continue
            group = _nx_group(inst, self._instrument_name(det, "detector"), "NXdetector")
            _set_text(group, "description", det)
            for key in keys:
                _link(group, safe_key(key), self._column(stream, key), self._targets)
            hinted = [k for k in (hints.get(det) or {}).get("fields") or [] if k in keys]
            main = hinted[0] if hinted else (keys[0] if keys else None)
            if main is not None:
                soft_link(group, "data", f"{stream.group}/{stream.columns[main][0]}")

    def _detector_for(self, doc: Mapping[str, Any], key: str) -> h5py.Group | None:
        for det, keys in (doc.get("object_keys") or {}).items():
            if key in (keys or []):
                for group in self._node("/entry/instrument").values():
                    if (
                        isinstance(group, h5py.Group)
                        and group.attrs.get("NX_class") == "NXdetector"
                        and "description" in group
                        and group["description"][()].decode() == det
                    ):
                        return group
        return None

    def _make_monitor(self, doc: Mapping[str, Any], stream: _Stream) -> None:
        key = monitor_key(self.start_doc, doc)
        if key is None or key not in stream.columns:
            return
        entry = self._f["entry"]
        if "monitor" in entry:
            return
        monitor = _nx_group(entry, "monitor", "NXmonitor")
        _link(monitor, "data", self._column(stream, key), self._targets)
        _set_text(monitor, "description", key)
        for name in ("preset", "count_time"):
            value = self.start_doc.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                monitor.create_dataset(name, data=float(value))

    # data ----------------------------------------------------------------
    def event(self, doc: Mapping[str, Any]) -> None:
        """One event into the buffers: a row of values and one of timestamps (a
        missing key is None, stored as fill). Split at once, while the document is
        in the processor's cache (keeping the documents to split them in blocks was
        measured 1.8 x slower per event); the rows of float64 scalars are converted
        to arrays every ``_PACK_ROWS`` for the same reason."""
        stream = self._streams[doc["descriptor"]]
        getter = stream.getter
        data = doc.get("data", _NO_DATA)
        try:
            row = getter(data)
        except KeyError:
            row = tuple(data.get(key) for key in stream.keys)
        stamps = doc.get("timestamps", _NO_DATA)
        try:
            row_stamps = getter(stamps)
        except KeyError:
            row_stamps = tuple(stamps.get(key) for key in stream.keys)
        rows = stream.row_values
        rows.append(row)
        stream.row_stamps.append(row_stamps)
        stream.times.append(doc["time"])
        seqs = stream.seqs
        seqs.append(doc["seq_num"])
        if len(rows) >= _PACK_ROWS and stream.all_float and not stream.unpackable:
            stream.pack()
        if len(seqs) >= _MAX_BUFFERED:
            self._write_pending()
        if time.monotonic() >= self._flush_due:
            self._flush()

    def events(self, docs: Sequence[Mapping[str, Any]]) -> bool:
        """Several events of one descriptor (see ``RunWriter.events``): what
        :meth:`event` does, with the rows gathered by list comprehensions (about a
        third less CPU per event). False, with nothing changed, when an event lacks
        a key: they then come one at a time."""
        stream = self._streams[docs[0]["descriptor"]]
        getter = stream.getter
        try:
            rows = [getter(doc["data"]) for doc in docs]
            row_stamps = [getter(doc["timestamps"]) for doc in docs]
            times = [doc["time"] for doc in docs]
            seqs = [doc["seq_num"] for doc in docs]
        except (KeyError, TypeError):
            return False
        stream.row_values += rows
        stream.row_stamps += row_stamps
        stream.times += times
        stream.seqs += seqs
        if len(stream.row_values) >= _PACK_ROWS and stream.all_float and not stream.unpackable:
            stream.pack()
        self._rows_added(stream)
        return True

    def event_page(self, doc: Mapping[str, Any]) -> None:
        stream = self._streams[doc["descriptor"]]
        seqs = doc["seq_num"]
        n = len(seqs)
        if n == 0:
            return
        stream.fold()
        data = doc.get("data", {})
        stamps = doc.get("timestamps", {})
        for key, out in stream.values.items():
            values = data.get(key)
            if values is None or len(values) != n:
                values = _padded(values, n)
            out.extend(values)
            ts = stamps.get(key)
            stream.stamps[key].extend(ts if ts is not None and len(ts) == n else _padded(ts, n))
        stream.times.extend(doc["time"])
        stream.seqs.extend(seqs)
        self._rows_added(stream)

    def _rows_added(self, stream: _Stream) -> None:
        """Write when ``_MAX_BUFFERED`` rows wait, flush when it is time (what
        :meth:`event` does inline: one call less per event)."""
        if len(stream.seqs) >= _MAX_BUFFERED:
            self._write_pending()
        if time.monotonic() >= self._flush_due:
            self._flush()

    def tick(self) -> None:
        """Flush rows kept longer than ``flush_interval`` because no event came after
        them (slow points, a pause): the file lags the run by at most that, plus ~10 ms."""
        if time.monotonic() >= self._flush_due and any(s.seqs for s in self._streams.values()):
            self._flush()

    def external(self, frames: ExternalFrames) -> None:
        stream = self._streams.get(frames.descriptor)
        if stream is None:
            self._warn_once(
                f"nodesc:{frames.descriptor}",
                "external data for unknown descriptor %s ignored",
                frames.descriptor,
            )
            return
        key = frames.data_key
        if key not in stream.external:
            self._write_pending()
            self._restructure()
            stream.external[key] = self._make_reference(stream.group.rsplit("/", 1)[1], key, {})
            stream.reset_keys()  # nothing is buffered now: from here on, rows carry the key
            self._handles.pop(stream.uid, None)
        stream.refs.setdefault(key, []).append(
            (
                frames.seq_start,
                frames.seq_stop,
                frames.frame_start,
                frames.frame_stop,
                frames.path,
                frames.dataset or "",
                frames.source_path,
            )
        )
        if frames.is_hdf5 and frames.dataset:
            stream.frames.setdefault(key, []).append(frames)
            self._vds_dirty.add((frames.descriptor, key))

    # the run's asset documents, kept so that the run can be rebuilt from the file
    def resource(self, doc: Mapping[str, Any]) -> None:
        self._assets.append(_asset_json(["resource", doc]))

    def datum(self, doc: Mapping[str, Any]) -> None:
        self._assets.append(_asset_json(["datum", doc]))

    def datum_page(self, doc: Mapping[str, Any]) -> None:
        self._assets.append(_asset_json(["datum_page", doc]))

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        self._assets.append(_asset_json(["stream_resource", doc]))

    def stream_datum(self, doc: Mapping[str, Any]) -> None:
        self._assets.append(_asset_json(["stream_datum", doc]))

    def _write_pending(self) -> None:
        """Write every buffered row, reference and asset document (one block per dataset)."""
        baseline_new = False
        for stream in self._streams.values():
            n = len(stream.seqs)
            if n:
                at = stream.rows
                handles = self._handles_of(stream)
                if not self._write_float_rows(stream, handles, n, at):
                    self._write_columns(stream, handles, n, at)
                _append_numbers(handles.time, np.asarray(stream.times, dtype="float64"), at)
                _append_numbers(handles.seq_num, np.asarray(stream.seqs, dtype="int64"), at)
                baseline_new = baseline_new or (stream.name == "baseline" and at == 0)
                stream.rows += n
                self._update_grid(stream, at)
                for key in stream.values:
                    stream.values[key] = []
                    stream.stamps[key] = []
                stream.row_values = []
                stream.row_stamps = []
                stream.packed = []
                stream.unpackable = False
                stream.times = []
                stream.seqs = []
            for key, rows in stream.refs.items():
                if rows:
                    note = stream.external[key]
                    done = self._node(f"{note}/seq_start").id.shape[0]
                    columns = list(zip(*rows, strict=True))
                    for name, values in zip(_REFERENCE_NUMBERS, columns[:4], strict=True):
                        block = np.asarray(values, dtype="int64")
                        _append_numbers(self._node(f"{note}/{name}"), block, done)
                    for name, values in zip(_REFERENCE_TEXTS, columns[4:], strict=True):
                        _append(self._node(f"{note}/{name}"), text_rows(values), done)
                    stream.refs[key] = []
        if self._assets:
            ds = self._node(f"{METADATA}/assets")
            _append(ds, text_rows(self._assets), self._assets_written)
            self._assets_written += len(self._assets)
            self._assets = []
        if baseline_new:
            self._write_positioners()

    def _node(self, path: str) -> Any:
        """The group or dataset at ``path``, kept open until the file is reopened."""
        node = self._groups.get(path)
        if node is None:
            node = self._groups[path] = self._f[path]
        return node

    def _handles_of(self, stream: _Stream) -> _Handles:
        handles = self._handles.get(stream.uid)
        if handles is None:
            f = self._f
            group = f[stream.group]
            stamps = group["timestamps"]
            names = stream.stamp_names
            handles = self._handles[stream.uid] = _Handles(
                [(key, group[name], spec) for key, (name, spec) in stream.columns.items()],
                [(key, stamps[names[key]]) for key in stream.keys if key in names],
                group["time"],
                group["seq_num"],
                {key: self._node(f"{note}/event_data") for key, note in stream.external.items()},
            )
        return handles

    def _write_float_rows(self, stream: _Stream, handles: _Handles, n: int, at: int) -> bool:
        """Rows of events only, all float64 scalars: each block a row of one 2-D
        array (what :func:`column_block` does column by column, at once). False if
        they are not so, or a value does not convert: the caller goes column by column."""
        if not stream.all_float:
            return False
        width = len(stream.keys)
        if len(handles.columns) != width or len(handles.stamps) != width:
            return False
        if stream.row_values and not stream.unpackable:
            stream.pack()
        blocks = stream.packed
        if stream.row_values or sum(len(v) for v, _ in blocks) != n:
            return False  # a value that does not convert, or rows of pages
        if len(blocks) == 1:
            values, stamps = blocks[0]
        else:
            values = np.concatenate([v for v, _ in blocks])
            stamps = np.concatenate([t for _, t in blocks])
        values = values.T.copy()
        stamps = stamps.T.copy()
        for j, (_key, ds, _spec) in enumerate(handles.columns):
            _append_numbers(ds, values[j], at)
        for j, (_key, ds) in enumerate(handles.stamps):
            _append_numbers(ds, stamps[j], at)
        return True

    def _write_columns(self, stream: _Stream, handles: _Handles, n: int, at: int) -> None:
        """The buffered rows column by column (any kind of column)."""
        stream.fold()
        for key, ds, spec in handles.columns:
            if spec.is_text:
                _append(ds, text_rows(stream.values[key]), at)
                continue
            block, bad = column_block(stream.values[key], spec)
            if bad:
                self._warn_once(f"fill:{key}", "%d value(s) of %r stored as fill", bad, key)
            _append_numbers(ds, block, at)
        for key, ds in handles.event_data.items():
            values = stream.values.get(key)
            if values is None:
                values = stream.values[key] = [None] * n
                stream.stamps[key] = [None] * n
            _append(ds, text_rows(values), at)
        for key, ds in handles.stamps:
            block, _ = column_block(stream.stamps[key], _FLOAT)
            _append_numbers(ds, block, at)

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
        set_attr(ds, "frames_per_point", per)
        set_attr(ds, "target", ds.name)
        self._link_frames(stream, key, ds)

    def _link_frames(self, stream: _Stream, key: str, ds: h5py.Dataset) -> None:
        """Soft links to a (re)built frames dataset: the detector's data, the plot.

        A rebuild keeps the dataset's path, so existing links stay valid."""
        if stream is not self._plot_stream:
            return
        det = self._detector_for(self.descriptors.get(stream.uid, {}), key)
        if det is not None:
            soft_link(det, safe_key(key), ds.name)
            # a detector's frames, when it has any, are its NXdetector/data
            if "data" in det and not det["data"].is_virtual:
                del det["data"]
            if "data" not in det:
                det["data"] = h5py.SoftLink(ds.name)
        plot = self._plot
        if plot is not None and plot.image and plot.signal == key and not self._has_plot:
            self._make_plot(stream)

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

    # positioners -----------------------------------------------------------
    def _write_positioners(self) -> None:
        """NXpositioners from the baseline's first reading (and the scanned motors)."""
        self._restructure()
        inst = self._node("/entry/instrument")
        listing = inst.require_group("positioners")
        set_attr(listing, "NX_class", "NXcollection")
        for stream in self._streams.values():
            if stream.name != "baseline" or stream.rows == 0:
                continue
            dks = self.descriptors.get(stream.uid, {}).get("data_keys", {})
            for key in baseline_positioners(self.descriptors.get(stream.uid, {})):
                if key in self._positioners or key not in stream.columns:
                    continue
                column = self._column(stream, key)
                pos = _nx_group(inst, self._instrument_name(key, "positioner"), "NXpositioner")
                _set_text(pos, "name", key)
                value = pos.create_dataset("value", data=column[0])
                if dks.get(key, {}).get("units"):
                    set_attr(value, "units", str(dks[key]["units"]))
                _link(listing, safe_key(key), value, self._targets)
                self._positioners[key] = pos.name
            break

    def _write_scanned_positioners(self) -> None:
        """The plot's axes (the scanned motors) as NXpositioners over their columns."""
        stream, plot = self._plot_stream, self._plot
        if stream is None or plot is None:
            return
        inst = self._node("/entry/instrument")
        for key in plot.axes:
            if key == "time" or key in self._positioners or key not in stream.columns:
                continue
            column = self._column(stream, key)
            listing = inst.require_group("positioners")
            set_attr(listing, "NX_class", "NXcollection")
            pos = _nx_group(inst, self._instrument_name(key, "positioner"), "NXpositioner")
            _set_text(pos, "name", key)
            _link(pos, "value", column, self._targets)
            soft_link(listing, safe_key(key), column.name)
            self._positioners[key] = pos.name

    def _write_end_positions(self) -> None:
        f = self._f
        for stream in self._streams.values():
            if stream.name != "baseline" or stream.rows < 2:
                continue
            for key, path in self._positioners.items():
                pos = f[path]
                if key in stream.columns and "end_value" not in pos:
                    end = pos.create_dataset("end_value", data=self._column(stream, key)[-1])
                    if "units" in pos["value"].attrs:
                        set_attr(end, "units", pos["value"].attrs["units"])
            break

    # flushing and the end -------------------------------------------------
    def _flush(self) -> None:
        self._write_pending()
        for descriptor, key in sorted(self._vds_dirty):
            self._build_vds(descriptor, key)
        self._vds_dirty.clear()
        f = self._f
        if self.recorder.swmr and not self._swmr and self._streams:
            f.swmr_mode = True
            self._swmr = True
        f.flush()
        self._last_flush = time.monotonic()
        self._flush_due = self._last_flush + self.recorder.flush_interval
        reserve = self.recorder.reserve
        if reserve and (free := free_bytes(self.path)) < reserve:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: only {format_size(free)} free, less than the "
                f"reserve of {format_size(reserve)} kept so that the file closes cleanly: "
                "writing stops here, the file keeps every point up to this flush",
            )

    def stop(self, doc: Mapping[str, Any]) -> None:
        self._write_pending()
        for descriptor, key in sorted(self._vds_dirty):
            self._build_vds(descriptor, key)
        self._vds_dirty.clear()
        f = self._restructure()
        entry = f["entry"]
        self._make_fallback_plot()
        self._write_scanned_positioners()
        self._write_end_positions()
        status = doc.get("exit_status", "")
        _set_text(entry, "exit_status", status)
        if status != "success":
            _set_text(entry, "reason", doc.get("reason", ""))
        _set_text(f[METADATA], "stop", dict(doc))
        f.flush()
        _set_text(entry, "end_time", iso_time(doc.get("time")))  # last: "the run is over"
        f.flush()
        self.stopped = True

    def close(self) -> None:
        if self.file is not None and not self.stopped and self.failure is None:
            self._keep_points_received()
        if self.file is not None and self.failure is not None and is_disk_full(self.failure):
            _detach_from_disk(self.file, self.path)
        self._handles.clear()
        self._groups.clear()
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None

    def _keep_points_received(self) -> None:
        """Closed before the run's stop document (it was lost on the way, or the process
        stops mid-run): write the points received, as a flush does; no end_time."""
        self.stopped = True
        uid = self.start_doc.get("uid")
        log.warning(
            "%s: run %s closed without a stop document: the points received are kept, "
            "the file has no end_time",
            self.path,
            uid,
        )
        try:
            self._flush()
        except Exception as err:  # closing must go on: the file keeps its last flush
            log.warning("%s: cannot write the last points of run %s: %s", self.path, uid, err)

    def _warn_once(self, tag: str, msg: str, *args: Any) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning("%s: " + msg, self.path, *args)


def _detach_from_disk(file: h5py.File, path: str) -> None:
    """Point a file's descriptor at /dev/null, so that HDF5 can close it on a full disk.

    HDF5 cannot close a file whose buffers it cannot write (every object's close
    fails, and a second try crashes the process); the bytes it still holds would
    not fit anyway. Writing them to /dev/null lets it close cleanly: the file keeps
    what was on disk when the disk filled (every point up to the last flush).
    """
    try:
        fd = file.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except (OSError, ValueError, RuntimeError) as err:
        log.error("%s: could not detach the file from the full disk: %s", path, err)
    else:
        log.warning("%s: the disk is full; the file keeps what was written before", path)


def _padded(values: Any, n: int) -> list[Any]:
    """``values`` cut or padded with None to ``n`` items (None: all missing)."""
    if values is None:
        return [None] * n
    out = list(values)[:n]
    return out + [None] * (n - len(out))


def _write_experiment(entry: h5py.Group, experiment: Mapping[str, Any]) -> None:
    """NXsample, NXuser, the proposal, and the instrument's source and monochromator."""
    sample = experiment.get("sample")
    if isinstance(sample, Mapping) and any(v for k, v in sample.items() if k != "extra"):
        grp = _nx_group(entry, "sample", "NXsample")
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
            if isinstance(pi, Mapping) and user.get("name") == pi.get("name"):
                continue
            people.append(("user", user))
    for i, (role, person) in enumerate(people, 1):
        grp = _nx_group(entry, f"user_{i}", "NXuser")
        _set_text(grp, "name", person["name"])
        _set_text(grp, "role", role)
        for key in ("email", "affiliation"):
            if person.get(key):
                _set_text(grp, key, person[key])
    proposal = experiment.get("proposal_id") or (experiment.get("proposal") or {}).get("id")
    if proposal:
        _set_text(entry, "experiment_identifier", proposal)
    inst = entry["instrument"]
    if experiment.get("beamline_id"):
        _set_text(inst, "name", experiment["beamline_id"])
    described = experiment.get("instrument")
    if not isinstance(described, Mapping):
        return
    if described.get("source"):
        source = _nx_group(inst, "source", "NXsource")
        _set_text(source, "name", described["source"])
        _set_text(source, "type", "Synchrotron X-ray Source")
        _set_text(source, "probe", "x-ray")
    energy = described.get("monochromator_energy")
    if isinstance(energy, (int, float)) and not isinstance(energy, bool) and math.isfinite(energy):
        mono = _nx_group(inst, "monochromator", "NXmonochromator")
        ds = mono.create_dataset("energy", data=float(energy))
        set_attr(ds, "units", str(described.get("energy_units") or "keV"))
    if described.get("description"):
        note = _nx_group(inst, "description", "NXnote")
        _set_text(note, "description", described["description"])


class NexusRecorder(FileRecorder):
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
    reserve
        Free space kept on the file's file system while a run goes on (bytes or
        ``"64 MiB"``, the default; 0: none): below it, at a flush, the recorder stops
        writing the run and closes the file cleanly with every point so far; the run
        then aborts or goes on according to ``on_error``. A disk that fills anyway
        (another program) is handled too: the file keeps what was written before.
    swmr
        Write with HDF5 SWMR (``libver="v110"``) so readers open the file
        with ``swmr=True`` during the run. Off by default: a SWMR file left by
        a killed writer opens only with ``swmr=True`` (or after ``h5clear -s``),
        while a default file opens everywhere; live readers of a default file
        open it with ``HDF5_USE_FILE_LOCKING=FALSE`` (``locking=False``).
    """

    kind = "nexus"
    writer_class = NexusWriter
    default_template = "{scan_id:05d}_{plan_name}_{uid:.8}.nxs"

    def __init__(
        self,
        *,
        flush_interval: float = 1.0,
        swmr: bool = False,
        reserve: int | str = "64 MiB",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reserve = parse_size(reserve)
        self.flush_interval = float(flush_interval)
        self.swmr = bool(swmr)
        if not self.flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, not {flush_interval!r}")
