"""The live feed's hub and its web server (WebSocket, Server-Sent Events, the page).

::

    FeedRecorder --publish(msg)--> FeedHub --(event loop)--> client queue --> WebSocket
      (its thread)                  | current run, recent runs    \\-> client queue --> SSE

:class:`FeedHub` keeps the current run so far and the recent runs, and hands
every message to each connected client's own bounded queue. Publishing costs
the recorder's thread a lock and an append: nothing the network does can slow the
RunEngine. The event loop hands the messages on in batches, at most one batch every
``batch_interval`` (20 ms): a message that finds the loop idle for that long goes at
once, the others wait for the next batch. So however fast events come, the loop is
woken (``call_soon_threadsafe``) at most twice per interval and each client gets one
send per interval, which keeps the server's share of the GIL small when it shares
the RunEngine's process. A client that falls behind by more than
``client_queue`` points loses the newest points and is told so with a
``dropped`` message (it may fetch ``/api/current`` to rebuild the run); the
other clients are not affected. A client that joins mid-run first receives
the current run so far (one merged ``points`` message per stream), then the
live messages that follow it, none twice.

:class:`FeedServer` serves the hub with Starlette on uvicorn in a background
thread: ``/`` (the page), ``/static/...``, ``/ws``, ``/events``,
``/api/current``, ``/api/runs`` and ``/api/runs/<uid>/plots/<file>``. It binds
127.0.0.1 unless told otherwise, and refuses to bind any other address
without a token. With a token, every request but the page and its static files must
carry it (``?token=`` or ``Authorization: Bearer``); a request whose ``Origin`` is
not the server's own (or one of ``allowed_origins``) is refused; a client may
not send messages larger than 4 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import BsrecError
from .feed_messages import PROTOCOL_VERSION, dropped_message, extend_points, merge_points

__all__ = ["FeedHub", "FeedProcess", "FeedServer", "FeedServerError", "is_loopback"]

log = logging.getLogger("bluesky_recorders.feed")

#: Where the page and its plotting library are (package data).
STATIC_DIR = Path(__file__).parent / "web" / "static"
#: Largest message a client may send (it only ever needs to say nothing).
MAX_CLIENT_MESSAGE = 4096
#: Seconds between two batches the hub hands to the clients, at least: one wake-up of
#: the event loop and one send per client carry what arrived meanwhile (the latency
#: this adds is at most this; fewer wake-ups, sends and encodings when events come fast).
BATCH_INTERVAL = 0.02
#: Seconds between keep-alive comments on an idle Server-Sent Events stream.
SSE_KEEPALIVE = 15.0

PlotLocator = Callable[[Mapping[str, Any]], Sequence[Path]]


class FeedServerError(BsrecError):
    """The feed server cannot start (address in use, no token for a public address...)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _encode(msg: Mapping[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)


class _Run:
    """What a client joining now needs of one run."""

    def __init__(self, start_msg: dict[str, Any], max_rows: int) -> None:
        self.start_msg = start_msg
        self.start_doc: Mapping[str, Any] = {}
        self.columns: dict[str, dict[str, Any]] = {}
        self.points: dict[str, dict[str, Any]] = {}
        self.end_msg: dict[str, Any] | None = None
        self.omitted = 0  # rows beyond max_rows, left out of the snapshot
        self.max_rows = max_rows
        self.rows = 0
        self.plots: list[Path] = []  # end-of-run plots, once found (they never move)

    @property
    def uid(self) -> str:
        return str(self.start_msg["run"])

    def add_points(self, msg: Mapping[str, Any]) -> None:
        n = len(msg["seq_num"])
        self.rows += n
        if self.rows > self.max_rows:
            self.omitted += n
            return
        held = self.points.get(msg["stream"])
        if held is None:
            self.points[msg["stream"]] = merge_points(msg)  # a copy of its own
        else:
            extend_points(held, msg)

    def messages(self) -> list[dict[str, Any]]:
        out = [self.start_msg, *self.columns.values(), *self.points.values()]
        if self.omitted:
            out.append(dropped_message(self.uid, self.omitted, "run longer than the feed keeps"))
        if self.end_msg is not None:
            out.append(self.end_msg)
        return out

    def summary(self, plots: list[str]) -> dict[str, Any]:
        s = self.start_msg
        return {
            "run": self.uid,
            "scan_id": s.get("scan_id"),
            "plan_name": s.get("plan_name", ""),
            "time": s.get("time"),
            "exit_status": self.end_msg.get("exit_status") if self.end_msg else None,
            "num_points": self.rows,
            "metadata": s.get("metadata", {}),
            "plots": plots,
        }


class _Client:
    """One connection's bounded queue (lives on the event loop's thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[dict[str, Any]] = deque()
        self.points = 0  # points waiting in items
        self.after = 0  # hub sequence number already included in the snapshot
        self.ready = asyncio.Event()
        self.sent_points = 0
        self.dropped_total = 0
        self.closed = False

    def offer(self, number: int, msg: dict[str, Any]) -> None:
        if number <= self.after:
            return
        if msg["type"] == "points":
            n = len(msg["seq_num"])
            if self.points + n > self.limit:
                # lose these rows; say so in order (before whatever comes next)
                last = self.items[-1] if self.items else None
                if last is not None and last["type"] == "dropped" and last["run"] == msg["run"]:
                    last["points"] += n
                else:
                    self.items.append(dropped_message(msg["run"], n))
                self.dropped_total += n
                self.ready.set()
                return
            self.points += n
        self.items.append(msg)
        self.ready.set()

    def take(self) -> list[str]:
        """Everything waiting, consecutive points of one run and stream merged, encoded."""
        out: list[dict[str, Any]] = []
        owned = False  # out[-1] is a merge made here (extended in place), not a shared message
        while self.items:
            msg = self.items.popleft()
            last = out[-1] if out else None
            if (
                msg["type"] == "points"
                and last is not None
                and last["type"] == "points"
                and last["run"] == msg["run"]
                and last["stream"] == msg["stream"]
            ):
                if not owned:
                    out[-1] = last = merge_points(last)
                    owned = True
                extend_points(last, msg)
            else:
                out.append(msg)
                owned = False
        self.points = 0
        self.sent_points += sum(len(m["seq_num"]) for m in out if m["type"] == "points")
        return [_encode(m) for m in out]


class FeedHub:
    """The current run, the recent runs and the connected clients.

    ``publish`` may be called from any thread; clients live on the server's
    event loop. Without a server the hub still keeps the runs (``snapshot``).
    """

    def __init__(
        self,
        *,
        history: int = 20,
        client_queue: int = 10_000,
        max_rows: int = 200_000,
        plots: PlotLocator | None = None,
        version: str = "",
        batch_interval: float = BATCH_INTERVAL,
        forward: Callable[[dict[str, Any], Mapping[str, Any] | None], None] | None = None,
    ) -> None:
        self.client_queue = int(client_queue)
        self.batch_interval = float(batch_interval)
        self.forward = forward  # also hands every message to this (a FeedProcess)
        self.max_rows = int(max_rows)
        self.plots = plots
        self.version = version
        self._lock = threading.Lock()
        self._number = 0
        self._current: _Run | None = None
        self._recent: deque[_Run] = deque(maxlen=max(1, int(history)))
        self._clients: set[_Client] = set()
        self._outbox: list[tuple[int, dict[str, Any]]] = []
        self._woken = False  # a _deliver is scheduled on the loop
        self._delivered = -math.inf  # loop time of the last _deliver
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- producer side (any thread) ------------------------------------------------
    def publish(self, msg: dict[str, Any], start_doc: Mapping[str, Any] | None = None) -> None:
        """Record ``msg`` in the run state and pass it on to every client.

        Messages wait in one list for the event loop, which is woken once for all the
        messages published until its next batch (not once per message).
        """
        if self.forward is not None:
            self.forward(msg, start_doc)
        with self._lock:
            kind = msg["type"]
            if kind == "run_start":
                self._current = _Run(msg, self.max_rows)
                self._current.start_doc = start_doc or {}
            else:
                run = self._current
                if run is not None and run.uid != msg.get("run"):
                    run = None
                if run is not None:
                    if kind == "columns":
                        run.columns[msg["stream"]] = msg  # a new descriptor replaces it
                    elif kind == "points":
                        run.add_points(msg)
                    elif kind == "run_end":
                        run.end_msg = msg
                        self._recent = deque(
                            [r for r in self._recent if r.uid != run.uid], self._recent.maxlen
                        )
                        self._recent.appendleft(run)
            self._number += 1
            self._outbox.append((self._number, msg))
            if kind == "run_end":
                self._number += 1
                self._outbox.append((self._number, _RUNS))
            loop = self.loop
            wake = loop is not None and not self._woken
            if loop is None:
                self._outbox.clear()
            elif wake:
                self._woken = True
        if wake:
            assert loop is not None
            try:
                loop.call_soon_threadsafe(self._schedule)
            except RuntimeError:  # the loop closed meanwhile
                with self._lock:
                    self._woken = False
                    self._outbox.clear()

    # -- snapshots -------------------------------------------------------------------
    def current_messages(self) -> list[dict[str, Any]]:
        """The current (or last) run so far, as a joining client receives it."""
        with self._lock:
            return self._current.messages() if self._current else []

    def runs_message(self) -> dict[str, Any]:
        """``runs``: the recent runs, newest first, with their end-of-run plots."""
        with self._lock:
            runs = list(self._recent)
            current = self._current
        if current is not None and current.end_msg is None:
            runs.insert(0, current)
        return {
            "v": PROTOCOL_VERSION,
            "type": "runs",
            "runs": [r.summary(self._plot_urls(r)) for r in runs],
        }

    def hello_message(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "type": "hello",
            "server": "bsrec feed",
            "version": self.version,
            "client_queue": self.client_queue,
        }

    def plot_file(self, uid: str, name: str) -> Path | None:
        """The end-of-run plot ``name`` of run ``uid``, if it is one the locator lists."""
        with self._lock:
            run = next((r for r in [*self._recent, self._current] if r and r.uid == uid), None)
        if run is None:
            return None
        return next((p for p in self._plot_paths(run) if p.name == name), None)

    def _plot_paths(self, run: _Run) -> list[Path]:
        if run.plots or self.plots is None or not run.start_doc or run.end_msg is None:
            return run.plots  # found already, or none before the run ends
        try:
            run.plots = [Path(p) for p in self.plots(run.start_doc)]
        except Exception as err:  # a plot folder that cannot be read hides the plots only
            log.warning("feed: cannot list the end-of-run plots of run %s: %s", run.uid, err)
        return run.plots

    def _plot_urls(self, run: _Run) -> list[str]:
        return [f"/api/runs/{run.uid}/plots/{p.name}" for p in self._plot_paths(run)]

    # -- clients (event loop thread) -----------------------------------------------
    def attach(self) -> _Client:
        client = _Client(self.client_queue)
        runs = self.runs_message()
        with self._lock:
            client.after = self._number
            current = self._current.messages() if self._current else []
        client.items.extend([self.hello_message(), runs, *current])
        client.ready.set()
        self._clients.add(client)
        return client

    def detach(self, client: _Client) -> None:
        self._clients.discard(client)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _schedule(self) -> None:
        """Deliver now if the last batch is ``batch_interval`` old, else when it is."""
        loop = self.loop
        if loop is None:
            return
        wait = self._delivered + self.batch_interval - loop.time()
        if wait > 0:
            loop.call_later(wait, self._deliver)
        else:
            self._deliver()

    def _deliver(self) -> None:
        if self.loop is not None:
            self._delivered = self.loop.time()
        with self._lock:
            batch = list(self._outbox)
            self._outbox.clear()
            self._woken = False
        runs = None
        for number, msg in batch:
            if msg is _RUNS:
                if not self._clients:
                    continue
                runs = runs or self.runs_message()
                msg = runs
            for client in self._clients:
                client.offer(number, msg)

    def close_clients(self) -> None:
        """End every client's stream (the server stops). Event-loop thread only."""
        for client in self._clients:
            client.closed = True
            client.ready.set()


def _page_url(host: str, port: int, token: str | None) -> str:
    """The page's address at ``host:port`` (with the token, to open in a browser)."""
    where = f"[{host}]" if ":" in host else host
    base = f"http://{where}:{port}/"
    return f"{base}?token={token}" if token else base


def _listen(host: str, port: int, token: str | None) -> socket.socket:
    """The server's listening socket (a public address needs a token)."""
    if not is_loopback(host) and not token:
        raise FeedServerError(
            f"feed server: refusing to listen on {host} without a token "
            "(set token_file or BSREC_FEED_TOKEN; only loopback addresses may go without)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise FeedServerError(f"feed server: cannot listen on {host}:{port}: {err}") from err
    sock.listen(64)
    return sock


#: Placeholder in the outbox for "send the runs list now" (made on the loop's thread).
_RUNS: dict[str, Any] = {"type": "runs"}


class FeedServer:
    """The hub's web server on uvicorn, in a daemon thread.

    host, port
        Where to listen (port 0: any free port). Anything but a loopback
        address needs a ``token``.
    token
        Shared secret every request must carry (``?token=`` or
        ``Authorization: Bearer``), except the page and its static files.
    allowed_origins
        Origins (``https://host:port``) besides the server's own whose pages
        may use the feed.
    websocket
        False: refuse WebSocket connections (behind a proxy that cannot pass
        them); clients use Server-Sent Events.
    """

    def __init__(
        self,
        hub: FeedHub,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        websocket: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        self.hub = hub
        self.host = host
        self.token = token or None
        self.allowed_origins = {o.rstrip("/") for o in allowed_origins}
        self.websocket = websocket
        self._socket = sock if sock is not None else _listen(host, port, token)
        self.port = self._socket.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (with the token, to open in a browser)."""
        return _page_url(self.host, self.port, self.token)

    def start(self, timeout: float = 20.0) -> FeedServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        import uvicorn

        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="bsrec-feed-server",
            daemon=True,
        )
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise FeedServerError(f"feed server on {self.host}:{self.port} failed to start")
            if waited >= timeout:
                raise FeedServerError(
                    f"feed server on {self.host}:{self.port} did not start in {timeout:g} s"
                )
            threading.Event().wait(0.01)
            waited += 0.01
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until stopped (SIGINT/SIGTERM)."""
        import uvicorn

        self._server = uvicorn.Server(self._config())
        self._server.run(sockets=[self._socket])

    def _config(self) -> Any:
        """uvicorn's settings: no access log (request lines may carry ``?token=``)."""
        import uvicorn

        return uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            ws_max_size=MAX_CLIENT_MESSAGE,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; idempotent."""
        loop = self.hub.loop
        if loop is not None:  # end the clients' streams, so that shutdown need not wait
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.hub.close_clients)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with contextlib.suppress(OSError):
            self._socket.close()

    # -- the application ---------------------------------------------------------------
    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles
        from starlette.websockets import WebSocket, WebSocketDisconnect

        hub = self.hub

        def refused(request: Any) -> Response | None:
            reason = self._refusal(request)
            if reason is None:
                return None
            status, text = reason
            return Response(text, status_code=status, media_type="text/plain")

        async def index(request: Any) -> Response:  # no data in it: no token needed
            page = STATIC_DIR / "index.html"
            if not page.is_file():
                return Response(
                    "the feed page is not installed: run `make web` (it copies the plotting "
                    "library into the package)",
                    status_code=503,
                    media_type="text/plain",
                )
            return FileResponse(page, headers={"Cache-Control": "no-store"})

        async def current(request: Any) -> Response:
            if (r := refused(request)) is not None:
                return r
            return JSONResponse(hub.current_messages())

        async def runs(request: Any) -> Response:
            if (r := refused(request)) is not None:
                return r
            return JSONResponse(hub.runs_message())

        async def plot(request: Any) -> Response:
            if (r := refused(request)) is not None:
                return r
            path = hub.plot_file(request.path_params["uid"], request.path_params["name"])
            if path is None or not path.is_file():
                return Response("no such plot", status_code=404, media_type="text/plain")
            return FileResponse(path, headers={"Cache-Control": "no-store"})

        async def events(request: Any) -> Response:
            if (r := refused(request)) is not None:
                return r
            client = hub.attach()

            async def stream() -> Any:
                try:
                    while not client.closed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(client.ready.wait(), SSE_KEEPALIVE)
                        if not client.ready.is_set():
                            yield ": keep-alive\n\n"
                            continue
                        client.ready.clear()
                        texts = client.take()
                        if texts:
                            yield "".join(f"data: {text}\n\n" for text in texts)
                finally:
                    hub.detach(client)

            return StreamingResponse(
                stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        async def websocket(ws: WebSocket) -> None:
            reason = self._refusal(ws)
            if reason is None and not self.websocket:
                reason = (403, "WebSocket is switched off on this server: use /events")
            if reason is not None:
                await ws.close(code=1008, reason=reason[1][:120])
                return
            await ws.accept()
            client = hub.attach()

            async def pump() -> None:
                while not client.closed:
                    await client.ready.wait()
                    client.ready.clear()
                    for text in client.take():
                        await ws.send_text(text)
                await ws.close(code=1001, reason="server stopping")

            sender = asyncio.create_task(pump())
            try:
                while True:  # clients say nothing; this notices when they leave
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        break
            except WebSocketDisconnect:
                pass
            finally:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
                hub.detach(client)

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> Any:
            hub.loop = asyncio.get_running_loop()
            try:
                yield
            finally:
                hub.loop = None

        routes = [
            Route("/", index),
            Route("/api/current", current),
            Route("/api/runs", runs),
            Route("/api/runs/{uid}/plots/{name}", plot),
            Route("/events", events),
            WebSocketRoute("/ws", websocket),
        ]
        if STATIC_DIR.is_dir():
            routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
        return Starlette(routes=routes, lifespan=lifespan)

    def _refusal(self, conn: Any) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        origin = conn.headers.get("origin")
        if origin and origin != "null":
            own = conn.headers.get("host", "")
            parts = urlsplit(origin)
            if parts.netloc != own and origin.rstrip("/") not in self.allowed_origins:
                return 403, f"origin {origin} is not allowed"
        if self.token:
            given = conn.query_params.get("token", "")
            auth = conn.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, "a valid token is required"
        return None


#: Seconds between two looks of the server process at its socket while messages come,
#: and how many empty looks in a row send it back to waiting (see _serve_child).
CHILD_POLL = 0.005
CHILD_IDLE_POLLS = 40
#: The server process's niceness: where it and the RunEngine's thread both want a core,
#: the RunEngine gets it (the server needs about 4 % of a core at 1,000 events/s).
CHILD_NICE = 10
#: Points messages larger than this (pickled) go to the server process in parts.
MAX_PACKET = 64 * 1024
#: Rows a FeedProcess holds while the server process cannot take more; beyond, points
#: are dropped (and the clients told), as a client's own queue does.
PROCESS_BACKLOG = 10_000


def _packet(msg: Mapping[str, Any], start_doc: Mapping[str, Any] | None = None) -> bytes:
    return pickle.dumps((msg, start_doc), protocol=pickle.HIGHEST_PROTOCOL)


def _halves(msg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A points message as two, each with half of the rows."""
    half = len(msg["seq_num"]) // 2
    return [
        {
            **msg,
            "seq_num": msg["seq_num"][part],
            "time": msg["time"][part],
            "data": {k: v[part] for k, v in msg["data"].items()},
        }
        for part in (slice(None, half), slice(half, None))
    ]


class FeedProcess:
    """The hub and its web server in a process of their own, fed through a Unix socket.

    ::

        FeedRecorder --send(msg)--> Unix socket --> python -m bluesky_recorders.feed_server
         (RunEngine thread: pickle, one non-blocking send)      FeedHub + FeedServer

    A server in the RunEngine's process needs its GIL, which a RunEngine that is busy
    at 1,000 events/s hands over only now and then (hundreds of ms late at times,
    measured); its garbage collections and JSON encoding would also be the
    RunEngine's. Here the RunEngine's thread pickles each message and sends it
    (``SOCK_SEQPACKET``, never blocking); when the server process is behind, messages
    wait here (at most ``PROCESS_BACKLOG`` rows of points; beyond, points are dropped
    and a ``dropped`` message says so), and a thread hands them over as the process
    takes them (it runs only while messages wait). The listening socket is bound here, so a busy
    port or a public address without a token is an error of this call; the token
    goes to the process through the socket, not its command line. The process ends
    when this object is stopped or this process dies (the socket closes). ``rest``:
    after a look at the socket that found packets, the process looks again that many
    seconds later (the sender's batches come no sooner; see ``_serve_child``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        websocket: bool = True,
        hub_options: Mapping[str, Any] | None = None,
        plots: tuple[str, Mapping[str, str]] | None = None,
        rest: float = 0.0,
        start_timeout: float = 30.0,
    ) -> None:
        listener = _listen(host, port, token)
        self.host = host
        self.port = listener.getsockname()[1]
        self.token = token or None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        fds = (listener.fileno(), theirs.fileno())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bluesky_recorders.feed_server", *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the session pauses the RunEngine, not this
            )
        finally:
            listener.close()
            theirs.close()
        config = {
            "host": host,
            "token": self.token,
            "allowed_origins": list(allowed_origins),
            "websocket": websocket,
            "hub": dict(hub_options or {}),
            "plots": plots,
            "rest": float(rest),
        }
        try:
            ours.sendall(pickle.dumps(config))
            ours.settimeout(start_timeout)
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if ready != b"ready":
            ours.close()
            self._proc.kill()
            self._proc.wait()
            raise FeedServerError(
                f"feed server process on {host}:{self.port} did not start "
                f"(exit status {self._proc.returncode})"
            )
        ours.setblocking(False)
        self._sock = ours
        self._lock = threading.Lock()
        # (message, packet, rows): what waits for the process, in order
        self._backlog: deque[tuple[dict[str, Any], bytes, int]] = deque()
        self._backlog_rows = 0
        self._flusher: threading.Thread | None = None  # runs while messages wait
        self.dropped = 0  # points dropped here, in all
        self.alive = True

    @property
    def url(self) -> str:
        """The page's address (with the token, to open in a browser)."""
        return _page_url(self.host, self.port, self.token)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, msg: dict[str, Any], start_doc: Mapping[str, Any] | None = None) -> None:
        """Hand one message to the server process; never blocks (FeedHub's ``forward``).

        The feed's writer sends the points of an event loop's thread in batches
        (``feed.SEND_DELAY``): one pickle and one ``socket.send`` per batch (the send
        alone took the RunEngine's thread 17-27 µs per message, measured).
        """
        if not self.alive:
            return
        with self._lock:
            self._send_locked(msg, start_doc)

    def _send_locked(self, msg: dict[str, Any], start_doc: Mapping[str, Any] | None) -> None:
        packet = _packet(msg, start_doc)
        if msg["type"] == "points" and len(packet) > MAX_PACKET and len(msg["seq_num"]) > 1:
            for part in _halves(msg):
                self._send_locked(part, None)
            return
        if self._backlog:
            self._flush()
        if not self._backlog and self._try(packet, msg):
            return
        self._hold(msg, packet)

    def _try(self, packet: bytes, msg: Mapping[str, Any]) -> bool:
        """Send one packet: True once it is gone (or can never go), False if it would block."""
        try:
            self._sock.send(packet)
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno == errno.EMSGSIZE:
                log.warning("feed: a %s message of %d bytes is too large; left out",
                            msg["type"], len(packet))  # fmt: skip
            else:
                self._died(err)
        return True

    def _flush(self) -> None:
        while self._backlog:
            msg, packet, rows = self._backlog[0]
            if not self._try(packet, msg):
                return
            self._backlog.popleft()
            self._backlog_rows -= rows

    def _hold(self, msg: dict[str, Any], packet: bytes) -> None:
        if self._flusher is None:  # hands the backlog over even if no message follows
            self._flusher = threading.Thread(
                target=self._flush_later, name="bsrec-feed-backlog", daemon=True
            )
            self._flusher.start()
        rows = len(msg["seq_num"]) if msg["type"] == "points" else 0
        if rows and self._backlog_rows + rows > PROCESS_BACKLOG:
            self.dropped += rows
            last = self._backlog[-1][0] if self._backlog else None
            if last is not None and last["type"] == "dropped" and last["run"] == msg["run"]:
                last["points"] += rows
                self._backlog[-1] = (last, _packet(last), 0)
            else:
                notice = dropped_message(msg["run"], rows)
                self._backlog.append((notice, _packet(notice), 0))
            return
        self._backlog.append((msg, packet, rows))
        self._backlog_rows += rows

    def _flush_later(self) -> None:
        while True:
            time.sleep(0.01)
            with self._lock:
                if self.alive:
                    self._flush()
                if not self._backlog or not self.alive:
                    self._flusher = None
                    return

    def _died(self, err: OSError) -> None:
        if self.alive:
            self.alive = False
            log.error("feed: the server process has ended (%s); the page is no longer served",
                      err)  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        """Hand over what waits (for up to ``timeout``), end the process; idempotent."""
        with self._lock:
            if self.alive and self._backlog:
                self._sock.settimeout(timeout)
                with contextlib.suppress(OSError):
                    for _msg, packet, _rows in self._backlog:
                        self._sock.send(packet)
                self._backlog.clear()
            self.alive = False
            self._sock.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _serve_child(listen_fd: int, feed_fd: int) -> int:
    """The server process of a :class:`FeedProcess`: messages in, the feed served out."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    feed = socket.socket(fileno=feed_fd)
    config = pickle.loads(feed.recv(1 << 20))
    plots = None
    if config["plots"]:
        from .external import PathMap
        from .feed import end_of_run_plots

        root, path_map = config["plots"][0], PathMap(dict(config["plots"][1]))
        plots = lambda start: end_of_run_plots(root, start, path_map)  # noqa: E731
    hub = FeedHub(plots=plots, **config["hub"])
    server = FeedServer(
        hub,
        host=config["host"],
        token=config["token"],
        allowed_origins=config["allowed_origins"],
        websocket=config["websocket"],
        sock=socket.socket(fileno=listen_fd),
    ).start()
    buffer = bytearray(1 << 21)  # larger than any packet (the sender's buffer is smaller)
    view = memoryview(buffer)
    ended = threading.Event()
    loop = hub.loop
    assert loop is not None

    fd = feed.fileno()
    empty = 0  # looks in a row that found nothing
    rest = config.get("rest", 0.0)

    def readable() -> None:
        """On the event loop (one thread: no GIL hand-offs): every packet waiting.

        While packets come, the socket is polled every ``CHILD_POLL`` s rather than
        waited on (``add_reader``): a process waiting on the socket is woken by every
        send, which cost the RunEngine's thread ~90 µs per message here (a wake-up
        across processors of this virtual machine), while a send to a socket nobody
        waits on costs the copy. After a look that found packets, the next one is
        ``rest`` s later (the sender's batches come no sooner: ``FeedProcess``'s
        ``rest``), which halves the looks. After ``CHILD_IDLE_POLLS`` empty looks it
        waits on the socket again, so that an idle session costs nothing: the first
        message of the next run wakes it."""
        nonlocal empty
        got = False
        while True:
            try:
                n = feed.recv_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:  # the recorder closed its end, or its process died
                ended.set()
                return
            got = True
            msg, start_doc = pickle.loads(view[:n])
            hub.publish(msg, start_doc)
        empty = 0 if got else empty + 1
        if empty < CHILD_IDLE_POLLS:
            loop.call_later(max(rest, CHILD_POLL) if got else CHILD_POLL, readable)
        else:
            loop.add_reader(fd, woken)

    def woken() -> None:
        nonlocal empty
        loop.remove_reader(fd)
        empty = 0
        readable()

    feed.setblocking(False)
    loop.call_soon_threadsafe(loop.add_reader, fd, woken)
    feed.send(b"ready")
    try:
        ended.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_child(int(sys.argv[1]), int(sys.argv[2])))
