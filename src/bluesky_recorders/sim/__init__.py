"""A simulated beamline over real EPICS Channel Access on loopback.

Two caproto IOCs run as subprocesses (:class:`SimBeamline`): caproto's own
``mini_beamline`` (motors with point detectors, the beam current, a moving-dot camera)
and :mod:`bluesky_recorders.sim.ad_ioc`, an emulated areaDetector HDF5 file writer.
:func:`make_beamline` builds the ophyd devices in front of them.

Names are imported lazily, so that starting an IOC (``python -m
bluesky_recorders.sim.ad_ioc``) does not pay for importing ophyd.
"""

from importlib import import_module

_EXPORTS = {
    "CAConnectionError": "devices",
    "SimADHDF5Detector": "devices",
    "SimADStreamDetector": "devices",
    "configure_ca_env": "devices",
    "connect_all": "devices",
    "make_beamline": "devices",
    "SimBeamline": "manager",
    "SimBeamlineError": "manager",
    "SimBeamlineRunningError": "manager",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
