"""``bsrec metadata sync|set|show``: fill and check the metadata service.

::

    bsrec metadata sync --schedule FILE [--at TIME]     the beamtime active now, from a file
    bsrec metadata sync --api URL --beamline ID         ... from the facility scheduling API
    bsrec metadata sync --commissioning [--pi "Name <email>"]   no beamtime: commissioning
    bsrec metadata set sample.name=Si sample.temperature="300 K"
    bsrec metadata show [--json]

``register(subparsers)`` adds the command to the top-level ``bsrec`` parser;
``main(argv)`` runs it on its own (tests, ``python -m bluesky_recorders.metadata.cli``).
Each subcommand returns an exit code; failures raise :class:`~bluesky_recorders.errors.
BsrecError` subclasses, printed as ``bsrec: error: ...`` (exit 1).

Channel Access: when ``--state-dir`` (default ``$BSREC_STATE_DIR/sim`` or
``~/.bsrec/sim``) holds a running simulated beamline, its client environment is used;
otherwise the process's ``EPICS_CA_*`` variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import BeamlineError, BsrecError
from .schedule import Beamtime, Person, ScheduleError, active, parse_person, parse_time, to_snapshot

__all__ = [
    "COMMISSIONING",
    "DEFAULT_PREFIX",
    "NoActiveBeamtimeError",
    "commissioning_snapshot",
    "default_prefix",
    "default_sim_dir",
    "format_snapshot",
    "main",
    "register",
    "sync_values",
]

logger = logging.getLogger("bluesky_recorders.metadata.cli")

#: The metadata IOC's PV prefix unless ``--prefix`` or ``$BSREC_METADATA_PREFIX`` say.
DEFAULT_PREFIX = "BL:MD:"
#: The proposal id written by ``sync --commissioning``.
COMMISSIONING = "commissioning"


class NoActiveBeamtimeError(ScheduleError):
    """No beamtime of the schedule runs at the requested time."""


def default_prefix() -> str:
    """``$BSREC_METADATA_PREFIX`` or ``BL:MD:``."""
    return os.environ.get("BSREC_METADATA_PREFIX") or DEFAULT_PREFIX


def default_sim_dir() -> Path:
    """``$BSREC_STATE_DIR/sim`` or ``~/.bsrec/sim``: where ``bsrec session`` keeps the sim."""
    base = os.environ.get("BSREC_STATE_DIR") or "~/.bsrec"
    return Path(base).expanduser() / "sim"


# -- pure logic ---------------------------------------------------------------------------


def commissioning_snapshot(
    *, pi: Person | None = None, beamline_id: str = "", data_directory: str = ""
) -> dict[str, Any]:
    """The snapshot ``sync --commissioning`` writes when no beamtime is scheduled.

    Proposal ``commissioning``, title ``Beamline commissioning``, no safety form, the
    given PI (or nobody) and no users.
    """
    snapshot = to_snapshot(
        Beamtime(
            start=datetime.min,
            end=datetime.max,
            proposal_id=COMMISSIONING,
            title="Beamline commissioning",
            pi=pi or Person(),
            beamline_id=beamline_id,
        )
    )
    snapshot["data_directory"] = data_directory
    return snapshot


def sync_values(current: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """The PV values ``sync`` writes to turn snapshot ``current`` into ``incoming``.

    A schedule knows the proposal, people, beamline and data directory, not the beamline's
    configuration: the instrument PVs are left alone, and so is the sample while the
    proposal stays the same (a new proposal clears it). An empty beamline id in
    ``incoming`` keeps the service's. ``updated`` is the IOC's. Values the service holds
    already are not written again.
    """
    from .model import values_from_snapshot

    values = values_from_snapshot(incoming)
    held = values_from_snapshot(current)
    keep_sample = current.get("proposal_id", "") == incoming.get("proposal_id", "")
    out = {}
    for suffix, value in values.items():
        if suffix == "updated" or suffix.startswith("instrument:"):
            continue
        if keep_sample and suffix.startswith("sample:"):
            continue
        if suffix == "beamline:id" and not value:
            continue
        if suffix in held and held[suffix] == value:
            continue
        out[suffix] = value
    return out


def format_snapshot(snapshot: dict[str, Any], *, prefix: str = "") -> list[str]:
    """Human-readable lines of a metadata snapshot (``bsrec metadata show``)."""

    def show(value: Any) -> str:
        return "-" if value in ("", None, [], {}) else str(value)

    def person(p: dict[str, Any]) -> str:
        name, email = p.get("name", ""), p.get("email", "")
        return show(f"{name} <{email}>" if email else name)

    pi = snapshot.get("pi") or {}
    sample = snapshot.get("sample") or {}
    inst = snapshot.get("instrument") or {}
    where = f"metadata service {prefix}" if prefix else "metadata"
    lines = [f"{where} (updated {show(snapshot.get('updated'))})"]

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label:<16}{show(value)}")

    row("proposal", snapshot.get("proposal_id"))
    row("title", snapshot.get("title"))
    row("safety form", snapshot.get("safety_form_id"))
    pi_text = person(pi)
    if pi.get("last_name"):
        pi_text += f"  (last name {pi['last_name']})"
    row("PI", pi_text)
    users = snapshot.get("users") or []
    row("users", person(users[0]) if users else "")
    for user in users[1:]:
        row("", person(user))
    row("sample", sample.get("name"))
    if sample.get("chemical_formula"):
        row("  formula", sample["chemical_formula"])
    if sample.get("description"):
        row("  description", sample["description"])
    for key, value in sorted((sample.get("extra") or {}).items()):
        row(f"  {key}", value)
    row("beamline", snapshot.get("beamline_id"))
    row("source", inst.get("source"))
    energy = inst.get("monochromator_energy")
    row("mono energy", "" if energy is None else f"{energy:g} {inst.get('energy_units', 'keV')}")
    if inst.get("description"):
        row("  description", inst["description"])
    for key, value in sorted((inst.get("extra") or {}).items()):
        row(f"  {key}", value)
    row("data directory", snapshot.get("data_directory"))
    return lines


# -- the service ----------------------------------------------------------------------------


def _configure_client(state_dir: str | Path | None) -> str:
    """Point Channel Access at a running simulated beamline, if there is one.

    ``state_dir`` (or :func:`default_sim_dir`) may be the folder holding ``sim.json`` or
    its parent (a ``bsrec session`` state dir). An explicit ``state_dir`` without a running
    beamline is an error; the default one falls back to the ``EPICS_CA_*`` environment.
    Returns what was used, for messages.
    """
    from ..sim.manager import SimBeamline, SimBeamlineError

    explicit = state_dir is not None
    base = Path(state_dir).expanduser() if explicit else default_sim_dir()
    for folder in (base, base / "sim"):
        if not (folder / "sim.json").exists():
            continue
        try:
            sim = SimBeamline.load(folder)
        except SimBeamlineError as err:
            if explicit:
                raise
            logger.warning("%s; using the EPICS_CA_* environment", err)
            break
        if sim.running:
            sim.configure_client()
            return f"the simulated beamline in {folder}"
        if explicit:
            raise BeamlineError(
                f"--state-dir {folder}: the simulated beamline there is not running "
                "(start it with `bsrec sim start`, or leave out --state-dir to use the "
                "EPICS_CA_* environment)"
            )
        break
    else:
        if explicit:
            raise BeamlineError(
                f"--state-dir {base}: no simulated beamline there (no sim.json); leave out "
                "--state-dir to use the EPICS_CA_* environment"
            )
    return "the EPICS_CA_* environment"


def _ca_summary() -> str:
    keys = ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_SERVER_PORT")
    return ", ".join(f"{k}={os.environ.get(k, '<unset>')}" for k in keys)


class _Service:
    """The metadata service device, with errors that name the prefix and the CA setup."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.prefix = args.prefix or default_prefix()
        self.timeout = args.timeout
        self.via = _configure_client(args.state_dir)
        from .device import MetadataService

        self.device = MetadataService(self.prefix, name="metadata")

    def _fail(self, action: str, err: BaseException) -> BeamlineError:
        return BeamlineError(
            f"metadata service {self.prefix}: cannot {action} within {self.timeout:g} s "
            f"({type(err).__name__}: {err}); Channel Access from {self.via}: {_ca_summary()}"
        )

    def snapshot(self) -> dict[str, Any]:
        try:
            return self.device.snapshot(timeout=self.timeout)
        except BsrecError:
            raise
        except (TimeoutError, ConnectionError, OSError) as err:
            raise self._fail("read the PVs", err) from err

    def write(self, values: dict[str, Any]) -> None:
        logger.debug("writing %s to %s", sorted(values), self.prefix)
        try:
            self.device.write_values(values, timeout=self.timeout)
        except BsrecError:
            raise
        except (TimeoutError, ConnectionError, OSError) as err:
            raise self._fail("write the PVs", err) from err


# -- commands -------------------------------------------------------------------------------


def _now(args: argparse.Namespace) -> datetime:
    if not args.at:
        return datetime.now().astimezone()
    try:
        return parse_time(args.at)
    except ValueError as err:
        raise ScheduleError(f"--at: {err}") from None


def _data_root(args: argparse.Namespace) -> Path:
    from ..config import load_config

    return load_config(args.config, data_root=args.data_root).settings.data_root


def _beamtimes(args: argparse.Namespace, now: datetime) -> tuple[list[Beamtime], str]:
    if args.schedule:
        from .schedule import load_schedule

        found = load_schedule(args.schedule)
        if args.beamline:
            found = [b for b in found if b.beamline_id in ("", args.beamline)]
        return found, str(args.schedule)
    from .schedule import ScheduleClient

    with ScheduleClient(args.api, timeout=args.http_timeout) as client:
        return client.beamtimes(args.beamline, now=now), f"{args.api} (beamline {args.beamline})"


def _cmd_sync(args: argparse.Namespace) -> int:
    from ..paths import experiment_dir

    if args.api and not args.beamline:
        raise ScheduleError("--api needs --beamline ID (the facility's beamline id)")
    if not (args.schedule or args.api or args.commissioning):
        raise ScheduleError("say where beamtimes come from: --schedule FILE or --api URL")
    now = _now(args)
    beamtimes, where = _beamtimes(args, now) if (args.schedule or args.api) else ([], "")
    beamtime = active(beamtimes, now)
    if beamtime is None and not args.commissioning:
        upcoming = sorted((b for b in beamtimes if b.start > now), key=lambda b: b.start)
        nxt = (
            f"; the next one is {upcoming[0].proposal_id or 'unnamed'} from "
            f"{upcoming[0].start.isoformat()} ({upcoming[0].source})"
            if upcoming
            else ""
        )
        raise NoActiveBeamtimeError(
            f"{where}: no beamtime at {now.isoformat()}{nxt}; use --commissioning to "
            "record as commissioning, or --at TIME for another time"
        )
    data_root = _data_root(args)
    if beamtime is None:
        pi = None
        if args.pi:
            try:
                pi = parse_person(args.pi)
            except ValueError as err:
                raise ScheduleError(f"--pi: {err}") from None
        last = (pi.last_name if pi else "") or COMMISSIONING
        snapshot = commissioning_snapshot(
            pi=pi,
            beamline_id=args.beamline or "",
            data_directory=str(experiment_dir(data_root, when=now, pi_last_name=last)),
        )
        what = f"commissioning (PI {pi.name if pi else 'none'})"
    else:
        snapshot = to_snapshot(beamtime)
        if not snapshot["beamline_id"] and args.beamline:
            snapshot["beamline_id"] = args.beamline
        snapshot["data_directory"] = str(
            experiment_dir(
                data_root,
                when=beamtime.start,
                pi_last_name=beamtime.pi.last_name or beamtime.proposal_id,
            )
        )
        what = (
            f"proposal {beamtime.proposal_id} (PI {beamtime.pi.name or '-'}), "
            f"{beamtime.start.isoformat()} to {beamtime.end.isoformat()}, from {beamtime.source}"
        )
    if args.dry_run:
        print(json.dumps(snapshot, indent=2, ensure_ascii=False))
        return 0
    service = _Service(args)
    values = sync_values(service.snapshot(), snapshot)
    service.write(values)
    print(f"metadata service {service.prefix} now holds {what}")
    print(f"  data directory {snapshot['data_directory']}")
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    from .model import set_dotted, values_from_snapshot

    assignments = []
    for item in args.assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ScheduleError(f"{item!r}: expected KEY=VALUE, e.g. sample.name=Si")
        assignments.append((key.strip(), text))
    service = _Service(args)
    before = values_from_snapshot(service.snapshot())
    values = dict(before)
    for key, text in assignments:
        values = set_dotted(values, key, text)
    changed = {k: v for k, v in values.items() if k != "updated" and before.get(k) != v}
    if changed:
        service.write(changed)
    for key, text in assignments:
        print(f"{key} = {text!r}")
    if not changed:
        print(f"metadata service {service.prefix}: nothing changed")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    service = _Service(args)
    snapshot = service.snapshot()
    if args.json:
        print(json.dumps(snapshot, indent=2, ensure_ascii=False))
    else:
        for line in format_snapshot(snapshot, prefix=service.prefix):
            print(line)
    return 0


# -- parser ---------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``metadata`` (with ``sync``/``set``/``show``) to ``subparsers``.

    Each leaf parser sets ``func``: ``args.func(args)`` returns the exit code.
    """
    md = subparsers.add_parser(
        "metadata",
        help="fill and check the metadata service (proposal, PI, sample, ...)",
        description=__doc__.split("\n\n")[0],
    )
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument(
        "--prefix",
        default=None,
        help=f"the metadata IOC's PV prefix (default: $BSREC_METADATA_PREFIX or {DEFAULT_PREFIX})",
    )
    service.add_argument(
        "--state-dir",
        default=None,
        help="a simulated beamline's state dir whose IOCs to use (default: "
        "$BSREC_STATE_DIR/sim or ~/.bsrec/sim if running; else the EPICS_CA_* environment)",
    )
    service.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the IOC (default 5)"
    )
    sub = md.add_subparsers(dest="metadata_command", metavar="ACTION", required=True)

    s = sub.add_parser(
        "sync", parents=[service], help="write the beamtime active now to the service"
    )
    source = s.add_mutually_exclusive_group()
    source.add_argument("--schedule", metavar="FILE", help="a schedule file (.toml or .csv)")
    source.add_argument("--api", metavar="URL", help="the facility scheduling API's base URL")
    s.add_argument("--beamline", metavar="ID", help="the beamline id (required with --api)")
    s.add_argument(
        "--at", metavar="ISO-TIME", help="use this time instead of now (no zone: local time)"
    )
    s.add_argument(
        "--commissioning",
        action="store_true",
        help="when no beamtime is active, write a commissioning snapshot instead of failing",
    )
    s.add_argument("--pi", metavar="'NAME <EMAIL>'", help="the PI for --commissioning")
    s.add_argument("--config", help="recorder-set file whose data_root to use")
    s.add_argument("--data-root", help="where experiment directories go (overrides the config)")
    s.add_argument(
        "--http-timeout", type=float, default=10.0, help="seconds per API request (default 10)"
    )
    s.add_argument(
        "--dry-run", action="store_true", help="print the snapshot as JSON; write nothing"
    )
    s.set_defaults(func=_cmd_sync)

    s = sub.add_parser("set", parents=[service], help="set values by hand: KEY=VALUE ...")
    s.add_argument(
        "assignments",
        nargs="+",
        metavar="KEY=VALUE",
        help='e.g. sample.name=Si pi.email=jane@example.org users=\'[{"name": "Ann"}]\'',
    )
    s.set_defaults(func=_cmd_set)

    s = sub.add_parser("show", parents=[service], help="print what the service holds")
    s.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    s.set_defaults(func=_cmd_show)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``metadata <sync|set|show> ...`` (the leading ``metadata`` is optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "metadata":
        argv = ["metadata", *argv]
    parser = argparse.ArgumentParser(prog="bsrec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BsrecError as err:
        print(f"bsrec: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
