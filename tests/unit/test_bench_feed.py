"""benchmarks/bench_feed.py's measure of what the viewer costs: the CPU of a process and
of every process it started, read from /proc. No timing is asserted."""

import subprocess
import sys

import pytest

from benches import bench_module

# Spins 0.3 s of CPU, says so, then waits for its stdin to close.
SPIN = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("spun", flush=True)
sys.stdin.read()
"""
# Starts SPIN in a child and spins as SPIN does; its stdin closing ends both.
PARENT = """
import subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE
)
assert child.stdout.readline() == b"spun\\n"
exec(sys.argv[1])
child.stdin.close()
child.wait()
"""


@pytest.fixture(scope="module")
def bench():
    with bench_module("bench_feed") as module:
        yield module


def test_tree_cpu_counts_a_process_and_the_processes_it_started(bench):
    command = [sys.executable, "-c", PARENT, SPIN]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, **pipes) as proc:
        assert proc.stdout.readline() == "spun\n"
        # each spun 0.3 s of CPU (and started Python): the two together, 0.6 s or more
        assert bench.tree_cpu([proc.pid]) >= 0.55
        assert bench.tree_cpu([]) == 0.0
        proc.stdin.close()
