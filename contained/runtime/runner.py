"""The runner: the single-threaded helper process where namespaces, mounts and forks happen.

Taught in notebook 05 (the tutorial's ``unshare ... chroot``) and 06 (what ``%%container``
does underneath). A Jupyter kernel is multi-threaded, and after fork() only the calling thread
survives: a lock held by another thread (the allocator's, logging's, a queue's) stays locked
forever in the child, and unshare(CLONE_NEWNS) fails outright in a multi-threaded process. So
the kernel never forks: it starts this module once with plain `subprocess`
(``python -I``, from ``/`` with a minimal environment: `contained.isolated`; in shell
terms ``cd / && env -i PATH=$PATH python -I -m contained.runtime.runner --serve FD``) and sends it
requests over a Unix socket, passing the cell's stdin/stdout/stderr pipes along
(`contained.runtime.wire`). The runner forks one child per request (cheap: everything is imported
already), and that child does the container's work:

    runner ─fork→ R: directories, cgroup; unshare --pid; fork
                      └→ I (PID 1, `contained.runtime.init`): unshare mount/uts/ipc/net; rootfs;
                          pivot_root; unshare cgroup; fork → W: user, capabilities,
                          no_new_privs; exec CMD — then reap zombies and forward signals

R reports W's status (and an OOM kill, read from the cgroup) on the request's socket, then
tears the container down; it kills the container if that socket closes first, so a kernel that
dies takes its containers with it. The CLI, itself single-threaded, runs the same `handle` in
a child of its own. A named container's PID 1 stays, and serves `exec` itself.

Speed: the server keeps one *spare* R forked ahead of time, with what does not depend on the
container already done — its cgroup made and PID 1 moved into it (a cgroup move waits for an
RCU grace period: 5-20 ms), its directory made (renamed into place later), PID 1's namespaces
unshared, /proc, /sys and /dev built in a staging tmpfs (moved into the root later), and a
rehearsal that warms up the forked Python. The caller sends a plain throwaway run straight
to that PID 1, which answers it directly ("started", "exit"); R stays beside it, records the
container, and tears it down after the caller has its answer. An explained run never takes a
spare, so ``--explain`` shows, and runs, every step in place.
"""

import fcntl
import json
import os
import select
import shlex
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

from contained import home, network
from contained.errors import ContainedError, NeedsPrivileges
from contained.images import layers
from contained.images.oci import DEFAULT_PATH
from contained.runtime import (
    cgroups,
    init,
    namespaces,
    overlay,
    process,
    procfs,
    rootfs,
    seccomp,
    state,
    syscalls,
    wire,
)
from contained.runtime.init import CommandFailed
from contained.runtime.plan import Step, run_steps
from contained.runtime.spec import ContainerSpec

# Spares kept ready. Each is two idle processes, an empty cgroup and an empty container
# directory; two measured no faster than one for back-to-back runs on 2 cores.
SPARES = 1
SPARE_NICENESS = 10
CONTAINER_NAMESPACES = ["mount", "uts", "ipc", "net"]  # + pid (by R) and cgroup (late)
# Whether this runner runs without root, decided once, on the host: a rootless spare enters a
# user namespace where os.geteuid() is 0, and must still know it is rootless there.
ROOTLESS = os.geteuid() != 0


class ContainerSetupFailed(ContainedError):
    """A step of building the container failed (the message names the step)."""


# ---------------------------------------------------------------------------------------------
# The server loop and one request.

def serve(control: socket.socket) -> None:
    """Serve requests until the client (the kernel) closes the socket.

    Forking this process takes a millisecond or two, and a container needs more that does not
    depend on it (below, `Prepared`). So the runner keeps a *spare*: a child forked ahead of
    time and ready, whose socket it hands to the client (a "spare" message with the socket as
    SCM_RIGHTS; SPARES of them). The client sends a plain throwaway run straight to a spare,
    then asks for another ("want-spare"); anything else comes here and gets a child forked on
    the spot.
    """
    # Children are not waited for here: each one reports on its own socket. As a subreaper,
    # this process also adopts (and, with SIGCHLD ignored, reaps) the PID 1 of every named
    # container once its runner child has exited, so a stopped one leaves no zombie.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are for the kernel
    _prepare_seccomp()
    for _ in range(SPARES):
        _send_spare(control)
    while True:
        try:
            received = wire.receive_request(control)
        except (OSError, ValueError):
            return
        if received is None:
            return
        request, fds = received
        if request.get("op") == "want-spare":
            _send_spare(control)
            continue
        if os.fork() == 0:
            control.close()
            os._exit(handle(request, fds))
        for fd in fds:
            os.close(fd)


def _prepare_seccomp() -> None:
    """Build and compile Docker's default seccomp filter once, before anything is forked:
    every container's PID 1 inherits it and only loads it (a millisecond, not twenty)."""
    try:
        seccomp.default_filter()
    except ContainedError:
        pass  # no seccomp here: the container that needs it says so, in its own words


def _send_spare(control: socket.socket) -> None:
    spare = _fork_spare(control)
    try:
        wire.send_request(control, {"op": "spare"}, [spare.fileno()])
    except OSError:
        pass  # the client is gone: the loop ends on its next read
    finally:
        spare.close()  # the spare exits when the client's copy closes, unused


def _fork_spare(control: socket.socket) -> socket.socket:
    """A child that waits for one request, ready: its cgroup made, its PID 1 forked into it.

    Moving a process into a cgroup waits for an RCU grace period (often 5-15 ms); a spare pays
    that while nobody is waiting. It exits (and takes its PID 1 and cgroup along) when the
    server's end of its socket closes.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.fork() == 0:
        code = 1
        try:
            control.close()
            ours.close()
            code = _spare(theirs)
        finally:
            os._exit(code)  # never back into the server's loop
    theirs.close()
    return ours


def _spare(sock: socket.socket) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this one waits for its children
    if not ROOTLESS:
        # Getting ready must not slow down the container that runs meanwhile (its PID 1 and
        # runner, on a machine with few CPUs): nice until a request comes. Only root may go
        # back to normal, so a rootless spare keeps the normal priority throughout.
        os.setpriority(os.PRIO_PROCESS, 0, SPARE_NICENESS)
    try:
        prepared = Prepared.make(sock)
    except Exception as error:  # noqa: BLE001 — then the request is done here, or refused
        prepared, failure = None, error
    if prepared is not None:
        sock.close()  # PID 1 has it: the request goes there
        return prepared.supervise()
    received = wire.receive_request(sock)
    sock.close()
    if received is None:
        return 0
    if ROOTLESS and os.geteuid() == 0:
        # This process entered its user namespace (and maybe unshared a PID namespace) before
        # it failed: a request done here would start from that half-changed state. Say why,
        # and leave; the next request gets a fresh spare.
        reply = socket.socket(fileno=received[1][-1])
        wire.send_message(reply, event="error", type=ContainerSetupFailed.__name__,
                          message=f"the container could not be prepared "
                          f"({init.describe(failure)}): run it again",
                          exit_status=ContainerSetupFailed.exit_status)
        return 1
    return handle(*received)


def suits_spare(request: dict) -> bool:
    """A spare fits a plain throwaway run: not explained (its steps must show in order, in
    place), with --net none, and rootless exactly when this runner is (and then without
    limits: a rootless spare makes no cgroup)."""
    if request.get("op") != "run" or request.get("explain"):
        return False
    spec = json.loads(request["spec"])
    limited = any(spec.get(key) is not None for key in ("memory", "cpus", "pids_limit"))
    # A spare's PID 1 has made its network namespace already: only --net none fits.
    return spec.get("net") == "none" and bool(spec.get("rootless")) == ROOTLESS \
        and not (spec.get("rootless") and limited)


def _normal_priority() -> None:
    if not ROOTLESS:
        os.setpriority(os.PRIO_PROCESS, 0, 0)


class Prepared:
    """What a spare makes before it knows the container: an empty cgroup and PID 1 in it.

    PID 1 has been forked into a new PID namespace, has built what it can (`spare_steps`) and
    waits for the request itself: the caller talks to it directly, and it answers directly
    ("started", "exit"), which saves a process hop each way. This process (the spare's
    runner) stays beside it on `link`: PID 1 passes it the request and the reply socket, and
    it records the container, waits for PID 1, tears everything down and says "cleaned" — or,
    should PID 1 die without a word (SIGKILLed), reports its end instead.
    """

    def __init__(self, group, init_pid: int, link: socket.socket, skeleton: Path):
        self.group, self.init_pid, self.link = group, init_pid, link
        self.skeleton = skeleton

    @classmethod
    def make(cls, requests: socket.socket) -> "Prepared":
        if not ROOTLESS:
            group, steps = cgroups.Cgroup.plan(spare_cgroup_name(), cgroups.Limits(),
                                               extra_devices=device_rules(rootless=False))
            run_steps(steps)
        else:
            group = NoCgroup()
        staging = staging_directory()
        skeleton = staging.parent / ("." + spare_cgroup_name())
        try:
            link, link_init = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            _make_skeleton(skeleton)
            if ROOTLESS:
                _enter_user_namespace(os.geteuid(), os.getegid())

            def spare_pid_one():
                link.close()
                init.close_fds_except((requests.fileno(), link_init.fileno()))
                _wait_as_pid_one(staging, skeleton, requests, link_init, group)

            pid = _fork_pid_one(ROOTLESS, spare_pid_one)
        except BaseException:
            group.remove()
            layers.remove_tree(skeleton)
            raise
        link_init.close()
        prepared = cls(group, pid, link, skeleton)
        try:
            group.join(pid)
            link.sendall(b"j")  # PID 1 starts no command before it is in the cgroup
        except BaseException:
            prepared.discard()
            raise
        return prepared

    def supervise(self) -> int:
        """Stay beside PID 1 until its container has ended; clean up; exit code for the spare."""
        received = wire.receive_request(self.link)
        if received is None:  # never used: the caller closed the spare, and PID 1 left
            self.discard()
            return 0
        request, fds = received
        reply = socket.socket(fileno=fds[0])
        spec = ContainerSpec.from_json(request["spec"])
        try:
            _normal_priority()
            state.write_state(spec, **(request.get("owner") or {}), **_runner_values(),
                              cgroup=getattr(self.group, "name", None), init_pid=self.init_pid,
                              init_start_time=procfs.start_time(self.init_pid))
            self.link.sendall(b"r")  # on record: PID 1 may say "started"
            said = b""
            while chunk := self.link.recv(64):  # until PID 1 exits
                said += chunk
            _, status = os.waitpid(self.init_pid, 0)
            if b"reported" not in said:  # PID 1 was killed: its status and the cgroup tell
                result = _result(init.exit_code(status), self.group.oom_kills(), spec.memory)
                wire.send_message(reply, event="exit", **result)
            _tear_down(spec, self.group, None)
            layers.remove_tree(self.skeleton)  # still there if the container had its own
            wire.send_message(reply, event="cleaned")
            return 0
        except BaseException as error:  # noqa: BLE001 — reported, never a silent death
            _kill(self.init_pid)
            _reap(self.init_pid)
            wire.send_message(reply, event="error", type="InternalError",
                              message=f"runner failed: {init.describe(error)}")
            return 1

    def discard(self) -> None:
        _kill(self.init_pid)
        _reap(self.init_pid)
        self.group.remove()
        layers.remove_tree(self.skeleton)


def _make_skeleton(path: Path) -> None:
    """A container directory made ahead of time (upper, work, root), named after the spare:
    creating files is slow on a busy ext4 (it searches for inodes not freed recently), so
    none is created while a caller waits. gc removes it if the spare dies."""
    for sub in ("", "upper", "work", "root"):
        (path / sub).mkdir()


def _adopt_skeleton(skeleton: Path, directory: Path) -> None:
    """The spare's skeleton becomes the container's directory, by a rename. A named container
    has its directory already (its caller claimed the name there): then it keeps it, and the
    spare's runner removes the skeleton afterwards."""
    try:
        os.rename(skeleton, directory)
    except OSError:
        pass


def _wait_as_pid_one(staging: Path, skeleton: Path, requests: socket.socket,
                     link: socket.socket, group) -> None:
    """A spare's PID 1: build what does not depend on the container, then wait for a request
    (its spec, the caller's stdio and reply socket) and become that container's PID 1."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    host_pid = int(os.readlink("/proc/self"))  # still the host's /proc: the pid seen there
    try:
        run_steps(spare_steps(staging))
        staged = staging
    except Exception:  # noqa: BLE001 — then the container is built in place
        staged = None
    if not select.select([requests], [], [], 0)[0]:  # nobody waits yet: time to warm up
        _rehearse(staging)
    received = wire.receive_request(requests)
    if received is None:
        os._exit(0)  # the caller closed this spare unused
    _normal_priority()  # the command inherits it
    requests.close()
    request, (stdin, stdout, stderr, explain_fd, reply_fd) = received
    spec = ContainerSpec.from_json(request["spec"])
    _adopt_skeleton(skeleton, Path(spec.directory))  # before the runner records anything there
    wire.send_request(link, request, [reply_fd])  # for the spare's runner (`supervise`)
    # The caller's stdin/stdout/stderr, which this PID 1 was forked too early to have.
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target, inheritable=True)
    # Nothing else of the host's (see `contained.runtime.init` for what PID 1 keeps, and why).
    init.close_fds_except((link.fileno(), reply_fd))
    report = CallerReport(socket.socket(fileno=reply_fd), link, host_pid, spec.memory)
    try:
        limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
        if not isinstance(group, NoCgroup):
            run_steps(group.limit_steps(limits))
        elif limits != cgroups.Limits():
            raise ContainedError("limits need cgroups, which need root here")
        # Opened now: after pivot_root the host's /sys/fs/cgroup is out of sight.
        report.oom_kills = group.oom_counter()
    except BaseException as error:  # noqa: BLE001 — reported to the caller
        report.error(init.describe(error))
        os._exit(init.EXIT_SETUP_FAILED)
    _init(spec, report, None, persistent=False, staged=staged,
          wait_for_cgroup=lambda: link.recv(1))


def _rehearse(staging: Path) -> None:
    """Go through the motions of a container once, while nobody waits.

    A forked Python process pays on the first run of any code: every page it writes (object
    reference counts included) is copied then, and lazy set-ups (ctypes prototypes, the json
    encoder, the capability count) happen then. Measured in a fresh fork, planning, the
    capability drop, the user lookup and `subprocess` each take two to three times longer the
    first time. So a spare's PID 1 plans a container without running it, and starts the
    host's /bin/true the way it will start the command (it has not left the host's root yet).
    """
    directory = staging / "rehearsal"
    spec = ContainerSpec(id="0" * 64, name="rehearsal", image="", directory=str(directory),
                         lowers=[str(directory)], args=["true"], env=[f"PATH={DEFAULT_PATH}"],
                         hostname="rehearsal")
    try:
        ContainerSpec.from_json(spec.to_json())
        host_steps(spec, with_cgroup=False)
        namespace_steps(spec, staged=staging)
        process.capability_mask(process.DOCKER_DEFAULT_CAPABILITIES)
        process.last_capability()
        with open(os.devnull, "r+b") as null:
            child = init.spawn_command(spec.args, spec.env, "/", "", new_session=False,
                                       stdio=(null.fileno(),) * 3)
        child.wait()
    except Exception:  # noqa: BLE001 — a rehearsal only warms up; the real run reports
        pass


def handle(request: dict, fds: list[int]) -> int:
    """Do one request in this (disposable, single-threaded) process; return an exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Interrupts arrive as "kill" on the request socket (a terminal's Ctrl-C, which reaches this
    # CLI-forked process too, is the client's to act on).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout, stderr, explain_fd, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    # The container's stdio become 0, 1, 2 here, so every process below inherits them.
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target, inheritable=True)
    explain = _explainer(explain_fd) if request.get("explain") else None
    try:
        spec = ContainerSpec.from_json(request["spec"])
        if request["op"] == "run":
            result = run_container(spec, reply, explain, request.get("owner"))
        elif request["op"] == "create":
            result = create_container(spec, explain)
        else:
            raise ContainedError(f"unknown runner request {request['op']!r}")
        wire.send_message(reply, **({"event": "exit"} | result))
        return 0
    except ContainedError as error:
        wire.send_message(reply, event="error", type=type(error).__name__, message=str(error),
                          exit_status=error.exit_status)
        return 1
    except BaseException as error:  # noqa: BLE001 — reported, never a silent death
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        wire.send_message(reply, event="error", type="InternalError",
                          message=f"runner failed: {detail}")
        return 1


def _explainer(fd: int):
    def explain(line: str) -> None:
        try:
            os.write(fd, f"+ {line}\n".encode())
        except OSError:
            pass
    explain.fd = fd  # PID 1 keeps it (`_start_init`)
    return explain


# ---------------------------------------------------------------------------------------------
# The plan: host steps (R), namespace steps (PID 1), the command.

def host_steps(spec: ContainerSpec, with_cgroup: bool = True):
    """Steps done on the host before the namespaces exist: directories and the cgroup."""
    directory = Path(spec.directory)
    dirs = [directory / "upper", directory / "work", directory / "root"]

    def make_directories():
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
        if spec.net == "bridge":
            # Bind-mounted over /etc/hosts; the network code rewrites it in place.
            (directory / "hosts").touch()

    steps = [Step(f"mkdir -p {directory}/upper {directory}/work {directory}/root",
                  "this container's writable layer, overlay's scratch dir, the mount point",
                  make_directories)]
    limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
    if not with_cgroup or (spec.rootless and limits == cgroups.Limits()):
        # Without root, cgroups are only usable where they were delegated to us; a container
        # without limits does not need one.
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

    def remove(self) -> None:
        pass


def user_namespace_step() -> Step:
    uid, gid = os.geteuid(), os.getegid()
    return Step("unshare --user --map-root-user",
                f"rootless: a user namespace where our uid {uid} is root, so the steps below "
                "need no privileges on the host", lambda: _enter_user_namespace(uid, gid))


def _enter_user_namespace(uid: int, gid: int) -> None:
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
    """The namespaces PID 1 unshares (the PID one is R's, the cgroup one comes last)."""
    return [k for k in CONTAINER_NAMESPACES if not (k == "net" and spec.net == "host")]


def joined_kinds(spec: ContainerSpec) -> list[str]:
    """Every namespace a container has, as `exec` (nsenter) would join them."""
    return (["user"] if spec.rootless else []) + namespace_kinds(spec) + ["pid", "cgroup"]


def rootfs_spec(spec: ContainerSpec) -> rootfs.RootfsSpec:
    directory = Path(spec.directory)
    hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"127.0.1.1\t{spec.hostname}\n").encode()
    resolv = None
    if spec.net == "host" and os.path.exists("/etc/resolv.conf"):
        resolv = Path("/etc/resolv.conf").read_bytes()
    elif spec.net == "bridge":
        resolv = network.resolv_conf()
    return rootfs.RootfsSpec(
        lowers=[Path(p) for p in spec.lowers], upper=directory / "upper",
        work=directory / "work", root=directory / "root", hostname=spec.hostname,
        hosts=hosts, resolv_conf=resolv,
        # On the bridge, /etc/hosts is a host-side file bind-mounted in: it is rewritten as
        # containers come and go, so they find each other by name.
        hosts_file=directory / "hosts" if spec.net == "bridge" else None,
        volumes=[rootfs.Volume(h, c, bool(ro)) for h, c, ro in spec.volumes],
        working_dir=spec.working_dir or "/", chroot=spec.chroot,
        fuse=overlay.use_fuse(spec.rootless))


def namespace_steps(spec: ContainerSpec, announce_netns=None, wait_for_cgroup=None,
                    staged: Path | None = None) -> list[Step]:
    """Steps done by PID 1 inside the new namespaces, up to the cgroup namespace.

    `announce_netns` tells the runner the network namespace exists, so that (outside, where
    the bridge lives) it can plug a veth in; `wait_for_cgroup` waits until the runner has moved
    PID 1 into the container's cgroup. Both happen while PID 1 builds the root filesystem:
    moving a process between cgroups can take milliseconds (an RCU grace period), and there is
    no reason to wait for it with nothing else to do. With `staged`, the namespaces, the
    loopback and /proc, /sys, /dev exist already (`spare_steps`).
    """
    kinds = namespace_kinds(spec)
    steps = [] if staged else [unshare_step(kinds)]
    if spec.net == "bridge":
        steps.append(Step("# (outside) the runner plugs a veth into this network namespace",
                          "see the ip commands: bridge, veth pair, address, route, NAT",
                          announce_netns))
    steps.append(Step(f"hostname {spec.hostname}", "the UTS namespace has its own hostname",
                      lambda: syscalls.sethostname(spec.hostname)))
    if "net" in kinds and not staged:
        steps.append(loopback_step())
    steps += rootfs.plan_rootfs(rootfs_spec(spec), staged)
    steps += rootfs.plan_switch_root(Path(spec.directory) / "root", spec.chroot)
    steps.append(Step(
        "unshare --cgroup", "after joining its cgroup: the container sees that cgroup as /",
        lambda: (wait_for_cgroup and wait_for_cgroup(),
                 syscalls.unshare(syscalls.CLONE_NEWCGROUP))))
    # Last, in this order: keyctl is among the calls the filter refuses.
    steps += [init.keyring_step(), init.confine_step(), seccomp.step(spec.seccomp)]
    return steps


def unshare_step(kinds: list[str]) -> Step:
    return Step(f"{namespaces.unshare_command(['pid', *kinds])} sh",
                "new namespaces; the steps below run in this shell, PID 1 of its own PID "
                "namespace", lambda: syscalls.unshare(namespaces.flags_for(kinds)))


def loopback_step() -> Step:
    return Step("ip link set lo up", "a new network namespace has only lo, and down",
                _loopback_up)


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


def exec_step(args: list[str], env: list[str], user: str) -> Step:
    shown_user = f"setpriv --reuid={user} --init-groups " if user else ""
    return Step(f"exec env -i {shlex.join(env)} {shown_user}{shlex.join(args)}",
                "the command, with the image's environment and Docker's default capabilities")


def plan(spec: ContainerSpec) -> list[Step]:
    """Every step of `run`, in order, for --dry-run (nothing is executed)."""
    _, steps = host_steps(spec)
    if spec.rootless:
        steps.append(user_namespace_step())
    inside = namespace_steps(spec)
    if spec.net == "bridge":
        # What the runner does from outside once PID 1's network namespace exists: shown with
        # "PID" for PID 1's pid, and the address a run would lease now (nothing is leased).
        publish = [network.parse_publish(p) for p in spec.publish]
        _, plugging = network.plan_attach(spec.name, "PID", publish, reserve=False,
                                          hosts_file=Path(spec.directory) / "hosts")
        inside[2:2] = plugging  # after "unshare" and "(outside) the runner plugs..."
    return steps + inside + [exec_step(spec.args, spec.env, spec.user)]


def exec_steps(init_pid: int, spec: ContainerSpec, args: list[str], working_dir: str
               ) -> list[Step]:
    """What `exec` amounts to, as the shell command a student would use (for --explain)."""
    flags = " ".join(f"--{kind}" for kind in joined_kinds(spec))
    return [Step(f"nsenter --target {init_pid} {flags} --root --wd={working_dir} "
                 f"{shlex.join(args)}",
                 "a process inside every namespace of the container, its cgroup and its root "
                 "(contained's PID 1 forks it there, so it inherits PID 1's capabilities, "
                 "session keyring and seccomp filter)")]


# ---------------------------------------------------------------------------------------------
# run: a throwaway container whose command is PID 1's only child.

def _runner_values() -> dict:
    return {"runner_pid": os.getpid(), "runner_start_time": procfs.start_time(os.getpid())}


def run_container(spec: ContainerSpec, reply: socket.socket, explain,
                  owner: dict | None = None) -> dict:
    """A throwaway container whose runner is this process (not a spare); recorded here when
    the caller gave its `owner` (see `state`)."""
    init_pid = None
    group, steps = host_steps(spec)
    state.write_state(spec, **(owner or {}), **_runner_values(),
                      cgroup=getattr(group, "name", None))
    try:
        run_steps(steps, explain)
        init_pid, status_pipe = _start_init(spec, group, explain, reply=reply)
        state.write_state(spec, init_pid=init_pid, init_start_time=procfs.start_time(init_pid))
        wire.send_message(reply, event="started", init_pid=init_pid)
        status = _wait_for_status(init_pid, status_pipe, reply)
        # The result goes out now; tearing down the namespaces (unmounting the overlay is the
        # slow part), the cgroup and the files happens after, off the caller's critical path.
        wire.send_message(reply, event="exit", **_result(status, group.oom_kills(), spec.memory))
    finally:
        _tear_down(spec, group, init_pid)
    return {"event": "cleaned"}


def _tear_down(spec: ContainerSpec, group, init_pid: int | None) -> None:
    """Each step on its own: one that fails (a veth already gone) must not skip the rest;
    whatever is left, `contained gc` finds."""
    steps = []
    if init_pid is not None:
        steps.append(lambda: (_kill(init_pid), _reap(init_pid)))
    if spec.net == "bridge":
        steps.append(lambda: network.detach(spec.name))
    if spec.remove:
        steps += [group.remove, lambda: layers.remove_tree(Path(spec.directory))]
    failures = []
    for step in steps:
        try:
            step()
        except Exception as error:  # noqa: BLE001 — reported after the others ran
            failures.append(error)
    if failures:
        raise failures[0]


def _wait_for_status(init_pid: int, status_pipe: int, reply: socket.socket) -> int:
    """The command's exit status as PID 1 reports it; a "kill" request or EOF kills PID 1."""
    buffer = b""
    try:
        while True:
            ready, _, _ = select.select([status_pipe, reply], [], [])
            if reply in ready:
                data = reply.recv(64)
                if not data or b"kill" in data:
                    _kill(init_pid)
            if status_pipe in ready:
                chunk = os.read(status_pipe, 256)
                buffer += chunk
                if buffer.startswith(b"exit ") and buffer.endswith(b"\n"):
                    return int(buffer[5:])
                if not chunk:
                    # PID 1 died without reporting (killed). Peek at its status (WNOWAIT):
                    # the caller reaps it after the teardown.
                    info = os.waitid(os.P_PID, init_pid, os.WEXITED | os.WNOWAIT)
                    if info.si_code == os.CLD_EXITED:
                        return info.si_status
                    return 128 + info.si_status
    finally:
        os.close(status_pipe)


def _start_init(spec: ContainerSpec, group, explain, persistent: bool = False,
                reply: socket.socket | None = None):
    """Fork PID 1 of a new PID namespace and wait until the command is running (or failed).

    Returns PID 1's pid and the pipe on which it will report the command's exit status. With
    ``spec.tty``, PID 1 passes the pty's master to the caller on `reply` itself.
    """
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    if spec.rootless:
        run_steps([user_namespace_step()], explain)

    def pid_one():
        terminal = reply if spec.tty and not persistent else None
        # Nothing else of the host's (see `contained.runtime.init` for what PID 1 keeps, and why).
        init.close_fds_except((ready_write, go_read, getattr(explain, "fd", None),
                               terminal and terminal.fileno()))
        _init(spec, RunnerReport(ready_write, terminal), explain, persistent, go_read=go_read)

    pid = _fork_pid_one(spec.rootless, pid_one)
    os.close(ready_write)
    os.close(go_read)
    try:
        if spec.net == "bridge" and not explain:
            _plug_network(spec, pid, ready_read, explain)
        group.join(pid)
        os.write(go_write, b"g")
        if spec.net == "bridge" and explain:
            # Explained, PID 1 waits for "g" first, then stops after announcing its network
            # namespace until the ip commands are done, so the steps print in order.
            _plug_network(spec, pid, ready_read, explain)
            os.write(go_write, b"n")
    except BrokenPipeError:
        pass  # PID 1 failed already: what went wrong is waiting on the ready pipe
    except BaseException:
        os.close(ready_read)
        _kill(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(go_write)
    return _finish_start(pid, ready_read)


def _fork_pid_one(rootless: bool, pid_one) -> int:
    """Fork `pid_one` as PID 1 of a new PID namespace; return its (host) pid."""
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # unshare(CLONE_NEWPID) affects this process's children only: the next fork is PID 1.
    syscalls.unshare(syscalls.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            init.seal()  # non-dumpable, its own session: before any container process exists
            os.close(host_pidns)
            pid_one()  # never returns, unless it fails outside its own error handling
        finally:
            os._exit(init.EXIT_SETUP_FAILED)  # never back into the runner's code
    if not rootless:
        # Later children (ip, nft, nsenter) belong to the host's PID namespace again: in the
        # container's they would not see PID 1 by its host pid, and once PID 1 has died every
        # fork into that namespace fails (ENOMEM), the teardown's included. A rootless runner
        # may not re-enter it (it has no CAP_SYS_ADMIN there) and runs none of these tools.
        syscalls.setns(host_pidns, syscalls.CLONE_NEWPID)
    os.close(host_pidns)
    return pid


def _finish_start(pid: int, ready_read: int) -> tuple[int, int]:
    """Wait for PID 1 to report "ready" (the command runs) or what failed."""
    message = _read_line(ready_read)
    if message == b"ready\n":
        return pid, ready_read
    while chunk := os.read(ready_read, 4096):
        message += chunk
    os.close(ready_read)
    _kill(pid)
    os.waitpid(pid, 0)
    raise _setup_error(message)


def _read_line(fd: int) -> bytes:
    # One byte at a time: the command's exit status may follow on the same pipe at once (for
    # /bin/true it does), and it must stay there for _wait_for_status.
    line = b""
    while not line.endswith(b"\n") and (chunk := os.read(fd, 1)):
        line += chunk
    return line


def _setup_error(message: bytes) -> ContainedError:
    kind, _, detail = message.decode(errors="replace").partition(":")
    if kind == "failed":
        code, _, text = detail.partition(":")
        return CommandFailed(int(code), text.strip())
    if kind == "error":
        return ContainerSetupFailed(detail.strip())
    return ContainerSetupFailed("the container's init exited during setup")


def _plug_network(spec: ContainerSpec, pid: int, ready_read: int, explain) -> None:
    """Once PID 1 has its network namespace, attach it to the bridge from the host side."""
    message = _read_line(ready_read)
    if message != b"netns\n":
        while chunk := os.read(ready_read, 4096):
            message += chunk
        raise _setup_error(message)
    hosts_file = Path(spec.directory) / "hosts"
    publish = [network.parse_publish(p) for p in spec.publish]
    _, steps = network.plan_attach(spec.name, pid, publish, hosts_file=hosts_file)
    run_steps(steps, explain)


def _init(spec: ContainerSpec, report, explain, persistent: bool, go_read: int | None = None,
          staged: Path | None = None, wait_for_cgroup=None):
    """PID 1: build the namespaces and root, start the command, then reap and forward.

    Forked by the runner for this container, PID 1 syncs with it on `go_read` (the runner's
    side of --explain and the network comes in between, and it moves PID 1 into the cgroup);
    a spare's PID 1 (`staged`) only waits until it is in the cgroup. How it reports is
    `report`'s business: to the runner (`RunnerReport`) or to the caller (`CallerReport`).
    """
    try:
        if not persistent:
            # If the runner dies (SIGKILL, a crashed kernel), so does the container.
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        init.set_title()
        init.restore_default_signals()
        listener = init.control_socket(Path(spec.directory)) if persistent else None
        if go_read is not None:
            if explain:
                os.read(go_read, 1)  # explained steps come in order: the runner's side first
            wait_for_cgroup = None if explain else lambda: os.read(go_read, 1)
        if staged:
            run_steps(host_steps(spec, with_cgroup=False)[1])  # the runner did not (spares)
        run_steps(namespace_steps(
            spec, announce_netns=lambda: (report.netns(), explain and os.read(go_read, 1)),
            wait_for_cgroup=wait_for_cgroup, staged=staged), explain)
        if go_read is not None:
            os.close(go_read)
        if persistent:
            report.ready()
            init.detach_stdio(keep=(listener.fileno(),))
            init.serve_exec(listener)  # never returns
        if explain:
            explain(exec_step(spec.args, spec.env, spec.user).shell)
        child = _spawn(spec, report)
        init.null_stdio()  # the command has them: PID 1 holds none of the caller's pipes
        report.ready()
    except CommandFailed as error:
        try:
            report.failed(error)
        finally:
            os._exit(error.exit_status)
    except BaseException as error:  # noqa: BLE001 — reported, then exit
        try:
            report.error(init.describe(error))
        finally:
            os._exit(init.EXIT_SETUP_FAILED)
    status = init.reap_until(child, report.watched())
    try:
        report.exit(status)
    finally:
        os._exit(status)


def _spawn(spec: ContainerSpec, report):
    """The command, on PID 1's stdio; with -t on a new pty whose master goes to the caller."""
    if not spec.tty:
        return init.spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                                  new_session=False)
    master, slave = init.open_terminal(spec.tty_size)
    try:
        report.terminal(master)
    finally:
        os.close(master)
    try:
        return init.spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                                  new_session=True, stdio=(slave,) * 3, terminal=True)
    finally:
        os.close(slave)


class RunnerReport:
    """PID 1 reporting to the runner that forked it: lines on a pipe (`_finish_start`,
    `_wait_for_status` read them); the runner tells the caller. With -t, `reply` (the
    caller's socket) takes the pty's master straight to the caller."""

    def __init__(self, fd: int, reply: socket.socket | None = None):
        self.fd, self.reply = fd, reply

    def terminal(self, master: int) -> None:
        wire.send_message_with_fds(self.reply, [master], event="tty")
        self.reply.close()  # the runner's copy stays; this one was only for the master

    def netns(self) -> None:
        os.write(self.fd, b"netns\n")

    def ready(self) -> None:
        os.write(self.fd, b"ready\n")

    def failed(self, error: CommandFailed) -> None:
        os.write(self.fd, f"failed:{error.exit_status}:{error}".encode())

    def error(self, text: str) -> None:
        os.write(self.fd, f"error:{text}".encode())

    def exit(self, status: int) -> None:
        os.write(self.fd, f"exit {status}\n".encode())

    def watched(self) -> None:
        return None  # the runner watches the caller's socket


class CallerReport:
    """A spare's PID 1 reporting to the caller itself, in the runner's words ("started",
    "exit", "error"), and watching the caller's socket for "kill" or its end. Then it tells
    the spare's runner (on `link`) that it has reported, so the runner does not again."""

    def __init__(self, reply: socket.socket, link: socket.socket, host_pid: int,
                 memory: int | None):
        self.reply, self.link, self.host_pid, self.memory = reply, link, host_pid, memory
        self.oom_kills = lambda: 0

    def netns(self) -> None:
        pass  # a spare runs --net none only

    def terminal(self, master: int) -> None:
        wire.send_message_with_fds(self.reply, [master], event="tty")

    def ready(self) -> None:
        self.link.recv(1)  # the spare's runner has recorded the container ("r")
        wire.send_message(self.reply, event="started", init_pid=self.host_pid)

    def failed(self, error: CommandFailed) -> None:
        self._final(event="error", type="CommandFailed", message=str(error),
                    exit_status=error.exit_status)

    def error(self, text: str) -> None:
        self._final(event="error", type=ContainerSetupFailed.__name__, message=text,
                    exit_status=ContainerSetupFailed.exit_status)

    def exit(self, status: int) -> None:
        self._final(event="exit", **_result(status, self.oom_kills(), self.memory))

    def watched(self) -> socket.socket:
        return self.reply

    def _final(self, **message) -> None:
        wire.send_message(self.reply, **message)
        try:
            self.link.sendall(b"reported")
        except OSError:
            pass


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped already, on an earlier error path


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _result(status: int, oom_kills: int, memory: int | None) -> dict:
    """The "exit" message: an OOM kill is reported as such, with Docker's status 137."""
    if oom_kills > 0:
        return {"status": 137, "oom": True, "message": oom_message(memory)}
    return {"status": status, "oom": False, "message": None}


def oom_message(limit: int | None) -> str:
    return f"killed: out of memory, limit {format_bytes(limit)}"


def format_bytes(count: int | None) -> str:
    if not count:
        return "none"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count}B"


def spare_cgroup_name() -> str:
    """The cgroup a spare makes for the container it will become: spare-PID-STARTTIME."""
    return f"spare-{os.getpid()}-{procfs.start_time('self')}"


def is_live_spare(name: str) -> bool:
    """Whether `name` is a spare's cgroup (see `spare_cgroup_name`) whose spare still runs."""
    kind, _, rest = name.partition("-")
    pid, _, started = rest.partition("-")
    return kind == "spare" and pid.isdigit() and started.isdigit() \
        and procfs.alive(int(pid), int(started))


# ---------------------------------------------------------------------------------------------
# create: a named container keeps its PID 1, which serves `exec` (contained.runtime.init).

def create_container(spec: ContainerSpec, explain) -> dict:
    group, steps = host_steps(spec)
    try:
        run_steps(steps, explain)
        init_pid, status_pipe = _start_init(spec, group, explain, persistent=True)
        os.close(status_pipe)
    except BaseException:
        if spec.net == "bridge":
            network.detach(spec.name)
        group.remove()
        raise
    # This process is outside the new PID namespace: init_pid is the host's pid of PID 1.
    return {"status": 0, "init_pid": init_pid, "init_start_time": procfs.start_time(init_pid)}


# ---------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--serve":
        serve(socket.socket(fileno=int(argv[1])))
        return 0
    print("usage: python -m contained.runtime.runner --serve FD  (started by contained itself)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
