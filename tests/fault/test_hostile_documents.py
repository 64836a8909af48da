"""Every recorder kind, driven with generated document streams, valid and hostile.

Valid streams (``strategies.runs``: odd names, huge metadata, NaN and infinities, empty
runs, pages, failed runs) must give files their readers open with the right points and
values. Hostile streams (``strategies.hostile_streams``: out of order, duplicated uids,
missing stops, dangling references, wrong types, paths leaving the data root) must give
clear errors (a RecorderError naming the recorder and the document, or a DocumentError
naming the document), never another exception, never a change to a file written before,
and the recorders must record the next good run normally.

The recorders are real, long-lived (one of each kind for a whole test, as in a session)
and write real files, read back by h5py, silx, csv, tiled, the shared-memory Reader; the
NeXus and SPEC files are checked once more by every reader of ``tests/readers.py``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from strategies import (
    MUTATIONS,
    OUTSIDE_ANY_RUN,
    Hostile,
    Run,
    explicit_runs,
    hostile_streams,
    malformed,
    runs,
    simple_run,
)

from bluesky_recorders import RECORDER_KINDS, RecorderSet
from bluesky_recorders.config import recorder_class
from bluesky_recorders.errors import DocumentError, RecorderError
from bluesky_recorders.jsonl import load_documents
from bluesky_recorders.shm import Reader
from readers import nexus_problems_many, spec_problems

KINDS = sorted(RECORDER_KINDS)
MISSING = -999999.0  # what the SPEC recorder writes for a missing or non-finite value

SETTINGS = {
    # no shrinking: a failing example is reported as found (shrinking runs that write
    # real files and a catalog would take minutes on this machine)
    "phases": (Phase.explicit, Phase.generate),
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}


# -- the recorders under test ------------------------------------------------------------


def make_recorder(kind: str, root: Path, segment: str, console: io.StringIO, **extra: Any):
    """A recorder of ``kind`` writing below ``root``; policy 'abort' so every failure raises."""
    options: dict[str, Any] = {"on_error": "abort", "min_free": 0}
    if kind == "console":
        options.update(file=console, force_terminal=False)
    elif kind == "catalog":
        options.update(directory=root / "catalog")
    elif kind == "shm":
        options.update(segment=segment)
    elif kind == "feed":
        options.update(serve=None)
    else:
        options.update(data_root=root / kind)
    options.update(extra)
    return recorder_class(kind)(**options)


class Bench:
    """One recorder of each kind, standalone (no RecorderSet), and what they said."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.segment = f"bsrec-test-hostile-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.console = io.StringIO()
        self.recorders = {k: make_recorder(k, root, self.segment, self.console) for k in KINDS}

    def feed(self, docs) -> dict[str, list[tuple[str, Any, RecorderError]]]:
        """Every document to every recorder; the RecorderErrors raised, per recorder.

        Any other exception is a bug: it is raised (with the recorder and document named).
        """
        errors: dict[str, list[tuple[str, Any, RecorderError]]] = {k: [] for k in KINDS}
        for name, doc in docs:
            for kind, recorder in self.recorders.items():
                try:
                    recorder(name, doc)
                except RecorderError as err:
                    errors[kind].append((name, doc, err))
                except Exception as err:
                    raise AssertionError(
                        f"recorder {kind!r} raised {type(err).__name__} (not a RecorderError) "
                        f"on a {name!r} document: {err}"
                    ) from err
        return errors

    def close(self) -> None:
        """Close every recorder (the shm one unlinks its segment), even if one fails."""
        errors = []
        for recorder in self.recorders.values():
            try:
                recorder.close()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]


def assert_clear(kind: str, name: str, doc: Any, err: RecorderError) -> None:
    """The error names the recorder, the document (name and uid) and a cause."""
    text = str(err)
    assert err.recorder == kind, text
    assert f"recorder {kind!r} failed" in text, text
    assert f" on {name} document" in text, text
    uid = doc.get("uid", doc.get("datum_id", "")) if isinstance(doc, dict) else ""
    if isinstance(uid, str) and uid:
        assert uid in text, text
    assert err.cause, text


# -- comparing values --------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN and tuples equal lists."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def floats_equal(got: Any, expected: list[float]) -> bool:
    got = np.asarray(got, dtype="float64")
    want = np.asarray(expected, dtype="float64")
    return got.shape == want.shape and bool(
        np.all((got == want) | (np.isnan(got) & np.isnan(want)))
    )


def finite_or_none(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- what each recorder must have recorded of a valid run --------------------------------


def catalog_columns_ok(run: Run) -> bool:
    """Whether tiled can hold the run's event table, by tiled's own identifier rules.

    The table holds ``seq_num``, ``time``, every scalar data key (``time`` and ``seq_num``
    renamed with a trailing ``_``) and ``ts_<key>`` for every data key's timestamps.
    """
    from tiled.adapters.sql import COLUMN_NAME_PATTERN, is_safe_identifier

    if not any(n == "descriptor" for n, _ in run.docs):
        return True
    columns = ["seq_num", "time"]
    for key in run.keys:
        name = f"{key.name}_" if key.name in ("time", "seq_num") else key.name
        if key.dtype != "array":  # arrays go to zarr, not into the table
            columns.append(name)
        columns.append(f"ts_{name}")
    lower = [c.lower() for c in columns]
    if len(set(lower)) != len(lower) or any(c.startswith("_") for c in columns):
        return False
    try:
        for column in columns:
            is_safe_identifier(column, COLUMN_NAME_PATTERN, allow_reserved_words=True)
    except Exception:
        return False
    return True


def check_nexus(recorder, run: Run) -> None:
    (path,) = recorder.artifacts[run.uid]
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry["entry_identifier"][()].decode() == run.uid
        assert entry["exit_status"][()].decode() == run.exit_status
        assert "end_time" in entry
        streams = entry["instrument/bluesky/streams"] if run.rows else None
        if streams is None:
            return
        group = streams["primary"]
        assert len(group["seq_num"]) == len(run.rows)
        by_key = {}
        for name, obj in group.items():
            if isinstance(obj, h5py.Dataset):
                key = obj.attrs.get("data_key", name)
                by_key[key.decode() if isinstance(key, bytes) else key] = obj
        for key in run.number_keys:
            assert key in by_key, (key, sorted(by_key))
            assert floats_equal(by_key[key][()], [r[key] for r in run.rows]), key


def spec_scan_of(path: str, uid: str):
    from silx.io.specfile import SpecFile

    sf = SpecFile(path)
    try:
        for i in range(len(sf)):
            scan = sf[i]
            if f"#C uid = {uid}" in scan.scan_header:
                return scan.number, np.array(scan.data, copy=True)
    finally:
        sf.close()
    raise AssertionError(f"silx finds no scan of run {uid} in {path}")


def check_spec(recorder, run: Run) -> None:
    (path,) = recorder.artifacts[run.uid]
    _, data = spec_scan_of(path, run.uid)
    if not run.rows:
        assert data.size == 0
        return
    assert data.shape[1] == len(run.rows), data.shape
    columns = [list(c) for c in data]
    for key in run.number_keys:
        want = [r[key] if math.isfinite(r[key]) else MISSING for r in run.rows]
        assert any(floats_equal(c, want) for c in columns), (key, want, columns)


def check_jsonl(recorder, run: Run) -> None:
    (path,) = recorder.artifacts[run.uid]
    pairs, problems = load_documents(path)
    assert problems == []
    assert same([list(p) for p in pairs], [[n, d] for n, d in run.docs])


def check_csv(recorder, run: Run) -> None:
    paths = recorder.artifacts.get(run.uid, [])
    descriptors = [d for n, d in run.docs if n == "descriptor"]
    assert len(paths) == len(descriptors)
    if not paths:
        return
    with open(paths[0], newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["seq_num", "time", *descriptors[0]["data_keys"]]
    assert [int(r[0]) for r in table[1:]] == list(range(1, len(run.rows) + 1))
    for key in run.number_keys:
        j = table[0].index(key, 2)
        cells = [r[j] for r in table[1:]]
        got = [float(c) if c else math.nan for c in cells]
        assert floats_equal(got, [r[key] for r in run.rows]), (key, cells)


def check_catalog(recorder, run: Run) -> None:
    cat = recorder.catalog
    entry = cat[run.uid]
    assert same(entry.metadata["start"].get("huge"), run.start.get("huge"))
    assert entry.metadata["stop"]["exit_status"] == run.exit_status
    if not run.rows:
        return
    table = entry.primary.read()
    for key in run.number_keys:
        column = f"{key}_" if key in ("time", "seq_num") else key
        assert floats_equal(table[column].values, [r[key] for r in run.rows]), key


def check_shm(recorder, run: Run) -> None:
    with Reader(recorder.segment) as reader:
        snap = reader.snapshot()
    assert snap.run_uid == run.uid
    assert snap.state == "ended" and snap.exit_status == run.exit_status
    assert snap.total == len(run.rows)
    if run.rows:
        assert list(snap.data["seq_num"]) == list(range(1, len(run.rows) + 1))
        for key in run.number_keys:
            if len(key.encode()) > 127 or "\0" in key or key in ("seq_num", "time"):
                # column names are 128 NUL-padded bytes; the ring has its own seq_num and
                # time: such keys are left out (an INFO line says so)
                assert snap.columns.count(key) == (key in ("seq_num", "time")), snap.columns
                continue
            assert key in snap.data, (key, snap.columns)
            assert floats_equal(snap.data[key], [r[key] for r in run.rows]), key


def check_feed(recorder, run: Run) -> None:
    messages = recorder.hub.current_messages()
    ends = [m for m in messages if m["type"] == "run_end"]
    assert [m["run"] for m in ends] == [run.uid]
    assert ends[0]["exit_status"] == run.exit_status
    points = [m for m in messages if m["type"] == "points" and m["stream"] == "primary"]
    seq = [s for m in points for s in m["seq_num"]]
    assert seq == list(range(1, len(run.rows) + 1))
    for key in run.number_keys:
        got = [v for m in points for v in m["data"].get(key, [])]
        if got:
            assert got == finite_or_none([r[key] for r in run.rows]), key
    json.dumps(messages, allow_nan=False)  # strict JSON, as browsers read it


def check_plots(recorder, run: Run) -> None:
    assert recorder.wait(60), "the plots were not drawn within 60 s"
    files = recorder.artifacts.get(run.uid, [])
    sidecars = [f for f in files if f.endswith("plot.json")]
    assert len(sidecars) == 1, files
    with open(sidecars[0], encoding="utf-8") as fh:
        sidecar = json.load(fh, parse_constant=lambda c: pytest.fail(f"{c} in plot.json"))
    assert sidecar["run"]["uid"] == run.uid
    assert sidecar["run"]["num_events"] == len(run.rows)
    assert sidecar["run"]["exit_status"] == run.exit_status
    data = sidecar["data"]
    if run.rows and data:
        assert data["seq_num"] == list(range(1, len(run.rows) + 1))
        for key in run.number_keys:
            if key in data:
                assert data[key] == finite_or_none([r[key] for r in run.rows]), key


def check_console(output: str, run: Run) -> None:
    assert f"uid {run.uid[:8]}" in output
    assert "ended at" in output and f": {run.exit_status}, " in output


CHECKS = {
    "nexus": check_nexus,
    "spec": check_spec,
    "jsonl": check_jsonl,
    "csv": check_csv,
    "catalog": check_catalog,
    "shm": check_shm,
    "feed": check_feed,
    "plots": check_plots,
}


def check_recorded(bench: Bench, run: Run, errors, console_from: int) -> None:
    """Every recorder recorded the valid ``run`` (fed just now) correctly."""
    for kind, failures in errors.items():
        if kind == "catalog" and not catalog_columns_ok(run):
            # tiled's SQL tables refuse such column names: the run is refused at its
            # descriptor (not after the last event), with the data key named
            assert len(failures) == 1, failures
            name, doc, err = failures[0]
            assert name == "descriptor", err
            assert_clear(kind, name, doc, err)
            assert "the catalog cannot hold this stream" in str(err), str(err)
            assert any(k.name in str(err) for k in run.keys), str(err)  # the key is named
            continue
        assert failures == [], f"{kind}: {[str(e) for _, _, e in failures]}"
    for kind, check in CHECKS.items():
        if kind == "catalog" and not catalog_columns_ok(run):
            continue
        check(bench.recorders[kind], run)
    check_console(bench.console.getvalue()[console_from:], run)


# -- valid streams -------------------------------------------------------------------------


def test_valid_streams_give_valid_files_in_every_recorder(tmp_path_factory):
    """Generated valid runs (odd names, huge metadata, NaN/inf, empty runs, pages): every
    recorder kind records each one, and its readers get the points and values back."""
    bench = Bench(tmp_path_factory.mktemp("valid"))
    seen: list[Run] = []
    try:

        def record(run: Run) -> None:
            console_from = len(bench.console.getvalue())
            errors = bench.feed(run.docs)
            check_recorded(bench, run, errors, console_from)
            seen.append(run)

        test = given(run=runs())(record)
        for run in explicit_runs():  # tried first: every dtype, empty runs, SQL-unfriendly
            test = example(run=run)(test)
        settings(max_examples=6, **SETTINGS)(test)()
    finally:
        bench.close()
    # every NeXus and SPEC file, once more through every reader of tests/readers.py
    nexus = [bench.recorders["nexus"].artifacts[r.uid][0] for r in seen]
    problems = nexus_problems_many(nexus)
    bad = {p: v for p, v in problems.items() if v}
    assert bad == {}, "\n".join(f"{p}: {v}" for p, v in bad.items())
    spec_files = {bench.recorders["spec"].artifacts[r.uid][0] for r in seen}
    for path in sorted(spec_files):
        assert spec_problems(path) == [], path


# -- hostile streams -----------------------------------------------------------------------


def per_run_files(bench: Bench, run: Run) -> dict[str, str]:
    """sha256 of every file written for ``run`` alone (NeXus, JSONL, CSV, plots)."""
    files = {}
    for kind in ("nexus", "jsonl", "csv", "plots"):
        for path in bench.recorders[kind].artifacts[run.uid]:
            files[path] = sha256(path)
    return files


def spec_prefix(bench: Bench, run: Run) -> tuple[str, bytes]:
    """The SPEC file the run went into (shared by the experiment's runs) and its bytes."""
    (path,) = bench.recorders["spec"].artifacts[run.uid]
    return path, Path(path).read_bytes()


def check_earlier_run_intact(bench: Bench, run: Run, files, spec) -> None:
    """Files written before are byte-identical and read back the same; SPEC only grew."""
    assert {p: sha256(p) for p in files} == files
    path, before = spec
    assert Path(path).read_bytes()[: len(before)] == before
    for kind in ("nexus", "spec", "jsonl", "csv", "catalog", "plots"):
        if kind == "plots":
            continue  # the plots' files are in `files`; plot.json is read below
        CHECKS[kind](bench.recorders[kind], run)
    sidecar = next(p for p in files if p.endswith("plot.json"))
    assert json.loads(Path(sidecar).read_text(encoding="utf-8"))["run"]["uid"] == run.uid


def test_hostile_streams_give_clear_errors_and_spare_earlier_files(tmp_path_factory):
    """Out-of-order, duplicated, dangling, mistyped documents: each recorder either takes
    them or raises a RecorderError naming itself and the document; a run recorded before
    keeps its files byte for byte; the next good run is recorded normally."""
    bench = Bench(tmp_path_factory.mktemp("hostile"))
    good = simple_run(4)
    mutations_seen: set[str] = set()
    after_runs: list[Run] = []
    try:
        check_recorded(bench, good, bench.feed(good.docs), 0)
        files, spec = per_run_files(bench, good), spec_prefix(bench, good)

        def attack(hostile: Hostile) -> None:
            mutations_seen.update(hostile.mutations)
            for kind, failures in bench.feed(hostile.docs).items():
                for name, doc, err in failures:
                    assert_clear(kind, name, doc, err)
            after = simple_run(3)
            console_from = len(bench.console.getvalue())
            check_recorded(bench, after, bench.feed(after.docs), console_from)
            after_runs.append(after)

        names = sorted(MUTATIONS)
        for pair in zip(names[::2], names[1::2], strict=True):  # every mutation, in pairs
            test = given(hostile_streams(first=pair))(attack)
            settings(max_examples=1, **SETTINGS)(test)()
        check_earlier_run_intact(bench, good, files, spec)
    finally:
        bench.close()
    assert mutations_seen == set(MUTATIONS)
    nexus = [bench.recorders["nexus"].artifacts[r.uid][0] for r in (good, after_runs[-1])]
    bad = {p: v for p, v in nexus_problems_many(nexus).items() if v}
    assert bad == {}, "\n".join(f"{p}: {v}" for p, v in bad.items())
    assert spec_problems(spec[0]) == []


def closed_like_the_run_engine(docs):
    """The stream as a RunEngine would end it: every run it started gets a stop."""
    open_runs: list[str] = []
    for name, doc in docs:
        if name == "start" and isinstance(doc.get("uid"), str):
            open_runs.append(doc["uid"])
        elif name == "stop" and doc.get("run_start") in open_runs:
            open_runs.remove(doc["run_start"])
    stops = [
        (
            "stop",
            {
                "uid": str(uuid.uuid4()),
                "time": 1.0,
                "run_start": uid,
                "exit_status": "fail",
                "reason": "the stream ended without a stop",
            },
        )
        for uid in open_runs
    ]
    return [*docs, *stops]


def test_hostile_streams_through_a_recorder_set(tmp_path_factory):
    """The hostile streams whose documents all belong to a run of the stream, through a
    RecorderSet (schema validation, threads, the inline shm), each run ended by a stop as
    the RunEngine ends it: the set raises only DocumentError or RecorderError, and then
    records the next good run normally. (Documents outside any run: the next test.)"""
    bench = Bench(tmp_path_factory.mktemp("set"))
    rs = RecorderSet(bench.recorders.values())
    in_runs = frozenset(MUTATIONS) - OUTSIDE_ANY_RUN
    try:

        @settings(max_examples=5, **SETTINGS)
        @given(hostile=hostile_streams(among=in_runs, more=2))
        def attack(hostile: Hostile) -> None:
            for name, doc in closed_like_the_run_engine(hostile.docs):
                try:
                    rs(name, doc)
                except DocumentError as err:
                    assert f"{name} document" in str(err), str(err)
                except RecorderError as err:
                    assert err.recorder in bench.recorders, str(err)
                    assert f"recorder {err.recorder!r} failed" in str(err), str(err)
                    assert " document " in str(err), str(err)
            after = simple_run(3)
            console_from = len(bench.console.getvalue())
            for name, doc in after.docs:
                rs(name, doc)  # raises nothing: the set records the next run normally
            check_recorded(bench, after, {k: [] for k in KINDS}, console_from)

        attack()
    finally:
        rs.close()


def test_a_failure_outside_the_next_run_does_not_cost_it(tmp_path):
    """A recorder fails on a document of no open run (an event of a descriptor never sent,
    a datum of a resource never sent, a descriptor of a run never started, an unknown
    name), or on run A whose stop never comes (a 0MQ sender that died, a replayed file
    cut short). The next good run B must be recorded by every recorder, and none of B's
    documents may raise that failure: the RunEngine would abort B for it.

    The recorders are inline (``threaded=False``) so that each failure is registered when
    its document is handled, and the outcome does not depend on thread timing.
    """
    wrong = []
    outside = [
        ("event", simple_run(1).docs[2][1]),  # its descriptor was never sent
        ("datum", {"datum_id": "r/0", "resource": "r", "datum_kwargs": {}}),
        ("descriptor", simple_run(1).docs[1][1]),  # its run was never started
        ("bogus", {}),
    ]
    run_a = simple_run(2)
    run_a.docs[0][1]["experiment"] = {"data_directory": "../../outside"}  # refused
    cases = [(f"{name} outside any run", [(name, doc)]) for name, doc in outside]
    cases.append(("run A refused at its start, no stop", run_a.docs[:1]))
    for i, (case, docs) in enumerate(cases):
        root = tmp_path / str(i)
        nexus = make_recorder("nexus", root, "", io.StringIO(), threaded=False)
        jsonl = make_recorder("jsonl", root, "", io.StringIO(), threaded=False)
        rs = RecorderSet([nexus, jsonl])
        for name, doc in docs:
            try:
                rs(name, doc)
            except (DocumentError, RecorderError):
                pass
        b = simple_run(2)
        for name, doc in b.docs:
            try:
                rs(name, doc)
            except RecorderError as err:
                wrong.append(f"{case}: run B's {name} raised: {err}")
        rs.close()
        for recorder in (nexus, jsonl):
            if b.uid not in recorder.artifacts:
                wrong.append(f"{case}: run B was not recorded by {recorder.name}")
    assert wrong == [], "\n".join(wrong)


def test_malformed_documents_give_recorder_errors(tmp_path_factory):
    """A document missing a required key, or not a mapping at all, gives a RecorderError
    naming the recorder and the document, alone and in a RecorderSet: never a bare
    KeyError, TypeError or AttributeError into the RunEngine."""
    bench = Bench(tmp_path_factory.mktemp("malformed"))
    wrong: list[str] = []
    try:
        for case, docs in malformed(simple_run(2).docs).items():
            for kind, recorder in bench.recorders.items():
                for name, doc in docs:
                    try:
                        recorder(name, doc)
                    except RecorderError as err:
                        if err.recorder != kind or f"on {name} document" not in str(err):
                            wrong.append(f"{case}: {kind}: unclear RecorderError: {err}")
                    except Exception as err:
                        wrong.append(f"{case}: {kind}: {type(err).__name__}: {err}")
        rs = RecorderSet(bench.recorders.values())
        for case, docs in malformed(simple_run(2).docs).items():
            for name, doc in docs:
                try:
                    rs(name, doc)
                except (RecorderError, DocumentError):
                    pass
                except Exception as err:
                    wrong.append(f"{case}: RecorderSet: {type(err).__name__}: {err}")
        rs.close()
    finally:
        bench.close()
    assert wrong == [], "\n".join(wrong)


# -- a real RunEngine ------------------------------------------------------------------------


def toml_text(config: dict[str, Any]) -> str:
    """A recorder-set dict back as TOML (tables of strings, numbers, booleans, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)  # strings (TOML accepts JSON's escapes), ints, floats

    lines = []
    for table in ("settings", "path_map"):
        lines.append(f"[{table}]")
        lines += [f"{json.dumps(k)} = {value(v)}" for k, v in config.get(table, {}).items()]
    for name, options in config.get("recorders", {}).items():
        lines.append(f"[recorders.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


ODD_MD = {
    "huge": "x" * 100_000,
    "unicode": "日本語 ü / .. \n\t end",
    "nan": math.nan,
    "inf": math.inf,
    "ü key with spaces": ["a", None, {"deep": -math.inf}],
    "sample": "Si wafer ü",
}


def test_a_run_engine_with_odd_metadata_and_the_default_recorder_set(tmp_path):
    """``RE(scan(..., md=...))`` with huge, unicode and NaN metadata and odd plan names,
    through the default recorder set (its feed serving on a free port, jsonl switched
    on): every run is recorded, then the next plain scan runs cleanly."""
    import tomllib

    import httpx
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp
    from bluesky.plans import scan
    from ophyd.sim import SynAxis, SynGauss

    from bluesky_recorders import load_recorder_set
    from bluesky_recorders.catalog import close_catalog, open_catalog
    from bluesky_recorders.config import default_config_path
    from procs import free_port

    port = free_port()
    segment = f"bsrec-test-re-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    config = tomllib.loads(Path(default_config_path()).read_text(encoding="utf-8"))
    recorders = config["recorders"]
    recorders["feed"]["serve"] = f"127.0.0.1:{port}"
    recorders["shm"]["segment"] = segment
    recorders["jsonl"]["enabled"] = True
    config["settings"]["min_free"] = 0
    rs = load_recorder_set(text=toml_text(config), data_root=tmp_path / "data")
    assert {"console", "nexus", "catalog", "spec", "jsonl", "feed", "plots", "shm"} <= set(
        rs.recorders
    )

    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(rs)

    @bpp.run_decorator(md={**ODD_MD, "plan_name": "日本 plan/../..", "motors": ["motor"]})
    def odd_plan():
        for x in (-1.0, 0.0, 1.0):
            yield from bps.mv(motor, x)
            yield from bps.trigger_and_read([det, motor])

    try:
        odd = [
            *RE(scan([det], motor, -1, 1, 5, md={**ODD_MD, "plan_name": "a scan / .. ü"})),
            *RE(odd_plan()),
        ]
        (plain,) = RE(scan([det], motor, -1, 1, 3))
        assert RE.state == "idle"
        assert rs["plots"].wait(60)
        with Reader(segment) as reader:
            snap = reader.snapshot()
        served = httpx.get(f"http://127.0.0.1:{port}/api/current", timeout=10).json()
    finally:
        rs.close()

    starts = {d["uid"]: d for n, d in docs if n == "start"}
    stops = {d["run_start"]: d for n, d in docs if n == "stop"}
    assert list(starts) == [*odd, plain]
    assert {uid: stops[uid]["exit_status"] for uid in starts} == dict.fromkeys(starts, "success")
    points = {odd[0]: 5, odd[1]: 3, plain: 3}
    catalog = open_catalog(tmp_path / "data" / "catalog")
    try:
        check_run_engine_runs(rs, catalog, docs, starts, points)
        assert catalog[odd[0]].metadata["start"]["plan_name"] == "a scan / .. ü"
        assert catalog[odd[1]].metadata["start"]["plan_name"] == "日本 plan/../.."
    finally:
        close_catalog(catalog)
    assert (snap.run_uid, snap.total, snap.state) == (plain, 3, "ended")
    assert [m["run"] for m in served if m["type"] == "run_end"] == [plain]


def check_run_engine_runs(rs, catalog, docs, starts, points) -> None:
    """Each run's NeXus, SPEC, JSONL, catalog entry and plots, as their readers see them."""
    for uid, n in points.items():
        files = rs.artifacts(uid)
        (nexus,) = files["nexus"]
        with h5py.File(nexus, "r") as f:
            assert f["entry/instrument/bluesky/streams/primary/det"].shape == (n,)
            start = json.loads(f["entry/instrument/bluesky/metadata/start"][()])
            assert start.get("huge") == starts[uid].get("huge")
        (spec,) = files["spec"]
        assert spec_scan_of(spec, uid)[1].shape[1] == n
        (jsonl,) = files["jsonl"]
        pairs, _ = load_documents(jsonl)
        assert same([list(p) for p in pairs], by_run(docs)[uid])
        entry = catalog[uid]
        assert entry.metadata["start"].get("huge") == starts[uid].get("huge")
        assert entry.primary.read()["det"].shape == (n,)
        assert any(f.endswith("plot.json") for f in files["plots"])


def by_run(docs) -> dict[str, list[list[Any]]]:
    """A RunEngine's stream split by run: uid -> its ``[name, doc]`` pairs, in order."""
    runs_of: dict[str, str] = {}
    out: dict[str, list[list[Any]]] = {}
    for name, doc in docs:
        if name == "start":
            uid = doc["uid"]
        elif name in ("descriptor", "stop"):
            uid = doc["run_start"]
        else:
            uid = runs_of[doc["descriptor"]]
        if name == "descriptor":
            runs_of[doc["uid"]] = uid
        out.setdefault(uid, []).append([name, doc])
    return out
