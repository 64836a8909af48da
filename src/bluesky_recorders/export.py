"""``bsrec export``: write recorded runs again, in the formats a user asks for.

A source is a NeXus file written by this project, a file of documents
(``.jsonl``, ``.json``, ``.json.gz``), or runs of a catalog (a uid, a unique uid
prefix, a scan id, or a ``key=value`` query). Its documents are replayed through
the same recorders that write during a run (no second implementation of any
format), each writing into ``--out`` directly.

Bad input loses nothing that can be converted: a document the reader cannot
parse, a document of an unknown kind, an event before its descriptor are
reported with their line number or uid and skipped; a run without its stop
document is finished with a stop marked ``exit_status="fail"`` and a reason
beginning ``"partial:"``, which every format records. :func:`export` says for
each run what was written and what went wrong.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import recorder_class
from .errors import BsrecError, DocumentError, RecorderError
from .external import PathMap
from .paths import DirectoryPolicy

__all__ = ["EXPORT_FORMATS", "ExportResult", "FlatPolicy", "export", "runs_of", "source_runs"]

#: Format name -> recorder kind.
EXPORT_FORMATS: dict[str, str] = {
    "spec": "spec",
    "nexus": "nexus",
    "csv": "csv",
    "jsonl": "jsonl",
}
_NEXUS_SUFFIXES = (".nxs", ".h5", ".hdf5", ".hdf", ".nx5", ".nexus")
_DOCUMENT_SUFFIXES = (".jsonl", ".json", ".json.gz", ".jsonl.gz")

Docs = list[tuple[str, dict[str, Any]]]


class FlatPolicy(DirectoryPolicy):
    """A policy whose every run directory is one folder (the export's ``--out``)."""

    def __init__(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = Path(os.path.abspath(os.fspath(directory)))

    def prepare_run(
        self,
        data_root: str | os.PathLike[str],
        start_doc: Mapping[str, Any],
        *,
        path_map: PathMap | None = None,
    ) -> Path:
        return self.make_dirs(data_root, self.directory)


@dataclass
class SourceRun:
    """One run read from a source, with what its reader could not use."""

    label: str
    documents: Docs
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """What one run became (``run_uid`` empty: problems of the source itself)."""

    source: str
    run_uid: str
    files: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    partial: bool = False
    #: what was repaired without loss (an event recorded after its late descriptor)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            bool(self.run_uid)
            and not self.problems
            and not self.partial
            and all(self.files.values())
        )


def runs_of(documents: Iterable[tuple[str, Any]], label: str) -> tuple[list[SourceRun], list[str]]:
    """Split a document stream into runs, and list the documents that fit no run.

    An event (or page) that arrives before its descriptor is kept back and recorded
    right after the descriptor, with a problem noted on its run.
    """
    runs: dict[str, SourceRun] = {}
    run_of: dict[str, str] = {}  # descriptor / resource / stream_resource uid -> run uid
    early: dict[str, list[tuple[str, str, Any]]] = {}  # descriptor uid -> events
    orphans: list[str] = []
    for i, (name, doc) in enumerate(documents, 1):
        where = f"{label}: document {i} ({name} {_uid(doc)})"
        if name in ("event", "event_page") and doc.get("descriptor") not in run_of:
            early.setdefault(doc.get("descriptor"), []).append((where, name, doc))
            continue
        try:
            run = _owner(name, doc, runs, run_of)
        except KeyError as err:
            orphans.append(f"{where}: {err.args[0]}; skipped")
            continue
        if run is None:
            orphans.append(f"{where}: belongs to no run that was started; skipped")
            continue
        runs[run].documents.append((name, doc))
        if name == "descriptor":
            for where, ev_name, ev in early.pop(doc["uid"], []):
                runs[run].notes.append(f"{where}: arrived before its descriptor; recorded after it")
                runs[run].documents.append((ev_name, ev))
    for descriptor, events in early.items():
        for where, _, _ in events:
            orphans.append(f"{where}: its descriptor {descriptor} never came; skipped")
    return list(runs.values()), orphans


def _owner(
    name: str, doc: Mapping[str, Any], runs: dict[str, SourceRun], run_of: dict[str, str]
) -> str | None:
    if name == "start":
        runs[doc["uid"]] = SourceRun(f"run {doc['uid']}", [])
        return doc["uid"]
    if name == "descriptor":
        run_of[doc["uid"]] = doc["run_start"]
        return doc["run_start"] if doc["run_start"] in runs else None
    if name in ("event", "event_page"):
        if doc["descriptor"] not in run_of:
            raise KeyError(f"arrived before its descriptor {doc['descriptor']}")
        return run_of[doc["descriptor"]]
    if name in ("resource", "stream_resource"):
        run = doc.get("run_start") or (next(reversed(runs)) if runs else None)
        if run is not None:
            run_of[doc["uid"]] = run
        return run
    if name in ("datum", "datum_page"):
        return run_of.get(doc["resource"])
    if name == "stream_datum":
        return run_of.get(doc["stream_resource"])
    if name == "stop":
        return doc.get("run_start") if doc.get("run_start") in runs else None
    raise KeyError(f"unknown document name {name!r}")


def _uid(doc: Any) -> str:
    if isinstance(doc, Mapping):
        return str(doc.get("uid") or doc.get("datum_id") or "")
    return ""


def source_runs(source: str, *, catalog: Any = None) -> tuple[list[SourceRun], list[str]]:
    """The runs of ``source`` (see the module docstring), and what could not be read."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        lower = path.name.lower()
        if lower.endswith(_DOCUMENT_SUFFIXES):
            from .jsonl import load_documents

            pairs, problems = load_documents(path, errors="collect")
            runs, orphans = runs_of(pairs, str(path))
            return runs, [str(p) for p in problems] + orphans
        if lower.endswith(_NEXUS_SUFFIXES):
            from .nexus_export import read_nexus_run

            run = read_nexus_run(path)
            return [SourceRun(str(path), run.documents)], []
        raise BsrecError(
            f"{path}: not a known source (a NeXus file {', '.join(_NEXUS_SUFFIXES)}, "
            f"or documents {', '.join(_DOCUMENT_SUFFIXES)})"
        )
    if catalog is None:
        raise BsrecError(
            f"{source!r} is no file here, and no catalog was given to look it up as a run"
        )
    runs = [
        SourceRun(f"catalog run {uid}", docs) for uid, docs in catalog_documents(catalog, source)
    ]
    return runs, []


def catalog_documents(catalog: Any, key: str) -> Iterator[tuple[str, Docs]]:
    """``(uid, documents)`` of the catalog runs ``key`` names: a uid or unique
    prefix, a scan id (the latest run with it; digits that match no scan id are tried as a
    uid prefix), or ``key=value`` (every match)."""
    if "=" in key:
        from databroker.queries import Key

        field_name, _, text = key.partition("=")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        results = catalog.search(Key(field_name.strip()) == value)
        runs = list(results.values())
        if not runs:
            raise BsrecError(f"no catalog run matches {key!r}")
    elif key.isdigit() and len(key) < 8:  # a scan id; 8 digits may begin a uid
        runs = [catalog[int(key)]]
    elif key.isdigit():  # a scan id, else a uid prefix made only of digits
        try:
            runs = [catalog[int(key)]]
        except KeyError:
            runs = [catalog[key]]
    else:
        try:
            runs = [catalog[key]]
        except (KeyError, ValueError) as err:
            raise BsrecError(f"no catalog run {key!r}: {err}") from err
    for run in runs:
        docs = [(name, dict(doc)) for name, doc in run.documents()]
        yield docs[0][1]["uid"] if docs else "?", docs


def _stop_for(start: Mapping[str, Any], docs: Sequence[tuple[str, Any]], why: str) -> dict:
    counts: dict[str, int] = {}
    names = {d["uid"]: d.get("name", "primary") for n, d in docs if n == "descriptor"}
    for name, doc in docs:
        if name == "event":
            stream = names.get(doc["descriptor"], "primary")
            counts[stream] = counts.get(stream, 0) + 1
        elif name == "event_page":
            stream = names.get(doc["descriptor"], "primary")
            counts[stream] = counts.get(stream, 0) + len(doc["seq_num"])
    return {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": time.time(),
        "exit_status": "fail",
        "reason": f"partial: {why}",
        "num_events": counts,
    }


def export_run(
    run: SourceRun,
    formats: Sequence[str],
    out: str | os.PathLike[str],
    *,
    path_map: Mapping[str, str] | PathMap | None = None,
    policy_options: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Replay one run through a recorder per format, each writing into ``out``."""
    docs = run.documents
    start = docs[0][1] if docs and docs[0][0] == "start" else None
    result = ExportResult(
        run.label,
        start["uid"] if start else "",
        problems=list(run.problems),
        notes=list(run.notes),
    )
    if start is None:
        result.problems.append(f"{run.label}: no start document: nothing to convert")
        return result
    if docs[-1][0] != "stop":
        why = "the source has no stop document for this run"
        result.partial = True
        result.problems.append(f"{run.label}: {why}; finished with exit_status 'fail'")
        docs = [*docs, ("stop", _stop_for(start, docs, why))]
    recorders = []
    for fmt in formats:
        cls = recorder_class(EXPORT_FORMATS[fmt])
        policy = FlatPolicy(out, **dict(policy_options or {}))
        recorders.append(
            (fmt, cls(name=f"export-{fmt}", data_root=out, policy=policy, path_map=path_map))
        )
    for fmt, recorder in recorders:
        try:
            for name, doc in docs:
                try:
                    recorder.process(name, doc)
                except RecorderError as err:
                    # the recorder skips the rest of a run it failed on
                    result.problems.append(f"{fmt}: {err}")
        finally:
            recorder.close()
        result.files[fmt] = list(recorder.artifacts.get(start["uid"], []))
    return result


def export(
    sources: Sequence[str],
    formats: Sequence[str],
    out: str | os.PathLike[str],
    *,
    catalog: Any = None,
    path_map: Mapping[str, str] | PathMap | None = None,
) -> list[ExportResult]:
    """Export every run of every source; see :class:`ExportResult` for the outcome."""
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise BsrecError(
            f"unknown export format(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(EXPORT_FORMATS)}"
        )
    results = []
    for source in sources:
        try:
            runs, problems = source_runs(source, catalog=catalog)
        except (BsrecError, DocumentError, OSError) as err:
            results.append(ExportResult(source, "", problems=[str(err)]))
            continue
        if problems:  # what no run could use: reported once, for the source
            results.append(ExportResult(source, "", problems=problems))
        for run in runs:
            results.append(export_run(run, formats, out, path_map=path_map))
    return results
