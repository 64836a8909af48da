"""The shared-memory recorder: the current run's latest data in POSIX shared memory.

A live view for viewers on the same machine, with no network and no files::

    RE.subscribe(RecorderSet([SharedMemoryRecorder(frames=["det_image"])]))

    from bluesky_recorders.shm import Reader          # in any process of the same user
    with Reader() as reader:                          # (or of the recorder's group)
        for snap in reader.follow():
            print(snap.total, snap.data["det"][-1:], snap.frames.get("det_image"))

The segment (``/dev/shm/<segment>``, layout in :mod:`bluesky_recorders.shm_layout`)
holds the run's header, a ring of the latest ``capacity`` points of every scalar
column of the primary stream (float64; ``seq_num`` and ``time`` first) and the
latest frame of each ``frames`` key. The writer updates it under a seqlock, so a
reader never accepts a torn update; a new run lays the segment out again and
bumps its ``generation``; the file only grows, so readers' mappings stay valid.

The writer holds an exclusive ``flock`` on the segment for as long as it lives.
At start, a segment nobody holds (its writer crashed, or it is damaged) is
replaced; one held by a live process is refused with an error naming it and its
pid. Closing the recorder marks the segment ``closed`` and unlinks it.

Readers poll the sequence counter: every ``poll`` seconds (100 µs) while
points come, every ``idle_poll`` seconds (500 µs) after ``idle_after`` seconds
(2 s) without a change; see ``docs/reference/shm.md`` for what that costs and
gives. Linux (``/dev/shm``) and x86-64 are what this is tested on; see decision
0012 for other CPUs.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import math
import mmap
import os
import re
import secrets
import stat
import struct
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BsrecError
from .paths import DirectoryPolicy, safe_name
from .recorder import Recorder, RunWriter
from .shm_layout import (
    BASE_COLUMNS,
    CLOSED,
    ENDED,
    FIXED_SIZE,
    IDLE,
    RUNNING,
    STATES,
    FrameSpec,
    Header,
    Layout,
    LayoutError,
    choose,
    compute_layout,
    frame_field_offsets,
    pack_header,
    page_rows,
    ring_slots,
    row_values,
    unpack_fixed,
    unpack_header,
)

__all__ = [
    "Frame",
    "Reader",
    "SegmentError",
    "SegmentInUseError",
    "SegmentNotFoundError",
    "SharedMemoryRecorder",
    "ShmWriter",
    "Snapshot",
    "default_segment",
    "segment_path",
]

log = logging.getLogger("bluesky_recorders.shm")

#: Where POSIX shared memory lives on Linux.
SHM_DIR = Path("/dev/shm")
DEFAULT_CAPACITY = 4096
DEFAULT_MAX_COLUMNS = 256
#: A new segment's size: room for the ring of a few dozen columns without growing.
INITIAL_SIZE = 1 << 20
#: Seconds a reader sleeps between two looks at the sequence counter...
POLL = 100e-6
#: ...and after IDLE_AFTER seconds without a change (it costs less CPU).
IDLE_POLL = 500e-6
IDLE_AFTER = 2.0
#: Seconds between a waiting reader's checks that the segment was not replaced.
CHECK_EVERY = 0.1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_SEQ = 2  # the counters as 8-byte words of the header
_TOTAL = 6
_FRAME_POINT = struct.Struct("<qd")
_TRIES = 10_000
#: A frame to write: its index in the layout, the array, its packed (seq_num, time).
_FrameUpdate = tuple[int, np.ndarray, bytes]


class SegmentError(BsrecError):
    """A shared-memory segment cannot be made or read (the segment and path are named)."""

    def __init__(self, message: str, *, segment: str = "", path: str | os.PathLike = "") -> None:
        super().__init__(message)
        self.segment = segment
        #: The segment's file (what a recorder's error names as the file).
        self.filename = os.fspath(path)


class SegmentNotFoundError(SegmentError):
    """No segment of that name exists: no recorder writes it."""


class SegmentInUseError(SegmentError):
    """A live process holds the segment (its pid is named)."""

    def __init__(self, message: str, *, segment: str, path: str | os.PathLike, pid: int) -> None:
        super().__init__(message, segment=segment, path=path)
        self.pid = pid


# -- names ----------------------------------------------------------------------------
def default_segment(recorder_name: str = "shm") -> str:
    """``bsrec-<user>``, and ``-<recorder name>`` for a recorder not named ``shm``."""
    try:
        user = safe_name(getpass.getuser(), fallback=f"uid{os.getuid()}")
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    name = f"bsrec-{user}"
    if recorder_name and recorder_name != "shm":
        name += f"-{safe_name(recorder_name)}"
    return name


def segment_path(name: str) -> Path:
    """The file of segment ``name`` (a POSIX name: one leading ``/`` is allowed)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name.removeprefix("/")):
        raise ValueError(
            f"shared-memory segment name {name!r} must be 1-200 letters, digits, '.', '_' "
            "or '-' (not starting with '.' or '-')"
        )
    return SHM_DIR / name.removeprefix("/")


# -- the writer's end ---------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale(name: str, path: Path) -> None:
    """Unlink the segment at ``path`` unless a live writer holds its lock (then refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except PermissionError:
        owner = path.stat().st_uid
        raise SegmentInUseError(
            f"shared-memory segment {name!r} ({path}) belongs to uid {owner} and cannot be "
            "read by this user: give this recorder another segment name (option 'segment')",
            segment=name,
            path=path,
            pid=0,
        ) from None
    except OSError as err:
        raise SegmentError(
            f"shared-memory segment {name!r} ({path}) cannot be opened ({err.strerror}); "
            "it is not a segment: remove it",
            segment=name,
            path=path,
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SegmentError(f"{path} is not a regular file: remove it", segment=name, path=path)
        try:
            fixed = unpack_fixed(os.pread(fd, FIXED_SIZE, 0))
            pid, damage = fixed.writer_pid, ""
        except LayoutError as err:
            pid, damage = 0, str(err)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = f"process {pid}" if pid else "a process"
            alive = (
                ""
                if not pid or _pid_alive(pid)
                else (f" (pid {pid} is not running: a process it forked still holds the lock)")
            )
            raise SegmentInUseError(
                f"shared-memory segment {name!r} ({path}) is in use by {who}{alive}: "
                "stop it, or give this recorder another segment name (option 'segment')",
                segment=name,
                path=path,
                pid=pid,
            ) from None
        try:
            if os.stat(path).st_ino != st.st_ino:  # replaced meanwhile by another writer
                return
            os.unlink(path)
        except FileNotFoundError:
            return
        why = f"it was damaged ({damage})" if damage else f"its writer (pid {pid}) is gone"
        log.warning("replaced the stale shared-memory segment %s: %s", path, why)
    finally:
        os.close(fd)


def _create(name: str, path: Path, mode: int, gid: int | None, head: bytes, size: int) -> int:
    """A new segment file, locked, with ``head`` written, linked at ``path`` in one step.

    Made under a temporary name and hard-linked into place, so no reader ever sees
    a half-made segment and two writers never both succeed.
    """
    if not SHM_DIR.is_dir():
        raise SegmentError(
            f"POSIX shared memory needs {SHM_DIR} (Linux); it does not exist here",
            segment=name,
            path=path,
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, mode)  # exactly: the umask may have taken bits away
        if gid is not None:
            try:
                os.fchown(fd, -1, gid)
            except PermissionError:
                raise SegmentError(
                    f"cannot give shared-memory segment {name!r} group {gid}: this user is "
                    "not a member of it",
                    segment=name,
                    path=path,
                ) from None
        os.posix_fallocate(fd, 0, size)  # reserved now: a full /dev/shm fails here, not later
        os.pwrite(fd, head, 0)
        for _ in range(5):
            try:
                os.link(tmp, path)
                return fd
            except FileExistsError:
                _clear_stale(name, path)
        raise SegmentError(
            f"shared-memory segment {name!r} ({path}) keeps being re-created by another process",
            segment=name,
            path=path,
        )
    except BaseException:
        os.close(fd)
        raise
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _release(path: str, ino: int, fd: int) -> None:
    """Unlink the segment if it is still ours, and close (unlock) it."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


class _Segment:
    """The writer's end: the file, its mapping and the header's values."""

    def __init__(
        self, name: str, *, capacity: int, mode: int = 0o600, gid: int | None = None
    ) -> None:
        self.name = name
        self.path = segment_path(name)
        self.capacity = capacity
        self.owner: object | None = None
        self.seq = 0
        self.generation = 1
        self.total = 0
        self.state = IDLE
        self.run: dict[str, Any] = {}
        self.exit_status = ""
        self.layout = compute_layout(BASE_COLUMNS, (), capacity)
        self.size = max(INITIAL_SIZE, self.layout.size)
        head = self._header(self.seq)
        self.fd = _create(name, self.path, mode, gid, head, self.size)
        ino = os.fstat(self.fd).st_ino
        self._finalizer = weakref.finalize(self, _release, str(self.path), ino, self.fd)
        self._map()

    # -- mapping ------------------------------------------------------------------
    def _map(self) -> None:
        self._mm = mmap.mmap(self.fd, self.size)
        self._mv = memoryview(self._mm)
        self._q = self._mv[:FIXED_SIZE].cast("Q")
        self._views()

    def _views(self) -> None:
        lay = self.layout
        self._ring = np.ndarray(
            (lay.capacity, len(lay.columns)), "<f8", buffer=self._mm, offset=lay.ring_offset
        )
        self._frames = [
            np.ndarray(f.shape, f.dtype, buffer=self._mm, offset=f.offset) for f in lay.frames
        ]
        self._frame_points = [frame_field_offsets(lay, i)[0] for i in range(len(lay.frames))]
        self._ring_offset = lay.ring_offset
        self._row_bytes = lay.row_bytes

    def _unmap(self) -> None:
        self._ring = None
        self._frames = []
        self._q.release()
        self._mv.release()
        self._mm.close()

    def _grow(self, size: int) -> None:
        self._unmap()
        os.posix_fallocate(self.fd, 0, size)
        self.size = size
        self._map()

    # -- header -------------------------------------------------------------------
    def _header(self, seq: int) -> bytes:
        run = self.run
        return pack_header(
            Header(
                self.layout,
                seq=seq,
                generation=self.generation,
                segment_size=self.size,
                writer_pid=os.getpid(),
                state=self.state,
                total=self.total,
                scan_id=run.get("scan_id", -1),
                start_time=run.get("time", math.nan),
                run_uid=run.get("uid", ""),
                plan_name=run.get("plan_name", ""),
                exit_status=self.exit_status,
            )
        )

    def _publish(self, *, tables: bool = False) -> None:
        """Write the header under the seqlock: its fixed part, and the tables too if asked."""
        s = self.seq + 1
        self._q[_SEQ] = s
        head = self._header(s)
        if not tables:  # keep the frames' seq_num and time
            head = head[:FIXED_SIZE]
        self._mv[: len(head)] = head
        self.seq = s + 1
        self._q[_SEQ] = s + 1

    def lay_out(self, columns: Sequence[str], frames: Sequence[FrameSpec]) -> Layout:
        """Lay the segment out for new columns and frames; the ring starts empty."""
        layout = compute_layout(columns, frames, self.capacity)
        if layout.size > self.size:
            self._grow(layout.size)
        self.layout = layout
        self._views()
        self.total = 0
        self.generation += 1
        self._publish(tables=True)
        return layout

    def begin_run(self, start: Mapping[str, Any], owner: object) -> None:
        scan_id = start.get("scan_id")
        self.run = {
            "uid": str(start.get("uid", "")),
            "scan_id": scan_id
            if isinstance(scan_id, int) and not isinstance(scan_id, bool)
            else -1,
            "time": float(start.get("time", math.nan) or math.nan),
            "plan_name": str(start.get("plan_name", "")),
        }
        self.owner = owner
        self.state = RUNNING
        self.exit_status = ""
        self.lay_out(BASE_COLUMNS, ())

    def end_run(self, exit_status: str) -> None:
        self.state = ENDED
        self.exit_status = exit_status
        self._publish()

    # -- data ---------------------------------------------------------------------
    # Nothing between making the counter odd and even again can fail: rows are packed,
    # frames shaped and converted, and their (seq_num, time) packed beforehand.
    def put_row(self, row: bytes, frames: list[_FrameUpdate] | None) -> None:
        """One point (a packed float64 row) and its frames, under the seqlock."""
        q = self._q
        s = self.seq + 1
        q[_SEQ] = s
        n = self.total
        off = self._ring_offset + (n % self.capacity) * self._row_bytes
        self._mv[off : off + self._row_bytes] = row
        if frames:
            self._put_frames(frames)
        self.total = n + 1
        q[_TOTAL] = n + 1
        self.seq = s + 1
        q[_SEQ] = s + 1

    def put_rows(self, rows: np.ndarray, frames: list[_FrameUpdate]) -> None:
        """Several points at once (an event page), under the seqlock."""
        n, k = self.total, len(rows)
        keep = rows[-self.capacity :]
        slots = np.arange(n + k - len(keep), n + k) % self.capacity
        s = self.seq + 1
        self._q[_SEQ] = s
        self._ring[slots] = keep
        if frames:
            self._put_frames(frames)
        self.total = n + k
        self._q[_TOTAL] = n + k
        self.seq = s + 1
        self._q[_SEQ] = s + 1

    def _put_frames(self, frames: list[_FrameUpdate]) -> None:
        for i, array, point in frames:
            self._frames[i][...] = array
            at = self._frame_points[i]
            self._mv[at : at + _FRAME_POINT.size] = point

    @property
    def open(self) -> bool:
        return self._finalizer.alive

    def close(self) -> None:
        """Mark the segment closed, unmap it, unlink it (if still ours). Idempotent."""
        if not self._finalizer.alive:
            return
        try:
            self.state = CLOSED
            self._publish()
            self._unmap()
        finally:
            self._finalizer()


# -- the recorder ------------------------------------------------------------------
def _getter(keys: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not keys:
        return lambda data: ()
    if len(keys) == 1:
        key = keys[0]
        return lambda data: (data[key],)
    return itemgetter(*keys)


class ShmWriter(RunWriter):
    """Writes one run's primary stream into the recorder's segment (while it owns it)."""

    recorder: SharedMemoryRecorder

    def __init__(self, start: Mapping[str, Any], recorder: SharedMemoryRecorder) -> None:
        super().__init__(start, recorder)
        self.segment = recorder.attach()
        self.path = str(self.segment.path)
        self.segment.begin_run(start, self)
        self._primary: str | None = None
        self._keys: tuple[str, ...] = ()
        self._get = _getter(())
        self._row = struct.Struct("<2d")
        self._frame_keys: list[tuple[int, str, np.dtype, tuple[int, ...]]] = []
        self._warned: set[str] = set()

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        if self._primary is not None or doc.get("name", "primary") != "primary":
            return
        if self.segment.owner is not self:
            return
        rec = self.recorder
        choice = choose(doc.get("data_keys", {}), frames=rec.frames, max_columns=rec.max_columns)
        for note in choice.notes:
            rec.log.info("%s: %s (segment %s)", rec.name, note, self.segment.name)
        layout = self.segment.lay_out(choice.columns, choice.frames)
        self._primary = doc["uid"]
        self._keys = choice.keys
        self._get = _getter(choice.keys)
        self._row = struct.Struct(f"<{len(layout.columns)}d")
        self._frame_keys = [
            (i, f.name, np.dtype(f.dtype), f.shape) for i, f in enumerate(layout.frames)
        ]

    def event(self, doc: Mapping[str, Any]) -> None:
        # handled as it is: event-model's packing into a page costs ~20 µs per event
        if doc["descriptor"] != self._primary or self.segment.owner is not self:
            return
        data = doc["data"]
        try:
            row = self._row.pack(doc["seq_num"], doc["time"], *self._get(data))
        except Exception:  # a missing key or a value that is not a number: the slow way
            row = self._row.pack(*row_values(doc.get("seq_num"), doc.get("time"), data, self._keys))
        frames = self._frame_updates(doc, data, -1) if self._frame_keys else None
        self.segment.put_row(row, frames)

    def event_page(self, doc: Mapping[str, Any]) -> None:
        if doc["descriptor"] != self._primary or self.segment.owner is not self:
            return
        if not doc.get("seq_num"):
            return
        rows = page_rows(doc, self._keys)
        frames = self._frame_updates(doc, doc.get("data", {}), len(doc["seq_num"]) - 1)
        self.segment.put_rows(rows, frames)

    def _frame_updates(
        self, doc: Mapping[str, Any], data: Mapping[str, Any], row: int
    ) -> list[_FrameUpdate]:
        """The frames of an event (``row`` -1) or of a page's row, checked and converted."""
        out = []
        seq_num, t = (
            (doc["seq_num"], doc["time"]) if row < 0 else (doc["seq_num"][row], doc["time"][row])
        )
        for i, key, dtype, shape in self._frame_keys:
            value = data.get(key)
            if value is None:
                continue
            if row >= 0:
                if len(value) <= row:
                    continue
                value = value[row]
            try:
                array = np.asarray(value)
                if array.dtype != dtype:
                    with np.errstate(all="ignore"):
                        array = array.astype(dtype)
            except (TypeError, ValueError) as err:
                self._warn_once(key, doc, f"its value is not numbers ({err})")
                continue
            if array.shape != shape:
                self._warn_once(key, doc, f"shape {list(array.shape)} differs from {list(shape)}")
                continue
            try:
                point = _FRAME_POINT.pack(int(seq_num), float(t))
            except (TypeError, ValueError, OverflowError, struct.error):
                point = _FRAME_POINT.pack(-1, math.nan)
            out.append((i, array, point))
        return out

    def _warn_once(self, key: str, doc: Mapping[str, Any], why: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        uid = doc.get("uid")
        uid = uid[0] if isinstance(uid, list) and uid else uid
        self.recorder.log.warning(
            "%s: frame %r of event %s not shown in segment %s: %s (run %s)",
            self.recorder.name,
            key,
            uid,
            self.segment.name,
            why,
            self.start_doc.get("uid"),
        )

    def stop(self, doc: Mapping[str, Any]) -> None:
        if self.segment.owner is self:
            self.segment.end_run(str(doc.get("exit_status", "")))

    def close(self) -> None:
        seg = self.segment
        if seg.owner is self:
            seg.owner = None
            if seg.state == RUNNING and seg.open:
                seg.end_run("")


class SharedMemoryRecorder(Recorder):
    """The current run's latest data in a POSIX shared-memory segment (a live view).

    segment
        The segment's name (``/dev/shm/<segment>``); default ``bsrec-<user>``, and
        ``bsrec-<user>-<name>`` for a recorder whose name is not ``shm``.
    capacity
        Points of the ring (the latest ones are kept), default 4096.
    frames
        Data keys whose latest 1-D or 2-D array (in the event data) is shown.
    max_columns
        At most this many ring columns (``seq_num`` and ``time`` included), default 256.
    group
        A group name or gid: the segment is readable by it (mode 0640); default
        owner only (0600).
    threaded
        Default False: the write (a few µs) is done on the RunEngine thread, so
        readers see a point as soon as its event is emitted.
    """

    kind = "shm"
    saves_data = False
    writer_class = ShmWriter

    def __init__(
        self,
        *,
        segment: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        frames: Sequence[str] = (),
        max_columns: int = DEFAULT_MAX_COLUMNS,
        group: str | int | None = None,
        threaded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(threaded=threaded, **kwargs)
        for what, value, least in (("capacity", capacity, 1), ("max_columns", max_columns, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{what} must be an integer >= {least}, not {value!r}")
        if isinstance(frames, str) or not all(isinstance(k, str) for k in frames):
            raise ValueError(f"frames must be a list of data keys, not {frames!r}")
        self.segment = default_segment(self.name) if segment is None else segment
        segment_path(self.segment)  # a bad name fails here
        self.capacity = capacity
        self.frames = tuple(frames)
        self.max_columns = max_columns
        self.group = group
        self.gid = None if group is None else DirectoryPolicy(group=group).gid
        self.mode = 0o600 if group is None else 0o640
        self._segment: _Segment | None = None
        try:
            self.attach()
        except SegmentError as err:
            self.log.warning("%s: %s; trying again at the next run", self.name, err)

    @property
    def path(self) -> Path:
        """The segment's file."""
        return segment_path(self.segment)

    def attach(self) -> _Segment:
        """The segment, made (or taken over from a crashed writer) when needed."""
        if self._segment is None:
            self._segment = _Segment(
                self.segment, capacity=self.capacity, mode=self.mode, gid=self.gid
            )
            self.log.debug("%s: writing segment %s", self.name, self._segment.path)
        return self._segment

    def close(self) -> None:
        """Close every run, then mark the segment closed and unlink it. Idempotent."""
        try:
            super().close()
        finally:
            seg, self._segment = self._segment, None
            if seg is not None:
                seg.close()


# -- the reader ----------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """The latest frame of one key and the point it came with."""

    data: np.ndarray
    seq_num: int
    time: float


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of a segment at one value of its sequence counter."""

    segment: str
    state: str
    writer_pid: int
    run_uid: str
    scan_id: int | None
    plan_name: str
    start_time: float
    exit_status: str
    seq: int
    generation: int
    total: int
    capacity: int
    columns: tuple[str, ...]
    #: The ring's points asked for, oldest first: shape (points, columns).
    points: np.ndarray
    frames: dict[str, Frame]

    @property
    def data(self) -> dict[str, np.ndarray]:
        """Column name -> its values, oldest first."""
        return {name: self.points[:, j] for j, name in enumerate(self.columns)}

    @property
    def first(self) -> int:
        """The run's index (0-based) of the first point in ``points``."""
        return self.total - len(self.points)


class Reader:
    """Attach read-only to a segment, from any process that may read its file.

    ``snapshot()`` copies it consistently; ``wait()`` returns when its sequence
    counter changes; ``follow()`` yields a snapshot at each change. A reader
    maps the segment again when it grows and attaches to a new segment of the
    same name when its writer was replaced. Use it as a context manager or
    call ``close()``.

    poll, idle_poll, idle_after
        ``wait()`` looks at the counter every ``poll`` seconds, and every
        ``idle_poll`` seconds once ``idle_after`` seconds passed without a change.
    check_every
        Seconds between checks that the segment was not replaced.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        poll: float = POLL,
        idle_poll: float = IDLE_POLL,
        idle_after: float = IDLE_AFTER,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self.name = default_segment() if name is None else name
        self.path = segment_path(self.name)
        self.poll = poll
        self.idle_poll = max(poll, idle_poll)
        self.idle_after = idle_after
        self.check_every = check_every
        self._changed = time.monotonic()
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        self._attach()

    def _error(self, message: str, cls: type[SegmentError] = SegmentError) -> SegmentError:
        return cls(f"shared-memory segment {self.name!r} ({self.path}) {message}",
                   segment=self.name, path=self.path)  # fmt: skip

    def _attach(self) -> None:
        """Open the segment at this name and map it (the reader keeps the file open)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._error(
                "does not exist: no shm recorder is writing it (is one enabled in the "
                "recorder set, with this segment name?)",
                SegmentNotFoundError,
            ) from None
        except PermissionError:
            st = self.path.stat()
            raise self._error(
                f"cannot be read by this user (mode {stat.S_IMODE(st.st_mode):04o}, uid "
                f"{st.st_uid}, gid {st.st_gid}): the recorder's 'group' option shares it"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < FIXED_SIZE:
                raise self._error(
                    f"is not a bsrec segment ({st.st_size} bytes, shorter than a header)"
                )
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
            try:
                unpack_fixed(mm)
            except LayoutError as err:
                mm.close()
                raise LayoutError(
                    f"shared-memory segment {self.name!r} ({self.path}): {err}"
                ) from None
        except BaseException:
            os.close(fd)
            raise
        self._release()
        self._fd, self._ino = fd, st.st_ino
        self._install(mm)
        self._seen = self._q[_SEQ]

    def _install(self, mm: mmap.mmap) -> None:
        self._mm = mm
        self._mv = memoryview(mm)
        self._q = self._mv[:FIXED_SIZE].cast("Q")
        self._header: Header | None = None

    def _unmap(self) -> None:
        if self._mm is not None:
            self._q.release()
            self._mv.release()
            self._mm.close()
            self._mm = None

    def _remap(self) -> None:
        """Map the same file again, at its new size (it grew)."""
        self._unmap()
        size = os.fstat(self._fd).st_size
        self._install(mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ))

    def _release(self) -> None:
        self._unmap()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _replaced(self) -> bool:
        """Attach to a new segment of this name, if its writer was replaced; True if so."""
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False
        if ino == self._ino:
            return False
        try:
            self._attach()
        except SegmentError:
            return False
        self._seen = -1
        return True

    @property
    def counter(self) -> int:
        """The sequence counter now (odd while the writer writes)."""
        return self._q[_SEQ]

    def snapshot(self, last: int | None = None) -> Snapshot:
        """A consistent copy: the header, the ring's points (the ``last`` ones) and frames."""
        if self._mm is None:
            raise self._error("is closed in this reader")
        self._replaced()
        for attempt in range(_TRIES):
            q = self._q
            s1 = q[_SEQ]
            if s1 & 1:
                self._pause(attempt)
                continue
            try:
                snap = self._copy(s1, last)
            except (LayoutError, ValueError, TypeError) as err:
                if q[_SEQ] != s1:
                    continue
                raise LayoutError(
                    f"shared-memory segment {self.name!r} ({self.path}): {err}"
                ) from None
            if snap is None or q[_SEQ] != s1:
                self._pause(attempt)
                continue
            if s1 != self._seen:
                self._seen, self._changed = s1, time.monotonic()
            return snap
        raise self._error(f"changed during each of {_TRIES} copies: ask for fewer points (last=)")

    def _pause(self, attempt: int) -> None:
        if attempt > 10:
            time.sleep(0 if attempt < 100 else self.poll)

    def _copy(self, seq: int, last: int | None) -> Snapshot | None:
        mm = self._mm
        assert mm is not None
        fixed = unpack_fixed(mm)
        if fixed.segment_size > len(mm):  # it grew: map it again
            self._remap()
            return None
        header = self._header
        if header is None or header.generation != fixed.generation:
            header = self._header = unpack_header(self._mv[: fixed.header_size])
        lay = header.layout
        ncols = len(lay.columns)
        ring = np.frombuffer(mm, "<f8", lay.capacity * ncols, lay.ring_offset)
        points = ring.reshape(lay.capacity, ncols)[ring_slots(fixed.total, lay.capacity, last)]
        frames = {}
        for i, spec in enumerate(lay.frames):
            seq_num, t = _FRAME_POINT.unpack_from(mm, frame_field_offsets(lay, i)[0])
            count = spec.nbytes // np.dtype(spec.dtype).itemsize
            array = np.frombuffer(mm, spec.dtype, count, spec.offset).reshape(spec.shape).copy()
            frames[spec.name] = Frame(array, seq_num, t)
        return Snapshot(
            segment=self.name,
            state=STATES[fixed.state],
            writer_pid=fixed.writer_pid,
            run_uid=fixed.run_uid,
            scan_id=None if fixed.scan_id == -1 else fixed.scan_id,
            plan_name=fixed.plan_name,
            start_time=fixed.start_time,
            exit_status=fixed.exit_status,
            seq=seq,
            generation=fixed.generation,
            total=fixed.total,
            capacity=lay.capacity,
            columns=lay.columns,
            points=points,
            frames=frames,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Return True when the counter differs from the last one seen; False on timeout.

        Looks at the counter every ``poll`` seconds (a sleep; ``idle_poll`` once
        ``idle_after`` seconds passed without a change), and every ``check_every``
        seconds whether the segment was replaced.
        """
        if self._mm is None:
            raise self._error("is closed in this reader")
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        check = now + self.check_every
        idle = self._changed + self.idle_after
        q, seen = self._q, self._seen
        while True:
            s = q[_SEQ]
            if s != seen and not s & 1:
                self._seen = s
                self._changed = time.monotonic()
                return True
            now = time.monotonic()
            if now >= check:
                if self._replaced():
                    self._changed = now
                    return True
                q, check = self._q, now + self.check_every
            if deadline is not None and now >= deadline:
                return False
            time.sleep(self.poll if now < idle else self.idle_poll)

    def follow(self, timeout: float | None = None, last: int | None = None) -> Iterator[Snapshot]:
        """Yield a snapshot now and at every change; stop after ``timeout`` s without one."""
        yield self.snapshot(last)
        while self.wait(timeout):
            yield self.snapshot(last)

    def close(self) -> None:
        self._release()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Reader {self.name!r} {self.path}>"
