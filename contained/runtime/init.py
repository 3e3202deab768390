"""PID 1: the container's first process, and why it has a job of its own.

Taught in notebooks 05 and 06. In a new PID namespace the first process is PID 1, and PID 1 is
special: orphaned processes are re-parented to it, so it must reap them (or they stay zombies);
the kernel delivers it no signal it has no handler for, so ``kill -TERM 1`` does nothing unless
it forwards; and when it exits, the kernel kills everything else in the namespace. Docker's
``--init`` (tini) exists for this. The shell equivalent of our init is roughly::

    unshare --pid --fork --kill-child sh -c 'trap "kill -TERM $child" TERM; CMD & child=$!; wait'

Our init is the runner's Python process, forked and renamed ``contained-init``; before it
starts anything it joins a new session keyring, drops to Docker's default capabilities and
no_new_privs, and loads the seccomp filter (`contained.runtime.seccomp`), which everything it
starts inherits. A throwaway container's PID 1 stays Python: it waits for its one command and
reports how it ended. A named container's PID 1, once set up, executes the tiny C init
(`idle`, `contained.runtime.tiny_init`), which keeps its confinement and costs ~0.1 MiB instead
of ~15. It also starts the commands ``exec`` sends on the container's exec socket
(`contained.runtime.served`); without it, or with ``-t`` or ``--explain``, ``exec`` joins the
container from outside (`contained.runtime.enter`), as ``nsenter`` does.

PID 1 holds host resources (its sockets to the runner and caller), so the container must not
reach it: it is non-dumpable, as runc's init (`seal`), so /proc/1/fd, mem, environ, root and
cwd and ptrace need CAP_SYS_PTRACE, which no container process has; and it leads a session of
its own, so the container has no controlling terminal of the host. The descriptors it keeps
(everything else is closed before the container's processes exist, `syscalls.close_fds_except`):

- 0, 1, 2: the command's stdio, until the command is started (then /dev/null): pipes the
  client relays, or /dev/null, never the caller's own files (`contained.runtime.relay`);
- the report channel: the pipe to the runner that forked it (`contained.runtime.pid1.RunnerReport`),
  or, for a spare's PID 1, the caller's reply socket and the link to its supervisor
  (``CallerReport``; the server, or a rootless spare's own process), so that the result gets out;
- with ``-t``, the reply socket until the pty's master has been passed on (SCM_RIGHTS);
- the cgroup's OOM counter file (a spare's PID 1 reports OOM kills itself; opened before
  pivot_root, read-only);
- the explain descriptor, for ``--explain`` only (it prints the last step);
- a named container's PID 1, in the end: only the tiny init's file (close-on-exec), the pipe
  it closes once sealed, and the exec socket's listener, bound on the host (`idle`);
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
    except OSError as error:
        stage = "dir" if error.filename == (working_dir or "/") else "exec"
        raise start_failure(stage, error.errno, args[0], working_dir) from error


def start_failure(stage: str, number: int, name: str, working_dir: str | None,
                  container: str = "") -> CommandFailed:
    """Why a command could not start, as the caller reads it, with a shell's exit status (127
    not found, 126 not executable): from `spawn_command`, or from the tiny init
    (`contained.runtime.served`), which says at which `stage` (tiny_init.c) and the errno."""
    reason = os.strerror(number)
    if stage == "dir" and number == errno.ENOENT:
        return CommandFailed(EXIT_NOT_EXECUTABLE, f"cannot enter the working directory "
                             f"{working_dir}: it does not exist")
    if stage in ("path", "missing", "directory", "notexec"):
        error = process.cannot_execute(name, stage, number)
        return CommandFailed(error.exit_status, str(error))
    if stage == "busy":
        return CommandFailed(EXIT_SETUP_FAILED, f"container {container} runs as many exec "
                             "commands as it takes; wait for some to end")
    if stage in ("dir", "exec") and number == errno.ENOENT:
        return CommandFailed(EXIT_NOT_FOUND, f"{name}: {reason}")
    if stage in ("dir", "exec") and number in (errno.EACCES, errno.EPERM):
        return CommandFailed(EXIT_NOT_EXECUTABLE, f"{name}: {reason}")
    if stage == "start":  # tiny_init.c's START_TIMEOUT_MS
        return CommandFailed(EXIT_SETUP_FAILED, f"cannot start {name}: it was stopped before "
                             "it could execute (within 10 s); try again")
    if not number:  # a request PID 1 could not read: ours, not the user's
        reason = f"the container's init refused the request ({stage})"
    return CommandFailed(EXIT_SETUP_FAILED, f"cannot start {name}: {reason}")


def restore_default_signals() -> None:
    """What the runner ignores (SIGINT, SIGPIPE via Python) must not stay ignored in commands:
    an ignored signal survives exec. PID 1 itself is protected by the kernel anyway."""
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# A throwaway container: PID 1 waits for its one command

def reap_until(child: subprocess.Popen, caller: socket.socket | None = None,
               group: bool = False) -> int:
    """Forward signals to the command, reap every zombie, return the command's status.

    With `caller` (the socket of whoever waits for the result), the KILL marker on it or its
    end SIGKILLs the command (with `group`, its whole process group: an exec'd command leads
    one): a notebook's interrupt, or a kernel that died.
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
                _signal(child.pid, signal.SIGKILL, group)
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
# A named container: PID 1 holds the namespaces, reaps, and stops them all on SIGTERM

#: where the tiny init finds the pipe it closes once it is sealed (`idle`)
SEALED_FD = 3
LISTENER_FD = 4


def idle(binary: int | None, sealed: int, listener: int | None = None) -> None:
    """PID 1 of a named container, from now on: the tiny C init (`contained.runtime.tiny_init`)
    when `binary` is its descriptor, else the same loop in Python. Never returns.

    `sealed` (the pipe to the runner) is handed over as descriptor 3; the init closes it once
    it is non-dumpable again (execve makes a process dumpable), and only then does the runner
    say the container is created: no container process exists before PID 1 is sealed.
    `listener`, the exec socket (`contained.runtime.served`), becomes descriptor 4; the Python
    loop closes it, and `exec` joins from outside instead. All else PID 1 had is closed: stdio
    become /dev/null (a cell must not wait on its pipes).
    """
    null_stdio()
    # Both must land on 3 and 4 without one overwriting the other, or the program's file:
    # whatever sits there now moves above them first.
    binary, sealed, listener = (
        fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LISTENER_FD + 1)
        if fd in (SEALED_FD, LISTENER_FD) else fd for fd in (binary, sealed, listener))
    os.dup2(sealed, SEALED_FD, inheritable=True)
    argv = [TITLE]
    if listener is not None:
        os.dup2(listener, LISTENER_FD, inheritable=True)
        argv.append("--serve-exec")
    syscalls.close_fds_except((SEALED_FD, binary, LISTENER_FD if listener is not None else None))
    if binary is not None:
        try:
            os.execve(binary, argv, {})
        except OSError:  # a kernel or filter that refuses it: the Python loop does the job
            os.close(binary)  # and keeps no host file open
    if listener is not None:
        os.close(LISTENER_FD)  # `exec` finds nobody listening, and joins from outside
    os.close(SEALED_FD)
    _idle_in_python()


def _idle_in_python() -> None:
    """`tiny_init.c`'s loop: reap every zombie; SIGTERM or SIGINT stops everything."""
    wakeup_read = _sigchld_wakeup()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping:
        try:
            select.select([wakeup_read], [], [])
        except InterruptedError:
            pass
        _drain(wakeup_read)
        _reap_all()
    _stop_everything()


def _reap_all() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _stop_everything() -> None:
    """SIGTERM to every process of the namespace, then leave once they are gone."""
    _signal(-1, signal.SIGTERM)  # from PID 1, -1 means every process of the namespace
    while True:
        try:
            os.kill(-1, 0)
        except ProcessLookupError:
            os._exit(0)
        _reap_all()
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
