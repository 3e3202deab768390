"""`exec` served by the container's PID 1, the tiny init, over the exec socket.

The command is a child of PID 1, which is in every namespace, the cgroup and the confinement
already (contained/runtime/served.py, tiny_init.c). The socket is the new way in to attack:
nothing inside the container may reach it, nobody but the home's owner may connect, a request
PID 1 cannot read must not end it, and ``-u`` must be resolved in the container's own files
even when the container has replaced them with symlinks that point at the host's.
"""

import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, exec_capture, interpreter_for_nobody, needs_root

from contained import procfs
from contained.errors import ContainedError
from contained.runtime import container, served


def sh(name: str, command: str, runner, **options) -> tuple[int, str]:
    result, out = exec_capture(name, ["sh", "-c", command], runner, **options)
    return result.status, out


def parent_pid_of_the_command(name: str, runner, **options) -> str:
    status, out = sh(name, "cut -d' ' -f4 /proc/$$/stat", runner, **options)
    assert status == 0, out
    return out.strip()


@needs_root
def test_an_exec_is_a_child_of_pid_one_and_an_explained_one_joins_from_outside(kept,
                                                                                runner_process):
    assert parent_pid_of_the_command(kept.name, runner_process) == "1"
    # --explain shows and runs every step of the way in from outside (enter.py): the
    # command's parent is then outside the container's PID namespace (0 inside).
    with open(os.devnull, "w") as null:
        assert parent_pid_of_the_command(kept.name, runner_process, explain=null) == "0"


@needs_root
def test_the_clis_exec_loads_none_of_the_runners_modules(kept):
    # PID 1 starts the command: the CLI process needs neither the steps nor PID 1's own code
    # (init, and the subprocess it uses); only the worker forked ahead for the other way in does.
    probe = ("import sys; from contained import cli; status = cli.main(['exec', sys.argv[1],"
             " 'true']); print(status, sorted(m for m in ('contained.runtime.steps',"
             " 'contained.runtime.init', 'contained.runtime.runner', 'subprocess')"
             " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, kept.name], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "0 []", done.stderr


@needs_root
def test_the_command_holds_nothing_of_pid_ones_but_its_stdio(kept, runner_process):
    container.exec_detached(kept.name, ["sleep", "300"], runner_=runner_process)
    group = container.cgroup_of(kept.id)
    sleeping = [pid for pid in group.pids()
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"]
    assert len(sleeping) == 1
    assert sorted(os.listdir(f"/proc/{sleeping[0]}/fd")) == ["0", "1", "2"]
    status = Path(f"/proc/{sleeping[0]}/status").read_text()
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status


@needs_root
def test_the_exec_socket_is_out_of_the_containers_reach(kept, runner_process):
    socket_path = Path(kept.spec.directory) / served.SOCKET_NAME
    assert socket_path.is_socket()
    # Not in the container's files; and PID 1's descriptors (the listener is its 4, a
    # connection its 5) can be neither named nor opened: it is non-dumpable.
    status, out = sh(kept.name,
                     "find / -xdev -type s 2>/dev/null; "
                     "for fd in 3 4 5; do readlink /proc/1/fd/$fd && echo named-$fd; "
                     "(exec 9</proc/1/fd/$fd) 2>/dev/null && echo got-$fd; done; true",
                     runner_process)
    assert status == 0
    assert "exec.sock" not in out and "named-" not in out and "got-" not in out, out


@needs_root
def test_only_the_homes_owner_can_connect_to_the_exec_socket(kept):
    socket_path = Path(kept.spec.directory) / served.SOCKET_NAME
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    # As procfs.short_path does (the path is too long for an address): through the directory.
    probe = ("import errno, os, socket, sys\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
             "try:\n"
             "    fd = os.open(os.path.dirname(sys.argv[1]), os.O_PATH)\n"
             "    s.connect(f'/proc/self/fd/{fd}/exec.sock')\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
             "else:\n    print('connected')\n")
    python, env = interpreter_for_nobody()
    done = subprocess.run(as_nobody([python, "-c", probe, str(socket_path)]),
                          capture_output=True, text=True, env={**os.environ, **env})
    assert done.stdout.strip() == "EACCES", (done.stdout, done.stderr, NOBODY)


def raw_request(directory: str, payload: bytes, fds: list[int]) -> bytes:
    """Send `payload` to PID 1 as the caller would; what it answers before closing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    try:
        with procfs.short_path(Path(directory) / served.SOCKET_NAME) as address:
            sock.connect(address)
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))]
                   if fds else [])
        return sock.recv(4096)
    finally:
        sock.close()


BAD_REQUESTS = [
    b"",
    b"garbage",
    b"0\x000\x000\x00-1\x000\x00/\x005\x00true\x00",          # argc larger than what follows
    b"0\x000\x000\x00-2\x000\x00/\x001\x00true\x00",          # ngroups below -1
    b"0\x000\x000\x00999999\x000\x00/\x001\x00true\x00",      # more groups than allowed
    b"0\x000\x000\x00-1\x000\x00/\x001\x00true",              # last field without its NUL
    b"2\x000\x000\x00-1\x000\x00/\x001\x00true\x00",          # switch-user neither 0 nor 1
    b"0\x00-5\x000\x00-1\x000\x00/\x001\x00true\x00",         # a negative uid
    b"0\x000\x000\x00-1\x000\x00/\x000\x00",                  # no command at all
    b"0\x000\x000\x00-1\x000\x00/\x00" + b"99999999\x00",     # argc beyond the limit
]


@needs_root
def test_a_request_pid_one_cannot_read_is_refused_and_pid_one_carries_on(kept, runner_process):
    with open(os.devnull, "rb") as null:
        fds = [null.fileno()] * 3
        for payload in BAD_REQUESTS:
            answer = raw_request(kept.spec.directory, payload, fds)
            assert answer in (b"", b'{"event": "refused", "stage": "request", "errno": 0}\n'), \
                (payload, answer)
        assert raw_request(kept.spec.directory, b"0\x000\x000\x00-1\x000\x00/\x001\x00true\x00",
                           []) == b""  # no stdio with it: not even read
        rng = secrets.SystemRandom()
        for _ in range(200):
            raw_request(kept.spec.directory, os.urandom(rng.randrange(1, 300)), fds)
    assert Path(f"/proc/{kept.init_pid}").exists()
    status, out = sh(kept.name, "echo still-serving", runner_process)
    assert (status, out) == (0, "still-serving\n")


@needs_root
def test_exec_u_reads_the_containers_passwd_even_when_it_points_at_the_hosts(kept,
                                                                             runner_process,
                                                                             tmp_path):
    """Container root replaces its /etc/passwd with a symlink to a host path: resolved on the
    host without the safe resolver, `-u hostonly` would find the host file's user."""
    host_file = tmp_path / "passwd-on-the-host"
    host_file.write_text("hostonly:x:4242:4242::/hostonly:/bin/sh\n")
    status, out = sh(kept.name, f"ln -sf {host_file} /etc/passwd && echo linked", runner_process)
    assert (status, out) == (0, "linked\n")
    with pytest.raises(ContainedError, match="no user 'hostonly'"):
        container.exec_(kept.name, ["id"], user="hostonly", runner_=runner_process)
    # The same path inside the container is the container's own file, and is used.
    status, out = sh(kept.name, f"mkdir -p {host_file.parent} && "
                     f"echo 'inside:x:777:777::/in:/bin/sh' > {host_file}", runner_process)
    assert status == 0
    result, out = exec_capture(kept.name, ["id", "-u"], runner_process, user="inside")
    assert (result.status, out) == (0, "777\n")


@needs_root
def test_a_killed_caller_takes_its_command_with_it_but_not_a_detached_one(kept, runner_process):
    with open(os.devnull, "rb") as null:
        execution = container.start_exec(kept.name, ["sleep", "300"], stdin=null,
                                         runner_=runner_process)
        execution.wait_started()
        execution.kill()
        assert execution.wait().status == 137
    container.exec_detached(kept.name, ["sleep", "301"], runner_=runner_process)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, out = sh(kept.name, "ps -o args | grep -c '^sleep 30[01]$' || true",
                         runner_process)
        if out.strip() == "1":
            break
        time.sleep(0.05)
    assert out.strip() == "1"  # the detached one only
    status, out = sh(kept.name, "ps -o args | grep '^sleep 30'", runner_process)
    assert out.strip() == "sleep 301"


@needs_root
def test_a_python_pid_one_closes_the_socket_and_exec_joins_from_outside(busybox_home,
                                                                        monkeypatch):
    from contained.runtime import init

    def refused(binary, *rest):
        raise OSError("refused")  # a filter or kernel that refuses the init's execve

    monkeypatch.setattr(init.os, "execve", refused)
    runner = container.Runner(in_process=True)  # the fork sees the patch
    name = f"pyinit{secrets.token_hex(3)}"
    created = container.create("busybox", name=name, runner_=runner)
    try:
        assert Path(f"/proc/{created.init_pid}/comm").read_text().strip() == "contained-init"
        assert parent_pid_of_the_command(name, runner) == "0"
    finally:
        container.remove(name, force=True)
        runner.close()
