"""PID 1: the container's first process, and why it has a job of its own.

Taught in notebooks 05 and 06. In a new PID namespace the first process is PID 1, and PID 1 is
special: orphaned processes are re-parented to it, so it must reap them (or they stay zombies);
the kernel delivers it no signal it has no handler for, so ``kill -TERM 1`` does nothing unless
it forwards; and when it exits, the kernel kills everything else in the namespace. Docker's
``--init`` (tini) exists for this. The shell equivalent of our init is roughly::

    unshare --pid --fork --kill-child sh -c 'trap "kill -TERM $child" TERM; CMD & child=$!; wait'

Our init is the runner's Python process, forked and renamed ``contained-init``; before it
starts anything it joins a new session keyring, drops to Docker's default capabilities and
no_new_privs, and loads the seccomp filter (`contained.runtime.seccomp`), which it keeps while it
serves, and which everything it starts inherits. For a named
container it also serves ``exec``: a command sent on the container's control socket is forked
by PID 1 itself, so it is born inside every namespace and the cgroup — nothing to join, which
is the slow part of ``nsenter`` + a cgroup write.

PID 1 holds host resources (its sockets to the runner and caller), so the container must not
reach it: it is non-dumpable, as runc's init (`seal`), so /proc/1/fd, mem, environ, root and
cwd and ptrace need CAP_SYS_PTRACE, which no container process has; and it leads a session of
its own, so the container has no controlling terminal of the host. The descriptors it keeps
(everything else is closed before the container's processes exist, `close_fds_except`):

- 0, 1, 2: the command's stdio, until the command is started (then /dev/null): pipes the
  client relays, or /dev/null, never the caller's own files (`contained.runtime.relay`);
- the report channel: the pipe to the runner that forked it (`contained.runtime.pid1.RunnerReport`),
  or, for a spare's PID 1, the caller's reply socket and the link to the spare's runner
  (``CallerReport``), so that the result gets out;
- with ``-t``, the reply socket until the pty's master has been passed on (SCM_RIGHTS);
- the cgroup's OOM counter file (a spare's PID 1 reports OOM kills itself; opened before
  pivot_root, read-only);
- the explain descriptor, for ``--explain`` only (it prints the last step);
- a named container's control socket (the listener `exec` connects to), and its connections;
- a pipe of its own that wakes it when a child exits (SIGCHLD, for select).
"""

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import termios
from contextlib import contextmanager
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.runtime import process, wire
from contained.runtime.plan import Step

# Where they were before `status` held them: PID 1's exit statuses, its errors, their wording.
from contained.runtime.status import (  # noqa: F401  isort: skip
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_SETUP_FAILED,
    CommandFailed,
    describe,
    exit_code,
)

# Signals PID 1 passes on to the command. SIGINT is not among them: the host's terminal is not
# the container's (PID 1 has a session of its own), so Ctrl-C reaches the client, which kills
# the command, as a notebook's interrupt does; with -t, the container's own pty turns the
# relayed ^C into SIGINT for the command.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
TITLE = "contained-init"


# ---------------------------------------------------------------------------------------------
# Starting the command

def confine_step() -> Step:
    """PID 1 drops to Docker's capabilities before it starts anything: its children inherit."""
    names = ",".join("+" + name[4:].lower() for name in process.DOCKER_DEFAULT_CAPABILITIES)

    def confine():
        process.drop_capabilities(process.DOCKER_DEFAULT_CAPABILITIES)
        process.set_no_new_privileges()

    return Step(f"setpriv --bounding-set=-all,{names} --inh-caps=-all --no-new-privs",
                "only Docker's default capabilities, and exec never grants more (setuid "
                "binaries included), for PID 1 and everything it starts", confine)


def keyring_step() -> Step:
    """PID 1 joins a new session keyring before it starts anything (as runc's init does)."""

    def join():
        try:
            syscalls.join_session_keyring()
        except OSError as error:
            if error.errno != errno.ENOSYS:  # a kernel without keyrings has nothing to share
                raise

    return Step("keyctl session - sh",
                "a new, empty session keyring: keyrings are not namespaced, and the caller's "
                "session keyring (its keys) would otherwise be the container's", join)


def seal() -> None:
    """Make this new PID 1 unreachable from its container, before any container process exists.

    ``prctl(PR_SET_DUMPABLE, 0)``, as runc's init: /proc/1/{fd,mem,environ,root,cwd} and ptrace
    now need CAP_SYS_PTRACE, which container processes lack, so they cannot reopen what PID 1
    holds, nor read or rewrite its memory. Its children inherit this until their execve (a
    vfork child shares PID 1's memory anyway), which makes commands dumpable again, as in runc.
    ``setsid``: a session of its own, so no terminal of the host is the container's /dev/tty.
    """
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    os.setsid()


def close_fds_except(keep) -> None:
    """Close every descriptor above 2 except those in `keep` (None entries are ignored):
    a forked process inherits every descriptor of its parent, host ones included."""
    low = 3
    for fd in sorted({fd for fd in keep if fd is not None and fd > 2}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def null_stdio() -> None:
    """0, 1 and 2 become /dev/null: PID 1 needs no stdio once its command has its own."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def open_terminal(size: list[int] | None) -> tuple[int, int]:
    """A new pseudo-terminal (master, slave) from the container's own devpts.

    Called after pivot_root, so /dev/ptmx is the container's (``pts/ptmx`` of its private
    devpts instance); `size` is the caller's terminal (rows, columns), set before the command
    starts so that its first ``stty size`` is right.
    """
    master, slave = os.openpty()
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    return master, slave


def _take_terminal() -> None:
    # In the command's child, after setsid: its stdin (the pty's slave) becomes its
    # controlling terminal, as `setsid -c` does.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_command(args, env, working_dir, user, *, new_session: bool,
                  stdio: tuple[int, int, int] | None = None,
                  terminal: bool = False) -> subprocess.Popen:
    """Start the user's command as a child of this process (PID 1); returns its Popen.

    PID 1 has already given up every capability the command must not have (`confine_step`),
    so what is left is the user switch, the working directory, a clean environment and stdio:
    `subprocess` does exactly that, with vfork() when no user switch is needed, which is much
    cheaper than a fork of this Python process. A command that cannot start raises
    CommandFailed with the exit status a shell would give (127 not found, 126 not executable).
    """
    uid, gid, groups, home = process.resolve_user(user or "", Path("/"))
    environment = process.build_environment(env, [], home=home)
    path_env = next((e[5:] for e in environment if e.startswith("PATH=")), "")
    try:
        executable = process.find_executable(args[0], path_env)
    except ContainedError as error:
        raise CommandFailed(error.exit_status, str(error)) from error
    identity = {}
    if (uid, gid) != (os.geteuid(), os.getegid()):
        identity = {"user": uid, "group": gid}
        if process.setgroups_allowed():
            identity["extra_groups"] = groups
    stdin, stdout, stderr = stdio if stdio is not None else (0, 1, 2)
    if terminal:  # a pty as controlling terminal: this one needs a (single-threaded) hook
        identity["preexec_fn"] = _take_terminal
    try:
        return subprocess.Popen(
            args, executable=executable, env=dict(e.split("=", 1) for e in environment),
            cwd=working_dir or "/", stdin=stdin, stdout=stdout, stderr=stderr,
            start_new_session=new_session or terminal, close_fds=True, restore_signals=True,
            **identity)
    except FileNotFoundError as error:
        if error.filename == (working_dir or "/"):
            raise CommandFailed(EXIT_NOT_EXECUTABLE, f"cannot enter the working directory "
                                f"{working_dir}: it does not exist") from error
        raise CommandFailed(EXIT_NOT_FOUND, f"{args[0]}: {error.strerror}") from error
    except PermissionError as error:
        raise CommandFailed(EXIT_NOT_EXECUTABLE, f"{args[0]}: {error.strerror}") from error
    except OSError as error:
        raise CommandFailed(EXIT_SETUP_FAILED, f"cannot start {args[0]}: {error}") from error


def restore_default_signals() -> None:
    """What the runner ignores (SIGINT, SIGPIPE via Python) must not stay ignored in commands:
    an ignored signal survives exec. PID 1 itself is protected by the kernel anyway."""
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# A throwaway container: PID 1 waits for its one command

def reap_until(child: subprocess.Popen, caller: socket.socket | None = None) -> int:
    """Forward signals to the command, reap every zombie, return the command's status.

    With `caller` (the socket of whoever waits for the result), the KILL marker on it or its
    end SIGKILLs the command: a notebook's interrupt, or a kernel that died.
    """
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: _signal(child.pid, signum))
    wakeup = _sigchld_wakeup() if caller is not None else None
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if caller is None else os.WNOHANG)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if pid == child.pid:
            # Tell the Popen its child is reaped, or it would try again when collected.
            child.returncode = exit_code(status)
            return child.returncode
        if pid == 0:  # children left, none exited yet: sleep until one does, or the caller
            ready, _, _ = select.select([wakeup, caller], [], [])
            _drain(wakeup)
            if caller in ready:
                _wants_kill(_recv(caller))  # KILL, or nothing: the caller has gone
                _signal(child.pid, signal.SIGKILL)
                caller = None  # from now on a plain wait


def _sigchld_wakeup() -> int:
    """A pipe that becomes readable when a child exits (SIGCHLD), for select()."""
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wakeup_read


def _signal(pid: int, signum: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# A named container: PID 1 holds the namespaces and runs what `exec` sends

def control_socket(directory: Path) -> socket.socket:
    """The listening socket `exec` connects to (in the container's 0700 directory)."""
    path = directory / "control.sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_path(path) as name:
        listener.bind(name)
    os.chmod(path, 0o600)
    listener.listen(16)
    return listener


@contextmanager
def short_path(path: Path):
    """`path` as a name that fits a Unix socket address (108 bytes), via an open directory.

    Container directories are deep (a 64-hex-digit id under CONTAINED_HOME); the directory's
    descriptor names it in a few bytes, without chdir (which would affect every thread).
    """
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def detach_stdio(keep: tuple[int, ...]) -> None:
    """A long-lived PID 1 must not hold the caller's pipes open (a cell would never end)."""
    null_stdio()
    close_fds_except(keep)


def serve_exec(listener: socket.socket) -> None:
    """PID 1 of a named container, forever: exec requests in, zombies out, SIGTERM ends all.

    Each request (JSON + the caller's stdin/stdout/stderr as SCM_RIGHTS) becomes a child in
    its own session; its status goes back on the same connection. The KILL marker or the
    caller going away kills the child's process group, unless the request was detached.
    """
    wakeup_read = _sigchld_wakeup()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    children: dict[int, tuple[socket.socket, bool, subprocess.Popen]] = {}
    while True:
        if stopping:
            _stop_everything()
        watched = [listener, wakeup_read] + [conn for conn, _, _ in children.values()]
        try:
            ready, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if wakeup_read in ready:
            _drain(wakeup_read)
        if listener in ready:
            _accept(listener, children)
        for pid, (conn, detached, _) in list(children.items()):
            if conn in ready and not detached and _wants_kill(_recv(conn)):
                _signal(pid, signal.SIGKILL, group=True)
        _reap(children)


def _accept(listener: socket.socket, children: dict) -> None:
    conn, _ = listener.accept()
    try:
        received = wire.receive_request(conn)
    except (OSError, ValueError):
        conn.close()
        return
    if received is None:
        conn.close()
        return
    request, fds = received
    try:
        spec = request["spec"]
        stdio = tuple(fds[:3])
        if spec.get("tty"):
            stdio = (_send_terminal(conn, spec.get("tty_size")),) * 3
            fds.append(stdio[0])  # closed below, once the command has it
        child = spawn_command(spec["args"], spec["env"], spec["working_dir"], spec["user"],
                              new_session=True, stdio=stdio, terminal=bool(spec.get("tty")))
    except CommandFailed as error:
        wire.send_event(conn, wire.Error.of(error))
        conn.close()
        return
    except BaseException as error:  # noqa: BLE001 — one bad request must not end PID 1
        wire.send_event(conn, wire.Error("ExecFailed", describe(error), EXIT_SETUP_FAILED))
        conn.close()
        return
    finally:
        for fd in fds:
            os.close(fd)
    wire.send_event(conn, wire.Started(pid=child.pid))
    children[child.pid] = (conn, bool(request.get("detached")), child)


def _send_terminal(conn: socket.socket, size: list[int] | None) -> int:
    """Open a pty for an ``exec -t``, pass its master to the caller; return the slave."""
    master, slave = open_terminal(size)
    try:
        wire.send_event_with_fds(conn, [master], wire.Tty())
    finally:
        os.close(master)
    return slave


def _reap(children: dict) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            conn, _, child = children.pop(pid)
            child.returncode = exit_code(status)
            wire.send_event(conn, wire.Exit(child.returncode))
            conn.close()


def _stop_everything() -> None:
    """SIGTERM to every process of the namespace, then leave once they are gone."""
    _signal(-1, signal.SIGTERM)  # from PID 1, -1 means every process of the namespace
    while True:
        try:
            os.kill(-1, 0)
        except ProcessLookupError:
            os._exit(0)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        select.select([], [], [], 0.05)


def _wants_kill(data: bytes) -> bool:
    """Whether the caller asked to kill (or went away); one that says anything else is
    confused, and its command is ended too (PID 1 itself carries on)."""
    try:
        return wire.is_kill(data)
    except wire.WireError:
        return True


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(64)
    except OSError:
        return b""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def set_title() -> None:
    syscalls.set_process_title(TITLE)
