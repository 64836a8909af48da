"""The ``bsrec`` command.

::

    bsrec session                 IPython with a RunEngine, the beamline and the recorders
    bsrec demo                    start the simulated beamline, record three runs, stop it
    bsrec runs                    recent runs and the files each recorder wrote
    bsrec record --zmq HOST:PORT  record, in this process, the runs published to a 0MQ proxy
    bsrec feed --zmq HOST:PORT    serve the live page and JSON feed of those runs
    bsrec shm show [--follow]     the shared-memory segment's latest points
    bsrec sim start|stop|status   the simulated beamline's IOCs
    bsrec metadata sync|set|show  fill and read the metadata service
    bsrec metadata-ioc --prefix P the metadata service's IOC (caproto)
    bsrec config check [FILE]     check a recorder-set file
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

from .errors import BsrecError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["metadata-ioc"]:  # every option belongs to the IOC (caproto's parser)
        from .metadata.ioc import main as ioc_main

        ioc_main(argv[1:])
        return 0
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # our own messages at INFO; other libraries only when they warn
        logging.getLogger("bluesky_recorders").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except BsrecError as err:
        print(f"bsrec: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bsrec",
        description="bluesky-recorders: record bluesky runs.\n" + __doc__.split("::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="recorder-set file (default: recorders/default.toml)")
        sp.add_argument("--data-root", help="where recorders write (overrides the config)")

    s = sub.add_parser("session", help="IPython with a RunEngine, the beamline and the recorders")
    common(s)
    s.add_argument("--state-dir", help="simulated beamline state (default ~/.bsrec)")
    s.add_argument("--no-sim", action="store_true", help="do not start the simulated beamline")
    s.set_defaults(func=_cmd_session)

    s = sub.add_parser("demo", help="record a step scan, a grid scan and a detector count")
    common(s)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("runs", help="recent runs and the files each recorder wrote")
    common(s)
    s.add_argument("-n", "--limit", type=int, default=20, help="how many runs (default 20)")
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.set_defaults(func=_cmd_runs)

    s = sub.add_parser("record", help="record runs published to a bluesky 0MQ proxy")
    common(s)
    s.add_argument("--zmq", required=True, metavar="HOST:PORT", help="the proxy's output address")
    s.add_argument("--only", help="comma-separated recorder names to run (default: enabled ones)")
    s.set_defaults(func=_cmd_record)

    s = sub.add_parser(
        "feed",
        help="serve the live page and JSON feed of the runs published to a 0MQ proxy",
        description="Serve the live page and the JSON feed (WebSocket /ws, Server-Sent Events "
        "/events) of the runs published to a bluesky 0MQ proxy. Options of the feed come from "
        "the [recorders.feed] table of the recorder-set file. Listening on any address but "
        "loopback needs a token: --token-file or $BSREC_FEED_TOKEN.",
    )
    common(s)
    s.add_argument("--zmq", required=True, metavar="HOST:PORT", help="the proxy's output address")
    s.add_argument(
        "--listen", metavar="HOST:PORT", help="where to serve (default: the config's, else "
        "127.0.0.1:8765)"
    )
    s.add_argument("--token-file", help="file holding the token (not readable by others)")
    s.set_defaults(func=_cmd_feed)

    s = sub.add_parser(
        "export",
        help="write recorded runs as SPEC, NeXus, CSV or JSON lines",
        description="Replay recorded runs through the recorders of the formats asked for. "
        "SOURCE: a NeXus file written by bsrec, a documents file (.jsonl, .json, .json.gz), "
        "or catalog runs: a uid, a unique uid prefix, a scan id, or key=value. "
        "Exit code 0 only when every run was written completely.",
    )
    common(s)
    s.add_argument("source", nargs="+", help="files or catalog runs")
    s.add_argument(
        "--to", required=True, metavar="FORMAT[,FORMAT...]", help="spec, nexus, csv, jsonl"
    )
    s.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    s.add_argument(
        "--catalog", metavar="DIR", help="catalog directory (default: <data_root>/catalog)"
    )
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("config", help="check recorder-set files")
    csub = s.add_subparsers(metavar="ACTION")
    c = csub.add_parser("check", help="parse and check a recorder-set file")
    c.add_argument("file", nargs="?", help="default: recorders/default.toml")
    c.set_defaults(func=_cmd_config_check)

    # handled in main() before parsing: listed here for --help only
    sub.add_parser("metadata-ioc", help="run the metadata service's IOC (see --help of it)")

    from . import shm_cli
    from .metadata import cli as metadata_cli
    from .sim import cli as sim_cli

    sim_cli.register(sub)
    shm_cli.register(sub)
    metadata_cli.register(sub)
    return p


# -- commands -----------------------------------------------------------------
def _cmd_runs(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runlog import RunLog

    config = load_config(args.config, data_root=args.data_root)
    log = RunLog(config.settings.run_log_path)
    records = log.recent(args.limit)
    if args.json:
        for r in records:
            print(json.dumps({**r.__dict__, "duration": r.duration}))
        return 0
    if not records:
        print(f"no runs recorded yet in {log.path}")
        return 0
    for line in format_runs(records):
        print(line)
    return 0


def format_runs(records: Sequence[object]) -> list[str]:
    """Plain-text lines of a run listing (newest first), each run followed by its files."""
    lines = [f"{'scan':>5}  {'plan':<16} {'start':<19}  {'duration':>9}  {'exit':<8} uid"]
    for r in records:
        start = datetime.fromtimestamp(r.start_time).strftime("%Y-%m-%d %H:%M:%S")
        dur = "-" if r.duration is None else f"{r.duration:.1f} s"
        scan = "-" if r.scan_id is None else str(r.scan_id)
        lines.append(
            f"{scan:>5}  {r.plan_name[:16]:<16} {start:<19}  {dur:>9}  {r.exit_status:<8} {r.uid}"
        )
        if r.reason:
            lines.append(f"{'':7}reason: {r.reason}")
        for recorder, paths in sorted(r.artifacts.items()):
            for path in paths:
                lines.append(f"{'':7}{recorder}: {path}")
    return lines


def _cmd_record(args: argparse.Namespace) -> int:
    from .config import load_recorder_set
    from .remote import record_from_zmq

    only = [n.strip() for n in args.only.split(",")] if args.only else None
    rs = load_recorder_set(args.config, data_root=args.data_root, only=only)
    names = ", ".join(rs.recorders)
    logging.getLogger("bluesky_recorders").info(
        "recording runs from %s with [%s] into %s", args.zmq, names, rs.settings.data_root
    )
    for recorder in rs.recorders.values():
        if recorder.kind == "catalog":  # open it now (8-13 s), not in the first run
            recorder.catalog  # noqa: B018 - the property opens the catalog
    failures = record_from_zmq(
        args.zmq, rs, on_ready=lambda: print(f"bsrec record: listening on {args.zmq}", flush=True)
    )
    return 1 if failures else 0


def _cmd_feed(args: argparse.Namespace) -> int:
    from .config import load_config
    from .feed import FeedRecorder
    from .recorder_set import RecorderSet
    from .remote import record_from_zmq

    config = load_config(args.config, data_root=args.data_root)
    options: dict[str, object] = {"serve": "127.0.0.1:8765"}
    for spec in config.recorders:
        if spec.kind == "feed":
            options.update(spec.options)
            break
    options["data_root"] = options.get("data_root") or config.settings.data_root
    if args.listen:
        options["serve"] = args.listen
    if args.token_file:
        options["token_file"] = args.token_file
    options["on_error"] = "abort"  # serving is this command's whole job: a busy port is an error
    options["serve_in"] = "thread"  # this process is the server's own already
    options["send_delay"] = 0.0  # no RunEngine here to spare: rows go on at once
    recorder = FeedRecorder(**options)  # type: ignore[arg-type]
    assert recorder.server is not None
    url = recorder.server.url.split("?")[0]
    rs = RecorderSet([recorder], run_log=None)

    def ready() -> None:
        print(f"bsrec feed: runs from {args.zmq}, page at {url}", flush=True)

    failures = record_from_zmq(args.zmq, rs, on_ready=ready)
    recorder.close()
    return 1 if failures else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .config import load_config
    from .export import EXPORT_FORMATS, export

    config = load_config(args.config, data_root=args.data_root)
    formats = [f.strip() for f in args.to.split(",") if f.strip()]
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise BsrecError(
            f"unknown export format(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(EXPORT_FORMATS)}"
        )
    catalog = None
    if any(not os.path.isfile(os.path.expanduser(s)) for s in args.source):
        from .catalog import close_catalog, open_catalog

        directory = args.catalog or os.path.join(config.settings.data_root, "catalog")
        if not os.path.isdir(directory):
            raise BsrecError(f"no catalog at {directory} (give --catalog DIR)")
        catalog = open_catalog(directory)
    try:
        results = export(
            args.source, formats, args.out, catalog=catalog, path_map=config.settings.path_map
        )
    finally:
        if catalog is not None:
            close_catalog(catalog)
    failed = 0
    runs = [r for r in results if r.run_uid]
    for result in results:
        if not result.run_uid:
            failed += 1
            print(f"FAILED   {result.source}: {len(result.problems)} problem(s) reading it")
        else:
            state = "ok" if result.ok else ("partial" if result.partial else "FAILED")
            failed += not result.ok
            print(f"{state:8} {result.source}")
        for fmt, files in result.files.items():
            for path in files or ["(nothing written)"]:
                print(f"         {fmt:6} {path}")
        for problem in result.problems:
            print(f"         ! {problem}")
        for note in result.notes:
            print(f"         ~ {note}")
    complete = sum(r.ok for r in runs)
    print(f"bsrec export: {complete} of {len(runs)} run(s) written completely")
    return 1 if failed or not results else 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.file)
    print(f"{config.source}: ok; data root {config.settings.data_root}")
    for spec in config.recorders:
        state = "on " if spec.enabled else "off"
        print(f"  [{state}] {spec.name} ({spec.kind}) {spec.options or ''}")
    return 0


def _cmd_session(args: argparse.Namespace) -> int:
    from .session import start_ipython

    return start_ipython(
        config=args.config,
        data_root=args.data_root,
        state_dir=args.state_dir,
        start_sim=not args.no_sim,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    data_root = args.data_root or os.environ.get("BSREC_DATA_ROOT")
    return run_demo(config=args.config, data_root=Path(data_root) if data_root else None)


if __name__ == "__main__":
    raise SystemExit(main())
