"""Which process is which: a pid plus its start time, read from /proc.

Taught in notebook 06 (who runs a container, and how `contained gc` tells a crash). A pid
alone does not name a process: once it exits, the kernel hands the number to the next one.
A pid with its start time (field 22 of ``/proc/PID/stat``, clock ticks since boot) does. The
runners, each container's PID 1 and every network lease are recorded that way, so nothing is
ever mistaken for one of ours — or killed for being one. In the shell::

    awk '{print $22}' /proc/PID/stat     # the start time (when the name has no spaces)
    ps -o lstart= -p PID                 # the same, as a date

And one more use of /proc: `short_path` names a deep file through /proc/self/fd, for the
Unix sockets (the exec socket, slirp4netns's API) that live in a container's directory.
"""

import os
from contextlib import contextmanager
from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields from the third (state) on: the name before may hold spaces
    and parentheses, so split after the last ')'."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def start_time(pid: int | str) -> int | None:
    """A process's start time (clock ticks since boot), None once it is gone."""
    fields = _fields(pid)
    return None if fields is None else int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """Is this very process (a pid with its start time, as recorded) still running?

    A zombie counts as gone: it has exited, and only waits for its parent to notice.
    """
    if not pid or started is None:
        return False
    fields = _fields(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == started


def running(pid: int) -> bool:
    """Whether some process has this pid and has not exited (a zombie has)."""
    fields = _fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _fields(pid: int | str) -> list[str] | None:
    try:
        return _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


@contextmanager
def short_path(path: Path):
    """`path` as a name that fits a Unix socket address (108 bytes), via an open directory:
    container directories are deep (a 64-hex-digit id under CONTAINED_HOME). The directory's
    descriptor names it in a few bytes, without chdir (which would affect every thread)."""
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
