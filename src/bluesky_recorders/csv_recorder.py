"""The CSV recorder: one comma-separated file per stream of each run.

``<run directory>/{scan_id:05d}_{plan_name}_{uid:.8}_{stream}.csv`` with one
header row (``seq_num``, ``time``, then the stream's data keys in descriptor
order) and one row per event, written and flushed as events arrive. Numbers are
written with Python's ``repr`` (round-trips exactly; missing values are empty
cells), strings as they are (quoted by the csv module when needed), arrays as
JSON, and external detector data as ``path:dataset[frame_start:frame_stop]``.
A second descriptor with the same stream name gets its own file (``_2``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from .errors import DocumentError
from .external import ExternalFrames
from .paths import safe_name
from .recorder import FileRecorder, RunWriter

__all__ = ["CsvRecorder", "csv_cell", "frames_reference"]


def csv_cell(value: Any) -> str:
    """One value as a CSV cell (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, default=str)


def frames_reference(frames: ExternalFrames) -> str:
    """Where external data lies, as one cell: ``path:dataset[a:b]`` (``path[a:b]``)."""
    where = f"{frames.path}:{frames.dataset}" if frames.dataset else frames.path
    return f"{where}[{frames.frame_start}:{frames.frame_stop}]"


class _Table:
    def __init__(self, handle: TextIO, keys: Sequence[str]) -> None:
        self.handle = handle
        self.keys = list(keys)
        self.writer = csv.writer(handle, lineterminator="\n")
        self.writer.writerow(["seq_num", "time", *self.keys])
        handle.flush()


class CsvWriter(RunWriter):
    """Writes the streams of one run into CSV files."""

    recorder: CsvRecorder

    def __init__(self, start: Mapping[str, Any], recorder: CsvRecorder) -> None:
        super().__init__(start, recorder)
        self.directory = recorder.policy.prepare_run(
            recorder.data_root, start, path_map=recorder.path_map
        )
        self.stem = recorder.policy.file_name(recorder.file_template, start)
        self.path = str(self.directory)
        self._tables: dict[str, _Table] = {}
        self._names: set[str] = set()
        # (descriptor, key) -> {seq_num: reference}
        self._frames: dict[tuple[str, str], dict[int, str]] = {}

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        base = f"{self.stem}_{safe_name(doc.get('name', 'primary'))}"
        name, n = base, 2
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        uid, keys = doc["uid"], list(doc.get("data_keys", {}))  # a malformed one fails here
        if uid in self._tables:
            raise DocumentError(f"a second descriptor with uid {uid}", name="descriptor", uid=uid)
        path = self.directory / f"{name}.csv"
        handle = self.recorder.policy.open_new(
            path, "x", root=self.recorder.data_root, encoding="utf-8"
        )
        self.path = str(path)
        self.artifacts.append(str(path))
        try:
            self._tables[uid] = _Table(handle, keys)
        except BaseException:
            handle.close()
            raise

    def external(self, frames: ExternalFrames) -> None:
        refs = self._frames.setdefault((frames.descriptor, frames.data_key), {})
        points = max(1, frames.seq_stop - frames.seq_start)
        per = max(1, (frames.frame_stop - frames.frame_start) // points)
        for i, seq in enumerate(range(frames.seq_start, frames.seq_stop)):
            f0 = frames.frame_start + i * per
            part = ExternalFrames(**{**_fields(frames), "frame_start": f0, "frame_stop": f0 + per})
            refs[seq] = frames_reference(part)

    def event_page(self, doc: Mapping[str, Any]) -> None:
        table = self._tables[doc["descriptor"]]
        data = doc.get("data", {})
        desc = doc["descriptor"]
        columns = []
        for key in table.keys:
            refs = self._frames.get((desc, key))
            if refs is not None:
                columns.append([refs.get(s, "") for s in doc["seq_num"]])
            else:
                columns.append(data.get(key) or [None] * len(doc["seq_num"]))
        for i, (seq, t) in enumerate(zip(doc["seq_num"], doc["time"], strict=True)):
            row = [str(seq), repr(float(t))]
            row += [csv_cell(col[i]) if i < len(col) else "" for col in columns]
            table.writer.writerow(row)
        table.handle.flush()
        for key in table.keys:
            refs = self._frames.get((desc, key))
            if refs:
                for seq in doc["seq_num"]:
                    refs.pop(seq, None)

    def close(self) -> None:
        for table in self._tables.values():
            table.handle.close()
        self._tables.clear()


def _fields(frames: ExternalFrames) -> dict[str, Any]:
    return {name: getattr(frames, name) for name in frames.__dataclass_fields__}


class CsvRecorder(FileRecorder):
    """One CSV file per stream of each run (see the module docstring).

    data_root
        Root of the data directories (required); files go into the run's directory.
    policy
        The :class:`~bluesky_recorders.paths.DirectoryPolicy` (create-only files).
    file_template
        File name stem from the start document; ``_<stream>.csv`` is appended.
    """

    kind = "csv"
    writer_class = CsvWriter
    default_template = "{scan_id:05d}_{plan_name}_{uid:.8}"
