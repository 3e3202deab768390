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

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from contained import filelock, home
from contained.errors import ContainedError, ContainerNotRunning
from contained.images.trees import remove_tree
from contained.runtime import client, state
from contained.runtime.client import Execution, Runner, RunResult
from contained.runtime.listing import Container, containers
from contained.runtime.spec import ContainerSpec
from contained.runtime.specs import BadOption, build_spec

# Re-exported on purpose: this module is the API (the CLI, the magics, the notebooks and the
# tests import these from here), while the spec building lives in `specs`, the runner's
# client in `client` and the exit statuses in `status`.
from contained.runtime.client import runner_environment  # noqa: F401  isort: skip
from contained.runtime.specs import (  # noqa: F401  isort: skip
    CHROOT_WARNING,
    UNLIMITED_PIDS,
    _cpus,
    _memory,
    _pids,
    _pids_limit,
    check_name,
    parse_volume,
)
from contained.runtime.status import CommandFailed  # noqa: F401  isort: skip

DEFAULT_STOP_TIMEOUT = 10.0
SETUP_GRACE = 60.0  # seconds a container directory may exist before it is recorded


class ContainerNotFound(ContainedError):
    """No container has that name or id."""


class NameInUse(ContainedError):
    """A container with that name already exists."""


class ContainerRunning(ContainedError):
    """The operation needs a stopped container."""


# ---------------------------------------------------------------------------------------------
# State on disk

@contextmanager
def _locked():
    """Serialise name allocation, removal and gc across every process on the machine."""
    directory = state.containers_dir()
    directory.mkdir(parents=True, exist_ok=True)
    home.ensure_home(directory.parent)
    with filelock.locked(directory / ".lock", mode=0o644):
        yield


def cgroup_of(container_id: str) -> "cgroups.Cgroup | None":  # noqa: F821
    """A container's cgroup, if it has one now."""
    # Imported where used (here and below): `run --rm` needs none of them in this process.
    from contained.runtime import cgroups

    return cgroups.Cgroup.open(state.cgroup_name(container_id))


def _live_spares() -> set[str]:
    """Cgroups that runners made ahead of time and still hold."""
    from contained.runtime import cgroups, spares

    return {entry.name for parent in cgroups.parent_paths() if parent.exists()
            for entry in parent.iterdir() if spares.is_live_spare(entry.name)}


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
# The operations

def dry_run(spec: ContainerSpec) -> list[str]:
    """The shell commands `run` would execute for this spec, without running anything."""
    from contained.runtime import steps

    return [step.explain() for step in steps.build(spec).steps()]


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


def start_spec(spec: ContainerSpec, *, stdin=None, stdout=None, stderr=None, explain=None,
               runner_: Runner | None = None, named: bool = True) -> "Execution":
    if named:
        _reserve(spec)
    try:
        request = (runner_ or Runner.shared()).submit(
            "run", spec.to_json(), client.stdio_fds(stdin, stdout, stderr),
            client.explain_fd(explain),
            owner=None if named else state.owner())
    except BaseException:
        _remove_files(spec)
        raise
    return Execution(request, spec, remove_files=_remove_files)


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
        created = (runner_ or Runner.shared()).request(
            "create", spec.to_json(), _null_stdio(), client.explain_fd(explain))
    except BaseException:
        _remove_files(spec)
        raise
    try:
        state.write_state(spec, init_pid=created.pid, init_start_time=created.start_time)
    except state.StateNotWritten:
        # Unrecorded, nothing could stop it later: stop it now.
        _terminate(created.pid, 0)
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


def run_detached(image: str, command: list[str] | None, *, name: str | None, explain=None,
                 runner_: Runner | None = None, **spec_options) -> Container:
    """``run -d``: create a kept container and start `command` in it with nothing attached
    (/dev/null in, the container's log out); return the container at once."""
    created = create(image, command, name=name, explain=explain, runner_=runner_,
                     **spec_options)
    if command:
        exec_detached(created.name, command, runner_=runner_)
    return created


def exec_detached(name: str, command: list[str], **exec_options) -> None:
    """``exec -d``: start `command` with /dev/null in and the container's log out; return
    once it runs."""
    with open(Path(get(name).spec.directory) / "log", "ab") as log:
        start_exec(name, command, stdin=_null_stdio()[0], stdout=log, stderr=log,
                   detach=True, **exec_options).wait_started()


def exec_(name: str, command: list[str], **options) -> RunResult:
    """Run a command inside a running named container and wait for it (``docker exec``)."""
    return start_exec(name, command, **options).wait()


def start_exec(name: str, command: list[str], *, env: list[str] = (),
               workdir: str | None = None, user: str | None = None, stdin=None, stdout=None,
               stderr=None, explain=None, detach: bool = False,
               runner_: Runner | None = None, tty: bool = False,
               tty_size: list[int] | None = None) -> Execution:
    """Like `exec_`, but return at once with an `Execution` (`tty` as in `start`).

    The container's PID 1 starts the command itself (`contained.runtime.served`); with
    ``-t`` or ``--explain``, or where PID 1 does not serve, the runner (its worker, or the
    CLI's own fork) joins the container's cgroup and namespaces and starts the command there
    (`contained.runtime.enter`), as ``nsenter`` would. With ``detach=True`` the command keeps
    running when the caller goes away.
    """
    from contained.runtime import process, served

    container = get(name)
    if not container.running or not container.persistent:
        raise ContainerNotRunning.named(container.name)
    spec = container.spec
    if not command:
        raise BadOption("exec needs a command, e.g. ['sh', '-c', 'ls /']")
    working_dir = workdir or spec.working_dir
    if not working_dir.startswith("/"):
        raise BadOption(f"working directory {working_dir!r} must be an absolute path")
    explaining = explain is not None and explain is not False
    if explaining:
        from contained.runtime import steps  # the runner's: loaded only to show its steps

        for step in steps.exec_steps(container.init_pid, spec, list(command), working_dir):
            os.write(client.explain_fd(explain), f"+ {step.explain()}\n".encode())
    environment = process.merge_environment(spec.env, list(env))
    user = spec.user if user is None else user
    stdio = client.stdio_fds(stdin, stdout, stderr)
    if not tty and not explaining:
        sent = served.start(spec, list(command), environment, working_dir, user, stdio, detach)
        if sent is not None:
            return Execution(sent, spec)
    request = json.dumps({
        # The directory, not only the id: a runner started for another home (the kernel's,
        # before CONTAINED_HOME changed) finds the record all the same.
        "container": spec.id, "directory": spec.directory, "args": list(command),
        "env": environment, "working_dir": working_dir, "user": user,
        "tty": tty, "tty_size": list(tty_size) if tty and tty_size else None})
    submitted = (runner_ or Runner.shared()).submit("exec", request, stdio, detached=detach)
    return Execution(submitted, spec)


def stop(name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> Container:
    """SIGTERM to PID 1 (it passes it on), SIGKILL after `timeout` seconds (``docker stop``)."""
    from contained import network

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
        network.unplug(container.name, container.spec.directory, container.spec.rootless)
    return get(container.id)


def _terminate(pid: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if timeout > 0:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if timeout <= 0 or not _wait_pidfd(pidfd, timeout):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            _wait_pidfd(pidfd, 5)
        _wait_reaped(pidfd)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    import select

    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def _wait_reaped(pidfd: int, timeout: float = 2.0) -> None:
    """A pidfd turns readable when PID 1 exits, while it is still a zombie: its parent (the
    runner, or the server for a spare) reaps it a moment later. `stop` returns once it has, so
    nothing of the container is left in the host's process table (``docker stop`` returns a
    stopped container). Signal 0 through the pidfd fails only once the pid is released; the
    pidfd names this process, so a reused pid never answers for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        signal.pidfd_send_signal(pidfd, 0)  # ProcessLookupError once reaped
        time.sleep(0.002)


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
        remove_tree(directory)


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
    after the directory each spare makes ahead, ``.spare-PID-START-N``)."""
    names = {state.cgroup_name(c.id) for c in listed}
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
    from contained import network
    from contained.images import buildcache
    from contained.images.store import Store
    from contained.runtime import cgroups, spares

    removed = []
    with _locked():
        # first, while the directories holding their records are all still there
        removed += [f"slirp4netns of {c[:12]}" for c in network.slirp.gc(state.containers_dir())]
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
                # .spare-PID-START-N a spare's directory made ahead (see spares.Prepared).
                if entry.name.startswith(".spare-") and not spares.is_live_spare(entry.name[1:]):
                    remove_tree(entry)
                elif entry.is_dir() and not entry.name.startswith(".") \
                        and state.read(entry.name) is None and _abandoned(entry):
                    remove_tree(entry)  # half-created, no state
        running = [c for c in listed if c.running]
        keep = {state.cgroup_name(c.id) for c in running} | _live_spares()
        removed += [f"cgroup {name}" for name in cgroups.gc(
            keep, ours=None if ours is None else ours.__contains__)]
        if network.lease_files():
            removed += [f"network {name}" for name in network.gc({c.name for c in running})]
        removed += _collect_layers(listed)
        removed += buildcache.collect(Store(home.home_path()))  # entries an rmi left dangling
    return removed


def _collect_layers(listed: list[Container]) -> list[str]:
    """Unpacked layers no image uses (`rmi` keeps them) and no recorded container stands on."""
    from contained.images.store import Store

    store, in_use = Store(home.home_path()), {p for c in listed for p in c.spec.lowers}
    try:
        unused = store.unused_layer_dirs() if store.layer_cache.is_dir() else []
    except ContainedError:
        return []  # an unreadable index: `contained images` says what is wrong; keep all
    for path in (path for path in unused if str(path) not in in_use):
        remove_tree(path)
    return [f"layer {p.parent.name}:{p.name[:12]}" for p in unused if str(p) not in in_use]
