"""The image store: pulled images in one OCI layout, and their layers unpacked once.

Taught in notebook 04 ("Images"). The store is what the tutorial builds by hand, kept tidy::

    skopeo copy docker://busybox:latest oci:$HOME/oci:docker.io/library/busybox:latest
    cat $HOME/oci/index.json          # one entry per image, tagged with its full name
    tar -xf $HOME/oci/blobs/sha256/<layer> -C $HOME/layers/sha256/<diff_id>

Layout of ``CONTAINED_HOME`` (mode 0700, see `contained.home`)::

    oci/            one OCI image layout shared by every image, so blobs are stored once;
                    each image is an index.json entry whose
                    org.opencontainers.image.ref.name annotation is its normalised reference
    oci.lock        flock(2)ed: exclusively around every write, shared around reads
    layers/         each layer unpacked once, by diff_id (`contained.images.unpack.cached_layer`),
                    for overlay lowerdirs
    tmp/pull-*/     a pull in progress: skopeo copies into a private layout there (holding
                    no lock, so a long pull blocks nobody), with the store's layer blobs
                    hard-linked in so shared layers are not downloaded again; once verified,
                    its blobs are hard-linked into oci/ and the tag is written, under the lock

Nothing read from the layout is trusted (`contained.images.layout` reads it): every pull and
import checks index entry → manifest → config → diff_ids → every layer blob, digests and sizes,
because skopeo passes wrong ones through (`contained.images.pull` gets images in). Reads check
the manifest and config again and the layers' sizes (once per version of index.json in a
process); layer digests and diff_ids are checked once more while unpacking.

CONTRACT (the runtime relies on exactly this):

    class Store:
        Store(home: Path | None = None)          # defaults to contained.home.home_path()
        .pull(ref: str, ...) -> Image
        .images() -> list[Image]
        .image(ref: str) -> Image                # raises ImageNotFound (hint: pull / import)
        .remove(ref: str) -> None
        .layer_dirs(image: Image) -> list[Path]  # bottom layer first, each unpacked once
        .unpack(ref: str, dest: Path) -> Image   # flattened, whiteouts applied

    Image: .name (normalised reference), .digest (manifest digest), .config (ImageConfig),
           .layers (list of (Descriptor, diff_id)), .size
    ImageConfig: .env (list "K=V"), .entrypoint (list|None), .cmd (list|None),
                 .working_dir (str), .user (str), .architecture (str), .os (str)

`remove` (``contained rmi``) deletes the tag and the blobs no other image uses, but never the
unpacked layer directories: a running container may have one as its overlay lowerdir. Those are
listed by `unused_layer_dirs` for ``contained gc``, which knows which containers run.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

from contained import filelock
from contained.errors import ContainedError
from contained.home import ensure_home, home_path
from contained.images import oci
from contained.images.layout import (
    REF_NAME,
    Image,
    name_of,
    read_image,
    read_index,
    referenced_blobs,
    store_name,
)
from contained.images.reference import Reference, parse_reference

LAYOUT_DIR = "oci"
LOCK_FILE = "oci.lock"
LAYER_CACHE_DIR = "layers"


class ImageNotFound(ContainedError):
    """No image of that name in the store."""


class DestinationNotEmpty(ContainedError):
    """``contained unpack`` was given a destination that already has content."""


# Resolved images by (layout, reference), with the version of index.json they came from.
_RESOLVED: dict[tuple[str, str], tuple[tuple[int, int, int] | None, Image]] = {}


class Store:
    """The images under one CONTAINED_HOME. See the module docstring for the layout."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else home_path()
        self.layout = self.home / LAYOUT_DIR
        self.layer_cache = self.home / LAYER_CACHE_DIR

    # -- reading ---------------------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every tagged image that reads whole, sorted by name (`survey` names the others)."""
        return self.survey()[0]

    def survey(self) -> tuple[list[Image], dict[str, str]]:
        """Every tagged image sorted by name, and the broken ones: name → why, in one line.

        One damaged image (a blob deleted, an entry pointing at a missing manifest) must not
        hide the others: `contained images` lists it as broken next to them.
        """
        images, broken = [], {}
        with self.lock(shared=True):
            for entry in self._entries():
                name = name_of(entry)
                if not name:
                    continue
                try:
                    images.append(read_image(self.layout, oci.Descriptor.from_json(entry), name))
                except ContainedError as error:
                    broken[name] = str(error)
        return sorted(images, key=lambda image: image.name), dict(sorted(broken.items()))

    def image(self, ref: str) -> Image:
        """The image `ref` names (busybox, busybox:latest, busybox@sha256:…).

        Resolving means reading and verifying the index, manifest and config; a process that
        starts many containers (a notebook) does it once per image and version of the index.
        Every change to the index replaces the file, so its inode and mtime tell a new one.
        """
        key = (str(self.layout), ref)
        cached = _RESOLVED.get(key)
        if cached is not None and cached[0] == self._index_version():
            return cached[1]
        with self.lock(shared=True):
            version = self._index_version()
            image = self._image(ref)
        _RESOLVED[key] = (version, image)
        return image

    def _index_version(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.layout / "index.json")
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def layer_dirs(self, image: Image) -> list[Path]:
        """The image's layers unpacked (once, cached by diff_id), bottom first, for overlay."""
        with self.lock(shared=True):
            # Every container after the first finds its layers here (unpack.cached_path: a
            # directory there is complete), without loading the unpacker (~9 ms a CLI run).
            ready = [self.layer_cache.joinpath(*oci.validate_digest(diff_id))
                     for _, diff_id in image.layers]
            if all(path.is_dir() for path in ready):
                return ready
            from contained.images import unpack

            self.layer_cache.mkdir(mode=0o700, exist_ok=True)
            return unpack.cached_layers(self.layer_cache, [
                (oci.blob_path(self.layout, d.digest), d, diff_id) for d, diff_id in image.layers])

    def unpack(self, ref: str, dest: Path) -> Image:
        """Flatten the image into `dest` (which must be empty or absent), whiteouts applied."""
        from contained.images import unpack

        dest = Path(dest)
        with self.lock(shared=True):
            image = self._image(ref)
            if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
                raise DestinationNotEmpty(f"cannot unpack {image.reference.familiar} into {dest}: "
                                          f"it is not an empty directory; pick a new path")
            created = not dest.exists()
            dest.mkdir(parents=True, exist_ok=True)
            try:
                unpack.apply_layers([(oci.blob_path(self.layout, d.digest), d, diff_id)
                                     for d, diff_id in image.layers], dest)
            except BaseException:
                if created:
                    shutil.rmtree(dest, ignore_errors=True)
                raise
        return image

    def unused_layer_dirs(self) -> list[Path]:
        """Cached layer directories no image uses any more (``contained gc`` removes them,
        after checking that no running container has one as a lowerdir)."""
        with self.lock(shared=True):
            used = {diff_id for e in self._entries() for diff_id in self._diff_ids(e)}
        found = []
        for algorithm_dir in sorted(self.layer_cache.glob("*")):
            for path in sorted(algorithm_dir.glob("*")):
                if path.is_dir() and f"{algorithm_dir.name}:{path.name}" not in used:
                    found.append(path)
        return found

    # -- writing ---------------------------------------------------------------------------

    def pull(self, ref: str, *, registries_conf: Path | None = None,
             tls_verify: bool | None = None, progress: bool | None = None) -> Image:
        """Copy an image into the store with skopeo, verify it, then tag it.

        `ref` is a reference or a skopeo source (docker://, oci:DIR[:TAG], oci-archive:F[:TAG]).
        `tls_verify` None means: off for loopback registries (plain HTTP), on elsewhere.
        `progress` None means: skopeo's progress output when stderr is a terminal.
        """
        from contained.images import pull  # skopeo, tarfile: not loaded by `run` or `ps`

        return pull.pull(self, ref, registries_conf=registries_conf, tls_verify=tls_verify,
                         progress=progress)

    def add_image(self, layer_tars: list[bytes], name: str, config: dict | None = None) -> Image:
        """Build an image from uncompressed layer tars (bottom first) and tag it `name`."""
        from contained.images import build

        reference = parse_reference(name)
        tagged = store_name(reference)
        with self.lock():
            build.build_image(self.layout, layer_tars, tagged,
                              architecture=build.host_architecture(), config=config)
            entry = self._entry(tagged)
            return read_image(self.layout, oci.Descriptor.from_json(entry), tagged,
                              check_layer_digests=True)

    def import_tarball(self, tarball: Path, name: str) -> Image:
        """A root filesystem tarball (plain or gzipped) → a single-layer image, like
        ``docker import``. The tarball is read into memory."""
        from contained.images import pull

        return pull.import_tarball(self, tarball, name)

    def remove(self, ref: str) -> None:
        """Untag the image and delete the blobs no other image uses (not the layer dirs)."""
        reference = parse_reference(ref)
        with self.lock():
            index = self._read_index()
            keep = [e for e in index["manifests"] if not _matches(e, reference)]
            if len(keep) == len(index["manifests"]):
                raise _not_found(reference, self.home)
            index["manifests"] = keep
            self._write_index(index)
            self._collect_garbage()

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, shared: bool = False):
        """Hold the store's flock: exclusive to write, shared to read a consistent layout."""
        ensure_home(self.home)
        with filelock.locked(self.home / LOCK_FILE, shared) as fd:
            if not (self.layout / "index.json").exists():
                # Creating the layout is a write: a shared holder upgrades for it.
                filelock.relock(fd)
                self._ensure_layout()
                filelock.relock(fd, shared)
            yield

    def _ensure_layout(self) -> None:
        if (self.layout / "index.json").exists():
            return
        self.layout.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        _write_atomic(self.layout / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        if not (self.layout / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX,
                               "manifests": []})

    def _read_index(self) -> dict:
        return read_index(self.layout)

    def _write_index(self, index: dict) -> None:
        _write_atomic(self.layout / "index.json", json.dumps(index, indent=None).encode())

    def _entries(self) -> list[dict]:
        return list(self._read_index().get("manifests") or [])

    def _entry(self, name: str) -> dict:
        for entry in self._entries():
            if name_of(entry) == name:
                return entry
        raise _not_found(parse_reference(name), self.home)

    def _image(self, ref: str) -> Image:
        reference = parse_reference(ref)
        for entry in self._entries():
            if _matches(entry, reference):
                return read_image(self.layout, oci.Descriptor.from_json(entry), name_of(entry))
        raise _not_found(reference, self.home)

    def tag(self, entry: dict, name: str) -> None:
        """Point tag `name` at the manifest `entry` describes; the caller holds the lock and has
        put the image's blobs in."""
        index = self._read_index()
        index["manifests"] = [e for e in index["manifests"] if name_of(e) != name]
        index["manifests"].append({"mediaType": entry.get("mediaType", oci.MEDIA_TYPE_MANIFEST),
                                   "digest": entry["digest"], "size": entry["size"],
                                   "annotations": {REF_NAME: name}})
        self._write_index(index)

    def lend_layer_blobs(self, staging: Path) -> None:
        """Hard-link the store's layer blobs into the staging layout: skopeo skips blobs already
        in its destination, so layers shared with stored images are not downloaded again.

        Only layers: skopeo rewrites manifests and configs in place (truncate, then write),
        which through a hard link would briefly truncate the store's copy under its readers.
        """
        with self.lock(shared=True):
            layers = {digest for entry in self._entries()
                      for digest in referenced_blobs(self.layout, entry, layers_only=True)}
            for digest in layers:
                target = oci.blob_path(staging, digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.link(oci.blob_path(self.layout, digest), target)

    def _collect_garbage(self) -> list[str]:
        referenced = set()
        for entry in self._entries():
            referenced |= referenced_blobs(self.layout, entry)
        deleted = []
        for algorithm_dir in sorted((self.layout / "blobs").glob("*")):
            for path in sorted(algorithm_dir.iterdir()):
                digest = f"{algorithm_dir.name}:{path.name}"
                if digest not in referenced and (path.is_file() or path.is_symlink()):
                    path.unlink()
                    deleted.append(digest)
        return deleted

    def _diff_ids(self, entry: dict) -> list[str]:
        try:
            image = read_image(self.layout, oci.Descriptor.from_json(entry), name_of(entry))
        except ContainedError:
            return []
        return [diff_id for _, diff_id in image.layers]


def _matches(entry: dict, reference: Reference) -> bool:
    name = name_of(entry)
    if not name:
        return False
    if reference.digest:
        try:
            other = parse_reference(name)
        except ContainedError:
            return False
        return other.repository == reference.repository and entry.get("digest") == reference.digest
    return name == reference.name


def _not_found(reference: Reference, home: Path) -> ImageNotFound:
    hint = f"`contained pull {reference.familiar}`"
    if reference.path == "library/busybox":
        hint = f"`contained import busybox` (offline) or {hint}"
    return ImageNotFound(f"no image {reference.familiar} in {home}: run {hint}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
