"""`bsrec record --zmq`: the same recorders in another process, fed by bluesky's 0MQ proxy."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.plans import scan
from ophyd.sim import det, motor

from bluesky_recorders.runlog import RunLog
from procs import wait_for

BIN = Path(sys.executable).parent


def test_record_in_another_process_from_the_0mq_proxy(proxy, tmp_path):
    pin, pout = proxy
    config = tmp_path / "remote.toml"
    config.write_text(
        "[recorders.console]\nprogress = false\n\n"
        "[recorders.catalog]\ndirectory = '{data_root}/catalog'\n"
    )
    with open(tmp_path / "record.out", "w") as out:
        rec = subprocess.Popen(
            [
                str(BIN / "bsrec"),
                "record",
                "--zmq",
                f"127.0.0.1:{pout}",
                "--config",
                str(config),
                "--data-root",
                str(tmp_path / "data"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    try:
        wait_for(
            lambda: "listening" in (tmp_path / "record.out").read_text(),
            30,
            "bsrec record to listen",
        )
        RE = RunEngine({})
        publisher = Publisher(f"127.0.0.1:{pin}")
        RE.subscribe(publisher)
        time.sleep(2.0)  # PUB/SUB slow joiner: let both ends connect to the proxy
        (uid,) = RE(scan([det], motor, -1, 1, 7))
        log = RunLog(tmp_path / "data" / "bsrec-runs.sqlite")

        def recorded():
            return any(r.uid == uid and r.exit_status == "success" for r in log.recent())

        wait_for(recorded, 60, "the run to be recorded by the other process")
        (entry,) = [r for r in log.recent() if r.uid == uid]
        assert entry.num_events == {"primary": 7}
        assert "catalog" in entry.artifacts
        publisher.close()  # a 0MQ context left open keeps the interpreter from exiting
    finally:
        rec.send_signal(signal.SIGTERM)
        code = rec.wait(30)
    text = (tmp_path / "record.out").read_text()
    assert code == 0, text
    assert "Scan #1" in text and text.count("\n") > 7  # the console recorder printed the table

    from bluesky_recorders.catalog import close_catalog, open_catalog

    cat = open_catalog(tmp_path / "data" / "catalog")
    try:
        assert list(cat[uid].primary.read()["det"].shape) == [7]
    finally:
        close_catalog(cat)
