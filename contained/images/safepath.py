"""Safe paths: resolving a path inside a container's root as if that root were ``/``.

Taught in notebook 07 ("Safety"). An image is untrusted data: its ``/etc/hosts`` may be a
symlink to ``/etc/shadow``, its WorkingDir may be ``../../..``, and a layer may plant
``etc -> /etc`` before writing ``etc/passwd``. Naively joining ``root / path`` and writing
follows those links *on the host*. The shell shows the trap::

    ln -s /etc/shadow root/etc/hosts
    echo "127.0.0.1 box" > root/etc/hosts        # overwrites the HOST's /etc/shadow
    chroot root sh -c 'echo ... > /etc/hosts'    # the same write, safely resolved in root

Here every path is walked one component at a time from a file descriptor of the root, never
following a symlink with the host's view of ``/``: an absolute link target restarts at the root,
``..`` stops at the root, and each step opens the next directory with ``O_NOFOLLOW`` relative to
the previous one, so a directory swapped for a symlink mid-walk fails instead of escaping.
Where the kernel has ``openat2(2)`` (Linux 5.6+), `open_in_root` lets it do the same walk with
``RESOLVE_IN_ROOT``.
"""

import errno
import os
import stat
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.records import record

#: Linux's own limit on symlinks followed in one lookup (MAXSYMLINKS).
MAX_SYMLINKS = 40

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ContainedError):
    """A path inside a container root cannot be resolved or used without leaving that root."""


# Tests turn this off to exercise the portable walk on kernels that have openat2. (openat2's
# number, 437, is the same on x86_64 and aarch64, the machines it has been tried on.)
use_openat2 = os.uname().machine in ("x86_64", "aarch64")


@record
class Resolved:
    """Where a walk ended: an O_PATH fd of the parent directory and the final name in it.

    `parent` is the parent's path relative to the root, symlinks resolved. `name` is "." when
    the path names a directory itself (the root, or a path ending in ``..``). The caller owns
    `parent_fd` (close it) unless it is None, which means the parent does not exist.
    """

    parent_fd: int | None
    parent: list[str]
    name: str

    def host_path(self, root: Path) -> Path:
        path = Path(root).joinpath(*self.parent)
        return path if self.name == "." else path / self.name

    def close(self) -> None:
        if self.parent_fd is not None:
            os.close(self.parent_fd)
            self.parent_fd = None


def split_path(path: str) -> list[str]:
    """Components of `path`, without empty ones and ``.``; ``..`` is kept for the walk."""
    return [part for part in str(path).split("/") if part not in ("", ".")]


def open_root(root: Path) -> int:
    """An O_PATH fd of the root directory itself (the root is trusted: it may be a symlink)."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def walk(root_fd: int, path: str | list[str], *, follow_last: bool = True,
         create_parents: bool = False, dir_mode: int = 0o755, missing_ok: bool = False,
         start: tuple[int, list[str]] | None = None, root_label: str = "root") -> Resolved:
    """Resolve `path` inside the root open as `root_fd`; the one implementation of the walk.

    Every directory component is opened with O_NOFOLLOW relative to the previous one; a symlink
    is read through its own fd and its target spliced into the remaining components (absolute
    targets restart at the root). ``..`` pops a component, never above the root, and reopens the
    shorter path from the root. Missing parents are created (`create_parents`) or, with
    `missing_ok`, resolved lexically from there on (nothing below a missing directory can be a
    symlink). The final component is followed only if `follow_last`.

    `start` = (fd, resolved components) begins the walk at an already-resolved directory, which
    is how the layer unpacker avoids re-walking the same parent for every file of a directory.
    """
    walker = _Walker(root_fd, path, start, root_label)
    try:
        while walker.pending:
            part = walker.pending.pop()
            if part == ".":
                continue
            is_last = not walker.pending
            if part == "..":
                walker.up()
                if is_last:
                    return walker.done(".")
                continue
            if is_last and (not follow_last or walker.virtual):
                return walker.done(part)
            if walker.virtual:
                walker.virtual.append(part)
                continue
            try:
                child = os.open(part, _PATH_FLAGS, dir_fd=walker.current)
            except FileNotFoundError:
                if is_last:
                    return walker.done(part)
                if not walker.missing(part, create_parents, dir_mode, missing_ok):
                    raise
                continue
            mode = os.fstat(child).st_mode
            if stat.S_ISLNK(mode):
                walker.splice_link(child)
            elif is_last:
                os.close(child)
                return walker.done(part)
            else:
                walker.enter(child, part, mode)
        return walker.done(".")
    except BaseException:
        walker.close()
        raise


class _Walker:
    """The state of one `walk`: the directory open so far (`current`, reached through `names`),
    the components still to resolve (`pending`, reversed), and `virtual` ones below a missing
    directory. `current` is -1 while it is being replaced, so a failure never closes it twice."""

    def __init__(self, root_fd: int, path: str | list[str],
                 start: tuple[int, list[str]] | None, root_label: str):
        self.root_fd, self.path, self.root_label = root_fd, path, root_label
        self.pending = list(reversed(split_path(path) if isinstance(path, str) else path))
        if start is None:
            self.current, self.names = os.dup(root_fd), []
        else:
            self.current, self.names = os.dup(start[0]), list(start[1])
        self.virtual: list[str] = []  # components below a missing directory (missing_ok only)
        self.links = 0

    def done(self, name: str) -> Resolved:
        return _done(self.current, self.names, self.virtual, name)

    def close(self) -> None:
        if self.current >= 0:
            os.close(self.current)

    def up(self) -> None:
        """``..``: pop a component, never above the root, and reopen the shorter path."""
        if self.virtual:
            self.virtual.pop()
        elif self.names:
            self.names.pop()
            os.close(self.current)
            self.current = -1
            self.current = _reopen(self.root_fd, self.names, self.root_label)

    def missing(self, part: str, create_parents: bool, dir_mode: int, missing_ok: bool) -> bool:
        """A missing directory component: create it (then walk it), or go on lexically below
        it; False if neither is allowed."""
        if create_parents:
            try:
                os.mkdir(part, dir_mode, dir_fd=self.current)
            except FileExistsError:
                pass  # someone else made it: walk it like any existing component
            self.pending.append(part)
            return True
        if missing_ok:
            self.virtual.append(part)
            return True
        return False

    def splice_link(self, link_fd: int) -> None:
        """Put a symlink's target in place of the link (absolute targets restart at the root)."""
        # Read the link we opened, not the name again: the name may have changed since.
        target = os.readlink("", dir_fd=link_fd)
        os.close(link_fd)
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise UnsafePath(
                f"too many levels of symlinks resolving {_show(self.path)} in {self.root_label}:"
                " the image has a symlink loop; fix or remove the link")
        if target.startswith("/"):
            os.close(self.current)
            self.current, self.names = -1, []
            self.current = os.dup(self.root_fd)
        self.pending.extend(reversed(split_path(target) or ["."]))

    def enter(self, child: int, part: str, mode: int) -> None:
        """Step into directory `part`, open as `child`; anything else is not a directory."""
        if not stat.S_ISDIR(mode):
            os.close(child)
            raise NotADirectoryError(
                errno.ENOTDIR,
                f"{'/'.join(self.names + [part])} is not a directory in {self.root_label}")
        os.close(self.current)
        self.current = child
        self.names.append(part)


def _done(current: int, names: list[str], virtual: list[str], name: str) -> Resolved:
    if virtual:
        os.close(current)
        return Resolved(None, names + virtual, name)
    return Resolved(current, names, name)


def _reopen(root_fd: int, names: list[str], root_label: str) -> int:
    """Reopen an already-resolved directory path from the root, refusing any symlink on it."""
    current = os.dup(root_fd)
    try:
        for part in names:
            child = os.open(part, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = child
        return current
    except OSError as err:
        os.close(current)
        raise UnsafePath(f"{'/'.join(names)} changed while being resolved in {root_label}"
                         f" ({err.strerror}): retry when nothing else modifies it") from None


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path that `path` names inside `root`, as if `root` were ``/``.

    Symlinks are followed inside the root, ``..`` stops at the root, and the result is always
    inside `root`, existing or not. Only for showing and for tools that take paths: to read or
    write, use the fd-based functions below (a path can be swapped after it was resolved).
    """
    root_fd = open_root(root)
    try:
        resolved = _walk_or_raise(root_fd, root, path, missing_ok=True)
        resolved.close()
        return resolved.host_path(root)
    finally:
        os.close(root_fd)


def open_in_root(root: Path, path: str, flags: int, mode: int = 0o644) -> int:
    """os.open() of `path` resolved inside `root`; the final symlink is not followed if
    O_NOFOLLOW is in `flags`. Raises the usual OSError (FileNotFoundError, ...) or UnsafePath.
    """
    root_fd = open_root(root)
    try:
        if use_openat2:
            fd = _openat2(root_fd, path, flags, mode)
            if fd is not None:
                return fd
        resolved = _walk_or_raise(root_fd, root, path, follow_last=not flags & os.O_NOFOLLOW)
        try:
            # O_NOFOLLOW: the final name was resolved above; if it became a symlink since, fail.
            return os.open(resolved.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=resolved.parent_fd)
        finally:
            resolved.close()
    finally:
        os.close(root_fd)


def write_in_root(root: Path, path: str, data: bytes, mode: int = 0o644) -> Path:
    """Create or replace the regular file `path` inside `root` (parents created) with `data`.

    A symlink is followed inside the root; a directory, device, fifo or socket there is an
    error (opened non-blocking, so a fifo can never hang us, and never written).
    """
    root_fd = open_root(root)
    try:
        resolved = _walk_or_raise(root_fd, root, path, create_parents=True)
        try:
            target = resolved.host_path(root)
            if resolved.name == ".":
                raise UnsafePath(f"{path} in {root} is a directory, not a file: remove it first")
            flags = (os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
            try:
                fd = os.open(resolved.name, flags, mode, dir_fd=resolved.parent_fd)
            except OSError as err:
                raise UnsafePath(f"cannot write {path} in {root} ({err.strerror}):"
                                 " it must be a regular file or not exist") from None
        finally:
            resolved.close()
        try:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind != stat.S_IFREG:
                raise UnsafePath(f"{path} in {root} is not a regular file ({_kind(kind)}):"
                                 " remove it from the image or choose another path")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return target
    finally:
        os.close(root_fd)


def mkdirs_in_root(root: Path, path: str, mode: int = 0o755) -> Path:
    """``mkdir -p`` of `path` inside `root`, following symlinks inside the root only."""
    try:
        return _mkdirs_in_root(root, path, mode)
    except OSError as err:
        # e.g. the image's symlink leads into /proc, where nothing can be made
        raise UnsafePath(f"cannot make the directory {path} in {root} ({err.strerror}):"
                         " the image's entries on that path are unusable; fix or remove them"
                         ) from None


def _mkdirs_in_root(root: Path, path: str, mode: int) -> Path:
    root_fd = open_root(root)
    try:
        resolved = _walk_or_raise(root_fd, root, path, create_parents=True, dir_mode=mode)
        try:
            if resolved.name != ".":
                try:
                    os.mkdir(resolved.name, mode, dir_fd=resolved.parent_fd)
                except FileExistsError:
                    st = os.stat(resolved.name, dir_fd=resolved.parent_fd,
                                 follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        raise UnsafePath(f"{path} in {root} exists and is not a directory:"
                                         " choose another path") from None
            return resolved.host_path(root)
        finally:
            resolved.close()
    finally:
        os.close(root_fd)


def symlink_in_root(root: Path, path: str, target: str) -> Path:
    """``ln -s TARGET PATH`` inside `root` (parents created), made relative to the resolved
    parent's fd: a parent that is a symlink out of the root is followed inside it. An existing
    entry of that name is an error (the caller makes links in a directory it just created)."""
    root_fd = open_root(root)
    try:
        resolved = _walk_or_raise(root_fd, root, path, follow_last=False, create_parents=True)
        try:
            if resolved.name == ".":
                raise UnsafePath(f"cannot make the link {path} in {root}: it names a directory")
            try:
                os.symlink(target, resolved.name, dir_fd=resolved.parent_fd)
            except OSError as err:
                raise UnsafePath(f"cannot make the link {path} in {root} ({err.strerror}):"
                                 " remove what the image has there") from None
            return resolved.host_path(root)
        finally:
            resolved.close()
    finally:
        os.close(root_fd)


def _walk_or_raise(root_fd: int, root: Path, path: str, **options) -> Resolved:
    try:
        return walk(root_fd, path, root_label=str(root), **options)
    except NotADirectoryError as err:
        raise UnsafePath(f"cannot resolve {path} in {root}: {err.strerror}") from None


def _openat2(root_fd: int, path: str, flags: int, mode: int) -> int | None:
    """openat2(RESOLVE_IN_ROOT); None if the kernel (or a seccomp filter) lacks it."""
    global use_openat2
    creating = flags & (os.O_CREAT | os.O_TMPFILE)
    try:
        return syscalls.openat2(root_fd, path, flags | os.O_CLOEXEC, mode if creating else 0,
                                syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)
    except OSError as error:
        err = error.errno
    if err in (errno.ENOSYS, errno.EPERM):
        use_openat2 = False
        return None
    if err == errno.ELOOP and not flags & os.O_NOFOLLOW:
        raise UnsafePath(f"too many levels of symlinks resolving {path} in the root:"
                         " the image has a symlink loop; fix or remove the link")
    raise OSError(err, os.strerror(err), path)


def _show(path: str | list[str]) -> str:
    return path if isinstance(path, str) else "/".join(path)


def _kind(fmt: int) -> str:
    return {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a fifo",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFSOCK: "a socket"}.get(fmt, "not a regular file")
