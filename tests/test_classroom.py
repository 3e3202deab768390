"""`contained classroom delegate`: a real throwaway student limits rootless containers.

Root makes a Unix user (removed at the end), hands it a cgroup, and runs scenarios as that user
(setpriv, with PYTHONPATH, as tests/test_rootless.py does), started the way the hub's spawner
starts a server: joined to the student's ``server`` group before dropping to the user.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import kill_processes_of, make_student, needs_root

from contained.classroom import delegation
from contained.runtime import cgroups

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")

SCENARIO = r'''
import json, os, sys, time
from contained.runtime import container
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
runner = container.Runner()  # a helper process with spares, as a Jupyter kernel uses it
out = {}

def run(key, command, **options):
    read, write = os.pipe()
    started = time.monotonic()
    try:
        result = container.run("busybox", ["sh", "-c", command], stdout=write, stderr=write,
                               runner_=runner, **options)
        os.close(write)
        out[key] = {"status": result.status, "oom": result.oom, "message": result.message,
                    "seconds": round(time.monotonic() - started, 2),
                    "output": os.read(read, 1 << 20).decode(errors="replace")}
    except container.ContainedError as error:
        os.close(write)
        out[key] = {"error": str(error)}
    os.close(read)

# forks `sleep` until fork fails, printing how many it got
COUNT = "n=0; while :; do sleep 60 & n=$((n+1)); echo $n; done"
for key in sys.argv[1].split(","):
    if key == "pids":
        run(key, COUNT, pids_limit=20)
    elif key == "bomb":
        run(key, "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived", pids_limit=20)
    elif key == "memory":
        run(key, 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo survived', memory="16M")
    elif key == "budget":
        run(key, COUNT)  # no --pids-limit: the default 2048, below the student's budget
    elif key == "plain":
        run(key, "echo ok")
runner.close()
print(json.dumps(out))
'''


needs_student = [
    needs_root,
    pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd (passwd)"),
]


@pytest.fixture
def student():
    """A throwaway Unix user with a home of its own; its processes, cgroups and account go at
    the end."""
    account = make_student("ctest")
    try:
        yield account
    finally:
        kill_processes_of(account.pw_uid)
        delegation.undelegate(account.pw_name)
        subprocess.run(["userdel", account.pw_name], check=True)
        shutil.rmtree(account.pw_dir, ignore_errors=True)


def run_as(account, keys: str, joined: bool = True) -> dict:
    """SCENARIO as the student; `joined`: started inside their server group, as the hub's
    spawner starts their Jupyter server."""
    home = Path(account.pw_dir)
    site_packages = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else ""
    env = {"HOME": str(home), "CONTAINED_HOME": str(home / "contained"),
           "PYTHONPATH": f"{ROOT}:{site_packages}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    procs = delegation.server_procs(account.pw_uid) if joined else []

    def join():  # in the child, as root, before setpriv drops to the student
        for path in procs:
            path.write_text("0")

    done = subprocess.run(
        ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
         "env", "-i", *[f"{k}={v}" for k, v in env.items()], str(SYSTEM_PYTHON), "-c",
         SCENARIO, keys],
        capture_output=True, text=True, timeout=180, cwd=home, preexec_fn=join)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _students(test):
    """The marks of a test that runs scenarios as a throwaway student."""
    for mark in reversed(needs_student):
        test = mark(test)
    return test


@_students
def test_without_delegation_a_limit_says_to_ask_the_teacher_in_one_line(student):
    out = run_as(student, "memory,plain", joined=False)
    error = out["memory"]["error"]
    assert "\n" not in error
    assert f"contained classroom delegate {student.pw_name}" in error
    assert out["plain"]["status"] == 0 and out["plain"]["output"] == "ok\n"


@_students
def test_delegated_student_gets_a_fork_bomb_stopped_and_an_oom_kill_reported(student):
    delegation.delegate(student.pw_name, delegation.Budget())
    out = run_as(student, "pids,bomb,memory,plain")
    counted = [int(line) for line in out["pids"]["output"].split() if line.isdigit()]
    assert out["pids"]["status"] != 0 and "can't fork" in out["pids"]["output"]
    assert max(counted) < 20  # sh, and the sleeps it got before fork failed
    assert out["bomb"].get("status") is not None and out["bomb"]["seconds"] < 30
    assert "survived" not in out["bomb"]["output"] or out["bomb"]["status"] == 0
    assert out["memory"]["status"] == 137 and out["memory"]["oom"], out["memory"]
    assert "survived" not in out["memory"]["output"]
    assert out["plain"]["status"] == 0 and out["plain"]["output"] == "ok\n"
    print(f"\nfork bomb ended in {out['bomb']['seconds']} s, pids loop in "
          f"{out['pids']['seconds']} s, OOM in {out['memory']['seconds']} s")


@_students
def test_the_budget_caps_the_sum_of_a_students_containers(student):
    delegation.delegate(student.pw_name, delegation.Budget(memory="256M", pids=25))
    host = cgroups.detect()
    top = cgroups.delegated_name(student.pw_uid)
    pids_root = host.unified if host.where("pids") == "v2" else host.v1_mounts["pids"]
    assert (pids_root / top / "containers" / "pids.max").read_text().strip() == "25"
    out = run_as(student, "budget")
    counted = [int(line) for line in out["budget"]["output"].split() if line.isdigit()]
    assert out["budget"]["status"] != 0 and max(counted) < 25


@_students
def test_a_student_cannot_lift_the_budget_or_remove_their_group(student):
    delegation.delegate(student.pw_name, delegation.Budget(pids=25))
    host = cgroups.detect()
    top = cgroups.delegated_name(student.pw_uid)
    pids_root = host.unified if host.where("pids") == "v2" else host.v1_mounts["pids"]
    limit = pids_root / top / "containers" / "pids.max"
    attempt = subprocess.run(
        ["setpriv", f"--reuid={student.pw_uid}", f"--regid={student.pw_gid}",
         "--clear-groups", "sh", "-c", f"echo max > {limit}; rmdir {limit.parent}"],
        capture_output=True, text=True)
    assert attempt.returncode != 0
    assert limit.read_text().strip() == "25" and limit.parent.is_dir()


@needs_root
def test_undelegate_removes_every_group_of_the_student(student):
    delegation.delegate(student.pw_name, delegation.Budget())
    roots = cgroups.delegated_roots(cgroups.detect())
    assert all((root / cgroups.delegated_name(student.pw_uid)).is_dir() for root in roots)
    delegation.undelegate(student.pw_name)
    assert not any((root / cgroups.delegated_name(student.pw_uid)).exists() for root in roots)


def test_delegating_needs_root_and_says_so(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(delegation.DelegationError, match="sudo"):
        delegation.delegate("nobody")


def test_init_writes_a_hub_config_for_pam_the_contained_spawner_and_loopback(tmp_path,
                                                                            monkeypatch):
    from contained.classroom import hub

    monkeypatch.setenv(delegation.CONFIG_ENV, str(tmp_path / "classroom.json"))
    config = hub.write_config(tmp_path, port=8123, admins=["teacher"])
    text = config.read_text()
    compile(text, str(config), "exec")
    assert 'bind_url = "http://127.0.0.1:8123"' in text
    assert 'authenticator_class = "pam"' in text
    assert "contained.classroom.jupyterhub.ContainedSpawner" in text
    assert "{'teacher'}" in text and "allowed_groups = {'students'}" in text
    assert config.stat().st_mode & 0o077 == 0


def test_the_machine_check_says_debians_useradd_makes_readable_homes(monkeypatch):
    from contained.classroom import hub

    monkeypatch.setattr(hub, "_read", lambda path: "UMASK 022\n#HOME_MODE 0700"
                        if path == "/etc/login.defs" else None)
    ok, sentence = hub._login_defs()
    assert not ok and "HOME_MODE 0700" in sentence and "0755" in sentence


@_students
def test_the_delegate_command_sets_the_budget_and_moves_a_process(student, tmp_path,
                                                                  monkeypatch, capsys):
    from contained import cli

    monkeypatch.setenv(delegation.CONFIG_ENV, str(tmp_path / "classroom.json"))
    delegation.save_budget(delegation.Budget(pids=64))
    sleeper = subprocess.Popen(["setpriv", f"--reuid={student.pw_uid}",
                                f"--regid={student.pw_gid}", "--clear-groups", "sleep", "30"])
    try:
        time.sleep(0.2)  # setpriv has exec'd sleep, as the student
        assert cli.main(["classroom", "delegate", student.pw_name, "--move",
                         str(sleeper.pid)]) == 0
        assert "pids 64" in capsys.readouterr().out
        host = cgroups.detect()
        server = f"/{cgroups.delegated_name(student.pw_uid)}/{cgroups.DELEGATED_SERVER}"
        membership = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert membership.count(f":{server}\n") == len(cgroups.delegated_roots(host))
        assert cli.main(["classroom", "delegate", student.pw_name, "--move", "1"]) != 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cli.main(["classroom", "undelegate", student.pw_name]) == 0
