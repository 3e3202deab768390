"""The runner's server loop, and the spares it keeps ready so that a container starts sooner.

Taught in notebook 06 (what ``%%container`` does underneath). The runner (`runner`) is started
once per kernel as ``python -m contained.runtime.runner --serve FD`` and serves requests on
that socket until it closes, forking one child per request (`runner.handle`).

Speed: the server keeps one *spare* (`contained.runtime.spares`): a container made ahead of
time with what does not depend on it, whose PID 1 waits for the request. The caller sends a
plain throwaway run straight to that PID 1, which answers it directly (`Started`, `Exit`); the
server (rootless: a process of the spare's own) watches it, records the container, and tears
it down after the caller has its answer. An explained run never takes a spare, so
``--explain`` shows, and runs, every step in place.
"""

import json
import os
import select
import signal
import socket

from contained import syscalls
from contained.runtime import cgroups, process, runner, seccomp, spare_init, wire
from contained.runtime.pid1 import ROOTLESS
from contained.runtime.spares import Prepared
from contained.runtime.status import ContainerSetupFailed, describe

# Spares kept ready. Each is an idle PID 1 (rootless, two idle processes), an empty cgroup and
# an empty container directory; two measured no faster than one back to back on 2 cores.
SPARES = 1


def serve(control: socket.socket) -> None:
    """Serve requests until the client (the kernel) closes the socket, then finish the
    containers still running on spares, and return.

    Forking this process takes a millisecond or two, and a container needs more that does not
    depend on it (below, `Prepared`). So the runner keeps a *spare*: a PID 1 forked ahead of
    time and ready, whose socket it hands to the client (a "spare" message with the socket as
    SCM_RIGHTS; SPARES of them). The client sends a plain throwaway run straight to a spare,
    then asks for another ("want-spare"); anything else comes here and gets a child forked on
    the spot (`runner.handle`).

    As root, this process also stays beside each spare's PID 1 itself (`Spares`): it records
    the container, and tears it down once PID 1 has gone. One Python process fewer per
    container: measured back to back, 28 ms of CPU per container became 23. A rootless spare
    enters its user namespace before it forks PID 1, which this process must not do: there a
    forked child stays beside PID 1 instead (`_fork_spare`).
    """
    # As a subreaper, this process also adopts the PID 1 of every named container once its
    # runner child has exited; `Children` reaps them, so a stopped one leaves no zombie.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    children = Children()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are for the kernel
    seccomp.prepare_default()
    # Found once here, every PID 1 forked from now on has it (41 prctl calls each otherwise).
    process.last_capability()
    spares = Spares(control, children, SPARES if _spares_fit() else 0)
    spares.top_up()
    listening = True
    while listening or spares.in_use():
        ready, _, _ = select.select(
            [control] * listening + [children.wakeup] + spares.links(), [], [])
        if children.wakeup in ready:
            children.reap()
        for link in ready:
            spares.on_link(link)  # ignores what is not a spare's link
        if control in ready:
            listening = _serve_one(control, spares)
    spares.discard_unused()
    children.leave()


def _serve_one(control: socket.socket, spares: "Spares") -> bool:
    """One request from the client; False once it has closed the socket."""
    try:
        received = wire.receive_request(control)
    except (OSError, ValueError):
        received = None
    if received is None:
        spares.discard_unused()  # their PID 1s wait for a client that is gone
        return False
    request, fds = received
    if request.get("op") == "want-spare":
        spares.wanted += 1
    else:
        _fork_for(request, fds, control, spares)
    spares.top_up()  # also after a spare could not be made: try again at each request
    return True


def _fork_for(request: dict, fds: list[int], control: socket.socket, spares: "Spares") -> None:
    """A child of its own for `request` (`runner.handle`). A fork that fails (too many
    processes) fails that request, in a line; never the server, whose spares' containers
    would die with it."""
    try:
        child = os.fork()
    except OSError as error:
        with socket.socket(fileno=os.dup(fds[-1])) as reply:
            try:
                wire.send_event(reply, wire.Error.of(ContainerSetupFailed(
                    f"the runner cannot start another process ({error.strerror}): stop some "
                    "containers or processes, then run it again")))
            except OSError:
                pass  # the caller has gone too
        child = None
    if child == 0:
        _forget_the_server(control, spares)
        os._exit(runner.handle(request, fds))
    for fd in fds:
        os.close(fd)


def _forget_the_server(control: socket.socket, spares: "Spares", keep=None) -> None:
    """In a child forked by the server: none of its sockets but `keep`, none of its signal
    handling."""
    control.close()
    spares.close_in_child(keep)
    spares.children.forget()


class Children:
    """Reaps every child of the server as it exits (SIGCHLD wakes the loop through `wakeup`),
    keeping the status of the spares' PID 1s for their supervision (`status`)."""

    def __init__(self):
        self.wakeup, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_write)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # the wakeup is the point
        self.watched: set[int] = set()
        self.statuses: dict[int, int] = {}

    def forget(self) -> None:
        """In a child: SIGCHLD is its own business again."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.wakeup)
        os.close(self._wakeup_write)

    def reap(self) -> None:
        try:
            while os.read(self.wakeup, 64):
                pass
        except BlockingIOError:
            pass  # drained
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.watched:
                self.statuses[pid] = status

    def leave(self) -> None:
        """Before the server exits: no zombie of its own is left for init to reap, and a
        child that ends later reaps itself."""
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        self.reap()

    def status(self, pid: int) -> int:
        """The wait status of watched child `pid`, killed first unless `reap` has reaped it
        already: then its pid may be another process's, which must not be signalled."""
        self.watched.discard(pid)
        if pid in self.statuses:
            return self.statuses.pop(pid)
        runner.kill(pid)  # unreaped, a zombie at worst: the pid is still its own
        return os.waitpid(pid, 0)[1]


def _spares_fit() -> bool:
    """A rootless spare makes no cgroup; where systemd delegated our unit a group (TLJH),
    every container gets one under it (`steps.host_steps`), so spares would not fit."""
    return not (ROOTLESS and cgroups.delegated_unit(cgroups.detect()) is not None)


class Spares:
    """The spares this server has handed to the client, and, as root, the containers they
    became: each spare's PID 1 (`Prepared`) talks to the server on its `link`."""

    def __init__(self, control: socket.socket, children: Children, wanted: int):
        self.control, self.children, self.wanted = control, children, wanted
        self.prepared: dict[socket.socket, Prepared] = {}

    def links(self) -> list[socket.socket]:
        return list(self.prepared)

    def spares(self) -> list[Prepared]:
        """Each spare once (one may have more than one socket watched)."""
        return list({id(spare): spare for spare in self.prepared.values()}.values())

    def in_use(self) -> bool:
        return any(spare.reply is not None for spare in self.spares())

    def _watch(self, spare: Prepared) -> None:
        """Watch exactly the spare's sockets (`Prepared.sockets`) from now on."""
        for sock in [s for s, watched in self.prepared.items() if watched is spare]:
            del self.prepared[sock]
        for sock in spare.sockets():
            self.prepared[sock] = spare

    def top_up(self) -> None:
        while self.wanted:
            try:
                spare = self._make()
            except Exception:  # noqa: BLE001 — no spare: requests come here instead
                try:  # and the client need not wait for one
                    wire.send_request(self.control, {"op": "no-spare"}, [])
                except OSError:
                    pass
                return
            self.wanted -= 1
            try:
                wire.send_request(self.control, {"op": "spare"}, [spare.fileno()])
            except OSError:
                pass  # the client is gone: the loop ends on its next read
            finally:
                spare.close()  # the spare exits when the client's copy closes, unused

    def _make(self) -> socket.socket:
        if ROOTLESS:
            return _fork_spare(self)
        kind = spare_init.CSpare if spare_init.usable() else Prepared
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            prepared = kind.make(
                theirs, lambda keep=None: _forget_the_server(self.control, self, keep))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # A request a C PID 1 cannot serve gets a runner of its own, as any other request.
        prepared.handled_elsewhere = lambda request, fds: _fork_for(request, fds,
                                                                    self.control, self)
        self._watch(prepared)
        self.children.watched.add(prepared.pid)
        return ours

    def on_link(self, sock) -> None:
        """A spare's socket is readable (its PID 1 said something, or left; or, for a C
        spare, the request came): one step of its supervision."""
        spare = self.prepared.get(sock)
        if spare is None:
            return
        if spare.on_readable(sock, self.children.status):
            for watched in [s for s, which in self.prepared.items() if which is spare]:
                del self.prepared[watched]
        else:
            self._watch(spare)  # a C spare stops watching its request socket once used

    def discard_unused(self) -> None:
        for spare in self.spares():
            if spare.reply is None:
                spare.discard(self.children.status)
                for sock in spare.sockets():
                    self.prepared.pop(sock, None)
                    sock.close()

    def close_in_child(self, keep=None) -> None:
        for spare in self.spares():
            spare.close_in_child(keep)


def _fork_spare(spares: Spares) -> socket.socket:
    """Rootless: a child that waits for one request, ready, its PID 1 forked; it stays beside
    that PID 1 as its supervisor. It exits (and takes its PID 1 along) when the client's end
    of its socket closes unused."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.fork() == 0:
        code = 1
        try:
            _forget_the_server(spares.control, spares)
            ours.close()
            code = _spare(theirs)
        finally:
            os._exit(code)  # never back into the server's loop
    theirs.close()
    return ours


def _spare(sock: socket.socket) -> int:
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
        wire.send_event(reply, wire.Error.of(ContainerSetupFailed(
            f"the container could not be prepared ({describe(failure)}): run it again")))
        return 1
    return runner.handle(*received)


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
