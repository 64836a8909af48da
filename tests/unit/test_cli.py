"""The `bsrec` command: runs, config check, errors."""

import json

import pytest

from bluesky_recorders import RecorderSet, RunLog
from bluesky_recorders.cli import main
from bluesky_recorders.recorder import Recorder, RunWriter
from bluesky_recorders.testing import feed, scalar_run


class FileWriter(RunWriter):
    def start(self, doc):
        self.artifacts.append(f"/data/scan_{doc['scan_id']}.{self.recorder.name}")


class FileRecorder(Recorder):
    kind = "files"
    writer_class = FileWriter


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "set.toml"
    path.write_text("[recorders.console]\nprogress = false\n")
    return path


def test_runs_lists_scan_plan_times_status_uid_and_files(tmp_path, config, capsys):
    data = tmp_path / "data"
    rs = RecorderSet(
        [FileRecorder(name="nexus"), FileRecorder(name="spec")],
        run_log=RunLog(data / "bsrec-runs.sqlite"),
    )
    ok = scalar_run(3, scan_id=11)
    failed = scalar_run(3, scan_id=12, plan_name="rel_scan", exit_status="abort")
    feed(rs, ok)
    feed(rs, failed)
    rs.close()
    assert main(["runs", "--config", str(config), "--data-root", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["scan", "plan", "start", "duration", "exit", "uid"]
    # newest first, each run followed by its files
    assert out[1].split()[0:2] == ["12", "rel_scan"] and out[1].split()[-2:] == [
        "abort",
        failed[0][1]["uid"],
    ]
    assert "nexus: /data/scan_12.nexus" in out[2] and "spec: /data/scan_12.spec" in out[3]
    assert out[4].split()[0:2] == ["11", "scan"] and "success" in out[4]


def test_runs_json(tmp_path, config, capsys):
    data = tmp_path / "data"
    rs = RecorderSet([FileRecorder()], run_log=RunLog(data / "bsrec-runs.sqlite"))
    feed(rs, scalar_run(2, scan_id=5))
    rs.close()
    assert main(["runs", "--json", "--config", str(config), "--data-root", str(data)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["scan_id"] == 5 and row["exit_status"] == "success"
    assert row["artifacts"] == {"files": ["/data/scan_5.files"]}
    assert row["duration"] >= 0


def test_runs_with_no_log_yet(tmp_path, config, capsys):
    assert main(["runs", "--config", str(config), "--data-root", str(tmp_path)]) == 0
    assert "no runs recorded yet" in capsys.readouterr().out


def test_config_check_ok_and_bad(tmp_path, config, capsys):
    assert main(["config", "check", str(config)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[recorders.consol]\n")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "unknown recorder kind 'consol'" in err and "console" in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "session" in capsys.readouterr().out
