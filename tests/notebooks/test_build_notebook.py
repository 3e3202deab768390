"""Notebook 09 ("Build an image"), executed with nbclient as root in a home of its own.

It checks what the notebook teaches: a whiteout and an opaque directory in the upper directory
become `.wh.` entries in the layer, the hand-made image survives the registry round trip with
its deletion, and `contained build` reuses its cache and rebuilds from a changed COPY on.
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import needs_registry_tools, needs_root

from contained import workbook

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "09-build-an-image.ipynb"

pytestmark = [needs_root, needs_registry_tools]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebook-09")
    home, out = base / "home", base / "out"
    env = {**os.environ, "CONTAINED_HOME": str(home)}
    try:
        path = workbook.execute_notebook(NOTEBOOK, out, env=env)
        book = nbformat.read(path, as_version=4)
        # A cell's text in one piece: the kernel may send one print() as two stream messages.
        yield "\n".join("".join(output.get("text", "") for output in cell.get("outputs", []))
                        for cell in book.cells)
    finally:
        workbook.unmount_all(out, echo=False)
        script = ("from contained.runtime import container\n"
                  "for c in container.containers(): container.remove(c.id, force=True)\n"
                  "container.gc()\nfrom contained.images import registry\nregistry.stop()\n")
        subprocess.run([sys.executable, "-c", script], env=env, check=False)


def test_the_upper_directory_markers_become_oci_whiteouts(executed):
    assert "c--------- " in executed and "./bin/vi" in executed   # overlay's whiteout
    assert "usr/sbin trusted.overlay.opaque = b'y'" in executed
    assert "---------- 0:0 bin/.wh.vi" in executed
    assert "---------- 0:0 usr/sbin/.wh..wh..opq" in executed
    assert "etc/hostname" not in executed.split("digest:")[0].split("oci:layout:busybox")[-1]


def test_the_hand_made_image_comes_back_from_the_registry_with_its_deletions(executed):
    assert "published: 127.0.0.1:" in executed
    after = executed.split("published: ")[1]
    assert "made by hand" in after and "vi is gone" in after and "only-this" in after


def test_contained_build_caches_and_rebuilds_from_a_changed_copy(executed):
    assert "(3 layer steps run, 0 cached" in executed
    assert "(0 layer steps run, 3 cached" in executed
    assert "(2 layer steps run, 1 cached" in executed
    assert "version 2\nvi is gone" in executed.replace("\n\n", "\n")
