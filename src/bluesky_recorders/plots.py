"""The end-of-run plots recorder: PNG plots and a JSON sidecar for every run.

For each run, once it has stopped::

    <experiment dir>/end_of_run/<scan_id>/<signal>.png    one per plotted signal
    <experiment dir>/end_of_run/<scan_id>/plot.json       the plotted data and the run's metadata

where the experiment dir is :func:`~bluesky_recorders.paths.run_directory` of the
run. When ``<scan_id>/`` exists already (another run with the same scan id), the
run's folder is ``<scan_id>_<uid8>/`` (then ``<scan_id>_<uid8>_2/``...):
:func:`~bluesky_recorders.plots_layout.plots_dir`. What is plotted is decided by
:mod:`bluesky_recorders.plots_layout`.

How it stays out of the scan's way:

- During the run the writer only collects the plotted columns of the ``primary``
  stream (a few floats per event). At the stop it hands them to one background
  thread and returns: the stop document (which a
  :class:`~bluesky_recorders.RecorderSet` makes wait for every recorder) and so the
  next run are never delayed by drawing.
- The background thread sends each run to one drawing process (a fresh Python
  started at the first plot and kept; ``draw_in = "thread"`` draws on the thread
  itself, which competes with the RunEngine for the GIL: decision note 0013). It
  draws with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``: no pyplot,
  no global state) and writes each file atomically: into a hidden temporary name
  in the run's folder, ``fsync``, then a hard link to its final name (which fails
  rather than replace a file), then the temporary name is removed. ``plot.json``
  is written last: a folder holding it is complete. Files and folders get the
  :class:`~bluesky_recorders.DirectoryPolicy`'s modes and group.
- A failure is logged (``bluesky_recorders.plots``) with the recorder, the file
  and the cause; it never reaches the RunEngine. ``on_error`` defaults to ``"warn"``.
- :meth:`EndOfRunPlotsRecorder.close` waits (``close_timeout``) for the plots
  still being drawn; a run still open at close (no stop document) is plotted too,
  its exit status unknown.

``recorder.artifacts[uid]`` lists a run's files once they are written (empty
before). A live page finds every run's plots by reading the ``plot.json`` files
below ``<experiment dir>/end_of_run/`` (:func:`find_run_plots` for one run).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickle
import secrets
import struct
import subprocess
import sys
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RecorderError
from .external import PathMap
from .paths import DirectoryPolicy, PathExistsError, PathPolicyError, ensure_inside, run_directory
from .plots_layout import (
    PLOTS_FOLDER,
    SEQ_NUM,
    SIDECAR,
    STREAM,
    HeatMap,
    LinePlot,
    choose_plot,
    layout_run,
    plots_dir,
    plotted_keys,
    to_number,
)
from .recorder import FileRecorder, RunWriter

__all__ = [
    "DrawSettings",
    "EndOfRunPlotsRecorder",
    "PlotJob",
    "PlotsWriter",
    "claim_plots_dir",
    "draw_run",
    "find_run_plots",
    "render_png",
    "write_new_file",
]

#: Folder names tried for one run before giving up (``<scan_id>``, ``<scan_id>_<uid8>``...).
_MAX_ATTEMPTS = 100


# -- drawing (pure: a spec in, PNG bytes out) ------------------------------------------


#: Margins around the axes in pixels (left, right, bottom, top): fixed, because
#: matplotlib's constrained layout draws every figure twice (measured: 45 % of the time).
_MARGINS = (80, 24, 50, 34)
#: Room for a heat map's colour bar, in pixels.
_COLORBAR = 90


def render_png(figure: LinePlot | HeatMap, *, size: tuple[int, int], dpi: int) -> bytes:
    """One figure as PNG bytes of ``size`` pixels (width, height).

    Uses a private ``Figure`` and Agg canvas (no pyplot), so threads may draw at once.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    scale = dpi / 100  # the margins are for 100 dpi: text grows with dpi
    left, right, bottom, top = (m * scale for m in _MARGINS)
    if isinstance(figure, HeatMap):
        right += _COLORBAR * scale
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=min(0.4, left / width),
        right=max(0.6, 1 - right / width),
        bottom=min(0.4, bottom / height),
        top=max(0.6, 1 - top / height),
    )
    ax = fig.add_subplot()
    ax.set_title(figure.title)
    ax.set_xlabel(figure.x_label)
    ax.set_ylabel(figure.y_label)
    if isinstance(figure, LinePlot):
        ax.plot(figure.x, figure.y, marker="o", markersize=3, linewidth=1)
        ax.grid(True, alpha=0.3)
        if figure.x_key == SEQ_NUM:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        image = ax.imshow(
            np.ma.masked_invalid(figure.image),
            origin="lower",
            extent=figure.extent,
            aspect="auto",
            interpolation="nearest",
        )
        fig.colorbar(image, ax=ax, label=figure.label, fraction=0.08, pad=0.02)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi, metadata={"Title": figure.title})
    return out.getvalue()


# -- files (create-only, atomic) -------------------------------------------------------


def write_new_file(
    policy: DirectoryPolicy, root: str | os.PathLike[str], path: Path, data: bytes
) -> None:
    """Write ``data`` to the new file ``path``, atomically, never replacing a file.

    The bytes go to a hidden temporary name in the same folder (created with the
    policy's mode and group), are ``fsync``-ed, then hard-linked to ``path``; the
    link fails if ``path`` exists (:class:`~bluesky_recorders.PathExistsError`,
    nothing is changed). The temporary name is always removed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    handle = policy.open_new(tmp, "xb", root=root)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise PathExistsError(
                errno.EEXIST, f"refusing to overwrite {path}: the file exists"
            ) from None
        except OSError as err:
            raise OSError(
                err.errno, f"cannot link {tmp.name} to {path}: {err.strerror}", str(path)
            ) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim_plots_dir(
    policy: DirectoryPolicy,
    root: str | os.PathLike[str],
    experiment_dir: Path,
    scan_id: Any,
    uid: str,
) -> Path:
    """Create the run's own plots folder and return it (never one that exists).

    ``end_of_run/`` is made with :meth:`DirectoryPolicy.make_dirs`; the run's
    folder, the first of :func:`plots_dir`'s names that does not exist, with an
    exclusive ``mkdir`` (two processes never share one), then the policy's mode
    and group.
    """
    policy.make_dirs(root, Path(experiment_dir) / PLOTS_FOLDER)
    for attempt in range(_MAX_ATTEMPTS):
        candidate = ensure_inside(root, plots_dir(experiment_dir, scan_id, uid, attempt))
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot create the directory {candidate}: {err.strerror}",
                str(candidate),
            ) from err
        try:
            if policy.gid is not None:
                os.chown(candidate, -1, policy.gid)
            os.chmod(candidate, policy.dir_mode)  # after chown, which may clear setgid
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot give {candidate} mode {policy.dir_mode:#o}: {err.strerror}",
                str(candidate),
            ) from err
        return candidate
    raise PathPolicyError(
        f"no free plots folder for run {uid} in {Path(experiment_dir) / PLOTS_FOLDER}: "
        f"{_MAX_ATTEMPTS} names are taken"
    )


def find_run_plots(
    experiment_dir: str | os.PathLike[str], uid: str, scan_id: Any = None
) -> Path | None:
    """The plots folder of run ``uid`` below ``<experiment_dir>/end_of_run``, or None.

    Only complete folders (holding ``plot.json``) are found. With the run's
    ``scan_id`` only the folders :func:`plots_dir` can have given it are read
    (``<scan_id>``, ``<scan_id>_<uid8>*``); without it, every folder's sidecar.
    """
    base = Path(experiment_dir) / PLOTS_FOLDER
    if not base.is_dir():
        return None
    if scan_id is None:
        sidecars = sorted(base.glob(f"*/{SIDECAR}"))
    else:
        first = plots_dir(experiment_dir, scan_id, uid, 0)
        own = plots_dir(experiment_dir, scan_id, uid, 1).name
        sidecars = [first / SIDECAR, *sorted(base.glob(f"{own}*/{SIDECAR}"))]
    for sidecar in sidecars:
        try:
            with open(sidecar, encoding="utf-8") as fh:
                run = json.load(fh).get("run") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if run.get("uid") == uid:
            return sidecar.parent
    return None


# -- one run, from documents to files -------------------------------------------------------


@dataclass(frozen=True)
class DrawSettings:
    """What :func:`draw_run` needs of the recorder (picklable: sent to the drawing process)."""

    data_root: Path
    policy: DirectoryPolicy
    path_map: PathMap
    size: tuple[int, int]
    dpi: int
    max_plots: int


@dataclass
class PlotJob:
    """What a run hands to the background thread at its stop."""

    start: Mapping[str, Any]
    descriptor: Mapping[str, Any] | None
    columns: dict[str, Sequence[float]]
    stop: Mapping[str, Any] | None
    streams: list[str] = field(default_factory=list)
    #: The file or folder being written, named in error messages.
    path: str = ""

    @property
    def uid(self) -> str:
        return str(self.start.get("uid", ""))


def draw_run(settings: DrawSettings, job: PlotJob) -> list[str]:
    """Lay out, draw and write one run's plots, then its sidecar; returns the files.

    The folder is claimed with :func:`claim_plots_dir` in the run's experiment
    directory, every file written with :func:`write_new_file`, ``plot.json``
    last, then the folder is ``fsync``-ed. ``job.path`` names what is being
    written (for the error message when this raises).
    """
    plots = layout_run(
        job.start,
        job.descriptor,
        job.columns,
        job.stop,
        streams=job.streams,
        max_plots=settings.max_plots,
    )
    root = settings.data_root
    experiment = run_directory(root, job.start, path_map=settings.path_map)
    job.path = str(experiment / PLOTS_FOLDER)
    scan_id = job.start.get("scan_id")
    directory = claim_plots_dir(settings.policy, root, experiment, scan_id, job.uid)
    written = []
    for figure in plots.figures:
        path = directory / figure.file
        job.path = str(path)
        try:
            png = render_png(figure, size=settings.size, dpi=settings.dpi)
        except (ValueError, OverflowError) as err:
            # matplotlib cannot scale an axis whose range overflows (values near
            # ±1.8e308): this signal gets no PNG, the others and the sidecar still do
            _not_drawn(plots.sidecar, figure.signal, f"could not be drawn: {err}")
            continue
        write_new_file(settings.policy, root, path, png)
        written.append(str(path))
    path = directory / SIDECAR
    job.path = str(path)
    text = json.dumps(plots.sidecar, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    write_new_file(settings.policy, root, path, text.encode("utf-8") + b"\n")
    written.append(str(path))
    _fsync_dir(directory)
    return written


def _not_drawn(sidecar: dict[str, Any], signal: str, why: str) -> None:
    """Move ``signal`` from the sidecar's ``figures`` to its ``not_plotted``."""
    sidecar["figures"] = [f for f in sidecar["figures"] if f["signal"] != signal]
    sidecar["not_plotted"][signal] = why
    if not sidecar["figures"]:
        sidecar["kind"] = None
        sidecar["why_no_plot"] = "no figure could be drawn: " + "; ".join(
            f"{k}: {v}" for k, v in sidecar["not_plotted"].items()
        )


def _draw_elsewhere(
    settings: DrawSettings, job: PlotJob
) -> tuple[list[str], str, BaseException | None]:
    """:func:`draw_run` in the drawing process: (files, path, None) or ([], path, error)."""
    try:
        return draw_run(settings, job), job.path, None
    except Exception as err:
        try:
            pickle.dumps(err)
        except Exception:  # an error that cannot travel back: its text does
            err = RuntimeError(f"{type(err).__name__}: {err}")
        return [], job.path, err


# -- the drawing process -------------------------------------------------------------------

_FRAME = struct.Struct("!Q")
_SERVE = "from bluesky_recorders.plots import serve; serve()"


def _send(stream: Any, payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: Any) -> bytes | None:
    """One framed message, or None at the end of the stream."""
    head = stream.read(_FRAME.size)
    if not head:
        return None
    if len(head) != _FRAME.size:
        raise EOFError("the stream ended inside a message header")
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    if len(body) != size:
        raise EOFError(f"the stream ended after {len(body)} of {size} bytes")
    return body


def serve() -> None:
    """The drawing process: read ``(settings, job)`` pickles from stdin, answer on stdout.

    Started by :class:`EndOfRunPlotsRecorder` as ``python -c "from
    bluesky_recorders.plots import serve; serve()"``; ends at the end of its input
    (its recorder closed, or the session ended).
    """
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    requests = sys.stdin.buffer
    while True:
        message = _receive(requests)
        if message is None:
            return
        settings, job = pickle.loads(message)
        _send(replies, pickle.dumps(_draw_elsewhere(settings, job)))


class _DrawingProcess:
    """One child Python process running :func:`draw_run` (pickles over its stdin/stdout).

    A fresh interpreter (``python -c``), not :mod:`multiprocessing`: spawn and
    forkserver import the parent's ``__main__`` in the child, which for a user's
    script without a ``__main__`` guard would run the user's scan a second time;
    fork copies a process with threads (the RunEngine's, the recorders'). It runs in
    a session of its own, so Ctrl-C at the terminal (the RunEngine's pause) does not
    reach it.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if not sys.executable:
            raise RuntimeError("no Python executable is known to start the drawing process")
        # the child imports from where this process imports (a profile may add paths)
        code = f"import sys; sys.path[:] = {sys.path!r}; {_SERVE}"
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

    def draw(self, settings: DrawSettings, job: PlotJob) -> tuple[list[str], str, Any]:
        """(files, path, error) of :func:`_draw_elsewhere`, run in the child.

        A child that is gone (killed between runs) is replaced and the run sent
        again, once; a child that dies on this run is an error.
        """
        payload = pickle.dumps((settings, job), protocol=pickle.HIGHEST_PROTOCOL)
        for attempt in (1, 2):
            if self._proc is None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, payload)
                reply = _receive(proc.stdout)
                if reply is None:
                    raise EOFError("no reply")
            except (OSError, EOFError) as err:
                self.close(0)
                if attempt == 2:
                    raise RuntimeError(
                        f"the drawing process ended while drawing this run "
                        f"(exit status {proc.returncode}); the next run gets a new one"
                    ) from err
                continue
            return pickle.loads(reply)
        raise AssertionError("unreachable")

    def close(self, timeout: float) -> None:
        """End the child: close its input, wait ``timeout`` s, then kill it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


# -- the background thread -------------------------------------------------------------


class _Background:
    """One daemon thread running ``handle(job)`` for queued jobs, in order, and
    ``at_exit()`` when it ends (closed, every job handled)."""

    def __init__(
        self,
        name: str,
        handle: Callable[[PlotJob], None],
        max_pending: int,
        at_exit: Callable[[], None],
    ) -> None:
        self.name = name
        self.max_pending = max_pending
        self._handle = handle
        self._at_exit = at_exit
        self._jobs: deque[PlotJob] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Jobs queued or being handled."""
        with self._cond:
            return len(self._jobs) + self._busy

    def submit(self, job: PlotJob) -> bool:
        """Queue a job (never waits); False when closed or ``max_pending`` are queued."""
        with self._cond:
            if self._closed or len(self._jobs) >= self.max_pending:
                return False
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    break
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._handle(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self._at_exit()

    def wait(self, timeout: float | None) -> bool:
        """Wait until every job is handled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def close(self, timeout: float) -> bool:
        """Refuse new jobs, wait for the queued ones and the thread's end; False if some
        are left (they go on, then the thread ends)."""
        done = self.wait(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if done and self._thread is not None:
            self._thread.join(timeout)
        return done


# -- the writer and the recorder -------------------------------------------------------


class PlotsWriter(RunWriter):
    """Collects the plotted columns of one run's primary stream; hands them over at stop."""

    recorder: EndOfRunPlotsRecorder

    def __init__(self, start: Mapping[str, Any], recorder: EndOfRunPlotsRecorder) -> None:
        super().__init__(start, recorder)
        self._descriptor: Mapping[str, Any] | None = None
        self._primary: set[str] = set()
        self._streams: list[str] = []
        self._seq: array[int] = array("q")
        self._values: dict[str, array[float]] = {}
        self._handed_over = False

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        name = str(doc.get("name", STREAM))
        if name not in self._streams:
            self._streams.append(name)
        if name != STREAM:
            return
        self._primary.add(doc["uid"])
        if self._descriptor is None:
            self._descriptor = doc
            keys = plotted_keys(choose_plot(self.start_doc, doc))
            self._values = {key: array("d") for key in keys}

    def event(self, doc: Mapping[str, Any]) -> None:  # one event: no page to pack
        if doc["descriptor"] not in self._primary:
            return
        self._seq.append(int(doc["seq_num"]))
        data = doc.get("data") or {}
        for key, column in self._values.items():
            column.append(to_number(data.get(key)))

    def event_page(self, doc: Mapping[str, Any]) -> None:
        if doc["descriptor"] not in self._primary:
            return
        seq = doc["seq_num"]
        self._seq.extend(int(s) for s in seq)
        data = doc.get("data") or {}
        for key, column in self._values.items():
            values = data.get(key)
            if values is None or len(values) != len(seq):
                column.extend([math.nan] * len(seq))
            else:
                column.extend(to_number(v) for v in values)

    def stop(self, doc: Mapping[str, Any]) -> None:
        self._hand_over(doc)

    def close(self) -> None:
        # a run that never stopped is plotted when the recorder closes (not after a failure)
        if not self._handed_over and self.recorder.closing:
            self._hand_over(None)

    def _hand_over(self, stop: Mapping[str, Any] | None) -> None:
        self._handed_over = True
        columns: dict[str, Sequence[float]] = {"seq_num": self._seq, **self._values}
        self.recorder.hand_over(
            PlotJob(self.start_doc, self._descriptor, columns, stop, list(self._streams))
        )


class EndOfRunPlotsRecorder(FileRecorder):
    """PNG plots and a ``plot.json`` sidecar per run (see the module docstring).

    data_root, policy, path_map
        As every file recorder: files go below the run's experiment directory.
    size, dpi
        Size of every PNG in pixels (width, height), and its resolution.
    max_plots
        At most this many signals (PNGs) per run; the others are listed in the
        sidecar's ``not_plotted``.
    max_pending
        Runs waiting to be drawn, at most; a run beyond is not plotted (a warning).
    close_timeout
        Seconds :meth:`close` waits for the plots still being drawn.
    draw_in
        ``"process"`` (default): draw in one separate process, started at the first
        plot and kept; ``"thread"``: draw on the background thread itself (no second
        process, but the drawing then competes with the RunEngine for the GIL:
        measured, it slowed a scan running meanwhile several-fold; decision 0013).
    on_error, when_full
        Default ``"warn"`` (plots are not data: a failure never stops a scan) and
        ``"block"`` (no event is dropped: a plot with holes would mislead; collecting
        costs a few microseconds per event, and the stop waits at most the
        RecorderSet's 10 s limit for live recorders).
    """

    kind = "plots"
    saves_data = False
    writer_class = PlotsWriter

    def __init__(
        self,
        *,
        size: Sequence[int] = (800, 500),
        dpi: int = 100,
        max_plots: int = 16,
        max_pending: int = 100,
        close_timeout: float = 30.0,
        draw_in: str = "process",
        when_full: Any = None,
        file_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if file_template is not None:
            raise ValueError(
                "the plots recorder names its files itself (end_of_run/<scan_id>/<signal>.png "
                "and plot.json); remove file_template"
            )
        super().__init__(when_full=when_full or "block", **kwargs)
        width, height = _size(size)
        if not isinstance(dpi, int) or isinstance(dpi, bool) or not 10 <= dpi <= 1000:
            raise ValueError(f"dpi must be an integer from 10 to 1000, not {dpi!r}")
        for what, value in (("max_plots", max_plots), ("max_pending", max_pending)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{what} must be a positive integer, not {value!r}")
        if draw_in not in ("process", "thread"):
            raise ValueError(f"draw_in must be 'process' or 'thread', not {draw_in!r}")
        self.size = (width, height)
        self.dpi = dpi
        self.max_plots = max_plots
        self.close_timeout = float(close_timeout)
        self.draw_in = draw_in
        self.settings = DrawSettings(
            self.data_root, self.policy, self.path_map, self.size, dpi, max_plots
        )
        self._drawing = _DrawingProcess()
        self._closing = False
        self._lock = threading.Lock()
        self._written: OrderedDict[str, list[str]] = OrderedDict()
        self._background = _Background(
            f"bsrec-{self.name}-draw",
            self._make,
            max_pending,
            at_exit=lambda: self._drawing.close(self.close_timeout),
        )

    # -- what others ask ----------------------------------------------------------
    @property
    def artifacts(self) -> dict[str, list[str]]:
        """Run uid -> its files, once written (empty while its plots are being drawn)."""
        out = super().artifacts
        with self._lock:
            out.update({uid: list(paths) for uid, paths in self._written.items()})
        return out

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    @property
    def pending(self) -> int:
        """Runs handed over whose plots are not written yet."""
        return self._background.pending

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the plots of every stopped run are written (or failed); False on timeout."""
        return self._background.wait(timeout)

    def close(self) -> None:
        """Plot the runs still open, wait for every pending plot (``close_timeout``). Idempotent."""
        if self._closing:
            return
        self._closing = True
        super().close()
        if not self._background.close(self.close_timeout):
            self.log.warning(
                "%s: %d runs' plots are not written after %g s; they go on in the background",
                self.name,
                self._background.pending,
                self.close_timeout,
            )

    # -- the recorder's thread ------------------------------------------------------
    def hand_over(self, job: PlotJob) -> None:
        """Queue a run's plots for the background thread (never waits)."""
        if not self._background.submit(job):
            self.log.warning(
                "%s: no plots for run %s: the recorder is closed or %d runs are waiting to be "
                "drawn (max_pending)",
                self.name,
                job.uid,
                self._background.max_pending,
            )

    # -- the background thread ----------------------------------------------------
    def _make(self, job: PlotJob) -> None:
        try:
            files = self.write_plots(job)
        except Exception as err:  # never let a plot failure escape the background thread
            stop = job.stop or {}
            error = RecorderError(
                self.name,
                cause=err,
                run_uid=job.uid,
                path=job.path,
                doc_name="stop" if job.stop else "",
                doc_uid=str(stop.get("uid", "")),
            )
            self.log.warning("%s (drawn after the run: the scan is not affected)", error)
            return
        with self._lock:
            self._written[job.uid] = files
            while len(self._written) > self.keep_runs:
                self._written.popitem(last=False)

    def write_plots(self, job: PlotJob) -> list[str]:
        """Draw and write one run's plots and sidecar; returns the files.

        Called on the background thread; the drawing itself happens in the
        drawing process (``draw_in = "process"``) or right here (``"thread"``).
        ``job.path`` names what was being written when this raises.
        """
        if self.draw_in == "thread":
            return draw_run(self.settings, job)
        files, job.path, error = self._drawing.draw(self.settings, job)
        if error is not None:
            raise error
        return files


def _size(size: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (16 <= width <= 10_000 and 16 <= height <= 10_000):
        raise ValueError(f"size must be [width, height] in pixels (16 to 10000), not {size!r}")
    return width, height
