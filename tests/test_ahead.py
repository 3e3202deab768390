"""The CLI's worker forked ahead (contained.runtime.ahead): it keeps nothing of the caller's,
does the request it is handed, and leaves nothing behind when it is never handed one."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_root

from contained import cli
from contained.runtime.ahead import Worker

VENV_CONTAINED = Path(sys.executable).parent / "contained"


def children() -> set[int]:
    """This process's children now (every thread's: pytest may have some)."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        found |= {int(pid) for pid in (task / "children").read_text().split()}
    return found


def gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped already: not ours any more
    return False


def open_descriptors(pid: int, timeout: float = 10) -> list[str]:
    """What the worker holds once it has forgotten the caller (it closes the rest at once)."""
    deadline = time.monotonic() + timeout
    while True:
        fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
        if len(fds) <= 4 or time.monotonic() > deadline:
            return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds if int(fd) > 2]
        time.sleep(0.01)


def test_an_unused_worker_exits_when_closed_and_is_reaped(home):
    worker = Worker()
    pid = worker.pid
    assert pid in children()
    worker.close()
    assert gone(pid) and pid not in children()
    worker.close()  # twice is fine


def test_the_worker_keeps_only_its_socket_of_the_callers_descriptors(home, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("the caller's\n")
    with open(secret) as held, contextlib.closing(Worker()) as worker:
        assert held.fileno() > 2
        kept = open_descriptors(worker.pid)
    assert len(kept) == 1 and kept[0].startswith("socket:"), kept
    assert str(secret) not in kept


def test_run_with_an_unknown_image_leaves_no_worker_behind(home, capsys):
    before = children()
    assert cli.main(["run", "--rm", "nosuchimage", "true"]) == 125
    assert "no image nosuchimage:latest" in capsys.readouterr().err
    assert children() <= before


def test_run_help_and_a_bad_option_leave_no_worker_behind(home, capsys):
    before = children()
    for argv in (["run", "--help"], ["run", "--no-such-option", "busybox"], ["exec", "-h"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    assert children() <= before


def test_a_dry_run_and_a_refused_combination_leave_no_worker_behind(busybox_store, capsys):
    before = children()
    assert cli.main(["run", "--dry-run", "busybox", "true"]) == 0
    assert cli.main(["run", "-d", "--rm", "busybox", "true"]) == 125
    assert children() <= before


@needs_root
def test_the_worker_forked_ahead_runs_the_container_and_reports_its_status(busybox_store):
    done = subprocess.run([str(VENV_CONTAINED), "run", "--rm", "busybox", "sh", "-c",
                           "echo out; echo err >&2; exit 3"], capture_output=True, text=True,
                          timeout=60)  # CONTAINED_HOME: the store's (the `home` fixture)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_run_imports_neither_the_runner_nor_the_network_in_the_cli_itself(home):
    # The worker imports them; the CLI process only builds the spec and relays.
    probe = ("import sys; from contained import cli; cli.main(['run', '--rm', 'nosuchimage',"
             " 'true']); print(sorted(m for m in sys.modules if m.startswith('contained.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, CONTAINED_HOME=str(home)), timeout=60)
    loaded = done.stdout
    for module in ("contained.runtime.runner", "contained.runtime.steps",
                   "contained.runtime.pid1", "contained.runtime.init", "contained.network",
                   "contained.runtime.seccomp'"):
        assert module not in loaded, module
