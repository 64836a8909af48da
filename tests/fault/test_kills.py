"""kill -9 of the process that records, in the middle of a run; then a restart.

(a) In-process recorders: a child Python (``_kill_child.py``) runs a real RunEngine with
the default recorder set (``recorders/default.toml`` through ``load_recorder_set``; jsonl
switched on, the feed on a free loopback port, the shared-memory segment under a name of
its own, the console into a file), records a complete scan, and is killed with SIGKILL in
the middle of the next one, more than one NeXus flush interval after the files showed
points; a new process records the next run. (b) Separate process: ``bsrec record`` (the
same recorder set), fed from bluesky's 0MQ proxy, is killed in the middle of a run that a
RunEngine in another process publishes, and restarted at once, as a supervisor would,
while that run goes on: the RunEngine never notices, the restarted recorder skips the
rest of the run it joined in the middle and records the next run.

Every file left behind is read with the third-party readers (``readers.py``) and its
values compared with what the RunEngine produced (the child prints every event, with its
time): the points on disk against the points produced at the kill are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import psutil
import pytest

from bluesky_recorders.jsonl import load_documents
from bluesky_recorders.runlog import RunLog
from procs import free_port, wait_for
from readers import _disagreements, _spec_readers, nexus_problems_many, spec_text_problems

CHILD = Path(__file__).with_name("_kill_child.py")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recorders" / "default.toml"
BIN = Path(sys.executable).parent
STREAM = "entry/instrument/bluesky/streams/primary"
#: The run that is killed: far more points than are written before the kill, so that
#: it is in progress when it is killed however slow the machine (never run to its end).
LONG = "5000:0.02"
SHORT = "5:0"
#: Points the NeXus and SPEC files must show before the kill (more than the catalog's
#: batch: TiledWriter writes events 100 at a time).
BEFORE_KILL = 120
#: Seconds the run goes on after that before the kill: more than the NeXus flush interval.
AFTER = 1.5
FLUSH_INTERVAL = 1.0  # recorders/default.toml's [recorders.nexus]
CATALOG_BATCH = 100  # CatalogRecorder's default batch_size
#: What the shm recorder logs when it replaces the segment a killed writer left.
STALE_SEGMENT = "replaced the stale shared-memory segment"


# -- the recorder-set file -------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_text(raw: dict[str, Any]) -> str:
    """TOML for what ``tomllib`` read from a recorder-set file (tables, scalars, lists)."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        for key, value in body.items():
            if not isinstance(value, dict):
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
        for key, value in body.items():
            if isinstance(value, dict):
                table(f"{name}.{_toml_key(key)}", value)

    for name, body in raw.items():
        table(_toml_key(name), body)
    return "\n".join(lines)


@pytest.fixture
def segments():
    """Names of shared-memory segments to remove at the end (a killed writer leaves its)."""
    names: list[str] = []
    yield names
    for name in names:
        Path("/dev/shm", name).unlink(missing_ok=True)


def recorder_set_file(tmp_path: Path, segments: list[str], *, console: str | None) -> Path:
    """The default recorder set for a test, in a file.

    Every recorder the default file enables stays on, with its options; jsonl is switched
    on; the feed serves on a free loopback port; shm writes a segment of its own; the
    console prints into the file ``console`` (None: standard output).
    """
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    recorders = raw["recorders"]
    recorders["jsonl"]["enabled"] = True
    recorders["feed"]["serve"] = f"127.0.0.1:{free_port()}"
    segment = f"bsrec-test-kills-{uuid.uuid4().hex[:12]}"
    recorders["shm"]["segment"] = segment
    segments.append(segment)
    if console is not None:
        recorders["console"]["file"] = console
    for name in ("console", "nexus", "spec", "catalog", "jsonl", "feed", "shm", "plots"):
        assert recorders[name].get("enabled", True), f"{name} is off in {DEFAULT_CONFIG}"
    assert recorders["nexus"].get("flush_interval", 1.0) == FLUSH_INTERVAL
    path = tmp_path / "recorders.toml"
    path.write_text(toml_text(raw))
    assert tomllib.loads(path.read_text()) == raw
    return path


# -- the RunEngine's process -----------------------------------------------------------


class Child:
    """``_kill_child.py`` running: what it printed (read as it comes), per run."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.runs: list[dict[str, Any]] = []
        self.done = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            name, fields = json.loads(line)
            if name == "start":
                self.runs.append({**fields, "events": [], "stop": None})
            elif name == "event":
                self.runs[-1]["events"].append(fields)
            elif name == "stop":
                self.runs[-1]["stop"] = fields
            elif name == "done":
                self.done = True

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        """``wait_for``, failing at once with its stderr if the process ends without it."""
        wait_for(lambda: predicate() or self.proc.poll() is not None, timeout, what)
        if self.proc.poll() is not None:
            self._thread.join(30)  # what it printed before it ended
            assert predicate(), f"{what}: exit status {self.proc.poll()}: {self.stderr()}"

    def events(self, run: int) -> int:
        return len(self.runs[run]["events"]) if len(self.runs) > run else -1

    def stopped(self, run: int) -> bool:
        return len(self.runs) > run and self.runs[run]["stop"] is not None

    def kill(self) -> float:
        """SIGKILL; wait for it and for everything it printed. Returns the time of the kill."""
        at = time.time()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL
        self._thread.join(30)
        return at

    def finish(self, timeout: float = 120) -> None:
        """Wait for its normal end: exit status 0 after every plan."""
        try:
            code = self.proc.wait(timeout)
        finally:
            self.close()
        self._thread.join(30)
        assert code == 0 and self.done, f"exit status {code}: {self.stderr()}"

    def stderr(self) -> str:
        return self.log.read_text()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:  # stdin of a process that is gone
                pass


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def all_gone(processes: list[psutil.Process]) -> None:
    """The processes a killed process had started end by themselves."""
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still running after their parent was killed: {alive}"


# -- what the files hold ---------------------------------------------------------------


def nexus_points(path: Path | None) -> int:
    """Points of the primary stream in a NeXus file being written (0: not readable now)."""
    if path is None:
        return 0
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f[f"{STREAM}/det"].shape[0])
    except (OSError, KeyError, RuntimeError, ValueError):
        return 0


def nexus_check(killed: Path, complete: Path) -> dict[Path, list[str]]:
    """What every NeXus reader finds wrong: only the killed run's file may lack end_time."""
    found = nexus_problems_many([killed, complete], complete=False)
    with h5py.File(complete, "r") as f:
        if "end_time" not in f["entry"]:
            found[complete].append("h5py: no end_time in the file of a complete run")
    return found


def nexus_columns(path: Path) -> dict[str, list[float]]:
    """seq_num, motor and det of the primary stream (the file as h5py reads it)."""
    with h5py.File(path, "r") as f:
        stream = f[STREAM]
        return {k: stream[k][()].tolist() for k in ("seq_num", "motor", "det")}


def spec_rows(path: Path | None, number: int) -> list[dict[str, float]]:
    """The data rows of scan ``#S number`` of a SPEC file, by column label."""
    rows: list[dict[str, float]] = []
    if path is None:
        return rows
    labels: list[str] = []
    inside = False
    for line in path.read_text().split("\n")[:-1]:  # whole lines only (being written)
        if line.startswith("#S "):
            inside = line.split()[1] == str(number)
        elif inside and line.startswith("#L "):
            labels = line[3:].split("  ")
        elif inside and line and not line.startswith(("#", "@")):
            rows.append(dict(zip(labels, map(float, line.split()), strict=True)))
    return rows


def spec_check(path: Path) -> tuple[list[str], dict[str, Any]]:
    """``readers.spec_problems`` and ``readers.spec_scans`` with one run of the readers."""
    problems, scans = _spec_readers(path)
    return spec_text_problems(path.read_bytes()) + problems + _disagreements(scans), scans


def one_file(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern))
    assert len(found) <= 1, found
    return found[0] if found else None


def files_of(data: Path, run: dict[str, Any]) -> tuple[Path, Path]:
    """The run's NeXus file and the SPEC file (the recorders' threads create them)."""
    nxs, spec = one_file(data, f"*{run['uid'][:8]}.nxs"), one_file(data, "*.spec")
    assert nxs is not None and spec is not None
    return nxs, spec


def points_written(data: Path, run: dict[str, Any]) -> tuple[int, int]:
    """Points of the run in its NeXus file and rows in the SPEC file, now (0: no file yet)."""
    nxs, spec = one_file(data, f"*{run['uid'][:8]}.nxs"), one_file(data, "*.spec")
    return nexus_points(nxs), len(spec_rows(spec, run["scan_id"]))


def column(run: dict[str, Any], key: str, n: int | None = None) -> list[float]:
    """What the RunEngine produced: ``key`` of the run's first ``n`` events."""
    return [e[key] for e in run["events"][:n]]


def produced_before(run: dict[str, Any], at: float) -> int:
    """Events the RunEngine had produced at the time ``at``."""
    return sum(e["time"] <= at for e in run["events"])


def warm_up_catalog(folder: Path) -> None:
    """Open and close an empty catalog: tiled's imports (seconds) while the test waits."""
    from bluesky_recorders.catalog import close_catalog, open_catalog

    close_catalog(open_catalog(folder))


def catalog_runs(directory: Path, uids: list[str]) -> dict[str, Any]:
    """Per uid: its start and stop documents, streams and primary columns (None: absent)."""
    from bluesky_recorders.catalog import close_catalog, open_catalog

    cat = open_catalog(directory)
    try:
        out: dict[str, Any] = {}
        for uid in uids:
            if uid not in cat:
                out[uid] = None
                continue
            run = cat[uid]
            streams = list(run)
            columns: dict[str, list[float]] = {}
            if "primary" in streams:
                data = run["primary"].read()
                columns = {k: data[k].values.tolist() for k in ("motor", "det") if k in data}
            out[uid] = {
                "start": run.metadata["start"],
                "stop": run.metadata.get("stop"),
                "streams": streams,
                "columns": columns,
            }
        return out
    finally:
        close_catalog(cat)


# -- checks shared by both tests ---------------------------------------------------------


def check_killed_run(
    data: Path, run: dict[str, Any], *, nexus_seen: int, spec_seen: int
) -> dict[str, int]:
    """The files of a run whose recorder was killed: every point written, as produced.

    Returns the points each holds.
    """
    uid8 = run["uid"][:8]
    produced = len(run["events"])
    # NeXus: the points of the last flush, at least those seen before the kill
    nxs = one_file(data, f"*{uid8}.nxs")
    assert nxs is not None
    with h5py.File(nxs, "r") as f:
        assert "end_time" not in f["entry"]  # what a killed run's file lacks
    nexus = nexus_columns(nxs)
    n = len(nexus["det"])
    assert nexus_seen <= n <= produced, (nexus_seen, n, produced)
    assert nexus["seq_num"] == list(range(1, n + 1))
    assert nexus["motor"] == column(run, "motor", n)
    assert nexus["det"] == column(run, "det", n)
    # SPEC: every row written (one write per row)
    rows = spec_rows(one_file(data, "*.spec"), run["scan_id"])
    assert spec_seen <= len(rows) <= produced, (spec_seen, len(rows), produced)
    assert [r["motor"] for r in rows] == column(run, "motor", len(rows))
    assert [r["det"] for r in rows] == column(run, "det", len(rows))
    # jsonl: every line a whole document (one flush per document)
    jsonl = one_file(data, f"*{uid8}.jsonl")
    assert jsonl is not None
    docs, problems = load_documents(jsonl, errors="collect")
    assert problems == []
    assert [name for name, _ in docs][:2] == ["start", "descriptor"]
    assert "stop" not in [name for name, _ in docs]
    events = [d["data"] for name, d in docs if name == "event"]
    assert len(events) <= produced
    assert [e["det"] for e in events] == column(run, "det", len(events))
    return {"nexus": n, "spec": len(rows), "jsonl": len(events)}


def check_catalog(
    found: dict[str, Any], complete: list[dict[str, Any]], killed: dict[str, Any]
) -> int:
    """Complete runs whole; the killed run: its start, no stop, the batches written.

    Returns the killed run's points in the catalog.
    """
    for run in complete:
        entry = found[run["uid"]]
        assert entry is not None, f"run {run['uid']} is not in the catalog"
        assert entry["stop"]["exit_status"] == "success"
        assert entry["columns"]["det"] == column(run, "det")
        assert entry["columns"]["motor"] == column(run, "motor")
    entry = found[killed["uid"]]
    assert entry is not None, "the killed run is not in the catalog (its start was written)"
    assert entry["start"]["scan_id"] == killed["scan_id"] and entry["stop"] is None
    # TiledWriter writes events in batches: the killed run has whole batches
    n = len(entry["columns"].get("det", []))
    assert n % CATALOG_BATCH == 0 and n <= len(killed["events"]), n
    assert entry["columns"].get("det", []) == column(killed, "det", n)
    return n


def check_spec_file(problems: list[str], scans: dict[str, Any], expected: dict[int, int]):
    """The SPEC readers read every scan, with these rows (scan number: rows)."""
    assert problems == []
    assert len(scans) >= 4  # silx SpecFile, silx.io.open, spec2nexus, PyMca
    for reader, read in scans.items():
        assert {int(float(k)): rows for k, (_, rows, _) in read.items()} == expected, reader


def figures(what: str, produced: int, early: int, on_disk: dict[str, int]) -> str:
    files = ", ".join(f"{k} {v}" for k, v in on_disk.items())
    return (
        f"{what}: the RunEngine had produced {produced} events at the kill, "
        f"{early} of them at least {FLUSH_INTERVAL:g} s before it; on disk: {files}"
    )


# -- (a) recorders in the RunEngine's process ------------------------------------------


def test_kill_9_of_a_session_recording_in_process_then_a_restart(tmp_path, segments):
    data = tmp_path / "data"
    config = recorder_set_file(tmp_path, segments, console=str(tmp_path / "console.txt"))
    args = ["record", str(config), str(data), str(tmp_path / "runengine-md")]
    # the readers run in child processes, started from threads here: 2 cores share them
    with ThreadPoolExecutor(2) as pool:
        first = Child([*args, SHORT, LONG], tmp_path / "first.err")
        warm = pool.submit(warm_up_catalog, tmp_path / "empty-catalog")
        try:
            first.wait(lambda: first.events(1) >= 0, 120, "the second run to start")
            done, killed = first.runs
            first.wait(
                lambda: min(points_written(data, killed)) >= BEFORE_KILL,
                120,
                f"{BEFORE_KILL} points in the NeXus and SPEC files",
            )
            time.sleep(AFTER)
            nxs, spec = files_of(data, killed)
            nexus_seen, spec_seen = points_written(data, killed)
            children = descendants(first.proc.pid)
            at = first.kill()
        finally:
            first.close()
        assert done["stop"]["exit_status"] == "success"
        assert killed["stop"] is None, "the run ended before the kill"
        all_gone(children)  # the end-of-run plots' drawing process ends with its parent
        assert Path("/dev/shm", segments[0]).exists()  # left for the next writer to replace

        # a new process, the same data root and file; the files of the kill meanwhile
        second = Child([*args, SHORT], tmp_path / "second.err")
        try:
            on_disk = check_killed_run(data, killed, nexus_seen=nexus_seen, spec_seen=spec_seen)
            second.finish()
        finally:
            second.close()
        (after,) = second.runs
        assert after["stop"]["exit_status"] == "success"
        assert after["scan_id"] == killed["scan_id"] + 1 == done["scan_id"] + 2
        assert STALE_SEGMENT in second.stderr()  # shm: the next writer replaced it
        assert "in use" not in second.stderr()  # the feed's port, the shm segment
        nxs_after = one_file(data, f"*{after['uid'][:8]}.nxs")
        assert nxs_after is not None
        assert nexus_columns(nxs_after)["det"] == column(after, "det")
        assert one_file(data, "*.spec") == spec  # the next scan is appended to the file
        spec_found = pool.submit(spec_check, spec)
        nexus_found = pool.submit(nexus_check, nxs, nxs_after)
        warm.result()
        catalog = catalog_runs(data / "catalog", [done["uid"], killed["uid"], after["uid"]])
        in_catalog = check_catalog(catalog, [done, after], killed)
        # every reader: the killed run's file is a NeXus file, only without end_time
        assert nexus_found.result() == {nxs: [], nxs_after: []}
        check_spec_file(
            *spec_found.result(),
            {r["scan_id"]: len(r["events"]) for r in (done, after)}
            | {killed["scan_id"]: on_disk["spec"]},
        )
    log = {r.uid: r for r in RunLog(data / "bsrec-runs.sqlite").recent()}
    assert log[killed["uid"]].exit_status == "running"  # what `bsrec runs` shows
    assert log[after["uid"]].exit_status == "success"
    print(
        figures(
            "in-process recorders",
            len(killed["events"]),
            produced_before(killed, at - FLUSH_INTERVAL),
            {**on_disk, "catalog": in_catalog},
        )
    )


# -- (b) bsrec record, fed from the 0MQ proxy ------------------------------------------


class Record:
    """``bsrec record`` with the test's recorder-set file, its output into a file."""

    def __init__(self, out: Path, address: str, config: Path, data: Path) -> None:
        self.out = out
        with open(out, "w") as fh:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "bsrec"),
                    "record",
                    "--zmq",
                    address,
                    "--config",
                    str(config),
                    "--data-root",
                    str(data),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COLUMNS": "120"},
            )
        wait_for(lambda: "listening" in self.text() or self.proc.poll() is not None, 60, out.name)
        assert self.proc.poll() is None, self.text()
        # PUB/SUB slow joiner: let the subscription reach the proxy (as test_remote.py)
        time.sleep(1.5)

    def text(self) -> str:
        return self.out.read_text()

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        """``wait_for``, failing at once with its output if the process ends without it."""
        wait_for(lambda: predicate() or self.proc.poll() is not None, timeout, what)
        assert predicate(), f"{what}: exit status {self.proc.poll()}: {self.text()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def recorded(data: Path, run: dict[str, Any]) -> bool:
    """The run log lists the run as a success: every recorder of the set finished it."""
    log = RunLog(data / "bsrec-runs.sqlite")
    return any(r.uid == run["uid"] and r.exit_status == "success" for r in log.recent())


def test_kill_9_of_bsrec_record_then_a_restart_while_the_run_engine_goes_on(
    proxy, tmp_path, segments
):
    pin, pout = proxy
    data = tmp_path / "data"
    config = recorder_set_file(tmp_path, segments, console=None)
    plans = [SHORT, LONG, SHORT]
    args = ["publish", f"127.0.0.1:{pin}", str(tmp_path / "md"), *plans, "--wait"]
    engine = Child(args, tmp_path / "engine.err")
    with ThreadPoolExecutor(2) as pool:
        try:
            first = Record(tmp_path / "first.out", f"127.0.0.1:{pout}", config, data)
            try:
                engine.send("go")  # a first run, recorded whole: the catalog is open
                engine.wait(lambda: engine.stopped(0), 60, "the first run to end")
                done = engine.runs[0]
                first.wait(lambda: recorded(data, done), 120, "bsrec record to record it")
                engine.send("go")
                engine.wait(lambda: engine.events(1) >= 0, 60, "the second run to start")
                killed = engine.runs[1]
                first.wait(
                    lambda: min(points_written(data, killed)) >= BEFORE_KILL,
                    120,
                    f"{BEFORE_KILL} points in the NeXus and SPEC files",
                )
                time.sleep(AFTER)
                nxs, spec = files_of(data, killed)
                nexus_seen, spec_seen = points_written(data, killed)
                children = descendants(first.proc.pid)
                at = time.time()
                first.proc.send_signal(signal.SIGKILL)
                assert first.proc.wait(30) == -signal.SIGKILL
            finally:
                first.close()
            all_gone(children)  # the end-of-run plots' drawing process
            produced = produced_before(killed, at)
            # bsrec record again at once, as a supervisor restarts it: the RunEngine's run
            # goes on meanwhile; its documents without their start are skipped
            second = Record(tmp_path / "second.out", f"127.0.0.1:{pout}", config, data)
            try:
                joined = engine.events(1)
                engine.wait(lambda: engine.events(1) >= joined + 50, 60, "50 more events")
                assert not engine.stopped(1), "the run ended before the restart"
                engine.send("finish")
                engine.wait(lambda: engine.stopped(1), 60, "the run to end")
                # the RunEngine was not touched: every event produced, the run a success
                assert killed["stop"]["exit_status"] == "success"
                assert killed["stop"]["num_events"] == {"primary": len(killed["events"])}
                seq_nums = [e["seq_num"] for e in killed["events"]]
                assert seq_nums == list(range(1, len(seq_nums) + 1))
                engine.send("go")  # the next run: recorded whole
                engine.wait(lambda: engine.stopped(2), 60, "the next run to end")
                after = engine.runs[2]
                second.wait(lambda: recorded(data, after), 120, "bsrec record to record it")
                second.proc.send_signal(signal.SIGTERM)
                code = second.proc.wait(60)
            finally:
                second.close()
            text = second.text()
            assert code == 0, text  # no recorder failure was logged
            assert "ERROR" not in text, text
            assert text.count(killed["uid"]) == 1, text  # named once, at its stop: skipped
            assert f"Scan #{after['scan_id']}" in text  # the console recorder's table
            assert STALE_SEGMENT in text and "in use" not in text
            # the killed run's files are as the kill left them: what was produced before it
            cut = dict(killed, events=killed["events"][:produced])
            on_disk = check_killed_run(data, cut, nexus_seen=nexus_seen, spec_seen=spec_seen)
            engine.finish()
        finally:
            engine.close()
        assert after["scan_id"] == killed["scan_id"] + 1 == done["scan_id"] + 2
        nxs_after = one_file(data, f"*{after['uid'][:8]}.nxs")
        assert nxs_after is not None
        assert nexus_columns(nxs_after)["det"] == column(after, "det")
        assert one_file(data, "*.spec") == spec  # the next scan is appended to the file
        spec_found = pool.submit(spec_check, spec)
        nexus_found = pool.submit(nexus_check, nxs, nxs_after)
        catalog = catalog_runs(data / "catalog", [done["uid"], killed["uid"], after["uid"]])
        in_catalog = check_catalog(catalog, [done, after], cut)
        assert nexus_found.result() == {nxs: [], nxs_after: []}
        check_spec_file(
            *spec_found.result(),
            {r["scan_id"]: len(r["events"]) for r in (done, after)}
            | {killed["scan_id"]: on_disk["spec"]},
        )
    log = {r.uid: r for r in RunLog(data / "bsrec-runs.sqlite").recent()}
    assert log[killed["uid"]].exit_status == "running"
    assert log[after["uid"]].num_events == {"primary": len(after["events"])}
    print(
        figures(
            "bsrec record",
            produced,
            produced_before(killed, at - FLUSH_INTERVAL),
            {**on_disk, "catalog": in_catalog},
        )
    )


def test_documents_of_a_run_joined_in_the_middle_are_skipped_with_two_warnings(caplog):
    """What ``bsrec record`` does with the rest of a run after a restart (no processes)."""
    from bluesky_recorders.remote import JoinedMidRun
    from bluesky_recorders.testing import scalar_run

    cut, whole = scalar_run(4), scalar_run(3, scan_id=2)
    names = [name for name, _ in cut]
    first_event = names.index("descriptor", 1) + 2  # after the primary descriptor and 1 event
    for joined_at in (1, first_event):  # before, then after, the primary descriptor
        joined = JoinedMidRun()
        caplog.clear()
        kept = [(name, doc) for name, doc in cut[joined_at:] + whole if joined.keep(name, doc)]
        assert kept == whole
        warnings = [r.getMessage() for r in caplog.records if r.name.endswith(".remote")]
        assert len(warnings) == 2 and cut[0][1]["uid"] in warnings[1], warnings
    # while a run of its own is open, a document it cannot place goes to the recorders,
    # which report it (an event of a descriptor never published, a hostile stream...)
    joined = JoinedMidRun()
    assert joined.keep(*whole[0])
    assert joined.keep("event", {**cut[2][1], "descriptor": "never-published"})
    assert joined.keep("event", ["not", "a", "document"])
