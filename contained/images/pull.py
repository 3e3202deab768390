"""Getting images into the store: ``contained pull`` (skopeo) and ``contained import`` (a tarball).

Taught in notebook 04 ("Images"). A pull is the tutorial's skopeo command made safe to run
while containers start, and never trusting what arrives::

    skopeo copy docker://busybox:latest oci:$HOME/tmp/pull-X/staging:pulling   # no lock held
    # read and verify the staging layout (contained.images.layout), then under oci.lock:
    ln $HOME/tmp/pull-X/staging/blobs/sha256/* $HOME/oci/blobs/sha256/
    # and tag it: an index.json entry named docker.io/library/busybox:latest

An import is ``docker import``: a root filesystem tarball becomes a one-layer image::

    tar -C rootfs -cf rootfs.tar . && contained import rootfs.tar NAME

skopeo copies into a private staging layout under ``$CONTAINED_HOME/tmp/pull-*/``, holding no
lock (a pull may take minutes; ``contained run`` must not wait for it), with the store's layer
blobs hard-linked in so shared layers are not downloaded again. Only once verified do its blobs
move into the store (same filesystem: by hard link) and the tag is written, under the lock. An
``oci:``/``oci-archive:`` source is verified before skopeo sees it: skopeo would copy a manifest
whose digest does not match, or a truncated blob.
"""

import contextlib
import gzip
import io
import ipaddress
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from contained.errors import ContainedError
from contained.home import ensure_home
from contained.images import build, oci, skopeo
from contained.images.layout import (
    Image,
    SourceNotFound,
    check_architecture,
    find_layout_entry,
    read_image,
    referenced_blobs,
    store_name,
)
from contained.images.reference import Reference, Source, parse_reference, parse_source

# Pulls land here first (same filesystem as oci/, so blobs move by hard link).
STAGING_DIR = "tmp"
STAGING_REF = "pulling"


class InvalidTarball(ContainedError):
    """A file given to ``contained import`` is not a (gzipped) tar archive."""


def pull(store, ref: str, *, registries_conf: Path | None = None,
         tls_verify: bool | None = None, progress: bool | None = None) -> Image:
    """Copy an image into `store` (a `contained.images.store.Store`) with skopeo, verify it,
    then tag it. See `Store.pull` for the arguments."""
    source = parse_source(ref)
    action = f"cannot pull {source}"
    if progress is None:
        progress = sys.stderr.isatty()
    staging_root = ensure_home(store.home) / STAGING_DIR
    staging_root.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pull-", dir=staging_root) as scratch:
        skopeo_source = _prepare_source(source, Path(scratch), action)
        if tls_verify is None:
            tls_verify = not is_loopback(source.reference.registry)
        return _copy_in(store, source, skopeo_source, Path(scratch), action,
                        registries_conf=registries_conf, tls_verify=tls_verify,
                        progress=progress)


def import_tarball(store, tarball: Path, name: str) -> Image:
    """A root filesystem tarball (plain or gzipped) → a single-layer image in `store`, like
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
    return store.add_image([data], name, {"Env": [f"PATH={oci.DEFAULT_PATH}"]})


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


def _prepare_source(source: Source, scratch: Path, action: str) -> str:
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


def _copy_in(store, source: Source, skopeo_source: str, scratch: Path, action: str, *,
             registries_conf: Path | None, tls_verify: bool, progress: bool) -> Image:
    """skopeo copies into a private staging layout, without holding the lock; the verified
    blobs then move into the store by hard link and the tag is written, under the lock."""
    final_name = store_name(source.reference)
    staging = scratch / "staging"
    store.lend_layer_blobs(staging)
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
    with store.lock():
        for digest in referenced_blobs(staging, entry):
            target = oci.blob_path(store.layout, digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.link(oci.blob_path(staging, digest), target)
        store.tag(entry, final_name)
    return image


def _extract_archive(archive: Path, dest: Path, action: str) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = _layout_members(tar, archive, action)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4 (Debian 12's 3.11.2) has no filter: checked above instead
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError) as err:
        raise InvalidTarball(f"{action}: {archive} is not a readable OCI archive ({err})"
                             ) from None


def _layout_members(tar: tarfile.TarFile, archive: Path, action: str) -> list[tarfile.TarInfo]:
    """The archive's entries, refused unless each is a file or directory under a relative name
    without ``..``: an archive must not write outside dest, on every Python."""
    members = tar.getmembers()
    for member in members:
        if (member.name.startswith("/") or ".." in member.name.split("/")
                or not (member.isfile() or member.isdir())):
            raise InvalidTarball(f"{action}: {archive} holds {member.name!r}, which an OCI "
                                 "archive never has (only files and directories inside it)")
    return members


def _not_found_hint(reference: Reference) -> str:
    if reference.path == "library/busybox":
        return "try `contained import busybox` (offline, from the host's busybox)"
    return "check the name and tag"
