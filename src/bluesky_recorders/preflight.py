"""Checks made before a run starts: can every recorder write where it will write?

A run that cannot be saved should not start: beam time would be spent on data
that is lost. :func:`check_directory` looks at the folder a recorder will write
into (or, when it does not exist yet, the nearest folder above it that does):

- it must be a folder this process can create files in, tried for real with a
  hidden probe file created and removed at once (``os.access`` alone says yes
  to root on a read-only file system, and no to nothing it should);
- its file system must have at least ``min_free`` bytes and a free inode.

A recorder lists its folders with ``Recorder.preflight_dirs(start)``;
:meth:`RecorderSet.preflight <bluesky_recorders.RecorderSet.preflight>` checks
them all and :func:`install_preflight` makes the RunEngine do it before every
``open_run``, so that no start document is emitted (and no scan id spent) for a
run that cannot be recorded. File recorders check again at the start document,
which covers a recorder subscribed alone or run by ``bsrec record``.

When the disk fills during a run, :func:`disk_full_note` gives the message the
free space that is left on the file's file system.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import BsrecError

__all__ = [
    "DEFAULT_MIN_FREE",
    "PreflightError",
    "check_directory",
    "disk_full_note",
    "format_size",
    "free_bytes",
    "install_preflight",
    "is_disk_full",
    "parse_size",
]

#: Free space a file system must have before a run starts, by default (1 GiB).
DEFAULT_MIN_FREE = 1 << 30

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# HDF5 reports a failed write as an OSError whose errno is unset, with the C library's
# message inside the text ("errno = 28, error message = 'No space left on device'").
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|errno = (28|122)\b")


class PreflightError(BsrecError, OSError):
    """A recorder cannot write where the run would go (folder, cause and free space named)."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())


def parse_size(value: int | float | str) -> int:
    """Bytes from ``1073741824``, ``"1 GiB"``, ``"500 MB"`` or ``"0"`` (0: no check)."""
    if isinstance(value, bool):
        raise ValueError(f"a size must be a number of bytes or a string like '1 GiB', not {value}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        number, unit = float(match[1]), match[2].lower()
    else:
        raise ValueError(
            f"a size must be a number of bytes or a string like '1 GiB', not {value!r}"
        )
    if unit not in _UNITS or number < 0:
        raise ValueError(
            f"cannot read the size {value!r}: use bytes or a unit among "
            "kB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024)"
        )
    return int(number * _UNITS[unit])


def format_size(size: int) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``512 B``: what a message shows."""
    if abs(size) < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists."""
    level = path
    while not level.exists() and level.parent != level:
        level = level.parent
    return level


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged user may still write on ``path``'s file system."""
    st = os.statvfs(_existing(Path(os.fspath(path))))
    return st.f_bavail * st.f_frsize


def check_directory(
    directory: str | os.PathLike[str], *, min_free: int = DEFAULT_MIN_FREE, who: str = ""
) -> None:
    """Raise :class:`PreflightError` unless files can be created in ``directory``.

    ``directory`` need not exist yet: the nearest existing folder above it must
    then let this process create it. ``who`` (a recorder's name) starts the message.
    """
    target = Path(os.fspath(directory))
    by = f"recorder {who!r}: " if who else ""
    try:
        base = _existing(target)
    except OSError as err:  # a folder on the way cannot even be looked into
        raise PreflightError(
            err.errno,
            f"{by}cannot record into {target}: this process (uid {os.getuid()}) cannot "
            f"reach {err.filename}: {err.strerror}",
        ) from None
    where = str(target) if base == target else f"{target} (to be created in {base})"
    if not base.is_dir():
        raise PreflightError(
            errno.ENOTDIR, f"{by}cannot record into {where}: {base} is not a folder"
        )
    probe = base / f".bsrec-probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise PreflightError(
                err.errno,
                f"{by}cannot record into {where}: its file system is full "
                f"({format_size(free_bytes(base))} free): {err.strerror}",
            ) from None
        raise PreflightError(
            err.errno,
            f"{by}cannot record into {where}: this process (uid {os.getuid()}) cannot create "
            f"files in {base}: {err.strerror}",
        ) from None
    os.close(fd)
    os.unlink(probe)
    st = os.statvfs(base)
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        raise PreflightError(
            errno.ENOSPC,
            f"{by}cannot record into {where}: only {format_size(free)} free on its file "
            f"system, less than the {format_size(min_free)} required before a run starts "
            "(option min_free)",
        )
    if st.f_files and st.f_favail == 0:
        raise PreflightError(
            errno.ENOSPC, f"{by}cannot record into {where}: no free inode on its file system"
        )


def is_disk_full(err: BaseException) -> bool:
    """Whether an exception says the disk (or the quota) is full."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    return bool(_DISK_FULL_TEXT.search(str(err)))


def disk_full_note(err: BaseException, path: str | os.PathLike[str]) -> str | None:
    """For a disk-full error while writing ``path``: the free space left, for the message."""
    if not path or not is_disk_full(err):
        return None
    try:
        free = format_size(free_bytes(path))
    except OSError:
        free = "unknown"
    return f"the disk is full: {free} free on the file system of {os.fspath(path)}"


def install_preflight(
    RE: Any,  # noqa: N803 - what every bluesky user calls the RunEngine
    check: Callable[[Mapping[str, Any]], None],
) -> Callable[[], None]:
    """Call ``check(start)`` before every ``open_run``, with the start document to come.

    ``start`` has what the start document will have but its uid: ``RE.md``, the
    plan's metadata (the metadata service's snapshot included when
    :func:`~bluesky_recorders.metadata.device.attach_metadata` was called
    first), the time and the next scan id. An exception from ``check`` ends the
    plan before the run opens. Returns a function that removes the check.
    """
    from bluesky.preprocessors import plan_mutator

    def preprocessor(plan: Any) -> Any:
        def on_open_run(msg: Any) -> tuple[None, None]:
            if msg.command == "open_run":
                md = {**RE.md, **msg.kwargs}
                scan_id = md.get("scan_id", 0)
                check(
                    {
                        **md,
                        "uid": "(preflight)",
                        "time": time.time(),
                        "scan_id": scan_id + 1 if isinstance(scan_id, int) else 1,
                    }
                )
            return None, None

        return plan_mutator(plan, on_open_run)

    RE.preprocessors.append(preprocessor)

    def remove() -> None:
        if preprocessor in RE.preprocessors:
            RE.preprocessors.remove(preprocessor)

    return remove
