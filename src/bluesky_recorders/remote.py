"""Run a recorder set in another process, fed by bluesky's 0MQ proxy.

::

    RE --Publisher--> bluesky-0MQ-proxy --> bsrec record --zmq HOST:PORT --> RecorderSet

The same recorder objects as in the session; only the transport changes. A
recorder failure cannot abort a run that another process drives: here it is
logged loudly (with the recorder, the file and the cause) and the process
goes on with the next document. SIGTERM and SIGINT stop it cleanly: queued
documents are written and open files closed.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from .errors import BsrecError

__all__ = ["record_from_zmq"]

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

    def guarded(name: str, doc: dict[str, Any]) -> None:
        nonlocal failures
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


def _is_cancel(err: BaseException) -> bool:
    import asyncio

    return isinstance(err, asyncio.CancelledError | KeyboardInterrupt)
