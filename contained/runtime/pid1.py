"""Becoming PID 1: the fork into a new PID namespace, PID 1's phases of the plan, its reports.

Taught in notebooks 05 and 06. In shell terms this is what happens between ``unshare --pid
--fork`` and the command: the runner forks PID 1 (`fork_pid_one`); PID 1 runs its phases of
the plan (`contained.runtime.steps`: namespaces, then inside), waiting for the runner where
the plan says so (`contained.runtime.wire.Marker`); then it starts the command and stays as its
init (`contained.runtime.init`: reaping, signal forwarding), or, for a named container, becomes
the tiny C init (`contained.runtime.tiny_init`).

PID 1 reports to whoever waits: to the runner that forked it, on a pipe (`RunnerReport`), or,
for a spare's PID 1, to the caller itself (`CallerReport`). A spare's PID 1 is forked before
anyone asks for a container (`wait_as_spare`): it does what it can ahead of time, then waits.
"""

import gc
import os
import select
import signal
import socket
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.images.oci import DEFAULT_PATH
from contained.runtime import cgroups, init, process, steps, wire
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import EXIT_SETUP_FAILED, CommandFailed, exit_code

# Whether this runner runs without root, decided once, on the host: a rootless spare enters a
# user namespace where os.geteuid() is 0, and must still know it is rootless there.
ROOTLESS = os.geteuid() != 0

# A spare rehearses (`_rehearse`) once nobody has asked for it for this long (seconds): between
# two notebook cells, that is always; containers back to back come sooner, and there the
# rehearsal was only more work beside the running one (half of them rehearsed: 165 execs for
# 104 containers, 110 after; paired runs, a median 1.4 ms of CPU per container less, while
# the latency after an idle 50 ms stayed 7.6-9.4 ms).
REHEARSE_AFTER = 0.02


def fork_pid_one(rootless: bool, pid_one, cgroup_entry: dict | None = None) -> int:
    """The plan's pid-fork phase: fork `pid_one` as PID 1 of a new PID namespace; return its
    (host) pid. With `cgroup_entry` (`Cgroup.entry`), PID 1 is born in its cgroup
    (`contained.runtime.cgroups.born`): nobody has to move it there, and wait."""
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # unshare(CLONE_NEWPID) affects this process's children only: the next fork is PID 1.
    syscalls.unshare(syscalls.CLONE_NEWPID)
    runner = os.getpid()
    try:
        pid = cgroups.fork_into(cgroup_entry)
    except BaseException:
        if os.getpid() != runner:  # the child could not join its group: it must not go on
            os._exit(EXIT_SETUP_FAILED)  # as the runner; the runner says PID 1 exited
        _children_in_host_pidns(host_pidns, rootless)  # the server lives on after a failure
        raise
    if pid == 0:
        try:
            # Every object inherited from the forking process goes to the collector's
            # permanent generation: PID 1's collections then link and scan its own objects
            # only, instead of writing to the headers of inherited ones (a page copied for
            # each, ~3-4 µs here): 880 → 780 page faults per spare's PID 1, back to back.
            gc.freeze()
            init.seal()  # non-dumpable, its own session: before any container process exists
            os.close(host_pidns)
            pid_one()  # never returns, unless it fails outside its own error handling
        finally:
            os._exit(EXIT_SETUP_FAILED)  # never back into the runner's code
    _children_in_host_pidns(host_pidns, rootless)
    return pid


def _children_in_host_pidns(host_pidns: int, rootless: bool) -> None:
    """Later children (ip, nft, nsenter, the server's next spares) belong to the host's PID
    namespace again: in the container's they would not see PID 1 by its host pid, and once
    PID 1 has died every fork into that namespace fails (ENOMEM), the teardown's included. A
    rootless runner may not re-enter it (it has no CAP_SYS_ADMIN there) and runs none of
    these tools; it is a spare's own process, which forks no other PID 1."""
    try:
        if not rootless:
            syscalls.setns(host_pidns, syscalls.CLONE_NEWPID)
    finally:
        os.close(host_pidns)


def sync_with_runner(hooks: steps.Hooks, report, explain, go_read: int) -> None:
    """Where PID 1 waits for the runner that forked it (`go_read`, the runner's markers).

    Explained, every step prints in the plan's order: the runner's side (the host phase and
    the cgroup join) first, and after "netns" the runner's outside phase. Otherwise PID 1
    builds the root while the runner plugs the network, and waits only before the cgroup
    namespace, for its move into the cgroup."""
    if explain:
        wire.expect_marker(go_read, wire.Marker.IN_CGROUP)
        hooks.announce_netns = lambda: (
            report.netns(), wire.expect_marker(go_read, wire.Marker.NETWORK_PLUGGED))
    else:
        hooks.announce_netns = report.netns
        hooks.wait_for_cgroup = lambda: wire.expect_marker(go_read, wire.Marker.IN_CGROUP)
    hooks.after_set_up = lambda: os.close(go_read)
    if ROOTLESS:
        _unseal_while_plugged(hooks, explain)


def _unseal_while_plugged(hooks: steps.Hooks, explain) -> None:
    """Rootless --net bridge: PID 1 is dumpable from announcing its network namespace until
    the runner has connected it, then sealed again (`init.seal`), before any container process.

    slirp4netns (`contained.network.slirp`), started by the runner as root of the container's
    user namespace only, enters the namespace by /proc/PID/ns/net, which a non-dumpable
    process shows to the host's root alone. Our own uid owns the runner already: nothing of
    the container can use the window. Only bridged containers announce their namespace.
    """
    announce, resume = hooks.announce_netns, hooks.wait_for_cgroup

    def unsealed():
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 1)
        announce()
        if explain:  # announcing waited for NETWORK_PLUGGED
            syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)

    def sealed():  # IN_CGROUP comes after the runner's outside phase (`_runner_side`)
        resume()
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)

    hooks.announce_netns = unsealed
    if resume is not None:
        hooks.wait_for_cgroup = sealed


def run(plan: steps.Plan, report, explain, persistent: bool, staged: bool = False,
        init_binary: int | None = None, exec_listener: int | None = None):
    """PID 1: its phases of the plan, then the command; then reap and forward. Never returns.

    The plan's hooks are set already (`sync_with_runner`, or a spare's). How PID 1 reports is
    `report`'s business: to the runner (`RunnerReport`) or to the caller (`CallerReport`).
    A named (`persistent`) container starts no command: PID 1 becomes its idle init
    (`init.idle`, the tiny C init from `init_binary`, serving `exec_listener`).
    """
    try:
        _set_up(plan, explain, persistent, staged)
        if persistent:
            if explain:
                explain(plan.command.steps[0].shell)
            report.ready()
            init.idle(init_binary, report.fd, exec_listener)  # never returns
        child = _start_command(plan, report, explain)
    except BaseException as error:  # noqa: BLE001 — reported (as its class), then exit
        status = error.exit_status if isinstance(error, CommandFailed) else EXIT_SETUP_FAILED
        _exit_after(report.error, error, status)
    status = init.reap_until(child, report.watched())
    _exit_after(report.exit, status, status)


def _exit_after(say, what, status: int) -> None:
    try:
        say(what)
    finally:
        os._exit(status)


def _set_up(plan: steps.Plan, explain, persistent: bool, staged: bool) -> None:
    """PID 1's phases up to the command."""
    if not persistent:
        # If the runner dies (SIGKILL, a crashed kernel), so does the container.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    init.set_title()
    init.restore_default_signals()
    if staged:
        run_steps(plan.host.steps)  # a spare's supervisor made no directories: PID 1 does
    run_steps(plan.namespaces.steps + plan.inside.steps, explain)
    plan.hooks.call("after_set_up")


def _start_command(plan: steps.Plan, report, explain):
    """The plan's command phase: the command, on PID 1's stdio; with -t on a new pty whose
    master goes to the caller."""
    spec = plan.spec
    if explain:
        explain(plan.command.steps[0].shell)
    if not spec.tty:
        child = init.spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                                   new_session=False)
    else:
        master, slave = init.open_terminal(spec.tty_size)
        try:
            report.terminal(master)
        finally:
            os.close(master)
        try:
            child = init.spawn_command(spec.args, spec.env, spec.working_dir, spec.user,
                                       new_session=True, stdio=(slave,) * 3, terminal=True)
        finally:
            os.close(slave)
    init.null_stdio()  # the command has them: PID 1 holds none of the caller's pipes
    report.ready()
    return child


class RunnerReport:
    """PID 1 reporting to the runner that forked it: events on a pipe (`Netns`, `Ready`,
    `Exit`, `Error`); the runner tells the caller. With -t, `reply` (the caller's socket)
    takes the pty's master straight to the caller."""

    def __init__(self, fd: int, reply: socket.socket | None = None):
        self.fd, self.reply = fd, reply

    def terminal(self, master: int) -> None:
        wire.send_event_with_fds(self.reply, [master], wire.Tty())
        self.reply.close()  # the runner's copy stays; this one was only for the master

    def netns(self) -> None:
        wire.write_event(self.fd, wire.Netns())

    def ready(self) -> None:
        wire.write_event(self.fd, wire.Ready())

    def error(self, error: BaseException) -> None:
        wire.write_event(self.fd, wire.Error.of(error))

    def exit(self, status: int) -> None:
        wire.write_event(self.fd, wire.Exit(status))

    def watched(self) -> None:
        return None  # the runner watches the caller's socket


class CallerReport:
    """A spare's PID 1 reporting to the caller itself, in the runner's words (`Started`,
    `Exit`, `Error`), and watching the caller's socket for "kill" or its end. Then it tells
    its supervisor (on `link`) that it has reported, so the supervisor does not again."""

    def __init__(self, reply: socket.socket, link: socket.socket, host_pid: int,
                 memory: int | None):
        self.reply, self.link, self.host_pid, self.memory = reply, link, host_pid, memory
        self.oom_kills = lambda: 0

    def netns(self) -> None:
        pass  # a spare runs --net none only

    def terminal(self, master: int) -> None:
        wire.send_event_with_fds(self.reply, [master], wire.Tty())

    def ready(self) -> None:
        wire.expect_marker(self.link, wire.Marker.RECORDED)
        wire.send_event(self.reply, wire.Started(pid=self.host_pid))

    def error(self, error: BaseException) -> None:
        self._final(wire.Error.of(error))

    def exit(self, status: int) -> None:
        self._final(wire.Exit.of(status, self.oom_kills(), self.memory))

    def watched(self) -> socket.socket:
        return self.reply

    def _final(self, event) -> None:
        wire.send_event(self.reply, event)
        try:
            wire.send_marker(self.link, wire.Marker.REPORTED)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# A spare's PID 1

def wait_as_spare(staging: Path, skeleton: Path, requests: socket.socket,
                  link: socket.socket, group) -> None:
    """A spare's PID 1: build what does not depend on the container, then wait for a request
    (its spec, the caller's stdio and reply socket) and become that container's PID 1."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    host_pid = int(os.readlink("/proc/self"))  # still the host's /proc: the pid seen there
    try:
        run_steps(steps.spare_steps(staging))
        staged = staging
    except Exception:  # noqa: BLE001 — then the container is built in place
        staged = None
    if not select.select([requests], [], [], REHEARSE_AFTER)[0]:  # nobody came yet: warm up
        _rehearse(staging)
    received = wire.receive_request(requests)
    if received is None:
        os._exit(0)  # the caller closed this spare unused
    normal_priority()  # the command inherits it
    requests.close()
    request, (stdin, stdout, stderr, _explain_fd, reply_fd) = received
    spec = ContainerSpec.from_json(request["spec"])
    adopt_skeleton(skeleton, Path(spec.directory))  # before the runner records anything there
    wire.send_request(link, request, [reply_fd])  # for its supervisor (`Prepared.on_link`)
    # The caller's stdin/stdout/stderr, which this PID 1 was forked too early to have.
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target, inheritable=True)
    # Nothing else of the host's (see `contained.runtime.init` for what PID 1 keeps, and why).
    syscalls.close_fds_except((link.fileno(), reply_fd))
    report = CallerReport(socket.socket(fileno=reply_fd), link, host_pid, spec.memory)
    try:
        plan = steps.build(spec, with_cgroup=False, staged=staged)
        plan.hooks.wait_for_cgroup = lambda: wire.expect_marker(link, wire.Marker.IN_CGROUP)
        _limit(spec, group, report)
    except BaseException as error:  # noqa: BLE001 — reported to the caller
        _exit_after(report.error, error, EXIT_SETUP_FAILED)
    run(plan, report, None, persistent=False, staged=staged is not None)


def _limit(spec: ContainerSpec, group, report: CallerReport) -> None:
    """The spare's cgroup gets this container's limits (it was made without)."""
    limits = cgroups.Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids_limit)
    if not isinstance(group, steps.NoCgroup):
        run_steps(group.limit_steps(limits))
    elif limits != cgroups.Limits():
        raise ContainedError("limits need cgroups, which need root here")
    # Opened now: after pivot_root the host's /sys/fs/cgroup is out of sight.
    report.oom_kills = group.oom_counter()


def normal_priority() -> None:
    if not ROOTLESS:
        os.setpriority(os.PRIO_PROCESS, 0, 0)


def adopt_skeleton(skeleton: Path, directory: Path) -> None:
    """The spare's skeleton becomes the container's directory, by a rename. A named container
    has its directory already (its caller claimed the name there): then it keeps it, and the
    supervisor removes the skeleton afterwards."""
    try:
        os.rename(skeleton, directory)
    except OSError:
        pass


def _rehearse(staging: Path) -> None:
    """Go through the motions of a container once, while nobody waits.

    A forked Python process pays on the first run of any code: every page it writes (object
    reference counts included) is copied then, and lazy set-ups (ctypes prototypes, the json
    encoder, the capability count) happen then. Measured in a fresh fork, planning, the
    capability drop, the user lookup and `subprocess` each take two to three times longer the
    first time. So a spare's PID 1 plans a container without running it, and starts the
    host's /bin/true the way it will start the command (it has not left the host's root yet).
    """
    directory = staging / "rehearsal"
    spec = ContainerSpec(id="0" * 64, name="rehearsal", image="", directory=str(directory),
                         lowers=[str(directory)], args=["true"], env=[f"PATH={DEFAULT_PATH}"],
                         hostname="rehearsal")
    try:
        ContainerSpec.from_json(spec.to_json())
        steps.build(spec, with_cgroup=False, staged=staging)
        process.capability_mask(process.DOCKER_DEFAULT_CAPABILITIES)
        process.last_capability()
        with open(os.devnull, "r+b") as null:
            child = init.spawn_command(spec.args, spec.env, "/", "", new_session=False,
                                       stdio=(null.fileno(),) * 3)
        child.wait()
        wire.decode(wire.encode(wire.Exit.of(exit_code(0), 0, None)))
    except Exception:  # noqa: BLE001 — a rehearsal only warms up; the real run reports
        pass
