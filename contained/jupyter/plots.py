"""Plots for the notebooks: a container's memory, CPU and processes over time, and an image's
layer sizes (notebook 08's bridge diagram is contained/workbook/figures.py's).

Taught in notebooks 02 (cgroups: watch a limit being hit) and 04 (images: what the layers
weigh), and shown by ``%%container --stats``, ``%container stats NAME`` and
``%container inspect IMAGE``. By hand, the same numbers come from::

    cat /sys/fs/cgroup/contained/<id>/memory.current     # v1: memory.usage_in_bytes
    cat /sys/fs/cgroup/contained/<id>/cpu.stat           # v1: cpuacct.usage
    jq '.layers[].size' $HOME/oci/blobs/sha256/<manifest>

Figures are built with matplotlib's object API (`Figure`, never pyplot): no global state, no GUI
backend, nothing left open; `show_figure` renders one to PNG for the notebook. matplotlib is
imported only here, and this module only when a plot is asked for.
"""

import io

from matplotlib.figure import Figure

from contained.runtime import cgroups
from contained.units import format_size

MIB = 1024 * 1024
LIMIT_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}


def stats_figure(samples: list, title: str = "") -> Figure:
    """Memory (MiB), CPU (% of one CPU) and, under a pids limit, processes over a run, each
    limit a dashed line.

    `samples` are (seconds since start, `cgroups.Usage`) pairs. CPU use is the growth of the
    cgroup's CPU time between samples, so the first point has no CPU value. A panel with
    nothing to show is left out rather than drawn empty: memory when every reading is 0 and
    there is no limit (no memory controller), CPU with fewer than two samples, processes
    without a pids limit.
    """
    panels = _stats_panels(samples)
    figure = Figure(figsize=(8, 0.6 + 2.0 * max(1, len(panels))), layout="constrained")
    if title:
        figure.suptitle(title)
    if not panels:
        figure.text(0.5, 0.5, "no samples: the command ended before a reading could be plotted"
                    if len(samples) < 2 else "nothing to plot: no usage was measured",
                    ha="center", va="center", color="grey")
        return figure
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (label, times, values, limit, limit_label, color) in zip(axes_list, panels,
                                                                      strict=True):
        axes.plot(times, values, marker=".", color=color, label="used")
        if limit:
            axes.axhline(limit, **LIMIT_STYLE, label=limit_label)
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)
        axes.legend(loc="upper left")
    axes_list[-1].set_xlabel("seconds")
    return figure


def _stats_panels(samples: list) -> list[tuple]:
    """(y label, times, values, limit, limit's label, colour) of each panel worth drawing."""
    if not samples:
        return []
    last = samples[-1][1]
    times = [t for t, _ in samples]
    panels = []
    memory = [u.memory / MIB for _, u in samples]
    if any(memory) or last.memory_limit:
        limit = last.memory_limit / MIB if last.memory_limit else None
        panels.append(("memory (MiB)", times, memory, limit, f"limit {limit or 0:g} MiB",
                       "tab:blue"))
    cpu_times, cpu_percent = cpu_series(samples)
    if cpu_times:
        limit = last.cpu_limit * 100 if last.cpu_limit else None
        panels.append(("CPU (% of one CPU)", cpu_times, cpu_percent, limit,
                       f"limit {last.cpu_limit or 0:g} CPUs", "tab:green"))
    if last.pids_limit:
        panels.append(("processes", times, [u.pids for _, u in samples], last.pids_limit,
                       f"pids.max {last.pids_limit}", "tab:purple"))
    return panels


def cpu_series(samples: list) -> tuple[list[float], list[float]]:
    """CPU use in % of one CPU between consecutive samples, at each interval's end."""
    times, rates = cgroups.cpu_rates(samples)
    return times, [max(0.0, rate * 100) for rate in rates]


def image_layers_figure(image) -> Figure:
    """A stored image's layers (``%container inspect``): their compressed sizes."""
    rows = [(descriptor.digest.split(":")[-1][:12], descriptor.size, None)
            for descriptor, _ in image.layers]
    total = format_size(sum(size for _, size, _ in rows))
    return layer_sizes_figure(rows, f"{image.name}: {len(rows)} layer(s), {total}")


def cpu_figure(samples: list, limit: float | None, title: str = "CPU used by the group"
               ) -> Figure:
    """CPUs used over a run (1.0 = one CPU), the cgroup's CPU limit dashed (notebook 02)."""
    times, used = cgroups.cpu_rates(samples)
    figure = Figure(figsize=(7, 3), layout="constrained")
    axes = figure.subplots()
    axes.plot(times, used, marker=".", label="CPU used (1.0 = one CPU)")
    if limit is not None:
        axes.axhline(limit, **LIMIT_STYLE, label=f"limit: {limit:g} CPU")
    axes.set_xlabel("seconds")
    axes.set_ylabel("CPUs")
    axes.set_ylim(0, max([1.1, *(u * 1.1 for u in used)]))
    axes.set_title(title)
    axes.legend(loc="upper right")
    return figure


def layer_sizes_figure(layers: list[tuple[str, int, int | None]], title: str = "Layer sizes",
                       hidden: dict[int, int] | None = None) -> Figure:
    """One row per layer, bottom layer on top, from (digest, compressed, uncompressed) rows:
    the compressed size (the blob), and beside it the uncompressed one (the tar) where known
    (notebook 04 builds its own layers and knows both; a stored image has its blobs only).
    `hidden` maps a layer's index to the bytes of its files that a later layer deleted or
    replaced: they are hatched at the end of its uncompressed bar, still shipped."""
    both = any(uncompressed is not None for _, _, uncompressed in layers)
    largest = max([size or 0 for row in layers for size in row[1:]] + [1])
    unit, scale = ("MB", 1e6) if largest >= 1e6 else ("KiB", 1024)
    figure = Figure(figsize=(7, 0.8 + (0.6 if both else 0.45) * max(1, len(layers))),
                    layout="constrained")
    axes = figure.subplots()
    positions = range(len(layers))
    offset, height = (0.2, 0.4) if both else (0.0, 0.8)
    compressed = [size for _, size, _ in layers]
    bars = axes.barh([p - offset for p in positions], [size / scale for size in compressed],
                     height=height, color="tab:blue", label="compressed (blob)")
    axes.bar_label(bars, labels=[format_size(size) for size in compressed], padding=3)
    if both:
        axes.barh([p + offset for p in positions],
                  [(size or 0) / scale for _, _, size in layers], height=height,
                  color="tab:orange", label="uncompressed (tar)")
        for index, size in sorted((hidden or {}).items()):
            if size:  # the part of the tar no container will ever see
                end = (layers[index][2] or 0) / scale
                axes.barh(index + offset, size / scale, left=end - size / scale, height=height,
                          color="white", edgecolor="tab:red", hatch="///",
                          label="deleted by a later layer, still shipped")
        axes.legend(loc="lower right")
    axes.set_yticks(list(positions), [f"{i}: {digest}" for i, (digest, _, _) in
                                      enumerate(layers)])
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    axes.set_title(title)
    axes.margins(x=0.2)
    return figure


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def show_figure(figure: Figure) -> None:
    """Display a figure as a PNG in the notebook (works whatever matplotlib backend is set)."""
    from IPython.display import Image, display

    display(Image(data=to_png(figure), format="png"))

