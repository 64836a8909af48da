"""Schedules of beamtimes: who is on the beamline when, to fill the metadata service.

Two sources, one model (:class:`Beamtime`):

- a schedule **file** kept by beamline staff, the embedded default:
  :func:`load_schedule` reads TOML (``[[beamtime]]`` tables) or CSV (one row per
  beamtime); every mistake is reported with the file, the line and the field;
- a facility **scheduling API** shaped like the APS one: :class:`ScheduleClient`.

:func:`active` picks the beamtime running at a given time and :func:`to_snapshot`
turns it into the metadata snapshot of ``metadata/CONTRACT.md``. Times always carry a
time zone; a time written without one (``2026-11-20T08:00``) is taken as local time of
the machine reading the schedule (or the ``tz`` given to the loader).

Mapping of an APS-shaped activity to a :class:`Beamtime` (missing fields stay empty)::

    activityStartTime / activityEndTime      -> start / end  (activity skipped if missing)
    beamtime.proposal.gupId (else .id)       -> proposal_id  (activity skipped if no proposal)
    beamtime.proposal.proposalTitle          -> title
    beamtime.esafId (else proposal.esafId)   -> safety_form_id
    experimenter with piFlag "Y" (else the   -> pi (name "first last", last_name, email)
      first experimenter)
    every experimenter, in order             -> users (name, email)
    the beamline asked for                   -> beamline_id
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import BsrecError

__all__ = [
    "AUTH_ENV",
    "Beamtime",
    "Person",
    "Run",
    "ScheduleAPIError",
    "ScheduleClient",
    "ScheduleError",
    "active",
    "auth_from_env",
    "find_overlaps",
    "load_schedule",
    "parse_activities",
    "parse_person",
    "parse_runs",
    "parse_schedule_csv",
    "parse_schedule_toml",
    "parse_time",
    "run_containing",
    "to_snapshot",
]

logger = logging.getLogger("bluesky_recorders.metadata.schedule")

#: Environment variables holding optional basic-auth credentials for the scheduling API.
AUTH_ENV = ("BSREC_SCHEDULE_USER", "BSREC_SCHEDULE_PASSWORD")


class ScheduleError(BsrecError):
    """A schedule cannot be read: the file, line and field (or the URL) are named."""


class ScheduleAPIError(ScheduleError):
    """The scheduling API did not answer as expected (URL, HTTP status, cause named)."""


# -- model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A PI or a user. ``last_name`` names the experiment's data directory."""

    name: str = ""
    last_name: str = ""
    email: str = ""


@dataclass(frozen=True)
class Beamtime:
    """One scheduled beamtime; ``start`` <= t < ``end``, both time-zone aware.

    ``source`` says where it came from (``schedule.toml:12``, or the API URL), for
    messages; it is not part of the snapshot.
    """

    start: datetime
    end: datetime
    proposal_id: str = ""
    title: str = ""
    safety_form_id: str = ""
    pi: Person = field(default_factory=Person)
    users: tuple[Person, ...] = ()
    beamline_id: str = ""
    source: str = ""


def to_snapshot(beamtime: Beamtime) -> dict[str, Any]:
    """The metadata snapshot (contract dict) of ``beamtime``; sample and instrument empty.

    ``data_directory`` and ``updated`` are left empty: the caller names the directory
    and the metadata IOC stamps ``updated``.
    """
    from .model import empty_snapshot

    snapshot = empty_snapshot()
    snapshot.update(
        proposal_id=beamtime.proposal_id,
        title=beamtime.title,
        safety_form_id=beamtime.safety_form_id,
        pi={
            "name": beamtime.pi.name,
            "last_name": beamtime.pi.last_name,
            "email": beamtime.pi.email,
        },
        users=[{"name": u.name, "email": u.email} for u in beamtime.users],
        beamline_id=beamtime.beamline_id,
    )
    return snapshot


def active(beamtimes: Iterable[Beamtime], now: datetime) -> Beamtime | None:
    """The beamtime with ``start <= now < end``; the latest-starting one if several.

    A naive ``now`` is taken as local time.
    """
    now = _aware(now, None)
    running = [b for b in beamtimes if b.start <= now < b.end]
    return max(running, key=lambda b: b.start) if running else None


def find_overlaps(beamtimes: Sequence[Beamtime]) -> list[tuple[Beamtime, Beamtime]]:
    """Pairs of beamtimes of one beamline that overlap in time (earlier one first).

    Beamtimes without a beamline id are compared with every beamline.
    """
    ordered = sorted(beamtimes, key=lambda b: (b.start, b.end))
    pairs = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start >= a.end:
                break
            if a.beamline_id and b.beamline_id and a.beamline_id != b.beamline_id:
                continue
            pairs.append((a, b))
    return pairs


# -- values ---------------------------------------------------------------------------

_PERSON_RE = re.compile(r"^\s*(?P<name>[^<>]*?)\s*(?:<\s*(?P<email>[^<>\s]*)\s*>)?\s*$")
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def parse_person(text: str, *, last_name: str = "", email: str = "") -> Person:
    """``"Jane Doe <jane@example.org>"`` (or just ``"Jane Doe"``) as a :class:`Person`.

    The last name defaults to the name's last word. Raises ``ValueError`` on a bad
    email or stray angle brackets.
    """
    match = _PERSON_RE.match(text)
    if not match:
        raise ValueError(f"expected 'Name <email>', got {text!r}")
    name = " ".join(match["name"].split())
    found = match["email"]
    if found is not None:
        if email and email != found:
            raise ValueError(f"two different emails: {found!r} and {email!r}")
        email = found
    email = email.strip()
    if email and not _EMAIL_RE.match(email):
        raise ValueError(f"not an email address: {email!r}")
    if not name and not email:
        raise ValueError(f"no name or email in {text!r}")
    last = last_name.strip() or (name.split()[-1] if name else "")
    return Person(name=name, last_name=last, email=email)


def parse_users(text: str) -> tuple[Person, ...]:
    """``"Ann Lee <ann@example.org>; Bo Chen <bo@example.org>"`` as people."""
    people = []
    for n, part in enumerate((p for p in text.split(";") if p.strip()), 1):
        try:
            people.append(parse_person(part))
        except ValueError as err:
            raise ValueError(f"user {n}: {err}") from None
    return tuple(people)


def parse_time(value: Any, *, tz: tzinfo | None = None) -> datetime:
    """An aware datetime from an ISO 8601 string, a datetime or a date.

    A time without a zone is taken in ``tz`` (default: this machine's local time);
    a bare date means midnight. Raises ``ValueError``.
    """
    if isinstance(value, datetime):
        return _aware(value, tz)
    if isinstance(value, date):
        return _aware(datetime.combine(value, time()), tz)
    if not isinstance(value, str):
        raise ValueError(f"expected a date and time, got {type(value).__name__} {value!r}")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 time: {value!r} (e.g. 2026-11-20T08:00:00-06:00)"
        ) from None
    return _aware(parsed, tz)


def _aware(value: datetime, tz: tzinfo | None) -> datetime:
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value
    if tz is not None:
        return value.replace(tzinfo=tz)
    return value.astimezone()  # naive: local time of this machine


def _text(value: Any) -> str:
    """A text field: strings as they are, whole numbers (``gupId = 12345``) as text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected text, got {type(value).__name__} {value!r}")


# -- schedule files ---------------------------------------------------------------------

_FIELDS = ("start", "end", "proposal_id", "title", "safety_form_id", "pi", "users", "beamline_id")
_CSV_EXTRA = ("pi_last_name", "pi_email")


def load_schedule(path: str | os.PathLike, *, tz: tzinfo | None = None) -> list[Beamtime]:
    """Read a schedule file (``.toml`` or ``.csv``), sorted by start.

    Raises :class:`ScheduleError` naming the file, the line and the field, also when
    two beamtimes of one beamline overlap.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ScheduleError(f"{path}: cannot read the schedule file: {err.strerror}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return parse_schedule_toml(text, where=str(path), tz=tz)
    if suffix == ".csv":
        return parse_schedule_csv(text, where=str(path), tz=tz)
    raise ScheduleError(f"{path}: unknown schedule format {suffix!r}; use a .toml or .csv file")


def parse_schedule_toml(
    text: str, *, where: str = "<text>", tz: tzinfo | None = None
) -> list[Beamtime]:
    """Beamtimes from TOML text: ``[[beamtime]]`` tables, optional top-level ``beamline_id``.

    Each table holds ``start``, ``end`` (TOML or ISO 8601 times), ``proposal_id``,
    ``title``, ``safety_form_id``, ``beamline_id``, ``pi`` (``"Name <email>"`` or a
    table with ``name``, ``last_name``, ``email``) and ``users`` (a list of
    ``"Name <email>"`` strings or of tables with ``name``, ``email``).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScheduleError(f"{where}: not valid TOML: {err}") from None
    headers = [
        i + 1
        for i, line in enumerate(text.splitlines())
        if re.match(r"^\s*\[\[\s*beamtime\s*\]\]", line)
    ]
    lines = text.splitlines()
    for key in raw:
        if key not in ("beamtime", "beamline_id"):
            line = _key_line(lines, 0, headers[0] - 1 if headers else len(lines), key)
            raise ScheduleError(
                f"{_at(where, line)}: unknown key {key!r}; "
                "expected [[beamtime]] tables and an optional beamline_id"
            )
    default_beamline = raw.get("beamline_id", "")
    if not isinstance(default_beamline, str):
        line = _key_line(lines, 0, len(lines), "beamline_id")
        raise ScheduleError(f"{_at(where, line)}: beamline_id: must be text")
    tables = raw.get("beamtime", [])
    if not isinstance(tables, list):
        raise ScheduleError(f"{where}: 'beamtime' must be [[beamtime]] tables")
    beamtimes = []
    for index, table in enumerate(tables):
        first = headers[index] if index < len(headers) else 0
        last = headers[index + 1] - 1 if index + 1 < len(headers) else len(lines)
        label = f"[[beamtime]] #{index + 1}"

        def fail(
            key: str, message: str, first: int = first, last: int = last, label: str = label
        ) -> ScheduleError:
            line = _key_line(lines, first, last, key) if key else first
            field_ = f" {key}:" if key else ""
            return ScheduleError(f"{_at(where, line or first)}: {label}{field_} {message}")

        beamtimes.append(
            _beamtime_from_mapping(table, fail, _at(where, first), default_beamline, tz)
        )
    return _checked(beamtimes, where)


def parse_schedule_csv(
    text: str, *, where: str = "<text>", tz: tzinfo | None = None
) -> list[Beamtime]:
    """Beamtimes from CSV text: a header row, then one row per beamtime.

    Columns: ``start``, ``end`` (required), ``proposal_id``, ``title``,
    ``safety_form_id``, ``pi`` (``Name <email>``), ``pi_last_name``, ``pi_email``,
    ``users`` (``Name <email>; Name <email>``), ``beamline_id``. Empty rows and rows
    whose first cell starts with ``#`` are skipped.
    """
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_line = 0
    beamtimes = []
    line = 1  # first line of the record about to be read
    try:
        for row in reader:
            row_line, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header, header_line = [c.strip().lower() for c in row], row_line
                known = (*_FIELDS, *_CSV_EXTRA)
                for name in header:
                    if name not in known:
                        raise ScheduleError(
                            f"{_at(where, row_line)}: unknown column {name!r}; "
                            f"known: {', '.join(known)}"
                        )
                for name in ("start", "end"):
                    if name not in header:
                        raise ScheduleError(f"{_at(where, row_line)}: no {name!r} column")
                continue
            if len(row) > len(header):
                raise ScheduleError(
                    f"{_at(where, row_line)}: {len(row)} cells but {len(header)} columns "
                    f"(header on line {header_line}); quote cells holding commas"
                )
            values = {name: row[i].strip() for i, name in enumerate(header) if i < len(row)}
            values = {k: v for k, v in values.items() if v}
            pi_text = values.pop("pi", "")
            pi_last = values.pop("pi_last_name", "")
            pi_email = values.pop("pi_email", "")
            if pi_text or pi_email:
                values["pi"] = {"_text": pi_text, "last_name": pi_last, "email": pi_email}

            def fail(key: str, message: str, row_line: int = row_line) -> ScheduleError:
                field_ = f" {key}:" if key else ""
                return ScheduleError(f"{_at(where, row_line)}: row{field_} {message}")

            beamtimes.append(_beamtime_from_mapping(values, fail, _at(where, row_line), "", tz))
    except csv.Error as err:
        raise ScheduleError(f"{_at(where, reader.line_num)}: not valid CSV: {err}") from None
    if header is None:
        raise ScheduleError(f"{where}: empty schedule: no header row")
    return _checked(beamtimes, where)


def _beamtime_from_mapping(
    values: Mapping[str, Any], fail: Any, source: str, default_beamline: str, tz: tzinfo | None
) -> Beamtime:
    if not isinstance(values, Mapping):
        raise fail("", "must be a table")
    for key in values:
        if key not in _FIELDS:
            raise fail(key, f"unknown field; known: {', '.join(_FIELDS)}")
    times = {}
    for key in ("start", "end"):
        if key not in values:
            raise fail("", f"no {key} time")
        try:
            times[key] = parse_time(values[key], tz=tz)
        except ValueError as err:
            raise fail(key, str(err)) from None
    if times["end"] <= times["start"]:
        raise fail(
            "end", f"{times['end'].isoformat()} is not after start {times['start'].isoformat()}"
        )
    texts = {}
    for key in ("proposal_id", "title", "safety_form_id", "beamline_id"):
        try:
            texts[key] = _text(values.get(key, ""))
        except ValueError as err:
            raise fail(key, str(err)) from None
    try:
        pi = _pi(values.get("pi"))
    except ValueError as err:
        raise fail("pi", str(err)) from None
    try:
        users = _users(values.get("users", ()))
    except ValueError as err:
        raise fail("users", str(err)) from None
    return Beamtime(
        start=times["start"],
        end=times["end"],
        proposal_id=texts["proposal_id"],
        title=texts["title"],
        safety_form_id=texts["safety_form_id"],
        pi=pi,
        users=users,
        beamline_id=texts["beamline_id"] or default_beamline,
        source=source,
    )


def _pi(value: Any) -> Person:
    if value is None or value == "":
        return Person()
    if isinstance(value, str):
        return parse_person(value)
    if isinstance(value, Mapping):
        if "_text" in value:  # CSV: pi, pi_last_name, pi_email columns
            return parse_person(value["_text"], last_name=value["last_name"], email=value["email"])
        unknown = set(value) - {"name", "last_name", "email"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; known: name, last_name, email")
        return parse_person(
            _text(value.get("name", "")),
            last_name=_text(value.get("last_name", "")),
            email=_text(value.get("email", "")),
        )
    raise ValueError(f"expected 'Name <email>' or a table, got {value!r}")


def _users(value: Any) -> tuple[Person, ...]:
    if isinstance(value, str):
        return parse_users(value)
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of 'Name <email>', got {value!r}")
    users = []
    for n, item in enumerate(value, 1):
        try:
            if isinstance(item, str):
                users.append(parse_person(item))
            elif isinstance(item, Mapping):
                unknown = set(item) - {"name", "email"}
                if unknown:
                    raise ValueError(f"unknown key(s) {sorted(unknown)}; known: name, email")
                users.append(
                    parse_person(_text(item.get("name", "")), email=_text(item.get("email", "")))
                )
            else:
                raise ValueError(f"expected 'Name <email>' or a table, got {item!r}")
        except ValueError as err:
            raise ValueError(f"user {n}: {err}") from None
    return tuple(users)


def _checked(beamtimes: list[Beamtime], where: str) -> list[Beamtime]:
    overlaps = find_overlaps(beamtimes)
    if overlaps:
        details = "; ".join(
            f"{a.source} ({a.proposal_id or 'no proposal'}, until {a.end.isoformat()}) and "
            f"{b.source} ({b.proposal_id or 'no proposal'}, from {b.start.isoformat()})"
            for a, b in overlaps
        )
        raise ScheduleError(f"{where}: overlapping beamtimes: {details}")
    return sorted(beamtimes, key=lambda b: b.start)


def _at(where: str, line: int) -> str:
    return f"{where}:{line}" if line else where


def _key_line(lines: Sequence[str], first: int, last: int, key: str) -> int:
    """1-based line of ``key = ...`` between lines ``first`` and ``last`` (1-based); 0 if none."""
    pattern = re.compile(r'^\s*(["\']?)' + re.escape(key) + r"\1\s*=")
    for i in range(max(first - 1, 0), min(last, len(lines))):
        if pattern.match(lines[i]):
            return i + 1
    return 0


# -- the facility scheduling API (APS-shaped) -------------------------------------------


@dataclass(frozen=True)
class Run:
    """A facility run (e.g. ``2026-3``): a period of the schedule."""

    name: str
    start: datetime
    end: datetime


def parse_runs(data: Any) -> list[Run]:
    """Runs from ``run/getAllRuns`` JSON; entries without a name or usable times are skipped."""
    runs = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, Mapping) or not item.get("runName"):
            continue
        try:
            start = parse_time(item.get("startTime"))
            end = parse_time(item.get("endTime"))
        except ValueError as err:
            logger.warning("run %r skipped: %s", item.get("runName"), err)
            continue
        runs.append(Run(str(item["runName"]), start, end))
    return runs


def run_containing(runs: Iterable[Run], now: datetime) -> Run | None:
    """The run with ``start <= now < end`` (the latest-starting one if several)."""
    now = _aware(now, None)
    found = [r for r in runs if r.start <= now < r.end]
    return max(found, key=lambda r: r.start) if found else None


def parse_activities(data: Any, *, beamline: str, source: str = "") -> list[Beamtime]:
    """Beamtimes from ``activity/findByRunNameAndBeamlineId`` JSON (see the module's mapping).

    Never raises on odd content: activities without times or a proposal are skipped
    (and logged), missing fields stay empty.
    """
    beamtimes = []
    for n, item in enumerate(data if isinstance(data, list) else [], 1):
        if not isinstance(item, Mapping):
            continue
        try:
            start = parse_time(item.get("activityStartTime"))
            end = parse_time(item.get("activityEndTime"))
        except ValueError as err:
            logger.warning("%s: activity %d skipped: %s", source, n, err)
            continue
        beamtime = _mapping(item.get("beamtime"))
        proposal = _mapping(beamtime.get("proposal"))
        proposal_id = _loose_text(proposal.get("gupId")) or _loose_text(proposal.get("id"))
        if not proposal_id:
            logger.info("%s: activity %d (%s) has no proposal; skipped", source, n, start)
            continue
        people = []
        pi = None
        for person in proposal.get("experimenters") or []:
            if not isinstance(person, Mapping):
                continue
            first = _loose_text(person.get("firstName"))
            last = _loose_text(person.get("lastName"))
            p = Person(
                name=" ".join(x for x in (first, last) if x),
                last_name=last,
                email=_loose_text(person.get("email")),
            )
            people.append(p)
            if pi is None and _loose_text(person.get("piFlag")).upper() in ("Y", "YES", "TRUE"):
                pi = p
        if pi is None and people:
            pi = people[0]
        beamtimes.append(
            Beamtime(
                start=start,
                end=end,
                proposal_id=proposal_id,
                title=_loose_text(proposal.get("proposalTitle")),
                safety_form_id=_loose_text(beamtime.get("esafId"))
                or _loose_text(proposal.get("esafId")),
                pi=pi or Person(),
                users=tuple(people),
                beamline_id=beamline,
                source=source,
            )
        )
    return beamtimes


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _loose_text(value: Any) -> str:
    if value is None or isinstance(value, Mapping | list):
        return ""
    return str(value).strip()


def auth_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """Basic-auth ``(user, password)`` from ``BSREC_SCHEDULE_USER``/``_PASSWORD``, or None."""
    env = os.environ if environ is None else environ
    user = env.get(AUTH_ENV[0], "")
    if not user:
        return None
    return user, env.get(AUTH_ENV[1], "")


class ScheduleClient:
    """A client of an APS-shaped scheduling API at ``base_url``.

    ``auth`` is a basic-auth ``(user, password)`` pair (default: :func:`auth_from_env`);
    it is never logged nor put in messages. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._httpx = httpx
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            auth=auth if auth is not None else auth_from_env(),
            follow_redirects=True,
        )

    def __enter__(self) -> ScheduleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def runs(self) -> list[Run]:
        """All runs the facility knows."""
        return parse_runs(self._get_list("run/getAllRuns"))

    def activities(self, run: str, beamline: str) -> list[Beamtime]:
        """The beamtimes of ``beamline`` during ``run``."""
        path = (
            f"activity/findByRunNameAndBeamlineId/{quote(run, safe='')}/{quote(beamline, safe='')}"
        )
        return parse_activities(self._get_list(path), beamline=beamline, source=self._display(path))

    def beamtimes(self, beamline: str, *, now: datetime) -> list[Beamtime]:
        """The beamtimes of ``beamline`` in the run containing ``now`` ([] if no run does)."""
        run = run_containing(self.runs(), now)
        if run is None:
            logger.info("%s: no run contains %s", self._display("run/getAllRuns"), now)
            return []
        beamtimes = self.activities(run.name, beamline)
        for a, b in find_overlaps(beamtimes):
            logger.warning(
                "the facility schedule has overlapping beamtimes on %s: %s and %s",
                beamline,
                a.proposal_id,
                b.proposal_id,
            )
        return beamtimes

    def _display(self, path: str) -> str:
        """The URL of ``path`` without any credentials, for messages."""
        url = self._httpx.URL(f"{self.base_url}/{path}")
        return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)

    def _get_list(self, path: str) -> list[Any]:
        httpx = self._httpx
        shown = self._display(path)
        logger.debug("GET %s", shown)
        try:
            response = self._client.get(f"{self.base_url}/{path}")
        except httpx.TimeoutException:
            raise ScheduleAPIError(
                f"{shown}: no answer within {self.timeout:g} s (timeout)"
            ) from None
        except httpx.HTTPError as err:
            raise ScheduleAPIError(f"{shown}: cannot reach the scheduling API: {err}") from None
        if response.status_code >= 400:
            body = " ".join(response.text.split())[:200]
            raise ScheduleAPIError(
                f"{shown}: HTTP {response.status_code} {response.reason_phrase}"
                + (f": {body}" if body else "")
            )
        try:
            data = response.json()
        except ValueError as err:
            raise ScheduleAPIError(f"{shown}: the answer is not JSON: {err}") from None
        if not isinstance(data, list):
            raise ScheduleAPIError(f"{shown}: expected a JSON list, got {type(data).__name__}")
        return data
