"""A named container's PID 1 is the tiny C init, and `exec` joins the container from outside.

What an idle named container costs is its PID 1: the tiny init (contained/runtime/tiny_init.c)
keeps it at a few hundred KiB, where a copy of the runner's Python took ~15 MiB. `exec` is
started by it (contained/runtime/served.py, tests/test_served_exec.py), or, with -t or
--explain, is a worker of the runner that joins the cgroup, every namespace and PID 1's
confinement (contained/runtime/enter.py). The attacks of the security issues are repeated
here against the new PID 1: it executes a host file, so /proc/1/exe must be out of the
container's reach too.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import exec_capture, needs_root

from contained.runtime import container, namespaces, tiny_init

DOCKER_CAPS = "00000000a80425fb"


def exec_output(name: str, command: str, runner) -> tuple[int, str]:
    """`sh -c COMMAND` in the named container: (status, stdout)."""
    result, out = exec_capture(name, ["sh", "-c", command], runner)
    return result.status, out


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@needs_root
def test_a_named_containers_pid_one_is_the_tiny_init_and_costs_under_a_mebibyte(kept):
    status = status_of(kept.init_pid)
    assert status["Name"] == "contained-init"
    assert Path(f"/proc/{kept.init_pid}/exe").resolve().name.startswith("tiny-init-")
    # A Python PID 1 had ~15 MiB resident; the static C init a few hundred KiB.
    assert int(status["VmRSS"].split()[0]) < 1024
    # It kept everything PID 1 gave itself before the execve.
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapEff"] == DOCKER_CAPS and status["CapBnd"] == DOCKER_CAPS
    # Its descriptors: /dev/null as stdio, its signalfd, and the exec socket's listener.
    fds = {fd: os.readlink(f"/proc/{kept.init_pid}/fd/{fd}")
           for fd in os.listdir(f"/proc/{kept.init_pid}/fd")}
    assert sorted(fds) == ["0", "1", "2", "3", "4"], fds
    assert {fds[fd] for fd in "012"} == {os.devnull}
    assert fds["3"] == "anon_inode:[signalfd]" and fds["4"].startswith("socket:"), fds


@needs_root
def test_the_container_cannot_read_or_rewrite_the_tiny_inits_file_or_memory(kept, runner_process):
    status, out = exec_output(
        kept.name,
        "cat /proc/1/exe > /dev/null && echo read-exe; "
        "(exec 3<>/proc/1/exe) && echo opened-exe; "
        "(exec 3<>/proc/1/mem) && echo opened-mem; "
        "readlink /proc/1/exe && echo named-exe; "
        "ls /proc/1/fd/ >/dev/null; echo x > /proc/1/fd/1 && echo reopened-fd; true",
        runner_process)
    assert status == 0
    for word in ("read-exe", "opened-exe", "opened-mem", "named-exe", "reopened-fd"):
        assert word not in out, out


@needs_root
def test_exec_joins_every_namespace_the_cgroup_and_pid_ones_confinement(kept, runner_process):
    status, out = exec_output(kept.name, "echo $$; sleep 30 >/dev/null 2>&1 & "
                              "grep -E 'NoNewPrivs|Seccomp:|CapEff|CapBnd' /proc/self/status; "
                              "cat /proc/self/cgroup | cut -d: -f3 | sort -u; "
                              "ps -o pid,comm | grep -w 1", runner_process)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] != "1"  # a pid of the container's own namespace, not PID 1's
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out
    assert f"CapEff:\t{DOCKER_CAPS}" in out and f"CapBnd:\t{DOCKER_CAPS}" in out
    assert "/" in lines and all(not line.startswith("/") or line == "/"
                                for line in lines[1:] if line.startswith("/"))
    assert "contained-init" in lines[-1]
    # From the host: the background sleep is in every namespace of PID 1 and in its cgroup.
    group = container.cgroup_of(kept.id)
    sleeping = [pid for pid in group.pids()
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"]
    assert sleeping, "the exec'd process is not in the container's cgroup"
    theirs, ours = namespaces.namespaces_of(sleeping[0]), namespaces.namespaces_of(kept.init_pid)
    assert theirs == ours, (theirs, ours)


@needs_root
def test_orphans_inside_are_reaped_by_the_tiny_init(kept, runner_process):
    status, _ = exec_output(kept.name, "sh -c 'sleep 0.2 & exit 0'", runner_process)
    assert status == 0
    deadline = time.monotonic() + 5
    out = ""
    while time.monotonic() < deadline:
        _, out = exec_output(kept.name, "ps -o stat,comm | grep -c '^Z' || true", runner_process)
        if out.strip() == "0":
            break
        time.sleep(0.1)
    assert out.strip() == "0", "a zombie stayed in the container"


@needs_root
def test_stop_ends_the_tiny_init_and_everything_in_it_at_once(busybox_home, runner_process):
    created = container.create("busybox", name="tiny-stop", runner_=runner_process)
    try:
        container.exec_detached("tiny-stop", ["sleep", "300"], runner_=runner_process)
        started = time.monotonic()
        stopped = container.stop("tiny-stop", timeout=10)
        # SIGTERM reached the sleep through the init: well before the 10 s SIGKILL.
        assert time.monotonic() - started < 5
        assert not stopped.running
        with pytest.raises(ProcessLookupError):
            os.kill(created.init_pid, 0)
    finally:
        container.remove("tiny-stop", force=True)


@needs_root
def test_exec_refuses_a_container_whose_pid_one_is_not_the_recorded_process(kept, runner_process):
    """A pid reused by another process after a crash is never joined: the start time differs."""
    from contained.runtime import state

    record = state.read(kept.id)
    os.kill(kept.init_pid, signal.SIGSTOP)  # keep it from exiting meanwhile
    try:
        state.write_state(container.get(kept.id).spec,
                          init_start_time=record["init_start_time"] + 1)
        with pytest.raises(container.ContainerNotRunning):
            container.exec_(kept.name, ["true"], runner_=runner_process)
    finally:
        state.write_state(container.get(kept.id).spec,
                          init_start_time=record["init_start_time"])
        os.kill(kept.init_pid, signal.SIGCONT)


def test_the_tiny_init_is_only_taken_from_a_file_nobody_else_can_write(tmp_path):
    program = tmp_path / "tiny-init-x"
    program.write_bytes(b"\x7fELF")
    program.chmod(0o755)
    fd = tiny_init._open_trusted(program)
    assert fd is not None
    os.close(fd)
    program.chmod(0o757)
    assert tiny_init._open_trusted(program) is None
    link = tmp_path / "link"
    link.symlink_to(program)
    program.chmod(0o755)
    assert tiny_init._open_trusted(link) is None


def test_an_edited_source_is_never_served_by_an_old_program(tmp_path, monkeypatch):
    source = tmp_path / "tiny_init.c"
    source.write_text("int main(void) { return 0; }\n")
    monkeypatch.setattr(tiny_init, "SOURCE", source)
    before = tiny_init._file_name()
    source.write_text("int main(void) { return 1; }\n")
    assert tiny_init._file_name() != before


@needs_root
def test_the_compiled_init_is_static_and_written_whole(tmp_path):
    target = tmp_path / "tiny-init"
    assert tiny_init.compile_to(target)
    header = target.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert not any(p.name.startswith(".tiny-init") for p in tmp_path.iterdir())
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    # Static: no program interpreter (PT_INTERP) for the container's root to lack.
    assert PT_INTERP not in program_header_types(target.read_bytes())


PT_INTERP = 3


def program_header_types(elf: bytes) -> list[int]:
    """p_type of each program header of a 64-bit little-endian ELF file."""
    offset = int.from_bytes(elf[32:40], "little")
    size, count = int.from_bytes(elf[54:56], "little"), int.from_bytes(elf[56:58], "little")
    return [int.from_bytes(elf[offset + i * size:offset + i * size + 4], "little")
            for i in range(count)]


@needs_root
def test_without_the_tiny_init_pid_one_stays_python_and_does_the_same(busybox_home,
                                                                      monkeypatch):
    """No C compiler: PID 1 keeps the Python loop; exec, reaping and stop work the same."""
    monkeypatch.setattr(tiny_init, "open_binary", lambda: None)
    runner = container.Runner(in_process=True)  # the fork sees the patch
    created = container.create("busybox", name="python-init", runner_=runner)
    try:
        assert "python" in Path(f"/proc/{created.init_pid}/exe").resolve().name
        status, out = exec_output("python-init", "echo hi; sleep 300 >/dev/null 2>&1 &", runner)
        assert (status, out) == (0, "hi\n")
        started = time.monotonic()
        assert not container.stop("python-init", timeout=10).running
        assert time.monotonic() - started < 5
    finally:
        container.remove("python-init", force=True)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (gcc, libc6-dev)")
def test_a_failed_compile_is_remembered_and_not_retried_for_every_container(tmp_path,
                                                                            monkeypatch):
    source = tmp_path / "tiny_init.c"
    source.write_text("this is not C\n")
    monkeypatch.setattr(tiny_init, "SOURCE", source)
    target = tmp_path / "tiny-init-x"
    assert not tiny_init._compile_once(target)  # gcc really fails
    assert (tmp_path / "tiny-init-x.failed").exists() and not target.exists()
    source.write_text("int main(void) { return 0; }\n")
    assert not tiny_init._compile_once(target)  # not tried again: the failure is remembered
    (tmp_path / "tiny-init-x.failed").unlink()
    assert tiny_init._compile_once(target) and target.exists()


REFUSE_CLONE3 = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]})


@needs_root
def test_where_clone3_is_refused_pid_one_and_exec_still_join_the_cgroup(busybox_home):
    """Docker's own seccomp profile answers clone3 with ENOSYS: contained run inside such a
    container falls back to moving each process (`cgroups.born`), and still lands it there."""
    from contained.runtime.seccomp import Filter
    from contained.runtime.seccomp_profile import Profile

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # this process only: the filter stays with it
        code = 1
        try:
            os.close(read)
            Filter(Profile.parse(REFUSE_CLONE3)).load()
            runner = container.Runner(in_process=True)
            created = container.create("busybox", name="no-clone3", runner_=runner)
            container.exec_detached("no-clone3", ["sleep", "30"], runner_=runner)
            # In every tree, the v2 one included, where clone3 would have placed them.
            group = container.cgroup_of(created.id)
            members = [{int(pid) for pid in procs.read_text().split()}
                       for procs in group.procs_files]
            sleeping = {pid for pid in set.union(*members)
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"}
            everywhere = all({created.init_pid, *sleeping} <= pids for pids in members)
            result = container.exec_("no-clone3", ["sh", "-c", "cat /proc/self/cgroup"],
                                     stdout=write, runner_=runner)
            container.remove("no-clone3", force=True)
            code = 0 if sleeping and everywhere and result.status == 0 else 2
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as output:
        seen = output.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    # Inside its cgroup namespace, each tree shows the container's own group as /.
    assert seen and all(line.endswith(":/") for line in seen.splitlines()), seen


CHILD_CANNOT_JOIN = """
import os
from contained.runtime import pid1
entry = {"v2": None, "v1_tasks": ["/nonexistent/contained-test/tasks"], "oom": None}
pid = pid1.fork_pid_one(False, lambda: os._exit(0), entry)
_, status = os.waitpid(pid, 0)
print("pid one ended", os.waitstatus_to_exitcode(status))
"""


@needs_root
def test_a_pid_one_that_cannot_join_its_cgroup_exits_and_never_runs_the_runners_code():
    """The child joins its v1 groups itself (`cgroups.born`); if that fails, the exception
    must end the child there, not carry on as a second runner (tearing down, reporting)."""
    from contained.runtime.status import EXIT_SETUP_FAILED

    done = subprocess.run([sys.executable, "-c", CHILD_CANNOT_JOIN], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"pid one ended {EXIT_SETUP_FAILED}"]
    assert "Traceback" not in done.stderr
