"""procfs: a pid with its start time names one process; a zombie or a reused pid does not."""

import os
import subprocess
import sys
import time

from contained import procfs


def test_this_process_is_alive_by_pid_and_start_time():
    started = procfs.start_time(os.getpid())
    assert started is not None and started > 0
    assert procfs.alive(os.getpid(), started)
    assert procfs.running(os.getpid())


def test_another_start_time_is_another_process():
    """What a reused pid looks like: the number matches, the start time does not."""
    started = procfs.start_time(os.getpid())
    assert not procfs.alive(os.getpid(), started + 1)


def test_a_record_without_a_pid_or_start_time_names_nothing():
    assert not procfs.alive(None, 123)
    assert not procfs.alive(os.getpid(), None)


def test_a_zombie_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procfs.start_time(child.pid)
    deadline = time.monotonic() + 10
    while procfs.running(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not waited for: a zombie, still in /proc
    assert procfs.start_time(child.pid) == started
    assert not procfs.running(child.pid)
    assert not procfs.alive(child.pid, started)
    child.wait()
    assert procfs.start_time(child.pid) is None  # reaped: gone from /proc
