"""The root filesystem as an attacker sees it: host devices, symlinked special directories,
volume destinations, nested mounts under read-only volumes (root only, real containers).

Each test runs busybox (imported offline from the host's busybox-static) in a temporary
CONTAINED_HOME, through the same runner helper process a notebook kernel uses.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root

from contained import syscalls
from contained.errors import ContainedError
from contained.runtime import container
from contained.runtime.container import BadOption, Runner

pytestmark = needs_root

SECRET = b"host-secret-on-a-loop-device"





def run_capture(image, command, runner_process, **options):
    """Run a throwaway container, returning (result, stdout and stderr together)."""
    read, write = os.pipe()
    try:
        with open(os.devnull) as null:
            result = container.run(image, command, stdin=null, stdout=write, stderr=write,
                                   runner_=runner_process, **options)
    finally:
        os.close(write)
    with os.fdopen(read) as out:
        return result, out.read()


def run_in_place(*args, **options):
    """Built in place, never by a spare (explained runs never take one). A spare's mount
    namespace is copied when it gets ready: it would not see a mount the test made since."""
    with open(os.devnull, "w") as explain:
        return run_capture(*args, explain=explain, **options)


# ---------------------------------------------------------------------------------------------
# Devices: container root can open none but the standard ones


@pytest.fixture
def loop_device(tmp_path):
    """A free loop device over a temp file that holds SECRET; detached at the end."""
    if not shutil.which("losetup"):
        pytest.skip("needs losetup (apt-get install mount)")
    backing = tmp_path / "disk.img"
    backing.write_bytes(SECRET + bytes(1 << 20))
    done = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"no free loop device: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.mark.parametrize("where", ["/tmp", "/dev", "/dev/shm", "/mnt/volume"])
def test_container_root_cannot_read_or_write_a_host_block_device(
        busybox_home, runner_process, loop_device, tmp_path, where):
    """mknod of the host's loop device anywhere writable, then dd: nothing is read or written."""
    device, backing = loop_device
    rdev = os.stat(device).st_rdev
    volume = tmp_path / "volume"
    volume.mkdir()
    node = f"{where}/hd"
    script = (f"mknod {node} b {os.major(rdev)} {os.minor(rdev)}; "
              f"dd if={node} bs=64 count=1; printf OVERWRITTEN | dd of={node} conv=notrunc")
    _, out = run_capture("busybox", ["sh", "-c", script], runner_process,
                         volumes=[f"{volume}:/mnt/volume"])
    assert SECRET.decode() not in out
    assert backing.read_bytes().startswith(SECRET)


def test_container_root_cannot_read_the_kernel_log_through_mknod(busybox_home, runner_process):
    _, out = run_capture("busybox", ["sh", "-c", "mknod /tmp/kmsg c 1 11; "
                                     "dd if=/tmp/kmsg bs=8192 count=1 2>/dev/null | wc -c"],
                         runner_process)
    assert out.split()[-1] == "0"


@pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="needs the host's /dev/fuse")
def test_container_root_cannot_open_a_host_character_device_it_made(busybox_home,
                                                                     runner_process):
    """/dev/fuse (c 10:229) opens without any capability: only the device rules and nodev
    stop it."""
    _, out = run_capture("busybox", ["sh", "-c", "mknod /tmp/fuse c 10 229 && "
                                     "exec 3<>/tmp/fuse && echo opened"], runner_process)
    assert "opened" not in out, out


def test_the_standard_devices_keep_working(busybox_home, runner_process):
    script = ("echo x > /dev/null && head -c1 /dev/urandom | wc -c && head -c1 /dev/random | "
              "wc -c && head -c4 /dev/zero | wc -c && exec 3<>/dev/ptmx && echo ptmx-opened; "
              "echo x 2>&1 > /dev/full || echo full-refused")
    result, out = run_capture("busybox", ["sh", "-c", script], runner_process)
    assert out.split()[:4] == ["1", "1", "4", "ptmx-opened"], out
    # /dev/full is open and full (ENOSPC), not a device the cgroup refuses (EPERM)
    assert "full-refused" in out and "space" in out, out


@pytest.mark.parametrize("path", ["spare", "in place"])
def test_every_writable_mount_in_the_container_is_nodev(busybox_home, runner_process, tmp_path,
                                                       path):
    """The layer that works everywhere (cgroup v2, rootless): no writable mount honours device
    nodes, except devpts and the standard device files bound from the host."""
    run = run_in_place if path == "in place" else run_capture
    result, out = run("busybox", ["cat", "/proc/self/mountinfo"], runner_process,
                      volumes=[f"{tmp_path}:/mnt/volume"])
    assert result.status == 0, out
    # the host's own device files, bound in (at /dev/null..., and over masked /proc files)
    devices = {f"/{name}" for name in ("null", "zero", "full", "random", "urandom", "tty")}
    offenders = []
    for line in out.splitlines():
        fields, _, after = line.partition(" - ")
        source, options = fields.split()[3], fields.split()[5].split(",")
        fstype = after.split()[0]
        if "rw" in options and "nodev" not in options and fstype != "devpts" \
                and source not in devices:
            offenders.append(line)
    assert not offenders
    assert any(line.split()[4] == "/mnt/volume" for line in out.splitlines())


def test_v1_device_rules_deny_all_but_the_standard_devices():
    """Part of making any group (a spare's too): deny all, then allow runc's list."""
    from contained.runtime import cgroups
    from contained.runtime.plan import run_steps

    host = cgroups.detect()
    if "devices" not in host.v1_mounts:
        pytest.skip("this host has no v1 devices controller (pure cgroup v2 relies on nodev)")
    group, steps = cgroups.Cgroup.plan(f"devices-test-{os.getpid()}", cgroups.Limits(), host)
    run_steps(steps)
    try:
        rules = (group.dirs["devices"] / "devices.list").read_text().splitlines()
    finally:
        group.remove()
    assert "a *:* rwm" not in rules
    for rule in ("c 1:3 rwm", "c 1:9 rwm", "c 5:2 rwm", "c 136:* rwm", "b *:* m", "c *:* m"):
        assert rule in rules
    assert not any(rule.startswith("b") and rule != "b *:* m" for rule in rules)


def test_explain_shows_the_device_rules_and_the_nodev_remounts(busybox_home, runner_process,
                                                                 tmp_path):
    from contained.runtime import cgroups

    explained = tmp_path / "explained"
    with open(explained, "w") as sink:
        run_capture("busybox", ["true"], runner_process, explain=sink,
                    volumes=[f"{tmp_path}:/mnt/volume"])
    text = explained.read_text()
    assert "mount -o remount,bind,nodev" in text
    if "devices" in cgroups.detect().v1_mounts:
        assert "echo a > " in text and "devices.deny" in text
        assert 'echo "c 1:3 rwm" > ' in text


# ---------------------------------------------------------------------------------------------
# Images whose special directories are symlinks


@pytest.fixture(scope="module")
def base_rootfs(tmp_path_factory):
    from contained.images.busybox import busybox_rootfs

    return busybox_rootfs(tmp_path_factory.mktemp("base") / "rootfs")


def _image_with_link(home: Path, base: Path, work: Path, name: str, link: str,
                     target: str) -> None:
    """busybox with `link` (a path in the image) replaced by a symlink to `target`."""
    from contained.images import build
    from contained.images.busybox import IMAGE_CONFIG
    from contained.images.store import Store

    rootfs = work / "rootfs"
    shutil.copytree(base, rootfs, symlinks=True)
    path = rootfs / link
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    Store(home).add_image([build.tar_directory(rootfs)], f"{name}:latest", IMAGE_CONFIG)


SPECIAL = ["dev", "dev/pts", "dev/shm", "run", "tmp", "etc"]


@pytest.mark.parametrize("kind", ["absolute", "relative", "dangling", "into /proc"])
@pytest.mark.parametrize("link", SPECIAL)
@pytest.mark.parametrize("path", ["spare", "in place"])
def test_symlinked_special_directories_never_make_the_runtime_write_on_the_host(
        busybox_home, runner_process, base_rootfs, tmp_path, link, kind, path):
    """/dev -> /host/dir (and friends): whatever the runtime creates, writes or mounts stays
    inside the container's root; the run works or fails with one line."""
    sentinel = tmp_path / "sentinel"
    (sentinel / "target").mkdir(parents=True)
    absent = tmp_path / "absent"
    target = {"absolute": f"{sentinel}/target",
              "relative": "../" * (link.count("/") + 12) + f"{sentinel}/target".lstrip("/"),
              "dangling": f"{absent}/target",
              "into /proc": "/proc/sys/kernel"}[kind]
    name = f"evil-{link.replace('/', '-')}-{kind.replace(' /', '-')}"
    _image_with_link(busybox_home, base_rootfs, tmp_path, name, link, target)
    explain = open(os.devnull, "w") if path == "in place" else None  # no spare explains
    try:
        result, out = run_capture(name, ["sh", "-c", "echo x > /dev/null; echo ran"],
                                  runner_process, explain=explain,
                                  volumes=[f"{tmp_path}:/{link}/volume"] if link == "run" else [])
        assert result.status == 0 and out.split()[-1] == "ran", out
    except ContainedError as error:
        assert "\n" not in str(error) and "Errno" not in str(error), str(error)
    finally:
        if explain is not None:
            explain.close()
    assert list((sentinel / "target").iterdir()) == []
    assert not absent.exists()


# ---------------------------------------------------------------------------------------------
# The runtime's /etc files


def _image_with_etc(home: Path, name: str, mode: int, gid: int, mtime: int) -> None:
    """busybox with a top layer that gives /etc its own mode, group and time."""
    import io
    import tarfile

    from contained.images import build
    from contained.images.busybox import IMAGE_CONFIG, busybox_rootfs
    from contained.images.store import Store

    rootfs = busybox_rootfs(home.parent / f"{name}-rootfs")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc")
        info.type, info.mode, info.gid, info.mtime = tarfile.DIRTYPE, mode, gid, mtime
        tar.addfile(info)
    Store(home).add_image([build.tar_directory(rootfs), buffer.getvalue()], f"{name}:latest",
                          IMAGE_CONFIG)


def _on_a_spare(runner_process) -> None:
    """Let the runner hand a spare over before the next run."""
    with open(os.devnull) as null:
        container.run("busybox", ["true"], stdin=null, stdout=null, runner_=runner_process,
                      settle=True)


def test_a_spares_etc_files_are_a_layer_in_memory_not_files_on_disk(busybox_home,
                                                                      runner_process):
    """Issue 15: on a spare, /etc/hostname and /etc/hosts come from a small layer above the
    image's (on the spare's tmpfs), not from a copy-up of /etc into upper on disk, and the
    root's mount point is on that tmpfs too; the merged /etc keeps the image's mode, owner
    and time, and the container may still write the files."""
    _image_with_etc(busybox_home, "etc-attrs", 0o750, 42, 1234567890)
    _on_a_spare(runner_process)
    with open(os.devnull) as null:
        execution = container.start("etc-attrs", ["sleep", "300"], stdin=null, stdout=null,
                                    runner_=runner_process, hostname="box")
        try:
            execution.wait_started()
            assert container.state.read(execution.spec.id)["cgroup"].startswith("spare-")
            # On disk: the record and the writable layer only (the root is mounted on the
            # spare's tmpfs), and nothing written in it yet.
            directory = Path(execution.spec.directory)
            assert sorted(p.name for p in directory.iterdir()) == ["state.json", "upper", "work"]
            assert list((directory / "upper").iterdir()) == []
        finally:
            execution.kill()
            execution.wait(settle=True)
    _on_a_spare(runner_process)
    result, out = run_capture("etc-attrs", [
        "sh", "-c", "stat -c '%a %u %g %Y' /etc; cat /etc/hostname; grep -c box /etc/hosts; "
        "ls /etc | grep -c passwd; echo 10.0.0.9 db >> /etc/hosts && tail -1 /etc/hosts"],
        runner_process, hostname="box")
    assert result.status == 0, out
    assert out.splitlines() == ["750 0 42 1234567890", "box", "1", "1", "10.0.0.9 db"]


def test_built_in_place_or_on_a_spare_etc_reads_the_same(busybox_home, runner_process):
    """The two ways to the same files (explained runs never take a spare)."""
    _image_with_etc(busybox_home, "etc-same", 0o755, 7, 0)
    script = "stat -c '%a %u %g' /etc; cat /etc/hostname /etc/hosts; ls /etc"
    _on_a_spare(runner_process)
    spare = run_capture("etc-same", ["sh", "-c", script], runner_process, hostname="same")
    in_place = run_in_place("etc-same", ["sh", "-c", script], runner_process, hostname="same")
    assert spare[0].status == in_place[0].status == 0
    assert spare[1] == in_place[1] and spare[1].startswith("755 0 7\nsame\n127.0.0.1"), spare


# ---------------------------------------------------------------------------------------------
# Volumes


@pytest.mark.parametrize("destination", ["/", "//", "/proc", "/proc/sys", "/sys/fs/cgroup",
                                         "/dev", "/dev/shm", "/mnt/../proc", "/./sys"])
def test_volume_destinations_docker_refuses_are_refused_with_one_line(tmp_path, destination):
    with pytest.raises(BadOption) as caught:
        container.parse_volume(f"{tmp_path}:{destination}")
    assert "\n" not in str(caught.value) and "destination" in str(caught.value)


@pytest.mark.parametrize("destination", ["/devices", "/mnt/proc", "/system", "/data"])
def test_volume_destinations_that_only_look_like_special_ones_are_accepted(tmp_path,
                                                                            destination):
    assert container.parse_volume(f"{tmp_path}:{destination}")[1] == destination


@pytest.fixture
def volume_with_a_nested_mount(tmp_path):
    """A host directory with a tmpfs mounted inside it (under tmp only; unmounted at the end)."""
    volume = tmp_path / "volume"
    (volume / "nested").mkdir(parents=True)
    syscalls.mount("tmpfs", str(volume / "nested"), "tmpfs", 0, "size=1m")
    try:
        yield volume
    finally:
        syscalls.umount(str(volume / "nested"), syscalls.MNT_DETACH)


def test_a_read_only_volume_is_read_only_all_the_way_down(busybox_home, runner_process,
                                                           volume_with_a_nested_mount):
    volume = volume_with_a_nested_mount
    result, out = run_in_place(
        "busybox", ["sh", "-c", "grep -c /data/nested /proc/mounts; touch /data/top || "
                    "echo top-refused; touch /data/nested/inner || echo nested-refused"],
        runner_process, volumes=[f"{volume}:/data:ro"])
    assert out.split()[0] == "1", out  # the nested mount is there
    assert "top-refused" in out and "nested-refused" in out, out
    assert not (volume / "top").exists() and not (volume / "nested" / "inner").exists()


def test_a_writable_volume_keeps_its_nested_mounts_writable(busybox_home, runner_process,
                                                             volume_with_a_nested_mount):
    volume = volume_with_a_nested_mount
    result, out = run_in_place("busybox", ["sh", "-c", "touch /data/nested/inner && echo ok"],
                               runner_process, volumes=[f"{volume}:/data"])
    assert out.split()[-1] == "ok", out
    assert (volume / "nested" / "inner").exists()


@pytest.mark.parametrize("target", ["/", "/proc", "/sys", "/dev"])
def test_a_volume_led_by_an_image_symlink_onto_a_special_place_is_refused(
        busybox_home, runner_process, base_rootfs, tmp_path, target):
    """`-v HOST:/data` where the image has ``data -> /proc``: the destination as resolved in
    the image is checked too, at mount time, with one line."""
    name = f"evil-volume-{target.strip('/') or 'root'}"
    _image_with_link(busybox_home, base_rootfs, tmp_path, name, "data", target)
    volume = tmp_path / "volume"
    volume.mkdir()
    with pytest.raises(ContainedError) as caught:
        run_capture(name, ["true"], runner_process, volumes=[f"{volume}:/data"])
    assert "volume destination /data leads to" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_without_mount_setattr_a_read_only_volume_holding_mounts_is_refused(
        busybox_home, volume_with_a_nested_mount, monkeypatch):
    """Kernels before 5.12: a plain remount would leave the nested mount writable, so the run
    stops with one line instead."""
    import errno

    def missing(*args, **kwargs):
        raise OSError(errno.ENOSYS, "mount_setattr: Function not implemented")

    monkeypatch.setattr(syscalls, "mount_setattr", missing)
    with pytest.raises(ContainedError) as caught:
        run_in_place("busybox", ["true"], Runner(in_process=True),
                     volumes=[f"{volume_with_a_nested_mount}:/data:ro"])
    assert "read-only all the way down" in str(caught.value) and "5.12" in str(caught.value)
    # a volume without mounts inside is still made read-only by the remount
    result, out = run_in_place("busybox", ["sh", "-c", "touch /data/x || echo refused"],
                               Runner(in_process=True),
                               volumes=[f"{volume_with_a_nested_mount}/nested:/data:ro"])
    assert "refused" in out, out
