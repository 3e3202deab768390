"""The OCI image layout: index.json → manifest → config → layers, and how to trust each step.

Taught in notebook 04 ("Images"). The shell equivalent of reading an image by hand::

    cat busybox/index.json                      # which manifest is "latest"?
    cat busybox/blobs/sha256/<manifest>         # config + layer descriptors
    sha256sum busybox/blobs/sha256/<layer>      # does the blob match its name?

A *descriptor* names a blob by media type, digest and size. Nothing read through a descriptor
is trusted until its digest and size match: the digest's syntax is checked before any path is
built from it (a digest like ``sha256:../../etc/passwd`` must never become a path).
"""

import re
from pathlib import Path

from contained.errors import ContainedError
from contained.records import field, record

# The OCI image-spec's digest grammar, restricted to the algorithms we can verify. sha256 is
# the only one registries and skopeo produce; sha512 is allowed by the spec.
DIGEST_PATTERNS = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}

# The PATH Docker gives a container whose image sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Docker's schema 2 names for the same things; skopeo converts them when writing an OCI layout,
# but a hand-made layout may still carry them.
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class BadDigest(ContainedError):
    """A digest string does not follow the OCI grammar (or uses an algorithm we cannot check)."""


class BlobMismatch(ContainedError):
    """A blob's content does not match the digest or size its descriptor promises."""


def validate_digest(digest: str) -> tuple[str, str]:
    """Split ``algo:hex`` after checking it strictly; raise BadDigest otherwise."""
    algorithm, sep, encoded = str(digest).partition(":")
    pattern = DIGEST_PATTERNS.get(algorithm)
    if not sep or pattern is None or not pattern.fullmatch(encoded):
        raise BadDigest(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>")
    return algorithm, encoded


def blob_path(layout: Path, digest: str) -> Path:
    """Where a blob lives in an OCI layout, built only from a validated digest."""
    algorithm, encoded = validate_digest(digest)
    return Path(layout) / "blobs" / algorithm / encoded


@record(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its exact size."""

    media_type: str
    digest: str
    size: int
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    platform: dict | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_json(cls, data: dict) -> "Descriptor":
        """Build from a parsed descriptor, validating digest syntax and size type."""
        digest = data.get("digest", "")
        validate_digest(digest)
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BlobMismatch(f"descriptor for {digest} has invalid size {size!r}")
        return cls(
            media_type=data.get("mediaType", ""),
            digest=digest,
            size=size,
            annotations=dict(data.get("annotations") or {}),
            platform=data.get("platform"),
        )
