"""The offline busybox image: reproducible, complete, and runnable."""

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import needs_root

from contained.images import busybox, oci
from contained.images.store import Store

pytestmark = pytest.mark.skipif(not busybox.HOST_BUSYBOX.exists(),
                                reason="needs /bin/busybox (apt-get install busybox-static)")


def layer_members(store: Store) -> dict[str, tarfile.TarInfo]:
    (descriptor, _), = store.image("busybox").layers
    with tarfile.open(oci.blob_path(store.layout, descriptor.digest)) as tar:
        return {member.name: member for member in tar.getmembers()}


def test_import_is_reproducible_across_homes(tmp_path):
    first = busybox.import_busybox(Store(tmp_path / "one"))
    second = busybox.import_busybox(Store(tmp_path / "two"))
    assert first.digest == second.digest
    assert first.layers == second.layers


def test_reimport_replaces_the_tag_without_duplicating(busybox_store):
    before = busybox_store.image("busybox").digest
    again = busybox.import_busybox(busybox_store)
    assert again.digest == before
    assert [image.name for image in busybox_store.images()] == ["docker.io/library/busybox:latest"]


def test_import_under_another_name(busybox_store):
    image = busybox.import_busybox(busybox_store, "tools/box:1")
    assert image.name == "docker.io/tools/box:1"


def test_image_holds_busybox_and_every_applet(busybox_store):
    members = layer_members(busybox_store)
    binary = members["bin/busybox"]
    assert binary.isfile() and stat.S_IMODE(binary.mode) == 0o755
    assert binary.size == busybox.HOST_BUSYBOX.stat().st_size
    applets = busybox.applets()
    assert len(applets) > 100
    for applet in applets:
        if applet != "bin/busybox":
            assert members[applet].issym() and members[applet].linkname == "/bin/busybox"
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def test_image_has_the_files_a_runtime_expects(busybox_store):
    members = layer_members(busybox_store)
    for directory in ("proc", "sys", "dev", "etc", "root", "tmp"):
        assert members[directory].isdir(), directory
    assert stat.S_IMODE(members["tmp"].mode) == 0o1777
    assert stat.S_IMODE(members["root"].mode) == 0o700
    (descriptor, _), = busybox_store.image("busybox").layers
    with tarfile.open(oci.blob_path(busybox_store.layout, descriptor.digest)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
        group = tar.extractfile("etc/group").read().decode()
    assert passwd.startswith("root:x:0:0:") and "nobody:x:65534:65534:" in passwd
    assert group.startswith("root:x:0:") and "nobody:x:65534:" in group


def test_image_config(busybox_store):
    config = busybox_store.image("busybox").config
    assert config.cmd == ["sh"]
    assert config.env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_missing_busybox_says_how_to_install_it(home, tmp_path):
    with pytest.raises(busybox.BusyboxMissing, match="apt-get install busybox-static"):
        busybox.import_busybox(Store(home), busybox=tmp_path / "busybox")


def test_dynamically_linked_busybox_is_refused(home):
    dynamic = Path("/bin/ls")  # any dynamically linked host binary will do
    with pytest.raises(busybox.BusyboxMissing, match="dynamically linked"):
        busybox.check_busybox(dynamic)
    busybox.check_busybox()  # Debian's busybox-static passes


@needs_root
def test_rootfs_runs_in_a_chroot(tmp_path):
    rootfs = busybox.busybox_rootfs(tmp_path / "rootfs")
    result = subprocess.run(
        ["chroot", str(rootfs), "/bin/sh", "-c", "id -u; ls /bin | wc -l; grep nobody /etc/passwd"],
        capture_output=True, text=True, env={"PATH": "/bin:/usr/bin:/sbin:/usr/sbin"},
        timeout=10, check=True)
    uid, count, nobody = result.stdout.split("\n")[:3]
    assert uid == "0"
    assert int(count) > 50
    assert nobody.startswith("nobody:")
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
