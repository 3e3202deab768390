"""The container lifecycle, end to end with real namespaces, mounts and cgroups (root only).

Each test runs busybox (imported offline from the host's busybox-static) in a temporary
CONTAINED_HOME, through the same runner helper process a notebook kernel uses.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import exec_capture, needs_root, run_capture

from contained import procfs
from contained.runtime import cgroups, container, namespaces, spares

pytestmark = needs_root





def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


# ---------------------------------------------------------------------------------------------
# Isolation

def test_hostname_pid_and_network_are_the_containers_own(busybox_home, runner_process):
    result, out, _ = run_capture("busybox", ["sh", "-c", "hostname; echo pid=$$; ps -o pid,comm; "
                                             "ls /sys/class/net"], runner_process,
                                 hostname="inside")
    lines = out.splitlines()
    assert result.status == 0
    assert lines[0] == "inside" != socket.gethostname()
    # sh is PID 2: PID 1 is contained's init, and no host process is visible.
    assert lines[1] == "pid=2"
    assert "contained-init" in out and "pytest" not in out
    assert lines[-1] == "lo"


def test_uname_matches_the_host_kernel(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["uname", "-r"], runner_process)
    assert out.strip() == os.uname().release


def test_namespaces_differ_from_the_host(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["sh", "-c", "for n in mnt uts ipc net pid cgroup; do "
                                        "readlink /proc/self/ns/$n; done"], runner_process)
    host = namespaces.namespaces_of("self")
    inside = out.split()
    assert len(inside) == 6
    for label in inside:
        kind = {"mnt": "mount"}.get(label.split(":")[0], label.split(":")[0])
        assert label != host[kind].label


def test_no_mount_is_visible_on_the_host(busybox_home, runner_process):
    before = host_mounts()
    result, out, _ = run_capture("busybox", ["sh", "-c", "grep -c . /proc/mounts"],
                                 runner_process, volumes=[f"{busybox_home}:/mnt/home:ro"])
    assert result.status == 0 and int(out) > 5
    assert host_mounts() == before
    assert "overlay" not in "".join(
        line for line in host_mounts().splitlines() if str(busybox_home) in line)


def test_dev_has_the_usual_devices_and_null_is_a_device(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["sh", "-c", "echo x > /dev/null; ls /dev; "
                                        "stat -c %F /dev/null"], runner_process)
    names = out.split()
    for device in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert device in names
    assert "character special file" in out


def test_proc_secrets_are_masked_and_proc_sys_is_readonly(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["sh", "-c", "wc -c < /proc/timer_list; "
                                        "echo 1 > /proc/sys/kernel/domainname && echo wrote"],
                            runner_process)
    assert out.splitlines()[0].strip() == "0"
    assert "wrote" not in out


def test_host_environment_does_not_leak(busybox_home, runner_process, monkeypatch):
    monkeypatch.setenv("HOST_SECRET", "leak")
    _, out, _ = run_capture("busybox", ["env"], runner_process, env=["GREETING=hi"])
    assert "HOST_SECRET" not in out
    assert "GREETING=hi" in out
    assert "PATH=" in out


def test_capabilities_are_dockers_default_and_no_new_privs(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)",
                                        "/proc/self/status"], runner_process)
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert fields["CapEff"] == fields["CapBnd"] == "00000000a80425fb"
    assert fields["NoNewPrivs"] == "1"


def test_user_and_workdir_options(busybox_home, runner_process):
    _, out, _ = run_capture("busybox", ["sh", "-c", "id -u; pwd"], runner_process,
                            user="nobody", workdir="/tmp/work")
    uid, cwd = out.split()
    assert uid != "0" and cwd == "/tmp/work"


def test_exit_status_and_signals_are_reported_like_a_shell(busybox_home, runner_process):
    assert run_capture("busybox", ["sh", "-c", "exit 3"], runner_process)[0].status == 3
    assert run_capture("busybox", ["sh", "-c", "kill -9 $$"], runner_process)[0].status == 137


def test_unknown_command_is_exit_127_with_one_line(busybox_home, runner_process):
    with pytest.raises(container.CommandFailed) as caught:
        run_capture("busybox", ["no-such-command"], runner_process)
    assert caught.value.exit_status == 127
    assert "no-such-command" in str(caught.value) and "\n" not in str(caught.value)


def test_chroot_mode_runs_the_tutorials_way(busybox_home, runner_process):
    result, out, _ = run_capture("busybox", ["sh", "-c", "cat /etc/hostname"], runner_process,
                                 chroot=True, hostname="tutorial")
    assert result.status == 0 and out.strip() == "tutorial"


# ---------------------------------------------------------------------------------------------
# Limits

def test_memory_limit_oom_kill_is_reported(busybox_home, runner_process):
    result, _, _ = run_capture(
        "busybox", ["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo $x | wc -c"],
        runner_process, memory="16M")
    assert result.status == 137
    assert result.oom
    assert result.message == "killed: out of memory, limit 16M"


def test_pids_limit_makes_fork_fail(busybox_home, runner_process):
    result, out, err = run_capture(
        "busybox", ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait"],
        runner_process, pids_limit=5)
    assert "can't fork" in err or "Resource temporarily unavailable" in err


def _host_pids_max(container_id: str) -> str:
    """The container's pids.max as the host sees it (the container has no cgroupfs)."""
    group = container.cgroup_of(container_id)
    return (group._dir("pids") / "pids.max").read_text().strip()


def _throwaway_pids_max(runner_process, **options) -> tuple[str, str]:
    """(pids.max, the cgroup's name) of a running throwaway container."""
    with open(os.devnull, "r+b") as null:
        execution = container.start("busybox", ["sleep", "30"], stdin=null, stdout=null,
                                    stderr=null, runner_=runner_process, **options)
        try:
            execution.wait_started()
            deadline = time.monotonic() + 5
            while container.cgroup_of(execution.spec.id) is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)  # the runner records the container just after it starts
            recorded = container.state.read(execution.spec.id) or {}
            return _host_pids_max(execution.spec.id), recorded.get("cgroup", "")
        finally:
            execution.kill()
            execution.wait(settle=True)


def test_a_default_container_may_run_at_most_2048_processes(busybox_home, runner_process):
    # A spare (made before it knew its limits) and a cgroup made for the container both get it.
    names = []
    for _ in range(10):
        limit, name = _throwaway_pids_max(runner_process)
        assert limit == "2048"
        names.append(name)
        if name.startswith("spare-"):
            break
        time.sleep(0.3)  # give the runner time to hand a spare over
    assert any(name.startswith("spare-") for name in names), names
    created = container.create("busybox", name="pids-default", runner_=runner_process)
    try:
        assert _host_pids_max(created.id) == "2048"
    finally:
        container.remove(created.id, force=True)


def test_pids_limit_minus_one_lifts_the_default(busybox_home, runner_process):
    assert container.build_spec("busybox", ["true"], pids_limit=-1).pids_limit is None
    assert _throwaway_pids_max(runner_process, pids_limit=-1)[0] == "max"
    created = container.create("busybox", name="pids-unlimited", pids_limit="-1",
                               runner_=runner_process)
    try:
        assert _host_pids_max(created.id) == "max"
    finally:
        container.remove(created.id, force=True)


def test_explain_and_dry_run_show_the_default_pids_limit(busybox_home, runner_process):
    spec = container.build_spec("busybox", ["true"])
    assert any(step.startswith("echo 2048 > ") and step.split("  #")[0].endswith("/pids.max")
               for step in container.dry_run(spec))
    read, write = os.pipe()
    try:
        run_capture("busybox", ["true"], runner_process, explain=write)
    finally:
        os.close(write)
    with os.fdopen(read) as explained:
        assert re.search(r"echo 2048 > \S+/pids\.max", explained.read())


def test_rm_f_during_exec_ends_it_in_one_line_without_sending_to_gc(busybox_home,
                                                                     runner_process):
    created = container.create("busybox", name="removed-under-exec", runner_=runner_process)
    with open(os.devnull, "r+b") as null:
        execution = container.start_exec(created.name, ["sleep", "30"], stdin=null,
                                         stdout=null, stderr=null)
        execution.wait_started()
        container.remove(created.name, force=True)
        result = execution.wait()
    assert result.status == 137
    assert "gc" not in result.message and "\n" not in result.message
    assert "removed-under-exec" in result.message


def test_cpu_quota_throttles(busybox_home, runner_process):
    # A 1-second busy loop under a 0.2-CPU quota gets about 0.2 s of CPU time.
    result, out, _ = run_capture(
        "busybox", ["sh", "-c", "timeout 1 sh -c 'while :; do :; done'; "
                                "cat /proc/self/stat >/dev/null; times"], runner_process,
        cpus="0.2")
    children_user = out.split()[-2] if out.split() else ""
    minutes, seconds = children_user.rstrip("s").split("m")
    assert float(minutes) * 60 + float(seconds) < 0.45


# ---------------------------------------------------------------------------------------------
# Lifecycle: named containers, exec, stop, rm, gc

def test_named_container_keeps_files_and_processes_across_exec(busybox_home, runner_process):
    name = "persist"
    result = container.run("busybox", ["sh", "-c", "echo kept > /tmp/state"], name=name,
                           runner_=runner_process, hostname="named")
    try:
        assert result.status == 0
        exec_result, out = exec_capture(name, ["sh", "-c", "cat /tmp/state; hostname; "
                                               "sleep 300 >/dev/null 2>&1 & echo started"],
                                        runner_process)
        assert out.split() == ["kept", "named", "started"]
        _, out = exec_capture(name, ["ps", "-o", "comm"], runner_process)
        assert "sleep" in out
        listed = {c.name: c for c in container.containers()}
        assert listed[name].running
        with pytest.raises(container.NameInUse):
            container.run("busybox", ["true"], name=name, runner_=runner_process)
        with pytest.raises(container.ContainerRunning):
            container.remove(name)
    finally:
        container.stop(name, timeout=2)
    assert not container.get(name).running
    with pytest.raises(container.ContainerNotRunning):
        container.exec_(name, ["true"], runner_=runner_process)
    container.remove(name)
    with pytest.raises(container.ContainerNotFound):
        container.get(name)


def test_bad_options_are_one_line_errors(busybox_home):
    cases = [
        dict(memory="lots"), dict(cpus="-1"), dict(pids_limit=0),
        dict(volumes=["relative:/x"]), dict(net="wifi"), dict(workdir="relative"),
    ]
    for options in cases:
        with pytest.raises(container.ContainedError) as caught:
            container.build_spec("busybox", ["true"], **options)
        assert "\n" not in str(caught.value), options
    with pytest.raises(container.ContainedError) as caught:
        container.build_spec("no-such-image", ["true"])
    assert "pull" in str(caught.value) or "import" in str(caught.value)


def test_an_empty_name_and_absurd_limits_are_refused_in_one_line(busybox_home):
    cases = [dict(name=""), dict(memory="99999999999999999999999g"),
             dict(cpus=str(os.cpu_count() + 1)), dict(cpus="0"), dict(pids_limit=-2),
             dict(pids_limit="-1.5"), dict(pids_limit=1 << 40)]
    for options in cases:
        with pytest.raises(container.ContainedError) as caught:
            container.build_spec("busybox", ["true"], **options)
        assert "\n" not in str(caught.value), options
    with pytest.raises(container.BadOption, match="empty container name"):
        container.build_spec("busybox", ["true"], name="")
    with pytest.raises(container.ContainedError) as caught:
        container.build_spec("no-such-image", ["true"])
    assert "pull" in str(caught.value) or "import" in str(caught.value)


def test_explain_prints_the_shell_steps_as_they_run(busybox_home, runner_process):
    read, write = os.pipe()
    try:
        run_capture("busybox", ["true"], runner_process, memory="32M",
                    explain=write)
    finally:
        os.close(write)
    with os.fdopen(read) as explained:
        text = explained.read()
    for expected in ("mount -t overlay overlay -o lowerdir=", "unshare --pid --fork --mount",
                     "pivot_root . .", "33554432 >", "mount -t proc"):
        assert expected in text


def test_dry_run_lists_the_same_steps_without_running(busybox_home):
    spec = container.build_spec("busybox", ["true"], memory="32M")
    steps = container.dry_run(spec)
    assert any("pivot_root" in s for s in steps)
    assert not Path(spec.directory).exists()


def test_interrupt_kills_the_container_within_a_second(busybox_home, runner_process):
    """A client that closes the request (a killed kernel, Ctrl-C) takes the container along."""
    spec = container.build_spec("busybox", ["sleep", "300"])
    code = (
        "import sys; sys.path[:0] = " + repr(sys.path) + "\n"
        "from contained.runtime import container, spec as s\n"
        f"sp = s.ContainerSpec.from_json({spec.to_json()!r})\n"
        "container.start_spec(sp).wait()\n")
    others = set(_sleepers())  # an earlier test's container may still be going away
    client = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _sleepers(others):
        time.sleep(0.05)
    assert _sleepers(others), "the container never started"
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and _sleepers(others):
        time.sleep(0.05)
    assert not _sleepers(others)
    # Its runner tears the container down (or, had it died too, gc would): nothing stays.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(spec.directory).exists():
        container.gc()
        time.sleep(0.05)
    assert not Path(spec.directory).exists()


def test_a_root_runner_supervises_its_spares_pid_one_itself(busybox_home, runner_process):
    """Issue 15: no Python process per container stands beside a spare's PID 1; the runner
    helper (the server) records the container and is PID 1's parent."""
    with open(os.devnull) as null:
        container.run("busybox", ["true"], stdin=null, stdout=null, runner_=runner_process,
                      settle=True)  # the helper hands over a spare meanwhile
        execution = container.start("busybox", ["sleep", "300"], stdin=null, stdout=null,
                                    runner_=runner_process)
        try:
            execution.wait_started()
            record = container.state.read(execution.spec.id)
            server = runner_process._process.pid
            assert record["runner_pid"] == server
            assert _parent_of(record["init_pid"]) == server
            assert record["cgroup"].startswith(f"spare-{server}-")
        finally:
            execution.kill()
            assert execution.wait(settle=True).status == 137
    assert not Path(execution.spec.directory).exists()


def test_a_killed_client_leaves_its_runner_to_tear_down_and_exit(busybox_home):
    """A kernel SIGKILLed while its container runs on a spare: the server notices the end of
    the request, finishes that container (its directory, its cgroup) and exits — no gc."""
    code = (
        "import sys; sys.path[:0] = " + repr(sys.path) + "\n"
        "from contained.runtime import container\n"
        "runner = container.Runner()\n"
        "container.run('busybox', ['true'], runner_=runner, settle=True)\n"  # a spare is ready
        "e = container.start('busybox', ['sleep', '300'], runner_=runner)\n"
        "e.wait_started()\n"
        "print(runner._process.pid, e.spec.directory, flush=True)\n"
        "e.wait()\n")
    others = set(_sleepers())
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server, directory = client.stdout.readline().split()
        record = container.state.read(Path(directory).name, directory)
        assert record["cgroup"].startswith(f"spare-{server}-")
        group = cgroups.Cgroup.open(record["cgroup"])
        assert group is not None
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (Path(directory).exists() or _sleepers(others)
                                           or procfs.running(int(server))):
        time.sleep(0.05)
    assert not _sleepers(others)
    assert not Path(directory).exists()
    assert not any(path.exists() for path in group.paths)
    assert not procfs.running(int(server))


def test_a_container_that_wrote_many_files_is_removed_beside_the_server(
        busybox_home, runner_process):
    """Its rm -rf runs in a child of the server (over `INLINE_REMOVAL_ENTRIES` files), which
    still says Cleaned: the directory and the group are gone once `settle` returns."""
    many = spares.INLINE_REMOVAL_ENTRIES + 50
    with open(os.devnull) as null:
        container.run("busybox", ["true"], stdin=null, stdout=null, runner_=runner_process,
                      settle=True)  # the helper hands over a spare meanwhile
        execution = container.start(
            "busybox", ["sh", "-c", f"mkdir /many && cd /many && seq {many} | xargs touch"],
            stdin=null, stdout=null, runner_=runner_process)
        execution.wait_started()
        record = container.state.read(execution.spec.id)
        assert record["runner_pid"] == runner_process._process.pid  # on a spare
        group = cgroups.Cgroup.open(record["cgroup"])
        assert execution.wait(settle=True).status == 0
    assert not Path(execution.spec.directory).exists()
    assert not any(path.exists() for path in group.paths)


def test_a_spare_that_cannot_be_made_leaves_nothing_open_or_made(busybox_home, monkeypatch):
    """The server makes spares in its own process and lives on after a failure: no group,
    no directory, no descriptor of the failed spare may stay."""
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spares.steps, "staging_directory", full_disk)  # its group is made
    before = set(os.listdir("/proc/self/fd"))
    left, right = socket.socketpair()
    with pytest.raises(OSError, match="No space left"):
        spares.Prepared.make(right)
    left.close()
    right.close()
    assert set(os.listdir("/proc/self/fd")) == before
    directory = container.state.containers_dir()  # the module's runner has a spare there
    assert not directory.exists() or not [
        p for p in directory.iterdir() if p.name.startswith(f".spare-{os.getpid()}-")]
    made = [entry.name for parent in cgroups.parent_paths() if parent.exists()
            for entry in parent.iterdir() if entry.name.startswith(f"spare-{os.getpid()}-")]
    assert made == []


def test_counting_a_tree_stops_at_the_limit_and_follows_no_link(tmp_path):
    for i in range(3):
        (tmp_path / "a" / str(i)).mkdir(parents=True)  # a, a/0, a/1, a/2: 4 entries
    (tmp_path / "link").symlink_to("/usr")  # 5: counted, not entered
    assert spares._has_at_most(tmp_path, 5)
    assert not spares._has_at_most(tmp_path, 4)
    assert spares._has_at_most(tmp_path / "absent", 0)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _sleepers(others: set[int] = frozenset()) -> list[int]:
    """Every ``sleep 300`` running on the machine, but `others` (those seen before a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in others:
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\x00300\x00":
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_gc_cleans_what_a_killed_runner_left(busybox_home):
    spec = container.build_spec("busybox", ["true"])
    container._reserve(spec)
    # A runner that died after creating the directories: state, dirs, no process.
    for sub in ("upper", "work", "root"):
        (Path(spec.directory) / sub).mkdir(parents=True)
    state = Path(spec.directory) / "state.json"
    data = state.read_text().replace(f'"owner_pid": {os.getpid()}', '"owner_pid": 999999999')
    state.write_text(data)
    assert spec.name in container.gc()
    assert not Path(spec.directory).exists()
    assert container.gc() == []


def test_gc_leaves_a_directory_being_set_up_but_not_an_abandoned_one(busybox_home,
                                                                      monkeypatch):
    """A throwaway container's runner records it a moment after its PID 1 makes the
    directory: gc must not take that moment for a crash — but one left for a while is one."""
    monkeypatch.setattr(container, "SETUP_GRACE", 0.5)
    abandoned = container.state.containers_dir() / ("b" * 64)
    (abandoned / "upper").mkdir(parents=True)
    time.sleep(0.6)
    fresh = container.state.containers_dir() / ("a" * 64)
    (fresh / "upper").mkdir(parents=True)
    container.gc()
    assert fresh.is_dir() and not abandoned.exists()
    shutil.rmtree(fresh)


def test_gc_removes_the_directory_a_dead_spare_made_ahead(busybox_home):
    dead = container.state.containers_dir() / ".spare-999999999-1"
    (dead / "upper").mkdir(parents=True)
    container.gc()
    assert not dead.exists()


def test_a_container_is_on_record_once_it_has_started(busybox_home, runner_process):
    with open(os.devnull) as null:
        execution = container.start("busybox", ["sleep", "300"], stdin=null, stdout=null,
                                    runner_=runner_process)
        execution.wait_started()
        try:
            record = container.state.read(execution.spec.id)
            assert record["owner_pid"] == os.getpid()
            assert procfs.alive(record["runner_pid"], record["runner_start_time"])
            assert procfs.alive(record["init_pid"], record["init_start_time"])
            listed = {c.id: c for c in container.containers()}
            assert listed[execution.spec.id].running
        finally:
            execution.kill()
            assert execution.wait(settle=True).status == 137
    assert not Path(execution.spec.directory).exists()


def test_a_pid_one_killed_from_outside_is_reported_by_its_runner(busybox_home, runner_process):
    """PID 1 answers the caller itself; SIGKILLed, it cannot, and its runner does instead."""
    others = set(_sleepers())
    with open(os.devnull) as null:
        execution = container.start("busybox", ["sleep", "300"], stdin=null, stdout=null,
                                    runner_=runner_process)
        execution.wait_started()
        init_pid = container.state.read(execution.spec.id)["init_pid"]
        os.kill(init_pid, signal.SIGKILL)
        result = execution.wait(settle=True)
    assert (result.status, result.oom) == (137, False)
    assert not Path(execution.spec.directory).exists()
    assert not _sleepers(others)


# ---------------------------------------------------------------------------------------------
# An image that points its files at the host

def symlink_layer(links: dict[str, str]) -> bytes:
    """An uncompressed layer holding only symlinks (name → target)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def test_symlinks_in_an_image_cannot_reach_the_host(busybox_home, runner_process, tmp_path):
    """/etc/hosts, /etc/hostname, WorkingDir and a volume's mount point, all symlinks to host
    paths: everything the runtime writes or mounts lands inside the container's root."""
    from contained.images import build
    from contained.images.busybox import IMAGE_CONFIG, busybox_rootfs
    from contained.images.store import Store

    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "hosts").write_text("host's file\n")
    busybox_rootfs(tmp_path / "rootfs")
    # Replace /etc/hosts and /etc/hostname rather than adding beside them: drop them first.
    for name in ("hosts", "hostname"):
        (tmp_path / "rootfs" / "etc" / name).unlink(missing_ok=True)
    links = symlink_layer({
        "etc/hosts": f"{sentinel}/hosts",
        "etc/hostname": f"../../../../../../../..{sentinel}/hostname",
        "work": f"{sentinel}/workdir",
        "mnt/data": f"{sentinel}/mountpoint",
    })
    config = dict(IMAGE_CONFIG, WorkingDir="/work/inside")
    Store(busybox_home).add_image([build.tar_directory(tmp_path / "rootfs"), links],
                                  "evil:latest", config)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "shared").write_text("from the host\n")
    before = sorted(p.name for p in sentinel.iterdir())
    result, out, err = run_capture(
        "evil", ["sh", "-c", "pwd; cat /etc/hosts; cat /mnt/data/shared"], runner_process,
        hostname="evil", volumes=[f"{volume}:/mnt/data:ro"])
    assert result.status == 0, err
    # The WorkingDir symlink was followed, but inside the container's root: the directory was
    # made there (the host's sentinel directory stays as it was, below).
    assert out.splitlines()[0] == f"{sentinel}/workdir/inside"
    assert "127.0.0.1\tlocalhost" in out and "from the host" in out
    assert (sentinel / "hosts").read_text() == "host's file\n"
    assert sorted(p.name for p in sentinel.iterdir()) == before


@pytest.mark.skipif(not Path("/dev/fuse").exists() or not shutil.which("fuse-overlayfs"),
                    reason="needs /dev/fuse and fuse-overlayfs (apt-get install fuse-overlayfs)")
def test_fuse_overlayfs_root_for_kernels_without_overlay_in_user_namespaces(
        busybox_home, monkeypatch):
    """The rootless fallback, forced: the root is a fuse-overlayfs mount, and its daemon ends
    with the container (it runs in the container's PID namespace)."""
    monkeypatch.setenv("CONTAINED_OVERLAY", "fuse")
    result, out, err = run_capture(
        "busybox", ["sh", "-c", "grep ' / ' /proc/mounts; echo written > /tmp/f; cat /tmp/f"],
        container.Runner(in_process=True))
    assert result.status == 0, err
    assert "fuse" in out.splitlines()[0] and out.splitlines()[-1] == "written"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _fuse_daemons(busybox_home):
        time.sleep(0.05)
    assert not _fuse_daemons(busybox_home)


def _fuse_daemons(home: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"fuse-overlayfs") and str(home).encode() in cmdline:
            found.append(entry.name)
    return found


def test_dry_run_of_a_bridged_container_shows_the_network_steps(busybox_home):
    spec = container.build_spec("busybox", ["true"], net="bridge", publish=["8080:80"])
    steps = container.dry_run(spec)
    text = "\n".join(steps)
    assert "type veth peer name eth0" in text and "netns PID" in text
    assert text.index("unshare --pid") < text.index("type veth") < text.index("pivot_root")
    assert "dport 8080 dnat to" in text
    assert not (busybox_home / "network" / "contained0.json").exists()  # nothing leased


def test_gc_removes_layer_directories_only_when_no_image_and_no_container_uses_them(
        busybox_home, runner_process):
    """`rmi` keeps unpacked layers (a container may run on them); `gc` removes those no image
    and no recorded container uses, as the store's docstring promises."""
    from contained.images.store import Store

    store = Store(busybox_home)
    orphan = store.layer_cache / "sha256" / ("e" * 64)
    orphan.mkdir(parents=True)
    (orphan / "f").write_text("x")
    kept = container.create("busybox", name="layers-kept", runner_=runner_process)
    try:
        in_use = [Path(p) for p in kept.spec.lowers]
        store.remove("busybox")  # the running container's layers are now no image's
        container.gc()
        assert not orphan.exists()
        assert all(path.is_dir() for path in in_use)
    finally:
        container.remove("layers-kept", force=True)
        from contained.images import busybox as host_busybox

        host_busybox.import_busybox(store)  # the module's other tests use it
    container.gc()
    assert all(path.is_dir() for path in in_use)  # the image is back: its layers are used
