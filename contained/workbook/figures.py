"""Figures for notebooks 02, 03 and 08, drawn from what the cells really did.

- `overlay_figure`: the overlay stack of notebook 03 — lower, upper (with its whiteouts and
  opaque directories) and the merged view that results — drawn from the directories themselves
  (what ``find lower upper`` lists, and ``ls merged`` showed while mounted).
- `pids_comparison_figure`: notebook 02's fork bomb with and without ``pids.max``.
- `contention_figure`: two groups with different CPU weights sharing one CPU.
- `bridge_diagram`: notebook 08's bridge from ``workbook.bridge_state()`` (``ip -j addr``, the
  lease file, ``sysctl net.ipv4.conf.BRIDGE.route_localnet``), with the paths through
  ``nft list table ip BRIDGE``: a published port's DNAT, masquerade out, the loopback drop.

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


# Notebook 08's bridge diagram. Coordinates are in the axes' own units: the host on the left
# (x 0.2-9.0), the containers on the right (x 10.2-14.8), rows counted from the top.
_NET_COLORS = {"host": "#f3f3f3", "bridge": "#cfe2ff", "nft": "#fff3cd", "container": "#d1e7dd",
               "lo": "#e2e3e5", "world": "#f8d7da"}
_PATHS = {"port": "tab:blue", "out": "tab:green", "drop": "tab:red"}


def _net_box(axes, xy, size, text, key, **style):
    """A rounded box with centred text; returns its centre."""
    (x, y), (width, height) = xy, size
    axes.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.04",
                                  facecolor=_NET_COLORS[key], edgecolor="black", **style))
    if key == "nft":  # rules read best left-aligned, as `nft list table` prints them
        axes.text(x + 0.15, y + height / 2, text, ha="left", va="center", fontsize=7.5,
                  family="monospace")
    else:
        axes.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8)
    return x + width / 2, y + height / 2


def _path(axes, start, end, key, label, bend=0.0, label_at=0.5, shift=(0.0, 0.0)):
    """One leg of a packet's path, an arrow labelled on it (or `shift`ed beside it; a label
    ``label_at=1`` is placed from the arrow's end)."""
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                   color=_PATHS[key], linewidth=1.8,
                                   connectionstyle=f"arc3,rad={bend}"))
    x = start[0] + (end[0] - start[0]) * label_at + shift[0]
    y = start[1] + (end[1] - start[1]) * label_at + shift[1]
    axes.text(x, y, label, fontsize=7.5, color=_PATHS[key], ha="left" if shift[0] > 0 else "center",
              va="center",
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})


def _published(state: dict) -> tuple[dict, list] | None:
    """The first container with a published port, and that port's (host ip, host port,
    container port, protocol)."""
    for veth in state["veths"]:
        for rule in veth.get("publish", []):
            return veth, list(rule)
    return None


def _nft_lines(state: dict, published) -> str:
    """The rules of the bridge's nft table that the paths go through (see network/firewall.py)."""
    bridge, subnet = state["bridge"], state.get("subnet") or "SUBNET"
    if published:
        veth, (host_ip, host_port, port, proto) = published
        host_ip = host_ip if str(host_ip).startswith("127.") else "127.0.0.1"
        dnat = (f"output:      ip daddr {host_ip} {proto} dport {host_port}\n"
                f"             dnat to {veth['ip']}:{port}")
    else:
        dnat = "output:      (no published port: no dnat rule)"
    return (f"nft table ip {bridge}\n{dnat}\n"
            f"postrouting: ip saddr {subnet} masquerade\n"
            f'             oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade\n'
            f'input:       iifname "{bridge}" ip daddr 127.0.0.0/8\n'
            f"             ct status & dnat != dnat drop")


def _draw_host(axes, state: dict, top: float, published) -> dict:
    """The host's side: a process, lo, the uplink, the nft table and the bridge; returns the
    centres the paths connect."""
    axes.add_patch(FancyBboxPatch((0.2, 0.2), 8.8, top - 0.2, boxstyle="round,pad=0.04",
                                  facecolor=_NET_COLORS["host"], edgecolor="grey",
                                  linestyle="--", zorder=0.2))
    axes.text(0.35, top - 0.1, "host network namespace", va="top", fontsize=8, color="grey")
    port = ""
    if published:
        host_ip, host_port = published[1][0], published[1][1]
        port = f"{host_ip if str(host_ip).startswith('127.') else '127.0.0.1'}:{host_port}"
    spots = {
        "process": _net_box(axes, (0.5, top - 1.3), (2.5, 0.8),
                            f"a process on the host\nwget http://{port or '127.0.0.1:PORT'}/",
                            "lo"),
        "lo": _net_box(axes, (0.5, 2.3), (2.6, 0.9),
                       "lo  127.0.0.1\nloopback-only services\n(databases, admin ports…)", "lo"),
        "world": _net_box(axes, (0.5, 0.5), (2.6, 0.8), "the host's uplink\n→ the world",
                          "world"),
        "nft": _net_box(axes, (4.0, top - 2.35), (4.85, 1.85), _nft_lines(state, published),
                        "nft"),
    }
    localnet = state.get("route_localnet")
    spots["bridge"] = _net_box(
        axes, (4.9, 2.2), (2.8, 1.1),
        f"{state['bridge']} (bridge)\n{state['gateway']}\nroute_localnet = {localnet or '?'}",
        "bridge")
    return spots


def _draw_containers(axes, state: dict, top: float, bridge_xy) -> list:
    """One box per container, each joined to the bridge by its veth pair; returns their
    centres."""
    centres = []
    rows = max(1, len(state["veths"]))
    step = (top - 0.4) / rows
    for index, veth in enumerate(state["veths"]):
        # a lone container sits level with the bridge, so its cable and paths stay apart
        y = bridge_xy[1] - 0.5 if rows == 1 else top - step * (index + 1) + 0.25
        ports = ", ".join(f":{rule[2]}/{rule[3]}" for rule in veth.get("publish", []))
        text = (f"container {veth['name']}\neth0 {veth['ip']}"
                + (f"\nlistens on {ports}" if ports else ""))
        centre = _net_box(axes, (10.4, y), (4.2, min(1.0, step - 0.25)), text, "container")
        # the cable crosses the namespace boundary: one end on the bridge, eth0 inside
        axes.plot([bridge_xy[0] + 1.4, 10.4], [bridge_xy[1], centre[1]], color="black",
                  linewidth=2.5, zorder=0.5)
        axes.text(9.05, bridge_xy[1] + (centre[1] - bridge_xy[1]) * 0.5,
                  f"veth pair\n{veth['veth']} ↔ eth0", fontsize=7.5, ha="center",
                  va="center", bbox={"facecolor": "white", "edgecolor": "black", "pad": 2})
        centres.append(centre)
    if not centres:
        axes.text(12.5, top / 2, "no container on the bridge", ha="center", color="grey")
    return centres


def bridge_diagram(state: dict, title: str = "--net bridge: the paths a packet takes") -> Figure:
    """Notebook 08's bridge, drawn from `workbook.bridge_state()`: the host, its bridge and
    address, each container's veth pair and address, and three paths: a published port
    (127.0.0.1:PORT → DNAT → the container), NAT out (masquerade), and the CVE-2020-8558 drop
    of loopback-addressed packets from the bridge that were not DNATed."""
    top = max(7.0, 1.0 + 1.5 * len(state["veths"]))
    figure = Figure(figsize=(13, 0.9 * top + 0.6), layout="constrained")
    axes = figure.subplots()
    axes.set_xlim(0, 15)
    axes.set_ylim(0, top + 0.3)
    axes.axis("off")
    if state["bridge"] is None:
        axes.text(7.5, top / 2, "no bridge yet: start a container with --net bridge",
                  ha="center", color="grey")
        figure.suptitle(title)
        return figure
    published = _published(state)
    spots = _draw_host(axes, state, top, published)
    containers = _draw_containers(axes, state, top, spots["bridge"])
    _draw_paths(axes, spots, containers, state, published)
    figure.suptitle(title)
    return figure


def _draw_paths(axes, spots: dict, containers: list, state: dict, published) -> None:
    """The three paths, numbered in the order a packet takes them."""
    process, nft, bridge = spots["process"], spots["nft"], spots["bridge"]
    if published:
        veth, (_, _, port, _) = published
        target = containers[state["veths"].index(veth)]
        _path(axes, (process[0] + 1.25, process[1]), (nft[0] - 2.45, process[1]), "port",
              "① connect to\n127.0.0.1:" + str(published[1][1]), shift=(0.0, 0.45))
        _path(axes, (bridge[0], nft[1] - 0.95), (bridge[0], bridge[1] + 0.55), "port",
              "② DNAT → " + f"{veth['ip']}:{port};\nroute_localnet = 1 lets\n127.x leave lo;"
              "\nmasquerade: source\n127.0.0.1 → the gateway", shift=(0.15, 0.0))
        _path(axes, (bridge[0] + 1.4, bridge[1] + 0.3), (10.4, target[1] + 0.2), "port",
              f"③ {veth['ip']}:{port}", bend=-0.2, label_at=1.0, shift=(0.1, 0.45))
    if not containers:
        return
    first = containers[0]
    _path(axes, (10.4, first[1] - 0.3), (bridge[0] + 1.4, bridge[1] - 0.35), "out",
          "out: any address", bend=-0.2, label_at=0.0, shift=(0.1, -0.45))
    _path(axes, (bridge[0] - 1.4, bridge[1] - 0.3), (spots["world"][0] + 1.3,
                                                     spots["world"][1]), "out",
          f"masquerade: {state.get('subnet') or 'the subnet'}\nleaves as the host", label_at=0.5)
    _blocked(axes, (bridge[0] - 1.4, bridge[1] + 0.3), (spots["lo"][0] + 1.3, spots["lo"][1]))


def _blocked(axes, start, end) -> None:
    """A container's hand-made packet for 127.0.0.1: dropped by the input rule (CVE-2020-8558)."""
    middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    axes.add_patch(FancyArrowPatch(start, middle, arrowstyle="-|>", mutation_scale=14,
                                   color=_PATHS["drop"], linewidth=1.8, linestyle="--"))
    axes.text(middle[0], middle[1], "✘", color=_PATHS["drop"], fontsize=20, ha="center",
              va="center", fontweight="bold")
    axes.text(middle[0], middle[1] + 0.55,
              "from the bridge to 127.0.0.1, not DNATed:\ndropped (CVE-2020-8558)",
              fontsize=7.5, color=_PATHS["drop"], ha="center",
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
