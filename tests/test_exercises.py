"""Exercise checkers (contained/workbook/exercises/) with right and wrong answers, on real files,
real overlay mounts and real containers where the checker looks at those."""

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

from conftest import needs_root

from contained.images import build
from contained.runtime import cgroups
from contained.workbook import exercises, tar_layer


def test_unanswered_is_not_an_error():
    for feedback in (exercises.check_cgroup_mode(None), exercises.check_memory_max("32M", None),
                     exercises.check_cpu_max(0.5, None), exercises.check_boundary(None),
                     exercises.check_kernel_release(None), exercises.check_uts_command(None),
                     exercises.check_new_namespaces("unshare --uts", None),
                     exercises.check_layer_refused(None)):
        assert not feedback
        assert str(feedback).startswith("✘ Not yet: not answered yet")


def test_cgroup_mode_right_and_wrong():
    host = cgroups.detect()
    assert exercises.check_cgroup_mode(host.mode)
    assert exercises.check_cgroup_mode(f"cgroup {host.mode.upper()}")
    other = next(m for m in ("v1", "v2", "hybrid") if m != host.mode)
    feedback = exercises.check_cgroup_mode(other)
    assert not feedback and f"not {other}" in feedback.message
    assert "not one of" in exercises.check_cgroup_mode("v3").message


def test_new_namespaces():
    command = "unshare --uts --net --fork sh"
    assert exercises.check_new_namespaces(command, {"uts", "net"})
    missing = exercises.check_new_namespaces(command, {"uts"})
    assert not missing and "left out net" in missing.message
    extra = exercises.check_new_namespaces(command, ["uts", "net", "pid"])
    assert not extra and "pid is shared with the host" in extra.message
    assert "not a namespace kind" in exercises.check_new_namespaces(command, {"fork"}).message
    assert exercises.kinds_in("unshare -m -p -f --mount-proc=root/proc") == {"mount", "pid"}


def test_uts_command_shape_is_checked_before_running():
    assert "unshare" in exercises.check_uts_command("hostname lab").message
    feedback = exercises.check_uts_command("unshare --net sh -c 'hostname lab; hostname'")
    assert not feedback and "--uts" in feedback.message


@needs_root
def test_uts_command_right_answers():
    for answer in ("unshare --uts sh -c 'hostname lab; hostname'",
                   'unshare -u bash -c "hostname lab && uname -n"',
                   "unshare --uts sh -c 'hostname lab; cat /proc/sys/kernel/hostname'"):
        assert exercises.check_uts_command(answer), answer


@needs_root
def test_uts_command_that_never_sets_or_reads_the_name_is_refused():
    echoed = exercises.check_uts_command("unshare --uts echo lab")
    assert not echoed and "never sets" in echoed.message
    assert not exercises.check_uts_command("unshare --uts sh -c 'hostname lab; echo lab'")
    assert not exercises.check_uts_command("unshare --uts hostname lab")


@needs_root
def test_uts_command_runs_where_it_cannot_touch_host_files(tmp_path):
    """The answer runs as root would type it, but in namespaces of its own with a read-only
    view of the host: files it writes vanish, the host's hostname stays."""
    before = os.uname().nodename
    in_tmp = Path(f"/tmp/contained-sentinel-{os.getpid()}")
    in_etc = Path(f"/etc/contained-sentinel-{os.getpid()}")
    mine = tmp_path / "SENTINEL"
    try:
        exercises.check_uts_command(
            f"unshare --uts sh -c 'hostname lab; hostname'; touch {in_tmp}; touch {mine}; "
            f"echo x > {in_etc}; hostname pwned")
        exercises.check_uts_command(f"unshare --uts hostname lab; touch {in_tmp}")
        assert not in_tmp.exists() and not mine.exists() and not in_etc.exists()
        assert os.uname().nodename == before
    finally:
        for path in (in_tmp, in_etc):
            path.unlink(missing_ok=True)


@needs_root
def test_uts_command_runs_and_leaves_the_host_alone():
    before = os.uname().nodename
    assert exercises.check_uts_command("unshare --uts sh -c 'hostname lab; hostname'")
    wrong = exercises.check_uts_command("unshare --uts sh -c 'hostname other; hostname'")
    assert not wrong and "not 'lab'" in wrong.message
    assert os.uname().nodename == before


def test_memory_max():
    assert exercises.check_memory_max("32M", 33554432)
    assert exercises.check_memory_max("32M", "33554432")
    decimal = exercises.check_memory_max("32M", 32_000_000)
    assert not decimal and "1024" in decimal.message
    assert not exercises.check_memory_max("32M", 1)


def test_memory_max_accepts_what_the_kernel_accepts():
    for answer in ("32M", "32m", "32768k", "32768K", "33554432\n", "0x20M", "040M"):
        assert exercises.check_memory_max("32M", answer), answer


def test_memory_max_refuses_what_the_kernel_refuses_or_misreads():
    for answer in ("32MB", "32 M", "32.0M", "32Mi", "0.03125G", "thirty-two"):
        refused = exercises.check_memory_max("32M", answer)
        assert not refused and "Invalid argument" in refused.message, answer
    assert "no limit" in exercises.check_memory_max("32M", "max").message
    assert not exercises.check_memory_max("32M", "32000k")
    assert not exercises.check_memory_max("32M", "32G")


def test_cpu_max():
    assert exercises.check_cpu_max(0.25, "25000 100000")
    assert exercises.check_cpu_max(0.25, "50000 200000")
    swapped = exercises.check_cpu_max(0.25, "100000 25000")
    assert not swapped and "swapped" in swapped.message
    assert "two numbers" in exercises.check_cpu_max(0.25, "25%").message
    assert "0.5 CPUs" in exercises.check_cpu_max(0.25, "50000 100000").message


def _lab(tmp_path):
    lab = tmp_path / "ex03"
    for name in ("lower", "upper", "work", "merged"):
        (lab / name).mkdir(parents=True)
    (lab / "lower" / "notes.txt").write_text("keep me\n")
    return lab


def test_whiteout_wrong_answers(tmp_path):
    assert "does not exist yet" in exercises.check_whiteout(tmp_path / "nothing", "x").message
    lab = _lab(tmp_path)
    assert "does not exist" in exercises.check_whiteout(lab, "notes.txt").message
    (lab / "upper" / "notes.txt").write_text("")
    feedback = exercises.check_whiteout(lab, "notes.txt")
    assert not feedback and "not a whiteout" in feedback.message
    (lab / "lower" / "notes.txt").unlink()
    assert "missing" in exercises.check_whiteout(lab, "notes.txt").message


@needs_root
def test_whiteout_made_by_a_real_overlay(tmp_path):
    lab = _lab(tmp_path)
    merged = lab / "merged"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lab}/lower,upperdir={lab}/upper,workdir={lab}/work",
                    str(merged)], check=True)
    try:
        (merged / "notes.txt").unlink()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    feedback = exercises.check_whiteout(lab, "notes.txt")
    assert feedback, feedback.message
    assert (lab / "lower" / "notes.txt").read_text() == "keep me\n"


def test_layer_digest(tmp_path):
    layout = tmp_path / "image"
    tar = tar_layer(("hello.txt", "file", b"hello\n" * 1000))
    build.build_image(layout, [tar_layer(("a", "file", b"x")), tar], "latest",
                      architecture=build.host_architecture())
    index = __import__("json").loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = __import__("json").loads(
        (layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    largest = max(manifest["layers"], key=lambda layer: layer["size"])
    smaller = min(manifest["layers"], key=lambda layer: layer["size"])
    assert exercises.check_layer_digest(layout, largest["digest"])
    assert exercises.check_layer_digest(layout, largest["digest"][7:])  # sha256sum's form
    assert "not the largest" in exercises.check_layer_digest(layout, smaller["digest"]).message
    assert "manifest" in exercises.check_layer_digest(layout, manifest_digest).message
    assert "config" in exercises.check_layer_digest(layout, manifest["config"]["digest"]).message
    diff_id = build.sha256_digest(tar)
    assert "diff_id" in exercises.check_layer_digest(layout, diff_id).message
    assert "not in this image" in exercises.check_layer_digest(layout, "sha256:" + "0" * 64).message
    assert "64 hex digits" in exercises.check_layer_digest(layout, "latest").message


def test_dev_null_wrong_answers(tmp_path):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    assert "does not exist" in exercises.check_dev_null(root).message
    (root / "dev" / "null").write_text("this should vanish\n")
    feedback = exercises.check_dev_null(root)
    assert not feedback and "regular file" in feedback.message
    (root / "dev" / "null").unlink()
    (root / "dev" / "null").symlink_to("/dev/null")
    assert "symlink" in exercises.check_dev_null(root).message


@needs_root
def test_dev_null_right_and_wrong_devices(tmp_path):
    dev = tmp_path / "root" / "dev"
    dev.mkdir(parents=True)
    os.mknod(dev / "null", 0o020666, os.makedev(1, 5))
    assert "not 1:3" in exercises.check_dev_null(tmp_path / "root").message
    (dev / "null").unlink()
    os.mknod(dev / "null", 0o020600, os.makedev(1, 3))
    assert "mode" in exercises.check_dev_null(tmp_path / "root").message
    os.chmod(dev / "null", 0o666)
    assert exercises.check_dev_null(tmp_path / "root")


def test_kernel_release():
    assert exercises.check_kernel_release(os.uname().release + "\n")
    assert not exercises.check_kernel_release("5.4.0-generic-in-a-vm")


def test_layer_refused_right_and_wrong():
    refused = exercises.check_layer_refused(tar_layer(("../x", "file", b"hi")))
    assert refused and "refused" in refused.message
    harmless = exercises.check_layer_refused(tar_layer(("x", "file", b"hi")))
    assert not harmless and "unpacked cleanly" in harmless.message
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        tar.addfile(info)
    assert exercises.check_layer_refused(buffer.getvalue())


@needs_root
def test_container_checkers(busybox_store):
    from contained.runtime import container

    name = "exercise-check"
    with open(os.devnull) as devnull:
        container.run("busybox", ["sh", "-c", "echo 42 > /answer.txt"], name=name,
                      memory="24M", stdin=devnull, stdout=devnull, stderr=devnull)
    try:
        assert exercises.check_container_file(name, "/answer.txt", "42")
        assert "not '41'" in exercises.check_container_file(name, "/answer.txt", "41").message
        assert "does not exist" in exercises.check_container_file(name, "/nope", "42").message
        assert exercises.check_memory_limit(name, "24M")
        assert "not 32M" in exercises.check_memory_limit(name, "32M").message
    finally:
        container.remove(name, force=True)
    assert "no container named" in exercises.check_container_file(name, "/x", "y").message
    assert "no container named" in exercises.check_memory_limit(name, "24M").message


@needs_root
def test_container_file_checker_reads_at_most_the_cap(busybox_store, monkeypatch):
    from contained.runtime import container
    from contained.workbook.exercises import container_magic

    monkeypatch.setattr(container_magic, "CHECKED_FILE_LIMIT", 64 << 10)
    name = "exercise-big"
    with open(os.devnull) as devnull:
        container.run("busybox", ["sh", "-c", "head -c 300000 /dev/zero > /big; "
                                  "ln -s /dev/zero /endless"], name=name,
                      memory="16M", stdin=devnull, stdout=devnull, stderr=devnull)
    try:
        verdict = exercises.check_container_file(name, "/big", "42")
        assert not verdict and "bigger than 64 KiB" in verdict.message
        started = time.monotonic()
        verdict = exercises.check_container_file(name, "/endless", "42")
        assert not verdict and "/dev/zero" in verdict.message
        assert time.monotonic() - started < 10
        assert exercises.check_container_file(name, "/missing", "42").message.endswith("vanish")
    finally:
        container.remove(name, force=True)


# --- 07/08 loopholes (issue 11): known-wrong answers that used to pass ------------------------


def test_random_bytes_are_not_a_refused_malicious_layer():
    garbage = exercises.check_layer_refused(os.urandom(4096))
    assert not garbage and "not a tar" in garbage.message
    assert not exercises.check_layer_refused(b"")
    truncated = tar_layer(("x", "file", b"hi" * 400))[:700]
    assert not exercises.check_layer_refused(truncated)


def test_a_refused_layer_must_be_refused_for_an_entry_not_for_its_bytes():
    assert exercises.check_layer_refused(tar_layer(("sneaky/../../x", "file", b"hi")))
    assert exercises.check_layer_refused(tar_layer(("x", "file", b"hi"), ("..", "dir")))


def test_boundary_is_not_a_coin_flip():
    assert exercises.check_boundary({"pivot_root", "capabilities", "device rules", "seccomp"})
    assert exercises.check_boundary(["pivot_root", "dropped capabilities", "devices", "seccomp"])
    alone = exercises.check_boundary("pivot_root")
    assert not alone and "mknod" in alone.message
    assert "climb out" in exercises.check_boundary({"chroot", "seccomp"}).message
    missing = exercises.check_boundary({"pivot_root", "capabilities", "seccomp"})
    assert not missing and "device" in missing.message
    assert not exercises.check_boundary({"pivot_root", "capabilities", "device rules",
                                         "seccomp", "hostname"})
    assert not exercises.check_boundary("docker")


THIRD_NAMESPACE_SCRIPT = """
set -e
ip link set lo up; mkdir -p /run/netns; mount -t tmpfs -o mode=755 t /run/netns
for ns in lab08-a lab08-c lab08-x; do ip netns add $ns; done
# the cable goes to lab08-x, which has the gateway's address: the checker must refuse
ip -n lab08-c link add veth-c type veth peer name veth-x netns lab08-x
ip -n lab08-c addr add 10.200.9.2/24 dev veth-c; ip -n lab08-x addr add 10.200.9.1/24 dev veth-x
ip -n lab08-c link set veth-c up; ip -n lab08-x link set veth-x up
"$0" -c "$CHECK"
ip -n lab08-c link del veth-c
ip -n lab08-c link add veth-c type veth peer name veth-a netns lab08-a
ip -n lab08-c addr add 10.200.9.2/24 dev veth-c; ip -n lab08-a addr add 10.200.9.1/24 dev veth-a
ip -n lab08-c link set veth-c up; ip -n lab08-a link set veth-a up
"$0" -c "$CHECK"
"""


@needs_root
def test_third_namespace_must_be_cabled_to_lab08_a():
    import shutil
    import sys

    from test_network import run_in_network_namespace

    if not shutil.which("busybox"):
        import pytest
        pytest.skip("needs busybox for ping")
    check = ("from contained.workbook import exercises\n"
             "verdict = exercises.check_third_namespace()\n"
             "print(verdict.ok, verdict.message)")
    done = run_in_network_namespace(["sh", "-c", THIRD_NAMESPACE_SCRIPT, sys.executable],
                                    {**os.environ, "CHECK": check}, 60, mount=True)
    assert done.returncode == 0, done.stderr
    to_x, to_a = done.stdout.strip().splitlines()[-2:]
    assert to_x.startswith("False") and "lab08-a" in to_x, to_x
    assert to_a.startswith("True"), to_a


# --- 00-03: graduated hints, known-wrong answers (issue 11) ----------------------------------


def test_hints_grow_with_each_miss_and_never_give_the_answer():
    exercises.forget_misses()
    first = exercises.check_memory_max("32M", 32_000_000)
    assert "Hint 1" in str(first) and "Hint 2" not in str(first)
    second = exercises.check_memory_max("32M", 32_000_000)
    assert "Hint 2" in str(second) and "exercises.solution('02.1')" in str(second)
    for feedback in (first, second):
        assert "33554432" not in str(feedback)  # the answer itself only comes from solution()
    assert "33554432" in exercises.solution("02.1")
    exercises.forget_misses()


def test_an_unanswered_exercise_earns_no_hint():
    exercises.forget_misses()
    for _ in range(3):
        feedback = exercises.check_cpu_max(0.25, None)
        assert not feedback and not feedback.hint
    assert "Hint 1" in str(exercises.check_cpu_max(0.25, "1 2"))
    exercises.forget_misses()


def test_every_checker_of_notebooks_00_to_03_has_graduated_hints():
    for checker in (exercises.check_cgroup_mode, exercises.check_new_namespaces,
                    exercises.check_uts_command, exercises.check_memory_max,
                    exercises.check_cpu_max, exercises.check_cpu_share,
                    exercises.check_whiteout):
        hints = exercises.EXERCISES[checker.exercise]
        assert hints.concept and hints.where and hints.solution
    for key in ("01.3", "02.4", "03.2", "03.3"):
        assert key in exercises.PREDICTIONS and key in exercises.EXERCISES
    # the right letter differs between questions: "always answer b" is no strategy
    assert len({exercises.PREDICTIONS[key].right for key in exercises.PREDICTIONS}) > 1


def test_solution_of_an_unknown_exercise_names_the_known_ones():
    import pytest

    with pytest.raises(KeyError, match="02.1"):
        exercises.solution("99.9")


def test_no_placeholder_of_notebooks_00_to_03_is_a_right_answer():
    """The placeholder a notebook shows (None, and the example in its comment) never passes."""
    assert not exercises.check_cpu_max(0.25, "50000 100000")  # 02's "e.g." comment
    assert not exercises.check_new_namespaces("unshare --uts --net --fork sh", {"pid", "ipc"})
    assert not exercises.check_cpu_share((100, 300), 0.5)
    for key in ("01.3", "03.2", "03.3"):
        assert not exercises.check_prediction(key, None)


def test_cpu_max_refuses_what_the_kernel_refuses():
    for answer in ("250 1000", "25 100", "2500000 10000000", "25000 500", "max 100000"):
        assert not exercises.check_cpu_max(0.25, answer), answer
    assert "Invalid argument" in exercises.check_cpu_max(0.25, "250 1000").message
    assert "period" in exercises.check_cpu_max(0.25, "25 100").message
    assert "no quota" in exercises.check_cpu_max(0.25, "max 100000").message


def test_cpu_max_right_answers_within_the_kernels_bounds():
    for answer in ("25000 100000", "250000 1000000", "1000 4000", "25000"):
        assert exercises.check_cpu_max(0.25, answer), answer


def test_cpu_share_right_and_known_wrong_answers():
    for answer in (0.75, "0.75", "3/4", "75%", " 75 % "):
        assert exercises.check_cpu_share((100, 300), answer), answer
    assert "A's share" in exercises.check_cpu_share((100, 300), 0.25).message
    assert "how many times" in exercises.check_cpu_share((100, 300), 3).message
    assert not exercises.check_cpu_share((100, 300), 0.5)
    assert not exercises.check_cpu_share((100, 300), 1)
    assert "not a fraction" in exercises.check_cpu_share((100, 300), "most").message


def test_predictions_reply_to_each_choice():
    exercises.forget_misses()
    assert exercises.check_prediction("03.2", "a")
    assert exercises.check_prediction("03.2", "(A)")
    wrong = exercises.check_prediction("03.2", "b")
    assert not wrong and "whole files" in wrong.message and "Hint 1" in str(wrong)
    assert not exercises.check_prediction("03.2", "d").hint  # not a choice: no miss counted
    assert exercises.check_prediction("03.3", "c") and exercises.check_prediction("01.3", "b")
    assert exercises.check_prediction("02.4", "c")
    for key, letter in (("03.3", "a"), ("03.3", "b"), ("01.3", "a"), ("01.3", "c"),
                        ("02.4", "a"), ("02.4", "b"), ("03.2", "c")):
        assert not exercises.check_prediction(key, letter), (key, letter)
    exercises.forget_misses()


def test_cgroup_mode_known_wrong_answers():
    host = cgroups.detect()
    for other in {"v1", "v2", "hybrid"} - {host.mode}:
        assert not exercises.check_cgroup_mode(other)
    assert not exercises.check_cgroup_mode("both")


def test_new_namespaces_known_wrong_answers():
    command = "unshare --uts --net --fork sh"
    for answer in ({"uts", "net", "fork"}, {"uts"}, {"uts", "net", "user"}, set()):
        assert not exercises.check_new_namespaces(command, answer), answer
    assert exercises.check_new_namespaces(command, ["UTS", "net"])


def test_a_whiteout_made_by_hand_is_not_a_deletion_through_the_overlay(tmp_path):
    lab = _lab(tmp_path)
    if os.geteuid() != 0:
        import pytest

        pytest.skip("mknod of a whiteout by hand needs root")
    os.mknod(lab / "upper" / "notes.txt", 0o020000, os.makedev(0, 0))
    forged = exercises.check_whiteout(lab, "notes.txt")
    assert not forged and "never used by an overlay mount" in forged.message


def test_whiteout_made_by_a_rootless_overlay():
    """The rootless track's way: the overlay mounted in a user namespace (kernel 5.11+) by an
    unprivileged user (nobody, when the tests run as root); the whiteout belongs to that user."""
    import shutil
    import tempfile

    import pytest

    base = Path(tempfile.mkdtemp(prefix="contained-rootless-"))
    try:
        lab = _lab(base)
        as_user = []
        if os.geteuid() == 0:
            as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            os.chmod(base, 0o755)
            subprocess.run(["chown", "-R", "65534:65534", str(lab)], check=True)
        script = ("mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work,"
                  "userxattr merged && rm merged/notes.txt")  # the namespace unmounts it
        done = subprocess.run([*as_user, "unshare", "--user", "--map-root-user", "--mount", "sh",
                               "-c", script], cwd=lab, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"no overlay in a user namespace here: {done.stderr.strip()}")
        assert exercises.check_whiteout(lab, "notes.txt")
        owner = (lab / "upper" / "notes.txt").stat().st_uid
        assert owner == (65534 if as_user else os.getuid())
    finally:
        # the overlay leaves work/work mode 000: a normal user must open it up to remove it
        subprocess.run(["chmod", "-R", "u+rwX", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_uts_command_known_wrong_answers_are_refused_before_running():
    for answer in ("hostname lab", "echo lab", "unshare --net sh -c 'hostname lab; hostname'",
                   "unshare --uts"):
        assert not exercises.check_uts_command(answer), answer


def test_zombies_prediction():
    assert not exercises.check_zombies(None).answered
    assert exercises.check_zombies((5, 0))
    assert exercises.check_zombies(["5", "0"])
    assert "wait" in exercises.check_zombies((0, 0)).message
    assert "waitpid" in exercises.check_zombies((5, 5)).message
    assert "not two numbers" in exercises.check_zombies("five").message


def test_shared_layer_right_and_wrong(tmp_path):
    import json

    layout = tmp_path / "multi"
    base = tar_layer(("base.txt", "file", b"the base\n"))
    build.build_image(layout, [base, tar_layer(("a", "file", b"a\n"))], "latest",
                      architecture="amd64")
    assert "holds 1 image" in exercises.check_shared_layer(layout, "sha256:" + "0" * 64).message
    build.build_image(layout, [base, tar_layer(("b", "file", b"b\n"))], "other",
                      architecture="amd64")
    index = json.loads((layout / "index.json").read_text())
    manifests = [json.loads((layout / "blobs" / "sha256" / m["digest"][7:]).read_bytes())
                 for m in index["manifests"]]
    shared = manifests[0]["layers"][0]["digest"]
    assert exercises.check_shared_layer(layout, shared)
    assert exercises.check_shared_layer(layout, shared[7:])
    own = exercises.check_shared_layer(layout, manifests[0]["layers"][1]["digest"])
    assert not own and "one image only" in own.message
    assert not exercises.check_shared_layer(layout, index["manifests"][0]["digest"])
    assert not exercises.check_shared_layer(layout, shared[:19])


def test_hidden_bytes_counts_what_a_later_layer_deletes(tmp_path):
    from contained import workbook

    layout = tmp_path / "img"
    build.build_image(layout, [
        tar_layer(("app", "dir"), ("app/log", "file", b"x" * 1000), ("app/keep", "file", b"k")),
        tar_layer(("app", "dir"), ("app/.wh.log", "file", b""))], "latest", architecture="amd64")
    assert workbook.hidden_bytes(layout) == {0: 1000, 1: 0}


@needs_root
def test_uts_command_is_really_run_on_the_rootless_track():
    """Unprivileged with user namespaces, the checker runs the answer in a user namespace of
    the learner's own instead of only checking its shape: a wrong name is caught."""
    import sys

    script = ("from contained.workbook import exercises as e\n"
              "print(bool(e.check_uts_command(\"unshare --uts sh -c 'hostname lab; hostname'\")))\n"
              "print(e.check_uts_command(\"unshare --uts sh -c 'hostname other; hostname'\"))\n")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*as_nobody, "unshare", "--user", "--map-root-user", "true"],
                      capture_output=True).returncode != 0:
        import pytest

        pytest.skip("no user namespaces for unprivileged users here")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": os.environ["PATH"], "HOME": "/",
           "PYTHONPATH": ":".join([*site, str(Path(__file__).resolve().parents[1])])}
    done = subprocess.run([*as_nobody, "/usr/bin/python3", "-c", script], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    right, wrong = done.stdout.split("\n", 1)
    assert right == "True"
    assert "printed 'other', not 'lab'" in wrong


def test_cgroup_mode_needs_the_mount_point_as_evidence():
    """Three words can be guessed; the cgroup2 mount point must be read."""
    host = cgroups.detect()
    where = str(host.unified) if host.unified is not None else "none"
    assert exercises.check_cgroup_mode(host.mode, cgroup2_at=where)
    assert exercises.check_cgroup_mode(host.mode, cgroup2_at=where + "/")
    pending = exercises.check_cgroup_mode(host.mode, cgroup2_at=None)
    assert not pending and not pending.answered
    for guess in ("/sys/fs/cgroup/v2", "/cgroup", "none" if where != "none" else "/sys/fs/cgroup"):
        assert not exercises.check_cgroup_mode(host.mode, cgroup2_at=guess), guess
    other = next(m for m in ("v1", "v2", "hybrid") if m != host.mode)
    assert not exercises.check_cgroup_mode(other, cgroup2_at=where)
