"""The live feed served for real on 127.0.0.1: WebSocket and SSE clients, mid-run joins,
stalled clients, tokens, bind addresses, Origin checks and `bsrec feed --zmq`."""

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets.exceptions
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.plans import scan
from ophyd.sim import det, motor
from websockets.sync.client import connect

from bluesky_recorders import RecorderSet, feed_server
from bluesky_recorders.feed import SEND_DELAY, FeedRecorder
from bluesky_recorders.feed_server import FeedHub, FeedServer, FeedServerError
from bluesky_recorders.testing import collect, scalar_run
from procs import wait_for

BIN = Path(sys.executable).parent


def ws_url(server, path="ws", token=None):
    base = f"ws://127.0.0.1:{server.port}/{path}"
    return f"{base}?token={token}" if token else base


class Listener:
    """A WebSocket client reading every message on its own thread."""

    def __init__(self, url, **kwargs):
        self.ws = connect(url, open_timeout=10, legacy=True, **kwargs)
        self.messages = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for text in self.ws:
                self.messages.append(json.loads(text))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def types(self):
        return [m["type"] for m in self.messages]

    def wait_for_type(self, kind, count=1, timeout=30):
        wait_for(lambda: self.types().count(kind) >= count, timeout, f"{count} {kind} message(s)")

    def close(self):
        self.ws.close()
        self.closed.wait(10)


def rows_of(messages, run):
    """(seq_num, data) rows of ``run`` in the points messages, in order."""
    rows = []
    for m in messages:
        if m["type"] == "points" and m["run"] == run:
            for i, seq in enumerate(m["seq_num"]):
                rows.append((seq, {k: v[i] for k, v in m["data"].items()}))
    return rows


class RawClient:
    """A WebSocket client on a plain socket with a 4 kB receive buffer: it reads only when
    asked, so the server soon cannot send it anything more (a stalled browser tab)."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self):
        """The next text message (server frames are unmasked; no extension was offered)."""
        payload = b""
        while True:
            b0, b1 = self._read(2)
            size = b1 & 0x7F
            if size == 126:
                size = int.from_bytes(self._read(2), "big")
            elif size == 127:
                size = int.from_bytes(self._read(8), "big")
            data = self._read(size)
            opcode = b0 & 0x0F
            if opcode in (0x9, 0xA):  # ping, pong
                continue
            assert opcode != 0x8, f"the server closed the connection: {data!r}"
            payload += data
            if b0 & 0x80:  # FIN
                return payload.decode()

    def close(self):
        self.sock.close()


@pytest.fixture
def feed():
    recorder = FeedRecorder(serve="127.0.0.1:0")
    yield recorder
    recorder.close()


def test_websocket_and_sse_clients_follow_a_real_run(feed):
    RE = RunEngine({})
    docs, keep = collect()
    rs = RecorderSet([feed], run_log=None)
    RE.subscribe(rs)
    RE.subscribe(keep)
    ws = Listener(ws_url(feed.server))
    sse_messages = []

    def read_sse():
        with httpx.stream("GET", f"http://127.0.0.1:{feed.server.port}/events", timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    sse_messages.append(json.loads(line[6:]))
                    if sse_messages[-1]["type"] == "run_end":
                        return

    sse = threading.Thread(target=read_sse, daemon=True)
    sse.start()
    wait_for(lambda: ws.types()[:2] == ["hello", "runs"] and sse_messages, 10, "both clients")
    (uid,) = RE(scan([det], motor, -1, 1, 11))
    ws.wait_for_type("run_end")
    sse.join(30)
    ws.close()
    rs.close()
    events = [d for n, d in docs if n == "event"]
    expected = [(e["seq_num"], {k: e["data"][k] for k in ("det", "motor")}) for e in events]
    for messages in (ws.messages, sse_messages):
        rows = [(s, {"det": d["det"], "motor": d["motor"]}) for s, d in rows_of(messages, uid)]
        assert rows == expected
        kinds = [m["type"] for m in messages if m.get("run") == uid]
        assert kinds[0] == "run_start" and kinds[1] == "columns" and kinds[-1] == "run_end"
    assert ws.messages[0]["server"] == "bsrec feed"


def test_a_client_joining_mid_run_gets_the_run_so_far_then_the_rest_once(feed):
    docs = scalar_run(20, baseline=False)
    events = [i for i, (n, _) in enumerate(docs) if n == "event"]
    half = events[9]  # after the 10th event
    for name, doc in docs[: half + 1]:
        feed(name, doc)
    late = Listener(ws_url(feed.server))
    late.wait_for_type("points")
    for name, doc in docs[half + 1 :]:
        feed(name, doc)
    late.wait_for_type("run_end")
    late.close()
    uid = docs[0][1]["uid"]
    first = next(m for m in late.messages if m["type"] == "points")
    assert first["seq_num"] == list(range(1, 11))  # the run so far, in one message
    seqs = [s for s, _ in rows_of(late.messages, uid)]
    assert seqs == list(range(1, 21))  # then the rest, nothing twice, nothing missing
    assert late.types()[:5] == ["hello", "runs", "run_start", "columns", "points"]
    current = httpx.get(f"http://127.0.0.1:{feed.server.port}/api/current").json()
    assert [m["type"] for m in current] == ["run_start", "columns", "points", "run_end"]
    assert current[2]["seq_num"] == list(range(1, 21))


def test_a_stalled_client_loses_points_and_is_told_while_others_get_everything():
    recorder = FeedRecorder(serve="127.0.0.1:0", client_queue=1000)
    try:
        n = 10_000
        fast = Listener(ws_url(recorder.server))
        stalled = RawClient(recorder.server.port)  # connects, then reads nothing
        docs = scalar_run(n, baseline=False)
        big = "x" * 1000  # 1 kB per row: 10 MB in all, more than socket buffers hold
        uid = docs[0][1]["uid"]
        started = time.monotonic()
        sent = 0
        for name, doc in docs:
            if name == "descriptor":
                doc = {**doc, "data_keys": {**doc["data_keys"], "note": {
                    "source": "test", "dtype": "string", "shape": []}}}
                doc.setdefault("object_keys", {})
            if name == "event":
                doc = {**doc, "data": {**doc["data"], "note": big},
                       "timestamps": {**doc["timestamps"], "note": doc["time"]}}
            recorder(name, doc)
            if name == "event":
                sent += 1
                if sent % 500 == 0:  # a client that keeps up: it reads every batch
                    wait_for(lambda k=sent: len(rows_of(fast.messages, uid)) >= k, 30, "fast")
        publishing = time.monotonic() - started
        fast.wait_for_type("run_end", timeout=120)
        assert len(rows_of(fast.messages, uid)) == n
        assert "dropped" not in fast.types()
        # now the stalled client reads what it was given
        got, dropped, kinds = 0, 0, []
        while "run_end" not in kinds:
            msg = json.loads(stalled.recv())
            kinds.append(msg["type"])
            if msg["type"] == "points":
                got += len(msg["seq_num"])
            elif msg["type"] == "dropped":
                assert msg["run"] == uid and msg["reason"] == "client queue full"
                dropped += msg["points"]
        stalled.close()
        fast.close()
        assert dropped > 0
        assert got + dropped == n
        print(f"published {n} rows in {publishing:.3f} s; the stalled client got {got}")
    finally:
        recorder.close()


def test_token_required_everywhere_but_static_files():
    hub = FeedHub()
    server = FeedServer(hub, token="tok-123").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(f"{base}/api/runs").status_code == 401
        assert httpx.get(f"{base}/api/runs?token=wrong").status_code == 401
        assert httpx.get(f"{base}/api/runs?token=tok-123").status_code == 200
        ok = httpx.get(f"{base}/api/current", headers={"Authorization": "Bearer tok-123"})
        assert ok.status_code == 200 and ok.json() == []
        assert httpx.get(f"{base}/events").status_code == 401
        assert httpx.get(f"{base}/").status_code in (200, 503)  # the page holds no data
        with pytest.raises(websockets.exceptions.InvalidStatus):
            connect(ws_url(server), open_timeout=10)
        with connect(ws_url(server, token="tok-123"), open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        assert server.url.endswith("/?token=tok-123")
    finally:
        server.stop()


def test_only_loopback_without_a_token():
    hub = FeedHub()
    with pytest.raises(FeedServerError, match="without a token"):
        FeedServer(hub, host="0.0.0.0")
    with pytest.raises(FeedServerError, match="without a token"):
        FeedRecorder(serve="0.0.0.0:0")
    server = FeedServer(hub, host="0.0.0.0", token="t").start()  # any address, with a token
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/api/runs", params={"token": "t"})
        assert r.status_code == 200
    finally:
        server.stop()
    local = FeedServer(hub, host="::1") if socket.has_ipv6 else FeedServer(hub, host="127.0.0.2")
    local.stop()  # other loopback addresses need no token


def test_a_busy_port_costs_only_the_page():
    first = FeedRecorder(serve="127.0.0.1:0")
    try:
        address = f"127.0.0.1:{first.server.port}"
        second = FeedRecorder(serve=address)  # a live view: logs it and goes on
        assert second.server is None
        for name, doc in scalar_run(3):
            second(name, doc)
        assert second.hub.runs_message()["runs"][0]["num_points"] == 3
        with pytest.raises(FeedServerError, match="cannot listen"):
            FeedRecorder(serve=address, on_error="abort")
    finally:
        first.close()


def test_foreign_origins_are_refused(feed):
    with pytest.raises(websockets.exceptions.InvalidStatus):
        connect(ws_url(feed.server), origin="http://evil.example", open_timeout=10)
    own = f"http://127.0.0.1:{feed.server.port}"
    with connect(ws_url(feed.server), origin=own, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    r = httpx.get(f"{own}/api/runs", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_a_client_sending_too_much_is_disconnected(feed):
    with connect(ws_url(feed.server), open_timeout=10) as ws:
        ws.send("x" * 10_000)
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as err:
            while True:
                ws.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009


def test_bsrec_feed_serves_the_runs_published_to_the_0mq_proxy(proxy, tmp_path):
    pin, pout = proxy
    out_path = tmp_path / "feed.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "bsrec"), "feed", "--zmq", f"127.0.0.1:{pout}", "--listen",
             "127.0.0.1:0", "--data-root", str(tmp_path / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BSREC_FEED_TOKEN": ""},
        )
    try:
        wait_for(lambda: "page at" in out_path.read_text(), 60, "bsrec feed to start")
        url = out_path.read_text().split("page at ")[1].split()[0]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        RE = RunEngine({})
        publisher = Publisher(f"127.0.0.1:{pin}")
        RE.subscribe(publisher)
        time.sleep(2.0)  # PUB/SUB slow joiner
        (uid,) = RE(scan([det], motor, -1, 1, 5))
        publisher.close()

        def served():
            runs = httpx.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"]
            return any(r["run"] == uid and r["exit_status"] == "success" for r in runs)

        wait_for(served, 60, "the run to be served")
        current = httpx.get(f"http://127.0.0.1:{port}/api/current").json()
        assert current[2]["seq_num"] == [1, 2, 3, 4, 5]
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code in (200, 503)  # 503 only when the page is not built
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, out_path.read_text()


def test_bsrec_feed_on_a_busy_port_exits_with_a_clear_error(feed, capsys, tmp_path):
    from bluesky_recorders.cli import main

    busy = f"127.0.0.1:{feed.server.port}"
    code = main(["feed", "--zmq", "127.0.0.1:1", "--listen", busy, "--config", "/dev/null",
                 "--data-root", str(tmp_path)])  # fmt: skip
    assert code == 1
    assert f"cannot listen on {busy}" in capsys.readouterr().err


class FakeLoop:
    """Stands for the server's event loop: records what the hub asks of it."""

    def __init__(self):
        self.now = 100.0
        self.soon = []
        self.later = []

    def call_soon_threadsafe(self, func):
        self.soon.append(func)

    def call_later(self, delay, func):
        self.later.append((delay, func))

    def time(self):
        return self.now


def test_the_hub_wakes_the_loop_once_per_batch_and_sends_at_most_one_batch_per_interval():
    hub = FeedHub(batch_interval=0.02)
    hub.loop = loop = FakeLoop()
    client = hub.attach()
    client.items.clear()
    docs = scalar_run(30, baseline=False)
    recorder = FeedRecorder()
    recorder.hub = hub
    for name, doc in docs[:8]:  # start, descriptor and some events
        recorder(name, doc)
    assert len(loop.soon) == 1  # one wake-up for all of them
    loop.soon.pop()()  # the loop runs: nothing sent for 20 ms, so this batch goes now
    assert loop.later == []
    first = client.take()
    assert [json.loads(t)["type"] for t in first][:2] == ["run_start", "columns"]
    for name, doc in docs[8:20]:
        recorder(name, doc)
    assert len(loop.soon) == 1
    loop.now += 0.005
    loop.soon.pop()()  # 5 ms after the last batch: the next waits 15 ms more
    assert client.take() == []
    ((delay, deliver),) = loop.later
    assert delay == pytest.approx(0.015)
    for name, doc in docs[20:]:  # arrive meanwhile: no wake-up, they join the batch
        recorder(name, doc)
    assert loop.soon == []
    loop.now += delay
    deliver()
    texts = [json.loads(t) for t in client.take()]
    points = [m for m in texts if m["type"] == "points"]
    assert len(points) == 1  # merged into one message for this client
    early = [json.loads(t) for t in first]
    seqs = [s for m in early if m["type"] == "points" for s in m["seq_num"]]
    assert seqs + points[0]["seq_num"] == list(range(1, 31))
    assert texts[-2]["type"] == "run_end" and texts[-1]["type"] == "runs"


def test_the_feed_runs_inline_in_a_recorder_set_unless_told_otherwise():
    assert FeedRecorder().threaded is False
    assert FeedRecorder(threaded=True).threaded is True
    recorder = FeedRecorder()
    with RecorderSet([recorder], run_log=None) as rs:
        for name, doc in scalar_run(5, baseline=False):
            rs(name, doc)
            if name == "event":  # handed on at once, on the caller's thread
                assert recorder.hub.current_messages()[-1]["type"] == "points"
    assert [m["type"] for m in recorder.hub.current_messages()][-1] == "run_end"


def test_a_server_process_of_its_own_serves_a_real_run_and_ends_with_the_recorder():
    recorder = FeedRecorder(serve="127.0.0.1:0", serve_in="process", token="tok-9")
    server = recorder.server
    assert server.pid != os.getpid()
    # where both want a core, the RunEngine gets it before the server
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, server.pid) == min(19, ours + feed_server.CHILD_NICE)
    RE = RunEngine({})
    docs, keep = collect()
    rs = RecorderSet([recorder], run_log=None)
    RE.subscribe(rs)
    RE.subscribe(keep)
    try:
        with pytest.raises(websockets.exceptions.InvalidStatus):  # the token goes with it
            connect(ws_url(server), open_timeout=10)
        ws = Listener(ws_url(server, token="tok-9"))
        ws.wait_for_type("runs")
        (uid,) = RE(scan([det], motor, -1, 1, 101))
        ws.wait_for_type("run_end")
        ws.close()
        events = [d for n, d in docs if n == "event"]
        assert [s for s, _ in rows_of(ws.messages, uid)] == [e["seq_num"] for e in events]
        assert [d["det"] for _, d in rows_of(ws.messages, uid)] == [
            e["data"]["det"] for e in events
        ]
        current = httpx.get(f"http://127.0.0.1:{server.port}/api/current?token=tok-9").json()
        assert [m["type"] for m in current] == ["run_start", "columns", "points", "run_end"]
        assert recorder.hub.current_messages() == current  # this process keeps the run too
    finally:
        rs.close()
    assert server._proc.returncode == 0  # closing the recorder ended the process
    with pytest.raises(FeedServerError, match="without a token"):
        FeedRecorder(serve="0.0.0.0:0", serve_in="process")
    with pytest.raises(ValueError, match="serve_in"):
        FeedRecorder(serve_in="fork")


def test_points_sent_from_an_event_loop_go_to_the_server_process_together(monkeypatch):
    """On the RunEngine's (asyncio) thread, points wait SEND_DELAY and go as one
    packet; they go without another message to push them, and a run_end sends them first."""
    recorder = FeedRecorder(serve="127.0.0.1:0", serve_in="process")
    server = recorder.server
    packets = []
    real_packet = feed_server._packet
    monkeypatch.setattr(feed_server, "_packet", lambda msg, start=None: (
        packets.append(msg["type"]) or real_packet(msg, start)))  # fmt: skip
    listener = Listener(ws_url(server))
    listener.wait_for_type("runs")
    docs = scalar_run(40, baseline=False)  # start, descriptor, 40 events, stop
    uid = docs[0][1]["uid"]
    events = [i for i, (name, _) in enumerate(docs) if name == "event"]

    async def run():
        for name, doc in docs[: events[19] + 1]:  # 20 events at once
            recorder(name, doc)
        assert packets == ["run_start", "columns"]  # the points wait...
        await asyncio.sleep(SEND_DELAY * 4)
        assert packets == ["run_start", "columns", "points"]  # ...and go as one
        for name, doc in docs[events[19] + 1 :]:  # 20 more, then the stop at once
            recorder(name, doc)
        assert packets[3:] == ["points", "run_end"]  # the waiting points first

    try:
        asyncio.run(run())
        listener.wait_for_type("run_end")
        assert [seq for seq, _ in rows_of(listener.messages, uid)] == list(range(1, 41))
        # with no loop running on the caller's thread, every message goes at once
        packets.clear()
        for name, doc in scalar_run(3, baseline=False):
            recorder(name, doc)
        assert packets == ["run_start", "columns", "points", "points", "points", "run_end"]
    finally:
        listener.close()
        recorder.close()


def test_a_stopped_server_process_never_holds_the_runengine_and_is_told_of_the_loss():
    recorder = FeedRecorder(serve="127.0.0.1:0", serve_in="process")
    server = recorder.server
    listener = Listener(ws_url(server))
    listener.wait_for_type("runs")
    n = 30_000
    docs = scalar_run(n, baseline=False)
    uid = docs[0][1]["uid"]
    os.kill(server.pid, signal.SIGSTOP)  # takes nothing more: the socket fills up
    try:
        for name, doc in docs:
            recorder(name, doc)  # never blocks
        assert server.dropped > 0
    finally:
        os.kill(server.pid, signal.SIGCONT)
    try:
        listener.wait_for_type("run_end", timeout=60)
        got = len(rows_of(listener.messages, uid))
        dropped = sum(m["points"] for m in listener.messages if m["type"] == "dropped")
        # dropped here, and perhaps again by the client's own queue when the backlog came
        assert dropped >= server.dropped and got + dropped == n
        assert [s for s, _ in rows_of(listener.messages, uid)][:3] == [1, 2, 3]
    finally:
        listener.close()
        recorder.close()


def test_the_server_process_gets_points_that_come_after_it_went_back_to_waiting():
    """It polls its socket while messages come and waits on it after CHILD_IDLE_POLLS
    empty looks: points further apart than that each wake it, and none is lost."""
    from bluesky_recorders.feed_server import CHILD_IDLE_POLLS, CHILD_POLL

    recorder = FeedRecorder(serve="127.0.0.1:0", serve_in="process")
    listener = Listener(ws_url(recorder.server))
    listener.wait_for_type("runs")
    docs = scalar_run(4, baseline=False)
    try:
        for name, doc in docs:
            time.sleep(CHILD_IDLE_POLLS * CHILD_POLL * 2)  # long enough to go back to waiting
            recorder(name, doc)
        listener.wait_for_type("run_end", timeout=30)
        uid = docs[0][1]["uid"]
        assert [s for s, _ in rows_of(listener.messages, uid)] == [1, 2, 3, 4]
    finally:
        listener.close()
        recorder.close()


def test_a_page_of_many_rows_reaches_the_server_process_in_parts():
    recorder = FeedRecorder(serve="127.0.0.1:0", serve_in="process")
    listener = Listener(ws_url(recorder.server))
    listener.wait_for_type("runs")
    n = 8_000  # under client_queue; one event_page of about 400 kB
    docs = scalar_run(n, pages=True, baseline=False)
    try:
        for name, doc in docs:
            recorder(name, doc)
        listener.wait_for_type("run_end", timeout=60)
        uid = docs[0][1]["uid"]
        assert [s for s, _ in rows_of(listener.messages, uid)] == list(range(1, n + 1))
        assert "dropped" not in listener.types()
    finally:
        listener.close()
        recorder.close()


def test_the_default_recorder_set_serves_the_feed_from_a_process_of_its_own():
    from bluesky_recorders.config import default_config_path, load_config

    config = load_config(default_config_path())
    (spec,) = [s for s in config.recorders if s.kind == "feed"]
    assert spec.options["serve_in"] == "process"
    assert spec.options.get("threaded", False) is False  # inline on the RunEngine's thread
