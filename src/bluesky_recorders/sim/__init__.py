"""A simulated beamline over real EPICS Channel Access on loopback.

Three caproto IOCs run as subprocesses (:class:`SimBeamline`): caproto's own
``mini_beamline`` (motors with point detectors, the beam current, a moving-dot camera),
:mod:`bluesky_recorders.sim.ad_ioc`, an emulated areaDetector HDF5 file writer, and the
metadata service (:mod:`bluesky_recorders.metadata.ioc`).
:func:`make_beamline` builds the ophyd devices in front of them.

Names are imported lazily, so that starting an IOC (``python -m
bluesky_recorders.sim.ad_ioc``) does not pay for importing ophyd.
"""

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
