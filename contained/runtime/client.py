"""The runner's client: how a caller (a kernel, the CLI) sends a container to the runner.

Taught in notebook 06 (what ``%%container`` does underneath). `Runner` starts the runner helper
process (``python -I -m contained.runtime.runner --serve FD``, from ``/`` with a minimal
environment, via `contained.isolated`) once and reuses it, or, in a single-threaded program
such as the CLI, forks the request's worker directly (or hands the request to the worker the
CLI forked first thing: `contained.runtime.ahead`). `Request` is one request in flight: it
reads the runner's events (`contained.runtime.wire`: `Started`, `Exit`, `Error`, ...) and can
send the KILL marker; `Execution` is a container command in flight, as the lifecycle API
(`contained.runtime.container`) returns it, with the `RunResult` at the end.

Everything here is testable without root: a `Request` is a socket, and a fake runner that
writes events on its other end stands in for the real one (tests/test_wire.py).
"""

import os
import select
import socket
import threading
from pathlib import Path

from contained import home
from contained.errors import ContainedError
from contained.records import record
from contained.runtime import wire
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import EXIT_KILLED

#: the runner's name for the error that says it died without a result
RUNNER_DIED = "RunnerDied"


@record
class RunResult:
    """How a container's command ended: its exit status (128+N for signal N) and why."""

    status: int
    oom: bool = False
    message: str | None = None
    container: str = ""
    id: str = ""


RUNNER_ENVIRONMENT = ("PATH", "LANG")
# How long a request waits for a spare the runner owes (seconds): a bound for a runner that
# is stuck, since one that works hands it over in a few milliseconds or says it has none.
SPARE_WAIT = 1.0


def runner_environment() -> dict[str, str]:
    """All the runner (and so every PID 1) gets of the caller's environment: PATH, LANG and
    contained's own settings, with the home resolved here (it may depend on HOME)."""
    kept = {key: value for key, value in os.environ.items()
            if key in RUNNER_ENVIRONMENT or key.startswith("CONTAINED_")}
    return kept | {"CONTAINED_HOME": str(home.home_path())}


def _forget_the_caller(fds: list[int]) -> None:
    """In the CLI's forked worker, before any PID 1 exists: only the request's descriptors
    (the relay's pipe ends, never the caller's own: `contained.runtime.relay`) and the runner's
    environment stay. PID 1 is non-dumpable too, so /proc/1/environ shows nothing anyway."""
    from contained import syscalls

    environment = runner_environment()
    os.environ.clear()
    os.environ.update(environment)
    syscalls.close_fds_except(fds)


def _work(request: dict, fds: list[int]) -> None:
    """The CLI's worker, forked when the request is known: do it, then exit (never return
    into the caller's code, whatever happens)."""
    code = 1
    try:
        _forget_the_caller(fds)
        from contained.runtime import runner

        code = runner.handle(request, fds)
    finally:
        os._exit(code)


class Runner:
    """The way to the runner: a helper process (kernels, long-lived programs) or a fork (CLI).

    ``Runner.shared()`` starts the runner (``python -I``, from ``/``, with `runner_environment`:
    see `contained.isolated`) once per process, with plain subprocess (no Python runs between fork
    and exec in the caller), and reuses it.
    ``Runner(in_process=True)`` forks the request's worker directly; only a single-threaded
    program such as the CLI may use it; given a worker forked ahead (`contained.runtime.ahead`:
    the CLI's, importing the runtime while the CLI prepares the request), the first request goes
    to that one.
    """

    _shared: "Runner | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, in_process: bool = False, ahead=None):
        self.in_process = in_process or ahead is not None
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process = None  # the helper's subprocess.Popen, once started
        self._spares: list[socket.socket] = []
        self._owed = 0  # spares asked for ("want-spare") and not yet handed over
        self._ahead = ahead  # an `ahead.Worker`, until it has the first request

    @classmethod
    def shared(cls) -> "Runner":
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive():
                cls._shared = cls()
            return cls._shared

    @classmethod
    def close_shared(cls) -> None:
        """Stop this process's shared runner (its throwaway containers are killed)."""
        with cls._shared_lock:
            if cls._shared is not None:
                cls._shared.close()
                cls._shared = None

    def alive(self) -> bool:
        return self.in_process or (self._process is not None and self._process.poll() is None)

    def _take_spare(self) -> socket.socket | None:
        """A spare the runner handed over (see `server.serve`), if one has arrived, or one it
        owes us (for "want-spare") unless it says it has none ("no-spare").

        Waiting for the one owed is never slower than not: a request sent to the runner
        instead waits for the same loop that is making the spare, and then a fork. Containers
        back to back come faster than a spare is made (~2 ms) since a spare's PID 1 reports
        the end itself (`spare_init`)."""
        control = self._start()
        while True:
            wait = SPARE_WAIT if self._owed and not self._spares else 0
            if not select.select([control], [], [], wait)[0]:
                if wait:  # late: it is taken when it comes, not waited for again
                    self._owed = 0
                break
            received = wire.receive_request(control)
            if received is None:
                break
            message, fds = received
            if message.get("op") == "spare" and fds:
                self._spares.append(socket.socket(fileno=fds[0]))
                self._owed = max(0, self._owed - 1)
            elif message.get("op") == "no-spare":
                self._owed = 0
        # The oldest first: it had the most time to get ready.
        return self._spares.pop(0) if self._spares else None

    def _start(self) -> socket.socket:
        if self._control is None or not self.alive():
            import subprocess

            from contained import isolated

            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._process = subprocess.Popen(
                [*isolated.python_argv("contained.runtime.runner"), "--serve",
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
                # Nothing of the caller's but what it must have: a root helper must not run
                # a module planted in the caller's directory, nor read its secrets.
                env=runner_environment(), cwd="/",
                # Its own session: the kernel's interrupt (SIGINT) must not reach it.
                start_new_session=True)
            theirs.close()
            self._control = ours
        return self._control

    def close(self) -> None:
        """Stop the helper: its running containers see the socket close and are killed. An
        unused worker forked ahead sees its socket close and exits; it is reaped here."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        for spare in self._spares:
            spare.close()
        self._spares = []
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            import subprocess  # imported already: `_start` started the helper with it

            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def submit(self, op: str, spec_json: str, stdio: tuple[int, int, int],
               explain_fd: int | None = None, detached: bool = False,
               owner: dict | None = None) -> "Request":
        """Send one request; the returned `Request` reports its progress and result.

        With `owner` (`state.owner()`), the runner records the container (state.json).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"op": op, "spec": spec_json, "explain": explain_fd is not None,
                   "detached": detached, "owner": owner}
        fds = [*stdio, explain_fd if explain_fd is not None else stdio[2], theirs.fileno()]
        worker = None
        try:
            if self.in_process:
                worker = self._hand_to_worker(request, fds)
            else:
                with self._lock:
                    self._send(request, fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return Request(ours, worker)

    def _hand_to_worker(self, request: dict, fds: list[int]) -> int:
        """The worker forked ahead, if there is one, receives the request (its pid); else one
        is forked now, for this request."""
        if self._ahead is not None:
            worker, self._ahead = self._ahead.hand(request, fds), None
            if worker is not None:
                return worker
            # it died unused (killed?): it was reaped; fork another
        worker = os.fork()
        if worker == 0:
            _work(request, fds)
        return worker

    def _send(self, request: dict, fds: list[int]) -> None:
        """To the waiting spare when it fits (one hop less), else to the runner itself."""
        from contained.runtime import server  # the helper's way only: the CLI never needs it

        if server.suits_spare(request) and (spare := self._take_spare()) is not None:
            try:
                wire.send_request(spare, request, fds)
                wire.send_request(self._start(), {"op": "want-spare"}, [])
                self._owed += 1
                return
            except OSError:
                pass  # that spare died: the runner forks one on the spot instead
            finally:
                spare.close()
        wire.send_request(self._start(), request, fds)

    def request(self, op: str, spec_json: str, stdio: tuple[int, int, int],
                explain_fd: int | None = None, detached: bool = False):
        """Send one request and wait for its result (an event: `wire.Exit`, `wire.Created`);
        an interrupt kills what it started."""
        return self.submit(op, spec_json, stdio, explain_fd, detached).wait()


class Request:
    """One request in flight: select() on it, `poll()` for the result, `kill()` to stop it.

    The runner writes events (`contained.runtime.wire`): `Started` (with the pid of the
    container's process), then `Exit` or `Created` or `Error`, then `Cleaned`. Closing the
    socket, or sending the KILL marker, makes the runner kill what it started; the result
    still follows.
    """

    def __init__(self, sock: socket.socket, worker: int | None = None):
        self._sock = sock
        self._worker = worker
        self._events = wire.EventReader()
        self.started: wire.Started | None = None
        self.result: wire.Exit | wire.Created | wire.Error | None = None
        self.terminal: int | None = None  # -t: the pty's master, passed before "started"

    def fileno(self) -> int:
        return self._sock.fileno()

    def kill(self) -> None:
        """Ask the runner to kill the container's command (SIGKILL); the result follows."""
        try:
            wire.send_marker(self._sock, wire.Marker.KILL)
        except OSError:
            pass

    def poll(self):
        """Read what is available without blocking; the final message once there is one."""
        if self.result is not None:  # read already, e.g. with Started by `wait_started`
            self.close()
            return self.result
        self._sock.setblocking(False)
        try:
            self._read()
        except BlockingIOError:
            pass
        finally:
            if self._sock.fileno() != -1:
                self._sock.setblocking(True)
        if self.result is not None:
            self.close()
        return self.result

    def wait_started(self) -> None:
        """Block until the command runs (or failed to start, which is raised)."""
        while self.started is None and self.result is None:
            self._read()
        if self.result is not None:
            self.outcome()

    def wait(self, settle: bool = False):
        """Block until the result; Ctrl-C kills the command, waits for its end, re-raises.

        The result arrives before the runner has torn the container down (unmounting is slow
        and nobody needs to wait for it); ``settle=True`` waits for the teardown too.
        """
        interrupted = False
        while self.result is None:
            try:
                self._read()
            except KeyboardInterrupt:
                # Keep waiting after the kill so nothing is left half-cleaned.
                interrupted = True
                self.kill()
        if settle:
            self.settle()
        self.close()
        if interrupted:
            raise KeyboardInterrupt
        return self.outcome()

    def settle(self) -> None:
        """Wait until the runner has finished this request (its socket closes; the CLI's own
        worker exits, even once the socket was closed here)."""
        if self._sock.fileno() != -1:
            while self._sock.recv(65536):
                pass
        if self._worker:
            os.waitpid(self._worker, 0)
            self._worker = None

    def close(self) -> None:
        self._sock.close()
        if self._worker:
            # An in-process worker (the CLI's) may still be tearing down: don't wait for it.
            if os.waitpid(self._worker, os.WNOHANG)[0]:
                self._worker = None

    def outcome(self):
        """The final event; a runner error is raised as the ContainedError it was."""
        if isinstance(self.result, wire.Error):
            raise self.result.exception()
        return self.result

    def _read(self) -> None:
        chunk, fds = wire.receive_messages(self._sock)
        for fd in fds:
            os.set_inheritable(fd, False)
            if self.terminal is None:
                self.terminal = fd
            else:
                os.close(fd)
        if not chunk:
            # The end, after a result or without one. A fast command's Exit may have come in
            # the same read as its Started: the runner's leaving after it is no death.
            if self.result is None:
                self.result = wire.Error(RUNNER_DIED, "the runner stopped without a result; "
                                         "run `contained gc`")
            return
        for event in self._events.feed(chunk):
            if self.result is not None:
                break  # after the result only `Cleaned` comes, for `settle`
            if isinstance(event, wire.Started):
                self.started = event
            elif isinstance(event, wire.FINAL):
                self.result = event
            # `Tty`: its master came as a descriptor (above)


def stdio_fds(stdin, stdout, stderr) -> tuple[int, int, int]:
    return tuple(fd_of(stream, default) for stream, default in
                 ((stdin, 0), (stdout, 1), (stderr, 2)))


def fd_of(stream, default: int) -> int:
    if stream is None:
        return default
    if isinstance(stream, int):
        return stream
    return stream.fileno()


# ---------------------------------------------------------------------------------------------
# A command in flight, as the lifecycle API returns it

class Execution:
    """A container command in flight (from `start` or `start_exec`).

    `fileno()` lets a caller select() on it next to the output pipes; `poll()` returns the
    `RunResult` once there is one (or None); `wait()` blocks; `kill()` ends the command.
    """

    def __init__(self, request: Request, spec: ContainerSpec, remove_files=None):
        self.request = request
        self.spec = spec
        # What removes a throwaway container's files should its runner die first (the
        # lifecycle's `_remove_files`).
        self._remove_files = remove_files

    def fileno(self) -> int:
        return self.request.fileno()

    def kill(self) -> None:
        self.request.kill()

    def poll(self) -> RunResult | None:
        return self._result() if self.request.poll() is not None else None

    def wait_started(self) -> None:
        self.request.wait_started()

    def wait(self, settle: bool = False) -> RunResult:
        """The result; ``settle=True`` also waits until the container is torn down."""
        try:
            self.request.wait(settle=settle)
        except ContainedError:
            if not self._pid_one_went():
                raise
        finally:
            self._clean_up()
        return self._result()

    def _pid_one_went(self) -> bool:
        """An exec talks to the container's PID 1: its going away means the container was
        stopped or removed (rm -f, stop), and the command was SIGKILLed with it. Nothing is
        left for gc to do."""
        return self.spec.persistent and _runner_died(self.request.result)

    def _result(self) -> RunResult:
        self._clean_up()
        if self._pid_one_went():
            return RunResult(EXIT_KILLED, message=f"killed: container {self.spec.name} stopped "
                             "while the command ran", container=self.spec.name, id=self.spec.id)
        ended = self.request.outcome()
        return RunResult(ended.status, ended.oom, ended.message, self.spec.name, self.spec.id)

    def _clean_up(self) -> None:
        # The runner removes a throwaway container; this catches a runner that died first.
        if _runner_died(self.request.result) and self.spec.remove \
                and Path(self.spec.directory).exists() and self._remove_files is not None:
            self._remove_files(self.spec)


def _runner_died(result) -> bool:
    return isinstance(result, wire.Error) and result.type == RUNNER_DIED


def explain_fd(explain) -> int | None:
    """Where --explain goes: None (nowhere), True (stderr), or a file or descriptor."""
    if explain is None or explain is False:
        return None
    if explain is True:
        return 2
    return fd_of(explain, 2)
