"""Extracting a layer tar one entry at a time, never leaving the destination.

Taught in notebook 07 ("Safety"). The tutorial's step trusts every name, link and device::

    gzip -dc blobs/sha256/<layer> | tar -x -C lower

`TarExtractor.add` creates one entry, as umoci's ``tar_extract.go`` does, trusting nothing:

- Nothing is written, changed, linked or deleted outside the destination. Names with ``..`` are
  refused; leading ``/`` is dropped (as tar does). Every parent directory is resolved by
  `safepath.walk` as if the destination were ``/`` (``etc -> /etc`` planted by a layer leads to
  ``DEST/etc``), and the final component is never followed: it is unlinked (a directory:
  fd-based rmtree) and created fresh with O_EXCL/O_NOFOLLOW. Hardlink sources are resolved the
  same way and must already exist inside the destination.
- Devices: only char null, zero, full, random, urandom and tty (1:3, 1:5, 1:7, 1:8, 1:9, 5:0),
  only as root; any other device, an overlayfs-style 0:0 whiteout device included, is skipped
  with a warning in the `LayerReport` (base images still ship /dev entries; skipping 0:0 keeps
  overlay-format layers from whiting out files with non-OCI semantics). Fifos are created;
  nothing from the image is ever executed.
- Xattrs: ``user.*`` (but not ``user.overlay.*``) and ``security.capability`` (file
  capabilities, e.g. ping's) are kept; ``trusted.*`` (overlayfs's own markers), ``user.overlay.*``
  and other ``security.*`` (SELinux/IMA labels are the host's policy) are dropped with a warning.
- As root, owners, modes (setuid included), xattrs and mtimes are restored, directories' last
  (after their children). Unprivileged, chown is skipped silently: rootless mode maps ids.
  Owners, mtimes and xattrs are `contained.images.entry_metadata`.
- Files stream in chunks (bounded memory); sparse members and 64 KiB zero runs become holes.
- Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) become overlayfs markers or deletions, the two
  forms `contained.images.unpack` describes; either way they only hide what *lower* layers
  made, whatever the order of the entries (``.wh..`` and ``.wh...``, which once let umoci
  delete the root itself, are refused).

Known limits: a parent that is a *symlink from a lower layer* (``lnk/file``) is written through
in apply form (as tar, umoci and containerd do) but shadowed by a directory in the overlay form;
xattrs on symlinks and special files are not restored.
"""

import os
import shutil
import stat
import tarfile
from pathlib import Path

from contained.errors import ContainedError
from contained.images import safepath
from contained.images.entry_metadata import EntryMetadata, creator_ids, ns
from contained.records import field, record

#: how many directories' fds the extractor keeps open to avoid re-walking their path
DIR_CACHE_SIZE = 512

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: char devices a container may need and that give no access to host hardware:
#: null, zero, full, random, urandom, tty
ALLOWED_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)}


class LayerError(ContainedError):
    """A layer cannot be verified or unpacked."""


class UnsafeLayerEntry(LayerError):
    """An entry tries to leave the destination (``..``, a whiteout of ``.``, a symlink loop)."""


class LayerEntryFailed(LayerError):
    """An entry cannot be created (missing hardlink target, parent is a file, disk full...)."""


@record
class LayerReport:
    """What one unpack did: entries seen, and what was skipped and why."""

    digest: str
    entries: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if len(self.warnings) < 100:
            self.warnings.append(message)
            # logging loaded here: the runtime imports the unpacker on every `contained` run
            import logging

            logging.getLogger(__name__).warning("layer %s: %s", self.digest, message)


class TarExtractor(EntryMetadata):
    """Creates entries inside `dest` without ever leaving it (see the module docstring).

    `add` takes one tar entry and the stream its bytes come from: anything with
    ``copy_to(fd, size)`` (True when it ended in a hole), in practice `unpack`'s verified
    stream."""

    def __init__(self, dest: Path, whiteouts: str, report: LayerReport):
        self.dest = dest
        self.apply = whiteouts == "apply"
        self.report = report
        self.label = report.digest
        self.privileged = os.geteuid() == 0
        self.opaque_xattr = "trusted.overlay.opaque" if self.privileged else "user.overlay.opaque"
        self.root_fd = safepath.open_root(dest)
        self.creator_ids = creator_ids(dest, self.root_fd, privileged=self.privileged,
                                       apply=self.apply)
        # Paths this layer created, and all their ancestors: whiteouts and opaque markers
        # must spare them (they only hide what lower layers made).
        self.written: set[str] = set()
        self.written_dirs: set[str] = {""}
        self.whited: set[str] = set()  # overlay form: names whited out by this layer
        self.dir_meta: dict[str, tarfile.TarInfo] = {}
        self._dirs: dict[str, tuple[int, list[str]]] = {}
        # fds dropped from the cache while an entry may still hold them; closed after it
        self._retired: list[int] = []
        self._warned: set[str] = set()

    def close(self) -> None:
        self._forget_dirs()
        self._release_dirs()
        os.close(self.root_fd)

    # names and parents

    def clean(self, name: str) -> str:
        parts = []
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise UnsafeLayerEntry(
                    f"layer {self.label} has an entry {name!r} with '..' in its path:"
                    " refusing to unpack it (the image is malformed or malicious)")
            parts.append(part)
        if name.startswith("/"):
            self.warn_once("absolute", f"removed leading '/' from entry names such as {name!r}")
        return "/".join(parts)

    def parent_fd(self, parent: str, *, create: bool = True) -> int | None:
        """An O_PATH fd of directory `parent` (an archive path), resolved inside dest."""
        cached = self._dirs.get(parent)
        if cached is not None:
            return cached[0]
        start, rest = None, parent
        prefix = parent
        while "/" in prefix:
            prefix = prefix.rpartition("/")[0]
            if prefix in self._dirs:
                start, rest = self._dirs[prefix], parent[len(prefix) + 1:]
                break
        try:
            resolved = safepath.walk(self.root_fd, rest, start=start, create_parents=create,
                                     root_label=f"layer {self.label}")
        except safepath.UnsafePath as err:
            raise UnsafeLayerEntry(f"{err}") from None
        except FileNotFoundError:
            if create:
                raise
            return None
        except NotADirectoryError as err:
            raise LayerEntryFailed(f"layer {self.label}: cannot unpack below {parent!r}:"
                                   f" {err.strerror}; the layer is malformed") from None
        if resolved.name != ".":
            # The walk stopped at the last component; open it as a directory too.
            resolved = self._enter(resolved, parent, create)
            if resolved is None:
                return None
        if len(self._dirs) >= DIR_CACHE_SIZE:
            self._forget_dirs()
        self._dirs[parent] = (resolved.parent_fd, resolved.parent)
        return resolved.parent_fd

    def _enter(self, resolved: safepath.Resolved, parent: str, create: bool):
        name, fd = resolved.name, resolved.parent_fd
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                # Open first: a tar lists a directory before its contents, so it is nearly
                # always there already.
                child = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, flags, dir_fd=fd)
        except FileNotFoundError:
            resolved.close()
            if create:
                raise
            return None
        except OSError as err:
            resolved.close()
            raise LayerEntryFailed(f"layer {self.label}: cannot unpack below {parent!r}:"
                                   f" {err.strerror}; the layer is malformed") from None
        resolved.close()
        return safepath.Resolved(child, resolved.parent + [name], ".")

    def _forget_dirs(self) -> None:
        self._retired.extend(fd for fd, _names in self._dirs.values())
        self._dirs.clear()

    def _release_dirs(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def mark_written(self, name: str) -> None:
        self.written.add(name)
        while "/" in name:
            name = name.rpartition("/")[0]
            if name in self.written_dirs:
                return
            self.written_dirs.add(name)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.report.warn(message)

    # entries

    def add(self, info: tarfile.TarInfo, stream) -> None:
        try:
            self._add(info, stream)
        except OSError as err:
            raise LayerEntryFailed(f"layer {self.label}: cannot create {info.name!r}"
                                   f" ({err.strerror}); check free space and permissions") from None
        finally:
            self._release_dirs()

    def _add(self, info: tarfile.TarInfo, stream) -> None:
        name = self.clean(info.name)
        parent, _, base = name.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base, name)
            return
        if not name:
            if info.isdir():
                self.prepare_dir_meta("", info)
            else:
                self.report.warn(f"skipped non-directory entry {info.name!r} for the root")
            return
        if not self.creatable(info, name):
            return
        self.mark_written(name)
        fd = self.parent_fd(parent)
        if info.isdir():
            self.make_dir(fd, base, name, info)
        elif info.islnk():
            self.make_hardlink(fd, base, name, info, _lstat_at(fd, base))
        elif info.isreg():
            self.make_file(fd, base, info, stream)
        elif info.issym():
            self.in_place(fd, base, lambda: os.symlink(info.linkname, base, dir_fd=fd))
            self.set_owner(fd, base, info)
            self.set_times(fd, base, info)
        else:
            self.make_special(fd, base, info)

    def in_place(self, fd: int, base: str, create, keep=None):
        """`create()` the entry (O_EXCL or the like, never following); if a name is in the
        way (a duplicate entry, a type change, a lower layer's file in the apply form), unlink
        it and create again: the last entry wins, as with tar. Creating first, not looking
        first, spares an lstat per entry, nearly always of nothing. What is in the way stays
        if `keep(its st_mode)` says so (a directory over a directory); None is returned then."""
        try:
            return create()
        except FileExistsError:
            existing = _lstat_at(fd, base)
            if existing is not None:
                if keep is not None and keep(existing.st_mode):
                    return None
                self.remove(fd, base, existing)
            return create()

    def creatable(self, info: tarfile.TarInfo, name: str) -> bool:
        """Refuse devices that reach hardware, and types tar itself does not know."""
        if info.ischr() or info.isblk():
            device = (info.devmajor, info.devminor)
            if info.ischr() and device == (0, 0):
                self.report.warn(f"skipped {name}: an overlayfs whiteout device inside a layer"
                                 " tar is not an OCI whiteout")
                return False
            if not info.ischr() or device not in ALLOWED_DEVICES:
                kind = "char" if info.ischr() else "block"
                self.report.warn(f"skipped {name}: {kind} device {device[0]}:{device[1]}"
                                 " would give access to host hardware")
                return False
            if not self.privileged:
                self.report.warn(f"skipped {name}: creating devices needs root")
                return False
            return True
        if info.isreg() or info.isdir() or info.issym() or info.islnk() or info.isfifo():
            return True
        self.report.warn(f"skipped {name}: unsupported tar entry type {info.type!r}")
        return False

    def make_dir(self, fd, base, name, info) -> None:
        # 0700 until the end of the layer: a read-only directory must stay writable to us
        # (unprivileged) while its children are unpacked. One already there is kept.
        self.in_place(fd, base, lambda: os.mkdir(base, 0o700, dir_fd=fd), keep=stat.S_ISDIR)
        self.set_owner(fd, base, info)
        self.prepare_dir_meta(name, info)
        if not self.apply and name in self.whited:
            self.set_opaque(name)

    def prepare_dir_meta(self, name: str, info: tarfile.TarInfo) -> None:
        self.dir_meta[name] = info
        if not name and self.privileged:
            os.chown(".", info.uid, info.gid, dir_fd=self.root_fd, follow_symlinks=False)

    def make_hardlink(self, fd, base, name, info, existing) -> None:
        source = self.clean(info.linkname)
        source_parent, _, source_base = source.rpartition("/")
        source_fd = self.parent_fd(source_parent, create=False)
        source_stat = None
        if source_fd is not None and source_base:
            source_stat = _lstat_at(source_fd, source_base)
        if source_stat is None:
            raise LayerEntryFailed(f"layer {self.label}: hardlink {name!r} points to"
                                   f" {info.linkname!r}, which is not unpacked before it;"
                                   " the layer is malformed")
        if stat.S_ISDIR(source_stat.st_mode):
            raise UnsafeLayerEntry(f"layer {self.label}: hardlink {name!r} points to the"
                                   f" directory {info.linkname!r}: refusing it")
        if existing is not None:
            if (existing.st_dev, existing.st_ino) == (source_stat.st_dev, source_stat.st_ino):
                return
            self.remove(fd, base, existing)
        # follow_symlinks=False: a link to a symlink links the symlink itself, never its target.
        os.link(source_base, base, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)

    def make_file(self, fd, base, info, stream) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = self.in_place(fd, base, lambda: os.open(base, flags, 0o600, dir_fd=fd))
        try:
            if info.sparse:
                for offset, length in info.sparse:
                    os.lseek(out, offset, os.SEEK_SET)
                    stream.copy_to(out, length)
                os.ftruncate(out, info.size)  # a trailing hole: seeking alone does not extend
            elif stream.copy_to(out, info.size):
                os.ftruncate(out, info.size)  # the same, after a trailing run of zeros
            if self.needs_owner(info):
                os.fchown(out, info.uid, info.gid)
            os.fchmod(out, info.mode & 0o7777)  # after chown, which clears setuid bits
            self.set_xattrs(out, info)
            os.utime(out, ns=(ns(info.mtime),) * 2)
        finally:
            os.close(out)

    def make_special(self, fd, base, info) -> None:
        if info.isfifo():
            self.in_place(fd, base, lambda: os.mkfifo(base, 0o600, dir_fd=fd))
        else:
            device = os.makedev(info.devmajor, info.devminor)
            self.in_place(fd, base, lambda: os.mknod(base, stat.S_IFCHR | 0o600, device,
                                                     dir_fd=fd))
        self.set_owner(fd, base, info)
        # follow_symlinks=False: never chmod through a name, even one we just made.
        os.chmod(base, info.mode & 0o7777, dir_fd=fd, follow_symlinks=False)
        self.set_times(fd, base, info)

    def remove(self, fd: int, base: str, existing: os.stat_result) -> None:
        """Unlink what is in the way (a type change or a duplicate: the last entry wins)."""
        if stat.S_ISDIR(existing.st_mode):
            # The fd-based rmtree never follows symlinks inside the tree.
            shutil.rmtree(base, dir_fd=fd)
        else:
            os.unlink(base, dir_fd=fd)
        if stat.S_ISDIR(existing.st_mode) or stat.S_ISLNK(existing.st_mode):
            self._forget_dirs()  # a cached directory may have been under (or behind) it

    def set_opaque(self, name: str) -> None:
        fd = self.open_dir(name)
        if fd is None:
            return
        try:
            os.setxattr(fd, self.opaque_xattr, b"y")
        except OSError as err:
            raise LayerEntryFailed(f"layer {self.label}: cannot mark {name or '/'!r} opaque"
                                   f" ({err.strerror}): the filesystem needs xattr support"
                                   ) from None
        finally:
            os.close(fd)

    def open_dir(self, name: str) -> int | None:
        """A readable fd of directory `name`, or None if it is gone or no longer a directory."""
        parent, _, base = name.rpartition("/")
        fd = self.parent_fd(parent, create=False)
        if fd is None:
            return None
        try:
            return os.open(base or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                           | os.O_CLOEXEC, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None

    def finish_layer(self) -> None:
        """Directories' modes and mtimes, deepest first, now that their children exist."""
        for name in sorted(self.dir_meta, key=lambda n: n.count("/") + bool(n), reverse=True):
            info = self.dir_meta[name]
            fd = self.open_dir(name)
            if fd is None:
                continue  # replaced or whited out later in the same layer
            try:
                self.set_xattrs(fd, info)
                os.fchmod(fd, info.mode & 0o7777)
                os.utime(fd, ns=(ns(info.mtime),) * 2)
            except (OSError, OverflowError, ValueError) as err:
                self.warn_once("dirmeta", f"cannot set mode/mtime of {name or '/'}: {err}")
            finally:
                os.close(fd)
                self._release_dirs()

    # whiteouts

    def whiteout(self, parent: str, base: str, name: str) -> None:
        if base == OPAQUE_MARKER:
            if self.apply:
                self.clear_lower(parent)
            else:
                self.parent_fd(parent)
                self.set_opaque(parent)
            return
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise UnsafeLayerEntry(f"layer {self.label} has a whiteout {name!r} that names"
                                   " its own directory: refusing it (malformed or malicious)")
        if target.startswith(WHITEOUT_PREFIX):
            self.report.warn(f"skipped {name}: reserved whiteout name (aufs metadata)")
            return
        path = f"{parent}/{target}" if parent else target
        if self.apply:
            self.delete_lower(parent, target, path)
        else:
            self.whited.add(path)
            fd = self.parent_fd(parent)
            existing = _lstat_at(fd, target)
            if existing is None:
                os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
            elif stat.S_ISDIR(existing.st_mode):
                # The same layer made this directory: keep it, but hide the lower one.
                self.set_opaque(path)

    def delete_lower(self, parent: str, target: str, path: str) -> None:
        if path in self.written_dirs:
            self.clear_lower(path)
            return
        if path in self.written:
            if path in self.dir_meta:
                self.clear_lower(path)
            return
        fd = self.parent_fd(parent, create=False)
        existing = None if fd is None else _lstat_at(fd, target)
        if existing is not None:
            self.remove(fd, target, existing)

    def clear_lower(self, directory: str) -> None:
        """Delete what lower layers put in `directory`, sparing what this layer wrote."""
        fd = self.open_dir(directory)
        if fd is None:
            return
        try:
            children = os.listdir(fd)
        finally:
            os.close(fd)
        for child in children:
            path = f"{directory}/{child}" if directory else child
            if path in self.written_dirs or path in self.dir_meta:
                self.clear_lower(path)
            elif path not in self.written:
                self.delete_lower(directory, child, path)


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    """What `name` in directory `fd` is, without following it; None if nothing is there."""
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
