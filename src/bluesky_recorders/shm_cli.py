"""``bsrec shm show``: a shared-memory segment's header and its latest points.

::

    bsrec shm show                      the default segment (bsrec-<user>), last 10 points
    bsrec shm show --name NAME -n 50    another segment, last 50 points
    bsrec shm show --follow             keep showing new points (Ctrl-C ends)
    bsrec shm show --columns det,motor  only these columns (seq_num always)

``register(subparsers)`` adds the ``shm`` command to the top-level ``argparse`` CLI.
On a terminal ``--follow`` redraws the table up to 10 times a second; when the output
is a pipe or a file it prints the header when a run starts and one line per new point.
Exit code 0; 1 when the segment does not exist or cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a command runs: `bsrec --help` stays quick
    from rich.console import Console, Group
    from rich.table import Table

    from .shm import Reader, Snapshot

__all__ = ["format_value", "header_rows", "point_rows", "register"]

#: Seconds between two redraws of ``--follow`` on a terminal.
_REFRESH = 0.1


# -- pure formatting ---------------------------------------------------------------
def format_value(column: str, value: float) -> str:
    """One ring value as text: seq_num as an integer, time as local clock time."""
    if math.isnan(value):
        return "nan"
    if column == "seq_num":
        return str(int(value))
    if column == "time":
        return datetime.fromtimestamp(value).strftime("%H:%M:%S.%f")[:-3]
    return f"{value:.8g}"


def header_rows(snap: Snapshot) -> list[tuple[str, str]]:
    """The segment's header as (label, text) rows."""
    start = (
        "-"
        if math.isnan(snap.start_time)
        else datetime.fromtimestamp(snap.start_time).strftime("%Y-%m-%d %H:%M:%S")
    )
    state = snap.state + (f" ({snap.exit_status})" if snap.exit_status else "")
    rows = [
        ("segment", snap.segment),
        ("state", state),
        ("writer pid", str(snap.writer_pid)),
        ("run", snap.run_uid or "-"),
        ("scan id", "-" if snap.scan_id is None else str(snap.scan_id)),
        ("plan", snap.plan_name or "-"),
        ("started", start),
        ("sequence", f"{snap.seq} (layout generation {snap.generation})"),
        ("points", f"{snap.total} written, the last {min(snap.total, snap.capacity)} kept "
                   f"(capacity {snap.capacity})"),
        ("columns", ", ".join(snap.columns)),
    ]  # fmt: skip
    for name, frame in snap.frames.items():
        shape = "x".join(str(n) for n in frame.data.shape)
        if frame.seq_num < 0:
            rows.append((f"frame {name}", f"{shape} {frame.data.dtype.str}, none yet"))
            continue
        import numpy as np

        with np.errstate(all="ignore"):
            lo, hi, mean = frame.data.min(), frame.data.max(), frame.data.mean()
        rows.append(
            (
                f"frame {name}",
                f"{shape} {frame.data.dtype.str}, seq_num {frame.seq_num}: "
                f"min {lo:.6g} max {hi:.6g} mean {mean:.6g}",
            )
        )
    return rows


def point_rows(
    snap: Snapshot, last: int, columns: Sequence[str] | None = None, since: int = 0
) -> tuple[list[str], list[list[str]]]:
    """Column names and text rows of the last ``last`` points (and of points >= ``since``)."""
    names = list(snap.columns) if not columns else ["seq_num", *columns]
    missing = [c for c in names if c not in snap.columns]
    if missing:
        raise KeyError(f"no column {', '.join(missing)}; columns: {', '.join(snap.columns)}")
    index = [snap.columns.index(c) for c in names]
    first = max(snap.first, snap.total - last, since)
    rows = [
        [format_value(names[k], float(snap.points[i - snap.first, j])) for k, j in enumerate(index)]
        for i in range(first, snap.total)
    ]
    return names, rows


# -- rendering ---------------------------------------------------------------------
def _header_table(snap: Snapshot) -> Table:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, text in header_rows(snap):
        table.add_row(label, text)
    return table


def _points_table(snap: Snapshot, last: int, columns: Sequence[str] | None) -> Table:
    from rich.table import Table

    names, rows = point_rows(snap, last, columns)
    table = Table(title=f"last {len(rows)} points", title_justify="left")
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _view(snap: Snapshot, args: argparse.Namespace) -> Group:
    from rich.console import Group

    return Group(_header_table(snap), _points_table(snap, args.last, args.columns))


def _console() -> Console:
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(file=sys.stdout, width=1000, color_system=None, soft_wrap=True)


def _cmd_show(args: argparse.Namespace) -> int:
    from .shm import Reader

    console = _console()
    args.columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    with Reader(args.name) as reader:
        snap = reader.snapshot(args.last)
        try:
            point_rows(snap, 0, args.columns)
        except KeyError as err:
            print(f"bsrec: error: {err.args[0]}", file=sys.stderr)
            return 1
        if not args.follow:
            console.print(_view(snap, args))
            return 0
        if console.is_terminal:
            _follow_live(reader, snap, console, args)
        else:
            _follow_lines(reader, snap, console, args)
    return 0


def _follow_live(
    reader: Reader, snap: Snapshot, console: Console, args: argparse.Namespace
) -> None:
    from rich.live import Live

    with Live(_view(snap, args), console=console, auto_refresh=False) as live:
        shown = time.monotonic()
        while reader.wait(args.timeout):
            wait = _REFRESH - (time.monotonic() - shown)
            if wait > 0:
                time.sleep(wait)
            snap = reader.snapshot(args.last)
            live.update(_view(snap, args), refresh=True)
            shown = time.monotonic()


def _follow_lines(
    reader: Reader, snap: Snapshot, console: Console, args: argparse.Namespace
) -> None:
    """Pipes and files: the header at each run, the column names when they change, the
    state when the run ends, and one line per new point."""
    run: Any = None
    columns: Any = None
    state = snap.state
    done = max(0, snap.total - args.last)
    while True:
        if snap.run_uid != run:
            run, columns, state = snap.run_uid, None, snap.state
            console.print(_header_table(snap))
        if snap.columns != columns:
            columns = snap.columns
            names, _ = point_rows(snap, 0, args.columns)
            console.print(" ".join(f"{n:>14}" for n in names))
        if snap.total < done:  # laid out again: the ring started over
            done = 0
        _, rows = point_rows(snap, snap.total, args.columns, since=done)
        for row in rows:
            console.print(" ".join(f"{v:>14}" for v in row))
        done = snap.total
        if snap.state != state:
            state = snap.state
            status = f" ({snap.exit_status})" if snap.exit_status else ""
            console.print(f"-- {state}{status}: {snap.total} points")
        sys.stdout.flush()
        if not reader.wait(args.timeout):
            return
        snap = reader.snapshot()


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``shm`` command (with ``show``) to ``subparsers``; leaves set ``func``."""
    shm = subparsers.add_parser(
        "shm",
        help="look at the shared-memory live view",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = shm.add_subparsers(dest="shm_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the header and the last points")
    show.add_argument("--name", help="segment name (default: bsrec-<user>)")
    show.add_argument("-f", "--follow", action="store_true", help="keep showing new points")
    show.add_argument(
        "-n", "--last", type=int, default=10, metavar="N", help="points to show (default 10)"
    )
    show.add_argument("--columns", metavar="A,B", help="only these columns (default: all)")
    show.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="with --follow: stop after S seconds without a change (default: never)",
    )
    show.set_defaults(func=_cmd_show)
    return shm
