"""Reading an OCI image layout without trusting it: index.json → manifest → config → layers.

Taught in notebook 04 ("Images"). The shell equivalent, for one tagged image::

    jq '.manifests[] | select(.annotations[REF_NAME] == "TAG")' DIR/index.json  # its manifest
    sha256sum DIR/blobs/sha256/<manifest>           # must equal its digest (and size)
    jq .config,.layers DIR/blobs/sha256/<manifest>  # config and layer descriptors
    jq .rootfs.diff_ids DIR/blobs/sha256/<config>   # one diff_id per layer

The store reads its own layout this way, and a pull reads the layout skopeo just wrote (and an
``oci:``/``oci-archive:`` source before skopeo sees it): skopeo passes wrong manifest digests,
sizes, diff_ids and truncated blobs through. Every step is checked: index entry → manifest
(digest and size) → config (digest and size) → as many diff_ids as layers → every layer blob
(size, and digest when asked). A multi-arch index resolves to this machine's entry.
`contained.images.oci` holds the pieces (descriptors, digests, blob paths); REF_NAME is the
``org.opencontainers.image.ref.name`` annotation that tags an image.
"""

import hashlib
import io
import json
import os
from pathlib import Path

from contained.errors import ContainedError
from contained.images import build, oci
from contained.images.reference import Reference, parse_reference
from contained.records import field, record

REF_NAME = build.ANNOTATION_REF_NAME
LAYER_MEDIA_TYPES = (oci.MEDIA_TYPE_LAYER, oci.MEDIA_TYPE_LAYER_GZIP, oci.MEDIA_TYPE_LAYER_ZSTD,
                     oci.MEDIA_TYPE_DOCKER_LAYER_GZIP,
                     "application/vnd.docker.image.rootfs.diff.tar")
MANIFEST_MEDIA_TYPES = (oci.MEDIA_TYPE_MANIFEST,
                        "application/vnd.docker.distribution.manifest.v2+json")
INDEX_MEDIA_TYPES = (oci.MEDIA_TYPE_INDEX,
                     "application/vnd.docker.distribution.manifest.list.v2+json")
HASH_CHUNK = 1 << 20


class BlobMissing(ContainedError):
    """A descriptor names a blob that is not in the layout."""


class InvalidImage(ContainedError):
    """An image's manifest or config is malformed or inconsistent (e.g. diff_ids ≠ layers)."""


class ArchitectureMismatch(ContainedError):
    """The image was built for another architecture or OS than this machine's."""


class SourceNotFound(ContainedError):
    """An oci:/oci-archive: source, or a tarball to import, does not exist or has no such tag."""


@record(frozen=True)
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


@record(frozen=True)
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
        names = ", ".join(sorted(name_of(e) or "?" for e in entries)) or "none"
        raise SourceNotFound(f"{action}: {layout} holds {len(entries)} images (tags: {names}); "
                             f"name one as oci:DIR:TAG")
    for entry in entries:
        if name_of(entry) == tag:
            return entry
    names = ", ".join(sorted(name_of(e) for e in entries if name_of(e))) or "none"
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


def referenced_blobs(layout: Path, descriptor_json: dict, *,
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
            found |= referenced_blobs(layout, child, layers_only=layers_only)
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


def name_of(entry: dict) -> str:
    """The name an index.json entry is tagged with ("" if none)."""
    return (entry.get("annotations") or {}).get(REF_NAME, "")


def store_name(reference: Reference) -> str:
    """The name an image pulled by `reference` is tagged with. Tag and digest: keep the tag
    (the digest was checked). Digest only: name@digest."""
    if reference.tag:
        return f"{reference.repository}:{reference.tag}"
    return reference.name


def _string_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]
