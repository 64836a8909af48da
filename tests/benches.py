"""The scripts of benchmarks/ imported in tests (they are scripts, not a package)."""

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def bench_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` as a module, with benchmarks/ on sys.path meanwhile."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
