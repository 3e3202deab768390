"""Decompressing a layer blob as a stream: gzip, zstd or none, chosen by its media type.

Taught in notebook 04 ("Images"). The shell equivalents::

    gzip -dc blobs/sha256/<layer> | tar -t       # application/vnd.oci.image.layer.v1.tar+gzip
    zstd -dc blobs/sha256/<layer> | tar -t       # application/vnd.oci.image.layer.v1.tar+zstd
    tar -tf blobs/sha256/<layer>                 # application/vnd.oci.image.layer.v1.tar

`decompressor` picks a generator for the layer's media type; `contained.images.unpack` runs it
in a thread, hashing what goes in and what comes out. gzip goes through the `isal` package
(Intel's ISA-L: the inflate of ``igzip -d``, about twice zlib's speed) where it is installed.
Each generator takes ``read(size)`` (the blob's bytes, already counted and hashed) and yields
uncompressed chunks of at most OUTPUT_CHUNK bytes, whatever the compression ratio, so memory
stays bounded on a decompression bomb. A stream that stops early is `LayerTruncated`; bytes
that are not the format, or that follow its end, are `LayerCorrupt`: a layer is exactly its
frames or members.
"""

try:  # Intel's ISA-L inflates gzip about twice as fast as zlib, with zlib's interface
    from isal import isal_zlib as zlib
except ImportError:  # a platform without its wheel: zlib, slower, the same results
    import zlib

from contained.images import oci
from contained.images.tar_extract import LayerError

#: bytes read from the blob at a time; decompressed chunks are at most OUTPUT_CHUNK
READ_CHUNK = 256 * 1024
OUTPUT_CHUNK = 1024 * 1024

_GZIP_TYPES = {oci.MEDIA_TYPE_LAYER_GZIP, oci.MEDIA_TYPE_DOCKER_LAYER_GZIP}
_TAR_TYPES = {oci.MEDIA_TYPE_LAYER, "application/vnd.docker.image.rootfs.diff.tar"}
_ZSTD_TYPES = {oci.MEDIA_TYPE_LAYER_ZSTD}


class UnsupportedLayerType(LayerError):
    """The layer's media type (or its compression) is not one we can unpack."""


class LayerTruncated(LayerError):
    """The compressed or the tar stream ends early."""


class LayerCorrupt(LayerError):
    """The compressed or tar stream is malformed, or has bytes after its end."""


def decompressor(descriptor: oci.Descriptor):
    """The generator for this layer's compression: ``gen(read, label)`` yields tar bytes."""
    media_type = descriptor.media_type
    if media_type in _GZIP_TYPES:
        return _gunzip
    if media_type in _TAR_TYPES:
        return _plain
    if media_type in _ZSTD_TYPES:
        try:
            import zstandard  # noqa: F401  (a dependency, loaded for zstd layers only)
        except ImportError:
            raise UnsupportedLayerType(
                f"layer {descriptor.digest} is zstd-compressed and this Python has no zstandard"
                " module: `pip install zstandard`, or copy the image with"
                " `skopeo copy --dest-compress-format gzip`") from None
        return _unzstd
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
    """Decompress zstd frames one after another (zstd, like pigz, may write several).

    Why the `zstandard` package and not the `zstd` program through a pipe: it streams in this
    process with the output of each read bounded (a 4-byte RLE block can stand for 128 KiB, so
    an unbounded decompress call is a memory bomb), it releases the GIL (layers unpack in
    parallel threads), errors are exceptions we can name, and it needs no second process per
    layer. Its reader says nothing when the input stops inside a frame, so `_ZstdFrames`
    follows the frame boundaries in the compressed bytes to tell a truncated blob.
    """
    import zstandard

    frames = _ZstdFrames(label)

    class _Blob:
        def read(self, size=-1):
            data = read(READ_CHUNK if size < 0 else size)
            frames.feed(data)
            return data

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            _Blob(), read_size=READ_CHUNK, read_across_frames=True)
        while chunk := reader.read(OUTPUT_CHUNK):
            yield chunk
    except zstandard.ZstdError as err:
        raise LayerCorrupt(f"layer {label} is not valid zstd ({err}):"
                           " the blob is corrupt; pull the image again") from None
    frames.finish()


class _ZstdFrames:
    """Follows zstd frame boundaries (RFC 8878 §3.1) in the compressed bytes, block headers
    only: is the stream made of whole frames, and nothing else?"""

    MAGIC = b"\x28\xb5\x2f\xfd"
    #: skippable frames' magic numbers are 0x184D2A50-5F: little-endian bytes ?? 2A 4D 18
    SKIPPABLE_TAIL = b"\x2a\x4d\x18"

    def __init__(self, label: str):
        self.label = label
        self.header = b""  # bytes of the structure being read
        self.need = 4  # how many header bytes that structure has
        self.state = "magic"
        self.skip = 0  # content bytes to pass over before the next structure
        self.last_block = False
        self.checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:
                step = min(self.skip, len(view))
                self.skip -= step
                view = view[step:]
                continue
            take = min(self.need - len(self.header), len(view))
            self.header += bytes(view[:take])
            view = view[take:]
            if len(self.header) == self.need:
                self._parsed(self.header)

    def _parsed(self, header: bytes) -> None:
        self.header = b""
        if self.state == "magic":
            if header == self.MAGIC:
                self.state, self.need = "descriptor", 1
            elif header[1:] == self.SKIPPABLE_TAIL and header[0] & 0xF0 == 0x50:
                self.state, self.need = "skippable", 4
            else:
                raise LayerCorrupt(f"layer {self.label} has bytes that are not a zstd frame:"
                                   " the blob is corrupt; pull the image again")
        elif self.state == "skippable":
            self.skip = int.from_bytes(header, "little")
            self.state, self.need = "magic", 4
        elif self.state == "descriptor":
            (flags,) = header
            single_segment = flags & 0x20
            content_size = (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
            self.checksum = bool(flags & 0x04)
            self.skip = (0 if single_segment else 1) + (0, 1, 2, 4)[flags & 0x03] + content_size
            self.state, self.need = "block", 3
        elif self.state == "block":
            value = int.from_bytes(header, "little")
            self.last_block = bool(value & 1)
            size = value >> 3
            self.skip = 1 if (value >> 1) & 3 == 1 else size  # an RLE block holds one byte
            if self.last_block:
                self.skip += 4 if self.checksum else 0
                self.frames += 1
                self.state, self.need = "magic", 4

    def finish(self) -> None:
        if self.state != "magic" or self.header or self.skip or not self.frames:
            raise LayerTruncated(f"layer {self.label}: the zstd stream ends inside a frame;"
                                 " the blob is truncated, pull the image again")
