"""Run a recorder set in another process, fed by bluesky's 0MQ proxy.

::

    RE --Publisher--> bluesky-0MQ-proxy --> bsrec record --zmq HOST:PORT --> RecorderSet

The same recorder objects as in the session; only the transport changes. A
recorder failure cannot abort a run that another process drives: here it is
logged loudly (with the recorder, the file and the cause) and the process
goes on with the next document. SIGTERM and SIGINT stop it cleanly: queued
documents are written and open files closed.

A process started (or restarted) while a run goes on receives that run's later
documents without its start document: they are skipped (:class:`JoinedMidRun`), with
a warning when skipping begins and one naming the run at its stop, and the next run
is recorded whole.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

from .errors import BsrecError

__all__ = ["JoinedMidRun", "record_from_zmq"]

log = logging.getLogger("bluesky_recorders.remote")


def record_from_zmq(
    address: str,
    recorder_set: Any,
    *,
    prefix: bytes = b"",
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Feed ``recorder_set`` from the proxy's output ``address`` until SIGTERM/SIGINT.

    Returns the number of recorder failures that were logged.
    """
    from bluesky.callbacks.zmq import RemoteDispatcher

    failures = 0
    joined = JoinedMidRun()

    def guarded(name: str, doc: dict[str, Any]) -> None:
        nonlocal failures
        if not joined.keep(name, doc):
            return
        try:
            recorder_set(name, doc)
        except BsrecError as err:
            failures += 1
            log.error("%s", err)

    dispatcher = RemoteDispatcher(address, prefix=prefix)
    dispatcher.subscribe(guarded)

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the documents already received", signum)
        task = dispatcher._task  # noqa: SLF001 - bluesky offers no public way to stop start()
        if task is not None:
            dispatcher.loop.call_soon_threadsafe(task.cancel)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            dispatcher.loop.call_soon(on_ready)
        try:
            dispatcher.start()
        except BaseException as err:
            if not _is_cancel(err):
                raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        recorder_set.close()
    return failures


#: Documents that name their run only through another document: that document's key.
_PARENT_KEYS = {
    "event": "descriptor",
    "event_page": "descriptor",
    "datum": "resource",
    "datum_page": "resource",
    "stream_datum": "stream_resource",
}


class JoinedMidRun:
    """Tells the documents of a run whose start document this process never received.

    A subscriber that connects while a run goes on (PUB/SUB keeps no history) gets the
    rest of that run without its start and descriptors: every recorder would fail on
    each of those documents (an error per document and recorder, and a failure for the
    exit code). :meth:`keep` is False for them: the descriptors, resources and stop of a
    run whose start was not received here, and the documents that belong to them, or to
    no run at all while none is open here. One warning says that skipping began, one
    names the run at its stop. Anything else goes to the recorders, which report what is
    wrong with it.
    """

    def __init__(self) -> None:
        self._open: set[str] = set()  # runs whose start was received here, not yet stopped
        self._skipped: dict[str, str] = {}  # skipped descriptor/resource uid -> its run
        self._count = 0  # documents skipped since skipping began
        self._warned = False

    def keep(self, name: str, doc: Any) -> bool:
        """Whether the recorders should get the document."""
        if not isinstance(doc, Mapping):
            return True
        if name == "start":
            self._open.add(str(doc.get("uid")))
            self._count, self._warned = 0, False
            return True
        if name in _PARENT_KEYS:
            parent = doc.get(_PARENT_KEYS[name])
            if not isinstance(parent, str):
                return True
            if parent in self._skipped or not self._open:
                self._skip()
                return False
            return True
        run = doc.get("run_start")
        if not isinstance(run, str) or run in self._open:
            if name == "stop":
                self._open.discard(str(run))
            return True
        self._skip()
        if name == "stop":
            log.warning(
                "run %s ended: %d of its documents were skipped (it was going on when this "
                "process subscribed)",
                run,
                self._count,
            )
            self._count, self._warned = 0, False
            for uid in [u for u, r in self._skipped.items() if r == run]:
                del self._skipped[uid]
        elif isinstance(doc.get("uid"), str):
            self._skipped[doc["uid"]] = run
        return False

    def _skip(self) -> None:
        self._count += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "skipping the documents of a run that was going on when this process "
                "subscribed (its start document was not received); the next run is recorded"
            )


def _is_cancel(err: BaseException) -> bool:
    import asyncio

    return isinstance(err, asyncio.CancelledError | KeyboardInterrupt)
