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
    layers/         each layer unpacked once, by diff_id (`contained.images.layers.cached_layer`),
                    for overlay lowerdirs
    tmp/pull-*/     a pull in progress: skopeo copies into a private layout there (holding
                    no lock, so a long pull blocks nobody), with the store's layer blobs
                    hard-linked in so shared layers are not downloaded again; once verified,
                    its blobs are hard-linked into oci/ and the tag is written, under the lock

Nothing read from the layout is trusted: every pull and import checks index entry → manifest
(digest and size) → config (digest and size) → as many diff_ids as layers → every layer blob
(digest and size), because skopeo passes wrong manifest digests, sizes, diff_ids and truncated
blobs through. Reads check the manifest and config again and the layers' sizes (once per
version of index.json in a process); layer digests and diff_ids are checked once more while
unpacking.

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
import fcntl
import gzip
import hashlib
import io
import ipaddress
import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from contained.errors import ContainedError
from contained.home import ensure_home, home_path
from contained.images import build, oci, skopeo
from contained.images.reference import Reference, Source, parse_reference, parse_source

LAYOUT_DIR = "oci"
LOCK_FILE = "oci.lock"
LAYER_CACHE_DIR = "layers"
REF_NAME = build.ANNOTATION_REF_NAME
# Pulls land here first (same filesystem as oci/, so blobs move by hard link).
STAGING_DIR = "tmp"
STAGING_REF = "pulling"
LAYER_MEDIA_TYPES = (oci.MEDIA_TYPE_LAYER, oci.MEDIA_TYPE_LAYER_GZIP, oci.MEDIA_TYPE_LAYER_ZSTD,
                     oci.MEDIA_TYPE_DOCKER_LAYER_GZIP,
                     "application/vnd.docker.image.rootfs.diff.tar")
MANIFEST_MEDIA_TYPES = (oci.MEDIA_TYPE_MANIFEST,
                        "application/vnd.docker.distribution.manifest.v2+json")
INDEX_MEDIA_TYPES = (oci.MEDIA_TYPE_INDEX,
                     "application/vnd.docker.distribution.manifest.list.v2+json")
HASH_CHUNK = 1 << 20


class ImageNotFound(ContainedError):
    """No image of that name in the store."""


class BlobMissing(ContainedError):
    """A descriptor names a blob that is not in the layout."""


class InvalidImage(ContainedError):
    """An image's manifest or config is malformed or inconsistent (e.g. diff_ids ≠ layers)."""


class ArchitectureMismatch(ContainedError):
    """The image was built for another architecture or OS than this machine's."""


class SourceNotFound(ContainedError):
    """An oci:/oci-archive: source, or a tarball to import, does not exist or has no such tag."""


class InvalidTarball(ContainedError):
    """A file given to ``contained import`` is not a (gzipped) tar archive."""


class DestinationNotEmpty(ContainedError):
    """``contained unpack`` was given a destination that already has content."""


@dataclass(frozen=True)
class ImageConfig:
    """What the runtime needs from an image's config: how to start its process, and where."""

    env: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    architecture: str = ""
    os: str = ""

    @classmethod
    def from_json(cls, data: dict) -> "ImageConfig":
        """From an OCI image config (the blob), tolerating absent or null fields."""
        config = data.get("config") or {}
        return cls(
            env=list(config.get("Env") or []),
            entrypoint=_string_list(config.get("Entrypoint")),
            cmd=_string_list(config.get("Cmd")),
            working_dir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            architecture=data.get("architecture") or "",
            os=data.get("os") or "",
        )


@dataclass(frozen=True)
class Image:
    """An image in the store: its name, manifest digest, config and layers (bottom first)."""

    name: str
    digest: str
    config: ImageConfig
    layers: list[tuple[oci.Descriptor, str]]
    size: int  # bytes stored: manifest + config + compressed layers
    config_digest: str = ""

    @property
    def reference(self) -> Reference:
        return parse_reference(self.name)

    def describe(self) -> dict:
        """What ``contained inspect`` prints."""
        return {
            "name": self.name,
            "digest": self.digest,
            "architecture": self.config.architecture,
            "os": self.config.os,
            "config": {"Env": self.config.env, "Entrypoint": self.config.entrypoint,
                       "Cmd": self.config.cmd, "WorkingDir": self.config.working_dir,
                       "User": self.config.user},
            "config_digest": self.config_digest,
            "layers": [{"digest": d.digest, "diff_id": diff_id, "size": d.size,
                        "mediaType": d.media_type} for d, diff_id in self.layers],
            "size": self.size,
        }


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
                name = _name_of(entry)
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
        from contained.images import (
            layers,  # the unpacker is a peer module; keep the store importable
        )

        with self.lock(shared=True):
            self.layer_cache.mkdir(mode=0o700, exist_ok=True)
            return [layers.cached_layer(self.layer_cache, oci.blob_path(self.layout, d.digest),
                                        d, diff_id) for d, diff_id in image.layers]

    def unpack(self, ref: str, dest: Path) -> Image:
        """Flatten the image into `dest` (which must be empty or absent), whiteouts applied."""
        from contained.images import layers

        dest = Path(dest)
        with self.lock(shared=True):
            image = self._image(ref)
            if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
                raise DestinationNotEmpty(f"cannot unpack {image.reference.familiar} into {dest}: "
                                          f"it is not an empty directory; pick a new path")
            created = not dest.exists()
            dest.mkdir(parents=True, exist_ok=True)
            try:
                layers.apply_layers([(oci.blob_path(self.layout, d.digest), d, diff_id)
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
        source = parse_source(ref)
        action = f"cannot pull {source}"
        if progress is None:
            progress = sys.stderr.isatty()
        staging_root = ensure_home(self.home) / STAGING_DIR
        staging_root.mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pull-", dir=staging_root) as scratch:
            skopeo_source = self._prepare_source(source, Path(scratch), action)
            if tls_verify is None:
                tls_verify = not is_loopback(source.reference.registry)
            return self._copy_in(source, skopeo_source, Path(scratch), action,
                                 registries_conf=registries_conf,
                                 tls_verify=tls_verify, progress=progress)

    def add_image(self, layer_tars: list[bytes], name: str, config: dict | None = None) -> Image:
        """Build an image from uncompressed layer tars (bottom first) and tag it `name`."""
        reference = parse_reference(name)
        store_name = _store_name(reference)
        with self.lock():
            build.build_image(self.layout, layer_tars, store_name,
                              architecture=build.host_architecture(), config=config)
            entry = self._entry(store_name)
            return read_image(self.layout, oci.Descriptor.from_json(entry), store_name,
                              check_layer_digests=True)

    def import_tarball(self, tarball: Path, name: str) -> Image:
        """A root filesystem tarball (plain or gzipped) → a single-layer image, like
        ``docker import``. The tarball is read into memory."""
        tarball = Path(tarball)
        parse_reference(name)
        if tarball.is_dir():
            layout = (f" (an OCI layout: copy it in with `contained pull oci:{tarball}`)"
                      if (tarball / "index.json").exists() else "")
            raise SourceNotFound(f"cannot import {tarball}: it is a directory{layout}; import "
                                 f"takes a rootfs tarball (tar -C rootfs -cf rootfs.tar .)")
        if not tarball.is_file():
            raise SourceNotFound(f"cannot import {tarball}: no such file; give a rootfs tarball "
                                 f"(tar -C rootfs -cf rootfs.tar .)")
        data = tarball.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as err:
                raise InvalidTarball(f"cannot import {tarball}: broken gzip ({err})") from None
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                tar.getmembers()
        except tarfile.TarError as err:
            raise InvalidTarball(f"cannot import {tarball}: not a tar archive ({err}); give a "
                                 f"rootfs tarball (tar -C rootfs -cf rootfs.tar .)") from None
        return self.add_image([data], name, {"Env": [f"PATH={oci.DEFAULT_PATH}"]})

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

    def collect_garbage(self) -> list[str]:
        """Delete blobs no index entry references; return their digests."""
        with self.lock():
            return self._collect_garbage()

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, shared: bool = False):
        """Hold the store's flock: exclusive to write, shared to read a consistent layout."""
        ensure_home(self.home)
        fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if not (self.layout / "index.json").exists():
                # Creating the layout is a write: a shared holder upgrades for it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._ensure_layout()
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

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
            if _name_of(entry) == name:
                return entry
        raise _not_found(parse_reference(name), self.home)

    def _image(self, ref: str) -> Image:
        reference = parse_reference(ref)
        for entry in self._entries():
            if _matches(entry, reference):
                return read_image(self.layout, oci.Descriptor.from_json(entry), _name_of(entry))
        raise _not_found(reference, self.home)

    def _prepare_source(self, source: Source, scratch: Path, action: str) -> str:
        """The skopeo source string, after checking an oci:/oci-archive: source ourselves:
        skopeo would copy a manifest whose digest does not match, or a truncated blob."""
        if source.transport == "docker":
            return source.skopeo()
        if not source.path.exists():
            raise SourceNotFound(f"{action}: {source.path} does not exist")
        layout = source.path
        if source.transport == "oci-archive":
            layout = scratch / "layout"
            _extract_archive(source.path, layout, action)
        entry = find_layout_entry(layout, source.layout_tag, action)
        image = read_image(layout, oci.Descriptor.from_json(entry), str(source),
                           check_layer_digests=True, context=action)
        check_architecture(image, action)
        return source.skopeo(layout)

    def _copy_in(self, source: Source, skopeo_source: str, scratch: Path, action: str, *,
                 registries_conf: Path | None, tls_verify: bool, progress: bool) -> Image:
        """skopeo copies into a private staging layout, without holding the lock (a pull may
        take minutes; `contained run` must not wait for it); the verified blobs then move into
        the store by hard link and the tag is written, under the lock."""
        final_name = _store_name(source.reference)
        staging = scratch / "staging"
        self._link_blobs_for_reuse(staging)
        skopeo.copy(skopeo_source, f"oci:{staging}:{STAGING_REF}", action=action,
                    registries_conf=registries_conf, src_tls_verify=tls_verify,
                    architecture=build.host_architecture(), progress=progress,
                    not_found_hint=_not_found_hint(source.reference))
        entry = find_layout_entry(staging, STAGING_REF, action)
        image = read_image(staging, oci.Descriptor.from_json(entry), final_name,
                           check_layer_digests=True, context=action)
        check_architecture(image, action)
        if source.reference.digest and image.digest != source.reference.digest:
            raise oci.BlobMismatch(f"{action}: got manifest {image.digest}, not the requested "
                                   f"{source.reference.digest}")
        with self.lock():
            for digest in _referenced_blobs(staging, entry):
                target = oci.blob_path(self.layout, digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(oci.blob_path(staging, digest), target)
            index = self._read_index()
            index["manifests"] = [e for e in index["manifests"] if _name_of(e) != final_name]
            index["manifests"].append({"mediaType": entry.get("mediaType", oci.MEDIA_TYPE_MANIFEST),
                                       "digest": entry["digest"], "size": entry["size"],
                                       "annotations": {REF_NAME: final_name}})
            self._write_index(index)
        return image

    def _link_blobs_for_reuse(self, staging: Path) -> None:
        """Hard-link the store's layer blobs into the staging layout: skopeo skips blobs already
        in its destination, so layers shared with stored images are not downloaded again.

        Only layers: skopeo rewrites manifests and configs in place (truncate, then write),
        which through a hard link would briefly truncate the store's copy under its readers.
        """
        with self.lock(shared=True):
            layers = {digest for entry in self._entries()
                      for digest in _referenced_blobs(self.layout, entry, layers_only=True)}
            for digest in layers:
                target = oci.blob_path(staging, digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.link(oci.blob_path(self.layout, digest), target)

    def _collect_garbage(self) -> list[str]:
        referenced = set()
        for entry in self._entries():
            referenced |= _referenced_blobs(self.layout, entry)
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
            image = read_image(self.layout, oci.Descriptor.from_json(entry), _name_of(entry))
        except ContainedError:
            return []
        return [diff_id for _, diff_id in image.layers]


# -- reading and verifying any OCI layout (the store's, or a source's) --------------------------


def read_index(layout: Path) -> dict:
    """A layout's index.json, checked to be an index."""
    path = Path(layout) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceNotFound(f"{layout} is not an OCI layout: no index.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidImage(f"{path} is not valid JSON ({err}); the layout is corrupt") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise InvalidImage(f"{path} is not an OCI image index; the layout is corrupt")
    for entry in index.get("manifests", []):
        annotations = (entry.get("annotations") or {}) if isinstance(entry, dict) else None
        if not isinstance(annotations, dict) or not isinstance(annotations.get(REF_NAME, ""),
                                                               str):
            raise InvalidImage(f"{path} lists {json.dumps(entry)[:40]} as an image, which is not "
                               "a descriptor; the layout is corrupt")
    index.setdefault("manifests", [])
    return index


def find_layout_entry(layout: Path, tag: str | None, action: str) -> dict:
    """The index.json entry `tag` names (or the only entry, as skopeo does without a tag)."""
    entries = read_index(layout)["manifests"]
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        names = ", ".join(sorted(_name_of(e) or "?" for e in entries)) or "none"
        raise SourceNotFound(f"{action}: {layout} holds {len(entries)} images (tags: {names}); "
                             f"name one as oci:DIR:TAG")
    for entry in entries:
        if _name_of(entry) == tag:
            return entry
    names = ", ".join(sorted(_name_of(e) for e in entries if _name_of(e))) or "none"
    raise SourceNotFound(f"{action}: no tag {tag!r} in {layout} (tags: {names})")


def read_image(layout: Path, descriptor: oci.Descriptor, name: str, *,
               check_layer_digests: bool = False, context: str = "") -> Image:
    """Follow descriptor → manifest → config → layers, verifying each step.

    Manifests and configs are always verified (digest and size); layer blobs by size, and by
    digest too with `check_layer_digests`. A multi-arch index resolves to the host's entry.
    """
    context = context or f"image {name}"
    manifest = _read_json_blob(layout, descriptor, "manifest", context)
    if descriptor.media_type in INDEX_MEDIA_TYPES or manifest.get("mediaType") in INDEX_MEDIA_TYPES:
        chosen = _platform_entry(manifest, context)
        return read_image(layout, chosen, name, check_layer_digests=check_layer_digests,
                          context=context)
    media_type = manifest.get("mediaType") or descriptor.media_type
    if media_type not in MANIFEST_MEDIA_TYPES or not isinstance(manifest.get("layers"), list):
        raise InvalidImage(f"{context}: {descriptor.digest} is not an image manifest "
                           f"(mediaType {media_type!r})")
    try:
        config_descriptor = oci.Descriptor.from_json(manifest.get("config") or {})
        layer_descriptors = [oci.Descriptor.from_json(layer) for layer in manifest["layers"]]
    except (oci.BadDigest, oci.BlobMismatch) as err:
        raise InvalidImage(f"{context}: manifest {descriptor.digest}: {err}") from None
    config = _read_json_blob(layout, config_descriptor, "config", context)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_descriptors):
        count = len(diff_ids) if isinstance(diff_ids, list) else "no"
        raise InvalidImage(f"{context}: config {config_descriptor.digest} lists {count} diff_ids "
                           f"for {len(layer_descriptors)} layers; the image is corrupt")
    for diff_id in diff_ids:
        try:
            oci.validate_digest(diff_id)
        except oci.BadDigest:
            raise InvalidImage(f"{context}: config {config_descriptor.digest} has an invalid "
                               f"diff_id {diff_id!r}; the image is corrupt") from None
    for layer in layer_descriptors:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise InvalidImage(f"{context}: layer {layer.digest} has unsupported media type "
                               f"{layer.media_type!r}")
        _check_blob(layout, layer, "layer", context, hash_it=check_layer_digests)
    size = descriptor.size + config_descriptor.size + sum(d.size for d in layer_descriptors)
    return Image(name, descriptor.digest, ImageConfig.from_json(config),
                 list(zip(layer_descriptors, diff_ids, strict=True)), size,
                 config_descriptor.digest)


def check_architecture(image: Image, action: str) -> None:
    """Refuse an image this machine cannot run natively."""
    host = build.host_architecture()
    if image.config.architecture != host or image.config.os not in ("linux", ""):
        platform = f"{image.config.os or '?'}/{image.config.architecture or '?'}"
        raise ArchitectureMismatch(f"{action}: the image is for {platform}, this machine is "
                                   f"linux/{host}; use an image built for {host}")


def is_loopback(registry: str) -> bool:
    """Whether a registry host[:port] is this machine (plain HTTP is fine there)."""
    host = registry
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _platform_entry(index: dict, context: str) -> oci.Descriptor:
    host = build.host_architecture()
    entries = index.get("manifests") or []
    for entry in entries:
        platform = entry.get("platform") or {}
        if platform.get("architecture") == host and platform.get("os", "linux") == "linux":
            return oci.Descriptor.from_json(entry)
    found = ", ".join(sorted(f"{(e.get('platform') or {}).get('os', '?')}/"
                             f"{(e.get('platform') or {}).get('architecture', '?')}"
                             for e in entries)) or "none"
    raise ArchitectureMismatch(f"{context}: no linux/{host} image in the index (it has: {found})")


def _read_json_blob(layout: Path, descriptor: oci.Descriptor, what: str, context: str) -> dict:
    data = _check_blob(layout, descriptor, what, context, hash_it=True, keep=True)
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidImage(f"{context}: {what} {descriptor.digest} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidImage(f"{context}: {what} {descriptor.digest} is not a JSON object")
    return value


def _check_blob(layout: Path, descriptor: oci.Descriptor, what: str, context: str, *,
                hash_it: bool, keep: bool = False) -> bytes:
    """Check a blob's size (and digest): skopeo passes both kinds of damage through."""
    path = oci.blob_path(layout, descriptor.digest)
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        raise BlobMissing(f"{context}: {what} blob {descriptor.digest} is missing from {layout}; "
                          f"pull the image again") from None
    if size != descriptor.size:
        raise oci.BlobMismatch(f"{context}: {what} {descriptor.digest} is {size} bytes, its "
                               f"descriptor says {descriptor.size}; the image is corrupt")
    if not hash_it:
        return b""
    algorithm, expected = oci.validate_digest(descriptor.digest)
    digest = hashlib.new(algorithm)
    kept = io.BytesIO()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if keep:
                kept.write(chunk)
    if digest.hexdigest() != expected:
        raise oci.BlobMismatch(f"{context}: {what} {descriptor.digest} has digest "
                               f"{algorithm}:{digest.hexdigest()}; the image is corrupt")
    return kept.getvalue()


def _referenced_blobs(layout: Path, descriptor_json: dict, *,
                      layers_only: bool = False) -> set[str]:
    """Every blob an index entry reaches (best effort on damaged images: keep what we can)."""
    digest = descriptor_json.get("digest", "")
    if not _is_digest(digest):
        return set()
    found = set() if layers_only else {digest}
    try:
        manifest = json.loads(oci.blob_path(layout, digest).read_bytes())
    except (OSError, ValueError, ContainedError):
        return found
    if not isinstance(manifest, dict):
        return found
    for child in manifest.get("manifests") or []:
        if isinstance(child, dict):
            found |= _referenced_blobs(layout, child, layers_only=layers_only)
    config = [] if layers_only else [manifest.get("config") or {}]
    for item in [*config, *(manifest.get("layers") or [])]:
        if isinstance(item, dict) and _is_digest(item.get("digest")):
            found.add(item["digest"])
    return found


def _is_digest(value) -> bool:
    try:
        oci.validate_digest(value)
    except oci.BadDigest:
        return False
    return True


def _extract_archive(archive: Path, dest: Path, action: str) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # an archive must not write outside dest
    except (tarfile.TarError, OSError) as err:
        raise InvalidTarball(f"{action}: {archive} is not a readable OCI archive ({err})"
                             ) from None


def _name_of(entry: dict) -> str:
    return (entry.get("annotations") or {}).get(REF_NAME, "")


def _matches(entry: dict, reference: Reference) -> bool:
    name = _name_of(entry)
    if not name:
        return False
    if reference.digest:
        try:
            other = parse_reference(name)
        except ContainedError:
            return False
        return other.repository == reference.repository and entry.get("digest") == reference.digest
    return name == reference.name


def _store_name(reference: Reference) -> str:
    """Tag and digest: keep the tag (the digest was checked). Digest only: name@digest."""
    if reference.tag:
        return f"{reference.repository}:{reference.tag}"
    return reference.name


def _not_found_hint(reference: Reference) -> str:
    if reference.path == "library/busybox":
        return "try `contained import busybox` (offline, from the host's busybox)"
    return "check the name and tag"


def _not_found(reference: Reference, home: Path) -> ImageNotFound:
    hint = f"`contained pull {reference.familiar}`"
    if reference.path == "library/busybox":
        hint = f"`contained import busybox` (offline) or {hint}"
    return ImageNotFound(f"no image {reference.familiar} in {home}: run {hint}")


def _string_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
