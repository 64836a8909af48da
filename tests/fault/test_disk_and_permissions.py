"""Full disks and unwritable folders, for real: small tmpfs file systems the test mounts.

The tests run as root (as CI does): root may mount a tmpfs of a few MiB, which fills
like any disk ("No space left on device"), and a read-only one, which even root cannot
write. A folder root may write but another user may not is tried with that user
(``setpriv`` to nobody).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import SynAxis, SynGauss, SynSignal

from bluesky_recorders import PreflightError, install_preflight, load_recorder_set
from bluesky_recorders.jsonl import load_documents
from bluesky_recorders.preflight import check_directory, free_bytes, parse_size
from readers import nexus_problems, spec_scans


def _mount(point: Path, options: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.fail(
            "this test mounts a small tmpfs to fill a disk for real and needs root "
            f"(CI runs as root): mount -o {options} failed: {done.stderr.strip()}"
        )


@contextmanager
def small_disk(point: Path, size: str = "4m", *, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``point`` for the duration of the block."""
    _mount(point, f"size={size},mode=0755" + (",ro" if read_only else ""))
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(
    data_root: Path, other_root: Path, *, nexus_policy: str = "abort", reserve: str = "256 KiB"
) -> str:
    """NeXus on ``data_root``; SPEC, JSONL and the catalog on ``other_root``."""
    return textwrap.dedent(
        f"""
        [settings]
        min_free = "512 KiB"
        run_log = "{other_root}/bsrec-runs.sqlite"
        [recorders.nexus]
        on_error = "{nexus_policy}"
        flush_interval = 0.0
        reserve = "{reserve}"
        [recorders.spec]
        data_root = "{other_root}"
        on_error = "warn"
        [recorders.jsonl]
        data_root = "{other_root}"
        on_error = "abort"
        [recorders.catalog]
        directory = "{other_root}/catalog"
        """
    )


def _devices():
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    # 32 KiB per point: 4 MiB are full after about a hundred points
    spectrum = SynSignal(func=lambda: np.arange(4096, dtype=float), name="spectrum")
    return motor, det, spectrum


def _spec_rows(path: Path) -> list[int]:
    """Rows of each scan, as every SPEC reader (silx, PyMca, spec2nexus) sees them."""
    seen = {
        reader: [rows for _, rows, _ in scans.values()]
        for reader, scans in spec_scans(path).items()
    }
    assert len(seen) >= 2 and len({tuple(v) for v in seen.values()}) == 1, seen
    return next(iter(seen.values()))


def _rows(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return len(f["entry/data/det"])


def _refused(text: str, data_root: Path) -> tuple[str, list[str], RunEngine]:
    """A scan under ``install_preflight`` that must be refused: the message, the
    documents the RunEngine emitted, the RunEngine."""
    rs = load_recorder_set(text=text, data_root=data_root)
    RE = RunEngine({})
    docs: list[str] = []
    RE.subscribe(lambda name, doc: docs.append(name))
    RE.subscribe(rs)
    install_preflight(RE, rs.preflight)
    motor, det, _ = _devices()
    with pytest.raises(PreflightError) as info:
        RE(scan([det], motor, -1, 1, 3))
    rs.close()
    return str(info.value), docs, RE


def test_a_run_is_refused_before_it_starts_when_the_disk_is_nearly_full(tmp_path):
    with small_disk(tmp_path / "small", "2m") as small:
        text = "[settings]\nmin_free = '1 GiB'\n[recorders.nexus]\n[recorders.spec]\n"
        message, docs, RE = _refused(text, small)
        assert "run refused before it started" in message
        assert f"recorder 'nexus': cannot record into {small}" in message
        assert "recorder 'spec'" in message
        assert "MiB free on its file system, less than the 1.0 GiB required" in message
        assert docs == []  # no start document: no scan id spent, nothing to clean
        assert list(small.iterdir()) == []  # no file, no folder, no probe left behind
        assert "scan_id" not in RE.md


def test_a_read_only_data_root_fails_before_the_run_starts(tmp_path):
    with small_disk(tmp_path / "ro", read_only=True) as ro:
        text = "[settings]\nmin_free = 0\n[recorders.nexus]\n[recorders.catalog]\n"
        message, docs, _ = _refused(text, ro)
        assert f"recorder 'nexus': cannot record into {ro}" in message
        assert f"recorder 'catalog': cannot record into {ro}/catalog" in message
        assert "Read-only file system" in message
        assert docs == []


def test_a_recorder_alone_refuses_the_run_at_its_start_document(tmp_path):
    """Without the RunEngine hook (a recorder subscribed alone): refused at the start."""
    from bluesky_recorders import NexusRecorder, RecorderError

    with small_disk(tmp_path / "ro", read_only=True) as ro:
        recorder = NexusRecorder(data_root=ro, min_free=0)
        RE = RunEngine({})
        RE.subscribe(recorder)
        stops = []
        RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
        motor, det, _ = _devices()
        with pytest.raises(RecorderError) as info:
            RE(scan([det], motor, -1, 1, 3))
        assert "recorder 'nexus' failed on start document" in str(info.value)
        assert "Read-only file system" in str(info.value)
        assert stops[0]["exit_status"] == "fail" and stops[0]["num_events"] == {}
        recorder.close()


UNPRIVILEGED = textwrap.dedent(
    """
    import sys
    from bluesky_recorders import PreflightError, load_recorder_set
    rs = load_recorder_set(text="[settings]\\nmin_free = 0\\n[recorders.spec]\\n",
                           data_root=sys.argv[1])
    try:
        rs.preflight({"uid": "x", "time": 1.7e9, "scan_id": 1})
    except PreflightError as err:
        print(err)
        sys.exit(3)
    finally:
        rs.close()
    """
)


def _as_nobody(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        + [sys.executable, "-c", UNPRIVILEGED, str(root)],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )


def test_a_folder_the_user_cannot_write_fails_before_the_run_starts(tmp_path):
    """As the user nobody: a folder owned by root (mode 0755), then one it cannot reach."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # pytest's own folders are 0700
        os.chmod(top, 0o755)
        root = Path(top, "locked")
        root.mkdir(mode=0o755)
        done = _as_nobody(root)
        assert done.returncode == 3, done.stderr
        assert "recorder 'spec': cannot record into" in done.stdout
        assert f"cannot create files in {root}: Permission denied" in done.stdout
        assert list(root.iterdir()) == []

        os.chmod(top, 0o700)
        done = _as_nobody(root)
        assert done.returncode == 3, done.stderr
        assert f"(uid 65534) cannot reach {root}: Permission denied" in done.stdout


def _record(RE, plan):
    """Run ``plan``; return the exception it raised, if any."""
    try:
        RE(plan)
    except Exception as err:  # the run's failure, to look at
        return err
    return None


@pytest.mark.parametrize("reserve", ["256 KiB", "0"], ids=["reserve", "no-reserve"])
def test_a_full_disk_mid_run_aborts_the_run_and_loses_nothing_else(tmp_path, reserve):
    """With a reserve, NeXus stops writing while the file can still close cleanly; with
    none, the disk really fills under HDF5 (as when another program fills it)."""
    other = tmp_path / "other"
    with small_disk(tmp_path / "small", "4m") as small:
        rs = load_recorder_set(text=_config(small, other, reserve=reserve), data_root=small)
        RE = RunEngine({})
        stops = []
        RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
        RE.subscribe(rs)
        install_preflight(RE, rs.preflight)
        motor, det, spectrum = _devices()

        # a first run, complete: what must survive the full disk
        assert _record(RE, scan([det, spectrum], motor, -1, 1, 5)) is None
        (first,) = small.rglob("*.nxs")
        before = _sha(first)

        # the disk fills during the second run
        err = _record(RE, count([det, spectrum], 400))
        assert err is not None
        message = str(err)
        second = next(p for p in small.rglob("*.nxs") if p != first)
        assert f"recorder 'nexus' failed writing {second}" in message
        assert re.search(
            rf"the disk is full: [0-9.]+ (B|KiB|MiB) free on the file system of {second}", message
        ), message
        if reserve != "0":
            assert "less than the reserve of 256.0 KiB kept so that the file closes" in message
        assert stops[-1]["exit_status"] in ("abort", "fail")
        assert "recorder 'nexus' failed" in stops[-1]["reason"]
        produced = stops[-1]["num_events"].get("primary", 0)
        assert 0 < produced < 400
        # the file of the run the disk stopped opens, with the points written before
        kept = _rows(second)
        assert 0 < kept <= produced
        if reserve != "0":  # flushed before the disk filled: every reader is content
            assert nexus_problems(second, complete=False) == []

        # everything written before is intact, the other recorders have every point
        assert _sha(first) == before
        assert _rows(first) == 5
        spec_file = next(other.rglob("*.spec"))
        assert _spec_rows(spec_file) == [5, produced]
        jsonl = sorted(other.rglob("*.jsonl"))[-1]
        back, problems = load_documents(jsonl)
        assert problems == []
        assert sum(1 for n, d in back if n == "event") >= produced
        assert [n for n, _ in back][-1] == "stop"
        catalog = rs["catalog"].catalog
        assert catalog[stops[-1]["run_start"]].metadata["stop"]["exit_status"] in (
            "abort",
            "fail",
        )
        assert len(catalog[stops[-1]["run_start"]].primary.read()["det"]) == produced

        # room again: the next run is recorded normally, on the same small disk
        second.unlink()
        assert free_bytes(small) > parse_size("1 MiB")
        assert _record(RE, scan([det, spectrum], motor, -1, 1, 7)) is None
        assert stops[-1]["exit_status"] == "success"
        third = max(small.rglob("*.nxs"), key=os.path.getmtime)
        assert _rows(third) == 7
        rs.close()


def test_a_full_disk_under_the_warn_policy_lets_the_run_go_on(tmp_path, caplog):
    """The NeXus recorder stops (and says so once); the run and the others go on."""
    other = tmp_path / "other"
    with small_disk(tmp_path / "small", "2m") as small:
        rs = load_recorder_set(text=_config(small, other, nexus_policy="warn"), data_root=small)
        RE = RunEngine({})
        stops = []
        RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
        RE.subscribe(rs)
        motor, det, spectrum = _devices()
        with caplog.at_level(logging.WARNING, logger="bluesky_recorders"):
            assert _record(RE, count([det, spectrum], 200)) is None
        rs.close()
        assert stops[-1]["exit_status"] == "success"
        messages = [r.getMessage() for r in caplog.records]
        warned = [m for m in messages if "the disk is full" in m and "policy 'warn'" in m]
        assert len(warned) == 1 and "recorder 'nexus' failed writing" in warned[0]
        assert _spec_rows(next(other.rglob("*.spec"))) == [200]


def test_check_directory_names_the_folder_and_what_is_missing(tmp_path):
    with small_disk(tmp_path / "small", "1m") as small:
        check_directory(small / "not" / "yet", min_free=0)  # the nearest folder is checked
        with pytest.raises(PreflightError) as info:
            check_directory(small / "a", min_free=parse_size("2 MiB"), who="nexus")
        assert str(info.value).startswith(
            f"recorder 'nexus': cannot record into {small}/a (to be created in {small}): "
            "only 1.0 MiB free"
        )
        (small / "file").write_bytes(b"")
        with pytest.raises(PreflightError, match="is not a folder"):
            check_directory(small / "file" / "x", min_free=0)


def test_a_full_disk_under_spec_and_jsonl_keeps_the_earlier_scans(tmp_path):
    """The text recorders on a disk that fills: the earlier scans of the experiment's SPEC
    file stay readable by every reader, the message names the file and the free space."""
    with small_disk(tmp_path / "small", "1m") as small:
        text = (
            "[settings]\nmin_free = 0\n"
            "[recorders.spec]\non_error = 'warn'\n[recorders.jsonl]\non_error = 'abort'\n"
        )
        rs = load_recorder_set(text=text, data_root=small)
        RE = RunEngine({})
        stops = []
        RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
        RE.subscribe(rs)
        motor, det, _ = _devices()
        assert _record(RE, scan([det], motor, -1, 1, 5)) is None
        spec_file = next(small.rglob("*.spec"))
        before = spec_file.read_bytes()
        (small / "filler").write_bytes(b"\0" * (free_bytes(small) - 16 * 1024))
        err = _record(RE, count([det], 2000))
        rs.close()
        assert err is not None and "the disk is full" in str(err)
        assert re.search(r"recorder 'jsonl' failed writing \S+\.jsonl", str(err))
        assert stops[-1]["exit_status"] in ("abort", "fail")
        assert spec_file.read_bytes().startswith(before)  # appended to, never rewritten
        # the scan the disk cut may end in a cut line: the first one is whole for everyone
        seen = spec_scans(spec_file)
        assert {"silx SpecFile", "PyMca5", "spec2nexus"} <= set(seen), seen.keys()
        for reader, scans in seen.items():
            assert next(iter(scans.values()))[1] == 5, reader
