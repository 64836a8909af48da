"""bluesky-recorders: recorders for the bluesky document stream.

Recorders are callbacks that write, while a run goes on, what each audience
needs: a console table, a databroker catalog, NeXus and SPEC files, a live
feed with its web page, shared memory and end-of-run plots. They share one
lifecycle (:class:`Recorder`), run together behind a :class:`RecorderSet` subscribed to
the RunEngine, and are configured in ``recorders/*.toml``
(:func:`load_recorder_set`).

Heavy recorders are imported on first use: ``import bluesky_recorders`` does
not import tiled.
"""

from ._lazy import lazy_exports
from .config import RECORDER_KINDS, load_config, load_recorder_set
from .errors import (
    BeamlineError,
    BsrecError,
    ConfigError,
    DocumentError,
    DrainTimeoutError,
    RecorderError,
)
from .external import AssetIndex, ExternalFrames, PathMap
from .paths import (
    DirectoryPolicy,
    PathExistsError,
    PathPolicyError,
    file_name,
    run_directory,
    safe_name,
)
from .preflight import PreflightError, install_preflight
from .recorder import FileRecorder, Recorder, RunWriter
from .recorder_set import RecorderSet
from .runlog import RunLog, RunRecord

__version__ = "0.1.0"

_LAZY = {
    "ConsoleRecorder": "console",
    "CatalogRecorder": "catalog",
    "NexusRecorder": "nexus",
    "SpecRecorder": "spec",
    "JsonlRecorder": "jsonl",
    "CsvRecorder": "csv_recorder",
    "FeedRecorder": "feed",
    "FeedServerError": "feed_server",
    "EndOfRunPlotsRecorder": "plots",
    "SharedMemoryRecorder": "shm",
    "SegmentError": "shm",
    "SegmentInUseError": "shm",
    "SegmentNotFoundError": "shm",
    "LayoutError": "shm_layout",
    "read_nexus_run": "nexus_export",
    "load_documents": "jsonl",
    "export": "export",
    "open_catalog": "catalog",
    "close_catalog": "catalog",
    "setup_session": "session",
    "MetadataService": "metadata",
    "attach_metadata": "metadata",
    "MetadataUnavailableError": "metadata",
    "MetadataValueError": "metadata",
    "ScheduleError": "metadata",
    "ScheduleAPIError": "metadata.schedule",
}

__all__ = [
    "RECORDER_KINDS",
    "AssetIndex",
    "BeamlineError",
    "BsrecError",
    "CatalogRecorder",
    "ConfigError",
    "ConsoleRecorder",
    "DocumentError",
    "CsvRecorder",
    "DirectoryPolicy",
    "DrainTimeoutError",
    "EndOfRunPlotsRecorder",
    "ExternalFrames",
    "FeedRecorder",
    "FeedServerError",
    "FileRecorder",
    "JsonlRecorder",
    "LayoutError",
    "MetadataService",
    "MetadataUnavailableError",
    "MetadataValueError",
    "NexusRecorder",
    "PathExistsError",
    "PathMap",
    "PathPolicyError",
    "PreflightError",
    "Recorder",
    "RecorderError",
    "RecorderSet",
    "RunLog",
    "RunRecord",
    "RunWriter",
    "ScheduleAPIError",
    "ScheduleError",
    "SegmentError",
    "SegmentInUseError",
    "SegmentNotFoundError",
    "SharedMemoryRecorder",
    "SpecRecorder",
    "attach_metadata",
    "close_catalog",
    "export",
    "file_name",
    "install_preflight",
    "load_documents",
    "load_config",
    "load_recorder_set",
    "open_catalog",
    "read_nexus_run",
    "run_directory",
    "safe_name",
    "setup_session",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
