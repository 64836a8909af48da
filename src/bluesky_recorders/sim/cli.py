"""``bsrec sim start|stop|status``: run the simulated beamline in the background.

``register(subparsers)`` adds the ``sim`` command to a top-level ``argparse`` CLI;
``main(argv)`` runs it on its own (``python -m bluesky_recorders.sim.cli start``).
Each subcommand returns an exit code: 0 for success, 1 otherwise (``status``: 1 when
the beamline is not running).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .manager import SimBeamline, SimBeamlineError, SimBeamlineRunningError

__all__ = ["default_state_dir", "main", "register"]


def default_state_dir() -> Path:
    """``$BSREC_STATE_DIR`` or ``~/.bsrec``."""
    return Path(os.environ.get("BSREC_STATE_DIR") or Path.home() / ".bsrec").expanduser()


def _print_env(sim: SimBeamline) -> None:
    print(
        f"Channel Access port: {sim.port} (IOC ports: "
        + ", ".join(f"{n} {p}" for n, p in sim.ports.items())
        + ")"
    )
    print("# Clients need:")
    for line in sim.export_lines():
        print(line)


def _cmd_start(args: argparse.Namespace) -> int:
    detector_root = args.detector_root or args.state_dir / "detector-disk"
    try:
        sim = SimBeamline.start(args.state_dir, detector_root, args.ioc_root, timeout=args.timeout)
    except SimBeamlineRunningError as exc:
        print(f"Already running: {exc}")
        _print_env(exc.beamline)
        return 0
    except SimBeamlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Simulated beamline started (state in {sim.state_file}).")
    print(f"Detector IOC root {sim.ioc_root} is {sim.local_detector_root} here.")
    _print_env(sim)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        sim = SimBeamline.load(args.state_dir)
    except SimBeamlineError as exc:
        print(f"Not running: {exc}")
        return 0
    sim.stop()
    print("Simulated beamline stopped.")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        sim = SimBeamline.load(args.state_dir)
    except SimBeamlineError as exc:
        print(f"Not running: {exc}")
        return 1
    for name, state in sim.status().items():
        info = sim.state["iocs"][name]
        print(f"{name:9s} {state:8s} pid {info['pid']}  log {info['log']}")
    if not sim.running:
        print("Not running (stale state); `bsrec sim stop` cleans up.")
        return 1
    _print_env(sim)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``sim`` command (with ``start``/``stop``/``status``) to ``subparsers``.

    Each leaf parser sets ``func``: call ``args.func(args)`` to get the exit code.
    """
    sim = subparsers.add_parser(
        "sim", help="run the simulated beamline (caproto IOCs)", description=__doc__
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where sim.json and IOC logs live (default: $BSREC_STATE_DIR or ~/.bsrec)",
    )
    sub = sim.add_subparsers(dest="sim_command", required=True)
    start = sub.add_parser("start", parents=[common], help="start the IOCs in the background")
    start.add_argument(
        "--detector-root",
        type=Path,
        default=None,
        help="local directory standing for the detector IOC's root "
        "(default: <state-dir>/detector-disk)",
    )
    start.add_argument(
        "--ioc-root", default="/detector-disk", help="the detector IOC's root as the IOC sees it"
    )
    start.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for the IOCs to answer"
    )
    start.set_defaults(func=_with_state_dir(_cmd_start))
    sub.add_parser("stop", parents=[common], help="stop the IOCs").set_defaults(
        func=_with_state_dir(_cmd_stop)
    )
    sub.add_parser("status", parents=[common], help="exit 0 if running, 1 if not").set_defaults(
        func=_with_state_dir(_cmd_status)
    )
    return sim


def _with_state_dir(command):
    """Resolve ``--state-dir`` (default :func:`default_state_dir`), then run ``command``."""

    def run(args: argparse.Namespace) -> int:
        state_dir = getattr(args, "state_dir", None)
        args.state_dir = (state_dir or default_state_dir()).expanduser()
        return command(args)

    run.__doc__ = command.__doc__
    return run


def main(argv: list[str] | None = None) -> int:
    """Run ``sim <start|stop|status> [options]`` (the leading ``sim`` is optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "sim":
        argv = ["sim", *argv]
    parser = argparse.ArgumentParser(prog="bsrec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
