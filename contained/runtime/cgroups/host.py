"""This host's cgroup trees: which are mounted where (v2, v1 or both), what they offer, what
does not work, and the parent directory our groups live under in each.

Part of `contained.runtime.cgroups` (notebook 02). In the shell::

    grep cgroup /proc/self/mountinfo                  # v2 (cgroup2), v1 (cgroup) or both?
    cat /sys/fs/cgroup/cgroup.controllers             # what the v2 tree offers
    ls -d /sys/fs/cgroup/*/contained-TAG              # our parent, in every tree
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from contained import home, names
from contained.errors import ContainedError
from contained.runtime import mountinfo

#: the controllers a container's limits use, in the order their steps are shown
CONTROLLERS = ("memory", "cpu", "pids")
#: v1 hierarchies a group may have a directory in (cpuacct measures CPU time, freezer stops,
#: devices says which device nodes its processes may open)
V1_CONTROLLERS = ("memory", "cpu", "pids", "cpuacct", "freezer", "devices")

PARENT_ENV = "CONTAINED_CGROUP_PARENT"
DEFAULT_PARENT = "contained"

#: cgroup.kill came in Linux 5.14, cgroup.freeze in 5.2
KILL_KERNEL = (5, 14)
FREEZE_KERNEL = (5, 2)


class BadCgroupName(ContainedError):
    """A group or parent name that is not a single safe directory name."""


@dataclass
class CgroupHost:
    """Where this machine's cgroup trees are mounted and what they offer."""

    mode: str  # "v2" | "v1" | "hybrid" | "none"
    unified: Path | None = None  # the v2 tree's mount point, if any
    v2_controllers: frozenset[str] = frozenset()  # from the v2 root's cgroup.controllers
    v1_mounts: dict[str, Path] = field(default_factory=dict)  # controller -> mount point
    can_kill: bool = False  # v2 groups have cgroup.kill
    can_freeze: bool = False  # v2 groups have cgroup.freeze
    problems: list[str] = field(default_factory=list)  # sentences for `contained doctor`

    def where(self, controller: str) -> str | None:
        """ "v2" or "v1" for the tree that has `controller`, None if neither has it."""
        if self.unified is not None and controller in self.v2_controllers:
            return "v2"
        if controller in self.v1_mounts:
            return "v1"
        return None

    @property
    def controllers(self) -> dict[str, str | None]:
        """Where each controller a container uses lives, e.g. {"memory": "v1", ...}."""
        return {name: self.where(name) for name in CONTROLLERS}


def detect(table: Path = Path(mountinfo.MOUNTINFO)) -> CgroupHost:
    """Find the cgroup trees from the mount table and say what works and what does not."""
    unified, v1_mounts = _cgroup_mounts(mountinfo.parse(table.read_text()))
    v2_controllers: frozenset[str] = frozenset()
    if unified is not None:
        try:
            v2_controllers = frozenset((unified / "cgroup.controllers").read_text().split())
        except OSError:
            pass
    if unified is not None and v1_mounts:
        mode = "hybrid"
    elif unified is not None:
        mode = "v2"
    elif v1_mounts:
        mode = "v1"
    else:
        mode = "none"
    kernel = _kernel_version()
    host = CgroupHost(
        mode=mode,
        unified=unified,
        v2_controllers=v2_controllers,
        v1_mounts=v1_mounts,
        can_kill=unified is not None and kernel >= KILL_KERNEL,
        can_freeze=unified is not None and kernel >= FREEZE_KERNEL,
    )
    host.problems = _problems(host)
    return host


def _cgroup_mounts(mounts: list[mountinfo.Mount]) -> tuple[Path | None, dict[str, Path]]:
    """The v2 mount point and each v1 controller's mount point."""
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for mount in mounts:
        if mount.fstype == "cgroup2" and unified is None:
            unified = Path(mount.mount_point)
        elif mount.fstype == "cgroup":
            for option in mount.super_options:
                # the first mount wins: later ones are usually bind mounts of the same tree
                if option in V1_CONTROLLERS and option not in v1:
                    v1[option] = Path(mount.mount_point)
    return unified, v1


def _kernel_version() -> tuple[int, int]:
    numbers = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)


def _problems(host: CgroupHost) -> list[str]:
    if host.mode == "none":
        return [
            "no cgroup filesystem is mounted: limits and usage will not work; "
            "mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
        ]
    problems = []
    for name in CONTROLLERS:
        if host.where(name) is None:
            root = host.unified or Path("/sys/fs/cgroup")
            problems.append(
                f"{name} controller not enabled: it is neither in {root}/cgroup.controllers "
                f"nor mounted as a v1 tree, so --{'cpus' if name == 'cpu' else name} limits "
                f"will not work; check the kernel's boot options (cgroup_enable={name})"
            )
    for root in roots(host):
        if not os.access(root, os.W_OK):
            problems.append(
                f"cannot create groups in {root}: not writable; run as root or enable "
                "cgroup delegation"
            )
    if (
        host.where("memory") == "v1"
        and _has_swap()
        and not (host.v1_mounts["memory"] / "memory.memsw.limit_in_bytes").exists()
    ):
        problems.append(
            "swap accounting is off: a memory-limited container can use swap beyond its "
            "limit; boot with swapaccount=1"
        )
    if not (host.can_kill or host.can_freeze or "freezer" in host.v1_mounts):
        problems.append(
            "neither cgroup.kill nor a freezer is available: stopping a container kills its "
            "processes one by one and a fork bomb may outrun it"
        )
    return problems


def _has_swap() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def roots(host: CgroupHost) -> list[Path]:
    """Every tree's mount point a group may live in, v2 first, without duplicates."""
    found = [host.unified] if host.unified is not None else []
    for mount in host.v1_mounts.values():
        if mount not in found:
            found.append(mount)
    return found


# --- the parent every group lives under ------------------------------------------------------


def parent_name() -> str:
    """The directory every container's group lives under: $CONTAINED_CGROUP_PARENT, or
    contained-TAG for this home (see `contained.runtime.cgroups`)."""
    parent = os.environ.get(PARENT_ENV) or f"{DEFAULT_PARENT}-{home.home_tag()}"
    check_name(parent, "cgroup parent")
    return parent


def parent_is_shared() -> bool:
    """Whether $CONTAINED_CGROUP_PARENT chose the parent, which other homes may use too."""
    return bool(os.environ.get(PARENT_ENV))


def parent_paths(host: CgroupHost | None = None) -> list[Path]:
    """The parent directory in every tree (they may not exist)."""
    host = host or detect()
    parent = parent_name()
    return [root / parent for root in roots(host)]


def can_limit(controller: str, host: CgroupHost | None = None) -> bool:
    """Whether this process can make a group that limits `controller`: the host has it, and
    its tree's parent (the tree's root while there is no parent yet) is writable — always for
    root, for anyone else only where the tree was delegated to them."""
    host = host or detect()
    where = host.where(controller)
    if where is None:
        return False
    root = host.unified if where == "v2" else host.v1_mounts[controller]
    parent = root / parent_name()
    return os.access(parent if parent.exists() else root, os.W_OK)


def is_group_name(name: str) -> bool:
    """Whether `name` could be a group or parent we made (`contained.names`, up to 128)."""
    return names.is_valid(name, names.LONGEST_CGROUP_NAME)


def check_name(name: str, what: str = "cgroup name") -> None:
    """Refuse a group or parent name that is not one safe directory name."""
    if not is_group_name(name):
        raise BadCgroupName(
            f"invalid {what} {name!r}: use letters, digits, '_', '.' and '-', starting with "
            "a letter or digit"
        )
