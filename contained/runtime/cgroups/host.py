"""This host's cgroup trees: which are mounted where (v2, v1 or both), what they offer, what
does not work, and the parent directory our groups live under in each.

Part of `contained.runtime.cgroups` (notebook 02). In the shell::

    grep cgroup /proc/self/mountinfo                  # v2 (cgroup2), v1 (cgroup) or both?
    cat /sys/fs/cgroup/cgroup.controllers             # what the v2 tree offers
    ls -d /sys/fs/cgroup/*/contained-TAG              # our parent, in every tree
"""

import os
import re
from pathlib import Path

from contained import home, names
from contained.errors import ContainedError
from contained.records import field, record
from contained.runtime import mountinfo
from contained.runtime.cgroups import unit

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


@record
class CgroupHost:
    """Where this machine's cgroup trees are mounted and what they offer."""

    mode: str  # "v2" | "v1" | "hybrid" | "none"
    unified: Path | None = None  # the v2 tree's mount point, if any
    v2_controllers: frozenset[str] = frozenset()  # from the v2 root's cgroup.controllers
    v1_mounts: dict[str, Path] = field(default_factory=dict)  # controller -> mount point
    can_kill: bool = False  # v2 groups have cgroup.kill
    can_freeze: bool = False  # v2 groups have cgroup.freeze

    def where(self, controller: str) -> str | None:
        """ "v2" or "v1" for the tree that has `controller`, None if neither has it."""
        if self.unified is not None and controller in self.v2_controllers:
            return "v2"
        if controller in self.v1_mounts:
            return "v1"
        return None

    @property
    def problems(self) -> list[str]:
        """Sentences for `contained doctor`: what does not work, and what to do. Worked out
        when asked (it looks at delegations and permissions, which change): a container's
        start needs none of it."""
        return _problems(self)

    @property
    def controllers(self) -> dict[str, str | None]:
        """Where each controller a container uses lives, e.g. {"memory": "v1", ...}."""
        return {name: self.where(name) for name in CONTROLLERS}


def detect(table: Path = Path(mountinfo.MOUNTINFO)) -> CgroupHost:
    """Find the cgroup trees from the mount table and say what works and what does not."""
    unified, v1_mounts = _cgroup_mounts_in(table.read_text())
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
    return CgroupHost(
        mode=mode,
        unified=unified,
        v2_controllers=v2_controllers,
        v1_mounts=v1_mounts,
        can_kill=unified is not None and kernel >= KILL_KERNEL,
        can_freeze=unified is not None and kernel >= FREEZE_KERNEL,
    )


#: the last mount table read, and its cgroup trees: a runner and a kernel ask for every
#: container, and the table has hardly ever changed (parsing it again: ~0.1 ms each time)
_last_table: list = [None, (None, {})]


def _cgroup_mounts_in(table: str) -> tuple[Path | None, dict[str, Path]]:
    if table != _last_table[0]:
        _last_table[:] = [table, _cgroup_mounts(mountinfo.parse(table))]
    unified, v1 = _last_table[1]
    return unified, dict(v1)


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
    if host_euid() != 0:
        problem = delegation_problem(host)  # rootless: only a delegated group will do
        if problem is not None:
            problems.append(problem)
    else:
        for root in roots(host):
            if not os.access(root, os.W_OK):
                problems.append(f"cannot create groups in {root}: not writable (read-only "
                                "mount?); see `mount | grep cgroup`")
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


def parent_name(host: CgroupHost | None = None) -> str:
    """The directory every container's group lives under: $CONTAINED_CGROUP_PARENT, or
    contained-TAG for this home (see `contained.runtime.cgroups`). Rootless, where root
    delegated a group to this user (`contained classroom delegate`), that name is nested in it:
    ``contained-user-UID/containers/contained-TAG``."""
    parent = os.environ.get(PARENT_ENV) or f"{DEFAULT_PARENT}-{home.home_tag()}"
    check_name(parent, "cgroup parent")
    uid = host_euid()
    if uid != 0:
        host = host or detect()
        if _delegated_dirs(host, uid):
            return f"{delegated_name(uid)}/{DELEGATED_CONTAINERS}/{parent}"
        unit_group = unit.find(host.unified)
        if unit_group is not None:  # systemd's Delegate=yes: see `contained.runtime.cgroups.unit`
            return f"{unit_group.relative}/{DELEGATED_CONTAINERS}/{parent}"
    return parent


def parent_is_shared() -> bool:
    """Whether $CONTAINED_CGROUP_PARENT chose the parent, which other homes may use too."""
    return bool(os.environ.get(PARENT_ENV))


def parent_paths(host: CgroupHost | None = None) -> list[Path]:
    """The parent directory in every tree it lives in (they may not exist)."""
    host = host or detect()
    parent = parent_name(host)
    return [root / parent for root in parent_trees(host)]


def parent_trees(host: CgroupHost) -> list[Path]:
    """The trees our parent lives in: every tree (`roots`), except inside a group systemd
    delegated to our unit: only the v2 tree then, as systemd delegates nothing in v1 trees."""
    return [host.unified] if delegated_unit(host) is not None else roots(host)


def can_limit(controller: str, host: CgroupHost | None = None) -> bool:
    """Whether this process can make a group that limits `controller`: the host has it, and
    its tree's parent (the tree's root while there is no parent yet) is writable — always for
    root, for anyone else only where root delegated a group to them (`delegation_problem`)."""
    host = host or detect()
    where = host.where(controller)
    if where is None:
        return False
    if host_euid() != 0:
        return delegation_problem(host) is None
    root = host.unified if where == "v2" else host.v1_mounts[controller]
    parent = root / parent_name(host)
    return os.access(parent if parent.exists() else root, os.W_OK)


# --- groups root delegated to a user (`contained classroom delegate`) -------------------------

#: root makes contained-user-UID in every tree a rootless container uses; in it, SERVER holds
#: the student's own processes (their Jupyter server), CONTAINERS their containers' groups
DELEGATED_PREFIX = "contained-user-"
DELEGATED_CONTAINERS = "containers"
DELEGATED_SERVER = "server"


class NotDelegated(ContainedError):
    """Rootless limits were asked for, and root delegated no cgroup to this user."""


def delegated_name(uid: int) -> str:
    """The group root delegates to user `uid`, in every tree: contained-user-UID."""
    return f"{DELEGATED_PREFIX}{uid}"


def delegated_roots(host: CgroupHost) -> list[Path]:
    """The trees a rootless container's group has a directory in: the v2 tree and the v1 trees
    of its controllers (never devices: its rules need CAP_SYS_ADMIN, and a rootless container
    relies on nodev mounts instead)."""
    found = [host.unified] if host.unified is not None else []
    wanted = list(CONTROLLERS) + ([] if host.unified is not None else ["cpuacct", "freezer"])
    for controller in wanted:
        mount = host.v1_mounts.get(controller)
        if mount is not None and host.where(controller) != "v2" and mount not in found:
            found.append(mount)
    return found


def delegated_unit(host: CgroupHost) -> unit.UnitGroup | None:
    """The v2 group systemd delegated to the unit this rootless process runs in (``Delegate=yes``,
    `contained.runtime.cgroups.unit`), where root delegated it no group of ours; else None."""
    uid = host_euid()
    if uid == 0 or _delegated_dirs(host, uid):
        return None
    return unit.find(host.unified)


def _delegated_dirs(host: CgroupHost, uid: int) -> list[Path]:
    """contained-user-UID/containers in every tree, if root made them all; else []."""
    dirs = [root / delegated_name(uid) / DELEGATED_CONTAINERS for root in delegated_roots(host)]
    return dirs if dirs and all(path.is_dir() for path in dirs) else []


def delegation_problem(host: CgroupHost | None = None) -> str | None:
    """Why this (rootless) process cannot limit its containers, in one sentence; None if it can:
    its delegated groups exist and are its own, and, on cgroup v2, it runs inside them (moving
    PID 1 between two groups needs write access to their common ancestor)."""
    host = host or detect()
    uid = host_euid()
    user = _user_name(uid)
    dirs = _delegated_dirs(host, uid)
    unit_group = unit.find(host.unified) if not dirs else None
    if unit_group is not None:
        return _unit_problem(host, unit_group, user)
    if not dirs or not all(os.access(path, os.W_OK) for path in dirs):
        return (f"limits (-m, --cpus, --pids-limit) without root need a cgroup delegated to "
                f"you: ask your teacher to run `sudo contained classroom delegate {user}`, "
                "or run as root")
    if host.unified is not None:
        own = unit.own_v2_group()
        top = "/" + delegated_name(uid)
        if own is None or not (own == top or own.startswith(top + "/")):
            return (f"your cgroup is delegated but this process is not inside it ({own}): ask "
                    f"your teacher to run `sudo contained classroom delegate {user} --move "
                    f"{os.getpid()}` (JupyterHub's contained spawner does it for every server)")
    return None


def _unit_problem(host: CgroupHost, unit_group: unit.UnitGroup, user: str) -> str | None:
    """Why limits fail in a group systemd delegated to our unit: a controller it lacks."""
    missing = [name for name in CONTROLLERS
               if host.where(name) != "v2" or name not in unit_group.controllers]
    if not missing:
        return None
    if any(host.where(name) == "v1" for name in missing):
        return (f"your cgroup /{unit_group.relative} is delegated to you (systemd's Delegate=yes)"
                f", but on this {host.mode} host {', '.join(missing)} are cgroup v1 controllers, "
                "which systemd does not delegate, and the v2 tree has none to limit with: "
                "limits (-m, --cpus, --pids-limit) need `sudo contained classroom delegate "
                f"{user}` or a pure cgroup v2 host")
    return (f"your cgroup /{unit_group.relative} is delegated to you but offers no "
            f"{', '.join(missing)} controller: ask your teacher to give the unit `Delegate=yes` "
            f"in a slice that has them (`cat /sys/fs/cgroup/cgroup.subtree_control`)")


def check_delegated(host: CgroupHost | None = None) -> None:
    """Refuse rootless limits, in one line, where no cgroup was delegated (`delegation_problem`)."""
    problem = delegation_problem(host)
    if problem is not None:
        raise NotDelegated(problem)


def host_euid() -> int:
    """This process's effective uid on the host, also inside a user namespace (where it is 0)."""
    euid = os.geteuid()
    try:
        # the answer, kept for this uid in this user namespace (asked a few times a container)
        key = (euid, os.stat("/proc/self/ns/user").st_ino)
    except OSError:
        key = None
    if key is None or _host_euids.get(key) is None:
        _host_euids[key] = _host_euid(euid)
    return _host_euids[key]


_host_euids: dict = {}


def _host_euid(euid: int) -> int:
    try:
        with open("/proc/self/uid_map") as uid_map:
            lines = uid_map.read().splitlines()
    except OSError:
        return euid
    for line in lines:
        inside, outside, count = (int(number) for number in line.split())
        if inside <= euid < inside + count:
            return outside + euid - inside
    return euid


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
