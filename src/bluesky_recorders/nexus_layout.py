"""Pure functions of the NeXus recorder: documents in, layout decisions out.

Nothing here touches a file. :mod:`bluesky_recorders.nexus` writes what these
functions decide, and :mod:`bluesky_recorders.nexus_export` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .external import ExternalFrames

__all__ = [
    "ColumnSpec",
    "baseline_positioners",
    "Plot",
    "column_block",
    "column_spec",
    "decode_rows",
    "default_plot",
    "fallback_plot",
    "frame_mappings",
    "iso_time",
    "monitor_key",
    "safe_key",
    "text_rows",
    "to_text",
]

#: Group names the writer uses inside NXinstrument: a detector or positioner
#: with one of these names gets a suffix.
RESERVED_INSTRUMENT_NAMES = frozenset(
    {"bluesky", "positioners", "positioners_end", "source", "monochromator", "name"}
)


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


#: How booleans are stored: NeXus NX_BOOLEAN is an 8-bit integer, 0 or 1.
BOOLEAN = np.dtype("uint8")


def column_spec(data_key: Mapping[str, Any]) -> ColumnSpec | None:
    """The dataset for a descriptor data key; ``None`` for external data (linked instead).

    Numbers are float64, integers int64, booleans 0/1 in uint8 (NeXus ``NX_BOOLEAN``:
    h5py's own booleans are an HDF5 enum, which the NeXus C API cannot read), strings
    UTF-8 text;
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
        return ColumnSpec(BOOLEAN)
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
        elif np_dtype.kind == "b":
            np_dtype = BOOLEAN
        return ColumnSpec(np_dtype, shape)
    return ColumnSpec(None)


def to_text(value: Any) -> str:
    """A string as it is; anything else as JSON (what a text column holds)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def column_block(values: Sequence[Any], spec: ColumnSpec) -> tuple[np.ndarray, int]:
    """``values`` as one array for ``spec``, and how many could not be converted (filled)."""
    n = len(values)
    if spec.is_text:
        return np.array([to_text(v) for v in values], dtype=object), 0
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


_NOT_NEXUS = re.compile(r"[^A-Za-z0-9_.]")


#: Longest name :func:`safe_key` gives. The NeXus C API reads names into 64-byte buffers
#: (NX_MAXNAMELEN) and overflows them on longer ones (``nxtraverse``: "stack smashing
#: detected"); the rest is room for the writer's suffixes (``_2``, ``_positioner``).
MAX_NAME = 48


def safe_key(name: str) -> str:
    """A data key as a valid NeXus name: letters, digits, ``_`` and inner ``.`` only
    (``"TR diode"`` becomes ``"TR_diode"``; the writer keeps the key in ``@data_key``).
    A name longer than :data:`MAX_NAME` is cut and ends with a hash of the whole key."""
    out = _NOT_NEXUS.sub("_", name).strip(".")
    if len(out) > MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        out = f"{out[: MAX_NAME - 9]}_{digest}"
    return out or "_"


def text_rows(values: Sequence[Any]) -> np.ndarray:
    """Text values as a rank-2 array of characters (rows of UTF-8, NUL-padded).

    String columns are stored so, not as 1-D string arrays, because the NeXus C
    API's ``nxtraverse`` crashes on a 1-D array of strings longer than a few
    characters. ``None`` is the empty string; other values are :func:`to_text`.
    """
    texts = [v if type(v) is str else "" if v is None else to_text(v) for v in values]
    try:  # numpy encodes ASCII text itself
        rows = np.array(texts, dtype="S")
    except UnicodeEncodeError:
        rows = np.array([t.encode("utf-8") for t in texts], dtype="S")
    return rows.view("S1").reshape(len(texts), rows.dtype.itemsize)


def decode_rows(array: np.ndarray) -> list[str]:
    """The strings of a :func:`text_rows` array (also accepts 1-D string arrays)."""
    if array.ndim == 1:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.tolist()]
    if array.shape[1] == 0:
        return [""] * array.shape[0]
    rows = np.ascontiguousarray(array).view(f"S{array.shape[1]}")[:, 0]
    return [r.decode("utf-8", "replace") for r in rows.tolist()]


def iso_time(t: float | None) -> str:
    """POSIX time as ISO 8601 with the local offset."""
    when = datetime.now() if t is None else datetime.fromtimestamp(t)
    return when.astimezone().isoformat()


@dataclass(frozen=True)
class Plot:
    """The default plot of a run.

    ``signal`` and ``auxiliary`` are data keys, ``axes`` data keys or ``"time"``.
    ``grid`` is the (slow, fast) shape of a 2-D grid scan: the signal is then shown
    as an image with ``axes[0]`` along the rows and ``axes[1]`` along the columns,
    the fast axis reversed on odd rows when ``snake`` is true. ``image`` means the
    signal is external detector frames (a virtual dataset).
    """

    signal: str
    axes: list[str]
    auxiliary: list[str] = field(default_factory=list)
    grid: tuple[int, int] | None = None
    snake: bool = False
    image: bool = False


def _hinted_fields(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
    """Hinted fields, those of ``start["detectors"]`` first, in order, without repeats."""
    hints = descriptor.get("hints") or {}
    if not isinstance(hints, Mapping):
        return []
    out: list[str] = []
    owners = [d for d in start.get("detectors") or [] if isinstance(d, str)]
    owners += [name for name in hints if name not in owners]
    for owner in owners:
        obj = hints.get(owner)
        if isinstance(obj, Mapping):
            out.extend(f for f in obj.get("fields") or [] if isinstance(f, str) and f not in out)
    return out


def _grid(start: Mapping[str, Any], axes: list[str]) -> tuple[tuple[int, int], bool] | None:
    shape = start.get("shape")
    if not (isinstance(shape, Sequence) and len(shape) == 2 and len(axes) == 2):
        return None
    if not all(isinstance(n, int) and n > 0 for n in shape):
        return None
    snaking = start.get("snaking") or [False, False]
    snake = bool(snaking[1]) if isinstance(snaking, Sequence) and len(snaking) == 2 else False
    return (int(shape[0]), int(shape[1])), snake


def default_plot(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> Plot | None:
    """The default plot for the primary descriptor, or None.

    Signal: the first hinted numeric field of the first detector in
    ``start["detectors"]`` (then of any hinted device); the others are auxiliary
    signals. With no numeric hinted field, a hinted (or the only) 2-D external
    field (detector frames) is the signal. Axes: the fields of this stream's
    ``hints.dimensions`` entries (``time`` is the stream's own time). A 2-D grid
    scan (``start["shape"]`` of two, one field per dimension) gives an image.
    """
    keys = descriptor.get("data_keys", {})
    stream = descriptor.get("name", "primary")

    def numeric(key: str) -> bool:
        spec = column_spec(keys[key]) if key in keys else None
        return spec is not None and not spec.is_text and not spec.shape

    def frames(key: str) -> bool:
        dk = keys.get(key) or {}
        return bool(dk.get("external")) and len(dk.get("shape") or ()) in (2, 3)

    dims = (start.get("hints") or {}).get("dimensions") or []
    axes: list[str] = []
    per_dim: list[str] = []
    for dim in dims:
        if isinstance(dim, Sequence) and len(dim) == 2 and dim[1] == stream:
            usable = [f for f in dim[0] if f == "time" or numeric(f)]
            axes.extend(f for f in usable if f not in axes)
            if len(dim[0]) == 1 and usable:
                per_dim.append(usable[0])
    hinted = _hinted_fields(start, descriptor)
    signals = [f for f in hinted if numeric(f) and f not in axes]
    if signals:
        grid = _grid(start, per_dim) if len(per_dim) == len(dims) else None
        if grid is not None:
            return Plot(signals[0], per_dim, signals[1:], grid=grid[0], snake=grid[1])
        return Plot(signals[0], axes, signals[1:])
    images = [f for f in hinted if frames(f)] or [f for f in keys if frames(f)]
    if images:
        return Plot(images[0], axes[:1], image=True)
    return None


def fallback_plot(descriptor: Mapping[str, Any], axes: Sequence[str] = ()) -> Plot | None:
    """A plot when nothing numeric is hinted: the first numeric scalar key that is
    not an axis, over ``axes`` (every file gets a default plot: formats.md rule 1)."""
    for key, dk in descriptor.get("data_keys", {}).items():
        spec = column_spec(dk)
        if key not in axes and spec is not None and not spec.is_text and not spec.shape:
            return Plot(key, list(axes))
    return None


def monitor_key(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> str | None:
    """The data key of the run's monitor, named by ``start["hints"]["monitor"]``
    (or ``start["monitor"]``): a data key, or a device whose first hinted field
    (else first data key) is used. None when absent or not a numeric key here."""
    hints = start.get("hints") or {}
    name = hints.get("monitor") if isinstance(hints, Mapping) else None
    name = name or start.get("monitor")
    if not isinstance(name, str) or not name:
        return None
    keys = descriptor.get("data_keys", {})
    if name not in keys:
        dev_hints = (descriptor.get("hints") or {}).get(name) or {}
        candidates = list(dev_hints.get("fields") or [])
        candidates += list((descriptor.get("object_keys") or {}).get(name) or [])
        name = next((k for k in candidates if k in keys), None)
        if name is None:
            return None
    spec = column_spec(keys[name])
    return name if spec is not None and not spec.is_text and not spec.shape else None


def frame_mappings(
    records: Sequence[ExternalFrames],
) -> list[tuple[int, int, ExternalFrames, int, int]]:
    """``(point_start, point_stop, record, frame_start, frame_stop)`` blocks for a VDS.

    Points are ``seq_num - 1``. With one frame per point, records that continue one
    another (next points, next frames of the same file and dataset) are one block, so a
    detector file of N frames announced by N datums is one mapping; with several frames
    per point, there is one block per point.
    """
    out: list[tuple[int, int, ExternalFrames, int, int]] = []
    for rec in records:
        points = rec.seq_stop - rec.seq_start
        if points <= 0:
            continue
        per = max(1, (rec.frame_stop - rec.frame_start) // points)
        if per == 1:
            block = (rec.seq_start - 1, rec.seq_stop - 1, rec, rec.frame_start, rec.frame_stop)
            if out:
                p0, p1, prev, f0, f1 = out[-1]
                same = (prev.path, prev.dataset) == (rec.path, rec.dataset)
                one_each = (p1 - p0) == (f1 - f0)
                if same and one_each and p1 == block[0] and f1 == block[3]:
                    out[-1] = (p0, block[1], prev, f0, block[4])
                    continue
            out.append(block)
            continue
        for i in range(points):
            f0 = rec.frame_start + i * per
            out.append((rec.seq_start - 1 + i, rec.seq_start + i, rec, f0, f0 + per))
    return out


def baseline_positioners(
    descriptor: Mapping[str, Any],
) -> list[str]:
    """Data keys of a baseline descriptor recorded as positioners: numeric scalars."""
    out = []
    for key, dk in descriptor.get("data_keys", {}).items():
        spec = column_spec(dk)
        if spec is not None and not spec.is_text and not spec.shape:
            out.append(key)
    return out
