"""One container's group, whatever cgroup version each of its controllers lives in; and `gc`,
which removes the groups a crash left behind.

Part of `contained.runtime.cgroups` (notebook 02). A `Cgroup` asks the tree of each controller
(`V2Tree` or `V1Tree`, the same interface, as benchexec hides v1 and v2) for file names and
steps, so a hybrid host mixes both: limits in the v1 trees, the kill in the v2 tree.
"""

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from contained.runtime.cgroups import files
from contained.runtime.cgroups.files import CgroupError
from contained.runtime.cgroups.host import (
    CONTROLLERS,
    V1_CONTROLLERS,
    CgroupHost,
    check_name,
    detect,
    host_euid,
    is_group_name,
    parent_name,
    parent_paths,
    parent_trees,
)
from contained.runtime.cgroups.limits import Limits, Usage, check_limits, limit_value
from contained.runtime.cgroups.v1 import DEVICE_RULES, V1Tree
from contained.runtime.cgroups.v2 import V2Tree
from contained.runtime.plan import Step

#: how long kill() keeps trying
KILL_TIMEOUT = 5.0


class Tree:
    """What differs between cgroup v1 and v2 for one controller (`V1Tree`, `V2Tree`). A plain
    class rather than a typing.Protocol: typing costs every `contained run` ~3 ms to import."""

    version: str
    memory_usage: str
    memory_peak: str
    memory_limit: str
    oom_events: str

    def create_steps(self, path: Path, name: str) -> list[Step]: ...
    def memory_limit_steps(self, path: Path, memory: int) -> list[Step]: ...
    def cpu_limit_steps(self, path: Path, cpus: float) -> list[Step]: ...
    def cpu_limit(self, path: Path) -> float | None: ...
    def cpu_seconds(self, path: Path) -> float: ...
    def stopper(self, path: Path, procs: Path, pids) -> files.Stopper | None: ...


class Cgroup:
    """One container's group: a directory in the v2 tree and/or one per v1 controller tree.

    `dirs` maps a role to its directory: "v2" for the unified tree, or a v1 controller name.
    Co-mounted v1 controllers (cpu,cpuacct) share one directory.
    """

    def __init__(self, name: str, host: CgroupHost, dirs: dict[str, Path]):
        self.name = name
        self.host = host
        self.dirs = dirs
        self.trees: dict[str, Tree] = {"v1": V1Tree(host), "v2": V2Tree(host)}

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {[str(path) for path in self.paths]})"

    @property
    def paths(self) -> list[Path]:
        """Every directory of this group, v2 first, without duplicates."""
        unique: list[Path] = []
        for path in self.dirs.values():
            if path not in unique:
                unique.append(path)
        return unique

    @property
    def procs_files(self) -> list[Path]:
        """The cgroup.procs files a process writes its pid to, to join the group."""
        return [path / "cgroup.procs" for path in self.paths]

    def entry(self) -> dict:
        """How a process enters this group from outside (`contained.runtime.enter`), kept in
        the container's record so that `exec` needs no look at the host's trees: the v2
        directory, the v1 trees' ``tasks`` files (writing 0 there moves only the calling
        thread, which takes no global lock; a whole process in cgroup.procs does), and the
        file that counts OOM kills."""
        v2, oom = self.dirs.get("v2"), self.oom_file()
        return {"v2": str(v2) if v2 else None,
                "v1_tasks": [str(path / "tasks") for path in self.paths if path != v2],
                "oom": str(oom) if oom else None}

    # creating

    @classmethod
    def plan(
        cls, name: str, limits: Limits, host: CgroupHost | None = None,
        extra_devices: tuple[str, ...] = (),
    ) -> tuple["Cgroup", list[Step]]:
        """The group for container `name` and the steps that create it with `limits`.

        `extra_devices` are device rules allowed beyond `DEVICE_RULES` (v1 only), e.g.
        `FUSE_DEVICE`. Nothing is touched until the steps run.
        """
        check_name(name)
        host = host or detect()
        check_limits(limits, host)
        group = cls(name, host, _layout(name, host))
        steps = group._create_steps(extra_devices) + group._limit_steps(limits)
        return group, steps

    def _create_steps(self, extra_devices: tuple[str, ...] = ()) -> list[Step]:
        v2 = self.dirs.get("v2")
        steps = self.trees["v2"].create_steps(v2, self.name) if v2 is not None else []
        for path in self.paths:
            if path != v2:
                steps += self.trees["v1"].create_steps(path, self.name)
        if "devices" in self.dirs:
            rules = DEVICE_RULES + tuple(extra_devices)
            steps += self.trees["v1"].device_steps(self.dirs["devices"], rules)
        return steps

    def limit_steps(self, limits: Limits) -> list[Step]:
        """The steps that set `limits` on this (existing) group, e.g. one made ahead of time."""
        check_limits(limits, self.host)
        return self._limit_steps(limits)

    def _limit_steps(self, limits: Limits) -> list[Step]:
        steps = []
        if limits.memory is not None:
            steps += self._tree("memory").memory_limit_steps(self._dir("memory"), limits.memory)
        if limits.cpus is not None:
            steps += self._tree("cpu").cpu_limit_steps(self._dir("cpu"), limits.cpus)
        if limits.pids is not None:
            steps.append(files.write_step(self._dir("pids") / "pids.max", str(limits.pids),
                                          "fork fails above this"))
        return steps

    # finding

    @classmethod
    def open(cls, name: str, host: CgroupHost | None = None) -> "Cgroup | None":
        """The existing group of container `name`, or None if it has no directory anywhere."""
        check_name(name)
        host = host or detect()
        dirs = {role: path for role, path in _every_dir(name, host).items() if path.is_dir()}
        return cls(name, host, dirs) if dirs else None

    def _tree(self, controller: str) -> Tree:
        return self.trees[self.host.where(controller) or "v1"]

    def _dir(self, controller: str) -> Path | None:
        where = self.host.where(controller)
        return self.dirs.get("v2" if where == "v2" else controller) if where else None

    # processes

    def join(self, pid: int) -> None:
        """Move process `pid` into the group, in every tree (0 means the calling process)."""
        for procs in self.procs_files:
            files.write(procs, str(pid))

    def pids(self) -> set[int]:
        """The processes in the group, in any of its trees."""
        found: set[int] = set()
        for procs in self.procs_files:
            found |= files.procs(procs)
        return found

    # measuring

    def usage(self) -> Usage:
        """What the group uses now; a few small reads, cheap enough to poll every 100 ms."""
        memory, tree = self._dir("memory"), self._tree("memory")
        memory_now = memory_peak = memory_limit = None
        if memory is not None:
            memory_now = files.read_optional(memory / tree.memory_usage)
            memory_peak = files.read_optional(memory / tree.memory_peak)
            memory_limit = files.read_optional(memory / tree.memory_limit)
        pids_dir = self._dir("pids")
        pids_now = files.read_optional(pids_dir / "pids.current") if pids_dir else None
        pids_limit = files.read_optional(pids_dir / "pids.max") if pids_dir else None
        return Usage(
            memory=int(memory_now) if memory_now else 0,
            memory_peak=int(memory_peak) if memory_peak else None,
            cpu_seconds=self._cpu_seconds(),
            pids=int(pids_now) if pids_now else len(self.pids()),
            memory_limit=limit_value(memory_limit),
            cpu_limit=self._cpu_limit(),
            pids_limit=limit_value(pids_limit),
        )

    def _cpu_seconds(self) -> float:
        # cpuacct first: co-mounted with cpu, an opened hybrid group has it beside its v2 dir
        if "cpuacct" in self.dirs:
            return self.trees["v1"].cpu_seconds(self.dirs["cpuacct"])
        if "v2" in self.dirs:
            return self.trees["v2"].cpu_seconds(self.dirs["v2"])
        return 0.0

    def _cpu_limit(self) -> float | None:
        path = self._dir("cpu")
        return None if path is None else self._tree("cpu").cpu_limit(path)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over the memory limit."""
        path = self.oom_file()
        return 0 if path is None else files.keyed(files.read_optional(path), "oom_kill") or 0

    def oom_counter(self) -> Callable[[], int]:
        """`oom_kills` through a file opened now (`oom_counter_at`)."""
        return oom_counter_at(self.oom_file())

    def oom_file(self) -> Path | None:
        """The file that counts this group's OOM kills (None without a memory controller)."""
        memory = self._dir("memory")
        return None if memory is None else memory / self._tree("memory").oom_events

    # stopping

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process in the group, again and again until none is left."""
        deadline = time.monotonic() + timeout
        stopper = self._stopper()
        while self.pids():
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"cannot empty cgroup {self.paths[0]}: processes {sorted(self.pids())} "
                    "survived SIGKILL (stuck in the kernel?); try `contained stop` again"
                )
            stopper.kill_once()
            # the signal is sent at once but dying takes a moment: wait a little before retrying
            settle = min(deadline, time.monotonic() + 0.5)
            while self.pids() and time.monotonic() < settle:
                time.sleep(files.POLL)

    def _stopper(self) -> files.Stopper:
        """The quickest way this group's trees offer to kill all of it: v2's cgroup.kill or
        freezer, else v1's freezer, else one process at a time (a fork bomb may outrun it)."""
        procs = self.procs_files[0] if self.paths else None
        stopper = None
        if "v2" in self.dirs:
            stopper = self.trees["v2"].stopper(self.dirs["v2"], procs, self.pids)
        if stopper is None and "freezer" in self.dirs:
            stopper = self.trees["v1"].stopper(self.dirs["freezer"], procs, self.pids)
        if stopper is None:
            shell = f"kill -9 $(cat {procs})" if procs else "true"
            stopper = files.Stopper(shell, lambda: files.kill_each(self.pids()))
        return stopper

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove its directories. Idempotent."""
        if not any(path.is_dir() for path in self.paths):
            return  # removed already
        for step in self.remove_steps():
            step.run()

    def remove_steps(self) -> list[Step]:
        """The steps of remove(): stop what is left, then rmdir each directory."""
        steps = [Step(self._stopper().shell, "a group can only be removed once it is empty",
                      self.kill)]
        for path in self.paths:
            steps.append(Step(f"rmdir {path}", "", partial(files.rmdir, path)))
        return steps


def oom_counter_at(path: str | Path | None) -> Callable[[], int]:
    """A group's OOM kills (its memory.oom_control or memory.events `path`) through a file
    opened now, which keeps working after this process's root has changed: a container's
    PID 1 reads it after pivot_root, an exec's worker after setns. No file: always 0."""
    if path is None:
        return lambda: 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return lambda: files.keyed(os.pread(fd, 4096, 0).decode(), "oom_kill") or 0


def _layout(name: str, host: CgroupHost) -> dict[str, Path]:
    """The directories a new group gets: what its limits, measures and stopping need."""
    parent = parent_name(host)
    v1 = _v1_mounts(host)
    dirs: dict[str, Path] = {}
    if host.unified is not None:
        # even with no controllers, a v2 group lists every process and kills them all at once
        dirs["v2"] = host.unified / parent / name
    for controller in CONTROLLERS:
        if host.where(controller) == "v1" and controller in v1:
            dirs[controller] = v1[controller] / parent / name
    if "v2" not in dirs and "cpuacct" in v1:
        dirs["cpuacct"] = v1["cpuacct"] / parent / name
    v2_stops = "v2" in dirs and (host.can_kill or host.can_freeze)
    if not v2_stops and "freezer" in v1:
        dirs["freezer"] = v1["freezer"] / parent / name
    if "devices" in v1 and host_euid() == 0:
        # rootless, its rules would need CAP_SYS_ADMIN: nodev mounts stand in (see `v1`)
        dirs["devices"] = v1["devices"] / parent / name
    return dirs


def _every_dir(name: str, host: CgroupHost) -> dict[str, Path]:
    """Every directory a group of this name may have, whatever layout made it."""
    parent = parent_name(host)
    dirs = {"v2": host.unified / parent / name} if host.unified is not None else {}
    v1 = _v1_mounts(host)
    for controller in V1_CONTROLLERS:
        if controller in v1:
            dirs[controller] = v1[controller] / parent / name
    return dirs


def _v1_mounts(host: CgroupHost) -> dict[str, Path]:
    """The v1 trees our parent lives in: none inside a group systemd delegated to our unit."""
    trees = parent_trees(host)
    return {controller: mount for controller, mount in host.v1_mounts.items() if mount in trees}


# --- cleaning up after crashes ---------------------------------------------------------------


def gc(keep: set[str], host: CgroupHost | None = None,
       ours: Callable[[str], bool] | None = None) -> list[str]:
    """Remove every group under our parent whose name is not in `keep`; return their names.

    With `ours`, only groups it says are ours: the parent is shared with other homes.
    """
    host = host or detect()
    names: set[str] = set()
    for parent in parent_paths(host):
        try:
            names |= {entry.name for entry in parent.iterdir() if entry.is_dir()}
        except FileNotFoundError:
            continue
    removed = []
    for name in sorted(names - keep):
        if not is_group_name(name) or (ours is not None and not ours(name)):
            continue  # not ours: nothing we create has such a name, or another home made it
        group = Cgroup.open(name, host)
        if group is not None:
            group.remove()
            removed.append(name)
    for parent in parent_paths(host):
        # Left empty, the parent goes too: nothing of ours stays in the tree. (A container
        # being created meanwhile makes it again: see `files.make_group`.)
        try:
            parent.rmdir()
        except OSError:
            pass  # absent, or still holding groups
    return removed
