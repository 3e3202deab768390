"""images.layout: a broken OCI layout (what skopeo would pass through) is refused when pulled.

Every layout is built here by images.build and then damaged by hand.
"""

import json
import os
import subprocess
import sys

import pytest
from storekit import (
    HOST_ARCH,
    blobs,
    index_entry,
    make_layout,
    names,
    rewrite_index_entry,
    tar_of,
)

from contained.images import build, oci, skopeo
from contained.images.layout import (
    BlobMissing,
    InvalidImage,
    SourceNotFound,
)
from contained.images.store import Store

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
