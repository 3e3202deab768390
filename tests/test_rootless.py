"""Rootless containers, run by a real unprivileged user (nobody) in a user namespace.

The test itself needs root only to become `nobody` (setpriv) and to give it a home; the
containers are made entirely without privileges: a user namespace maps nobody to root, the
overlay is mounted inside it, and no cgroup is needed when no limit is asked for.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import needs_root, user_namespaces_allowed

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")

SCENARIO = r'''
import json, os
from contained.runtime import container
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
runner = container.Runner(in_process=True)
out = {}
read, write = os.pipe()
result = container.run("busybox", ["sh", "-c", "id -u; hostname; grep CapEff /proc/self/status;"
                                   " echo hi > /tmp/x && cat /tmp/x"],
                       stdout=write, runner_=runner, hostname="rootless")
os.close(write)
out["run"] = [result.status, os.read(read, 65536).decode()]
container.create("busybox", name="kept", runner_=runner)
read, write = os.pipe()
result = container.exec_("kept", ["sh", "-c", "echo kept > /root/f; cat /root/f; ps -o pid,comm;"
                                  " echo parent=$(cut -d' ' -f4 /proc/$$/stat)"],
                         stdout=write, runner_=runner)
os.close(write)
out["exec"] = [result.status, os.read(read, 65536).decode()]
try:
    container.run("busybox", ["true"], memory="32M", runner_=runner)
    out["limit"] = "no error"
except container.ContainedError as error:
    out["limit"] = str(error)
container.remove("kept", force=True)
out["pids"] = container.build_spec("busybox", ["true"]).pids_limit  # no cgroup: no default
out["left"] = sorted(os.listdir(os.path.join(os.environ["CONTAINED_HOME"], "containers")))
print(json.dumps(out))
'''


def run_as_nobody(home: Path, scenario: str):
    """Run `scenario` (Python) as nobody with contained on PYTHONPATH; its last line, as JSON."""
    if not user_namespaces_allowed():
        pytest.skip("user namespaces are disabled here (contained doctor says how to enable)")
    site_packages = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else ""
    env = {"HOME": str(home), "CONTAINED_HOME": str(home / "contained"),
           "PYTHONPATH": f"{ROOT}:{site_packages}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
         *[f"{k}={v}" for k, v in env.items()], str(SYSTEM_PYTHON), "-c", scenario],
        capture_output=True, text=True, timeout=120, cwd=home)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def nobody_home():
    """A home for nobody (pytest's tmp_path is under a root-only directory)."""
    home = Path(tempfile.mkdtemp(prefix="contained-nobody-"))
    shutil.chown(home, "nobody", "nogroup")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@needs_root
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3 (the venv's "
                    "interpreter may live where nobody cannot read it)")
def test_nobody_runs_throwaway_and_named_containers(nobody_home):
    out = run_as_nobody(nobody_home, SCENARIO)
    status, text = out["run"]
    assert status == 0
    uid, hostname, caps, written = text.split("\n")[:4]
    assert uid == "0" and hostname == "rootless"  # root inside, nobody outside
    assert caps.split()[-1] == "00000000a80425fb"
    assert written == "hi"
    status, text = out["exec"]
    assert status == 0 and text.startswith("kept\n") and "contained-init" in text
    # Started by PID 1 itself (contained/runtime/served.py), rootless too: the caller may
    # read the container's /etc/passwd through the non-dumpable init's /proc/PID/root.
    assert "parent=1\n" in text, text
    assert "\n" not in out["limit"] and "cgroup" in out["limit"].lower()
    assert out["pids"] is None  # cgroups not delegated to nobody here: runs without a limit
    assert out["left"] == [".lock"]


SPARES_SCENARIO = r'''
import json, os
from contained.runtime import container
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
runner = container.Runner()  # a helper process with spares, as a Jupyter kernel uses it
out = []
for options in ({}, {"memory": "32M"}, {}, {}):
    read, write = os.pipe()
    try:
        result = container.run("busybox", ["sh", "-c", "echo ok; cat /etc/hostname"],
                               stdout=write, runner_=runner, hostname="box", **options)
        out.append([result.status, os.read(read, 4096).decode()])
    except container.ContainedError as error:
        out.append(["error", str(error)])
    finally:
        os.close(write)
        os.close(read)
runner.close()
print(json.dumps(out))
'''


@needs_root
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3")
def test_a_failed_rootless_cell_leaves_the_next_ones_working(nobody_home):
    """Issue 16: a rootless spare decided "rootless" after entering its user namespace (where
    it is uid 0), so every spare failed, and the cell after a failing one found a broken one."""
    plain, limited, *after = run_as_nobody(nobody_home, SPARES_SCENARIO)
    assert plain == [0, "ok\nbox\n"]
    assert limited[0] == "error" and "cgroup" in limited[1].lower()
    # On spares: their /etc/hostname is the layer on the spare's tmpfs (`rootfs`).
    assert after == [[0, "ok\nbox\n"], [0, "ok\nbox\n"]]


HOST_NET_SCENARIO = r'''
import json, os
from contained.runtime import container
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
read, write = os.pipe()
result = container.run("busybox", ["sh", "-c", "ls /sys/class/net; touch /sys/x 2>&1; true"],
                       stdout=write, stderr=write, net="host",
                       runner_=container.Runner(in_process=True))
os.close(write)
print(json.dumps([result.status, os.read(read, 65536).decode()]))
'''


@needs_root
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3")
def test_rootless_host_network_sees_the_hosts_interfaces_through_a_read_only_sys(nobody_home):
    """Issue 16: only the owner of a network namespace may mount sysfs, so rootless --net host
    failed mounting it; the host's /sys is bound in read-only instead."""
    status, output = run_as_nobody(nobody_home, HOST_NET_SCENARIO)
    assert status == 0, output
    assert "lo" in output.split() and set(output.split()) & set(os.listdir("/sys/class/net"))
    assert "Read-only file system" in output
