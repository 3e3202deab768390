"""The workbook, executed end to end with nbclient (contained/workbook/__init__.py's execute_all).

As root: every notebook runs top to bottom, and the outputs that matter are checked (the
hostname inside differs from the host's, `uname -r` matches it, the OOM kill is reported, copy-up
and whiteouts show in upper, the digests verify, the chroot escape works only under chroot).
As an unprivileged user (nobody, with its own HOME): every notebook still completes, without a
single error, and the cells that need root say so.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from conftest import IS_ROOT, needs_root

from contained import workbook

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = workbook.notebooks()
# 08 builds a bridge and NAT rules: test_networking_notebook.py runs it as root inside a
# network namespace of its own, never in the machine's.
ROOT_NOTEBOOKS = [path for path in NOTEBOOKS if path.name != "08-networking.ipynb"]
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("docker-registry")),
    reason="needs skopeo and docker-registry (apt-get install skopeo docker-registry)")


def outputs(path: Path) -> tuple[str, list[dict]]:
    """All text a notebook printed, and its error outputs."""
    book = nbformat.read(path, as_version=4)
    texts, errors = [], []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                errors.append(output)
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts), errors


def value_after(text: str, label: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(label))
    return line[len(label):].strip()


@pytest.fixture(scope="module")
def executed_as_root(tmp_path_factory):
    """Every notebook executed as root, with its own CONTAINED_HOME; cleaned up after."""
    if not IS_ROOT:
        pytest.skip("needs root: mounts, namespaces and cgroups (CI runs as root)")
    base = tmp_path_factory.mktemp("workbook-root")
    home, out = base / "home", base / "out"
    env = {**os.environ, "CONTAINED_HOME": str(home)}
    try:
        paths = [workbook.execute_notebook(path, out, env=env) for path in ROOT_NOTEBOOKS]
        yield {path.name[:2]: outputs(path) for path in paths}
    finally:
        _clean_up(home, out)


def _clean_up(home: Path, out: Path) -> None:
    leaked_mounts = workbook.unmount_all(out, echo=False)
    script = ("from contained.runtime import container\nfrom contained.images import registry\n"
              "for c in container.containers(): container.remove(c.id, force=True)\n"
              "registry.stop()\n")
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "CONTAINED_HOME": str(home)},
                   check=False)
    assert not leaked_mounts, f"the workbook left mounts behind: {leaked_mounts}"


@needs_root
def test_every_notebook_runs_without_errors_as_root(executed_as_root):
    assert sorted(executed_as_root) == [path.name[:2] for path in ROOT_NOTEBOOKS]
    for number, (_, errors) in executed_as_root.items():
        assert not errors, f"notebook {number}: {errors}"


@needs_root
def test_namespaces_rename_only_the_container(executed_as_root):
    text, _ = executed_as_root["01"]
    assert value_after(text, "inside:") == "container-01"
    host = os.uname().nodename
    assert value_after(text, "host before:") == value_after(text, "host after:") == host
    assert "my PID: 1" in text
    assert "propagation unchanged: the host sees leaked" in text
    assert "propagation private:   the host sees nothing" in text


@needs_root
def test_cgroups_oom_fork_bomb_and_cpu(executed_as_root):
    text, _ = executed_as_root["02"]
    assert "→ OOM kill" in text and "got 64 MB" not in text
    assert int(value_after(text, "most processes at once:").split()[0]) == 20
    assert int(value_after(text, "forks refused by the kernel:")) > 0
    cpu = float(value_after(text, "average CPU used:").split()[0])
    assert 0.3 < cpu < 0.65


@needs_root
def test_overlay_copy_up_and_whiteouts(executed_as_root):
    text, _ = executed_as_root["03"]
    assert "upper/hello.txt:  hello from the image|changed in the container|" in text
    assert "lower/hello.txt:  hello from the image|" in text
    assert "whiteout: hides this name" in text and "opaque" in text
    assert "lower/bye.txt: delete me" in text  # the lower layer was never touched
    assert "mounted below lab-03: nothing" in text


def _digests_verify(text: str) -> None:
    checked = [line for line in text.splitlines() if line.endswith(": OK")]
    assert len(checked) == 3 and "FAILED" not in text
    diff_id = value_after(text, "diff_id in the config:")
    assert f"{diff_id[7:]}  -" in text  # zcat BLOB | sha256sum printed the same digest


@needs_root
def test_images_pull_and_digests_verify(executed_as_root):
    text, _ = executed_as_root["04"]
    assert "Writing manifest to image destination" in text
    _digests_verify(text)
    assert "app/.wh.build.log" in text
    assert "registry: stopped" in text


@needs_root
def test_container_by_hand(executed_as_root):
    text, _ = executed_as_root["05"]
    inside, host = value_after(text, "hostname inside:"), value_after(text, "hostname on the host:")
    assert inside == "container" and host != inside
    assert value_after(text, "uname -r inside:") == value_after(text, "uname -r on the host:")
    assert "1 packets received" in text
    assert "Network is unreachable" in text
    assert "hostname: pivoted" in text and "1,   3" in text  # the fixed /dev/null
    assert "pivot_root . . && umount -l ." in text  # contained run --explain
    assert "regular file" in text  # the exercise checker saw the tutorial's /dev/null
    assert "mounted below lab-05: nothing" in text


@needs_root
def test_container_magic(executed_as_root):
    text, _ = executed_as_root["06"]
    assert "hello from the first cell" in text
    assert "OOM kill: True" in text and "never printed" not in text.replace(
        'echo "never printed"', "")
    assert "pivot_root" in text  # --explain
    assert "containers left: []" in text


@needs_root
def test_safety(executed_as_root):
    text, _ = executed_as_root["07"]
    assert text.count("refused:") >= 2
    assert "written outside the image: nothing" in text
    assert "written outside the image: ['" not in text
    chroot, pivot = text.split("--- chroot (the tutorial)")[1].split("--- pivot_root")
    assert "after the escape, can I see it?       True" in chroot
    assert "after the escape, can I see it?       False" in pivot


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def _interpreter_for_nobody() -> tuple[str, dict]:
    """A Python nobody can run, with the venv's packages: the venv's own if its interpreter is
    reachable (not under a 0700 /root, as a pyenv-made venv is), else the system's python3 of
    the same version with the venv's site-packages on PYTHONPATH."""
    reachable = subprocess.run(_as_nobody(["sh", "-c", '"$0" -c pass', sys.executable]),
                               capture_output=True).returncode == 0
    if reachable:
        return sys.executable, {}
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = Path(sys.prefix) / "lib" / version / "site-packages"
    probe = subprocess.run([system or "false", "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"{sys.executable} is not reachable by nobody and there is no system "
                    f"{version}: make the venv from /usr/bin/python3")
    return system, {"PYTHONPATH": f"{site}:{REPO}"}


@pytest.fixture(scope="module")
def executed_unprivileged():
    """Every notebook executed as `nobody`, with its own HOME and CONTAINED_HOME."""
    if not IS_ROOT:
        pytest.skip("needs root to switch to the unprivileged user nobody")
    if not os.access(sys.executable, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    python, extra_env = _interpreter_for_nobody()
    base = Path(tempfile.mkdtemp(prefix="contained-workbook-nobody-"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(base),
           "CONTAINED_HOME": str(base / "store"), "LANG": "C.UTF-8", **extra_env}
    try:
        os.chown(base, NOBODY, NOBODY)
        done = subprocess.run(
            _as_nobody([python, "-m", "contained.workbook", str(base / "out")]),
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        executed = sorted((base / "out").glob("*.ipynb"))
        yield done, {path.name[:2]: outputs(path) for path in executed}
    finally:
        subprocess.run(_as_nobody([python, "-c",
                                   "from contained.images import registry; registry.stop()"]),
                       env=env, cwd=REPO, check=False)
        shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_every_notebook_completes_unprivileged(executed_unprivileged):
    done, results = executed_unprivileged
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(results) == [path.name[:2] for path in NOTEBOOKS]
    for number, (text, errors) in results.items():
        assert not errors, f"notebook {number}: {errors}"
        assert "Traceback" not in text


@needs_root
def test_unprivileged_cells_explain_themselves(executed_unprivileged):
    _, results = executed_unprivileged
    for number in ("01", "02", "03", "05", "06", "07"):
        text, _ = results[number]
        assert "Skipped:" in text and "needs root" in text, number
        assert "As root, this cell runs:" in text, number
    assert "mount -t overlay overlay -o lowerdir=lower" in results["05"][0]
    assert "Running as uid 65534" in results["00"][0]


@needs_root
def test_unprivileged_still_walks_images_and_verifies_digests(executed_unprivileged):
    _, results = executed_unprivileged
    text, _ = results["04"]
    _digests_verify(text)
    assert results["07"][0].count("refused:") >= 2  # the unpacker needs no privileges
