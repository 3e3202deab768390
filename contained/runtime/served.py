"""``exec`` served by the container's own PID 1: the fast way in, where there is one.

Taught in notebook 06. A named container's PID 1 is the tiny C init (`contained.runtime.tiny_init`),
and it is already where a command must be: in every namespace and the cgroup, with the
keyring, capabilities, no_new_privs and seccomp filter of the container. So, as contained's
first (Python) PID 1 did, it forks the command itself: a fork of a 0.1 MiB C process, where
joining from outside (`contained.runtime.enter`, ``nsenter``) forks and confines a Python
process (~5 ms more). In shell terms, what happens is::

    socat - UNIX-CONNECT:$CONTAINED_HOME/containers/ID/exec.sock     # stdio as SCM_RIGHTS
    # PID 1:  fork; setsid; setgroups/setgid/setuid; cd DIR; exec CMD  (in the container)

The socket (mode 0600) is bound on the host, in the container's directory inside the home
(mode 0700), before pivot_root (`listen`), and handed to PID 1 as a descriptor: nothing inside
the container can reach it (its path is not in the container's mounts, and PID 1 is
non-dumpable, so /proc/1/fd is closed), and on the host only the home's owner can connect.
The caller resolves ``-u`` in the container's own /etc/passwd and /etc/group, through PID 1's
/proc/PID/root and the safe resolver, by runc's rules (`contained.runtime.process.resolve_user`),
and builds the environment as Docker does; PID 1 parses a list of strings and nothing else.
Its replies are the runner's events; a command that cannot start comes back as ``refused``
with the step and errno, and is worded here, in the words the other way in uses
(`contained.runtime.init.start_failure`).

The other way in is taken where this one is not: with ``-t`` (the pty is opened inside), with
``--explain`` (it shows and runs every step), when PID 1 is the Python fallback (nobody listens
on the socket), or for a request too large for one message.
"""

import os
import socket
from array import array
from pathlib import Path

from contained import procfs
from contained.errors import ContainedError, ContainerNotRunning
from contained.runtime import client, process, state, wire
from contained.runtime.cgroups import files
from contained.runtime.spec import ContainerSpec

SOCKET_NAME = "exec.sock"
#: PID 1 takes one message of at most this many bytes (tiny_init.c's MAX_REQUEST)
MAX_REQUEST = 128 * 1024


def listen(directory: Path) -> socket.socket:
    """The exec socket's listener, bound in the container's directory (inside the 0700 home)."""
    path = directory / SOCKET_NAME
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with procfs.short_path(path) as address:
        listener.bind(address)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def start(spec: ContainerSpec, args: list[str], env: list[str], working_dir: str, user: str,
          stdio: tuple[int, int, int], detached: bool) -> "ServedRequest | None":
    """Send the command to PID 1; None where PID 1 does not serve it (then join from outside)."""
    record = state.read(spec.id, spec.directory) or {}
    pid, started = record.get("init_pid"), record.get("init_start_time")
    if not pid or not encodable(*args, *env, working_dir):
        return None
    payload = _payload(spec, pid, started, args, env, working_dir, user, detached)
    if len(payload) > MAX_REQUEST:
        return None
    entry = record.get("cgroup_entry") or {}
    oom = _OomCount(entry.get("oom"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with procfs.short_path(Path(spec.directory) / SOCKET_NAME) as address:
            sock.connect(address)
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", stdio))])
    except OSError:  # nobody listens (a Python PID 1, an old container): the other way in
        sock.close()
        return None
    return ServedRequest(sock, spec, args[0], working_dir, oom)


def _payload(spec: ContainerSpec, pid: int, started: int | None, args: list[str],
             env: list[str], working_dir: str, user: str, detached: bool) -> bytes:
    """tiny_init.c's request: the user resolved in the container, the environment built."""
    identity = _resolve_user(spec, pid, started, user)
    return encode_request(identity, env, args, working_dir, detached,
                          process.setgroups_allowed(pid))  # PID 1's user namespace


def encode_request(identity: tuple, env: list[str], args: list[str], working_dir: str,
                   detached: bool, setgroups: bool = True) -> bytes:
    """tiny_init.c's request for `identity` (`process.resolve_user`'s answer), the image's
    `env`, the command and its working directory: NUL-terminated fields."""
    uid, gid, groups, home = identity
    environment = process.build_environment(env, [], home=home)
    switch = (uid, gid) != (0, 0)  # PID 1 is the container's root, as `enter` would be
    if not switch or not setgroups:
        groups = None
    return nul_terminated(int(switch), uid, gid, -1 if groups is None else len(groups),
                          *(groups or ()), int(detached), working_dir, len(args), *args,
                          *environment)


def encodable(*fields) -> bool:
    """Whether each field can be one of tiny_init.c's: none may hold a NUL."""
    return not any("\0" in str(field) for field in fields)


def nul_terminated(*fields) -> bytes:
    """Fields as tiny_init.c reads them: each NUL-terminated, None as an empty one. A field
    holding a NUL would end early and shift every field after it (a hostname could become
    a root, a capability set and a command): refused, whatever the caller checked."""
    if not encodable(*fields):
        raise ContainedError("a value for the container's PID 1 holds a NUL byte, which no "
                             "name, path or argument may hold: remove it")
    return b"".join(os.fsencode("" if field is None else str(field)) + b"\0"
                    for field in fields)


def _resolve_user(spec: ContainerSpec, pid: int, started: int | None, user: str):
    """``-u`` in the container's files, seen through PID 1's root (checked to be PID 1's)."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        root = None
    try:
        # Checked after opening: had PID 1 died and its pid been reused before, the start
        # time would now be another process's.
        if root is None or procfs.start_time(pid) != started:
            raise ContainerNotRunning.named(spec.name)
        return process.resolve_user(user or "", Path(f"/proc/self/fd/{root}"))
    finally:
        if root is not None:
            os.close(root)


class _OomCount:
    """The container's OOM kills, read before and after (`Exit.of`), by path: this is the
    caller's process, which keeps no descriptor for it."""

    def __init__(self, path: str | None):
        self.path = path
        self.before = self.now()

    def now(self) -> int:
        if self.path is None:
            return 0
        try:
            return files.keyed(Path(self.path).read_text(), "oom_kill") or 0
        except OSError:  # the group went with the container
            return 0

    def since(self) -> int:
        return self.now() - self.before


class ServedRequest(client.Request):
    """A `client.Request` whose replies come from PID 1: a refusal is worded here, and an exit
    status becomes an OOM kill when the container's counter moved meanwhile."""

    def __init__(self, sock: socket.socket, spec: ContainerSpec, name: str, working_dir: str,
                 oom: _OomCount):
        super().__init__(sock)
        self._spec, self._name, self._working_dir, self._oom = spec, name, working_dir, oom

    def _read(self) -> None:
        waiting = self.result is None
        super()._read()
        if not waiting:
            return  # `Cleaned`, for `settle`: the result was worded already
        if isinstance(self.result, wire.Refused):
            # Loaded here: init brings the runner's modules (steps, subprocess), which the
            # CLI's `exec` otherwise never needs.
            from contained.runtime import init

            error = init.start_failure(self.result.stage, self.result.errno, self._name,
                                       self._working_dir, self._spec.name)
            self.result = wire.Error.of(error)
        elif isinstance(self.result, wire.Exit) and not self.result.oom:
            self.result = wire.Exit.of(self.result.status, self._oom.since(), self._spec.memory)
