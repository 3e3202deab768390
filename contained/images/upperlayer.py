"""An upper directory becomes a layer: a container's changes, as Docker commits and builds them.

Taught in notebook 09 ("Build an image"). An image's layers are exactly the overlay upper
directories of the containers that made them, with overlay's own markers turned into the OCI
image-spec's. By hand::

    find upper -type c                  # 0:0 character devices: overlay's whiteouts
    getfattr -n trusted.overlay.opaque upper/DIR      # "y": an opaque directory
    # whiteout upper/a/NAME  → a/.wh.NAME          (an empty file in the tar)
    # opaque upper/DIR       → DIR/.wh..wh..opq    (an empty file in the tar)
    tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --numeric-owner --xattrs -C upper -c . \\
        | tee >(sha256sum >diff_id) | gzip -n | tee layer.tar.gz | sha256sum   # the digest
    contained commit web myimage:1      # all of it, then the config and manifest (contained.build)

The upper directory was written by the container, so nothing in it is trusted: it is walked
with directory descriptors, every name is opened with O_NOFOLLOW relative to its parent's
descriptor, and a file is read only if what was opened is the regular file ``lstat`` saw. A
symlink planted as ``upper/etc -> /`` is stored as a symlink; it can never make the committer
read a host file. Entries are sorted and, with ``SOURCE_DATE_EPOCH``, every timestamp is clamped
to it, so the same changes give the same digest on every machine (reproducible-builds.org).
"""

import gzip
import hashlib
import json
import os
import stat
import tarfile
import time
from pathlib import Path

from contained.errors import ContainedError
from contained.images import build, oci
from contained.images.entry_metadata import XATTR_PAX_PREFIX, kept_xattr
from contained.images.tar_extract import OPAQUE_MARKER, WHITEOUT_PREFIX
from contained.records import field, record

#: overlayfs marks opaque directories with this xattr (``user.`` when mounted with userxattr)
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
#: overlay features that store a rename or a metadata-only copy-up in xattrs: a layer cannot
#: express them, and they are off by default (redirect_dir=off, metacopy=off)
UNSUPPORTED_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect",
                      "trusted.overlay.metacopy", "user.overlay.metacopy")
#: files the runtime writes into every container's root (`contained.runtime.rootfs`): they
#: belong to the container, not to the image, so a layer leaves them out as Docker does
RUNTIME_FILES = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf"})
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
COPY_CHUNK = 1024 * 1024
GZIP_LEVEL = 6


class CommitFailed(ContainedError):
    """A directory cannot be turned into a layer (it changed while read, an unsupported marker)."""


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` as an int, or None when unset (reproducible-builds.org's variable)."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise CommitFailed(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since "
                           "1970: set it to e.g. $(git log -1 --format=%ct)")
    return int(value)


def created_timestamp(epoch: int | None) -> str:
    """The config's `created` field: the epoch when reproducible, else now (RFC 3339, UTC)."""
    moment = epoch if epoch is not None else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


# ---------------------------------------------------------------------------------------------
# One pass: tar → sha256 (diff_id) → gzip → sha256 (digest) → the blob file

class _Hashing:
    """A write-only stream that hashes and counts what goes through it."""

    def __init__(self, out):
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def tell(self) -> int:  # tarfile asks where it is
        return self.size

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def write_layer_blob(layout: Path, add_entries) -> build.BuiltLayer:
    """Run ``add_entries(tar)`` into a gzipped blob in `layout`: digest and diff_id in one pass.

    The blob is written to a temporary file next to its final place and renamed once its digest
    is known, so a reader never sees half a blob.
    """
    blobs = Path(layout) / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".layer-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "wb") as out:
            compressed = _Hashing(out)
            # No file name and mtime 0 in the gzip header: the digest depends on content only.
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                               compresslevel=GZIP_LEVEL) as gz:
                plain = _Hashing(gz)
                with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT,
                                  encoding="utf-8") as tar:
                    add_entries(tar)
        os.replace(tmp, oci.blob_path(layout, compressed.digest))
    finally:
        tmp.unlink(missing_ok=True)
    return build.BuiltLayer(oci.Descriptor(oci.MEDIA_TYPE_LAYER_GZIP, compressed.digest,
                                           compressed.size), plain.digest)


def layer_from_directory(directory: Path, layout: Path, *, epoch: int | None = None,
                         chown: tuple[int, int] | None = None,
                         exclude: frozenset = frozenset()) -> build.BuiltLayer:
    """An overlay upper directory (or any directory) → a gzipped OCI layer blob in `layout`.

    Whiteouts and opaque directories become ``.wh.`` entries; `epoch` clamps every mtime;
    `chown` (uid, gid) overrides every owner (COPY --chown); `exclude` names tar paths to
    leave out (`RUNTIME_FILES` for a container's upper directory).
    """
    root_fd = os.open(directory, OPEN_DIR)
    try:
        walker = _UpperWalker(root_fd, os.fstat(root_fd).st_dev, epoch, chown, exclude)
        return write_layer_blob(layout, lambda tar: walker.add_directory(tar, root_fd, ""))
    finally:
        os.close(root_fd)


@record
class _UpperWalker:
    """Adds a directory tree to a tar, never following a symlink and never leaving the tree."""

    root_fd: int
    device: int
    epoch: int | None
    chown: tuple[int, int] | None
    exclude: frozenset
    hardlinks: dict = field(default_factory=dict)   # (dev, ino) → first name in the tar

    def add_directory(self, tar: tarfile.TarFile, dir_fd: int, prefix: str) -> None:
        entries = []
        for name in os.listdir(dir_fd):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            tar_name = WHITEOUT_PREFIX + name if _is_whiteout(info) else name
            entries.append((tar_name, name, info))
        for tar_name, name, info in sorted(entries):
            path = prefix + tar_name
            if path in self.exclude:
                continue
            if info.st_dev != self.device:
                raise CommitFailed(f"{path} is a mount point in the upper directory: unmount it")
            if _is_whiteout(info):
                tar.addfile(self._info(path, tarfile.REGTYPE, info, mode=0))
            elif stat.S_ISDIR(info.st_mode):
                self._add_subdirectory(tar, dir_fd, name, path, info)
            elif stat.S_ISREG(info.st_mode):
                self._add_file(tar, dir_fd, name, path, info)
            elif stat.S_ISLNK(info.st_mode):
                entry = self._info(path, tarfile.SYMTYPE, info)
                entry.linkname = os.readlink(name, dir_fd=dir_fd)
                tar.addfile(entry)
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(info.st_mode) else tarfile.BLKTYPE
                entry = self._info(path, kind, info)
                entry.devmajor, entry.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
                tar.addfile(entry)
            elif stat.S_ISFIFO(info.st_mode):
                tar.addfile(self._info(path, tarfile.FIFOTYPE, info))
            # Sockets cannot be stored in a tar (Docker drops them too).

    def _add_subdirectory(self, tar, dir_fd, name, path, info) -> None:
        fd = _open_seen(name, OPEN_DIR, dir_fd, path, info)
        try:
            xattrs = _xattrs(fd, path)
            opaque = any(xattrs.get(attr) == b"y" for attr in OPAQUE_XATTRS)
            children = os.listdir(fd)
            if children and not opaque and all(f"{path}/{c}" in self.exclude for c in children):
                return  # only copied up for the runtime's own files (etc/ for etc/hosts)
            entry = self._info(path, tarfile.DIRTYPE, info)
            entry.pax_headers.update(_pax_xattrs(xattrs))
            tar.addfile(entry)
            if opaque:
                tar.addfile(self._info(f"{path}/{OPAQUE_MARKER}", tarfile.REGTYPE, info, mode=0))
            self.add_directory(tar, fd, path + "/")
        finally:
            os.close(fd)

    def _add_file(self, tar, dir_fd, name, path, info) -> None:
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in self.hardlinks:
            entry = self._info(path, tarfile.LNKTYPE, info)
            entry.linkname = self.hardlinks[key]
            tar.addfile(entry)
            return
        self.hardlinks[key] = path
        fd = _open_seen(name, OPEN_FILE, dir_fd, path, info)
        try:
            entry = self._info(path, tarfile.REGTYPE, info)
            entry.size = info.st_size
            entry.pax_headers.update(_pax_xattrs(_xattrs(fd, path)))
            with os.fdopen(os.dup(fd), "rb") as stream:
                tar.addfile(entry, stream)
        except OSError as error:  # tarfile's "unexpected end of data": the file shrank
            raise CommitFailed(f"cannot read {path} from the upper directory ({error}): stop "
                               "the container before committing") from error
        finally:
            os.close(fd)

    def _info(self, path: str, kind: bytes, info: os.stat_result, *,
              mode: int | None = None) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(path)
        entry.type = kind
        entry.mode = stat.S_IMODE(info.st_mode) if mode is None else mode
        entry.uid, entry.gid = self.chown or (info.st_uid, info.st_gid)
        entry.uname = entry.gname = ""
        mtime = int(info.st_mtime)
        entry.mtime = min(mtime, self.epoch) if self.epoch is not None else mtime
        return entry


def _is_whiteout(info: os.stat_result) -> bool:
    """overlayfs's whiteout: a character device 0:0 (Documentation/filesystems/overlayfs.rst)."""
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _open_seen(name: str, flags: int, dir_fd: int, path: str, seen: os.stat_result) -> int:
    """Open `name` (never following a symlink: OPEN_DIR/OPEN_FILE hold O_NOFOLLOW) and make
    sure it is what lstat saw; a container still running may swap entries meanwhile."""
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as error:  # ELOOP: swapped for a symlink since lstat; never followed
        raise CommitFailed(f"cannot open {path} in the upper directory ({error.strerror}): "
                           "stop the container before committing") from error
    try:
        _same_file(fd, seen, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_file(fd: int, seen: os.stat_result, path: str) -> None:
    """What was opened is what lstat saw (nothing swapped it for a symlink or a fifo)."""
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) \
            or stat.S_IFMT(opened.st_mode) != stat.S_IFMT(seen.st_mode):
        raise CommitFailed(f"{path} changed while it was read: stop the container and commit "
                           "again")


def _xattrs(fd: int, path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    found = {}
    for name in names:
        if name in UNSUPPORTED_XATTRS:
            raise CommitFailed(f"{path} carries {name}: overlay's redirect_dir/metacopy cannot "
                               "be stored in a layer; mount without them")
        try:
            found[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return found


def _pax_xattrs(xattrs: dict[str, bytes]) -> dict[str, str]:
    """The xattrs a layer keeps (the ones `tar_extract` restores), as PAX ``SCHILY.xattr.``
    records; binary values travel as surrogate-escaped strings, as tarfile expects."""
    kept = {}
    for name, value in sorted(xattrs.items()):
        if kept_xattr(name):
            kept[XATTR_PAX_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return kept


# ---------------------------------------------------------------------------------------------
# Configs and images: the parent's config, one more layer and one more history entry

def parent_config(store, image) -> dict:
    """The parent image's whole config blob (Labels, ExposedPorts, history included)."""
    if image is None:
        return {"architecture": build.host_architecture(), "os": "linux", "config": {},
                "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    return json.loads(oci.blob_path(store.layout, image.config_digest).read_bytes())


def add_history(config: dict, created_by: str, created: str, layer: str | None) -> dict:
    """A copy of `config` with a history entry (and the layer's diff_id, if the step made one)."""
    config = json.loads(json.dumps(config))
    config["created"] = created
    entry = {"created": created, "created_by": created_by}
    if layer is None:
        entry["empty_layer"] = True
    else:
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        config["rootfs"].setdefault("diff_ids", []).append(layer)
    config.setdefault("history", []).append(entry)
    return config


def tag_image(store, layers: list[tuple[oci.Descriptor, str]], config: dict, name: str):
    """Write the config and manifest, tag them `name` in the store; return the stored Image.

    The layer blobs must be in the store already. Holding the store's lock, so a concurrent
    ``rmi`` cannot remove a blob between the check and the tag.
    """
    from contained.images.layout import read_image, store_name
    from contained.images.reference import parse_reference

    tagged = store_name(parse_reference(name))
    config_bytes = build._canonical_json(config)
    with store.lock():
        for descriptor, _ in layers:
            if not oci.blob_path(store.layout, descriptor.digest).exists():
                raise CommitFailed(f"layer {descriptor.digest} vanished from the store (an "
                                   "rmi meanwhile?): build again with --no-cache")
        manifest = {
            "schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_MANIFEST,
            "config": {"mediaType": oci.MEDIA_TYPE_CONFIG, "size": len(config_bytes),
                       "digest": build.write_blob(store.layout, config_bytes)},
            "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                       for d, _ in layers]}
        manifest_bytes = build._canonical_json(manifest)
        entry = {"mediaType": oci.MEDIA_TYPE_MANIFEST, "size": len(manifest_bytes),
                 "digest": build.write_blob(store.layout, manifest_bytes)}
        store.tag(entry, tagged)
        return read_image(store.layout, oci.Descriptor.from_json(entry), tagged,
                          check_layer_digests=True)
