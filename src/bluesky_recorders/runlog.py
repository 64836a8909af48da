"""The run log: every run a RecorderSet saw, and the files each recorder wrote.

One SQLite file (``<data_root>/bsrec-runs.sqlite``) so that a crash leaves it
consistent, several processes may write it, and ``bsrec runs`` can read it
while a session records. A run is inserted at its start (status
``running``) and completed at its stop; a run that stays ``running`` after its
process died was interrupted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import PathExistsError, PathPolicyError

__all__ = ["RunLog", "RunRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    uid TEXT PRIMARY KEY,
    scan_id INTEGER,
    plan_name TEXT,
    start_time REAL,
    stop_time REAL,
    exit_status TEXT,
    reason TEXT,
    num_events TEXT,
    artifacts TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (start_time);
"""


@dataclass(frozen=True)
class RunRecord:
    """One row of the run log."""

    uid: str
    scan_id: int | None
    plan_name: str
    start_time: float
    stop_time: float | None
    exit_status: str
    reason: str
    num_events: dict[str, int] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.stop_time is None else self.stop_time - self.start_time


class RunLog:
    """Read and write the run log at ``path``.

    ``policy`` (a :class:`~bluesky_recorders.paths.DirectoryPolicy`) gives the
    group and modes of the folder and file when they are created.
    """

    def __init__(self, path: str | Path, *, policy: Any = None) -> None:
        self.path = Path(path)
        self.policy = policy

    def __repr__(self) -> str:
        return f"RunLog({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        # SQLite follows a symbolic link, even a dangling one (it would create the
        # database where the link points, outside the data root): refuse any
        if self.path.is_symlink():
            raise PathPolicyError(f"refusing the run log {self.path}: it is a symbolic link")
        new = not self.path.exists()
        if new and self.policy is not None:
            self.policy.make_dirs(self.path.parent, self.path.parent)
            try:  # create-only, with the policy's mode and group (an empty file is a database)
                self.policy.open_new(self.path, "xb").close()
            except PathExistsError:
                pass  # another process made it meanwhile
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=10)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(_SCHEMA)
        return con

    def started(self, start: Mapping[str, Any]) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "INSERT OR IGNORE INTO runs (uid, scan_id, plan_name, start_time, exit_status, "
                "reason, num_events, artifacts) VALUES (?, ?, ?, ?, 'running', '', '{}', '{}')",
                (
                    start["uid"],
                    _int_or_none(start.get("scan_id")),
                    str(start.get("plan_name", "")),
                    float(start.get("time", time.time())),
                ),
            )

    def stopped(
        self,
        start: Mapping[str, Any],
        stop: Mapping[str, Any],
        artifacts: Mapping[str, list[str]],
    ) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "INSERT OR IGNORE INTO runs (uid, scan_id, plan_name, start_time, exit_status, "
                "reason, num_events, artifacts) VALUES (?, ?, ?, ?, 'running', '', '{}', '{}')",
                (
                    start["uid"],
                    _int_or_none(start.get("scan_id")),
                    str(start.get("plan_name", "")),
                    float(start.get("time", time.time())),
                ),
            )
            con.execute(
                "UPDATE runs SET stop_time=?, exit_status=?, reason=?, num_events=?, artifacts=? "
                "WHERE uid=?",
                (
                    float(stop.get("time", time.time())),
                    str(stop.get("exit_status", "")),
                    str(stop.get("reason", "") or ""),
                    json.dumps(stop.get("num_events", {})),
                    json.dumps(dict(artifacts)),
                    start["uid"],
                ),
            )

    def recent(self, limit: int = 20) -> list[RunRecord]:
        """The newest runs first."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT uid, scan_id, plan_name, start_time, stop_time, exit_status, reason, "
                "num_events, artifacts FROM runs ORDER BY start_time DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [
            RunRecord(
                uid=r[0],
                scan_id=r[1],
                plan_name=r[2] or "",
                start_time=r[3],
                stop_time=r[4],
                exit_status=r[5] or "",
                reason=r[6] or "",
                num_events=json.loads(r[7] or "{}"),
                artifacts=json.loads(r[8] or "{}"),
            )
            for r in rows
        ]


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
