"""Check your machine: what works here, and what to change where something does not.

Taught in notebook 00. Each check is what you would look at by hand::

    id -u                                   # root?
    cat /proc/sys/user/max_user_namespaces  # rootless containers possible?
    grep overlay /proc/filesystems          # overlayfs?
    grep Seccomp /proc/self/status          # seccomp filters? (the line is there: yes)
    cc -static -o tiny-init tiny_init.c     # the tiny C init of named containers builds?
    cat /proc/self/mountinfo | grep cgroup  # cgroup v2, v1 or both?
    command -v skopeo docker-registry       # the tools the workbook uses
    df -h /var/lib/contained                # where the store lives, and how full it is

A check never changes anything. Its `fix` says what to run when it fails.
"""

import math
import os
import shutil
from pathlib import Path

from contained import home, network
from contained.records import record
from contained.runtime import cgroups
from contained.units import format_size


@record(frozen=True)
class Check:
    """One thing that works or not: `ok`, what was seen, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        text = f"[{mark}] {self.name}: {self.detail}"
        return text + (f" — {self.fix}" if not self.ok and self.fix else "")


def checks() -> list[Check]:
    """Every check, in the order notebook 00 explains them."""
    return [_root(), _user_namespaces(), _overlay(), _seccomp(), _tiny_init(), *_cgroups(),
            *_tools(), _store(), *_network()]


def can_run_containers() -> bool:
    """True when this process can create containers (root, or rootless where supported)."""
    return os.geteuid() == 0


def privilege_hint() -> str:
    """One sentence for a cell that cannot run here, saying why and what would make it run."""
    return ("this step needs root (mounts, namespaces and cgroups): run the workbook on a lab "
            "VM as root, e.g. `sudo bash scripts/setup.sh`")


def _root() -> Check:
    uid = os.geteuid()
    return Check("root", uid == 0, f"running as uid {uid}",
                 "run as root (sudo) for mounts, cgroups and networking", required=False)


def _user_namespaces() -> Check:
    limit = _read_int("/proc/sys/user/max_user_namespaces")
    debian_switch = _read_int("/proc/sys/kernel/unprivileged_userns_clone")
    apparmor = _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if limit == 0:
        return Check("user namespaces", False, "user.max_user_namespaces is 0",
                     "sysctl -w user.max_user_namespaces=15000", required=False)
    if debian_switch == 0:
        return Check("user namespaces", False, "kernel.unprivileged_userns_clone is 0",
                     "sysctl -w kernel.unprivileged_userns_clone=1", required=False)
    if apparmor == 1:
        return Check("user namespaces", False, "AppArmor restricts unprivileged user namespaces",
                     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0", required=False)
    return Check("user namespaces", True, f"allowed (up to {limit})", required=False)


def _overlay() -> Check:
    filesystems = Path("/proc/filesystems").read_text()
    loaded = "overlay" in filesystems.split()
    module = any(Path("/lib/modules", os.uname().release).glob("kernel/fs/overlayfs*"))
    return Check("overlayfs", loaded or module,
                 "available" if loaded else ("as a module" if module else "not in this kernel"),
                 "modprobe overlay")


def _seccomp() -> Check:
    """Every container's system-call filter (`contained.runtime.seccomp`) needs the kernel's seccomp
    filters and libseccomp."""
    from contained.runtime import seccomp

    try:
        seccomp.check_available()
    except seccomp.SeccompUnavailable as error:
        return Check("seccomp", False, str(error))
    return Check("seccomp", True, "filters work here, with libseccomp (Docker's default "
                 "profile for every container)")


def _tiny_init() -> Check:
    """A named container's PID 1 (`contained.runtime.tiny_init`): compiled once, or Python."""
    from contained.runtime import tiny_init

    fd = tiny_init.open_binary()
    if fd is None:
        return Check("tiny init", False, "no C compiler with a static libc: each named "
                     "container keeps a ~15 MiB Python PID 1 instead of ~0.1 MiB, exec joins "
                     "it from outside (~3x slower), and a notebook's throwaway containers "
                     "cost about twice the CPU",
                     "apt-get install gcc libc6-dev", required=False)
    os.close(fd)
    return Check("tiny init", True, "named containers' PID 1 is a static C program that "
                 "also starts what exec sends, and so is a notebook's throwaway containers' "
                 "(contained/runtime/tiny_init.c)")


def _cgroups() -> list[Check]:
    host = cgroups.detect()
    where = ", ".join(f"{controller}: {place or 'missing'}"
                      for controller, place in host.controllers.items())
    found = [Check("cgroups", host.mode != "none", f"{host.mode} ({where})",
                   "mount cgroup2 on /sys/fs/cgroup")]
    found += [Check("cgroups", False, problem, required=False) for problem in host.problems]
    return found


def _tools() -> list[Check]:
    tools = {
        "skopeo": "apt-get install skopeo",
        "docker-registry": "apt-get install docker-registry",
        "busybox": "apt-get install busybox-static",
        "unshare": "apt-get install util-linux",
        "ip": "apt-get install iproute2",
    }
    return [Check(tool, shutil.which(tool) is not None,
                  shutil.which(tool) or "not found", fix, required=tool != "ip")
            for tool, fix in tools.items()]


def _network() -> list[Check]:
    problems = network.doctor()
    if not problems:
        return [Check("bridge networking", True, "bridge, veth and NAT can work here",
                      required=False)]
    return [Check("bridge networking", False, problem, required=False) for problem in problems]


#: above this share of its filesystem used, the store's check warns
STORE_FULL_PERCENT = 90


def _store() -> Check:
    """Where images and containers live, and how full that filesystem is (`df -h HOME`): a
    container writes into its upper directory there, and on the default home that is the
    host's root filesystem."""
    path = home.home_path()
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if not os.access(existing, os.W_OK):
        return Check("image store", False, f"{path}: not writable",
                     "set CONTAINED_HOME to a directory you can write")
    disk = os.statvfs(existing)
    used_blocks = disk.f_blocks - disk.f_bfree
    # df's Use%: of what a user may fill (root's reserve left out), rounded up
    usable = used_blocks + disk.f_bavail
    used = math.ceil(100 * used_blocks / usable) if usable else 0
    free = disk.f_bavail * disk.f_frsize
    detail = f"{path}, its filesystem {used}% used ({format_size(free)} free)"
    return Check("image store", used <= STORE_FULL_PERCENT, detail,
                 "containers there may fill it: `contained ps -a --size` shows their writable "
                 "layers; free space (`contained gc`, `contained rm`, `contained rmi`) or set "
                 "CONTAINED_HOME to a bigger filesystem", required=False)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
