# bsrec session start-up: a RunEngine, the beamline's devices and the recorders.
# Options come from `bsrec session` (see bluesky_recorders.session.options_from_env).
from bluesky_recorders.session import options_from_env as _options, setup_session as _setup

_session = _setup(**_options())
globals().update(_session.namespace())
print(_session.banner())
del _options, _setup
