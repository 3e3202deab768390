"""The wire between caller, runner and PID 1, and the lifecycle on top of it, without root.

Everything here runs over socketpairs and pipes in this process: events, markers and
descriptors as `contained.runtime.wire` sends them, and a fake runner (as nbclient tests use a
fake kernel manager) that lets `Request` and `Execution` be driven event by event.
"""

import json
import os
import socket

import pytest

from contained.errors import ContainedError, NeedsPrivileges
from contained.runtime import client, container, pid1, runner, wire
from contained.runtime.spec import ContainerSpec
from contained.runtime.status import (
    EXIT_KILLED,
    EXIT_NOT_FOUND,
    CommandFailed,
    ContainerSetupFailed,
)

EVERY_EVENT = [
    wire.Started(pid=4242),
    wire.Exit(3),
    wire.Exit(EXIT_KILLED, True, "killed: out of memory, limit 16M"),
    wire.Created(pid=4242, start_time=123456),
    wire.Error("NeedsPrivileges", "run as root", 125),
    wire.Cleaned(),
    wire.Tty(),
    wire.Netns(),
    wire.Ready(),
]


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours, theirs
    ours.close()
    theirs.close()


def receive_events(sock: socket.socket) -> list:
    data, _ = wire.receive_messages(sock)
    return wire.EventReader().feed(data)


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_event_arrives_as_the_same_record_over_a_socketpair(pair, event):
    ours, theirs = pair
    wire.send_event(ours, event)
    assert receive_events(theirs) == [event]


def test_events_cut_anywhere_by_the_stream_are_put_back_together():
    encoded = b"".join(wire.encode(e) for e in EVERY_EVENT)
    reader = wire.EventReader()
    received = []
    for start in range(0, len(encoded), 7):
        received += reader.feed(encoded[start:start + 7])
    assert received == EVERY_EVENT and reader.buffer == b""


def test_pid_one_is_called_pid_in_every_event_that_names_it():
    assert json.loads(wire.encode(wire.Started(pid=7))) == {"event": "started", "pid": 7}
    assert json.loads(wire.encode(wire.Created(pid=7, start_time=1)))["pid"] == 7


def test_a_pty_master_travels_with_its_event_as_a_descriptor(pair):
    ours, theirs = pair
    read_end, write_end = os.pipe()
    wire.send_event_with_fds(ours, [write_end], wire.Tty())
    os.close(write_end)
    data, fds = wire.receive_messages(theirs)
    assert wire.EventReader().feed(data) == [wire.Tty()] and len(fds) == 1
    os.write(fds[0], b"through the passed descriptor")
    os.close(fds[0])
    assert os.read(read_end, 100) == b"through the passed descriptor"
    os.close(read_end)


def test_a_request_arrives_with_its_stdio_descriptors_in_order(pair):
    ours, theirs = pair
    pipes = [os.pipe() for _ in range(3)]
    wire.send_request(ours, {"op": "run", "spec": "{}"}, [w for _, w in pipes])
    request, fds = wire.receive_request(theirs)
    assert request == {"op": "run", "spec": "{}"} and len(fds) == 3
    for (read_end, write_end), passed in zip(pipes, fds, strict=True):
        os.write(passed, b"x")
        assert os.read(read_end, 1) == b"x"
        for fd in (read_end, write_end, passed):
            os.close(fd)
    ours.close()
    assert wire.receive_request(theirs) is None  # the other side has gone


def test_needs_privileges_arrives_as_needs_privileges(pair):
    ours, theirs = pair
    wire.send_event(ours, wire.Error.of(NeedsPrivileges("containers without root need ...")))
    [event] = receive_events(theirs)
    error = event.exception()
    assert type(error) is NeedsPrivileges and str(error) == "containers without root need ..."


def test_command_failed_arrives_with_its_class_and_exit_status(pair):
    ours, theirs = pair
    wire.send_event(ours, wire.Error.of(CommandFailed(EXIT_NOT_FOUND, "nope: not found")))
    [event] = receive_events(theirs)
    error = event.exception()
    assert isinstance(error, CommandFailed) and error.exit_status == EXIT_NOT_FOUND
    assert str(error) == "nope: not found"


def test_an_error_class_unknown_here_arrives_as_a_plain_contained_error():
    error = wire.Error("SomethingOnlyTheRunnerKnows", "it broke", 3).exception()
    assert type(error) is ContainedError and error.exit_status == 3 and str(error) == "it broke"


def test_a_failure_that_is_not_ours_arrives_as_a_failed_setup_step():
    error = wire.Error.of(PermissionError(1, "Operation not permitted")).exception()
    assert type(error) is ContainerSetupFailed and "Operation not permitted" in str(error)


@pytest.mark.parametrize("line", [b"this is no json", b'{"event": "exi', b'{"event": "nope"}',
                                  b'{"event": "exit"}', b'{"event": "started", "pid": 1, '
                                  b'"init_pid": 1}', b"[1, 2]"])
def test_a_garbage_or_truncated_line_is_a_clear_wire_error(line):
    with pytest.raises(wire.WireError, match=r"\[internal error\] not an event on the wire"):
        wire.decode(line)


def test_a_pipe_that_ends_inside_an_event_is_a_wire_error_and_at_its_end_none():
    read_end, write_end = os.pipe()
    os.write(write_end, wire.encode(wire.Ready()) + b'{"event": "ex')
    os.close(write_end)
    assert wire.read_event(read_end) == wire.Ready()
    with pytest.raises(wire.WireError, match="ended inside an event"):
        wire.read_event(read_end)
    os.close(read_end)
    read_end, write_end = os.pipe()
    os.close(write_end)
    assert wire.read_event(read_end) is None
    os.close(read_end)


def test_read_event_leaves_what_follows_on_the_pipe():
    read_end, write_end = os.pipe()
    os.write(write_end, wire.encode(wire.Ready()) + wire.encode(wire.Exit(0)))
    assert wire.read_event(read_end) == wire.Ready()
    assert wire.read_event(read_end) == wire.Exit(0)
    os.close(read_end)
    os.close(write_end)


def test_markers_arrive_over_a_pipe_and_a_socket_and_are_checked(pair):
    ours, theirs = pair
    wire.send_marker(ours, wire.Marker.RECORDED)
    wire.expect_marker(theirs, wire.Marker.RECORDED)
    read_end, write_end = os.pipe()
    wire.send_marker(write_end, wire.Marker.IN_CGROUP)
    wire.expect_marker(read_end, wire.Marker.IN_CGROUP)
    wire.send_marker(write_end, wire.Marker.NETWORK_PLUGGED)
    with pytest.raises(wire.WireError, match="expected the IN_CGROUP marker, got b'n'"):
        wire.expect_marker(read_end, wire.Marker.IN_CGROUP)
    os.close(write_end)
    with pytest.raises(wire.WireError, match="expected the IN_CGROUP marker, got end of file"):
        wire.expect_marker(read_end, wire.Marker.IN_CGROUP)
    os.close(read_end)


def test_markers_are_single_distinct_bytes():
    values = [marker.value for marker in wire.Marker]
    assert all(len(value) == 1 for value in values) and len(set(values)) == len(values)


def test_kill_is_the_kill_marker_or_the_callers_end_and_nothing_else():
    assert wire.is_kill(wire.Marker.KILL.value) and wire.is_kill(b"")
    assert wire.is_kill(wire.Marker.KILL.value * 2)  # two interrupts
    with pytest.raises(wire.WireError, match="expected the KILL marker"):
        wire.is_kill(b"hello")


def test_an_oom_kill_is_reported_as_status_137_whatever_the_status_said():
    assert wire.Exit.of(1, oom_kills=1, memory=16 << 20) == wire.Exit(
        EXIT_KILLED, True, "killed: out of memory, limit 16M")
    assert wire.Exit.of(1, oom_kills=0, memory=16 << 20) == wire.Exit(1)
    assert EXIT_KILLED == 137


def test_pid_one_reports_to_its_runner_and_the_runner_raises_the_class_it_sent():
    read_end, write_end = os.pipe()
    report = pid1.RunnerReport(write_end)
    report.netns()
    report.error(NeedsPrivileges("a step needs root"))
    os.close(write_end)
    runner._expect_event(0, read_end, wire.Netns, close=False)
    with pytest.raises(NeedsPrivileges, match="a step needs root"):
        runner._expect_event(0, read_end, wire.Ready, close=False)
    with pytest.raises(ContainerSetupFailed, match="exited during setup"):
        runner._expect_event(0, read_end, wire.Ready, close=False)
    os.close(read_end)


# ---------------------------------------------------------------------------------------------
# A fake runner: the lifecycle (Request, Execution) driven event by event.

class FakeRunner:
    """Stands in for `client.Runner`: each request's socket is handed to the test, which
    plays the runner's side on it (as nbclient's tests swap in a fake kernel manager)."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.sockets: list[socket.socket] = []

    def submit(self, op, spec_json, stdio, explain_fd=None, detached=False, owner=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.requests.append((op, json.loads(spec_json)))
        self.sockets.append(theirs)
        return client.Request(ours)

    def request(self, op, spec_json, stdio, explain_fd=None, detached=False):
        return self.submit(op, spec_json, stdio, explain_fd, detached).wait()

    def close(self):
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def fake(home):
    runner_ = FakeRunner()
    yield runner_
    runner_.close()


def a_spec(directory, persistent: bool = False) -> ContainerSpec:
    return ContainerSpec(id="f" * 64, name="fake", image="busybox:latest",
                         directory=str(directory), lowers=[], args=["true"], env=[],
                         persistent=persistent, remove=not persistent)


def test_an_execution_is_started_then_ends_with_the_runners_exit(fake, tmp_path):
    execution = container.start_spec(a_spec(tmp_path / "c"), runner_=fake, named=False)
    assert fake.requests[0][0] == "run" and fake.requests[0][1]["name"] == "fake"
    [runner_side] = fake.sockets
    assert execution.poll() is None
    wire.send_event(runner_side, wire.Started(pid=99))
    execution.wait_started()
    assert execution.request.started == wire.Started(pid=99)
    wire.send_event(runner_side, wire.Exit(3))
    result = execution.wait()
    assert (result.status, result.oom, result.container) == (3, False, "fake")


def test_an_execution_raises_the_error_the_runner_sent_as_its_class(fake, tmp_path):
    execution = container.start_spec(a_spec(tmp_path / "c"), runner_=fake, named=False)
    wire.send_event(fake.sockets[0], wire.Error.of(NeedsPrivileges("needs root here")))
    with pytest.raises(NeedsPrivileges, match="needs root here"):
        execution.wait()


def test_kill_sends_the_kill_marker_and_the_result_still_follows(fake, tmp_path):
    execution = container.start_spec(a_spec(tmp_path / "c"), runner_=fake, named=False)
    execution.kill()
    assert fake.sockets[0].recv(16) == wire.Marker.KILL.value
    wire.send_event(fake.sockets[0], wire.Exit(EXIT_KILLED))
    wire.send_event(fake.sockets[0], wire.Cleaned())
    fake.sockets[0].close()
    assert execution.wait(settle=True).status == EXIT_KILLED


def test_a_result_read_with_started_is_kept_when_the_runner_then_closes(tmp_path):
    """A fast command (`exec -t CTR sh -c 'tty; stty size'` on a loaded machine): Started and
    Exit are read at once by `wait_started`, the runner closes its end, and the relay's next
    `poll` reads that end of file. The command's exit stays the result: not "the runner
    stopped without a result", which for an exec says 137 "killed: container stopped"."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    execution = client.Execution(client.Request(ours), a_spec(tmp_path, persistent=True))
    theirs.sendall(wire.encode(wire.Started(pid=5)) + wire.encode(wire.Exit(0)))
    theirs.close()
    execution.wait_started()
    result = execution.poll()
    assert result is not None and (result.status, result.message) == (0, None)


def test_a_runner_that_dies_without_a_result_is_runner_died_and_its_files_go(fake, tmp_path):
    directory = tmp_path / "c"
    (directory / "upper").mkdir(parents=True)
    execution = container.start_spec(a_spec(directory), runner_=fake, named=False)
    wire.send_event(fake.sockets[0], wire.Started(pid=99))
    fake.sockets[0].close()
    with pytest.raises(ContainedError, match="the runner stopped without a result"):
        execution.wait()
    assert execution.request.result.type == client.RUNNER_DIED
    assert not directory.exists()  # the runner would have removed them: the client does


def test_an_exec_whose_pid_one_goes_away_ends_killed_not_failed(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    execution = client.Execution(client.Request(ours), a_spec(tmp_path, persistent=True))
    wire.send_event(theirs, wire.Started(pid=5))
    theirs.close()  # `contained rm -f` killed PID 1, and the exec with it
    result = execution.wait()
    assert result.status == EXIT_KILLED and "stopped while the command ran" in result.message


def test_a_created_container_reports_its_pid_one_and_start_time(pair):
    ours, theirs = pair
    request = client.Request(ours)
    wire.send_event(theirs, wire.Created(pid=77, start_time=5))
    assert request.wait() == wire.Created(pid=77, start_time=5)


def test_a_garbage_line_from_the_runner_is_raised_not_swallowed(pair):
    ours, theirs = pair
    request = client.Request(ours)
    theirs.sendall(b"not an event\n")
    with pytest.raises(wire.WireError):
        request.wait()


def test_a_spares_supervisor_takes_no_more_than_a_marker_from_pid_one(tmp_path):
    """The server supervises spares' PID 1s in its own loop: a PID 1 that sends more than the
    REPORTED marker (it never does; a compromised one might) is killed and its container torn
    down, instead of filling the server's memory."""
    import subprocess

    from contained.runtime import spares, steps

    link, pid_one_end = socket.socketpair()
    reply, caller = socket.socketpair()
    pid_one = subprocess.Popen(["sleep", "60"])
    directory = tmp_path / "container"
    directory.mkdir()
    prepared = spares.Prepared(steps.NoCgroup(), pid_one.pid, link, tmp_path / ".spare")
    prepared.reply = reply
    prepared.spec = ContainerSpec(id="0" * 64, name="flooded", image="busybox",
                                  directory=str(directory), lowers=[], args=["true"], env=[])
    try:
        pid_one_end.sendall(b"x" * 100_000)
        assert prepared.on_link(spares.wait_status) is True  # the status function kills
        pid_one.returncode = -9  # reaped there: the Popen must not wait for it again
        assert os.WIFSIGNALED(prepared.status) and os.WTERMSIG(prepared.status) == 9
        event = wire.decode(caller.recv(4096).split(b"\n")[0])
        assert isinstance(event, wire.Error) and "REPORTED marker" in event.message
        assert not directory.exists()
    finally:
        pid_one.kill()
        pid_one.wait()
        for sock in (pid_one_end, caller):
            sock.close()


def test_a_request_the_server_cannot_fork_for_fails_alone(monkeypatch):
    """fork() failing (EAGAIN: too many processes) fails that request in one line; the
    server goes on, with the containers it supervises."""
    import errno

    from contained.runtime import server

    def no_fork():
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    reply, caller = socket.socketpair()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)] + [reply.detach()]
    monkeypatch.setattr(os, "fork", no_fork)
    server._fork_for({"op": "run"}, fds, control=None, spares=None)
    event = wire.decode(caller.recv(4096).split(b"\n")[0])
    assert isinstance(event, wire.Error) and event.type == "ContainerSetupFailed"
    assert "cannot start another process" in event.message
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)  # each one closed: the request is done
    caller.close()


def test_a_spares_pid_one_is_killed_and_reaped_once_only(tmp_path, monkeypatch):
    """Once reaped, PID 1's pid may be reused by another process (the server's next spare):
    a failure or a discard afterwards must neither kill nor wait for that pid again."""
    import subprocess

    from contained.runtime import runner, spares, steps

    killed, waited = [], []
    monkeypatch.setattr(runner, "kill", lambda pid: (killed.append(pid), os.kill(pid, 9)))
    pid_one = subprocess.Popen(["sleep", "60"])
    link, other_end = socket.socketpair()
    prepared = spares.Prepared(steps.NoCgroup(), pid_one.pid, link, tmp_path / ".spare")

    def status_of(pid):
        waited.append(pid)
        return spares.wait_status(pid)

    try:
        assert prepared._reap(status_of) == 9  # SIGKILLed
        prepared._fail(RuntimeError("later"), status_of)
        prepared.discard(status_of)
        assert (killed, waited) == ([pid_one.pid], [pid_one.pid])
    finally:
        pid_one.returncode = -9  # reaped above: the Popen must not wait for it again
        link.close()
        other_end.close()


def test_a_pid_one_the_server_reaped_already_is_not_signalled(tmp_path, monkeypatch):
    """The server's loop may reap PID 1 (SIGCHLD) before it reads the end of its link; from
    then on that pid may be any process's, and the server is root: no SIGKILL may go to it."""
    from contained.runtime import runner, server, spares, steps

    killed = []
    monkeypatch.setattr(runner, "kill", killed.append)
    children = object.__new__(server.Children)  # its state only: no signal handling here
    children.watched, children.statuses = {4_000_000}, {4_000_000: 9}
    link, other_end = socket.socketpair()
    prepared = spares.Prepared(steps.NoCgroup(), 4_000_000, link, tmp_path / ".spare")
    try:
        assert prepared._reap(children.status) == 9
        assert killed == []
        assert children.watched == set() and children.statuses == {}
    finally:
        link.close()
        other_end.close()
