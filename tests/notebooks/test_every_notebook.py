"""The workbook, executed end to end with nbclient (contained/workbook/execute.py's execute_all).

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
from conftest import IS_ROOT, NOBODY, needs_root
from conftest import as_nobody as _as_nobody
from conftest import interpreter_for_nobody as _interpreter_for_nobody

from contained import workbook

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = workbook.notebooks()
# 08 builds a bridge and NAT rules: test_networking_notebook.py runs it as root inside a
# network namespace of its own, never in the machine's.
ROOT_NOTEBOOKS = [path for path in NOTEBOOKS if path.name != "08-networking.ipynb"]

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("docker-registry")),
    reason="needs skopeo and docker-registry (apt-get install skopeo docker-registry)")


def outputs(path: Path) -> tuple[str, list[dict]]:
    """All text a notebook printed, and its error outputs. A cell's printed text is one piece,
    as Jupyter shows it: the kernel may send one print() as two stream messages (its flush
    timer fired between the writes of "label:", " ", "value")."""
    book = nbformat.read(path, as_version=4)
    texts, errors = [], []
    for cell in book.cells:
        streams: dict[str, str] = {}
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                errors.append(output)
            if output["output_type"] == "stream":
                streams[output["name"]] = streams.get(output["name"], "") + output["text"]
            texts.append(output.get("data", {}).get("text/plain", ""))
        texts += streams.values()
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
    assert "after kill -9: still here, I am PID 1" in text  # PID 1 ignores its own SIGKILL


@needs_root
def test_capabilities_are_decoded_as_the_student_sees_them(executed_as_root):
    """00 decodes the CapEff/CapBnd it printed, bit by bit, naming every missing one."""
    text, _ = executed_as_root["00"]
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for field, name in (("CapEff", "effective"), ("CapBnd", "bounding")):
        mask = int(value_after(text, f"{field}:"), 16)
        held = bin(mask & ((1 << (last + 1)) - 1)).count("1")
        assert f"{field} {mask:016x} ({name}): {held} of the {last + 1} capabilities" in text
        missing = [bit for bit in range(last + 1) if not mask >> bit & 1]
        if 0 < len(missing) <= 8:
            for bit in missing:
                assert f"(bit {bit})" in text, (field, bit)


def test_the_workbook_text_is_corrected():
    """Issue 11's corrections that live in the notebooks' text."""
    def markdown(number: str) -> str:
        path = next(p for p in NOTEBOOKS if p.name.startswith(number))
        return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                         if c.cell_type == "markdown")

    assert "| 08 |" in markdown("00")
    assert "000001ffffffffff` means all of them" not in markdown("00")
    for word in ("`time`", "`pid_for_children`", "`time_for_children`"):
        assert word in markdown("01"), word
    oom = markdown("02")
    assert "the moment it went over" not in oom and "only trace" not in oom
    assert "kernel log" in oom and "reclaim" in oom and "swap" in oom


@needs_root
def test_cgroups_oom_fork_bomb_and_cpu(executed_as_root):
    text, _ = executed_as_root["02"]
    assert "→ OOM kill" in text and "got 64 MB" not in text
    assert int(value_after(text, "most processes at once:").split()[0]) == 20
    assert int(value_after(text, "forks refused by the kernel:")) > 0
    cpu = float(value_after(text, "average CPU used:").split()[0])
    assert 0.3 < cpu < 0.65
    assert int(value_after(text, "without pids.max:").split()[0]) > 100


@needs_root
def test_cgroups_beyond_a_hard_limit(executed_as_root):
    """02: weights 100 and 300 on one CPU give B about three quarters; a soft memory limit
    (v2 memory.high, v1 memory.soft_limit_in_bytes) does not kill."""
    text, _ = executed_as_root["02"]
    share = float(value_after(text, "B's share of CPU 0:").split()[0])
    assert 0.6 < share < 0.9, share
    assert "OOM kills: 0" in text
    assert "got 48 MB" in text or "throttled" in text


@needs_root
def test_overlay_copy_up_and_whiteouts(executed_as_root):
    text, _ = executed_as_root["03"]
    assert "upper/hello.txt:  hello from the image|changed in the container|" in text
    assert "lower/hello.txt:  hello from the image|" in text
    assert "whiteout: hides this name" in text and "opaque" in text
    assert "lower/bye.txt: delete me" in text  # the lower layer was never touched
    assert "mounted below lab-03: nothing" in text


@needs_root
def test_overlay_layers_cost_whole_files(executed_as_root):
    """03: one appended line copies the whole 64 MiB file up, and the second append is cheap;
    work/ on another filesystem is refused."""
    text, _ = executed_as_root["03"]
    assert "upper/big.bin: 67108891 bytes" in text
    first = int(value_after(text, "first append (copy-up):").split()[0])
    second = int(value_after(text, "second append:").split()[0])
    assert first > second, (first, second)
    assert "the mount was refused" in text


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
    assert "layer 1: 32,000 bytes of it deleted by a later layer, still shipped" in text
    assert "layer blobs stored: 4 (shared: 1)" in text  # two images, one base layer
    assert "registry: stopped" in text


@needs_root
def test_container_by_hand(executed_as_root):
    text, _ = executed_as_root["05"]
    inside, host = value_after(text, "hostname inside:"), value_after(text, "hostname on the host:")
    assert inside == "container" and host != inside
    assert value_after(text, "uname -r inside:") == value_after(text, "uname -r on the host:")
    assert "1 packets received" in text
    assert "Network is unreachable" in text
    assert "hostname: better" in text and "1,   3" in text  # the built-up container's /dev/null
    assert "pivot_root . . && umount -l ." in text  # contained run --explain
    _tutorial_step_as_written(text)
    _built_up_one_step_at_a_time(text)
    assert "regular file" in text  # the exercise checker saw the tutorial's /dev/null
    assert "mounted below lab-05: nothing" in text


def _tutorial_step_as_written(text: str) -> None:
    """05 runs the tutorial's unshare+chroot without --mount-proc first: PID 1, yet ps sees
    nothing (the image's /proc is empty); without chroot, ps sees the host's processes."""
    assert "--- ls /proc: []" in text
    assert int(value_after(text, "processes ps lists:")) > 10
    assert value_after(text, "PID 1 in that /proc:") not in ("sh", "unshare")
    assert "1 root     /bin/sh" in text  # then with --mount-proc


def _built_up_one_step_at_a_time(text: str) -> None:
    assert "propagation of /: private" in text
    assert any(line.endswith("/lab05") for line in text.splitlines())  # joined before unshare
    assert "Invalid argument" in text and "root/etc is not a mountpoint" in text
    assert "pivot_root . . in root: done" in text
    caps = int(value_after(text, "CapEff:"), 16)
    assert caps >> 21 & 1, "the built-up container still has CAP_SYS_ADMIN: not called safe"


@needs_root
def test_container_magic(executed_as_root):
    text, _ = executed_as_root["06"]
    assert "hello from the first cell" in text
    assert "OOM kill: True" in text and "never printed" not in text.replace(
        'echo "never printed"', "")
    assert "pivot_root" in text  # --explain
    assert "containers left: []" in text
    _pid1_lesson(text)


def _pid1_lesson(text: str) -> None:
    """06: PID 1 ignores signals it has no handler for, a PID 1 that never waits collects
    zombies, the namespace dies with PID 1, and contained-init reaps."""
    assert "PID 1 after kill -TERM 1 and kill -9 $$: still running" in text
    assert value_after(text, "zombies under PID 1:") == "3"
    assert "sleep 31.5 left on the host: none" in text
    assert value_after(text, "zombies:") == "0"


@needs_root
def test_safety(executed_as_root):
    text, _ = executed_as_root["07"]
    assert text.count("refused:") >= 2
    assert "written outside the image: nothing" in text
    assert "written outside the image: ['" not in text
    chroot, pivot = text.split("--- chroot (the tutorial)")[1].split("--- pivot_root")
    assert "after the escape, can I see it?       True" in chroot
    assert "after the escape, can I see it?       False" in pivot
    _root_in_a_container(text)


def _root_in_a_container(text: str) -> None:
    """07's probes: by hand every door is open; in contained run each one is shut."""
    by_hand, rest = text.split("--- by hand (")[1].split("--- contained run --rm busybox")
    contained = rest.split("by hand:")[0]
    assert "mount a tmpfs:                   allowed" in by_hand
    assert "open it (the host's kernel log): allowed" in by_hand
    assert "mount a tmpfs:                   refused" in contained
    assert "mknod /tmp/kmsg c 1 11:          allowed" in contained  # CAP_MKNOD stays...
    assert "open it (the host's kernel log): refused" in contained  # ...the device does not open
    assert "/proc/sys: read-only" in contained and "/proc/sys: writable" in by_hand
    assert "NoNewPrivs: 1   Seccomp: 2" in contained
    assert "CAP_SYS_ADMIN" in text.split("dropped by contained")[1]
    assert "--- by hand:        uid 1000 ran a setuid-root python3; its euid: 0" in text
    assert "--- contained run:  uid 1000 ran a setuid-root python3; its euid: 1000" in text
    assert "# Docker's default profile, " in text and "keyctl, add_key, bpf" in text
    confined, unconfined = text.split("--security-opt seccomp=unconfined")[:2]
    assert "Operation not permitted" in confined.split("$ contained run --rm busybox sh")[-1]
    assert "Seccomp:\t0" in unconfined and "\nunshare: allowed" in unconfined


@pytest.fixture(scope="module")
def executed_unprivileged():
    """Every notebook executed as `nobody`, with its own HOME and CONTAINED_HOME."""
    if not IS_ROOT:
        pytest.skip("needs root to switch to the unprivileged user nobody")
    if not os.access(sys.executable, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    python, extra_env = _interpreter_for_nobody()
    base = Path(tempfile.mkdtemp(prefix="contained-workbook-nobody-"))
    # XDG_RUNTIME_DIR, as a login session has it (pam_systemd's /run/user/UID): without it,
    # skopeo looks for credentials in /run/containers/UID, and podman (if root ever ran it)
    # leaves /run/containers mode 0700, so the tutorial's skopeo copy fails "permission denied".
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(base),
           "CONTAINED_HOME": str(base / "store"), "LANG": "C.UTF-8",
           "XDG_RUNTIME_DIR": str(base / "run"), **extra_env}
    try:
        os.chown(base, NOBODY, NOBODY)
        (base / "run").mkdir(mode=0o700)
        os.chown(base / "run", NOBODY, NOBODY)
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
    for number in ("05", "06", "07", "08"):  # 01-03: the rootless track, below
        text, _ = results[number]
        # each cell that cannot run says why, then shows its command
        assert text.count("Skipped:") + text.count("Not run here (") \
            <= text.count("As root, this cell runs:"), number
    assert "mount -t overlay overlay -o lowerdir=lower" in results["05"][0]
    assert "Running as uid 65534" in results["00"][0]


@needs_root
def test_unprivileged_still_walks_images_and_verifies_digests(executed_unprivileged):
    _, results = executed_unprivileged
    text, _ = results["04"]
    _digests_verify(text)
    assert results["07"][0].count("refused:") >= 2  # the unpacker needs no privileges


def _user_namespaces_for_nobody() -> bool:
    return subprocess.run(_as_nobody(["unshare", "--user", "--map-root-user", "true"]),
                          capture_output=True).returncode == 0


@needs_root
def test_rootless_track_runs_notebooks_00_to_03_for_real(executed_unprivileged):
    """Unprivileged with user namespaces: 01 and 03 run every lab in a user namespace (uid 0
    inside is nobody outside), 02 shows a root run's recorded output; nothing is skipped."""
    if not _user_namespaces_for_nobody():
        pytest.skip("user namespaces are not allowed for unprivileged users here")
    _, results = executed_unprivileged
    for number in ("00", "01", "02", "03"):
        assert results[number][0].count("Skipped:") == 0, number
    namespaces, cgroups_text, overlay = results["01"][0], results["02"][0], results["03"][0]
    assert value_after(namespaces, "inside:") == "container-01"
    assert "my PID: 1" in namespaces and "after kill -9: still here, I am PID 1" in namespaces
    assert "propagation private:   the host sees nothing" in namespaces
    assert f"uid_map: 0 {NOBODY} 1" in namespaces
    assert f"1 {NOBODY} {NOBODY} 0" in namespaces  # made inside as root, nobody's outside
    assert cgroups_text.count("Recorded from a root run") == 5
    assert "→ OOM kill" in cgroups_text  # in the recording
    assert "upper/hello.txt:  hello from the image|changed in the container|" in overlay
    assert f"{NOBODY} {NOBODY} 0, 0 " in overlay  # the whiteout belongs to the student
    assert "opaque: hides the lower directory" in overlay  # userxattr keeps the mark
    assert "upper/big.bin: 67108891 bytes" in overlay
    assert "the mount was refused" in overlay


@needs_root
def test_rootless_track_runs_notebooks_04_to_08_for_real(executed_unprivileged):
    """Unprivileged with user namespaces: 05 by hand in a user namespace, 06 and 07 with
    rootless containers, 08's part 1 in a user namespace and its bridge as a root run's
    recording. Cells that still cannot run (a cgroup limit without delegation, a second uid,
    a device node) say so: at most 4 in 04-08 (31 before the rootless track)."""
    if not _user_namespaces_for_nobody():
        pytest.skip("user namespaces are not allowed for unprivileged users here")
    _, results = executed_unprivileged
    skipped = {number: results[number][0].count("Skipped:") for number in
               ("04", "05", "06", "07", "08")}
    assert sum(skipped.values()) <= 4, skipped
    by_hand, magic, safety, net = (results[n][0] for n in ("05", "06", "07", "08"))
    uid_map = ["0", str(NOBODY), "1"]  # root inside is nobody outside
    assert any(line.split() == uid_map for line in by_hand.splitlines())
    _tutorial_step_as_written(by_hand)
    assert "hostname: better" in by_hand and "pivot_root . . in root: done" in by_hand
    assert f"my uid on the host: {NOBODY}" in by_hand
    assert f"1 {NOBODY} {NOBODY} 19 " in by_hand  # the tutorial's /dev/null, the student's file
    assert "hello from the first cell" in magic and "1 root     contained-init" in magic
    _pid1_lesson(magic)
    assert "Recorded from a root run" in magic and "OOM kill: True" in magic
    chroot, pivot = safety.split("--- chroot (the tutorial)")[1].split("--- pivot_root")
    assert "after the escape, can I see it?       True" in chroot
    assert "after the escape, can I see it?       False" in pivot
    assert "mknod /tmp/kmsg c 1 11:          refused" in safety  # a user namespace owns no device
    assert "its euid: 1000" in safety  # no_new_privs, from the recording
    assert "\nunshare: allowed" in safety.split("seccomp=unconfined")[1]
    assert "10.200.8.1: seq=0" in net and "192.0.2.1: seq=0" in net  # part 1, for real
    assert net.count("Recorded from a root run") == 5
    assert "route_localnet = 1" in net and "hello from web08" in net

