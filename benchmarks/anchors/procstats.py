"""What both sides of ``bench_nexus.py`` share: the document file and peak memory.

Standard library only: ``bench_nexus.py`` (our environment) and
``apstools_nxwriter.py`` (the anchor environment, ``.venv-anchors``) both import it.
"""

from __future__ import annotations

import os
import pickle
import resource
from collections.abc import Iterator
from typing import Any

__all__ = ["peak_kb", "read_docs", "reset_peak"]


def read_docs(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(name, doc)`` pairs of a file of pickled pairs, one at a time."""
    with open(path, "rb") as fh:
        while True:
            try:
                yield pickle.load(fh)
            except EOFError:
                return


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> tuple[int, str]:
    """Reset the peak RSS to the current RSS if Linux lets us; (RSS kB, method)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM reset at the baseline, then VmHWM - baseline VmRSS"
    except OSError:
        method = "ru_maxrss after - ru_maxrss before (peak not reset)"
    rss = _status_kb("VmRSS")
    if rss is None or not method.startswith("VmHWM"):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss, method


def peak_kb() -> int:
    """The peak RSS in kB since the last :func:`reset_peak` (VmHWM, else ru_maxrss)."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
