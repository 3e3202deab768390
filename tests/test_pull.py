"""images.pull: pulls with real skopeo from the session's registry on 127.0.0.1, and imports of
rootfs tarballs.
"""

import gzip
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, interpreter_for_nobody, needs_root
from storekit import (
    HOST_ARCH,
    OTHER_ARCH,
    blobs,
    index_entry,
    make_layout,
    names,
    push,
    tar_of,
)

from contained.images import build, oci, skopeo
from contained.images.layout import (
    ArchitectureMismatch,
    InvalidImage,
    SourceNotFound,
)
from contained.images.pull import InvalidTarball, is_loopback
from contained.images.store import Store

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


def test_loopback_registries_are_recognised():
    assert is_loopback("127.0.0.1:5000") and is_loopback("127.3.4.5")
    assert is_loopback("localhost:5000") and is_loopback("[::1]:5000")
    assert not is_loopback("docker.io") and not is_loopback("10.0.0.1:5000")


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


@needs_root
def test_a_normal_user_pulls_where_root_left_run_containers_0700(registry):
    """Once root has run podman, /run/containers is 0700; a user's skopeo without a login
    session (no XDG_RUNTIME_DIR: a Jupyter server, su) then failed every pull with "reading
    /run/containers/UID/auth.json: permission denied". Here in a mount namespace of its own,
    over a tmpfs on /run, so the host's /run is never touched."""
    python, extra = interpreter_for_nobody()
    home = Path(tempfile.mkdtemp(prefix="contained-pull-nobody-"))  # pytest's tmp is 0700
    os.chown(home, NOBODY, NOBODY)
    pull = as_nobody(["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}",
                      f"CONTAINED_HOME={home / 'store'}",
                      *[f"{key}={value}" for key, value in extra.items()],
                      python, "-m", "contained", "pull",
                      f"docker://{registry.address}/library/busybox:latest"])
    script = "mount -t tmpfs tmpfs /run && mkdir -m 0700 /run/containers && exec \"$@\""
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script, "sh", *pull], capture_output=True, text=True,
                              timeout=120, cwd="/")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "permission denied" not in done.stderr
