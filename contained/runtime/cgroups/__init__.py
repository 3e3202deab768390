"""Control groups: limit and measure what a container's processes use, and stop them all.

Taught in notebook 02. A cgroup is a directory in a special filesystem: making the directory
makes the group, writing a number into one of its files sets a limit, writing a pid into its
``cgroup.procs`` moves that process (and every child it forks later) into the group, reading its
files tells what the group uses. Namespaces (notebook 01) hide the host; cgroups ration it.

cgroup v2 (one tree, the classroom default), for a container named ``web``::

    echo +memory +cpu +pids > /sys/fs/cgroup/cgroup.subtree_control
    mkdir -p /sys/fs/cgroup/contained
    echo +memory +cpu +pids > /sys/fs/cgroup/contained/cgroup.subtree_control
    mkdir /sys/fs/cgroup/contained/web
    echo 16777216 > /sys/fs/cgroup/contained/web/memory.max
    echo "50000 100000" > /sys/fs/cgroup/contained/web/cpu.max
    echo 5 > /sys/fs/cgroup/contained/web/pids.max
    echo $$ > /sys/fs/cgroup/contained/web/cgroup.procs      # join, then exec the program
    cat /sys/fs/cgroup/contained/web/memory.current           # what it uses now
    echo 1 > /sys/fs/cgroup/contained/web/cgroup.kill         # SIGKILL everything in it
    rmdir /sys/fs/cgroup/contained/web

cgroup v1 (one tree per controller) has the same ideas under other names:
``/sys/fs/cgroup/memory/contained/web/memory.limit_in_bytes``, ``cpu.cfs_quota_us``,
``pids.max``, and ``freezer.state`` to stop a group. A "hybrid" host has both: controllers on
v1, plus a v2 tree at ``/sys/fs/cgroup/unified`` with no controllers but with ``cgroup.kill``;
there a container joins a group in every tree.

Groups live under a parent: ``contained-TAG`` by default, one per home (TAG is the home's tag,
a hash of its real path: `contained.home.home_tag`), or ``$CONTAINED_CGROUP_PARENT``. Why a
parent per home: `gc` removes the groups under its parent that no container of its own still
uses (what a crash left), so with one parent for the whole machine one student's `contained gc`
killed every other student's containers. With a parent of its own, everything under it is the
home's, including groups nothing recorded (a runner killed before writing anything). Where
``$CONTAINED_CGROUP_PARENT`` makes several homes share a parent, `gc` is told which names its
home can prove its own (`gc`'s `ours`) and leaves the rest alone.

Where each part lives: `host` finds the trees and names the parent, `limits` parses and checks
limits and holds readings, `v2` and `v1` are the two versions behind one interface (`V2Tree`,
`V1Tree`), `group` is a container's `Cgroup` and `gc`, `files` reads and writes control files.
Device rules (v1's devices controller, and what stands for them on v2) are explained in `v1`.

Rootless, a container gets a group only where root delegated one to its user (`contained
classroom delegate USER`, as systemd's ``Delegate=yes``): ``contained-user-UID`` in every tree,
with ``server`` (the student's own processes) and ``containers`` (theirs to write, its limits
the student's budget); the home's parent is then ``contained-user-UID/containers/contained-TAG``.
Where systemd delegated the v2 group of the unit this process runs in (``Delegate=yes``, as The
Littlest JupyterHub's spawner can ask), containers nest in it instead, as podman's do: `unit`.
"""

from contained.runtime.cgroups.born import fork_into
from contained.runtime.cgroups.files import CgroupError, CgroupInUse, ControllerMissing
from contained.runtime.cgroups.group import KILL_TIMEOUT, Cgroup, gc, oom_counter_at
from contained.runtime.cgroups.host import (
    CONTROLLERS,
    DEFAULT_PARENT,
    DELEGATED_CONTAINERS,
    DELEGATED_SERVER,
    PARENT_ENV,
    V1_CONTROLLERS,
    BadCgroupName,
    CgroupHost,
    NotDelegated,
    can_limit,
    check_delegated,
    delegated_name,
    delegated_roots,
    delegated_unit,
    delegation_problem,
    detect,
    host_euid,
    parent_is_shared,
    parent_name,
    parent_paths,
)
from contained.runtime.cgroups.limits import (
    CPU_PERIOD_US,
    DEFAULT_PIDS,
    MAX_MEMORY_FACTOR,
    MAX_PIDS,
    MIN_CPUS,
    MIN_MEMORY,
    BadLimit,
    Limits,
    Usage,
    cpu_rates,
    parse_cpus,
    parse_memory,
    parse_pids,
)
from contained.runtime.cgroups.v1 import DEVICE_RULES, FUSE_DEVICE

__all__ = [
    "CONTROLLERS", "CPU_PERIOD_US", "DEFAULT_PARENT", "DEFAULT_PIDS", "DEVICE_RULES",
    "FUSE_DEVICE", "KILL_TIMEOUT", "MAX_MEMORY_FACTOR", "MAX_PIDS", "MIN_CPUS", "MIN_MEMORY",
    "PARENT_ENV", "V1_CONTROLLERS", "BadCgroupName", "BadLimit", "Cgroup", "CgroupError",
    "CgroupHost", "CgroupInUse", "ControllerMissing", "Limits", "Usage", "can_limit",
    "cpu_rates", "detect", "gc", "parent_is_shared", "parent_name", "parent_paths",
    "parse_cpus", "parse_memory", "parse_pids",
    # groups root delegates to a user (`contained classroom delegate`)
    "DELEGATED_CONTAINERS", "DELEGATED_SERVER", "NotDelegated", "check_delegated",
    "delegated_name", "delegated_roots", "delegation_problem", "host_euid",
    # a group systemd delegated to our unit (`unit`)
    "delegated_unit",
    # a process born in a group (`born`); OOM kills read through a file opened ahead
    "fork_into", "oom_counter_at",
]
