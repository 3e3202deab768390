"""Removing unpacked trees (contained.images.trees): read-only directories, never a symlink."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import needs_root

from contained.images import trees


def test_a_missing_path_is_already_removed(tmp_path):
    trees.remove_tree(tmp_path / "absent")


def test_a_tree_with_read_only_directories_is_removed(tmp_path):
    (tmp_path / "root/a/b").mkdir(parents=True)
    (tmp_path / "root/a/b/file").write_text("x")
    for path in ("root/a/b", "root/a"):
        (tmp_path / path).chmod(0o500)
    trees.remove_tree(tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_symlinks_inside_the_tree_are_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (tmp_path / "root").mkdir()
    (tmp_path / "root/escape").symlink_to(outside)
    (tmp_path / "root/file-link").symlink_to(outside / "keep")
    trees.remove_tree(tmp_path / "root")
    assert not (tmp_path / "root").exists() and (outside / "keep").is_dir()


def test_the_runtime_removes_trees_without_loading_the_layer_unpacker():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, contained.runtime.container, contained.cli;"
         " print('contained.images.unpack' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


@needs_root
def test_an_unprivileged_owner_removes_a_mode_000_directory():
    """overlayfs leaves a mode-000 work/work behind: the owner opens it up before listing it."""
    tmp_path = Path(tempfile.mkdtemp(prefix="contained-test-"))  # pytest's are 0700
    try:
        removed_by_nobody(tmp_path / "root")
    finally:
        shutil.rmtree(tmp_path)


def removed_by_nobody(root: Path) -> None:
    (root / "work/work").mkdir(parents=True)
    (root / "work/work/file").write_text("x")
    (root / "work/work").chmod(0)
    root.parent.chmod(0o755)
    for path in (root.parent, root, root / "work", root / "work/work", root / "work/work/file"):
        os.lchown(path, 65534, 65534)
    script = ("import sys; from contained.images import trees;"
              " trees.remove_tree(sys.argv[1])")
    done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           sys.executable, "-c", script, str(root)],
                          capture_output=True, text=True, env={**os.environ, "HOME": "/"})
    assert done.returncode == 0, done.stderr
    assert not root.exists()
