"""Hand a student a cgroup of their own, with a budget, as systemd's ``Delegate=yes`` does.

Part of `contained.classroom` (notebook 02 from the teacher's side). Without root, a student's
containers can only be limited inside a group root made for them and gave them. In every tree a
rootless container uses (`cgroups.delegated_roots`), for user ``ada`` (uid 1001)::

    mkdir /sys/fs/cgroup/contained-user-1001                    # root's: its limits stay root's
    echo +memory +cpu +pids > /sys/fs/cgroup/contained-user-1001/cgroup.subtree_control  # v2
    mkdir /sys/fs/cgroup/contained-user-1001/server             # her Jupyter server goes here
    mkdir /sys/fs/cgroup/contained-user-1001/containers         # her containers' groups go here
    chown 1001 /sys/fs/cgroup/contained-user-1001/cgroup.procs  # v2: the common ancestor
    chown 1001 .../containers .../containers/{cgroup.procs,cgroup.subtree_control,cgroup.threads}
    echo 2G > /sys/fs/cgroup/contained-user-1001/containers/memory.max    # the budget
    echo PID > /sys/fs/cgroup/contained-user-1001/server/cgroup.procs     # --move PID

Why three levels. The budget's files must stay root's, or she could lift it: so the group she
owns (``containers``) sits in one she does not (``contained-user-UID``), and she cannot remove
it and make a fresh one. Why ``server``: on v2, moving a process between two groups needs write
access to ``cgroup.procs`` of their common ancestor, so the process that starts her containers
(her Jupyter server, and the runner it forks) must already live under ``contained-user-UID``;
and v2 allows no process in a group that passes controllers on, hence a leaf of its own. The
budget holds her containers only, not her server.
"""

import json
import os
import pwd
import time
from pathlib import Path

from contained.errors import ContainedError
from contained.records import asdict, record
from contained.runtime import cgroups
from contained.runtime.cgroups import files
from contained.runtime.plan import run_steps

#: where `contained classroom init` keeps the budget every student gets (one place)
CONFIG_ENV = "CONTAINED_CLASSROOM_CONFIG"
DEFAULT_CONFIG = Path("/etc/contained/classroom.json")

#: the files a delegatee writes, as systemd chowns them (cgroups(7), "Delegation")
V2_DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
V1_DELEGATED_FILES = ("cgroup.procs", "tasks")


class DelegationError(ContainedError):
    """Delegating (or taking back) a student's cgroup failed."""


@record(frozen=True)
class Budget:
    """What all of a student's containers together may use; None: no limit."""

    memory: str | None = None  # e.g. "2G"
    cpus: str | None = None  # e.g. "1.5"
    pids: int | None = None

    def limits(self) -> cgroups.Limits:
        return cgroups.Limits(
            memory=cgroups.parse_memory(self.memory) if self.memory else None,
            cpus=cgroups.parse_cpus(str(self.cpus)) if self.cpus else None,
            pids=int(self.pids) if self.pids else None)


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_budget() -> Budget:
    """The classroom's budget per student, from `config_path` (none if it is absent)."""
    try:
        data = json.loads(config_path().read_text())
    except FileNotFoundError:
        return Budget()
    except (OSError, ValueError) as error:
        raise DelegationError(f"cannot read {config_path()}: {error}; fix or remove it") \
            from error
    return Budget(**{key: data.get(key) for key in ("memory", "cpus", "pids")})


def save_budget(budget: Budget) -> Path:
    path = config_path()
    budget.limits()  # refuse a malformed budget before writing it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(budget), indent=1) + "\n")
    return path


def _account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise DelegationError(f"no user {user!r} on this machine: create it first "
                              "(useradd -m)") from None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise DelegationError("delegating cgroups needs root: run it with sudo")


def delegate(user: str, budget: Budget | None = None, move: tuple[int, ...] = (),
             host: cgroups.CgroupHost | None = None) -> list[Path]:
    """Make and hand over `user`'s groups in every tree, set the budget, move `move` into
    ``server``. Idempotent: run again, it sets the budget anew. Returns the top groups."""
    _require_root()
    account = _account(user)
    if account.pw_uid == 0:
        raise DelegationError("root needs no delegation: its containers make their own groups")
    host = host or cgroups.detect()
    budget = load_budget() if budget is None else budget
    roots = cgroups.delegated_roots(host)
    if not roots:
        raise DelegationError("no cgroup tree is mounted here: see `contained doctor`")
    tops = []
    for root in roots:
        tops.append(_delegate_in(root, root == host.unified, host, account))
    _set_budget(host, account.pw_uid, budget)
    for pid in move:
        move_in(user, pid, host)
    return tops


def _delegate_in(root: Path, v2: bool, host: cgroups.CgroupHost,
                 account: pwd.struct_passwd) -> Path:
    top = root / cgroups.delegated_name(account.pw_uid)
    enable = " ".join(f"+{name}" for name in cgroups.CONTROLLERS
                      if v2 and name in host.v2_controllers)
    if enable:
        files.write(root / "cgroup.subtree_control", enable)
    for path in (top, top / cgroups.DELEGATED_SERVER, top / cgroups.DELEGATED_CONTAINERS):
        files.mkdir_parent(path)
        if path == top and enable:
            # before `server` holds anything: v2 passes controllers only past empty groups
            files.write(top / "cgroup.subtree_control", enable)
    containers = top / cgroups.DELEGATED_CONTAINERS
    if enable:
        files.write(containers / "cgroup.subtree_control", enable)
    owned = [containers] + [containers / name for name in
                            (V2_DELEGATED_FILES if v2 else V1_DELEGATED_FILES)]
    if v2:
        owned.append(top / "cgroup.procs")  # the common ancestor of server and containers
    for path in owned:
        if path.exists():
            os.chown(path, account.pw_uid, account.pw_gid)
    return top


def _set_budget(host: cgroups.CgroupHost, uid: int, budget: Budget) -> None:
    """The budget, in the root-owned files of ``containers`` (v2 or each v1 tree)."""
    name = cgroups.DELEGATED_CONTAINERS
    inner = Path(cgroups.delegated_name(uid)) / name
    dirs = {}
    if host.unified is not None:
        dirs["v2"] = host.unified / inner
    for controller in cgroups.CONTROLLERS:
        if host.where(controller) == "v1":
            dirs[controller] = host.v1_mounts[controller] / inner
    group = cgroups.Cgroup(name, host, dirs)
    limits = budget.limits()
    run_steps(group.limit_steps(limits))
    _lift_unset(group, limits)


def _lift_unset(group: cgroups.Cgroup, limits: cgroups.Limits) -> None:
    """A budget removed from the config is lifted on the next delegate."""
    if limits.memory is None:
        _write_any(group, "memory", ("memory.max", "max"), ("memory.limit_in_bytes", "-1"))
    if limits.pids is None:
        _write_any(group, "pids", ("pids.max", "max"), ("pids.max", "max"))
    if limits.cpus is None:
        _write_any(group, "cpu", ("cpu.max", "max"), ("cpu.cfs_quota_us", "-1"))


def _write_any(group: cgroups.Cgroup, controller: str, v2: tuple[str, str],
               v1: tuple[str, str]) -> None:
    where = group.host.where(controller)
    if where == "v2":
        files.write_if_present(group.dirs["v2"] / v2[0], v2[1])
    elif where == "v1":
        files.write_if_present(group.dirs[controller] / v1[0], v1[1])


def move_in(user: str, pid: int, host: cgroups.CgroupHost | None = None) -> None:
    """Move process `pid` (one of `user`'s: their Jupyter server) into their ``server`` group,
    in every tree, so the containers it starts can be moved into ``containers``."""
    _require_root()
    account = _account(user)
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        raise DelegationError(f"no process {pid}: give the pid of {user}'s server") from None
    if owner != account.pw_uid:
        raise DelegationError(f"process {pid} is not {user}'s (it runs as uid {owner}): only a "
                              "student's own processes go into their group")
    host = host or cgroups.detect()
    for root in cgroups.delegated_roots(host):
        server = root / cgroups.delegated_name(account.pw_uid) / cgroups.DELEGATED_SERVER
        if not server.is_dir():
            raise DelegationError(f"{server} does not exist: run `contained classroom delegate "
                                  f"{user}` first")
        files.write(server / "cgroup.procs", str(pid))


def server_procs(uid: int, host: cgroups.CgroupHost | None = None) -> list[Path]:
    """The cgroup.procs files of user `uid`'s ``server`` group, one per tree. Root writes "0"
    to each in a child before it drops to the user and execs (the hub's spawner does), so
    nothing the server forks can start outside."""
    host = host or cgroups.detect()
    return [root / cgroups.delegated_name(uid) / cgroups.DELEGATED_SERVER / "cgroup.procs"
            for root in cgroups.delegated_roots(host)]


def undelegate(user: str, host: cgroups.CgroupHost | None = None) -> list[Path]:
    """Take the groups back: the student's containers are killed, their other processes go
    back to the tree's root group, and every directory is removed. Returns those removed."""
    _require_root()
    uid = _account(user).pw_uid if not user.isdigit() else int(user)
    host = host or cgroups.detect()
    removed = []
    for root in cgroups.delegated_roots(host):
        top = root / cgroups.delegated_name(uid)
        if top.is_dir():
            _remove_tree(top, root)
            removed.append(top)
    return removed


def _remove_tree(top: Path, root: Path) -> None:
    # deepest first: a group can only be removed once it has no children and no processes
    groups = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts),
                    reverse=True)
    containers = top / cgroups.DELEGATED_CONTAINERS
    for group in groups:
        procs = group / "cgroup.procs"
        if group == containers or containers in group.parents:
            for _ in range(50):  # a fork bomb refills: kill until empty
                pids = files.procs(procs)
                if not pids:
                    break
                files.kill_each(pids)
                time.sleep(0.02)
        else:
            for pid in files.procs(procs):
                try:
                    files.write(root / "cgroup.procs", str(pid))
                except files.CgroupError:
                    pass  # it exited meanwhile
        files.rmdir(group)
