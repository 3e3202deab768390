"""A group systemd delegated to a unit (``Delegate=yes``, The Littlest JupyterHub's spawner):
a throwaway student's containers nest in it, without root and without `classroom delegate`.

There is no systemd here and the host is hybrid, so the test stands in for systemd, as root,
the way it delegates a unit's group: ``contained-unittest-HEX`` (root's, as system.slice is)
holds ``jupyter-NAME.service``, whose directory, cgroup.procs, cgroup.subtree_control and
cgroup.threads are chowned to the student, and the student's process starts in it. All of it in
the unified (v2) tree, which has no controllers on this host: recognising the group, moving the
unit's processes to a leaf, nesting and cleaning up run for real; limits inside such a group
need a pure cgroup v2 host (their sentences are checked with a stand-in host instead).
"""

import os
import secrets
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_processes_of
from test_classroom import ROOT, SYSTEM_PYTHON, _students, student  # noqa: F401 (a fixture)

from contained.classroom import hub, tljh
from contained.runtime import cgroups
from contained.runtime.cgroups import files, host, unit

#: as root, for the student: what systemd's Delegate=yes chowns (systemd.resource-control(5))
SYSTEMD_CHOWNS = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")

NEST = r'''
import json, subprocess
from pathlib import Path
from contained.runtime import cgroups
from contained.runtime.plan import run_steps

host = cgroups.detect()
found = cgroups.delegated_unit(host)
group, steps = cgroups.Cgroup.plan("nested", cgroups.Limits(), host)
run_steps(steps)
sleeper = subprocess.Popen(["sleep", "60"])
group.join(sleeper.pid)
out = {"unit": found and found.relative, "paths": [str(p) for p in group.paths],
       "shell": [step.shell for step in steps],
       "me": Path("/proc/self/cgroup").read_text(),
       "sleeper": Path(f"/proc/{sleeper.pid}/cgroup").read_text()}
group.remove()
sleeper.wait()
out["collected"] = cgroups.gc(set(), host)
out["left"] = sorted(str(p) for p in found.containers.rglob("*") if p.is_dir())
print(json.dumps(out))
'''


@pytest.fixture
def unit_group(student):  # noqa: F811 (the fixture imported above)
    """The student's unit group, as systemd makes it with Delegate=yes; removed at the end."""
    unified = cgroups.detect().unified
    if unified is None:
        pytest.skip("needs a cgroup v2 tree (pure v2, or a hybrid host's unified tree)")
    slice_ = unified / f"contained-unittest-{secrets.token_hex(3)}"
    group = slice_ / f"jupyter-{student.pw_name}.service"
    group.mkdir(parents=True)
    for path in (group, *(group / name for name in SYSTEMD_CHOWNS)):
        os.chown(path, student.pw_uid, student.pw_gid)
    try:
        yield group
    finally:
        kill_processes_of(student.pw_uid)
        for path in sorted((p for p in slice_.rglob("*") if p.is_dir()),
                           key=lambda p: len(p.parts), reverse=True) + [slice_]:
            files.rmdir(path)


def run_in_unit(account, group: Path, *argv: str) -> subprocess.CompletedProcess:
    """`argv` as the student, started inside `group` as systemd starts a unit's process."""
    home = Path(account.pw_dir)
    site_packages = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else ""
    env = {"HOME": str(home), "PYTHONPATH": f"{ROOT}:{site_packages}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def join():  # in the child, as root, before setpriv drops to the student
        (group / "cgroup.procs").write_text("0")

    return subprocess.run(
        ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
         "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
        capture_output=True, text=True, timeout=180, cwd=home, preexec_fn=join)


def python_in_unit(account, group: Path, code: str) -> dict:
    import json

    done = run_in_unit(account, group, str(SYSTEM_PYTHON), "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@_students
def test_a_student_in_a_delegated_unit_nests_a_group_under_its_containers(
        student, unit_group):  # noqa: F811 (the fixture imported above)
    out = python_in_unit(student, unit_group, NEST)
    relative = str(unit_group.relative_to(cgroups.detect().unified))
    assert out["unit"] == relative
    nested = f"/{relative}/containers/"
    assert f"\n0::{nested}contained-" in out["sleeper"]  # containers/contained-TAG/nested
    assert all(Path(path).is_relative_to(unit_group / "containers") for path in out["paths"])
    assert f"0::/{relative}/server\n" in out["me"]  # moved to the leaf: no internal process
    assert "for pid in" in out["shell"][0]  # the leaf step comes first, and shows its shell
    assert not (unit_group / "cgroup.procs").read_text().strip()
    # gc collected the home's parent: only the unit's own `containers` is left, empty
    assert out["left"] == []
    assert sorted(p.name for p in unit_group.iterdir() if p.is_dir()) == ["containers", "server"]


@_students
def test_in_a_delegated_unit_a_run_works_and_a_limit_says_why_in_one_line(
        student, unit_group):  # noqa: F811 (the fixture imported above)
    if cgroups.detect().mode != "hybrid":
        pytest.skip("the sentence for a hybrid host: a pure v2 host limits inside the unit")
    import_busybox_as(student, unit_group)
    plain = run_in_unit(student, unit_group, str(SYSTEM_PYTHON), "-m", "contained", "run",
                        "--rm", "busybox", "true")
    assert plain.returncode == 0, plain.stderr[-3000:]
    limited = run_in_unit(student, unit_group, str(SYSTEM_PYTHON), "-m", "contained", "run",
                          "--rm", "--pids-limit", "50", "busybox", "true")
    assert limited.returncode != 0
    said = limited.stderr.strip()
    assert "\n" not in said, said
    assert "Delegate=yes" in said and "v1" in said and "pure cgroup v2" in said
    assert f"contained classroom delegate {student.pw_name}" in said
    assert not container_groups(unit_group)  # nothing is left of either run


def container_groups(unit_group: Path) -> list[Path]:
    """The containers' groups in a unit's group: containers/contained-TAG/ID."""
    return [path for path in unit_group.glob("containers/*/*") if path.is_dir()]


def import_busybox_as(account, group: Path) -> None:
    done = run_in_unit(account, group, str(SYSTEM_PYTHON), "-c",
                       "from contained.images.store import Store\n"
                       "from contained.images.busybox import import_busybox\n"
                       "import_busybox(Store())")
    assert done.returncode == 0, done.stderr[-3000:]


@_students
def test_in_a_delegated_unit_a_container_without_limits_lands_in_its_containers_group(
        student, unit_group):  # noqa: F811 (the fixture imported above)
    import threading
    import time

    import_busybox_as(student, unit_group)
    seen, done = set(), {}
    run = threading.Thread(target=lambda: done.update(result=run_in_unit(
        student, unit_group, str(SYSTEM_PYTHON), "-m", "contained", "run", "--rm", "busybox",
        "sleep", "1.5")))
    run.start()
    while run.is_alive():
        seen |= {path for path in container_groups(unit_group)
                 if files.procs(path / "cgroup.procs")}
        time.sleep(0.05)
    assert done["result"].returncode == 0, done["result"].stderr[-3000:]
    assert seen, "the container ran in no group of the unit's"
    assert not container_groups(unit_group)  # --rm removed it


# --- recognising the group, and the sentences, with a stand-in tree (no root) -----------------


@pytest.fixture
def fake_unit(tmp_path, monkeypatch):
    """A unit group in a stand-in v2 tree, owned by this user; this process "is" in it."""
    group = tmp_path / "system.slice" / "jupyter-ada.service"
    group.mkdir(parents=True)
    for name in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        (group / name).write_text("")
    (group / "cgroup.controllers").write_text("memory pids\n")
    monkeypatch.setattr(unit, "own_v2_group", lambda: "/system.slice/jupyter-ada.service")
    return group


def test_a_group_that_is_the_callers_own_is_recognised_as_delegated(tmp_path, fake_unit):
    found = unit.find(tmp_path)
    assert found == unit.UnitGroup(fake_unit, "system.slice/jupyter-ada.service",
                                   frozenset({"memory", "pids"}))
    assert found.containers == fake_unit / "containers"


def test_after_moving_to_its_server_leaf_the_unit_is_still_found(tmp_path, fake_unit,
                                                                  monkeypatch):
    (fake_unit / "server").mkdir()
    monkeypatch.setattr(unit, "own_v2_group", lambda: "/system.slice/jupyter-ada.service/server")
    assert unit.find(tmp_path).path == fake_unit


def test_the_trees_root_or_a_group_without_its_control_files_is_not_delegated(tmp_path,
                                                                              fake_unit,
                                                                              monkeypatch):
    (fake_unit / "cgroup.subtree_control").unlink()
    assert unit.find(tmp_path) is None
    monkeypatch.setattr(unit, "own_v2_group", lambda: "/")
    assert unit.find(tmp_path) is None
    assert unit.find(None) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user")
def test_a_group_owned_by_someone_else_is_not_delegated(tmp_path, fake_unit):
    os.chown(fake_unit / "cgroup.procs", 65534, 65534)
    assert unit.find(tmp_path) is None


def _stand_in(mode: str, v2: set[str], v1: tuple[str, ...] = ()) -> cgroups.CgroupHost:
    return cgroups.CgroupHost(mode=mode, unified=Path("/sys/fs/cgroup"),
                              v2_controllers=frozenset(v2),
                              v1_mounts={name: Path(f"/v1/{name}") for name in v1})


def _unit_with(controllers: set[str]) -> unit.UnitGroup:
    return unit.UnitGroup(Path("/sys/fs/cgroup/system.slice/jupyter-ada.service"),
                          "system.slice/jupyter-ada.service", frozenset(controllers))


def test_on_a_hybrid_host_a_delegated_unit_says_in_one_line_that_v1_holds_the_limits():
    stand_in = _stand_in("hybrid", {"hugetlb"}, ("memory", "cpu", "pids"))
    said = host._unit_problem(stand_in, _unit_with({"hugetlb"}), "ada")
    assert "\n" not in said and "Delegate=yes" in said
    assert "memory, cpu, pids are cgroup v1 controllers" in said
    assert "sudo contained classroom delegate ada" in said


def test_on_pure_v2_a_delegated_unit_with_every_controller_can_limit():
    stand_in = _stand_in("v2", {"memory", "cpu", "pids", "io"})
    assert host._unit_problem(stand_in, _unit_with({"memory", "cpu", "pids"}), "ada") is None
    said = host._unit_problem(stand_in, _unit_with({"memory"}), "ada")
    assert "\n" not in said and "offers no cpu, pids controller" in said


def test_the_leaf_step_moves_the_units_processes_before_passing_controllers_on():
    step = unit.leaf_step(_unit_with({"memory", "pids"}), "+memory +pids")
    group = "/sys/fs/cgroup/system.slice/jupyter-ada.service"
    assert step.shell == (
        f"mkdir -p {group}/server {group}/containers; for pid in $(cat {group}/cgroup.procs);"
        f" do echo $pid > {group}/server/cgroup.procs; done; "
        f"echo +memory +pids > {group}/cgroup.subtree_control")


# --- `contained classroom init --tljh`: the Littlest JupyterHub's config snippet --------------


def test_init_for_tljh_writes_a_snippet_that_delegates_each_students_unit(tmp_path):
    path = tljh.write_config(tmp_path, memory="2G", cpus="1.5", pids=512)
    text = path.read_text()
    compile(text, str(path), "exec")
    assert path == tmp_path / "contained.py"
    assert 'c.SystemdSpawner.unit_extra_properties.update({"Delegate": "yes", "TasksMax": ' \
           '"512"})' in text
    assert 'c.SystemdSpawner.mem_limit = "2G"' in text
    assert "c.SystemdSpawner.cpu_limit = 1.5" in text
    assert path.stat().st_mode & 0o077 == 0


def test_the_tljh_snippet_adds_delegation_and_each_students_home_to_tljhs_config(tmp_path):
    from traitlets import Dict
    from traitlets.config import Config, Configurable

    class Spawner(Configurable):  # the traits JupyterHub's Spawner and systemdspawner have
        environment = Dict().tag(config=True)

    class SystemdSpawner(Spawner):
        unit_extra_properties = Dict().tag(config=True)
        username_template = "{USERNAME}"  # TLJH's is jupyter-{USERNAME}

        class user:
            name = "root"  # an account every machine has

    text = tljh.render()
    assert "mem_limit" not in text and "TasksMax" not in text  # tljh-config's limits stay
    config = Config()
    config.SystemdSpawner.unit_extra_properties = {"MemoryAccounting": "yes"}  # as TLJH's own
    exec(compile(text, "contained.py", "exec"), {"get_config": lambda: config})
    spawner = SystemdSpawner(config=config)
    assert spawner.unit_extra_properties == {"MemoryAccounting": "yes", "Delegate": "yes"}
    home_of = spawner.environment["CONTAINED_HOME"]
    assert home_of(spawner) == os.path.expanduser("~root") + "/.local/share/contained"


def test_init_for_tljh_dry_run_prints_the_snippet_and_writes_nothing(tmp_path, capsys,
                                                                     monkeypatch):
    from contained import cli

    monkeypatch.setattr(hub, "check_machine", lambda tljh=False: [(True, "checked")])
    monkeypatch.setenv("CONTAINED_CLASSROOM_CONFIG", str(tmp_path / "classroom.json"))
    assert cli.main(["classroom", "init", "--tljh", "--dir", str(tmp_path / "d"),
                     "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert '"Delegate": "yes"' in printed and "checked" in printed
    assert not (tmp_path / "d").exists() and not (tmp_path / "classroom.json").exists()
