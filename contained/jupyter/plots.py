"""Plots for the notebooks: a container's memory, CPU and processes over time, an image's layer
sizes, and the bridge network.

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
from matplotlib.patches import FancyBboxPatch

from contained.runtime import cgroups
from contained.units import format_size

MIB = 1024 * 1024
LIMIT_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}


def stats_figure(samples: list, title: str = "") -> Figure:
    """Memory (MiB) and CPU (% of one CPU) over a run, with the limits as dashed lines.

    `samples` are (seconds since start, `cgroups.Usage`) pairs. CPU use is the growth
    of the cgroup's CPU time between samples, so the first point has no CPU value.
    """
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    memory_axes, cpu_axes = figure.subplots(2, 1, sharex=True)
    times = [t for t, _ in samples]
    memory_axes.plot(times, [u.memory / MIB for _, u in samples], marker=".", label="used")
    limit = samples[-1][1].memory_limit if samples else None
    if limit:
        memory_axes.axhline(limit / MIB, **LIMIT_STYLE, label=f"limit {limit / MIB:g} MiB")
    memory_axes.set_ylabel("memory (MiB)")
    memory_axes.set_ylim(bottom=0)
    memory_axes.legend(loc="upper left")

    cpu_times, cpu_percent = cpu_series(samples)
    cpu_axes.plot(cpu_times, cpu_percent, marker=".", color="tab:green", label="used")
    cpu_limit = samples[-1][1].cpu_limit if samples else None
    if cpu_limit:
        cpu_axes.axhline(cpu_limit * 100, **LIMIT_STYLE, label=f"limit {cpu_limit:g} CPUs")
    cpu_axes.set_ylabel("CPU (% of one CPU)")
    cpu_axes.set_xlabel("seconds")
    cpu_axes.set_ylim(bottom=0)
    cpu_axes.legend(loc="upper left")
    if title:
        figure.suptitle(title)
    if not samples:
        memory_axes.set_title("no samples: the command ended before the first reading")
    return figure


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


def _box(axes, x, y, width, height, text, color):
    axes.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02",
                                  facecolor=color, edgecolor="black"))
    axes.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=9)


def bridge_figure(state: dict) -> Figure:
    """The host with its bridge on the left, one container per veth on the right."""
    count = max(1, len(state["veths"]))
    figure = Figure(figsize=(9, 1.2 + 1.1 * count), layout="constrained")
    axes = figure.subplots()
    axes.set_xlim(0, 10)
    axes.set_ylim(0, 1.1 * count + 0.6)
    axes.axis("off")
    top = 1.1 * count + 0.3
    axes.add_patch(FancyBboxPatch((0.1, 0.1), 3.6, top - 0.1, boxstyle="round,pad=0.02",
                                  facecolor="#f3f3f3", edgecolor="grey", linestyle="--"))
    axes.text(0.25, top - 0.05, "host network namespace", va="top", fontsize=8, color="grey")
    bridge_y = top / 2 - 0.35
    _box(axes, 0.5, bridge_y, 2.4, 0.7, f"{state['bridge']}\n(bridge) {state['gateway']}",
         "#cfe2ff")
    for i, veth in enumerate(state["veths"]):
        y = top - 0.95 - 1.1 * i
        _box(axes, 6.2, y, 3.5, 0.8, f"container {veth['name']}\neth0 {veth['ip']}", "#d1e7dd")
        axes.plot([2.9, 6.2], [bridge_y + 0.35, y + 0.4], color="black")
        axes.text(4.5, (bridge_y + 0.35 + y + 0.4) / 2 + 0.08, f"veth pair: {veth['veth']} ↔ eth0",
                  ha="center", fontsize=8, rotation=0)
        for j, port in enumerate(veth["ports"]):
            axes.text(6.25, y - 0.12 - 0.18 * j, f"published {port}", fontsize=8,
                      color="tab:red", va="top")
    if not state["veths"]:
        axes.text(7.5, top / 2, "no container on the bridge", ha="center", color="grey")
    figure.suptitle("--net bridge: what the kernel has now")
    return figure
