"""The magics in a real IPython shell: options, errors, streaming, persistence, plots, widgets.

Parser, error-message, plot and loading tests run anywhere. Tests that run containers need root
and use busybox (imported offline from the host's busybox-static) in a temporary CONTAINED_HOME,
through the same runner helper process a kernel uses (`Runner.shared()`).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import IS_ROOT, needs_registry_tools, needs_root, remove_cgroup_parent
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import contained
from contained.jupyter import failures, magics, streaming
from contained.jupyter.failures import ContainerFailed, Interrupted

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shell():
    """One IPython shell with the extension loaded, as a notebook kernel has."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "contained")
    yield ip
    ip.run_line_magic("unload_ext", "contained")


def cell(shell, line: str, body: str):
    return shell.run_cell_magic("container", line, body)


# ---------------------------------------------------------------------------------------------
# Anywhere: loading, parsing, messages, decoding, plots, kernelspec.

def test_import_contained_and_load_ext_import_neither_matplotlib_nor_ipywidgets():
    code = (
        "import sys, contained\n"
        "assert 'IPython' not in sys.modules, 'import contained imported IPython'\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'contained')\n"
        "assert 'container' in ip.magics_manager.magics['cell']\n"
        "heavy = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]\n"
        "print('heavy:', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_unload_removes_the_magics_and_load_brings_them_back():
    ip = InteractiveShell.instance()  # the `shell` fixture's too: leave the extension loaded
    ip.run_line_magic("load_ext", "contained")
    assert "container" in ip.magics_manager.magics["line"]
    ip.run_line_magic("unload_ext", "contained")
    assert "container" not in ip.magics_manager.magics["line"]
    assert "container" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "contained")
    assert "container" in ip.magics_manager.magics["cell"]


def test_cell_options_parse_like_contained_run():
    args = magics.parse(magics.CELL_PARSER,
        "busybox --name b -m 32M --cpus 0.5 --pids-limit 20 --hostname h -e A=1 -e 'B=two words'"
        " -w /tmp -u nobody -v /tmp:/data:ro --net none --chroot --explain --out o --err e "
        "--no-raise-error --timeout 2.5 --stats")
    assert (args.image, args.name, args.memory, args.cpus, args.pids_limit) == \
        ("busybox", "b", "32M", "0.5", 20)  # an int, as `contained run --pids-limit` gives
    assert args.env == ["A=1", "B=two words"]
    assert args.volume == ["/tmp:/data:ro"]
    assert (args.chroot, args.explain, args.no_raise_error, args.stats) == (True,) * 4
    assert (args.out, args.err, args.timeout) == ("o", "e", 2.5)
    defaults = magics.parse(magics.CELL_PARSER, "busybox")
    assert defaults.chroot is None and defaults.net is None and defaults.env == []


@pytest.mark.parametrize("line", ["", "busybox --no-such-option", "busybox --timeout soon",
                                  "busybox -e 'unbalanced"])
def test_bad_cell_options_are_one_line_usage_errors(shell, line):
    with pytest.raises(UsageError) as error:
        cell(shell, line, "true")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("line", ["", "frobnicate", "exec", "stop"])
def test_bad_subcommands_are_usage_errors(shell, line):
    with pytest.raises(UsageError):
        shell.run_line_magic("container", line)


def test_a_missing_image_is_a_one_line_usage_error(shell, home):
    with pytest.raises(UsageError, match=r"no-such-image") as error:
        cell(shell, "no-such-image", "true")
    assert "\n" not in str(error.value)
    assert isinstance(error.value.__cause__, contained.errors.ContainedError)


def test_a_failing_cell_shows_one_line_through_run_cell(shell, home, capsys):
    result = shell.run_cell("%%container no-such-image\ntrue\n")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert err.startswith("UsageError: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_every_contained_run_option_is_a_cell_option_with_the_same_spelling_and_type():
    from contained import cli, options

    run = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    cell_actions = {flag: action for action in magics.CELL_PARSER._actions
                    for flag in action.option_strings}
    checked = 0
    for action in run._actions:
        if not action.option_strings or action.dest == "help":
            continue
        for flag in action.option_strings:
            twin = cell_actions[flag]  # a KeyError names the option %%container lacks
            assert (type(twin), twin.dest, twin.type, twin.choices, twin.default) == \
                (type(action), action.dest, action.type, action.choices, action.default), flag
            checked += 1
    assert checked >= 25
    assert {o.dest for o in options.options_for(options.CELL)} - \
        {o.dest for o in options.options_for(options.RUN)} == \
        {"out", "err", "no_raise_error", "timeout", "stats"}  # the magic's own, and only those


def test_exec_options_are_the_same_for_contained_exec_and_the_exec_subcommand():
    from contained import cli

    def flags(parser):
        return {(f, a.dest, a.type) for a in parser._actions for f in a.option_strings
                if a.dest != "help"}

    cli_exec = cli.build_parser()._subparsers._group_actions[0].choices["exec"]
    assert flags(cli_exec) == flags(magics.subcommand_parsers()["exec"])


def test_docker_spellings_parse_in_a_cell():
    args = magics.parse(magics.CELL_PARSER, "busybox --rm --network none -it -p 8080:80 -d")
    assert (args.rm, args.net, args.interactive, args.tty, args.detach) == \
        (True, "none", True, True, True)
    assert args.publish == ["8080:80"]
    with pytest.raises(UsageError, match="invalid choice"):
        magics.parse(magics.CELL_PARSER, "busybox --net mars")


@pytest.mark.parametrize("how", ["%container --help", "%container -h",
                                 "%%container --help\ntrue\n",
                                 "%%container busybox --help\ntrue\n"])
def test_help_lists_every_option_and_subcommand_with_an_example(shell, capsys, how):
    from contained import options

    result = shell.run_cell(how)
    assert result.success
    shown = capsys.readouterr().out
    for option in options.options_for(options.CELL):
        assert option.flags[-1] in shown, option.flags
    for name, _, _, example in magics.SUBCOMMANDS:
        assert f"\n  {name}" in shown and f"e.g. {example}" in shown
    assert "%%container busybox --rm --network none -m 32M" in shown
    assert "%%%" not in shown


@pytest.mark.parametrize("how", ["%container?", "%%container?"])
def test_question_mark_shows_the_same_help(shell, capsys, how):
    shell.run_cell(how)
    shown = capsys.readouterr().out
    assert "--pids-limit" in shown and "e.g. %container exec web ps" in shown
    assert magics.ContainerMagics.container.__doc__ == magics.help_text()


def test_a_subcommand_s_help_is_its_own(shell, capsys):
    shell.run_line_magic("container", "stop --help")
    shown = capsys.readouterr().out
    assert "%container stop" in shown and "--time" in shown and "e.g. %container stop web" in shown


class FakeStream:
    dropped = 0

    def text(self) -> str:
        return ""


def fake_run(outcome=None, interrupt=False):
    """`run_streaming` as if a container ran and ended with `outcome` (or was interrupted)."""

    def run_streaming(start, **options):
        if interrupt:
            raise streaming.CellInterrupted()
        return outcome, [FakeStream(), FakeStream()], None

    return run_streaming


@pytest.mark.parametrize(("result", "shown"), [
    ({"status": 3}, "ContainerFailed: exited with status 3"),
    ({"status": 137, "oom": True, "message": "killed: out of memory, limit 16M"},
     "ContainerFailed: killed: out of memory, limit 16M (status 137)"),
])
def test_a_failed_container_is_one_line_of_its_own_through_run_cell(shell, monkeypatch, capsys,
                                                                    result, shown):
    from contained.runtime.container import RunResult

    outcome = streaming.Outcome(RunResult(**result))
    monkeypatch.setattr(magics, "run_streaming", fake_run(outcome))
    executed = shell.run_cell("%%container busybox\nexit 3\n")
    assert isinstance(executed.error_in_exec, ContainerFailed)
    assert isinstance(executed.error_in_exec, subprocess.CalledProcessError)
    assert executed.error_in_exec.returncode == result["status"]
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip() == shown  # the whole of what is shown


def test_no_raise_error_says_the_failure_and_goes_on(shell, monkeypatch, capsys):
    from contained.runtime.container import RunResult

    monkeypatch.setattr(magics, "run_streaming", fake_run(streaming.Outcome(RunResult(3))))
    assert shell.run_cell("%%container busybox --no-raise-error\nexit 3\n").success
    assert capsys.readouterr().err == "contained: exited with status 3\n"


def test_an_interrupt_is_one_line_through_run_cell(shell, monkeypatch, capsys):
    monkeypatch.setattr(magics, "run_streaming", fake_run(interrupt=True))
    executed = shell.run_cell("%%container busybox\nsleep 30\n")
    assert isinstance(executed.error_in_exec, KeyboardInterrupt)  # as IPython's own interrupts
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip() == "Interrupted: the container was stopped"


def test_container_failed_pickles_and_renders_one_line():
    import pickle

    error = ContainerFailed("killed: out of memory, limit 16M (status 137)", 137, ["sh"],
                            oom=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.returncode, copy.cmd, copy.oom) == (str(error), 137, ["sh"], True)
    assert Interrupted()._render_traceback_() == ["Interrupted: the container was stopped"]


def test_t_in_a_cell_says_in_one_line_that_there_is_no_terminal(shell, monkeypatch, capsys):
    from contained.runtime.container import RunResult

    monkeypatch.setattr(magics, "run_streaming", fake_run(streaming.Outcome(RunResult(0))))
    assert shell.run_cell("%%container busybox --rm --network none -it\ntrue\n").success
    assert capsys.readouterr().err == magics.NO_TERMINAL + "\n"


def test_exit_messages():
    from contained.runtime.container import RunResult

    message = failures.exit_message
    assert message(streaming.Outcome(RunResult(0)), None) is None
    assert message(streaming.Outcome(RunResult(3)), None) == "exited with status 3"
    assert message(streaming.Outcome(RunResult(137)), None) == \
        "exited with status 137 (killed by SIGKILL)"
    oom = RunResult(137, oom=True, message="killed: out of memory, limit 16M")
    assert message(streaming.Outcome(oom), None) == "killed: out of memory, limit 16M (status 137)"
    assert message(streaming.Outcome(RunResult(137), timed_out=True), 0.5) == \
        "killed after --timeout 0.5s (status 137)"
    assert "runner" in message(streaming.Outcome(None), None)


def test_output_stream_decodes_utf8_split_across_reads():
    read_end, write_end = os.pipe()
    captured = streaming.OutputStream(read_end, None, capture=True)
    os.write(write_end, b"caf" + "é".encode()[:1])
    assert captured.read()
    assert captured.text() == "caf"  # half a character is held back, not replaced
    os.write(write_end, "é".encode()[1:] + "€".encode()[:2])
    captured.read()
    os.close(write_end)
    assert not captured.read()  # end of file: the incomplete "€" becomes U+FFFD
    captured.close()
    assert captured.text() == "café\ufffd"


def test_output_stream_drain_does_not_wait_for_end_of_file():
    read_end, write_end = os.pipe()  # the write end stays open, as a background process's
    stream = streaming.OutputStream(read_end, None, capture=True)
    os.write(write_end, b"last words\n")
    started = time.monotonic()
    stream.drain()
    assert time.monotonic() - started < 0.5
    stream.close()
    os.close(write_end)
    assert stream.text() == "last words\n"


def usage(memory, cpu_seconds, memory_limit=16 << 20, cpu_limit=0.5):
    from contained.runtime.cgroups import Usage

    return Usage(memory=memory, memory_peak=None, cpu_seconds=cpu_seconds, pids=1,
                 memory_limit=memory_limit, cpu_limit=cpu_limit, pids_limit=None)


def test_stats_figure_draws_usage_and_both_limits():
    from contained.jupyter import plots

    samples = [(0.0, usage(1 << 20, 0.0)), (0.5, usage(8 << 20, 0.2)), (1.0, usage(15 << 20, 0.45))]
    assert plots.cpu_series(samples) == ([0.5, 1.0], [pytest.approx(40.0), pytest.approx(50.0)])
    figure = plots.stats_figure(samples, title="b")
    memory_axes, cpu_axes = figure.axes
    assert list(memory_axes.lines[0].get_ydata()) == [1, 8, 15]
    assert list(memory_axes.lines[1].get_ydata()) == [16, 16]  # the limit, dashed
    assert list(cpu_axes.lines[1].get_ydata()) == [50, 50]
    labels = [t.get_text() for t in memory_axes.get_legend().get_texts()]
    assert labels == ["used", "limit 16 MiB"]
    assert plots.to_png(figure).startswith(b"\x89PNG")


def test_stats_figure_without_limits_or_samples():
    from contained.jupyter import plots

    # one sample has no CPU interval: the memory panel alone, no empty CPU panel under it
    figure = plots.stats_figure([(0.0, usage(1 << 20, 0.0, None, None))])
    assert [axes.get_ylabel() for axes in figure.axes] == ["memory (MiB)"]
    assert [len(axes.lines) for axes in figure.axes] == [1]
    empty = plots.stats_figure([])
    assert empty.axes == [] and empty.texts[0].get_text().startswith("no samples")


def test_layer_sizes_chart(busybox_store):
    from contained.jupyter import plots

    image = busybox_store.image("busybox")
    axes = plots.image_layers_figure(image).axes[0]
    bars = axes.patches
    assert len(bars) == len(image.layers) >= 1  # compressed sizes only: no second series
    size = image.layers[0][0].size
    unit = 1e6 if size >= 1e6 else 1024
    assert bars[0].get_width() == pytest.approx(size / unit)
    assert "busybox" in axes.get_title() and axes.get_legend() is None

    both = plots.layer_sizes_figure([("aaa", 2048, 10240), ("bbb", 1024, None)]).axes[0]
    widths = [bar.get_width() for bar in both.patches]
    assert widths == [2.0, 1.0, 10.0, 0.0] and both.get_xlabel() == "KiB"
    assert both.get_legend() is not None


def test_images_and_inspect_subcommands(shell, busybox_store, capsys):
    shell.run_line_magic("container", "images")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]
    assert out.splitlines()[1].split()[:2] == ["busybox", "latest"]
    with capture_output() as captured:
        shell.run_line_magic("container", "inspect busybox")
    assert '"name": "docker.io/library/busybox:latest"' in captured.stdout
    assert any("image/png" in output.data for output in captured.outputs)


def test_kernelspec_installs_into_a_prefix(tmp_path):
    import json

    from contained.jupyter import kernelspec

    path = kernelspec.install_kernel(prefix=str(tmp_path))
    assert path == tmp_path / "share" / "jupyter" / "kernels" / kernelspec.KERNEL_NAME
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (contained)"
    assert spec["argv"][0] == sys.executable
    assert "--IPKernelApp.extensions=contained" in spec["argv"]
    assert (path / "logo-64x64.png").exists()


def test_dashboard_lists_nothing_in_an_empty_home(home):
    from contained.jupyter import widgets

    dashboard = widgets.Dashboard()
    assert dashboard.rows == []
    assert len(dashboard.table.children) == len(widgets.Dashboard.HEADER)
    dashboard.close()


@needs_registry_tools
def test_pull_progress_bar_fills_and_reports_the_digest(registry, home):
    from contained.images.store import Store
    from contained.jupyter import widgets

    ref = f"{registry.address}/library/busybox:latest"
    assert widgets.expected_bytes(ref) > 0
    with capture_output():
        image = widgets.pull_with_progress(Store(home), ref)
    store_image = Store(home).image(ref)
    assert image.digest == store_image.digest
    progress = widgets.PullProgress(Store(home), ref)
    progress.start()
    progress.finish(image)
    assert (progress.bar.value, progress.bar.bar_style) == (1.0, "success")
    assert image.digest[:19] in progress.label.value


@needs_registry_tools
def test_pull_subcommand_in_plain_ipython_prints_text(shell, registry, home, capsys):
    ref = f"{registry.address}/library/busybox:latest"
    shell.run_line_magic("container", f"pull {ref}")
    out = capsys.readouterr().out
    assert out.startswith(f"pulling {ref}...")
    assert "sha256:" in out


# ---------------------------------------------------------------------------------------------
# Root: real containers.

@pytest.fixture(scope="module")
def busybox_home(tmp_path_factory):
    """busybox:latest in a temporary home, and a cgroup parent of our own, for the module.

    The kernel's runner reads both from the environment when it starts: set them first, and
    close the runner at the end (it kills anything still running)."""
    if not IS_ROOT:
        pytest.skip("needs root: mounts, namespaces and cgroups (CI runs as root)")
    from contained.images.busybox import import_busybox
    from contained.images.store import Store
    from contained.runtime import container

    path = tmp_path_factory.mktemp("magics-home")
    saved = {k: os.environ.get(k) for k in ("CONTAINED_HOME", "CONTAINED_CGROUP_PARENT")}
    os.environ["CONTAINED_HOME"] = str(path)
    os.environ["CONTAINED_CGROUP_PARENT"] = f"contained-test-magics-{os.getpid()}"
    contained.close_runner()
    import_busybox(Store(path))
    yield path
    for leftover in container.containers():
        container.remove(leftover.id, force=True)
    contained.close_runner()
    container.gc()
    remove_cgroup_parent(os.environ["CONTAINED_CGROUP_PARENT"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def clean(busybox_home):
    """Each test starts and ends with no container."""
    from contained.runtime import container

    yield busybox_home
    no_containers_soon(1.0)
    for leftover in container.containers():
        try:
            container.remove(leftover.id, force=True)
        except container.ContainedError:
            pass  # torn down meanwhile


def containers():
    from contained.runtime import container

    return container.containers()


def no_containers_soon(timeout: float = 3.0) -> bool:
    """The runner reports a throwaway container's exit first and tears it down just after."""
    deadline = time.monotonic() + timeout
    while containers() and time.monotonic() < deadline:
        time.sleep(0.02)
    return containers() == []


@needs_root
def test_throwaway_cell_has_its_own_hostname_and_leaves_nothing(shell, clean, capsys):
    cell(shell, "busybox", "hostname; echo to-stderr >&2; cat /etc/hostname")
    captured = capsys.readouterr()
    lines = captured.out.split()
    assert lines[0] != os.uname().nodename and lines[0] == lines[1]
    assert captured.err == "to-stderr\n"
    assert no_containers_soon()


@needs_root
def test_ps_right_after_a_throwaway_cell_lists_nothing(shell, clean, capsys):
    cell(shell, "busybox", "true")
    capsys.readouterr()
    shell.run_line_magic("container", "ps -a")  # at once: the cell waited for the teardown
    assert capsys.readouterr().out.split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED",
                                               "STATUS", "NAMES"]


@needs_root
def test_docker_s_rm_network_and_it_run_in_a_cell_without_a_terminal(shell, clean, capsys):
    cell(shell, "busybox --rm --network none -it", "test -t 0 || echo no-tty; cat; echo read-eof")
    captured = capsys.readouterr()
    assert captured.out == "no-tty\nread-eof\n"  # -i: stdin is empty, not the kernel's
    assert captured.err == magics.NO_TERMINAL + "\n"


@needs_root
def test_a_named_container_with_rm_is_removed_after_its_cell(shell, clean, capsys):
    cell(shell, "busybox --name b", "true")
    cell(shell, "busybox --name b --rm", "echo last")
    assert capsys.readouterr().out == "last\n" and containers() == []


@needs_root
def test_detach_runs_the_cell_in_the_background_of_a_kept_container(shell, clean, capsys):
    cell(shell, "busybox -d --name web", "echo logged; sleep 300")
    container_id = capsys.readouterr().out.strip()
    (kept,) = containers()
    assert kept.id == container_id and kept.name == "web" and kept.running
    shell.run_line_magic("container", "exec web pidof sleep")
    assert capsys.readouterr().out.strip().isdigit()


@needs_root
def test_ps_renders_as_an_html_table_in_a_notebook(shell, clean):
    cell(shell, "busybox --name b", "sleep 300 &")
    with capture_output() as captured:
        shell.run_line_magic("container", "ps")
    (shown,) = captured.outputs
    assert "<table>" in shown.data["text/html"] and "nowrap" in shown.data["text/html"]
    assert shown.data["text/plain"].splitlines()[1].split()[-1] == "b"


@needs_root
def test_out_and_err_capture_into_variables(shell, clean, capsys):
    cell(shell, "busybox --out o --err e", "echo out; echo err >&2; printf 'no newline'")
    assert shell.user_ns["o"] == "out\nno newline"
    assert shell.user_ns["e"] == "err\n"
    assert capsys.readouterr().out == ""


@needs_root
def test_body_is_not_expanded_but_the_line_is(shell, clean, capsys):
    shell.user_ns["n"] = 42
    result = shell.run_cell('%%container busybox -e N={n} -e M=$n\necho "$N $M {n} $$"\n')
    assert result.success
    words = capsys.readouterr().out.split()
    assert words[:3] == ["42", "42", "{n}"]
    assert words[3].isdigit()  # the shell's own $$


@needs_root
def test_non_zero_exit_is_one_line_unless_no_raise_error(shell, clean, capsys):
    with pytest.raises(ContainerFailed, match=r"^exited with status 3$") as error:
        cell(shell, "busybox", "echo before; exit 3")
    assert error.value.status == error.value.returncode == 3
    assert isinstance(error.value, subprocess.CalledProcessError)  # as %%bash raises
    assert error.value._render_traceback_() == ["ContainerFailed: exited with status 3"]
    assert capsys.readouterr().out == "before\n"
    cell(shell, "busybox --no-raise-error", "exit 3")
    assert capsys.readouterr().err == "contained: exited with status 3\n"
    assert containers() == []  # the cell settled its throwaway container


@needs_root
def test_command_not_found_in_image_is_an_error(shell, clean, capsys):
    with pytest.raises(ContainerFailed, match="status 127"):
        cell(shell, "busybox", "no-such-command")
    assert "not found" in capsys.readouterr().err


@needs_root
def test_out_of_memory_says_so(shell, clean, capsys):
    with pytest.raises(ContainerFailed) as error:
        cell(shell, "busybox -m 16M", "dd if=/dev/zero of=/dev/null bs=64M count=1")
    assert error.value._render_traceback_() == [
        "ContainerFailed: killed: out of memory, limit 16M (status 137)"]
    assert error.value.oom and error.value.returncode == 137
    assert containers() == []


@needs_root
def test_output_streams_as_it_arrives(shell, clean, monkeypatch):
    writes = []

    class Timestamped:
        def write(self, text):
            writes.append((time.monotonic(), text))

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Timestamped())
    cell(shell, "busybox", "for i in 1 2 3; do echo line $i; sleep 0.4; done")
    ended = time.monotonic()
    assert "".join(t for _, t in writes) == "line 1\nline 2\nline 3\n"
    assert ended - writes[0][0] > 0.7  # the first line came long before the end


@needs_root
def test_utf8_split_across_writes_is_decoded(shell, clean, capsys):
    cell(shell, "busybox", r"printf '\303'; sleep 0.3; printf '\251t\342\202'; sleep 0.3; "
                           r"printf '\254\n'")
    assert capsys.readouterr().out == "ét€\n"


@needs_root
def test_named_container_persists_files_processes_and_hostname(shell, clean, capsys):
    cell(shell, "busybox --name b --hostname box", "echo kept > /tmp/file; sleep 300 &\necho ok")
    started = time.monotonic()
    cell(shell, "busybox --name b", "cat /tmp/file; hostname; pidof sleep >/dev/null && echo bg")
    assert time.monotonic() - started < 3  # the background sleep holds no cell open
    assert capsys.readouterr().out == "ok\nkept\nbox\nbg\n"
    (named,) = containers()
    assert named.name == "b" and named.running and named.persistent


@needs_root
def test_creation_options_must_match_the_named_container(shell, clean):
    cell(shell, "busybox --name b -m 32M", "true")
    with pytest.raises(UsageError) as error:
        cell(shell, "busybox --name b -m 64M", "true")
    assert str(error.value) == ("container 'b' was created with --memory 32M; remove it "
                                "(%container rm -f b) to change it")
    with pytest.raises(UsageError, match=r"created with --hostname [0-9a-f]{12};"):
        cell(shell, "busybox --name b --hostname other", "true")
    with pytest.raises(UsageError, match=r"created with no --volume;"):
        cell(shell, "busybox --name b -v /tmp:/tmp", "true")
    cell(shell, "busybox --name b -m 32M -e X=1", "test $X = 1")  # same options, per-cell -e
    shell.run_line_magic("container", "rm -f b")
    cell(shell, "busybox --name b -m 64M", "true")


@needs_root
def test_chroot_cell_says_in_one_line_that_it_is_escapable(shell, clean, capsys):
    cell(shell, "busybox --chroot --dry-run", "true")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("contained: warning: --chroot")
    assert "escap" in err and "pivot_root" in err
    cell(shell, "busybox --dry-run", "true")
    assert capsys.readouterr().err == ""


@needs_root
def test_pids_limit_minus_one_is_the_default_limit_lifted(shell, clean, capsys):
    cell(shell, "busybox --name b", "true")
    with pytest.raises(UsageError, match=r"created with --pids-limit 2048;"):
        cell(shell, "busybox --name b --pids-limit -1", "true")
    shell.run_line_magic("container", "rm -f b")
    cell(shell, "busybox --name b --pids-limit -1", "true")
    cell(shell, "busybox --name b --pids-limit -1", "true")  # the same: reused
    with pytest.raises(UsageError, match=r"created with no --pids-limit;"):
        cell(shell, "busybox --name b --pids-limit 5", "true")


@needs_root
def test_dry_run_prints_steps_and_runs_nothing(shell, clean, capsys):
    cell(shell, "busybox --dry-run -m 32M", "echo hi")
    out = capsys.readouterr().out
    assert "unshare" in out and "overlay" in out
    assert "hi\n" not in out
    assert no_containers_soon()
    cell(shell, "busybox --name b", "true")
    cell(shell, "busybox --name b --dry-run", "echo hi")
    assert "nsenter --target" in capsys.readouterr().out  # what exec amounts to


@needs_root
def test_explain_shows_steps_on_stderr(shell, clean, capsys):
    cell(shell, "busybox --explain", "echo hi")
    captured = capsys.readouterr()
    assert captured.out == "hi\n"
    assert "+ " in captured.err and "unshare" in captured.err


@needs_root
def test_timeout_kills_the_cell(shell, clean):
    started = time.monotonic()
    with pytest.raises(ContainerFailed, match=r"killed after --timeout 0.5s"):
        cell(shell, "busybox --timeout 0.5", "sleep 30")
    assert time.monotonic() - started < 3
    assert no_containers_soon()


def interrupt_main_thread_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    return timer


@needs_root
def test_interrupt_removes_a_throwaway_container(shell, clean):
    interrupt_main_thread_after(0.5)
    started = time.monotonic()
    with pytest.raises(Interrupted) as error:
        cell(shell, "busybox", "sleep 30")
    assert time.monotonic() - started < 2.5
    assert isinstance(error.value, KeyboardInterrupt)
    assert error.value._render_traceback_() == ["Interrupted: the container was stopped"]
    assert containers() == []  # gone before the cell ended


@needs_root
def test_interrupt_leaves_a_named_container_usable(shell, clean, capsys):
    cell(shell, "busybox --name b", "echo kept > /tmp/file")
    interrupt_main_thread_after(0.5)
    with pytest.raises(Interrupted, match="the command was stopped; container b is still running"):
        cell(shell, "busybox --name b", "sleep 30")
    cell(shell, "busybox --name b", "cat /tmp/file; pidof sleep || echo no-sleep")
    assert capsys.readouterr().out == "kept\nno-sleep\n"


@needs_root
def test_stats_plots_the_run(shell, clean):
    with capture_output() as captured:
        cell(shell, "busybox --stats -m 32M", "dd if=/dev/zero of=/dev/null bs=8M count=1; "
                                               "sleep 0.4")
    assert [o for o in captured.outputs if "image/png" in o.data]


@needs_root
def test_subcommands_on_a_named_container(shell, clean, capsys):
    cell(shell, "busybox --name b -m 32M", "sleep 300 &")
    capsys.readouterr()
    shell.run_line_magic("container", "ps")
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["CONTAINER", "ID", "IMAGE"]  # what `contained ps` prints
    assert rows[1].split()[-1] == "b" and "Up" in rows[1]
    shell.run_line_magic("container", "exec b sh -c 'echo $((6 * 7))'")
    assert capsys.readouterr().out == "42\n"
    with pytest.raises(ContainerFailed, match="status 4"):
        shell.run_line_magic("container", "exec b sh -c 'exit 4'")
    with capture_output() as captured:
        shell.run_line_magic("container", "stats b --seconds 0.3")
    table = captured.outputs[0].data  # NAME MEMORY LIMIT ...; b 1MB 33.6MB ...
    assert table["text/plain"].splitlines()[1].split()[:1] == ["b"]
    assert "<table>" in table["text/html"]
    assert [o for o in captured.outputs if "image/png" in o.data]
    with capture_output() as captured:
        shell.run_line_magic("container", "inspect b")
    assert '"name": "b"' in captured.stdout and '"memory": 33554432' in captured.stdout
    shell.run_line_magic("container", "stop b -t 0")
    assert not containers()[0].running
    with pytest.raises(UsageError, match="is stopped"):
        cell(shell, "busybox --name b", "true")
    shell.run_line_magic("container", "rm b")
    assert no_containers_soon()


@needs_root
def test_dashboard_shows_usage_and_stops_and_removes(clean, shell):
    from contained.jupyter import widgets

    cell(shell, "busybox --name d -m 32M", "sleep 300 &")
    dashboard = widgets.Dashboard()
    (row,) = dashboard.rows
    assert row["name"] == "d" and row["status"] == "running"
    assert row["memory"] > 0 and row["memory_limit"] == 32 << 20
    dashboard.refresh()
    assert dashboard.rows[0]["cpu_percent"] is not None
    buttons = dashboard.table.children[-1].children
    assert [b.description for b in buttons] == ["stop", "remove"]
    buttons[0].click()
    assert dashboard.message.value == "stopped d"
    deadline = time.monotonic() + 2  # the stopped init may linger a moment as a zombie
    while dashboard.rows[0]["status"] != "exited" and time.monotonic() < deadline:
        dashboard.refresh()
    assert dashboard.rows[0]["status"] == "exited"
    dashboard.table.children[-1].children[-1].click()
    assert dashboard.rows == [] and no_containers_soon()
    dashboard.close()


def test_captured_output_keeps_at_most_the_cap_and_counts_the_rest(monkeypatch):
    monkeypatch.setattr(streaming, "CAPTURE_LIMIT", 1000)
    read_end, write_end = os.pipe()
    stream = streaming.OutputStream(read_end, None, capture=True)
    for _ in range(3):
        os.write(write_end, b"x" * 600)
        stream.read()
    os.close(write_end)
    while stream.read():
        pass
    stream.close()
    assert stream.text() == "x" * 1000
    assert stream.dropped == 800


@needs_root
def test_out_beyond_the_cap_is_cut_with_a_message(shell, clean, capsys, monkeypatch):
    monkeypatch.setattr(streaming, "CAPTURE_LIMIT", 4096)
    cell(shell, "busybox --out big", "head -c 100000 /dev/zero | tr '\\0' a; echo")
    assert shell.user_ns["big"] == "a" * 4096
    err = capsys.readouterr().err
    assert "--out big kept the first 4 KiB" in err and "95905" in err
