"""A cgroup systemd delegated to the service this process runs in (``Delegate=yes``): containers
nest inside it without root, as podman and crun nest theirs on cgroup v2.

Part of `contained.runtime.cgroups` (notebook 02; the classroom's Littlest JupyterHub set-up uses
it). With ``Delegate=yes``, systemd chowns the unit's group (its directory, ``cgroup.procs``,
``cgroup.subtree_control``, ``cgroup.threads``) to the unit's user. A student's server in
``jupyter-ada.service`` finds it from its own group, and makes room for containers::

    cat /proc/self/cgroup                                    # 0::/system.slice/jupyter-ada.service
    U=/sys/fs/cgroup/system.slice/jupyter-ada.service
    stat -c %U $U $U/cgroup.procs $U/cgroup.subtree_control  # ada, ada, ada: delegated to her
    mkdir $U/server $U/containers
    for pid in $(cat $U/cgroup.procs); do echo $pid > $U/server/cgroup.procs; done
    echo +memory +cpu +pids > $U/cgroup.subtree_control      # as $U/cgroup.controllers offers
    mkdir -p $U/containers/contained-TAG                      # the home's parent, as everywhere

Why ``server``: v2 allows no process in a group that passes controllers on (the "no internal
processes" rule), so the unit's own processes (the server, its kernels, their runners) move to a
leaf first. Afterwards this process's group is ``$U/server``: it is recognised again from there.

On a hybrid host (v1 controllers, a v2 tree without them) the same happens in the unified tree,
where a group lists and kills a container's processes but limits nothing: the v1 trees hold the
controllers, and systemd delegates nothing there. Limits then need `contained classroom
delegate` (root), or a pure cgroup v2 host.
"""

import os
from functools import partial
from pathlib import Path, PurePosixPath

from contained.records import record
from contained.runtime.cgroups import files
from contained.runtime.plan import Step

#: the leaf the unit's own processes move to, and the group every container nests under: the
#: same names as in a group root delegates with `contained classroom delegate`
SERVER = "server"
CONTAINERS = "containers"
#: the files systemd hands over with the directory, that nesting writes (systemd.resource-control)
DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control")
#: processes may fork while they are moved: try this many times to empty the unit's group
MOVE_ROUNDS = 50


@record(frozen=True)
class UnitGroup:
    """The v2 group delegated to this process's unit."""

    path: Path  # e.g. /sys/fs/cgroup/system.slice/jupyter-ada.service
    relative: str  # below the tree's root: system.slice/jupyter-ada.service
    controllers: frozenset[str]  # what its cgroup.controllers offers

    @property
    def containers(self) -> Path:
        return self.path / CONTAINERS


def own_v2_group() -> str | None:
    """This process's group in the v2 tree (``0::PATH`` in /proc/self/cgroup)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def find(unified: Path | None) -> UnitGroup | None:
    """The group delegated to this process's unit, or None: the group this process is in (or
    the one above, once it moved itself into ``server``), if it and the files nesting writes
    are this user's and writable. Only meaningful without root (root owns every group)."""
    own = own_v2_group()
    if unified is None or not own or own == "/":
        return None
    candidates = [PurePosixPath(own)]
    if candidates[0].name == SERVER:
        candidates.insert(0, candidates[0].parent)
    for candidate in candidates:
        relative = str(candidate).strip("/")
        path = unified / relative
        if relative and _delegated_to_me(path):
            return UnitGroup(path, relative, _controllers(path))
    return None


def _delegated_to_me(path: Path) -> bool:
    me = os.geteuid()  # in a user namespace too: its files' owners are mapped the same way
    try:
        owned = all(os.stat(each).st_uid == me
                    for each in (path, *(path / name for name in DELEGATED_FILES)))
    except OSError:
        return False
    return owned and all(os.access(each, os.W_OK)
                         for each in (path, *(path / name for name in DELEGATED_FILES)))


def _controllers(path: Path) -> frozenset[str]:
    return frozenset((files.read_optional(path / "cgroup.controllers") or "").split())


def leaf_step(unit: UnitGroup, enable: str) -> Step:
    """The step that moves the unit's processes into ``server``, makes ``containers`` and (v2
    with controllers) passes `enable`, e.g. "+memory +pids", on from the unit's group."""
    server = unit.path / SERVER
    shell = (f"mkdir -p {server} {unit.containers}; for pid in $(cat {unit.path}/cgroup.procs);"
             f" do echo $pid > {server}/cgroup.procs; done")
    if enable:
        shell += f"; echo {enable} > {unit.path}/cgroup.subtree_control"
    return Step(shell, "v2 lets no process stay in a group that holds other groups' processes"
                       " or passes controllers on: the unit's own go to a leaf of their own",
                partial(make_leaf, unit, enable))


def make_leaf(unit: UnitGroup, enable: str) -> None:
    """Run `leaf_step`; cheap when done already (nothing to move, the same controllers)."""
    server = unit.path / SERVER
    files.mkdir_parent(server)
    files.mkdir_parent(unit.containers)
    for _ in range(MOVE_ROUNDS):
        pids = files.procs(unit.path / "cgroup.procs")
        if not pids:
            break
        for pid in pids:
            try:
                files.write(server / "cgroup.procs", str(pid))
            except files.CgroupError:
                pass  # it exited meanwhile; the next round sees what it forked
    else:
        raise files.CgroupError(f"cannot empty {unit.path}: its processes keep forking; stop "
                                "what runs in the unit, then try again")
    if enable:
        files.write(unit.path / "cgroup.subtree_control", enable)
