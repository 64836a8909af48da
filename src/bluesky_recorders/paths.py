"""Where recorders write: experiment data directories, safe names, file modes.

Every run's files go into one directory below the data root::

    <data_root>/<YYYY-MM>/<pi_last_name>/

named by the metadata service (``start["experiment"]["data_directory"]``)
when it says so, else built here from the run's start time and
``start["experiment"]["pi"]["last_name"]``, else ``<YYYY-MM>/commissioning``
(old runs carry no ``experiment`` at all). A recorder asks::

    policy = DirectoryPolicy(group="bl9users")          # dirs 2770, files 0660
    directory = policy.prepare_run(data_root, start)    # run_directory + make_dirs
    name = file_name("{scan_id:05d}_{plan_name}_{uid:.8}.nxs", start)
    with policy.open_new(directory / name) as f:        # create-only, never overwrites
        ...

The rules, kept in pure functions tested alone:

- :func:`safe_name` makes one path component from any text: NFKD and ASCII
  folding (``"Müller"`` -> ``"muller"``, ``"Ødegård"`` -> ``"odegard"``);
  characters with no ASCII form (CJK, emoji) are dropped; runs of anything but
  ``[a-z0-9._-]`` become ``_``; no ``..``, no leading or trailing ``.``/``_``/``-``;
  **lower case**, so ``"Doe"`` and ``"doe"`` share one folder on a
  case-sensitive file system and never collide on a case-insensitive one (SMB,
  macOS); names longer than ``max_length`` are cut and end with a hash of the
  whole name, so two long names never merge; an empty result is ``fallback``.
- :func:`ensure_inside` refuses any path that leaves the data root, after
  resolving ``..`` and symbolic links.
- :class:`DirectoryPolicy` gives what it creates a configured group and
  exact modes (default 2770 for directories, 0660 for files; world-writable
  modes are refused), leaves existing directories alone, and creates files
  only when they do not exist yet.

Nothing here creates anything except :class:`DirectoryPolicy`.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import re
import string
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import BsrecError
from .external import PathMap

__all__ = [
    "DirectoryPolicy",
    "PathExistsError",
    "PathPolicyError",
    "ensure_inside",
    "experiment_dir",
    "file_name",
    "inside",
    "run_directory",
    "safe_name",
]

#: Letters NFKD does not decompose, folded by hand (the rest of Latin decomposes).
_FOLD = str.maketrans(
    {
        "Ø": "O", "ø": "o", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "ß": "ss",
        "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "Th",
        "þ": "th", "ı": "i", "Ħ": "H", "ħ": "h", "ŋ": "ng", "Ŋ": "NG",
    }
)  # fmt: skip
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_EDGES = "._-"
_HASH_LEN = 8
_MIN_LENGTH = 16
_NAME_MAX = 255  # bytes in one file name on ext4, xfs, NFS


class PathPolicyError(BsrecError, ValueError):
    """A path or a name breaks the data-directory policy (the path and the cause are named)."""


class PathExistsError(BsrecError, FileExistsError):
    """A file to create already exists: bluesky-recorders never overwrites a file."""

    def __str__(self) -> str:
        return str(self.strerror)


# -- pure functions ------------------------------------------------------------


def safe_name(text: object, *, fallback: str = "unknown", max_length: int = 64) -> str:
    """One safe, lower-case path component made from ``text`` (never empty).

    ``None`` and text with nothing left after folding give ``fallback``, which
    must itself be safe. Names longer than ``max_length`` (at least 16) keep
    their start and end with ``-`` and 8 hex digits of a hash of the folded name.
    """
    if max_length < _MIN_LENGTH:
        raise PathPolicyError(f"max_length must be at least {_MIN_LENGTH}, not {max_length}")
    if not fallback or _fold(fallback, max_length) != fallback:
        raise PathPolicyError(
            f"the fallback name {fallback!r} is not safe itself (lower-case [a-z0-9._-], "
            f"at most {max_length} characters, no leading dot)"
        )
    if text is None:
        return fallback
    return _fold(str(text), max_length) or fallback


def _fold(text: str, max_length: int) -> str:
    ascii_text = (
        unicodedata.normalize("NFKD", text.translate(_FOLD))
        .encode("ascii", "ignore")
        .decode("ascii")
        .lower()
    )
    name = _DOTS.sub(".", _UNSAFE.sub("_", ascii_text)).strip(_EDGES)
    if len(name) > max_length:
        digest = hashlib.sha256(name.encode("ascii")).hexdigest()[:_HASH_LEN]
        name = f"{name[: max_length - _HASH_LEN - 1].rstrip(_EDGES)}-{digest}"
    return name


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (relative paths are taken from ``root``) stays inside ``root``.

    ``..`` and symbolic links are resolved first; ``root`` itself counts as inside.
    """
    real_root = Path(os.path.realpath(os.path.expanduser(os.fspath(root))))
    real = Path(os.path.realpath(real_root / os.fspath(path)))
    return real == real_root or real_root in real.parents


def ensure_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` resolved (relative to ``root`` if relative); refused if it leaves ``root``.

    Refuses absolute paths elsewhere, ``../../etc`` and symbolic links pointing out.
    """
    if "\0" in os.fspath(path):
        raise PathPolicyError(f"refusing the path {os.fspath(path)!r}: it contains a NUL byte")
    real_root = Path(os.path.realpath(os.path.expanduser(os.fspath(root))))
    real = Path(os.path.realpath(real_root / os.fspath(path)))
    if real != real_root and real_root not in real.parents:
        raise PathPolicyError(
            f"refusing the path {os.fspath(path)}: it resolves to {real}, "
            f"outside the data root {real_root}"
        )
    return real


def experiment_dir(
    data_root: str | os.PathLike[str],
    *,
    when: datetime | float,
    pi_last_name: str | None,
    fallback: str = "commissioning",
) -> Path:
    """``<data_root>/<YYYY-MM>/<safe PI last name>``; ``fallback`` when there is no PI.

    A float ``when`` is a POSIX time, taken in this machine's local time zone;
    a datetime is used as it is (its own zone). A last name with no ASCII form
    at all (e.g. only CJK characters) gets ``pi-<hash>``, one folder per
    person, rather than the fallback: commissioning data and a user's data
    never share a folder.
    """
    stamp = when if isinstance(when, datetime) else datetime.fromtimestamp(when)
    month = f"{stamp.year:04d}-{stamp.month:02d}"
    safe_name("", fallback=fallback)  # refuses an unsafe fallback
    text = (pi_last_name or "").strip()
    if not text:
        name = fallback
    else:
        name = _fold(text, 64)
        if not name:
            name = "pi-" + hashlib.sha256(text.casefold().encode()).hexdigest()[:_HASH_LEN]
    return Path(os.path.expanduser(os.fspath(data_root))).absolute() / month / name


def run_directory(
    data_root: str | os.PathLike[str],
    start_doc: Mapping[str, Any],
    *,
    path_map: PathMap | None = None,
) -> Path:
    """The directory every recorder writes this run's files into (created by nobody here).

    ``start["experiment"]["data_directory"]``, translated by ``path_map`` (the
    metadata service may see the disk under another prefix), when given: it
    must resolve strictly inside ``data_root`` and have no hidden or control
    characters in its parts, else :class:`PathPolicyError`. Otherwise
    :func:`experiment_dir` from the start time and the PI's last name, or
    ``<YYYY-MM>/commissioning`` without a PI (old runs, metadata unavailable).
    Reads symbolic links, never creates or changes anything.
    """
    root = Path(os.path.expanduser(os.fspath(data_root))).absolute()
    experiment = start_doc.get("experiment")
    if not isinstance(experiment, Mapping):
        experiment = {}
    named = experiment.get("data_directory")
    if isinstance(named, str) and named.strip():
        local = path_map.translate(named) if path_map is not None else named
        resolved = ensure_inside(root, local)
        if resolved == Path(os.path.realpath(root)):
            raise PathPolicyError(
                f"refusing the data directory {named}: it is the data root itself, "
                "not an experiment directory below it"
            )
        for part in resolved.relative_to(os.path.realpath(root)).parts:
            if part.startswith("."):
                raise PathPolicyError(f"refusing the data directory {named}: hidden part {part!r}")
            if any(unicodedata.category(c) == "Cc" for c in part):
                raise PathPolicyError(
                    f"refusing the data directory {named!r}: control character in {part!r}"
                )
        return resolved
    if named not in (None, ""):
        raise PathPolicyError(f"refusing the data directory {named!r}: not a path string")
    pi = experiment.get("pi")
    last = pi.get("last_name") if isinstance(pi, Mapping) else None
    when = start_doc.get("time")
    if not isinstance(when, int | float):
        raise PathPolicyError(
            f"cannot name a data directory under {root}: start document "
            f"{start_doc.get('uid', '?')} has no numeric 'time'"
        )
    # a month or PI folder that is a symbolic link out of the root is refused here, before
    # anything (the preflight probe included) is written through it
    folder = experiment_dir(root, when=when, pi_last_name=last if isinstance(last, str) else None)
    return ensure_inside(root, folder)


class _SafeFormatter(string.Formatter):
    """str.format where every substituted value goes through :func:`safe_name`."""

    def __init__(self, template: str) -> None:
        self.template = template

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int):
            raise PathPolicyError(
                f"file-name template {self.template!r}: positional field {{{key}}}; "
                "name a key of the start document"
            )
        try:
            return kwargs[key]
        except KeyError:
            raise PathPolicyError(
                f"file-name template {self.template!r}: the start document has no key {key!r}"
            ) from None

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if "." in field_name:
            raise PathPolicyError(
                f"file-name template {self.template!r}: attribute access in {{{field_name}}} "
                "is not allowed; use {key[subkey]}"
            )
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, TypeError) as err:
            if isinstance(err, PathPolicyError):
                raise
            raise PathPolicyError(
                f"file-name template {self.template!r}: the start document has no {field_name}"
            ) from None

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            text = super().format_field(value, format_spec)
        except (TypeError, ValueError) as err:
            raise PathPolicyError(
                f"file-name template {self.template!r}: cannot format {value!r} "
                f"with {format_spec!r}: {err}"
            ) from None
        return safe_name(text)


def file_name(template: str, start_doc: Mapping[str, Any], **extra: Any) -> str:
    """A file name from a ``str.format`` template filled from the start document.

    ``extra`` adds or overrides keys. Each substituted value goes through
    :func:`safe_name` (after its format spec, so ``{scan_id:05d}`` and
    ``{uid:.8}`` work); nested keys read as ``{experiment[pi][last_name]}``.
    A missing key, a path separator in the template, or a result that is
    empty, hidden or longer than 255 bytes is a :class:`PathPolicyError`.
    """
    for bad in {"/", "\\", "\0", os.sep}:
        if bad in template:
            raise PathPolicyError(
                f"file-name template {template!r}: {bad!r} would make a path, not a file name"
            )
    values = {**start_doc, **extra}
    name = _SafeFormatter(template).vformat(template, (), values)
    if not name or name in (".", "..") or name.startswith("."):
        raise PathPolicyError(f"file-name template {template!r} gives {name!r}: not a file name")
    if len(name.encode()) > _NAME_MAX:
        raise PathPolicyError(
            f"file-name template {template!r} gives a name of {len(name.encode())} bytes; "
            f"file systems allow {_NAME_MAX}"
        )
    return name


# -- the one part that touches the disk ----------------------------------------


class DirectoryPolicy:
    """Group and modes of every directory and file a recorder creates.

    group
        A group name or gid given to what is created (the creating user must
        belong to it); ``None`` keeps what the file system gives (the parent's
        group under a setgid directory, else the user's).
    dir_mode, file_mode
        Applied exactly with ``chmod`` after creation: the process umask
        neither narrows them (a umask of 077 would lock the group out of a
        shared experiment folder) nor widens them. World-writable modes are
        refused; directories need ``rwx`` and files ``rw`` for their owner;
        files take permission bits only (no setuid, setgid or sticky).
    """

    def __init__(
        self,
        *,
        group: str | int | None = None,
        dir_mode: int = 0o2770,
        file_mode: int = 0o660,
    ) -> None:
        self.gid = _gid(group)
        self.group = group
        for what, mode, allowed, needed in (
            ("dir_mode", dir_mode, 0o7777, 0o700),
            ("file_mode", file_mode, 0o777, 0o600),
        ):
            if not isinstance(mode, int) or isinstance(mode, bool):
                raise PathPolicyError(f"{what} must be an integer such as 0o2770, not {mode!r}")
            if mode & 0o002:
                raise PathPolicyError(f"{what} {mode:#o} is world-writable; refused")
            if mode & ~allowed:
                raise PathPolicyError(f"{what} {mode:#o} has bits outside {allowed:#o}")
            if mode & needed != needed:
                raise PathPolicyError(f"{what} {mode:#o} must give its owner at least {needed:#o}")
        self.dir_mode = dir_mode
        self.file_mode = file_mode

    def __repr__(self) -> str:
        return (
            f"DirectoryPolicy(group={self.group!r}, dir_mode={self.dir_mode:#o}, "
            f"file_mode={self.file_mode:#o})"
        )

    file_name = staticmethod(file_name)

    def make_dirs(self, root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
        """Create ``path`` (refused outside ``root``) and return it resolved.

        Each level this call creates, ``root`` included when missing, gets
        ``dir_mode`` and the group; directories that already exist are left as
        they are. Another process creating the same level at the same time is fine.
        """
        real_root = Path(os.path.realpath(os.path.expanduser(os.fspath(root))))
        target = ensure_inside(real_root, path)
        missing = []
        level = target
        while not level.is_dir():
            # another recorder's thread may create it between the two checks: look again
            if level.is_symlink() or (level.exists() and not level.is_dir()):
                raise PathPolicyError(f"cannot create the directory {target}: {level} is not one")
            missing.append(level)
            if level.parent == level:
                break
            level = level.parent
        for level in reversed(missing):
            try:
                os.mkdir(level, self.dir_mode & 0o777)
            except FileExistsError:
                if not level.is_dir():
                    raise PathPolicyError(
                        f"cannot create the directory {target}: {level} is not one"
                    ) from None
                continue  # made by someone else meanwhile: not ours to change
            except OSError as err:
                raise OSError(
                    err.errno, f"cannot create the directory {level}: {err.strerror}", str(level)
                ) from err
            self._apply(level, self.dir_mode)
        return ensure_inside(real_root, target)

    def prepare_run(
        self,
        data_root: str | os.PathLike[str],
        start_doc: Mapping[str, Any],
        *,
        path_map: PathMap | None = None,
    ) -> Path:
        """:func:`run_directory` of the run, created with this policy."""
        return self.make_dirs(data_root, run_directory(data_root, start_doc, path_map=path_map))

    def open_new(
        self,
        path: str | os.PathLike[str],
        mode: str = "xb",
        *,
        root: str | os.PathLike[str] | None = None,
        encoding: str | None = None,
    ) -> IO[Any]:
        """Create and open a file that must not exist yet (``O_CREAT | O_EXCL``).

        ``mode`` is an ``open`` mode with ``x`` (``"xb"``, ``"x"``, ``"x+b"``...).
        The file gets ``file_mode`` and the group before anything is written.
        An existing file (or symbolic link) there raises :class:`PathExistsError`
        and is left untouched. With ``root``, a path outside it is refused.
        """
        if "x" not in mode or set(mode) - set("xbt+") or ("b" in mode and "t" in mode):
            raise PathPolicyError(
                f"cannot open {os.fspath(path)} with mode {mode!r}: files are created only "
                "(use 'x', 'xb' or 'x+b')"
            )
        target = Path(os.fspath(path))
        if root is not None:
            ensure_inside(root, target)
        flags = os.O_CREAT | os.O_EXCL | (os.O_RDWR if "+" in mode else os.O_WRONLY)
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(target, flags, self.file_mode & 0o777)
        except FileExistsError:
            raise PathExistsError(
                errno.EEXIST,
                f"refusing to overwrite {target}: the file exists (bluesky-recorders "
                "creates files only; choose another file-name template or remove it)",
            ) from None
        except OSError as err:
            raise OSError(
                err.errno, f"cannot create the file {target}: {err.strerror}", str(target)
            ) from err
        try:
            self._apply(fd, self.file_mode, name=target)
            binary = "b" in mode
            return open(
                fd,
                mode.replace("x", "w"),
                encoding=None if binary else (encoding or "utf-8"),
            )
        except BaseException:
            os.close(fd)
            raise

    def create_file(self, path: str | os.PathLike[str]) -> BinaryIO:
        """:meth:`open_new` in ``"xb"`` mode: a new binary file opened for writing."""
        return self.open_new(path, "xb")  # type: ignore[return-value]

    def apply_file(self, path: str | os.PathLike[str]) -> None:
        """Give ``file_mode`` and the group to a file that a library created itself.

        For writers that create by name (``h5py.File(path, "x")``): call it
        right after creating the file.
        """
        self._apply(Path(os.fspath(path)), self.file_mode)

    def _apply(self, target: Path | int, mode: int, *, name: Path | None = None) -> None:
        where = name if name is not None else target
        try:
            if self.gid is not None:
                os.chown(target, -1, self.gid)
            os.chmod(target, mode)  # after chown, which may clear setgid bits
        except OSError as err:
            group = f" to group {self.group!r}" if self.gid is not None else ""
            raise OSError(
                err.errno, f"cannot give {where} mode {mode:#o}{group}: {err.strerror}", str(where)
            ) from err


def _gid(group: str | int | None) -> int | None:
    if group is None:
        return None
    if isinstance(group, bool) or not isinstance(group, int | str):
        raise PathPolicyError(f"group must be a group name or a gid, not {group!r}")
    if isinstance(group, int):
        if group < 0:
            raise PathPolicyError(f"group must be a group name or a gid >= 0, not {group}")
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise PathPolicyError(f"unknown group {group!r} (not in the group database)") from None
