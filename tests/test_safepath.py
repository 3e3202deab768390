"""contained.images.safepath: paths inside a container root never reach the host.

Each root is built next to a sentinel directory (what a malicious image aims at); open_in_root
runs both with openat2 and with the portable fd walk.
"""

import os
from pathlib import Path

import pytest
from layerkit import make_sentinel, snapshot

from contained.images import safepath
from contained.images.safepath import UnsafePath


@pytest.fixture
def root(tmp_path):
    sentinel = make_sentinel(tmp_path)
    before = snapshot(sentinel)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    os.symlink(str(sentinel / "etc" / "passwd"), root / "etc" / "hosts")  # absolute, escaping
    os.symlink("../../../sentinel", root / "a" / "b" / "up")  # relative, escaping
    os.symlink("/", root / "slash")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("/nowhere/file", root / "dangling")
    yield root
    assert snapshot(sentinel) == before, "something outside the root changed"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    if request.param == "openat2":
        if not safepath.use_openat2:
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(safepath, "use_openat2", False)
    return request.param


@pytest.mark.parametrize("path, expected", [
    ("etc/hosts", "{s}/etc/passwd"),
    ("/etc/hosts", "{s}/etc/passwd"),
    ("a/b/up", "sentinel"),
    ("a/b/up/secret", "sentinel/secret"),
    ("../../../etc/shadow", "etc/shadow"),
    ("slash/../../etc", "etc"),
    ("a/b/../../a/./b", "a/b"),
    ("dangling", "nowhere/file"),
    ("missing/x/../y", "missing/y"),
    ("", "."),
])
def test_resolve_in_root_stays_inside(root, path, expected):
    sentinel = root.parent / "sentinel"
    expected = expected.format(s=str(sentinel).lstrip("/"))
    assert safepath.resolve_in_root(root, path) == (root / expected if expected != "." else root)


def test_resolve_in_root_symlink_loop(root):
    with pytest.raises(UnsafePath, match="symlink loop"):
        safepath.resolve_in_root(root, "loop1/x")


def test_open_in_root_follows_symlinks_inside_root(root, resolver):
    (root / "sentinel").mkdir()
    fd = safepath.open_in_root(root, "a/b/up/secret", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"contained")
    os.close(fd)
    assert (root / "sentinel" / "secret").read_bytes() == b"contained"


def test_open_in_root_creates_through_dangling_symlink_inside(root, resolver):
    (root / "nowhere").mkdir()
    fd = safepath.open_in_root(root, "dangling", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    assert (root / "nowhere" / "file").is_file()


def test_open_in_root_nofollow_refuses_a_final_symlink(root, resolver):
    with pytest.raises(OSError):
        safepath.open_in_root(root, "etc/hosts", os.O_RDONLY | os.O_NOFOLLOW)
    fd = safepath.open_in_root(root, "etc/hosts", os.O_PATH | os.O_NOFOLLOW)
    os.close(fd)


def test_open_in_root_loop_and_missing(root, resolver):
    with pytest.raises(UnsafePath, match="symlink loop"):
        safepath.open_in_root(root, "loop1", os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        safepath.open_in_root(root, "missing/file", os.O_RDONLY)


def test_write_in_root_through_an_absolute_symlink(root):
    written = safepath.write_in_root(root, "/etc/hosts", b"127.0.0.1 box\n")
    sentinel_path = str(root.parent / "sentinel").lstrip("/")
    assert written == root / sentinel_path / "etc" / "passwd"
    assert written.read_bytes() == b"127.0.0.1 box\n"


def test_write_in_root_replaces_content_and_mode(root):
    (root / "etc" / "hostname").write_text("a much longer old hostname\n")
    safepath.write_in_root(root, "etc/hostname", b"box\n", mode=0o600)
    assert (root / "etc" / "hostname").read_bytes() == b"box\n"
    assert (root / "etc" / "hostname").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("make", ["dir", "fifo", "dirlink"])
def test_write_in_root_refuses_non_regular_files(root, make):
    target = root / "target"
    if make == "dir":
        target.mkdir()
    elif make == "fifo":
        os.mkfifo(target)  # must fail at once, not hang waiting for a reader
    else:
        os.symlink("/a", target)
    with pytest.raises(UnsafePath):
        safepath.write_in_root(root, "target", b"x")


def test_write_in_root_creates_parents_through_symlinks(root):
    path = safepath.write_in_root(root, "slash/new/dir/file", b"x")
    assert path == root / "new" / "dir" / "file" and path.read_bytes() == b"x"


@pytest.mark.parametrize("workdir", ["../../..", "/a/b/up", "slash", "a/b/up/../../../work"])
def test_mkdirs_in_root_for_hostile_working_dirs(root, workdir):
    made = safepath.mkdirs_in_root(root, workdir)
    assert made.is_dir()
    assert made == root or root in made.parents


def test_mkdirs_in_root_refuses_a_file(root):
    (root / "file").write_text("x")
    with pytest.raises(UnsafePath, match="not a directory"):
        safepath.mkdirs_in_root(root, "file")
    with pytest.raises(UnsafePath):
        safepath.mkdirs_in_root(root, "file/below")


def test_walk_notices_a_directory_swapped_for_a_symlink(root, tmp_path):
    # The race an fd walk defends against: reopening a resolved path refuses a symlink on it.
    root_fd = safepath.open_root(root)
    try:
        resolved = safepath.walk(root_fd, "a/b/x")
        resolved.close()
        os.rename(root / "a" / "b", root / "a" / "b.real")
        os.symlink(str(tmp_path / "sentinel"), root / "a" / "b")
        with pytest.raises(UnsafePath, match="changed while being resolved"):
            safepath._reopen(root_fd, resolved.parent, str(root))
    finally:
        os.close(root_fd)
    assert Path(root / "a" / "b").is_symlink()
