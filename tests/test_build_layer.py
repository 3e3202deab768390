"""Upper directories → layers (contained.images.upperlayer.layer_from_directory).

Root only: overlay's whiteouts are 0:0 character devices (mknod) and its opaque marker is a
trusted.* xattr.
"""

import gzip
import hashlib
import io
import os
import stat
import tarfile

import pytest
from conftest import needs_root

from contained.images import oci, upperlayer

pytestmark = needs_root

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def read_layer(layout, layer):
    blob = oci.blob_path(layout, layer.descriptor.digest).read_bytes()
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)))


def make_upper(root):
    """What a container leaves: a deleted file, a recreated directory, an owned setuid file."""
    (root / "data" / "keep").mkdir(parents=True)
    os.mknod(root / "data" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.setxattr(root / "data" / "keep", "trusted.overlay.opaque", b"y")
    (root / "data" / "keep" / "new").write_text("new\n")
    tool = root / "usr" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, 1000, 2000)
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAPABILITY)
    return root


def test_whiteouts_and_opaque_directories_become_oci_markers(tmp_path):
    upper = make_upper(tmp_path / "upper")
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout")
    with read_layer(tmp_path / "layout", layer) as tar:
        names = tar.getnames()
        assert "data/.wh.gone" in names and "data/gone" not in names
        assert tar.getmember("data/.wh.gone").isreg()
        assert "data/keep/.wh..wh..opq" in names
        assert names.index("data/keep") < names.index("data/keep/.wh..wh..opq") \
            < names.index("data/keep/new")
        assert not any("overlay" in key for m in tar.getmembers() for key in m.pax_headers)


def test_owners_modes_and_file_capabilities_are_kept(tmp_path):
    upper = make_upper(tmp_path / "upper")
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout")
    with read_layer(tmp_path / "layout", layer) as tar:
        tool = tar.getmember("usr/bin/tool")
    assert (tool.uid, tool.gid, tool.mode) == (1000, 2000, 0o4755)
    value = tool.pax_headers["SCHILY.xattr.security.capability"]
    assert value.encode("utf-8", "surrogateescape") == CAPABILITY


def test_entries_are_sorted_and_digest_and_diff_id_match_the_blob(tmp_path):
    upper = make_upper(tmp_path / "upper")
    for name in ("zeta", "alpha", "mid"):
        (upper / name).write_text(name)
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout")
    blob = oci.blob_path(tmp_path / "layout", layer.descriptor.digest).read_bytes()
    assert layer.descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.descriptor.size == len(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    with read_layer(tmp_path / "layout", layer) as tar:
        top = [n for n in tar.getnames() if "/" not in n]
    assert top == sorted(top)


def test_source_date_epoch_makes_the_same_changes_give_the_same_digest(tmp_path):
    first = make_upper(tmp_path / "one")
    second = make_upper(tmp_path / "two")
    os.utime(second / "data" / "keep" / "new", (1e9, 2e9))
    one = upperlayer.layer_from_directory(first, tmp_path / "layout", epoch=1700000000)
    two = upperlayer.layer_from_directory(second, tmp_path / "layout", epoch=1700000000)
    assert one == two
    with read_layer(tmp_path / "layout", one) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


def test_a_planted_symlink_is_stored_as_a_link_and_never_followed(tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    os.symlink("/", upper / "etc")                  # a container's revenge on its committer
    os.symlink("/etc/shadow", upper / "shadow")
    (upper / "hard").write_text("x")
    os.link(upper / "hard", upper / "hard2")
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout")
    with read_layer(tmp_path / "layout", layer) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"etc", "shadow", "hard", "hard2"}
    assert members["etc"].issym() and members["etc"].linkname == "/"
    assert members["shadow"].issym() and members["shadow"].size == 0
    assert members["hard2"].islnk() and members["hard2"].linkname == "hard"


def test_rootless_opaque_marker_in_user_xattrs_is_converted_too(tmp_path):
    upper = tmp_path / "upper"
    (upper / "dir").mkdir(parents=True)
    os.setxattr(upper / "dir", "user.overlay.opaque", b"y")
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout")
    with read_layer(tmp_path / "layout", layer) as tar:
        assert "dir/.wh..wh..opq" in tar.getnames()
        assert not tar.getmember("dir").pax_headers


def test_runtime_files_are_left_out_of_a_containers_layer(tmp_path):
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    for name in ("hostname", "hosts", "resolv.conf", "motd"):
        (upper / "etc" / name).write_text(name)
    layer = upperlayer.layer_from_directory(upper, tmp_path / "layout",
                                            exclude=upperlayer.RUNTIME_FILES)
    with read_layer(tmp_path / "layout", layer) as tar:
        assert tar.getnames() == ["etc", "etc/motd"]


def test_redirect_dir_markers_are_refused_with_one_line(tmp_path):
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(upperlayer.CommitFailed, match="redirect_dir"):
        upperlayer.layer_from_directory(upper, tmp_path / "layout")
    assert not list((tmp_path / "layout" / "blobs" / "sha256").iterdir())


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_an_entry_swapped_for_a_symlink_after_lstat_is_refused_not_followed(tmp_path, kind):
    """The race a container can run against its committer: lstat sees a directory (or file),
    then the container replaces it with a symlink to the host before it is opened."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret")
    upper = tmp_path / "upper"
    upper.mkdir()
    seen = os.lstat(host if kind == "directory" else host / "secret")  # what lstat "saw"
    os.symlink(host if kind == "directory" else host / "secret", upper / "entry")
    root_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    walker = upperlayer._UpperWalker(root_fd, seen.st_dev, None, None, frozenset())
    add = walker._add_subdirectory if kind == "directory" else walker._add_file
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w") as tar, \
                pytest.raises(upperlayer.CommitFailed, match="entry"):
            add(tar, root_fd, "entry", "entry", seen)
    finally:
        os.close(root_fd)
    assert b"host secret" not in buffer.getvalue()
