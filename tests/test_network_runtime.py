"""`--net bridge` end to end: real busybox containers on contained0, by name and by port (root).

tests/test_network.py checks the network module with stand-in processes; this file runs the
real thing — `contained run -d --net bridge -p ...`, the runner helper a notebook kernel uses,
`contained gc` — with busybox imported offline into a temporary CONTAINED_HOME.

Like test_network.py, everything happens in a *scenario*: this file re-run as a script under
``unshare --net --mount --propagation private``, so contained0, the veths, the nft table, the
forwarding sysctls and every packet live in a network namespace the test created and vanish
with it. Traffic goes only to 127.0.0.1 and to the bridge's subnet inside that namespace.
Containers get their own cgroup parent (CONTAINED_CGROUP_PARENT) per test, removed at the end.
A scenario asserts as it goes and prints one JSON line of facts that the test asserts on again.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_network import _state, host_view, isolated_env, run_in_network_namespace  # noqa: E402

from contained import network  # noqa: E402
from contained.network.tools import link_exists  # noqa: E402
from contained.runtime import cgroups, container  # noqa: E402

try:
    from conftest import needs_root, remove_cgroup_parent
except ImportError:  # run as a scenario script, outside pytest
    needs_root = pytest.mark.skipif(False, reason="")

SCENARIO_TIMEOUT = 90
HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
#: the 5 cycles (of 50) whose `contained run` is SIGKILLed with its runner
KILLED_CYCLES = range(5, 50, 10)


# --- the tests: run a scenario in a fresh network namespace, then check the host -----------


def run_scenario(name: str, tmp_path: Path) -> dict:
    """Run a scenario under unshare --net --mount; return its JSON facts.

    The host's links, nft tables, ip_forward and our cgroup parent must be as they were.
    """
    parent = f"contained-nettest-{os.getpid()}-{name[:12]}"
    env = isolated_env(tmp_path / "home", parent)
    before = host_view()
    try:
        done = run_in_network_namespace([sys.executable, __file__, name, str(tmp_path)], env,
                                        SCENARIO_TIMEOUT, cwd=REPO, mount=True)
    finally:
        leftover = remove_cgroup_parent(parent)
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr}"
    assert leftover == [], f"the scenario left cgroups under {parent}: {leftover}"
    assert host_view() == before, "the scenario changed the host's network"
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_root
def test_web_by_name_and_through_a_published_port_then_address_reuse(tmp_path):
    facts = run_scenario("web_by_name", tmp_path)
    assert facts["client_wget_by_name"] == "hello\n"
    assert facts["host_urllib_8080"] == "hello\n"
    assert re.search(r"^10\.77\.0\.\d+\tweb$", facts["client_hosts"], re.MULTILINE)
    assert facts["ips"]["web"] == "10.77.0.2"
    assert facts["ips"]["other"] == "10.77.0.3"
    assert facts["reused_ip"] == facts["ips"]["web"]  # web's address, freed by rm
    assert "\tweb\n" not in facts["other_hosts_after_rm"]
    assert "\tthird\n" in facts["other_hosts_after_rm"]
    assert facts["port_freed"] == "hello\n"  # 8080 published again, by the new container
    # --explain shows the network steps between PID 1's unshare and its hostname, in order
    explain = facts["explain_order"]
    assert explain.index("unshare") < explain.index("ip link add veth") \
        < explain.index("ip route add default") < explain.index("hostname")
    assert facts["explain_status"] == 0
    assert facts["after"] == {"links": ["lo"], "tables": [], "lease_file": False,
                              "containers": [], "cgroups": []}


@needs_root
def test_fifty_cycles_with_killed_runners_leave_nothing_after_gc(tmp_path):
    facts = run_scenario("fifty_cycles", tmp_path)
    assert facts["killed"] == [f"c{i}" for i in KILLED_CYCLES]
    assert facts["statuses"] == [0] * (50 - len(KILLED_CYCLES))
    # the SIGKILLed runners did leave something, or gc would have nothing to prove
    stale = facts["before_gc"]
    assert sorted(stale["leases"]) == sorted(facts["killed"])
    assert stale["port_rules"] == len(KILLED_CYCLES)
    assert len(stale["containers"]) == len(KILLED_CYCLES) and stale["cgroups"]
    assert "contained0" in stale["links"]
    assert sorted(n for n in facts["gc_removed"] if n.startswith("network ")) == sorted(
        f"network {name}" for name in facts["killed"])
    assert facts["after"] == facts["before"] == {
        "links": ["lo"], "tables": [], "lease_file": False, "containers": [], "cgroups": []}
    assert facts["gc_again"] == ""  # idempotent
    assert facts["seconds"] < 60


@needs_root
def test_two_homes_bridge_at_once_and_one_homes_gc_leaves_the_other_reachable(tmp_path):
    facts = run_scenario("two_homes", tmp_path)
    assert facts["a_8081"] == facts["b_8082"] == "hello\n"
    assert facts["bridges"][0] != facts["bridges"][1]
    assert facts["ips"][0] != facts["ips"][1]  # each home's own subnet
    assert "127.0.0.1:8081/tcp is published by another home's container" in facts["clash"]
    assert facts["b_to_a"] != 0, "a container reached another home's bridge"
    assert facts["b_after_a_gc"] == "hello\n", "a's clean-up cut b's container off"
    assert facts["b_bridge_after_a_gc"]
    assert facts["after"] == {"links": ["lo"], "tables": [], "lease_file": False,
                              "containers": [], "cgroups": []}


# --- the scenarios, run by run_scenario inside a fresh network namespace ------------------


def _contained(*argv: str, timeout: float = 30, check: bool = True
               ) -> subprocess.CompletedProcess:
    """The `contained` command, as a user types it."""
    done = subprocess.run([sys.executable, "-m", "contained", *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, f"contained {' '.join(argv)}: {done.stderr}"
    return done


def _fetch(url: str) -> str:
    """GET a page on 127.0.0.1 with urllib, ignoring any proxy setting."""
    assert url.startswith("http://127.0.0.1:")  # this test talks to nothing else
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.read().decode()


def _wait_for_page(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _fetch(url)
        except OSError:
            # httpd starts a moment after `run -d` returns
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.05)


def _eth0_ip(name: str) -> str:
    out = _contained("exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def _census() -> dict:
    """What containers could leave: links, nft tables, leases, container dirs, cgroups."""
    home = Path(os.environ["CONTAINED_HOME"])
    groups = set()
    for parent in cgroups.parent_paths():
        if parent.exists():
            groups |= {p.name for p in parent.iterdir()
                       if p.is_dir() and not p.name.startswith("spare-")}
    containers_dir = home / "containers"
    # Dot entries (.staging, where a runner's spare builds /proc, /sys, /dev) are not containers.
    return {**_state(), "containers": sorted(p.name for p in containers_dir.iterdir()
                                             if p.is_dir() and not p.name.startswith("."))
            if containers_dir.exists() else [],
            "cgroups": sorted(groups)}


def _settled(timeout: float = 10) -> dict:
    """The census once spares and teardowns in flight are gone (they finish asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        census = _census()
        if not census["containers"] and not census["cgroups"] or time.monotonic() > deadline:
            return census
        time.sleep(0.05)


def scenario_web_by_name(tmp: Path) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _contained("import", "busybox")
    facts: dict = {}
    try:
        _contained("run", "-d", "--name", "web", "--net", "bridge", "-p", "127.0.0.1:8080:80",
                   "busybox", "sh", "-c", HTTPD)
        facts["host_urllib_8080"] = _wait_for_page("http://127.0.0.1:8080/")
        facts["client_wget_by_name"] = _contained(
            "run", "--rm", "--net", "bridge", "busybox", "wget", "-q", "-O", "-",
            "http://web/").stdout
        facts["client_hosts"] = _contained("run", "--rm", "--net", "bridge", "busybox",
                                           "cat", "/etc/hosts").stdout
        _contained("run", "-d", "--name", "other", "--net", "bridge", "busybox", "sleep", "60")
        facts["ips"] = {name: _eth0_ip(name) for name in ("web", "other")}
        _contained("rm", "-f", "web")
        _contained("run", "-d", "--name", "third", "--net", "bridge", "-p",
                   "127.0.0.1:8080:80", "busybox", "sh", "-c", HTTPD)
        facts["reused_ip"] = _eth0_ip("third")
        facts["other_hosts_after_rm"] = _contained("exec", "other", "cat", "/etc/hosts").stdout
        facts["port_freed"] = _wait_for_page("http://127.0.0.1:8080/")
        explained = _contained("run", "--rm", "--explain", "--net", "bridge", "busybox", "true",
                               timeout=20, check=False)
        facts["explain_status"] = explained.returncode
        # the explained lines, reduced to the words the test looks for, in order of appearance
        order = []
        for line in explained.stderr.splitlines():
            for word in ("unshare", "ip link add veth", "ip route add default", "hostname"):
                if word in line.split("  # ")[0]:
                    order.append(word)
        facts["explain_order"] = order
    finally:
        for name in ("web", "other", "third"):
            _contained("rm", "-f", name, check=False)
        _contained("gc")
    facts["after"] = _settled()
    return facts


def _runner_of(directory: Path, timeout: float = 10) -> dict:
    """The record (state.json) of a container once its PID 1 is in it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            recorded = json.loads((directory / "state.json").read_text())
            if recorded.get("init_pid"):
                return recorded
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert time.monotonic() < deadline, f"no PID 1 recorded in {directory}"
        time.sleep(0.02)


def _kill_a_run(name: str, port: int) -> None:
    """`contained run` of a bridged container, SIGKILLed with its runner once it runs.

    Killing the whole process group (the CLI and its runner child) is a crash: nobody is left
    to tear anything down. PID 1 dies with its runner (PR_SET_PDEATHSIG) and its network
    namespace with it, which takes the veth pair along; the lease, the port rule, the cgroup and
    the container's directory stay for gc.
    """
    home = Path(os.environ["CONTAINED_HOME"]) / "containers"
    known = set(os.listdir(home)) | {".staging", ".lock"} if home.exists() else set()
    cli = subprocess.Popen([sys.executable, "-m", "contained", "run", "--name", name, "--rm",
                            "--net", "bridge", "-p", f"127.0.0.1:{port}:80", "busybox",
                            "sleep", "300"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (home.exists() and set(os.listdir(home)) - known):
        assert time.monotonic() < deadline and cli.poll() is None, "the run never started"
        time.sleep(0.02)
    (directory,) = [home / d for d in set(os.listdir(home)) - known]
    init_pid = _runner_of(directory)["init_pid"]
    deadline = time.monotonic() + 10
    while name not in network.hosts_entries():  # attached: the veth is plugged in
        assert time.monotonic() < deadline, f"{name} never got onto the bridge"
        time.sleep(0.02)
    os.killpg(cli.pid, signal.SIGKILL)
    cli.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{init_pid}"):
        assert time.monotonic() < deadline, f"PID 1 ({init_pid}) of {name} outlived its runner"
        time.sleep(0.02)


def _port_rules() -> int:
    out = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for item in json.loads(out)["nftables"]
               if "rule" in item and item["rule"]["chain"] == "ports")


def scenario_fifty_cycles(tmp: Path) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _contained("import", "busybox")
    null = os.open(os.devnull, os.O_RDWR)
    helper = container.Runner()  # as a notebook kernel has one
    killed, statuses = [], []
    before = _census()
    started = time.monotonic()
    try:
        for i in range(50):
            name, publish = f"c{i}", [f"127.0.0.1:{9000 + i}:80"]
            if i in KILLED_CYCLES:
                _kill_a_run(name, 9000 + i)
                killed.append(name)
            elif i % 10 == 0:
                # a named container, an exec in it, then rm -f (stop → detach)
                container.create("busybox", name=name, net="bridge", publish=publish,
                                 runner_=helper)
                statuses.append(container.exec_(name, ["ip", "link", "show", "eth0"],
                                                stdin=null, stdout=null, runner_=helper).status)
                container.remove(name, force=True)
            else:
                statuses.append(container.run("busybox", ["true"], net="bridge",
                                              publish=publish, stdin=null, stdout=null,
                                              runner_=helper, settle=True).status)
        leases = json.loads(network.state_path(network.NetworkConfig()).read_text())["leases"]
        before_gc = {**_census(), "leases": sorted(leases), "port_rules": _port_rules()}
        gc_out = _contained("gc").stdout
        gc_again = _contained("gc").stdout
    finally:
        helper.close()
        os.close(null)
    return {"before": before, "after": _settled(), "before_gc": before_gc, "killed": killed,
            "statuses": statuses, "gc_removed": [line.removeprefix("removed ")
                                                 for line in gc_out.splitlines()],
            "gc_again": gc_again, "seconds": time.monotonic() - started}


def scenario_two_homes(tmp: Path) -> dict:
    """Two students' homes in one namespace, a bridged web server each, published."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    homes = [Path(os.environ["CONTAINED_HOME"]), tmp / "home-b"]
    facts: dict = {}

    def in_home(home: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        saved = os.environ["CONTAINED_HOME"]
        os.environ["CONTAINED_HOME"] = str(home)
        try:
            return _contained(*argv, check=check)
        finally:
            os.environ["CONTAINED_HOME"] = saved

    def bridge_of(home: Path) -> str:
        (lease_file,) = (home / "network").glob("*.json")
        return lease_file.stem

    try:
        for home, port in zip(homes, (8081, 8082), strict=True):
            in_home(home, "import", "busybox")
            in_home(home, "run", "-d", "--name", "web", "--net", "bridge", "-p",
                    f"127.0.0.1:{port}:80", "busybox", "sh", "-c", HTTPD)
        facts["a_8081"] = _wait_for_page("http://127.0.0.1:8081/")
        facts["b_8082"] = _wait_for_page("http://127.0.0.1:8082/")
        facts["bridges"] = [bridge_of(home) for home in homes]
        facts["ips"] = [in_home(home, "exec", "web", "ip", "-o", "-4", "addr", "show", "dev",
                                "eth0").stdout.split()[3] for home in homes]
        facts["clash"] = in_home(homes[1], "run", "--rm", "--net", "bridge", "-p",
                                 "127.0.0.1:8081:80", "busybox", "true", check=False).stderr
        # even with forwarding on, b's containers do not reach a's bridge
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        a_ip = facts["ips"][0].split("/")[0]
        facts["b_to_a"] = in_home(homes[1], "exec", "web", "timeout", "3", "wget", "-q", "-O",
                                  "-", f"http://{a_ip}/", check=False).returncode
        in_home(homes[0], "rm", "-f", "web")
        in_home(homes[0], "gc")
        facts["b_after_a_gc"] = _wait_for_page("http://127.0.0.1:8082/", timeout=3)
        facts["b_bridge_after_a_gc"] = link_exists(facts["bridges"][1])
    finally:
        for home in homes:
            in_home(home, "rm", "-f", "web", check=False)
            in_home(home, "gc", check=False)
    facts["after"] = _settled()
    return facts


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        result = globals()[f"scenario_{scenario}"](Path(scratch))
    print(json.dumps(result))
