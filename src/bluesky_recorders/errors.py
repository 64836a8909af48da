"""The exceptions bluesky-recorders raises, small enough to draw here::

    BsrecError
     ├── ConfigError          a recorders/*.toml file or an option is wrong
     ├── DocumentError        a document breaks the schema or the run's order
     ├── RecorderError        a recorder failed while handling a document
     │    └── DrainTimeoutError    a recorder did not finish its run in time
     ├── BeamlineError        an EPICS device or IOC cannot be reached
     ├── PreflightError       a run cannot be recorded: refused before it starts (preflight;
     │                        also OSError)
     ├── FeedServerError      the live feed's server cannot start (feed_server)
     ├── SegmentError         a shared-memory segment cannot be made or read (shm)
     │    ├── SegmentNotFoundError
     │    └── SegmentInUseError
     └── LayoutError          a segment's bytes are not our layout (shm_layout; also ValueError)

Every message names what the user needs to act: the recorder, the file, the
document (name and uid) and the cause.
"""

from __future__ import annotations

__all__ = [
    "BeamlineError",
    "BsrecError",
    "ConfigError",
    "DocumentError",
    "DrainTimeoutError",
    "RecorderError",
]


class BsrecError(Exception):
    """Base class of every error raised by bluesky-recorders."""


class ConfigError(BsrecError):
    """A recorder-set file or a recorder option is wrong (file, line and key are named)."""


class DocumentError(BsrecError):
    """A document breaks the event-model schema or arrives out of order."""

    def __init__(self, message: str, *, name: str = "", uid: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.uid = uid


class RecorderError(BsrecError):
    """A recorder failed while handling a document.

    Attributes name the recorder, the run, the file it was writing (if any),
    the document and the original exception (also chained as ``__cause__``).
    """

    def __init__(
        self,
        recorder: str,
        *,
        cause: BaseException | str,
        run_uid: str = "",
        path: str = "",
        doc_name: str = "",
        doc_uid: str = "",
    ) -> None:
        self.recorder = recorder
        self.cause = cause
        self.run_uid = run_uid
        self.path = path
        self.doc_name = doc_name
        self.doc_uid = doc_uid
        where = f" writing {path}" if path else ""
        doc = f" on {doc_name} document {doc_uid}" if doc_name else ""
        run = f" (run {run_uid})" if run_uid else ""
        reason = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else cause
        super().__init__(f"recorder {recorder!r} failed{where}{doc}{run}: {reason}")


class DrainTimeoutError(RecorderError):
    """A recorder did not finish writing its run within the drain timeout."""


class BeamlineError(BsrecError, ConnectionError):
    """An EPICS device or IOC cannot be reached (the PVs and address list are named)."""
