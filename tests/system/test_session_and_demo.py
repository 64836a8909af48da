"""`bsrec session` and `bsrec demo` as a beamline scientist runs them (real IOCs, subprocesses)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BSREC = str(Path(sys.executable).parent / "bsrec")

pytestmark = pytest.mark.ioc


def run(args, **kw):
    env = {**os.environ, "COLUMNS": "120"}
    env["PATH"] = os.pathsep.join([str(Path(BSREC).parent), env.get("PATH", "")])  # as in a venv
    for var in ("BSREC_DATA_ROOT", "BSREC_CONFIG", "BSREC_STATE_DIR"):
        env.pop(var, None)
    return subprocess.run([BSREC, *args], capture_output=True, text=True, env=env, **kw)


def test_demo_records_three_runs_reads_them_back_and_stops_the_iocs(tmp_path):
    proc = run(["demo", "--data-root", str(tmp_path)], timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Scan #1 (scan) started" in out and "Scan #2 (grid_scan) started" in out
    assert "Scan #3 (count) started" in out
    assert out.count(": success,") == 3
    assert "catalog reads back the detector images: shape (5, 1, 48, 64)" in out
    assert "NeXus file links the detector frames: shape (5, 48, 64)" in out
    assert "Where each recorder put its output:" in out and "How to open it:" in out
    assert "simulated beamline stopped" in out
    assert not (tmp_path / ".sim" / "sim.json").exists()  # IOCs stopped, state removed
    # the detector files are on the "detector disk", not copied anywhere
    assert list((tmp_path / "detector-disk").rglob("*.h5"))
    runs = run(["runs", "--data-root", str(tmp_path)])
    assert runs.returncode == 0
    lines = runs.stdout.splitlines()
    assert [line.split()[1] for line in lines[1:] if line[:5].strip().isdigit()] == [
        "count",
        "grid_scan",
        "scan",
    ]
    assert sum("catalog: " in line for line in lines) == 3
    assert sum("nexus: " in line for line in lines) == 3
    # NeXus files in the experiment's folder named by the metadata service (PI Lovelace)
    nexus = list(tmp_path.glob("20[0-9][0-9]-[01][0-9]/lovelace/*.nxs"))
    assert len(nexus) == 3
    # ...and the SPEC file of the experiment, with the three scans
    (spec,) = tmp_path.glob("20[0-9][0-9]-[01][0-9]/lovelace/*.spec")
    assert [line.split()[1] for line in spec.read_text().splitlines() if line[:3] == "#S "] == [
        "1",
        "2",
        "3",
    ]
    # every reader of formats.md opens them
    from readers import nexus_problems_many, spec_problems

    found = nexus_problems_many(nexus)
    assert [f"{p.name}: {m}" for p, ms in found.items() for m in ms] == []
    assert spec_problems(spec) == []


def test_session_runs_a_scan_records_it_and_stops_the_iocs_it_started(tmp_path):
    commands = (
        "!bsrec metadata set sample.name=Si pi.name='Jane Doe'\n"
        "RE(scan([ph_det], ph_mtr, -1, 1, 3))\n"
        "print('ROWS', len(catalog()[-1].primary.read()['ph_det']))\n"
        "print('SAMPLE', catalog()[-1].start['experiment']['sample']['name'])\n"
        "!bsrec runs\n"
    )
    proc = run(
        ["session", "--data-root", str(tmp_path / "data"), "--state-dir", str(tmp_path / "st")],
        input=commands,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "motors    : ph_mtr, edge_mtr, slit_mtr, dot_mtrx, dot_mtry" in out  # the banner
    assert "Scan #1 (scan) started" in out and ": success, 3 events" in out
    assert "ROWS 3" in out
    assert "experiment: none set" in out  # the banner, before anything was set
    assert "Run uid" in out and "PI Jane Doe, sample Si" in out  # the console's run line
    assert "SAMPLE Si" in out  # the metadata service's snapshot is in the start document
    assert "catalog: " + str(tmp_path / "data" / "catalog" / "catalog.db") in out
    assert not (tmp_path / "st" / "sim" / "sim.json").exists()


def test_the_session_leaves_the_repository_profile_untouched():
    profile = Path(__file__).resolve().parents[2] / "profiles" / "profile_bsrec"
    assert sorted(p.name for p in profile.iterdir()) == ["ipython_config.py", "startup"]
