"""``exec``: a new process in a running named container, which it joins from outside.

Taught in notebook 06. Mostly, a named container's PID 1, the tiny init, starts what ``exec``
sends it (`contained.runtime.served`). Where it does not — with ``-t`` (the pty is opened in
the container), with ``--explain`` (every step shown and run), or when PID 1 stayed Python —
a process of the runner's (the worker forked for the request, or the CLI's own fork) walks
into the container, as ``nsenter`` and ``runc exec`` do. In shell terms::

    echo $$ > /sys/fs/cgroup/.../ID/cgroup.procs                 # the container's cgroup
    nsenter --target PID1 --all --root --wd=DIR \\
        setpriv --bounding-set=... --no-new-privs CMD             # + keyring, seccomp

Step by step (`join`, then `run`):

1. find PID 1 by its pid *and* its recorded start time, as a pidfd: a pid reused by some other
   process after the container died can never be joined by mistake;
2. join the container's cgroup while the host's /sys/fs/cgroup is still in sight, so that the
   command is born inside its limits (`_join_cgroup`: born in the group rather than moved
   there, which would wait ~10 ms for an RCU grace period: `contained.runtime.cgroups.born`);
3. ``setns(pidfd, every kind at once)``: user (rootless), mount, UTS, IPC, network, PID and
   cgroup, in one call; the root and working directory become the container's;
4. the confinement PID 1 gave itself (`contained.runtime.steps.confinement_steps`): a new
   session keyring, Docker's capabilities and no_new_privs, the seccomp filter; and
   non-dumpable, so the command is unreachable until its own execve;
5. start the command (`contained.runtime.init.spawn_command`: user, environment, directory, a
   pty with -t), report `Started`, wait for it, report `Exit`.

This process stays outside the container's PID namespace (``setns(CLONE_NEWPID)`` moves only
its children), so nothing inside can see or signal it, while it holds the caller's pipes. The
KILL marker, or the caller going away, kills the command's process group, unless the exec was
detached: then this process leaves at once and the command is the container's init's child.
It is in the container's cgroup while the command runs, as ``runc init`` is: its memory and its
one pid count against the container's limits.
"""

import json
import os
import select
import socket

from contained import procfs, syscalls
from contained.errors import ContainerNotRunning
from contained.runtime import cgroups, init, namespaces, state, steps, wire
from contained.runtime.plan import run_steps
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import EXIT_KILLED


def exec_in_container(request_json: str, reply: socket.socket, detached: bool
                      ) -> "wire.Exit | wire.Cleaned":
    """The runner's `exec` request (`contained.runtime.container.start_exec` sends it):
    join, start, and wait unless `detached`; the final event for the caller."""
    request = json.loads(request_json)
    spec, oom_kills, pid_one = join(request["container"], request.get("directory"))
    before = oom_kills()
    child = start(request, reply)
    wire.send_event(reply, wire.Started(pid=child.pid))
    if detached:
        return wire.Cleaned()  # the command carries on; the container's init will reap it
    status = init.reap_until(child, reply, group=True)
    if status == EXIT_KILLED and _pid_one_ending(pid_one):
        return wire.Exit(EXIT_KILLED, message=f"killed: container {spec.name} stopped while "
                         "the command ran")
    return wire.Exit.of(status, oom_kills() - before, spec.memory)


def _pid_one_ending(pidfd: int) -> bool:
    """Was the command SIGKILLed with its container (rm -f, stop)? Then its PID 1 has ended
    (its pidfd is readable) or is ending: it takes every process of its namespace with it
    before it is gone, and meanwhile has PF_EXITING among its flags (/proc/1/stat's ninth
    field; this process sees the container's /proc)."""
    if select.select([pidfd], [], [], 0)[0]:
        return True
    try:
        with open("/proc/1/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return True  # gone meanwhile
    return bool(int(fields[6]) & PF_EXITING)


#: <linux/sched.h>: the task is exiting
PF_EXITING = 0x00000004


def join(container_id: str, directory: str | None = None):
    """Steps 1 to 4: this process is inside the container, confined as its PID 1 is.
    Returns the container's spec, its OOM-kill counter (read through a file opened here) and
    a pidfd of its PID 1."""
    record = state.read(container_id, directory)
    if record is None:
        raise ContainerNotRunning(f"container {container_id[:12]} is gone")
    spec = ContainerSpec.from_dict(record["spec"])
    pidfd = _pid_one(spec, record.get("init_pid"), record.get("init_start_time"))
    # Made here: the seccomp program comes from the host's files (or the runner's memory).
    confinement = steps.confinement_steps(spec)
    entry = _cgroup_entry(container_id, record)
    # Opened now: after setns the host's /sys/fs/cgroup is out of sight.
    oom_kills = cgroups.oom_counter_at(entry and entry.get("oom"))
    if entry is not None:
        _join_cgroup(entry)
    syscalls.setns(pidfd, namespaces.flags_for(steps.joined_kinds(spec)))
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    run_steps(confinement)
    return spec, oom_kills, pidfd


def _cgroup_entry(container_id: str, record: dict) -> dict | None:
    """The container's cgroup as its runner recorded it (`Cgroup.entry`), or looked up."""
    if "cgroup_entry" in record:
        return record["cgroup_entry"]
    group = cgroups.Cgroup.open(state.cgroup_name(container_id))
    return None if group is None else group.entry()


def _join_cgroup(entry: dict) -> None:
    """Into the container's cgroup without the wait that moving a process costs
    (`contained.runtime.cgroups.born`): a child born in it carries on, and this process only
    waits for it and leaves with its status."""
    child = cgroups.fork_into(entry)
    if child:
        _, status = os.waitpid(child, 0)
        os._exit(min(os.waitstatus_to_exitcode(status) & 0xFF, 255))


def _pid_one(spec: ContainerSpec, pid: int | None, started: int | None) -> int:
    """A pidfd of the container's PID 1, checked against its recorded start time."""
    gone = ContainerNotRunning.named(spec.name)
    if not pid or not started:
        raise gone
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise gone from None
    # Checked after opening: the pidfd pins this process, so if the start time matches now,
    # the pidfd is PID 1's, whatever happens to the pid later.
    if procfs.start_time(pid) != started:
        os.close(pidfd)
        raise gone
    return pidfd


def start(request: dict, reply: socket.socket):
    """Step 5: the command, in its own session, on the caller's stdio or a new pty."""
    stdio = None
    if request.get("tty"):
        master, slave = init.open_terminal(request.get("tty_size"))
        try:
            wire.send_event_with_fds(reply, [master], wire.Tty())
        finally:
            os.close(master)
        stdio = (slave,) * 3
    try:
        return init.spawn_command(request["args"], request["env"], request["working_dir"],
                                  request["user"], new_session=True, stdio=stdio,
                                  terminal=bool(request.get("tty")))
    finally:
        if stdio is not None:
            os.close(stdio[0])
