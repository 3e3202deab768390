"""A spare: a container made ahead of time, before anyone asks for it, and its supervision.

Taught in notebook 06 (what ``%%container`` does underneath). What a spare makes while nobody
waits — its cgroup, with PID 1 born in it, its directory (renamed into place later), PID 1's
namespaces and the staging tmpfs with /proc, /sys and /dev (`pid1.wait_as_spare`) — and how its
supervisor (the server, `contained.runtime.server`; rootless, a process of the spare's own)
records the container, waits for PID 1's end and tears everything down. There is no shell
equivalent; ``ls -d $CONTAINED_HOME/containers/.spare-*`` shows the directories made ahead.

Made ahead: the cgroup (PID 1 born in it: moving a process into a cgroup waits for an RCU
grace period, 5-20 ms), the directory, PID 1's namespaces, /proc, /sys and /dev in a staging
tmpfs (moved into the root later), and a rehearsal that warms up the forked Python.

This module's `Prepared` is a spare whose PID 1 is a fork of the server, in Python. As root,
with the tiny init compiled, the server's spares are `contained.runtime.spare_init.CSpare`s
instead: the same supervision, with a PID 1 that executes the C init at once.
"""

import itertools
import os
import signal
import socket
from pathlib import Path

from contained import procfs, syscalls
from contained.images.trees import remove_tree
from contained.runtime import cgroups, pid1, runner, state, steps, wire
from contained.runtime.pid1 import ROOTLESS
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import describe, exit_code

SPARE_NICENESS = 10
# A container that wrote more files than this in its upper directory is removed by a child of
# the server, so that the server's loop (the next spare, a named container) does not wait on a
# long rm -rf; below it, removing inline is cheaper than forking (measured: ~1 ms a fork).
INLINE_REMOVAL_ENTRIES = 256
_MADE = itertools.count()  # spares this process made: part of their names


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

    LINK_TYPE = socket.SOCK_STREAM  # PID 1's link to its supervisor

    def __init__(self, group, pid: int, link: socket.socket, skeleton: Path):
        self.group, self.pid, self.link = group, pid, link
        self.skeleton = skeleton
        self.reply: socket.socket | None = None  # the caller's, once PID 1 has its request
        self.spec: ContainerSpec | None = None
        self.said = b""  # what PID 1 said once running: the REPORTED marker, or nothing
        self.failed = False
        self.status: int | None = None  # PID 1's wait status, once reaped
        self.forget = None  # in the server: what a child forked to tear down must drop

    @classmethod
    def make(cls, requests: socket.socket, forget=None) -> "Prepared":
        """Make the group, the directory and PID 1, which waits on `requests`. `forget`, in
        PID 1 first: what of the forking process it must drop (the server's sockets)."""
        name = spare_cgroup_name()
        group, cgroup_steps = steps.NoCgroup(), []
        if not ROOTLESS:
            group, cgroup_steps = cgroups.Cgroup.plan(
                name, cgroups.Limits(), extra_devices=steps.device_rules(rootless=False))
        skeleton = None
        link, link_init = socket.socketpair(socket.AF_UNIX, cls.LINK_TYPE)
        try:
            run_steps(cgroup_steps)
            staging = steps.staging_directory()
            skeleton = staging.parent / ("." + name)
            _make_skeleton(skeleton)
            if ROOTLESS:
                steps.enter_user_namespace(os.geteuid(), os.getegid())
            pid = cls._spawn(requests, link_init, staging, skeleton, group, forget)
        except BaseException:
            link.close()  # the server lives on: nothing of a failed spare stays open
            link_init.close()
            group.remove()
            if skeleton is not None:
                remove_tree(skeleton)
            raise
        link_init.close()
        prepared = cls(group, pid, link, skeleton)
        prepared.forget = forget
        try:
            prepared._after_start(requests)
        except BaseException:
            prepared.discard(wait_status)
            raise
        return prepared

    @classmethod
    def _spawn(cls, requests, link_init, staging, skeleton, group, forget) -> int:
        """Start PID 1, born in its group (`cgroups.born`: moving it there would wait for an
        RCU grace period, 5-20 ms, which the server would spend blocked); its pid."""
        pid_one = cls._pid_one(requests, link_init, staging, skeleton, group, forget)
        return pid1.fork_pid_one(ROOTLESS, pid_one, group.entry())

    @classmethod
    def _pid_one(cls, requests, link_init, staging, skeleton, group, forget):
        """What the forked PID 1 runs: here, the Python spare (`pid1.wait_as_spare`)."""

        def spare_pid_one():
            if forget is not None:
                forget()
            if not ROOTLESS:
                # Getting ready must not slow down the container that runs meanwhile: nice
                # until a request comes (`pid1.normal_priority`). Only root may go back, so a
                # rootless spare keeps the normal priority throughout.
                os.setpriority(os.PRIO_PROCESS, 0, SPARE_NICENESS)
            syscalls.close_fds_except((requests.fileno(), link_init.fileno()))
            pid1.wait_as_spare(staging, skeleton, requests, link_init, group)

        return spare_pid_one

    def _after_start(self, requests: socket.socket) -> None:
        # PID 1 starts no command before it is in the cgroup: it is, from birth
        wire.send_marker(self.link, wire.Marker.IN_CGROUP)

    def sockets(self) -> list[socket.socket]:
        """What the server watches for this spare: its link."""
        return [self.link]

    def on_readable(self, sock: socket.socket, status_of) -> bool:
        """`sock` (one of `sockets`) is readable: `on_link`."""
        return self.on_link(status_of)

    def close_in_child(self, keep=None) -> None:
        """In a child the server forked: none of this spare's sockets but `keep`."""
        for sock in self.sockets():
            sock.close()
        if self.reply is not None and self.reply is not keep:
            self.reply.close()

    def supervise(self) -> int:
        """In a rootless spare's own process: stay beside PID 1 until its container has ended,
        and clean up; the exit code for that process."""
        while not self.on_link(wait_status):
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
                # One marker at most, whatever comes: the server's memory is not PID 1's to fill.
                self.said += chunk
                _check_said(self.said)
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
        status = self._reap(status_of)
        final = self._final_event(status)
        # An exit is told at once; an error once the container is gone, as a runner tells it:
        # a caller that stops at an error (the CLI's `run --rm`) must find nothing left.
        if final is not None and not isinstance(final, wire.Error):
            _tell(self.reply, final)
            final = None
        if self.forget is None or not self.spec.remove or _has_at_most(
                Path(self.spec.directory) / "upper", INLINE_REMOVAL_ENTRIES):
            self._tear_down(final)
        elif os.fork() == 0:  # a big tree: its rm -rf must not hold up the server's loop
            code = 1
            try:
                self.forget(keep=self.reply)
                self._tear_down(final)
                code = 0
            except BaseException as error:  # noqa: BLE001 — the caller hears of it
                _tell(self.reply, wire.Error("InternalError",
                                             f"runner failed: {describe(error)}"))
            finally:
                os._exit(code)
        self.reply.close()

    def _final_event(self, status: int):
        """What the caller hears from the supervisor once PID 1 has gone: nothing if PID 1
        reported itself; if it was killed, its status and the cgroup tell."""
        if self.said == wire.Marker.REPORTED.value:
            return None
        return wire.Exit.of(exit_code(status), self.group.oom_kills(), self.spec.memory)

    def _reap(self, status_of) -> int:
        """Kill PID 1 (if it has not left, it must) and reap it (`status_of`): once only, since
        afterwards its pid may be another process's."""
        if self.status is None:
            try:
                self.status = status_of(self.pid)
            except ChildProcessError:  # reaped elsewhere, status unknown: say it was killed,
                self.status = signal.SIGKILL  # never that it succeeded (a wait status: 137)
        return self.status

    def _tear_down(self, error=None) -> None:
        runner.tear_down(self.spec, self.group, None)
        remove_tree(self.skeleton)  # still there if the container had its own
        if error is not None:
            _tell(self.reply, error)
        _tell(self.reply, wire.Cleaned())

    def _fail(self, error: BaseException, status_of) -> None:
        self.failed = True
        self._reap(status_of)
        if self.reply is not None:
            _tell(self.reply, wire.Error("InternalError", f"runner failed: {describe(error)}"))
            self.reply.close()
        try:  # what is left, `contained gc` finds
            if self.spec is not None:
                runner.tear_down(self.spec, self.group, None)
            self.group.remove()
            remove_tree(self.skeleton)
        except Exception:  # noqa: BLE001
            pass

    def discard(self, status_of) -> None:
        """Unused: kill PID 1, remove the group and the directory."""
        self._reap(status_of)
        self.group.remove()
        remove_tree(self.skeleton)


def _check_said(said: bytes) -> None:
    if not wire.Marker.REPORTED.value.startswith(said):
        raise wire.WireError(f"[internal error] expected the REPORTED marker, got {said[:64]!r}")


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


def wait_status(pid: int) -> int:
    """Kill child `pid` and reap it; in a process where nothing else reaps it, its pid is
    still its own here (a zombie keeps it)."""
    runner.kill(pid)  # one that is exiting already ignores the signal
    return os.waitpid(pid, 0)[1]


def _make_skeleton(path: Path) -> None:
    """A container directory made ahead of time (upper, work), named after the spare:
    creating files is slow on a busy ext4 (it searches for inodes not freed recently), so
    none is created while a caller waits. gc removes it if the spare dies. Its root is
    mounted on the spare's staging tmpfs (`rootfs.root_of`)."""
    for sub in ("", "upper", "work"):
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
