"""The mount table: what is mounted where in this process's mount namespace.

Taught in notebooks 02 (where the cgroup trees are) and 03 (what a container leaves mounted).
The kernel lists one mount per line of ``/proc/self/mountinfo``; in the shell::

    cut -d' ' -f5 /proc/self/mountinfo          # every mount point
    findmnt -t cgroup2,cgroup                   # the cgroup trees, with their options

A mount point with a space, tab, newline or backslash in it is written with octal escapes
(``/tmp/a\\040b``): every reader here unescapes it, so the paths compare with real ones.
"""

import re

from contained.records import record

__all__ = ["Mount", "parse", "read", "unescape"]

MOUNTINFO = "/proc/self/mountinfo"


@record(frozen=True)
class Mount:
    """One line of mountinfo: where, what filesystem, and its superblock options."""

    mount_point: str
    fstype: str
    super_options: tuple[str, ...]


def unescape(text: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse(text: str) -> list[Mount]:
    """Every mount in a mountinfo text, in the kernel's order (parents before children)."""
    mounts = []
    for line in text.splitlines():
        # "36 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory":
        # optional fields before " - " vary in number, so split there first
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(Mount(unescape(fields[4]), tail[0], tuple(tail[2].split(","))))
    return mounts


def read(path: str = MOUNTINFO) -> list[Mount]:
    """This process's mounts (or those of another mountinfo file)."""
    with open(path) as mountinfo:
        return parse(mountinfo.read())
