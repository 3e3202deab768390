"""The runner: the single-threaded helper process where namespaces, mounts and forks happen.

Taught in notebook 05 (the tutorial's ``unshare ... chroot``) and 06 (what ``%%container``
does underneath). A Jupyter kernel is multi-threaded, and after fork() only the calling thread
survives: a lock held by another thread (the allocator's, the GIL's helpers, logging's) stays
locked forever in the child. unshare(CLONE_NEWNS) also fails in a multi-threaded process. So
the kernel never forks: it starts this module once with plain `subprocess`
(``python -m contained.runner --serve FD``) and sends it requests over a Unix socket, passing
the cell's stdin/stdout/stderr pipes along (SCM_RIGHTS). The runner forks one child per request
(cheap: everything is imported already), and that child does the container's work:

    runner ─fork→ R: cgroup, directories; unshare --pid; fork
                      └→ I (PID 1): unshare mount/uts/ipc/net/cgroup; rootfs; pivot_root;
                                    fork → W: user, capabilities, no_new_privs; exec CMD
                                    then reap zombies and forward signals until W exits

R reports W's status (and an OOM kill, read from the cgroup) back on the request's socket, and
kills the container if that socket closes: a kernel that dies takes its containers with it.
The CLI, itself single-threaded, runs the same `handle` in a child of its own.
"""

import fcntl
import json
import os
import select
import shutil
import shlex
import signal
import socket
import struct
import sys
import time
import traceback
from array import array
from pathlib import Path

from contained import cgroups, namespaces, network, process, rootfs, syscalls
from contained.errors import ContainedError
from contained.plan import Step, run_steps
from contained.spec import ContainerSpec, ExecSpec

MAX_REQUEST = 1 << 20
# How the runner tells the client what happened; the client raises these as ContainedError.
EXIT_SETUP_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

CONTAINER_NAMESPACES = ["mount", "uts", "ipc", "net", "cgroup"]
# SIGINT is not among them: from a terminal, Ctrl-C already reaches the command directly (it is
# in the terminal's foreground process group), and from a notebook, an interrupt kills.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


class ContainerSetupFailed(ContainedError):
    """A step of building the container failed (the message names the step)."""


# ---------------------------------------------------------------------------------------------
# The wire: one request = JSON + file descriptors; replies are JSON lines on the request socket.

def send_request(control: socket.socket, request: dict, fds: list[int]) -> None:
    data = json.dumps(request).encode()
    control.sendmsg([struct.pack("!I", len(data)), data],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])


def receive_request(control: socket.socket) -> tuple[dict, list[int]] | None:
    """The next request and its fds, or None when the client has gone."""
    fds = array("i")
    header, ancillary, _, _ = control.recvmsg(4, socket.CMSG_SPACE(16 * fds.itemsize))
    if not header:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    (length,) = struct.unpack("!I", header)
    if length > MAX_REQUEST:
        raise ValueError(f"request of {length} bytes")
    data = b""
    while len(data) < length:
        chunk = control.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data), list(fds)


def _reply(sock: socket.socket | None, **message) -> None:
    if sock is None:
        return
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the client is gone; the container is cleaned up all the same


# ---------------------------------------------------------------------------------------------
# The server loop and one request.

def serve(control: socket.socket) -> None:
    """Fork one child per request until the client (the kernel) closes the socket."""
    # Children are not waited for here: each one reports on its own socket. As a subreaper,
    # this process also adopts (and, with SIGCHLD ignored, reaps) the PID 1 of every named
    # container once its runner child has exited, so a stopped one leaves no zombie.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are for the kernel
    while True:
        try:
            received = receive_request(control)
        except (OSError, ValueError):
            return
        if received is None:
            return
        request, fds = received
        if os.fork() == 0:
            control.close()
            os._exit(handle(request, fds))
        for fd in fds:
            os.close(fd)


def handle(request: dict, fds: list[int]) -> int:
    """Do one request in this (disposable, single-threaded) process; return an exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Interrupts arrive as "kill" on the request socket; a terminal's Ctrl-C goes to the command.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout, stderr, explain_fd, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    # The container's stdio become 0, 1, 2 here, so every process below inherits them.
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target, inheritable=True)
    explain = _explainer(explain_fd) if request.get("explain") else None
    try:
        op = request["op"]
        if op == "run":
            result = run_container(ContainerSpec.from_json(request["spec"]), reply, explain)
        elif op == "create":
            result = create_container(ContainerSpec.from_json(request["spec"]), reply, explain)
        elif op == "exec":
            result = exec_in_container(ExecSpec.from_json(request["spec"]), reply, explain,
                                       detached=request.get("detached", False))
        else:
            raise ContainedError(f"unknown runner request {op!r}")
        _reply(reply, **({"event": "exit"} | result))
        return 0
    except ContainedError as error:
        _reply(reply, event="error", type=type(error).__name__, message=str(error),
               exit_status=error.exit_status)
        return 1
    except BaseException as error:  # noqa: BLE001 — reported, never a silent death
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        _reply(reply, event="error", type="InternalError", message=f"runner failed: {detail}")
        return 1


def _explainer(fd: int):
    def explain(line: str) -> None:
        try:
            os.write(fd, f"+ {line}\n".encode())
        except OSError:
            pass
    return explain


# ---------------------------------------------------------------------------------------------
# run: a throwaway (or first) container whose command is PID 1's only child.

def host_steps(spec: ContainerSpec) -> tuple[cgroups.Cgroup, list[Step]]:
    """Steps done on the host before the namespaces exist: directories and the cgroup."""
    directory = Path(spec.directory)
    dirs = [directory / "upper", directory / "work", directory / "root"]
    steps = [Step(f"mkdir -p {directory}/upper {directory}/work {directory}/root",
                  "this container's writable layer, overlay's scratch dir, the mount point",
                  lambda: [d.mkdir(parents=True, exist_ok=True) for d in dirs])]
    limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
    if spec.rootless and limits == cgroups.Limits():
        # Without root, cgroups are only usable where they were delegated to us; a container
        # without limits does not need one.
        return NoCgroup(), steps
    group, cgroup_steps = cgroups.Cgroup.plan(spec.id, limits)
    return group, steps + cgroup_steps


class NoCgroup:
    """Stands in for a cgroup when a rootless container has no limits: nothing to join."""

    def join(self, pid: int) -> None:
        pass

    def oom_kills(self) -> int:
        return 0

    def remove(self) -> None:
        pass


def user_namespace_step() -> Step:
    uid, gid = os.geteuid(), os.getegid()
    return Step("unshare --user --map-root-user",
                f"rootless: a user namespace where our uid {uid} is root, so the steps below "
                "are allowed without privileges on the host", lambda: _enter_user_namespace(uid, gid))


def _enter_user_namespace(uid: int, gid: int) -> None:
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    # An unprivileged process may map only its own ids, and only after giving up setgroups.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def namespace_kinds(spec: ContainerSpec) -> list[str]:
    return [k for k in CONTAINER_NAMESPACES if not (k == "net" and spec.net == "host")]


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
        working_dir=spec.working_dir or "/", chroot=spec.chroot)


def namespace_steps(spec: ContainerSpec, wait_for_network=None) -> list[Step]:
    """Steps done by PID 1 inside the new namespaces, up to and including the root switch.

    On the bridge, `wait_for_network` pauses PID 1 while the runner, outside, plugs a veth
    into the new network namespace (only the host side can: the bridge lives there).
    """
    kinds = namespace_kinds(spec)
    steps = [
        Step(f"{namespaces.unshare_command(['pid', *kinds])} sh",
             "new namespaces; the steps below run in this shell, PID 1 of its own PID namespace",
             lambda: syscalls.unshare(namespaces.flags_for(kinds))),
        Step(f"hostname {spec.hostname}", "the UTS namespace has its own hostname",
             lambda: syscalls.sethostname(spec.hostname)),
    ]
    if "net" in kinds:
        steps.append(Step("ip link set lo up", "a new network namespace has only lo, and down",
                          _loopback_up))
    if spec.net == "bridge":
        steps.append(Step("# (outside) the runner plugs a veth into this network namespace",
                          "see the ip commands: bridge, veth pair, address, route, NAT",
                          wait_for_network))
    steps += rootfs.plan_rootfs(rootfs_spec(spec))
    steps += rootfs.plan_switch_root(Path(spec.directory) / "root", spec.chroot)
    return steps


def exec_step(args: list[str], env: list[str], user: str) -> Step:
    shown_user = f"setpriv --reuid={user} --init-groups " if user else ""
    return Step(f"exec env -i {shlex.join(env)} {shown_user}{shlex.join(args)}",
                "the command, with the image's environment and Docker's default capabilities")


def plan(spec: ContainerSpec) -> list[Step]:
    """Every step of `run`, in order, for --dry-run (nothing is executed)."""
    _, steps = host_steps(spec)
    if spec.rootless:
        steps.append(user_namespace_step())
    return steps + namespace_steps(spec) + [exec_step(spec.args, spec.env, spec.user)]


def run_container(spec: ContainerSpec, reply, explain) -> dict:
    group, steps = host_steps(spec)
    init_pid = None
    try:
        run_steps(steps, explain)
        _record(spec, runner_pid=os.getpid(), runner_start_time=start_time(os.getpid()))
        init_pid, status_pipe = _start_init(spec, group, explain)
        _record(spec, init_pid=init_pid, init_start_time=start_time(init_pid))
        _reply(reply, event="started", init_pid=init_pid)
        status = _wait_for_status(init_pid, status_pipe, reply)
        # The result goes out now; tearing down the namespaces (unmounting the overlay is the
        # slow part), the cgroup and the files happens after, off the caller's critical path.
        _reply(reply, event="exit", **_result(status, group, spec))
    finally:
        if init_pid is not None:
            _kill(init_pid)
            os.waitpid(init_pid, 0)
        if spec.net == "bridge":
            network.detach(spec.name)
        if spec.remove:
            _remove_container_files(spec, group)
    return {"event": "cleaned"}


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
                    # PID 1 died without reporting (killed): its own status is the answer.
                    # Peek (WNOWAIT): the caller reaps it after the teardown.
                    info = os.waitid(os.P_PID, init_pid, os.WEXITED | os.WNOWAIT)
                    if info.si_code == os.CLD_EXITED:
                        return info.si_status
                    return 128 + info.si_status
    finally:
        os.close(status_pipe)


def _start_init(spec: ContainerSpec, group, explain, persistent: bool = False):
    """Fork PID 1 of a new PID namespace and wait until the command is running (or failed).

    Returns PID 1's pid and the pipe on which it will report the command's exit status.
    """
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    if spec.rootless:
        run_steps([user_namespace_step()], explain)
    # unshare(CLONE_NEWPID) affects this process's children only: the next fork is PID 1.
    syscalls.unshare(syscalls.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        os.close(go_write)
        _init(spec, ready_write, go_read, explain, persistent)  # never returns
    os.close(ready_write)
    os.close(go_read)
    try:
        # PID 1 must be in the cgroup before it unshares the cgroup namespace and forks.
        group.join(pid)
        os.write(go_write, b"g")
        if spec.net == "bridge":
            _plug_network(spec, pid, ready_read, explain)
            os.write(go_write, b"g")
    except BaseException:
        os.close(ready_read)
        _kill(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(go_write)
    # One byte at a time: the command's exit status may follow "ready" on the same pipe at
    # once (for /bin/true it does), and it must stay there for _wait_for_status.
    message = b""
    while not message.endswith(b"\n") and (chunk := os.read(ready_read, 1)):
        message += chunk
    while message.startswith((b"error:", b"failed:")) and (chunk := os.read(ready_read, 4096)):
        message += chunk
    if message.startswith(b"ready\n"):
        return pid, ready_read
    os.close(ready_read)
    _kill(pid)
    os.waitpid(pid, 0)
    kind, _, detail = message.decode(errors="replace").partition(":")
    if kind == "failed":
        code, _, text = detail.partition(":")
        raise CommandFailed(int(code), text.strip())
    if kind == "error":
        raise ContainerSetupFailed(detail.strip())
    raise ContainerSetupFailed("the container's init exited during setup")


def _plug_network(spec: ContainerSpec, pid: int, ready_read: int, explain) -> None:
    """Once PID 1 has its network namespace, attach it to the bridge from the host side."""
    message = b""
    while not message.endswith(b"\n") and (chunk := os.read(ready_read, 1)):
        message += chunk
    if message != b"netns\n":
        raise ContainerSetupFailed(message.decode(errors="replace").partition(":")[2].strip()
                                   or "the container's init exited during setup")
    hosts_file = Path(spec.directory) / "hosts"
    publish = [network.parse_publish(p) for p in spec.publish]
    _, steps = network.plan_attach(spec.name, pid, publish, hosts_file=hosts_file)
    run_steps(steps, explain)


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _init(spec: ContainerSpec, ready_write: int, go_read: int, explain, persistent: bool):
    """PID 1: build the namespaces and root, start the command, then reap and forward."""
    try:
        if not persistent:
            # If the runner dies (SIGKILL, a crashed kernel), so does the container.
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        syscalls.set_process_title("contained-init")
        os.read(go_read, 1)

        def wait_for_network():
            os.write(ready_write, b"netns\n")
            os.read(go_read, 1)

        run_steps(namespace_steps(spec, wait_for_network), explain)
        os.close(go_read)
        if persistent:
            os.write(ready_write, b"ready\n")
            os.close(ready_write)
            _detach_stdio()
            _hold_namespaces()
        if explain:
            explain(exec_step(spec.args, spec.env, spec.user).shell)
        child = _spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                               new_session=False, error_fd=ready_write)
        os.write(ready_write, b"ready\n")
    except CommandFailed as error:
        try:
            os.write(ready_write, f"failed:{error.exit_status}:{error}".encode())
        finally:
            os._exit(error.exit_status)
    except BaseException as error:  # noqa: BLE001 — reported to the runner, then exit
        try:
            os.write(ready_write, f"error:{_describe(error)}".encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)
    status = _reap_until(child)
    try:
        os.write(ready_write, f"exit {status}\n".encode())
    finally:
        os._exit(status)


def _describe(error: BaseException) -> str:
    if isinstance(error, (ContainedError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _spawn_command(args, env, working_dir, user, *, new_session: bool, error_fd: int | None):
    """Fork the user's command; in the child, drop privileges and exec (never returns there)."""
    # The child reports an exec failure through a close-on-exec pipe: empty means exec worked.
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(status_read)
        _exec_command(args, env, working_dir, user, new_session, status_write)
    os.close(status_write)
    failure = _read_all(status_read)
    if failure:
        code, _, message = failure.decode(errors="replace").partition(":")
        os.waitpid(pid, 0)
        raise CommandFailed(int(code), message)
    return pid


class CommandFailed(ContainedError):
    """The command could not be started (not found, not executable, unknown user...)."""

    def __init__(self, exit_status: int, message: str):
        super().__init__(message)
        self.exit_status = exit_status


def _exec_command(args, env, working_dir, user, new_session, status_write) -> None:
    code = EXIT_SETUP_FAILED
    try:
        for sig in range(1, signal.NSIG):
            # Python ignores SIGPIPE and handles SIGINT; an ignored signal stays ignored
            # across exec, so restore every default for the container's process.
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if new_session:
            os.setsid()
        uid, gid, groups, home = process.resolve_user(user or "", Path("/"))
        environment = process.build_environment(env, [], home=home)
        path_env = next((e[5:] for e in environment if e.startswith("PATH=")), "")
        code = EXIT_NOT_FOUND
        executable = process.find_executable(args[0], path_env)
        code = EXIT_SETUP_FAILED
        spec = process.ProcessSpec(args=args, env=environment, cwd=working_dir or "/",
                                   uid=uid, gid=gid, groups=groups)
        process.prepare_exec(spec, keep=(0, 1, 2, status_write))
        code = EXIT_NOT_EXECUTABLE
        os.execve(executable, args, _env_dict(environment))
    except BaseException as error:  # noqa: BLE001
        if isinstance(error, ContainedError):
            code = error.exit_status  # 127 not found, 126 not executable, 125 otherwise
        try:
            os.write(status_write, f"{code}:{_describe(error)}".encode())
        finally:
            os._exit(code)


def _env_dict(environment: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in environment)


def _reap_until(child: int) -> int:
    """PID 1's loop: forward signals to the command, reap every zombie, return its status."""
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if pid == child:
            return _exit_code(status)


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def _exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(pid: int, reply: socket.socket | None, on_kill) -> int:
    """Wait for a child; a "kill" line or EOF on the request socket calls on_kill first."""
    pidfd = os.pidfd_open(pid)
    try:
        watched = [pidfd] + ([reply] if reply is not None else [])
        killed = False
        while True:
            ready, _, _ = select.select(watched, [], [])
            if pidfd in ready:
                break
            if reply in ready and not killed:
                data = reply.recv(64)
                if not data or b"kill" in data:
                    on_kill()
                    killed = True
                    watched = [pidfd]
        _, status = os.waitpid(pid, 0)
        return _exit_code(status)
    finally:
        os.close(pidfd)


def _result(status: int, group, spec: ContainerSpec) -> dict:
    oom = group.oom_kills() > 0
    message = None
    if oom:
        status = 137
        message = f"killed: out of memory, limit {format_bytes(spec.memory)}"
    return {"status": status, "oom": oom, "message": message}


def _record(spec: ContainerSpec, **values) -> None:
    """Note who runs a container in its directory, so `contained gc` can tell a crash."""
    path = Path(spec.directory) / "runner.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def format_bytes(count: int | None) -> str:
    if not count:
        return "none"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count}B"


def _remove_container_files(spec: ContainerSpec, group) -> None:
    """Undo everything of a throwaway container that outlives its namespaces."""
    group.remove()
    shutil.rmtree(spec.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# create + exec: a named container keeps an idle PID 1 holding its namespaces.

def create_container(spec: ContainerSpec, reply, explain) -> dict:
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
    return {"status": 0, "init_pid": init_pid, "init_start_time": start_time(init_pid)}


def _detach_stdio() -> None:
    """A long-lived PID 1 must not hold the caller's pipes open (a cell would never end)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, 65536)


def _hold_namespaces() -> None:
    """An idle PID 1: reap orphans; on SIGTERM, pass it on to everyone and leave when alone."""
    def stop(signum, frame):
        try:
            os.kill(-1, signal.SIGTERM)  # from PID 1, -1 means every process of the namespace
        except ProcessLookupError:
            pass
        while True:
            try:
                os.kill(-1, 0)
            except ProcessLookupError:
                os._exit(0)
            _reap_nonblocking()
            time.sleep(0.05)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            signal.pause()


def _reap_nonblocking() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def start_time(pid: int) -> int:
    """A process's start time (clock ticks since boot): a pid plus this names one process."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def exec_steps(spec: ExecSpec) -> list[Step]:
    kinds = namespace_kinds(spec.container) + ["pid"]
    flags = " ".join(f"--{k}" for k in sorted(kinds))
    return [Step(f"nsenter --target {spec.init_pid} {flags} --root --wd={spec.working_dir} "
                 f"{shlex.join(spec.args)}",
                 "join the running container's namespaces, cgroup and root, like docker exec")]


def exec_in_container(spec: ExecSpec, reply, explain, detached: bool = False) -> dict:
    container = spec.container
    if start_time(spec.init_pid) != spec.init_start_time:
        raise ContainedError(f"container {container.name} is not running")
    group = cgroups.Cgroup.open(container.id)
    oom_before = group.oom_kills() if group is not None else 0
    if explain:
        for step in exec_steps(spec):
            explain(step.explain())
    root = os.open(f"/proc/{spec.init_pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        kinds = namespace_kinds(container) + ["pid"] + (["user"] if container.rootless else [])
        opened = namespaces.open_namespaces(spec.init_pid, kinds)
        if group is not None:
            group.join(os.getpid())
        namespaces.join_namespaces(opened)
        os.fchdir(root)
        os.chroot(".")
    finally:
        os.close(root)
    os.chdir("/")
    child = _spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                           new_session=True, error_fd=None)
    _reply(reply, event="started", pid=child)
    status = _wait_for(child, None if detached else reply, on_kill=lambda: _kill_group(child))
    oom = group.oom_kills() > oom_before if group is not None else False
    return {"status": 137 if oom else status, "oom": oom,
            "message": f"killed: out of memory, limit {format_bytes(container.memory)}"
            if oom else None}


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--serve":
        serve(socket.socket(fileno=int(argv[1])))
        return 0
    print("usage: python -m contained.runner --serve FD  (started by contained itself)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
