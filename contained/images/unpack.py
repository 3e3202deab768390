"""Unpacking a layer: the blob verified and decompressed in one stream, the layer cache.

Taught in notebooks 04 ("Images") and 07 ("Safety"). The tutorial's step is::

    sha256sum blobs/sha256/<layer>                     # must equal the digest in the manifest
    gzip -dc blobs/sha256/<layer> | sha256sum          # must equal the config's diff_id
    gzip -dc blobs/sha256/<layer> | tar -x -C lower    # trusts every name, link and device

This module does the three in one streaming pass, for any image, as umoci's ``unpack.go`` does;
`contained.images.tar_extract` creates each entry without trusting it. The blob's size and
digest, and the uncompressed stream's digest (the diff_id), are checked while extracting: for
a layer unpacked alone, a thread reads, hashes and decompresses (zlib releases the GIL, so
this uses the second core) while the caller's thread hashes the tar, parses it and writes
files (`_VerifiedStream`). A truncated gzip or tar stream,
bytes after the end, or any mismatch is an error naming the blob. Extracting before the
digests are known is safe because extraction itself trusts nothing: a blob that fails
verification only ever wrote inside the destination, and `cached_layer` then throws the
half-made directory away.

The decompression itself (gzip, zstd, or none, by media type) is `contained.images.decompress`.
In per-layer directories no layer depends on another, so `cached_layers` unpacks a
container's missing layers side by side, one thread each (see PARALLEL_LAYERS).

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
#: layers `cached_layers` unpacks at once, one thread each (a layer alone has two: see
#: `_VerifiedStream`). Side by side, where creating files is cheap, costs a little: the
#: benchmark image (benchmarks/unpack.py, 4 layers, 204 MB) took 0.52 s, one thread per
#: layer two at a time, against 0.48 s one layer after another with two threads each, or
#: 0.55 s two at a time with two threads each (tmpfs, medians of 8). Where the kernel's side
#: is dear, as on this VM's journal-less ext4 after many deletions, it is what counts: 1.66 s
#: against 2.83 s and 1.88 s. So: side by side, one thread per layer, up to the cores.
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
    `side_by_side`: other layers unpack at the same time, so this one takes one thread, not two.
    """
    if whiteouts not in ("overlay", "apply"):
        raise ValueError(f"whiteouts must be 'overlay' or 'apply', not {whiteouts!r}")
    oci.validate_digest(descriptor.digest)
    oci.validate_digest(diff_id)
    report = LayerReport(descriptor.digest)
    stream = _VerifiedStream(Path(blob), descriptor, diff_id, threaded=not side_by_side)
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
    """Every layer's `cached_layer` directory, bottom first; the missing ones unpacked up to
    PARALLEL_LAYERS at a time.

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
    # the other core idles.
    missing.sort(key=lambda layer: layer[1].size, reverse=True)
    if len(missing) > 1 and PARALLEL_LAYERS > 1:
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
    """The blob read, hashed and decompressed as the tar parser reads it; the tar hashed too.

    `read`, `skip` and `copy_to` are the forward-only file interface tarfile and the extractor
    use. `finish` drains what the parser left (the tar's end padding) and raises if any digest,
    size or stream end was wrong.

    With `threaded` (a layer unpacked alone), a thread reads, hashes and decompresses the blob
    and hands chunks over through a small queue, so inflating uses the second core. The
    parser's thread hashes the tar as it takes it: the inflating thread was the slower one,
    and sha256 releases the GIL (on a journaled ext4, the 4-layer benchmark image one layer at
    a time took 0.69-0.71 s instead of 0.81-0.93 s). Handing each chunk to whichever thread
    would otherwise wait, in order, changed nothing measurable (0.507 s against 0.503, medians
    of 15 on a tmpfs). Without `threaded` (layers side by side, every core busy already) the
    parser's thread does it all: a second thread per layer only contended for the GIL.
    """

    def __init__(self, blob: Path, descriptor: oci.Descriptor, diff_id: str,
                 threaded: bool = True):
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
        self.last_read = b""
        self._fd = os.open(blob, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(self._fd).st_size
        if size != descriptor.size:
            os.close(self._fd)
            raise LayerSizeMismatch(
                f"layer {self.label} is {size} bytes but its descriptor says {descriptor.size}:"
                " the blob is corrupt or incomplete; remove the image and pull it again")
        self._items = self._blob_items()
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._produce, daemon=True,
                                            name=f"inflate {self.label[:19]}")
            self._thread.start()

    # producer side (the thread, or the parser's own when not threaded)

    def _blob_items(self):
        """The tar's chunks, then the blob's hex digest (a str): the end of the stream."""
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

        yield from self._decompress(read, self.label)
        yield compressed.hexdigest()

    def _produce(self) -> None:
        try:
            for item in self._items:
                self._put(item)
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
        item = self._queue.get() if self._thread else next(self._items)
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if isinstance(item, str):  # the blob's digest: the stream has ended
            self._ended = True
            self._result = (item, self._diff_hash.hexdigest())
            return False
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

    def copy_to(self, fd: int, size: int) -> bool:
        """Write the next `size` bytes at fd's current offset; all-zero blocks become holes.
        True if it ended by skipping one (the file is then shorter than its end: truncate it)."""
        hole = False
        while size > 0:
            if self._pos >= len(self._chunk) and not self._next_chunk():
                raise LayerTruncated(f"layer {self.label}: the tar stream ends inside a file;"
                                     " the blob is truncated, pull the image again")
            piece = self._chunk[self._pos:self._pos + min(size, HOLE_BLOCK)]
            count = len(piece)
            hole = (count == HOLE_BLOCK and not piece[0] and not piece[-1]
                    and piece.tobytes() == _ZEROS)
            if hole:
                os.lseek(fd, count, os.SEEK_CUR)
            else:
                while piece:
                    piece = piece[os.write(fd, piece):]
            self._pos += count
            self._offset += count
            size -= count
        return hole

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
        if self._thread is None:
            self._items.close()
            os.close(self._fd)
            return
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

