"""The workbook's figures (contained/workbook/figures.py): drawn from real directories and
real readings, rendered to PNG."""

import os

from conftest import needs_root

from contained.jupyter import plots
from contained.runtime import cgroups
from contained.workbook import figures


def _usage(pids: int = 0, cpu: float = 0.0) -> cgroups.Usage:
    return cgroups.Usage(memory=0, memory_peak=None, cpu_seconds=cpu, pids=pids,
                         memory_limit=None, cpu_limit=None, pids_limit=None)


def test_merged_view_follows_overlay_rules():
    lower = {"bye.txt": "file", "etc": "dir", "etc/app.conf": "file", "hello.txt": "file"}
    upper = {"bye.txt": "whiteout", "etc": "opaque dir", "etc/new.conf": "file",
             "hello.txt": "file"}
    view = figures.merged_view(lower, upper)
    assert "bye.txt" not in view and "etc/app.conf" not in view
    assert view["hello.txt"] == "file (upper)" and view["etc/new.conf"] == "file (upper)"
    assert figures.merged_view(lower, {})["etc/app.conf"] == "file (lower)"


@needs_root
def test_overlay_figure_from_real_directories(tmp_path):
    (tmp_path / "lower" / "etc").mkdir(parents=True)
    (tmp_path / "lower" / "bye.txt").write_text("x")
    (tmp_path / "upper").mkdir()
    os.mknod(tmp_path / "upper" / "bye.txt", 0o020000, os.makedev(0, 0))
    entries = figures._entries(tmp_path / "upper")
    assert entries == {"bye.txt": "whiteout"}
    assert plots.to_png(figures.overlay_figure(tmp_path)).startswith(b"\x89PNG")


def test_pids_and_contention_figures_render():
    limited = [(t / 10, _usage(pids=min(t * 5, 20))) for t in range(20)]
    unlimited = [(t / 10, _usage(pids=t * 40)) for t in range(20)]
    assert plots.to_png(figures.pids_comparison_figure(limited, unlimited, 20))
    result = {"weights": (100, 300),
              "a": [(t / 10, _usage(cpu=t * 0.025)) for t in range(20)],
              "b": [(t / 10, _usage(cpu=t * 0.075)) for t in range(20)]}
    assert plots.to_png(figures.contention_figure(result)).startswith(b"\x89PNG")
