"""The runner's server loop, and the spares it keeps ready so that a container starts sooner.

Taught in notebook 06 (what ``%%container`` does underneath). The runner (`runner`) is started
once per kernel as ``python -m contained.runtime.runner --serve FD`` and serves requests on
that socket until it closes, forking one child per request (`runner.handle`).

Speed: the server keeps one *spare* forked ahead of time, with what does not depend on the
container already done — its cgroup made and PID 1 moved into it (a cgroup move waits for an
RCU grace period: 5-20 ms), its directory made (renamed into place later), PID 1's namespaces
unshared, /proc, /sys and /dev built in a staging tmpfs (moved into the root later), and a
rehearsal that warms up the forked Python (`pid1.wait_as_spare`). The caller sends a plain
throwaway run straight to that PID 1, which answers it directly (`Started`, `Exit`); the
spare's runner stays beside it, records the container, and tears it down after the caller has
its answer. An explained run never takes a spare, so ``--explain`` shows, and runs, every step
in place. There is no shell equivalent; ``ls $CONTAINED_HOME/containers/.spare-*`` shows them.
"""

import json
import os
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

# Spares kept ready. Each is two idle processes, an empty cgroup and an empty container
# directory; two measured no faster than one for back-to-back runs on 2 cores.
SPARES = 1
SPARE_NICENESS = 10


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
    seccomp.prepare_default()
    spares = SPARES if _spares_fit() else 0
    for _ in range(spares):
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
            if spares:
                _send_spare(control)
            continue
        if os.fork() == 0:
            control.close()
            os._exit(runner.handle(request, fds))
        for fd in fds:
            os.close(fd)


def _spares_fit() -> bool:
    """A rootless spare makes no cgroup; where systemd delegated our unit a group (TLJH),
    every container gets one under it (`steps.host_steps`), so spares would not fit."""
    return not (ROOTLESS and cgroups.delegated_unit(cgroups.detect()) is not None)


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
    (`Started`, `Exit`), which saves a process hop each way. This process (the spare's
    runner) stays beside it on `link`: PID 1 passes it the request and the reply socket, and
    it records the container, waits for PID 1, tears everything down and says `Cleaned` — or,
    should PID 1 die without a word (SIGKILLed), reports its end instead.
    """

    def __init__(self, group, pid: int, link: socket.socket, skeleton: Path):
        self.group, self.pid, self.link = group, pid, link
        self.skeleton = skeleton

    @classmethod
    def make(cls, requests: socket.socket) -> "Prepared":
        if not ROOTLESS:
            group, cgroup_steps = cgroups.Cgroup.plan(
                spare_cgroup_name(), cgroups.Limits(),
                extra_devices=steps.device_rules(rootless=False))
            run_steps(cgroup_steps)
        else:
            group = steps.NoCgroup()
        staging = steps.staging_directory()
        skeleton = staging.parent / ("." + spare_cgroup_name())
        try:
            link, link_init = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            _make_skeleton(skeleton)
            if ROOTLESS:
                steps.enter_user_namespace(os.geteuid(), os.getegid())

            def spare_pid_one():
                link.close()
                syscalls.close_fds_except((requests.fileno(), link_init.fileno()))
                pid1.wait_as_spare(staging, skeleton, requests, link_init, group)

            pid = pid1.fork_pid_one(ROOTLESS, spare_pid_one)
        except BaseException:
            group.remove()
            remove_tree(skeleton)
            raise
        link_init.close()
        prepared = cls(group, pid, link, skeleton)
        try:
            group.join(pid)
            # PID 1 starts no command before it is in the cgroup
            wire.send_marker(link, wire.Marker.IN_CGROUP)
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
            pid1.normal_priority()
            state.write_state(spec, **(request.get("owner") or {}), **runner.runner_values(),
                              cgroup=getattr(self.group, "name", None), init_pid=self.pid,
                              init_start_time=procfs.start_time(self.pid))
            wire.send_marker(self.link, wire.Marker.RECORDED)  # PID 1 may say "started"
            reported = self._wait_for_pid_one()
            if not reported:  # PID 1 was killed: its status and the cgroup tell
                _, status = os.waitpid(self.pid, 0)
                wire.send_event(reply, wire.Exit.of(exit_code(status), self.group.oom_kills(),
                                                    spec.memory))
            else:
                os.waitpid(self.pid, 0)
            runner.tear_down(spec, self.group, None)
            remove_tree(self.skeleton)  # still there if the container had its own
            wire.send_event(reply, wire.Cleaned())
            return 0
        except BaseException as error:  # noqa: BLE001 — reported, never a silent death
            runner.kill(self.pid)
            runner.reap(self.pid)
            wire.send_event(reply, wire.Error("InternalError",
                                              f"runner failed: {describe(error)}"))
            return 1

    def _wait_for_pid_one(self) -> bool:
        """Until PID 1 exits (its end of `link` closes): whether it reported the end itself."""
        said = b""
        while chunk := self.link.recv(64):
            said += chunk
        if said not in (b"", wire.Marker.REPORTED.value):
            raise wire.WireError(f"[internal error] expected the REPORTED marker, got {said!r}")
        return said == wire.Marker.REPORTED.value

    def discard(self) -> None:
        runner.kill(self.pid)
        runner.reap(self.pid)
        self.group.remove()
        remove_tree(self.skeleton)


def _make_skeleton(path: Path) -> None:
    """A container directory made ahead of time (upper, work, root), named after the spare:
    creating files is slow on a busy ext4 (it searches for inodes not freed recently), so
    none is created while a caller waits. gc removes it if the spare dies."""
    for sub in ("", "upper", "work", "root"):
        (path / sub).mkdir()


def spare_cgroup_name() -> str:
    """The cgroup a spare makes for the container it will become: spare-PID-STARTTIME."""
    return f"spare-{os.getpid()}-{procfs.start_time('self')}"


def is_live_spare(name: str) -> bool:
    """Whether `name` is a spare's cgroup (see `spare_cgroup_name`) whose spare still runs."""
    kind, _, rest = name.partition("-")
    pid, _, started = rest.partition("-")
    return kind == "spare" and pid.isdigit() and started.isdigit() \
        and procfs.alive(int(pid), int(started))
