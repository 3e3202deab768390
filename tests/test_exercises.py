"""Exercise checkers (contained/workbook/exercises.py) with right and wrong answers, on real files,
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
    assert "whole number" in exercises.check_memory_max("32M", "32M").message
    assert not exercises.check_memory_max("32M", 1)


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


def test_boundary():
    assert exercises.check_boundary("pivot_root")
    assert exercises.check_boundary("pivot root")
    assert "climb out" in exercises.check_boundary("chroot").message
    assert not exercises.check_boundary("docker")


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

    monkeypatch.setattr(exercises, "CHECKED_FILE_LIMIT", 64 << 10)
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
