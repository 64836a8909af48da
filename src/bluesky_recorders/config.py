"""Recorder sets declared in TOML (``recorders/default.toml`` and friends).

Beamline staff switch recorders on and off and set their options here
without editing code. The format::

    [settings]
    data_root = "~/bsrec-data"      # BSREC_DATA_ROOT overrides it
    drain_timeout = 120             # seconds the stop document waits for a recorder
    validate = true                 # check rare documents against the schemas
    group = "bl9users"              # group of what recorders create (default: the user's)
    dir_mode = 0o2770               # modes of created directories and files; never
    file_mode = 0o660               # world-writable
    metadata_prefix = "BL:MD:"      # the metadata service read at every run start
    require_metadata = false        # true: refuse runs while it cannot be read
    min_free = "1 GiB"              # free space needed before a run starts (0: no check)

    [path_map]                      # IOC-side path prefix -> local prefix
    "/detector-disk" = "{data_root}/detector-disk"

    [recorders.console]             # the table name is the recorder's name...
    kind = "console"                # ...and its kind, unless kind is given
    enabled = true
    on_error = "warn"

String values may use ``{data_root}``; a leading ``~`` is the home folder.
Every mistake is reported with the file, the line and the key.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .external import PathMap
from .paths import DirectoryPolicy, PathPolicyError
from .preflight import DEFAULT_MIN_FREE, parse_size
from .recorder import Recorder

__all__ = [
    "RECORDER_KINDS",
    "Settings",
    "default_config_path",
    "load_config",
    "load_recorder_set",
    "recorder_class",
]

#: Kind name -> "module:Class". Imported only when used (the catalog pulls in tiled).
RECORDER_KINDS: dict[str, str] = {
    "console": "bluesky_recorders.console:ConsoleRecorder",
    "catalog": "bluesky_recorders.catalog:CatalogRecorder",
    "nexus": "bluesky_recorders.nexus:NexusRecorder",
    "spec": "bluesky_recorders.spec:SpecRecorder",
    "jsonl": "bluesky_recorders.jsonl:JsonlRecorder",
    "csv": "bluesky_recorders.csv_recorder:CsvRecorder",
    "feed": "bluesky_recorders.feed:FeedRecorder",
    "shm": "bluesky_recorders.shm:SharedMemoryRecorder",
    "plots": "bluesky_recorders.plots:EndOfRunPlotsRecorder",
}

_SETTINGS_KEYS = {
    "data_root",
    "drain_timeout",
    "validate",
    "run_log",
    "group",
    "dir_mode",
    "file_mode",
    "metadata_prefix",
    "require_metadata",
    "min_free",
}
_TOP_KEYS = {"settings", "path_map", "recorders"}
_RECORDER_META_KEYS = {"kind", "enabled"}


@dataclass
class Settings:
    """What a recorder set shares: where data goes and how paths translate."""

    data_root: Path
    path_map: PathMap = field(default_factory=PathMap)
    drain_timeout: float = 120.0
    validate: bool = True
    run_log: Path | None = None
    group: str | int | None = None
    dir_mode: int = 0o2770
    file_mode: int = 0o660
    metadata_prefix: str | None = None
    require_metadata: bool = False
    min_free: int = DEFAULT_MIN_FREE

    @property
    def run_log_path(self) -> Path:
        return self.run_log or self.data_root / "bsrec-runs.sqlite"

    @property
    def directory_policy(self) -> DirectoryPolicy:
        """Group and modes of every directory and file the recorders create."""
        return DirectoryPolicy(group=self.group, dir_mode=self.dir_mode, file_mode=self.file_mode)


@dataclass
class RecorderSpec:
    name: str
    kind: str
    options: dict[str, Any]
    enabled: bool
    line: int


@dataclass
class Config:
    source: str
    settings: Settings
    recorders: list[RecorderSpec]


def default_config_path() -> Path:
    """``$BSREC_CONFIG``, else the repository's ``recorders/default.toml``, else the packaged."""
    env = os.environ.get("BSREC_CONFIG")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "recorders" / "default.toml"
    if repo.exists():
        return repo
    return Path(__file__).resolve().parent / "data" / "default.toml"


def recorder_class(kind: str) -> type[Recorder]:
    """The class of a recorder kind; a ConfigError lists the known kinds."""
    try:
        target = RECORDER_KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(RECORDER_KINDS))
        raise ConfigError(f"unknown recorder kind {kind!r}; known kinds: {known}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def load_config(
    source: str | Path | None = None,
    *,
    text: str | None = None,
    data_root: str | Path | None = None,
    path_map: Mapping[str, str] | None = None,
) -> Config:
    """Parse and check a recorder-set file (or ``text``) without building anything.

    ``data_root`` and ``path_map`` entries given here override the file's.
    """
    path = (
        Path(source)
        if source is not None
        else (None if text is not None else default_config_path())
    )
    where = str(path) if path is not None else "<text>"
    if text is None:
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"{where}: cannot read the recorder-set file: {err.strerror}"
            ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}") from None

    def fail(table: str, key: str, message: str) -> ConfigError:
        line = _line_of(text, table, key)
        at = f"{where}:{line}" if line else where
        return ConfigError(f"{at}: [{table}] {key}: {message}" if key else f"{at}: {message}")

    for key in raw:
        if key not in _TOP_KEYS:
            raise fail("", key, f"unknown table {key!r}; expected one of {sorted(_TOP_KEYS)}")
    settings_raw = _table(raw, "settings", fail)
    for key in settings_raw:
        if key not in _SETTINGS_KEYS:
            raise fail(
                "settings", key, f"unknown setting; known: {', '.join(sorted(_SETTINGS_KEYS))}"
            )
    root = data_root or os.environ.get("BSREC_DATA_ROOT") or settings_raw.get("data_root")
    if not root:
        root = "~/bsrec-data"
    if not isinstance(root, str | Path):
        raise fail("settings", "data_root", "must be a string")
    root_path = Path(os.path.expanduser(str(root))).absolute()
    subst = {"data_root": str(root_path)}

    prefix_map = {}
    for remote, local in _table(raw, "path_map", fail).items():
        if not isinstance(local, str):
            raise fail("path_map", remote, "must map a path prefix to a string")
        prefix_map[remote] = _expand(local, subst)
    prefix_map.update({str(k): str(v) for k, v in (path_map or {}).items()})
    try:
        drain_timeout = float(settings_raw.get("drain_timeout", 120.0))
    except (TypeError, ValueError):
        raise fail("settings", "drain_timeout", "must be a number of seconds") from None
    validate = settings_raw.get("validate", True)
    if not isinstance(validate, bool):
        raise fail("settings", "validate", "must be true or false")
    run_log = settings_raw.get("run_log")
    group = settings_raw.get("group")
    try:
        DirectoryPolicy(group=group)
    except PathPolicyError as err:
        raise fail("settings", "group", str(err)) from None
    modes = {}
    for key, default in (("dir_mode", 0o2770), ("file_mode", 0o660)):
        value = settings_raw.get(key, default)
        if isinstance(value, str):  # "2770", as chmod takes it
            try:
                value = int(value, 8)
            except ValueError:
                raise fail(
                    "settings", key, f'must be an octal mode such as 0o{default:o} or "{default:o}"'
                ) from None
        try:
            DirectoryPolicy(**{key: value})
        except (PathPolicyError, TypeError) as err:
            raise fail("settings", key, str(err)) from None
        modes[key] = value
    metadata_prefix = settings_raw.get("metadata_prefix")
    if metadata_prefix is not None and not isinstance(metadata_prefix, str):
        raise fail("settings", "metadata_prefix", "must be a PV prefix string, e.g. 'BL:MD:'")
    require_metadata = settings_raw.get("require_metadata", False)
    if not isinstance(require_metadata, bool):
        raise fail("settings", "require_metadata", "must be true or false")
    try:
        min_free = parse_size(settings_raw.get("min_free", DEFAULT_MIN_FREE))
    except ValueError as err:
        raise fail("settings", "min_free", str(err)) from None
    settings = Settings(
        data_root=root_path,
        min_free=min_free,
        path_map=PathMap(prefix_map),
        drain_timeout=drain_timeout,
        validate=validate,
        run_log=Path(_expand(run_log, subst)) if run_log else None,
        group=group,
        metadata_prefix=metadata_prefix,
        require_metadata=require_metadata,
        **modes,
    )

    specs = []
    for name, options in _table(raw, "recorders", fail).items():
        table = f"recorders.{name}"
        if not isinstance(options, dict):
            raise fail("recorders", name, "must be a table, e.g. [recorders.NAME]")
        kind = options.get("kind", name)
        enabled = options.get("enabled", True)
        if not isinstance(enabled, bool):
            raise fail(table, "enabled", "must be true or false")
        try:
            cls = recorder_class(kind)
        except ConfigError as err:
            raise fail(table, "kind" if "kind" in options else "", str(err)) from None
        allowed = _options_of(cls)
        opts = {}
        for key, value in options.items():
            if key in _RECORDER_META_KEYS:
                continue
            if key not in allowed:
                raise fail(
                    table,
                    key,
                    f"unknown option of a {kind!r} recorder; known: {', '.join(sorted(allowed))}",
                )
            opts[key] = _expand(value, subst) if isinstance(value, str) else value
        specs.append(RecorderSpec(name, kind, opts, enabled, _line_of(text, table, "")))
    return Config(where, settings, specs)


def load_recorder_set(
    source: str | Path | None = None,
    *,
    text: str | None = None,
    data_root: str | Path | None = None,
    path_map: Mapping[str, str] | None = None,
    only: list[str] | None = None,
) -> Any:
    """Build a :class:`~bluesky_recorders.RecorderSet` from a recorder-set file.

    ``only`` keeps just the named recorders (enabled or not).
    """
    from .recorder_set import RecorderSet
    from .runlog import RunLog

    config = load_config(source, text=text, data_root=data_root, path_map=path_map)
    settings = config.settings
    recorders = []
    for spec in config.recorders:
        if only is not None and spec.name not in only:
            continue
        if only is None and not spec.enabled:
            continue
        cls = recorder_class(spec.kind)
        allowed = _options_of(cls)
        opts = dict(spec.options)
        opts.setdefault("name", spec.name)
        if "data_root" in allowed:
            opts.setdefault("data_root", settings.data_root)
        if "path_map" in allowed:
            opts.setdefault("path_map", settings.path_map)
        if "policy" in allowed:
            opts.setdefault("policy", settings.directory_policy)
        opts.setdefault("min_free", settings.min_free)
        try:
            recorders.append(cls(**opts))
        except (TypeError, ValueError) as err:
            at = f"{config.source}:{spec.line}" if spec.line else config.source
            raise ConfigError(f"{at}: [recorders.{spec.name}]: {err}") from None
    rs = RecorderSet(
        recorders,
        run_log=RunLog(settings.run_log_path, policy=settings.directory_policy),
        validate=settings.validate,
        drain_timeout=settings.drain_timeout,
    )
    rs.settings = settings  # type: ignore[attr-defined]
    return rs


def _options_of(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                names.add(p.name)
    return names


def _table(raw: Mapping[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise fail("", key, "must be a table")
    return value


def _expand(value: str, subst: Mapping[str, str]) -> str:
    try:
        value = value.format_map(subst)
    except (KeyError, ValueError, IndexError):
        pass
    return os.path.expanduser(value) if value.startswith("~") else value


def _line_of(text: str, table: str, key: str) -> int:
    """1-based line where ``key`` is set inside ``[table]`` (or the table header); 0 if unknown."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if table:
        header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        for i, line in enumerate(lines):
            if header.match(line):
                start = i
                break
        else:
            return 0
        if not key:
            return start + 1
        for j in range(start + 1, len(lines)):
            if re.match(r"^\s*\[", lines[j]):
                end = j
                break
    if not key:
        return 0
    pattern = re.compile(r'^\s*("?)' + re.escape(key) + r"\1\s*=")
    for i in range(start, end):
        if pattern.match(lines[i]) or (
            not table and re.match(r"^\s*\[\s*" + re.escape(key), lines[i])
        ):
            return i + 1
    return 0
