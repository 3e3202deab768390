"""Rootless --net bridge: a throwaway Unix user's containers get a network from slirp4netns.

Root makes the user (as tests/test_classroom.py does) and runs one scenario as that user, in a
private mount namespace of the test's own where /dev/net/tun is a 0666 node, as udev makes it
on most distributions (this VM keeps it 0600, and the test must not change the host's). The
containers, slirp4netns and the published ports are the user's alone; the only traffic goes
to 127.0.0.1 and to the containers' own namespaces.
"""

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import free_port, kill_processes_of, make_student, needs_root, processes_of
from test_classroom import needs_student

from contained.network import slirp
from contained.records import replace

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")

SCENARIO = r'''
import json, os, socket, sys, time, urllib.request
from contained.runtime import container
from contained.images.store import Store
from contained.images.busybox import import_busybox

import_busybox(Store())
web_port, secret_port = int(sys.argv[1]), int(sys.argv[2])
runner = container.Runner()  # a helper process with spares, as a Jupyter kernel uses it
out = {}

def slirps():
    """This user's slirp4netns processes."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "slirp4netns" \
                    and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                found.append(int(pid))
        except OSError:
            pass
    return found

def settled():
    for _ in range(60):
        if not slirps():
            return []
        time.sleep(0.05)
    return slirps()

def run(key, command, **options):
    read, write = os.pipe()
    started = time.monotonic()
    try:
        result = container.run("busybox", ["sh", "-c", command], stdout=write, stderr=write,
                               runner_=runner, settle=True, **options)
        os.close(write)
        out[key] = {"status": result.status, "seconds": time.monotonic() - started,
                    "output": os.read(read, 1 << 20).decode(errors="replace")}
    except container.ContainedError as error:
        os.close(write)
        out[key] = {"error": str(error)}
    os.close(read)

run("bridge", "ip -4 -o addr show tap0; ip route; cat /etc/hosts; "
    "cat /proc/1/environ >/dev/null 2>&1 && echo PID 1 readable || echo PID 1 sealed",
    net="bridge")
out["left_after_run"] = settled()
run("loopback", f"nc -w 2 10.0.2.2 {secret_port} </dev/null && echo connected || echo refused",
    net="bridge")
times = {"none": [], "bridge": []}
for _ in range(5):
    for net in times:
        run("timed", "true", net=net)
        times[net].append(out["timed"]["seconds"])
out["times"] = times

web = container.start("busybox", ["sh", "-c", "mkdir -p /www && echo hello from slirp > "
                                  "/www/index.html && exec httpd -f -p 80 -h /www"],
                      net="bridge", publish=[f"127.0.0.1:{web_port}:80"], runner_=runner)
web.wait_started()
for _ in range(50):
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=2)
        out["page"] = page.read().decode()
        break
    except OSError as error:
        out["page"] = str(error)
        time.sleep(0.1)
web.kill()
web.wait(settle=True)
out["left_after_web"] = settled()

def port_taken(port):
    with socket.socket() as probe:
        # as slirp4netns binds: TIME_WAIT from the web page's connection does not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True

container.create("busybox", name="named", net="bridge", publish=[f"127.0.0.1:{web_port}:80"],
                 runner_=runner)
time.sleep(0.3)
out["named_slirps"] = slirps()  # it outlives the runner that started it
out["named_port_taken"] = port_taken(web_port)
container.remove("named", force=True)
out["left_after_rm"] = settled()
out["port_free_after_rm"] = not port_taken(web_port)

# a crash: PID 1 of a named container is killed; gc finds what is left of its network
crashed = container.create("busybox", name="crashed", net="bridge", runner_=runner)
os.kill(crashed.init_pid, 9)
time.sleep(0.2)
out["gc"] = container.gc()
out["left_after_gc"] = settled()
container.remove("crashed", force=True)
runner.close()
home = os.environ["CONTAINED_HOME"]
out["files"] = sorted(str(p) for p in __import__("pathlib").Path(home).rglob("slirp4netns*"))
print(json.dumps(out))
'''


def run_as_student(account, scenario: str, *args: str) -> dict:
    """`scenario` as the student, in a private mount namespace where /dev/net/tun is 0666."""
    home = Path(account.pw_dir)
    site_packages = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else ""
    env = {"HOME": str(home), "CONTAINED_HOME": str(home / "contained"),
           "PYTHONPATH": f"{ROOT}:{site_packages}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    nodes = tempfile.mkdtemp(prefix="contained-tun-")
    # a tmpfs of the test's own (whatever /tmp's nodev), a tun node on it, bound over the
    # host's only inside this mount namespace
    with_tun = ('mount -t tmpfs -o mode=0755 tmpfs "$0" && mknod -m 666 "$0/tun" c 10 200 '
                '&& mount --bind "$0/tun" /dev/net/tun && exec "$@"')
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", with_tun, nodes,
             "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
             "--clear-groups", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
             str(SYSTEM_PYTHON), "-c", scenario, *args],
            capture_output=True, text=True, timeout=240, cwd=home)
    finally:
        os.rmdir(nodes)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


class LoopbackServer:
    """A TCP server on the host's 127.0.0.1 that counts who connects (the container must not)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"secret\n")
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def scenario_result():
    """The scenario, run once for the tests below (a minute of containers)."""
    if not shutil.which("slirp4netns"):
        pytest.skip("needs slirp4netns (apt-get install slirp4netns)")
    if not Path(slirp.TUN_DEVICE).exists():
        pytest.skip("needs /dev/net/tun (modprobe tun)")
    account = make_student("cnet")  # once per module: this scenario runs once
    server = LoopbackServer()
    try:
        out = run_as_student(account, SCENARIO, str(free_port()), str(server.port))
        out["accepted"] = server.accepted
        out["uid"] = account.pw_uid
        out["leftover"] = processes_of(account.pw_uid)
        yield out
    finally:
        server.close()
        _remove_student(account)


def _remove_student(account) -> None:
    kill_processes_of(account.pw_uid)
    subprocess.run(["userdel", account.pw_name], check=True)
    shutil.rmtree(account.pw_dir, ignore_errors=True)


def _marks(test):
    for mark in reversed(needs_student):
        test = mark(test)
    return test


@_marks
def test_a_rootless_bridged_container_has_tap0_with_an_address_and_a_default_route(
        scenario_result):
    bridge = scenario_result["bridge"]
    assert bridge.get("status") == 0, bridge
    assert f"inet {slirp.GUEST_ADDRESS}/24" in bridge["output"]
    assert f"default via {slirp.GATEWAY} dev {slirp.INTERFACE}" in bridge["output"]
    assert f"{slirp.GUEST_ADDRESS}\t" in bridge["output"]  # /etc/hosts names the container


@_marks
def test_pid_one_is_sealed_again_once_slirp4netns_has_entered_its_namespace(scenario_result):
    """PID 1 is dumpable while slirp4netns opens /proc/PID/ns/net, then non-dumpable again
    before the command starts: the container cannot read its memory or environment."""
    assert "PID 1 sealed" in scenario_result["bridge"]["output"], scenario_result["bridge"]


@_marks
def test_a_rootless_container_cannot_reach_the_hosts_loopback_through_the_gateway(
        scenario_result):
    """CVE-2020-8558's lesson, rootless: 10.0.2.2 is the host, but not its 127.0.0.1."""
    loopback = scenario_result["loopback"]
    assert loopback.get("status") == 0, loopback
    assert "refused" in loopback["output"] and "secret" not in loopback["output"]
    assert scenario_result["accepted"] == 0


@_marks
def test_a_published_port_reaches_httpd_in_a_rootless_container_from_the_host(scenario_result):
    assert scenario_result["page"] == "hello from slirp\n"


@_marks
def test_a_named_containers_slirp4netns_lives_while_it_runs_and_goes_with_rm_f(scenario_result):
    assert len(scenario_result["named_slirps"]) == 1
    assert scenario_result["named_port_taken"]  # slirp4netns listens for the published port
    assert scenario_result["left_after_rm"] == []
    assert scenario_result["port_free_after_rm"]


@_marks
def test_no_slirp4netns_process_socket_or_file_is_left_after_run_rm_and_gc(scenario_result):
    assert scenario_result["left_after_run"] == []
    assert scenario_result["left_after_web"] == []
    assert scenario_result["left_after_gc"] == []
    assert scenario_result["files"] == []
    assert scenario_result["leftover"] == []  # nothing of the user's runs any more


@_marks
def test_rootless_bridge_costs_little_over_no_network(scenario_result):
    times = {net: sorted(values)[len(values) // 2]
             for net, values in scenario_result["times"].items()}
    print(f"rootless run `true`, median of 5: {times}")
    assert times["bridge"] < times["none"] + 1.0, times


# --- without a user: the plan, gc, doctor --------------------------------------------------


@needs_root
def test_dry_run_of_a_rootless_bridge_shows_slirp4netns_and_add_hostfwd(busybox_store):
    from contained.runtime import container, specs

    spec = replace(specs.build_spec("busybox", ["true"], net="bridge",
                                    publish=["127.0.0.1:8080:80"], store=busybox_store),
                   rootless=True)
    lines = container.dry_run(spec)
    text = "\n".join(lines)
    assert "slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox " \
           "--enable-seccomp --api-socket" in text
    assert "add_hostfwd" in text and '"host_port": 8080' in text and "nc -U" in text
    assert "before unshare --pid" in text  # the launcher, in the user phase
    assert "slirp4netns connects this network namespace" in text
    assert "ip link add" not in text  # no bridge, no veth


def test_gc_ends_a_recorded_slirp4netns_whose_pid_one_is_gone_in_its_own_home_only(tmp_path):
    from contained import procfs

    ours, theirs = tmp_path / "ours" / "c1", tmp_path / "theirs" / "c2"
    stand_ins = []
    for directory in (ours, theirs):
        directory.mkdir(parents=True)
        stand_in = subprocess.Popen(["sleep", "60"])  # plays slirp4netns
        stand_ins.append(stand_in)
        (directory / slirp.API_SOCKET).touch()
        (directory / slirp.RECORD).write_text(json.dumps({
            "pid": stand_in.pid, "start": procfs.start_time(stand_in.pid),
            "init_pid": 1, "init_start": -1}))  # PID 1 as recorded is long gone
    try:
        assert slirp.gc(ours.parent) == ["c1"]
        assert procfs.start_time(stand_ins[0].pid) is None  # killed (and reaped: our child)
        assert sorted(os.listdir(ours)) == []
        assert stand_ins[1].poll() is None and (theirs / slirp.RECORD).exists()
    finally:
        for stand_in in stand_ins:
            stand_in.kill()
            stand_in.wait()


def test_doctor_says_how_to_open_dev_net_tun_for_rootless_bridges(monkeypatch):
    monkeypatch.setattr(slirp.shutil, "which", lambda name: "/usr/bin/slirp4netns")
    monkeypatch.setattr(slirp.os, "access", lambda path, mode: False)
    (problem,) = slirp.problems()
    assert "--net bridge needs root here" in problem and "chmod 0666 /dev/net/tun" in problem
    assert "\n" not in problem


def test_a_missing_slirp4netns_is_one_line_that_says_what_to_install(monkeypatch):
    monkeypatch.setattr(slirp.shutil, "which", lambda name: None)
    monkeypatch.setattr(slirp.os, "access", lambda path, mode: True)
    with pytest.raises(slirp.SlirpUnavailable, match="apt-get install slirp4netns"):
        slirp.check_available()
