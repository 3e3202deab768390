"""The container's set-up order, in one place: named phases of `Step`s, run or shown.

Taught in notebook 05 (the tutorial's commands, then pivot_root) and 06 (``--explain``). Both
``--dry-run`` (`Plan.steps`) and a real run take their steps from `build`, so what is shown is
what runs, in the order it runs. As bubblewrap keeps its set-up as one list of operations, the
plan is a list of phases; each is done by one process, and the processes hand over between
phases (`contained.runtime.wire.Marker`)::

    host        the runner   mkdir the container's directories; the cgroup and its limits
    user        the runner   rootless: unshare --user --map-root-user (--net bridge: and fork
                             the process that becomes slirp4netns)
    pid-fork    the runner   unshare --pid, fork: the child is PID 1 (shown with the next line)
    namespaces  PID 1        unshare --mount --uts --ipc --net; it says "netns" to the runner
    outside     the runner   --net bridge: the bridge, a veth into PID 1's netns, addresses, NAT
                             (rootless: slirp4netns and its published ports instead)
    inside      PID 1        hostname, lo, the root filesystem, pivot_root, unshare --cgroup,
                             a new keyring, Docker's capabilities, seccomp
    command     PID 1        exec the command

Constraints between them: the user namespace comes before PID 1 exists (its children are then
root in it); PID 1 must be in the container's cgroup before ``unshare --cgroup`` (so that the
container sees its own group as /) and before the command; the veth can only be plugged once
PID 1's network namespace exists, and from outside it (the bridge lives on the host); the
keyring, capabilities and seccomp come last, in this order, because the filter refuses keyctl.
A real run does not wait for the network while it builds the root (only an explained run
keeps the printed order strictly, so each line appears when its step runs).
"""

import fcntl
import os
import shlex
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from contained import home, syscalls
from contained.errors import NeedsPrivileges
from contained.records import field, record
from contained.runtime import cgroups, init, namespaces, overlay, rootfs, seccomp
from contained.runtime.plan import Step
from contained.runtime.spec import ContainerSpec

RUNNER, PID_ONE = "the runner", "PID 1"
CONTAINER_NAMESPACES = ["mount", "uts", "ipc", "net"]  # + pid (by the runner), cgroup (late)
#: shown for PID 1's pid where it is not known yet (--dry-run)
PID_PLACEHOLDER = "PID"

# <linux/sockios.h> and <net/if.h>: read and set an interface's flags
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


@record
class Phase:
    """Steps done one after the other by one process (`who`)."""

    name: str
    who: str
    steps: list[Step] = field(default_factory=list)


@record
class Hooks:
    """How PID 1 waits for the runner inside its phases, set by the real run (after the fork:
    each process sets its own). Unset, the steps only show (`--dry-run`)."""

    #: after PID 1's namespaces exist: tell the runner (and, explained, wait for its plugging)
    announce_netns: Callable[[], object] | None = None
    #: before ``unshare --cgroup``: wait until the runner has moved PID 1 into the cgroup
    wait_for_cgroup: Callable[[], object] | None = None
    #: once PID 1's phases are done: let go of what the handshakes needed
    after_set_up: Callable[[], object] | None = None

    def call(self, name: str) -> None:
        hook = getattr(self, name)
        if hook is not None:
            hook()


@record
class Plan:
    """A container's whole set-up, as named phases in the order they happen."""

    spec: ContainerSpec
    group: object  # the container's cgroup (`cgroups.Cgroup`), or `NoCgroup`
    host: Phase
    user: Phase
    pid_fork: Phase
    namespaces: Phase
    inside: Phase
    command: Phase
    hooks: Hooks

    def outside(self, pid: int | str, reserve: bool = True) -> Phase:
        """The runner's steps from the host's side once PID 1's network namespace exists.

        Built when that moment comes: the steps name PID 1's pid, and with `reserve` they
        lease the container's address (`--dry-run` shows the one a run would get now).
        Rootless, slirp4netns connects the namespace instead (nothing to lease)."""
        if self.spec.net != "bridge":
            return Phase("outside", RUNNER)
        # The network package only where there is a network: --net none never loads it.
        from contained import network

        publish = [network.parse_publish(p) for p in self.spec.publish]
        if self.spec.rootless:
            return Phase("outside", RUNNER, network.slirp.plan_attach(
                self.spec.name, Path(self.spec.directory), pid, publish))
        _, attach = network.plan_attach(self.spec.name, pid, publish, reserve=reserve,
                                        hosts_file=Path(self.spec.directory) / "hosts")
        return Phase("outside", RUNNER, attach)

    def phases(self, pid: int | str = PID_PLACEHOLDER) -> list[Phase]:
        """Every phase in order; `outside` ends PID 1's namespaces, where the runner steps in."""
        return [self.host, self.user, self.pid_fork, self.namespaces,
                self.outside(pid, reserve=False), self.inside, self.command]

    def steps(self) -> list[Step]:
        """Every step of `run`, in order, for --dry-run (nothing is executed)."""
        return [step for phase in self.phases() for step in phase.steps]


def build(spec: ContainerSpec, *, with_cgroup: bool = True, staged: Path | None = None
          ) -> Plan:
    """The plan for `spec`. With `staged` (a spare's PID 1), the namespaces and /proc, /sys,
    /dev exist already (`spare_steps`); `with_cgroup=False`: the cgroup is someone else's."""
    group, host = host_steps(spec, with_cgroup, staged)
    hooks = Hooks()
    kinds = namespace_kinds(spec)
    pid_one = [] if staged else [unshare_step(kinds)]
    if spec.net == "bridge" and spec.rootless:
        pid_one.append(Step("# (outside) slirp4netns connects this network namespace",
                            "see the slirp4netns line: a TAP device, user-mode networking",
                            lambda: hooks.call("announce_netns")))
    elif spec.net == "bridge":
        pid_one.append(Step("# (outside) the runner plugs a veth into this network namespace",
                            "see the ip commands: bridge, veth pair, address, route, NAT",
                            lambda: hooks.call("announce_netns")))
    return Plan(
        spec, group, Phase("host", RUNNER, host),
        Phase("user", RUNNER, user_steps(spec)),
        # Shown as part of the unshare line (``unshare --pid --fork ...``): the runner does it.
        Phase("pid-fork", RUNNER),
        Phase("namespaces", PID_ONE, pid_one),
        Phase("inside", PID_ONE, inside_steps(spec, kinds, hooks, staged)),
        Phase("command", PID_ONE, [idle_step() if spec.persistent
                                   else exec_step(spec.args, spec.env, spec.user)]),
        hooks)


def inside_steps(spec: ContainerSpec, kinds: list[str], hooks: Hooks,
                 staged: Path | None) -> list[Step]:
    """PID 1 inside its namespaces: up to the cgroup namespace, then confinement.

    PID 1 waits for its cgroup only at ``unshare --cgroup``: moving a process between cgroups
    can take milliseconds (an RCU grace period), and meanwhile it builds the root."""
    steps = [Step(f"hostname {spec.hostname}", "the UTS namespace has its own hostname",
                  lambda: syscalls.sethostname(spec.hostname))]
    if "net" in kinds and not staged:
        steps.append(loopback_step())
    root = rootfs.root_of(Path(spec.directory), staged)
    steps += rootfs.plan_rootfs(rootfs_spec(spec, root), staged)
    steps += rootfs.plan_switch_root(root, spec.chroot)
    steps.append(Step(
        "unshare --cgroup", "after joining its cgroup: the container sees that cgroup as /",
        lambda: (hooks.call("wait_for_cgroup"), syscalls.unshare(syscalls.CLONE_NEWCGROUP))))
    return steps + confinement_steps(spec)


def confinement_steps(spec: ContainerSpec) -> list[Step]:
    """What PID 1 does last, and `exec` (`contained.runtime.enter`) does too; in this order,
    because keyctl is among the calls the filter refuses."""
    return [init.keyring_step(), init.confine_step(), seccomp.step(spec.seccomp)]


# ---------------------------------------------------------------------------------------------
# The host phase

def host_steps(spec: ContainerSpec, with_cgroup: bool = True, staged: Path | None = None):
    """Steps done on the host before the namespaces exist: directories and the cgroup. A
    spare (`staged`) mounts the root on its staging tmpfs, so it makes no mount point here."""
    directory = Path(spec.directory)
    dirs = [directory / "upper", directory / "work"]
    if not staged:
        dirs.append(rootfs.root_of(directory, None))

    def make_directories():
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
        if spec.net == "bridge":
            # Bind-mounted over /etc/hosts; the network code rewrites it in place.
            (directory / "hosts").touch()

    steps = [Step(f"mkdir -p {' '.join(str(path) for path in dirs)}",
                  "this container's writable layer, overlay's scratch dir, the mount point",
                  make_directories)]
    limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
    if not with_cgroup or (spec.rootless and limits == cgroups.Limits()
                           and cgroups.delegated_unit(cgroups.detect()) is None):
        # Without root, cgroups are only usable where they were delegated to us; a container
        # without limits does not need one, except in a unit systemd delegated to us (TLJH),
        # where each container gets its group under the unit's `containers`.
        return NoCgroup(), steps
    group, cgroup_steps = cgroups.Cgroup.plan(spec.id, limits,
                                              extra_devices=device_rules(spec.rootless))
    return group, steps + cgroup_steps


def device_rules(rootless: bool) -> tuple[str, ...]:
    """Devices a container's cgroup allows beyond the standard ones: fuse-overlayfs, which
    serves the root from inside the group, opens /dev/fuse (container root still cannot:
    every mount it can make a node on is nodev)."""
    return (cgroups.FUSE_DEVICE,) if overlay.use_fuse(rootless) else ()


class NoCgroup:
    """Stands in for a cgroup when a rootless container has no limits: nothing to join."""

    def join(self, pid: int) -> None:
        pass

    def oom_kills(self) -> int:
        return 0

    def oom_counter(self):
        return self.oom_kills

    def entry(self) -> None:
        return None

    def remove(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The user and PID 1 phases

def user_steps(spec: ContainerSpec) -> list[Step]:
    """Rootless: the user namespace; with --net bridge, then the process that becomes
    slirp4netns, forked while the runner's children are still born in the host's PID
    namespace (`contained.network.slirp.Launcher`)."""
    if not spec.rootless:
        return []
    if spec.net != "bridge":
        return [user_namespace_step()]
    from contained.network import slirp

    return [user_namespace_step(), slirp.prefork_step(Path(spec.directory))]


def user_namespace_step() -> Step:
    uid, gid = os.geteuid(), os.getegid()
    return Step("unshare --user --map-root-user",
                f"rootless: a user namespace where our uid {uid} is root, so the steps below "
                "need no privileges on the host", lambda: enter_user_namespace(uid, gid))


def enter_user_namespace(uid: int, gid: int) -> None:
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
    except OSError as error:
        raise NeedsPrivileges(
            f"containers without root need user namespaces, and this machine refuses them "
            f"({error.strerror}): run as root, or see `contained doctor` for the sysctl to "
            "change") from error
    # An unprivileged process may map only its own ids, and only after giving up setgroups.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def namespace_kinds(spec: ContainerSpec) -> list[str]:
    """The namespaces PID 1 unshares (the PID one is the runner's, the cgroup one comes last)."""
    return [k for k in CONTAINER_NAMESPACES if not (k == "net" and spec.net == "host")]


def joined_kinds(spec: ContainerSpec) -> list[str]:
    """Every namespace a container has, as `exec` (nsenter) would join them."""
    return (["user"] if spec.rootless else []) + namespace_kinds(spec) + ["pid", "cgroup"]


def unshare_step(kinds: list[str]) -> Step:
    return Step(f"{namespaces.unshare_command(['pid', *kinds])} sh",
                "new namespaces; the steps below run in this shell, PID 1 of its own PID "
                "namespace", lambda: syscalls.unshare(namespaces.flags_for(kinds)))


def loopback_step() -> Step:
    return Step("ip link set lo up", "a new network namespace has only lo, and down",
                _loopback_up)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)  # struct ifreq: the name, then the flags
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def rootfs_spec(spec: ContainerSpec, root: Path) -> rootfs.RootfsSpec:
    directory = Path(spec.directory)
    hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"127.0.1.1\t{spec.hostname}\n").encode()
    resolv = None
    if spec.net == "host" and os.path.exists("/etc/resolv.conf"):
        resolv = Path("/etc/resolv.conf").read_bytes()
    elif spec.net == "bridge":
        from contained import network

        resolv = network.resolv_conf()
    return rootfs.RootfsSpec(
        lowers=[Path(p) for p in spec.lowers], upper=directory / "upper",
        work=directory / "work", root=root, hostname=spec.hostname,
        hosts=hosts, resolv_conf=resolv,
        # On the bridge, /etc/hosts is a host-side file bind-mounted in: it is rewritten as
        # containers come and go, so they find each other by name.
        hosts_file=directory / "hosts" if spec.net == "bridge" else None,
        volumes=[rootfs.Volume(h, c, bool(ro)) for h, c, ro in spec.volumes],
        working_dir=spec.working_dir or "/", chroot=spec.chroot,
        fuse=overlay.use_fuse(spec.rootless), host_sys=spec.rootless and spec.net == "host")


def spare_steps(staging: Path) -> list[Step]:
    """What a spare PID 1 does before it knows its container (a --net none one)."""
    return ([unshare_step(CONTAINER_NAMESPACES), loopback_step()]
            + rootfs.plan_staging(staging))


def staging_directory() -> Path:
    """Where spares build /proc, /sys and /dev: a mount point only ever mounted on inside
    their own (private) mount namespaces; on the host it stays an empty directory."""
    path = home.home_path() / "containers" / ".staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# The command

def exec_step(args: list[str], env: list[str], user: str) -> Step:
    shown_user = f"setpriv --reuid={user} --init-groups " if user else ""
    return Step(f"exec env -i {shlex.join(env)} {shown_user}{shlex.join(args)}",
                "the command, with the image's environment and Docker's default capabilities")


def idle_step() -> Step:
    return Step("exec contained-init --serve-exec",
                "a named container's PID 1 from now on: a tiny C program that reaps zombies, "
                "stops the container on SIGTERM and starts what exec sends on the container's "
                "exec socket (tiny_init.c)")


def exec_steps(init_pid: int, spec: ContainerSpec, args: list[str], working_dir: str
               ) -> list[Step]:
    """What `exec` amounts to, as the shell command a student would use (for --explain)."""
    flags = " ".join(f"--{kind}" for kind in joined_kinds(spec))
    return [Step(f"nsenter --target {init_pid} {flags} --root --wd={working_dir} "
                 f"{shlex.join(args)}",
                 "a process of the runner joins the container's cgroup, then every namespace "
                 "of it (its root too), takes PID 1's confinement (a new keyring, Docker's "
                 "capabilities, seccomp) and starts the command there")]
