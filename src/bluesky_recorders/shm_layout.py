"""The binary layout of the shared-memory segment, as pure functions (no I/O).

A segment is one file of ``segment_size`` bytes, little-endian, every part
64-byte aligned::

    offset                 size                 what
    0                      256                  fixed header (below)
    256                    128 x n_columns      column names, UTF-8, NUL-padded
    256 + 128 n_columns    192 x n_frames       frame table (below)
    ring_offset            8 x capacity x n_cols  the ring: float64, row-major
    frame offsets          nbytes each          the latest frame of each frame key

The fixed header::

    0    magic         8s   b"BSRECSHM"
    8    version       u32  layout version (1)
    12   header_size   u32  fixed header + tables, rounded up to 64
    16   seq           u64  the seqlock counter: odd while the writer writes
    24   generation    u64  +1 whenever the layout (tables, offsets, size) changes
    32   segment_size  u64  bytes of the file the layout uses (it only grows)
    40   writer_pid    u32  the process writing the segment
    44   state         u32  0 idle, 1 running, 2 ended, 3 closed (writer gone)
    48   total         u64  points written in this run (the ring holds the last ones)
    56   capacity      u64  rows of the ring
    64   n_columns     u32  columns of the ring (seq_num, time, then scalar keys)
    68   n_frames      u32  entries of the frame table
    72   ring_offset   u64
    80   scan_id       i64  -1 when the run has none
    88   start_time    f64  the start document's time (NaN when idle)
    96   run_uid       64s  UTF-8, NUL-padded
    160  plan_name     64s
    224  exit_status   16s  the stop document's exit_status, once ended
    240  (reserved)    16

A frame table entry (192 bytes)::

    0    name    128s   the data key
    128  dtype   8s     numpy's dtype.str, e.g. "<f8", "|u1", "<u2"
    136  ndim    u32    1 or 2
    140  (reserved) u32
    144  shape0  u64
    152  shape1  u64    0 when ndim is 1
    160  offset  u64    where the frame's bytes start (C order)
    168  nbytes  u64
    176  seq_num i64    the event that brought the frame; -1 before the first
    184  time    f64    that event's time

Point ``i`` of the run (0-based, ``i < total``) is ring row ``i % capacity``;
the ring holds points ``max(0, total - capacity) .. total - 1``.

How a reader reads (a seqlock): read ``seq``; if odd, retry; copy what it
needs; read ``seq`` again; if it changed, retry. When ``generation`` differs
from the one it parsed, it parses the tables again; when ``segment_size`` is
more than it mapped, it maps the file again.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BsrecError

__all__ = [
    "COLUMN_SIZE",
    "FIXED_SIZE",
    "FRAME_SIZE",
    "MAGIC",
    "SEQ_OFFSET",
    "STATES",
    "TOTAL_OFFSET",
    "VERSION",
    "Choice",
    "FrameSpec",
    "Header",
    "Layout",
    "LayoutError",
    "choose",
    "compute_layout",
    "frame_field_offsets",
    "pack_header",
    "page_rows",
    "ring_slots",
    "row_values",
    "unpack_fixed",
    "unpack_header",
]

MAGIC = b"BSRECSHM"
VERSION = 1
FIXED = struct.Struct("<8sIIQQQIIQQIIQqd64s64s16s16x")
FIXED_SIZE = FIXED.size  # 256
COLUMN_SIZE = 128
FRAME = struct.Struct("<128s8sIIQQQQqd")
FRAME_SIZE = FRAME.size  # 192
#: Byte offsets of the counters a writer updates in place.
SEQ_OFFSET = 16
TOTAL_OFFSET = 48
_FRAME_SEQ = 176
_FRAME_TIME = 184
ALIGN = 64
PAGE = 4096
#: Run states, by their number in the header.
STATES = ("idle", "running", "ended", "closed")
IDLE, RUNNING, ENDED, CLOSED = range(4)
#: The ring's first two columns.
BASE_COLUMNS = ("seq_num", "time")
_SCALAR_DTYPES = frozenset({"number", "integer", "boolean"})
_NUMERIC_KINDS = frozenset("biuf")

assert FIXED_SIZE == 256 and FRAME_SIZE == 192


class LayoutError(BsrecError, ValueError):
    """A segment's bytes do not follow this layout (bad magic, unknown version, damage)."""


def _align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _clip(text: str, size: int) -> bytes:
    """``text`` in UTF-8, cut to fewer than ``size`` bytes at a character boundary."""
    raw = text.replace("\0", "").encode("utf-8")[: size - 1]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _fit(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size or b"\0" in raw:
        raise LayoutError(f"{what} {text!r} is longer than {size - 1} bytes or holds a NUL")
    return raw


@dataclass(frozen=True)
class FrameSpec:
    """One frame key: its name, numpy dtype string and shape (1-D or 2-D)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0
    nbytes: int = 0


@dataclass(frozen=True)
class Layout:
    """Where everything lies for one set of columns and frames (see the module docstring)."""

    capacity: int
    columns: tuple[str, ...]
    frames: tuple[FrameSpec, ...]
    header_size: int
    ring_offset: int
    size: int

    @property
    def row_bytes(self) -> int:
        return 8 * len(self.columns)

    def frame_entry(self, index: int) -> int:
        """Offset of frame table entry ``index``."""
        return FIXED_SIZE + COLUMN_SIZE * len(self.columns) + FRAME_SIZE * index


def frame_field_offsets(layout: Layout, index: int) -> tuple[int, int]:
    """Offsets of a frame entry's ``seq_num`` and ``time``, updated with each frame."""
    entry = layout.frame_entry(index)
    return entry + _FRAME_SEQ, entry + _FRAME_TIME


def compute_layout(
    columns: Sequence[str],
    frames: Iterable[FrameSpec | tuple[str, str, Sequence[int]]] = (),
    capacity: int = 4096,
) -> Layout:
    """The layout for ``columns`` (the ring's, in order), ``frames`` and ``capacity`` rows."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise LayoutError(f"capacity must be a positive number of points, not {capacity!r}")
    cols = tuple(columns)
    if len(set(cols)) != len(cols):
        raise LayoutError(f"column names repeat: {cols}")
    for name in cols:
        _fit(name, COLUMN_SIZE, "column name")
    specs = []
    for f in frames:
        spec = f if isinstance(f, FrameSpec) else FrameSpec(f[0], f[1], tuple(f[2]))
        _fit(spec.name, 128, "frame key")
        dtype = np.dtype(spec.dtype)
        if dtype.kind not in _NUMERIC_KINDS or len(dtype.str) > 8:
            raise LayoutError(f"frame {spec.name!r}: dtype {spec.dtype!r} is not a number type")
        shape = tuple(int(n) for n in spec.shape)
        if len(shape) not in (1, 2) or min(shape) < 1:
            raise LayoutError(f"frame {spec.name!r}: shape {shape} is not 1-D or 2-D")
        specs.append(FrameSpec(spec.name, dtype.str, shape, 0, dtype.itemsize * math.prod(shape)))
    header_size = _align(FIXED_SIZE + COLUMN_SIZE * len(cols) + FRAME_SIZE * len(specs))
    ring_offset = header_size
    end = _align(ring_offset + 8 * capacity * len(cols))
    placed = []
    for spec in specs:
        placed.append(FrameSpec(spec.name, spec.dtype, spec.shape, end, spec.nbytes))
        end = _align(end + spec.nbytes)
    return Layout(capacity, cols, tuple(placed), header_size, ring_offset, _align(end, PAGE))


@dataclass(frozen=True)
class Header:
    """Everything in a segment's header (the layout included)."""

    layout: Layout
    seq: int = 0
    generation: int = 0
    segment_size: int = 0
    writer_pid: int = 0
    state: int = IDLE
    total: int = 0
    scan_id: int = -1
    start_time: float = math.nan
    run_uid: str = ""
    plan_name: str = ""
    exit_status: str = ""
    #: Per frame key: (seq_num, time) of the latest frame.
    frame_points: tuple[tuple[int, float], ...] = field(default=())

    @property
    def state_name(self) -> str:
        return STATES[self.state]


def pack_header(header: Header) -> bytes:
    """The header's bytes (``layout.header_size`` of them)."""
    lay = header.layout
    size = header.segment_size or lay.size
    if size < lay.size:
        raise LayoutError(f"segment_size {size} is less than the layout needs ({lay.size})")
    out = bytearray(lay.header_size)
    FIXED.pack_into(
        out,
        0,
        MAGIC,
        VERSION,
        lay.header_size,
        header.seq,
        header.generation,
        size,
        header.writer_pid,
        header.state,
        header.total,
        lay.capacity,
        len(lay.columns),
        len(lay.frames),
        lay.ring_offset,
        header.scan_id,
        header.start_time,
        _clip(header.run_uid, 64),
        _clip(header.plan_name, 64),
        _clip(header.exit_status, 16),
    )
    for i, name in enumerate(lay.columns):
        raw = _fit(name, COLUMN_SIZE, "column name")
        out[FIXED_SIZE + COLUMN_SIZE * i : FIXED_SIZE + COLUMN_SIZE * i + len(raw)] = raw
    points = header.frame_points or ((-1, math.nan),) * len(lay.frames)
    for i, (spec, (seq_num, t)) in enumerate(zip(lay.frames, points, strict=True)):
        shape = (*spec.shape, 0)[:2]
        FRAME.pack_into(
            out,
            lay.frame_entry(i),
            spec.name.encode("utf-8"),
            spec.dtype.encode("ascii"),
            len(spec.shape),
            0,
            shape[0],
            shape[1],
            spec.offset,
            spec.nbytes,
            seq_num,
            t,
        )
    return bytes(out)


@dataclass(frozen=True)
class Fixed:
    """The fixed part of a header: enough for a reader's fast path."""

    header_size: int
    seq: int
    generation: int
    segment_size: int
    writer_pid: int
    state: int
    total: int
    capacity: int
    n_columns: int
    n_frames: int
    ring_offset: int
    scan_id: int
    start_time: float
    run_uid: str
    plan_name: str
    exit_status: str


def unpack_fixed(buf: Any) -> Fixed:
    """The fixed header from ``buf`` (bytes or a buffer); LayoutError when it is not one."""
    if len(buf) < FIXED_SIZE:
        raise LayoutError(f"{len(buf)} bytes are too short for a header ({FIXED_SIZE} bytes)")
    (
        magic, version, header_size, seq, generation, size, pid, state, total, capacity,
        n_columns, n_frames, ring_offset, scan_id, start_time, uid, plan, status,
    ) = FIXED.unpack_from(buf, 0)  # fmt: skip
    if magic != MAGIC:
        raise LayoutError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a bsrec segment")
    if version != VERSION:
        raise LayoutError(f"unknown layout version {version} (this reader knows {VERSION})")
    if state >= len(STATES):
        raise LayoutError(f"unknown run state {state}")
    return Fixed(
        header_size, seq, generation, size, pid, state, total, capacity, n_columns, n_frames,
        ring_offset, scan_id, start_time, _text(uid), _text(plan), _text(status),
    )  # fmt: skip


def unpack_header(buf: Any) -> Header:
    """The whole header from ``buf``, checked against the buffer's length."""
    fx = unpack_fixed(buf)
    need = FIXED_SIZE + COLUMN_SIZE * fx.n_columns + FRAME_SIZE * fx.n_frames
    if fx.header_size < need or fx.header_size > len(buf) or fx.capacity < 1:
        raise LayoutError(
            f"damaged header: header_size {fx.header_size}, {fx.n_columns} columns, "
            f"{fx.n_frames} frames, capacity {fx.capacity}, {len(buf)} bytes mapped"
        )
    columns = tuple(
        _text(bytes(buf[FIXED_SIZE + COLUMN_SIZE * i : FIXED_SIZE + COLUMN_SIZE * (i + 1)]))
        for i in range(fx.n_columns)
    )
    frames, points = [], []
    base = FIXED_SIZE + COLUMN_SIZE * fx.n_columns
    for i in range(fx.n_frames):
        name, dtype, ndim, _, s0, s1, offset, nbytes, seq_num, t = FRAME.unpack_from(
            buf, base + FRAME_SIZE * i
        )
        shape = (s0, s1)[:ndim]
        try:
            dt = np.dtype(_text(dtype))
        except TypeError:
            raise LayoutError(f"frame {_text(name)!r}: unknown dtype {dtype!r}") from None
        if ndim not in (1, 2) or dt.itemsize * math.prod(shape) != nbytes:
            raise LayoutError(f"frame {_text(name)!r}: shape {shape} does not match {nbytes} bytes")
        if offset + nbytes > fx.segment_size:
            raise LayoutError(f"frame {_text(name)!r} ends after the segment")
        frames.append(FrameSpec(_text(name), dt.str, shape, offset, nbytes))
        points.append((seq_num, t))
    if fx.ring_offset < fx.header_size or (
        fx.ring_offset + 8 * fx.capacity * fx.n_columns > fx.segment_size
    ):
        raise LayoutError(f"damaged header: the ring at {fx.ring_offset} leaves the segment")
    end = max(
        [fx.ring_offset + 8 * fx.capacity * fx.n_columns, *(f.offset + f.nbytes for f in frames)]
    )
    layout = Layout(
        fx.capacity, columns, tuple(frames), fx.header_size, fx.ring_offset, _align(end, PAGE)
    )
    return Header(
        layout, fx.seq, fx.generation, fx.segment_size, fx.writer_pid, fx.state, fx.total,
        fx.scan_id, fx.start_time, fx.run_uid, fx.plan_name, fx.exit_status, tuple(points),
    )  # fmt: skip


def ring_slots(total: int, capacity: int, last: int | None = None) -> np.ndarray:
    """Ring rows holding the run's latest points, oldest first (at most ``last`` of them)."""
    n = min(total, capacity)
    if last is not None:
        n = max(0, min(n, last))
    return np.arange(total - n, total, dtype=np.int64) % capacity


# -- what goes into the segment -----------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """What a primary-stream descriptor puts into the segment."""

    keys: tuple[str, ...]  # scalar data keys, the ring's columns after seq_num and time
    frames: tuple[FrameSpec, ...]
    notes: tuple[str, ...]  # what was left out and why

    @property
    def columns(self) -> tuple[str, ...]:
        return (*BASE_COLUMNS, *self.keys)


def choose(
    data_keys: Mapping[str, Mapping[str, Any]],
    *,
    frames: Sequence[str] = (),
    max_columns: int = 256,
) -> Choice:
    """The ring's scalar keys (descriptor order) and the frame keys of a descriptor.

    Scalars are keys of dtype number, integer or boolean with shape ``[]`` that
    are not external; strings and arrays stay out. A frame key must be in the
    event data (not external) with a 1-D or 2-D shape; its dtype is the
    descriptor's ``dtype_numpy`` when numeric, else float64.
    """
    keys, specs, notes = [], [], []
    wanted = list(dict.fromkeys(frames))
    for key, info in data_keys.items():
        if key in wanted:
            continue
        shape = info.get("shape") or []
        if info.get("external") or shape or info.get("dtype") not in _SCALAR_DTYPES:
            continue
        if key in BASE_COLUMNS:
            notes.append(f"scalar {key!r} left out: the name is the ring's own column")
        elif len(key.encode("utf-8")) >= COLUMN_SIZE or "\0" in key:
            notes.append(f"scalar {key[:40]!r}... left out: name longer than 127 bytes")
        elif len(keys) + len(BASE_COLUMNS) >= max_columns:
            notes.append(f"scalar {key!r} left out: more than max_columns={max_columns}")
        else:
            keys.append(key)
    for key in wanted:
        info = data_keys.get(key)
        if info is None:
            notes.append(f"frame {key!r} is not in this stream")
            continue
        if info.get("external"):
            notes.append(f"frame {key!r} left out: external data (detector file), not in events")
            continue
        shape = tuple(int(n) for n in info.get("shape") or ())
        if len(shape) not in (1, 2) or min(shape) < 1:
            notes.append(f"frame {key!r} left out: shape {list(shape)} is not 1-D or 2-D")
            continue
        dtype = "<f8"
        try:
            declared = np.dtype(info.get("dtype_numpy") or "<f8")
            if declared.kind in _NUMERIC_KINDS:
                dtype = declared.str
        except TypeError:
            pass
        if len(key.encode("utf-8")) >= 128:
            notes.append(f"frame {key[:40]!r}... left out: name longer than 127 bytes")
            continue
        specs.append(FrameSpec(key, dtype, shape))
    return Choice(tuple(keys), tuple(specs), tuple(notes))


def _number(value: Any) -> float:
    """A value as float64; NaN for None, text, sequences and anything else not a number."""
    if isinstance(value, np.ndarray):
        return float(value) if value.ndim == 0 and value.dtype.kind in _NUMERIC_KINDS else math.nan
    if value is None or isinstance(value, str | bytes | list | tuple | dict):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def row_values(seq_num: Any, t: Any, data: Mapping[str, Any], keys: Sequence[str]) -> list[float]:
    """One ring row: seq_num, time, then ``keys`` (NaN where missing or not a number)."""
    return [_number(seq_num), _number(t), *(_number(data.get(k)) for k in keys)]


def page_rows(page: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    """The ring rows of an event page, shape ``(rows, 2 + len(keys))``, float64."""
    seq_nums = page["seq_num"]
    times = page["time"]
    data = page.get("data", {})
    out = np.full((len(seq_nums), len(BASE_COLUMNS) + len(keys)), np.nan)
    out[:, 0] = [_number(s) for s in seq_nums]
    out[:, 1] = [_number(t) for t in times]
    for j, key in enumerate(keys, start=len(BASE_COLUMNS)):
        values = data.get(key)
        if values is None:
            continue
        out[: len(values), j] = [_number(v) for v in values[: len(seq_nums)]]
    return out
