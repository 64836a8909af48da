"""``bsrec metadata sync|set|show`` against the simulated beamline's real metadata IOC."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bluesky_recorders.metadata.cli import main

pytestmark = pytest.mark.ioc

SCHEDULE = """\
beamline_id = "BL-9"

[[beamtime]]
start = 2026-11-20T08:00:00-06:00
end = 2026-11-23T08:00:00-06:00
proposal_id = "GUP-12345"
title = "In situ oxidation"
safety_form_id = "ESAF-2027-1"
pi = "Jane Müller <jane@example.org>"
users = ["Ann Lee <ann@example.org>", "Bo Chen <bo@example.org>"]

[[beamtime]]
start = 2026-11-23T08:00:00-06:00
end = 2026-11-24T08:00:00-06:00
proposal_id = "GUP-2"
pi = "Ken Roe <ken@example.org>"
"""

ACTIVITIES = [
    {
        "activityStartTime": "2027-02-01T08:00:00-06:00",
        "activityEndTime": "2027-02-04T08:00:00-06:00",
        "beamtime": {
            "esafId": 314,
            "proposal": {
                "gupId": 777,
                "proposalTitle": "Operando batteries",
                "experimenters": [
                    {"firstName": "Li", "lastName": "Wu", "email": "li@example.org", "piFlag": "N"},
                    {
                        "firstName": "Eva",
                        "lastName": "Stone",
                        "email": "eva@example.org",
                        "piFlag": "Y",
                    },
                ],
            },
        },
    }
]
RUNS = [
    {"runName": "2027-1", "startTime": "2027-01-01T00:00:00Z", "endTime": "2027-05-01T00:00:00Z"}
]


@pytest.fixture
def cli(sim, metadata_service, tmp_path, capsys):
    """Run ``bsrec metadata ...`` on the sim's metadata IOC; returns (code, stdout, stderr)."""
    common = ["--state-dir", str(sim.state_dir), "--prefix", sim.metadata_prefix]

    def run(action, *args, data_root=True):
        extra = ["--data-root", str(tmp_path / "data")] if action == "sync" and data_root else []
        code = main([action, *common, *extra, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def show_json(cli):
    code, out, err = cli("show", "--json")
    assert code == 0, err
    return json.loads(out)


def test_sync_from_a_schedule_file_writes_the_active_beamtime(cli, tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text(SCHEDULE, encoding="utf-8")
    assert cli("set", "instrument.source=bending magnet")[0] == 0
    code, out, err = cli("sync", "--schedule", str(path), "--at", "2026-11-21T12:00:00-06:00")
    assert code == 0, err
    assert "GUP-12345" in out
    snap = show_json(cli)
    assert snap["proposal_id"] == "GUP-12345"
    assert snap["title"] == "In situ oxidation"
    assert snap["safety_form_id"] == "ESAF-2027-1"
    assert snap["pi"] == {"name": "Jane Müller", "last_name": "Müller", "email": "jane@example.org"}
    assert snap["users"] == [
        {"name": "Ann Lee", "email": "ann@example.org"},
        {"name": "Bo Chen", "email": "bo@example.org"},
    ]
    assert snap["beamline_id"] == "BL-9"
    assert snap["data_directory"] == str(tmp_path / "data" / "2026-11" / "muller")
    assert snap["instrument"]["source"] == "bending magnet"  # sync leaves the instrument alone
    assert snap["updated"]


def test_sync_to_a_new_proposal_clears_the_sample(cli, tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text(SCHEDULE, encoding="utf-8")
    code, _, err = cli("sync", "--schedule", str(path), "--at", "2026-11-21T12:00:00-06:00")
    assert code == 0, err
    assert cli("set", "sample.name=Si")[0] == 0
    code, _, err = cli("sync", "--schedule", str(path), "--at", "2026-11-23T09:00:00-06:00")
    assert code == 0, err
    snap = show_json(cli)
    assert (snap["proposal_id"], snap["pi"]["last_name"]) == ("GUP-2", "Roe")
    assert snap["sample"]["name"] == ""
    assert snap["users"] == []


def test_sync_from_the_facility_api(cli, tmp_path):
    routes = {
        "/api/run/getAllRuns": json.dumps(RUNS).encode(),
        "/api/activity/findByRunNameAndBeamlineId/2027-1/BL-9": json.dumps(ACTIVITIES).encode(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = routes.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/api"
        code, out, err = cli(
            "sync", "--api", base, "--beamline", "BL-9", "--at", "2027-02-02T10:00:00Z"
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert code == 0, err
    snap = show_json(cli)
    assert snap["proposal_id"] == "777"
    assert snap["title"] == "Operando batteries"
    assert snap["safety_form_id"] == "314"
    assert snap["pi"] == {"name": "Eva Stone", "last_name": "Stone", "email": "eva@example.org"}
    assert [u["name"] for u in snap["users"]] == ["Li Wu", "Eva Stone"]
    assert snap["beamline_id"] == "BL-9"
    assert snap["data_directory"] == str(tmp_path / "data" / "2027-02" / "stone")


def test_set_then_show(cli):
    code, out, err = cli(
        "set", "sample.name=Si", "sample.temperature=300 K", "instrument.mono_energy=8.05"
    )
    assert code == 0, err
    snap = show_json(cli)
    assert snap["sample"]["name"] == "Si"
    assert snap["sample"]["extra"]["temperature"] == "300 K"
    assert snap["instrument"]["monochromator_energy"] == pytest.approx(8.05)
    code, out, err = cli("show")
    assert code == 0, err
    assert "  sample          Si" in out
    assert "  temperature   300 K" in out
    assert "mono energy     8.05 keV" in out


def test_set_refuses_an_unknown_key(cli):
    code, _, err = cli("set", "sample.name=Ge", "proposl.id=X")
    assert code == 1
    assert err.startswith("bsrec: error: unknown metadata key 'proposl.id'")
    assert show_json(cli)["sample"]["name"] != "Ge"  # nothing written


def test_no_active_beamtime_exits_1_and_commissioning_works(cli, tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text(SCHEDULE, encoding="utf-8")
    before = show_json(cli)
    code, out, err = cli("sync", "--schedule", str(path), "--at", "2026-12-25T12:00:00Z")
    assert code == 1
    assert f"bsrec: error: {path}: no beamtime at 2026-12-25T12:00:00+00:00" in err
    assert "--commissioning" in err
    assert show_json(cli)["proposal_id"] == before["proposal_id"]  # left alone

    code, out, err = cli(
        "sync",
        "--schedule",
        str(path),
        "--at",
        "2026-12-25T12:00:00Z",
        "--commissioning",
        "--pi",
        "Sam Staff <sam@example.org>",
    )
    assert code == 0, err
    snap = show_json(cli)
    assert snap["proposal_id"] == "commissioning"
    assert snap["pi"]["last_name"] == "Staff"
    assert snap["data_directory"] == str(tmp_path / "data" / "2026-12" / "staff")
    assert cli("set", "sample.name=alignment foil")[0] == 0  # no proposal needed
    assert show_json(cli)["sample"]["name"] == "alignment foil"


def test_an_unreachable_service_is_a_clear_error(cli):
    code, _, err = cli("show", "--prefix", "NOPE:", "--timeout", "0.5")
    assert code == 1
    assert err.startswith("bsrec: error: metadata service 'NOPE:' not reachable")
