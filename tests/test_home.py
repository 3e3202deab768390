"""Homes: each CONTAINED_HOME is its owner's alone, and never touches another home's containers.

The classroom set-up gives every student a home on one machine. A home must belong to the
caller (as ssh insists on a ~/.ssh of one's own), and `gc`, `ps`, `rm`, `stop` and cgroups act
only on that home's containers: two homes with a running container each, as two students.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import needs_root, remove_cgroup_parent

from contained import home
from contained.runtime import cgroups

REPO = Path(__file__).resolve().parent.parent


# --- whose home ----------------------------------------------------------------------------


def test_a_home_reached_through_a_symlink_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("CONTAINED_HOME", str(tmp_path / "link"))
    with pytest.raises(home.HomeRefused, match=f"symlink.*CONTAINED_HOME={real} "):
        home.home_path()


def test_a_home_below_a_symlinked_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "real" / "home").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("CONTAINED_HOME", str(tmp_path / "link" / "home"))
    with pytest.raises(home.HomeRefused, match="symlink"):
        home.ensure_home()


@needs_root
def test_a_home_owned_by_another_user_is_refused_even_for_root(tmp_path, monkeypatch):
    other = tmp_path / "nobodys"
    other.mkdir()
    os.chown(other, 65534, 65534)
    monkeypatch.setenv("CONTAINED_HOME", str(other))
    with pytest.raises(home.HomeRefused, match="belongs to uid 65534, not to you"):
        home.home_path()
    done = _contained(other, "ps")
    assert done.returncode == 125
    assert done.stderr.count("\n") == 1 and "belongs to uid 65534" in done.stderr


def test_the_callers_own_home_and_a_missing_one_are_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTAINED_HOME", str(tmp_path / "mine"))
    assert home.home_path() == tmp_path / "mine"  # missing: made later, by its owner
    assert home.ensure_home() == tmp_path / "mine"
    assert home.home_path() == tmp_path / "mine"


def test_each_home_has_its_own_tag(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert home.home_tag(tmp_path / "a") != home.home_tag(tmp_path / "b")
    assert len(home.home_tag(tmp_path / "a")) == 10


# --- two homes, a running container each ---------------------------------------------------


def _contained(home_dir: Path, *argv: str, parent: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess:
    """The `contained` command of the student whose home is `home_dir`."""
    env = {**os.environ, "CONTAINED_HOME": str(home_dir), "PYTHONPATH": str(REPO)}
    env.pop(cgroups.PARENT_ENV, None)
    if parent is not None:
        env[cgroups.PARENT_ENV] = parent
    return subprocess.run([sys.executable, "-m", "contained", *argv], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _parent_of(home_dir: Path, parent: str | None) -> str:
    return parent or f"{cgroups.DEFAULT_PARENT}-{home.home_tag(home_dir)}"


def _group_dirs(parent: str, name_part: str = "") -> list[Path]:
    return [group for path in cgroups.parent_paths() for group in
            (path.parent / parent).glob("*") if group.is_dir() and name_part in group.name]


@needs_root
@pytest.mark.parametrize("shared_parent", [False, True],
                         ids=["default_parents", "one_parent_for_both"])
def test_one_homes_gc_ps_rm_and_stop_never_touch_another_homes_container(tmp_path,
                                                                         shared_parent):
    from contained.images import busybox
    from contained.images.store import Store

    if not os.path.exists(busybox.HOST_BUSYBOX):
        pytest.skip("needs /bin/busybox (apt-get install busybox-static)")
    parent = f"contained-homes-{os.getpid()}" if shared_parent else None
    a, b = tmp_path / "a", tmp_path / "b"
    for home_dir in (a, b):
        busybox.import_busybox(Store(home_dir))
    try:
        for home_dir, name in ((a, "alice"), (b, "bob")):
            done = _contained(home_dir, "run", "-d", "--name", name, "busybox", "sleep", "300",
                              parent=parent)
            assert done.returncode == 0, done.stderr
        (bob_id,) = _contained(b, "ps", "-q", "--no-trunc", parent=parent).stdout.split()
        assert _contained(a, "gc", parent=parent).returncode == 0
        listed_b = _contained(b, "ps", parent=parent).stdout
        assert "bob" in listed_b and " Up " in listed_b, "a's gc stopped b's container"
        assert _group_dirs(_parent_of(b, parent), bob_id[:12]), "a's gc removed b's cgroup"
        assert "bob" not in _contained(a, "ps", "-a", parent=parent).stdout
        for command in (["rm", "-f", "bob"], ["stop", "bob"]):
            done = _contained(a, *command, parent=parent)
            assert done.returncode != 0 and "no container named 'bob'" in done.stderr
        listed_b = _contained(b, "ps", parent=parent).stdout
        assert "bob" in listed_b and " Up " in listed_b
    finally:
        for home_dir, name in ((a, "alice"), (b, "bob")):
            _contained(home_dir, "rm", "-f", name, parent=parent)
            _contained(home_dir, "gc", parent=parent)
        leftover = []
        for home_dir in (a, b):
            leftover += remove_cgroup_parent(_parent_of(home_dir, parent))
    assert leftover == []


@needs_root
@pytest.mark.parametrize("command", [["ps"], ["rm", "-f", "web"], ["gc"]])
def test_another_users_store_is_one_line_not_a_traceback(command):
    # a student pointing CONTAINED_HOME at another's store (here: root's, a 0700 directory)
    if not os.path.exists("/usr/bin/python3") or not shutil.which("setpriv"):
        pytest.skip("needs /usr/bin/python3 and setpriv (util-linux)")
    store = Path(tempfile.mkdtemp(prefix="contained-roots-"))  # 0700, root's, nobody sees it
    try:
        for where, says in ((store, "belongs to uid 0, not to you (uid 65534)"),
                            (store / "inner", "inside another user's directory")):
            done = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
                 "PATH=/usr/bin:/bin", f"CONTAINED_HOME={where}", f"PYTHONPATH={REPO}",
                 "/usr/bin/python3", "-m", "contained", *command],
                capture_output=True, text=True, timeout=30, cwd="/")
            assert done.returncode == 125
            assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    finally:
        store.rmdir()
