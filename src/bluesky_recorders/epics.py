"""Small helpers every EPICS (ophyd over Channel Access) part of the library shares."""

from __future__ import annotations

import os

__all__ = ["CLIENT_ENV_KEYS", "ca_env_summary", "use_caproto"]

#: The EPICS variables a Channel Access client uses to find IOCs.
CLIENT_ENV_KEYS = ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_SERVER_PORT")


def ca_env_summary() -> str:
    """The client EPICS variables in use, for error messages."""
    return ", ".join(f"{k}={os.environ.get(k, '<unset>')}" for k in CLIENT_ENV_KEYS)


def use_caproto() -> None:
    """Switch ophyd to its caproto control layer (lazily: importing ophyd is slow)."""
    import ophyd

    if getattr(ophyd.cl, "name", None) != "caproto":
        ophyd.set_cl("caproto")
