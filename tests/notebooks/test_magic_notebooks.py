"""The magics in real Jupyter kernels, driven by nbclient as "Run all" would (root only).

Each test builds a small notebook in memory (nbformat.v4), runs it in the venv's python3 kernel
with a temporary CONTAINED_HOME holding busybox, and asserts on the outputs: the container's
hostname, an error that stops "Run all" with one line, the stop button during ``sleep 30``, and a
kernel restart, none of which may leave a throwaway container or a runner process behind.
"""

import os
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from conftest import needs_root, remove_cgroup_parent
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = needs_root

ROOT = Path(__file__).resolve().parents[2]
CELL_TIMEOUT = 60


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """The kernel's environment: a home with busybox, and a cgroup parent of our own."""
    from contained.images.busybox import import_busybox
    from contained.images.store import Store

    home = tmp_path_factory.mktemp("notebook-home")
    import_busybox(Store(home))
    parent = f"contained-test-notebooks-{os.getpid()}"
    env = {**os.environ, "CONTAINED_HOME": str(home), "CONTAINED_CGROUP_PARENT": parent,
           "PYTHONPATH": str(ROOT)}
    yield env
    with_env(env, clean_up)
    remove_cgroup_parent(parent)


def with_env(env: dict, action):
    """Run `action` with the kernel's CONTAINED_HOME and cgroup parent, then restore ours."""
    keys = ("CONTAINED_HOME", "CONTAINED_CGROUP_PARENT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        return action()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def clean_up():
    from contained.runtime import container

    for leftover in container.containers():
        container.remove(leftover.id, force=True)
    container.gc()


def containers(env):
    from contained.runtime import container

    return with_env(env, container.containers)


def runner_processes(env) -> list[int]:
    """Runner helpers serving this test's home (found by their environment)."""
    found = []
    marker = f"CONTAINED_HOME={env['CONTAINED_HOME']}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"contained.runtime.runner" in cmdline \
                    and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.fixture
def kernel(kernel_env):
    """A fresh python3 kernel (the venv's) with the test's environment; shut down after."""
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=kernel_env, cwd=str(ROOT))
    yield manager
    if manager.has_kernel:
        manager.shutdown_kernel(now=True)
    with_env(kernel_env, clean_up)


def notebook(*sources: str):
    return new_notebook(cells=[new_code_cell(source) for source in sources],
                        metadata={"kernelspec": {"name": "python3", "language": "python",
                                                 "display_name": "Python 3"}})


def run(kernel, nb, allow_errors=False) -> nbformat.NotebookNode:
    client = NotebookClient(nb, km=kernel, timeout=CELL_TIMEOUT, allow_errors=allow_errors,
                            kernel_name="python3")
    client.execute()
    return nb


def stream_text(cell, name="stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.name == name)


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_cell_runs_in_its_own_hostname_and_named_containers_persist(kernel, kernel_env):
    nb = run(kernel, notebook(
        "%load_ext contained\nimport socket\nhost = socket.gethostname()",
        "%%container busybox --out inside\nhostname",
        "print(inside.strip() != host, repr(inside))",
        "%%container busybox --name keep\necho kept > /tmp/f",
        "%%container busybox --name keep\ncat /tmp/f",
    ))
    assert stream_text(nb.cells[2]).startswith("True ")
    assert stream_text(nb.cells[4]) == "kept\n"
    assert [c.name for c in containers(kernel_env)] == ["keep"]


@pytest.mark.parametrize(("body", "line"), [
    ("echo before\nexit 3", "ContainerFailed: exited with status 3"),
    # `exec`: else the cell's sh outlives the OOM-killed dd and may print its own "Killed" (the
    # container's output, not ours) before the rest of the container is stopped.
    ("echo before\nexec dd if=/dev/zero of=/dev/null bs=64M count=1",
     "ContainerFailed: killed: out of memory, limit 16M (status 137)"),
])
def test_a_failed_container_stops_run_all_with_one_line(kernel, body, line):
    nb = notebook("%load_ext contained",
                  f"%%container busybox -m 16M\n{body}",
                  "print('never runs')")
    with pytest.raises(CellExecutionError) as error:
        run(kernel, nb)
    assert error.value.ename == "ContainerFailed"
    failed = nb.cells[1]
    assert stream_text(failed) == "before\n"
    (shown,) = [o for o in failed.outputs if o.output_type == "error"]
    assert shown.traceback == [line]  # the whole of the error output: one line
    assert stream_text(failed, "stderr") == ""
    assert nb.cells[2].outputs == []  # "Run all" stopped


def test_an_interrupt_stops_run_all_with_one_line(kernel):
    nb = notebook("%load_ext contained", "%%container busybox\nsleep 30", "print('never runs')")
    timer = interrupt_after(kernel, 3.0)
    with pytest.raises(CellExecutionError) as error:
        run(kernel, nb)
    timer.join()
    assert error.value.ename == "Interrupted"
    (shown,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert shown.traceback == ["Interrupted: the container was stopped"]
    assert nb.cells[2].outputs == []


def interrupt_after(kernel, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, kernel.interrupt_kernel)
    timer.start()
    return timer


def test_interrupt_kills_a_running_cell_and_removes_its_container(kernel, kernel_env):
    nb = notebook("%load_ext contained",
                  "%%container busybox\necho started; sleep 30",
                  "%%container busybox --name n\necho kept > /tmp/f",
                  "%%container busybox --name n\nsleep 30",
                  "%%container busybox --name n\ncat /tmp/f")
    client = NotebookClient(nb, km=kernel, timeout=CELL_TIMEOUT, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        for index in (1, 3):
            if index == 3:
                client.execute_cell(nb.cells[2], 2)  # create the named container
            timer = interrupt_after(kernel, 2.0)
            started = time.monotonic()
            with pytest.raises(CellExecutionError) as error:
                client.execute_cell(nb.cells[index], index)
            timer.join()
            assert time.monotonic() - started < 2.0 + 3.0
            assert error.value.ename == "Interrupted"
        assert stream_text(nb.cells[1]) == "started\n"
        (shown,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
        assert shown.traceback == ["Interrupted: the container was stopped"]  # one line
        (shown,) = [o for o in nb.cells[3].outputs if o.output_type == "error"]
        assert shown.traceback == ["Interrupted: the command was stopped; container n is still "
                                   "running"]
        # The cell ended after the throwaway container's teardown.
        assert [c.name for c in containers(kernel_env)] == ["n"]
        client.execute_cell(nb.cells[4], 4)  # the named one is still usable
        assert stream_text(nb.cells[4]) == "kept\n"


@pytest.mark.parametrize("how", ["restart", "shutdown"])
def test_restart_or_shutdown_leaves_no_container_or_runner(kernel, kernel_env, how):
    nb = notebook("%load_ext contained", "%%container busybox\nsleep 30")
    client = NotebookClient(nb, km=kernel, timeout=CELL_TIMEOUT, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.kc.execute(nb.cells[1].source)  # left running
        assert wait_until(lambda: containers(kernel_env), 10), "the cell's container never ran"
        assert wait_until(lambda: runner_processes(kernel_env), 10), "no runner started"
        if how == "restart":
            kernel.restart_kernel(now=False)
        else:
            kernel.shutdown_kernel(now=False)
    assert wait_until(lambda: not containers(kernel_env), 10), containers(kernel_env)
    assert wait_until(lambda: not runner_processes(kernel_env), 10)


def test_the_contained_kernelspec_loads_the_extension(kernel_env, tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    from contained.jupyter import kernelspec

    kernelspec.install_kernel(prefix=str(tmp_path))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    manager = KernelManager(kernel_name=kernelspec.KERNEL_NAME, kernel_spec_manager=specs)
    manager.start_kernel(env=kernel_env, cwd=str(ROOT))
    try:
        nb = notebook("%%container busybox\necho from the contained kernel")
        run(manager, nb)
        assert stream_text(nb.cells[0]) == "from the contained kernel\n"
    finally:
        manager.shutdown_kernel(now=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
