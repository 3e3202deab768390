"""Starting a process inside a group, instead of moving it there afterwards.

Part of `contained.runtime.cgroups` (notebook 02). ``echo PID > cgroup.procs`` moves a whole
process, and for that the kernel takes a global lock whose writer waits for an RCU grace period:
~10 ms on an idle machine, on the critical path of every container's PID 1 and every ``exec``.
Two ways around it, which `fork_into` combines:

- cgroup v2: be *born* in the group. clone3's CLONE_INTO_CGROUP (kernel 5.7+) forks the child
  straight into it, as systemd starts services; no process moves, so nothing waits;
- cgroup v1: a thread that moves only itself (``echo 0 > tasks``) needs no global lock either;
  a single-threaded process is its one thread.

In shell terms there is no equivalent of the first; the second is::

    sh -c 'echo 0 > /sys/fs/cgroup/memory/GROUP/tasks; exec CMD'
"""

import os

from contained import syscalls
from contained.runtime.cgroups import files


def fork_into(entry: dict | None) -> int:
    """fork(), with the child in the group whose `entry` (`Cgroup.entry`) is given, in every
    tree: 0 in the child, its pid in the parent. Without an entry, a plain fork.

    Only for a single-threaded caller (the runner's workers): clone3 bypasses Python's fork
    bookkeeping. A kernel or filter that refuses clone3 (ENOSYS in some containers) gets a
    plain fork whose child moves itself, and waits for the grace period.
    """
    if entry is None:
        return os.fork()
    child = _born_in_v2(entry["v2"])
    if child == 0:
        for tasks in entry["v1_tasks"]:
            files.write(tasks, "0")
    return child


def _born_in_v2(directory: str | None) -> int:
    if directory is None:
        return os.fork()
    group = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syscalls.fork_into_cgroup(group)
    except OSError:
        pass
    finally:
        os.close(group)  # in the parent and the child alike
    child = os.fork()
    if child == 0:
        files.write(os.path.join(directory, "cgroup.procs"), "0")
    return child
