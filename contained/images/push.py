"""``contained push IMAGE DEST``: an image from the store to any skopeo transport.

Taught in notebook 09 ("Build an image"). It is one skopeo command::

    skopeo copy oci:$HOME/oci:docker.io/library/mine:1 oci-archive:mine.tar
    skopeo copy oci:$HOME/oci:docker.io/library/mine:1 docker-archive:mine.tar:mine:1
    skopeo copy oci:$HOME/oci:docker.io/library/mine:1 oci:DIR:1

The local registry (`contained.images.registry`) serves read-only, so that no local user can
overwrite what others pull: ``docker://`` to its address goes through `registry.publish`, the
owner's way in (a writable registry on the same storage, in a network namespace of its own).
Any other registry gets a plain ``skopeo copy``, TLS verified except on this machine.
"""

from pathlib import Path

from contained.errors import ContainedError
from contained.images import registry, skopeo

TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:", "dir:")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class BadDestination(ContainedError):
    """The push destination names no skopeo transport we can write."""


def push(image_ref: str, dest: str, *, store=None, registry_home: Path | None = None) -> str:
    """Copy `image_ref` from the store to `dest`; return where it went.

    `registry_home` is the CONTAINED_HOME whose local registry receives ``docker://`` pushes to
    its address (default: the store's own home).
    """
    from contained.images.store import Store

    store = store or Store()
    if not dest.startswith(TRANSPORTS):
        raise BadDestination(f"cannot push to {dest!r}: use docker://HOST:PORT/NAME:TAG, "
                             "oci:DIR:TAG, oci-archive:FILE or docker-archive:FILE")
    image = store.image(image_ref)
    source = f"oci:{store.layout}:{image.name}"
    with store.lock(shared=True):
        if dest.startswith("docker://"):
            return _push_to_registry(source, dest[len("docker://"):],
                                     registry_home if registry_home is not None else store.home)
        skopeo.copy(source, dest, action=f"cannot push {image.reference.familiar} to {dest}")
    return dest


def _push_to_registry(source: str, address: str, registry_home: Path) -> str:
    local = registry.status(registry_home)
    if local is not None and address.startswith(local.address + "/"):
        return registry.publish(registry_home, source, address[len(local.address) + 1:])
    host = address.split("/", 1)[0].rsplit(":", 1)[0]
    skopeo.copy(source, f"docker://{address}", action=f"cannot push to {address}",
                dest_tls_verify=host not in LOOPBACK_HOSTS)
    return address
