"""The container lifecycle: run, create, exec, ps, stop, rm, gc — the API the CLI and magics use.

Taught in notebook 06 (``%%container``) and used everywhere after notebook 05. The shell
equivalents are Docker's: ``docker run --rm``, ``docker run -d --name``, ``docker exec``,
``docker ps``, ``docker stop``, ``docker rm``. Every run can also explain itself: pass
``explain=True`` to see each step's shell command as it runs, or give a spec to `dry_run` to
get them without running anything.

This module never forks, never unshares and never mounts: it resolves the image and the
options into a `ContainerSpec`, records state on disk, and hands the spec to the runner
(`runner`), a single-threaded helper process. So it is safe inside a Jupyter kernel.

State lives in ``HOME/containers/<id>/`` (``state.json``, plus ``upper/``, ``work/``, ``root/``),
shared by every process: the CLI and a notebook see the same containers. A lock file serialises
name allocation and removal.
"""

import fcntl
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from contained import home, isolated, network
from contained.errors import ContainedError
from contained.images import layers
from contained.runtime import cgroups, init, process, procfs, rootfs, runner, state, wire
from contained.runtime.init import CommandFailed
from contained.runtime.spec import ContainerSpec

NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
DEFAULT_STOP_TIMEOUT = 10.0
SETUP_GRACE = 60.0  # seconds a container directory may exist before it is recorded
#: said on every --chroot run (CLI and magic): notebook 07 climbs out of such a container
CHROOT_WARNING = ("--chroot makes an escapable container: chroot, unlike pivot_root, only moves "
                  "where / starts and leaves the host's root in reach, so root inside can "
                  "chroot back out (notebook 07); use it to learn, never to isolate")


class ContainerNotFound(ContainedError):
    """No container has that name or id."""


class NameInUse(ContainedError):
    """A container with that name already exists."""


class ContainerRunning(ContainedError):
    """The operation needs a stopped container."""


class ContainerNotRunning(ContainedError):
    """The operation needs a running container."""


class BadOption(ContainedError):
    """An option's value is malformed (a volume, a name, a working directory...)."""


@dataclass
class RunResult:
    """How a container's command ended: its exit status (128+N for signal N) and why."""

    status: int
    oom: bool = False
    message: str | None = None
    container: str = ""
    id: str = ""


@dataclass
class Container:
    """A container as `contained ps` lists it."""

    id: str
    name: str
    image: str
    command: list[str]
    created: float
    persistent: bool
    running: bool
    init_pid: int | None = None
    spec: ContainerSpec | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return "running" if self.running else "exited"


# ---------------------------------------------------------------------------------------------
# Options → spec

def parse_volume(text: str) -> list:
    """``HOST:CONTAINER[:ro|rw]`` → [host, container, readonly]."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise BadOption(f"invalid volume {text!r}: use HOST_PATH:CONTAINER_PATH[:ro]")
    host_path, container_path = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise BadOption(f"invalid volume mode {mode!r} in {text!r}: use ro or rw")
    if not os.path.isabs(host_path) or not os.path.isabs(container_path):
        raise BadOption(f"invalid volume {text!r}: both paths must be absolute")
    _check_volume_destination(text, container_path)
    if not os.path.exists(host_path):
        raise BadOption(f"volume source {host_path} does not exist: create it first")
    return [os.path.realpath(host_path), container_path, mode == "ro"]


def _check_volume_destination(text: str, container_path: str) -> None:
    """Docker's refusals: over the container's / it would hide the image, over /proc, /sys or
    /dev the kernel's views and the device rules. The image's symlinks are checked when the
    volume is mounted (`rootfs`); here, the path as written (``..`` taken lexically)."""
    lexical = "/" + "/".join(part for part in os.path.normpath(container_path).split("/") if part)
    if lexical == "/":
        raise BadOption(f"invalid volume {text!r}: the destination can't be '/'")
    for top in rootfs.FORBIDDEN_VOLUME_PARENTS:
        if lexical == top or lexical.startswith(top + "/"):
            raise BadOption(f"invalid volume {text!r}: the destination can't be {top} or "
                            f"under it (the kernel's {top}); choose another path, e.g. /mnt")


def check_name(name: str) -> str:
    if name == "":
        raise BadOption("empty container name: give one, e.g. --name web, or leave --name out "
                        "for a generated one")
    if not NAME_PATTERN.fullmatch(name):
        raise BadOption(f"invalid container name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _command(image_config, command: list[str] | None) -> list[str]:
    entrypoint = list(image_config.entrypoint or [])
    args = entrypoint + (list(command) if command else list(image_config.cmd or []))
    if not args:
        raise BadOption("no command given and the image has no Cmd: add one, e.g. `sh -c 'ls'`")
    return args


def build_spec(image: str, command: list[str] | None = None, *, name: str | None = None,
               persistent: bool = False, memory: str | int | None = None,
               cpus: str | float | None = None, pids_limit: int | None = None,
               hostname: str | None = None, env: list[str] = (), workdir: str | None = None,
               user: str | None = None, volumes: list[str] = (), net: str = "none",
               publish: list[str] = (), chroot: bool = False, security_opt: list[str] = (),
               store=None) -> ContainerSpec:
    """Resolve an image and options into a spec (pulling nothing; the image must be local).

    `security_opt` takes Docker's ``seccomp=unconfined`` and ``seccomp=FILE.json``; a FILE
    is read here, and its text goes in the spec (`contained.runtime.seccomp.from_security_options`).
    """
    from contained.images.store import Store  # the store imports the layer unpacker: load on use
    from contained.runtime import seccomp

    if net not in ("none", "host", "bridge"):
        raise BadOption(f"invalid --net {net!r}: use none, host or bridge")
    if publish and net != "bridge":
        raise BadOption("-p/--publish needs --net bridge")
    seccomp_profile = seccomp.from_security_options(security_opt)
    store = store or Store()
    resolved = store.image(image)
    config = resolved.config
    container_id = secrets.token_hex(32)
    working_dir = workdir or config.working_dir or "/"
    if not working_dir.startswith("/"):
        raise BadOption(f"working directory {working_dir!r} must be an absolute path")
    return ContainerSpec(
        id=container_id,
        name=check_name(name) if name is not None else _generated_name(),
        image=resolved.name,
        directory=str(state.containers_dir() / container_id),
        lowers=[str(p) for p in store.layer_dirs(resolved)],
        args=_command(config, command),
        env=process.merge_environment(config.env or [], list(env)),
        working_dir=working_dir,
        user=user if user is not None else (config.user or ""),
        hostname=hostname or container_id[:12],
        memory=_memory(memory),
        cpus=_cpus(cpus),
        pids_limit=_pids_limit(pids_limit),
        volumes=[parse_volume(v) for v in volumes],
        net=net,
        publish=list(publish),
        chroot=chroot,
        persistent=persistent,
        remove=not persistent,
        rootless=os.geteuid() != 0,
        seccomp=seccomp_profile,
    )


def _memory(value) -> int | None:
    if value is None or value == "":
        return None
    return cgroups.parse_memory(str(value))  # bytes as a number are checked the same way


def _cpus(value) -> float | None:
    if value is None or value == "":
        return None
    return cgroups.parse_cpus(str(value))


#: ``--pids-limit -1``: no process limit (Docker's and podman's spelling)
UNLIMITED_PIDS = -1


def _pids(value) -> int | None:
    """The --pids-limit asked for: a count, `UNLIMITED_PIDS`, or None when none was given."""
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count != UNLIMITED_PIDS and not 1 <= count <= cgroups.MAX_PIDS:
        raise BadOption(f"invalid --pids-limit {value!r}: use a whole number of processes from "
                        f"1 to {cgroups.MAX_PIDS}, or -1 for no limit")
    return count


def _pids_limit(value) -> int | None:
    """The spec's process limit (None: unlimited). Without --pids-limit, podman's default
    (`cgroups.DEFAULT_PIDS`) wherever this process can give the container a pids cgroup:
    always as root, rootless only where the tree was delegated (elsewhere a rootless container
    has no cgroup at all, and must keep running without one)."""
    count = _pids(value)
    if count is None:
        return cgroups.DEFAULT_PIDS if cgroups.can_limit("pids") else None
    return None if count == UNLIMITED_PIDS else count


_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift",
               "tidy", "vivid", "witty", "bold", "clever", "gentle", "jolly")
_SCIENTISTS = ("hopper", "lovelace", "turing", "ritchie", "thompson", "torvalds", "liskov",
               "knuth", "dijkstra", "hamilton", "curie", "noether", "shannon", "babbage")


def _generated_name() -> str:
    return (f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SCIENTISTS)}_"
            f"{secrets.token_hex(2)}")


# ---------------------------------------------------------------------------------------------
# State on disk

@contextmanager
def _locked():
    """Serialise name allocation, removal and gc across every process on the machine."""
    directory = state.containers_dir()
    directory.mkdir(parents=True, exist_ok=True)
    home.ensure_home(directory.parent)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cgroup_name(container_id: str) -> str:
    """Named after the container, or a spare's that the runner had made ahead of time."""
    return (state.read(container_id) or {}).get("cgroup") or container_id


def cgroup_of(container_id: str) -> cgroups.Cgroup | None:
    """A container's cgroup, if it has one now."""
    return cgroups.Cgroup.open(_cgroup_name(container_id))


def _live_spares() -> set[str]:
    """Cgroups that runners made ahead of time and still hold."""
    return {entry.name for parent in cgroups.parent_paths() if parent.exists()
            for entry in parent.iterdir() if runner.is_live_spare(entry.name)}


def _container_from_state(data: dict) -> Container:
    spec = ContainerSpec.from_dict(data["spec"])
    if spec.persistent:
        running = procfs.alive(data.get("init_pid"), data.get("init_start_time"))
    else:
        running = any(procfs.alive(data.get(f"{who}_pid"), data.get(f"{who}_start_time"))
                      for who in ("owner", "runner", "init"))
    return Container(id=spec.id, name=spec.name, image=spec.image, command=spec.args,
                     created=data.get("created", 0.0), persistent=spec.persistent,
                     running=running, init_pid=data.get("init_pid"), spec=spec)


def containers() -> list[Container]:
    """Every container with state on disk, newest first (`contained ps -a`)."""
    directory = state.containers_dir()
    if not directory.exists():
        return []
    found = []
    for entry in directory.iterdir():
        if entry.is_dir() and (data := state.read(entry.name)) is not None:
            found.append(_container_from_state(data))
    return sorted(found, key=lambda c: c.created, reverse=True)


def writable_size(item: Container) -> int:
    """Bytes on disk of what a container wrote: its upper directory (``du -s --one-file-system
    upper/``). Symlinks count as themselves, never followed (an image may point one at /); a
    hard-linked file counts once; nothing mounted there is entered."""
    top = Path(item.spec.directory) / "upper"
    try:
        device = top.lstat().st_dev
    except OSError:
        return 0
    seen, total, pending = set(), 0, [top]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue  # removed meanwhile (the container is writing): count what is left
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device or (info.st_ino in seen):
                continue
            seen.add(info.st_ino)
            total += info.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return total


def get(name_or_id: str) -> Container:
    """A container by name, full id or unique id prefix."""
    listed = containers()
    matches = [c for c in listed if c.name == name_or_id]
    if not matches and len(name_or_id) >= 3:
        matches = [c for c in listed if c.id.startswith(name_or_id)]
    if len(matches) != 1:
        if matches:
            raise ContainerNotFound(f"{name_or_id!r} matches {len(matches)} containers: "
                                    "use more of the id")
        raise ContainerNotFound(f"no container named {name_or_id!r}; `contained ps -a` "
                                "lists them")
    return matches[0]


def _reserve(spec: ContainerSpec) -> None:
    """Claim a named container's name and record it. (A throwaway one with a generated name
    needs no claim: its runner records it, while the caller waits anyway.)"""
    with _locked():
        for other in containers():
            if other.name == spec.name and (other.persistent or other.running):
                raise NameInUse(f"the name {spec.name!r} is already in use by container "
                                f"{other.id[:12]}: remove it (`contained rm -f {spec.name}`) "
                                "or choose another name")
        try:
            state.write_state(spec, **state.owner())
        except state.StateNotWritten:
            _remove_files(spec)  # the directory it made, so nothing half-made is left
            raise


# ---------------------------------------------------------------------------------------------
# Talking to the runner

RUNNER_ENVIRONMENT = ("PATH", "LANG")


def runner_environment() -> dict[str, str]:
    """All the runner (and so every PID 1) gets of the caller's environment: PATH, LANG and
    contained's own settings, with the home resolved here (it may depend on HOME)."""
    kept = {key: value for key, value in os.environ.items()
            if key in RUNNER_ENVIRONMENT or key.startswith("CONTAINED_")}
    return kept | {"CONTAINED_HOME": str(home.home_path())}


def _forget_the_caller(fds: list[int]) -> None:
    """In the CLI's forked worker, before any PID 1 exists: only the request's descriptors
    (the relay's pipe ends, never the caller's own: `contained.runtime.relay`) and the runner's
    environment stay. PID 1 is non-dumpable too, so /proc/1/environ shows nothing anyway."""
    environment = runner_environment()
    os.environ.clear()
    os.environ.update(environment)
    init.close_fds_except(fds)


class Runner:
    """The way to the runner: a helper process (kernels, long-lived programs) or a fork (CLI).

    ``Runner.shared()`` starts the runner (``python -I``, from ``/``, with `runner_environment`:
    see `contained.isolated`) once per process, with plain subprocess (no Python runs between fork
    and exec in the caller), and reuses it.
    ``Runner(in_process=True)`` forks the request's worker directly; only a single-threaded
    program such as the CLI may use it.
    """

    _shared: "Runner | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, in_process: bool = False):
        self.in_process = in_process
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._spares: list[socket.socket] = []

    @classmethod
    def shared(cls) -> "Runner":
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive():
                cls._shared = cls()
            return cls._shared

    @classmethod
    def close_shared(cls) -> None:
        """Stop this process's shared runner (its throwaway containers are killed)."""
        with cls._shared_lock:
            if cls._shared is not None:
                cls._shared.close()
                cls._shared = None

    def alive(self) -> bool:
        return self.in_process or (self._process is not None and self._process.poll() is None)

    def _take_spare(self) -> socket.socket | None:
        """A spare the runner handed over (see `runner.serve`), if one has arrived."""
        control = self._start()
        while select.select([control], [], [], 0)[0]:
            received = wire.receive_request(control)
            if received is None:
                break
            message, fds = received
            if message.get("op") == "spare" and fds:
                self._spares.append(socket.socket(fileno=fds[0]))
        # The oldest first: it had the most time to get ready.
        return self._spares.pop(0) if self._spares else None

    def _start(self) -> socket.socket:
        if self._control is None or not self.alive():
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._process = subprocess.Popen(
                [*isolated.python_argv("contained.runtime.runner"), "--serve",
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
                # Nothing of the caller's but what it must have: a root helper must not run
                # a module planted in the caller's directory, nor read its secrets.
                env=runner_environment(), cwd="/",
                # Its own session: the kernel's interrupt (SIGINT) must not reach it.
                start_new_session=True)
            theirs.close()
            self._control = ours
        return self._control

    def close(self) -> None:
        """Stop the helper: its running containers see the socket close and are killed."""
        for spare in self._spares:
            spare.close()
        self._spares = []
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def submit(self, op: str, spec_json: str, stdio: tuple[int, int, int],
               explain_fd: int | None = None, detached: bool = False,
               owner: dict | None = None) -> "Request":
        """Send one request; the returned `Request` reports its progress and result.

        With `owner` (`state.owner()`), the runner records the container (state.json).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"op": op, "spec": spec_json, "explain": explain_fd is not None,
                   "detached": detached, "owner": owner}
        fds = [*stdio, explain_fd if explain_fd is not None else stdio[2], theirs.fileno()]
        worker = None
        try:
            if self.in_process:
                worker = os.fork()
                if worker == 0:
                    ours.close()
                    _forget_the_caller(fds)
                    os._exit(runner.handle(request, fds))
            else:
                with self._lock:
                    self._send(request, fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return Request(ours, worker)

    def _send(self, request: dict, fds: list[int]) -> None:
        """To the waiting spare when it fits (one hop less), else to the runner itself."""
        if runner.suits_spare(request) and (spare := self._take_spare()) is not None:
            try:
                wire.send_request(spare, request, fds)
                wire.send_request(self._start(), {"op": "want-spare"}, [])
                return
            except OSError:
                pass  # that spare died: the runner forks one on the spot instead
            finally:
                spare.close()
        wire.send_request(self._start(), request, fds)

    def request(self, op: str, spec_json: str, stdio: tuple[int, int, int],
                explain_fd: int | None = None, detached: bool = False) -> dict:
        """Send one request and wait for its result; an interrupt kills what it started."""
        return self.submit(op, spec_json, stdio, explain_fd, detached).wait()


class Request:
    """One request in flight: select() on it, `poll()` for the result, `kill()` to stop it.

    The runner writes JSON lines: "started" (with the pid of the container's process), then
    "exit" (status, oom, message) or "error". Closing the socket, or sending "kill", makes the
    runner kill what it started; the result still follows.
    """

    def __init__(self, sock: socket.socket, worker: int | None = None):
        self._sock = sock
        self._worker = worker
        self._buffer = b""
        self.started: dict | None = None
        self.result: dict | None = None
        self.terminal: int | None = None  # -t: the pty's master, passed before "started"

    def fileno(self) -> int:
        return self._sock.fileno()

    def kill(self) -> None:
        """Ask the runner to kill the container's command (SIGKILL); the result follows."""
        try:
            self._sock.sendall(b"kill\n")
        except OSError:
            pass

    def poll(self) -> dict | None:
        """Read what is available without blocking; the final message once there is one."""
        self._sock.setblocking(False)
        try:
            self._read()
        except BlockingIOError:
            pass
        finally:
            if self._sock.fileno() != -1:
                self._sock.setblocking(True)
        if self.result is not None:
            self.close()
        return self.result

    def wait_started(self) -> None:
        """Block until the command runs (or failed to start, which is raised)."""
        while self.started is None and self.result is None:
            self._read()
        if self.result is not None:
            self.outcome()

    def wait(self, settle: bool = False) -> dict:
        """Block until the result; Ctrl-C kills the command, waits for its end, re-raises.

        The result arrives before the runner has torn the container down (unmounting is slow
        and nobody needs to wait for it); ``settle=True`` waits for the teardown too.
        """
        interrupted = False
        while self.result is None:
            try:
                self._read()
            except KeyboardInterrupt:
                # Keep waiting after the kill so nothing is left half-cleaned.
                interrupted = True
                self.kill()
        if settle:
            self.settle()
        self.close()
        if interrupted:
            raise KeyboardInterrupt
        return self.outcome()

    def settle(self) -> None:
        """Wait until the runner has finished this request (its socket closes)."""
        if self._sock.fileno() == -1:
            return
        while self._sock.recv(65536):
            pass
        if self._worker:
            os.waitpid(self._worker, 0)
            self._worker = None

    def close(self) -> None:
        self._sock.close()
        if self._worker:
            # An in-process worker (the CLI's) may still be tearing down: don't wait for it.
            if os.waitpid(self._worker, os.WNOHANG)[0]:
                self._worker = None

    def outcome(self) -> dict:
        """The final message; a runner error is raised as the ContainedError it was."""
        if self.result["event"] == "error":
            raise _error_from(self.result)
        return self.result

    def _read(self) -> None:
        chunk, fds = wire.receive_messages(self._sock)
        for fd in fds:
            os.set_inheritable(fd, False)
            if self.terminal is None:
                self.terminal = fd
            else:
                os.close(fd)
        if not chunk:
            self.result = {"event": "error", "type": "RunnerDied",
                           "message": "the runner stopped without a result; run `contained gc`"}
            return
        self._buffer += chunk
        while b"\n" in self._buffer and self.result is None:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if message["event"] == "started":
                self.started = message
            elif message["event"] == "tty":
                pass  # its master came as a descriptor (above)
            else:
                self.result = message


def _error_from(message: dict) -> ContainedError:
    if message.get("type") == "CommandFailed":
        return CommandFailed(message.get("exit_status", 127), message["message"])
    error = ContainedError(message["message"])
    error.exit_status = message.get("exit_status", 125)
    return error


def _stdio(stdin, stdout, stderr) -> tuple[int, int, int]:
    return tuple(_fileno(stream, default) for stream, default in
                 ((stdin, 0), (stdout, 1), (stderr, 2)))


def _fileno(stream, default: int) -> int:
    if stream is None:
        return default
    if isinstance(stream, int):
        return stream
    return stream.fileno()


# ---------------------------------------------------------------------------------------------
# The operations

def dry_run(spec: ContainerSpec) -> list[str]:
    """The shell commands `run` would execute for this spec, without running anything."""
    return [step.explain() for step in runner.plan(spec)]


def run(image: str, command: list[str] | None = None, *, settle: bool = False,
        **options) -> RunResult:
    """Run a command in a new container and wait for it (``docker run``).

    Without `name` (or with ``remove=True``) the container is thrown away when the command
    ends. With a name it is kept: an init process holds its namespaces, and later `exec` calls
    run in the same filesystem, hostname and processes. `stdin`/`stdout`/`stderr` are files or
    descriptors (default: this process's); `explain` is a file or descriptor that receives each
    step's shell command as it runs (True: stderr). Other options are those of `build_spec`.
    It returns as soon as the command's status is known; the teardown (unmounting, removing
    the cgroup and files) goes on in the runner, unless ``settle=True`` waits for it too.
    """
    return start(image, command, **options).wait(settle=settle)


def start(image: str, command: list[str] | None = None, *, name: str | None = None,
          remove: bool | None = None, stdin=None, stdout=None, stderr=None, explain=None,
          runner_: Runner | None = None, store=None, tty: bool = False,
          tty_size: list[int] | None = None, **options) -> "Execution":
    """Like `run`, but return at once: the `Execution` can be polled, selected on, killed.

    With `tty` the command gets a new pty of the container's own (`tty_size`: [rows,
    columns]); its master is ``execution.request.terminal`` once started (the caller closes it).
    """
    persistent = name is not None and not remove
    spec = build_spec(image, command, name=name, persistent=persistent, store=store, **options)
    if persistent:
        create_from_spec(spec, explain=explain, runner_=runner_)
        return start_exec(spec.name, spec.args, stdin=stdin, stdout=stdout, stderr=stderr,
                          explain=explain, runner_=runner_, tty=tty, tty_size=tty_size)
    spec.tty, spec.tty_size = tty, list(tty_size) if tty and tty_size else None
    return start_spec(spec, stdin=stdin, stdout=stdout, stderr=stderr, explain=explain,
                      runner_=runner_, named=name is not None)


def run_spec(spec: ContainerSpec, **options) -> RunResult:
    """Run a throwaway container from a ready spec and wait for it."""
    return start_spec(spec, **options).wait()


def start_spec(spec: ContainerSpec, *, stdin=None, stdout=None, stderr=None, explain=None,
               runner_: Runner | None = None, named: bool = True) -> "Execution":
    if named:
        _reserve(spec)
    try:
        request = (runner_ or Runner.shared()).submit(
            "run", spec.to_json(), _stdio(stdin, stdout, stderr), _explain_fd(explain),
            owner=None if named else state.owner())
    except BaseException:
        _remove_files(spec)
        raise
    return Execution(request, spec)


class Execution:
    """A container command in flight (from `start` or `start_exec`).

    `fileno()` lets a caller select() on it next to the output pipes; `poll()` returns the
    `RunResult` once there is one (or None); `wait()` blocks; `kill()` ends the command.
    """

    def __init__(self, request: Request, spec: ContainerSpec, group=None):
        self.request = request
        self.spec = spec
        # For exec: PID 1 does not watch memory, so compare the cgroup's OOM count around it.
        self._group = group
        self._oom_before = group.oom_kills() if group is not None else 0

    def fileno(self) -> int:
        return self.request.fileno()

    def kill(self) -> None:
        self.request.kill()

    def poll(self) -> RunResult | None:
        return self._result() if self.request.poll() is not None else None

    def wait_started(self) -> None:
        self.request.wait_started()

    def wait(self, settle: bool = False) -> RunResult:
        """The result; ``settle=True`` also waits until the container is torn down."""
        try:
            self.request.wait(settle=settle)
        except ContainedError:
            if not self._pid_one_went():
                raise
        finally:
            self._clean_up()
        return self._result()

    def _pid_one_went(self) -> bool:
        """An exec talks to the container's PID 1: its going away means the container was
        stopped or removed (rm -f, stop), and the command was SIGKILLed with it. Nothing is
        left for gc to do."""
        return self.spec.persistent and (self.request.result or {}).get("type") == "RunnerDied"

    def _result(self) -> RunResult:
        self._clean_up()
        if self._pid_one_went():
            return RunResult(137, message=f"killed: container {self.spec.name} stopped while "
                             "the command ran", container=self.spec.name, id=self.spec.id)
        message = self.request.outcome()
        result = RunResult(message["status"], message.get("oom", False),
                           message.get("message"), self.spec.name, self.spec.id)
        if self._group is not None and self._group.oom_kills() > self._oom_before:
            result.status, result.oom = 137, True
            result.message = runner.oom_message(self.spec.memory)
        return result

    def _clean_up(self) -> None:
        # The runner removes a throwaway container; this catches a runner that died first.
        result = self.request.result
        if result is not None and result.get("type") == "RunnerDied" and self.spec.remove \
                and Path(self.spec.directory).exists():
            _remove_files(self.spec)


def _explain_fd(explain) -> int | None:
    if explain is None or explain is False:
        return None
    if explain is True:
        return 2
    return _fileno(explain, 2)


def create(image: str, command: list[str] | None = None, *, name: str | None = None,
           explain=None, runner_: Runner | None = None, store=None, **options) -> Container:
    """Start a named container whose PID 1 idles, holding its namespaces, until `stop`.

    Commands run in it with `exec_`. `command` is only recorded (``contained ps`` shows it).
    """
    spec = build_spec(image, command, name=name, persistent=True, store=store, **options)
    return create_from_spec(spec, explain=explain, runner_=runner_)


def create_from_spec(spec: ContainerSpec, *, explain=None, runner_: Runner | None = None
                     ) -> Container:
    _reserve(spec)
    try:
        message = (runner_ or Runner.shared()).request(
            "create", spec.to_json(), _null_stdio(), _explain_fd(explain))
    except BaseException:
        _remove_files(spec)
        raise
    try:
        state.write_state(spec, init_pid=message["init_pid"],
                          init_start_time=message["init_start_time"])
    except state.StateNotWritten:
        # Unrecorded, nothing could stop it later: stop it now.
        _terminate(message["init_pid"], 0)
        _remove_files(spec)
        raise
    return get(spec.id)


def _null_stdio() -> tuple[int, int, int]:
    # A named container's PID 1 must not hold the caller's pipes: give it /dev/null (one
    # descriptor per process, reused).
    global _NULL_FD
    if _NULL_FD is None:
        _NULL_FD = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return (_NULL_FD, _NULL_FD, _NULL_FD)


_NULL_FD: int | None = None


def exec_(name: str, command: list[str], **options) -> RunResult:
    """Run a command inside a running named container and wait for it (``docker exec``)."""
    return start_exec(name, command, **options).wait()


def start_exec(name: str, command: list[str], *, env: list[str] = (),
               workdir: str | None = None, user: str | None = None, stdin=None, stdout=None,
               stderr=None, explain=None, detach: bool = False,
               runner_: Runner | None = None, tty: bool = False,
               tty_size: list[int] | None = None) -> Execution:
    """Like `exec_`, but return at once with an `Execution` (`tty` as in `start`).

    The request goes straight to the container's PID 1 (its control socket), which forks the
    command inside every namespace and the cgroup; no runner is involved, and nothing forks
    here. With ``detach=True`` the command keeps running when the caller goes away.
    """
    container = get(name)
    if not container.running or not container.persistent:
        raise ContainerNotRunning(f"container {container.name} is not running: start a new one "
                                  f"with `contained run --name {container.name} ...` after "
                                  f"`contained rm {container.name}`")
    spec = container.spec
    if not command:
        raise BadOption("exec needs a command, e.g. ['sh', '-c', 'ls /']")
    working_dir = workdir or spec.working_dir
    if not working_dir.startswith("/"):
        raise BadOption(f"working directory {working_dir!r} must be an absolute path")
    if explain is not None and explain is not False:
        for step in runner.exec_steps(container.init_pid, spec, list(command), working_dir):
            os.write(_explain_fd(explain), f"+ {step.explain()}\n".encode())
    request = {"op": "exec", "detached": detach, "spec": {
        "args": list(command), "env": process.merge_environment(spec.env, list(env)),
        "working_dir": working_dir, "user": spec.user if user is None else user,
        "tty": tty, "tty_size": list(tty_size) if tty and tty_size else None}}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with init.short_path(Path(spec.directory) / "control.sock") as address:
            sock.connect(address)
        wire.send_request(sock, request, list(_stdio(stdin, stdout, stderr)))
    except OSError as error:
        sock.close()
        raise ContainerNotRunning(f"container {container.name} does not answer "
                                  f"({error.strerror}): `contained rm -f {container.name}` "
                                  "and run it again") from error
    group = cgroup_of(spec.id) if not spec.rootless else None
    return Execution(Request(sock), spec, group)


def stop(name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> Container:
    """SIGTERM to PID 1 (it passes it on), SIGKILL after `timeout` seconds (``docker stop``)."""
    container = get(name)
    data = state.read(container.id)
    if data is None:  # a throwaway one that finished meanwhile
        raise ContainerNotFound(f"container {name!r} is gone (it was a throwaway container)")
    pid = data.get("init_pid")
    if container.running and pid:
        _terminate(pid, timeout)
    group = cgroup_of(container.id)
    if group is not None:
        group.remove()
    if container.spec.net == "bridge":
        network.detach(container.name)
    return get(container.id)


def _terminate(pid: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if timeout > 0:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if _wait_pidfd(pidfd, timeout):
                return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        _wait_pidfd(pidfd, 5)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    import select

    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def remove(name: str, force: bool = False) -> None:
    """Delete a container's files and state (``docker rm``; -f stops it first)."""
    container = get(name)
    if container.running:
        if not force:
            raise ContainerRunning(f"container {container.name} is running: stop it first "
                                   f"(`contained stop {container.name}`) or use rm -f")
        stop(container.id, timeout=0)
    with _locked():
        _remove_files(container.spec)


def _remove_files(spec: ContainerSpec) -> None:
    group = cgroup_of(spec.id)
    if group is not None:
        group.remove()
    directory = Path(spec.directory)
    if directory.is_dir():
        layers.remove_tree(directory)


def _abandoned(directory: Path) -> bool:
    """A directory without state is being set up (its runner records it in a moment) or was
    left by a crash; only one that has not changed for a while is taken for a crash."""
    try:
        # ctime, not mtime: a spare's directory, made ahead, is renamed into place (which
        # changes only its ctime) a moment before it is recorded.
        return time.time() - directory.stat().st_ctime > SETUP_GRACE
    except FileNotFoundError:
        return False


def _own_cgroup_names(listed: list[Container]) -> set[str]:
    """The cgroup names this home can prove its own, for a parent other homes share: its
    containers' (recorded, or named after a directory of its own) and its spares' (named
    after the directory each spare makes ahead, ``.spare-PID-START``)."""
    names = {_cgroup_name(c.id) for c in listed}
    directory = state.containers_dir()
    if directory.exists():
        for entry in directory.iterdir():
            names.add(entry.name[1:] if entry.name.startswith(".spare-") else entry.name)
    return names


def gc() -> list[str]:
    """Clean what crashed runners left: dead throwaway containers and orphan cgroups.

    Idempotent. Stopped named containers are kept (their files are the user's); `rm` them.
    A directory without a record is left alone for a minute (`SETUP_GRACE`): it may belong
    to a container whose runner is about to record it.
    """
    removed = []
    with _locked():
        listed = containers()
        ours = _own_cgroup_names(listed) if cgroups.parent_is_shared() else None
        for container in listed:
            if not (container.running or container.persistent):
                _remove_files(container.spec)
                removed.append(container.name)
        directory = state.containers_dir()
        if directory.exists():
            for entry in directory.iterdir():
                # Dot entries are the runners' own: .lock, .staging where spares build,
                # .spare-PID-START a spare's directory made ahead (see runner.Prepared).
                if entry.name.startswith(".spare-") and not runner.is_live_spare(entry.name[1:]):
                    layers.remove_tree(entry)
                elif entry.is_dir() and not entry.name.startswith(".") \
                        and state.read(entry.name) is None and _abandoned(entry):
                    layers.remove_tree(entry)  # half-created, no state
        running = [c for c in listed if c.running]
        keep = {_cgroup_name(c.id) for c in running} | _live_spares()
        removed += [f"cgroup {name}" for name in cgroups.gc(
            keep, ours=None if ours is None else ours.__contains__)]
        if network.lease_files():
            removed += [f"network {name}" for name in network.gc({c.name for c in running})]
    return removed
