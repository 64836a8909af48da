"""The live feed page in a real browser: Debian's chromium, headless, driven by Playwright.

A real RunEngine (ophyd.sim devices) feeds a real :class:`FeedRecorder` serving on
127.0.0.1; the page's ``window.bsrecFeed.plotted()`` reads back what the chart
(uPlot, or plotly.js for heat maps and unsorted x) draws, which must equal the event
data a plain callback collected from the same RunEngine. Every request the page makes
is checked to stay on 127.0.0.1 (the plotting libraries are served from the package,
no CDN). A screenshot of the page is
kept in ``test-artifacts/feed-page.png``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky.plans import grid_scan, scan
from ophyd.sim import Syn2DGauss, det, motor, motor1, motor2
from playwright.sync_api import sync_playwright

from bluesky_recorders.feed import FeedRecorder
from bluesky_recorders.feed_server import STATIC_DIR
from bluesky_recorders.testing import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_MS = 60_000

EXPERIMENT = {
    "proposal": {"id": "GUP-77123", "title": "Strain in Si wafers"},
    "pi": {"name": "Jane Doe", "last_name": "Doe"},
    "sample": {"name": "Si(111) wafer"},
    "users": [{"name": "Jane Doe"}, {"name": "Ravi Kumar"}],
}

# JavaScript run in the page
RUN_ENDED = """uid => {
    const run = window.bsrecFeed.runs[uid];
    return Boolean(run && run.end)
        && document.getElementById('run-status').dataset.state === 'ended';
}"""
PLOTTED_ROWS = """([uid, n]) => {
    const shown = window.bsrecFeed.plotted();
    return shown.run === uid && shown.kind === 'lines' && shown.x.length === n;
}"""
HEATMAP_CELLS = """([uid, n]) => {
    const shown = window.bsrecFeed.plotted();
    return shown.run === uid && shown.kind === 'heatmap'
        && shown.z.flat().filter(v => v !== null).length === n;
}"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium with a fresh profile; requests to anything but 127.0.0.1 fail.

    Yields ``(context, outside)``: ``outside`` lists the refused addresses.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    for bundle in ("plotly-cartesian.min.js", "uPlot.iife.min.js"):
        if not (STATIC_DIR / "vendor" / bundle).is_file():
            pytest.fail(f"the page's plotting library {bundle} is not in the package: `make web`")
    profile = tmp_path_factory.mktemp("chromium-profile")
    outside: list[str] = []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context.route("**/*", loopback_only)
        try:
            yield context, outside
        finally:
            context.close()


class Page:
    """A page of the browser, with its JavaScript errors and console messages."""

    def __init__(self, context):
        self.page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.console: list[str] = []
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))

    def open(self, url: str, transport: str = "ws") -> None:
        self.page.goto(url)
        self.page.wait_for_function("() => window.bsrecFeed && window.bsrecFeed.connected")
        assert self.page.evaluate("window.bsrecFeed.transport") == transport

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg=None) -> None:
        self.page.wait_for_function(expression, arg=arg)


@pytest.fixture
def new_page(browser):
    context, outside = browser
    pages: list[Page] = []

    def make() -> Page:
        pages.append(Page(context))
        return pages[-1]

    yield make
    for page in pages:
        errors, console = page.errors, [c for c in page.console if c.startswith("error")]
        page.page.close()
        assert errors == [], f"JavaScript errors in the page: {errors}"
        assert console == [], f"console errors in the page: {console}"
    assert outside == [], f"the page asked for addresses other than 127.0.0.1: {outside}"


class Collected:
    """Every document of a RunEngine, for the runs' primary-stream events."""

    def __init__(self):
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))

    def events(self, uid: str) -> list[dict]:
        primary = {
            d["uid"]
            for n, d in self.docs
            if n == "descriptor" and d["run_start"] == uid and d["name"] == "primary"
        }
        return [d for n, d in self.docs if n == "event" and d["descriptor"] in primary]

    def column(self, uid: str, key: str) -> list[float]:
        return [float(e["data"][key]) for e in self.events(uid)]


@pytest.fixture
def feed():
    """``make(**options) -> (recorder, RE, collected)``; recorders closed afterwards."""
    made: list[FeedRecorder] = []

    def make(*, threaded_RE: bool = False, serve_port: int = 0, **options):
        recorder = FeedRecorder(serve=f"127.0.0.1:{serve_port}", **options)
        made.append(recorder)
        # a RunEngine run from a thread of its own must not install signal handlers
        RE = RunEngine({}, context_managers=[]) if threaded_RE else RunEngine({})
        RE.md["experiment"] = EXPERIMENT
        collected = Collected()
        RE.subscribe(recorder)
        RE.subscribe(collected)
        return recorder, RE, collected

    yield make
    for recorder in made:
        recorder.close()


def plotted(page: Page) -> dict:
    return page.js("window.bsrecFeed.plotted()")


def test_line_scan_is_drawn_as_the_run_goes_and_equals_the_event_data(feed, new_page):
    recorder, RE, collected = feed()
    page = new_page()
    page.open(recorder.server.url)
    assert page.page.locator("#connection").inner_text() == "connected (WebSocket)"

    (uid,) = RE(scan([det], motor, -1, 1, 11))

    page.wait(RUN_ENDED, uid)
    page.wait(PLOTTED_ROWS, [uid, 11])
    shown = plotted(page)
    assert shown["x"] == collected.column(uid, "motor")  # x: the scanned motor
    assert shown["y"] == collected.column(uid, "det")  # y: the hinted detector
    assert [t["name"] for t in shown["traces"]] == ["det"]
    assert shown["library"] == "uplot"  # x grows: the canvas chart
    # what the page says about the run, its metadata and the list of runs
    status = page.page.locator("#run-status").inner_text()
    assert status.startswith("success") and "11 points" in status
    assert page.page.locator("#run-title").inner_text() == f"Scan {RE.md['scan_id']}: scan"
    metadata = page.page.locator("#metadata").inner_text()
    for text in ("proposal.id", "GUP-77123", "pi.name", "Jane Doe", "Si(111) wafer", "Ravi Kumar"):
        assert text in metadata
    first = page.page.locator("#runs tbody tr").first.inner_text().split("\t")
    assert [first[0], first[1], first[3], first[4]] == [str(RE.md["scan_id"]), "scan",
                                                        "success", "11"]  # fmt: skip
    # one latency per row received, from the rows' own times
    assert page.js("window.bsrecFeed.latencies.length") == 11
    run = page.js("uid => window.bsrecFeed.runs[uid]", uid)
    assert run["points"]["seq_num"] == list(range(1, 12))
    assert run["points"]["time"] == [e["time"] for e in collected.events(uid)]
    assert run["end"]["exit_status"] == "success"
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "feed-page.png"), full_page=True)


def test_column_selector_redraws_against_another_column(feed, new_page):
    recorder, RE, collected = feed()
    page = new_page()
    page.open(recorder.server.url)
    (uid,) = RE(scan([det], motor, -2, 2, 9))
    page.wait(PLOTTED_ROWS, [uid, 9])
    options = page.page.locator("#x-column option").all_inner_texts()
    assert options[:2] == ["point number", "time since start (s)"] and "motor" in options

    page.page.select_option("#x-column", "seq_num")
    page.page.check("#y-motor")  # a second y column
    page.wait("() => window.bsrecFeed.plotted().traces.length === 2")
    shown = plotted(page)
    assert shown["x"] == list(range(1, 10))
    assert {t["name"]: t["y"] for t in shown["traces"]} == {
        "det": collected.column(uid, "det"),
        "motor": collected.column(uid, "motor"),
    }
    # the choice holds for the next run with the same columns
    (uid2,) = RE(scan([det], motor, 0, 1, 3))
    page.wait(PLOTTED_ROWS, [uid2, 3])
    shown = plotted(page)
    assert shown["x"] == [1, 2, 3]
    assert [t["name"] for t in shown["traces"]] == ["det", "motor"]


def test_lines_against_a_falling_x_and_against_an_unsorted_x(feed, new_page):
    recorder, RE, collected = feed()
    page = new_page()
    page.open(recorder.server.url)
    (uid,) = RE(scan([det], motor, 2, -2, 9))  # x falls: uPlot draws it, rows reversed
    page.wait(PLOTTED_ROWS, [uid, 9])
    shown = plotted(page)
    assert shown["library"] == "uplot"
    assert shown["x"] == collected.column(uid, "motor")  # read back in the rows' order
    assert shown["y"] == collected.column(uid, "det")
    assert page.js("document.querySelector('#plot canvas') !== null")

    page.page.check("#y-motor")
    page.page.uncheck("#y-det")
    page.page.select_option("#x-column", "det")  # up then down: plotly.js draws it
    page.wait(
        """() => { const shown = window.bsrecFeed.plotted();
            return shown.library === 'plotly' && shown.traces[0].name === 'motor'; }"""
    )
    shown = plotted(page)
    assert shown["kind"] == "lines" and shown["run"] == uid
    assert shown["x"] == collected.column(uid, "det")
    assert shown["y"] == collected.column(uid, "motor")
    assert page.js("document.querySelector('#plot canvas') === null")  # one chart at a time

    page.page.select_option("#x-column", "seq_num")  # and back to the canvas chart
    page.wait("() => window.bsrecFeed.plotted().library === 'uplot'")
    assert plotted(page)["x"] == list(range(1, 10))


def test_grid_scan_is_a_heat_map_with_each_point_in_its_cell(feed, new_page):
    recorder, RE, collected = feed()
    # off centre, so that a point put in the wrong cell shows
    det_2d = Syn2DGauss("det_2d", motor1, "motor1", motor2, "motor2", center=(0.4, -0.7), Imax=1)
    page = new_page()
    page.open(recorder.server.url)

    (uid,) = RE(grid_scan([det_2d], motor1, -1, 1, 3, motor2, -1, 1, 4, snake_axes=True))

    page.wait(RUN_ENDED, uid)
    page.wait(HEATMAP_CELLS, [uid, 12])
    shown = plotted(page)
    assert shown["name"] == "det_2d" and shown["library"] == "plotly"
    assert shown["y"] == pytest.approx(np.linspace(-1, 1, 3).tolist())  # motor1: slow axis
    assert shown["x"] == pytest.approx(np.linspace(-1, 1, 4).tolist())  # motor2: fast axis
    # the cell of each point from where the motors really were
    events = collected.events(uid)
    expected = [[None] * 4 for _ in range(3)]
    for event in events:
        row = int(np.argmin(np.abs(np.array(shown["y"]) - event["data"]["motor1"])))
        col = int(np.argmin(np.abs(np.array(shown["x"]) - event["data"]["motor2"])))
        assert expected[row][col] is None
        expected[row][col] = float(event["data"]["det_2d"])
    assert shown["z"] == expected
    # the plan snaked: the middle row was scanned backwards
    assert [e["data"]["motor2"] for e in events[4:8]] == sorted(
        (e["data"]["motor2"] for e in events[4:8]), reverse=True
    )
    assert page.page.locator("#y-legend").inner_text() == "colour (heat map)"
    assert page.page.locator("#x-control").is_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "feed-page-grid.png"), full_page=True)


def test_page_opened_mid_run_gets_the_run_so_far(feed, new_page):
    recorder, RE, collected = feed(threaded_RE=True)
    reached, go = threading.Event(), threading.Event()
    steps = [0]

    def step_then_wait_after_five(detectors, step, pos_cache):
        yield from bps.one_nd_step(detectors, step, pos_cache)
        steps[0] += 1
        if steps[0] == 5:
            reached.set()
            while not go.is_set():
                yield from bps.sleep(0.02)

    result: dict = {}

    def run():
        try:
            result["uids"] = RE(scan([det], motor, -1, 1, 11, per_step=step_then_wait_after_five))
        except BaseException as err:  # reported by the main thread
            result["error"] = err

    thread = threading.Thread(target=run, name="test-RE")
    thread.start()
    try:
        assert reached.wait(WAIT_MS / 1000)
        uid = collected.docs[0][1]["uid"]
        page = new_page()
        page.open(recorder.server.url)
        page.wait(PLOTTED_ROWS, [uid, 5])
        shown = plotted(page)
        assert shown["x"] == collected.column(uid, "motor")[:5]
        assert shown["y"] == collected.column(uid, "det")[:5]
        assert page.page.locator("#run-status").inner_text() == "running · 5 points"
        assert page.js("document.getElementById('run-status').dataset.state") == "running"
    finally:
        go.set()
        thread.join(WAIT_MS / 1000)
    assert "error" not in result, result.get("error")
    assert result["uids"] == (uid,)
    page.wait(RUN_ENDED, uid)
    page.wait(PLOTTED_ROWS, [uid, 11])
    shown = plotted(page)
    assert shown["x"] == collected.column(uid, "motor")
    assert shown["y"] == collected.column(uid, "det")


def test_points_streaming_in_are_redrawn_at_most_four_times_a_second(feed, new_page):
    """...unless the page's address sets another limit: ``?redraws=N``, 1 to 30."""
    recorder, RE, collected = feed()
    limits = {"": 4, "?redraws=20": 20, "?redraws=1000": 30, "?redraws=fast": 4}
    pages = {}
    for query in limits:
        pages[query] = new_page()
        pages[query].open(recorder.server.url + query)
    before = {query: page.js("window.bsrecFeed.draws.length") for query, page in pages.items()}

    def step_then_pause(detectors, step, pos_cache):  # 150 points in 1.5 s or more
        yield from bps.one_nd_step(detectors, step, pos_cache)
        yield from bps.sleep(0.01)

    (uid,) = RE(scan([det], motor, -1, 1, 150, per_step=step_then_pause))

    redrawn = {}
    for query, page in pages.items():
        page.wait(RUN_ENDED, uid)
        page.wait(PLOTTED_ROWS, [uid, 150])
        assert plotted(page)["y"] == collected.column(uid, "det")
        assert page.js("window.bsrecFeed.redraws") == limits[query]
        draws = page.js("window.bsrecFeed.draws")
        gaps = np.diff(draws)
        # a redraw begins at least 1 / limit s after the last one ended (the clock: 0.1 ms)
        assert gaps.min() >= 1000 / limits[query] - 0.2, (query, gaps.min())
        redrawn[query] = len(draws) - before[query]
    assert redrawn[""] >= 3  # the points were drawn as they came, not only at the end
    assert redrawn["?redraws=20"] > redrawn[""]


def test_server_sent_events_carry_the_same_run(feed, new_page):
    recorder, RE, collected = feed()
    page = new_page()
    page.open(recorder.server.url + "?transport=sse", transport="sse")
    assert page.page.locator("#connection").inner_text() == "connected (Server-Sent Events)"
    (uid,) = RE(scan([det], motor, -1, 1, 11))
    page.wait(RUN_ENDED, uid)
    page.wait(PLOTTED_ROWS, [uid, 11])
    shown = plotted(page)
    assert shown["x"] == collected.column(uid, "motor")
    assert shown["y"] == collected.column(uid, "det")


def test_falls_back_to_server_sent_events_when_websockets_are_refused(feed, new_page):
    recorder, RE, collected = feed(websocket=False)  # as behind a proxy without WebSocket
    page = new_page()
    page.open(recorder.server.url, transport="sse")
    (uid,) = RE(scan([det], motor, -1, 1, 5))
    page.wait(PLOTTED_ROWS, [uid, 5])
    assert plotted(page)["y"] == collected.column(uid, "det")


def test_dropped_message_rebuilds_the_run_from_api_current(feed, new_page):
    recorder, RE, collected = feed()
    page = new_page()
    page.open(recorder.server.url)
    (uid,) = RE(scan([det], motor, -1, 1, 11))
    page.wait(PLOTTED_ROWS, [uid, 11])
    # as if rows 4-11 never arrived: keep 3 rows, then the server's word that 8 were lost
    page.js(
        """uid => {
            const p = window.bsrecFeed.runs[uid].points;
            p.seq_num.length = 3; p.time.length = 3;
            for (const column of Object.values(p.data)) column.length = 3;
        }""",
        uid,
    )
    with page.page.expect_response("**/api/current*") as response:
        page.js(
            """uid => window.bsrecFeed.receive(
                {v: 1, type: 'dropped', run: uid, points: 8, reason: 'client queue full'})""",
            uid,
        )
    assert response.value.status == 200
    page.wait(PLOTTED_ROWS, [uid, 11])
    shown = plotted(page)
    assert shown["x"] == collected.column(uid, "motor")
    assert shown["y"] == collected.column(uid, "det")
    run = page.js("uid => window.bsrecFeed.runs[uid]", uid)
    assert run["points"]["seq_num"] == list(range(1, 12))
    assert run["end"]["exit_status"] == "success"


def test_a_page_that_falls_behind_is_told_and_rebuilds_the_run(feed, new_page):
    # a client queue of one point: the server drops points for this page as soon as two
    # wait for it, which a fast scan makes happen
    recorder, RE, collected = feed(client_queue=1)
    page = new_page()
    page.open(recorder.server.url)
    fetches: list[str] = []
    page.page.on("request", lambda r: fetches.append(r.url) if "/api/current" in r.url else None)
    for _ in range(10):
        (uid,) = RE(scan([det], motor, -1, 1, 300))
        page.wait(RUN_ENDED, uid)
        page.wait(PLOTTED_ROWS, [uid, 300])
        shown = plotted(page)
        assert shown["x"] == collected.column(uid, "motor")
        assert shown["y"] == collected.column(uid, "det")
        run = page.js("uid => window.bsrecFeed.runs[uid].points.seq_num", uid)
        assert run == list(range(1, 301))
        if page.js("window.bsrecFeed.dropped"):
            break
    assert page.js("window.bsrecFeed.dropped") > 0  # the server did drop points
    assert fetches  # ... and the page fetched the run


def test_token_is_passed_on_and_a_restarted_server_is_found_again(feed, new_page):
    recorder, RE, collected = feed(token="s3cret-token")
    assert recorder.server.url.endswith("?token=s3cret-token")
    port = recorder.server.port
    page = new_page()
    page.open(recorder.server.url)
    (uid,) = RE(scan([det], motor, -1, 1, 4))
    page.wait(PLOTTED_ROWS, [uid, 4])
    assert plotted(page)["y"] == collected.column(uid, "det")

    # the session restarts its server on the same port: the page reconnects by itself
    recorder.close()
    page.wait("() => !window.bsrecFeed.connected")
    again, RE, collected = feed(token="s3cret-token", serve_port=port)
    page.wait("() => window.bsrecFeed.connected")
    (uid,) = RE(scan([det], motor, 0, 1, 3))
    page.wait(PLOTTED_ROWS, [uid, 3])
    assert plotted(page)["y"] == collected.column(uid, "det")

    # ... with another token: the page says why it cannot connect
    again.close()
    page.wait("() => !window.bsrecFeed.connected")
    feed(token="another-token", serve_port=port)
    page.wait(
        "() => document.getElementById('connection').textContent.startsWith('access refused')"
    )
    assert page.js("window.bsrecFeed.connected") is False
    # the browser logs the refused and the failed connections; nothing else went wrong
    unexpected = [
        c
        for c in page.console
        if c.startswith("error")
        and "401" not in c
        and "403" not in c
        and "ERR_CONNECTION_REFUSED" not in c
        and "WebSocket connection" not in c
    ]
    assert unexpected == []
    page.console.clear()


def test_end_of_run_plots_are_listed_with_thumbnails(feed, new_page, tmp_path):
    from bluesky_recorders.plots import EndOfRunPlotsRecorder
    from bluesky_recorders.recorder_set import RecorderSet

    plots = EndOfRunPlotsRecorder(data_root=tmp_path, size=(400, 250))
    recorder, RE, collected = feed(data_root=tmp_path)
    recorders = RecorderSet([plots])
    RE.subscribe(recorders)
    page = new_page()
    page.open(recorder.server.url)
    try:
        (uid,) = RE(scan([det], motor, -1, 1, 11))
        page.wait(RUN_ENDED, uid)
        # the plots are drawn after the stop; the page asks again until they are listed
        page.wait(
            """() => [...document.querySelectorAll('#runs img')]
                .some(img => img.complete && img.naturalWidth > 0)"""
        )
    finally:
        recorders.close()
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "feed-page-plots.png"), full_page=True)
    listed = page.js("window.bsrecFeed.runList")[0]
    assert listed["run"] == uid and listed["plots"]
    alts = page.page.locator("#runs img").evaluate_all("imgs => imgs.map(i => i.alt)")
    assert all(alt.startswith("end-of-run plot") for alt in alts)
    assert len(alts) == len(listed["plots"])


def test_the_bundled_plotting_libraries_are_the_pinned_ones():
    lock = json.loads((ARTIFACTS.parent / "web" / "package-lock.json").read_text("utf-8"))
    packages = lock["packages"]
    for package, bundle, banner in (
        ("plotly.js-cartesian-dist-min", "plotly-cartesian.min.js",
         "plotly.js (cartesian - minified) v"),
        ("uplot", "uPlot.iife.min.js", "uPlot (v"),
    ):  # fmt: skip
        pinned = packages[f"node_modules/{package}"]["version"]
        with open(STATIC_DIR / "vendor" / bundle, encoding="utf-8") as fh:
            header = fh.read(200)
        assert f"{banner}{pinned}" in header, bundle
    # the page loads only files of the package: no absolute or protocol-relative address
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert "//" not in html
    for name in ("/static/app.js", "/static/app.css", "/static/vendor/plotly-cartesian.min.js",
                 "/static/vendor/uPlot.iife.min.js", "/static/vendor/uPlot.min.css"):  # fmt: skip
        assert f'"{name}"' in html
