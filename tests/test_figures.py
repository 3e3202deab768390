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


def _sample(memory=0, cpu=0.0, pids=1, memory_limit=None, cpu_limit=None, pids_limit=None):
    return cgroups.Usage(memory=memory, memory_peak=None, cpu_seconds=cpu, pids=pids,
                         memory_limit=memory_limit, cpu_limit=cpu_limit, pids_limit=pids_limit)


def test_stats_figure_draws_no_empty_panel():
    # no memory controller (every reading 0, no limit): no memory panel, CPU alone
    samples = [(t / 2, _sample(cpu=t * 0.2)) for t in range(4)]
    figure = plots.stats_figure(samples)
    assert [axes.get_ylabel() for axes in figure.axes] == ["CPU (% of one CPU)"]
    assert all(len(axes.lines[0].get_xdata()) for axes in figure.axes)
    # a pids limit adds the processes panel, with its limit dashed
    limited = [(t / 2, _sample(memory=t << 20, cpu=t * 0.2, pids=t + 1, memory_limit=16 << 20,
                               cpu_limit=0.5, pids_limit=8)) for t in range(4)]
    figure = plots.stats_figure(limited, title="all three")
    assert [axes.get_ylabel() for axes in figure.axes] == [
        "memory (MiB)", "CPU (% of one CPU)", "processes"]
    assert [len(axes.lines) for axes in figure.axes] == [2, 2, 2]
    assert all(len(axes.lines[0].get_xdata()) for axes in figure.axes)
    assert plots.to_png(figure).startswith(b"\x89PNG")


def test_stats_figure_without_any_reading_says_so_instead_of_empty_axes():
    figure = plots.stats_figure([(0.0, _sample())])
    assert figure.axes == []
    assert "no samples" in figure.texts[0].get_text()


def _made_up_bridge(ports=(("127.0.0.1", 8080, 80, "tcp"),)) -> dict:
    return {"bridge": "contained3", "gateway": "10.77.3.1/24", "subnet": "10.77.3.0/24",
            "route_localnet": "1",
            "veths": [{"veth": "veth-aaaa", "name": "web", "ip": "10.77.3.2",
                       "ports": [], "publish": [list(port) for port in ports]},
                      {"veth": "veth-bbbb", "name": "db", "ip": "10.77.3.3",
                       "ports": [], "publish": []}]}


def _texts(figure) -> str:
    return "\n".join(text.get_text() for axes in figure.axes for text in axes.texts)


def test_bridge_diagram_draws_the_port_rewrite_nat_and_the_loopback_drop():
    figure = figures.bridge_diagram(_made_up_bridge())
    texts = _texts(figure)
    assert "contained3 (bridge)\n10.77.3.1/24\nroute_localnet = 1" in texts
    assert "container web\neth0 10.77.3.2" in texts and "veth-bbbb ↔ eth0" in texts
    assert "① connect to\n127.0.0.1:8080" in texts
    assert "ip daddr 127.0.0.1 tcp dport 8080" in texts and "dnat to 10.77.3.2:80" in texts
    assert "② DNAT → 10.77.3.2:80" in texts and "③ 10.77.3.2:80" in texts
    assert "ip saddr 10.77.3.0/24 masquerade" in texts
    assert "ct status & dnat != dnat drop" in texts
    assert "dropped (CVE-2020-8558)" in texts and "✘" in texts
    assert plots.to_png(figure).startswith(b"\x89PNG")


def test_bridge_diagram_without_ports_containers_or_bridge():
    no_ports = _texts(figures.bridge_diagram(_made_up_bridge(ports=())))
    assert "no published port" in no_ports and "①" not in no_ports
    assert "CVE-2020-8558" in no_ports  # the drop rule is there whatever is published
    empty = {**_made_up_bridge(), "veths": []}
    assert "no container on the bridge" in _texts(figures.bridge_diagram(empty))
    none = {"bridge": None, "gateway": None, "veths": [], "subnet": None, "route_localnet": None}
    assert "no bridge yet" in _texts(figures.bridge_diagram(none))
