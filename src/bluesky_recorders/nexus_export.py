"""Read a NeXus file written by :mod:`bluesky_recorders.nexus` back into documents.

The file keeps what the run's documents said: the start, stop and descriptor
documents as JSON, the resource/datum documents as JSON lines, and per stream
every data key's values and timestamps, the event times and sequence numbers,
and the datum id each event gave for external data. From these,
:func:`documents_from_nexus` rebuilds the run in this order::

    start, descriptors (in arrival order), resource/datum documents (in arrival
    order), events of all streams merged by time, stop

so that they can be replayed through any recorder (``bsrec export``). What is not
kept, and how it comes back:

- event uids: made again, deterministically, from the run uid, descriptor and
  sequence number (:func:`event_uid`);
- ``None`` or unconvertible values of a numeric key were stored as NaN (floats)
  or 0 (integers) and come back so;
- a run whose process was killed has no stop document: the documents end with
  the last event flushed (``complete`` is false on :class:`NexusRun`).
"""

from __future__ import annotations

import heapq
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from .errors import DocumentError
from .nexus_layout import decode_rows, safe_key

__all__ = ["NexusRun", "documents_from_nexus", "event_uid", "read_nexus_run"]

_STREAMS = "entry/instrument/bluesky/streams"
_EXTERNAL = "entry/instrument/bluesky/external"
_METADATA = "entry/instrument/bluesky/metadata"


def event_uid(run_uid: str, descriptor_uid: str, seq_num: int) -> str:
    """The uid given to a rebuilt event (the original uid is not kept)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bsrec:{run_uid}:{descriptor_uid}:{seq_num}"))


@dataclass
class NexusRun:
    """The documents of one run read from a NeXus file."""

    path: str
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the run's stop document was recorded."""
        return bool(self.documents) and self.documents[-1][0] == "stop"


def _json(ds: h5py.Dataset, path: str) -> Any:
    raw = ds[()]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return json.loads(text)
    except ValueError as err:
        raise DocumentError(f"{path}: {ds.name} is not valid JSON ({err})") from err


def _from_text(text: str, data_key: Mapping[str, Any]) -> Any:
    if data_key.get("dtype") == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _stream_events(
    f: h5py.File, group: h5py.Group, descriptor: Mapping[str, Any], run_uid: str
) -> Iterator[tuple[float, int, dict[str, Any]]]:
    """``(time, order, event)`` for every row of one stream, in row order."""
    keys: dict[str, Mapping[str, Any]] = descriptor.get("data_keys", {})
    n = group["seq_num"].shape[0]
    times = group["time"][:n]
    seqs = group["seq_num"][:n]
    columns: dict[str, Any] = {}
    for name, ds in group.items():
        if not isinstance(ds, h5py.Dataset) or name in ("time", "seq_num") or ds.is_virtual:
            continue
        key = _key_of(ds, name)
        if key not in keys or keys[key].get("external"):
            continue
        if ds.dtype.kind in "OS" and (ds.ndim == 1 or ds.dtype == "S1"):
            columns[key] = [_from_text(v, keys[key]) for v in decode_rows(ds[:n])]
        elif _is_boolean(keys[key]):  # stored as NX_BOOLEAN, 0/1 in uint8
            columns[key] = ds[:n].astype(bool).tolist()
        else:
            columns[key] = ds[:n].tolist()
    stamps: dict[str, Any] = {}
    for name, ds in group["timestamps"].items():
        stamps[_key_of(ds, name)] = ds[:n].tolist()
    external = f.get(f"{_EXTERNAL}/{group.name.rsplit('/', 1)[1]}")
    if external is not None:
        for note in external.values():
            key = _note_key(note, keys)
            if key is not None and "event_data" in note:
                values = decode_rows(note["event_data"][:n])
                if any(values):
                    columns[key] = values
    uid = descriptor["uid"]
    for i in range(n):
        data = {
            key: values[i]
            for key, values in columns.items()
            if not (keys[key].get("external") and values[i] == "")
        }
        timestamps = {key: stamps[key][i] for key in data if key in stamps}
        filled = {k: False for k in data if keys.get(k, {}).get("external")}
        event = {
            "uid": event_uid(run_uid, uid, int(seqs[i])),
            "descriptor": uid,
            "time": float(times[i]),
            "seq_num": int(seqs[i]),
            "data": data,
            "timestamps": timestamps,
        }
        if filled:
            event["filled"] = filled
        yield float(times[i]), i, event


def _key_of(ds: h5py.Dataset, name: str) -> str:
    """The data key a dataset holds: ``@data_key`` (bytes when it holds a NUL), else its name."""
    key = ds.attrs.get("data_key", name)
    return key.decode("utf-8") if isinstance(key, bytes) else str(key)


def _is_boolean(data_key: Mapping[str, Any]) -> bool:
    """Whether the descriptor says the key holds booleans (scalars or arrays)."""
    if data_key.get("dtype") == "boolean":
        return True
    numpy = data_key.get("dtype_numpy")
    try:
        return isinstance(numpy, str) and bool(numpy) and np.dtype(numpy).kind == "b"
    except TypeError:
        return False


def _note_key(note: h5py.Group, keys: Mapping[str, Any]) -> str | None:
    """The data key an external-data NXnote describes."""
    name = note.name.rsplit("/", 1)[1]
    if name in keys:
        return name
    return next((key for key in keys if safe_key(key) == name), None)


def read_nexus_run(path: str | os.PathLike[str]) -> NexusRun:
    """The documents of the run in ``path`` (see the module docstring)."""
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        # a file left open for writing in SWMR mode opens only as a SWMR reader
        try:
            f = h5py.File(path, "r", locking=False, swmr=True)
        except OSError as err:
            raise DocumentError(f"{path}: cannot be opened as HDF5 ({err})") from err
    run = NexusRun(path)
    with f:
        if f"{_METADATA}/start" not in f:
            raise DocumentError(
                f"{path}: not a NeXus file written by bluesky_recorders (no {_METADATA}/start)"
            )
        start = _json(f[f"{_METADATA}/start"], path)
        run.documents.append(("start", start))
        groups = sorted(
            (g for g in f[_STREAMS].values() if isinstance(g, h5py.Group)),
            key=lambda g: int(g.attrs.get("order", 0)),
        )
        descriptors = []
        for group in groups:
            gname = group.name.rsplit("/", 1)[1]
            desc = _json(f[f"{_METADATA}/descriptors/{gname}"], path)
            descriptors.append((group, desc))
            run.documents.append(("descriptor", desc))
        if "assets" in f[_METADATA]:
            for i, row in enumerate(decode_rows(f[f"{_METADATA}/assets"][()])):
                try:
                    name, doc = json.loads(row)
                except ValueError as err:
                    raise DocumentError(f"{path}: asset document {i} is not JSON ({err})") from err
                run.documents.append((name, doc))
        streams = [_stream_events(f, g, d, start["uid"]) for g, d in descriptors]
        for _, _, event in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            run.documents.append(("event", event))
        if "stop" in f[_METADATA]:
            run.documents.append(("stop", _json(f[f"{_METADATA}/stop"], path)))
    return run


def documents_from_nexus(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """The run's documents; see :func:`read_nexus_run` for whether it is complete."""
    return read_nexus_run(path).documents
