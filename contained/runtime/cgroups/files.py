"""Reading and writing cgroup control files, making and removing group directories, and
signalling the processes a group lists: what cgroup v1 and v2 do alike.

Part of `contained.runtime.cgroups` (notebook 02). In the shell these are ``echo VALUE >
FILE``, ``cat FILE``, ``mkdir`` and ``rmdir`` in the cgroup tree, and ``kill -9 $(cat
cgroup.procs)``.
"""

import errno
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from contained.errors import ContainedError
from contained.records import record
from contained.runtime.plan import Step

#: how long rmdir is retried while the kernel reaps exits
RMDIR_TIMEOUT = 2.0
POLL = 0.005


class CgroupError(ContainedError):
    """Reading or writing a cgroup file, or making or removing a group, failed."""


class ControllerMissing(CgroupError):
    """A limit was asked for but this host has no such controller."""


class CgroupInUse(CgroupError):
    """A group with this name already holds processes (another container is running)."""


def hint(error: OSError) -> str:
    """What to do about a failed cgroup file operation, from its errno."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "run as root, or have root delegate a cgroup to you (`contained classroom delegate`)"
    if error.errno == errno.ENOENT:
        return "the controller is not enabled for this group; see `contained doctor`"
    if error.errno == errno.EBUSY:
        return "the group holds processes or child groups; stop them first"
    if error.errno in (errno.EINVAL, errno.ERANGE):
        return "the kernel rejected the value; check the limit"
    if error.errno == errno.ESRCH:
        return "the process has already exited"
    return "see `contained doctor`"


def write(path: Path, value: str) -> None:
    """``echo VALUE > PATH`` for a control file."""
    # os.open without O_CREAT: a missing control file is an error, never a new regular file
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise CgroupError(
            f"cannot write {value!r} to {path}: {error.strerror} — {hint(error)}"
        ) from error


def write_step(path: Path, value: str, why: str) -> Step:
    """The step that writes `value` to the control file `path`, shown as the shell does it."""
    shell_value = f'"{value}"' if " " in value else value
    return Step(f"echo {shell_value} > {path}", why, partial(write, path, value))


def write_if_present(path: Path, value: str) -> None:
    """Write a control file that only some configurations have."""
    # memory.swap.max exists only with swap accounting; without it there is nothing to close
    if path.exists():
        write(path, value)


def read_optional(path: Path) -> str | None:
    """A file that only some kernels or configurations have (memory.peak, memsw, ...)."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise CgroupError(f"cannot read {path}: {error.strerror} — {hint(error)}") from error


def keyed(text: str | None, key: str) -> int | None:
    """The number after `key` in a "key value" per line file (memory.events, cpu.stat, ...)."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def procs(path: Path) -> set[int]:
    """The pids a cgroup.procs file lists (none if it is gone)."""
    text = read_optional(path)
    return {int(pid) for pid in text.split()} if text else set()


def mkdir_parent(path: Path) -> None:
    """``mkdir -p`` for the parent every container's group lives under."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CgroupError(f"cannot create {path}: {error.strerror} — {hint(error)}") from error


def make_group(path: Path, name: str, make_parent=mkdir_parent) -> None:
    """mkdir the group; a crash leftover with the same name is replaced, not reused.

    A missing parent is made — not yet made (v1 trees have no step of their own for it), or
    removed meanwhile by `gc` (it removes a parent left empty); in v2, `make_parent` also
    passes the controllers on to it.
    """
    for attempt in (1, 2, 3):
        try:
            path.mkdir()
            return
        except FileExistsError:
            break
        except FileNotFoundError:
            if attempt == 3:
                raise CgroupError(f"cannot create {path}: its parent keeps vanishing — is "
                                  "`contained gc` running in a loop?") from None
            make_parent(path.parent)
        except OSError as error:
            raise CgroupError(
                f"cannot create {path}: {error.strerror} — {hint(error)}") from error
    pids = procs(path / "cgroup.procs")
    if pids:
        raise CgroupInUse(
            f"cgroup {path} already holds processes {sorted(pids)}: a container named {name} "
            "is running; stop it or pick another name"
        )
    # an old group keeps its OOM counter and memory peak: recreate it so ours start at zero
    rmdir(path)
    make_group(path, name)


def rmdir(path: Path) -> None:
    """rmdir, retried while the kernel finishes tearing down exited processes (EBUSY)."""
    deadline = time.monotonic() + RMDIR_TIMEOUT
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(
                    f"cannot remove {path}: {error.strerror} — {hint(error)}"
                ) from error
        time.sleep(POLL)


def kill_each(pids: set[int]) -> None:
    """SIGKILL each of `pids`, one by one; one already gone is fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_frozen(control: Path, freeze: str, thaw: str, is_frozen: Callable[[], bool],
                pids: Callable[[], set[int]]) -> None:
    """Freeze the group through `control`, SIGKILL each of its `pids()`, then thaw it."""
    # frozen processes cannot fork, so the list of pids stays complete while we kill it
    write(control, freeze)
    try:
        deadline = time.monotonic() + 1.0
        while not is_frozen() and time.monotonic() < deadline:
            time.sleep(POLL)
        kill_each(pids())
    finally:
        # a SIGKILLed process only dies once it runs again
        write(control, thaw)


@record(frozen=True)
class Stopper:
    """How one tree kills every process of a group at once: the shell, and one attempt."""

    shell: str
    kill_once: Callable[[], None]
