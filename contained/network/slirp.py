"""Rootless ``--net bridge``: the container's network namespace, connected by slirp4netns.

Taught in notebook 08 ("Networking"), after the bridge. Without root, a container may not
have a veth, a bridge or NAT rules on the host; podman and Docker rootless give it a
user-space TCP/IP stack instead (slirp, from QEMU). slirp4netns opens a TAP device inside the
container's network namespace and turns the packets sent to it into ordinary sockets of the
user on the host: the container reaches what the user could reach, and nothing more. By
hand, from the host, for a container whose PID 1 is PID::

    slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox \\
        --enable-seccomp --api-socket DIR/slirp4netns.sock --exit-fd=3 --ready-fd=4 PID tap0 &
    # inside: tap0 is 10.0.2.100/24, the default route goes via 10.0.2.2 (the host),
    # and 10.0.2.3 answers DNS; fd 3 is a pidfd of PID 1, fd 4 a pipe that says "1" when ready
    echo -n '{"execute": "add_hostfwd", "arguments": {"proto": "tcp",
        "host_addr": "127.0.0.1", "host_port": 8080, "guest_port": 80}}' \\
        | nc -U DIR/slirp4netns.sock                        # -p 127.0.0.1:8080:80
    rm DIR/slirp4netns.sock                                 # once PID 1 (and so slirp) is gone

``--disable-host-loopback`` keeps the container away from the host's 127.0.0.1 services
(which 10.0.2.2 would otherwise reach: the same hole as CVE-2020-8558 on a bridge).
slirp4netns ends by itself when PID 1 does (its exit fd is a pidfd of PID 1), whoever runs
the container and however it ends; `detach` then removes its socket and record, and `gc`
finds any left in this home (a record per container, ``DIR/slirp4netns.json``).
"""

import errno
import json
import os
import select
import shlex
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from contained import procfs, syscalls
from contained.errors import ContainedError
from contained.network.names import write_hosts_file
from contained.network.ports import PortSpec, claim_port
from contained.runtime.plan import Step

#: the container's interface, and the addresses slirp4netns --configure gives (its defaults)
INTERFACE = "tap0"
GUEST_ADDRESS = "10.0.2.100"
GATEWAY = "10.0.2.2"
#: podman's and rootlesskit's choice: large packets make slirp's copies much cheaper
MTU = 65520
#: files of a container's own directory (the socket's full path can exceed the 108 bytes a
#: Unix socket address holds, so slirp4netns binds it relative to the directory)
API_SOCKET = "slirp4netns.sock"
RECORD = "slirp4netns.json"
#: the one device slirp4netns needs: rootless, it must be open to every user (udev's 0666)
TUN_DEVICE = "/dev/net/tun"
#: slirp4netns is ready in ~5 ms; a loaded classroom machine gets more
READY_TIMEOUT = 10.0
#: how long `detach` waits for a killed slirp4netns to be gone
EXIT_TIMEOUT = 2.0


class SlirpUnavailable(ContainedError):
    """slirp4netns or /dev/net/tun is missing or unusable here."""


class SlirpFailed(ContainedError):
    """slirp4netns exited, or refused an API request (a published port)."""


# --- can it work here ----------------------------------------------------------------------


def problems() -> list[str]:
    """What stops rootless --net bridge here, one line each; [] if nothing."""
    found = []
    if shutil.which("slirp4netns") is None:
        found.append("--net bridge needs root here: rootless, it needs slirp4netns "
                     "(apt-get install slirp4netns), or use --net none")
    if not os.access(TUN_DEVICE, os.R_OK | os.W_OK):
        found.append(_tun_problem())
    return found


def _tun_problem() -> str:
    try:
        mode = f"it is {os.stat(TUN_DEVICE).st_mode & 0o777:04o} here"
    except OSError:
        mode = "it is missing here: modprobe tun"
    return (f"--net bridge needs root here: rootless, slirp4netns needs {TUN_DEVICE} open to "
            f"every user ({mode}; udev makes it 0666 on most distributions: ask root for "
            f"`chmod 0666 {TUN_DEVICE}`), or use --net none")


def check_available() -> None:
    """Raise `SlirpUnavailable` now, in one line, rather than from the runner later."""
    found = problems()
    if found:
        raise SlirpUnavailable(found[0])


# --- attach --------------------------------------------------------------------------------


def plan_attach(container: str, directory: Path, pid: int | str,
                publish: list[PortSpec] | tuple[PortSpec, ...] = ()) -> list[Step]:
    """The steps that connect PID 1's network namespace (`pid`'s) and publish its ports.

    Nothing happens until the steps run (``--dry-run`` only shows them). The runner runs them
    from the container's user namespace (as podman does): slirp4netns, root there, may enter
    the network namespace it owns, while its sockets stay in the host's.
    """
    socket_path = directory / API_SOCKET
    shown = ["slirp4netns", "--configure", f"--mtu={MTU}", "--disable-host-loopback",
             "--enable-sandbox", "--enable-seccomp", "--api-socket", str(socket_path),
             "--exit-fd=3", "--ready-fd=4", str(pid), INTERFACE]
    steps = [Step(
        shlex.join(shown) + " 3<PIDFD_OF_PID_1 4>READY &",
        f"user-mode networking: {INTERFACE} ({GUEST_ADDRESS}, the route via {GATEWAY}) in the "
        "container, its packets become our own sockets on the host; never the host's "
        "127.0.0.1 (CVE-2020-8558); it ends with PID 1",
        lambda: start(directory, int(pid)))]
    steps += [_port_step(container, directory, port) for port in publish]
    steps.append(Step(
        f"# write {directory / 'hosts'}: localhost and {GUEST_ADDRESS} {container}",
        "bind-mounted over the container's /etc/hosts",
        lambda: write_hosts_file(directory / "hosts", container, GUEST_ADDRESS, {})))
    return steps


def _port_step(container: str, directory: Path, port: PortSpec) -> Step:
    request = _hostfwd_request(port)
    return Step(f"echo -n {shlex.quote(json.dumps(request))} | nc -U {directory / API_SOCKET}",
                f"publish {port.host_ip}:{port.host_port or 'ANY'} on the host: slirp4netns "
                f"listens there and connects to port {port.container_port} inside",
                lambda: add_port(container, directory, port))


def _hostfwd_request(port: PortSpec) -> dict:
    return {"execute": "add_hostfwd", "arguments": {
        "proto": port.protocol, "host_addr": port.host_ip, "host_port": port.host_port,
        "guest_addr": GUEST_ADDRESS, "guest_port": port.container_port}}


def prefork_step(directory: Path) -> Step:
    """The user phase's last step, rootless --net bridge only: fork the process that will
    become slirp4netns (`Launcher`) while the runner's children are still born in the host's
    PID namespace."""
    return Step("# (outside) fork the process that becomes slirp4netns, before unshare --pid",
                "after it, the runner's children are born in the container's PID namespace, "
                "where the container would see (and could trace) them",
                lambda: Launcher.fork(directory))


class Launcher:
    """A child of the runner that waits for PID 1's pid, then becomes slirp4netns.

    Forked before ``unshare --pid`` (a rootless runner may not go back to the host's PID
    namespace, as a root one does): so slirp4netns lives in the host's PID namespace, out of
    the container's sight. One per runner process (each runs one container), found by
    `start` through the container's directory.
    """

    waiting: dict[str, "Launcher"] = {}

    def __init__(self, pid: int, command: int, ready: int, log) -> None:
        self.pid, self.command, self.ready, self.log = pid, command, ready, log

    @classmethod
    def fork(cls, directory: Path) -> "Launcher":
        command_read, command_write = os.pipe()
        ready_read, ready_write = os.pipe()
        # slirp4netns chatters on stdout and stderr for its whole life: a file nobody needs
        # to read (a pipe would fill up and stop it), unlinked from the start
        log = tempfile.TemporaryFile(dir=directory)
        pid = os.fork()
        if pid == 0:
            try:
                _become_slirp4netns(directory, command_read, ready_write, log.fileno())
            except BaseException as error:  # noqa: BLE001 — the runner reads it in the log
                os.write(2, f"{error}\n".encode())
            finally:
                os._exit(127)  # never back into the runner's code
        os.close(command_read)
        os.close(ready_write)
        launcher = cls.waiting[str(directory)] = cls(pid, command_write, ready_read, log)
        return launcher

    def reason(self) -> str:
        """slirp4netns's last line, for an error message."""
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return next((line for line in reversed(lines) if "WARNING" not in line),
                    "it said nothing")

    def close(self) -> None:
        for fd in (self.command, self.ready):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


def _become_slirp4netns(directory: Path, command: int, ready: int, log: int) -> None:
    """In the launcher: let go of the runner's descriptors, wait for PID 1's pid, then exec
    slirp4netns for it."""
    os.setsid()  # a Ctrl-C for the CLI that started a named container must not reach it
    for name in ("SIGINT", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)  # from here on, what goes wrong is in the log
    # nothing else of the runner's (the container's stdio, the caller's socket): a caller
    # waits for those to close
    syscalls.close_fds_except((command, ready))
    data = os.read(command, 32)
    if not data:
        os._exit(0)  # the runner gave up before PID 1 had a network namespace
    pid = int(data)
    pidfd = os.pidfd_open(pid)
    for fd in (pidfd, ready):
        os.set_inheritable(fd, True)
    os.close(command)
    os.chdir(directory)
    os.execvp("slirp4netns", [
        "slirp4netns", "--configure", f"--mtu={MTU}", "--disable-host-loopback",
        "--enable-sandbox", "--enable-seccomp", "--api-socket", API_SOCKET,
        f"--exit-fd={pidfd}", f"--ready-fd={ready}", str(pid), INTERFACE])


def start(directory: Path, pid: int) -> int:
    """Have the launcher become slirp4netns for PID 1 (`pid`); wait until tap0 is configured.

    Its exit fd is a pidfd of PID 1: it becomes readable when PID 1 exits, and slirp4netns
    then exits too, even if the runner that started it is long gone (a named container).
    A record (its pid and start time, and PID 1's) lets `detach` and `gc` find it.
    """
    launcher = Launcher.waiting.pop(str(directory), None)
    if launcher is None:
        raise SlirpFailed(f"[internal error] no slirp4netns launcher was forked for {directory}")
    try:
        _record(directory, launcher.pid, pid)
        os.write(launcher.command, f"{pid}".encode())
        if not _wait_ready(launcher.ready):
            reason = launcher.reason()
            detach(directory)
            raise SlirpFailed(f"slirp4netns did not connect the container: {reason}; "
                              "run `contained doctor`")
        return launcher.pid
    finally:
        launcher.close()


def _wait_ready(ready_read: int) -> bool:
    ready, _, _ = select.select([ready_read], [], [], READY_TIMEOUT)
    return bool(ready) and os.read(ready_read, 1) == b"1"


def _record(directory: Path, slirp_pid: int, init_pid: int) -> None:
    (directory / RECORD).write_text(json.dumps({
        "pid": slirp_pid, "start": procfs.start_time(slirp_pid),
        "init_pid": init_pid, "init_start": procfs.start_time(init_pid)}))


def add_port(container: str, directory: Path, port: PortSpec) -> PortSpec:
    """Publish one port through the API socket; port 0 becomes a free one now."""
    if port.host_port == 0:
        port = claim_port(port, container, {})
    answer = _api(directory, _hostfwd_request(port))
    if "error" in answer:
        raise SlirpFailed(f"cannot publish {port} for {container}: {_why_refused(port)}")
    return port


def _why_refused(port: PortSpec) -> str:
    """Why slirp4netns could not listen on a host port, found by trying as it does (with
    SO_REUSEADDR: a port in TIME_WAIT after the last container's connections is free)."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host_ip, port.host_port))
        except OSError as error:
            if error.errno == errno.EACCES:
                return "ports below 1024 need root; publish on a higher one"
            if error.errno == errno.EADDRINUSE:
                return "the host port is in use; publish on another one"
            return f"{error.strerror}; use 127.0.0.1 or 0.0.0.0"
    return "slirp4netns refused it; run `contained doctor`"


def _api(directory: Path, request: dict) -> dict:
    """One request on the API socket (one per connection, ended by shutdown(SHUT_WR))."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
                procfs.short_path(directory / API_SOCKET) as address:
            sock.settimeout(READY_TIMEOUT)
            sock.connect(address)  # a short address, however deep the home is
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError as error:
        raise SlirpFailed(f"slirp4netns's API socket in {directory} does not answer "
                          f"({error.strerror or error}); start the container again") from None
    return json.loads(reply or b"{}")


# --- detach and gc -------------------------------------------------------------------------


def _read_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None


def detach(directory: Path, explain: Callable[[str], None] | None = None) -> None:
    """Make sure the container's slirp4netns has ended; remove its socket and record.

    It ends by itself with PID 1, a little later; this kills it (the callers have ended PID 1
    already) and waits until it is gone. Does nothing without a record, so it is safe to call
    twice.
    """
    record = _read_record(Path(directory))
    if record is not None:
        _end(record, explain)
    for name in (API_SOCKET, RECORD):
        try:
            os.unlink(Path(directory) / name)
        except FileNotFoundError:
            pass


def _end(record: dict, explain: Callable[[str], None] | None) -> None:
    pid = record.get("pid")
    if not procfs.alive(pid, record.get("start")):
        _reap(pid)
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # It would end by itself once it notices PID 1 is gone (some 30 ms): the container
        # is over, there is nothing left to lose, and a teardown should not wait for that.
        if explain is not None:
            explain(Step(f"kill {pid}", "slirp4netns of a container that is gone").explain())
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], EXIT_TIMEOUT)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    _reap(pid)


def _reap(pid: int | None) -> None:
    """Reap slirp4netns if this process started it (the runner of a throwaway container)."""
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError as error:
        if error.errno != errno.ECHILD:
            raise


def gc(containers: Path, explain: Callable[[str], None] | None = None) -> list[str]:
    """End the slirp4netns of every container of this home (`containers`: its containers
    directory) whose PID 1 is gone; the ids of those containers."""
    removed = []
    if not containers.is_dir():
        return removed
    for record_path in containers.glob(f"*/{RECORD}"):
        record = _read_record(record_path.parent)
        if record is None or not procfs.alive(record.get("init_pid"), record.get("init_start")):
            detach(record_path.parent, explain)
            removed.append(record_path.parent.name)
    return removed
