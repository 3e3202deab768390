"""Nothing of the host reaches a container through PID 1 or the caller's stdio (root only).

Attacks from inside a container, as its root: reopen the caller's files through
``/proc/1/fd/N`` (PID 1 held them) or ``/proc/self/fd/N`` (the command held them), open
``/proc/1/mem``, read ``/proc/1/environ``, enter ``/proc/1/root`` and ``/proc/1/cwd``, keep the
caller's terminal after `exec` returns, open the caller's controlling terminal as /dev/tty.
Each is tried through every way a container starts: `contained run` (the CLI's in-process
runner), `run -d` + `exec` (a named container's PID 1), the magic (the runner helper and its
spare), and rootless. Plus the runner helper itself: started isolated (`python -I`), from
"/", with a minimal environment, so a module planted in the caller's directory is not run.
"""

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pytest
from conftest import needs_root

from contained.runtime import container

pytestmark = needs_root

ROOT = Path(__file__).resolve().parent.parent
VENV_CONTAINED = Path(sys.executable).parent / "contained"
SYSTEM_PYTHON = Path("/usr/bin/python3")
HOST_SECRET = "host-secret-3f9c1a"

# Every line that would say an attack on PID 1 worked.
PID_ONE_ATTACK = ("echo tampered > /proc/1/fd/1 && echo reopened-fd; "
                  "(exec 3<>/proc/1/mem) && echo opened-mem; "
                  "cat /proc/1/environ && echo read-environ; "
                  "ls /proc/1/root/ >/dev/null && echo entered-root; "
                  "ls /proc/1/cwd/ >/dev/null && echo entered-cwd; true")
PID_ONE_SUCCESSES = ("tampered", "reopened-fd", "opened-mem", "read-environ", HOST_SECRET,
                     "entered-root", "entered-cwd")
# Reopening stdout by path truncates the caller's file if the container holds the file itself.
FILE_ATTACK = "echo tampered > /proc/1/fd/1; echo rewritten > /proc/self/fd/1; true"




def cli_env(home: Path) -> dict:
    return {"PATH": os.environ["PATH"], "CONTAINED_HOME": str(home), "HOST_SECRET": HOST_SECRET,
            "CONTAINED_CGROUP_PARENT": os.environ["CONTAINED_CGROUP_PARENT"]}


def cli(home: Path, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_CONTAINED), *argv], stdin=stdin, stdout=stdout,
                          stderr=stderr, env=cli_env(home), timeout=timeout, **options)


@pytest.fixture
def named(busybox_home):
    """A running named container (`run -d --name`), removed after the test."""
    name = f"iso{os.getpid()}{time.monotonic_ns() % 100000}"
    done = cli(busybox_home, "run", "-d", "--name", name, "busybox")
    assert done.returncode == 0, done.stderr
    yield name
    cli(busybox_home, "rm", "-f", name)


def host_file(tmp_path: Path, owner: str | None = None) -> Path:
    path = tmp_path / "out.txt"
    path.write_text("host-owned\n")
    if owner:
        shutil.chown(path, owner)
    return path


def assert_no_pid_one_attack_worked(output: str) -> None:
    found = [word for word in PID_ONE_SUCCESSES if word in output]
    assert not found, f"attacks on PID 1 that worked: {found}\n{output}"


# ---------------------------------------------------------------------------------------------
# `contained run`

def test_run_cannot_overwrite_the_callers_file_through_pid_one_or_its_own_stdout(
        busybox_home, tmp_path):
    out = host_file(tmp_path)
    with open(out, "ab") as appended:
        cli(busybox_home, "run", "--rm", "busybox", "sh", "-c", FILE_ATTACK, stdout=appended)
    text = out.read_text()
    assert text.startswith("host-owned\n") and "tampered" not in text, text


def test_run_cannot_reach_pid_one_with_a_pipe_as_stdout(busybox_home):
    done = cli(busybox_home, "run", "--rm", "busybox", "sh", "-c", PID_ONE_ATTACK)
    assert_no_pid_one_attack_worked(done.stdout.decode())


def test_run_and_exec_command_sees_no_host_environment_in_pid_one(busybox_home):
    done = cli(busybox_home, "run", "--rm", "busybox", "sh", "-c",
               "cat /proc/1/environ; cat /proc/self/environ")
    assert HOST_SECRET.encode() not in done.stdout


# ---------------------------------------------------------------------------------------------
# `contained run -d` + `contained exec`

def test_exec_cannot_overwrite_the_callers_file(named, busybox_home, tmp_path):
    out = host_file(tmp_path)
    with open(out, "ab") as appended:
        cli(busybox_home, "exec", named, "sh", "-c", FILE_ATTACK, stdout=appended)
    text = out.read_text()
    assert text.startswith("host-owned\n") and "tampered" not in text, text


def test_exec_cannot_reach_pid_one_with_a_pipe_as_stdout(named, busybox_home):
    done = cli(busybox_home, "exec", named, "sh", "-c", PID_ONE_ATTACK)
    assert_no_pid_one_attack_worked(done.stdout.decode())


def container_processes(name: str) -> list[int]:
    """Host pids of every process in the container's PID namespace."""
    init_pid = container.get(name).init_pid
    namespace = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.stat(entry / "ns" / "pid").st_ino == namespace:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def held_by(pids: list[int], files: set[tuple[int, int]]) -> list[str]:
    """Which of `files` (device, inode) the processes hold open, as "PID fd N"."""
    held = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                info = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in files:
                held.append(f"{pid} fd {fd}")
    return held


def identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def test_after_exec_returns_a_background_process_holds_nothing_of_the_callers(
        named, busybox_home, tmp_path):
    """Finding 3: `exec 3<&0; setsid ... &` kept the caller's terminal and read what was typed."""
    master, terminal = os.openpty()
    out = host_file(tmp_path)
    err_read, err_write = os.pipe()
    keep = "exec 3<&0 4>&1 5>&2; setsid sleep 60 </dev/null >/dev/null 2>&1 & echo started"
    try:
        with open(out, "ab") as appended:
            done = cli(busybox_home, "exec", "-i", named, "sh", "-c", keep, stdin=terminal,
                       stdout=appended, stderr=err_write)
            assert done.returncode == 0
            callers = {identity(terminal), identity(master), identity(appended.fileno()),
                       identity(err_read), identity(err_write)}
        assert "started" in out.read_text()
        assert held_by(container_processes(named), callers) == []
    finally:
        for fd in (master, terminal, err_read, err_write):
            os.close(fd)


def test_exec_d_returns_at_once_and_keeps_nothing_of_the_callers(named, busybox_home, tmp_path):
    out = host_file(tmp_path)
    with open(out, "ab") as appended:
        started = time.monotonic()
        done = cli(busybox_home, "exec", "-d", named, "sh", "-c", "sleep 5", stdout=appended,
                   stderr=appended)
        elapsed = time.monotonic() - started
        callers = {identity(appended.fileno())}
    assert done.returncode == 0 and elapsed < 1.0, (elapsed, done)
    pids = container_processes(named)
    assert any(b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids)
    assert held_by(pids, callers) == []


# ---------------------------------------------------------------------------------------------
# Terminals

def start_on_terminal(home: Path, *argv, rows: int = 33, columns: int = 101):
    """The CLI with a new pty as its controlling terminal; returns (process, master)."""
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [str(VENV_CONTAINED), *argv], stdin=terminal, stdout=terminal, stderr=terminal,
        env=cli_env(home), start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    return process, master


def read_terminal(process: subprocess.Popen, master: int, timeout: float = 30) -> str:
    """Everything written to the terminal until the process exits and the terminal closes."""
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return output.decode(errors="replace")


def test_dev_tty_is_not_the_callers_terminal_without_t(busybox_home):
    process, master = start_on_terminal(
        busybox_home, "run", "--rm", "busybox", "sh", "-c",
        "(exec 3</dev/tty) && echo got-the-callers-tty; echo done")
    output = read_terminal(process, master)
    assert "done" in output and "got-the-callers-tty" not in output, output


def test_run_t_gives_the_command_a_pty_of_the_containers_own_with_the_callers_size(
        busybox_home):
    process, master = start_on_terminal(busybox_home, "run", "-t", "--rm", "busybox", "sh",
                                        "-c", "tty; stty size", rows=33, columns=101)
    output = read_terminal(process, master)
    assert process.returncode == 0, output
    assert "/dev/pts/0" in output and "33 101" in output, output


def test_exec_t_gives_the_command_a_pty_of_the_containers_own(named, busybox_home):
    process, master = start_on_terminal(busybox_home, "exec", "-t", named, "sh", "-c",
                                        "tty; stty size", rows=20, columns=70)
    output = read_terminal(process, master)
    assert process.returncode == 0, output
    assert "/dev/pts/" in output and "20 70" in output, output


def read_until(master: int, text: bytes, timeout: float = 20) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while text not in output and time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            output += os.read(master, 4096)
    return output


def test_run_it_relays_keys_and_the_window_size_and_restores_the_terminal(busybox_home):
    master, terminal = os.openpty()
    before = termios.tcgetattr(terminal)
    os.close(terminal)
    os.close(master)
    process, master = start_on_terminal(
        busybox_home, "run", "-i", "-t", "--rm", "busybox", "sh", "-c",
        'trap "stty size; exit 0" WINCH; read line; echo "got $line"; '
        'while :; do sleep 0.1; done', rows=24, columns=80)
    try:
        os.write(master, b"hello\r")
        assert b"got hello" in read_until(master, b"got hello")
        # A resized terminal: its foreground group (the client) gets SIGWINCH, and passes
        # the new size on to the container's pty, whose command gets SIGWINCH in turn.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        assert b"40 120" in read_until(master, b"40 120")
        process.wait(timeout=20)
        assert process.returncode == 0
        assert termios.tcgetattr(master)[:3] == before[:3]  # raw mode undone (flags)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_run_i_feeds_stdin_and_without_i_stdin_is_dev_null(busybox_home):
    done = cli(busybox_home, "run", "-i", "--rm", "busybox", "wc", "-c",
               stdin=None, input=b"x" * 300000)
    assert done.stdout.split() == [b"300000"], done
    with tempfile.TemporaryFile() as given:
        given.write(b"not for the container\n")
        given.seek(0)
        done = cli(busybox_home, "run", "--rm", "busybox", "sh", "-c",
                   "cat; readlink /proc/self/fd/0", stdin=given)
    assert done.stdout == b"/dev/null\n", done


def test_large_output_on_both_streams_is_relayed_whole(busybox_home):
    done = cli(busybox_home, "run", "--rm", "busybox", "sh", "-c",
               "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2")
    assert (done.returncode, len(done.stdout), len(done.stderr)) == (0, 3000000, 2000000)


def test_a_reader_that_goes_away_ends_the_command(busybox_home):
    started = time.monotonic()
    done = subprocess.run(f"{VENV_CONTAINED} run --rm busybox yes | head -1", shell=True,
                          capture_output=True, env=cli_env(busybox_home), timeout=30)
    assert done.stdout == b"y\n" and time.monotonic() - started < 10


def test_ctrl_c_kills_the_command(busybox_home):
    process = subprocess.Popen([str(VENV_CONTAINED), "run", "--rm", "busybox", "sleep", "60"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=cli_env(busybox_home))
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)
    assert process.returncode in (130, 137)


# ---------------------------------------------------------------------------------------------
# The magic (the runner helper and its spare)

@pytest.fixture(scope="module")
def shell(busybox_home):
    from IPython.core.interactiveshell import InteractiveShell

    import contained

    contained.close_runner()  # the next one starts with this module's home
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "contained")
    yield ip
    contained.close_runner()


def test_magic_cell_cannot_reach_pid_one(shell, capsys, monkeypatch):
    monkeypatch.setenv("HOST_SECRET", HOST_SECRET)  # as a kernel's own environment
    for _ in range(2):  # the first run may miss the spare; the second takes it
        shell.run_cell_magic("container", "busybox", PID_ONE_ATTACK)
        assert_no_pid_one_attack_worked(capsys.readouterr().out)


def test_magic_exec_in_a_named_container_cannot_reach_pid_one(shell, capsys):
    shell.run_cell_magic("container", "busybox --name isomagic", "true")
    try:
        shell.run_cell_magic("container", "busybox --name isomagic", PID_ONE_ATTACK)
        assert_no_pid_one_attack_worked(capsys.readouterr().out)
    finally:
        container.remove("isomagic", force=True)


# ---------------------------------------------------------------------------------------------
# The runner helper

def test_a_module_planted_in_the_callers_directory_is_not_imported_by_the_runner(
        busybox_home, tmp_path, monkeypatch):
    """Issue 18 finding 1: `python -m` puts the working directory first on sys.path."""
    marker = tmp_path / "imported"
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "shlex.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import importlib.util, sys, sysconfig\n"
        "spec = importlib.util.spec_from_file_location(\n"
        "    'shlex', sysconfig.get_paths()['stdlib'] + '/shlex.py')\n"
        "real = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(real)\n"
        "sys.modules['shlex'] = real\n")
    monkeypatch.chdir(planted)
    monkeypatch.setenv("HOST_SECRET", HOST_SECRET)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    helper = container.Runner()
    try:
        with open(os.devnull, "r+b") as null:
            result = container.run("busybox", ["true"], runner_=helper, stdin=null,
                                   stdout=null, stderr=null)
        pid = helper._process.pid
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    finally:
        helper.close()
    assert result.status == 0
    assert not marker.exists()
    assert HOST_SECRET.encode() not in environment and b"PYTHONPATH" not in environment
    assert cwd == "/"


# ---------------------------------------------------------------------------------------------
# Rootless

ROOTLESS_SCENARIO = r'''
import os, subprocess, sys
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
home = os.environ["HOME"]
with open(os.path.join(home, "out.txt"), "ab") as out:
    subprocess.run([sys.executable, "-m", "contained", "run", "--rm", "busybox", "sh", "-c",
                    sys.argv[1]], stdout=out, stderr=subprocess.DEVNULL)
attack = subprocess.run([sys.executable, "-m", "contained", "run", "--rm", "busybox", "sh",
                         "-c", sys.argv[2]], capture_output=True)
sys.stdout.write(attack.stdout.decode())
'''


def test_rootless_run_cannot_reach_pid_one_or_the_callers_file():
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs /usr/bin/python3")
    if subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("user namespaces are disabled here")
    import site

    home = Path(tempfile.mkdtemp(prefix="contained-nobody-"))
    try:
        shutil.chown(home, "nobody", "nogroup")
        out = host_file(home, owner="nobody")
        site_packages = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else ""
        env = {"HOME": str(home), "CONTAINED_HOME": str(home / "contained"),
               "HOST_SECRET": HOST_SECRET, "PYTHONPATH": f"{ROOT}:{site_packages}",
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
             *[f"{k}={v}" for k, v in env.items()], str(SYSTEM_PYTHON), "-c",
             ROOTLESS_SCENARIO, FILE_ATTACK, PID_ONE_ATTACK],
            capture_output=True, text=True, timeout=120, cwd=home)
        assert done.returncode == 0, done.stderr[-2000:]
        text = out.read_text()
        assert text.startswith("host-owned\n") and "tampered" not in text, text
        assert_no_pid_one_attack_worked(done.stdout)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_pid_one_is_not_dumpable_and_is_a_session_leader(busybox_home):
    done = cli(busybox_home, "run", "--rm", "busybox", "sh", "-c",
               "cut -d' ' -f6 /proc/1/stat; cut -d' ' -f6 /proc/self/stat")
    assert done.returncode == 0, done.stderr
    sessions = done.stdout.split()
    assert sessions == [b"1", b"1"], json.dumps(done.stdout.decode())


def test_a_spare_gives_a_t_command_its_own_pty_through_the_api(busybox_home):
    """The runner helper's spare PID 1 passes the master itself (the CLI's path is `run -t`)."""
    helper = container.Runner()
    try:
        for _ in range(2):  # the first run may miss the spare; the second takes it
            execution = container.start("busybox", ["sh", "-c", "tty; stty size"], tty=True,
                                        tty_size=[12, 34], runner_=helper)
            execution.wait_started()
            master = execution.request.terminal
            output = b""
            while select.select([master], [], [], 5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the command, the pty's last holder, has ended
                    break
                output += chunk
            os.close(master)
            assert execution.wait().status == 0
            assert b"/dev/pts/0" in output and b"12 34" in output, output
    finally:
        helper.close()
