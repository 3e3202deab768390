"""The wire between a caller, the runner and PID 1: typed events, markers and descriptors.

Taught in notebook 06 (what ``%%container`` does underneath). A request is a length-prefixed
JSON object sent over a Unix socket together with open file descriptors (SCM_RIGHTS, the way
a shell hands a child its stdin and stdout): the cell's pipes travel to the process that runs
the container, so output streams straight from the container into the notebook. Replies are
*events*, one JSON line each, on the same socket: `Started`, then `Exit` (or `Error`, or for
``create`` `Created`), then `Cleaned` once the container is torn down. PID 1 tells the runner
that forked it the same way, on a pipe (`Netns`, `Ready`, `Exit`, `Error`).

Between the runner and PID 1, where one side only has to wait for the other, a single byte
does: a `Marker` (as benchexec's ``MARKER_*``), checked on receipt, so a mixed-up handshake is
an error that says which marker was expected instead of a hang or a silent misstep. An `Error`
carries its class's name, and arrives as that class (`NeedsPrivileges` stays
`NeedsPrivileges`); a name nobody here knows arrives as a plain `ContainedError`. In the shell,
the closest thing is ``socat - UNIX-CONNECT:...`` with one JSON object per line.
"""

import enum
import json
import os
import socket
import struct
from array import array

from contained.errors import ContainedError
from contained.records import asdict, fields, record
from contained.runtime.status import (
    EXIT_KILLED,
    EXIT_SETUP_FAILED,
    ContainerSetupFailed,
    describe,
    oom_message,
)

__all__ = [
    "EVENTS", "FINAL", "MAX_FDS", "MAX_REQUEST", "Cleaned", "Created", "Error", "EventReader",
    "Exit", "Marker", "Netns", "Ready", "Refused", "Started", "Tty", "WireError", "decode",
    "encode", "error_class", "expect_marker", "is_kill", "read_event", "receive_messages",
    "receive_request", "send_event", "send_event_with_fds", "send_marker", "send_request",
    "write_event",
]

MAX_REQUEST = 1 << 20
MAX_FDS = 16


def send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """Send one request with its descriptors."""
    data = json.dumps(request).encode()
    sock.sendmsg([struct.pack("!I", len(data)), data],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])


def receive_request(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """The next request and its descriptors, or None when the other side has gone."""
    fds = array("i")
    try:
        header, ancillary, _, _ = sock.recvmsg(4, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except ConnectionResetError:  # it left with something of ours unread
        return None
    if not header:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    (length,) = struct.unpack("!I", header)
    if length > MAX_REQUEST:
        raise ValueError(f"request of {length} bytes")
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data), list(fds)


class WireError(ContainedError):
    """A message or marker on the wire is not what the protocol says: a bug, or a process that
    died mid-write. Never the user's doing; `contained gc` cleans what is left."""


# ---------------------------------------------------------------------------------------------
# Markers: one byte where one side only waits for the other.

class Marker(bytes, enum.Enum):
    """The handshake bytes between the runner and PID 1 (benchexec's ``MARKER_*``)."""

    #: runner → PID 1: you are in the container's cgroup now (its limits hold for the command)
    IN_CGROUP = b"g"
    #: runner → PID 1, explained bridge runs: the veth is plugged and its steps are printed
    NETWORK_PLUGGED = b"n"
    #: a spare's supervisor → its PID 1: the container is on record, say "started"
    RECORDED = b"r"
    #: a spare's PID 1 → its supervisor: the caller has the final event, do not send another
    REPORTED = b"R"
    #: caller → runner or PID 1: SIGKILL the command (an interrupt); the result still follows
    KILL = b"k"


def send_marker(target: socket.socket | int, marker: Marker) -> None:
    """Send `marker` on a socket or a pipe's descriptor."""
    if isinstance(target, int):
        os.write(target, marker.value)
    else:
        target.sendall(marker.value)


def expect_marker(source: socket.socket | int, marker: Marker) -> None:
    """Wait for `marker`; anything else, or the other side going away, is a `WireError`."""
    data = os.read(source, 1) if isinstance(source, int) else source.recv(1)
    if data != marker.value:
        got = "end of file" if not data else repr(data)
        raise WireError(f"[internal error] expected the {marker.name} marker, got {got}")


def is_kill(data: bytes) -> bool:
    """Whether what a caller sent means "kill the command": `Marker.KILL`, or the end of its
    socket (the caller has gone). Anything else is a `WireError`."""
    if not data or data == Marker.KILL.value * len(data):
        return True
    raise WireError(f"[internal error] expected the KILL marker, got {data[:16]!r}")


# ---------------------------------------------------------------------------------------------
# Events: what happened, one JSON line each.

@record(frozen=True)
class Started:
    """The command runs: `pid` is its PID 1 (run, the host's pid) or, for exec, the command's."""

    pid: int


@record(frozen=True)
class Exit:
    """The command ended with `status` (128+N for signal N); `oom` when the OOM killer did it."""

    status: int
    oom: bool = False
    message: str | None = None

    @classmethod
    def of(cls, status: int, oom_kills: int, memory: int | None) -> "Exit":
        """An OOM kill is reported as such, with Docker's status 137, whatever the status
        said (PID 1 or a shell in between may turn SIGKILL into another status)."""
        if oom_kills > 0:
            return cls(EXIT_KILLED, True, oom_message(memory))
        return cls(status)


@record(frozen=True)
class Created:
    """A named container's PID 1 is up and serving exec: its host pid and start time."""

    pid: int
    start_time: int


@record(frozen=True)
class Error:
    """Something failed: `type` names the `ContainedError` subclass it was raised as."""

    type: str
    message: str
    exit_status: int = EXIT_SETUP_FAILED

    @classmethod
    def of(cls, error: BaseException) -> "Error":
        """A `ContainedError` keeps its class; anything else was a set-up step that failed."""
        if isinstance(error, ContainedError):
            return cls(type(error).__name__, str(error), error.exit_status)
        return cls(ContainerSetupFailed.__name__, describe(error), ContainerSetupFailed.exit_status)

    def exception(self) -> ContainedError:
        """The error as the class it was raised as (a plain `ContainedError` if unknown here)."""
        kind = error_class(self.type)
        error = kind.__new__(kind)  # whatever its __init__ takes: message and status are set here
        Exception.__init__(error, self.message)
        error.exit_status = self.exit_status
        return error


@record(frozen=True)
class Refused:
    """PID 1's tiny init → an exec's caller: the command could not start; `stage` says at which
    step (tiny_init.c: user, dir, missing, directory, notexec, path, exec...), `errno` why."""

    stage: str
    errno: int


@record(frozen=True)
class Cleaned:
    """The runner has torn the container down (unmounted, cgroup and files removed)."""


@record(frozen=True)
class Tty:
    """With -t: the pty's master comes with this event, as a descriptor."""


@record(frozen=True)
class Netns:
    """PID 1 → runner: the network namespace exists; plug a veth in from outside."""


@record(frozen=True)
class Ready:
    """PID 1 → runner: the container is set up (and the command runs, or exec is served)."""


EVENTS = {cls.__name__.lower(): cls
          for cls in (Started, Exit, Created, Error, Refused, Cleaned, Tty, Netns, Ready)}
#: the events that end a request (the caller's result)
FINAL = (Exit, Created, Error, Refused)


def error_class(name: str) -> type[ContainedError]:
    """The `ContainedError` subclass called `name` among those loaded, or `ContainedError`
    itself when there is none (or two with that name: then which one is not known)."""
    found, pending = [], [ContainedError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            found.append(cls)
        pending += cls.__subclasses__()
    return found[0] if len(set(found)) == 1 else ContainedError


def encode(event) -> bytes:
    """One event as its JSON line."""
    return json.dumps({"event": type(event).__name__.lower(), **asdict(event)}).encode() + b"\n"


def decode(line: bytes):
    """One JSON line (with or without its newline) as its event; a `WireError` if it is none."""
    try:
        data = json.loads(line)
        kind = EVENTS[data.pop("event")]
        names = {f.name for f in fields(kind)}
        if not names.issuperset(data):
            raise TypeError(f"unexpected fields {sorted(set(data) - names)}")
        return kind(**data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise WireError(f"[internal error] not an event on the wire ({error}): "
                        f"{line[:80]!r}") from None


class EventReader:
    """Events from a stream that may cut them anywhere: `feed` bytes, get whole events."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data: bytes) -> list:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [decode(line) for line in lines]


def read_event(fd: int):
    """The next event on a pipe, or None at its end. One byte at a time: what follows on the
    same pipe (the command's exit comes at once after `Ready` for /bin/true) stays there."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            if line:
                raise WireError(f"[internal error] the wire ended inside an event: {line[:80]!r}")
            return None
        line += chunk
    return decode(line)


def write_event(fd: int, event) -> None:
    """One event on a pipe (PID 1 to the runner that forked it)."""
    os.write(fd, encode(event))


def send_event_with_fds(sock: socket.socket, fds: list[int], event) -> None:
    """One event carrying descriptors (SCM_RIGHTS): a ``-t`` command's pty master."""
    sock.sendmsg([encode(event)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])


def receive_messages(sock: socket.socket, size: int = 65536) -> tuple[bytes, list[int]]:
    """What the socket holds (part of a line, or several), and any descriptors that came
    with it; the caller takes them (they would be lost to a plain recv)."""
    fds = array("i")
    data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def send_event(sock: socket.socket | None, event) -> None:
    """One event; a caller that has gone away is not an error (it is cleaned up anyway)."""
    if sock is None:
        return
    try:
        sock.sendall(encode(event))
    except OSError:
        pass
