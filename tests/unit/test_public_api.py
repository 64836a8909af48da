"""The flat public API: everything in __all__ resolves, every public module name is exported."""

import importlib
import subprocess
import sys

import bluesky_recorders

MODULES = [
    "paths",
    "metadata.model",
    "metadata.device",
    "metadata.schedule",
    "config",
    "errors",
    "external",
    "recorder",
    "recorder_set",
    "preflight",
    "runlog",
    "console",
    "catalog",
    "nexus",
    "spec",
    "jsonl",
    "csv_recorder",
    "export",
    "feed",
    "feed_messages",
    "feed_server",
    "plots",
    "plots_layout",
    "shm",
    "shm_layout",
]


def test_every_name_in_all_resolves():
    for name in bluesky_recorders.__all__:
        assert getattr(bluesky_recorders, name) is not None, name


def test_every_recorder_error_and_model_class_is_exported():
    """Recorders, errors and the data model are reachable from the top level."""
    missing = []
    for mod in MODULES:
        module = importlib.import_module(f"bluesky_recorders.{mod}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            wanted = isinstance(obj, type) and (
                issubclass(obj, (bluesky_recorders.Recorder, Exception))
                or obj.__module__.endswith((".external", ".runlog", ".recorder_set"))
            )
            if wanted and name not in bluesky_recorders.__all__:
                missing.append(f"{mod}.{name}")
    assert missing == []


def test_import_is_light():
    code = (
        "import sys, bluesky_recorders; "
        "print(any(m == 'tiled' or m.startswith('tiled.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
