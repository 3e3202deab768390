"""The store: pulls with real skopeo from a real registry, verification, images, rmi, imports.

Every image is built here (images.build) or imported from the host's busybox; every pull goes
to the session's registry on 127.0.0.1 or to an OCI layout on disk.
"""

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from contained.images import build, oci, skopeo
from contained.images import registry as local_registry
from contained.images.layout import (
    ArchitectureMismatch,
    BlobMissing,
    InvalidImage,
    SourceNotFound,
)
from contained.images.pull import InvalidTarball, is_loopback
from contained.images.store import DestinationNotEmpty, ImageNotFound, Store

HOST_ARCH = build.host_architecture()
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"


def tar_of(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding `files` (path → content), reproducibly."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_layout(path: Path, tag: str = "img", *, arch: str = HOST_ARCH, content=b"hello",
                config=None) -> str:
    return build.build_image(path, [tar_of({"hello.txt": content})], tag, architecture=arch,
                             config=config or {"Cmd": ["/hello"]})


def index_entry(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    return next(m for m in index["manifests"]
                if m["annotations"][build.ANNOTATION_REF_NAME] == tag)


def rewrite_index_entry(layout: Path, tag: str, **changes) -> None:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"][build.ANNOTATION_REF_NAME] == tag:
            entry.update(changes)
    (layout / "index.json").write_text(json.dumps(index))


def blobs(store: Store) -> set[str]:
    return {p.name for p in (store.layout / "blobs" / "sha256").iterdir()}


def names(store: Store) -> list[str]:
    return [image.name for image in store.images()]


def push(layout_ref: str, registry, target: str, *, all_images=False) -> None:
    """Publish into the session's read-only registry, the way its owner does."""
    local_registry.publish(Path(registry.directory).parent, layout_ref, target,
                           all_images=all_images)


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


# -- pulls from the real local registry ------------------------------------------------------


def test_pull_from_local_registry_by_docker_transport(home, registry, busybox_store):
    expected = busybox_store.image("busybox").digest
    image = Store(home).pull(f"docker://{registry.address}/library/busybox:latest")
    assert image.name == f"{registry.address}/library/busybox:latest"
    assert image.digest == expected
    assert set(names(busybox_store)) == {image.name, "docker.io/library/busybox:latest"}


def test_pull_busybox_through_the_registries_conf_mirror(home, registry):
    image = Store(home).pull("busybox", registries_conf=registry.registries_conf)
    assert image.name == "docker.io/library/busybox:latest"
    assert names(Store(home)) == ["docker.io/library/busybox:latest"]
    assert not any(n.startswith("contained-pulling") for n in json.dumps(
        json.loads((home / "oci" / "index.json").read_text())).split('"'))


def test_pull_reuses_stored_blobs_and_leaves_no_staging(busybox_store, registry):
    (layer, _), = busybox_store.image("busybox").layers
    before = oci.blob_path(busybox_store.layout, layer.digest).stat()
    busybox_store.pull(f"{registry.address}/library/busybox")
    after = oci.blob_path(busybox_store.layout, layer.digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert list((busybox_store.home / "tmp").iterdir()) == []
    with pytest.raises(skopeo.RegistryImageNotFound):
        busybox_store.pull(f"{registry.address}/library/busybox:nope")
    assert list((busybox_store.home / "tmp").iterdir()) == []


def test_pull_by_digest_and_by_tag_and_digest(home, registry):
    store = Store(home)
    digest = store.pull(f"{registry.address}/library/busybox").digest
    by_digest = store.pull(f"{registry.address}/library/busybox@{digest}")
    assert by_digest.name == f"{registry.address}/library/busybox@{digest}"
    both = store.pull(f"{registry.address}/library/busybox:pinned@{digest}")
    # The tag part is a label here: the registry has no :pinned, the digest is what is fetched.
    assert both.name == f"{registry.address}/library/busybox:pinned"
    assert store.image(f"{registry.address}/library/busybox:pinned").digest == digest


def test_pull_of_missing_image_says_what_to_do(home, registry):
    with pytest.raises(skopeo.RegistryImageNotFound) as caught:
        Store(home).pull(f"{registry.address}/library/busybox:nope")
    message = str(caught.value)
    assert message.startswith(f"cannot pull {registry.address}/library/busybox:nope: registry "
                              f"{registry.address} has no such image")
    assert "contained import busybox" in message and "\n" not in message
    assert names(Store(home)) == []


def test_missing_image_through_the_mirror_never_tries_docker_io(home, registry):
    with pytest.raises(skopeo.RegistryImageNotFound) as caught:
        Store(home).pull("nosuchimage", registries_conf=registry.registries_conf)
    assert registry.address in str(caught.value)


def test_pull_from_a_closed_port_is_unreachable(home):
    from conftest import free_port

    with pytest.raises(skopeo.RegistryUnreachable, match="connection refused"):
        Store(home).pull(f"127.0.0.1:{free_port()}/library/busybox")


def test_multi_arch_index_pull_picks_the_host_architecture(home, registry, tmp_path):
    layout = tmp_path / "multi"
    digests = {arch: make_layout(layout, arch, arch=arch, content=arch.encode())
               for arch in (HOST_ARCH, OTHER_ARCH)}
    index = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": [
        {**index_entry(layout, arch), "annotations": {},
         "platform": {"architecture": arch, "os": "linux"}} for arch in (OTHER_ARCH, HOST_ARCH)]}
    data = json.dumps(index).encode()
    index_digest = build.write_blob(layout, data)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append({"mediaType": oci.MEDIA_TYPE_INDEX, "digest": index_digest,
                             "size": len(data),
                             "annotations": {build.ANNOTATION_REF_NAME: "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    push(f"oci:{layout}:multi", registry, "test/multi:latest", all_images=True)

    image = Store(home).pull(f"{registry.address}/test/multi")
    assert image.config.architecture == HOST_ARCH
    assert image.digest == digests[HOST_ARCH]


def test_foreign_architecture_image_is_refused_and_leaves_nothing(home, registry, tmp_path):
    make_layout(tmp_path / "foreign", "foreign", arch=OTHER_ARCH)
    push(f"oci:{tmp_path / 'foreign'}:foreign", registry, "test/foreign:latest")
    store = Store(home)
    with pytest.raises(ArchitectureMismatch, match=f"for linux/{OTHER_ARCH}"):
        store.pull(f"{registry.address}/test/foreign")
    assert names(store) == [] and blobs(store) == set()


def test_diff_ids_mismatch_from_a_registry_is_refused_after_copy(home, registry, tmp_path):
    layout = tmp_path / "bad"
    layer = build.write_layer(layout, tar_of({"a": b"a"}))
    config = build.image_config([layer], architecture=HOST_ARCH)
    config["rootfs"]["diff_ids"].append(layer.diff_id)
    build.write_image(layout, [layer], config, "bad")
    push(f"oci:{layout}:bad", registry, "test/bad-diff-ids:latest")
    store = Store(home)
    with pytest.raises(InvalidImage, match="lists 2 diff_ids for 1 layers"):
        store.pull(f"{registry.address}/test/bad-diff-ids")
    assert names(store) == [] and blobs(store) == set()


# -- broken OCI layouts: what skopeo would pass through --------------------------------------


def test_good_oci_layout_pulls(home, tmp_path):
    digest = make_layout(tmp_path / "good", "1.0")
    image = Store(home).pull(f"oci:{tmp_path / 'good'}:1.0")
    assert (image.name, image.digest) == ("localhost/good:1.0", digest)
    assert image.config.cmd == ["/hello"]


def test_oci_archive_pulls(home, tmp_path):
    make_layout(tmp_path / "src", "v1")
    archive = tmp_path / "image.tar"
    skopeo.copy(f"oci:{tmp_path / 'src'}:v1", f"oci-archive:{archive}:v1", action="test")
    image = Store(home).pull(f"oci-archive:{archive}:v1")
    assert image.name == "localhost/image:v1"


def test_manifest_whose_content_does_not_match_its_digest_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    digest = make_layout(layout, "bad")
    path = oci.blob_path(layout, digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    rewrite_index_entry(layout, "bad", size=path.stat().st_size)
    store = Store(home)
    with pytest.raises(oci.BlobMismatch, match=f"manifest {digest} has digest"):
        store.pull(f"oci:{layout}:bad")
    assert names(store) == [] and blobs(store) == set()


def test_manifest_size_mismatch_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    make_layout(layout, "bad")
    rewrite_index_entry(layout, "bad", size=index_entry(layout, "bad")["size"] + 1)
    with pytest.raises(oci.BlobMismatch, match="descriptor says"):
        Store(home).pull(f"oci:{layout}:bad")


def test_index_naming_a_missing_manifest_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    make_layout(layout, "bad")
    rewrite_index_entry(layout, "bad", digest="sha256:" + "0" * 64)
    with pytest.raises(BlobMissing, match="sha256:0000"):
        Store(home).pull(f"oci:{layout}:bad")


def test_config_diff_ids_count_mismatch_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    layers = [build.write_layer(layout, tar_of({n: n.encode()})) for n in ("a", "b")]
    config = build.image_config(layers[:1], architecture=HOST_ARCH)
    build.write_image(layout, layers, config, "bad")
    with pytest.raises(InvalidImage, match="lists 1 diff_ids for 2 layers"):
        Store(home).pull(f"oci:{layout}:bad")


def test_layer_size_mismatch_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    layer = build.write_layer(layout, tar_of({"a": b"a"}))
    lying = build.BuiltLayer(oci.Descriptor(layer.descriptor.media_type, layer.descriptor.digest,
                                            layer.descriptor.size + 7), layer.diff_id)
    build.write_image(layout, [lying], build.image_config([lying], architecture=HOST_ARCH), "bad")
    with pytest.raises(oci.BlobMismatch, match=f"layer {layer.descriptor.digest} is"):
        Store(home).pull(f"oci:{layout}:bad")


def test_truncated_layer_is_refused(home, tmp_path):
    layout = tmp_path / "bad"
    make_layout(layout, "bad", content=os.urandom(4096))
    manifest = json.loads(oci.blob_path(layout, index_entry(layout, "bad")["digest"]).read_bytes())
    path = oci.blob_path(layout, manifest["layers"][0]["digest"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(oci.BlobMismatch, match="descriptor says"):
        Store(home).pull(f"oci:{layout}:bad")


def test_missing_oci_source_and_tag(home, tmp_path):
    with pytest.raises(SourceNotFound, match="does not exist"):
        Store(home).pull(f"oci:{tmp_path / 'nothing'}:x")
    make_layout(tmp_path / "layout", "present")
    with pytest.raises(SourceNotFound, match=r"no tag 'absent' .*tags: present"):
        Store(home).pull(f"oci:{tmp_path / 'layout'}:absent")


def test_concurrent_pulls_keep_both_images(home, registry):
    """Two processes pull at once into one store: the flock keeps index.json whole."""
    env = {**os.environ, "CONTAINED_HOME": str(home)}
    commands = [["pull", "-q", f"{registry.address}/library/busybox"],
                ["pull", "-q", "busybox", "--registries-conf", str(registry.registries_conf)],
                ["import", "busybox", "third"]]
    processes = [subprocess.Popen([sys.executable, "-m", "contained", *command], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    results = [process.communicate(timeout=60) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], results
    assert names(Store(home)) == [f"{registry.address}/library/busybox:latest",
                                  "docker.io/library/busybox:latest",
                                  "docker.io/library/third:latest"]


def test_loopback_registries_are_recognised():
    assert is_loopback("127.0.0.1:5000") and is_loopback("127.3.4.5")
    assert is_loopback("localhost:5000") and is_loopback("[::1]:5000")
    assert not is_loopback("docker.io") and not is_loopback("10.0.0.1:5000")


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


# -- import of a rootfs tarball --------------------------------------------------------------


def test_import_tarball_plain_and_gzipped(home, tmp_path):
    data = tar_of({"etc/hostname": b"box\n"})
    (tmp_path / "r.tar").write_bytes(data)
    (tmp_path / "r.tar.gz").write_bytes(gzip.compress(data, mtime=0))
    store = Store(home)
    plain = store.import_tarball(tmp_path / "r.tar", "r:plain")
    zipped = store.import_tarball(tmp_path / "r.tar.gz", "r:gz")
    assert plain.layers[0][1] == zipped.layers[0][1] == build.sha256_digest(data)
    assert plain.config.env and plain.config.cmd is None


def test_import_refuses_what_is_not_a_tarball(home, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n" * 200)
    with pytest.raises(InvalidTarball, match="not a tar archive"):
        Store(home).import_tarball(tmp_path / "notes.txt", "x")
    with pytest.raises(SourceNotFound, match="no such file"):
        Store(home).import_tarball(tmp_path / "missing.tar", "x")


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
