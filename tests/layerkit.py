"""Building layers for tests: tar streams with any entry (malicious ones too), blobs, layouts.

Entries are plain tuples made by the helpers below, so a test reads like the tar it builds::

    tar_bytes = make_tar(directory("etc"), file("etc/hosts", b"x"), whiteout("etc/passwd"))
"""

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from contained.images import build, oci


@dataclass(frozen=True)
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime: int = 0,
          pax: dict | None = None, xattrs: dict | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    headers = dict(pax or {})
    for key, value in (xattrs or {}).items():
        headers[f"SCHILY.xattr.{key}"] = value
    info.pax_headers = headers
    return info


def file(name: str, data: bytes = b"", *, mode: int = 0o644, **options) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode=mode, **options)
    info.size = len(data)
    return Entry(info, data)


def directory(name: str, *, mode: int = 0o755, **options) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode=mode, **options))


def symlink(name: str, target: str, **options) -> Entry:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, **options)
    info.linkname = target
    return Entry(info)


def hardlink(name: str, target: str, **options) -> Entry:
    info = _info(name, tarfile.LNKTYPE, mode=0o644, **options)
    info.linkname = target
    return Entry(info)


def fifo(name: str, *, mode: int = 0o644, **options) -> Entry:
    return Entry(_info(name, tarfile.FIFOTYPE, mode=mode, **options))


def device(name: str, major: int, minor: int, *, block: bool = False, mode: int = 0o666,
           **options) -> Entry:
    info = _info(name, tarfile.BLKTYPE if block else tarfile.CHRTYPE, mode=mode, **options)
    info.devmajor, info.devminor = major, minor
    return Entry(info)


def whiteout(path: str) -> Entry:
    parent, _, base = path.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(directory_path: str) -> Entry:
    return file(f"{directory_path}/.wh..wh..opq" if directory_path else ".wh..wh..opq")


def make_tar(*entries: Entry, format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for entry in entries:
            tar.addfile(entry.info, io.BytesIO(entry.data) if entry.info.isreg() else None)
    return buffer.getvalue()


@dataclass(frozen=True)
class Layer:
    """A blob on disk with its descriptor and diff_id: the arguments the unpacker takes."""

    blob: Path
    descriptor: oci.Descriptor
    diff_id: str

    def args(self) -> tuple[Path, oci.Descriptor, str]:
        return self.blob, self.descriptor, self.diff_id


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_blob(directory_path: Path, tar_bytes: bytes, *, compress: bool = True,
               blob_bytes: bytes | None = None, diff_id: str | None = None,
               media_type: str | None = None) -> Layer:
    """Write a layer blob into `directory_path`; the descriptor matches the blob as written
    (`blob_bytes` overrides the gzip of `tar_bytes`, e.g. to truncate it consistently)."""
    if blob_bytes is None:
        blob_bytes = build.gzip_bytes(tar_bytes) if compress else tar_bytes
    digest = sha256(blob_bytes)
    path = Path(directory_path) / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob_bytes)
    media_type = media_type or (oci.MEDIA_TYPE_LAYER_GZIP if compress else oci.MEDIA_TYPE_LAYER)
    return Layer(path, oci.Descriptor(media_type, digest, len(blob_bytes)),
                 diff_id or sha256(tar_bytes))


def image_layout(layout: Path, tars: list[bytes], ref_name: str = "test") -> list[Layer]:
    """An OCI layout (images.build) with these layers; returns them as unpacker arguments."""
    built = [build.write_layer(layout, tar_bytes) for tar_bytes in tars]
    build.write_image(layout, built, build.image_config(
        built, architecture=build.host_architecture()), ref_name)
    return [Layer(oci.blob_path(layout, b.descriptor.digest), b.descriptor, b.diff_id)
            for b in built]


def gzip_multi(*parts: bytes) -> bytes:
    """Several gzip members back to back, as pigz writes."""
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


def zstd_bytes(*parts: bytes, checksum: bool = True, skippable: bytes = b"") -> bytes:
    """Each part as one zstd frame, back to back (as `zstd` writes concatenated inputs),
    optionally after a skippable frame holding `skippable`."""
    import zstandard

    prefix = b""
    if skippable:
        prefix = b"\x50\x2a\x4d\x18" + len(skippable).to_bytes(4, "little") + skippable
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=checksum)
    return prefix + b"".join(compressor.compress(part) for part in parts)


def tree(root: Path) -> dict[str, tuple]:
    """A comparable description of a tree: type, mode, owner, size, content hash or link
    target, and which paths share an inode (hardlink groups), for every path under `root`."""
    result: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: object = None
            if stat.S_ISREG(kind):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(kind):
                detail = os.readlink(path)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            link_group = None
            if not stat.S_ISDIR(kind) and st.st_nlink > 1:
                link_group = inodes.setdefault((st.st_dev, st.st_ino), rel)
            result[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail,
                           link_group)
    return result


def snapshot(path: Path) -> dict[str, tuple]:
    """Everything about a sentinel tree, including mtimes: "nothing outside changed"."""
    path = Path(path)
    state = {".": os.lstat(path).st_mtime_ns}
    for rel, description in tree(path).items():
        state[rel] = description + (os.lstat(path / rel).st_mtime_ns,)
    return state


def make_sentinel(base: Path) -> Path:
    """A directory next to the destination with a file, a subdirectory and a symlink, which
    malicious layers aim at; tests check it is unchanged afterwards."""
    sentinel = Path(base) / "sentinel"
    (sentinel / "etc").mkdir(parents=True)
    (sentinel / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (sentinel / "secret").write_text("host secret\n")
    return sentinel
