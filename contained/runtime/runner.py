"""The runner: the single-threaded helper process where namespaces, mounts and forks happen.

Taught in notebook 05 (the tutorial's ``unshare ... chroot``) and 06 (what ``%%container``
does underneath). A Jupyter kernel is multi-threaded, and after fork() only the calling thread
survives: a lock held by another thread (the allocator's, logging's, a queue's) stays locked
forever in the child, and unshare(CLONE_NEWNS) fails outright in a multi-threaded process. So
the kernel never forks: it starts this module once with plain `subprocess`
(``python -I``, from ``/`` with a minimal environment: `contained.isolated`; in shell
terms ``cd / && env -i PATH=$PATH python -I -m contained.runtime.runner --serve FD``) and sends it
requests over a Unix socket, passing the cell's stdin/stdout/stderr pipes along
(`contained.runtime.wire`; the client side is `contained.runtime.client`). The runner's server
loop (`contained.runtime.server`) forks one child per request (cheap: everything is imported
already), and that child does the container's work here (`handle`), phase by phase as
`contained.runtime.steps` plans it:

    runner ─fork→ R: host phase (directories, cgroup); user phase; unshare --pid; fork
                      └→ I (PID 1, `contained.runtime.pid1`): namespaces; inside (rootfs,
                          pivot_root, cgroup ns, keyring, capabilities, seccomp); command —
                          then reap zombies and forward signals (`contained.runtime.init`)
                   R: the outside phase (--net bridge), moves I into the cgroup

R reports the command's status (and an OOM kill, read from the cgroup) on the request's socket,
then tears the container down; it kills the container if that socket closes first, so a kernel
that dies takes its containers with it. The CLI, itself single-threaded, runs the same `handle`
in a child of its own. A named container's PID 1 stays, as the tiny init
(`contained.runtime.tiny_init`); `exec` is a request too: its worker joins the container
(`contained.runtime.enter`).
"""

import os
import select
import signal
import socket
import sys
from pathlib import Path

from contained import procfs, syscalls
from contained.errors import ContainedError
from contained.images.trees import remove_tree
from contained.runtime import enter, pid1, served, state, steps, tiny_init, wire
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec

# Re-exported on purpose: the magics found these here before the runner was split into
# server, pid1 and steps (`server` is not re-exported: it imports this module).
from contained.runtime.status import (  # noqa: F401
    EXIT_SIGNAL_BASE,
    ContainerSetupFailed,
    exit_code,
    format_bytes,
    oom_message,
)
from contained.runtime.steps import exec_steps  # noqa: F401


def plan(spec: ContainerSpec) -> list:
    """Every step of `run`, in order, for --dry-run (nothing is executed): `steps.build`."""
    return steps.build(spec).steps()


def handle(request: dict, fds: list[int]) -> int:
    """Do one request in this (disposable, single-threaded) process; return an exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Interrupts arrive as the KILL marker on the request socket (a terminal's Ctrl-C, which
    # reaches this CLI-forked process too, is the client's to act on).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout, stderr, explain_fd, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    # The container's stdio become 0, 1, 2 here, so every process below inherits them.
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target, inheritable=True)
    explain = _explainer(explain_fd) if request.get("explain") else None
    try:
        spec = ContainerSpec.from_json(request["spec"]) if request["op"] != "exec" else None
        if request["op"] == "run" and _run_on_c_init(request, spec, fds):
            return 0
        if request["op"] == "run":
            final = run_container(spec, reply, explain, request.get("owner"))
        elif request["op"] == "create":
            final = create_container(spec, explain)
        elif request["op"] == "exec":
            final = enter.exec_in_container(request["spec"], reply, request.get("detached"))
        else:
            raise ContainedError(f"unknown runner request {request['op']!r}")
        wire.send_event(reply, final)
        return 0
    except ContainedError as error:
        wire.send_event(reply, wire.Error.of(error))
        return 1
    except BaseException as error:  # noqa: BLE001 — reported, never a silent death
        import traceback  # only here: it costs `contained run` ~2 ms to load (textwrap)

        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        wire.send_event(reply, wire.Error("InternalError", f"runner failed: {detail}"))
        return 1


def _run_on_c_init(request: dict, spec: ContainerSpec, fds: list[int]) -> bool:
    """A plain throwaway run with the tiny C init as PID 1 from birth (`spare_init`)."""
    from contained.runtime import spare_init  # it imports this module

    return spare_init.run_at_once(request, spec, fds)


def _explainer(fd: int):
    def explain(line: str) -> None:
        try:
            os.write(fd, f"+ {line}\n".encode())
        except OSError:
            pass
    explain.fd = fd  # PID 1 keeps it (`_start_pid_one`)
    return explain


def runner_values() -> dict:
    return {"runner_pid": os.getpid(), "runner_start_time": procfs.start_time(os.getpid())}


# ---------------------------------------------------------------------------------------------
# run: a throwaway container whose command is PID 1's only child.

def run_container(spec: ContainerSpec, reply: socket.socket, explain,
                  owner: dict | None = None) -> wire.Cleaned:
    """A throwaway container whose runner is this process (not a spare); recorded here when
    the caller gave its `owner` (see `state`)."""
    pid = None
    plan = steps.build(spec)
    state.write_state(spec, **(owner or {}), **runner_values(),
                      cgroup=getattr(plan.group, "name", None))
    try:
        run_steps(plan.host.steps, explain)
        pid, status_pipe = _start_pid_one(plan, explain, reply=reply)
        state.write_state(spec, init_pid=pid, init_start_time=procfs.start_time(pid))
        wire.send_event(reply, wire.Started(pid=pid))
        status = _wait_for_status(pid, status_pipe, reply)
        # The result goes out now; tearing down the namespaces (unmounting the overlay is the
        # slow part), the cgroup and the files happens after, off the caller's critical path.
        wire.send_event(reply, wire.Exit.of(status, plan.group.oom_kills(), spec.memory))
    finally:
        tear_down(spec, plan.group, pid)
    return wire.Cleaned()


def tear_down(spec: ContainerSpec, group, pid: int | None) -> None:
    """Each step on its own: one that fails (a veth already gone) must not skip the rest;
    whatever is left, `contained gc` finds."""
    actions = []
    if pid is not None:
        actions.append(lambda: (kill(pid), reap(pid)))
    if spec.net == "bridge":
        from contained import network  # --net none never loads it

        actions.append(lambda: network.unplug(spec.name, spec.directory, spec.rootless))
    if spec.remove:
        actions += [group.remove, lambda: remove_tree(Path(spec.directory))]
    failures = []
    for action in actions:
        try:
            action()
        except Exception as error:  # noqa: BLE001 — reported after the others ran
            failures.append(error)
    if failures:
        raise failures[0]


def _wait_for_status(pid: int, status_pipe: int, reply: socket.socket) -> int:
    """The command's exit status as PID 1 reports it (`Exit`); the KILL marker or the end of
    the caller's socket kills PID 1."""
    try:
        while True:
            ready, _, _ = select.select([status_pipe, reply], [], [])
            if reply in ready and wire.is_kill(reply.recv(64)):
                kill(pid)
            if status_pipe in ready:
                event = wire.read_event(status_pipe)
                if isinstance(event, wire.Exit):
                    return event.status
                if event is None:
                    return _status_of_killed(pid)
                raise wire.WireError(f"[internal error] PID 1 said {event} after Ready")
    finally:
        os.close(status_pipe)


def _status_of_killed(pid: int) -> int:
    """PID 1 died without reporting (killed). Peek at its status (WNOWAIT): the caller reaps
    it after the teardown."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return EXIT_SIGNAL_BASE + info.si_status


# ---------------------------------------------------------------------------------------------
# PID 1: forked here, then the runner's side of the handshakes.

def _start_pid_one(plan: steps.Plan, explain, persistent: bool = False,
                   reply: socket.socket | None = None, init_binary: int | None = None,
                   exec_listener: int | None = None) -> tuple[int, int]:
    """The user and pid-fork phases; the runner's side while PID 1 sets up; until the command
    runs (or failed).

    Returns PID 1's pid and the pipe on which it will report the command's exit status (a
    named container's PID 1 closes it once it is the sealed tiny init from `init_binary`).
    With ``spec.tty``, PID 1 passes the pty's master to the caller on `reply` itself.
    """
    spec = plan.spec
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    run_steps(plan.user.steps, explain)

    def pid_one():
        terminal = reply if spec.tty and not persistent else None
        # Nothing else of the host's (see `contained.runtime.init` for what PID 1 keeps, and why).
        syscalls.close_fds_except((ready_write, go_read, getattr(explain, "fd", None),
                               terminal and terminal.fileno(), init_binary, exec_listener))
        report = pid1.RunnerReport(ready_write, terminal)
        pid1.sync_with_runner(plan.hooks, report, explain, go_read)
        pid1.run(plan, report, explain, persistent, init_binary=init_binary,
                 exec_listener=exec_listener)

    pid = pid1.fork_pid_one(spec.rootless, pid_one, plan.group.entry())
    os.close(ready_write)
    os.close(go_read)
    try:
        _runner_side(plan, pid, ready_read, go_write, explain)
    except BrokenPipeError:
        pass  # PID 1 failed already: what went wrong is waiting on the ready pipe
    except BaseException:
        os.close(ready_read)
        kill(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(go_write)
    return _finish_start(pid, ready_read)


def _runner_side(plan: steps.Plan, pid: int, ready_read: int, go_write: int, explain) -> None:
    """The outside phase and the cgroup marker, in the order `pid1.sync_with_runner` waits for.

    Explained, PID 1 waits for IN_CGROUP first, then stops after announcing its network
    namespace until NETWORK_PLUGGED, so the steps print in order."""
    bridged = plan.spec.net == "bridge"
    if bridged and not explain:
        _plug_network(plan, pid, ready_read, explain)
    # PID 1 was born in its cgroup (`pid1.fork_pid_one`): nothing to move, only to say so.
    wire.send_marker(go_write, wire.Marker.IN_CGROUP)
    if bridged and explain:
        _plug_network(plan, pid, ready_read, explain)
        wire.send_marker(go_write, wire.Marker.NETWORK_PLUGGED)


def _plug_network(plan: steps.Plan, pid: int, ready_read: int, explain) -> None:
    """Once PID 1 has its network namespace, the outside phase: attach it to the bridge."""
    _expect_event(pid, ready_read, wire.Netns, close=False)
    run_steps(plan.outside(pid).steps, explain)


def _finish_start(pid: int, ready_read: int) -> tuple[int, int]:
    """Wait for PID 1 to report `Ready` (the command runs) or what failed."""
    _expect_event(pid, ready_read, wire.Ready, close=True)
    return pid, ready_read


def _expect_event(pid: int, ready_read: int, kind: type, close: bool) -> None:
    """The next event from PID 1 is `kind`; or PID 1 failed: then it is raised as its error
    (on this path the caller of `_start_pid_one` kills and reaps PID 1)."""
    event = wire.read_event(ready_read)
    if isinstance(event, kind):
        return
    if close:
        os.close(ready_read)
        kill(pid)
        os.waitpid(pid, 0)
    if isinstance(event, wire.Error):
        raise event.exception()
    if event is None:
        raise ContainerSetupFailed("the container's init exited during setup")
    raise wire.WireError(f"[internal error] expected {kind.__name__} from PID 1, got {event}")


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped already, on an earlier error path


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# create: a named container keeps its PID 1, which becomes the tiny init; `exec` joins it
# (contained.runtime.enter).

def create_container(spec: ContainerSpec, explain) -> wire.Created:
    plan = steps.build(spec)
    binary = tiny_init.open_binary()
    pid = listener = None
    try:
        run_steps(plan.host.steps, explain)
        if binary is not None:  # bound here, on the host: out of the container's reach
            listener = served.listen(Path(spec.directory))
        pid, sealed = _start_pid_one(plan, explain, persistent=True, init_binary=binary,
                                     exec_listener=listener and listener.fileno())
        _wait_until_sealed(pid, sealed)
        # For `exec` (enter joins it, served reads its OOM kills), before the caller learns
        # the container exists.
        state.write_state(spec, cgroup_entry=plan.group.entry())
    except BaseException:
        if pid is not None:
            kill(pid)
            reap(pid)
        if spec.net == "bridge":
            from contained import network

            network.unplug(spec.name, spec.directory, spec.rootless)
        plan.group.remove()
        raise
    finally:
        if binary is not None:
            os.close(binary)
        if listener is not None:
            listener.close()
    # This process is outside the new PID namespace: pid is the host's pid of PID 1.
    return wire.Created(pid=pid, start_time=procfs.start_time(pid))


def _wait_until_sealed(pid: int, sealed: int) -> None:
    """PID 1 closes its pipe once it is the non-dumpable tiny init (`init.idle`): until then
    no command may enter (execve made it dumpable for a moment)."""
    try:
        if select.select([sealed], [], [], SEAL_TIMEOUT)[0] and not os.read(sealed, 4096):
            return
    finally:
        os.close(sealed)
    raise ContainerSetupFailed("the container's init did not start (contained doctor)")


#: how long PID 1 may take from "ready" to being the sealed tiny init
SEAL_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--serve":
        from contained.runtime import server  # imports this module: loaded when it runs

        server.serve(socket.socket(fileno=int(argv[1])))
        return 0
    print("usage: python -m contained.runtime.runner --serve FD  (started by contained itself)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
