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

Devices: where the v1 devices controller exists, every group is made with runc's rules, so
container root (which keeps CAP_MKNOD) can make a node for the host's disk but not open it::

    echo a > /sys/fs/cgroup/devices/contained/web/devices.deny
    echo "c 1:3 rwm" > /sys/fs/cgroup/devices/contained/web/devices.allow   # null, and so on

cgroup v2 has no such files: runc and crun attach a BPF program (BPF_CGROUP_DEVICE) instead.
We do not assemble BPF by hand, so on v2 the rule is ``nodev`` on every mount the container
can write (`contained.runtime.rootfs`), which holds on v1, v2 and rootless alike.

Groups live under a parent: ``contained-TAG`` by default, one per home (TAG is the home's tag,
a hash of its real path: `contained.home.home_tag`), or ``$CONTAINED_CGROUP_PARENT``. Why a
parent per home: `gc` removes the groups under its parent that no container of its own still
uses (what a crash left), so with one parent for the whole machine one student's `contained gc`
killed every other student's containers. With a parent of its own, everything under it is the
home's, including groups nothing recorded (a runner killed before writing anything). Where
``$CONTAINED_CGROUP_PARENT`` makes several homes share a parent, `gc` is told which names its
home can prove its own (`gc`'s `ours`) and leaves the rest alone.
"""

import errno
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from contained import home
from contained.errors import ContainedError
from contained.runtime.plan import Step

#: the controllers a container's limits use, in the order their steps are shown
CONTROLLERS = ("memory", "cpu", "pids")
#: v1 hierarchies a group may have a directory in (cpuacct measures CPU time, freezer stops,
#: devices says which device nodes its processes may open)
V1_CONTROLLERS = ("memory", "cpu", "pids", "cpuacct", "freezer", "devices")

#: runc's default device rules: make any node (mknod is harmless where nothing opens it), open
#: only null, zero, full, random, urandom, tty, console, ptmx and the pseudo-terminals
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")
#: /dev/fuse, for a group whose root is served by fuse-overlayfs (it runs inside the group)
FUSE_DEVICE = "c 10:229 rwm"

PARENT_ENV = "CONTAINED_CGROUP_PARENT"
DEFAULT_PARENT = "contained"

#: Docker's floor: below this a container cannot even start its shell
MIN_MEMORY = 6 * 1024 * 1024
#: the CFS accounting period; a quota of cpus * period per period gives `cpus` CPUs
CPU_PERIOD_US = 100_000
#: the smallest quota the kernel accepts (1 ms per period, so 0.01 CPUs)
MIN_CPUS = 0.01
#: a memory limit above this many times the machine's memory is a typo, not a limit
MAX_MEMORY_FACTOR = 1024
#: podman's default process limit, for every container that has a cgroup (docker's is none)
DEFAULT_PIDS = 2048
#: the kernel's most processes (PID_MAX_LIMIT on 64-bit): pids.max refuses more
MAX_PIDS = 4 * 1024 * 1024

#: v1 reports "no memory limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages)
_V1_UNLIMITED = 1 << 62

#: cgroup.kill came in Linux 5.14, cgroup.freeze in 5.2
_KILL_KERNEL = (5, 14)
_FREEZE_KERNEL = (5, 2)

#: how long kill() keeps trying, and how long rmdir is retried while the kernel reaps exits
KILL_TIMEOUT = 5.0
RMDIR_TIMEOUT = 2.0
_POLL = 0.005

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?) ?([kmg]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class BadLimit(ContainedError):
    """A memory, CPU or pids limit that cannot be parsed or is out of range."""


class BadCgroupName(ContainedError):
    """A group or parent name that is not a single safe directory name."""


class CgroupError(ContainedError):
    """Reading or writing a cgroup file, or making or removing a group, failed."""


class ControllerMissing(CgroupError):
    """A limit was asked for but this host has no such controller."""


class CgroupInUse(CgroupError):
    """A group with this name already holds processes (another container is running)."""


@dataclass
class Limits:
    """What a container may use; None means unlimited."""

    memory: int | None = None  # bytes
    cpus: float | None = None  # CPUs' worth of time, e.g. 0.5
    pids: int | None = None  # processes and threads


@dataclass
class Usage:
    """One cheap reading of what a group uses now, with its limits (None: unlimited)."""

    memory: int  # bytes charged to the group (0 if the host has no memory controller)
    memory_peak: int | None  # the highest `memory` so far, if the kernel keeps it
    cpu_seconds: float  # CPU time used by every process that was ever in the group
    pids: int  # processes and threads in the group now
    memory_limit: int | None
    cpu_limit: float | None
    pids_limit: int | None


def cpu_rates(samples: list[tuple[float, Usage]]) -> tuple[list[float], list[float]]:
    """CPUs used between consecutive (seconds, Usage) readings, at each interval's end
    (1.0 = one whole CPU): the growth of the group's CPU time over the time between them."""
    times, rates = [], []
    for (t0, u0), (t1, u1) in zip(samples, samples[1:], strict=False):
        if t1 > t0:
            times.append(t1)
            rates.append((u1.cpu_seconds - u0.cpu_seconds) / (t1 - t0))
    return times, rates


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


# --- parsing limits, as `contained run --memory 32M --cpus 0.5 --pids-limit 64` does ---------


def parse_memory(text: str) -> int:
    """Bytes for Docker's memory syntax: "16m", "32M", "1g", "512k", "1048576", "1.5g"."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise BadLimit(
            f"invalid memory limit {text!r}: use a number with an optional unit b, k, m or g, "
            "e.g. 32M"
        )
    number, unit, _ = match.groups()
    value = int(float(number) * _UNITS[unit.lower()])
    if value < MIN_MEMORY:
        raise BadLimit(f"memory limit {text!r} is too small: the minimum is 6M, e.g. use 32M")
    most = _machine_memory() * MAX_MEMORY_FACTOR
    if value > most:
        raise BadLimit(
            f"memory limit {text!r} is more than {MAX_MEMORY_FACTOR} times what this machine "
            f"has ({_machine_memory() >> 20}M): check the number, e.g. use 512M"
        )
    return value


def _machine_memory() -> int:
    """Bytes of RAM (MemTotal); the limit check falls back to the kernel's largest value."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return (1 << 63) // MAX_MEMORY_FACTOR


def parse_cpus(text: str) -> float:
    """CPUs' worth of time for Docker's --cpus syntax: "0.5", "2"."""
    available = os.cpu_count() or 1
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (MIN_CPUS <= value <= available):
        raise BadLimit(f"invalid cpus {text!r}: {_cpus_range(available)}; e.g. use 0.5")
    return value


def _cpus_range(available: int) -> str:
    # Docker's words ("Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available")
    return (f"the range of CPUs is from {MIN_CPUS} to {available:.2f}, as there are only "
            f"{available} CPUs available")


def parse_pids(text: str) -> int:
    """A process count for --pids-limit: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise BadLimit(f"invalid pids limit {text!r}: use a whole number of at least 1, e.g. 64")
    return int(text)


# --- finding the trees ---------------------------------------------------------------------


def detect(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupHost:
    """Find the cgroup trees from the mount table and say what works and what does not."""
    unified, v1_mounts = _cgroup_mounts(mountinfo.read_text())
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
        can_kill=unified is not None and kernel >= _KILL_KERNEL,
        can_freeze=unified is not None and kernel >= _FREEZE_KERNEL,
    )
    host.problems = _problems(host)
    return host


def _cgroup_mounts(mountinfo: str) -> tuple[Path | None, dict[str, Path]]:
    """The v2 mount point and each v1 controller's mount point, from /proc/self/mountinfo."""
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        # "36 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory":
        # optional fields before " - " vary in number, so split there first
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point = Path(_unescape(fields[4]))
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = mount_point
        elif fstype == "cgroup":
            for option in options:
                # the first mount wins: later ones are usually bind mounts of the same tree
                if option in V1_CONTROLLERS and option not in v1:
                    v1[option] = mount_point
    return unified, v1


def _unescape(path: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _kernel_version() -> tuple[int, int]:
    numbers = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)


def _problems(host: CgroupHost) -> list[str]:
    problems = []
    if host.mode == "none":
        return [
            "no cgroup filesystem is mounted: limits and usage will not work; "
            "mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
        ]
    for name in CONTROLLERS:
        if host.where(name) is None:
            root = host.unified or Path("/sys/fs/cgroup")
            problems.append(
                f"{name} controller not enabled: it is neither in {root}/cgroup.controllers "
                f"nor mounted as a v1 tree, so --{'cpus' if name == 'cpu' else name} limits "
                f"will not work; check the kernel's boot options (cgroup_enable={name})"
            )
    for root in _roots(host):
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


def _roots(host: CgroupHost) -> list[Path]:
    """Every tree's mount point a group may live in, v2 first, without duplicates."""
    roots = [host.unified] if host.unified is not None else []
    for mount in host.v1_mounts.values():
        if mount not in roots:
            roots.append(mount)
    return roots


def parent_name() -> str:
    """The directory every container's group lives under: $CONTAINED_CGROUP_PARENT, or
    contained-TAG for this home (see the module's docstring)."""
    parent = os.environ.get(PARENT_ENV) or f"{DEFAULT_PARENT}-{home.home_tag()}"
    _check_name(parent, "cgroup parent")
    return parent


def parent_is_shared() -> bool:
    """Whether $CONTAINED_CGROUP_PARENT chose the parent, which other homes may use too."""
    return bool(os.environ.get(PARENT_ENV))


def parent_paths(host: CgroupHost | None = None) -> list[Path]:
    """The parent directory in every tree (they may not exist)."""
    host = host or detect()
    parent = parent_name()
    return [root / parent for root in _roots(host)]


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


def _check_name(name: str, what: str = "cgroup name") -> None:
    if not _NAME.fullmatch(name):
        raise BadCgroupName(
            f"invalid {what} {name!r}: use letters, digits, '_', '.' and '-', starting with "
            "a letter or digit"
        )


# --- reading and writing cgroup files --------------------------------------------------------


def _hint(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "run as root or enable cgroup delegation"
    if error.errno == errno.ENOENT:
        return "the controller is not enabled for this group; see `contained doctor`"
    if error.errno == errno.EBUSY:
        return "the group holds processes or child groups; stop them first"
    if error.errno in (errno.EINVAL, errno.ERANGE):
        return "the kernel rejected the value; check the limit"
    if error.errno == errno.ESRCH:
        return "the process has already exited"
    return "see `contained doctor`"


def _write(path: Path, value: str) -> None:
    # os.open without O_CREAT: a missing control file is an error, never a new regular file
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise CgroupError(
            f"cannot write {value!r} to {path}: {error.strerror} — {_hint(error)}"
        ) from error


def _read_optional(path: Path) -> str | None:
    """A file that only some kernels or configurations have (memory.peak, memsw, ...)."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise CgroupError(f"cannot read {path}: {error.strerror} — {_hint(error)}") from error


def _keyed(text: str | None, key: str) -> int | None:
    """The number after `key` in a "key value" per line file (memory.events, cpu.stat, ...)."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def _procs(path: Path) -> set[int]:
    text = _read_optional(path)
    return {int(pid) for pid in text.split()} if text else set()


def _mkdir_parent(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CgroupError(f"cannot create {path}: {error.strerror} — {_hint(error)}") from error


def _make_v2_parent(parent: Path, enable: str | None) -> None:
    _mkdir_parent(parent)
    if enable:
        _write(parent / "cgroup.subtree_control", enable)


def _make_group(path: Path, name: str, make_parent=_mkdir_parent) -> None:
    """mkdir the group; a crash leftover with the same name is replaced, not reused.

    A missing parent is made — not yet made (v1 trees have no step of their own for it), or
    removed meanwhile by `gc` (it removes a parent left empty); in v2, `make_parent` also
    passes the controllers on to it.
    """
    for attempt in (1, 2, 3):
        try:
            path.mkdir()
            return
        except FileExistsError:
            break
        except FileNotFoundError:
            if attempt == 3:
                raise CgroupError(f"cannot create {path}: its parent keeps vanishing — is "
                                  "`contained gc` running in a loop?") from None
            make_parent(path.parent)
        except OSError as error:
            raise CgroupError(
                f"cannot create {path}: {error.strerror} — {_hint(error)}") from error
    pids = _procs(path / "cgroup.procs")
    if pids:
        raise CgroupInUse(
            f"cgroup {path} already holds processes {sorted(pids)}: a container named {name} "
            "is running; stop it or pick another name"
        )
    # an old group keeps its OOM counter and memory peak: recreate it so ours start at zero
    _rmdir(path)
    _make_group(path, name)


def _rmdir(path: Path) -> None:
    """rmdir, retried while the kernel finishes tearing down exited processes (EBUSY)."""
    deadline = time.monotonic() + RMDIR_TIMEOUT
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(
                    f"cannot remove {path}: {error.strerror} — {_hint(error)}"
                ) from error
        time.sleep(_POLL)


# --- a container's group ---------------------------------------------------------------------


class Cgroup:
    """One container's group: a directory in the v2 tree and/or one per v1 controller tree.

    `dirs` maps a role to its directory: "v2" for the unified tree, or a v1 controller name.
    Co-mounted v1 controllers (cpu,cpuacct) share one directory.
    """

    def __init__(self, name: str, host: CgroupHost, dirs: dict[str, Path]):
        self.name = name
        self.host = host
        self.dirs = dirs

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
        _check_name(name)
        host = host or detect()
        _check_limits(limits, host)
        group = cls(name, host, _layout(name, host))
        steps = group._create_steps(extra_devices) + group._limit_steps(limits)
        return group, steps

    def _create_steps(self, extra_devices: tuple[str, ...] = ()) -> list[Step]:
        steps = []
        v2 = self.dirs.get("v2")
        if v2 is not None:
            root, parent = v2.parent.parent, v2.parent
            wanted = [name for name in CONTROLLERS if name in self.host.v2_controllers]
            enable = " ".join(f"+{name}" for name in wanted)
            if wanted:
                steps.append(
                    Step(
                        f"echo {enable} > {root}/cgroup.subtree_control",
                        "let groups below the root use these controllers",
                        partial(_write, root / "cgroup.subtree_control", enable),
                    )
                )
            steps.append(
                Step(
                    f"mkdir -p {parent}",
                    "one parent holds every container's group",
                    partial(_mkdir_parent, parent),
                )
            )
            if wanted:
                steps.append(
                    Step(
                        f"echo {enable} > {parent}/cgroup.subtree_control",
                        "pass the controllers on to each container's group",
                        partial(_write, parent / "cgroup.subtree_control", enable),
                    )
                )
            steps.append(
                Step(
                    f"mkdir {v2}",
                    "the container's group" + ("" if wanted else ": one place to find and kill it"),
                    partial(_make_group, v2, self.name,
                            partial(_make_v2_parent, enable=enable if wanted else None)),
                )
            )
        for path in self.paths:
            if path == v2:
                continue
            steps.append(
                Step(
                    f"mkdir -p {path}",
                    f"the container's group in the v1 {path.parent.parent.name} tree",
                    partial(_make_group, path, self.name),
                )
            )
        if "devices" in self.dirs:
            steps += _device_steps(self.dirs["devices"], DEVICE_RULES + tuple(extra_devices))
        return steps

    def limit_steps(self, limits: Limits) -> list[Step]:
        """The steps that set `limits` on this (existing) group, e.g. one made ahead of time."""
        _check_limits(limits, self.host)
        return self._limit_steps(limits)

    def _limit_steps(self, limits: Limits) -> list[Step]:
        steps = []

        def write(path: Path, value: str, why: str) -> None:
            shell_value = f'"{value}"' if " " in value else value
            steps.append(Step(f"echo {shell_value} > {path}", why, partial(_write, path, value)))

        if limits.memory is not None:
            path = self._dir("memory")
            if self.host.where("memory") == "v2":
                write(path / "memory.max", str(limits.memory), "above this the kernel OOM-kills")
                steps.append(
                    Step(
                        f"echo 0 > {path / 'memory.swap.max'}",
                        "no escaping the limit into swap",
                        partial(_write_if_present, path / "memory.swap.max", "0"),
                    )
                )
            else:
                write(
                    path / "memory.limit_in_bytes",
                    str(limits.memory),
                    "above this the kernel OOM-kills",
                )
                memsw = self.host.v1_mounts["memory"] / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    # memory+swap may not be below memory alone, so it is written second
                    write(
                        path / "memory.memsw.limit_in_bytes",
                        str(limits.memory),
                        "no escaping the limit into swap",
                    )
        if limits.cpus is not None:
            path = self._dir("cpu")
            quota = round(limits.cpus * CPU_PERIOD_US)
            if self.host.where("cpu") == "v2":
                write(
                    path / "cpu.max",
                    f"{quota} {CPU_PERIOD_US}",
                    f"{quota} us of CPU time per {CPU_PERIOD_US} us",
                )
            else:
                write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US), "the accounting period")
                write(path / "cpu.cfs_quota_us", str(quota), "CPU time allowed per period")
        if limits.pids is not None:
            write(self._dir("pids") / "pids.max", str(limits.pids), "fork fails above this")
        return steps

    # finding

    @classmethod
    def open(cls, name: str, host: CgroupHost | None = None) -> "Cgroup | None":
        """The existing group of container `name`, or None if it has no directory anywhere."""
        _check_name(name)
        host = host or detect()
        dirs = {role: path for role, path in _every_dir(name, host).items() if path.is_dir()}
        return cls(name, host, dirs) if dirs else None

    def _dir(self, controller: str) -> Path | None:
        where = self.host.where(controller)
        return self.dirs.get("v2" if where == "v2" else controller) if where else None

    # processes

    def join(self, pid: int) -> None:
        """Move process `pid` into the group, in every tree (0 means the calling process)."""
        for procs in self.procs_files:
            _write(procs, str(pid))

    def pids(self) -> set[int]:
        """The processes in the group, in any of its trees."""
        found: set[int] = set()
        for procs in self.procs_files:
            found |= _procs(procs)
        return found

    # measuring

    def usage(self) -> Usage:
        """What the group uses now; a few small reads, cheap enough to poll every 100 ms."""
        memory = self._dir("memory")
        v2_memory = self.host.where("memory") == "v2"
        memory_now = memory_peak = memory_limit = None
        if memory is not None:
            memory_now = _read_optional(
                memory / ("memory.current" if v2_memory else "memory.usage_in_bytes")
            )
            memory_peak = _read_optional(
                memory / ("memory.peak" if v2_memory else "memory.max_usage_in_bytes")
            )
            memory_limit = _read_optional(
                memory / ("memory.max" if v2_memory else "memory.limit_in_bytes")
            )
        pids_dir = self._dir("pids")
        pids_now = _read_optional(pids_dir / "pids.current") if pids_dir else None
        pids_limit = _read_optional(pids_dir / "pids.max") if pids_dir else None
        return Usage(
            memory=int(memory_now) if memory_now else 0,
            memory_peak=int(memory_peak) if memory_peak else None,
            cpu_seconds=self._cpu_seconds(),
            pids=int(pids_now) if pids_now else len(self.pids()),
            memory_limit=_limit(memory_limit),
            cpu_limit=self._cpu_limit(),
            pids_limit=_limit(pids_limit),
        )

    def _cpu_seconds(self) -> float:
        # v1's cpuacct counts nanoseconds; any v2 group's cpu.stat counts microseconds, even
        # without the cpu controller
        if "cpuacct" in self.dirs:
            text = _read_optional(self.dirs["cpuacct"] / "cpuacct.usage")
            return int(text) / 1e9 if text else 0.0
        if "v2" in self.dirs:
            usec = _keyed(_read_optional(self.dirs["v2"] / "cpu.stat"), "usage_usec")
            return usec / 1e6 if usec is not None else 0.0
        return 0.0

    def _cpu_limit(self) -> float | None:
        path = self._dir("cpu")
        if path is None:
            return None
        if self.host.where("cpu") == "v2":
            text = _read_optional(path / "cpu.max")
            if not text or text.split()[0] == "max":
                return None
            quota, period = text.split()
            return int(quota) / int(period)
        quota = _read_optional(path / "cpu.cfs_quota_us")
        period = _read_optional(path / "cpu.cfs_period_us")
        if not quota or not period or int(quota) < 0:
            return None
        return int(quota) / int(period)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over the memory limit."""
        path = self._oom_file()
        return 0 if path is None else _keyed(_read_optional(path), "oom_kill") or 0

    def oom_counter(self) -> Callable[[], int]:
        """`oom_kills` through a file opened now, which keeps working after this process's
        root has changed (a container's PID 1 reads it after pivot_root)."""
        path = self._oom_file()
        if path is None:
            return lambda: 0
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return lambda: _keyed(os.pread(fd, 4096, 0).decode(), "oom_kill") or 0

    def _oom_file(self) -> Path | None:
        memory = self._dir("memory")
        if memory is None:
            return None
        name = "memory.events" if self.host.where("memory") == "v2" else "memory.oom_control"
        return memory / name

    # stopping

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process in the group, again and again until none is left."""
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"cannot empty cgroup {self.paths[0]}: processes {sorted(self.pids())} "
                    "survived SIGKILL (stuck in the kernel?); try `contained stop` again"
                )
            self._kill_once()
            # the signal is sent at once but dying takes a moment: wait a little before retrying
            settle = min(deadline, time.monotonic() + 0.5)
            while self.pids() and time.monotonic() < settle:
                time.sleep(_POLL)

    def _kill_once(self) -> None:
        v2 = self.dirs.get("v2")
        if v2 is not None and self.host.can_kill:
            # the kernel kills the whole tree at once, so a fork bomb cannot race the killer
            _write(v2 / "cgroup.kill", "1")
            return
        if v2 is not None and self.host.can_freeze:
            self._kill_frozen(v2 / "cgroup.freeze", "1", "0", partial(_v2_frozen, v2))
        elif "freezer" in self.dirs:
            state = self.dirs["freezer"] / "freezer.state"
            self._kill_frozen(state, "FROZEN", "THAWED", partial(_v1_frozen, state))
        else:
            _kill_each(self.pids())

    def _kill_frozen(
        self, control: Path, freeze: str, thaw: str, is_frozen: Callable[[], bool]
    ) -> None:
        # frozen processes cannot fork, so the list of pids stays complete while we kill it
        _write(control, freeze)
        try:
            deadline = time.monotonic() + 1.0
            while not is_frozen() and time.monotonic() < deadline:
                time.sleep(_POLL)
            _kill_each(self.pids())
        finally:
            # a SIGKILLed process only dies once it runs again
            _write(control, thaw)

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove its directories. Idempotent."""
        if any(path.is_dir() for path in self.paths):
            self.kill()
        for path in self.paths:
            _rmdir(path)

    def remove_steps(self) -> list[Step]:
        """The steps of remove(): stop what is left, then rmdir each directory."""
        v2 = self.dirs.get("v2")
        if v2 is not None and self.host.can_kill:
            kill_shell = f"echo 1 > {v2 / 'cgroup.kill'}"
        elif v2 is not None and self.host.can_freeze:
            kill_shell = (
                f"echo 1 > {v2 / 'cgroup.freeze'}; kill -9 $(cat {v2 / 'cgroup.procs'});"
                f" echo 0 > {v2 / 'cgroup.freeze'}"
            )
        elif "freezer" in self.dirs:
            state = self.dirs["freezer"] / "freezer.state"
            kill_shell = (
                f"echo FROZEN > {state}; kill -9 $(cat {self.procs_files[0]}); "
                f"echo THAWED > {state}"
            )
        else:
            kill_shell = f"kill -9 $(cat {self.procs_files[0]})" if self.paths else "true"
        steps = [Step(kill_shell, "a group can only be removed once it is empty", self.kill)]
        for path in self.paths:
            steps.append(Step(f"rmdir {path}", "", partial(_rmdir, path)))
        return steps


def _layout(name: str, host: CgroupHost) -> dict[str, Path]:
    """The directories a new group gets: what its limits, measures and stopping need."""
    parent = parent_name()
    dirs: dict[str, Path] = {}
    if host.unified is not None:
        # even with no controllers, a v2 group lists every process and kills them all at once
        dirs["v2"] = host.unified / parent / name
    for controller in CONTROLLERS:
        if host.where(controller) == "v1":
            dirs[controller] = host.v1_mounts[controller] / parent / name
    if "v2" not in dirs and "cpuacct" in host.v1_mounts:
        dirs["cpuacct"] = host.v1_mounts["cpuacct"] / parent / name
    v2_stops = "v2" in dirs and (host.can_kill or host.can_freeze)
    if not v2_stops and "freezer" in host.v1_mounts:
        dirs["freezer"] = host.v1_mounts["freezer"] / parent / name
    if "devices" in host.v1_mounts:
        dirs["devices"] = host.v1_mounts["devices"] / parent / name
    return dirs


def _device_steps(path: Path, rules: tuple[str, ...]) -> list[Step]:
    """Deny every device, then allow `rules` (before any process joins the group)."""
    steps = [Step(f"echo a > {path / 'devices.deny'}",
                  "no device opens unless allowed below: not the host's disks, not its consoles",
                  partial(_write, path / "devices.deny", "a"))]
    for rule in rules:
        steps.append(Step(f'echo "{rule}" > {path / "devices.allow"}', "",
                          partial(_write, path / "devices.allow", rule)))
    return steps


def _every_dir(name: str, host: CgroupHost) -> dict[str, Path]:
    """Every directory a group of this name may have, whatever layout made it."""
    parent = parent_name()
    dirs = {"v2": host.unified / parent / name} if host.unified is not None else {}
    for controller in V1_CONTROLLERS:
        if controller in host.v1_mounts:
            dirs[controller] = host.v1_mounts[controller] / parent / name
    return dirs


def _check_limits(limits: Limits, host: CgroupHost) -> None:
    if limits.memory is not None and limits.memory < MIN_MEMORY:
        raise BadLimit(f"memory limit {limits.memory} bytes is too small: the minimum is 6M")
    if limits.cpus is not None and not (MIN_CPUS <= limits.cpus <= (os.cpu_count() or 1)):
        raise BadLimit(f"invalid cpus {limits.cpus}: {_cpus_range(os.cpu_count() or 1)}")
    if limits.pids is not None and limits.pids < 1:
        raise BadLimit(f"invalid pids limit {limits.pids}: use a whole number of at least 1")
    for controller, value in (
        ("memory", limits.memory),
        ("cpu", limits.cpus),
        ("pids", limits.pids),
    ):
        if value is not None and host.where(controller) is None:
            raise ControllerMissing(
                f"cannot limit {controller}: this host has no {controller} controller; "
                "run `contained doctor` or drop the limit"
            )


def _limit(text: str | None) -> int | None:
    if text is None or text.strip() == "max":
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def _write_if_present(path: Path, value: str) -> None:
    # memory.swap.max exists only with swap accounting; without it there is nothing to close
    if path.exists():
        _write(path, value)


def _kill_each(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _v2_frozen(path: Path) -> bool:
    return _keyed(_read_optional(path / "cgroup.events"), "frozen") == 1


def _v1_frozen(state: Path) -> bool:
    return (_read_optional(state) or "").strip() == "FROZEN"


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
        if not _NAME.fullmatch(name) or (ours is not None and not ours(name)):
            continue  # not ours: nothing we create has such a name, or another home made it
        group = Cgroup.open(name, host)
        if group is not None:
            group.remove()
            removed.append(name)
    for parent in parent_paths(host):
        # Left empty, the parent goes too: nothing of ours stays in the tree. (A container
        # being created meanwhile makes it again: see _make_group.)
        try:
            parent.rmdir()
        except OSError:
            pass  # absent, or still holding groups
    return removed
