"""Pure functions of the end-of-run plots recorder: documents in, a plot spec out.

Nothing here touches a file or imports matplotlib. :mod:`bluesky_recorders.plots`
collects the columns these functions ask for, draws the figures they describe
and writes them with the sidecar they build.

What is plotted, from the run's hints (the rule of the NeXus default plot,
:func:`~bluesky_recorders.nexus_layout.default_plot`, is reused):

- the ``primary`` stream only;
- signals: the hinted numeric scalar fields of the detectors
  (``start["detectors"]`` first), a detector hinting no field standing in with its
  numeric scalar ``object_keys``; at most ``max_plots`` of them;
- axes: the fields of ``start["hints"]["dimensions"]`` (without them, the
  ``motors`` of the start document, as bluesky's BestEffortCallback does);
- a 1-D scan: each signal against the first axis, one PNG per signal;
- a 2-D grid scan (``start["shape"]`` of two, one field per dimension): one heat
  map per signal, the slow axis along the rows, the fast axis reversed on odd rows
  when ``start["snaking"]`` says so;
- a count (no axis, or the ``time`` dimension): each signal against ``seq_num``;
- strings, arrays and detector frames are never plotted; NaN points are left out.

A run with nothing to plot (no primary stream, no events, no numeric scalar
field, only NaN) gets no PNG, and its sidecar says why.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .nexus_layout import Plot, column_spec, default_plot, fallback_plot
from .paths import safe_name

__all__ = [
    "FORMAT_VERSION",
    "HeatMap",
    "LinePlot",
    "PLOTS_FOLDER",
    "RunPlots",
    "SEQ_NUM",
    "SIDECAR",
    "STREAM",
    "axis_label",
    "choose_plot",
    "grid_edges",
    "grid_image",
    "json_safe",
    "layout_run",
    "plot_files",
    "plots_dir",
    "plotted_keys",
    "run_title",
    "sample_name",
    "to_number",
]

#: The folder of the experiment directory holding every run's plots.
PLOTS_FOLDER = "end_of_run"
#: The sidecar's file name in a run's plots folder (written last: its presence
#: means the folder is complete).
SIDECAR = "plot.json"
#: The stream that is plotted.
STREAM = "primary"
#: The x axis of a count: the event's sequence number.
SEQ_NUM = "seq_num"
#: Version of the sidecar's layout.
FORMAT_VERSION = 1


# -- where ---------------------------------------------------------------------------


def plots_dir(experiment_dir: str | Path, scan_id: Any, uid: str, attempt: int = 0) -> Path:
    """The folder of a run's plots: ``<experiment_dir>/end_of_run/<scan_id>``.

    ``attempt`` 1 is ``<scan_id>_<uid8>`` (the run's own name, when ``<scan_id>``
    already holds another run's plots), and n >= 2 ``<scan_id>_<uid8>_<n>``. A
    ``scan_id`` that is not an integer counts as 0.
    """
    sid = scan_id if isinstance(scan_id, int) and not isinstance(scan_id, bool) else 0
    name = str(sid)
    if attempt >= 1:
        name = f"{name}_{safe_name(str(uid)[:8], fallback='nouid')}"
    if attempt >= 2:
        name = f"{name}_{attempt}"
    return Path(experiment_dir) / PLOTS_FOLDER / name


# -- what ----------------------------------------------------------------------------


def _numeric_scalar(descriptor: Mapping[str, Any], key: Any) -> bool:
    if not isinstance(key, str):
        return False
    dk = (descriptor.get("data_keys") or {}).get(key)
    if not isinstance(dk, Mapping):
        return False
    spec = column_spec(dk)
    return spec is not None and not spec.is_text and not spec.shape


def choose_plot(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> Plot | None:
    """The plot of a ``primary`` descriptor: :func:`default_plot` with two stand-ins.

    Without ``hints["dimensions"]`` in the start document, its ``motors`` (else
    ``time``) are the dimension. A detector hinting no numeric field is
    represented by its numeric scalar ``object_keys``. Without any detector,
    :func:`fallback_plot` (the first numeric scalar that is not an axis). None
    when there is no numeric scalar to plot; detector frames are never chosen.
    """
    if descriptor.get("name", STREAM) != STREAM:
        return None
    hints = start.get("hints") if isinstance(start.get("hints"), Mapping) else {}
    if not hints.get("dimensions"):
        motors = [m for m in start.get("motors") or [] if isinstance(m, str)]
        start = {**start, "hints": {**hints, "dimensions": [[motors or ["time"], STREAM]]}}
    plot = default_plot(start, descriptor)
    if plot is not None and not plot.image:
        return plot
    dev_hints = descriptor.get("hints") if isinstance(descriptor.get("hints"), Mapping) else {}
    object_keys = descriptor.get("object_keys")
    object_keys = object_keys if isinstance(object_keys, Mapping) else {}
    stand_in = dict(dev_hints)
    for det in start.get("detectors") or []:
        if not isinstance(det, str):
            continue
        own = dev_hints.get(det)
        hinted = own.get("fields") if isinstance(own, Mapping) else None
        if any(_numeric_scalar(descriptor, f) for f in hinted or [] if isinstance(f, str)):
            continue
        fields = [f for f in object_keys.get(det) or [] if _numeric_scalar(descriptor, f)]
        if fields:
            stand_in[det] = {"fields": fields}
    plot = default_plot(start, {**descriptor, "hints": stand_in})
    if plot is not None and not plot.image:
        return plot
    axes = _dimension_axes(start, descriptor)
    return fallback_plot(descriptor, axes)


def _dimension_axes(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
    """The numeric fields of the start document's dimensions for this stream."""
    out: list[str] = []
    for dim in (start.get("hints") or {}).get("dimensions") or []:
        if isinstance(dim, Sequence) and len(dim) == 2 and dim[1] == STREAM:
            out.extend(f for f in dim[0] if _numeric_scalar(descriptor, f) and f not in out)
    return out


def plotted_keys(plot: Plot | None) -> list[str]:
    """The data keys whose values a plot needs: its axes (not ``time``), then its signals."""
    if plot is None:
        return []
    keys = [a for a in plot.axes if a != "time"]
    for key in (plot.signal, *plot.auxiliary):
        if key not in keys:
            keys.append(key)
    return keys


def plot_files(signals: Sequence[str]) -> dict[str, str]:
    """Signal -> its PNG's name, ``<safe signal name>.png``, unique (``_2``, ``_3``...)."""
    out: dict[str, str] = {}
    taken = {SIDECAR}
    for key in signals:
        base = safe_name(key, fallback="signal")
        name, n = f"{base}.png", 2
        while name in taken:
            name, n = f"{base}_{n}.png", n + 1
        taken.add(name)
        out[key] = name
    return out


def to_number(value: Any) -> float:
    """A value as a float to plot: numbers and booleans as they are, anything else NaN."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except (OverflowError, ValueError):
            return math.nan
    return math.nan


def axis_label(key: str, descriptor: Mapping[str, Any] | None) -> str:
    """``key [units]`` with the descriptor's units, else the key (``seq_num``: "point")."""
    if key == SEQ_NUM:
        return "point (seq_num)"
    dk = ((descriptor or {}).get("data_keys") or {}).get(key) or {}
    units = dk.get("units") if isinstance(dk, Mapping) else None
    return f"{key} [{units}]" if isinstance(units, str) and units.strip() else key


def sample_name(start: Mapping[str, Any]) -> str:
    """The sample's name: the metadata service's, else ``start["sample"]`` (text or
    a mapping with a name), else ""."""
    experiment = start.get("experiment")
    if isinstance(experiment, Mapping):
        sample = experiment.get("sample")
        if isinstance(sample, Mapping) and str(sample.get("name") or "").strip():
            return str(sample["name"]).strip()
    sample = start.get("sample")
    if isinstance(sample, Mapping):
        sample = sample.get("name")
    return sample.strip() if isinstance(sample, str) else ""


def run_title(start: Mapping[str, Any]) -> str:
    """``scan <id> · <plan name> · <sample>`` (``run <uid8>`` without a scan id; parts
    that are unknown are left out)."""
    if start.get("scan_id") is not None:
        parts = [f"scan {start['scan_id']}"]
    else:
        parts = [f"run {str(start.get('uid', ''))[:8]}".strip()]
    if start.get("plan_name"):
        parts.append(str(start["plan_name"]))
    sample = sample_name(start)
    if sample:
        parts.append(sample)
    return " · ".join(parts)


# -- grids ---------------------------------------------------------------------------


def grid_image(
    values: Sequence[float],
    seq_nums: Sequence[int],
    shape: tuple[int, int],
    snake: bool,
) -> np.ndarray:
    """Values of a grid scan as an image of ``shape`` (rows: slow axis), NaN where missing.

    Point ``seq_num - 1`` is row ``p // cols``, column ``p % cols``, counted from
    the right on odd rows of a snaking scan. Points beyond the grid are left out.
    """
    rows, cols = shape
    image = np.full((rows, cols), np.nan)
    for value, seq in zip(values, seq_nums, strict=True):
        p = int(seq) - 1
        row, col = divmod(p, cols)
        if p < 0 or row >= rows:
            continue
        if snake and row % 2:
            col = cols - 1 - col
        image[row, col] = value
    return image


def grid_edges(centers: Sequence[float]) -> tuple[float, float] | None:
    """The outer edges of evenly spaced pixel ``centers`` (NaN for unknown ones).

    The spacing is taken from the first and last known centers; one known center
    (or a motor that did not move) gives that center +- 0.5. None when no center
    is known.
    """
    known = [(i, c) for i, c in enumerate(centers) if math.isfinite(c)]
    if not known:
        return None
    (i0, c0), (i1, c1) = known[0], known[-1]
    if i1 == i0 or c1 == c0:
        return c0 - 0.5, c0 + 0.5
    step = (c1 - c0) / (i1 - i0)
    first = c0 - i0 * step
    last = first + (len(centers) - 1) * step
    return first - step / 2, last + step / 2


def _means(image: np.ndarray, axis: int) -> list[float]:
    """Mean of the finite values along ``axis`` (NaN when there are none), without warnings."""
    finite = np.isfinite(image)
    counts = finite.sum(axis=axis)
    sums = np.where(finite, image, 0.0).sum(axis=axis)
    return [float(s / n) if n else math.nan for s, n in zip(sums, counts, strict=True)]


# -- the spec ------------------------------------------------------------------------


@dataclass(frozen=True)
class LinePlot:
    """One PNG: ``y`` against ``x`` (NaN points already left out)."""

    file: str
    title: str
    signal: str
    x_key: str
    x_label: str
    y_label: str
    x: list[float]
    y: list[float]


@dataclass(frozen=True)
class HeatMap:
    """One PNG: ``image`` (rows: slow axis, NaN: not measured) spanning ``extent``.

    ``extent`` is ``(left, right, bottom, top)``: the outer edges of the first and
    last columns (fast axis) and rows (slow axis), as matplotlib's ``imshow`` takes it.
    """

    file: str
    title: str
    signal: str
    x_label: str
    y_label: str
    label: str
    image: np.ndarray
    extent: tuple[float, float, float, float]


@dataclass(frozen=True)
class RunPlots:
    """What to draw for one run, and its sidecar (JSON-ready: no NaN, no numpy)."""

    figures: list[LinePlot | HeatMap] = field(default_factory=list)
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why there is no figure ("" when there are figures)."""
        return str(self.sidecar.get("why_no_plot") or "")


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, numpy values as Python ones, tuples as
    lists: what strict JSON readers (a web page's ``JSON.parse``) accept."""
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _kind(figure: LinePlot | HeatMap) -> str:
    return "heatmap" if isinstance(figure, HeatMap) else "line"


def _iso(t: Any) -> str | None:
    if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t):
        return datetime.fromtimestamp(t).astimezone().isoformat()
    return None


def _run_metadata(
    start: Mapping[str, Any], stop: Mapping[str, Any] | None, events: int
) -> dict[str, Any]:
    stop = stop or {}
    return {
        "uid": start.get("uid"),
        "scan_id": start.get("scan_id"),
        "plan_name": start.get("plan_name"),
        "time": start.get("time"),
        "start_time": _iso(start.get("time")),
        "stop_time": _iso(stop.get("time")),
        "exit_status": stop.get("exit_status"),
        "reason": stop.get("reason") or "",
        "num_events": events,
        "sample": sample_name(start),
    }


def layout_run(
    start: Mapping[str, Any],
    descriptor: Mapping[str, Any] | None,
    columns: Mapping[str, Sequence[float]],
    stop: Mapping[str, Any] | None,
    *,
    streams: Sequence[str] = (),
    max_plots: int = 16,
) -> RunPlots:
    """The figures and the sidecar of a finished run.

    ``descriptor`` is the run's first ``primary`` descriptor (None: there was
    none); ``columns`` holds ``seq_num`` and the values of every key of
    :func:`plotted_keys` (of :func:`choose_plot`), one per primary event, as
    :func:`to_number` gives them; ``stop`` is None for a run that never stopped;
    ``streams`` names the run's streams (for the message when there is no primary).
    """
    seq = np.asarray(columns.get(SEQ_NUM, ()), dtype=np.int64)
    order = np.argsort(seq, kind="stable")
    seq = seq[order]
    title = run_title(start)
    experiment = start.get("experiment")
    sidecar: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "run": _run_metadata(start, stop, len(seq)),
        "experiment": experiment if isinstance(experiment, Mapping) else None,
        "stream": STREAM,
        "kind": None,
        "why_no_plot": None,
        "title": title,
        "x": None,
        "grid": None,
        "units": {},
        "data": {},
        "figures": [],
        "not_plotted": {},
    }

    def nothing(why: str) -> RunPlots:
        sidecar["why_no_plot"] = why
        return RunPlots([], json_safe(sidecar))

    if descriptor is None:
        names = f"its streams: {', '.join(streams)}" if streams else "it has no stream at all"
        return nothing(f"the run has no '{STREAM}' stream ({names})")
    plot = choose_plot(start, descriptor)
    if plot is None:
        return nothing(f"the '{STREAM}' stream has no numeric scalar field to plot")
    if len(seq) == 0:
        return nothing(f"the '{STREAM}' stream has no events")

    def column(key: str) -> np.ndarray:
        values = np.asarray(columns.get(key, ()), dtype=float)
        if len(values) != len(order):
            raise ValueError(f"column {key!r} has {len(values)} values for {len(order)} events")
        return values[order]

    signals = [plot.signal, *plot.auxiliary]
    skipped = signals[max_plots:]
    signals = signals[:max_plots]
    not_plotted = dict.fromkeys(skipped, f"more than max_plots = {max_plots} signals")
    data: dict[str, Any] = {SEQ_NUM: seq.tolist()}
    values = {s: column(s) for s in signals}
    for s in signals:
        if not np.isfinite(values[s]).any():
            not_plotted[s] = "no finite value"
    signals = [s for s in signals if s not in not_plotted]
    files = plot_files(signals)
    figures: list[LinePlot | HeatMap] = []
    units = {}
    for key in [*plot.axes, *signals]:
        dk = (descriptor.get("data_keys") or {}).get(key) or {}
        if dk.get("units"):
            units[key] = dk["units"]
    sidecar["units"] = units
    sidecar["not_plotted"] = not_plotted

    if plot.grid is not None and len(plot.axes) == 2:
        slow, fast = plot.axes
        sidecar["kind"] = "heatmap"
        sidecar["grid"] = {"shape": list(plot.grid), "snake": plot.snake, "axes": [slow, fast]}
        slow_v, fast_v = column(slow), column(fast)
        data[slow], data[fast] = slow_v, fast_v
        rows = grid_edges(_means(grid_image(slow_v, seq, plot.grid, plot.snake), 1))
        cols = grid_edges(_means(grid_image(fast_v, seq, plot.grid, plot.snake), 0))
        y_label, x_label = axis_label(slow, descriptor), axis_label(fast, descriptor)
        if rows is None:
            rows, y_label = (-0.5, plot.grid[0] - 0.5), f"{slow} (row)"
        if cols is None:
            cols, x_label = (-0.5, plot.grid[1] - 0.5), f"{fast} (column)"
        for s in signals:
            data[s] = values[s]
            figures.append(
                HeatMap(
                    file=files[s],
                    title=title,
                    signal=s,
                    x_label=x_label,
                    y_label=y_label,
                    label=axis_label(s, descriptor),
                    image=grid_image(values[s], seq, plot.grid, plot.snake),
                    extent=(cols[0], cols[1], rows[0], rows[1]),
                )
            )
    else:
        x_key = next((a for a in plot.axes if a != "time"), SEQ_NUM)
        sidecar["kind"] = "line"
        x = seq.astype(float) if x_key == SEQ_NUM else column(x_key)
        if x_key != SEQ_NUM:
            data[x_key] = x
        for s in signals:
            data[s] = values[s]
            keep = np.isfinite(x) & np.isfinite(values[s])
            if not keep.any():
                not_plotted[s] = f"no point where both {x_key} and {s} are finite"
                continue
            figures.append(
                LinePlot(
                    file=files[s],
                    title=title,
                    signal=s,
                    x_key=x_key,
                    x_label=axis_label(x_key, descriptor),
                    y_label=axis_label(s, descriptor),
                    x=x[keep].tolist(),
                    y=values[s][keep].tolist(),
                )
            )
        sidecar["x"] = x_key
    sidecar["data"] = data
    sidecar["figures"] = [{"file": f.file, "signal": f.signal, "kind": _kind(f)} for f in figures]
    if not figures:
        sidecar["kind"] = None
        sidecar["why_no_plot"] = "no finite value to plot: " + "; ".join(
            f"{k}: {v}" for k, v in not_plotted.items()
        )
    return RunPlots(figures, json_safe(sidecar))
