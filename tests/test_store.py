"""The store: images, rmi, garbage collection, unpacking (pulls: test_pull.py; reading a layout
without trusting it: test_layout.py).

Every image is built here (images.build) or imported from the host's busybox.
"""

import os
import stat

import pytest
from storekit import (
    HOST_ARCH,
    blobs,
    names,
    tar_of,
)

from contained.images import oci
from contained.images.store import DestinationNotEmpty, ImageNotFound, Store

# -- reading --------------------------------------------------------------------------------


def test_imported_image_is_listed_and_found_by_every_spelling(busybox_store):
    (image,) = busybox_store.images()
    assert image.name == "docker.io/library/busybox:latest"
    for spelling in ("busybox", "busybox:latest", "library/busybox",
                     "docker.io/library/busybox:latest", f"busybox@{image.digest}"):
        assert busybox_store.image(spelling).digest == image.digest


def test_image_config_is_exposed_for_the_runtime(busybox_store):
    image = busybox_store.image("busybox")
    assert image.config.cmd == ["sh"]
    assert image.config.entrypoint is None
    assert image.config.env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert image.config.working_dir == "" and image.config.user == ""
    assert (image.config.architecture, image.config.os) == (HOST_ARCH, "linux")
    (descriptor, diff_id), = image.layers
    assert descriptor.media_type == oci.MEDIA_TYPE_LAYER_GZIP
    assert oci.blob_path(busybox_store.layout, descriptor.digest).stat().st_size == descriptor.size
    oci.validate_digest(diff_id)
    assert image.size > descriptor.size


def test_missing_image_suggests_import_or_pull(home):
    with pytest.raises(ImageNotFound) as caught:
        Store(home).image("busybox")
    assert "contained import busybox" in str(caught.value)
    assert "contained pull busybox:latest" in str(caught.value)
    with pytest.raises(ImageNotFound, match="contained pull alpine:3"):
        Store(home).image("alpine:3")


def test_store_is_private_to_its_owner(busybox_store):
    assert stat.S_IMODE(busybox_store.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(busybox_store.layout.stat().st_mode) == 0o700


def test_store_defaults_to_contained_home(home):
    assert Store().home == home


# -- rmi and garbage collection --------------------------------------------------------------


def test_rmi_keeps_blobs_another_image_shares(busybox_store, tmp_path):
    store = busybox_store
    from contained.images.busybox import import_busybox

    import_busybox(store, "other:1")
    shared = blobs(store)
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(tar_of({"only-here": b"x"}))
    store.import_tarball(tarball, "mine")
    own_blobs = blobs(store) - shared

    store.remove("busybox")
    assert names(store) == ["docker.io/library/mine:latest", "docker.io/library/other:1"]
    assert blobs(store) == shared | own_blobs  # still used by other:1
    store.remove("mine")
    assert blobs(store) == shared
    assert store.image("other:1").digest
    store.remove("other:1")
    assert blobs(store) == set() and names(store) == []


def test_resolved_images_follow_the_index(busybox_store, tmp_path):
    """image() remembers what it resolved, but only for the index it read: a name that now
    names another image, or none, is resolved again."""
    before = busybox_store.image("busybox").digest
    assert busybox_store.image("busybox").digest == before  # the remembered answer
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(tar_of({"other": b"y"}))
    busybox_store.import_tarball(tarball, "busybox")
    after = busybox_store.image("busybox").digest
    assert after != before
    assert Store(busybox_store.home).image("busybox").digest == after  # another Store object
    busybox_store.remove("busybox")
    with pytest.raises(ImageNotFound):
        busybox_store.image("busybox")


def test_rmi_of_missing_image(home):
    with pytest.raises(ImageNotFound):
        Store(home).remove("busybox")


def test_rmi_by_digest(busybox_store):
    digest = busybox_store.image("busybox").digest
    busybox_store.remove(f"busybox@{digest}")
    assert names(busybox_store) == []


def test_unused_layer_dirs_lists_only_layers_no_image_uses(busybox_store):
    (_, diff_id), = busybox_store.image("busybox").layers
    used = busybox_store.layer_cache / "sha256" / diff_id.split(":")[1]
    unused = busybox_store.layer_cache / "sha256" / ("f" * 64)
    used.mkdir(parents=True)
    unused.mkdir()
    assert busybox_store.unused_layer_dirs() == [unused]
    busybox_store.remove("busybox")
    assert busybox_store.unused_layer_dirs() == sorted([used, unused])
    assert used.is_dir()  # rmi never deletes layer directories: `contained gc` does


# -- unpacking (the unpacker itself is tested in test_unpack.py and test_tar_extract.py) -----


def test_unpack_refuses_a_non_empty_destination(busybox_store, tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(DestinationNotEmpty, match="not an empty directory"):
        busybox_store.unpack("busybox", tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"


def _has_unpacker() -> bool:
    from contained.images import unpack

    return hasattr(unpack, "apply_layers") and hasattr(unpack, "cached_layer")


needs_unpacker = pytest.mark.skipif(not _has_unpacker(), reason="images.unpack not written yet")


@needs_unpacker
def test_unpack_flattens_busybox(busybox_store, tmp_path):
    image = busybox_store.unpack("busybox", tmp_path / "rootfs")
    assert image.name == "docker.io/library/busybox:latest"
    assert (tmp_path / "rootfs" / "bin" / "busybox").is_file()
    assert os.readlink(tmp_path / "rootfs" / "bin" / "sh") == "/bin/busybox"


@needs_unpacker
def test_layer_dirs_are_cached_by_diff_id(busybox_store):
    image = busybox_store.image("busybox")
    first = busybox_store.layer_dirs(image)
    assert first == busybox_store.layer_dirs(image)
    assert first[0].parent.parent == busybox_store.layer_cache
    assert first[0].name == image.layers[0][1].split(":")[1]
    assert (first[0] / "bin" / "busybox").is_file()
