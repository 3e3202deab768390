"""A spare's PID 1 is the tiny C init from birth, and gives the container the Python one gave.

`contained.runtime.spare_init`: the runner helper (a kernel's) builds a spare's root from
outside, in PID 1's mount namespace, and PID 1 (tiny_init.c, ``--spare``) does the plan's last
steps. Each test runs a command twice through one helper: the first run makes the helper hand
over a spare, the second takes it (its PID 1's command line says so). The same probe through
`contained run --explain` (each step shown as it runs, by a Python PID 1) must print the same:
capabilities, no_new_privs, seccomp, ids, /dev, the mounts, stdio, sessions (root only). A plain
`contained run` takes a C PID 1 too, made on the spot by its runner (`run_at_once`).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import needs_root

from contained.errors import ContainedError
from contained.runtime import container, served, spare_init, spares

pytestmark = needs_root

VENV_CONTAINED = Path(sys.executable).parent / "contained"
C_PID_ONE = "contained-init --spare"

# Everything a container's command can see of how it was set up; the hostname is random and
# the overlay's options name the container's own directories, so neither is compared, and
# a spare's root has its /proc, /sys and /dev from before the overlay: the order of mounts
# differs from a root built in place.
PROBE = r"""
tr '\0' ' ' < /proc/1/cmdline; echo
grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups)' /proc/self/status
id; umask; pwd; hostname | wc -c; cat /proc/self/cgroup
ls -la /dev /dev/pts /dev/shm | awk '{print $1, $3, $4, $NF}'
awk '{ if ($3 == "overlay") print $1, $2, $3; else print $1, $2, $3, $4 }' /proc/mounts | sort
env | grep -v '^HOSTNAME=' | sort
ls /proc/self/fd
cut -d' ' -f5,6 /proc/self/stat
cat /proc/1/environ 2>&1 | head -c 100; echo
(exec 3<>/proc/1/mem) 2>/dev/null && echo opened-mem
readlink /proc/1/fd/3 && echo named-fd
readlink /proc/1/exe && echo named-exe
cat /proc/1/exe > /dev/null 2>&1 && echo read-exe
kill -INT 1; sleep 0.1; echo still-here
unshare -m true 2>&1 | head -1; mount -t tmpfs t /mnt 2>&1 | head -1
true
"""


@pytest.fixture(scope="module")
def compiled(busybox_home):  # the module's home: nothing made in the machine's default one
    if not spare_init.usable():
        pytest.skip("the tiny init is not compiled here (needs gcc and libc6-dev)")


@pytest.fixture(scope="module")
def helper(busybox_home, compiled):
    runner = container.Runner()
    yield runner
    runner.close()


def on_a_spare(helper, command: list[str], **options) -> tuple[container.RunResult, str]:
    """`command` run twice through `helper`; the second run's result and output."""
    for _ in range(2):
        with tempfile.TemporaryFile() as out, open(os.devnull, "rb") as null:
            result = container.run("busybox", command, runner_=helper, stdin=null,
                                   stdout=out.fileno(), stderr=out.fileno(), settle=True,
                                   **options)
            out.seek(0)
            text = out.read().decode()
    return result, text


def through_the_cli(home: Path, *argv) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "CONTAINED_HOME": str(home),
           "CONTAINED_CGROUP_PARENT": os.environ["CONTAINED_CGROUP_PARENT"]}
    return subprocess.run([str(VENV_CONTAINED), "run", "--rm", *argv], env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def test_a_spares_c_pid_one_sets_up_the_container_the_python_one_does(helper, busybox_home):
    result, spared = on_a_spare(helper, ["sh", "-c", PROBE])
    cli = through_the_cli(busybox_home, "--explain", "busybox", "sh", "-c", PROBE)
    assert result.status == 0 and cli.returncode == 0, (spared, cli.stderr)
    first, _, spared_rest = spared.partition("\n")
    python_first, _, cli_rest = cli.stdout.partition("\n")
    assert first.strip() == C_PID_ONE and python_first.strip() != C_PID_ONE
    assert spared_rest == cli_rest
    # and what that is: Docker's capabilities, no_new_privs, the filter, nothing of PID 1's
    assert "CapEff:\t00000000a80425fb" in spared_rest
    assert "NoNewPrivs:\t1" in spared_rest and "Seccomp:\t2" in spared_rest
    for attack in ("opened-mem", "named-fd", "named-exe", "read-exe"):
        assert attack not in spared_rest
    assert "still-here" in spared_rest  # a signal from inside does not end the container


def test_a_spares_c_pid_one_runs_a_user_of_the_image_without_capabilities(helper):
    result, out = on_a_spare(helper, ["sh", "-c", "id; grep CapEff /proc/self/status"],
                             user="nobody")
    assert result.status == 0, out
    assert "uid=65534(nobody)" in out and "CapEff:\t0000000000000000" in out, out


def test_a_spares_c_pid_one_passes_on_the_status_and_the_words_of_a_failed_start(helper):
    result, _ = on_a_spare(helper, ["sh", "-c", "exit 42"])
    assert result.status == 42
    with pytest.raises(ContainedError) as missing:
        on_a_spare(helper, ["no-such-command"])
    assert missing.value.exit_status == 127
    assert "no-such-command" in str(missing.value) and "PATH" in str(missing.value)
    with pytest.raises(ContainedError) as directory:
        on_a_spare(helper, ["/etc"])
    assert directory.value.exit_status == 126


def test_a_spares_c_pid_one_forwards_sigterm_to_the_command(helper):
    script = "trap 'echo got-term; exit 7' TERM; echo ready; sleep 30 & wait"
    on_a_spare(helper, ["true"])  # a spare is ready for the next one
    with tempfile.TemporaryFile() as out, open(os.devnull, "rb") as null:
        execution = container.start("busybox", ["sh", "-c", script], runner_=helper,
                                    stdin=null, stdout=out.fileno(), stderr=out.fileno())
        execution.wait_started()
        pid_one = execution.request.started.pid
        assert Path(f"/proc/{pid_one}/cmdline").read_bytes().startswith(b"contained-init\0")
        deadline = time.monotonic() + 10
        while b"ready" not in (out.seek(0) or out.read()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid_one, signal.SIGTERM)
        result = execution.wait(settle=True)
        out.seek(0)
        assert result.status == 7 and b"got-term" in out.read()


def test_a_root_that_cannot_be_built_is_refused_and_the_runner_stays_in_its_mounts(
        helper, busybox_home, tmp_path):
    """The runner builds the root inside PID 1's mount namespace: an error there (a volume
    that would land in /proc) reaches the caller, and the runner is back in its own mounts,
    with nothing mounted on the host, and runs the next container."""
    on_a_spare(helper, ["true"])  # the helper runs, and has a spare for the next request
    with pytest.raises(ContainedError) as refused:
        on_a_spare(helper, ["true"], volumes=[f"{tmp_path}:/proc/sys:ro"])
    assert "/proc" in str(refused.value)
    server = helper._process.pid
    assert os.readlink(f"/proc/{server}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{server}/cwd") == "/"
    assert str(busybox_home) not in Path("/proc/self/mountinfo").read_text()
    result, out = on_a_spare(helper, ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"])
    assert result.status == 0 and out.strip() == C_PID_ONE


def test_a_spares_c_pid_one_reports_an_oom_kill_as_such(helper):
    """PID 1 reads the cgroup's OOM count (a file the runner opened for it) before it tells
    the caller the command's end."""
    result, _ = on_a_spare(helper, ["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a)"],
                           memory="16M")
    assert (result.status, result.oom) == (137, True)
    assert result.message == "killed: out of memory, limit 16M"



def test_a_waiting_spares_pid_one_holds_nothing_of_the_runners(helper):
    """The launcher is spawned with whatever the runner holds without close-on-exec (the
    descriptors callers pass it, such as the last container's reply socket): the spare's PID 1,
    and so the next container, must have none of them."""
    on_a_spare(helper, ["true"])
    server = helper._process.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = [pid for pid in Path(f"/proc/{server}/task/{server}/children").read_text()
                   .split() if Path(f"/proc/{pid}/cmdline").read_bytes()
                   .startswith(b"contained-init\0--spare")]
        if waiting:
            break
        time.sleep(0.05)
    assert waiting
    assert sorted(os.listdir(f"/proc/{waiting[0]}/fd"), key=int) == ["0", "1", "2", "3"]


def launch_by_hand():
    """``contained-init --launch-spare`` with no cgroup: (its PID 1's pid, our end of the
    link). PID 1 is this process's child (CLONE_PARENT); the caller reaps it."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_pid, write_pid = os.pipe()
    try:
        launcher = spare_init._launch([theirs.fileno(), write_pid],
                                      ["contained-init", "--launch-spare", "0", "0", "0"])
    finally:
        theirs.close()
        os.close(write_pid)
    with os.fdopen(read_pid, "rb") as said:
        pid = int(said.read())
    os.waitpid(launcher, 0)
    return pid, ours


def test_a_c_pid_one_that_cannot_stage_says_which_step_and_why(compiled, tmp_path):
    pid, link = launch_by_hand()
    with link:
        link.sendall(f"mkdir\0{tmp_path}/made\0{0o755}\0mkdir\0{tmp_path}/no/such\0{0o755}\0"
                     .encode())
        assert link.recv(64) == b"ahead-1 2"  # the second step, ENOENT
    assert os.waitpid(pid, 0)[1] != 0
    assert (tmp_path / "made").is_dir()


def test_a_c_pid_one_refuses_a_request_it_cannot_read(compiled, tmp_path):
    import socket
    from array import array

    pid, link = launch_by_hand()
    with link, open(os.devnull, "rb") as null:
        link.sendall(f"mkdir\0{tmp_path}/made\0{0o755}\0".encode())
        assert link.recv(64) == b"ready"
        link.sendmsg([b"hostname\0/\0not-a-pid\0"],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [null.fileno()] * 5))])
        assert link.recv(64) == b"request 0"
    assert os.waitpid(pid, 0)[1] != 0


def test_contained_run_takes_a_c_pid_one_made_on_the_spot(compiled, busybox_home):
    containers = busybox_home / "containers"
    before = set(os.listdir(containers))
    done = through_the_cli(busybox_home, "busybox", "sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first.strip() == C_PID_ONE
    assert "CapEff:\t00000000a80425fb" in rest and "Seccomp:\t2" in rest
    missing = through_the_cli(busybox_home, "busybox", "no-such-command")
    assert missing.returncode == 127 and "no-such-command" in missing.stderr
    # `contained run --rm` returns once its container is removed: nothing of either is left
    # (a live spare's directory is the helper's, made meanwhile)
    left = [name for name in set(os.listdir(containers)) - before
            if not spares.is_live_spare(name.lstrip("."))]
    assert not left, left


def test_a_nul_in_a_spec_field_cannot_rewrite_what_pid_one_is_told(helper, busybox_home):
    """The spec crosses to the runner as JSON, where any string may hold a NUL; PID 1 reads
    NUL-terminated fields. A hostname carrying its own fields after a NUL (a root, all the
    capabilities, a command) must not become them: the command asked for runs, or the run is
    refused; never the one smuggled in (which printed CapEff 000001fffeffffff here)."""
    root = busybox_home / "containers" / ".staging" / "root"
    fields = [str(root), "1", str((1 << 41) - 1), "40", "x", "0",  # the rest of the header
              "0", "0", "0", "-1", "0", "/", "3", "/bin/sh", "-c",  # and a request of its own
              "grep CapEff /proc/self/status"]
    hostname = "h\0" + "\0".join(fields)
    try:
        result, out = on_a_spare(helper, ["true"], hostname=hostname,
                                 security_opt=["seccomp=unconfined"])
    except ContainedError:
        return
    assert result.status == 0 and "CapEff" not in out, out
    with pytest.raises(ContainedError):  # and the encoder itself refuses such a field
        served.nul_terminated("h\0/", 1)


def test_a_command_too_large_for_one_message_runs_with_the_python_pid_one(helper, busybox_home):
    """PID 1 reads one message of at most 128 KiB; a bigger environment still runs, as it did
    before there was a C PID 1 (through the helper and `contained run` alike)."""
    big = [f"BIG{i}=" + "x" * 40000 for i in range(4)]  # each under the kernel's 128 KiB
    count = 'echo $((${#BIG0} + ${#BIG1} + ${#BIG2} + ${#BIG3}))'
    result, out = on_a_spare(helper, ["sh", "-c", count], env=big)
    assert result.status == 0 and out.split() == ["160000"], out
    options = [word for variable in big for word in ("-e", variable)]
    done = through_the_cli(busybox_home, *options, "busybox", "sh", "-c", count)
    assert done.returncode == 0 and done.stdout.split() == ["160000"], done.stderr
