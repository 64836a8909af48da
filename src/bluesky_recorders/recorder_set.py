"""Fan the document stream out to recorders, each on its own thread.

::

    RE --(name, doc)--> RecorderSet --> queue --> thread --> recorder A
                                   \\--> queue --> thread --> recorder B
                                   \\--> recorder C (inline)

The RunEngine thread pays for the checks of rare documents and one queue
``put`` per recorder. The stop document drains every queue, so when
``RE(...)`` returns each recorder has finished the run. A failure of a
recorder whose policy is ``abort`` is raised on the RunEngine thread at its
next document, once that document is handed to every recorder (which makes
bluesky abort the run, with the message as the stop document's reason) or at
the stop; ``warn`` failures are only logged.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import event_model
import jsonschema
import jsonschema_rs

from .errors import DocumentError, DrainTimeoutError, RecorderError
from .paths import PathPolicyError
from .preflight import PreflightError, check_directory
from .recorder import Recorder, RunWriter
from .runlog import RunLog

__all__ = ["RecorderSet"]

log = logging.getLogger("bluesky_recorders.recorder_set")

#: Documents checked against the event-model schema on the calling thread:
#: they are rare, and a bad one must be refused before any recorder sees it.
_VALIDATED = frozenset({"start", "descriptor", "stop", "resource", "stream_resource"})
#: Documents never dropped, even by a recorder whose queue may drop.
_NEVER_DROPPED = frozenset({"start", "descriptor", "stop", "resource", "stream_resource"})
_CLOSE = object()
#: Seconds an idle recorder thread sleeps before looking at its queue again.
_POLL_INTERVAL = 0.01
#: Most events a recorder's thread takes from its queue in one call (process_events).
_EVENT_BATCH = 256
#: Seconds the stop document waits, at most, for a recorder whose policy is 'warn'.
_LIVE_DRAIN_LIMIT = 10.0


def _weight(name: str, doc: Mapping[str, Any]) -> int:
    """A document's share of a queue: its rows for pages, else 1."""
    if name == "event_page":
        return max(1, len(doc.get("seq_num", ())))
    if name == "datum_page":
        return max(1, len(doc.get("datum_id", ())))
    return 1


class _Worker:
    """A recorder's thread and its bounded queue.

    The queue is a deque the thread polls: waking a thread for every document
    costs the RunEngine thread about 30 µs of CPU (measured here: a futex wake
    on a virtual machine), an append about 1 µs. The thread is woken only when
    it is needed now: a stop to drain, a full queue, closing.

    A producer that finds the queue full waits until it is down to half
    (``resume``), not for a single free place: else the two threads would hand
    the lock to each other for every document once the recorder is the slower.
    """

    def __init__(self, recorder: Recorder, report: Any, poll: float = _POLL_INTERVAL) -> None:
        self.recorder = recorder
        self.maxsize = max(1, recorder.queue_size)
        self.resume = self.maxsize // 2  # a full queue takes documents again at this size
        self.dropped = 0
        self.poll = poll
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        # the queue's size in rows (a page counts its rows), so that memory is bounded;
        # every document counts at least one, so they also tell when all are handled
        self._rows_in = 0  # written by the producer only
        self._rows_out = 0  # written by this worker's thread only
        self._waiting = False  # a producer waits for progress (drain or room)
        self._report = report
        self.thread = threading.Thread(
            target=self._loop, name=f"bsrec-{recorder.name}", daemon=True
        )
        self.thread.start()

    @property
    def pending(self) -> int:
        """Documents queued, not yet handled (the one being handled is not counted)."""
        return len(self._items)

    def put_event(self, doc: Mapping[str, Any]) -> None:
        """:meth:`put` for an event: the common case, in short."""
        if self._rows_in - self._rows_out < self.maxsize:
            self._items.append(("event", doc, 1))
            self._rows_in += 1
        else:
            self.put("event", doc)

    def put(self, name: str, doc: Mapping[str, Any]) -> None:
        if self._rows_in - self._rows_out >= self.maxsize:
            if self.recorder.when_full == "drop" and name not in _NEVER_DROPPED:
                self.dropped += 1
                return
            self._wait_for(lambda: self._rows_in - self._rows_out <= self.resume, None)
            full = True
        else:
            full = False
        weight = 1 if name == "event" else _weight(name, doc)
        self._items.append((name, doc, weight))
        self._rows_in += weight
        if full:  # the thread may have gone to sleep meanwhile: it has work now
            self._wake.set()

    def _loop(self) -> None:
        items = self._items
        process = self.recorder.process
        process_events = self.recorder.process_events
        # writers with work due by time (a NeXus flush) are called when the queue is empty
        ticks = type(self.recorder).writer_class.tick is not RunWriter.tick
        # writers taking the events that queued up in one call get them so (process_events)
        batches = type(self.recorder).writer_class.events is not RunWriter.events
        while True:
            self._wake.wait(self.poll)
            self._wake.clear()
            if ticks and not items:
                try:
                    self.recorder.tick()
                except RecorderError as err:
                    self._report(self.recorder, err)
            while items:
                item = items.popleft()
                if item is _CLOSE:
                    self._progress()
                    return
                name, doc, weight = item
                if (
                    batches
                    and name == "event"
                    and items
                    and items[0] is not _CLOSE
                    and items[0][0] == "event"
                ):
                    # the events that queued up meanwhile, in one call (see process_events)
                    docs = [doc]
                    while items and len(docs) < _EVENT_BATCH:
                        nxt = items[0]
                        if nxt is _CLOSE or nxt[0] != "event":
                            break
                        docs.append(items.popleft()[1])
                    try:
                        for err in process_events(docs):
                            self._report(self.recorder, err)
                    except Exception as err:  # a bug in a recorder must not kill its thread
                        self._report(
                            self.recorder,
                            RecorderError(self.recorder.name, cause=err, doc_name=name),
                        )
                    weight = len(docs)
                else:
                    try:
                        process(name, doc)
                    except RecorderError as err:
                        self._report(self.recorder, err)
                    except Exception as err:  # a bug in a recorder must not kill its thread
                        self._report(
                            self.recorder,
                            RecorderError(self.recorder.name, cause=err, doc_name=name),
                        )
                self._rows_out += weight
                # a producer waiting for room is woken once, as the queue gets down to
                # `resume` (a producer starting to wait later finds the room itself)
                if self._waiting and 0 <= self.resume - (self._rows_in - self._rows_out) < weight:
                    self._progress()
            self._progress()

    def _progress(self) -> None:
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def _wait_for(self, predicate: Any, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiting = True
            try:
                while not predicate():
                    self._wake.set()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(min(self.poll, remaining) if remaining else self.poll)
            finally:
                self._waiting = False
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until every queued document is handled; False on timeout."""
        target = self._rows_in
        return self._wait_for(lambda: self._rows_out >= target, timeout)

    def stop(self, timeout: float) -> None:
        self._items.append(_CLOSE)
        self._wake.set()
        self.thread.join(timeout)


class RecorderSet:
    """Subscribe this to the RunEngine: it fans documents out to recorders.

    Parameters
    ----------
    recorders
        The recorders (see :func:`bluesky_recorders.load_recorder_set` to
        build them from ``recorders/*.toml``).
    run_log
        Where each run and the files every recorder wrote for it are listed
        (what ``bsrec runs`` shows); None for no log.
    validate
        Check start, descriptor, stop, resource and stream_resource documents
        against the event-model schemas before any recorder sees them.
    drain_timeout
        Seconds the stop document waits for each recorder to finish the run.
    """

    def __init__(
        self,
        recorders: Iterable[Recorder] = (),
        *,
        run_log: RunLog | None = None,
        validate: bool = True,
        drain_timeout: float = 120.0,
    ) -> None:
        self.run_log = run_log
        self.validate = validate
        self.drain_timeout = float(drain_timeout)
        self._recorders: list[Recorder] = []
        self._workers: dict[str, _Worker] = {}
        # each recorder with its worker (None: called inline), in order
        self._targets: list[tuple[Recorder, _Worker | None]] = []
        # what an event is handed to when every recorder has a thread (else None)
        self._event_puts: tuple[Any, ...] | None = ()
        self._failures: list[RecorderError] = []
        self._lock = threading.Lock()
        self._open_runs: dict[str, Mapping[str, Any]] = {}
        # Runs whose start was refused, and their descriptors: their documents are skipped.
        self._refused: set[str] = set()
        self._closed = False
        for recorder in recorders:
            self.add(recorder)

    # -- membership -------------------------------------------------------
    def add(self, recorder: Recorder) -> Recorder:
        """Add a recorder (names must be unique); returns it."""
        if any(r.name == recorder.name for r in self._recorders):
            raise ValueError(f"a recorder named {recorder.name!r} is already in this set")
        self._recorders.append(recorder)
        if recorder.threaded:
            self._workers[recorder.name] = _Worker(recorder, self._report)
        self._targets.append((recorder, self._workers.get(recorder.name)))
        if all(worker is not None for _, worker in self._targets):
            self._event_puts = tuple(worker.put_event for _, worker in self._targets if worker)
        else:
            self._event_puts = None
        return recorder

    @property
    def recorders(self) -> dict[str, Recorder]:
        return {r.name: r for r in self._recorders}

    def __getitem__(self, name: str) -> Recorder:
        return self.recorders[name]

    def artifacts(self, run_uid: str) -> dict[str, list[str]]:
        """Recorder name -> files it wrote for the run."""
        out = {}
        for r in self._recorders:
            paths = r.artifacts.get(run_uid)
            if paths:
                out[r.name] = paths
        return out

    def preflight(self, start: Mapping[str, Any]) -> None:
        """Check, before a run starts, that every recorder can write it.

        ``start`` is the start document to come (its uid may be a placeholder).
        Raises one :class:`~bluesky_recorders.preflight.PreflightError` naming every
        recorder that cannot (folder not writable, less free space than its
        ``min_free``), and the run log's folder. :func:`install_preflight
        <bluesky_recorders.preflight.install_preflight>` calls it before ``open_run``.
        """
        problems: list[str] = []
        first: OSError | None = None
        for recorder in self._recorders:
            try:
                recorder.preflight(start)
            except (OSError, PathPolicyError) as err:
                problems.append(str(err))
                first = first or (err if isinstance(err, OSError) else None)
        if self.run_log is not None:
            try:
                check_directory(Path(self.run_log.path).parent, min_free=0, who="run log")
            except PreflightError as err:
                problems.append(str(err))
                first = first or err
        if problems:
            code = first.errno if first is not None and first.errno else errno.EACCES
            raise PreflightError(code, "run refused before it started: " + "; ".join(problems))

    # -- the document stream ------------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "event" and not (self._closed or self._failures or self._refused):
            # the common case, in short: no failure to raise, no refused run, no checks
            puts = self._event_puts
            if puts is None:
                self._fan_out(name, doc)
            else:
                for put in puts:
                    put(doc)
            if self._failures:  # an inline recorder failed on this event
                self._raise_pending(name, doc)
            return
        if self._closed:
            raise RuntimeError("this RecorderSet is closed")
        if not isinstance(doc, Mapping):
            raise DocumentError(
                f"a {name} document must be a mapping, not {type(doc).__name__}", name=name
            )
        if self._refused and self._belongs_to_refused(name, doc):
            self._raise_pending(name, doc)
            return
        if self.validate and name in _VALIDATED:
            try:
                _validate(name, doc)
            except DocumentError:
                if name == "start" and isinstance(doc.get("uid"), str):
                    self._refused.add(doc["uid"])
                raise
        if name == "start":
            self._open_runs[doc["uid"]] = doc
            if self.run_log is not None:
                self._log_call(self.run_log.started, doc)
        self._fan_out(name, doc)
        if name == "stop":
            self._end_run(doc)
        else:
            # after the fan-out: the RunEngine counts this document as emitted, so every
            # other recorder must have it before the failure aborts the run
            self._raise_pending(name, doc)

    def _fan_out(self, name: str, doc: Mapping[str, Any]) -> None:
        """Queue the document for each threaded recorder; hand it to each inline one."""
        for recorder, worker in self._targets:
            if worker is not None:
                worker.put(name, doc)
            else:
                try:
                    recorder.process(name, doc)
                except RecorderError as err:
                    self._report(recorder, err)

    def _belongs_to_refused(self, name: str, doc: Mapping[str, Any]) -> bool:
        if name in ("event", "event_page"):
            return doc.get("descriptor") in self._refused
        run = doc.get("run_start")
        if run not in self._refused:
            return False
        if name == "descriptor":
            self._refused.add(doc["uid"])
        elif name == "stop":
            self._refused.discard(run)
        return True

    def _end_run(self, stop: Mapping[str, Any]) -> None:
        run = stop["run_start"]
        for worker in self._workers.values():
            # Live views (policy 'warn') never hold the RunEngine for long.
            limit = (
                self.drain_timeout
                if worker.recorder.on_error == "abort"
                else min(self.drain_timeout, _LIVE_DRAIN_LIMIT)
            )
            if not worker.drain(limit):
                self._report(
                    worker.recorder,
                    DrainTimeoutError(
                        worker.recorder.name,
                        cause=f"did not finish the run within {limit:g} s "
                        f"({worker.pending} documents not yet written); it goes on writing",
                        run_uid=run,
                    ),
                )
            if worker.dropped:
                log.warning(
                    "%s: dropped %d documents because its queue was full",
                    worker.recorder.name,
                    worker.dropped,
                )
                worker.dropped = 0
        start = self._open_runs.pop(run, None)
        if self.run_log is not None and start is not None:
            self._log_call(self.run_log.stopped, start, stop, self.artifacts(run))
        self._raise_pending("stop", stop)

    def _log_call(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except Exception as err:  # the run log is a convenience: never stop a run for it
            log.warning("could not update the run log %s: %s", self.run_log, err)

    def _report(self, recorder: Recorder, err: RecorderError) -> None:
        if recorder.on_error == "abort":
            log.error("%s", err)
            with self._lock:
                self._failures.append(err)
        else:
            log.warning("%s (policy 'warn': the run goes on)", err)

    def _raise_pending(self, name: str, doc: Mapping[str, Any]) -> None:
        if not self._failures:
            return
        with self._lock:
            failures, self._failures = self._failures, []
        if name == "start":
            # failures of earlier runs, or of documents of no run (a run whose stop never
            # came, a stray event), were logged when they happened: they must not abort
            # the run that starts now
            new = doc.get("uid") if isinstance(doc, Mapping) else None
            failures = [f for f in failures if f.run_uid == new]
            if not failures:
                return
        first = failures[0]
        if len(failures) > 1:
            more = "; ".join(str(f) for f in failures[1:])
            first.add_note(f"also: {more}")
        raise first

    # -- lifecycle ------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Drain and stop every thread, then close every recorder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        timeout = self.drain_timeout if timeout is None else timeout
        for worker in self._workers.values():
            worker.drain(timeout)
            worker.stop(timeout)
        for recorder in self._recorders:
            try:
                recorder.close()
            except Exception as err:
                log.error("closing recorder %r failed: %s", recorder.name, err)

    def __enter__(self) -> RecorderSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(r.name for r in self._recorders)
        return f"<RecorderSet [{names}]>"


@functools.cache
def _fast_validator(name: str) -> Any:
    """A compiled (jsonschema-rs) validator of event-model's schema for ``name``."""
    schema = event_model.schema_validators[event_model.DocumentNames[name]].schema
    return jsonschema_rs.validator_for(schema)


def _validate(name: str, doc: Mapping[str, Any]) -> None:
    """Refuse a document that breaks event-model's schema. jsonschema-rs answers first
    (a descriptor: ~0.02 ms instead of ~4 ms); anything it does not pass (a broken
    document, or values it cannot read as JSON: tuples, numpy arrays, which
    event-model's own validator accepts as arrays) goes to event-model's validator,
    which decides and says what is wrong."""
    try:
        if _fast_validator(name).is_valid(doc):
            return
    except Exception:  # a value it cannot convert: event-model decides
        pass
    try:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    except jsonschema.ValidationError as err:
        uid = doc.get("uid", "") if isinstance(doc, Mapping) else ""
        path = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise DocumentError(
            f"{name} document {uid or '(no uid)'} breaks the event-model schema at {path}: "
            f"{_schema_rule(err)}",
            name=name,
            uid=str(uid),
        ) from None


def _schema_rule(err: jsonschema.ValidationError) -> str:
    """The rule a value breaks, without quoting the value (it may be an e-mail address,
    and these messages are logged)."""
    if err.validator in ("required", "additionalProperties"):
        return err.message  # names keys, never values
    return (
        f"a value of type {type(err.instance).__name__} breaks the rule "
        f"{err.validator}: {err.validator_value!r}"
    )
