"""Layers: turning a layer blob (a tar of changes) into a directory, safely and verified.

Taught in notebooks 04 ("Images") and 07 ("Safety"). The tutorial's step is::

    sha256sum blobs/sha256/<layer>                     # must equal the digest in the manifest
    gzip -dc blobs/sha256/<layer> | sha256sum          # must equal the config's diff_id
    gzip -dc blobs/sha256/<layer> | tar -x -C lower    # trusts every name, link and device

This module does the three in one streaming pass, for any image, without trusting it:

- The blob's size and digest, and the uncompressed stream's digest (the diff_id), are checked
  while extracting: a thread reads, hashes and decompresses (zlib releases the GIL, so this uses
  the second core) while the caller's thread parses the tar and writes files. A truncated gzip
  or tar stream, bytes after the end, or any mismatch is an error naming the blob. Extracting
  before the digests are known is safe because extraction itself trusts nothing: a blob that
  fails verification only ever wrote inside the destination, and `cached_layer` then throws
  the half-made directory away.
- Nothing is written, changed, linked or deleted outside the destination. Names with ``..`` are
  refused; leading ``/`` is dropped (as tar does). Every parent directory is resolved by
  `safepath.walk`, as if the destination were ``/`` (so ``etc -> /etc`` planted by a
  layer leads to ``DEST/etc``), and the final component is never followed: it is unlinked (or,
  for a directory, removed with an fd-based rmtree) and created fresh with O_EXCL/O_NOFOLLOW.
  Hardlink sources are resolved the same way and must already exist inside the destination.
- Device nodes: only null, zero, full, random, urandom and tty (char 1:3, 1:5, 1:7, 1:8, 1:9,
  5:0) are created, and only as root; any other device, including an overlayfs-style 0:0
  whiteout device inside the tar, is skipped with a warning in the `LayerReport` (real base
  images still ship /dev entries, so refusing them would make those images unusable; skipping
  the 0:0 device keeps overlay-format layers from whiting out files with non-OCI semantics).
  Fifos are created. Nothing from the image is ever executed.
- Xattrs: ``user.*`` (except ``user.overlay.*``) and ``security.capability`` (file capabilities,
  e.g. ping's) are kept on files and directories; ``trusted.*`` (overlayfs's own whiteout and
  opaque markers live there), ``user.overlay.*`` and every other ``security.*`` (SELinux/IMA
  labels belong to the host's policy) are dropped with a warning.
- As root, owners, modes (setuid included), xattrs and mtimes are restored, directories' last
  (after their children). Unprivileged, chown is skipped silently: rootless mode maps ids.
- Regular files stream in chunks (memory stays bounded whatever their size), and sparse
  members and runs of 64 KiB zero blocks become holes.

OCI whiteouts (``.wh.NAME`` deletes NAME from the layers below; ``.wh..wh..opq`` hides the
directory's lower contents) have two forms, one implementation:

- ``whiteouts="overlay"`` (per-layer directories, the overlay mount's lowerdirs): a whiteout
  becomes overlayfs's own marker, a 0:0 character device NAME, and an opaque marker becomes the
  directory xattr ``trusted.overlay.opaque=y`` (``user.overlay.opaque`` when unprivileged, for
  overlays mounted with ``userxattr``). `cached_layer` keeps these by diff_id, unpacked once
  for every container.
- ``whiteouts="apply"`` (`apply_layers`, ``contained unpack IMAGE DEST``): the named paths are
  deleted. As the image-spec says, whiteouts only hide what *lower* layers made: an entry the
  same layer adds survives its own layer's whiteout or opaque marker, whatever the order of the
  entries in the tar (umoci and containerd get the order wrong in some cases; ``.wh..`` and
  ``.wh...``, which once let umoci delete the root itself, are refused).

Known limits: a layer whose parent is a *symlink from a lower layer* (``lnk/file``) is written
through the symlink in apply form (tar, umoci and containerd do the same) but shadows it with a
directory in the overlay form; xattrs on symlinks and special files are not restored; in apply
form a failed layer leaves DEST partly written (use a fresh DEST).
"""

import errno
import fcntl
import hashlib
import importlib.util
import logging
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from contained.errors import ContainedError
from contained.images import oci, safepath

log = logging.getLogger(__name__)

#: bytes read from the blob at a time; decompressed chunks are at most OUTPUT_CHUNK
READ_CHUNK = 256 * 1024
OUTPUT_CHUNK = 1024 * 1024
#: decompressed chunks waiting for the tar parser; bounds memory to a few MiB
QUEUE_DEPTH = 4
#: an all-zero block of this size in a regular file becomes a hole
HOLE_BLOCK = 64 * 1024
#: tarfile reads pax headers and GNU long names whole: refuse absurd ones instead of
#: allocating them (a 4 GiB "long name" would otherwise be read into memory)
MAX_HEADER_READ = 16 * 1024 * 1024
#: how many directories' fds the extractor keeps open to avoid re-walking their path
DIR_CACHE_SIZE = 512

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: char devices a container may need and that give no access to host hardware
ALLOWED_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)}  # null zero full random
#                                                                   urandom tty
KEPT_XATTRS = ("user.",)
DROPPED_XATTRS = ("user.overlay.",)
KEPT_SECURITY_XATTRS = ("security.capability",)
XATTR_PAX_PREFIX = "SCHILY.xattr."

_GZIP_TYPES = {oci.MEDIA_TYPE_LAYER_GZIP, oci.MEDIA_TYPE_DOCKER_LAYER_GZIP}
_TAR_TYPES = {oci.MEDIA_TYPE_LAYER, "application/vnd.docker.image.rootfs.diff.tar"}
_ZSTD_TYPES = {oci.MEDIA_TYPE_LAYER_ZSTD}
_ZEROS = bytes(HOLE_BLOCK)


class LayerError(ContainedError):
    """A layer cannot be verified or unpacked."""


class UnsupportedLayerType(LayerError):
    """The layer's media type (or its compression) is not one we can unpack."""


class LayerSizeMismatch(LayerError, oci.BlobMismatch):
    """The blob's size differs from its descriptor's."""


class LayerDigestMismatch(LayerError, oci.BlobMismatch):
    """The blob's sha256 differs from its descriptor's digest."""


class LayerDiffIDMismatch(LayerError, oci.BlobMismatch):
    """The uncompressed tar's sha256 differs from the config's diff_id."""


class LayerTruncated(LayerError):
    """The compressed or the tar stream ends early."""


class LayerCorrupt(LayerError):
    """The compressed or tar stream is malformed, or has bytes after its end."""


class UnsafeLayerEntry(LayerError):
    """An entry tries to leave the destination (``..``, a whiteout of ``.``, a symlink loop)."""


class LayerEntryFailed(LayerError):
    """An entry cannot be created (missing hardlink target, parent is a file, disk full...)."""


@dataclass
class LayerReport:
    """What one unpack did: entries seen, file bytes written, and what was skipped and why."""

    digest: str
    entries: int = 0
    file_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if len(self.warnings) < 100:
            self.warnings.append(message)
            log.warning("layer %s: %s", self.digest, message)


def unpack_layer(blob: Path, descriptor: oci.Descriptor, diff_id: str, dest: Path, *,
                 whiteouts: str = "overlay") -> LayerReport:
    """Verify and extract one layer blob into the existing directory `dest` in one pass.

    whiteouts="overlay": whiteouts become overlayfs markers (`dest` should start empty);
    whiteouts="apply": whiteouts delete from `dest`, which holds the layers below.
    """
    if whiteouts not in ("overlay", "apply"):
        raise ValueError(f"whiteouts must be 'overlay' or 'apply', not {whiteouts!r}")
    oci.validate_digest(descriptor.digest)
    oci.validate_digest(diff_id)
    report = LayerReport(descriptor.digest)
    stream = _VerifiedStream(Path(blob), descriptor, diff_id)
    try:
        extractor = _Extractor(Path(dest), whiteouts, report)
        try:
            _extract_tar(stream, extractor, report)
        finally:
            extractor.close()
        stream.finish()
    finally:
        stream.close()
    return report


def cached_layer(cache: Path, blob: Path, descriptor: oci.Descriptor, diff_id: str) -> Path:
    """The layer's overlay-form directory, ``cache/sha256/<hex>``, unpacked at most once.

    Built in a private ``cache/tmp-<hex>-*`` directory and renamed into place, so a directory
    at the final path is always complete. An flock per diff_id makes a second process wait
    for the first instead of unpacking the same layer twice; the rename check covers
    filesystems where flock does nothing.
    """
    algorithm, encoded = oci.validate_digest(diff_id)
    cache = Path(cache)
    final = cache / algorithm / encoded
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    locks = cache / "locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{algorithm}-{encoded}", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        # We hold the lock, so any leftover build of this layer belongs to a dead process.
        for stale in cache.glob(f"tmp-{encoded}-*"):
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{encoded}-", dir=cache))
        try:
            # mkdtemp makes 0700; a layer without a "./" entry must still give the merged
            # root the usual 0755, or nobody but root could use the container.
            os.chmod(tmp, 0o755)
            unpack_layer(blob, descriptor, diff_id, tmp, whiteouts="overlay")
            try:
                os.rename(tmp, final)
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                remove_tree(tmp)  # another process won the race without the lock
        except BaseException:
            remove_tree(tmp)
            raise
    return final


def apply_layers(layers: list[tuple[Path, oci.Descriptor, str]], dest: Path) -> list[LayerReport]:
    """Apply all layers (blob, descriptor, diff_id), bottom first, into `dest` (created if
    missing), deleting what their whiteouts name: one flat root filesystem."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [unpack_layer(blob, descriptor, diff_id, dest, whiteouts="apply")
            for blob, descriptor, diff_id in layers]


def remove_tree(path: Path) -> None:
    """Remove an unpacked layer or root, even if it has read-only directories (unprivileged)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        # Only a non-root user gets here: make our own directories writable, never following
        # a symlink. Each one is opened up before it is listed (overlayfs leaves a mode-000
        # work/work behind that could not even be listed otherwise).
        _open_up(path)
        shutil.rmtree(path)


def _open_up(directory: Path) -> None:
    os.chmod(directory, 0o700)
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _open_up(Path(entry.path))


# --- the verified stream: bytes in, hashes checked, tar bytes out ------------------------------

_END = object()


class _VerifiedStream:
    """Decompresses the blob in a thread, hashing both sides; the tar parser reads from it.

    The thread hands over chunks through a small queue; `read`, `skip` and `copy_to` are the
    forward-only file interface tarfile and the extractor use. `finish` drains what the parser
    left (the tar's end padding) and raises if any digest, size or stream end was wrong.
    """

    def __init__(self, blob: Path, descriptor: oci.Descriptor, diff_id: str):
        self.blob = blob
        self.descriptor = descriptor
        self.diff_id = diff_id
        self.label = descriptor.digest
        self._decompress = _decompressor(descriptor)
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._pos = 0
        self._offset = 0
        self._ended = False
        self._result: tuple[str, str] | None = None
        self.last_read = b""
        self._fd = os.open(blob, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(self._fd).st_size
        if size != descriptor.size:
            os.close(self._fd)
            raise LayerSizeMismatch(
                f"layer {self.label} is {size} bytes but its descriptor says {descriptor.size}:"
                " the blob is corrupt or incomplete; remove the image and pull it again")
        self._thread = threading.Thread(target=self._produce, name=f"inflate {self.label[:19]}",
                                        daemon=True)
        self._thread.start()

    # producer side (thread)

    def _produce(self) -> None:
        try:
            compressed = hashlib.new(oci.validate_digest(self.descriptor.digest)[0])
            uncompressed = hashlib.new(oci.validate_digest(self.diff_id)[0])
            remaining = self.descriptor.size

            def read(size: int) -> bytes:
                nonlocal remaining
                # One byte more than promised is enough to know the blob grew under us.
                data = os.read(self._fd, min(size, remaining + 1))
                remaining -= len(data)
                if remaining < 0:
                    raise LayerSizeMismatch(
                        f"layer {self.label} is longer than its descriptor's"
                        f" {self.descriptor.size} bytes: remove the image and pull it again")
                compressed.update(data)
                return data

            for chunk in self._decompress(read, self.label):
                uncompressed.update(chunk)
                self._put(chunk)
            self._put((compressed.hexdigest(), uncompressed.hexdigest()))
        except BaseException as err:  # handed to the parser's thread, which raises it
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # consumer side (the caller's thread)

    def _next_chunk(self) -> bool:
        if self._ended:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if isinstance(item, tuple):
            self._ended = True
            self._result = item
            return False
        self._chunk = memoryview(item)
        self._pos = 0
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_HEADER_READ:
            raise LayerCorrupt(f"layer {self.label} has a tar header of {size} bytes:"
                               " the layer is malformed; rebuild the image")
        pieces = []
        while size > 0:
            if self._pos >= len(self._chunk) and not self._next_chunk():
                break
            piece = self._chunk[self._pos:self._pos + size]
            pieces.append(piece)
            self._pos += len(piece)
            size -= len(piece)
        data = b"".join(pieces)
        self._offset += len(data)
        self.last_read = data
        return data

    def tell(self) -> int:
        return self._offset

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or position < self._offset:
            raise OSError(errno.ESPIPE, "a layer stream only moves forward")
        self.skip(position - self._offset)
        return self._offset

    def skip(self, size: int) -> None:
        while size > 0:
            if self._pos >= len(self._chunk) and not self._next_chunk():
                raise LayerTruncated(f"layer {self.label}: the tar stream ends inside an entry;"
                                     " the blob is truncated, pull the image again")
            step = min(size, len(self._chunk) - self._pos)
            self._pos += step
            self._offset += step
            size -= step

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next `size` bytes at fd's current offset; all-zero blocks become holes."""
        while size > 0:
            if self._pos >= len(self._chunk) and not self._next_chunk():
                raise LayerTruncated(f"layer {self.label}: the tar stream ends inside a file;"
                                     " the blob is truncated, pull the image again")
            piece = self._chunk[self._pos:self._pos + min(size, HOLE_BLOCK)]
            count = len(piece)
            if count == HOLE_BLOCK and not piece[0] and not piece[-1] and piece.tobytes() == _ZEROS:
                os.lseek(fd, count, os.SEEK_CUR)
            else:
                while piece:
                    piece = piece[os.write(fd, piece):]
            self._pos += count
            self._offset += count
            size -= count

    def at_clean_end(self) -> bool:
        """After tarfile stopped: was that a real end-of-archive block, not a cut-off header?"""
        return len(self.last_read) == tarfile.BLOCKSIZE and not any(self.last_read)

    def finish(self) -> None:
        """Check that only zero padding follows the archive's end, then every digest."""
        while self._next_chunk() or self._pos < len(self._chunk):
            rest = self._chunk[self._pos:]
            if rest.tobytes().strip(b"\0"):
                raise LayerCorrupt(f"layer {self.label} has data after the tar's end-of-archive"
                                   " marker: the layer is malformed; rebuild the image")
            self._pos = len(self._chunk)
        assert self._result is not None
        compressed, uncompressed = self._result
        algorithm, expected = oci.validate_digest(self.descriptor.digest)
        if compressed != expected:
            raise LayerDigestMismatch(
                f"layer {self.label} does not match its digest (its content hashes to"
                f" {algorithm}:{compressed}): remove the image and pull it again")
        algorithm, expected = oci.validate_digest(self.diff_id)
        if uncompressed != expected:
            raise LayerDiffIDMismatch(
                f"layer {self.label} uncompresses to {algorithm}:{uncompressed}, not the"
                f" config's diff_id {self.diff_id}: the image is inconsistent; rebuild it")

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
        os.close(self._fd)


def _decompressor(descriptor: oci.Descriptor):
    media_type = descriptor.media_type
    if media_type in _GZIP_TYPES:
        return _gunzip
    if media_type in _TAR_TYPES:
        return _plain
    if media_type in _ZSTD_TYPES:
        if importlib.util.find_spec("zstandard") is not None:
            return _unzstd
        raise UnsupportedLayerType(
            f"layer {descriptor.digest} is zstd-compressed and this Python has no zstd module:"
            " copy the image with `skopeo copy --dest-compress-format gzip` or install zstandard")
    raise UnsupportedLayerType(f"layer {descriptor.digest} has media type {media_type!r}, which"
                               " is not a tar, tar+gzip or tar+zstd layer: use a Linux image")


def _plain(read, label):
    while chunk := read(OUTPUT_CHUNK):
        yield chunk


def _gunzip(read, label):
    """Inflate gzip members one after another (pigz and friends write several); anything
    after the last member that is not another gzip member is an error."""
    member = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = b""
    try:
        while True:
            if not pending:
                pending = read(READ_CHUNK)
                if not pending:
                    tail = member.flush()
                    if tail:
                        yield tail
                    if not member.eof:
                        raise LayerTruncated(f"layer {label}: the gzip stream ends early;"
                                             " the blob is truncated, pull the image again")
                    return
            output = member.decompress(pending, OUTPUT_CHUNK)
            pending = member.unconsumed_tail
            if output:
                yield output
            if member.eof:
                pending = member.unused_data + pending
                if not pending:
                    pending = read(READ_CHUNK)
                    if not pending:
                        return
                if not pending.startswith(b"\x1f\x8b"):
                    raise LayerCorrupt(f"layer {label} has bytes after its gzip stream:"
                                       " the blob is corrupt; pull the image again")
                member = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as err:
        raise LayerCorrupt(f"layer {label} is not valid gzip ({err}):"
                           " the blob is corrupt; pull the image again") from None


def _unzstd(read, label):
    import zstandard  # only when installed: not a dependency

    class _Reader:
        def read(self, size=-1):
            return read(READ_CHUNK if size < 0 else size)

    try:
        yield from zstandard.ZstdDecompressor().read_to_iter(
            _Reader(), read_size=READ_CHUNK, write_size=OUTPUT_CHUNK, read_across_frames=True)
    except zstandard.ZstdError as err:
        raise LayerCorrupt(f"layer {label} is not valid zstd ({err}):"
                           " the blob is corrupt; pull the image again") from None


# --- the tar side ------------------------------------------------------------------------------

def _extract_tar(stream: _VerifiedStream, extractor: "_Extractor", report: LayerReport) -> None:
    label = stream.label
    try:
        # Not tarfile.open(): no format sniffing, and no extract(): we create every entry.
        tar = tarfile.TarFile(fileobj=stream, mode="r", errorlevel=2)
        while True:
            info = tar.next()
            # TarFile keeps every member it has seen; a layer may have millions.
            tar.members.clear()
            if info is None:
                break
            report.entries += 1
            extractor.add(info, stream)
    except tarfile.ReadError as err:
        if stream.last_read == b"" or "unexpected end" in str(err) or "empty" in str(err):
            raise LayerTruncated(f"layer {label}: the tar stream ends early ({err});"
                                 " the blob is truncated, pull the image again") from None
        raise LayerCorrupt(f"layer {label} is not a valid tar ({err}):"
                           " the layer is malformed; rebuild the image") from None
    if not stream.at_clean_end():
        if len(stream.last_read) < tarfile.BLOCKSIZE:
            raise LayerTruncated(f"layer {label}: the tar stream ends without an end-of-archive"
                                 " marker; the blob is truncated, pull the image again")
        raise LayerCorrupt(f"layer {label} has an invalid tar header after"
                           f" {report.entries} entries: the layer is malformed; rebuild the image")
    extractor.finish_layer()


class _Extractor:
    """Creates entries inside `dest` without ever leaving it (see the module docstring)."""

    def __init__(self, dest: Path, whiteouts: str, report: LayerReport):
        self.dest = dest
        self.apply = whiteouts == "apply"
        self.report = report
        self.label = report.digest
        self.privileged = os.geteuid() == 0
        self.opaque_xattr = "trusted.overlay.opaque" if self.privileged else "user.overlay.opaque"
        self.root_fd = safepath.open_root(dest)
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
        try:
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
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

    def add(self, info: tarfile.TarInfo, stream: _VerifiedStream) -> None:
        try:
            self._add(info, stream)
        except OSError as err:
            raise LayerEntryFailed(f"layer {self.label}: cannot create {info.name!r}"
                                   f" ({err.strerror}); check free space and permissions") from None
        finally:
            self._release_dirs()

    def _add(self, info: tarfile.TarInfo, stream: _VerifiedStream) -> None:
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
        try:
            existing = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if info.isdir():
            self.make_dir(fd, base, name, info, existing)
        elif info.islnk():
            self.make_hardlink(fd, base, name, info, existing)
        else:
            if existing is not None:
                self.remove(fd, base, existing)
            if info.isreg():
                self.make_file(fd, base, info, stream)
            elif info.issym():
                os.symlink(info.linkname, base, dir_fd=fd)
                self.set_owner(fd, base, info)
                self.set_times(fd, base, info)
            else:
                self.make_special(fd, base, info)

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

    def make_dir(self, fd, base, name, info, existing) -> None:
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            self.remove(fd, base, existing)
            existing = None
        if existing is None:
            # 0700 until the end of the layer: a read-only directory must stay writable to
            # us (unprivileged) while its children are unpacked.
            os.mkdir(base, 0o700, dir_fd=fd)
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
            try:
                source_stat = os.stat(source_base, dir_fd=source_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
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
        out = os.open(base, flags, 0o600, dir_fd=fd)
        try:
            if info.sparse:
                stored = 0
                for offset, length in info.sparse:
                    os.lseek(out, offset, os.SEEK_SET)
                    stream.copy_to(out, length)
                    stored += length
            else:
                stream.copy_to(out, info.size)
                stored = info.size
            if os.fstat(out).st_size != info.size:
                os.ftruncate(out, info.size)  # a trailing hole: seeking alone does not extend
            self.report.file_bytes += stored
            if self.privileged:
                os.fchown(out, info.uid, info.gid)
            os.fchmod(out, info.mode & 0o7777)  # after chown, which clears setuid bits
            self.set_xattrs(out, info)
            os.utime(out, ns=(_ns(info.mtime),) * 2)
        finally:
            os.close(out)

    def make_special(self, fd, base, info) -> None:
        if info.isfifo():
            os.mkfifo(base, 0o600, dir_fd=fd)
        else:
            os.mknod(base, stat.S_IFCHR | 0o600, os.makedev(info.devmajor, info.devminor),
                     dir_fd=fd)
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

    # metadata

    def set_owner(self, fd, base, info) -> None:
        if self.privileged:
            try:
                os.chown(base, info.uid, info.gid, dir_fd=fd, follow_symlinks=False)
            except OSError as err:  # e.g. an id unmapped in a user namespace
                self.warn_once("chown", f"cannot chown to {info.uid}:{info.gid}: {err.strerror}")

    def set_times(self, fd, base, info) -> None:
        try:
            os.utime(base, ns=(_ns(info.mtime),) * 2, dir_fd=fd, follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            self.warn_once("mtime", f"cannot set mtime {info.mtime} on {info.name!r}")

    def set_xattrs(self, fd: int, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            attr = key[len(XATTR_PAX_PREFIX):]
            kept = (attr.startswith(KEPT_XATTRS) and not attr.startswith(DROPPED_XATTRS)
                    or attr in KEPT_SECURITY_XATTRS)
            if not kept:
                self.report.warn(f"dropped xattr {attr} of {info.name!r}")
                continue
            try:
                os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
            except OSError as err:
                self.warn_once(f"xattr {attr}", f"cannot set xattr {attr}: {err.strerror}")

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
                os.utime(fd, ns=(_ns(info.mtime),) * 2)
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
            try:
                existing = os.stat(target, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
                return
            if stat.S_ISDIR(existing.st_mode):
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
        if fd is None:
            return
        try:
            existing = os.stat(target, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
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


def _ns(mtime: float | int) -> int:
    return int(mtime) * 1_000_000_000 if isinstance(mtime, int) else int(mtime * 1e9)
