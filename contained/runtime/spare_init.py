"""A spare whose PID 1 is the tiny C init from birth; the server builds the root from outside.

Taught in notebook 06 (what ``%%container`` does underneath). A spare's PID 1 used to be a
fork of the server: a copy of a ~20 MiB Python process that wrote to hundreds of its pages
(each one copied, 3-4 µs here), ran the plan's steps in Python, and tore the copy down at
its end; the server, whose pages that child shared, paid for every page it wrote too. Now
the server spawns the tiny init (`tiny_init.c`, ``--launch-spare``; posix_spawn copies no
memory), which clones PID 1 into a new PID namespace, born in the spare's cgroup, as the
server's own child, and leaves. PID 1, still the tiny init:

    unshare --mount --uts --ipc --net; ip link set lo up      # from `staging_ops`:
    mount -t tmpfs staging STAGING; mount -t proc ...          # /proc, /sys, /dev, staged

and waits. When a caller sends its request, the server does in PID 1's mount namespace what
PID 1 did (``nsenter --mount=/proc/PID/ns/mnt``, setns(2)): the image's overlay, /proc, /sys
and /dev moved in, /etc files, volumes, the working directory, and ``-u`` resolved in the
image's /etc/passwd — the same steps (`rootfs.plan_rootfs`), through the same safe resolver.
Then it hands PID 1 the rest as data (the hostname, the root, the capability set, the seccomp
program, the command) with the caller's stdio, and PID 1 does the plan's last steps itself:

    hostname NAME; cd ROOT && pivot_root . . && umount -l .; unshare --cgroup
    keyctl session; setpriv --bounding-set=... --no-new-privs; seccomp; exec COMMAND

Where a request needs what only the Python PID 1 does (``-t``, a named container, a request
too large for one message), the server forks a runner for it instead, as for any request
that does not suit a spare. Without the compiled init (no C compiler), or where the kernel
refuses what the C PID 1 does, spares are the Python ones (`pid1.wait_as_spare`).
"""

import fcntl
import functools
import os
import select
import socket
from pathlib import Path

from contained import procfs, syscalls
from contained.errors import ContainedError
from contained.runtime import (
    cgroups,
    init,
    namespaces,
    overlay,
    pid1,
    process,
    rootfs,
    runner,
    seccomp,
    served,
    spares,
    state,
    steps,
    tiny_init,
    wire,
)
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import EXIT_KILLED, ContainerSetupFailed

LINK_FD = 3  # tiny_init.c's LINK_FD, followed by the launcher's other descriptors
HIGH_FD = 64  # where descriptors wait, so that none is overwritten as they are moved
READY = b"ready"
MESSAGE_ROOM = 48 * 1024  # in PID 1's message, what is not the spec's strings, at most
# How long a request waits for a PID 1 still getting ready (its ahead steps take ~1 ms); one
# that is not ready by then is given up, and the request gets a runner of its own.
READY_TIMEOUT = 10
#: tiny_init.c's stages of the plan's last steps; any other failure is the command's own
SET_UP_STAGES = ("request", "hostname", "pivot_root", "cgroupns", "keyring", "capabilities",
                 "no_new_privs", "seccomp", "signalfd", "fork")

# Set once a C PID 1 could not get ready here (a kernel or filter that refuses a step): from
# then on this server makes Python spares.
_refused: str | None = None


@functools.cache
def _binary() -> int | None:
    """The compiled init, opened once per server (close-on-exec), above the descriptors a
    launcher is given (`_launch`)."""
    fd = tiny_init.open_binary()
    if fd is None:
        return None
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return high


def _launch(fds: list[int], argv: list[str]) -> int:
    """Spawn the init (posix_spawn) with /dev/null as stdio and `fds` as 3, 4, ...; its pid."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for fd in fds]
    try:
        actions = [(os.POSIX_SPAWN_OPEN, n, os.devnull, os.O_RDWR, 0) for n in (0, 1, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, LINK_FD + i) for i, fd in enumerate(high)]
        return os.posix_spawn(f"/proc/self/fd/{_binary()}", argv, {}, file_actions=actions)
    finally:
        for fd in high:
            os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks)


def usable() -> bool:
    """Whether this server makes its spares with a C PID 1: as root, with the compiled init."""
    return not pid1.ROOTLESS and _refused is None and _binary() is not None


def suits(spec: ContainerSpec, request: dict) -> bool:
    """What the C PID 1 does: a throwaway command on the caller's stdio, with no network, in a
    root it pivots into. Not -t (the pty is opened inside), --explain (each step shown as it
    runs), --chroot (the tutorial's escapable way, notebook 07) or a fuse-overlayfs root (its
    daemon must run in the container's PID namespace)."""
    return not (spec.tty or spec.persistent or request.get("explain") or spec.chroot
                or spec.net != "none" or overlay.use_fuse(spec.rootless)
                or not served.encodable(spec.hostname, spec.working_dir, *spec.args,
                                        *spec.env)
                or not _fits_one_message(spec))


def _fits_one_message(spec: ContainerSpec) -> bool:
    """Whether the message to PID 1 (`CSpare._prepare`) surely fits in the one it reads: the
    spec's strings, and room for the rest (a seccomp program of up to 4096 instructions, the
    root's path, groups, Docker's default variables)."""
    strings = sum(len(os.fsencode(text)) + 1
                  for text in (spec.hostname, spec.working_dir, *spec.args, *spec.env))
    return strings <= served.MAX_REQUEST - MESSAGE_ROOM


class CSpare(spares.Prepared):
    """A spare whose PID 1 runs the tiny init (`tiny_init.c`'s spare mode). The server keeps
    the spare's request socket itself (`requests`): the request comes here, not to PID 1."""

    LINK_TYPE = socket.SOCK_SEQPACKET

    def __init__(self, group, pid: int, link: socket.socket, skeleton: Path):
        super().__init__(group, pid, link, skeleton)
        self.requests: socket.socket | None = None
        self.staging = steps.staging_directory()
        self.ready = False
        self.handled_elsewhere = None  # the server's way for a request PID 1 cannot serve
        self.refusal: wire.Error | None = None  # what the caller was told, if it failed

    @classmethod
    def _spawn(cls, requests, link_init, staging, skeleton, group, forget) -> int:
        """PID 1, started by ``contained-init --launch-spare`` (tiny_init.c): the server is
        not forked (a copy of its ~20 MiB, torn down again by the child's exec, and every page
        it writes afterwards copied), the launcher is spawned (vfork) and clones PID 1 into its
        PID namespace and group as the server's own child."""
        entry = group.entry() or {"v2": None, "v1_tasks": []}  # no group: born where we are
        read_pid, write_pid = os.pipe2(os.O_CLOEXEC)
        opened = [read_pid, write_pid]
        try:
            passed = [link_init.fileno(), write_pid]
            if entry["v2"]:
                opened.append(os.open(entry["v2"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                passed.append(opened[-1])
            for tasks in entry["v1_tasks"]:
                opened.append(os.open(tasks, os.O_WRONLY | os.O_CLOEXEC))
                passed.append(opened[-1])
            launcher = _launch(passed, [init.TITLE, "--launch-spare", "1" if entry["v2"] else "0",
                                        str(len(entry["v1_tasks"])), str(spares.SPARE_NICENESS)])
            os.close(write_pid)
            opened.remove(write_pid)
            said = _read_all(read_pid)
            runner.reap(launcher)
        finally:
            for fd in opened:
                os.close(fd)
        pid = int(said) if said.lstrip(b"-").isdigit() else 0
        if pid <= 0:  # e.g. a kernel without clone3's CLONE_INTO_CGROUP: Python spares then
            reason = os.strerror(-pid) if pid else "the launcher said nothing"
            _refuse(f"launch: {reason}".encode())
            raise OSError(-pid, f"cannot start a spare's PID 1: {reason}")
        return pid

    def _after_start(self, requests: socket.socket | None) -> None:
        # The caller's end of the spare: its request comes here (none: used at once).
        self.requests = requests.dup() if requests is not None else None
        ops = [("unshare", namespaces.flags_for(steps.CONTAINER_NAMESPACES)), ("loopback",),
               *staging_ops(self.staging)]
        self.link.sendall(b"".join(served.nul_terminated(*op) for op in ops))

    def sockets(self) -> list[socket.socket]:
        return [self.link] + ([self.requests] if self.requests is not None else [])

    def on_readable(self, sock: socket.socket, status_of) -> bool:
        try:
            if sock is self.requests:
                return self._request(status_of)
            if self.reply is None:
                return self._not_running(status_of)
            chunk = self.link.recv(64)
            if chunk:
                self.said = (self.said + chunk)[:64]  # a failure's "STAGE ERRNO", at most
                return False
            self._end(status_of)
        except BaseException as error:  # noqa: BLE001 — reported, never a silent death
            self._fail(error, status_of)
        self.close()
        return True

    def close(self) -> None:
        self.link.close()
        if self.requests is not None:
            self.requests.close()

    def _not_running(self, status_of) -> bool:
        """PID 1 says it is ready, or fails getting ready, before any request."""
        said = self.link.recv(64)
        if said == READY and not self.ready:
            self.ready = True
            return False
        _refuse(said)
        self.discard(status_of)
        self.close()
        return True

    def _request(self, status_of) -> bool:
        received = wire.receive_request(self.requests)
        self.requests.close()
        self.requests = None
        if received is None:  # never used: the client closed the spare
            self.discard(status_of)
            self.close()
            return True
        request, fds = received
        spec = ContainerSpec.from_json(request["spec"])
        if not suits(spec, request) or not self._wait_ready():
            self.handled_elsewhere(request, fds)
            self.discard(status_of)
            self.close()
            return True
        self._start(request, spec, fds)
        return False

    def _wait_ready(self) -> bool:
        if not self.ready:
            said = b""
            if select.select([self.link], [], [], READY_TIMEOUT)[0]:
                said = self.link.recv(64)
            self.ready = said == READY
            if not self.ready:
                _refuse(said)
        return self.ready

    def _start(self, request: dict, spec: ContainerSpec, fds: list[int]) -> None:
        """Record the container, build its root from outside, hand PID 1 the rest."""
        stdin, stdout, stderr, explain, reply = fds
        os.close(explain)
        self.reply, self.spec = socket.socket(fileno=reply), spec
        events = None
        try:
            pid1.adopt_skeleton(self.skeleton, Path(spec.directory))
            self._record_state(request)
            message = self._prepare(spec)
            events = self._oom_events()
            self.link.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           _fd_array(stdin, stdout, stderr, reply, events))])
        except BaseException as error:  # noqa: BLE001 — the caller hears it; PID 1 goes
            self.refusal = wire.Error.of(error)
            runner.kill(self.pid)  # then its link closes, and `_end` tears down
        finally:
            for fd in (stdin, stdout, stderr, events):
                if fd is not None:
                    os.close(fd)

    def _prepare(self, spec: ContainerSpec) -> bytes:
        """PID 1's root built in its mount namespace; the message with everything else."""
        _, host = steps.host_steps(spec, with_cgroup=False, staged=self.staging)
        run_steps(host)  # upper/ and work/ (the skeleton has them already)
        limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
        run_steps(self.group.limit_steps(limits))
        program = seccomp.program_for(spec.seccomp)
        root = rootfs.root_of(Path(spec.directory), self.staging)
        building = rootfs.plan_rootfs(steps.rootfs_spec(spec, root), self.staging)

        def build():
            run_steps(building)
            return process.resolve_user(spec.user or "", root)

        identity = in_mount_namespace(self.pid, build)
        command = served.encode_request(identity, spec.env, spec.args, spec.working_dir or "/",
                                        detached=False)
        oom_exit = wire.encode(wire.Exit.of(EXIT_KILLED, 1, spec.memory)).decode().strip()
        header = [spec.hostname, str(root), self.pid,
                  process.capability_mask(process.DOCKER_DEFAULT_CAPABILITIES),
                  process.last_capability(), oom_exit, len(program)]
        message = served.nul_terminated(*header) + command + program
        if len(message) > served.MAX_REQUEST:
            raise ContainedError(f"the command and its environment take {len(message)} bytes, "
                                 f"more than a container's PID 1 takes ({served.MAX_REQUEST}):"
                                 " pass less, or pass it in a file")
        return message

    def _oom_events(self) -> int:
        """The cgroup's file that counts OOM kills, opened here: PID 1 reads it once the
        command has ended, when the host's /sys/fs/cgroup is long out of its sight."""
        path = self.group.oom_file()
        return os.open(path if path is not None else os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _record_state(self, request: dict) -> None:
        state.write_state(self.spec, **(request.get("owner") or {}), **runner.runner_values(),
                          cgroup=getattr(self.group, "name", None), init_pid=self.pid,
                          init_start_time=procfs.start_time(self.pid))

    def _final_event(self, status: int):
        """What the caller hears once PID 1 has gone: what failed, or the command's exit."""
        if self.refusal is not None:
            return self.refusal
        if self.said and self.said != wire.Marker.REPORTED.value:
            return wire.Error.of(self._failure())
        return super()._final_event(status)  # nothing, if PID 1 told the caller itself

    def _failure(self) -> ContainedError:
        stage, _, number = self.said.decode(errors="replace").partition(" ")
        number = int(number) if number.strip().isdigit() else 0
        if stage in SET_UP_STAGES:
            reason = os.strerror(number) if number else "a request it could not read"
            return ContainerSetupFailed(f"the container's PID 1 could not set it up ({stage}: "
                                        f"{reason}); run it again, or report it")
        return init.start_failure(stage, number, self.spec.args[0], self.spec.working_dir,
                                  self.spec.name)


def run_at_once(request: dict, spec: ContainerSpec, fds: list[int]) -> bool:
    """A throwaway `run` done by this process (a runner: the CLI's worker, or one the server
    forked) with a C PID 1, as a spare made on the spot and used at once; False, with nothing
    of `fds` used, where it cannot be (then the Python PID 1 does it, `runner.run_container`).
    The caller hears "started" and the end from PID 1, and `Cleaned` from here."""
    if not usable() or not suits(spec, request):
        return False
    try:
        spare = CSpare.make(None)
    except (OSError, ContainedError):
        return False
    if not spare._wait_ready():
        spare.discard(spares.wait_status)
        spare.close()
        return False
    spare._start(request, spec, fds)
    while not spare.on_readable(spare.link, spares.wait_status):
        pass
    return True


def staging_ops(staging: Path) -> list[tuple]:
    """`rootfs.plan_staging` as operations for a spare's C PID 1, which runs them in its new
    namespaces: the same mounts, from the same tables. Every path is in the staging tmpfs PID
    1 has just mounted, or in the kernel's /proc and /sys there: nothing of an image is
    involved yet, so no path needs the safe resolver."""
    base = str(staging)
    ops: list[tuple] = [("mount", "none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None),
                        ("mount", "staging", base, "tmpfs", syscalls.MS_NOSUID, "mode=755"),
                        ("mkdir", f"{base}/{rootfs.STAGED_ROOT}", 0o755)]
    for path, source, fstype, flags, data in (rootfs.PROC, rootfs.SYSFS):
        ops += [("mkdir", base + path, 0o755), ("mount", source, base + path, fstype, flags, data)]
    ops += [("mask", base + path) for path in rootfs.MASKED_PATHS]
    ops += [("readonly", base + path) for path in rootfs.READONLY_PATHS]
    path, source, fstype, flags, data = rootfs.DEV
    ops += [("mkdir", base + path, 0o755), ("mount", source, base + path, fstype, flags, data)]
    for name in rootfs.DEVICES:
        ops += [("touch", f"{base}/dev/{name}", 0o666),
                ("mount", f"/dev/{name}", f"{base}/dev/{name}", None, syscalls.MS_BIND, None)]
    for path, source, fstype, flags, data in (rootfs.DEVPTS, rootfs.SHM):
        ops += [("mkdir", base + path, 0o755), ("mount", source, base + path, fstype, flags, data)]
    ops += [("symlink", target, f"{base}/dev/{name}") for name, target in rootfs.DEV_LINKS.items()]
    return ops


def in_mount_namespace(pid: int, action):
    """`action()` in process `pid`'s mount namespace (``nsenter --mount``), then back in ours.

    setns(2) puts this (single-threaded) process in the namespace with its root and working
    directory at that namespace's root; both come back with ours. A failure to come back
    would leave the server in a container's mounts: it must not go on there."""
    ours = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        theirs = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(theirs, syscalls.CLONE_NEWNS)
        finally:
            os.close(theirs)
        try:
            return action()
        finally:
            try:
                syscalls.setns(ours, syscalls.CLONE_NEWNS)
                os.fchdir(cwd)
            except OSError as error:
                os.write(2, f"contained: the runner could not leave a container's mount "
                            f"namespace ({error}); it stops\n".encode())
                os._exit(70)
    finally:
        os.close(ours)
        os.close(cwd)


def _refuse(said: bytes) -> None:
    """A C PID 1 could not get ready: this server's later spares are Python ones."""
    global _refused
    _refused = said.decode(errors="replace") or "it exited"


def _fd_array(*fds: int):
    from array import array

    return array("i", fds)

