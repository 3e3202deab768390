"""Overlay mounts: option strings, the page-size limit, and a real copy-up (root)."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_root

from contained.runtime import overlay


def test_lowerdir_lists_the_top_layer_first(tmp_path):
    options, base = overlay.overlay_options([tmp_path / "l1", tmp_path / "l2"],
                                            tmp_path / "u", tmp_path / "w")
    assert options.startswith(f"lowerdir={tmp_path}/l2:{tmp_path}/l1,")
    assert base is None


def test_long_layer_lists_fall_back_to_relative_paths(tmp_path):
    deep = tmp_path / ("d" * 100)
    lowers = [deep / f"layer-{i:03d}-{'x' * 40}" for i in range(60)]
    options, base = overlay.overlay_options(lowers, deep / "upper", deep / "work")
    assert base == deep
    assert len(options) <= overlay.MOUNT_OPTIONS_LIMIT
    assert "layer-059" in options.split(",")[0].split(":")[0]


def test_too_many_layers_is_a_clear_error(tmp_path):
    lowers = [tmp_path / f"{'y' * 200}{i}" for i in range(100)]
    with pytest.raises(overlay.OverlayTooLong, match="contained unpack"):
        overlay.overlay_options(lowers, tmp_path / "u", tmp_path / "w")


def test_paths_with_separators_are_refused(tmp_path):
    with pytest.raises(overlay.ContainedError, match="':' or ','"):
        overlay.overlay_options([tmp_path / "a:b"], tmp_path / "u", tmp_path / "w")


@needs_root
def test_copy_up_and_whiteout_leave_the_lower_untouched(tmp_path):
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "file").write_text("from the image\n")
    (lower / "gone").write_text("delete me\n")
    # A private mount namespace: nothing is mounted on the host even if the test fails.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r}); "
            "from contained.runtime import overlay; from pathlib import Path as P; "
            f"overlay.mount_overlay_step([P({str(lower)!r})], P({str(upper)!r}), "
            f"P({str(work)!r}), P({str(merged)!r})).run()")
    script = (f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} && "
              f"echo changed > {merged}/file && rm {merged}/gone && cat {merged}/file")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, check=True).stdout
    assert out == "changed\n"
    assert (lower / "file").read_text() == "from the image\n"
    assert (lower / "gone").exists()
    assert (upper / "file").read_text() == "changed\n"
    whiteout = (upper / "gone").lstat()
    assert whiteout.st_rdev == 0 and (whiteout.st_mode & 0o170000) == 0o020000
    assert not any(line.split()[4] == str(merged)
                   for line in Path("/proc/self/mountinfo").read_text().splitlines())
