"""The metadata service: run metadata from one EPICS IOC, into every start document.

- :mod:`.model`: the PVs, the ``experiment`` snapshot and its validation (pure);
- :mod:`.ioc`: the caproto IOC (``bsrec metadata-ioc``), its values kept in a state file;
- :mod:`.device`: the ophyd ``MetadataService`` and ``attach_metadata(RE, service)``;
- :mod:`.schedule`: beamtimes from a schedule file or a facility scheduling API;
- :mod:`.cli`: ``bsrec metadata sync|set|show``.

Names are imported lazily: starting the IOC does not import ophyd.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MetadataService": "device",
    "MetadataUnavailableError": "device",
    "attach_metadata": "device",
    "METADATA_STREAM": "device",
    "MetadataValueError": "model",
    "empty_snapshot": "model",
    "set_dotted": "model",
    "snapshot_from_values": "model",
    "values_from_snapshot": "model",
    "Beamtime": "schedule",
    "ScheduleClient": "schedule",
    "ScheduleError": "schedule",
    "active": "schedule",
    "load_schedule": "schedule",
    "to_snapshot": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
