"""The tables `contained ps`/`images`/`stats`/`doctor` and the magics share: plain, HTML, safe."""

from contained import views
from contained.runtime.container import Container

TITLE_ESCAPE = "\x1b]0;owned\x07"


def test_a_table_is_aligned_text_and_an_html_table_that_never_wraps():
    table = views.Table(("NAME", "COMMAND"), [("web", "httpd -f"), ("b", "sh")])
    assert str(table) == repr(table) == "NAME   COMMAND\nweb    httpd -f\nb      sh"
    page = table._repr_html_()
    assert page.startswith("<table>") and page.count("<tr>") == 3
    assert page.count("white-space: nowrap") == 6  # every cell, header included


def test_control_characters_and_markup_stay_escaped_in_both_forms():
    table = views.Table(("COMMAND",), [(f"sh {TITLE_ESCAPE}<script>",)])
    assert "\x1b" not in str(table) and "\\x1b]0;owned\\x07" in str(table)
    page = table._repr_html_()
    assert "\x1b" not in page and "<script>" not in page and "&lt;script&gt;" in page


def test_long_commands_are_cut_with_an_ellipsis():
    assert views.shorten("a" * 40, views.COMMAND_WIDTH) == "a" * 29 + "…"
    assert views.shorten("short", views.COMMAND_WIDTH) == "short"


def container(persistent: bool, running: bool, init_pid: int | None) -> Container:
    return Container(id="f" * 64, name="n", image="docker.io/library/busybox:latest",
                     command=["sh"], created=0.0, persistent=persistent, running=running,
                     init_pid=init_pid)


def test_a_throwaway_whose_pid_1_ended_is_being_torn_down_and_not_listed(monkeypatch):
    import os

    from contained import procfs

    dead = container(persistent=False, running=True, init_pid=2 ** 22 + 1)  # no such pid
    live = container(persistent=False, running=True, init_pid=os.getpid())
    setting_up = container(persistent=False, running=True, init_pid=None)
    named = container(persistent=True, running=False, init_pid=2 ** 22 + 1)
    assert not procfs.running(dead.init_pid)
    assert views._being_torn_down(dead)
    assert not any(views._being_torn_down(c) for c in (live, setting_up, named))
    monkeypatch.setattr("contained.runtime.listing.containers",
                        lambda: [dead, live, setting_up, named])
    assert views.listed_containers() == [live, setting_up]
    assert views.listed_containers(all_=True) == [live, setting_up, named]


def test_stats_table_shows_usage_against_the_limits():
    from contained.runtime.cgroups import Usage

    usage = Usage(memory=1_500_000, memory_peak=None, cpu_seconds=0.25, pids=3,
                  memory_limit=32 << 20, cpu_limit=0.5, pids_limit=64)
    table = views.stats_table([("web", usage)])
    assert table.header == ("NAME", "MEMORY", "LIMIT", "CPU TIME", "CPUS", "PIDS")
    assert table.rows == [("web", "1.5MB", "33.6MB", "0.25s", "0.5", "3")]
