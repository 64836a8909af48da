"""Hypothesis strategies for bluesky document streams: valid ones, and hostile ones.

A valid stream is made with event-model's ``compose_run`` (so every document passes the
event-model schemas) from generated parts: odd names (unicode, spaces, dots, ``..``, very
long, nearly empty, SQL-unfriendly, names of the formats' own columns), huge metadata
values (100 kB strings), NaN and ±infinity, empty runs, event pages, failed runs.

A hostile stream is a valid one broken by one or more :data:`MUTATIONS`: documents out of
order, duplicated uids, missing stops, references to documents never sent, values of the
wrong type, names the schemas refuse, paths that leave the data root.

Documents whose *shape* is broken (a required key missing, a document that is not a
mapping) are not here: :data:`MALFORMED` lists them for a test of their own.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import event_model
from hypothesis import strategies as st

Docs = list[tuple[str, dict[str, Any]]]

HUGE = 100_000  # characters of a huge metadata value

#: Names that have broken, or could break, some format: the file systems' ("..", "/" is
#: refused by the schema), HDF5's (".", spaces), SPEC's (spaces in #L, 255 characters),
#: the catalog's SQL columns (leading "_" or digit, case, 63 bytes), the formats' own
#: columns ("time", "seq_num", "Epoch"), and unicode of every width.
ODD_NAMES = [
    "motor",
    "det",
    "dét ü",
    "Ødegård",
    "日本語",
    "😀",
    " ",
    "  two  spaces ",
    "tab\there",
    "new\nline",
    "_x",
    "__",
    "-",
    "1abc",
    "A",
    "a",
    "time",
    "seq_num",
    "Epoch",
    "uid",
    "x" * 70,
    "k" * 300,
    "quote'\"",
    "semi;colon",
    "comma,cell",
    "back\\slash",
    "#L",
    "nul\x00byte",
]

#: Numbers that are hard to write: NaN, infinities, extremes, negative zero.
ODD_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    -999999.0,
    1.0 / 3.0,
]

_text = st.text(
    st.characters(exclude_categories=("Cs",)),  # no lone surrogates: not UTF-8 text
    min_size=0,
    max_size=24,
)


@st.composite
def data_key_names(draw: Any) -> str:
    """A data key name the event-model schema accepts (no '.' nor '/'), often odd."""
    name = draw(
        st.one_of(
            st.sampled_from(ODD_NAMES),
            st.text(
                st.characters(exclude_categories=("Cs",), exclude_characters="./"),
                min_size=1,
                max_size=24,
            ),
        )
    )
    return name


@st.composite
def metadata_keys(draw: Any) -> str:
    """A start-document key the schema accepts (no '.' nor '/'), often odd."""
    return draw(
        st.one_of(
            st.sampled_from([k for k in ODD_NAMES if "." not in k and "/" not in k]),
            st.text(
                st.characters(exclude_categories=("Cs",), exclude_characters="./"),
                min_size=1,
                max_size=16,
            ),
        ).filter(lambda k: k not in _RESERVED_START_KEYS)
    )


_RESERVED_START_KEYS = {
    "uid",
    "time",
    "scan_id",
    "plan_name",
    "hints",
    "motors",
    "detectors",
    "experiment",
    "num_points",
    "projections",
    "data_groups",
    "data_session",
    "group",
    "owner",
    "project",
    "sample",
    "data_type",
}

metadata_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from(ODD_FLOATS),
        st.floats(allow_nan=True, allow_infinity=True),
        _text,
        st.sampled_from(["x" * HUGE, "ü" * HUGE, "日本" * (HUGE // 2), "a\nb" * (HUGE // 3)]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(metadata_keys(), inner, max_size=3)
    ),
    max_leaves=6,
)


@dataclass
class Key:
    """One data key of the primary stream and how to draw its values."""

    name: str
    dtype: str  # "number", "integer", "boolean", "string", "array"
    shape: list[int] = field(default_factory=list)

    def data_key(self) -> dict[str, Any]:
        dk: dict[str, Any] = {
            "source": f"SIM:{self.name}",
            "dtype": self.dtype,
            "shape": self.shape,
        }
        if self.dtype == "number":
            dk["units"] = "mm"
        return dk


def _values_of(key: Key) -> st.SearchStrategy[Any]:
    if key.dtype == "number":
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats(allow_nan=True))
    if key.dtype == "integer":
        return st.integers(-(2**63), 2**63 - 1)
    if key.dtype == "boolean":
        return st.booleans()
    if key.dtype == "string":
        return st.one_of(_text, st.sampled_from(["s" * 5000, "日本" * 1000]))
    return st.lists(
        st.one_of(st.sampled_from(ODD_FLOATS), st.floats(allow_nan=False, width=32)),
        min_size=key.shape[0],
        max_size=key.shape[0],
    )


@dataclass
class Run:
    """A generated run: its documents and what they hold, for the checks."""

    docs: Docs
    keys: list[Key]
    rows: list[dict[str, Any]]  # the primary stream's data, event by event
    exit_status: str | None  # None: the stream has no stop

    @property
    def start(self) -> dict[str, Any]:
        return self.docs[0][1]

    @property
    def uid(self) -> str:
        return self.start["uid"]

    @property
    def number_keys(self) -> list[str]:
        return [k.name for k in self.keys if k.dtype == "number"]


def make_run(
    keys: list[Key],
    rows: list[dict[str, Any]],
    metadata: dict[str, Any],
    *,
    pages: bool = False,
    descriptor: bool = True,
    exit_status: str = "success",
    reason: str = "",
) -> Run:
    """A run of ``rows`` of the primary stream's ``keys`` (the first is the motor, the
    last number the detector), as events or one event page."""
    number_keys = [k.name for k in keys if k.dtype == "number"]
    motor, detector = keys[0].name, number_keys[-1]
    metadata = {
        "scan_id": 1,
        "plan_name": "scan",
        "motors": [motor],
        "detectors": [detector],
        "hints": {"dimensions": [[[motor], "primary"]]},
        **metadata,
    }
    run = event_model.compose_run(metadata=metadata)
    docs: Docs = [("start", dict(run.start_doc))]
    if descriptor or rows:
        desc = run.compose_descriptor(
            data_keys={k.name: k.data_key() for k in keys},
            name="primary",
            object_keys={k.name: [k.name] for k in keys},
            hints={motor: {"fields": [motor]}, detector: {"fields": [detector]}},
        )
        docs.append(("descriptor", dict(desc.descriptor_doc)))
        t0 = run.start_doc["time"]
        events = [
            dict(
                desc.compose_event(
                    data=row, timestamps=dict.fromkeys(row, t0 + i), seq_num=i + 1, time=t0 + i
                )
            )
            for i, row in enumerate(rows)
        ]
        if rows and pages:
            docs.append(("event_page", dict(event_model.pack_event_page(*events))))
        else:
            docs += [("event", e) for e in events]
    docs.append(("stop", dict(run.compose_stop(exit_status=exit_status, reason=reason))))
    return Run(docs, keys, rows, exit_status)


@st.composite
def runs(draw: Any, *, max_events: int = 6) -> Run:
    """A valid run (every document passes the event-model schemas) with odd contents."""
    names = draw(st.lists(data_key_names(), min_size=1, max_size=5, unique=True))
    keys = [Key(names[0], "number")]
    for name in names[1:]:
        dtype = draw(st.sampled_from(["number", "number", "integer", "boolean", "string", "array"]))
        keys.append(Key(name, dtype, [4] if dtype == "array" else []))
    metadata: dict[str, Any] = {
        "scan_id": draw(st.one_of(st.integers(0, 99_999), st.sampled_from([-1, 10**12]))),
        "plan_name": draw(
            st.one_of(st.sampled_from(["scan", "count"]), st.sampled_from(ODD_NAMES))
        ),
    }
    metadata.update(draw(st.dictionaries(metadata_keys(), metadata_values, max_size=4)))
    if draw(st.booleans()):
        metadata["huge"] = "h" * HUGE
    if draw(st.booleans()):
        # the experiment's names go into folder and SPEC file names
        metadata["experiment"] = {
            "proposal_id": draw(st.sampled_from(["GUP-1", "..", "a/../b", "日本", " "])),
            "pi": {"last_name": draw(st.sampled_from(["Müller", "..", "O'Neil", "李", "/"]))},
        }
    n = draw(st.integers(0, max_events))
    rows = [{k.name: draw(_values_of(k)) for k in keys} for _ in range(n)]
    status = draw(st.sampled_from(["success", "success", "abort", "fail"]))
    return make_run(
        keys,
        rows,
        metadata,
        pages=draw(st.booleans()),
        descriptor=draw(st.booleans()),  # an empty run may have no descriptor at all
        exit_status=status,
        reason="" if status == "success" else draw(st.sampled_from(["", "日本 ..", "r" * 5000])),
    )


def explicit_runs() -> list[Run]:
    """Runs every property test tries first, whatever hypothesis draws after them."""
    every_dtype = [
        Key("motor", "number"),
        Key("dét ü", "integer"),
        Key("flag", "boolean"),
        Key("text", "string"),
        Key("spectrum", "array", [4]),
        Key("k" * 300, "number"),
        Key("det", "number"),
    ]
    rows = [
        {
            "motor": float(i),
            "dét ü": -(2**63) + i,
            "flag": i % 2 == 0,
            "text": "日本\n" * (i + 1),
            "spectrum": [math.nan, math.inf, -math.inf, float(i)],
            "k" * 300: ODD_FLOATS[i],
            "det": ODD_FLOATS[-1 - i],
        }
        for i in range(len(ODD_FLOATS))
    ]
    odd_metadata = {
        "plan_name": "a/../b ü",
        "scan_id": 10**12,
        "huge": "x" * HUGE,
        "nan": math.nan,
        "inf": -math.inf,
        "ü σ": {"nested": [None, math.nan, "日本"]},
    }
    catalog_unfriendly = [Key("Time", "number"), Key("_x", "number"), Key("日本", "number")]
    return [
        make_run([Key("det", "number")], [], {}, descriptor=False),
        make_run([Key("det", "number")], [], {"plan_name": ""}, exit_status="abort"),
        make_run(every_dtype, rows, odd_metadata),
        make_run(every_dtype, rows, odd_metadata, pages=True, exit_status="fail", reason="日本"),
        make_run(catalog_unfriendly, [{k.name: 1.0 for k in catalog_unfriendly}], {}),
    ]


# -- hostile streams ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One way to break a stream: ``apply(docs, draw)`` returns the broken stream."""

    name: str
    apply: Callable[[Docs, Any], Docs]


def _copy(docs: Docs) -> Docs:
    return [(n, copy.deepcopy(d)) for n, d in docs]


def _index(docs: Docs, name: str) -> int | None:
    return next((i for i, (n, _) in enumerate(docs) if n == name), None)


def _events(docs: Docs) -> list[int]:
    return [i for i, (n, _) in enumerate(docs) if n in ("event", "event_page")]


def _uid() -> str:
    return str(uuid.uuid4())


def _at(docs: Docs, draw: Any) -> int:
    """Where to insert a document: after the start, anywhere up to the end."""
    return draw(st.integers(min(1, len(docs)), len(docs)))


def _duplicate_start_mid_run(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    at = _at(out, draw)
    out.insert(at, ("start", copy.deepcopy(out[0][1])))
    return out


def _same_run_twice(docs: Docs, draw: Any) -> Docs:
    """The whole run again with the same uids (a replayed file, a resent stream)."""
    return _copy(docs) + _copy(docs)


def _duplicate_event(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    events = _events(out)
    if not events:
        return out
    i = draw(st.sampled_from(events))
    out.insert(i + 1, copy.deepcopy(out[i]))
    return out


def _event_before_descriptor(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    events, d = _events(out), _index(out, "descriptor")
    if not events or d is None:
        return out
    out.insert(d, out.pop(events[0]))
    return out


def _stop_before_start(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    s = _index(out, "stop")
    assert s is not None
    out.insert(0, out.pop(s))
    return out


def _missing_stop(docs: Docs, draw: Any) -> Docs:
    return [(n, d) for n, d in _copy(docs) if n != "stop"]


def _datum_of_unknown_resource(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    res = _uid()
    datum = {"datum_id": f"{res}/0", "resource": res, "datum_kwargs": {"point_number": 0}}
    kind = draw(st.sampled_from(["datum", "datum_page"]))
    doc = datum if kind == "datum" else dict(event_model.pack_datum_page(datum))
    out.insert(_at(out, draw), (kind, doc))
    return out


def _stream_datum_of_unknown_resource(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    sres = _uid()
    doc = {
        "uid": f"{sres}/0",
        "stream_resource": sres,
        "descriptor": _uid(),
        "indices": {"start": 0, "stop": 1},
        "seq_nums": {"start": 1, "stop": 2},
    }
    out.insert(_at(out, draw), ("stream_datum", doc))
    return out


def _event_of_unknown_descriptor(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    event = {
        "uid": _uid(),
        "descriptor": _uid(),
        "seq_num": 1,
        "time": 1.0,
        "data": {"x": 1.0},
        "timestamps": {"x": 1.0},
        "filled": {},
    }
    out.insert(_at(out, draw), ("event", event))
    return out


def _descriptor_of_unknown_run(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    desc = {
        "uid": _uid(),
        "run_start": _uid(),
        "time": 1.0,
        "name": "primary",
        "data_keys": {"x": {"source": "s", "dtype": "number", "shape": []}},
    }
    out.insert(_at(out, draw), ("descriptor", desc))
    return out


def _resource_of_unknown_run(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    res = {
        "uid": _uid(),
        "run_start": _uid(),
        "spec": "AD_HDF5",
        "root": "/",
        "resource_path": "nowhere.h5",
        "resource_kwargs": {},
        "path_semantics": "posix",
    }
    out.insert(_at(out, draw), ("resource", res))
    return out


def _unknown_document_name(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    name = draw(st.sampled_from(["bogus", "", "Start", "event_pages", "日本"]))
    out.insert(draw(st.integers(0, len(out))), (name, {"uid": _uid()}))
    return out


_WRONG_VALUES = [
    {"nested": {"a": [1, 2]}},
    [1, [2, [3]]],
    "text",
    None,
    2**70,
    -(2**70),
    b"bytes",
    "y" * HUGE,
    True,
]


def _wrong_event_value(docs: Docs, draw: Any) -> Docs:
    """An event value of another type than its data key says (schema-valid: data is free)."""
    out = _copy(docs)
    events = _events(out)
    if not events:
        return out
    name, ev = out[draw(st.sampled_from(events))]
    key = draw(st.sampled_from(sorted(ev["data"])))
    value = draw(st.sampled_from(_WRONG_VALUES))
    ev["data"][key] = value if name == "event" else [value] * len(ev["seq_num"])
    return out


def _wrong_event_field(docs: Docs, draw: Any) -> Docs:
    """seq_num or time of the wrong type, or a page whose columns differ in length."""
    out = _copy(docs)
    events = _events(out)
    if not events:
        return out
    name, ev = out[draw(st.sampled_from(events))]
    what = draw(st.sampled_from(["seq_num", "time", "data", "ragged"]))
    if what == "ragged" and name == "event_page":
        ev["seq_num"] = ev["seq_num"] + [len(ev["seq_num"]) + 1]
    elif what == "data":
        ev["data"] = draw(st.sampled_from([[1, 2], "text", 3]))
    else:
        ev[what] = draw(st.sampled_from(["one", None, 1.5, [1]]))
        if name == "event_page" and what == "time":
            ev[what] = [ev[what]] * len(ev["seq_num"])
    return out


def _wrong_start_field(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    start = out[0][1]
    what, value = draw(
        st.sampled_from(
            [
                ("scan_id", "twelve"),
                ("scan_id", 1.5),
                ("scan_id", None),
                ("plan_name", 42),
                ("plan_name", ["a", "b"]),
                ("time", "yesterday"),
                ("time", math.nan),
                ("time", math.inf),
                ("time", -1e300),
                ("hints", "none"),
                ("hints", {"dimensions": "x"}),
                ("motors", "motor"),
                ("detectors", None),
                ("a.dotted", 1),
                ("a/slashed", 1),
                ("experiment", "text"),
                ("experiment", {"pi": "Jane", "proposal_id": None}),
            ]
        )
    )
    start[what] = value
    return out


def _wrong_descriptor_field(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    d = _index(out, "descriptor")
    if d is None:
        return out
    desc = out[d][1]
    key = next(iter(desc["data_keys"]))
    what = draw(st.sampled_from(["shape", "dtype", "data_keys", "name", "dotted key", "dk type"]))
    if what == "shape":
        desc["data_keys"][key]["shape"] = draw(st.sampled_from(["x", [-1], [1.5], [10**12]]))
    elif what == "dtype":
        desc["data_keys"][key]["dtype"] = draw(st.sampled_from(["float", None, 7]))
    elif what == "data_keys":
        desc["data_keys"] = draw(st.sampled_from([[key], "keys", {}]))
    elif what == "name":
        desc["name"] = draw(st.sampled_from([None, 3, "../../etc", "日本 /x"]))
    elif what == "dotted key":
        desc["data_keys"][draw(st.sampled_from(["a.b", "a/b", "..", "/"]))] = {
            "source": "s",
            "dtype": "number",
            "shape": [],
        }
    else:
        desc["data_keys"][key] = draw(st.sampled_from(["number", None, []]))
    return out


def _wrong_stop_field(docs: Docs, draw: Any) -> Docs:
    out = _copy(docs)
    s = _index(out, "stop")
    assert s is not None
    stop = out[s][1]
    what, value = draw(
        st.sampled_from(
            [
                ("exit_status", "exploded"),
                ("exit_status", None),
                ("time", "later"),
                ("num_events", {"primary": "many"}),
                ("num_events", [1]),
                ("reason", 3),
            ]
        )
    )
    stop[what] = value
    return out


def _path_traversal(docs: Docs, draw: Any) -> Docs:
    """The metadata service's data directory leaves the data root (or is hidden, or odd)."""
    out = _copy(docs)
    start = out[0][1]
    directory = draw(
        st.sampled_from(
            ["../../../../etc", "/etc", "/", "a/../../..", ".hidden", "x/\x01ctl", "\x00", 42]
        )
    )
    start["experiment"] = {"data_directory": directory}
    return out


#: Every mutation of a valid stream, by name.
MUTATIONS: dict[str, Mutation] = {
    m.name: m
    for m in [
        Mutation("duplicate start uid mid-run", _duplicate_start_mid_run),
        Mutation("the same run twice (same uids)", _same_run_twice),
        Mutation("duplicate event uid", _duplicate_event),
        Mutation("event before its descriptor", _event_before_descriptor),
        Mutation("stop before start", _stop_before_start),
        Mutation("missing stop", _missing_stop),
        Mutation("datum of an unknown resource", _datum_of_unknown_resource),
        Mutation("stream_datum of an unknown stream_resource", _stream_datum_of_unknown_resource),
        Mutation("event of an unknown descriptor", _event_of_unknown_descriptor),
        Mutation("descriptor of an unknown run", _descriptor_of_unknown_run),
        Mutation("resource of an unknown run", _resource_of_unknown_run),
        Mutation("unknown document name", _unknown_document_name),
        Mutation("event value of the wrong type", _wrong_event_value),
        Mutation("event seq_num/time/data of the wrong type", _wrong_event_field),
        Mutation("start field of the wrong type", _wrong_start_field),
        Mutation("descriptor field of the wrong type", _wrong_descriptor_field),
        Mutation("stop field of the wrong type", _wrong_stop_field),
        Mutation("data directory outside the data root", _path_traversal),
    ]
}


@dataclass
class Hostile:
    """A hostile stream and the mutations that made it."""

    docs: Docs
    mutations: list[str]
    base: Run


#: Mutations that add documents belonging to no run of the stream (a descriptor of a run
#: never started, a datum of a resource never sent...): no RunEngine emits such documents.
OUTSIDE_ANY_RUN = frozenset(
    {
        "datum of an unknown resource",
        "stream_datum of an unknown stream_resource",
        "event of an unknown descriptor",
        "descriptor of an unknown run",
        "resource of an unknown run",
        "unknown document name",
    }
)


@st.composite
def hostile_streams(
    draw: Any,
    *,
    first: tuple[str, ...] = (),
    more: int = 1,
    among: frozenset[str] | None = None,
) -> Hostile:
    """A valid run broken by the mutations named in ``first`` (else one drawn), then by
    up to ``more`` drawn ones (from ``among``, default all), applied in turn."""
    base = draw(runs(max_events=4))
    names = sorted(among if among is not None else MUTATIONS)
    chosen = list(first) or [draw(st.sampled_from(names))]
    chosen += draw(st.lists(st.sampled_from(names), max_size=more))
    docs = base.docs
    for name in chosen:
        docs = MUTATIONS[name].apply(docs, draw)
    return Hostile(docs, chosen, base)


# -- documents whose shape is broken -------------------------------------------------------


def malformed(docs: Docs) -> dict[str, Docs]:
    """Streams with one document missing a required key or not a mapping at all.

    ``docs`` is a valid run (start, descriptor, events, stop); each stream is its start
    (and descriptor) followed by the broken document.
    """
    start = docs[0][1]
    d = _index(docs, "descriptor")
    e = next(i for i, (n, _) in enumerate(docs) if n == "event")
    desc, event = docs[d][1], docs[e][1]
    head = [("start", start), ("descriptor", desc)]
    drop = lambda doc, key: {k: v for k, v in doc.items() if k != key}  # noqa: E731
    return {
        "start without uid": [("start", drop(start, "uid"))],
        "start that is None": [("start", None)],  # type: ignore[list-item]
        "descriptor without run_start": [head[0], ("descriptor", drop(desc, "run_start"))],
        "descriptor without uid": [head[0], ("descriptor", drop(desc, "uid"))],
        "descriptor that is a list": [head[0], ("descriptor", [desc])],  # type: ignore[list-item]
        "event without descriptor": [*head, ("event", drop(event, "descriptor"))],
        "event that is None": [*head, ("event", None)],  # type: ignore[list-item]
        "event that is a string": [*head, ("event", "event")],  # type: ignore[list-item]
        "stop without run_start": [*head, ("stop", {"uid": _uid(), "time": 1.0})],
        "datum without resource": [*head, ("datum", {"datum_id": "x/0", "datum_kwargs": {}})],
    }


def simple_run(num: int = 3, *, plan_name: str = "scan") -> Run:
    """A plain good run: ``motor`` and ``det`` (with a NaN and an infinity), one stop."""
    values = [1.0, math.nan, math.inf, -2.5, 1e-300]
    rows = [{"motor": float(i), "det": values[i % len(values)]} for i in range(num)]
    keys = [Key("motor", "number"), Key("det", "number")]
    return make_run(keys, rows, {"plan_name": plan_name})
