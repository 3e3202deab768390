"""Namespaces: what a process can see — its own hostname, PIDs, mounts, network, IPC, cgroups.

Taught in notebook 01. The tutorial's command::

    unshare --mount --uts --ipc --net --pid --fork --mount-proc=root/proc chroot root /bin/sh

Each flag is one namespace kind; a process's namespaces are the links in /proc/PID/ns, and two
processes share a namespace exactly when their links point at the same inode. ``nsenter``
joins the namespaces of a running process through those same files (``contained exec`` gets
the same result by having the container's PID 1 start the command).
"""

import os

from contained import syscalls
from contained.records import record

# kind → (clone flag, unshare(1) option, /proc/PID/ns file)
KINDS = {
    "mount": (syscalls.CLONE_NEWNS, "--mount", "mnt"),
    "uts": (syscalls.CLONE_NEWUTS, "--uts", "uts"),
    "ipc": (syscalls.CLONE_NEWIPC, "--ipc", "ipc"),
    "net": (syscalls.CLONE_NEWNET, "--net", "net"),
    "pid": (syscalls.CLONE_NEWPID, "--pid --fork", "pid"),
    "cgroup": (syscalls.CLONE_NEWCGROUP, "--cgroup", "cgroup"),
    "user": (syscalls.CLONE_NEWUSER, "--user", "user"),
}

@record(frozen=True)
class Namespace:
    """One namespace of a process, as /proc/PID/ns shows it."""

    kind: str
    inode: int

    @property
    def label(self) -> str:
        return f"{KINDS[self.kind][2]}:[{self.inode}]"


def flags_for(kinds: list[str]) -> int:
    """The CLONE_NEW* bits for these namespace kinds."""
    result = 0
    for kind in kinds:
        result |= KINDS[kind][0]
    return result


def unshare_command(kinds: list[str]) -> str:
    """The util-linux ``unshare`` options for these kinds, as the tutorial writes them."""
    return "unshare " + " ".join(KINDS[kind][1] for kind in kinds)


def namespaces_of(pid: int | str = "self") -> dict[str, Namespace]:
    """The namespaces a process is in (kind → Namespace), for comparing host and container."""
    result = {}
    for kind, (_, _, name) in KINDS.items():
        try:
            inode = os.stat(f"/proc/{pid}/ns/{name}").st_ino
        except FileNotFoundError:
            continue  # a kernel without this namespace kind
        result[kind] = Namespace(kind, inode)
    return result
