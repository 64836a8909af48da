"""A RunEngine in a process of its own, for ``test_kills.py`` to kill with SIGKILL.

::

    python _kill_child.py record CONFIG DATA_ROOT STATE_DIR PLAN... [--wait]
    python _kill_child.py publish ADDRESS STATE_DIR PLAN... [--wait]

``record``: the recorder set of the file CONFIG (``load_recorder_set``, data root
DATA_ROOT) is subscribed to the RunEngine, with the run-start check, as ``bsrec session``
does. ``publish``: only a bluesky 0MQ ``Publisher`` to the proxy's input ADDRESS is (the
recorders run in ``bsrec record``). The RunEngine's metadata is kept in STATE_DIR (a
``PersistentDict``, as the session keeps it), so scan ids go on in the next process.

Each PLAN is ``POINTS:DELAY``: ``scan([det], motor, -2, 2, POINTS)`` with ophyd's
simulated devices, sleeping DELAY seconds (``bps.sleep``) before each point.

With ``--wait`` the process reads commands on stdin, one a line: ``go`` starts the next
plan (each plan waits for one), ``finish`` skips the remaining points of the plan
running now (the run ends early, as a success).

Each start, event and stop document is printed as one JSON line ``[name, {...}]`` once
the recorders (or the publisher) had it: what the RunEngine produced. ``["done", {}]``
comes when every plan ran and the recorders (or the publisher) are closed.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any


def say(name: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps([name, fields]) + "\n")
    sys.stdout.flush()


def printer(name: str, doc: dict[str, Any]) -> None:
    if name == "start":
        say("start", uid=doc["uid"], scan_id=doc.get("scan_id"))
    elif name == "event":
        data = doc["data"]
        say(
            "event",
            seq_num=doc["seq_num"],
            time=doc["time"],
            motor=data.get("motor"),
            det=data.get("det"),
        )
    elif name == "stop":
        say(
            "stop",
            uid=doc["run_start"],
            exit_status=doc["exit_status"],
            num_events=doc.get("num_events", {}),
        )


class Commands:
    """``go`` and ``finish`` lines read from stdin on a thread of their own."""

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)
        self.finish = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                self.go.release()
            elif line.strip() == "finish":
                self.finish.set()


def main(argv: list[str]) -> None:
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky.plans import scan
    from bluesky.utils import PersistentDict
    from ophyd.sim import det, motor

    commands = Commands() if "--wait" in argv else None
    mode, *argv = [a for a in argv if a != "--wait"]
    if mode == "record":
        from bluesky_recorders import load_recorder_set
        from bluesky_recorders.preflight import install_preflight

        config, data_root, state, *plans = argv
        callback = load_recorder_set(config, data_root=data_root)
    elif mode == "publish":
        from bluesky.callbacks.zmq import Publisher

        address, state, *plans = argv
        callback = Publisher(address)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Path(state).mkdir(parents=True, exist_ok=True)
    RE = RunEngine(PersistentDict(state))  # noqa: N806 - what every bluesky user calls it
    RE.subscribe(callback)
    RE.subscribe(printer)  # after the recorders: a printed document was handed to them
    if mode == "record":
        install_preflight(RE, callback.preflight)
    finish = commands.finish if commands else threading.Event()

    for plan in plans:
        points, delay = plan.split(":")
        pause = float(delay)

        def per_step(detectors: Any, step: Any, pos_cache: Any, pause: float = pause) -> Any:
            if finish.is_set():
                return
            if pause:
                yield from bps.sleep(pause)
            yield from bps.one_nd_step(detectors, step, pos_cache)

        if commands:
            commands.go.acquire()
            finish.clear()
        RE(scan([det], motor, -2, 2, int(points), per_step=per_step))
    callback.close()
    say("done")


if __name__ == "__main__":
    main(sys.argv[1:])
