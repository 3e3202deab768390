"""Building images without a registry: a directory or tar streams → an OCI image layout.

Used by the offline busybox import (notebook 00/04), by the tests (which build every image they
need, malicious ones included) and by the benchmarks. The shell equivalent, roughly::

    tar --sort=name --mtime=@0 --owner=0 --group=0 -C rootfs -c . | gzip -n > layer.tar.gz
    sha256sum layer.tar.gz          # the layer's digest; sha256 of the .tar is its diff_id
    # ... write config.json and manifest.json as blobs, and index.json pointing at the manifest

Everything here is deterministic: the same input gives the same digests on every run, which is
what makes "busybox:latest" reproducible offline.
"""

import hashlib
import io
import json
import os
from pathlib import Path

from contained.images import oci
from contained.records import record

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@record(frozen=True)
class BuiltLayer:
    """One layer as written: the compressed blob's descriptor and the tar's diff_id."""

    descriptor: oci.Descriptor
    diff_id: str


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_directory(root: Path) -> bytes:
    """A reproducible tar of `root`: sorted names, mtime 0, owner 0:0, no user/group names."""
    import tarfile  # here, not at the top: every `contained run` reads a layout, few write one

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk_sorted(Path(root)):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _walk_sorted(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath) / name


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no name and mtime 0, so the digest depends on the content only."""
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


def write_blob(layout: Path, data: bytes) -> str:
    """Store `data` under blobs/sha256/ and return its digest."""
    digest = sha256_digest(data)
    path = oci.blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def write_layer(layout: Path, tar_bytes: bytes, *, compress: bool = True) -> BuiltLayer:
    """Add one layer (an uncompressed tar stream) to the layout, gzipped unless told not to."""
    blob = gzip_bytes(tar_bytes) if compress else tar_bytes
    media_type = oci.MEDIA_TYPE_LAYER_GZIP if compress else oci.MEDIA_TYPE_LAYER
    digest = write_blob(layout, blob)
    return BuiltLayer(oci.Descriptor(media_type, digest, len(blob)), sha256_digest(tar_bytes))


def image_config(layers: list[BuiltLayer], *, architecture: str, config: dict | None = None,
                 created: str = "1970-01-01T00:00:00Z") -> dict:
    """An OCI image config naming the layers' diff_ids, with an optional runtime `config`."""
    return {
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": "contained build"} for _ in layers],
    }


def write_image(layout: Path, layers: list[BuiltLayer], config: dict, ref_name: str) -> str:
    """Write config, manifest and an index.json entry tagged `ref_name`; return the manifest digest.

    An existing index entry with the same ref name is replaced, others are kept.
    """
    layout = Path(layout)
    layout.mkdir(parents=True, exist_ok=True)
    config_bytes = _canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": oci.MEDIA_TYPE_CONFIG, "digest": write_blob(layout, config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": layer.descriptor.media_type, "digest": layer.descriptor.digest,
                    "size": layer.descriptor.size} for layer in layers],
    }
    manifest_bytes = _canonical_json(manifest)
    manifest_digest = write_blob(layout, manifest_bytes)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {
        "schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != ref_name]
    index["manifests"].append({
        "mediaType": oci.MEDIA_TYPE_MANIFEST, "digest": manifest_digest,
        "size": len(manifest_bytes), "annotations": {ANNOTATION_REF_NAME: ref_name}})
    index_path.write_bytes(_canonical_json(index))
    return manifest_digest


def build_image(layout: Path, layer_tars: list[bytes], ref_name: str, *, architecture: str,
                config: dict | None = None, compress: bool = True) -> str:
    """Layers (uncompressed tar streams, bottom first) → a tagged image; returns manifest digest."""
    layers = [write_layer(layout, tar_bytes, compress=compress) for tar_bytes in layer_tars]
    return write_image(layout, layers, image_config(layers, architecture=architecture,
                                                    config=config), ref_name)


def host_architecture() -> str:
    """The host's architecture in OCI/Go terms (amd64, arm64, ...)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


