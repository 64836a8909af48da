"""The console recorder: what the person at the keyboard sees while a run goes on.

For every run it prints::

    Scan #12 (scan) started at 2026-11-21 10:12:03. It will take at least 11 points.
    Run uid 1a2b3c4d, proposal 12345, PI Jane Doe, sample LaB6
    seq_num        time       motor         det
    -------  ----------  ----------  ----------
          1  10:12:03.4      -1.000     367.879
    ...
    Scan #12 ended at 10:12:09 after 0:00:05.8: success, 11 events

a start line, a line naming the run, a live table of the primary stream (the
plan's motors, then the hinted detector fields; never arrays or images), a
progress bar with an ETA when the number of points is known and the output is
a terminal, and an end line. On a terminal rich styles the lines and the rows
print above the bar; into a pipe or a file the same lines come out plain, with
no escape codes and no bar.

The format is pure functions (documents in, strings out), each tested alone:
:func:`start_lines`, :func:`run_info`, :func:`plan_length`, :func:`count_time`,
:func:`table_columns`, :func:`header_lines`, :func:`format_row`,
:func:`render_line`, :func:`end_line`. :class:`ConsoleWriter` only holds the
state of one run.

The console is a live view (``saves_data = False``): a problem here is logged
and never stops a scan.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Literal

from .recorder import Recorder, RunWriter

__all__ = [
    "COUNT_TIME_KEYS",
    "Column",
    "ConsoleRecorder",
    "ConsoleWriter",
    "RUN_INFO",
    "count_time",
    "end_line",
    "format_duration",
    "format_row",
    "format_value",
    "header_lines",
    "is_table_stream",
    "plan_length",
    "render_line",
    "run_info",
    "start_lines",
    "table_columns",
]

log = logging.getLogger("bluesky_recorders.console")

Role = Literal["seq_num", "time", "motor", "detector"]

#: What the run line names, in order: label -> dotted keys of the start
#: document, the first one present wins. Extend it for new metadata.
RUN_INFO: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("proposal", ("experiment.proposal_id", "experiment.proposal", "proposal_id")),
    ("PI", ("experiment.pi.name", "experiment.pi.last_name", "pi")),
    ("sample", ("experiment.sample.name", "experiment.sample", "sample.name", "sample")),
)
#: Start-document (then plan_args) keys that give the time of one point, in seconds.
COUNT_TIME_KEYS = ("count_time", "exposure_time", "acquire_time", "dwell_time")
#: Streams never put in the table, even when hinted.
_NOT_TABLE_STREAMS = ("baseline",)
_NOT_TABLE_SUFFIXES = ("_monitor",)
_SCALAR_DTYPES = frozenset({"number", "integer", "boolean", "string"})
_MIN_WIDTH = 10
_MAX_TEXT = 24
_SEP = "  "


# -- pure format functions ---------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the live table."""

    key: str
    """Data key (or ``"seq_num"``/``"time"``)."""
    label: str
    role: Role
    width: int
    precision: int | None = None
    dtype: str = "number"


def format_duration(seconds: float) -> str:
    """``0:00:05.8``: hours, minutes, seconds with tenths."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    tenths = round(seconds * 10)
    hours, rest = divmod(tenths, 36_000)
    minutes, rest = divmod(rest, 600)
    secs, tenth = divmod(rest, 10)
    return f"{hours}:{minutes:02d}:{secs:02d}.{tenth}"


def _clock(t: float, *, tenths: bool = False, date: bool = False) -> str:
    dt = datetime.fromtimestamp(t)
    text = dt.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    if tenths:
        text += f".{dt.microsecond // 100_000}"
    return text


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value) if value > 0 else None


def plan_length(start: Mapping[str, Any]) -> int | None:
    """Number of points the plan announces, or None when it cannot be known.

    ``num_points``, else the product of ``shape``, else ``plan_args["num"]``.
    """
    n = _positive_int(start.get("num_points"))
    if n is not None:
        return n
    shape = start.get("shape")
    if isinstance(shape, Sequence) and not isinstance(shape, str) and shape:
        dims = [_positive_int(d) for d in shape]
        if all(d is not None for d in dims):
            return math.prod(d for d in dims if d is not None)
    args = start.get("plan_args")
    if isinstance(args, Mapping):
        return _positive_int(args.get("num"))
    return None


def _positive_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def count_time(start: Mapping[str, Any]) -> float | None:
    """Seconds per point the plan gives (``count_time`` and friends), or None."""
    args = start.get("plan_args")
    for where in (start, args if isinstance(args, Mapping) else {}):
        for key in COUNT_TIME_KEYS:
            t = _positive_float(where.get(key))
            if t is not None:
                return t
    return None


def _lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name", "")
    if value is None or isinstance(value, Mapping | list | tuple):
        return ""
    return str(value).strip()


def run_info(start: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs naming the run: the short uid, then :data:`RUN_INFO`."""
    pairs = [("uid", str(start.get("uid", ""))[:8])]
    for label, keys in RUN_INFO:
        for key in keys:
            text = _as_text(_lookup(start, key))
            if text:
                pairs.append((label, text))
                break
    return pairs


def _scan_name(start: Mapping[str, Any]) -> str:
    scan_id = start.get("scan_id")
    if scan_id is None:
        return f"Run {str(start.get('uid', ''))[:8]}"
    return f"Scan #{scan_id}"


def start_lines(start: Mapping[str, Any]) -> list[str]:
    """The start line (plan, scan id, points, estimate) and the run line."""
    line = _scan_name(start)
    plan = start.get("plan_name")
    if plan:
        line += f" ({plan})"
    line += f" started at {_clock(start['time'], date=True)}."
    n = plan_length(start)
    per_point = count_time(start)
    if n is not None and per_point is not None:
        line += f" It will take at least {format_duration(n * per_point)} ({n} points)."
    elif n is not None:
        line += f" It will take at least {n} point{'s' if n != 1 else ''}."
    info = ", ".join(f"{label} {value}" for label, value in run_info(start))
    return [line, f"Run {info}"]


def is_table_stream(descriptor: Mapping[str, Any]) -> bool:
    """Whether a stream may go in the table when there is no primary one."""
    name = str(descriptor.get("name", ""))
    if name in _NOT_TABLE_STREAMS or name.endswith(_NOT_TABLE_SUFFIXES):
        return False
    return bool(_hinted_fields(descriptor))


def _hinted_fields(descriptor: Mapping[str, Any]) -> list[str]:
    hints = descriptor.get("hints")
    fields: list[str] = []
    if isinstance(hints, Mapping):
        for hint in hints.values():
            if isinstance(hint, Mapping):
                fields.extend(f for f in hint.get("fields", ()) or () if isinstance(f, str))
    return fields


def _is_scalar(data_key: Mapping[str, Any]) -> bool:
    if data_key.get("external"):
        return False
    if list(data_key.get("shape") or []):
        return False
    return data_key.get("dtype", "number") in _SCALAR_DTYPES


def _motor_fields(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
    stream = descriptor.get("name", "primary")
    keys = descriptor.get("data_keys", {})
    dims = (start.get("hints") or {}).get("dimensions")
    fields: list[str] = []
    if isinstance(dims, list) and dims:
        for dim in dims:
            if isinstance(dim, list | tuple) and len(dim) == 2 and dim[1] == stream:
                fields.extend(f for f in dim[0] if isinstance(f, str))
        return [f for f in fields if f in keys]
    hints = descriptor.get("hints") or {}
    for motor in start.get("motors") or ():
        if motor in keys:
            fields.append(motor)
        elif isinstance(hints.get(motor), Mapping):
            fields.extend(hints[motor].get("fields", ()) or ())
    return [f for f in fields if f in keys]


def table_columns(
    start: Mapping[str, Any], descriptor: Mapping[str, Any], max_columns: int = 12
) -> list[Column]:
    """The table's columns for one descriptor.

    ``seq_num`` and ``time``, the plan's motors (``hints.dimensions``, else
    ``motors``), then the descriptor's hinted fields (every scalar key when
    nothing is hinted); arrays and external data never. At most
    ``max_columns`` data columns.
    """
    keys: Mapping[str, Mapping[str, Any]] = descriptor.get("data_keys", {})
    motors = [m for m in dict.fromkeys(_motor_fields(start, descriptor)) if _is_scalar(keys[m])]
    detectors = _hinted_fields(descriptor) or list(keys)
    chosen = list(dict.fromkeys(motors + detectors))
    chosen = [k for k in chosen if k in keys and _is_scalar(keys[k])][: max(0, max_columns)]
    columns = [
        Column("seq_num", "seq_num", "seq_num", 7, dtype="integer"),
        Column("time", "time", "time", 10, dtype="time"),
    ]
    for key in chosen:
        dk = keys[key]
        precision = _positive_int(dk.get("precision"))
        if precision is None and dk.get("precision") == 0:
            precision = 0
        columns.append(
            Column(
                key,
                key,
                "motor" if key in motors else "detector",
                max(len(key), _MIN_WIDTH),
                precision,
                str(dk.get("dtype", "number")),
            )
        )
    return columns


def format_value(value: Any, column: Column) -> str:
    """One cell: numbers with the column's precision, text cut short, never arrays."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        if column.precision is not None and column.dtype == "number":
            return f"{float(value):.{column.precision}f}"
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if column.precision is not None:
            return f"{value:.{min(column.precision, 15)}f}"
        return f"{value:.6g}"
    if isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        text = " ".join(text.split())
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
    return "(array)" if hasattr(value, "__len__") else str(value)[:_MAX_TEXT]


def format_row(columns: Sequence[Column], event_row: Mapping[str, Any]) -> list[str]:
    """The cells of one event (a mapping with ``seq_num``, ``time`` and ``data``)."""
    data = event_row.get("data", {})
    cells = []
    for column in columns:
        if column.role == "seq_num":
            cells.append(str(event_row.get("seq_num", "")))
        elif column.role == "time":
            t = event_row.get("time")
            cells.append(_clock(t, tenths=True) if isinstance(t, int | float) else "")
        else:
            cells.append(format_value(data.get(column.key), column))
    return cells


def render_line(columns: Sequence[Column], cells: Iterable[str]) -> str:
    """Cells right-aligned in their columns, two spaces apart."""
    return _SEP.join(cell.rjust(c.width) for c, cell in zip(columns, cells, strict=True))


def header_lines(columns: Sequence[Column]) -> list[str]:
    """The labels line and a rule under it."""
    return [
        render_line(columns, [c.label for c in columns]),
        _SEP.join("-" * c.width for c in columns),
    ]


def end_line(start: Mapping[str, Any], stop: Mapping[str, Any], num_events: int) -> str:
    """``Scan #12 ended at 10:12:09 after 0:00:05.8: success, 11 events`` (+ the reason)."""
    t0, t1 = start.get("time"), stop.get("time")
    ended = _clock(t1) if isinstance(t1, int | float) else "?"
    if isinstance(t0, int | float) and isinstance(t1, int | float):
        if datetime.fromtimestamp(t0).date() != datetime.fromtimestamp(t1).date():
            ended = _clock(t1, date=True)
        after = f" after {format_duration(t1 - t0)}"
    else:
        after = ""
    status = stop.get("exit_status") or "unknown"
    line = (
        f"{_scan_name(start)} ended at {ended}{after}: {status}, "
        f"{num_events} event{'s' if num_events != 1 else ''}"
    )
    reason = " ".join(str(stop.get("reason") or "").split())
    if status != "success" and reason:
        line += f" (reason: {reason})"
    return line


# -- output -------------------------------------------------------------------

_ROLE_STYLES = {"seq_num": "dim", "time": "dim", "motor": "cyan", "detector": "bold"}


class _PlainOutput:
    """Plain lines, flushed one by one: for pipes, files and logs."""

    terminal = False

    def __init__(self, file: IO[str]) -> None:
        self.file = file

    def line(self, text: str, style: str = "") -> None:
        self.file.write(text + "\n")
        self.file.flush()

    def row(self, columns: Sequence[Column], cells: Sequence[str], header: bool = False) -> None:
        self.line(render_line(columns, cells))

    def rule(self, columns: Sequence[Column]) -> None:
        self.line(header_lines(columns)[1])

    def start_progress(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def stop_progress(self) -> None:
        pass


class _RichOutput:
    """Styled lines on a terminal, printed above a progress bar.

    rich's Console serialises printing and the progress bar's refresh thread
    behind one lock, so this may run on any thread.
    """

    terminal = True

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self._task: Any = None

    def line(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style), highlight=False, crop=False, soft_wrap=True)

    def row(self, columns: Sequence[Column], cells: Sequence[str], header: bool = False) -> None:
        from rich.text import Text

        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (column, cell) in enumerate(zip(columns, cells, strict=True)):
            if i:
                text.append(_SEP)
            style = "bold underline" if header else _ROLE_STYLES[column.role]
            text.append(cell.rjust(column.width), style=style)
        self.console.print(text, highlight=False)

    def rule(self, columns: Sequence[Column]) -> None:
        pass  # the header is underlined

    def start_progress(self, label: str, total: int) -> None:
        from rich.errors import LiveError
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            redirect_stdout=False,  # never swap sys.stdout from a recorder thread
            redirect_stderr=False,
        )
        self._task = progress.add_task(label, total=total)
        try:
            progress.start()
        except LiveError:  # rich < 14: another live display is on this console
            log.debug("another live display is active: no progress bar for %s", label)
            return
        self.progress = progress

    def advance(self, n: int = 1) -> None:
        if self.progress is None:
            return
        task = self.progress.tasks[0]
        if task.total is not None and task.completed + n > task.total:
            self.progress.update(self._task, total=task.completed + n)
        self.progress.advance(self._task, n)

    def stop_progress(self) -> None:
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.stop()


# -- the recorder ---------------------------------------------------------------


class ConsoleWriter(RunWriter):
    """Prints one run. State only: the lines come from the module's pure functions."""

    recorder: ConsoleRecorder

    def __init__(self, start: Mapping[str, Any], recorder: ConsoleRecorder) -> None:
        super().__init__(start, recorder)
        self.output, self._owned_file = recorder.open_output()
        self.table_stream: str | None = None
        self.columns: dict[str, list[Column]] = {}
        self.counts: dict[str, int] = {}
        self._stream_of: dict[str, str] = {}

    def start(self, doc: Mapping[str, Any]) -> None:
        first, info = start_lines(doc)
        self.output.line(first, "bold blue")
        self.output.line(info, "dim")
        total = plan_length(doc) if self.recorder.progress else None
        if total is not None and self.output.terminal:
            self.output.start_progress(_scan_name(doc), total)

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        stream = str(doc.get("name", ""))
        self._stream_of[doc["uid"]] = stream
        if self.table_stream is None and (stream == "primary" or is_table_stream(doc)):
            self.table_stream = stream
        if stream != self.table_stream and stream != "primary":
            return
        columns = table_columns(self.start_doc, doc, self.recorder.max_columns)
        self.columns[doc["uid"]] = columns
        labels = [c.label for c in columns]
        self.output.row(columns, labels, header=True)
        self.output.rule(columns)

    def event_page(self, doc: Mapping[str, Any]) -> None:
        seq_nums = doc["seq_num"]
        stream = self._stream_of.get(doc["descriptor"], "")
        self.counts[stream] = self.counts.get(stream, 0) + len(seq_nums)
        columns = self.columns.get(doc["descriptor"])
        if columns is None:
            return
        data = doc.get("data", {})
        times = doc.get("time", [])
        for i, seq in enumerate(seq_nums):
            row = {
                "seq_num": seq,
                "time": times[i] if i < len(times) else None,
                "data": {
                    c.key: data[c.key][i]
                    for c in columns
                    if c.role in ("motor", "detector") and c.key in data
                },
            }
            self.output.row(columns, format_row(columns, row))
            self.output.advance()

    def stop(self, doc: Mapping[str, Any]) -> None:
        self.output.stop_progress()
        line = end_line(self.start_doc, doc, self._num_events(doc))
        self.output.line(line, "green" if doc.get("exit_status") == "success" else "bold red")

    def _num_events(self, stop: Mapping[str, Any]) -> int:
        announced = stop.get("num_events")
        announced = announced if isinstance(announced, Mapping) else {}
        if self.table_stream is not None:
            n = announced.get(self.table_stream)
            return int(n) if isinstance(n, int) else self.counts.get(self.table_stream, 0)
        if announced:
            return sum(int(n) for n in announced.values() if isinstance(n, int))
        return sum(self.counts.values())

    def close(self) -> None:
        try:
            self.output.stop_progress()
        finally:
            if self._owned_file is not None:
                self._owned_file.close()


class ConsoleRecorder(Recorder):
    """A live table, progress bar and start/end lines for each run.

    Parameters
    ----------
    file
        A text stream, or ``"stdout"``/``"stderr"``, or a path (appended to,
        e.g. from a TOML file). Default: ``sys.stdout`` as it is when each run
        starts (so IPython's and pytest's replacements are honoured).
    force_terminal
        True: rich styles and a progress bar; False: plain lines; None
        (default): decide from the stream (a TTY or not).
    progress
        Show a progress bar with an ETA when the number of points is known
        (terminal only).
    max_columns
        At most this many data columns in the table.
    width
        Terminal width for rich (None: detect).
    """

    kind = "console"
    saves_data = False
    writer_class = ConsoleWriter

    def __init__(
        self,
        *,
        file: IO[str] | str | None = None,
        force_terminal: bool | None = None,
        progress: bool = True,
        max_columns: int = 12,
        width: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if force_terminal not in (None, True, False):
            raise ValueError(f"force_terminal must be true, false or unset, not {force_terminal!r}")
        if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 0:
            raise ValueError(f"max_columns must be a whole number >= 0, not {max_columns!r}")
        if width is not None and (not isinstance(width, int) or width < 20):
            raise ValueError(f"width must be a whole number >= 20, not {width!r}")
        self.file = file
        self.force_terminal = force_terminal
        self.progress = bool(progress)
        self.max_columns = max_columns
        self.width = width
        self._console: tuple[IO[str], Any] | None = None

    def open_output(self) -> tuple[_PlainOutput | _RichOutput, IO[str] | None]:
        """The output for a new run, and the file it opened (to close), if any."""
        owned: IO[str] | None = None
        file = self.file
        if file is None or file in ("stdout", "-"):
            stream: IO[str] = sys.stdout
        elif file == "stderr":
            stream = sys.stderr
        elif isinstance(file, str):
            stream = owned = open(file, "a", encoding="utf-8")
        else:
            stream = file
        if self.force_terminal is False:
            return _PlainOutput(stream), owned
        console = self._console_for(stream)
        if not console.is_terminal:
            return _PlainOutput(stream), owned
        return _RichOutput(console), owned

    def _console_for(self, stream: IO[str]) -> Any:
        """The rich Console of a stream, shared by the runs printing to it.

        Sharing it makes the progress bars of overlapping runs nest instead of
        fighting over the terminal.
        """
        if self._console is not None and self._console[0] is stream:
            return self._console[1]
        from rich.console import Console

        console = Console(
            file=stream,
            force_terminal=self.force_terminal,
            width=self.width,
            highlight=False,
            log_path=False,
        )
        self._console = (stream, console)
        return console
