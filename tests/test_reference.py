"""Image references: Docker's normalisation, skopeo transports, and one-line errors."""

from pathlib import Path

import pytest

from contained.images.reference import InvalidReference, parse_reference, parse_source

D = "sha256:" + "ab" * 32

VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("someone/app", "docker.io/someone/app:latest", "someone/app:latest"),
    ("127.0.0.1:5000/library/busybox", "127.0.0.1:5000/library/busybox:latest",
     "127.0.0.1:5000/library/busybox:latest"),
    ("localhost/busybox", "localhost/busybox:latest", "localhost/busybox:latest"),
    ("localhost:5000/a/b/c:v1.0_rc-2", "localhost:5000/a/b/c:v1.0_rc-2",
     "localhost:5000/a/b/c:v1.0_rc-2"),
    ("quay.io/podman/hello:latest", "quay.io/podman/hello:latest", "quay.io/podman/hello:latest"),
    ("[::1]:5000/busybox", "[::1]:5000/busybox:latest", "[::1]:5000/busybox:latest"),
    ("Registry.Example.com/x", "Registry.Example.com/x:latest", "Registry.Example.com/x:latest"),
    ("a__b/c-d/e.f_g", "docker.io/a__b/c-d/e.f_g:latest", "a__b/c-d/e.f_g:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:1.36@{D}", f"docker.io/library/busybox:1.36@{D}", f"busybox:1.36@{D}"),
]


@pytest.mark.parametrize(("text", "name", "familiar"), VALID)
def test_valid_references_normalise_like_docker(text, name, familiar):
    reference = parse_reference(text)
    assert reference.name == name
    assert reference.familiar == familiar
    assert parse_reference(reference.name) == reference  # normalising twice changes nothing


INVALID = [
    ("", "empty"),
    ("Busybox", "must be lowercase"),
    ("docker.io/Library/busybox", "must be lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("busybox:" + "a" * 129, "bad tag"),
    (":latest", "bad repository component"),
    ("-busybox", "bad repository component"),
    ("a//b", "bad repository component"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@md5:" + "a" * 32, "bad digest"),
    ("busy box", "no spaces"),
    ("docker://busybox", "transport is not allowed"),
    ("oci:/tmp/x:latest", "transport is not allowed"),
    ("a" * 300, "longer than"),
    ("my_registry:5000/x", "bad registry"),
]


@pytest.mark.parametrize(("text", "why"), INVALID)
def test_invalid_references_say_why_in_one_line(text, why):
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert why in message
    assert "\n" not in message


def test_digest_only_reference_has_no_tag_and_pulls_by_digest():
    reference = parse_reference(f"busybox@{D}")
    assert reference.tag is None
    assert reference.docker_transport() == f"docker://docker.io/library/busybox@{D}"


def test_tag_and_digest_pull_by_digest_because_skopeo_refuses_both():
    reference = parse_reference(f"busybox:1.36@{D}")
    assert reference.tag == "1.36"
    assert reference.docker_transport() == f"docker://docker.io/library/busybox@{D}"


def test_docker_transport_source():
    source = parse_source("docker://busybox:1.36")
    assert source.transport == "docker"
    assert source.reference.name == "docker.io/library/busybox:1.36"
    assert source.skopeo() == "docker://docker.io/library/busybox:1.36"
    assert parse_source("busybox").skopeo() == "docker://docker.io/library/busybox:latest"


def test_oci_source_with_a_plain_tag_is_named_after_its_directory(tmp_path):
    source = parse_source(f"oci:{tmp_path}/My_Image:1.0")
    assert source.transport == "oci"
    assert source.path == tmp_path / "My_Image"
    assert source.layout_tag == "1.0"
    assert source.reference.name == "localhost/my_image:1.0"
    assert source.skopeo() == f"oci:{tmp_path}/My_Image:1.0"


def test_oci_source_without_tag_is_latest(tmp_path):
    source = parse_source(f"oci:{tmp_path}/busybox")
    assert source.layout_tag is None
    assert source.reference.name == "localhost/busybox:latest"
    assert source.skopeo() == f"oci:{tmp_path}/busybox"


def test_oci_source_whose_tag_is_a_reference_keeps_that_name(tmp_path):
    source = parse_source(f"oci:{tmp_path}/oci:docker.io/library/busybox:latest")
    assert source.path == tmp_path / "oci"
    assert source.layout_tag == "docker.io/library/busybox:latest"
    assert source.reference.name == "docker.io/library/busybox:latest"


def test_oci_archive_source_drops_the_tar_suffix(tmp_path):
    source = parse_source(f"oci-archive:{tmp_path}/busybox.tar:1.36")
    assert source.transport == "oci-archive"
    assert source.reference.name == "localhost/busybox:1.36"
    assert source.skopeo(Path("/x")) == "oci:/x:1.36"


def test_relative_oci_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("oci:busybox:latest").path == tmp_path / "busybox"


@pytest.mark.parametrize(("text", "why"), [
    ("dir:/tmp/x", "unsupported transport"),
    ("containers-storage:busybox", "unsupported transport"),
    ("oci:", "missing path"),
    ("oci:/tmp/x:", "empty tag"),
    ("oci:/tmp/...:latest", "cannot name the image"),
    ("docker://Busybox", "must be lowercase"),
])
def test_invalid_sources(text, why):
    with pytest.raises(InvalidReference, match=why):
        parse_source(text)
