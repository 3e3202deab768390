"""cgroup v1: one tree per controller, so a group is one directory in each tree it uses.

Part of `contained.runtime.cgroups` (notebook 02): the v1 side of the interface a container's
`Cgroup` uses (`V2Tree` in `contained.runtime.cgroups.v2` is the other). The same ideas as v2
under other names, for a container ``web``::

    mkdir -p /sys/fs/cgroup/memory/contained/web
    echo 16777216 > /sys/fs/cgroup/memory/contained/web/memory.limit_in_bytes
    echo 100000 > /sys/fs/cgroup/cpu/contained/web/cpu.cfs_period_us
    echo 50000 > /sys/fs/cgroup/cpu/contained/web/cpu.cfs_quota_us
    cat /sys/fs/cgroup/memory/contained/web/memory.usage_in_bytes
    echo FROZEN > /sys/fs/cgroup/freezer/contained/web/freezer.state   # then kill, then THAWED

Devices: where the v1 devices controller exists, every group is made with runc's rules, so
container root (which keeps CAP_MKNOD) can make a node for the host's disk but not open it::

    echo a > /sys/fs/cgroup/devices/contained/web/devices.deny
    echo "c 1:3 rwm" > /sys/fs/cgroup/devices/contained/web/devices.allow   # null, and so on

cgroup v2 has no such files: runc and crun attach a BPF program (BPF_CGROUP_DEVICE) instead.
We do not assemble BPF by hand, so on v2 the rule is ``nodev`` on every mount the container
can write (`contained.runtime.rootfs`), which holds on v1, v2 and rootless alike.
"""

from functools import partial
from pathlib import Path

from contained.runtime.cgroups import files
from contained.runtime.cgroups.host import CgroupHost
from contained.runtime.cgroups.limits import CPU_PERIOD_US
from contained.runtime.plan import Step

#: runc's default device rules: make any node (mknod is harmless where nothing opens it), open
#: only null, zero, full, random, urandom, tty, console, ptmx and the pseudo-terminals
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")
#: /dev/fuse, for a group whose root is served by fuse-overlayfs (it runs inside the group)
FUSE_DEVICE = "c 10:229 rwm"


class V1Tree:
    """The v1 trees' file names and steps, for the groups of one `CgroupHost`."""

    version = "v1"
    memory_usage = "memory.usage_in_bytes"
    memory_peak = "memory.max_usage_in_bytes"
    memory_limit = "memory.limit_in_bytes"
    oom_events = "memory.oom_control"

    def __init__(self, host: CgroupHost):
        self.host = host

    def create_steps(self, path: Path, name: str) -> list[Step]:
        """mkdir the group in one controller's tree (its parent is made as needed)."""
        return [Step(f"mkdir -p {path}",
                     f"the container's group in the v1 {path.parent.parent.name} tree",
                     partial(files.make_group, path, name))]

    def device_steps(self, path: Path, rules: tuple[str, ...]) -> list[Step]:
        """Deny every device, then allow `rules` (before any process joins the group)."""
        steps = [Step(f"echo a > {path / 'devices.deny'}",
                      "no device opens unless allowed below: not the host's disks, not its "
                      "consoles",
                      partial(files.write, path / "devices.deny", "a"))]
        for rule in rules:
            steps.append(Step(f'echo "{rule}" > {path / "devices.allow"}', "",
                              partial(files.write, path / "devices.allow", rule)))
        return steps

    def memory_limit_steps(self, path: Path, memory: int) -> list[Step]:
        """memory.limit_in_bytes, and memory+swap to the same where swap is accounted."""
        steps = [files.write_step(path / "memory.limit_in_bytes", str(memory),
                                  "above this the kernel OOM-kills")]
        if (self.host.v1_mounts["memory"] / "memory.memsw.limit_in_bytes").exists():
            # memory+swap may not be below memory alone, so it is written second
            steps.append(files.write_step(path / "memory.memsw.limit_in_bytes", str(memory),
                                          "no escaping the limit into swap"))
        return steps

    def cpu_limit_steps(self, path: Path, cpus: float) -> list[Step]:
        """The CFS period, then the quota of microseconds per period."""
        quota = round(cpus * CPU_PERIOD_US)
        return [files.write_step(path / "cpu.cfs_period_us", str(CPU_PERIOD_US),
                                 "the accounting period"),
                files.write_step(path / "cpu.cfs_quota_us", str(quota),
                                 "CPU time allowed per period")]

    def cpu_limit(self, path: Path) -> float | None:
        """CPUs' worth of time the quota allows; None for no quota (-1)."""
        quota = files.read_optional(path / "cpu.cfs_quota_us")
        period = files.read_optional(path / "cpu.cfs_period_us")
        if not quota or not period or int(quota) < 0:
            return None
        return int(quota) / int(period)

    def cpu_seconds(self, path: Path) -> float:
        """CPU time of the group so far: cpuacct counts nanoseconds."""
        text = files.read_optional(path / "cpuacct.usage")
        return int(text) / 1e9 if text else 0.0

    def stopper(self, path: Path, procs: Path, pids) -> files.Stopper:
        """Freeze the group in the freezer tree (`path`), kill each process, thaw."""
        state = path / "freezer.state"
        shell = f"echo FROZEN > {state}; kill -9 $(cat {procs}); echo THAWED > {state}"
        return files.Stopper(shell, partial(files.kill_frozen, state, "FROZEN", "THAWED",
                                            partial(_frozen, state), pids))


def _frozen(state: Path) -> bool:
    return (files.read_optional(state) or "").strip() == "FROZEN"
