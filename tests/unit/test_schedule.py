"""Schedules: the TOML and CSV loaders, active(), to_snapshot and the APS-shaped API client."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bluesky_recorders.errors import BsrecError
from bluesky_recorders.metadata.cli import commissioning_snapshot, format_snapshot, sync_values
from bluesky_recorders.metadata.schedule import (
    Beamtime,
    Person,
    ScheduleAPIError,
    ScheduleClient,
    ScheduleError,
    active,
    auth_from_env,
    find_overlaps,
    load_schedule,
    parse_activities,
    parse_person,
    parse_time,
    to_snapshot,
)

CHICAGO = timezone(timedelta(hours=-6))

GOOD_TOML = """\
beamline_id = "BL-9"

[[beamtime]]
start = 2026-11-20T08:00:00-06:00
end = 2026-11-23T08:00:00-06:00
proposal_id = 12345
title = "In situ oxidation"
safety_form_id = "ESAF-2027-1"
pi = {name = "Jane Doe", email = "jane.doe@example.org"}
users = ["Ann Lee <ann@example.org>", {name = "Bo Chen", email = "bo@example.org"}]

[[beamtime]]
start = "2026-11-23T08:00:00Z"
end = "2026-11-24T08:00:00Z"
proposal_id = "GUP-2"
pi = "María van der Berg <maria@example.org>"
beamline_id = "BL-10"
"""

GOOD_CSV = """\
start,end,proposal_id,title,pi,pi_last_name,users,beamline_id
# a comment row
2026-11-20T08:00-06:00,2026-11-23T08:00-06:00,GUP-12345,"In situ, oxidation",\
Jane Doe <jane.doe@example.org>,,Ann Lee <ann@example.org>; Bo Chen <bo@example.org>,BL-9

2026-11-23T08:00-06:00,2026-11-24T08:00-06:00,GUP-2,,María van der Berg,van der Berg,,BL-9
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def bt(start_h, end_h, proposal="P", beamline="BL-9", day=20):
    base = datetime(2026, 11, day, tzinfo=UTC)
    return Beamtime(
        start=base + timedelta(hours=start_h),
        end=base + timedelta(hours=end_h),
        proposal_id=proposal,
        beamline_id=beamline,
    )


# -- files ----------------------------------------------------------------------------------


def test_toml_schedule_is_read_with_people_and_zones(tmp_path):
    path = write(tmp_path, "schedule.toml", GOOD_TOML)
    first, second = load_schedule(path)
    assert first.start == datetime(2026, 11, 20, 8, tzinfo=CHICAGO)
    assert first.end.utcoffset() == timedelta(hours=-6)
    assert first.proposal_id == "12345"  # a number is taken as text
    assert first.title == "In situ oxidation"
    assert first.safety_form_id == "ESAF-2027-1"
    assert first.pi == Person("Jane Doe", "Doe", "jane.doe@example.org")
    assert [(u.name, u.email) for u in first.users] == [
        ("Ann Lee", "ann@example.org"),
        ("Bo Chen", "bo@example.org"),
    ]
    assert first.beamline_id == "BL-9"  # the file's default
    assert first.source == f"{path}:3"
    assert second.start == datetime(2026, 11, 23, 8, tzinfo=UTC)
    assert second.pi.last_name == "Berg"
    assert second.beamline_id == "BL-10"


def test_csv_schedule_is_read_with_quoted_commas_and_users(tmp_path):
    path = write(tmp_path, "schedule.csv", GOOD_CSV)
    first, second = load_schedule(path)
    assert first.title == "In situ, oxidation"
    assert first.pi == Person("Jane Doe", "Doe", "jane.doe@example.org")
    assert [u.email for u in first.users] == ["ann@example.org", "bo@example.org"]
    assert first.source == f"{path}:3"
    assert second.source == f"{path}:5"
    assert second.pi == Person("María van der Berg", "van der Berg", "")
    assert second.users == ()
    assert second.start == datetime(2026, 11, 23, 8, tzinfo=CHICAGO)


def test_naive_times_are_local_or_the_given_zone(tmp_path):
    text = "start,end\n2026-11-20 08:00,2026-11-21\n"
    path = write(tmp_path, "s.csv", text)
    (local,) = load_schedule(path)
    assert local.start == datetime(2026, 11, 20, 8).astimezone()
    assert local.end == datetime(2026, 11, 21).astimezone()
    (chicago,) = load_schedule(path, tz=CHICAGO)
    assert chicago.start == datetime(2026, 11, 20, 8, tzinfo=CHICAGO)
    toml_text = "[[beamtime]]\nstart = 2026-11-20T08:00:00\nend = 2026-11-21\n"
    toml = write(tmp_path, "s.toml", toml_text)
    (local_toml,) = load_schedule(toml)
    assert local_toml.start == datetime(2026, 11, 20, 8).astimezone()
    assert local_toml.end == datetime(2026, 11, 21).astimezone()


TOML_HEAD = '[[beamtime]]\nstart = "2026-11-20T08:00Z"\nend = "2026-11-21T08:00Z"\n'


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        ('proposal_id = "A"\nstrat = 1\n', 7, "[[beamtime]] #2 strat: unknown field"),
        ('start = "yesterday"\nend = "2026-11-22T08:00Z"\n', 6, "start: not an ISO 8601 time"),
        ('start = "2026-11-22T08:00Z"\nend = "2026-11-22T07:00Z"\n', 7, "end: 2026-11-22T07:00"),
        ('start = "2026-11-22T08:00Z"\n', 5, "[[beamtime]] #2 no end time"),
        (
            'start = "2026-11-22T08:00Z"\nend = "2026-11-23T08:00Z"\npi = "Jo <not-an-email>"\n',
            8,
            "pi: not an email address: 'not-an-email'",
        ),
        (
            'start = "2026-11-22T08:00Z"\nend = "2026-11-23T08:00Z"\n\n'
            'users = ["Ann <a@b.org>", 7]\n',
            9,
            "users: user 2: expected 'Name <email>'",
        ),
        (
            'start = "2026-11-22T08:00Z"\nend = "2026-11-23T08:00Z"\ntitle = ["x"]\n',
            8,
            "title: expected text, got list",
        ),
        (
            'start = "2026-11-22T08:00Z"\nend = "2026-11-23T08:00Z"\n'
            'pi = {name = "Jo", mail = "jo@x.org"}\n',
            8,
            "pi: unknown key(s) ['mail']",
        ),
    ],
)
def test_toml_errors_name_file_line_table_and_field(tmp_path, body, line, expected):
    path = write(tmp_path, "schedule.toml", TOML_HEAD + "\n[[beamtime]]\n" + body)
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message


def test_toml_unknown_top_level_key_and_bad_syntax(tmp_path):
    path = write(tmp_path, "s.toml", 'beamline = "BL-9"\n' + TOML_HEAD)
    with pytest.raises(ScheduleError, match=rf"^{path}:1: unknown key 'beamline'"):
        load_schedule(path)
    path = write(tmp_path, "bad.toml", "[[beamtime]\n")
    with pytest.raises(ScheduleError, match=rf"^{path}: not valid TOML"):
        load_schedule(path)


CSV_HEAD = "start,end,proposal_id,pi,users\n2026-11-20T08:00Z,2026-11-21T08:00Z,A,,\n"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("soon,2026-11-23T08:00Z,B,,", "row start: not an ISO 8601 time: 'soon'"),
        (",2026-11-23T08:00Z,B,,", "row no start time"),
        ("2026-11-23T08:00Z,2026-11-22T08:00Z,B,,", "row end: "),
        ("2026-11-22T08:00Z,2026-11-23T08:00Z,B,Jo <jo@>,", "row pi: not an email"),
        ("2026-11-22T08:00Z,2026-11-23T08:00Z,B,,Ann <ann@x.org>; Bo <bo>", "row users: user 2"),
        ("2026-11-22T08:00Z,2026-11-23T08:00Z,B,,,extra", "6 cells but 5 columns"),
    ],
)
def test_csv_errors_name_file_row_line_and_field(tmp_path, row, expected):
    path = write(tmp_path, "schedule.csv", CSV_HEAD + "\n" + row + "\n")
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: "), message
    assert expected in message


def test_csv_header_errors(tmp_path):
    path = write(tmp_path, "s.csv", "start,end,proposal\n")
    with pytest.raises(ScheduleError, match=rf"^{path}:1: unknown column 'proposal'"):
        load_schedule(path)
    path = write(tmp_path, "s2.csv", "\nstart,proposal_id\n")
    with pytest.raises(ScheduleError, match=rf"^{path}:2: no 'end' column"):
        load_schedule(path)
    path = write(tmp_path, "s3.csv", "")
    with pytest.raises(ScheduleError, match="empty schedule"):
        load_schedule(path)


def test_unreadable_and_unknown_formats(tmp_path):
    with pytest.raises(ScheduleError, match="missing.toml: cannot read"):
        load_schedule(tmp_path / "missing.toml")
    path = write(tmp_path, "s.json", "[]")
    with pytest.raises(ScheduleError, match="unknown schedule format '.json'"):
        load_schedule(path)
    assert isinstance(ScheduleError("x"), BsrecError)


def test_overlapping_beamtimes_are_reported_with_both_lines(tmp_path):
    text = (
        "start,end,proposal_id,beamline_id\n"
        "2026-11-20T08:00Z,2026-11-22T08:00Z,A,BL-9\n"
        "2026-11-21T08:00Z,2026-11-23T08:00Z,B,BL-10\n"  # another beamline: fine
        "2026-11-21T20:00Z,2026-11-23T08:00Z,C,BL-9\n"
    )
    path = write(tmp_path, "s.csv", text)
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    message = str(info.value)
    assert "overlapping beamtimes" in message
    assert f"{path}:2 (A," in message and f"{path}:4 (C," in message
    assert ":3 (B" not in message


def test_back_to_back_beamtimes_do_not_overlap():
    assert find_overlaps([bt(0, 8), bt(8, 16), bt(16, 24)]) == []
    a, b = bt(0, 9, "A"), bt(8, 16, "B", beamline="")
    assert find_overlaps([b, a]) == [(a, b)]


# -- active ---------------------------------------------------------------------------------


def test_active_is_start_inclusive_end_exclusive():
    a, b = bt(0, 8, "A"), bt(8, 16, "B")
    at = datetime(2026, 11, 20, tzinfo=UTC)
    assert active([a, b], at - timedelta(seconds=1)) is None
    assert active([a, b], at) is a
    assert active([a, b], at + timedelta(hours=8)) is b
    assert active([a, b], at + timedelta(hours=16)) is None
    assert active([], at) is None


def test_active_prefers_the_latest_start_and_compares_across_zones():
    long, short = bt(0, 48, "long"), bt(10, 12, "short")
    noon_utc = datetime(2026, 11, 20, 11, tzinfo=UTC)
    assert active([short, long], noon_utc) is short
    same_instant = noon_utc.astimezone(CHICAGO)
    assert active([long, short], same_instant) is short
    assert active([long, short], noon_utc + timedelta(hours=2)) is long


def test_active_takes_a_naive_now_as_local_time():
    b = bt(0, 1)
    naive = b.start.astimezone().replace(tzinfo=None)
    assert active([b], naive) is b


# -- snapshot -------------------------------------------------------------------------------


def test_to_snapshot_fills_the_contract_with_empty_sample_and_instrument():
    beamtime = Beamtime(
        start=datetime(2026, 11, 20, tzinfo=UTC),
        end=datetime(2026, 11, 21, tzinfo=UTC),
        proposal_id="GUP-12345",
        title="T",
        safety_form_id="ESAF-2027-1",
        pi=Person("Jane Doe", "Doe", "jane.doe@example.org"),
        users=(Person("Ann Lee", "Lee", "ann@example.org"),),
        beamline_id="BL-9",
        source="x.toml:3",
    )
    assert to_snapshot(beamtime) == {
        "proposal_id": "GUP-12345",
        "title": "T",
        "safety_form_id": "ESAF-2027-1",
        "pi": {"name": "Jane Doe", "last_name": "Doe", "email": "jane.doe@example.org"},
        "users": [{"name": "Ann Lee", "email": "ann@example.org"}],
        "sample": {"name": "", "description": "", "chemical_formula": "", "extra": {}},
        "beamline_id": "BL-9",
        "instrument": {
            "source": "",
            "monochromator_energy": None,
            "energy_units": "keV",
            "description": "",
            "extra": {},
        },
        "data_directory": "",
        "updated": "",
    }


def test_to_snapshot_has_the_keys_of_the_models_empty_snapshot():
    from bluesky_recorders.metadata.model import empty_snapshot

    def shape(d):
        return {k: shape(v) if isinstance(v, dict) and k != "extra" else None for k, v in d.items()}

    assert shape(to_snapshot(bt(0, 1))) == shape(empty_snapshot())


def test_sync_values_keep_instrument_and_the_sample_of_the_same_proposal():
    current = to_snapshot(bt(0, 1, "A"))
    current["sample"]["name"] = "Si"
    current["instrument"]["source"] = "bending magnet"
    same = to_snapshot(bt(0, 1, "A", beamline=""))
    same["title"] = "New title"
    same["updated"] = "2026-11-21T10:00:00+00:00"
    # only what changed; no sample, instrument, updated, nor an empty beamline id
    assert sync_values(current, same) == {"proposal:title": "New title"}
    other = sync_values(current, to_snapshot(bt(0, 1, "B", beamline="BL-10")))
    assert other == {"proposal:id": "B", "sample:name": "", "beamline:id": "BL-10"}


def test_commissioning_snapshot_and_show_format():
    snap = commissioning_snapshot(
        pi=parse_person("Jane Doe <jane@example.org>"), data_directory="/d/2026-11/doe"
    )
    assert snap["proposal_id"] == "commissioning"
    assert snap["pi"] == {"name": "Jane Doe", "last_name": "Doe", "email": "jane@example.org"}
    assert snap["users"] == [] and snap["data_directory"] == "/d/2026-11/doe"
    snap["sample"]["extra"] = {"temperature": "300 K"}
    snap["instrument"]["monochromator_energy"] = 8.0
    text = "\n".join(format_snapshot(snap, prefix="BL:MD:"))
    assert text.splitlines()[0] == "metadata service BL:MD: (updated -)"
    assert "PI              Jane Doe <jane@example.org>  (last name Doe)" in text
    assert "  temperature   300 K" in text
    assert "mono energy     8 keV" in text
    assert "data directory  /d/2026-11/doe" in text


def test_parse_person_and_time():
    assert parse_person("  Ann   Lee  ") == Person("Ann Lee", "Lee", "")
    assert parse_person("<ann@x.org>") == Person("", "", "ann@x.org")
    for bad in ("Ann <a@b> <c@d>", "", "Ann <a b@c>"):
        with pytest.raises(ValueError):
            parse_person(bad)
    assert parse_time("2026-11-20T08:00:00Z") == datetime(2026, 11, 20, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="expected a date and time"):
        parse_time(12)


# -- the scheduling API ---------------------------------------------------------------------

RUNS = [
    {
        "runName": "2026-2",
        "startTime": "2026-06-01T08:00:00-05:00",
        "endTime": "2026-10-01T08:00:00-05:00",
    },  # noqa: E501
    {
        "runName": "2026-3",
        "startTime": "2026-10-01T08:00:00-05:00",
        "endTime": "2027-01-01T08:00:00-06:00",
    },  # noqa: E501
    {"runName": "broken", "startTime": "soon"},
    "not a run",
]

ACTIVITIES = [
    {
        "activityStartTime": "2026-11-20 08:00:00-06:00",
        "activityEndTime": "2026-11-23 08:00:00-06:00",
        "beamtime": {
            "esafId": 271828,
            "proposal": {
                "gupId": 12345,
                "proposalTitle": "In situ oxidation",
                "experimenters": [
                    {
                        "firstName": "Ann",
                        "lastName": "Lee",
                        "email": "ann@example.org",
                        "badge": "1",
                        "piFlag": "N",
                    },
                    {
                        "firstName": "Jane",
                        "lastName": "Doe",
                        "email": "jane.doe@example.org",
                        "badge": "2",
                        "piFlag": "Y",
                    },
                ],
            },
        },
    },
    {  # no PI flag, "id" instead of "gupId", experimenters with missing fields
        "activityStartTime": "2026-11-23T08:00:00-06:00",
        "activityEndTime": "2026-11-24T08:00:00-06:00",
        "beamtime": {"proposal": {"id": "X-1", "experimenters": [{"lastName": "Roe"}, None]}},
    },
    {
        "activityStartTime": "2026-11-24T08:00:00-06:00",
        "activityEndTime": "2026-11-25T08:00:00-06:00",
        "beamtime": None,
    },  # noqa: E501
    {"activityStartTime": None, "beamtime": {"proposal": {"gupId": 9}}},
    42,
]


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802
        self.seen.append((self.path, self.headers.get("Authorization")))
        status, body, delay = self.routes.get(self.path, (404, b"no such page", 0))
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    """A scheduling API on 127.0.0.1; set ``api.routes[path] = (status, body, delay)``."""

    class Handler(_Handler):
        routes = {
            "/sched/run/getAllRuns": (200, json.dumps(RUNS).encode(), 0),
            "/sched/activity/findByRunNameAndBeamlineId/2026-3/BL-9": (
                200,
                json.dumps(ACTIVITIES).encode(),
                0,
            ),
        }
        seen = []

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}/sched"
    server.routes = Handler.routes
    server.seen = Handler.seen
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def test_api_beamtimes_for_the_run_containing_now(api):
    with ScheduleClient(api.base, timeout=5, auth=None) as client:
        beamtimes = client.beamtimes("BL-9", now=NOW)
    first, second = beamtimes
    assert first.proposal_id == "12345"
    assert first.title == "In situ oxidation"
    assert first.safety_form_id == "271828"
    assert first.pi == Person("Jane Doe", "Doe", "jane.doe@example.org")
    assert [u.name for u in first.users] == ["Ann Lee", "Jane Doe"]
    assert first.start == datetime(2026, 11, 20, 8, tzinfo=CHICAGO)
    assert first.beamline_id == "BL-9"
    assert first.source.endswith("/sched/activity/findByRunNameAndBeamlineId/2026-3/BL-9")
    assert second.proposal_id == "X-1"
    assert second.pi == Person("Roe", "Roe", "")  # no PI flag: the first experimenter
    assert second.title == "" and second.safety_form_id == ""
    assert active(beamtimes, NOW) is first


def test_api_no_run_contains_now_gives_no_beamtimes(api):
    with ScheduleClient(api.base, timeout=5, auth=None) as client:
        assert client.beamtimes("BL-9", now=datetime(2030, 1, 1, tzinfo=UTC)) == []
    assert [path for path, _ in api.seen] == ["/sched/run/getAllRuns"]


def test_api_sends_basic_auth_from_the_environment_and_never_shows_it(api):
    env = {"BSREC_SCHEDULE_USER": "beamline", "BSREC_SCHEDULE_PASSWORD": "s3cret"}
    assert auth_from_env(env) == ("beamline", "s3cret")
    assert auth_from_env({}) is None
    api.routes["/sched/run/getAllRuns"] = (500, b"database down", 0)
    with ScheduleClient(api.base, timeout=5, auth=auth_from_env(env)) as client:
        with pytest.raises(ScheduleAPIError) as info:
            client.runs()
    assert api.seen[0][1].startswith("Basic ")
    assert "s3cret" not in str(info.value)


def test_api_http_error_names_url_and_status(api):
    api.routes["/sched/run/getAllRuns"] = (500, b"database down", 0)
    with ScheduleClient(api.base, timeout=5, auth=None) as client:
        with pytest.raises(ScheduleAPIError) as info:
            client.beamtimes("BL-9", now=NOW)
    assert str(info.value) == (
        f"{api.base}/run/getAllRuns: HTTP 500 Internal Server Error: database down"
    )


def test_api_bad_json_and_wrong_shape(api):
    api.routes["/sched/run/getAllRuns"] = (200, b"<html>maintenance</html>", 0)
    with ScheduleClient(api.base, timeout=5, auth=None) as client:
        with pytest.raises(ScheduleAPIError, match=r"getAllRuns: the answer is not JSON"):
            client.runs()
        api.routes["/sched/run/getAllRuns"] = (200, b'{"runs": []}', 0)
        with pytest.raises(ScheduleAPIError, match=r"getAllRuns: expected a JSON list, got dict"):
            client.runs()


def test_api_timeout_names_the_url(api):
    api.routes["/sched/run/getAllRuns"] = (200, b"[]", 1.0)
    with ScheduleClient(api.base, timeout=0.1, auth=None) as client:
        with pytest.raises(ScheduleAPIError) as info:
            client.runs()
    assert str(info.value) == f"{api.base}/run/getAllRuns: no answer within 0.1 s (timeout)"


def test_api_unreachable_names_the_url(api):
    base = api.base
    api.shutdown()
    api.server_close()
    with ScheduleClient(base, timeout=2, auth=None) as client:
        with pytest.raises(ScheduleAPIError, match=rf"^{base}/run/getAllRuns: cannot reach"):
            client.runs()


def test_parse_activities_never_crashes_on_odd_content():
    odd = [
        {},
        {"activityStartTime": "2026-11-20T08:00Z", "activityEndTime": "2026-11-21T08:00Z"},
        {
            "activityStartTime": "2026-11-20T08:00Z",
            "activityEndTime": "2026-11-21T08:00Z",
            "beamtime": {"proposal": {"gupId": 1, "experimenters": "nobody", "proposalTitle": {}}},
        },
    ]
    (only,) = parse_activities(odd, beamline="BL-9")
    assert only.proposal_id == "1" and only.users == () and only.title == ""
    assert parse_activities({"not": "a list"}, beamline="BL-9") == []
