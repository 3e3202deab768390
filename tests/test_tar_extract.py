"""images.tar_extract: safety against malicious layers, one entry at a time, both whiteout forms.

Every layer here is built by tests/layerkit.py and goes through the whole unpacker (verified
stream included), as in use. Safety tests put a sentinel directory next to the destination (what
a malicious layer would aim at) and check it is unchanged afterwards.
"""

import os
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import IS_ROOT, needs_root
from layerkit import (
    device,
    directory,
    fifo,
    file,
    hardlink,
    layer_blob,
    make_sentinel,
    make_tar,
    opaque,
    snapshot,
    symlink,
    tree,
    whiteout,
)

from contained.images import tar_extract, trees, unpack

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path):
    """dest/ with a sentinel/ next to it; asserts at teardown that the sentinel is intact."""
    sentinel = make_sentinel(tmp_path)
    before = snapshot(sentinel)
    dest = tmp_path / "dest"
    dest.mkdir()
    yield tmp_path, dest, sentinel
    assert snapshot(sentinel) == before, "a layer changed something outside its destination"


def apply(tmp_path, dest, *tars, compress=True):
    blobs = [layer_blob(tmp_path / "blobs", t, compress=compress).args() for t in tars]
    return unpack.apply_layers(blobs, dest)


def per_layer(tmp_path, dest, tar_bytes):
    return unpack.unpack_layer(*layer_blob(tmp_path / "blobs", tar_bytes).args(), dest)


def both_forms(tmp_path, dest, tar_bytes, form):
    if form == "apply":
        return apply(tmp_path, dest, tar_bytes)[0]
    return per_layer(tmp_path, dest, tar_bytes)


FORMS = pytest.mark.parametrize("form", ["apply", "overlay"])


# --- names -------------------------------------------------------------------------------------

@FORMS
@pytest.mark.parametrize("name", ["../sentinel/secret", "a/../../sentinel/secret", "..",
                                  "./../sentinel/etc/passwd"])
def test_dotdot_names_are_refused(site, form, name):
    tmp_path, dest, _ = site
    with pytest.raises(tar_extract.UnsafeLayerEntry, match=r"'\.\.' in its path"):
        both_forms(tmp_path, dest, make_tar(file(name, b"pwned")), form)


def test_absolute_names_land_inside_dest(site):
    tmp_path, dest, sentinel = site
    report = apply(tmp_path, dest, make_tar(file(f"{sentinel}/secret", b"inside")))[0]
    assert (dest / str(sentinel).lstrip("/") / "secret").read_bytes() == b"inside"
    assert any("leading '/'" in w for w in report.warnings)


@FORMS
def test_pax_path_override_is_checked_like_any_name(site, form):
    tmp_path, dest, _ = site
    entry = file("innocent", b"pwned", pax={"path": "../sentinel/secret"})
    with pytest.raises(tar_extract.UnsafeLayerEntry):
        both_forms(tmp_path, dest, make_tar(entry), form)
    assert not (dest / "innocent").exists()


@FORMS
def test_pax_linkpath_override_of_a_hardlink_is_checked(site, form):
    tmp_path, dest, _ = site
    entry = hardlink("h", "innocent", pax={"linkpath": "../sentinel/secret"})
    with pytest.raises(tar_extract.UnsafeLayerEntry):
        both_forms(tmp_path, dest, make_tar(file("innocent"), entry), form)


# --- symlinks ----------------------------------------------------------------------------------

def escaping_targets(sentinel: Path) -> list[str]:
    return [str(sentinel / "etc"), "../sentinel/etc", "../../../../../../" + str(sentinel)[1:]
            + "/etc", "/../../.." + str(sentinel) + "/etc"]


@FORMS
@pytest.mark.parametrize("which", range(4))
def test_symlinked_parent_in_the_same_layer_resolves_inside_dest(site, form, which):
    tmp_path, dest, sentinel = site
    target = escaping_targets(sentinel)[which]
    both_forms(tmp_path, dest, make_tar(symlink("etc", target), file("etc/passwd", b"pwned")),
               form)
    resolved = dest / os.path.normpath("/" + target.replace("../", "")).lstrip("/")
    assert (resolved / "passwd").read_bytes() == b"pwned"
    assert os.readlink(dest / "etc") == target  # the link itself is kept as data


@pytest.mark.parametrize("which", range(4))
def test_symlink_planted_by_an_earlier_layer_resolves_inside_dest(site, which):
    tmp_path, dest, sentinel = site
    target = escaping_targets(sentinel)[which]
    apply(tmp_path, dest, make_tar(symlink("etc", target)),
          make_tar(file("etc/passwd", b"pwned"), hardlink("etc/pw2", "etc/passwd")))
    resolved = dest / os.path.normpath("/" + target.replace("../", "")).lstrip("/")
    assert (resolved / "passwd").read_bytes() == b"pwned"
    assert os.stat(resolved / "passwd").st_nlink == 2


def test_symlink_loop_as_parent_is_an_error(site):
    tmp_path, dest, _ = site
    with pytest.raises(tar_extract.UnsafeLayerEntry, match="symlink loop"):
        apply(tmp_path, dest, make_tar(symlink("a", "b"), symlink("b", "a"), file("a/x")))


# --- hardlinks ---------------------------------------------------------------------------------

@FORMS
def test_hardlink_to_host_file_through_symlink_is_not_made(site, form):
    tmp_path, dest, sentinel = site
    with pytest.raises(tar_extract.LayerEntryFailed, match="not unpacked before it"):
        both_forms(tmp_path, dest,
                   make_tar(symlink("s", str(sentinel)), hardlink("h", "s/secret")), form)
    assert os.stat(sentinel / "secret").st_nlink == 1


@FORMS
def test_hardlink_to_absolute_path_means_inside_dest(site, form):
    tmp_path, dest, sentinel = site
    with pytest.raises(tar_extract.LayerEntryFailed):
        both_forms(tmp_path, dest, make_tar(hardlink("h", str(sentinel / "secret"))), form)
    assert not (dest / "h").exists()


def test_hardlink_to_a_symlink_links_the_symlink_itself(site):
    tmp_path, dest, sentinel = site
    apply(tmp_path, dest, make_tar(symlink("l", str(sentinel / "secret")), hardlink("h", "l")))
    assert os.readlink(dest / "h") == str(sentinel / "secret")
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "l").st_ino


def test_hardlink_to_a_directory_is_refused(site):
    tmp_path, dest, _ = site
    with pytest.raises(tar_extract.UnsafeLayerEntry, match="directory"):
        apply(tmp_path, dest, make_tar(directory("d"), hardlink("h", "d")))


def test_hardlink_to_a_lower_layer_file_works_in_apply_form(site):
    tmp_path, dest, _ = site
    apply(tmp_path, dest, make_tar(file("a", b"x")), make_tar(hardlink("b", "a")))
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino


# --- whiteouts ---------------------------------------------------------------------------------

def test_whiteout_through_a_symlink_stays_inside_dest(site):
    tmp_path, dest, sentinel = site
    apply(tmp_path, dest, make_tar(symlink("s", str(sentinel)), symlink("t", "../sentinel")),
          make_tar(whiteout("s/secret"), opaque("s/etc"), whiteout("t/secret")))
    assert os.path.islink(dest / "s")


def test_whiteout_of_a_symlink_removes_the_link_not_its_target(site):
    tmp_path, dest, sentinel = site
    apply(tmp_path, dest, make_tar(symlink("s", str(sentinel))), make_tar(whiteout("s")))
    assert not os.path.lexists(dest / "s")


@FORMS
@pytest.mark.parametrize("name", [".wh..", "a/.wh..", ".wh...", "a/.wh..."])
def test_whiteout_naming_its_own_directory_is_refused(site, form, name):
    tmp_path, dest, _ = site
    with pytest.raises(tar_extract.UnsafeLayerEntry, match="names its own directory"):
        both_forms(tmp_path, dest, make_tar(directory("a"), file("a/keep"), file(name)), form)
    assert dest.is_dir()


def test_whiteout_with_dotdot_is_refused(site):
    tmp_path, dest, _ = site
    with pytest.raises(tar_extract.UnsafeLayerEntry):
        apply(tmp_path, dest, make_tar(file("../.wh.sentinel")))


def test_apply_whiteouts_delete_lower_paths(site):
    tmp_path, dest, _ = site
    lower = make_tar(directory("d"), file("d/a"), directory("d/sub"), file("d/sub/x"),
                     file("f"), directory("o"), file("o/old"), directory("o/deep"),
                     file("o/deep/old"))
    upper = make_tar(whiteout("d/sub"), whiteout("f"), whiteout("missing/thing"),
                     opaque("o"), file("o/new"))
    apply(tmp_path, dest, lower, upper)
    assert sorted(tree(dest)) == ["d", "d/a", "o", "o/new"]


@pytest.mark.parametrize("order", ["marker first", "marker last"])
def test_opaque_marker_spares_entries_of_its_own_layer(site, order):
    tmp_path, dest, _ = site
    entries = [file("o/new"), directory("o/keep"), file("o/keep/mine"), file("o/implicit/mine")]
    marker = [opaque("o")]
    upper = make_tar(*(marker + entries if order == "marker first" else entries + marker))
    lower = make_tar(file("o/old"), file("o/keep/old"), file("o/implicit/old"))
    apply(tmp_path, dest, lower, upper)
    assert sorted(p for p in tree(dest) if not p.endswith(("keep", "implicit"))) == [
        "o", "o/implicit/mine", "o/keep/mine", "o/new"]


def test_whiteout_spares_the_same_layers_entry(site):
    tmp_path, dest, _ = site
    apply(tmp_path, dest, make_tar(file("x", b"lower"), file("d/old")),
          make_tar(file("x", b"mine"), whiteout("x"), file("d/mine"), whiteout("d")))
    assert (dest / "x").read_bytes() == b"mine"
    assert sorted(tree(dest)) == ["d", "d/mine", "x"]


@needs_root
def test_overlay_form_whiteouts_are_overlayfs_markers(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    per_layer(tmp_path, dest, make_tar(whiteout("etc/gone"), opaque("var"), directory("new"),
                                       file("new/f"), whiteout("new"), whiteout("later"),
                                       directory("later")))
    st = os.lstat(dest / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "var", "trusted.overlay.opaque") == b"y"
    # A whiteout of a directory this layer made hides the lower one, keeps this one's content.
    assert os.getxattr(dest / "new", "trusted.overlay.opaque") == b"y"
    assert (dest / "new" / "f").is_file()
    assert os.getxattr(dest / "later", "trusted.overlay.opaque") == b"y"
    assert not any(name.startswith(".wh.") for name in tree(dest))


def test_overlay_whiteout_device_inside_a_tar_is_skipped(site):
    tmp_path, dest, _ = site
    report = apply(tmp_path, dest, make_tar(file("x")), make_tar(device("x", 0, 0)))[0 + 1]
    assert (dest / "x").is_file()
    assert any("whiteout device" in w for w in report.warnings)


# --- type changes and duplicates ---------------------------------------------------------------

def test_type_changes_across_layers(site):
    tmp_path, dest, sentinel = site
    apply(tmp_path, dest,
          make_tar(file("f2d"), directory("d2f"), file("d2f/x"), symlink("s2d", str(sentinel)),
                   directory("d2s"), file("d2s/x")),
          make_tar(directory("f2d"), file("f2d/y"), file("d2f", b"now a file"),
                   directory("s2d"), file("s2d/secret", b"inside"), symlink("d2s", "/x")))
    assert (dest / "f2d" / "y").is_file()
    assert (dest / "d2f").read_bytes() == b"now a file"
    assert not os.path.islink(dest / "s2d") and (dest / "s2d" / "secret").read_bytes() == b"inside"
    assert os.readlink(dest / "d2s") == "/x"


@FORMS
def test_duplicate_entries_last_one_wins(site, form):
    tmp_path, dest, sentinel = site
    both_forms(tmp_path, dest, make_tar(
        file("a", b"first"), file("a", b"second"), symlink("b", str(sentinel / "secret")),
        file("b", b"file now"), directory("c"), file("c/x"), file("c", b"c file"),
        file("d", b"x", mode=0o600), directory("d", mode=0o711)), form)
    assert (dest / "a").read_bytes() == b"second"
    assert (dest / "b").read_bytes() == b"file now" and not os.path.islink(dest / "b")
    assert (dest / "c").read_bytes() == b"c file"
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o711


# --- devices, fifos, xattrs, ownership ---------------------------------------------------------

def test_devices_only_the_harmless_ones(site):
    tmp_path, dest, _ = site
    report = apply(tmp_path, dest, make_tar(
        device("dev/null", 1, 3), device("dev/tty", 5, 0), device("dev/sda", 8, 0, block=True),
        device("dev/mem", 1, 1), device("dev/kmsg", 1, 11), fifo("run/fifo", mode=0o620)))[0]
    names = set(tree(dest))
    assert {"dev/sda", "dev/mem", "dev/kmsg"}.isdisjoint(names)
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(dest / "run/fifo").st_mode) == 0o620
    assert sum("skipped dev/" in w for w in report.warnings) == (3 if IS_ROOT else 5)
    if IS_ROOT:
        assert os.stat(dest / "dev/null").st_rdev == os.makedev(1, 3)


@needs_root
@FORMS
def test_ownership_modes_and_mtimes_are_restored(site, form):
    tmp_path, dest, _ = site
    both_forms(tmp_path, dest, make_tar(
        directory("d", mode=0o750, uid=7, gid=8, mtime=1000), file("d/suid", b"x", mode=0o4755,
                                                                    uid=0, gid=5, mtime=2000),
        symlink("d/l", "suid", uid=9, gid=9, mtime=3000), file("d/sgid", mode=0o2711, uid=3)),
        form)
    st = os.stat(dest / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o750, 7, 8, 1000)
    st = os.stat(dest / "d/suid")
    assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_mtime) == (0o4755, 5, 2000)
    assert stat.S_IMODE(os.stat(dest / "d/sgid").st_mode) == 0o2711
    st = os.lstat(dest / "d/l")
    assert (st.st_uid, st.st_mtime) == (9, 3000)


@needs_root
@FORMS
def test_root_owned_entries_stay_root_owned_in_a_setgid_destination(site, form):
    """Root's entries need no chown where the new files are root's anyway; not so below a
    setgid directory, whose group every new entry inherits (a shared cache, say)."""
    tmp_path, dest, _ = site
    os.chown(dest, 0, 4321)
    dest.chmod(0o2755)
    both_forms(tmp_path, dest, make_tar(
        file("f", b"x"), directory("d"), file("d/g", b"y"), symlink("l", "f"),
        fifo("p"), file("u", b"z", uid=5, gid=6)), form)
    for name in ("f", "d", "d/g", "l", "p"):
        st = os.lstat(dest / name)
        assert (st.st_uid, st.st_gid) == (0, 0), name
    assert (os.stat(dest / "u").st_uid, os.stat(dest / "u").st_gid) == (5, 6)


@pytest.fixture
def open_tmp():
    """A temp dir an unprivileged user can reach (pytest's own are under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="contained-test-"))
    path.chmod(0o755)
    yield path
    trees.remove_tree(path)


@needs_root
def test_unprivileged_unpack_skips_chown_and_succeeds(open_tmp):
    tmp_path = open_tmp
    blob = layer_blob(tmp_path / "blobs", make_tar(
        directory("d", uid=7, mode=0o555), file("d/f", b"x", uid=7, mode=0o4755),
        device("dev/null", 1, 3), whiteout("gone"), opaque("d")))
    dest = tmp_path / "dest"
    dest.mkdir()
    os.chown(dest, 65534, 65534)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from contained.images import oci, unpack
        d = oci.Descriptor({blob.descriptor.media_type!r}, {blob.descriptor.digest!r},
                           {blob.descriptor.size})
        r = unpack.unpack_layer(Path({str(blob.blob)!r}), d, {blob.diff_id!r},
                                Path({str(dest)!r}))
        print(r.warnings)
    """)
    result = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.stat(dest / "d/f").st_uid == 65534
    assert stat.S_IMODE(os.stat(dest / "d/f").st_mode) == 0o4755
    assert os.getxattr(dest / "d", "user.overlay.opaque") == b"y"
    assert "creating devices needs root" in result.stdout


def test_xattrs_kept_and_dropped(site):
    tmp_path, dest, _ = site
    attrs = {"user.kept": "yes", "trusted.overlay.opaque": "y", "security.selinux": "x_t",
             "user.overlay.opaque": "y"}
    report = apply(tmp_path, dest, make_tar(file("f", b"x", xattrs=attrs),
                                            directory("d", xattrs=attrs)))[0]
    for path in (dest / "f", dest / "d"):
        assert os.listxattr(path) == ["user.kept"]
    assert sum("dropped xattr" in w for w in report.warnings) == 6


@needs_root
def test_file_capabilities_are_kept(site):
    tmp_path, dest, _ = site
    # VFS_CAP_REVISION_2 | effective, cap_net_raw (13) permitted
    caps = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    value = caps.decode("utf-8", "surrogateescape")
    apply(tmp_path, dest, make_tar(file("ping", b"x", mode=0o755,
                                        xattrs={"security.capability": value})))
    assert os.getxattr(dest / "ping", "security.capability") == caps


# --- sparse files and holes -------------------------------------------------------------------

@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_members_stay_sparse(tmp_path, tar_format):
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(64 * 1024 * 1024)
        f.write(b"middle")
        f.truncate(128 * 1024 * 1024)
    tar_bytes = subprocess.run(["tar", "-C", str(source), f"--format={tar_format}", "--sparse",
                                "-cf", "-", "sparse"], capture_output=True, check=True).stdout
    dest = tmp_path / "dest"
    apply(tmp_path, dest, tar_bytes)
    out = dest / "sparse"
    assert out.stat().st_size == 128 * 1024 * 1024
    assert out.stat().st_blocks * 512 < 1024 * 1024
    with open(out, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(64 * 1024 * 1024)
        assert f.read(6) == b"middle"


@FORMS
def test_zero_runs_in_regular_files_become_holes(site, form):
    tmp_path, dest, _ = site
    both_forms(tmp_path, dest, make_tar(file("z", b"a" + bytes(8 << 20) + b"b"),
                                        file("tail", b"a" + bytes(1 << 20))), form)
    assert (dest / "z").read_bytes() == b"a" + bytes(8 << 20) + b"b"
    assert os.stat(dest / "z").st_blocks * 512 < 1 << 20
    # Ending in a hole: seeking past the end does not make the file longer, truncating does.
    assert (dest / "tail").read_bytes() == b"a" + bytes(1 << 20)
    assert os.stat(dest / "tail").st_blocks * 512 < 1 << 19
