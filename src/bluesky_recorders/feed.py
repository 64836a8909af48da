"""The JSON live-plot feed recorder: runs as they go, for the web page and other clients.

``FeedRecorder(serve="127.0.0.1:8765")`` turns each run's documents into the
feed's messages (:mod:`bluesky_recorders.feed_messages`) and publishes them to
a :class:`~bluesky_recorders.feed_server.FeedHub`, which a
:class:`~bluesky_recorders.feed_server.FeedServer` serves over WebSocket and
Server-Sent Events together with the live page: in a thread of this process, or
(``serve_in="process"``, the default recorder set's choice) in a process of its own
(:class:`~bluesky_recorders.feed_server.FeedProcess`), so that the server never waits
for the RunEngine's GIL. ``bsrec feed --zmq HOST:PORT``
runs the same recorder and server in a process of its own, fed by bluesky's
0MQ proxy, so that the network never shares the RunEngine's process.

A live view: a failure is logged and the run goes on (policy ``warn``). In a
``RecorderSet`` it runs inline on the RunEngine's thread by default (``threaded=False``).
There an event costs that thread one row appended to lists: its rows wait up to
``send_delay`` (25 ms) and go on together (:class:`FeedWriter`). In bench_feed.py's
session set-up (server process, page in chromium) the feed's callback took 9.6 µs a
document in the unpaced plan (about 1,100 events/s) and 37.5 µs in a 100-point scan,
where the caches are cold between points; the timers that send the rows, 0.23-0.41 %
of the run. That is less than a thread hand-off would cost in latency and in GIL
switches; nothing the network does can hold it, as every client has its own bounded
queue that drops points. With a ``data_root`` the page lists each run's end-of-run plots
(written by the ``plots`` recorder into ``<experiment dir>/end_of_run/``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .external import PathMap
from .feed_messages import (
    PROTOCOL_VERSION,
    SCALAR_KINDS,
    column_kind,
    columns_message,
    json_value,
    points_message,
    run_end_message,
    run_start_message,
)
from .feed_server import (
    CHILD_POLL,
    FeedHub,
    FeedProcess,
    FeedServer,
    FeedServerError,
    is_loopback,
)
from .paths import run_directory
from .recorder import Recorder, RunWriter

__all__ = ["FeedRecorder", "FeedWriter", "end_of_run_plots", "parse_address", "read_token"]


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) -> (host, port); port 0 is any free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FeedServerError(f"feed address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    host = host.strip("[]")
    number = int(port)
    if not 0 <= number <= 65535:
        raise FeedServerError(f"feed address {text!r}: port out of range")
    return host, number


def read_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The feed token from ``token_file``, else ``$BSREC_FEED_TOKEN``, else None.

    The file must not be readable by others (it is a password).
    """
    if token_file:
        path = Path(os.path.expanduser(os.fspath(token_file)))
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise FeedServerError(f"feed token file {path}: {err.strerror or err}") from err
        if mode & 0o004:
            raise FeedServerError(
                f"feed token file {path} is readable by everyone; chmod o-r it first"
            )
        if not text:
            raise FeedServerError(f"feed token file {path} is empty")
        return text
    return os.environ.get("BSREC_FEED_TOKEN") or None


def end_of_run_plots(
    data_root: str | os.PathLike[str], start: Mapping[str, Any], path_map: PathMap | None = None
) -> list[Path]:
    """The PNG files the ``plots`` recorder wrote for this run (none yet: empty)."""
    from .plots import find_run_plots

    try:
        where = run_directory(data_root, start, path_map=path_map)
        folder = find_run_plots(where, start["uid"], start.get("scan_id"))
    except Exception:  # no experiment directory for this run: no plots
        return []
    return sorted(folder.glob("*.png")) if folder is not None else []


#: How long points wait on the RunEngine's thread to go on together, and how many rows
#: at most (see FeedWriter.event).
SEND_DELAY = 0.025
SEND_ROWS = 1000


class FeedWriter(RunWriter):
    """Turns one run's documents into feed messages.

    Called on a thread running an asyncio loop (the RunEngine's), an event's row waits
    there up to the recorder's ``send_delay`` for the next ones, and they go on as one
    ``points`` message (at most ``SEND_ROWS`` rows); any other document of the run
    sends the waiting rows first, so the order is kept. Per event, the RunEngine's
    thread only appends a row to lists: the message, its copy in the hub and its send
    to a server process are made once per batch. With no loop on the caller's thread
    (called directly, or on a recorder thread), each event goes on at once.
    """

    recorder: FeedRecorder

    def __init__(self, start: Mapping[str, Any], recorder: FeedRecorder) -> None:
        super().__init__(start, recorder)
        self.uid = str(start["uid"])
        self.started = False
        # descriptor uid -> (stream, scalar keys)
        self._streams: dict[str, tuple[str, list[str]]] = {}
        # the points waiting to go (a points message being filled) and their descriptor
        self._held: dict[str, Any] | None = None
        self._held_descriptor: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _announce(self, descriptor: Mapping[str, Any] | None) -> None:
        if not self.started:
            self.started = True
            self.recorder.hub.publish(run_start_message(self.start_doc, descriptor), self.start_doc)

    def _send_held(self) -> None:
        """Publish the waiting points (from the loop's timer, or before another message)."""
        held, self._held = self._held, None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if held is not None:
            self.recorder.hub.publish(held)

    def _send_later(self) -> None:
        """The loop's timer: the rows have waited ``send_delay``."""
        self._timer = None
        self._send_held()

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        self._send_held()
        stream = str(doc.get("name", "primary"))
        if stream not in self.recorder.streams:
            return
        self._announce(doc if stream == "primary" else None)
        keys = [k for k, v in doc.get("data_keys", {}).items() if column_kind(v) in SCALAR_KINDS]
        self._streams[doc["uid"]] = (stream, keys)
        self.recorder.hub.publish(columns_message(self.uid, doc))

    def event(self, doc: Mapping[str, Any]) -> None:
        """One event's row: added to the waiting points (see the class's docstring)."""
        descriptor = doc["descriptor"]
        held = self._held
        if held is None or descriptor != self._held_descriptor:
            known = self._streams.get(descriptor)
            if known is None:
                return
            if held is not None:
                self._send_held()
            stream, keys = known
            held = {
                "v": PROTOCOL_VERSION,
                "type": "points",
                "run": self.uid,
                "stream": stream,
                "seq_num": [],
                "time": [],
                "data": {k: [] for k in keys},
            }
            delay = self.recorder.send_delay
            try:
                loop = asyncio.get_running_loop() if delay > 0 else None
            except RuntimeError:  # no loop on this thread to send them later: now
                loop = None
            if loop is not None:
                self._held, self._held_descriptor = held, descriptor
                self._timer = loop.call_later(delay, self._send_later)
        data = doc["data"]
        held["seq_num"].append(int(doc["seq_num"]))
        held["time"].append(json_value(doc["time"]))
        for key, column in held["data"].items():
            column.append(json_value(data.get(key)))
        if self._held is not held:  # no loop to send them later: at once
            self.recorder.hub.publish(held)
        elif len(held["seq_num"]) >= SEND_ROWS:
            self._send_held()

    def event_page(self, doc: Mapping[str, Any]) -> None:
        self._send_held()
        known = self._streams.get(doc["descriptor"])
        if known is None:
            return
        stream, keys = known
        self.recorder.hub.publish(points_message(self.uid, stream, doc, keys))

    def stop(self, doc: Mapping[str, Any]) -> None:
        self._send_held()
        self._announce(None)
        self.recorder.hub.publish(run_end_message(doc))

    def close(self) -> None:
        self._send_held()  # a run that ends without its stop: its last points all the same


class FeedRecorder(Recorder):
    """Publishes runs to the live feed; serves it when ``serve`` is given.

    serve
        ``"host:port"`` to serve the page and the feed from this process
        (port 0: any free port; ``recorder.server.url`` says which); None
        for no server (the hub still keeps the runs).
    token_file
        File holding the token (else ``$BSREC_FEED_TOKEN``); required to
        serve on any address but loopback.
    allowed_origins
        Other origins whose pages may read the feed (default: only its own).
    data_root
        Where the ``plots`` recorder writes: the page then lists each run's
        end-of-run plots.
    streams
        Streams forwarded (default: primary only).
    history
        How many recent runs the page lists.
    client_queue
        Points a client may fall behind before it loses points (and is told).
    max_rows
        Rows of the current run kept for clients that join mid-run.
    websocket
        False: serve Server-Sent Events only (behind a proxy without WebSocket).
    serve_in
        ``"thread"`` (default): the server runs in a thread of this process;
        ``"process"``: in a process of its own, fed through a Unix socket (what
        ``recorders/default.toml`` chooses: a RunEngine busy at 1,000 events/s
        would hold a server thread off its GIL for up to hundreds of ms).
    send_delay
        Seconds an event's row waits on the RunEngine's (asyncio) thread for the next
        ones, to go on together (default ``SEND_DELAY``; 0: each at once, as ``bsrec
        feed --zmq`` does, where no RunEngine shares the process).
    threaded
        In a ``RecorderSet``: False (default), inline on the RunEngine's thread; True,
        on a thread of its own behind a queue (which drops events when full).
    """

    kind = "feed"
    saves_data = False
    writer_class = FeedWriter

    def __init__(
        self,
        *,
        serve: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        allowed_origins: Iterable[str] = (),
        data_root: str | os.PathLike[str] | None = None,
        streams: Sequence[str] = ("primary",),
        history: int = 20,
        client_queue: int = 10_000,
        max_rows: int = 200_000,
        websocket: bool = True,
        serve_in: str = "thread",
        send_delay: float = SEND_DELAY,
        threaded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(threaded=threaded, **kwargs)
        from . import __version__

        self.streams = frozenset(streams)
        self.send_delay = float(send_delay)
        self.data_root = (
            Path(os.path.expanduser(os.fspath(data_root))).absolute() if data_root else None
        )
        root, path_map = self.data_root, self.path_map
        self.hub = FeedHub(
            history=history,
            client_queue=client_queue,
            max_rows=max_rows,
            plots=(lambda start: end_of_run_plots(root, start, path_map)) if root else None,
            version=__version__,
        )
        if serve_in not in ("thread", "process"):
            raise ValueError(f"serve_in must be 'thread' or 'process', not {serve_in!r}")
        self.server: FeedServer | FeedProcess | None = None
        if serve:
            host, port = parse_address(serve)
            secret = token or read_token(token_file)
            try:
                server: FeedServer | FeedProcess
                if serve_in == "process":
                    server = FeedProcess(
                        host=host,
                        port=port,
                        token=secret,
                        allowed_origins=allowed_origins,
                        websocket=websocket,
                        hub_options={
                            "history": history,
                            "client_queue": client_queue,
                            "max_rows": max_rows,
                            "version": __version__,
                        },
                        plots=(str(root), dict(path_map.prefixes)) if root else None,
                        # inline, the writer's batches come send_delay apart (on a
                        # recorder thread, each event at once): no sooner look
                        rest=0.0 if threaded else self.send_delay - CHILD_POLL,
                    )
                    self.hub.forward = server.send  # this process's hub keeps the runs too
                else:
                    server = FeedServer(
                        self.hub,
                        host=host,
                        port=port,
                        token=secret,
                        allowed_origins=allowed_origins,
                        websocket=websocket,
                    )
            except FeedServerError as err:
                # No token for a public address is a mistake to fix; a busy port (another
                # session serves the page) costs only this page when live views may fail.
                if self.on_error == "abort" or not secret and not is_loopback(host):
                    raise
                self.log.error("%s: %s; the runs are not served by this process", self.name, err)
            else:
                self.server = server.start() if isinstance(server, FeedServer) else server
                self.log.info("%s: live page at %s", self.name, server.url.split("?")[0])

    def close(self) -> None:
        super().close()
        if self.server is not None:
            self.server.stop()
