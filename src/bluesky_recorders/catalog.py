"""The catalog recorder: every run into a local databroker 2 (tiled) catalog.

The catalog is tiled's SQL catalog on SQLite plus files in one directory::

    <directory>/catalog.db       nodes and metadata (tiled's catalog database)
    <directory>/storage.sqlite   event tables (tiled's tabular storage)
    <directory>/data/            arrays tiled writes itself (zarr)

It is served in-process (no port, no server to start) and opened as the
``runs`` container, a bluesky-tiled-plugins ``CatalogOfBlueskyRuns``::

    cat = open_catalog("~/bsrec-data/catalog", readable=["/mnt/det"])
    cat[uid].primary.read(); cat.v2[uid]; cat[-1]
    cat.search(Key("sample") == "Si")
    close_catalog(cat)

:class:`CatalogRecorder` writes each run with bluesky-tiled-plugins'
``TiledWriter``, after translating IOC-side detector-file paths with the
recorder's :class:`~bluesky_recorders.external.PathMap`, so the catalog reads
detector files from where they are on this machine. Detector files are
referenced, never copied; their directories must be readable by the catalog.

The format logic is in pure functions (:func:`catalog_document`,
:func:`translate_resource`, :func:`translate_stream_resource`); the writer
only holds the run's ``TiledWriter``. tiled is imported only when a catalog is
opened, so loading a recorder set stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import posixpath
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlparse, urlunparse

from .external import PathMap
from .paths import DirectoryPolicy, PathExistsError, PathPolicyError
from .recorder import Recorder, RunWriter

__all__ = [
    "CatalogRecorder",
    "CatalogWriter",
    "asset_path",
    "catalog_document",
    "check_external_data",
    "close_catalog",
    "descriptor_problems",
    "open_catalog",
    "readable_root",
    "run_artifact",
    "translate_resource",
    "translate_stream_resource",
]

log = logging.getLogger("bluesky_recorders.catalog")

CATALOG_DB = "catalog.db"
TableStorage = Literal["sqlite", "duckdb"]
_TABLE_FILES = {"sqlite": "storage.sqlite", "duckdb": "storage.duckdb"}
_INIT_LOCK = threading.Lock()
_ROUTER_START_WARNING = r"The callback .* when RunRouter passed it a 'start' document"


# -- pure functions: documents in, documents out ------------------------------


def translate_resource(doc: Mapping[str, Any], path_map: PathMap) -> Mapping[str, Any]:
    """A copy of a legacy ``resource`` whose ``root``/``resource_path`` are local.

    The root is translated when the prefix map covers it (the split is kept);
    otherwise, e.g. ophyd's ``root="/"``, the whole path goes into
    ``resource_path`` under ``root="/"``. The document is returned unchanged
    (the same object) when nothing needs translating.
    """
    root = doc.get("root") or ""
    rel = doc.get("resource_path") or ""
    full = posixpath.join(root, rel) if root else rel
    local = path_map.translate(full)
    if local == full:
        return doc
    out = dict(doc)
    new_root = path_map.translate(root) if root else root
    if root and new_root != root and posixpath.join(new_root, rel) == local:
        out["root"] = new_root
    else:
        out["root"] = "/"
        out["resource_path"] = local.lstrip("/")
    return out


def translate_stream_resource(doc: Mapping[str, Any], path_map: PathMap) -> Mapping[str, Any]:
    """A copy of a ``stream_resource`` whose ``file://`` URI is local.

    Old (event-model < 1.20) stream resources carry ``root``/``resource_path``
    instead of a URI; they are translated like a legacy resource. Other URI
    schemes are left alone. Returns the same object when nothing changes.
    """
    if "uri" not in doc:
        return translate_resource(doc, path_map) if "resource_path" in doc else doc
    parsed = urlparse(doc["uri"])
    if parsed.scheme not in ("file", ""):
        return doc
    path = unquote(parsed.path)
    local = path_map.translate(path)
    if local == path:
        return doc
    out = dict(doc)
    out["uri"] = urlunparse(parsed._replace(path=quote(local)))
    return out


def catalog_document(name: str, doc: Mapping[str, Any], path_map: PathMap) -> Mapping[str, Any]:
    """The document as the catalog gets it: detector-file paths made local.

    Everything else passes through untouched (``TiledWriter``'s own
    ``RunNormalizer`` upgrades old documents on copies). The caller's
    document is never modified.
    """
    if name == "resource":
        return translate_resource(doc, path_map)
    if name == "stream_resource":
        return translate_stream_resource(doc, path_map)
    return doc


#: Data keys TiledWriter renames (``time`` -> ``time_``): the event table has its own.
_RENAMED_KEYS = ("time", "seq_num")
#: What makes a stream name leave its run's node in tiled's URLs (``..``, ``/``) or cut them.
_URL_BREAKERS = frozenset("/?#%")


def descriptor_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why the catalog cannot hold this descriptor's stream (empty: it can).

    tiled puts a stream at ``runs/<uid>/<stream name>`` and its scalar data keys, and
    ``ts_<key>`` for their timestamps, into one SQL table. tiled refuses (at the run's
    stop, after every event was collected) a column starting with ``_``, one that is no
    SQL identifier by its own rules (``[a-zA-Z_]`` first, at most 63 bytes, no quote,
    ``;``, ``--``, ``%``...), or two columns equal but for case; and a stream name with
    ``/``, ``..`` or ``?`` would write outside the run's node (into another run's).
    Checked at the descriptor, the run fails before its first event, naming the key.
    """
    from tiled.adapters.sql import COLUMN_NAME_PATTERN, is_safe_identifier

    problems = []
    stream = doc.get("name", "")
    if (
        not isinstance(stream, str)
        or stream in ("", ".", "..")
        or _URL_BREAKERS & set(stream)
        or any(ord(c) < 32 or ord(c) == 127 for c in stream)
    ):
        problems.append(
            f"stream name {stream!r} is not a catalog node name (empty, '.', '..', "
            "or with '/', '?', '#', '%' or control characters)"
        )
    data_keys = doc.get("data_keys")
    if not isinstance(data_keys, Mapping):
        return problems
    columns = ["seq_num", "time"]
    for key, dk in data_keys.items():
        if isinstance(dk, Mapping) and "external" in dk:
            continue  # detector files: not in the table
        name = f"{key}_" if key in _RENAMED_KEYS else str(key)
        if not (isinstance(dk, Mapping) and dk.get("dtype") == "array"):
            columns.append(name)
        columns.append(f"ts_{name}")
    seen: dict[str, str] = {}
    for column in columns:
        other = seen.setdefault(column.lower(), column)
        if other != column:
            problems.append(
                f"columns {other!r} and {column!r} of stream {stream!r} differ only in case"
            )
        if column.startswith("_"):
            problems.append(f"data key {column!r} starts with '_' (tiled keeps those)")
            continue
        try:
            is_safe_identifier(column, COLUMN_NAME_PATTERN, allow_reserved_words=True)
        except Exception as err:
            problems.append(f"{err} (from data key of stream {stream!r})")
    return problems


def asset_path(name: str, doc: Mapping[str, Any]) -> str | None:
    """The local file a (translated) ``resource``/``stream_resource`` names, if a file."""
    if name == "stream_resource" and "uri" in doc:
        parsed = urlparse(doc["uri"])
        return unquote(parsed.path) if parsed.scheme in ("file", "") else None
    if name in ("resource", "stream_resource"):
        root = doc.get("root") or ""
        rel = doc.get("resource_path") or ""
        return posixpath.join(root, rel) if root else rel
    return None


def readable_root(path: str, roots: Iterable[str]) -> str | None:
    """The first of ``roots`` that holds ``path`` (as tiled checks it), or None."""
    path = os.path.abspath(path)
    for root in roots:
        root = os.path.abspath(root)
        if os.path.commonpath([root, path]) == root:
            return root
    return None


def run_artifact(directory: str | os.PathLike[str], uid: str) -> str:
    """What the catalog recorder reports for a run: ``<directory>/catalog.db#<uid>``.

    Open it with ``open_catalog(<directory>)[<uid>]``.
    """
    return f"{Path(directory) / CATALOG_DB}#{uid}"


# -- opening and closing the catalog --------------------------------------------


def _no_statements(record: logging.LogRecord) -> bool:
    """aiosqlite logs every statement with its parameters at DEBUG: the runs' metadata,
    users' e-mail addresses included. Those records are dropped; its warnings are kept."""
    return record.levelno > logging.DEBUG


def _claim_database(policy: DirectoryPolicy, path: Path, *, create: bool) -> None:
    """Refuse a symbolic link at a database's name (SQLite and DuckDB follow one, even a
    dangling one, and would make the database where it points); with ``create``, make a
    missing SQLite file with the policy's mode and group (an empty file is a database)."""
    if path.is_symlink():
        raise PathPolicyError(f"refusing the catalog database {path}: it is a symbolic link")
    if create:
        try:
            policy.open_new(path, "xb").close()
        except PathExistsError:
            pass  # there already, or made by another process meanwhile


def _apply_policy_below(policy: DirectoryPolicy, top: Path) -> None:
    """Give the policy's modes and group to the folders and files tiled wrote below
    ``top`` (arrays, created with the process umask); symbolic links are left alone."""
    if top.is_symlink() or not top.is_dir():
        return
    for folder, dirs, files in os.walk(top):
        for name in [None, *dirs]:
            path = folder if name is None else os.path.join(folder, name)
            if os.path.islink(path):
                continue
            if policy.gid is not None:
                os.chown(path, -1, policy.gid)
            os.chmod(path, policy.dir_mode)  # after chown, which may clear setgid
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                policy.apply_file(path)


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def _init_database(uri: str) -> bool:
    """Create tiled's catalog tables if missing, in this process. True if created.

    This is what ``tiled catalog init --if-not-exists`` does, without its
    ~3.6 s subprocess. It runs on a helper thread because tiled's database
    code and alembic both call ``asyncio.run``, which fails on a thread that
    already runs an event loop (e.g. a Jupyter kernel).
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["created"] = _init_database_here(uri)
        except BaseException as err:  # re-raised on the calling thread
            result["error"] = err

    with _INIT_LOCK:
        thread = threading.Thread(target=work, name="bsrec-catalog-init", daemon=True)
        thread.start()
        thread.join()
    if "error" in result:
        raise result["error"]
    return bool(result["created"])


def _init_database_here(uri: str) -> bool:
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(uri)

    async def setup() -> bool:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
            return True
        finally:
            await engine.dispose()
        return False

    created = asyncio.run(setup())
    if created:
        with warnings.catch_warnings():
            # tiled's alembic.ini template predates alembic's path_separator option.
            warnings.filterwarnings(
                "ignore", message="No path_separator found", category=DeprecationWarning
            )
            stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
    return created


@contextlib.contextmanager
def _quiet(logger_name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise a third-party logger's level for a moment (tiled logs its version at start)."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def _structure_clients() -> Any:
    """A private copy of tiled's client registry that ``cat.v2`` cannot change for everyone.

    bluesky-tiled-plugins' ``cat.v2``/``cat.v3`` ``copy.copy`` the registry and
    set ``BlueskyRun`` in the copy, but tiled's ``OneShotCachedMap`` copies
    share their dict: one ``cat.v2`` makes every ``cat[uid]`` in the process
    a V2 run. Our registry copies deeply, so views stay views.
    """
    from importlib.metadata import entry_points

    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH
    from tiled.utils import OneShotCachedMap

    class Registry(OneShotCachedMap):  # type: ignore[misc]
        __slots__ = ()

        def __copy__(self) -> Registry:
            return copy.deepcopy(self)

    registry = Registry()
    registry.__setstate__(copy.deepcopy(dict(DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"].__getstate__())))
    for group in ("tiled.special_client", "tiled.structure_client"):
        for entry in entry_points(group=group):
            registry.set(entry.name, entry.load)
    return registry


def open_catalog(
    directory: str | os.PathLike[str],
    *,
    readable: Iterable[str | os.PathLike[str]] = (),
    tables: TableStorage = "sqlite",
    policy: DirectoryPolicy | None = None,
) -> Any:
    """Open (creating it if missing) the local catalog in ``directory``.

    Returns the ``runs`` container, a bluesky-tiled-plugins
    ``CatalogOfBlueskyRuns``, served in this process by an in-process tiled
    app (no port). ``readable`` lists the directories holding detector files
    (local paths): tiled refuses to reference files outside them.
    ``tables`` chooses tiled's tabular storage for event data: ``"sqlite"``
    (default) lets another process read the catalog while this one has it
    open; ``"duckdb"`` holds an exclusive file lock until closed. ``policy``
    gives the group and modes of the directories and database it creates.

    Call :func:`close_catalog` (or let the process exit) to release it.
    Opening costs about 1 s once tiled is imported (about 3 s more the first
    time in a process).
    """
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app
    from tiled.structures.core import Spec

    if tables not in _TABLE_FILES:
        raise ValueError(f"tables must be 'sqlite' or 'duckdb', not {tables!r}")
    root_dir = Path(os.path.expanduser(os.fspath(directory))).absolute()
    policy = policy or DirectoryPolicy()
    try:
        policy.make_dirs(root_dir, root_dir / "data" / "runs")
    except OSError as err:
        raise OSError(
            err.errno, f"cannot create the catalog directory {root_dir}: {err.strerror}"
        ) from err
    _claim_database(policy, root_dir / CATALOG_DB, create=True)
    _claim_database(policy, root_dir / _TABLE_FILES[tables], create=tables == "sqlite")
    logging.getLogger("aiosqlite").addFilter(_no_statements)
    db_uri = _sqlite_uri(root_dir / CATALOG_DB)
    if _init_database(db_uri):
        policy.apply_file(root_dir / CATALOG_DB)
        log.debug("created the catalog %s", root_dir / CATALOG_DB)
    table_uri = f"{tables}:///{root_dir / _TABLE_FILES[tables]}"
    readable_dirs = [str(root_dir)]
    for extra in readable:
        path = str(Path(os.path.expanduser(os.fspath(extra))).absolute())
        if path not in readable_dirs:
            readable_dirs.append(path)
    adapter = catalog_from_uri(
        db_uri,
        writable_storage=[str(root_dir / "data"), table_uri],
        readable_storage=readable_dirs,
    )
    with _quiet("tiled.server.app"), warnings.catch_warnings():
        # tiled 0.2.20's in-process client imports starlette's TestClient, which warns
        # that httpx is deprecated there: nothing a beamline user can act on.
        warnings.filterwarnings("ignore", message="Using .httpx. with .starlette.testclient.")
        context = Context.from_app(
            build_app(adapter, serialization_registry=_serialization_registry())
        )
    try:
        client = from_context(context, structure_clients=_structure_clients())
        if "runs" not in client:
            try:
                client.create_container(
                    "runs", specs=[Spec("CatalogOfBlueskyRuns", version="3.0")]
                )
            except Exception:  # another process made it between the check and now
                if "runs" not in client.refresh():
                    raise
        runs = client["runs"]
    except BaseException:
        context.close()
        raise
    log.debug("opened the catalog %s (readable: %s)", root_dir, readable_dirs)
    return runs


def _serialization_registry() -> Any:
    """tiled's default registry plus bluesky-tiled-plugins' JSON-seq export of a
    run, which ``BlueskyRun.documents()`` asks for (``bsrec export`` reads runs so)."""
    import copy

    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)
    return registry


def close_catalog(catalog: Any) -> None:
    """Release a catalog from :func:`open_catalog` (its tiled context). Idempotent."""
    context = getattr(catalog, "context", None)
    if context is not None:
        context.close()


def check_external_data(run: Any) -> None:
    """Check a finished run's detector-file references against the files; fix them.

    Descriptors often declare detector images as ``dtype: "array"`` with no
    ``dtype_numpy``, so TiledWriter registers them as float64; the file says
    uint16, and reading would fail. bluesky-tiled-plugins' client-side
    validator reads each file's header (not its data) and corrects the
    registered dtype, shape and chunks, noting what it fixed in the run's
    ``notes``. A file that cannot be opened raises.
    """
    from bluesky_tiled_plugins.writing.validator import validate

    # Its fixes are routine (an undeclared dtype) and kept in the run's notes.
    with _quiet("bluesky_tiled_plugins.writing.validator", logging.ERROR):
        validate(run, fix_errors=True, try_reading=False, raise_on_error=True)


# -- the recorder ---------------------------------------------------------------


class CatalogWriter(RunWriter):
    """Writes one run into the catalog through its own ``TiledWriter``.

    Documents are forwarded as they come (events stay events: TiledWriter
    batches them itself), after :func:`catalog_document` made detector paths
    local. A run gets its own TiledWriter so that a failed run leaves no state
    behind for the next one.
    """

    recorder: CatalogRecorder

    def __init__(self, start: Mapping[str, Any], recorder: Recorder) -> None:
        super().__init__(start, recorder)
        self._tiled: Any = None
        self._external = False

    def __call__(self, name: str, doc: Mapping[str, Any], validate: bool = False) -> Any:
        if name == "start":
            self._start(doc)
            return name, doc
        if self._tiled is None:  # pragma: no cover - the facade starts every run first
            raise RuntimeError(f"{name} document before the run's start")
        rec = self.recorder
        if name == "descriptor" and (problems := descriptor_problems(doc)):
            raise ValueError(
                "the catalog cannot hold this stream: "
                + "; ".join(problems)
                + ". Rename the signal or stream, or leave this run out of the catalog"
            )
        out = catalog_document(name, doc, rec.path_map)
        if name in ("resource", "stream_resource"):
            self._check_readable(name, out)
            self._external = True
        self._tiled(name, out)
        if name == "stop" and self._external:
            check_external_data(rec.writer_client()[doc["run_start"]])
        return name, doc

    def _start(self, doc: Mapping[str, Any]) -> None:
        rec = self.recorder
        self.path = str(rec.directory / CATALOG_DB)
        uid = doc["uid"]
        if uid in ("", ".", "..") or set(uid) & set("/\\?#%"):
            # the run's node is runs/<uid> in tiled's URLs: "..", "x/../<uid>" reach others
            raise PathPolicyError(
                f"the catalog refuses the run uid {uid!r}: with '/', '\\', '?', '#' or '%', "
                "or as '.' or '..', it would address another entry of the catalog"
            )
        catalog = rec.writer_client()  # opens the catalog on the first run
        from bluesky_tiled_plugins import TiledWriter

        self._tiled = TiledWriter(
            catalog, batch_size=rec.batch_size, max_array_size=rec.max_array_size
        )
        self.path = run_artifact(rec.directory, doc["uid"])
        try:
            with warnings.catch_warnings():
                # event-model's RunRouter blames any failure on 'start' on an old
                # factory convention; the exception itself is what matters.
                warnings.filterwarnings(
                    "ignore", message=_ROUTER_START_WARNING, category=UserWarning
                )
                self._tiled("start", doc)
        except Exception as err:
            if doc["uid"] in catalog:  # asked only now: a request costs ~40 ms
                raise FileExistsError(
                    f"run {doc['uid']} is already in the catalog {rec.directory}"
                ) from err
            raise
        self.artifacts.append(self.path)

    def _check_readable(self, name: str, doc: Mapping[str, Any]) -> None:
        """Refuse a detector file the catalog could not read back (tiled checks only on read)."""
        path = asset_path(name, doc)
        roots = self.recorder.readable_dirs
        if path and readable_root(path, roots) is None:
            raise PermissionError(
                f"the catalog cannot read the detector file {path}: it is outside the catalog's "
                f"readable directories ({', '.join(roots)}); add its IOC-side prefix to path_map "
                "or its directory to the recorder's 'readable' option"
            )

    def close(self) -> None:
        self._tiled = None
        uid = self.start_doc.get("uid")
        if isinstance(uid, str) and uid and os.sep not in uid and uid not in (".", ".."):
            rec = self.recorder  # the run's arrays: the policy's modes and group
            _apply_policy_below(rec.policy, rec.directory / "data" / "runs" / uid)


class CatalogRecorder(Recorder):
    """Write every run into a local databroker 2 / tiled catalog.

    Options (keyword-only, settable in ``recorders/*.toml``):

    directory
        The catalog's directory (default ``<data_root>/catalog``).
    data_root
        Where data goes (passed by the recorder-set loader); also readable.
    readable
        More directories holding detector files, besides ``data_root`` and
        the local side of ``path_map``.
    batch_size
        Events (and stream datums) TiledWriter collects before one write;
        smaller shows data in the catalog sooner, larger writes faster.
    tables
        ``"sqlite"`` (default) or ``"duckdb"``, see :func:`open_catalog`.

    The catalog is opened on the first run's start (on the recorder's
    thread), and :attr:`catalog` gives it to readers in the same process.
    Each run's artifact is ``<directory>/catalog.db#<uid>``.
    """

    kind = "catalog"
    saves_data = True
    writer_class = CatalogWriter

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        data_root: str | os.PathLike[str] | None = None,
        readable: Iterable[str | os.PathLike[str]] = (),
        batch_size: int = 100,
        tables: TableStorage = "sqlite",
        policy: DirectoryPolicy | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.policy = policy or DirectoryPolicy()
        if directory is None:
            if data_root is None:
                raise ValueError("a catalog recorder needs a directory or a data_root")
            directory = Path(data_root) / "catalog"
        self.directory = Path(os.path.expanduser(os.fspath(directory))).absolute()
        self.data_root = Path(os.path.expanduser(os.fspath(data_root))) if data_root else None
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size!r}")
        if tables not in _TABLE_FILES:
            raise ValueError(f"tables must be 'sqlite' or 'duckdb', not {tables!r}")
        self.tables: TableStorage = tables
        #: Internal arrays larger than this go to zarr, the rest into the event table.
        #: tiled's SQLite tables hold no list columns, so there every array goes to zarr.
        self.max_array_size = 0 if tables == "sqlite" else 16
        roots = [*([self.data_root] if self.data_root else []), *self.path_map.local_roots]
        self.readable = [str(p) for p in [*roots, *readable]]
        self._catalog: Any = None
        self._writer_client: Any = None
        self._lock = threading.Lock()

    def preflight_dirs(self, start: Mapping[str, Any]) -> list[Path]:
        """The catalog's directory, checked before every run starts."""
        return [self.directory]

    @property
    def readable_dirs(self) -> list[str]:
        """Every directory the catalog may read files from (its own first)."""
        return [str(self.directory), *self.readable]

    @property
    def catalog(self) -> Any:
        """The catalog (``CatalogOfBlueskyRuns``), opened now if not yet open."""
        with self._lock:
            if self._catalog is None:
                self._catalog = open_catalog(
                    self.directory, readable=self.readable, tables=self.tables, policy=self.policy
                )
            return self._catalog

    def writer_client(self) -> Any:
        """The client TiledWriter writes through (data sources included, fetched once)."""
        if self._writer_client is None:
            self._writer_client = self.catalog.include_data_sources()
        return self._writer_client

    def close(self) -> None:
        """Finish open runs and release the catalog. Idempotent."""
        try:
            super().close()
        finally:
            with self._lock:
                catalog, self._catalog, self._writer_client = self._catalog, None, None
            if catalog is not None:
                close_catalog(catalog)

    def __repr__(self) -> str:
        return f"<CatalogRecorder {self.name!r} {self.directory}>"
