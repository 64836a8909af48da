"""The ophyd device in front of the metadata IOC, and its hook into the RunEngine.

- :class:`MetadataService`: one ``EpicsSignal`` per PV of :data:`model.PVS` (all
  ``kind="config"``, so ``read_configuration()`` holds them), :meth:`~MetadataService.snapshot`
  and :meth:`~MetadataService.write_values`.
- :func:`attach_metadata`: one line puts the service's snapshot into every start document::

      detach = attach_metadata(RE, MetadataService("BL:MD:", name="metadata"))

Text PVs carry UTF-8. ophyd's caproto control layer decodes character waveforms with
caproto's client encoding (``CAPROTO_STRING_ENCODING``, latin-1 by default), so the text
signals here re-encode what crosses the wire: any unicode text round-trips.
"""

from __future__ import annotations

import codecs
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg, single_gen
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, Kind

from ..epics import ca_env_summary, use_caproto
from ..errors import BeamlineError
from . import model

__all__ = [
    "METADATA_STREAM",
    "MetadataService",
    "MetadataUnavailableError",
    "TextSignal",
    "attach_metadata",
]

logger = logging.getLogger("bluesky_recorders.metadata")

#: Name of the one-event stream that records the service's PVs in every run.
METADATA_STREAM = "metadata"


class MetadataUnavailableError(BeamlineError):
    """The metadata service could not be read and the run requires it (run refused)."""


def _wire_encoding() -> str:
    from caproto.client.common import STR_ENC

    return codecs.lookup(STR_ENC).name


def _to_wire(text: str) -> str:
    """The str whose encoding with the client's codec is ``text``'s UTF-8 bytes."""
    enc = _wire_encoding()
    return text if enc == "utf-8" else text.encode("utf-8").decode(enc)


def _from_wire(text: str) -> str:
    """Undo :func:`_to_wire` on a string decoded by the client's codec."""
    enc = _wire_encoding()
    if enc == "utf-8":
        return text
    return text.encode(enc, errors="replace").decode("utf-8", errors="replace")


class TextSignal(EpicsSignal):
    """A long UTF-8 string in a CHAR waveform, read fresh at every ``get()``.

    ``string=True`` and ``auto_monitor=False`` by default; puts wait for completion.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("string", True)
        kwargs.setdefault("auto_monitor", False)
        kwargs.setdefault("put_complete", True)
        super().__init__(*args, **kwargs)

    def get(self, **kwargs):
        value = super().get(**kwargs)
        return _from_wire(value) if isinstance(value, str) else value

    def put(self, value, **kwargs):
        super().put(_to_wire(value) if isinstance(value, str) else value, **kwargs)

    def describe(self):
        """As EpicsSignal's, without the CHAR control limits (bytes, not JSON-able)."""
        desc = super().describe()
        for key in ("lower_ctrl_limit", "upper_ctrl_limit"):
            desc[self.name].pop(key, None)
        return desc


def _text(suffix: str) -> Cpt:
    return Cpt(TextSignal, suffix, kind="config", doc=f"PV {suffix}")


class MetadataService(Device):
    """The metadata IOC's PVs (``<prefix><suffix>``), all ``kind="config"``.

    ``updated`` is also ``normal``, so ``read()`` (the ``metadata`` stream's event) holds it.
    """

    proposal_id = _text("proposal:id")
    proposal_title = _text("proposal:title")
    safety_form_id = _text("safety_form:id")
    pi_name = _text("pi:name")
    pi_last_name = _text("pi:last_name")
    pi_email = _text("pi:email")
    users = _text("users")
    sample_name = _text("sample:name")
    sample_description = _text("sample:description")
    sample_formula = _text("sample:formula")
    sample_extra = _text("sample:extra")
    beamline_id = _text("beamline:id")
    instrument_source = _text("instrument:source")
    instrument_mono_energy = Cpt(
        EpicsSignal,
        "instrument:mono_energy",
        kind="config",
        auto_monitor=False,
        put_complete=True,
        doc="PV instrument:mono_energy (keV)",
    )
    instrument_description = _text("instrument:description")
    instrument_extra = _text("instrument:extra")
    data_directory = _text("data_directory")
    updated = Cpt(
        TextSignal,
        "updated",
        kind=Kind.normal | Kind.config,
        put_complete=False,
        doc="PV updated (also read as the event of the metadata stream)",
    )

    def __init__(self, prefix: str = "BL:MD:", *, name: str = "metadata", **kwargs):
        use_caproto()
        super().__init__(prefix, name=name, **kwargs)

    # -- helpers ------------------------------------------------------------------------

    def signal_for(self, suffix: str) -> EpicsSignal:
        """The signal of PV ``<prefix><suffix>``."""
        if suffix not in {spec.suffix for spec in model.PVS}:
            raise model.MetadataValueError(f"PV {suffix}: not a metadata PV")
        return getattr(self, suffix.replace(":", "_"))

    def _pv_signals(self) -> dict[str, EpicsSignal]:
        return {spec.suffix: self.signal_for(spec.suffix) for spec in model.PVS}

    def _unreachable(self, suffixes: list[str], timeout: float, cause: str) -> BeamlineError:
        pvs = ", ".join(f"{self.prefix}{s}" for s in suffixes)
        return BeamlineError(
            f"metadata service {self.prefix!r} not reachable within {timeout:g} s: {cause}; "
            f"PV(s): {pvs} (client settings: {ca_env_summary()}). Is the metadata IOC running "
            "(`bsrec sim status` or `bsrec metadata-ioc`) and in the address list?"
        )

    def _connect(self, timeout: float, deadline: float) -> None:
        try:
            self.wait_for_connection(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            missing = [s for s, sig in self._pv_signals().items() if not sig.connected]
            raise self._unreachable(missing, timeout, "PVs did not connect") from None

    # -- public API -----------------------------------------------------------------------

    def read_values(self, timeout: float = 2.0) -> dict[str, Any]:
        """Every PV's value (suffix -> value), read now over Channel Access.

        Raises :class:`BeamlineError` naming the PVs and the address list if the IOC does
        not answer within about ``timeout`` seconds (never hangs).
        """
        deadline = time.monotonic() + timeout
        self._connect(timeout, deadline)
        values: dict[str, Any] = {}
        for suffix, sig in self._pv_signals().items():
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                values[suffix] = sig.get(timeout=remaining, connection_timeout=remaining)
            except Exception as exc:  # ophyd/caproto raise several timeout/disconnect kinds
                raise self._unreachable(
                    [suffix], timeout, f"read failed ({type(exc).__name__}: {exc})"
                ) from exc
        return values

    def snapshot(self, timeout: float = 2.0) -> dict[str, Any]:
        """The ``experiment`` snapshot (see :func:`model.snapshot_from_values`).

        Raises :class:`BeamlineError` within about ``timeout`` seconds if unreachable.
        """
        return model.snapshot_from_values(self.read_values(timeout=timeout))

    def write_values(self, values: dict[str, Any], *, timeout: float = 5.0) -> None:
        """Put ``values`` (suffix -> value), each waiting for the IOC's put-completion.

        Values are checked first (:func:`model.check_values`: nothing is written if one
        is refused, :class:`model.MetadataValueError`); ``updated`` is the IOC's and is
        refused here. Raises :class:`BeamlineError` if the IOC does not answer in time
        or a PV does not hold the value afterwards.
        """
        if "updated" in values:
            raise model.MetadataValueError("PV updated: set by the metadata IOC, not writable")
        values = model.check_values(values)
        deadline = time.monotonic() + timeout
        self._connect(timeout, deadline)
        for suffix, value in values.items():
            sig = self.signal_for(suffix)
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                sig.set(value, timeout=remaining).wait(timeout=remaining)
            except Exception as exc:
                raise self._unreachable(
                    [suffix], timeout, f"put failed ({type(exc).__name__}: {exc})"
                ) from exc
        if not values:
            return
        now = self.read_values(timeout=max(deadline - time.monotonic(), 0.5))
        wrong = [s for s, v in values.items() if not _same(now[s], v)]
        if wrong:
            raise BeamlineError(
                f"metadata service {self.prefix!r} did not take the value(s) of "
                + ", ".join(f"{self.prefix}{s}" for s in wrong)
                + " (see the metadata IOC's log)"
            )


def _same(read: Any, wanted: Any) -> bool:
    if isinstance(wanted, float):
        try:
            read = float(read)
        except (TypeError, ValueError):
            return False
        return (math.isnan(read) and math.isnan(wanted)) or read == wanted
    return read == wanted


# -- RunEngine hook ---------------------------------------------------------------------------


def _metadata_stream(service: MetadataService, run: Any):
    """One event in stream ``metadata``: the descriptor's configuration holds the PVs."""
    yield Msg("create", None, name=METADATA_STREAM, run=run)
    yield Msg("read", service, run=run)
    yield Msg("save", None, run=run)


def attach_metadata(
    RE,  # noqa: N803 - what every bluesky user calls the RunEngine
    service: MetadataService,
    *,
    key: str = "experiment",
    require_metadata: bool = False,
    timeout: float = 2.0,
) -> Callable[[], None]:
    """Read ``service`` at every run start (every ``open_run``, nested runs too).

    The start document gets ``start[key]`` (the snapshot) and ``start["metadata_status"]``
    (``"ok"``), and the run a one-event stream ``metadata`` whose descriptor's
    ``configuration["metadata"]`` holds ``service.read_configuration()`` (its event holds
    ``metadata_updated``). If the service cannot be read within ``timeout``: by default
    the run goes on with a WARNING on ``bluesky_recorders.metadata``,
    ``metadata_status="unavailable"``, the empty snapshot and no ``metadata`` stream;
    with ``require_metadata=True`` the run is refused before it starts with
    :class:`MetadataUnavailableError`. Returns a function that detaches the hook.
    """

    def preprocessor(plan):
        # plan_mutator passes the messages we yield through on_open_run again: remember
        # ours (per plan, holding references so that their ids stay unique).
        produced: dict[int, Msg] = {}

        def on_open_run(msg: Msg):
            if msg.command != "open_run" or id(msg) in produced:
                return None, None
            new, tail = _open_run_with_metadata(msg)
            produced[id(new)] = new
            return single_gen(new), tail

        return plan_mutator(plan, on_open_run)

    def _open_run_with_metadata(msg: Msg):
        try:
            snapshot = service.snapshot(timeout=timeout)
        except BeamlineError as exc:
            if require_metadata:
                raise MetadataUnavailableError(
                    f"run refused: the metadata service {service.name!r} "
                    f"({service.prefix}) could not be read and require_metadata=True: {exc}"
                ) from exc
            logger.warning(
                "METADATA UNAVAILABLE: this run starts without experiment metadata "
                "(start[%r] is empty, metadata_status='unavailable'): %s",
                key,
                exc,
            )
            kwargs = {**msg.kwargs, key: model.empty_snapshot(), "metadata_status": "unavailable"}
            return msg._replace(kwargs=kwargs), None
        kwargs = {**msg.kwargs, key: snapshot, "metadata_status": "ok"}
        return msg._replace(kwargs=kwargs), _metadata_stream(service, msg.run)

    RE.preprocessors.append(preprocessor)

    def detach() -> None:
        """Stop reading the metadata service at run start (idempotent)."""
        if preprocessor in RE.preprocessors:
            RE.preprocessors.remove(preprocessor)

    return detach
