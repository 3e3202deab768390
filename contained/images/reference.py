"""Image references: what a user types (``busybox``) and what it means (docker.io/library/…).

Taught in notebook 04 ("Images"). Normalised the way Docker does it, so ``busybox``,
``library/busybox`` and ``docker.io/library/busybox:latest`` are one image::

    skopeo inspect --no-tags docker://busybox     # "Name": "docker.io/library/busybox"

The rules (from distribution's reference grammar): a first component containing ``.`` or ``:``,
or equal to ``localhost``, or with capitals, names a registry; otherwise the registry is
docker.io. On docker.io a single-component name lives under ``library/``, and
``index.docker.io`` is an old alias. With neither a tag nor a digest the tag is ``latest``.
Repositories are lowercase.

`parse_source` also accepts the skopeo transports ``contained pull`` can read: ``docker://REF``,
``oci:DIR[:TAG]`` and ``oci-archive:FILE[:TAG]``.
"""

import re
from pathlib import Path

from contained.errors import ContainedError
from contained.images import oci
from contained.records import record

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# The name an image from an OCI layout gets when its tag is not itself a full reference, as in
# podman: it was made here, it comes from no registry.
LOCAL_REGISTRY = "localhost"

# distribution/reference's grammar, piece by piece.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
COMPONENT_RE = re.compile(_COMPONENT)
DOMAIN_RE = re.compile(_DOMAIN)
TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
NAME_MAX_LENGTH = 255

EXAMPLE = "e.g. busybox, busybox:1.36 or 127.0.0.1:5000/library/busybox"

# skopeo transports that exist but that contained does not read.
OTHER_TRANSPORTS = ("dir", "docker-archive", "docker-daemon", "containers-storage", "ostree",
                    "sif", "tarball")


class InvalidReference(ContainedError):
    """A string is not a valid image reference."""


@record(frozen=True)
class Reference:
    """A normalised registry reference: docker.io/library/busybox:latest."""

    registry: str
    path: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def repository(self) -> str:
        """registry/path, without tag or digest: docker.io/library/busybox."""
        return f"{self.registry}/{self.path}"

    @property
    def name(self) -> str:
        """The full normalised reference, as the store tags the image."""
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def familiar_repository(self) -> str:
        """The repository as Docker shows it: busybox, not docker.io/library/busybox."""
        if self.registry != DEFAULT_REGISTRY:
            return self.repository
        return self.path.removeprefix("library/")

    @property
    def familiar(self) -> str:
        """The short form a user would type back: busybox:latest."""
        text = self.familiar_repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def docker_transport(self) -> str:
        """The skopeo source: docker://… by digest when there is one (skopeo refuses both)."""
        if self.digest:
            return f"docker://{self.repository}@{self.digest}"
        return f"docker://{self.repository}:{self.tag}"

    def __str__(self) -> str:
        return self.name


@record(frozen=True)
class Source:
    """Where ``contained pull`` reads an image: a registry, an OCI layout or an OCI archive."""

    transport: str  # "docker", "oci" or "oci-archive"
    reference: Reference  # the name the image gets in the store
    path: Path | None = None  # the layout directory or archive file (oci, oci-archive)
    layout_tag: str | None = None  # the ref name inside the layout, as given after DIR:

    def skopeo(self, layout: Path | None = None) -> str:
        """The skopeo source string; `layout` replaces `path` (an extracted oci-archive)."""
        if self.transport == "docker":
            return self.reference.docker_transport()
        text = f"oci:{layout or self.path}"
        return f"{text}:{self.layout_tag}" if self.layout_tag else text

    def __str__(self) -> str:
        if self.transport == "docker":
            return self.reference.familiar
        text = f"{self.transport}:{self.path}"
        return f"{text}:{self.layout_tag}" if self.layout_tag else text


def parse_reference(text: str) -> Reference:
    """Parse and normalise a registry reference; raise InvalidReference saying why."""
    original = text
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference(f"empty image reference: name an image, {EXAMPLE}")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference {original!r}: no spaces allowed ({EXAMPLE})")
    if "://" in text or _transport_of(text):
        raise InvalidReference(
            f"invalid reference {original!r}: a transport is not allowed here, name the image "
            f"as in the store ({EXAMPLE})")

    text, digest = _split_digest(original, text)
    text, tag = _split_tag(original, text)
    registry, path = _split_registry(text)
    if not DOMAIN_RE.fullmatch(registry):
        raise InvalidReference(f"invalid reference {original!r}: bad registry name {registry!r}"
                               f" ({EXAMPLE})")
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    _check_path(original, path)
    if len(f"{registry}/{path}") > NAME_MAX_LENGTH:
        raise InvalidReference(f"invalid reference {original[:40]!r}…: longer than "
                               f"{NAME_MAX_LENGTH} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


def parse_source(text: str) -> Source:
    """Parse what ``contained pull`` accepts: a reference or docker://, oci:, oci-archive:."""
    if text.startswith("docker://"):
        return Source("docker", parse_reference(text.removeprefix("docker://")))
    for transport in ("oci-archive", "oci"):
        if text.startswith(f"{transport}:"):
            return _parse_layout_source(transport, text)
    transport = _transport_of(text)
    if transport:
        raise InvalidReference(
            f"unsupported transport {transport!r} in {text!r}: use docker://REF, oci:DIR[:TAG] "
            f"or oci-archive:FILE[:TAG]")
    return Source("docker", parse_reference(text))


def _transport_of(text: str) -> str | None:
    head, sep, _ = text.partition(":")
    if sep and head in ("oci", "oci-archive", *OTHER_TRANSPORTS):
        return head
    return None


def _split_digest(original: str, text: str) -> tuple[str, str | None]:
    name, sep, digest = text.partition("@")
    if not sep:
        return text, None
    try:
        oci.validate_digest(digest)
    except oci.BadDigest:
        raise InvalidReference(
            f"invalid reference {original!r}: bad digest {digest!r}, expected "
            f"NAME@sha256:<64 hex digits>") from None
    return name, digest


def _split_tag(original: str, text: str) -> tuple[str, str | None]:
    # A colon after the last slash starts a tag; before it, it is a registry's port.
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon <= slash:
        return text, None
    name, tag = text[:colon], text[colon + 1:]
    if not TAG_RE.fullmatch(tag):
        raise InvalidReference(
            f"invalid reference {original!r}: bad tag {tag!r} (letters, digits, _ . -; at most "
            f"128, not starting with . or -), e.g. busybox:1.36")
    return name, tag


def _split_registry(text: str) -> tuple[str, str]:
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first, rest
    return DEFAULT_REGISTRY, text


def _check_path(original: str, path: str) -> None:
    for component in path.split("/"):
        if COMPONENT_RE.fullmatch(component):
            continue
        if component and COMPONENT_RE.fullmatch(component.lower()):
            raise InvalidReference(f"invalid reference {original!r}: repository names must be "
                                   f"lowercase (try {original.lower()!r})")
        raise InvalidReference(
            f"invalid reference {original!r}: bad repository component {component!r} "
            f"(lowercase letters, digits and . _ - between them; {EXAMPLE})")


def _parse_layout_source(transport: str, text: str) -> Source:
    # skopeo splits oci:PATH:REF at the first colon after the transport, so a PATH cannot
    # contain ':' while the REF (docker.io/library/busybox:latest) may.
    rest = text.removeprefix(f"{transport}:")
    path_text, sep, tag = rest.partition(":")
    if not path_text:
        raise InvalidReference(f"invalid source {text!r}: missing path, e.g. "
                               f"{transport}:./busybox:latest")
    if sep and not tag:
        raise InvalidReference(f"invalid source {text!r}: empty tag after the path")
    path = Path(path_text).absolute()
    return Source(transport, _layout_image_name(text, path, tag or None), path, tag or None)


def _layout_image_name(text: str, path: Path, tag: str | None) -> Reference:
    """The store name of an image read from an OCI layout or archive.

    A layout tag that is itself a reference (contains / : or @, like the ref names this store
    writes) names the image; a plain tag (``latest``) names a local image after the directory:
    ``oci:./busybox:1.36`` → ``localhost/busybox:1.36``.
    """
    if tag and any(c in tag for c in "/:@"):
        return parse_reference(tag)
    stem = path.name.lower()
    for suffix in (".tar", ".oci"):
        stem = stem.removesuffix(suffix)
    repository = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("._-")
    if not COMPONENT_RE.fullmatch(repository or "-"):
        raise InvalidReference(
            f"cannot name the image in {text!r} after {path.name!r}: give a full name as its "
            f"tag, e.g. oci:DIR:docker.io/library/busybox:latest")
    tag = tag or DEFAULT_TAG
    if not TAG_RE.fullmatch(tag):
        raise InvalidReference(f"invalid source {text!r}: bad tag {tag!r}, e.g. oci:DIR:latest")
    return Reference(LOCAL_REGISTRY, repository, tag)
