"""The metadata service: run metadata from one EPICS IOC, into every start document.

- :mod:`.model`: the PVs, the ``experiment`` snapshot and its validation (pure);
- :mod:`.ioc`: the caproto IOC (``bsrec metadata-ioc``), its values kept in a state file;
- :mod:`.device`: the ophyd ``MetadataService`` and ``attach_metadata(RE, service)``;
- :mod:`.schedule`: beamtimes from a schedule file or a facility scheduling API;
- :mod:`.cli`: ``bsrec metadata sync|set|show``.

Names are imported lazily: starting the IOC does not import ophyd.
"""

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
