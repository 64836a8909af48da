"""The jsonl documents recorder, and a loader for recorded document streams.

:class:`JsonlRecorder` writes every document of a run, raw and in arrival order, to
``<run directory>/<file_template>`` (default ``{scan_id:05d}_{plan_name}_{uid:.8}.jsonl``),
one ``[name, doc]`` JSON array per line, flushed after each line::

    ["start",{"uid":"1a2b...","time":1763716323.1,"scan_id":12,...}]
    ["descriptor",{"uid":"...","run_start":"1a2b...","data_keys":{...},...}]
    ["event",{"uid":"...","descriptor":"...","seq_num":1,"data":{"det":1.5},...}]
    ["stop",{"uid":"...","run_start":"1a2b...","exit_status":"success",...}]

Handy for bug reports, and the round-trip format: ``read_documents(path)`` gives back
the same ``(name, doc)`` pairs. Numbers that JSON has no word for are written as
Python's :mod:`json` writes them (``NaN``, ``Infinity``, ``-Infinity``) and read back
as floats; numpy arrays and scalars become lists and numbers. Text is ASCII with
``\\uXXXX`` escapes, so any text (even a lone surrogate from a broken file name) round-trips.

:func:`read_documents` also reads the ``.json``/``.json.gz`` lists of pairs that
bluesky users share (``/work/shared/realruns``), and gzip-compressed ``.jsonl.gz``.
A truncated or corrupt line, or an unknown document name, is a
:class:`~bluesky_recorders.errors.DocumentError` naming the file and the line; with
``errors="collect"`` reading goes on past bad lines and the reader's ``problems``
lists them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any, Literal

from .errors import DocumentError
from .recorder import DOCUMENT_NAMES, FileRecorder, RunWriter

__all__ = [
    "DOCUMENT_NAMES",
    "DocumentReader",
    "JsonlRecorder",
    "JsonlWriter",
    "dumps_document",
    "load_documents",
    "read_documents",
]

log = logging.getLogger("bluesky_recorders.jsonl")


Errors = Literal["raise", "collect"]


# -- pure functions ------------------------------------------------------------------


def _default(value: Any) -> Any:
    """numpy arrays and scalars (and anything with ``tolist``/``item``) for json."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def dumps_document(name: str, doc: Mapping[str, Any]) -> str:
    """One line of the file: ``[name, doc]`` as compact ASCII JSON, with ``\\n``."""
    return json.dumps([name, doc], separators=(",", ":"), default=_default) + "\n"


def _problem(path: str, line: int, message: str) -> DocumentError:
    err = DocumentError(f"{path}:{line}: {message}")
    err.path = path  # type: ignore[attr-defined]
    err.line = line  # type: ignore[attr-defined]
    return err


def _check_pair(item: Any, path: str, line: int) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, list) or len(item) != 2:
        raise _problem(path, line, f"expected a [name, document] pair, got {_short(item)}")
    name, doc = item
    if not isinstance(name, str) or name not in DOCUMENT_NAMES:
        known = ", ".join(sorted(DOCUMENT_NAMES))
        raise _problem(path, line, f"unknown document name {name!r} (known: {known})")
    if not isinstance(doc, dict):
        raise _problem(path, line, f"the {name} document is not a JSON object: {_short(doc)}")
    return name, doc


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DocumentReader(Iterator[tuple[str, dict[str, Any]]]):
    """The ``(name, doc)`` pairs of a recorded stream, read lazily (see :func:`read_documents`).

    Iterate it (once); ``problems`` lists what was skipped with ``errors="collect"``
    (each a :class:`DocumentError` with ``path`` and ``line``). The file is closed when
    the pairs are exhausted, by :meth:`close`, or on leaving a ``with`` block.
    """

    def __init__(self, path: str | os.PathLike[str], *, errors: Errors = "raise") -> None:
        if errors not in ("raise", "collect"):
            raise ValueError(f"errors must be 'raise' or 'collect', not {errors!r}")
        self.path = os.fspath(path)
        self.errors = errors
        self.problems: list[DocumentError] = []
        self._fh: IO[str] | None = _open_text(self.path)
        self._pairs = self._generate()

    def __iter__(self) -> DocumentReader:
        return self

    def __next__(self) -> tuple[str, dict[str, Any]]:
        return next(self._pairs)

    def close(self) -> None:
        self._pairs.close()
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def __enter__(self) -> DocumentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bad(self, err: DocumentError) -> None:
        if self.errors == "raise":
            raise err
        self.problems.append(err)

    def _generate(self) -> Iterator[tuple[str, dict[str, Any]]]:
        fh = self._fh
        assert fh is not None
        try:
            first = _peek(fh)
            if first == "[[" or first == "[]":
                yield from self._json_list(fh)
            else:
                yield from self._jsonl(fh)
        finally:
            self._fh = None
            fh.close()

    def _jsonl(self, fh: IO[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except ValueError as exc:
                cut = "" if text.endswith("\n") else " (the last line is cut short)"
                self._bad(_problem(self.path, number, f"not valid JSON{cut}: {exc}"))
                continue
            try:
                yield _check_pair(item, self.path, number)
            except DocumentError as err:
                self._bad(err)

    def _json_list(self, fh: IO[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """A JSON list of pairs, decoded item by item so a cut or corrupt file still
        gives every pair before the damage."""
        text = fh.read()
        decoder = json.JSONDecoder()
        pos = text.index("[") + 1
        end = len(text)

        def skip(at: int) -> int:
            while at < end and text[at] in " \t\r\n":
                at += 1
            return at

        def line_of(at: int) -> int:
            return text.count("\n", 0, at) + 1

        pos = skip(pos)
        if pos < end and text[pos] == "]":
            return
        while True:
            pos = skip(pos)
            try:
                item, after = decoder.raw_decode(text, pos)
            except ValueError as exc:
                self._bad(
                    _problem(self.path, line_of(pos), f"not valid JSON (the rest is unread): {exc}")
                )
                return
            try:
                yield _check_pair(item, self.path, line_of(pos))
            except DocumentError as err:
                self._bad(err)
            pos = skip(after)
            if pos < end and text[pos] == ",":
                pos += 1
                continue
            if pos < end and text[pos] == "]":
                return
            self._bad(
                _problem(
                    self.path,
                    line_of(pos),
                    "the list of pairs ends without ']' (the file is cut short)"
                    if pos >= end
                    else f"expected ',' or ']' between pairs, found {text[pos]!r}",
                )
            )
            return


def _open_text(path: str) -> IO[str]:
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _peek(fh: IO[str]) -> str:
    """The first two non-blank characters, the file rewound (``[[``: a list of pairs)."""
    head = ""
    while len(head) < 2:
        chunk = fh.read(64)
        if not chunk:
            break
        head += "".join(chunk.split())
    fh.seek(0)
    return head[:2]


def read_documents(path: str | os.PathLike[str], *, errors: Errors = "raise") -> DocumentReader:
    """The ``(name, doc)`` pairs of a recorded stream, in order.

    Reads ``.jsonl`` (one ``[name, doc]`` per line, as :class:`JsonlRecorder` writes)
    and JSON lists of pairs (``.json``), either gzip-compressed or not (told by the
    content, not the suffix). A line that is not JSON (a file cut short by a crash), not
    a pair, or names an unknown document raises
    :class:`~bluesky_recorders.errors.DocumentError` naming the file and the line; with
    ``errors="collect"`` it is skipped and listed in the reader's ``problems``::

        with read_documents("run.jsonl", errors="collect") as docs:
            for name, doc in docs:
                recorder(name, doc)
        print(docs.problems)
    """
    return DocumentReader(path, errors=errors)


def load_documents(
    path: str | os.PathLike[str], *, errors: Errors = "raise"
) -> tuple[list[tuple[str, dict[str, Any]]], list[DocumentError]]:
    """Every pair of a recorded stream, and the problems skipped (``errors="collect"``)."""
    with read_documents(path, errors=errors) as reader:
        pairs = list(reader)
    return pairs, reader.problems


# -- the recorder ---------------------------------------------------------------------


class JsonlWriter(RunWriter):
    """Writes every document of one run, as it arrives, one JSON line each."""

    recorder: JsonlRecorder

    def __init__(self, start: Mapping[str, Any], recorder: JsonlRecorder) -> None:
        super().__init__(start, recorder)
        policy = recorder.policy
        directory = policy.prepare_run(recorder.data_root, start, path_map=recorder.path_map)
        extra = {}
        if not isinstance(start.get("scan_id"), int):
            extra["scan_id"] = 0
        if not start.get("plan_name"):
            extra["plan_name"] = "run"
        target = directory / policy.file_name(recorder.file_template, start, **extra)
        self.path = str(target)
        self.fh: IO[str] | None = policy.open_new(target, "x", root=recorder.data_root)
        self.artifacts.append(self.path)
        self.lines = 0

    def __call__(self, name: str, doc: Any, validate: bool = False) -> tuple[str, Any]:
        """Every document, raw (no routing, no packing): the file is the stream itself."""
        fh = self.fh
        if fh is None:
            raise RuntimeError(f"{self.path} is closed")
        fh.write(dumps_document(name, doc))
        fh.flush()
        self.lines += 1
        return name, doc

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            fh.close()


class JsonlRecorder(FileRecorder):
    """Every document of every run, raw, one ``[name, doc]`` JSON line each.

    data_root
        Root of the data directories; each run's file goes into its experiment
        directory (:func:`~bluesky_recorders.paths.run_directory`) (required).
    policy
        The :class:`~bluesky_recorders.paths.DirectoryPolicy` (create-only files).
    file_template
        File name from the start document (default
        ``"{scan_id:05d}_{plan_name}_{uid:.8}.jsonl"``; a run without an integer
        ``scan_id`` uses 0, without a ``plan_name`` ``run``).

    Read the files back with :func:`read_documents`.
    """

    kind = "jsonl"
    writer_class = JsonlWriter
    default_template = "{scan_id:05d}_{plan_name}_{uid:.8}.jsonl"
