"""The metadata service's PVs and the snapshot that goes into every start document.

Pure functions only (no EPICS here):

- :data:`PVS`: the PV table (suffix, kind, dotted key for ``bsrec metadata set``, default);
- :func:`snapshot_from_values` / :func:`values_from_snapshot`: PV values (suffix -> value,
  as read) to the ``experiment`` snapshot of the start document, and back;
- :func:`empty_snapshot`: the snapshot when nothing is known;
- :func:`set_dotted`: apply one ``key=value`` assignment to PV values;
- :func:`check_values`: refuse values the IOC could not hold (too long, bad JSON, NUL).

Text PVs are CHAR waveforms of :data:`MAX_LENGTH` bytes holding UTF-8 with a NUL
terminator, so a text holds at most :data:`MAX_TEXT_BYTES` bytes of UTF-8.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import BsrecError

__all__ = [
    "ENERGY_UNITS",
    "MAX_LENGTH",
    "MAX_TEXT_BYTES",
    "PVS",
    "MetadataValueError",
    "PVSpec",
    "check_value",
    "check_values",
    "default_values",
    "empty_snapshot",
    "set_dotted",
    "snapshot_from_values",
    "values_from_snapshot",
]

logger = logging.getLogger("bluesky_recorders.metadata")

#: Elements of every text PV (a CHAR waveform).
MAX_LENGTH = 4096
#: Longest text a PV holds, in bytes of UTF-8 (one element is the NUL terminator).
MAX_TEXT_BYTES = MAX_LENGTH - 1
#: Units of ``instrument:mono_energy``.
ENERGY_UNITS = "keV"

TEXT, USERS, OBJECT, FLOAT = "text", "users", "object", "float"


@dataclass(frozen=True)
class PVSpec:
    """One PV of the metadata IOC.

    ``kind`` is ``"text"``, ``"users"`` (JSON list of ``{name, email}``), ``"object"``
    (JSON object) or ``"float"`` (NaN on the PV, None in the snapshot, when unknown).
    ``key`` is the dotted key of ``bsrec metadata set`` ("" when not settable).
    """

    suffix: str
    kind: str
    key: str
    default: Any
    doc: str


PVS: tuple[PVSpec, ...] = (
    PVSpec("proposal:id", TEXT, "proposal.id", "", "Proposal id, e.g. GUP-12345"),
    PVSpec("proposal:title", TEXT, "proposal.title", "", "Proposal title"),
    PVSpec("safety_form:id", TEXT, "safety_form.id", "", "Safety form id, e.g. ESAF-2027-1"),
    PVSpec("pi:name", TEXT, "pi.name", "", "Principal investigator's full name"),
    PVSpec("pi:last_name", TEXT, "pi.last_name", "", "PI's last name (names the data folder)"),
    PVSpec("pi:email", TEXT, "pi.email", "", "PI's e-mail address"),
    PVSpec("users", USERS, "users", "[]", 'JSON list of {"name": ..., "email": ...}'),
    PVSpec("sample:name", TEXT, "sample.name", "", "Sample name"),
    PVSpec("sample:description", TEXT, "sample.description", "", "Sample description"),
    PVSpec("sample:formula", TEXT, "sample.formula", "", "Sample chemical formula"),
    PVSpec("sample:extra", OBJECT, "sample.extra", "{}", "JSON object: more sample fields"),
    PVSpec("beamline:id", TEXT, "beamline.id", "", "Beamline id, e.g. BL-9"),
    PVSpec("instrument:source", TEXT, "instrument.source", "", "Source, e.g. bending magnet"),
    PVSpec(
        "instrument:mono_energy",
        FLOAT,
        "instrument.mono_energy",
        math.nan,
        "Monochromator energy in keV (NaN when unknown)",
    ),
    PVSpec("instrument:description", TEXT, "instrument.description", "", "Instrument notes"),
    PVSpec("instrument:extra", OBJECT, "instrument.extra", "{}", "JSON object: more fields"),
    PVSpec("data_directory", TEXT, "data_directory", "", "The experiment's data directory"),
    PVSpec("updated", TEXT, "", "", "ISO time of the last change (set by the IOC)"),
)

_BY_SUFFIX = {spec.suffix: spec for spec in PVS}
_BY_KEY = {spec.key: spec for spec in PVS if spec.key}
# The snapshot's own names, accepted as dotted keys too.
_ALIASES = {
    "sample.chemical_formula": "sample.formula",
    "instrument.monochromator_energy": "instrument.mono_energy",
}
_EXTRA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_FLOAT = re.compile(r"^\s*(?P<num>[^\s]+?)\s*(?:kev)?\s*$", re.IGNORECASE)


class MetadataValueError(BsrecError, ValueError):
    """A metadata key or value is refused (the key/PV and the cause are named)."""


# -- values (PV suffix -> value) -------------------------------------------------------


def default_values() -> dict[str, Any]:
    """The PV values of an empty service."""
    return {spec.suffix: spec.default for spec in PVS}


def _text(value: Any) -> str:
    """A PV value as read (str, bytes, numpy char array or None) as text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.partition(b"\0")[0].decode("utf-8", errors="replace")
    if not isinstance(value, str) and hasattr(value, "tobytes"):
        return value.tobytes().partition(b"\0")[0].decode("utf-8", errors="replace")
    return str(value)


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _parse_users(text: str, *, where: str) -> list[dict[str, str]]:
    """A users JSON text as a list of ``{"name", "email"}``; MetadataValueError if bad.

    Messages never quote the text: it holds e-mail addresses, and they are logged
    (:func:`snapshot_from_values`, the IOC refusing a put). The same for objects below.
    """
    if not text.strip():
        return []
    try:
        users = json.loads(text)
    except ValueError as exc:
        raise MetadataValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(users, list):
        raise MetadataValueError(
            f'{where}: must be a JSON list of {{"name": ..., "email": ...}}, '
            f"got {type(users).__name__}"
        )
    out = []
    for i, user in enumerate(users):
        if isinstance(user, str):
            user = {"name": user}
        if not isinstance(user, dict):
            raise MetadataValueError(
                f"{where}: user {i} must be an object with name and email, "
                f"got {type(user).__name__}"
            )
        unknown = sorted(set(user) - {"name", "email"})
        if unknown:
            raise MetadataValueError(
                f"{where}: user {i} has unknown field(s) {', '.join(unknown)} (only name and email)"
            )
        for field in ("name", "email"):
            if not isinstance(user.get(field, ""), str):
                raise MetadataValueError(f"{where}: user {i} {field} must be a string")
        out.append({"name": user.get("name", ""), "email": user.get("email", "")})
    return out


def _parse_object(text: str, *, where: str) -> dict[str, Any]:
    """A JSON object text as a dict; MetadataValueError if bad."""
    if not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise MetadataValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MetadataValueError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _lenient(parse, text: str, suffix: str, empty):
    """Parse a structured PV for a snapshot: a bad value is logged, not raised."""
    try:
        return parse(text, where=f"PV {suffix}")
    except MetadataValueError as exc:
        logger.warning("metadata %s; recorded as empty", exc)
        return empty


# -- snapshot ----------------------------------------------------------------------------


def snapshot_from_values(values: dict[str, object]) -> dict[str, Any]:
    """The ``experiment`` snapshot from PV values (suffix -> value, as read).

    Missing suffixes take their defaults; a structured PV holding bad JSON becomes empty
    (with a WARNING on ``bluesky_recorders.metadata``), so a run start never fails here.
    """
    v = {spec.suffix: values.get(spec.suffix, spec.default) for spec in PVS}
    t = {s: _text(x) for s, x in v.items() if _BY_SUFFIX[s].kind != FLOAT}
    return {
        "proposal_id": t["proposal:id"],
        "title": t["proposal:title"],
        "safety_form_id": t["safety_form:id"],
        "pi": {"name": t["pi:name"], "last_name": t["pi:last_name"], "email": t["pi:email"]},
        "users": _lenient(_parse_users, t["users"], "users", []),
        "sample": {
            "name": t["sample:name"],
            "description": t["sample:description"],
            "chemical_formula": t["sample:formula"],
            "extra": _lenient(_parse_object, t["sample:extra"], "sample:extra", {}),
        },
        "beamline_id": t["beamline:id"],
        "instrument": {
            "source": t["instrument:source"],
            "monochromator_energy": _float_or_none(v["instrument:mono_energy"]),
            "energy_units": ENERGY_UNITS,
            "description": t["instrument:description"],
            "extra": _lenient(_parse_object, t["instrument:extra"], "instrument:extra", {}),
        },
        "data_directory": t["data_directory"],
        "updated": t["updated"],
    }


def empty_snapshot() -> dict[str, Any]:
    """The snapshot of a service that knows nothing (or cannot be read)."""
    return snapshot_from_values({})


def values_from_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """PV values (suffix -> value) from a snapshot: the inverse of
    :func:`snapshot_from_values`. Missing parts take the defaults."""
    pi = snapshot.get("pi") or {}
    sample = snapshot.get("sample") or {}
    inst = snapshot.get("instrument") or {}
    energy = inst.get("monochromator_energy")
    return {
        "proposal:id": snapshot.get("proposal_id", ""),
        "proposal:title": snapshot.get("title", ""),
        "safety_form:id": snapshot.get("safety_form_id", ""),
        "pi:name": pi.get("name", ""),
        "pi:last_name": pi.get("last_name", ""),
        "pi:email": pi.get("email", ""),
        "users": _dumps(list(snapshot.get("users") or [])),
        "sample:name": sample.get("name", ""),
        "sample:description": sample.get("description", ""),
        "sample:formula": sample.get("chemical_formula", ""),
        "sample:extra": _dumps(dict(sample.get("extra") or {})),
        "beamline:id": snapshot.get("beamline_id", ""),
        "instrument:source": inst.get("source", ""),
        "instrument:mono_energy": math.nan if energy is None else float(energy),
        "instrument:description": inst.get("description", ""),
        "instrument:extra": _dumps(dict(inst.get("extra") or {})),
        "data_directory": snapshot.get("data_directory", ""),
        "updated": snapshot.get("updated", ""),
    }


# -- validation and assignment ------------------------------------------------------------


def _check_text(text: str, *, where: str) -> None:
    if "\0" in text:
        raise MetadataValueError(f"{where}: NUL characters are not allowed")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise MetadataValueError(
            f"{where}: value is {len(text)} characters ({size} bytes of UTF-8), longer than "
            f"the {MAX_TEXT_BYTES} bytes a metadata PV holds"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MetadataValueError(f"{where}: not encodable as UTF-8 ({exc})") from None


def check_value(suffix: str, value: Any) -> Any:
    """Check one PV value before it is written; return it normalised (float or str).

    Raises :class:`MetadataValueError` naming the PV for an unknown suffix, a text too
    long for the PV, NUL characters, bad JSON or a non-number energy.
    """
    spec = _BY_SUFFIX.get(suffix)
    where = f"PV {suffix}"
    if spec is None:
        raise MetadataValueError(f"{where}: not a metadata PV (known: {', '.join(_BY_SUFFIX)})")
    if spec.kind == FLOAT:
        if value is None or value == "":
            return math.nan
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetadataValueError(f"{where}: {value!r} is not a number") from None
        if math.isinf(number):
            raise MetadataValueError(f"{where}: {value!r} is not a finite number")
        return number
    if not isinstance(value, str):
        raise MetadataValueError(f"{where}: expected a string, got {type(value).__name__}")
    _check_text(value, where=where)
    if spec.kind == USERS:
        _parse_users(value, where=where)
    elif spec.kind == OBJECT:
        _parse_object(value, where=where)
    return value


def check_values(values: dict[str, Any]) -> dict[str, Any]:
    """:func:`check_value` for each item; return the normalised dict."""
    return {suffix: check_value(suffix, value) for suffix, value in values.items()}


def _parse_energy(key: str, text: str) -> float:
    if not text.strip():
        return math.nan
    match = _FLOAT.match(text)
    try:
        number = float(match["num"]) if match else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise MetadataValueError(
            f"metadata key {key!r}: {text!r} is not a positive energy in {ENERGY_UNITS} "
            "(e.g. 8.05; empty clears it)"
        )
    return number


def set_dotted(values: dict[str, Any], key: str, text: str) -> dict[str, Any]:
    """Apply one ``bsrec metadata set KEY=TEXT`` assignment to PV values.

    Returns a new dict (``values`` is left alone) holding every PV value. ``users`` and
    ``sample.extra``/``instrument.extra`` take JSON; ``instrument.mono_energy`` a number
    in keV (an empty text clears it); ``sample.<name>``/``instrument.<name>`` for any other
    name set ``<name>`` (as a string) in the extra JSON object, and an empty text removes it.

    Raises :class:`MetadataValueError` naming the key for an unknown key or a bad value.
    """
    if not isinstance(text, str):
        raise MetadataValueError(f"metadata key {key!r}: expected a string value")
    new = {**default_values(), **values}
    key = _ALIASES.get(key.strip(), key.strip())
    where = f"metadata key {key!r}"
    _check_text(text, where=where)
    spec = _BY_KEY.get(key)
    if spec is not None:
        if spec.kind == FLOAT:
            new[spec.suffix] = _parse_energy(key, text)
        elif spec.kind == USERS:
            new[spec.suffix] = _dumps(_parse_users(text, where=where))
        elif spec.kind == OBJECT:
            new[spec.suffix] = _dumps(_parse_object(text, where=where))
        else:
            new[spec.suffix] = text
        return new
    group, _, name = key.partition(".")
    if group in ("sample", "instrument") and name:
        if name == "energy_units":
            raise MetadataValueError(f"{where}: the energy is always in {ENERGY_UNITS}")
        if not _EXTRA_NAME.match(name):
            raise MetadataValueError(
                f"{where}: {name!r} is not a valid field name (letters, digits, _ and -, "
                "not starting with a digit)"
            )
        suffix = f"{group}:extra"
        extra = _lenient(_parse_object, _text(new[suffix]), suffix, {})
        if text:
            extra[name] = text
        else:
            extra.pop(name, None)
        encoded = _dumps(extra)
        _check_text(encoded, where=f"{where} (PV {suffix})")
        new[suffix] = encoded
        return new
    if key == "updated":
        raise MetadataValueError(f"{where}: set by the metadata IOC on every change")
    raise MetadataValueError(
        f"unknown metadata key {key!r}; known keys: {', '.join(_BY_KEY)}, "
        "sample.<name>, instrument.<name>"
    )
