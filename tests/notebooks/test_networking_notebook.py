"""Notebook 08 (networking), executed with nbclient inside a network namespace of its own (root).

The notebook creates `contained0`, veths, an nft table and the namespaces lab08-a/b/c: fine on a
lab VM, never on the machine running the tests. So, as root, the test runs
``python -m contained.workbook OUT notebooks/08-networking.ipynb`` under
``unshare --net --mount --propagation private``, with a private tmpfs on /run/netns (where
`ip netns add` keeps its namespace files), a temporary CONTAINED_HOME and its own cgroup
parent. Traffic goes only to 127.0.0.1 and the namespaces' own subnets. The unprivileged run
of every notebook, 08 included, is tests/notebooks/test_every_notebook.py's.
"""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import needs_root, remove_cgroup_parent
from test_network import host_view, isolated_env, run_in_network_namespace

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "08-networking.ipynb"
TIMEOUT = 240

pytestmark = needs_root


def _outputs(path: Path) -> tuple[str, list[dict], int]:
    """All text the notebook printed, its error outputs, and how many images it showed."""
    book = nbformat.read(path, as_version=4)
    texts, errors, images = [], [], 0
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                errors.append(output)
            # a print() may arrive in several stream outputs: join them as they were written
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            if "text/plain" in data:
                texts.append(f"\n{data['text/plain']}\n")
            images += "image/png" in data
        texts.append("\n")
    return "".join(texts), errors, images


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebook-08")
    parent = f"contained-nbtest-{os.getpid()}"
    env = isolated_env(base / "home", parent)
    before = host_view()
    made_run_netns = not os.path.exists("/run/netns")  # mkdir -p below makes it on the host
    # lo up: nbclient talks to its kernel over 127.0.0.1. ip netns add bind-mounts namespace
    # files on /run/netns: a tmpfs there keeps them in this mount namespace.
    script = ('ip link set lo up && mkdir -p /run/netns && '
              'mount -t tmpfs -o mode=755 lab08 /run/netns && '
              'exec "$0" -m contained.workbook "$1" "$2"')
    try:
        run = run_in_network_namespace(
            ["sh", "-c", script, sys.executable, str(base / "out"), str(NOTEBOOK)], env,
            TIMEOUT, cwd=REPO, mount=True)
    finally:
        leftover = remove_cgroup_parent(parent)
        if made_run_netns:
            os.rmdir("/run/netns")
    yield {"status": run.returncode, "stderr": run.stderr + run.stdout,
           "leftover_cgroups": leftover, "host_changed": host_view() != before,
           "outputs": _outputs(base / "out" / NOTEBOOK.name),
           "executed": base / "out" / NOTEBOOK.name}


def test_runs_without_errors_and_leaves_nothing(executed):
    text, errors, _ = executed["outputs"]
    assert executed["status"] == 0, executed["stderr"][-2000:]
    assert not errors, errors
    assert "Traceback" not in text
    assert "left on the host: nothing" in text
    assert executed["leftover_cgroups"] == []
    assert not executed["host_changed"], "the notebook changed the host's network"


def test_by_hand_veth_and_route(executed):
    text, _, _ = executed["outputs"]
    assert "lab08-a" in text and "lab08-b" in text
    assert "veth-b@" not in text.split("--- lab08-a:")[1].split("--- lab08-b:")[0]  # moved
    assert "10.200.8.1: seq=0" in text  # ping across the cable
    assert "→ no route to 192.0.2.1" in text
    assert "192.0.2.1: seq=0" in text  # the same ping with a default route


def test_bridge_by_name_from_the_host_and_explained(executed):
    text, _, images = executed["outputs"]
    assert "10.77.0.2\tweb08" in text  # /etc/hosts of the second container
    assert text.count("hello from web08") >= 2  # wget by name, urllib through 127.0.0.1:8080
    assert "from the host, http://127.0.0.1:8080/ says: hello from web08" in text
    assert 'dnat to 10.77.0.2:80 comment "web08"' in text
    # the port rewrite needs route_localnet, and the CVE-2020-8558 drop rule comes with it
    assert "route_localnet = 1" in text
    assert 'ip daddr 127.0.0.0/8 ct status & dnat != dnat drop' in text
    assert "web08: 10.77.0.2 on veth-" in text and "127.0.0.1:8080→80/tcp" in text
    assert images >= 1  # the diagram
    explained = text[text.index("--explain --net bridge"):]
    assert explained.index("unshare --pid") < explained.index("type veth peer name eth0") \
        < explained.index("ip route add default via 10.77.0.1") < explained.index("+ hostname")


def test_the_bridge_diagram_cell_shows_a_png(executed):
    book = nbformat.read(executed["executed"], as_version=4)
    cell = next(cell for cell in book.cells if cell.get("id") == "fd66dda0")
    assert "figures.bridge_diagram(state)" in cell.source
    pngs = [output for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(pngs) == 1, cell.outputs


def test_exercises_left_empty_say_not_yet(executed):
    text, _, _ = executed["outputs"]
    assert "✘ Not yet: there is no namespace lab08-c" in text
    assert "✘ Not yet: there is no container named api08" in text
