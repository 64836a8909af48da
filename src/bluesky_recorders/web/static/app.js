/* The bsrec live feed page.
 *
 * Connects to the feed (WebSocket /ws, or Server-Sent Events /events when the
 * WebSocket cannot be opened), keeps every run it hears about in
 * window.bsrecFeed.runs and draws the current one: a line plot (uPlot, on a canvas,
 * when x only grows or only falls: the live case), else plotly.js (a heat map for a grid
 * scan, lines against an x that goes back and forth). Messages only change state;
 * drawing happens at most once per animation frame (and never more than a third of the
 * time), however fast points come.
 * The messages: docs/reference/feed.md; the page: docs/reference/web.md.
 */
"use strict";

(() => {
  const PRIMARY = "primary";
  const PLOTTABLE = new Set(["number", "integer", "boolean"]);
  const MAX_LATENCIES = 1000000;
  const PLOTS_POLL_MS = 3000; // while a run that ended here has no end-of-run plots yet
  const PLOTS_POLL_TRIES = 10;
  const MARKERS_UP_TO = 100; // more points: lines only (each marker costs tens of µs a draw)
  const RUNS_KEPT = 10; // runs whose points this page keeps (the newest)

  const query = new URLSearchParams(location.search);
  const token = query.get("token");
  const forceSSE = query.get("transport") === "sse";

  const $ = (id) => document.getElementById(id);
  const plotDiv = $("plot"); // holds one of the two below at a time
  const linesDiv = document.createElement("div"); // uPlot's chart
  const plotlyDiv = document.createElement("div"); // plotly.js's plot
  linesDiv.className = plotlyDiv.className = "plot-area";
  linesDiv.hidden = plotlyDiv.hidden = true;
  plotDiv.append(linesDiv, plotlyDiv);
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]; // plotly's, so both libraries agree

  const feed = {
    connected: false,
    transport: null, // "ws" | "sse"
    server: null, // the hello message
    runs: {}, // uid -> {start, columns, points, end, streams}
    current: null, // uid of the run on the plot
    runList: [], // the last runs message's list
    latencies: [], // seconds from each row's time to its arrival here
    drawLatencies: [], // seconds from each row's time to the end of the draw that showed it
    redraws: null, // redraws a second at most (REDRAWS)
    draws: [], // when the latest redraws began (performance.now(), ms)
    dropped: 0, // points the server said it could not send to this page
    plotted,
    receive, // handles one message object, as if it came from the server
  };
  window.bsrecFeed = feed;

  /* ---------- requests ---------- */

  function withToken(path) {
    if (!token) return path;
    return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
  }

  /* Redraws a second at most while points stream in (`?redraws=N` in the address, 1 to
   * 30, for a screen whose computer has cores to spare). Each frame costs the browser
   * far more than the plot's own drawing (style, layout, commit, compositing in
   * software): in headless chromium on 2 cores, a 100-point scan of 0.4 s cost it
   * 75-89 ms of CPU at 10 redraws a second, 62 ms at 5 and 47-50 ms at 4, CPU the
   * RunEngine does not get when they share a computer
   * (docs/explanations/decisions/0021). */
  const REDRAWS = Math.min(30, Math.max(1, Number(query.get("redraws")) || 4));
  const MIN_DRAW_GAP = 1000 / REDRAWS; // ms between the ends of two redraws, at least
  const DRAWS_KEPT = 1000;
  feed.redraws = REDRAWS;

  function now() {
    return (performance.timeOrigin + performance.now()) / 1000;
  }

  /* ---------- the runs ---------- */

  function emptyPoints() {
    return { seq_num: [], time: [], data: {} };
  }

  function runOf(uid) {
    let run = feed.runs[uid];
    if (!run) {
      run = { start: null, columns: [], points: emptyPoints(), end: null, streams: {} };
      run.streams[PRIMARY] = { columns: run.columns, points: run.points };
      feed.runs[uid] = run;
    }
    return run;
  }

  function streamOf(run, name) {
    if (!run.streams[name]) run.streams[name] = { columns: [], points: emptyPoints() };
    return run.streams[name];
  }

  function pushFrom(target, values, from) {
    for (let i = from; i < values.length; i++) target.push(values[i]);
  }

  /* Appends a batch of rows; rows whose seq_num is already here are skipped (a
   * reconnection or a rebuild may send them again). Returns the rows added. */
  function addRows(stream, batch, live) {
    const p = stream.points;
    const seq = batch.seq_num || [];
    const last = p.seq_num.length ? p.seq_num[p.seq_num.length - 1] : -Infinity;
    let from = 0;
    while (from < seq.length && seq[from] <= last) from++;
    if (from === seq.length) return 0;
    const before = p.seq_num.length;
    pushFrom(p.seq_num, seq, from);
    pushFrom(p.time, batch.time || [], from);
    for (const [name, values] of Object.entries(batch.data || {})) {
      if (!p.data[name]) p.data[name] = new Array(before).fill(null);
      pushFrom(p.data[name], values, from);
    }
    const after = p.seq_num.length;
    for (const column of Object.values(p.data)) {
      while (column.length < after) column.push(null);
    }
    if (live && batch.time) {
      const arrived = arrivedAt ?? now();
      for (let i = from; i < batch.time.length; i++) feed.latencies.push(arrived - batch.time[i]);
      if (feed.latencies.length > MAX_LATENCIES) {
        feed.latencies.splice(0, feed.latencies.length - MAX_LATENCIES);
      }
    }
    return seq.length - from;
  }

  function receive(msg, live = true) {
    if (!msg || typeof msg !== "object") return;
    if (msg.v !== 1 && !receive.warned) {
      receive.warned = true;
      console.warn("bsrec feed: protocol version", msg.v, "(this page knows 1)");
    }
    switch (msg.type) {
      case "hello":
        feed.server = msg;
        dirty.server = true;
        break;
      case "runs":
        feed.runList = msg.runs || [];
        dirty.runs = true;
        pollPlotsIfNeeded();
        break;
      case "run_start": {
        const run = runOf(msg.run);
        run.start = msg;
        if (live || feed.current === null) feed.current = msg.run;
        forgetOldRuns();
        dirty.all();
        break;
      }
      case "columns": {
        const run = runOf(msg.run);
        const stream = streamOf(run, msg.stream || PRIMARY);
        stream.columns = msg.columns || [];
        if ((msg.stream || PRIMARY) === PRIMARY) run.columns = stream.columns;
        if (msg.run === feed.current) dirty.all();
        break;
      }
      case "points": {
        const run = runOf(msg.run);
        const added = addRows(streamOf(run, msg.stream || PRIMARY), msg, live);
        if (added && msg.run === feed.current) {
          dirty.plot = dirty.header = true;
        }
        break;
      }
      case "run_end": {
        const run = runOf(msg.run);
        run.end = msg;
        if (live) plotsWanted.set(msg.run, 0);
        dirty.header = dirty.runs = dirty.plot = true;
        break;
      }
      case "dropped":
        // (in /api/current itself it says the server keeps no more of this run)
        if (live) {
          feed.dropped += msg.points || 0;
          rebuild(msg.run);
        }
        break;
      default:
        return; // a message type this page does not know: ignore it
    }
    scheduleDraw();
  }

  function forgetOldRuns() {
    const uids = Object.keys(feed.runs);
    if (uids.length <= RUNS_KEPT) return;
    const started = (uid) => (feed.runs[uid].start ? feed.runs[uid].start.time : 0);
    uids.sort((a, b) => started(b) - started(a));
    for (const uid of uids.slice(RUNS_KEPT)) {
      if (uid !== feed.current) delete feed.runs[uid];
    }
  }

  /* A `dropped` message: this page missed rows of a run. Fetch the run so far and
   * rebuild it, keeping any newer rows that arrived while the request was out. */
  let rebuilding = false;
  let rebuildAgain = false;
  async function rebuild(uid) {
    if (rebuilding) {
      rebuildAgain = true;
      return;
    }
    rebuilding = true;
    try {
      const response = await fetch(withToken("/api/current"), { cache: "no-store" });
      if (!response.ok) throw new Error(`GET /api/current: HTTP ${response.status}`);
      const messages = await response.json();
      const start = messages.find((m) => m.type === "run_start");
      if (!start) return;
      const old = feed.runs[start.run];
      delete feed.runs[start.run];
      for (const m of messages) receive(m, false);
      const fresh = runOf(start.run);
      if (old) {
        for (const [name, stream] of Object.entries(old.streams)) {
          const target = streamOf(fresh, name);
          addRows(target, stream.points, false);
          if (!target.columns.length) target.columns = stream.columns;
        }
        fresh.columns = fresh.streams[PRIMARY].columns;
        if (!fresh.end && old.end) fresh.end = old.end;
      }
      if (start.run === uid || feed.current === start.run) feed.current = start.run;
      dirty.all();
      scheduleDraw();
    } catch (err) {
      console.error("bsrec feed: could not rebuild run", uid, err);
    } finally {
      rebuilding = false;
      if (rebuildAgain) {
        rebuildAgain = false;
        rebuild(uid);
      }
    }
  }

  /* End-of-run plots appear some seconds after a run's end: poll /api/runs for a
   * while for the runs that ended while this page was open. */
  const plotsWanted = new Map(); // uid -> polls so far
  let plotsTimer = null;
  function pollPlotsIfNeeded() {
    for (const run of feed.runList) {
      if (run.plots && run.plots.length) plotsWanted.delete(run.run);
    }
    for (const [uid, tries] of plotsWanted) {
      if (tries >= PLOTS_POLL_TRIES) plotsWanted.delete(uid);
    }
    if (!plotsWanted.size || plotsTimer !== null) return;
    plotsTimer = setTimeout(async () => {
      plotsTimer = null;
      for (const [uid, tries] of plotsWanted) plotsWanted.set(uid, tries + 1);
      try {
        const response = await fetch(withToken("/api/runs"), { cache: "no-store" });
        if (response.ok) receive(await response.json(), false);
      } catch (err) {
        console.warn("bsrec feed: GET /api/runs failed", err);
      }
    }, PLOTS_POLL_MS);
  }

  /* ---------- the connection ---------- */

  let retries = 0;

  function setConnection(connected, transport, text) {
    feed.connected = connected;
    if (transport) feed.transport = transport;
    const el = $("connection");
    const how = feed.transport === "sse" ? "Server-Sent Events" : "WebSocket";
    el.dataset.state = connected ? "connected" : "disconnected";
    el.textContent = text || (connected ? `connected (${how})` : "disconnected, retrying…");
  }

  /* When the message arrived (stamped by the WebSocket worker), while it is handled. */
  let arrivedAt = null;

  function onText(text, arrived = null) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      console.error("bsrec feed: not JSON", text.slice(0, 200));
      return;
    }
    arrivedAt = arrived;
    try {
      receive(msg);
    } finally {
      arrivedAt = null;
    }
  }

  async function explainFailure() {
    // WebSocket and EventSource do not tell why they failed: ask once over HTTP.
    try {
      const response = await fetch(withToken("/api/runs"), { cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        setConnection(false, null, "access refused: check the token in this page's address");
      }
    } catch (err) {
      // the server is not there: the retry message stays
    }
  }

  function later(connectAgain) {
    const delay = Math.min(1000 * 2 ** retries, 15000);
    retries += 1;
    setTimeout(connectAgain, delay);
  }

  function connectWS() {
    if (forceSSE || !("WebSocket" in window)) {
      connectSSE();
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${withToken("/ws")}`;
    let opened = false;
    let worker;
    try {
      worker = new Worker("/static/feed-worker.js"); // takes messages while we draw
    } catch (err) {
      connectSSE();
      return;
    }
    worker.onmessage = (event) => {
      const report = event.data;
      if (report.type === "message") {
        onText(report.text, report.arrived);
      } else if (report.type === "open") {
        opened = true;
        retries = 0;
        setConnection(true, "ws");
      } else if (report.type === "close") {
        worker.terminate();
        setConnection(false, null);
        if (opened) later(connectWS); // it worked before: try it again
        else connectSSE(); // it never opened: perhaps a proxy refuses WebSockets
      }
    };
    worker.onerror = () => {
      // the worker could not start (its script blocked or missing): no WebSocket here
      worker.terminate();
      if (!opened) connectSSE();
    };
    worker.postMessage({ type: "connect", url });
  }

  function connectSSE() {
    let opened = false;
    const source = new EventSource(withToken("/events"));
    source.onopen = () => {
      opened = true;
      retries = 0;
      setConnection(true, "sse");
    };
    source.onmessage = (event) => onText(event.data);
    source.onerror = () => {
      setConnection(false, null);
      if (source.readyState === EventSource.CLOSED || !opened) {
        // refused or never there: start over (WebSocket first) after a pause
        source.close();
        explainFailure();
        later(connectWS);
      }
      // otherwise the browser reconnects the event source by itself
    };
  }

  /* ---------- drawing ---------- */

  const dirty = {
    plot: true,
    header: true,
    controls: true,
    meta: true,
    runs: true,
    server: true,
    all() {
      this.plot = this.header = this.controls = this.meta = this.runs = true;
    },
  };
  let drawPending = false;
  let lastDrawEnd = 0;
  let lastDrawCost = 0;

  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    const frame = () => {
      drawPending = false;
      draw();
    };
    const next = () => (document.hidden ? setTimeout(frame, 0) : requestAnimationFrame(frame));
    // Draw at most once per frame and at most REDRAWS times a second, and rest twice as long
    // as the last draw took: a long run's redraws take at most a third of the page's
    // time, and leave the machine's cores to the RunEngine.
    const gap = Math.max(MIN_DRAW_GAP, 2 * lastDrawCost);
    const rest = lastDrawEnd + gap - performance.now();
    if (rest > 0) setTimeout(next, rest);
    else next();
  }

  let drawBegan = 0;

  function drawEnded() {
    lastDrawEnd = performance.now();
    lastDrawCost = lastDrawEnd - drawBegan;
  }

  function draw() {
    drawBegan = performance.now();
    feed.draws.push(drawBegan);
    if (feed.draws.length > DRAWS_KEPT) feed.draws.splice(0, feed.draws.length - DRAWS_KEPT);
    const run = feed.runs[feed.current];
    if (dirty.server) renderServer();
    if (dirty.controls) renderControls(run);
    if (dirty.header) renderHeader(run);
    if (dirty.meta) renderMetadata(run);
    if (dirty.runs) renderRuns();
    if (dirty.plot) renderPlot(run);
    dirty.plot = dirty.header = dirty.controls = dirty.meta = dirty.runs = dirty.server = false;
    drawEnded(); // (again when uPlot draws, just after this)
  }

  function renderServer() {
    const hello = feed.server;
    $("server").textContent = hello
      ? `${hello.server || "bsrec feed"} ${hello.version || ""} · protocol v${hello.v}`
      : "bluesky-recorders";
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(seconds, full = false) {
    if (typeof seconds !== "number") return "";
    const d = new Date(seconds * 1000);
    const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (full) return `${day} ${time}`;
    return d.toDateString() === new Date().toDateString() ? time : day; // today: the time
  }

  function runName(start) {
    if (!start) return "Run";
    const scan = start.scan_id === null || start.scan_id === undefined ? "" : ` ${start.scan_id}`;
    return `Scan${scan}: ${start.plan_name || "run"}`;
  }

  function renderHeader(run) {
    const title = $("run-title");
    const status = $("run-status");
    if (!run) {
      title.textContent = "Waiting for a run";
      status.dataset.state = "none";
      status.textContent = "No run yet.";
      return;
    }
    const n = run.points.seq_num.length;
    const rows = `${n} point${n === 1 ? "" : "s"}`;
    title.textContent = runName(run.start);
    if (run.end) {
      const took =
        run.start && typeof run.end.time === "number"
          ? ` in ${(run.end.time - run.start.time).toFixed(1)} s`
          : "";
      const reason = run.end.reason ? `: ${run.end.reason}` : "";
      status.dataset.state = "ended";
      status.dataset.exitStatus = run.end.exit_status;
      status.textContent = `${run.end.exit_status}${reason} · ${rows}${took}`;
    } else {
      status.dataset.state = "running";
      delete status.dataset.exitStatus;
      status.textContent = `running · ${rows}`;
    }
  }

  function flatten(value, prefix, out) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) {
        flatten(inner, prefix ? `${prefix}.${key}` : key, out);
      }
    } else if (Array.isArray(value)) {
      const items = value.map((item) =>
        item !== null && typeof item === "object" ? Object.values(item).join(" ") : String(item),
      );
      out.push([prefix, items.join("; ")]);
    } else {
      out.push([prefix, value === null || value === undefined ? "" : String(value)]);
    }
    return out;
  }

  function renderMetadata(run) {
    const body = document.createElement("tbody");
    const rows = run && run.start ? flatten(run.start.metadata || {}, "", []) : [];
    if (!rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.className = "empty";
      td.textContent = "No metadata.";
    }
    for (const [key, value] of rows) {
      const tr = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = key;
      tr.appendChild(th);
      tr.insertCell().textContent = value;
    }
    $("metadata").replaceChild(body, $("metadata").tBodies[0]);
  }

  function renderRuns() {
    const body = document.createElement("tbody");
    const list = feed.runList.slice();
    const current = feed.runs[feed.current];
    if (current && current.start && !current.end && !list.some((r) => r.run === feed.current)) {
      list.unshift({
        run: feed.current,
        scan_id: current.start.scan_id,
        plan_name: current.start.plan_name,
        time: current.start.time,
        exit_status: null,
        num_points: current.points.seq_num.length,
        plots: [],
      });
    }
    if (!list.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = 5;
      td.className = "empty";
      td.textContent = "No runs yet.";
    }
    for (const run of list) {
      const tr = body.insertRow();
      if (run.run === feed.current) tr.setAttribute("aria-current", "true");
      tr.insertCell().textContent = run.scan_id === null ? "–" : String(run.scan_id);
      tr.insertCell().textContent = run.plan_name || "";
      const started = tr.insertCell();
      started.textContent = formatTime(run.time);
      started.title = formatTime(run.time, true);
      tr.insertCell().textContent = run.exit_status || "running";
      const points = tr.insertCell();
      points.className = "num";
      points.textContent = String(run.num_points ?? "");
      if (run.plots && run.plots.length) {
        const cell = body.insertRow().insertCell();
        cell.colSpan = 5;
        const box = document.createElement("div");
        box.className = "thumbs";
        cell.appendChild(box);
        for (const url of run.plots) {
          const name = url.split("/").pop();
          const link = document.createElement("a");
          link.href = withToken(url);
          link.target = "_blank";
          link.rel = "noopener";
          const img = document.createElement("img");
          img.src = withToken(url);
          img.alt = `end-of-run plot ${name} of scan ${run.scan_id ?? ""}`;
          img.loading = "lazy";
          link.appendChild(img);
          box.appendChild(link);
        }
      }
    }
    $("runs").replaceChild(body, $("runs").tBodies[0]);
  }

  /* ---------- columns and the plot ---------- */

  const choice = { x: null, y: [], picked: null, key: null };

  function plottableColumns(run) {
    return run.columns.filter(
      (c) => PLOTTABLE.has(c.kind) && (!c.shape || c.shape.length === 0),
    );
  }

  function gridOf(run) {
    const grid = run && run.start && run.start.hints && run.start.hints.grid;
    return grid && Array.isArray(grid.shape) && grid.shape.length === 2 ? grid : null;
  }

  function defaultChoice(run, names) {
    const hints = (run.start && run.start.hints) || {};
    const motors = hints.motors || [];
    const x = motors.find((m) => names.includes(m)) || "seq_num";
    let y = (hints.detectors || []).filter((d) => names.includes(d) && d !== x);
    if (!y.length) y = names.filter((n) => n !== x && !motors.includes(n)).slice(0, 1);
    if (!y.length) y = names.filter((n) => n !== x).slice(0, 1);
    return { x, y };
  }

  function columnLabel(run, name) {
    if (name === "seq_num") return "point number";
    if (name === "time") return "time since start (s)";
    const column = run && run.columns.find((c) => c.name === name);
    return column && column.units ? `${name} (${column.units})` : name;
  }

  function renderControls(run) {
    const xSelect = $("x-column");
    const yBox = $("y-columns");
    const grid = gridOf(run);
    const names = run ? plottableColumns(run).map((c) => c.name) : [];
    const key = run ? `${feed.current}|${grid ? "grid" : "lines"}|${names.join(",")}` : "";
    if (key === choice.key) return;
    choice.key = key;
    const picked = choice.picked;
    const xNames = ["seq_num", "time", ...names];
    const pickedFits =
      picked &&
      xNames.includes(picked.x) &&
      picked.y.length > 0 &&
      picked.y.every((n) => names.includes(n));
    if (pickedFits) {
      choice.x = picked.x;
      choice.y = picked.y.slice();
    } else if (run) {
      Object.assign(choice, defaultChoice(run, names));
    } else {
      choice.x = null;
      choice.y = [];
    }
    if (grid) choice.y = choice.y.slice(0, 1);

    xSelect.replaceChildren();
    for (const name of xNames) {
      const option = new Option(columnLabel(run, name), name, false, name === choice.x);
      xSelect.add(option);
    }
    xSelect.disabled = !run;
    $("x-control").hidden = Boolean(grid);
    $("y-legend").textContent = grid ? "colour (heat map)" : "y axis";

    yBox.replaceChildren();
    for (const name of names) {
      const id = `y-${name}`;
      const input = document.createElement("input");
      input.type = grid ? "radio" : "checkbox";
      input.name = "y";
      input.id = id;
      input.value = name;
      input.checked = choice.y.includes(name);
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = columnLabel(run, name);
      const wrap = document.createElement("span");
      wrap.className = "choice";
      wrap.append(input, label);
      yBox.appendChild(wrap);
    }
    if (!names.length) yBox.textContent = run ? "no numeric columns yet" : "";
  }

  function onControlsChanged() {
    choice.x = $("x-column").value;
    choice.y = [...$("y-columns").querySelectorAll("input:checked")].map((i) => i.value);
    choice.picked = { x: choice.x, y: choice.y.slice() };
    dirty.plot = true;
    scheduleDraw();
  }

  function columnValues(run, name) {
    const p = run.points;
    if (name === "seq_num") return p.seq_num.slice();
    if (name === "time") {
      const t0 = run.start ? run.start.time : p.time[0];
      return p.time.map((t) => t - t0);
    }
    const values = p.data[name] || [];
    const column = run.columns.find((c) => c.name === name);
    if (column && column.kind === "boolean") {
      return values.map((v) => (v === null ? null : v ? 1 : 0));
    }
    return values.slice();
  }

  function axisValues(extent, n) {
    if (!Array.isArray(extent) || extent.length !== 2) return [...Array(n).keys()];
    const [a, b] = extent;
    if (n === 1) return [a];
    return Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));
  }

  function heatmap(run, grid, name) {
    const [ny, nx] = grid.shape;
    const snake = Boolean(grid.snaking && grid.snaking[1]);
    const z = Array.from({ length: ny }, () => new Array(nx).fill(null));
    const seq = run.points.seq_num;
    const values = columnValues(run, name);
    for (let i = 0; i < seq.length; i++) {
      const k = seq[i] - 1; // seq_num counts from 1, in the order the plan visits the grid
      if (k < 0 || k >= nx * ny) continue;
      const row = Math.floor(k / nx);
      const col = snake && row % 2 === 1 ? nx - 1 - (k % nx) : k % nx;
      z[row][col] = values[i];
    }
    const extents = grid.extents || [];
    return {
      type: "heatmap",
      name,
      x: axisValues(extents[1], nx),
      y: axisValues(extents[0], ny),
      z,
      colorscale: "Viridis",
      hoverongaps: false,
      colorbar: { title: { text: columnLabel(run, name) } },
    };
  }

  const PLOT_CONFIG = {
    displaylogo: false,
    responsive: true,
    modeBarButtonsToRemove: ["lasso2d", "select2d"],
  };

  let revision = 0;

  /* 1: x never falls, -1: x never grows, 0: neither, or a value missing (not for uPlot,
   * whose lines and zoom need x sorted). */
  function direction(x) {
    let up = true;
    let down = true;
    for (let i = 0; i < x.length; i++) {
      if (typeof x[i] !== "number" || !Number.isFinite(x[i])) return 0;
      if (i > 0) {
        if (x[i] < x[i - 1]) up = false;
        else if (x[i] > x[i - 1]) down = false;
      }
    }
    return up ? 1 : down ? -1 : 0;
  }

  /* The uPlot chart: made again when the run or the columns change, else given the new
   * data (keeping a zoom the user made: drag to zoom, double-click to zoom out). */
  const lines = { chart: null, key: null, reversed: false, zoomed: false, run: null };

  function dropLines() {
    if (lines.chart) lines.chart.destroy();
    Object.assign(lines, { chart: null, key: null, reversed: false, zoomed: false, run: null });
    linesDiv.hidden = true;
  }

  function dropPlotly() {
    if (!plotlyDiv.hidden && typeof Plotly !== "undefined") Plotly.purge(plotlyDiv);
    plotlyDiv.hidden = true;
  }

  function chartSize(legend) {
    return {
      width: Math.max(100, plotDiv.clientWidth),
      height: Math.max(100, plotDiv.clientHeight - (legend ? 30 : 0)),
    };
  }

  function drawLines(run, key, x, names, reversed) {
    const ys = names.map((name) => columnValues(run, name));
    const data = [x, ...ys];
    if (reversed) data.forEach((values) => values.reverse()); // the same line, x growing
    lines.run = run;
    if (lines.chart && lines.key === key) {
      lines.reversed = reversed;
      lines.chart.setData(data, !lines.zoomed);
      return;
    }
    dropLines();
    const axis = (label) => ({
      label,
      stroke: "#1d2330",
      font: "13px system-ui, sans-serif",
      labelFont: "13px system-ui, sans-serif",
      grid: { stroke: "#e3e6ec", width: 1 },
      ticks: { stroke: "#e3e6ec", width: 1 },
    });
    const opts = {
      ...chartSize(names.length > 1),
      scales: { x: { time: false } },
      legend: { show: names.length > 1 },
      cursor: { drag: { x: true, y: false } },
      axes: [
        axis(columnLabel(run, choice.x)),
        axis(names.length === 1 ? columnLabel(run, names[0]) : ""),
      ],
      series: [
        { label: choice.x },
        ...names.map((name, i) => ({
          label: name,
          stroke: COLOURS[i % COLOURS.length],
          width: 2,
          points: { show: (u) => u.data[0].length <= MARKERS_UP_TO, size: 6 },
        })),
      ],
      hooks: {
        // uPlot draws after this script's turn (in a microtask): the draw ends here
        draw: [
          () => {
            if (lines.run) noteDrawn(lines.run);
            drawEnded();
          },
        ],
        setSelect: [
          (u) => {
            if (u.select.width > 0) lines.zoomed = true;
          },
        ],
      },
    };
    linesDiv.hidden = false;
    lines.chart = new uPlot(opts, data, linesDiv);
    Object.assign(lines, { key, reversed, zoomed: false, run });
  }

  linesDiv.addEventListener("dblclick", () => {
    lines.zoomed = false; // uPlot zooms out to all the data
  });
  new ResizeObserver(() => {
    if (lines.chart) lines.chart.setSize(chartSize(lines.chart.series.length > 2));
  }).observe(plotDiv);

  function drawPlotly(traces, layout) {
    dropLines();
    plotlyDiv.hidden = false;
    Plotly.react(plotlyDiv, traces, layout, PLOT_CONFIG);
  }

  function renderPlot(run) {
    const layout = {
      datarevision: ++revision,
      margin: { l: 70, r: 20, t: 20, b: 60 },
      font: { family: "system-ui, sans-serif", size: 13, color: "#1d2330" },
      paper_bgcolor: "#ffffff",
      plot_bgcolor: "#ffffff",
      showlegend: false,
      xaxis: { title: { text: "" }, gridcolor: "#e3e6ec", zeroline: false },
      yaxis: { title: { text: "" }, gridcolor: "#e3e6ec", zeroline: false },
    };
    let traces = [];
    let description = "Live plot: no data yet";
    let fast = null; // [x, reversed] when uPlot draws the lines
    if (run) {
      const grid = gridOf(run);
      const n = run.points.seq_num.length;
      layout.uirevision = `${feed.current}|${choice.x}|${choice.y.join(",")}`;
      if (grid && choice.y.length) {
        const trace = heatmap(run, grid, choice.y[0]);
        traces = [trace];
        const motors = grid.motors || [];
        layout.xaxis.title.text = motors[1] ? columnLabel(run, motors[1]) : "fast axis";
        layout.yaxis.title.text = motors[0] ? columnLabel(run, motors[0]) : "slow axis";
        description =
          `Heat map of ${trace.name} on a ${grid.shape[0]} by ${grid.shape[1]} grid, ` +
          `${n} of ${grid.shape[0] * grid.shape[1]} points`;
      } else if (choice.x && choice.y.length) {
        const x = columnValues(run, choice.x);
        const order = typeof uPlot === "undefined" ? 0 : direction(x);
        if (order !== 0) {
          fast = [x, order < 0];
        } else {
          const mode = n > MARKERS_UP_TO ? "lines" : "lines+markers";
          traces = choice.y.map((name) => ({
            type: "scatter",
            mode,
            name,
            x,
            y: columnValues(run, name),
            marker: { size: 6 },
          }));
          layout.showlegend = traces.length > 1;
          layout.legend = { orientation: "h", y: 1.08 };
          layout.xaxis.title.text = columnLabel(run, choice.x);
          layout.yaxis.title.text = choice.y.length === 1 ? columnLabel(run, choice.y[0]) : "";
        }
        description = `Plot of ${choice.y.join(", ")} against ${choice.x}, ${n} points`;
      }
    }
    plotDiv.dataset.run = run ? feed.current : "";
    plotDiv.setAttribute("aria-label", description);
    if (fast) {
      dropPlotly();
      drawLines(run, layout.uirevision, fast[0], choice.y, fast[1]); // noted once drawn
      return;
    }
    if (!traces.length) {
      dropLines();
      dropPlotly();
      return;
    }
    if (typeof Plotly === "undefined") {
      dropLines();
      plotlyDiv.hidden = false;
      plotlyDiv.textContent = "The plotting library is missing: run make web.";
      return;
    }
    drawPlotly(traces, layout);
    noteDrawn(run);
  }

  const drawn = { uid: null, rows: 0 };
  function noteDrawn(run) {
    if (drawn.uid !== feed.current) Object.assign(drawn, { uid: feed.current, rows: 0 });
    const times = run.points.time;
    const shown = now();
    for (let i = drawn.rows; i < times.length; i++) feed.drawLatencies.push(shown - times[i]);
    drawn.rows = times.length;
    if (feed.drawLatencies.length > MAX_LATENCIES) {
      feed.drawLatencies.splice(0, feed.drawLatencies.length - MAX_LATENCIES);
    }
  }

  /* What the plot shows now (read back from the uPlot chart or the Plotly div, not from
   * the runs); `library` says which drew it. */
  function plotted() {
    const run = plotDiv.dataset.run || null;
    if (lines.chart) {
      const columns = lines.chart.data.map((values) => {
        const out = Array.from(values);
        return lines.reversed ? out.reverse() : out; // in the order of the rows
      });
      const traces = lines.chart.series
        .slice(1)
        .map((s, i) => ({ name: s.label, x: columns[0], y: columns[i + 1] }));
      return { kind: "lines", library: "uplot", run, x: columns[0], y: traces[0].y, traces };
    }
    const data = (!plotlyDiv.hidden && plotlyDiv.data) || [];
    if (!data.length) return { kind: "none", run, traces: [] };
    if (data[0].type === "heatmap") {
      const t = data[0];
      return {
        kind: "heatmap",
        library: "plotly",
        run,
        name: t.name,
        x: Array.from(t.x),
        y: Array.from(t.y),
        z: t.z.map((row) => Array.from(row)),
      };
    }
    const traces = data.map((t) => ({ name: t.name, x: Array.from(t.x), y: Array.from(t.y) }));
    return { kind: "lines", library: "plotly", run, x: traces[0].x, y: traces[0].y, traces };
  }

  /* ---------- start ---------- */

  $("controls").addEventListener("change", onControlsChanged);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      dirty.all();
      scheduleDraw();
    }
  });
  draw();
  connectWS();
})();
