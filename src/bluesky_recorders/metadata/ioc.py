"""The metadata service IOC: a caproto PVGroup serving the PVs of :data:`model.PVS`.

Text PVs are CHAR waveforms of :data:`model.MAX_LENGTH` bytes holding UTF-8 (not
``report_as_string``, which makes the native type DBR_STRING, cut at 40 characters; see
decision 0003); ``instrument:mono_energy`` is a double (NaN when unknown); ``updated`` is
read-only and set by the IOC to the ISO time of every change.

Values survive a restart: after every put that changes a value, the IOC writes all values
to ``--state-file`` atomically (a temporary file in the same folder, fsync, ``os.replace``,
mode 0640 less the umask), so even a SIGKILL leaves the last complete state. At start the
file is loaded if present; a corrupt file is logged, kept aside as
``<name>.corrupt-<time>`` and the IOC starts empty. Structured PVs refuse puts of bad JSON.

Run it with::

    python -m bluesky_recorders.metadata.ioc --prefix BL:MD: --state-file PATH \
        --interfaces 127.0.0.1 --list-pvs
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import math
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty, run, template_arg_parser
from caproto.server.server import PvpropertyChar

from . import model

__all__ = [
    "MetadataIOC",
    "STATE_VERSION",
    "load_state",
    "main",
    "make_ioc",
    "save_state",
    "values_from_state",
]

logger = logging.getLogger("bluesky_recorders.metadata.ioc")
STATE_VERSION = 1
_loading = contextvars.ContextVar("_loading", default=False)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- the state file ------------------------------------------------------------------------


def values_from_state(data: Any) -> dict[str, Any]:
    """PV values from a parsed state file; ``ValueError`` if it is not a valid one.

    Unknown PVs (from another version) are ignored with a warning; missing ones take
    their defaults.
    """
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise ValueError('not a metadata state (an object with a "values" object)')
    values = model.default_values()
    for suffix, value in data["values"].items():
        if suffix not in values:
            logger.warning("state file: ignoring unknown PV %r", suffix)
            continue
        if value is None and suffix == "instrument:mono_energy":
            value = math.nan
        try:
            values[suffix] = model.check_value(suffix, value)
        except model.MetadataValueError as exc:
            raise ValueError(str(exc)) from None
    return values


def save_state(path: str | os.PathLike, values: dict[str, Any], *, prefix: str = "") -> None:
    """Write ``values`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    energy = values.get("instrument:mono_energy")
    plain = dict(values)
    if isinstance(energy, float) and not math.isfinite(energy):
        plain["instrument:mono_energy"] = None
    text = json.dumps(
        {"version": STATE_VERSION, "prefix": prefix, "saved_at": _now(), "values": plain},
        ensure_ascii=False,
        indent=1,
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The PV values saved in ``path``; the defaults if it does not exist.

    A file that cannot be read or parsed is logged at ERROR, renamed to
    ``<name>.corrupt-<UTC time>`` and the defaults are returned: never raises for it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        logger.info("no state file %s yet: starting empty", path)
        return model.default_values()
    except OSError as exc:
        problem = f"cannot be read ({exc})"
    else:
        try:
            return values_from_state(json.loads(raw.decode("utf-8")))
        except ValueError as exc:  # includes JSON and UTF-8 decoding errors
            problem = f"is corrupt ({exc})"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
        kept = f"kept aside as {aside}"
    except OSError as exc:
        kept = f"could not be moved aside ({exc})"
    logger.error("metadata state file %s %s; it was %s; starting empty", path, problem, kept)
    return model.default_values()


# -- the PV group --------------------------------------------------------------------------


def _attr(suffix: str) -> str:
    return suffix.replace(":", "_")


async def _put(group: _MetadataBase, instance, value):
    """Putter of every writable PV: validate, persist all values, bump ``updated``."""
    if _loading.get():
        return value
    suffix = instance.pvspec.name
    value = model.check_value(suffix, value)  # a ValueError refuses the put
    old = instance.value
    if value == old or (isinstance(value, float) and math.isnan(value) and math.isnan(old)):
        return value
    await group.record_change({suffix: value})
    return value


class _TextChannel(PvpropertyChar):
    """A writable UTF-8 CHAR waveform that also accepts the empty string.

    caproto 1.3 fails to convert an empty string arriving in a CHAR waveform with a
    string encoding (``invalid literal for int()``): such a put is written as ``""``.
    """

    async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
        raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
        if data_type in (ChannelType.CHAR,) and not raw.partition(b"\0")[0]:
            return await self.write("", flags=flags)
        return await super().write_from_dbr(data, data_type, metadata, flags=flags)


def _make_property(spec: model.PVSpec, value: Any) -> pvproperty:
    if spec.kind == model.FLOAT:
        return pvproperty(
            name=spec.suffix,
            value=float(value),
            dtype=float,
            precision=4,
            units=model.ENERGY_UNITS,
            put=_put,
            doc=spec.doc,
        )
    return pvproperty(
        name=spec.suffix,
        value=value,
        dtype=ChannelType.CHAR if spec.suffix == "updated" else _TextChannel,
        max_length=model.MAX_LENGTH,
        string_encoding="utf-8",
        read_only=spec.suffix == "updated",
        put=None if spec.suffix == "updated" else _put,
        doc=spec.doc,
    )


class _MetadataBase(PVGroup):
    """Behaviour of the metadata IOC; the PVs are added by :func:`_group_class`."""

    def __init__(self, *args, state_file: str | os.PathLike | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_file = Path(state_file) if state_file is not None else None

    def current_values(self) -> dict[str, Any]:
        """Every PV's value (suffix -> value)."""
        return {spec.suffix: getattr(self, _attr(spec.suffix)).value for spec in model.PVS}

    async def record_change(self, changed: dict[str, Any]) -> None:
        """Save the values with ``changed`` applied and a new ``updated``, then set it."""
        now = _now()
        values = {**self.current_values(), **changed, "updated": now}
        if self.state_file is not None:
            try:
                save_state(self.state_file, values, prefix=self.prefix)
            except OSError as exc:
                logger.error("cannot save metadata state to %s: %s", self.state_file, exc)
                raise
        token = _loading.set(True)
        try:
            await getattr(self, _attr("updated")).write(now)
        finally:
            _loading.reset(token)
        logger.info("metadata changed: %s", ", ".join(changed))


def _group_class(values: dict[str, Any]) -> type[_MetadataBase]:
    """A PVGroup class whose PVs start with ``values``."""
    attrs: dict[str, Any] = {
        _attr(spec.suffix): _make_property(spec, values.get(spec.suffix, spec.default))
        for spec in model.PVS
    }
    attrs["__doc__"] = _MetadataBase.__doc__
    attrs["__module__"] = __name__
    return type("MetadataIOC", (_MetadataBase,), attrs)


#: The metadata IOC's PVGroup with empty values (``make_ioc`` loads a state file).
MetadataIOC = _group_class(model.default_values())
MetadataIOC.__doc__ = """The metadata service: one PV per :data:`model.PVS` entry."""


def make_ioc(*, prefix: str = "BL:MD:", state_file: str | os.PathLike | None = None, **kwargs):
    """A metadata IOC group, its values loaded from ``state_file`` (if given and present)."""
    values = model.default_values()
    if state_file is not None:
        Path(state_file).parent.mkdir(parents=True, exist_ok=True)
        values = load_state(state_file)
    return _group_class(values)(prefix=prefix, state_file=state_file, **kwargs)


async def _sigterm_like_sigint(async_lib) -> None:
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: caproto's standard IOC options plus ``--state-file``."""
    parser, split_args = template_arg_parser(
        default_prefix="BL:MD:",
        desc=textwrap.dedent(__doc__ or "").strip().splitlines()[0],
        supported_async_libs=["asyncio"],
    )
    parser.add_argument(
        "--state-file",
        default=None,
        help="JSON file the values are saved to on every change and loaded from at start "
        "(default: none, values are lost at exit)",
    )
    args = parser.parse_args(argv)
    ioc_options, run_options = split_args(args)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("[%(levelname)1.1s %(asctime)s metadata_ioc] %(message)s")
    )
    package_logger = logging.getLogger("bluesky_recorders.metadata")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    ioc = make_ioc(state_file=args.state_file, **ioc_options)
    # SIGTERM behaves like Ctrl-C. Until the event loop runs, by raising KeyboardInterrupt;
    # then like asyncio's own SIGINT handler, which cancels the server task cleanly (a
    # KeyboardInterrupt raised inside a client's connection handler can hang caproto's
    # shutdown). Values are saved at every put, so there is nothing to flush.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(ioc.pvdb, startup_hook=_sigterm_like_sigint, **run_options)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
