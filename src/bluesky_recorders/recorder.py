"""The one lifecycle every recorder shares.

A recorder is a public facade (:class:`Recorder`) that is called with
``(name, doc)`` and makes one :class:`RunWriter` per run. The facade routes
each document to the writer of its run, normalises external data
(:mod:`bluesky_recorders.external`) and turns any failure into a
:class:`~bluesky_recorders.errors.RecorderError` naming the recorder, the file,
the document and the cause. Writers hold per-run state only; the format logic
lives in pure functions in each recorder's own module.

A recorder works alone (``RE.subscribe(recorder)``) or inside a
:class:`~bluesky_recorders.RecorderSet`, which gives it a thread and a bounded
queue.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import event_model

from .errors import DocumentError, RecorderError
from .external import AssetIndex, ExternalFrames, PathMap
from .paths import DirectoryPolicy, run_directory
from .preflight import DEFAULT_MIN_FREE, check_directory, disk_full_note, parse_size

__all__ = ["DOCUMENT_NAMES", "FileRecorder", "OnError", "Recorder", "RunWriter", "WhenFull"]

OnError = Literal["abort", "warn"]
WhenFull = Literal["block", "drop"]

#: The document names of the event model, the only ones a stream may hold.
DOCUMENT_NAMES = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "stop",
    }
)


class RunWriter(event_model.DocumentRouter):
    """Writes one run. Subclasses override the document methods they need.

    Implement ``event_page`` (events are packed into pages for you) and, to
    use detector files, :meth:`external`, which receives every
    :class:`ExternalFrames` before the event that refers to it.
    """

    def __init__(self, start: Mapping[str, Any], recorder: Recorder) -> None:
        super().__init__()
        self.start_doc = start
        self.recorder = recorder
        self.descriptors: dict[str, Mapping[str, Any]] = {}
        #: Files this writer created, in order.
        self.artifacts: list[str] = []
        #: The file being written now, named in error messages.
        self.path: str = ""
        #: The exception that ended the run early for this writer (set before close).
        self.failure: BaseException | None = None

    def external(self, frames: ExternalFrames) -> None:
        """Called with each piece of external data, before its event."""

    def events(self, docs: Sequence[Mapping[str, Any]]) -> bool:
        """Optionally take several events of one descriptor at once, in order.

        A RecorderSet's thread hands over, in one call, the events that queued up
        while it was busy (see :meth:`Recorder.process_events`). Return False, having
        changed nothing, to be given them one at a time instead (``event``), which
        is also what happens when a writer does not override this.
        """
        return False

    def tick(self) -> None:
        """Called on the recorder's thread when its queue is empty (about every 10 ms,
        inside a RecorderSet): for work due by time, not by document (a flush)."""

    def close(self) -> None:
        """Release files and resources; called once, after stop or after a failure."""


class Recorder:
    """Facade for one kind of recorder: call it with ``(name, doc)``.

    Keyword options shared by every recorder (settable in ``recorders/*.toml``):

    name
        Shown in messages and in ``bsrec runs`` (defaults to the kind).
    on_error
        ``"abort"``: a failure aborts the run (default for data-saving
        recorders); ``"warn"``: log it and carry on (default for live views).
    threaded
        Run on its own thread inside a RecorderSet (default True).
    queue_size, when_full
        Bound of that thread's queue and what to do when it is full:
        ``"block"`` the RunEngine (never lose data) or ``"drop"`` events
        (live views; start, descriptor and stop are never dropped).
    path_map
        IOC-side path prefix -> local prefix, for detector files.
    min_free
        For recorders that write files: free space their file system must have
        before a run starts (bytes or ``"1 GiB"``; default 1 GiB; 0: no check).
    """

    #: Name of this kind of recorder in recorders/*.toml.
    kind: ClassVar[str] = "recorder"
    #: Whether losing this recorder's output loses data (sets the default policy).
    saves_data: ClassVar[bool] = True
    #: The per-run writer class.
    writer_class: ClassVar[type[RunWriter]] = RunWriter
    #: How many finished runs' artifacts to remember.
    keep_runs: ClassVar[int] = 1000

    def __init__(
        self,
        *,
        name: str | None = None,
        on_error: OnError | None = None,
        threaded: bool = True,
        queue_size: int = 2_000,
        when_full: WhenFull | None = None,
        path_map: Mapping[str, str] | PathMap | None = None,
        min_free: int | str = DEFAULT_MIN_FREE,
    ) -> None:
        self.name = name or self.kind
        self.min_free = parse_size(min_free)
        self.on_error: OnError = on_error or ("abort" if self.saves_data else "warn")
        if self.on_error not in ("abort", "warn"):
            raise ValueError(f"on_error must be 'abort' or 'warn', not {self.on_error!r}")
        self.threaded = threaded
        self.queue_size = int(queue_size)
        self.when_full: WhenFull = when_full or ("block" if self.saves_data else "drop")
        if self.when_full not in ("block", "drop"):
            raise ValueError(f"when_full must be 'block' or 'drop', not {self.when_full!r}")
        self.path_map = path_map if isinstance(path_map, PathMap) else PathMap(dict(path_map or {}))
        self.log = logging.getLogger(f"bluesky_recorders.{self.kind}")
        self._writers: dict[str, RunWriter] = {}
        self._assets: dict[str, AssetIndex] = {}
        self._external_keys: dict[str, tuple[str, ...]] = {}
        self._run_of_descriptor: dict[str, str] = {}
        self._run_of_resource: dict[str, str] = {}
        self._run_of_stream_resource: dict[str, str] = {}
        self._stream_key: dict[str, str] = {}
        # descriptor uid -> (run, the writer's handler of one event, its ``events`` or
        # None): the events of descriptors without external data go straight to it
        self._event_routes: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any], Any]] = {}
        self._failed: set[str] = set()
        self._artifacts: OrderedDict[str, list[str]] = OrderedDict()
        self._closed = False

    # -- public lifecycle ---------------------------------------------------
    def make_writer(self, start: Mapping[str, Any]) -> RunWriter | None:
        """Make the writer for a run, or None to skip the run."""
        return self.writer_class(start, self)

    def preflight_dirs(self, start: Mapping[str, Any]) -> list[Path]:
        """The folders this recorder will write the run into (none for live views)."""
        return []

    def preflight(self, start: Mapping[str, Any]) -> None:
        """Check that the run can be written: raise
        :class:`~bluesky_recorders.preflight.PreflightError` naming the folder and the
        cause (not writable, or less than ``min_free`` free) if it cannot."""
        for directory in self.preflight_dirs(start):
            check_directory(directory, min_free=self.min_free, who=self.name)

    @property
    def artifacts(self) -> dict[str, list[str]]:
        """Run uid -> the files written for that run (open runs included)."""
        out = {uid: list(paths) for uid, paths in self._artifacts.items()}
        for uid, writer in self._writers.items():
            out[uid] = list(writer.artifacts)
        return out

    def tick(self) -> None:
        """Let each open run's writer do work due by time (:meth:`RunWriter.tick`)."""
        for run, writer in list(self._writers.items()):
            if run in self._failed:
                continue
            try:
                writer.tick()
            except Exception as err:  # reported like a failure on a document
                self._writer_failed(run, "", {}, err)

    def close(self) -> None:
        """Close every open run's writer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for uid in list(self._writers):
            try:
                self._finish(uid)
            except Exception as err:  # the other runs' files must be closed all the same
                self.log.error("%s: closing run %s failed: %s", self.name, uid, err)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on_error={self.on_error}>"

    # -- routing --------------------------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        """Handle one document, applying this recorder's failure policy.

        Subscribed alone to a RunEngine, an ``abort`` recorder raises (bluesky
        then aborts the run) and a ``warn`` recorder logs and carries on.
        """
        try:
            self.process(name, doc)
        except RecorderError as err:
            if self.on_error == "abort":
                raise
            self.log.warning("%s (policy 'warn': the run goes on)", err)

    def process(self, name: str, doc: Mapping[str, Any]) -> None:
        """Handle one document; any failure is raised as a RecorderError."""
        if name == "event":  # the fast path: what _run_of and _route do for such events
            try:
                route = self._event_routes.get(doc.get("descriptor"))  # type: ignore[arg-type]
            except (AttributeError, TypeError):  # not a mapping: said below
                route = None
            if route is not None:
                run, handle, _ = route
                try:
                    handle(doc)
                except Exception as err:
                    self._writer_failed(run, name, doc, err)
                return
        if name not in DOCUMENT_NAMES:
            raise RecorderError(
                self.name,
                cause=DocumentError(f"unknown document name {name!r}", name=name),
                doc_name=name,
                doc_uid=_uid(doc),
            )
        try:
            if not isinstance(doc, Mapping):
                raise DocumentError(
                    f"a {name} document must be a mapping, not {type(doc).__name__}", name=name
                )
            run = self._run_of(name, doc)
        except DocumentError as err:
            raise RecorderError(self.name, cause=err, doc_name=name, doc_uid=_uid(doc)) from err
        except (KeyError, TypeError, AttributeError) as err:  # a required key missing or wrong
            what = f"has no key {err}" if isinstance(err, KeyError) else f"is malformed: {err}"
            cause = DocumentError(f"{name} document {_uid(doc) or '(no uid)'} {what}", name=name)
            raise RecorderError(self.name, cause=cause, doc_name=name, doc_uid=_uid(doc)) from err
        if run is None or run in self._failed:
            if name == "stop" and run is not None:
                self._forget(run)
            return
        writer = self._writers.get(run)
        if writer is None:
            return
        try:
            self._route(writer, run, name, doc)
        except Exception as err:  # any failure of a writer is reported the same way
            self._writer_failed(run, name, doc, err)
        if name == "stop":
            self._finish(run)
            self._forget(run)

    def process_events(self, docs: Sequence[Mapping[str, Any]]) -> list[RecorderError]:
        """``process("event", doc)`` for each of ``docs`` in order; the failures are
        returned, not raised, so that every event is handled as it would be alone.

        Consecutive events of one descriptor go to the writer's
        :meth:`RunWriter.events` in one call when it takes them (a RecorderSet's
        thread hands over what queued up while it was busy: measured 30 % less CPU
        per event for the NeXus writer, see decision 0009). A failure there names
        the last event of the call, after which the events were written.
        """
        errors: list[RecorderError] = []
        routes = self._event_routes
        i, n = 0, len(docs)
        while i < n:
            doc = docs[i]
            desc = _descriptor_of(doc)
            try:
                route = routes.get(desc)
            except TypeError:  # not hashable: process() says what is wrong
                route = None
            j = i + 1
            if route is not None and route[2] is not None:
                while j < n and _descriptor_of(docs[j]) == desc:
                    j += 1
            if j - i > 1:
                run, _, events = route  # type: ignore[misc]
                try:
                    taken = events(docs[i:j])
                except Exception as err:
                    try:
                        self._writer_failed(run, "event", docs[j - 1], err)
                    except RecorderError as failure:
                        errors.append(failure)
                    i = j
                    continue
                if taken:
                    i = j
                    continue
            for one in docs[i:j]:
                try:
                    self.process("event", one)
                except RecorderError as err:
                    errors.append(err)
            i = j
        return errors

    def _writer_failed(self, run: str, name: str, doc: Mapping[str, Any], err: Exception) -> None:
        """The run's writer failed on a document: close it, skip the rest of the run, raise."""
        self._failed.add(run)
        writer = self._writers.get(run)
        path = writer.path if writer is not None else ""
        if writer is not None:
            writer.failure = err
        try:
            self._finish(run)
        except Exception as close_err:  # the first failure is the one to report
            err.add_note(f"closing {path or 'the run'} then failed too: {close_err}")
        if name == "stop":
            self._forget(run)
        failure = RecorderError(
            self.name, cause=err, run_uid=run, path=path, doc_name=name, doc_uid=_uid(doc)
        )
        note = disk_full_note(err, path)
        if note:  # in the message itself: it is what gets logged and put in the stop's reason
            failure.args = (f"{failure.args[0]} ({note})",)
        raise failure from err

    def _run_of(self, name: str, doc: Mapping[str, Any]) -> str | None:
        """Which run a document belongs to (None: a run this recorder skips)."""
        if name == "start":
            uid = doc["uid"]
            if not isinstance(uid, str) or not uid:
                raise DocumentError(f"start document uid {uid!r} is not a non-empty string")
            if uid in self._writers:
                raise DocumentError(f"a second start document with uid {uid}", name=name, uid=uid)
            try:
                writer = self.make_writer(doc)
            except Exception as err:  # the run is lost for this recorder: say so once
                self._failed.add(uid)
                if isinstance(err, RecorderError):
                    raise
                raise RecorderError(
                    self.name,
                    cause=err,
                    run_uid=uid,
                    path=getattr(err, "filename", "") or "",
                    doc_name=name,
                    doc_uid=uid,
                ) from err
            if writer is None:  # this recorder skips the run: ignore its documents quietly
                self._failed.add(uid)
                return None
            self._writers[uid] = writer
            self._assets[uid] = AssetIndex(self.path_map)
            return uid
        if name == "descriptor":
            run = doc["run_start"]
            self._known_run(run, name, doc)
            self._run_of_descriptor[doc["uid"]] = run
            return run
        if name in ("event", "event_page"):
            desc = doc["descriptor"]
            try:
                return self._run_of_descriptor[desc]
            except KeyError:
                raise DocumentError(
                    f"{name} {_uid(doc)} arrived before its descriptor {desc}",
                    name=name,
                    uid=_uid(doc),
                ) from None
        if name == "resource":
            run = doc.get("run_start")
            if run is None:  # old resources carry no run_start: the open run owns it
                if len(self._writers) != 1:
                    raise DocumentError(
                        f"resource {doc['uid']} has no run_start and {len(self._writers)} runs "
                        "are open",
                        name=name,
                        uid=doc["uid"],
                    )
                run = next(iter(self._writers))
            self._known_run(run, name, doc)
            self._run_of_resource[doc["uid"]] = run
            return run
        if name in ("datum", "datum_page"):
            res = doc["resource"]
            try:
                return self._run_of_resource[res]
            except KeyError:
                raise DocumentError(
                    f"{name} {_uid(doc)} refers to resource {res}, which was not received",
                    name=name,
                    uid=_uid(doc),
                ) from None
        if name == "stream_resource":
            run = doc["run_start"]
            self._known_run(run, name, doc)
            self._run_of_stream_resource[doc["uid"]] = run
            if doc.get("data_key"):
                self._stream_key[doc["uid"]] = doc["data_key"]
            return run
        if name == "stream_datum":
            sres = doc["stream_resource"]
            try:
                return self._run_of_stream_resource[sres]
            except KeyError:
                raise DocumentError(
                    f"stream_datum {_uid(doc)} refers to stream_resource {sres}, "
                    "which was not received",
                    name=name,
                    uid=_uid(doc),
                ) from None
        # stop
        run = doc["run_start"]
        if run not in self._writers and run not in self._failed:
            self.log.warning(
                "%s: stop document %s for a run it never started", self.name, doc["uid"]
            )
            return None
        return run

    def _known_run(self, run: str, name: str, doc: Mapping[str, Any]) -> None:
        if run not in self._writers and run not in self._failed:
            raise DocumentError(
                f"{name} {_uid(doc)} refers to run {run}, whose start document was not received",
                name=name,
                uid=_uid(doc),
            )

    def _route(self, writer: RunWriter, run: str, name: str, doc: Mapping[str, Any]) -> None:
        assets = self._assets[run]
        if name == "descriptor":
            writer.descriptors[doc["uid"]] = doc
            self._external_keys[doc["uid"]] = tuple(
                k
                for k, v in doc["data_keys"].items()
                if v.get("external") and not str(v.get("external", "")).startswith("STREAM:")
            )
        elif name == "resource":
            assets.resource(doc)
        elif name == "datum":
            assets.datum(doc)
        elif name == "datum_page":
            assets.datum_page(doc)
        elif name == "stream_resource":
            assets.stream_resource(doc)
        elif name == "stream_datum":
            key = self._stream_key.get(doc["stream_resource"], "")
            writer.external(assets.for_stream_datum(doc, key))
        elif name in ("event", "event_page"):
            keys = self._external_keys.get(doc["descriptor"], ())
            if keys:
                self._external_for_events(writer, assets, name, doc, keys)
        writer(name, doc)
        if name == "descriptor" and not self._external_keys[doc["uid"]]:
            events = writer.events if type(writer).events is not RunWriter.events else None
            self._event_routes[doc["uid"]] = (run, _event_handler(writer), events)

    @staticmethod
    def _external_for_events(
        writer: RunWriter,
        assets: AssetIndex,
        name: str,
        doc: Mapping[str, Any],
        keys: tuple[str, ...],
    ) -> None:
        desc = doc["descriptor"]
        filled = doc.get("filled", {})
        if name == "event":
            for key in keys:
                if key in doc["data"] and not _is_filled(filled.get(key)):
                    writer.external(assets.for_datum(desc, key, doc["seq_num"], doc["data"][key]))
            return
        seq_nums = doc["seq_num"]
        for key in keys:
            values = doc["data"].get(key)
            if values is None:
                continue
            flags = filled.get(key, [False] * len(values))
            for seq, value, flag in zip(seq_nums, values, flags, strict=False):
                if not _is_filled(flag):
                    writer.external(assets.for_datum(desc, key, seq, value))

    def _finish(self, run: str) -> None:
        """Close the run's writer (once) and keep its artifacts."""
        writer = self._writers.pop(run, None)
        self._assets.pop(run, None)
        for desc in [d for d, (r, *_) in self._event_routes.items() if r == run]:
            del self._event_routes[desc]
        if writer is None:
            return
        try:
            writer.close()
        finally:
            self._artifacts[run] = list(writer.artifacts)
            while len(self._artifacts) > self.keep_runs:
                self._artifacts.popitem(last=False)

    def _forget(self, run: str) -> None:
        """Drop the run's routing tables (at its stop)."""
        self._failed.discard(run)
        for table in (self._run_of_descriptor, self._run_of_resource, self._run_of_stream_resource):
            for key in [k for k, v in table.items() if v == run]:
                del table[key]
                self._external_keys.pop(key, None)
                self._stream_key.pop(key, None)


def _event_handler(writer: RunWriter) -> Callable[[Mapping[str, Any]], Any]:
    """What ``writer("event", doc)`` amounts to, without event-model's dispatch when the
    writer implements ``event`` (a writer implementing only ``event_page`` is given
    the event packed into a page, by that dispatch)."""
    if type(writer).event is event_model.DocumentRouter.event:
        return lambda doc: writer("event", doc)
    event = writer.event

    def handle(doc: Mapping[str, Any]) -> Any:
        if event(doc) is NotImplemented:  # what DocumentRouter does then
            writer.event_page(event_model.pack_event_page(doc))

    return handle


def _descriptor_of(doc: object) -> Any:
    """An event's descriptor uid (None for anything that is not a mapping with one)."""
    try:
        return doc.get("descriptor")  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def _is_filled(flag: object) -> bool:
    """``filled[key]`` is False while the event holds a datum id instead of the data."""
    return bool(flag)


def _uid(doc: Mapping[str, Any]) -> str:
    """The uid to name in a message (the first one of a page)."""
    if not isinstance(doc, Mapping):
        return ""
    for key in ("uid", "datum_id"):
        if key in doc:
            value = doc[key]
            if isinstance(value, list):
                return str(value[0]) if value else ""
            return str(value)
    return ""


class FileRecorder(Recorder):
    """A recorder writing files under a data root: the options every such recorder has.

    data_root
        Root of the data directories (required); a run's files go into its experiment
        directory (:func:`~bluesky_recorders.paths.run_directory`).
    policy
        The :class:`~bluesky_recorders.paths.DirectoryPolicy` creating directories and
        files (create-only, group and modes).
    file_template
        File name from the start document (default: the class's ``default_template``).
    """

    saves_data = True
    default_template: ClassVar[str] = "{scan_id:05d}_{plan_name}_{uid:.8}"

    def __init__(
        self,
        *,
        data_root: str | os.PathLike[str] | None = None,
        policy: DirectoryPolicy | None = None,
        file_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if data_root is None:
            raise ValueError(f"a {self.kind} recorder needs a data_root")
        self.data_root = Path(os.path.expanduser(os.fspath(data_root))).absolute()
        self.policy = policy or DirectoryPolicy()
        self.file_template = self.default_template if file_template is None else file_template

    def preflight_dirs(self, start: Mapping[str, Any]) -> list[Path]:
        """The run's experiment folder (:func:`~bluesky_recorders.paths.run_directory`)."""
        return [run_directory(self.data_root, start, path_map=self.path_map)]

    def make_writer(self, start: Mapping[str, Any]) -> RunWriter | None:
        """Check the run's folder (:meth:`preflight`), then make the writer."""
        self.preflight(start)
        return super().make_writer(start)
