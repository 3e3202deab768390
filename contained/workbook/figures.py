"""Figures for notebooks 02 and 03, drawn from what the cells really did.

- `overlay_figure`: the overlay stack of notebook 03 — lower, upper (with its whiteouts and
  opaque directories) and the merged view that results — drawn from the directories themselves
  (what ``find lower upper`` lists, and ``ls merged`` showed while mounted).
- `pids_comparison_figure`: notebook 02's fork bomb with and without ``pids.max``.
- `contention_figure`: two groups with different CPU weights sharing one CPU.

matplotlib's object API only (`Figure`, never pyplot), like contained/jupyter/plots.py; show a
figure with ``plots.show_figure``.
"""

import os
import stat
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from contained.runtime import cgroups

LIMIT_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
_COLORS = {"lower": "#dbe9f6", "upper": "#fde9c9", "merged": "#dff3df"}


def _entries(root: Path) -> dict[str, str]:
    """Relative path → what it is (file, dir, whiteout, opaque dir) for everything under root."""
    found = {}
    for entry in sorted(root.rglob("*")):
        info = entry.lstat()
        relative = str(entry.relative_to(root))
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            found[relative] = "whiteout"
        elif stat.S_ISDIR(info.st_mode):
            opaque = any(_xattr(entry, name) == b"y" for name in
                         ("trusted.overlay.opaque", "user.overlay.opaque"))
            found[relative] = "opaque dir" if opaque else "dir"
        else:
            found[relative] = "file"
    return found


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def merged_view(lower: dict[str, str], upper: dict[str, str]) -> dict[str, str]:
    """What merged/ shows for these layers: upper wins, a whiteout hides a name, an opaque
    directory hides everything below it in lower (overlayfs's rules, computed by hand)."""
    view = {}
    hidden = [name for name, kind in upper.items() if kind in ("whiteout", "opaque dir")]
    for name, kind in lower.items():
        if any(name == h or name.startswith(h + "/") for h in hidden):
            continue
        view[name] = f"{kind} (lower)"
    for name, kind in upper.items():
        if kind != "whiteout":
            view[name] = f"{kind.replace('opaque ', '')} (upper)"
    return dict(sorted(view.items()))


def overlay_figure(lab: str | Path = ".", title: str = "The overlay stack") -> Figure:
    """lower at the bottom, upper on it, merged on top: each box lists its entries, and the
    arrows say which layer each name in merged comes from."""
    lab = Path(lab)
    lower, upper = _entries(lab / "lower"), _entries(lab / "upper")
    merged = merged_view(lower, upper)
    hidden = [f"({name}: hidden from lower)" for name in lower if name not in merged]
    layers = [("merged/  (what the container sees)", "merged",
               [f"{n}  ← {k.split('(')[1][:-1]}" for n, k in merged.items()] + hidden),
              ("upper/  (this container's changes, writable)", "upper",
               [f"{n}  [{k}]" for n, k in upper.items()] or ["(empty)"]),
              ("lower/  (the image, read-only)", "lower",
               [f"{n}  [{k}]" for n, k in lower.items()])]
    rows = max(len(lines) for _, _, lines in layers)
    height = 0.55 + 0.22 * rows
    figure = Figure(figsize=(8, 3 * height + 0.8), layout="constrained")
    axes = figure.subplots()
    axes.set_xlim(0, 10)
    axes.set_ylim(-0.15, 3 * (height + 0.4))
    axes.axis("off")
    for index, (label, key, lines) in enumerate(layers):
        y = (2 - index) * (height + 0.4)
        axes.add_patch(FancyBboxPatch((0.2, y), 9.6, height, boxstyle="round,pad=0.05",
                                      facecolor=_COLORS[key], edgecolor="black"))
        axes.text(0.4, y + height - 0.25, label, fontsize=10, fontweight="bold", va="center")
        for line_number, line in enumerate(lines):
            color = ("tab:red" if "whiteout" in line or "opaque" in line else
                     "tab:gray" if line.startswith("(") else "black")
            axes.text(0.7, y + height - 0.55 - 0.22 * line_number, line, fontsize=8.5,
                      family="monospace", va="center", color=color)
        if index < 2:
            axes.add_patch(FancyArrowPatch((9.3, y), (9.3, y - 0.4), arrowstyle="<-",
                                           mutation_scale=12))
    axes.set_title(title)
    return figure


def pids_comparison_figure(limited: list, unlimited: list, limit: int,
                           title: str = "The same fork bomb, with and without pids.max"
                           ) -> Figure:
    """Process counts over time of two runs of one program: in a group with pids.max =
    `limit`, and in a group without it."""
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    axes.plot([t for t, _ in unlimited], [u.pids for _, u in unlimited], marker=".",
              color="tab:gray", label="no pids.max")
    axes.plot([t for t, _ in limited], [u.pids for _, u in limited], marker=".",
              color="tab:blue", label=f"pids.max = {limit}")
    axes.axhline(limit, **LIMIT_STYLE)
    axes.set_xlabel("seconds")
    axes.set_ylabel("processes in the group")
    axes.annotate(f"pids.max = {limit}", (0, limit), xytext=(4, 4), textcoords="offset points",
                  color="tab:red", fontsize=8)
    axes.set_title(title)
    axes.legend(loc="center right")
    return figure


def contention_figure(result: dict, title: str = "Two groups, one CPU") -> Figure:
    """Each group's CPU use over time while both compete for one CPU, labelled with its
    weight; the dashed lines are the shares the weights promise."""
    weights = result["weights"]
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    for key, weight, color in (("a", weights[0], "tab:blue"), ("b", weights[1], "tab:orange")):
        times, used = cgroups.cpu_rates(result[key])
        axes.plot(times, used, marker=".", color=color, label=f"{key.upper()}: weight {weight}")
        axes.axhline(weight / sum(weights), color=color, linestyle="--", linewidth=1)
    axes.set_ylim(0, 1.1)
    axes.set_xlabel("seconds")
    axes.set_ylabel("CPUs (1.0 = the whole CPU)")
    axes.set_title(title)
    axes.legend(loc="center right")
    return figure
