"""cgroup v2: one tree, where a group is one directory and every controller's files are in it.

Part of `contained.runtime.cgroups` (notebook 02): the v2 side of the interface a container's
`Cgroup` uses (`V1Tree` in `contained.runtime.cgroups.v1` is the other). For a container ``web``::

    echo +memory +cpu +pids > /sys/fs/cgroup/cgroup.subtree_control
    mkdir -p /sys/fs/cgroup/contained
    echo +memory +cpu +pids > /sys/fs/cgroup/contained/cgroup.subtree_control
    mkdir /sys/fs/cgroup/contained/web
    echo 16777216 > /sys/fs/cgroup/contained/web/memory.max
    echo "50000 100000" > /sys/fs/cgroup/contained/web/cpu.max
    cat /sys/fs/cgroup/contained/web/memory.current
    echo 1 > /sys/fs/cgroup/contained/web/cgroup.kill

A hybrid host's v2 tree may offer no controllers at all: its group is still made, because it
lists every process of the container and kills them all at once.
"""

from functools import partial
from pathlib import Path

from contained.runtime.cgroups import files, unit
from contained.runtime.cgroups.host import CONTROLLERS, CgroupHost, delegated_unit
from contained.runtime.cgroups.limits import CPU_PERIOD_US
from contained.runtime.plan import Step


class V2Tree:
    """The v2 tree's file names and steps, for the groups of one `CgroupHost`."""

    version = "v2"
    memory_usage = "memory.current"
    memory_peak = "memory.peak"
    memory_limit = "memory.max"
    oom_events = "memory.events"

    def __init__(self, host: CgroupHost):
        self.host = host

    def create_steps(self, path: Path, name: str) -> list[Step]:
        """Pass the controllers down from the root to the parent, then make the group."""
        root, parent = path.parent.parent, path.parent
        unit_group = delegated_unit(self.host)  # then root is its `containers`
        offered = unit_group.controllers if unit_group else self.host.v2_controllers
        wanted = [controller for controller in CONTROLLERS if controller in offered]
        enable = " ".join(f"+{controller}" for controller in wanted)
        # inside a group systemd delegated to our unit: first its processes go to a leaf
        steps = [unit.leaf_step(unit_group, enable)] if unit_group else []
        if wanted:
            steps.append(_enable_step(root, enable,
                                      "let groups below the root use these controllers"))
        steps.append(Step(f"mkdir -p {parent}", "one parent holds every container's group",
                          partial(files.mkdir_parent, parent)))
        if wanted:
            steps.append(_enable_step(parent, enable,
                                      "pass the controllers on to each container's group"))
        steps.append(Step(
            f"mkdir {path}",
            "the container's group" + ("" if wanted else ": one place to find and kill it"),
            partial(files.make_group, path, name,
                    partial(_make_parent, enable=enable if wanted else None))))
        return steps

    def memory_limit_steps(self, path: Path, memory: int) -> list[Step]:
        """memory.max, and no swap beyond it."""
        return [
            files.write_step(path / "memory.max", str(memory), "above this the kernel OOM-kills"),
            Step(f"echo 0 > {path / 'memory.swap.max'}", "no escaping the limit into swap",
                 partial(files.write_if_present, path / "memory.swap.max", "0")),
        ]

    def cpu_limit_steps(self, path: Path, cpus: float) -> list[Step]:
        """cpu.max: a quota of microseconds per period."""
        quota = round(cpus * CPU_PERIOD_US)
        return [files.write_step(path / "cpu.max", f"{quota} {CPU_PERIOD_US}",
                                 f"{quota} us of CPU time per {CPU_PERIOD_US} us")]

    def cpu_limit(self, path: Path) -> float | None:
        """CPUs' worth of time cpu.max allows; None for "max"."""
        text = files.read_optional(path / "cpu.max")
        if not text or text.split()[0] == "max":
            return None
        quota, period = text.split()
        return int(quota) / int(period)

    def cpu_seconds(self, path: Path) -> float:
        """CPU time of the group so far: any v2 group's cpu.stat counts microseconds, even
        without the cpu controller."""
        usec = files.keyed(files.read_optional(path / "cpu.stat"), "usage_usec")
        return usec / 1e6 if usec is not None else 0.0

    def stopper(self, path: Path, procs: Path, pids) -> files.Stopper | None:
        """cgroup.kill where the kernel has it, else freeze and kill; None on kernels before
        5.2, which have neither."""
        if self.host.can_kill:
            # the kernel kills the whole tree at once, so a fork bomb cannot race the killer
            kill = path / "cgroup.kill"
            return files.Stopper(f"echo 1 > {kill}", partial(files.write, kill, "1"))
        if self.host.can_freeze:
            freeze = path / "cgroup.freeze"
            shell = (f"echo 1 > {freeze}; kill -9 $(cat {path / 'cgroup.procs'});"
                     f" echo 0 > {freeze}")
            return files.Stopper(shell, partial(files.kill_frozen, freeze, "1", "0",
                                                partial(_frozen, path), pids))
        return None


def _enable_step(path: Path, enable: str, why: str) -> Step:
    # unquoted, as a student types it: "+memory +cpu" are separate words echo joins again
    control = path / "cgroup.subtree_control"
    return Step(f"echo {enable} > {control}", why, partial(files.write, control, enable))


def _make_parent(parent: Path, enable: str | None) -> None:
    files.mkdir_parent(parent)
    if enable:
        files.write(parent / "cgroup.subtree_control", enable)


def _frozen(path: Path) -> bool:
    return files.keyed(files.read_optional(path / "cgroup.events"), "frozen") == 1
