"""The runner's server loop, and the spares it keeps ready so that a container starts sooner.

Taught in notebook 06 (what ``%%container`` does underneath). The runner (`runner`) is started
once per kernel as ``python -m contained.runtime.runner --serve FD`` and serves requests on
that socket until it closes, forking one child per request (`runner.handle`).

Speed: the server keeps one *spare* forked ahead of time, with what does not depend on the
container already done — its cgroup made and PID 1 born in it (moving a process into a cgroup
waits for an RCU grace period: 5-20 ms), its directory made (renamed into place later), PID 1's
namespaces unshared, /proc, /sys and /dev built in a staging tmpfs (moved into the root later),
and a rehearsal that warms up the forked Python (`pid1.wait_as_spare`). The caller sends a
plain throwaway run straight to that PID 1, which answers it directly (`Started`, `Exit`); the
server (rootless: a process of the spare's own) watches it, records the container, and tears
it down after the caller has its answer. An explained run never takes a spare, so
``--explain`` shows, and runs, every step in place. There is no shell equivalent;
``ls $CONTAINED_HOME/containers/.spare-*`` shows them.
"""

import itertools
import json
import os
import select
import signal
import socket
from pathlib import Path

from contained import procfs, syscalls
from contained.images.trees import remove_tree
from contained.runtime import (
    cgroups,
    pid1,
    runner,
    seccomp,
    state,
    steps,
    wire,
)
from contained.runtime.pid1 import ROOTLESS
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import ContainerSetupFailed, describe, exit_code

# Spares kept ready. Each is an idle PID 1 (rootless, two idle processes), an empty cgroup and
# an empty container directory; two measured no faster than one back to back on 2 cores.
SPARES = 1
SPARE_NICENESS = 10
# A container that wrote more files than this in its upper directory is removed by a child of
# the server, so that the server's loop (the next spare, a named container) does not wait on a
# long rm -rf; below it, removing inline is cheaper than forking (measured: ~1 ms a fork).
INLINE_REMOVAL_ENTRIES = 256
_MADE = itertools.count()  # spares this process made: part of their names


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
    elif os.fork() == 0:
        _forget_the_server(control, spares)
        os._exit(runner.handle(request, fds))
    else:
        for fd in fds:
            os.close(fd)
    spares.top_up()  # also after a spare could not be made: try again at each request
    return True


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
        """The wait status of watched child `pid`, which has ended or is ending."""
        self.watched.discard(pid)
        if pid in self.statuses:
            return self.statuses.pop(pid)
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

    def in_use(self) -> bool:
        return any(spare.reply is not None for spare in self.prepared.values())

    def top_up(self) -> None:
        while self.wanted:
            try:
                spare = self._make()
            except Exception:  # noqa: BLE001 — no spare: requests come here instead
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
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            prepared = Prepared.make(
                theirs, lambda keep=None: _forget_the_server(self.control, self, keep))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.prepared[prepared.link] = prepared
        self.children.watched.add(prepared.pid)
        return ours

    def on_link(self, link) -> None:
        """PID 1 said something on its link (or left): one step of its supervision."""
        spare = self.prepared.get(link)
        if spare is not None and spare.on_link(self.children.status):
            del self.prepared[link]

    def discard_unused(self) -> None:
        for link, spare in list(self.prepared.items()):
            if spare.reply is None:
                spare.discard(self.children.status)
                del self.prepared[link]

    def close_in_child(self, keep=None) -> None:
        for spare in self.prepared.values():
            spare.link.close()
            if spare.reply is not None and spare.reply is not keep:
                spare.reply.close()


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


class Prepared:
    """What a spare makes before it knows the container: an empty cgroup and PID 1 in it.

    PID 1 has been forked into a new PID namespace, has built what it can (`spare_steps`) and
    waits for the request itself: the caller talks to it directly, and it answers directly
    (`Started`, `Exit`), which saves a process hop each way. Its supervisor — the server, or a
    rootless spare's own process — hears from it on `link`: PID 1 passes it the request and the
    reply socket, and the supervisor records the container, waits for PID 1's end, tears
    everything down and says `Cleaned` — or, should PID 1 die without a word (SIGKILLed),
    reports its end instead. Each message on `link` is one step (`on_link`), so the server
    can supervise many in its loop.
    """

    def __init__(self, group, pid: int, link: socket.socket, skeleton: Path):
        self.group, self.pid, self.link = group, pid, link
        self.skeleton = skeleton
        self.reply: socket.socket | None = None  # the caller's, once PID 1 has its request
        self.spec: ContainerSpec | None = None
        self.said = b""  # what PID 1 said once running: the REPORTED marker, or nothing
        self.failed = False
        self.forget = None  # in the server: what a child forked to tear down must drop

    @classmethod
    def make(cls, requests: socket.socket, forget=None) -> "Prepared":
        """Make the group, the directory and PID 1, which waits on `requests`. `forget`, in
        PID 1 first: what of the forking process it must drop (the server's sockets)."""
        name = spare_cgroup_name()
        if not ROOTLESS:
            group, cgroup_steps = cgroups.Cgroup.plan(
                name, cgroups.Limits(), extra_devices=steps.device_rules(rootless=False))
            run_steps(cgroup_steps)
        else:
            group = steps.NoCgroup()
        staging = steps.staging_directory()
        skeleton = staging.parent / ("." + name)
        try:
            link, link_init = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            _make_skeleton(skeleton)
            if ROOTLESS:
                steps.enter_user_namespace(os.geteuid(), os.getegid())

            def spare_pid_one():
                if forget is not None:
                    forget()
                if not ROOTLESS:
                    # Getting ready must not slow down the container that runs meanwhile:
                    # nice until a request comes (`pid1.normal_priority`). Only root may go
                    # back, so a rootless spare keeps the normal priority throughout.
                    os.setpriority(os.PRIO_PROCESS, 0, SPARE_NICENESS)
                link.close()
                syscalls.close_fds_except((requests.fileno(), link_init.fileno()))
                pid1.wait_as_spare(staging, skeleton, requests, link_init, group)

            # Born in its group (`cgroups.born`): moving it there would wait for an RCU grace
            # period, 5-20 ms, which the server would spend blocked.
            pid = pid1.fork_pid_one(ROOTLESS, spare_pid_one, group.entry())
        except BaseException:
            group.remove()
            remove_tree(skeleton)
            raise
        link_init.close()
        prepared = cls(group, pid, link, skeleton)
        prepared.forget = forget
        try:
            # PID 1 starts no command before it is in the cgroup: it is, from birth
            wire.send_marker(link, wire.Marker.IN_CGROUP)
        except BaseException:
            prepared.discard(_wait_status)
            raise
        return prepared

    def supervise(self) -> int:
        """In a rootless spare's own process: stay beside PID 1 until its container has ended,
        and clean up; the exit code for that process."""
        while not self.on_link(_wait_status):
            pass
        return 1 if self.failed else 0

    def on_link(self, status_of) -> bool:
        """One step, when `link` is readable: PID 1's request (record the container), what it
        says while running, or its end (tear down). True once the container is gone;
        `status_of(pid)` reaps PID 1 once it has left."""
        try:
            if self.reply is None:
                return self._record(status_of)
            chunk = self.link.recv(64)
            if chunk:
                self.said += chunk
                return False
            self._end(status_of)
        except BaseException as error:  # noqa: BLE001 — reported, never a silent death
            self._fail(error, status_of)
        self.link.close()
        return True

    def _record(self, status_of) -> bool:
        received = wire.receive_request(self.link)
        if received is None:  # never used: the caller closed the spare, and PID 1 left
            self.discard(status_of)
            return True
        request, fds = received
        self.reply = socket.socket(fileno=fds[0])
        self.spec = ContainerSpec.from_json(request["spec"])
        state.write_state(self.spec, **(request.get("owner") or {}), **runner.runner_values(),
                          cgroup=getattr(self.group, "name", None), init_pid=self.pid,
                          init_start_time=procfs.start_time(self.pid))
        wire.send_marker(self.link, wire.Marker.RECORDED)  # PID 1 may say "started"
        return False

    def _end(self, status_of) -> None:
        """PID 1 has closed `link`, so it is exiting: reap it, report its end unless it did,
        tear the container down, say `Cleaned`."""
        if self.said not in (b"", wire.Marker.REPORTED.value):
            raise wire.WireError(f"[internal error] expected the REPORTED marker, got "
                                 f"{self.said!r}")
        runner.kill(self.pid)  # it is exiting already; a dying process ignores the signal
        status = status_of(self.pid)
        if self.said != wire.Marker.REPORTED.value:  # killed: its status and the cgroup tell
            _tell(self.reply, wire.Exit.of(exit_code(status), self.group.oom_kills(),
                                           self.spec.memory))
        if self.forget is None or not self.spec.remove or _has_at_most(
                Path(self.spec.directory) / "upper", INLINE_REMOVAL_ENTRIES):
            self._tear_down()
        elif os.fork() == 0:  # a big tree: its rm -rf must not hold up the server's loop
            try:
                self.forget(keep=self.reply)
                self._tear_down()
            finally:
                os._exit(0)
        self.reply.close()

    def _tear_down(self) -> None:
        runner.tear_down(self.spec, self.group, None)
        remove_tree(self.skeleton)  # still there if the container had its own
        _tell(self.reply, wire.Cleaned())

    def _fail(self, error: BaseException, status_of) -> None:
        self.failed = True
        runner.kill(self.pid)
        try:
            status_of(self.pid)
        except ChildProcessError:
            pass  # reaped already
        if self.reply is not None:
            _tell(self.reply, wire.Error("InternalError", f"runner failed: {describe(error)}"))
            self.reply.close()
        try:  # what is left, `contained gc` finds
            self.group.remove()
            remove_tree(self.skeleton)
        except Exception:  # noqa: BLE001
            pass

    def discard(self, status_of) -> None:
        """Unused: kill PID 1, remove the group and the directory."""
        runner.kill(self.pid)
        try:
            status_of(self.pid)
        except ChildProcessError:
            pass
        self.group.remove()
        remove_tree(self.skeleton)


def _has_at_most(directory: Path, limit: int) -> bool:
    """Whether the tree under `directory` holds at most `limit` entries (links not followed;
    the walk stops at the first one too many)."""
    pending, seen = [directory], 0
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except FileNotFoundError:
            continue
    return True


def _tell(reply: socket.socket, event) -> None:
    """An event for the caller, who may have gone (a killed kernel): the teardown goes on."""
    try:
        wire.send_event(reply, event)
    except OSError:
        pass


def _wait_status(pid: int) -> int:
    return os.waitpid(pid, 0)[1]


def _make_skeleton(path: Path) -> None:
    """A container directory made ahead of time (upper, work, root), named after the spare:
    creating files is slow on a busy ext4 (it searches for inodes not freed recently), so
    none is created while a caller waits. gc removes it if the spare dies."""
    for sub in ("", "upper", "work", "root"):
        (path / sub).mkdir()


def spare_cgroup_name() -> str:
    """The cgroup a spare makes for the container it will become, named after the process
    that makes it (the server, or a rootless spare's own): spare-PID-STARTTIME-N."""
    return f"spare-{os.getpid()}-{procfs.start_time('self')}-{next(_MADE)}"


def is_live_spare(name: str) -> bool:
    """Whether `name` is a spare's cgroup (see `spare_cgroup_name`) whose maker still runs."""
    kind, *numbers = name.split("-")
    return kind == "spare" and len(numbers) in (2, 3) and all(n.isdigit() for n in numbers) \
        and procfs.alive(int(numbers[0]), int(numbers[1]))
