"""Unpacking a layer: the blob verified and decompressed in one stream, the layer cache.

Taught in notebooks 04 ("Images") and 07 ("Safety"). The tutorial's step is::

    sha256sum blobs/sha256/<layer>                     # must equal the digest in the manifest
    gzip -dc blobs/sha256/<layer> | sha256sum          # must equal the config's diff_id
    gzip -dc blobs/sha256/<layer> | tar -x -C lower    # trusts every name, link and device

This module does the three in one streaming pass, for any image, as umoci's ``unpack.go`` does;
`contained.images.tar_extract` creates each entry without trusting it. The blob's size and
digest, and the uncompressed stream's digest (the diff_id), are checked while extracting: a
thread reads, hashes and decompresses (zlib releases the GIL, so this uses the second core)
while the caller's thread parses the tar and writes files (and, for a layer unpacked alone,
hashes the tar: `_VerifiedStream`). A truncated gzip or tar stream,
bytes after the end, or any mismatch is an error naming the blob. Extracting before the
digests are known is safe because extraction itself trusts nothing: a blob that fails
verification only ever wrote inside the destination, and `cached_layer` then throws the
half-made directory away.

The decompression itself (gzip, zstd, or none, by media type) is `contained.images.decompress`.
A container's missing layers are unpacked side by side (`cached_layers`): in per-layer
directories no layer depends on another. The gain is bounded by the GIL (tar headers are
parsed in Python) and by the biggest layer: on two cores, 0.6-0.96× the time of one layer
after another on this VM's ext4 (benchmarks/unpack.py); on a tmpfs, where writing costs
next to nothing, the threads only contend (1.08-1.17 s against 0.91-0.98 s one at a time).

OCI whiteouts (``.wh.NAME`` deletes NAME from the layers below; ``.wh..wh..opq`` hides the
directory's lower contents) have two forms, one implementation (in `tar_extract`):

- ``whiteouts="overlay"`` (per-layer directories, the overlay mount's lowerdirs): a whiteout
  becomes overlayfs's own marker, a 0:0 character device NAME, and an opaque marker becomes the
  directory xattr ``trusted.overlay.opaque=y`` (``user.overlay.opaque`` when unprivileged, for
  overlays mounted with ``userxattr``). `cached_layer` keeps these by diff_id, unpacked once
  for every container.
- ``whiteouts="apply"`` (`apply_layers`, ``contained unpack IMAGE DEST``): the named paths are
  deleted. As the image-spec says, whiteouts only hide what *lower* layers made: an entry the
  same layer adds survives its own layer's whiteout or opaque marker, whatever the order of the
  entries in the tar (umoci and containerd get the order wrong in some cases). A failed layer
  leaves DEST partly written (use a fresh DEST).
"""

import errno
import hashlib
import os
import queue
import tarfile
import tempfile
import threading
from pathlib import Path

from contained import filelock
from contained.images import oci
from contained.images.decompress import (  # noqa: F401 (the errors are unpack's API too)
    LayerCorrupt,
    LayerTruncated,
    UnsupportedLayerType,
    decompressor,
)
from contained.images.tar_extract import LayerError, LayerReport, TarExtractor
from contained.images.tar_header import QuickTarInfo
from contained.images.trees import remove_tree

#: decompressed chunks waiting for the tar parser; bounds memory to a few MiB
QUEUE_DEPTH = 4
#: layers `cached_layers` unpacks at once: each keeps about one core busy (a thread inflating
#: and hashing, the caller's thread parsing and writing), so more than the cores only contends
PARALLEL_LAYERS = max(1, min(4, os.cpu_count() or 1))
#: an all-zero block of this size in a regular file becomes a hole
HOLE_BLOCK = 64 * 1024
#: tarfile reads pax headers and GNU long names whole: refuse absurd ones instead of
#: allocating them (a 4 GiB "long name" would otherwise be read into memory)
MAX_HEADER_READ = 16 * 1024 * 1024

_ZEROS = bytes(HOLE_BLOCK)


class LayerSizeMismatch(LayerError, oci.BlobMismatch):
    """The blob's size differs from its descriptor's."""


class LayerDigestMismatch(LayerError, oci.BlobMismatch):
    """The blob's sha256 differs from its descriptor's digest."""


class LayerDiffIDMismatch(LayerError, oci.BlobMismatch):
    """The uncompressed tar's sha256 differs from the config's diff_id."""


def unpack_layer(blob: Path, descriptor: oci.Descriptor, diff_id: str, dest: Path, *,
                 whiteouts: str = "overlay", side_by_side: bool = False) -> LayerReport:
    """Verify and extract one layer blob into the existing directory `dest` in one pass.

    whiteouts="overlay": whiteouts become overlayfs markers (`dest` should start empty);
    whiteouts="apply": whiteouts delete from `dest`, which holds the layers below.
    `side_by_side`: other layers unpack at the same time (`_VerifiedStream` says what changes).
    """
    if whiteouts not in ("overlay", "apply"):
        raise ValueError(f"whiteouts must be 'overlay' or 'apply', not {whiteouts!r}")
    oci.validate_digest(descriptor.digest)
    oci.validate_digest(diff_id)
    report = LayerReport(descriptor.digest)
    stream = _VerifiedStream(Path(blob), descriptor, diff_id, side_by_side)
    try:
        extractor = TarExtractor(Path(dest), whiteouts, report)
        try:
            _extract_tar(stream, extractor, report)
        finally:
            extractor.close()
        stream.finish()
    finally:
        stream.close()
    return report


def cached_layer(cache: Path, blob: Path, descriptor: oci.Descriptor, diff_id: str, *,
                 side_by_side: bool = False) -> Path:
    """The layer's overlay-form directory, ``cache/sha256/<hex>``, unpacked at most once.

    Built in a private ``cache/tmp-<hex>-*`` directory and renamed into place, so a directory
    at the final path is always complete. An flock per diff_id makes a second process wait
    for the first instead of unpacking the same layer twice; the rename check covers
    filesystems where flock does nothing.
    """
    algorithm, encoded = oci.validate_digest(diff_id)
    cache = Path(cache)
    final = cached_path(cache, diff_id)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    locks = cache / "locks"
    locks.mkdir(exist_ok=True)
    with filelock.locked(locks / f"{algorithm}-{encoded}", mode=0o644):
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
            unpack_layer(blob, descriptor, diff_id, tmp, whiteouts="overlay",
                         side_by_side=side_by_side)
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


def cached_layers(cache: Path, layers: list[tuple[Path, oci.Descriptor, str]]) -> list[Path]:
    """Every layer's `cached_layer` directory, bottom first; the missing ones unpacked side by
    side, up to PARALLEL_LAYERS at a time.

    Per-layer directories make layers independent (a layer's whiteouts become markers in its
    own directory, applied by the overlay mount, not deletions in the layers below), so they
    can be unpacked in any order. Each layer is still verified in its one pass. Threads, not
    processes: zlib, zstd, sha256 and file writes release the GIL, and this may run inside a
    Jupyter kernel, where forking is not allowed. The first failure is raised once the layers
    already under way have finished (each cleans up after itself); the rest are not started.
    """
    cache = Path(cache)
    # One job per diff_id: an image may hold the same layer twice (two empty layers, say).
    missing = list({layer[2]: layer for layer in layers
                    if not cached_path(cache, layer[2]).is_dir()}.values())
    # Biggest first (by compressed size, the best guess of the work before inflating): the
    # pool ends when its last layer does, and a big layer started last would run alone while
    # the other core idles. On the 4-layer benchmark image: 0.59-0.70 s, not 0.63-0.80 s.
    missing.sort(key=lambda layer: layer[1].size, reverse=True)
    if len(missing) > 1:
        # Loaded here: the runtime imports this module (remove_tree) on every `contained` run.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(missing), PARALLEL_LAYERS),
                                thread_name_prefix="unpack") as pool:
            futures = [pool.submit(cached_layer, cache, *layer, side_by_side=True)
                       for layer in missing]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return [cached_layer(cache, *layer) for layer in layers]


def cached_path(cache: Path, diff_id: str) -> Path:
    """Where `cached_layer` keeps the layer with this diff_id (a directory there is complete)."""
    algorithm, encoded = oci.validate_digest(diff_id)
    return Path(cache) / algorithm / encoded


def apply_layers(layers: list[tuple[Path, oci.Descriptor, str]], dest: Path) -> list[LayerReport]:
    """Apply all layers (blob, descriptor, diff_id), bottom first, into `dest` (created if
    missing), deleting what their whiteouts name: one flat root filesystem."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [unpack_layer(blob, descriptor, diff_id, dest, whiteouts="apply")
            for blob, descriptor, diff_id in layers]


# --- the verified stream: bytes in, hashes checked, tar bytes out ------------------------------

class _VerifiedStream:
    """Decompresses the blob in a thread, hashing both sides; the tar parser reads from it.

    The thread hands over chunks through a small queue; `read`, `skip` and `copy_to` are the
    forward-only file interface tarfile and the extractor use. `finish` drains what the parser
    left (the tar's end padding) and raises if any digest, size or stream end was wrong.

    Who hashes the uncompressed stream (the diff_id) depends on `side_by_side`. A layer alone
    has two threads on two cores: the inflating thread, which also reads and hashes the blob,
    was the slower one, so the parser's thread hashes what it takes (sha256 releases the GIL);
    on a journaled ext4, the 4-layer benchmark image one layer at a time took 0.69-0.71 s
    instead of 0.81-0.93 s, its 87 MB layer 0.19 s instead of 0.26. Layers side by side keep
    every core busy already: there the parsers hashing too only contended for the GIL (0.85 s
    against 0.74).
    """

    def __init__(self, blob: Path, descriptor: oci.Descriptor, diff_id: str,
                 side_by_side: bool = False):
        self.blob = blob
        self.descriptor = descriptor
        self.diff_id = diff_id
        self.label = descriptor.digest
        self._decompress = decompressor(descriptor)
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._pos = 0
        self._offset = 0
        self._ended = False
        self._result: tuple[str, str] | None = None
        self._diff_hash = hashlib.new(oci.validate_digest(diff_id)[0])
        self._parser_hashes = not side_by_side
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
                if not self._parser_hashes:
                    self._diff_hash.update(chunk)
                self._put(chunk)
            self._put(compressed.hexdigest())  # the end: after every chunk, in queue order
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
        if isinstance(item, str):  # the blob's digest: the stream has ended
            self._ended = True
            self._result = (item, self._diff_hash.hexdigest())
            return False
        if self._parser_hashes:
            self._diff_hash.update(item)
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


# --- driving the extractor: one tar entry at a time -------------------------------------------

def _extract_tar(stream: _VerifiedStream, extractor: TarExtractor, report: LayerReport) -> None:
    label = stream.label
    try:
        # Not tarfile.open(): no format sniffing, and no extract(): we create every entry.
        # Headers read by `QuickTarInfo`: tarfile's own result, in half its time.
        tar = tarfile.TarFile(fileobj=stream, mode="r", errorlevel=2, tarinfo=QuickTarInfo)
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

