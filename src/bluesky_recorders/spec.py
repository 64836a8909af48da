"""The SPEC recorder: classic SPEC data files, one per experiment, scans appended.

Layout of ``<run directory>/<file_template>`` (reference:
``docs/reference/spec.md``; choices: ``docs/explanations/decisions/0010-spec-recorder.md``)::

    #F gup-12345_doe.spec                   file header: at creation, and again
    #E 1763716323                           (blank line first) whenever the set
    #D Fri Nov 21 10:12:03 2026             of positioners changes
    #C gup-12345_doe  User = operator  Host = bl9ws1
    #C file header 1, written by bluesky_recorders 0.1.0: missing or non-numeric ...
    #O0 m1  m2  m3  m4  m5  m6  m7  m8      positioners, eight per line
    #O1 energy
                                            (blank line before each scan)
    #S 12  ascan  motor -1 1  10  0.1       SPEC-like command from the plan
    #D Fri Nov 21 10:12:03 2026
    #T 0.1  (Seconds)                       or #M <preset>  (<monitor>), when known
    #C uid = 1a2b3c4d-...                   run uid, RunEngine scan_id when renumbered,
    #C proposal = GUP-12345                 proposal, PI, sample, plan arguments ...
    #P0 1.5 0 0 0 0 0 0 0                   positions from the baseline's first reading
    #P1 8.0
    #@MCA %16C                              only with 1-D arrays (MCA data): per array
    #@CHANN 1024 0 1023 1                   its channels, and the identity calibration
    #@CALIB 0 1 0                           (silx needs one #@CALIB per #@CHANN)
    #N 4
    #L motor  Epoch  motor_setpoint  det    scanned motor(s) first, main detector last
    -1.0 0.104351 -1.0 367.879              one row per event, flushed at once
    @A 0 1 2 ... 15\\                        MCA spectra after their row
    #C Fri Nov 21 10:12:09 2026.  exit_status = success  duration = 5.812 s  points = 11

Rows are written and flushed as events arrive; the file is only ever appended to.
Format logic is in pure functions (:func:`spec_date`, :func:`scan_command`,
:func:`scan_layout`, :func:`format_number`, :func:`file_header_lines`,
:func:`scan_header_lines`, :func:`mca_lines`, :func:`read_file_state`...);
:class:`SpecWriter` holds one run's state and :class:`SpecRecorder` the open files.
"""

from __future__ import annotations

import errno
import getpass
import io
import json
import logging
import math
import numbers
import os
import re
import socket
import stat
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from operator import call, itemgetter
from pathlib import Path
from typing import Any

from .console import _motor_fields, count_time, plan_length
from .external import ExternalFrames
from .paths import DirectoryPolicy, PathExistsError, PathPolicyError, ensure_inside
from .recorder import FileRecorder, RunWriter

__all__ = [
    "MAX_POSITIONERS",
    "MISSING_VALUE",
    "NO_POSITIONERS",
    "FileState",
    "ScanCommand",
    "ScanLayout",
    "SpecRecorder",
    "SpecWriter",
    "comment_lines",
    "comment_value",
    "file_header_lines",
    "format_number",
    "grouped_lines",
    "main_detector",
    "mca_lines",
    "monitor_preset",
    "one_line",
    "row_formatter",
    "read_file_state",
    "sanitize_label",
    "scan_command",
    "scan_header_lines",
    "scan_layout",
    "spec_date",
    "unique_labels",
]

log = logging.getLogger("bluesky_recorders.spec")

#: Written for a missing, non-finite or non-numeric value (a ``#C`` line names each one).
MISSING_VALUE = -999999
#: The one ``#O`` name of a scan that recorded no positioner (its ``#P`` is the missing
#: value): PyMca's ``allmotors()``/``allmotorpos()`` raise SystemError on a scan without
#: ``#O``/``#P`` (``PyList_New(-1)``), and ``Specfile.allmotors()`` raises when the first
#: scan has none.
NO_POSITIONERS = "no_positioners"
#: Names per ``#O`` line, values per ``#P`` line (SPEC's own layout).
PER_LINE = 8
#: MCA channels per ``@A`` line before a ``\\`` continuation (``#@MCA %16C``).
MCA_PER_LINE = 16
#: Longest ``#`` line written: silx 3.1 crashes (segfault) on header lines of ~10,600
#: characters; longer comments go on ``#C ... `` continuation lines, and ``#L`` keeps
#: only the columns that fit (the others become comments).
MAX_LINE = 4096
#: Secondary-stream events held back, at most, while a run's main stream has not begun.
MAX_PENDING = 1000
#: Longest label in ``#L``/``#O``: the C parser of silx and PyMca keeps 255 characters
#: of a longer name (a static buffer of 256), spec2nexus all of them.
MAX_LABEL = 255
#: Largest ``#S`` number: PyMca reads scan numbers into a C ``int`` (10**12 came back as
#: -727379968); a larger scan_id is renumbered like a used one.
MAX_SCAN_NUMBER = 2**31 - 1
#: Most positioners in ``#O``/``#P``: the C parser of silx and PyMca reads positions into
#: a static array of 300 (``SfAllMotorPos``): with more, silx reads wrong values (320) or
#: crashes (1000). The others become ``#C baseline`` lines.
MAX_POSITIONERS = 300
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCALAR_DTYPES = frozenset({"number", "integer", "boolean"})
_MAX_LISTED = 16  # list_scan points shown in full on the #S line
_EXPERIMENT_KEYS = ("proposal_id", "pi_last_name", "pi_name", "sample_name", "beamline_id")


# -- pure functions: documents in, lines out ---------------------------------------


def spec_date(t: float | None = None) -> str:
    """``Fri Nov 21 10:12:03 2026``: SPEC's ``#D`` date in local time, English whatever
    the locale, zero-padded day."""
    dt = datetime.now() if t is None else datetime.fromtimestamp(t)
    return (
        f"{_WEEKDAYS[dt.weekday()]} {_MONTHS[dt.month - 1]} {dt.day:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {dt.year}"
    )


def one_line(text: object) -> str:
    """Text for a comment: control characters become spaces, runs of spaces one space."""
    return _SPACE.sub(" ", _CONTROL.sub(" ", str(text))).strip()


def ascii_name(text: str) -> str:
    """``text`` in ASCII: accents dropped (``"dét"`` -> ``"det"``), any other character
    written as ``u`` and its code point (``"日本"`` -> ``"u65e5u672c"``). silx.io.open
    fails on a ``#L`` name that is not ASCII (UnicodeEncodeError), and the C parser
    counts :data:`MAX_LABEL` in bytes."""
    if text.isascii():
        return text
    out = []
    for c in unicodedata.normalize("NFKD", text):
        if c.isascii():
            out.append(c)
        elif not unicodedata.combining(c):
            out.append(f"u{ord(c):04x}")
    return "".join(out)


def sanitize_label(name: object) -> str:
    """A name for ``#L``/``#O`` (two spaces separate names): ASCII (:func:`ascii_name`);
    whitespace and control characters inside it become one ``_``; an empty name becomes
    ``unnamed``; at most :data:`MAX_LABEL` characters."""
    text = _SPACE.sub("_", _CONTROL.sub(" ", ascii_name(str(name))).strip())
    return text[:MAX_LABEL] or "unnamed"


def comment_lines(text: str) -> list[str]:
    """``#C text`` on one line, or cut into lines of at most :data:`MAX_LINE` characters,
    each continuation line starting with ``#C ... `` (join the parts after ``#C `` and
    ``#C ... `` to read it back; no part ends with a space)."""
    text = one_line(text) if ("\n" in text or "\r" in text) else text.rstrip()
    out = []
    start, prefix = 0, "#C "
    while True:
        room = MAX_LINE - len(prefix)
        if len(text) - start <= room:
            out.append(prefix + text[start:])
            return out
        cut = start + room
        while cut > start + 1 and text[cut - 1] == " ":
            cut -= 1
        out.append(prefix + text[start:cut])
        start, prefix = cut, "#C ... "


def unique_labels(names: Iterable[object]) -> list[str]:
    """:func:`sanitize_label` of each name, with ``_2``, ``_3``... added to repeats (the
    name shortened to keep :data:`MAX_LABEL`)."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        label = sanitize_label(name)
        candidate, n = label, 1
        while candidate in seen:
            n += 1
            suffix = f"_{n}"
            candidate = label[: MAX_LABEL - len(suffix)] + suffix
        seen.add(candidate)
        out.append(candidate)
    return out


def format_number(value: Any) -> str | None:
    """A finite number as SPEC text (shortest exact form), or None when ``value`` is
    missing, non-finite or not a number (the caller writes :data:`MISSING_VALUE`).

    Booleans are ``1``/``0``; integers stay integers; floats use ``repr``.
    """
    kind = type(value)
    if kind is float:
        return repr(value) if value - value == 0.0 else None
    if kind is int:
        return str(value)
    if kind is bool:
        return "1" if value else "0"
    if value is None or isinstance(value, str | bytes):
        return None
    if isinstance(value, numbers.Integral):  # numpy integers and booleans
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        return repr(f) if math.isfinite(f) else None
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):  # not Integral
        return "1" if value else "0"
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def comment_value(value: Any) -> str:
    """A value in a ``#C`` line: JSON (strings quoted, ``NaN``, ``null``), on one line."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    except (TypeError, ValueError):
        return json.dumps(str(value), ensure_ascii=False)


def grouped_lines(prefix: str, items: Sequence[str], sep: str) -> list[str]:
    """``#O0 a  b ...`` / ``#P0 1 2 ...``: ``PER_LINE`` items per numbered line."""
    return [
        f"{prefix}{i // PER_LINE} {sep.join(items[i : i + PER_LINE])}"
        for i in range(0, len(items), PER_LINE)
    ]


def _arg(value: Any) -> str:
    """One argument of a command line: a number as SPEC writes it, else compact text."""
    text = format_number(value)
    if text is not None:
        return text
    if isinstance(value, list | tuple):
        return "[" + ",".join(_arg(v) for v in value) + "]"
    return sanitize_label(value)


def monitor_preset(start: Mapping[str, Any]) -> tuple[float, str] | None:
    """(preset counts, monitor name) when the plan counts to a monitor preset, else None.

    Looks for ``monitor_preset``/``preset_monitor`` in the start document, then in
    ``plan_args``; the monitor's name is ``monitor`` (``"monitor"`` when not given).
    """
    args = start.get("plan_args")
    for where in (start, args if isinstance(args, Mapping) else {}):
        for key in ("monitor_preset", "preset_monitor"):
            value = where.get(key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0:
                name = where.get("monitor") or start.get("monitor") or "monitor"
                return float(value), sanitize_label(name)
    return None


@dataclass(frozen=True)
class ScanCommand:
    """The ``#S`` command and the motors' data keys in SPEC column order."""

    text: str
    motors: tuple[str, ...] = ()
    #: plan arguments to keep in a ``#C`` line (the generic fallback only)
    note: str = ""
    mapped: bool = True


def _dimension_fields(start: Mapping[str, Any]) -> list[list[str]]:
    dims = (start.get("hints") or {}).get("dimensions")
    out: list[list[str]] = []
    if isinstance(dims, list):
        for dim in dims:
            if isinstance(dim, list | tuple) and len(dim) == 2 and isinstance(dim[0], list):
                out.append([f for f in dim[0] if isinstance(f, str) and f != "time"])
    return out


def _motor_names(start: Mapping[str, Any], count: int) -> list[str] | None:
    """``count`` motor data keys: from ``hints.dimensions``, else ``start["motors"]``."""
    dims = [d[0] for d in _dimension_fields(start) if d]
    if len(dims) == count:
        return dims
    motors = [m for m in start.get("motors") or [] if isinstance(m, str)]
    if len(motors) == count:
        return motors
    return None


def scan_command(start: Mapping[str, Any]) -> ScanCommand:
    """The SPEC-like command line of the ``#S`` line, mapped from the plan.

    ============================  =============================================
    bluesky plan                  ``#S`` command
    ============================  =============================================
    ``count`` (num points)        ``loopscan <num> <time> <delay>``
    ``count`` (num=None)          ``timescan <time> <delay>``
    ``scan`` 1 / k motors         ``ascan m s e <intervals> <time>`` / ``a<k>scan ...``
    ``rel_scan``                  ``dscan ...`` / ``d<k>scan ...``
    ``list_scan``                 ``list_scan m [p0,p1,...] ... <time>``
    ``grid_scan`` 2 motors        ``mesh fast s e <int> slow s e <int> <time>``
    ``rel_grid_scan`` 2 motors    ``dmesh ...``
    any other plan                ``<plan_name> <motors...> <points>``
    ============================  =============================================

    ``<intervals>`` is points - 1, as in SPEC. ``<time>`` is the count time when the
    plan gives it, else ``0``. In a mesh the first motor is the fast (inner) one, as in
    SPEC; bluesky names the slow one first.
    """
    plan = sanitize_label(start.get("plan_name") or "unknown")
    args = start.get("plan_args")
    args = args if isinstance(args, Mapping) else {}
    t = count_time(start)
    time_text = _arg(t) if t is not None else "0"
    try:
        if plan == "count":
            return _count_command(args, time_text)
        if plan in ("scan", "rel_scan"):
            cmd = _scan_command(start, args, plan, time_text)
            if cmd is not None:
                return cmd
        if plan in ("list_scan", "rel_list_scan"):
            cmd = _list_command(start, args, plan, time_text)
            if cmd is not None:
                return cmd
        if plan in ("grid_scan", "rel_grid_scan"):
            cmd = _mesh_command(start, plan, time_text)
            if cmd is not None:
                return cmd
    except (TypeError, ValueError, KeyError, IndexError):
        pass
    return _fallback_command(start, plan, args)


def _count_command(args: Mapping[str, Any], time_text: str) -> ScanCommand:
    delay = args.get("delay", 0)
    delay_text = format_number(delay) or "0"
    num = args.get("num", 1)
    if num is None:
        return ScanCommand(f"timescan {time_text} {delay_text}")
    return ScanCommand(f"loopscan {_arg(num)} {time_text} {delay_text}")


def _scan_command(
    start: Mapping[str, Any], args: Mapping[str, Any], plan: str, time_text: str
) -> ScanCommand | None:
    a = list(args.get("args") or [])
    if not a or len(a) % 3:
        return None
    k = len(a) // 3
    names = _motor_names(start, k)
    num = args.get("num") or plan_length(start)
    if names is None or not isinstance(num, int) or num < 1:
        return None
    parts = []
    for i, name in enumerate(names):
        parts += [sanitize_label(name), _arg(a[3 * i + 1]), _arg(a[3 * i + 2])]
    prefix = "a" if plan == "scan" else "d"
    cmd = f"{prefix}scan" if k == 1 else f"{prefix}{k}scan"
    return ScanCommand(f"{cmd}  {' '.join(parts)}  {num - 1}  {time_text}", tuple(names))


def _list_command(
    start: Mapping[str, Any], args: Mapping[str, Any], plan: str, time_text: str
) -> ScanCommand | None:
    a = list(args.get("args") or [])
    if not a or len(a) % 2:
        return None
    k = len(a) // 2
    names = _motor_names(start, k)
    if names is None:
        return None
    parts = []
    long = False
    for i, name in enumerate(names):
        points = list(a[2 * i + 1])
        if len(points) > _MAX_LISTED:  # first and last, all of them in a #C line
            long = True
            parts += [sanitize_label(name), f"[{_arg(points[0])},...,{_arg(points[-1])}]"]
        else:
            parts += [sanitize_label(name), _arg(points)]
    note = comment_value(dict(args)) if long else ""
    return ScanCommand(f"{plan}  {' '.join(parts)}  {time_text}", tuple(names), note)


def _mesh_command(start: Mapping[str, Any], plan: str, time_text: str) -> ScanCommand | None:
    shape = start.get("shape")
    extents = start.get("extents")
    names = _motor_names(start, 2)
    if (
        names is None
        or not isinstance(shape, list | tuple)
        or not isinstance(extents, list | tuple)
        or len(shape) != 2
        or len(extents) != 2
    ):
        return None
    (slow, fast), (n_slow, n_fast) = names, shape
    (s0, e0), (s1, e1) = extents
    cmd = "mesh" if plan == "grid_scan" else "dmesh"
    text = (
        f"{cmd}  {sanitize_label(fast)} {_arg(s1)} {_arg(e1)} {int(n_fast) - 1}  "
        f"{sanitize_label(slow)} {_arg(s0)} {_arg(e0)} {int(n_slow) - 1}  {time_text}"
    )
    return ScanCommand(text, (fast, slow))


def _fallback_command(start: Mapping[str, Any], plan: str, args: Mapping[str, Any]) -> ScanCommand:
    motors = [f for dim in _dimension_fields(start) for f in dim]
    if not motors:
        motors = [m for m in start.get("motors") or [] if isinstance(m, str)]
    parts = [plan, *(sanitize_label(m) for m in motors)]
    n = plan_length(start)
    if n is not None:
        parts.append(str(n))
    note = comment_value(dict(args)) if args else ""
    return ScanCommand("  ".join(parts), tuple(motors), note, mapped=False)


def main_detector(
    start: Mapping[str, Any], descriptor: Mapping[str, Any], candidates: Sequence[str]
) -> str | None:
    """The main detector's data key: the first hinted field of the first of
    ``start["detectors"]`` among ``candidates``, else the first hinted candidate."""
    hints = descriptor.get("hints")
    hints = hints if isinstance(hints, Mapping) else {}
    allowed = set(candidates)

    def fields(hint: Any) -> list[str]:
        return list(hint.get("fields") or []) if isinstance(hint, Mapping) else []

    for det in start.get("detectors") or []:
        if isinstance(det, str):
            for f in fields(hints.get(det)):
                if f in allowed:
                    return f
    for hint in hints.values():
        for f in fields(hint):
            if f in allowed:
                return f
    return None


@dataclass(frozen=True)
class ScanLayout:
    """What the main stream's data keys become in one scan.

    ``columns``: (kind, data key) per ``#L`` label, kind ``"value"`` (a number),
    ``"epoch"`` (seconds since the file header's ``#E``) or ``"frame"`` (index of the
    key's first frame in its detector file); ``mca``: keys written as ``@A`` spectra;
    ``text``: keys written as ``#C`` lines when their value changes; ``skipped``:
    arrays larger than the MCA limit (named once in a ``#C`` line); ``uneven``: arrays
    of another length than the spectra (in ``text`` too).
    """

    columns: tuple[tuple[str, str], ...]
    labels: tuple[str, ...]
    mca: tuple[tuple[str, int], ...] = ()
    text: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    uneven: tuple[str, ...] = ()

    @property
    def signature(self) -> tuple[Any, ...]:
        return (self.columns, self.mca, self.text)

    @cached_property
    def fast(self) -> tuple[tuple[str, ...], int] | None:
        """(value keys, position of Epoch) when every column is a value or Epoch."""
        kinds = [kind for kind, _ in self.columns]
        if kinds.count("epoch") != 1 or any(k not in ("value", "epoch") for k in kinds):
            return None
        keys = tuple(key for kind, key in self.columns if kind == "value")
        return keys, kinds.index("epoch")


def _getter(keys: Sequence[str]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """``itemgetter`` that always gives a tuple."""
    if not keys:
        return lambda d: ()
    if len(keys) == 1:
        key = keys[0]
        return lambda d: (d[key],)
    return itemgetter(*keys)


def row_formatter(
    layout: ScanLayout, data: Mapping[str, Any]
) -> Callable[[Mapping[str, Any], float], str] | None:
    """A fast ``(event data, Epoch) -> row text + "\\n"`` for ``layout``, built from the types
    of one event's ``data``: ``float.__repr__`` for a float column (numpy float64 too),
    ``int.__repr__`` for an int column. None when a column is anything else.

    Another type later raises TypeError (the caller then writes the row the careful way);
    the text holds an ``n`` only for nan or inf (``int.__repr__(True)`` is ``1``)."""
    fast = layout.fast
    if fast is None:
        return None
    keys, at = fast
    funcs = []
    for key in keys:
        value = data.get(key)
        if isinstance(value, float):
            funcs.append(float.__repr__)
        elif type(value) is int:
            funcs.append(int.__repr__)
        else:
            return None
    hf, tf = tuple(funcs[:at]), tuple(funcs[at:])
    head, tail = _getter(keys[:at]), _getter(keys[at:])
    if at and tf:
        return lambda d, e: (
            f"{' '.join(map(call, hf, head(d)))} {e:.6f} {' '.join(map(call, tf, tail(d)))}\n"
        )
    if at:
        return lambda d, e: f"{' '.join(map(call, hf, head(d)))} {e:.6f}\n"
    if tf:
        return lambda d, e: f"{e:.6f} {' '.join(map(call, tf, tail(d)))}\n"
    return lambda d, e: f"{e:.6f}\n"


def _no_row(data: Mapping[str, Any], epoch: float) -> str:
    return ""


#: A row of texts that are all finite numbers (no nan, inf, True...), with its line end.
_plain_row = re.compile(r"[-+.e0-9 ]+\n").fullmatch


#: The layout of a scan with no data stream: one ``Epoch`` column, no rows.
EMPTY_LAYOUT = ScanLayout((("epoch", ""),), ("Epoch",))


def _shape_size(shape: Sequence[Any]) -> int | None:
    size = 1
    for n in shape:
        if not isinstance(n, int) or n < 0:
            return None
        size *= n
    return size


def scan_layout(
    start: Mapping[str, Any],
    descriptor: Mapping[str, Any],
    motors: Sequence[str] = (),
    *,
    max_mca_channels: int = 65536,
) -> ScanLayout:
    """The ``#L`` columns (scanned motors first, ``Epoch``, the other numbers in
    descriptor order, the main detector last), MCA keys, text keys and skipped keys."""
    keys: Mapping[str, Mapping[str, Any]] = descriptor.get("data_keys", {}) or {}
    scalars: list[str] = []
    frames: list[str] = []
    mca: list[tuple[str, int]] = []
    text: list[str] = []
    skipped: list[str] = []
    for key, dk in keys.items():
        shape = list(dk.get("shape") or [])
        dtype = dk.get("dtype")
        if dk.get("external"):
            frames.append(key)
        elif not shape and dtype in _SCALAR_DTYPES:
            scalars.append(key)
        elif shape and dtype in ("array", "number", "integer", "boolean"):
            size = _shape_size(shape)
            if size is not None and 0 < size <= max_mca_channels:
                mca.append((key, size))
            else:
                skipped.append(key)
        else:  # strings, and anything the descriptor does not call a number
            text.append(key)
    uneven: list[str] = []
    sizes = [n for _, n in mca]
    if len(set(sizes)) > 1:
        # spec2nexus keeps every spectrum of a scan in one array: its converter fails on
        # spectra of several lengths. The most common length (the first on a tie) stays.
        keep = max(sizes, key=lambda n: (sizes.count(n), -sizes.index(n)))
        uneven = [k for k, n in mca if n != keep]
        mca = [(k, n) for k, n in mca if n == keep]
        text += uneven
    wanted = [m for m in motors if m in scalars]
    if not wanted:
        wanted = [m for m in _motor_fields(start, descriptor) if m in scalars]
    motor_cols = list(dict.fromkeys(wanted))
    rest = [k for k in scalars if k not in motor_cols]
    main = main_detector(start, descriptor, rest)
    if main is not None:
        rest = [k for k in rest if k != main] + [main]
    middle = [("value", k) for k in (rest[:-1] if main is not None else rest)]
    middle += [("frame", k) for k in frames]
    head = [("value", k) for k in motor_cols] + [("epoch", "")]
    tail = [("value", main)] if main is not None else []

    def labels_of(cols: list[tuple[str, str]]) -> list[str]:
        names = [("Epoch" if kind == "epoch" else f"{key}_frame" if kind == "frame" else key)
                 for kind, key in cols]  # fmt: skip
        return unique_labels(names)

    # silx crashes on a #L line over ~10,600 characters: the columns that do not fit
    # are written as comments
    def fits(n: int) -> bool:
        return len("  ".join(labels_of(head + middle[:n] + tail))) + 3 <= MAX_LINE

    if not fits(len(middle)):
        lo, hi = 0, len(middle)  # fits(lo); not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        for kind, key in middle[lo:]:
            (text if kind == "value" else skipped).append(key)
        del middle[lo:]
    columns = head + middle + tail
    return ScanLayout(
        tuple(columns),
        tuple(labels_of(columns)),
        tuple(mca),
        tuple(text),
        tuple(skipped),
        tuple(uneven),
    )


def file_header_lines(
    file_name: str,
    epoch: int,
    positioners: Sequence[str],
    *,
    user: str = "",
    host: str = "",
    missing_value: float = MISSING_VALUE,
    ordinal: int = 1,
) -> list[str]:
    """``#F``, ``#E``, ``#D``, ``#C`` and ``#O`` lines of file header block ``ordinal``.

    The writer always gives at least one positioner (:data:`NO_POSITIONERS` when a run
    recorded none): without ``#O`` PyMca raises, and an empty ``#O0`` silx reads as
    garbage names. The ordinal keeps two headers apart even when they are written in
    the same second (spec2nexus merges identical header blocks).
    """
    stem = sanitize_label(os.path.splitext(file_name)[0])
    lines = [
        f"#F {file_name}",
        f"#E {epoch}",
        f"#D {spec_date(epoch)}",
        f"#C {stem}  User = {sanitize_label(user or 'unknown')}"
        + (f"  Host = {sanitize_label(host)}" if host else ""),
        f"#C file header {ordinal}, written by bluesky_recorders {_program_version()}: "
        "missing or non-numeric "
        f"values are written as {_arg(missing_value)}, each named in a #C line",
    ]
    return lines + grouped_lines("#O", list(positioners), "  ")


def scan_header_lines(
    number: int,
    command: str,
    when: float,
    *,
    count_seconds: float | None = None,
    monitor: tuple[float, str] | None = None,
    comments: Sequence[str] = (),
    positions: Sequence[str] = (),
    layout: ScanLayout = EMPTY_LAYOUT,
) -> list[str]:
    """``#S``, ``#D``, ``#T``/``#M``, ``#C``, ``#P``, ``#@MCA``, ``#N`` and ``#L`` lines.

    With MCA spectra: ``#@MCA``, then per spectrum of a row a ``#@CHANN`` line and a
    ``#@CALIB 0 1 0`` line (no energy calibration is known: x = channel number, what
    the readers assume without one). silx.io.open takes analyser ``i``'s calibration
    from the ``i``-th ``#@CALIB`` whenever there is more than one ``#@CHANN``, and fails
    (IndexError) with fewer; PyMca takes one per analyser, or a single one for all.
    """
    lines = [f"#S {number}  {command}", f"#D {spec_date(when)}"]
    if monitor is not None:
        lines.append(f"#M {_arg(monitor[0])}  ({monitor[1]})")
    elif count_seconds is not None:
        lines.append(f"#T {_arg(count_seconds)}  (Seconds)")
    for c in comments:
        lines += comment_lines(c)
    lines += grouped_lines("#P", list(positions), " ")
    if layout.mca:
        lines.append(f"#@MCA %{MCA_PER_LINE}C")
        for _, n in layout.mca:
            lines += [f"#@CHANN {n} 0 {n - 1} 1", "#@CALIB 0 1 0"]
    lines.append(f"#N {len(layout.labels)}")
    lines.append("#L " + "  ".join(layout.labels))
    return lines


def mca_lines(values: Any, missing: str) -> tuple[list[str], int]:
    """One spectrum as ``@A`` lines cut every 16 channels with ``\\`` continuations,
    and how many channels were not finite numbers (written as ``missing``)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    flat = list(_flatten(values))
    bad = 0
    cells = []
    for v in flat:
        text = format_number(v)
        if text is None:
            bad += 1
            text = missing
        cells.append(text)
    if not cells:
        return ["@A"], 0
    chunks = [cells[i : i + MCA_PER_LINE] for i in range(0, len(cells), MCA_PER_LINE)]
    out = []
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        body = " ".join(chunk)
        out.append(("@A " if i == 0 else " ") + body + ("\\" if i < last else ""))
    return out, bad


def _flatten(values: Any) -> Iterable[Any]:
    if isinstance(values, list | tuple):
        for v in values:
            yield from _flatten(v)
    else:
        yield values


@dataclass
class FileState:
    """What an existing SPEC file tells the next scan: the scan numbers used, the last
    header's positioners and ``#E``, and whether the last line is complete."""

    numbers: set[int] = field(default_factory=set)
    positioners: tuple[str, ...] | None = None
    epoch: int | None = None
    ends_with_newline: bool = True
    size: int = 0
    #: ``#F`` lines seen: file header blocks
    headers: int = 0

    def next_number(self, wanted: Any) -> int:
        """``wanted`` (the RunEngine's scan_id) if it is a positive integer not used yet
        and at most :data:`MAX_SCAN_NUMBER`, else the highest number used plus one."""
        if isinstance(wanted, int) and not isinstance(wanted, bool):
            if 0 < wanted <= MAX_SCAN_NUMBER and wanted not in self.numbers:
                return wanted
        return max(self.numbers, default=0) + 1


def read_file_state(lines: Iterable[bytes]) -> FileState:
    """Parse the lines of an existing SPEC file (bytes, as read) into a :class:`FileState`."""
    state = FileState()
    last = b""
    in_header = False
    for line in lines:
        last = line
        state.size += len(line)
        if not line.startswith(b"#"):
            continue
        if line.startswith(b"#S "):
            in_header = False
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                state.numbers.add(int(parts[1]))
        elif line.startswith((b"#F", b"#E ")):
            if line.startswith(b"#F"):
                state.headers += 1
            if not in_header:
                state.positioners = ()
                in_header = True
            if line.startswith(b"#E "):
                try:
                    state.epoch = int(float(line.split()[1]))
                except (IndexError, ValueError):
                    pass
        elif line.startswith(b"#O") and in_header:
            text = line[2:].decode("utf-8", "replace").rstrip("\r\n")
            names = text.split(" ", 1)[1] if " " in text else ""
            state.positioners = (state.positioners or ()) + tuple(
                n.strip() for n in names.split("  ") if n.strip()
            )
    state.ends_with_newline = not last or last.endswith(b"\n")
    return state


def _program_version() -> str:
    try:
        return version("bluesky-recorders")
    except PackageNotFoundError:
        return "unknown"


def _experiment_fields(start: Mapping[str, Any]) -> dict[str, str]:
    """Template keys from ``start["experiment"]`` (empty strings when unknown)."""
    exp = start.get("experiment")
    exp = exp if isinstance(exp, Mapping) else {}
    pi = exp.get("pi")
    pi = pi if isinstance(pi, Mapping) else {}
    sample = exp.get("sample")
    sample_name = sample.get("name") if isinstance(sample, Mapping) else sample
    proposal = exp.get("proposal_id")
    if not proposal and isinstance(exp.get("proposal"), Mapping):
        proposal = exp["proposal"].get("id")
    if not proposal and isinstance(start.get("proposal_id"), str | int):
        proposal = start["proposal_id"]  # older runs carry it at the top level
    when = start.get("time")
    stamp = datetime.fromtimestamp(when) if isinstance(when, int | float) else datetime.now()
    return {
        "proposal_id": str(proposal or ""),
        "pi_last_name": str(pi.get("last_name") or ""),
        "pi_name": str(pi.get("name") or ""),
        "sample_name": str(sample_name or ""),
        "beamline_id": str(exp.get("beamline_id") or ""),
        "year_month": f"{stamp.year:04d}-{stamp.month:02d}",
        "date": f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}",
    }


def _run_comments(start: Mapping[str, Any]) -> list[str]:
    """``uid``, proposal, PI and sample ``#C`` texts from the start document."""
    fields = _experiment_fields(start)
    out = [f"uid = {one_line(start.get('uid', ''))}"]
    for label, key in (("proposal", "proposal_id"), ("PI", "pi_name"), ("sample", "sample_name")):
        if fields[key]:
            out.append(f"{label} = {one_line(fields[key])}")
    return out


# -- the file, shared by the runs appending to it ------------------------------------


class _SpecFile:
    """One open SPEC file, shared by the runs appending to it, and what it holds."""

    def __init__(self, path: Path, fh: io.FileIO, state: FileState) -> None:
        self.path = path
        self.fh = fh
        self.fd = fh.fileno()
        self.state = state
        #: the writer whose scan is at the end of the file
        self.owner: SpecWriter | None = None
        self.users = 0

    def write(self, text: str) -> None:
        """Append with one unbuffered ``write`` (no fsync): a crash keeps every line
        written so far, and ``O_APPEND`` keeps each write whole."""
        data = text.encode("utf-8", "surrogateescape")
        done = self.fh.write(data) or 0
        while done < len(data):  # a short write (a signal, a full disk): go on
            done += self.fh.write(data[done:]) or 0
        self.state.size += 1  # only "not empty" matters

    def stat_key(self) -> tuple[int, int, int]:
        st = os.fstat(self.fh.fileno())
        return st.st_ino, st.st_size, st.st_mtime_ns


def _open_append(path: Path, policy: DirectoryPolicy, root: Path) -> tuple[io.FileIO, bool]:
    """Open ``path`` for appending: created (create-only, with the policy's mode and
    group) when missing; an existing file only when it is a regular file that is empty
    or starts with ``#F`` (a SPEC file), else :class:`PathExistsError` (untouched).

    Returns the unbuffered binary file (``O_APPEND``) and whether it was created.
    """
    ensure_inside(root, path)
    flags = os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    created = True
    try:
        fd = os.open(path, flags | os.O_WRONLY | os.O_CREAT | os.O_EXCL, policy.file_mode & 0o777)
    except FileExistsError:
        created = False
        try:
            fd = os.open(path, flags | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise PathPolicyError(
                    f"refusing to append to {path}: it is a symbolic link"
                ) from None
            raise OSError(
                err.errno, f"cannot open the SPEC file {path}: {err.strerror}", str(path)
            ) from err
    except OSError as err:
        raise OSError(
            err.errno, f"cannot create the SPEC file {path}: {err.strerror}", str(path)
        ) from err
    try:
        if created:
            policy.apply_file(path)
        else:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PathPolicyError(f"refusing to append to {path}: not a regular file")
            head = os.pread(fd, 2, 0)
            if st.st_size and head != b"#F":
                raise PathExistsError(
                    errno.EEXIST,
                    f"refusing to append to {path}: the file exists and is not a SPEC file "
                    f"(it starts with {head!r}, not '#F'); it is left untouched: choose "
                    "another file_template or move the file away",
                )
        return io.FileIO(fd, "a"), created
    except BaseException:
        os.close(fd)
        raise


# -- the writer -------------------------------------------------------------------------

#: Streams that never make rows: the baseline, and the metadata service's one-event stream.
_SECONDARY_STREAMS = frozenset({"baseline", "metadata"})


def _hinted_streams(start: Mapping[str, Any]) -> set[str]:
    """The stream names of ``start["hints"]["dimensions"]``."""
    dims = (start.get("hints") or {}).get("dimensions") if isinstance(start, Mapping) else None
    out = set()
    for dim in dims or []:
        if isinstance(dim, (list, tuple)) and len(dim) == 2 and isinstance(dim[1], str):
            out.add(dim[1])
    return out


class SpecWriter(RunWriter):
    """Appends one run to the experiment's SPEC file as one scan (see the module docstring).

    The scan header is written at the first event of the main stream (the stream the
    plan's ``hints.dimensions`` name, ``primary`` for bluesky's plans; without hints
    ``primary``, else the first other stream not named ``baseline``, ``metadata`` or
    ``*_monitor``), when the baseline's
    first reading is known for ``#P``, or at the stop; then each event is one row,
    flushed. Events of other streams are ``#C`` lines. When another run wrote to the file
    in between (a run without a stop document, concurrent runs) or the main stream's
    columns change, the rest of this run goes into a continuation scan with the next
    free number.
    """

    recorder: SpecRecorder

    def __init__(self, start: Mapping[str, Any], recorder: SpecRecorder) -> None:
        super().__init__(start, recorder)
        self.missing = _arg(recorder.missing_value)
        directory = recorder.policy.prepare_run(
            recorder.data_root, start, path_map=recorder.path_map
        )
        target = directory / recorder.file_name(start)
        self.path = str(target)
        self.file: _SpecFile | None = recorder.acquire(target)
        self.artifacts.append(self.path)
        self.command = scan_command(start)
        self.count_seconds = count_time(start)
        self.monitor = monitor_preset(start)
        #: the first ``#S`` number of this run (None until its scan header is written)
        self.number: int | None = None
        self.stopped = False
        self.points = 0
        self._stream_of: dict[str, str] = {}
        self._main_stream: str | None = None
        self._main_descs: set[str] = set()
        self._layouts: dict[str, ScanLayout] = {}
        self._layout: ScanLayout | None = None  # of the section at the end of the file
        self._baseline: dict[str, Any] | None = None
        self._baseline_keys: dict[str, Mapping[str, Any]] = {}
        #: comment lines, or secondary events (stream, seq_num, time, data), waiting for
        #: the scan header
        self._pending: list[str | tuple[str, int, float, Mapping[str, Any]]] = []
        self._frames: dict[tuple[str, str], list[ExternalFrames]] = {}
        self._frame_files: dict[str, tuple[str, str]] = {}
        self._last_text: dict[str, str] = {}
        self._epoch = 0
        #: the main descriptor whose rows :meth:`event` may write at once, and how
        self._fast_desc: str | None = None
        self._formatter: Callable[[Mapping[str, Any], float], str] = _no_row

    # documents -------------------------------------------------------------
    def __call__(self, name: str, doc: Any, validate: bool = False) -> tuple[str, Any]:
        if name == "event":  # the hot path, without the router's dispatch
            self.event(doc)
            return name, doc
        return super().__call__(name, doc, validate)

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        name = str(doc.get("name", ""))
        self._stream_of[doc["uid"]] = name
        if name == "baseline":
            self._baseline_keys.update(doc.get("data_keys", {}) or {})

    def event(self, doc: Mapping[str, Any]) -> None:
        # handled as it is: event-model's packing into a page costs ~20 µs per event
        desc = doc["descriptor"]
        file = self.file
        if desc == self._fast_desc and file is not None and file.owner is self:
            # the common case, kept short: one row of finite numbers
            try:
                line = self._formatter(doc["data"], doc["time"] - self._epoch)
            except (KeyError, TypeError):
                line = ""
            if line and "n" not in line and not self._pending:  # no nan, no inf
                data = line.encode()
                done = os.write(file.fd, data)
                if done < len(data):
                    file.write(line[done:])  # ASCII: bytes and characters agree
                self.points += 1
                return
        if self._is_main(desc):
            self._rows(desc, (doc["seq_num"],), (doc["time"],), doc["data"], single=True)
            layout = self._layout
            if layout is not None and self._layouts.get(desc) is layout:
                if not (layout.text or layout.mca):
                    formatter = row_formatter(layout, doc["data"])
                    if formatter is not None:
                        self._fast_desc, self._formatter = desc, formatter
        else:
            self._secondary(desc, doc["seq_num"], doc["time"], doc["data"])

    def event_page(self, doc: Mapping[str, Any]) -> None:
        desc = doc["descriptor"]
        seq_nums = doc["seq_num"]
        if not seq_nums:
            return
        if self._is_main(desc):
            self._rows(desc, seq_nums, doc["time"], doc["data"], single=False)
        else:
            data = doc["data"]
            for i, seq in enumerate(seq_nums):
                self._secondary(desc, seq, doc["time"][i], {k: v[i] for k, v in data.items()})

    def datum(self, doc: Mapping[str, Any]) -> None:
        """Datums reach :meth:`external` through the facade; nothing to do here."""

    def datum_page(self, doc: Mapping[str, Any]) -> None:
        """See :meth:`datum`."""

    def external(self, frames: ExternalFrames) -> None:
        self._frames.setdefault((frames.descriptor, frames.data_key), []).append(frames)
        where = (frames.path, frames.dataset or "")
        if self._frame_files.get(frames.data_key) != where:
            self._frame_files[frames.data_key] = where
            dataset = f" dataset {frames.dataset}" if frames.dataset else ""
            spec = f" ({frames.spec})" if frames.spec and frames.spec != "stream" else ""
            self._pending += comment_lines(
                f"{sanitize_label(frames.data_key)}_frame: index of the first frame of "
                f"each point in the detector file {one_line(frames.path)}{dataset}{spec}, "
                f"{frames.frames_per_point} frame(s) per point, from seq_num {frames.seq_start}"
            )

    def stop(self, doc: Mapping[str, Any]) -> None:
        status = one_line(doc.get("exit_status") or "unknown")
        t0, t1 = self.start_doc.get("time"), doc.get("time")
        timed = isinstance(t0, int | float) and isinstance(t1, int | float)
        duration = f"  duration = {t1 - t0:.3f} s" if timed else ""
        lines = [
            f"#C {spec_date(t1 if isinstance(t1, int | float) else None)}.  "
            f"exit_status = {status}{duration}  points = {self.points}"
        ]
        reason = one_line(doc.get("reason") or "")
        if status != "success" and reason:
            lines += comment_lines(f"reason = {reason}")
        self._write_section(lines)
        self.stopped = True

    def close(self) -> None:
        file = self.file
        if file is None:
            return
        try:
            if not self.stopped:
                log.warning(
                    "%s: run %s closed without a stop document",
                    self.path,
                    self.start_doc.get("uid"),
                )
                self.stopped = True
                try:
                    self._write_section(
                        [
                            f"#C {spec_date()}.  exit_status = unknown: no stop document was "
                            f"received (the run was interrupted)  points = {self.points}"
                        ]
                    )
                except Exception as err:  # closing after a failure: keep the first error
                    log.warning("%s: cannot end the scan of run %s: %s", self.path,
                                self.start_doc.get("uid"), err)  # fmt: skip
        finally:
            self.file = None
            if file.owner is self:
                file.owner = None
            self.recorder.release(file)

    # the main stream --------------------------------------------------------------
    def _is_main(self, desc: str) -> bool:
        if desc in self._main_descs:
            return True
        stream = self._stream_of.get(desc, "")
        if self._main_stream is None:
            if stream in _SECONDARY_STREAMS or stream.endswith("_monitor"):
                return False
            # the streams the plan's hints name (bluesky plans: "primary") are the rows;
            # without hints, "primary", else the first other stream that has events
            named = _hinted_streams(self.start_doc)
            if named and stream not in named:
                return False
            if stream != "primary" and "primary" in self._stream_of.values():
                return False
            self._main_stream = stream
        if stream == self._main_stream:
            self._main_descs.add(desc)
            return True
        return False

    def _layout_for(self, desc: str) -> ScanLayout:
        layout = self._layouts.get(desc)
        if layout is None:
            layout = scan_layout(
                self.start_doc,
                self.descriptors.get(desc, {}),
                self.command.motors,
                max_mca_channels=self.recorder.max_mca_channels,
            )
            self._layouts[desc] = layout
        return layout

    def _rows(
        self,
        desc: str,
        seq_nums: Sequence[int],
        times: Sequence[float],
        data: Mapping[str, Any],
        *,
        single: bool,
    ) -> None:
        layout = self._layouts.get(desc) or self._layout_for(desc)
        file = self.file
        if file is None or file.owner is not self or self._layout is not layout:
            file = self._claim(layout)
        epoch = self._epoch
        out = self._take_pending() if self._pending else []
        fast = layout.fast
        extra = layout.text or layout.mca
        for i, seq in enumerate(seq_nums):
            line = None
            if fast is not None:  # every cell a finite float or int: one join in C
                keys, at = fast
                try:
                    values = [data[k] for k in keys] if single else [data[k][i] for k in keys]
                except KeyError:
                    values = None
                if values is not None:
                    cells = [float.__repr__(v) if isinstance(v, float) else repr(v)
                             for v in values]  # fmt: skip
                    cells.insert(at, f"{times[i] - epoch:.6f}")
                    line = " ".join(cells)
                    if not _plain_row(line + "\n"):  # nan, inf, None, text: the careful way
                        line = None
            if line is None:
                line = self._row(layout, desc, seq, times[i], data, None if single else i)
            out.append(line)
            if extra:
                self._row_extras(layout, seq, data, None if single else i, out)
            self.points += 1
        out.append("")
        file.write("\n".join(out))

    def _row(
        self,
        layout: ScanLayout,
        desc: str,
        seq: int,
        t: float,
        data: Mapping[str, Any],
        i: int | None,
    ) -> str:
        """One row (event ``i`` of a page, or the event when ``i`` is None), cell by
        cell: a missing, non-finite or non-numeric value is written as the missing value
        and named in a ``#C`` line after the row."""
        missing = self.missing
        cells = []
        bad: list[str] = []
        for (kind, key), label in zip(layout.columns, layout.labels, strict=True):
            if kind == "value":
                if key in data:
                    value = data[key] if i is None else data[key][i]
                    text = format_number(value)
                    if text is None:
                        bad.append(f"{label}={comment_value(value)}")
                        text = missing
                else:
                    bad.append(f"{label}=(absent)")
                    text = missing
            elif kind == "epoch":
                text = f"{t - self._epoch:.6f}"
            else:
                text = self._frame_text(desc, key, seq)
                if text is None:
                    bad.append(f"{label}=(no frame reference)")
                    text = missing
            cells.append(text)
        line = " ".join(cells)
        if bad:
            note = f"seq_num {seq}: missing or non-numeric, written as {missing}:  " + "  ".join(
                bad
            )
            return "\n".join([line, *comment_lines(note)])
        return line

    def _row_extras(
        self,
        layout: ScanLayout,
        seq: int,
        data: Mapping[str, Any],
        i: int | None,
        out: list[str],
    ) -> None:
        """Text values (a ``#C`` line when changed, put before the row) and MCA spectra
        (``@A`` lines after it)."""
        missing = self.missing
        before: list[str] = []
        for key in layout.text:
            if key in data:
                value = comment_value(data[key] if i is None else data[key][i])
                if self._last_text.get(key) != value:
                    self._last_text[key] = value
                    before += comment_lines(f"seq_num {seq}: {sanitize_label(key)} = {value}")
        if before:
            out[-1:-1] = before
        for key, _n in layout.mca:
            if key in data:
                lines, nbad = mca_lines(data[key] if i is None else data[key][i], missing)
                out.extend(lines)
                if nbad:
                    out.append(
                        f"#C seq_num {seq}: {nbad} channel(s) of {sanitize_label(key)} "
                        f"missing or non-numeric, written as {missing}"
                    )
            else:
                out.append(f"#C seq_num {seq}: {sanitize_label(key)} absent: empty @A line")
                out.append("@A")

    def _frame_text(self, desc: str, key: str, seq: int) -> str | None:
        records = self._frames.get((desc, key))
        if records:
            for rec in reversed(records):
                if rec.seq_start <= seq < rec.seq_stop:
                    per = max(1, rec.frames_per_point)
                    return str(rec.frame_start + (seq - rec.seq_start) * per)
        return None

    def _secondary(self, desc: str, seq: int, t: float, data: Mapping[str, Any]) -> None:
        stream = self._stream_of.get(desc, "")
        if stream == "baseline" and self._baseline is None and self._layout is None:
            self._baseline = dict(data)  # the first reading: #P and header comments
            return
        file = self.file
        if self._layout is not None and file is not None and file.owner is self:
            file.write("\n".join(self._event_comment(stream, seq, t, data)) + "\n")
        else:  # waits for this run's scan header (the first main event, or the stop)
            self._pending.append((stream, seq, t, data))
            if len(self._pending) > MAX_PENDING and self._layout is None:
                # no main stream yet: write the header now rather than hold more in memory
                # (main rows, if any come, then go into a continuation scan)
                self._write_section([])

    def _event_comment(self, stream: str, seq: int, t: float, data: Mapping[str, Any]) -> list[str]:
        pairs = "  ".join(f"{sanitize_label(k)}={comment_value(v)}" for k, v in data.items())
        return comment_lines(
            f"{sanitize_label(stream)} seq_num {seq}, Epoch {t - self._epoch:.6f}: {pairs}"
        )

    def _take_pending(self) -> list[str]:
        """The waiting comment lines (call after the scan header: Epoch is known then)."""
        out: list[str] = []
        for item in self._pending:
            if isinstance(item, str):
                out.append(item)
            else:
                out += self._event_comment(*item)
        self._pending = []
        return out

    # sections of the file ---------------------------------------------------------
    def _write_section(self, lines: list[str]) -> None:
        """Write comment lines into this run's scan (its header first, if needed)."""
        layout = self._layout
        if layout is None:
            main = next(iter(self._main_descs), None)
            if main is None:
                main = next((d for d, s in self._stream_of.items() if s == "primary"), None)
            layout = self._layout_for(main) if main is not None else EMPTY_LAYOUT
        file = self._claim(layout)
        out = self._take_pending() + lines
        if out:
            file.write("\n".join(out) + "\n")

    def _claim(self, layout: ScanLayout) -> _SpecFile:
        """Make the end of the file this run's scan with ``layout``: write a scan header
        (and a file header before it when the positioners changed) unless it already is."""
        file = self.file
        if file is None:
            raise RuntimeError(f"{self.path} is closed")
        if file.owner is self and self._layout is not None:
            if self._layout is layout or self._layout.signature == layout.signature:
                return file
        previous = file.owner
        state = file.state
        out: list[str] = []
        if not state.ends_with_newline:
            out.append("")  # complete a last line cut short by a crash
            state.ends_with_newline = True
        if previous is not None and previous is not self and not previous.stopped:
            out.append(
                f"#C run {previous.start_doc.get('uid', '')} has no stop document yet: its "
                "scan is interrupted here; more of its data goes into a continuation scan"
            )
        if state.size:
            out.append("")
        positioners, positions, notes = self._positioners()
        current = state.positioners
        if (
            current
            and tuple(positioners) != current
            and len(positioners) == len(current)
            and set(positioners) == set(current)
        ):  # the same names in another order (baselines need not keep one): no new header
            at = {name: i for i, name in enumerate(positioners)}
            positions = [positions[at[name]] for name in current]
            positioners = list(current)
        when = self.start_doc.get("time")
        when = float(when) if isinstance(when, int | float) else datetime.now().timestamp()
        if state.positioners is None or tuple(positioners) != state.positioners:
            epoch = int(when)
            out += file_header_lines(
                file.path.name,
                epoch,
                positioners,
                user=_user(),
                host=socket.gethostname(),
                missing_value=self.recorder.missing_value,
                ordinal=state.headers + 1,
            )
            out.append("")
            state.headers += 1
            state.positioners = tuple(positioners)
            state.epoch = epoch
        self._epoch = state.epoch if state.epoch is not None else 0
        first = self.number is None
        scan_id = self.start_doc.get("scan_id")
        number = state.next_number(scan_id if first else None)
        comments = _run_comments(self.start_doc)
        if first:
            self.number = number
            if scan_id != number:
                positive = (
                    isinstance(scan_id, int) and not isinstance(scan_id, bool) and scan_id > 0
                )
                why = (
                    "not a positive integer"
                    if not positive
                    else f"more than {MAX_SCAN_NUMBER} (PyMca's largest scan number)"
                    if scan_id > MAX_SCAN_NUMBER
                    else "already used in this file"
                )
                comments.append(
                    f"scan_id = {comment_value(scan_id)} (RunEngine) is {why}: "
                    f"written as #S {number}"
                )
        else:
            why = "its columns changed" if previous is self else "another run wrote meanwhile"
            comments.append(
                f"continuation of scan {self.number} (run {self.start_doc.get('uid', '')}, "
                f"scan_id {comment_value(scan_id)}): {why}"
            )
        comments.append(f"plan_name = {one_line(self.start_doc.get('plan_name', ''))}")
        if self.command.note:
            comments.append(f"plan_args = {self.command.note}")
        snaking = self.start_doc.get("snaking")
        if isinstance(snaking, list | tuple) and any(snaking):
            comments.append(f"snaking = {comment_value(snaking)}: the fast motor goes both ways")
        comments += notes
        for i, (key, n) in enumerate(layout.mca):
            comments.append(
                f"MCA {i}: {sanitize_label(key)} ({n} channels), @A lines in this order"
            )
        for key in layout.skipped:
            comments.append(
                f"{sanitize_label(key)}: array of more than {self.recorder.max_mca_channels} "
                "values, not written here"
            )
        for key in layout.uneven:
            comments.append(
                f"{sanitize_label(key)}: array of another length than the MCA spectra "
                "(one length per scan), written as text"
            )
        if layout.text:
            names = ", ".join(sanitize_label(k) for k in layout.text)
            comments.append(f"text values ({names}): '#C seq_num n: key = value' before row n "
                            "whenever the value changes")  # fmt: skip
        out += scan_header_lines(
            number,
            self.command.text,
            when,
            count_seconds=self.count_seconds,
            monitor=self.monitor,
            comments=comments,
            positions=positions,
            layout=layout,
        )
        state.numbers.add(number)
        file.write("\n".join(out) + "\n")
        file.owner = self
        self._layout = layout
        self._fast_desc = None  # set again by event() once a row is written this way
        self._last_text.clear()
        return file

    def _positioners(self) -> tuple[list[str], list[str], list[str]]:
        """(``#O`` names, ``#P`` values, ``#C`` notes): the configured positioners or the
        baseline's numeric scalars, valued from the baseline's first reading; its other
        values become notes. With none, the placeholder :data:`NO_POSITIONERS` valued
        as missing (a note says so)."""
        reading = self._baseline or {}
        configured = self.recorder.positioners
        if configured is not None:
            keys = list(configured)
        else:
            keys = [
                k
                for k, dk in self._baseline_keys.items()
                if not (dk.get("shape") or [])
                and dk.get("dtype") in _SCALAR_DTYPES
                and not dk.get("external")
            ]
        names = unique_labels(keys)
        values = []
        notes = []
        if len(keys) > MAX_POSITIONERS:  # silx misreads more (a static array)
            notes.append(
                f"{len(keys) - MAX_POSITIONERS} positioners beyond the first "
                f"{MAX_POSITIONERS} are written as baseline lines (readers take at most "
                f"{MAX_POSITIONERS})"
            )
            keys, names = keys[:MAX_POSITIONERS], names[:MAX_POSITIONERS]
        for key, name in zip(keys, names, strict=True):
            text = format_number(reading.get(key))
            if text is None:
                shown = comment_value(reading[key]) if key in reading else "(absent)"
                notes.append(f"positioner {name} = {shown}: written as {self.missing}")
                text = self.missing
            values.append(text)
        chosen = set(keys)
        for key, value in reading.items():
            if key not in chosen:
                notes.append(f"baseline {sanitize_label(key)} = {comment_value(value)}")
        if not names:
            why = (
                "no positioners are configured"
                if configured is not None
                else "the run has no baseline"
                if not self._baseline_keys
                else "its baseline has no numeric scalar"
            )
            notes.insert(
                0,
                f"positioner {NO_POSITIONERS} = {self.missing} is a placeholder: this run "
                f"recorded no positioner ({why})",
            )
            names, values = [NO_POSITIONERS], [self.missing]
        return names, values, notes


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class SpecRecorder(FileRecorder):
    """Classic SPEC data files: one per experiment, one scan per run, appended.

    data_root
        Root of the data directories; the file goes into the run's experiment
        directory (:func:`~bluesky_recorders.paths.run_directory`) (required).
    policy
        The :class:`~bluesky_recorders.paths.DirectoryPolicy` for directories and the
        new file's mode and group.
    file_template
        File name from the start document and these keys: ``proposal_id``,
        ``pi_last_name``, ``pi_name``, ``sample_name``, ``beamline_id`` (from
        ``start["experiment"]``), ``year_month``, ``date`` (of the run's start).
        Default ``"{proposal_id}_{pi_last_name}.spec"``.
    fallback_template
        Used when ``file_template`` names an experiment key this run leaves empty, or a
        start-document key it lacks (default ``"commissioning_{year_month}.spec"``).
    positioners
        Data keys of the baseline for ``#O``/``#P``, in this order, the same in every
        scan; default: every numeric scalar of the run's baseline stream (in the order
        of the file's last header when the names are the same). A run with none gets
        the placeholder ``#O0 no_positioners`` / ``#P0 <missing value>``.
    missing_value
        The number written for a missing, non-finite or non-numeric value (default
        -999999); a ``#C`` line after the row names each such value.
    max_mca_channels
        Arrays with more values are not written (a ``#C`` line says so).

    An existing file at the name is appended to only when it is a SPEC file (starts
    with ``#F``) or empty; anything else is refused at the run's start, untouched.
    """

    kind = "spec"
    writer_class = SpecWriter
    default_template = "{proposal_id}_{pi_last_name}.spec"

    def __init__(
        self,
        *,
        fallback_template: str = "commissioning_{year_month}.spec",
        positioners: Sequence[str] | None = None,
        missing_value: float = MISSING_VALUE,
        max_mca_channels: int = 65536,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fallback_template = fallback_template
        if isinstance(positioners, str):
            raise ValueError("positioners must be a list of data keys, not one string")
        self.positioners = list(positioners) if positioners is not None else None
        if self.positioners is not None and len(self.positioners) > MAX_POSITIONERS:
            raise ValueError(
                f"at most {MAX_POSITIONERS} positioners (silx misreads more), "
                f"not {len(self.positioners)}"
            )
        if isinstance(missing_value, bool) or format_number(missing_value) is None:
            raise ValueError(f"missing_value must be a finite number, not {missing_value!r}")
        self.missing_value = missing_value
        if isinstance(max_mca_channels, bool) or not isinstance(max_mca_channels, int):
            raise ValueError(f"max_mca_channels must be an integer, not {max_mca_channels!r}")
        if max_mca_channels < 1:
            raise ValueError(f"max_mca_channels must be at least 1, not {max_mca_channels}")
        self.max_mca_channels = max_mca_channels
        self._files: dict[Path, _SpecFile] = {}
        #: path -> (inode, size, mtime) after our last write, and the state then
        self._states: dict[Path, tuple[tuple[int, int, int], FileState]] = {}

    def file_name(self, start: Mapping[str, Any]) -> str:
        """This run's file name: ``file_template``, else ``fallback_template``."""
        extra = _experiment_fields(start)
        for template in (self.file_template, self.fallback_template):
            fields = {
                name.split("[", 1)[0].split(".", 1)[0]
                for _, name, _, _ in string.Formatter().parse(template)
                if name
            }
            if any(f in _EXPERIMENT_KEYS and not extra[f] for f in fields):
                continue
            try:
                return self.policy.file_name(template, start, **extra)
            except PathPolicyError:
                if template == self.fallback_template:
                    raise
        raise PathPolicyError(
            f"spec recorder: fallback_template {self.fallback_template!r} names experiment "
            "keys this run leaves empty; use only year_month, date or start-document keys"
        )

    # shared files -------------------------------------------------------------------
    def acquire(self, path: Path) -> _SpecFile:
        """The open file at ``path`` for one more run (opened for appending, or created).

        An existing file's scan numbers and last header are read from it, unless it is
        unchanged since this recorder last wrote it.
        """
        file = self._files.get(path)
        if file is None:
            fh, created = _open_append(path, self.policy, self.data_root)
            try:
                file = _SpecFile(path, fh, FileState())
                if not created:
                    cached = self._states.get(path)
                    if cached is not None and cached[0] == file.stat_key():
                        file.state = cached[1]
                    else:
                        with open(path, "rb") as raw:
                            file.state = read_file_state(raw)
            except BaseException:
                fh.close()
                raise
            self._files[path] = file
        file.users += 1
        return file

    def release(self, file: _SpecFile) -> None:
        """One run less on ``file``; the last one closes it."""
        file.users -= 1
        if file.users > 0:
            return
        self._files.pop(file.path, None)
        try:
            self._states[file.path] = (file.stat_key(), file.state)
        finally:
            file.fh.close()
