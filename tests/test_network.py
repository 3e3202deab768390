"""Tests for contained.network: bridge, veth, NAT, published ports, names, leases.

Everything that touches a network runs as a *scenario*: this file re-run as a script
(``python tests/test_network.py SCENARIO TMPDIR``) under ``unshare --net``, so the bridge, the
veths, the nft/iptables rules and every packet live in a network namespace the test created and
vanish with it. "Containers" are plain processes in their own network namespace (busybox httpd,
sleep), because the runtime is not part of this module. Traffic goes only to 127.0.0.1 and to
addresses inside those namespaces; the "internet" of the NAT test is one more namespace on
198.51.100.0/24 (TEST-NET-2). A scenario asserts as it goes and prints one JSON line of facts
that the test asserts on again.
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contained import network  # noqa: E402
from contained.network.firewall import port_rules  # noqa: E402
from contained.network.leases import bridge_alias  # noqa: E402
from contained.network.tools import link_exists  # noqa: E402
from contained.runtime.plan import run_steps  # noqa: E402

try:
    from conftest import needs_root
except ImportError:  # run as a scenario script, outside pytest
    needs_root = pytest.mark.skipif(False, reason="")

BUSYBOX = "/bin/busybox"
SCENARIO_TIMEOUT = 60


# --- without root: parsing and file contents ----------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("80", network.PortSpec("127.0.0.1", 0, 80, "tcp")),
        ("8080:80", network.PortSpec("127.0.0.1", 8080, 80, "tcp")),
        ("127.0.0.1:8080:80/udp", network.PortSpec("127.0.0.1", 8080, 80, "udp")),
        ("0.0.0.0::80", network.PortSpec("0.0.0.0", 0, 80, "tcp")),
        ("10.1.2.3:53:53/udp", network.PortSpec("10.1.2.3", 53, 53, "udp")),
    ],
)
def test_parse_publish_accepts_docker_forms(spec, expected):
    assert network.parse_publish(spec) == expected


@pytest.mark.parametrize(
    "spec, says",
    [
        ("", "port ''"),
        ("http", "port 'http'"),
        ("0", "port '0'"),
        ("8080:65536", "port '65536'"),
        ("80/sctp", "'sctp' is not tcp or udp"),
        ("8000-8010:80-90", "ranges are not supported"),
        ("[::1]:8080:80", "only IPv4"),
        ("localhost:8080:80", "'localhost' is not an IPv4 address"),
        ("1:2:3:4", "only IPv4"),
    ],
)
def test_parse_publish_rejects_with_one_line(spec, says):
    with pytest.raises(network.BadPortSpec) as caught:
        network.parse_publish(spec)
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_config_takes_subnet_from_environment_and_rejects_bad_ones(monkeypatch):
    monkeypatch.delenv("CONTAINED_SUBNET", raising=False)
    assert network.NetworkConfig().subnet == "10.77.0.0/24"
    assert network.NetworkConfig().gateway == "10.77.0.1"
    monkeypatch.setenv("CONTAINED_SUBNET", "10.99.0.0/16")
    assert network.NetworkConfig().network.prefixlen == 16
    for bad in ("10.99.0.1/16", "10.99.0.0/30", "fd00::/64", "nonsense"):
        monkeypatch.setenv("CONTAINED_SUBNET", bad)
        with pytest.raises(network.BadSubnet, match="CONTAINED_SUBNET|too small"):
            network.NetworkConfig()
    with pytest.raises(network.BadNetworkConfig, match="bridge name"):
        network.NetworkConfig(bridge="a-name-much-too-long", subnet="10.99.0.0/24")


def test_check_subnet_names_the_route_and_suggests_a_free_one():
    config = network.NetworkConfig(subnet="10.77.0.0/24")
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "10.77.0.0/16", "dev": "eth1"},
        {"dst": "10.78.0.0/16", "dev": "eth2"},
        {"dst": "10.77.0.0/24", "dev": "contained0"},  # our own bridge: not a collision
    ]
    with pytest.raises(network.SubnetInUse) as caught:
        network.check_subnet(config, routes)
    assert str(caught.value) == ("subnet 10.77.0.0/24 overlaps route 10.77.0.0/16 on eth1; "
                                 "set CONTAINED_SUBNET=10.79.0.0/24")
    network.check_subnet(network.NetworkConfig(subnet="10.79.0.0/24"), routes)


def test_attaching_an_exited_process_says_so(home):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(network.ContainerNotRunning, match=f"process {gone.pid} of container c "):
        network.plan_attach("c", gone.pid)


def test_container_names_must_be_host_names():
    network.check_name("web-1.example_a")
    for bad in ("", "-web", "a b", 'x"; drop', "x" * 64):
        with pytest.raises(network.BadContainerName):
            network.check_name(bad)


def test_hosts_file_lists_itself_then_the_others():
    content = network.hosts_file("client", "10.77.0.3", {"web": "10.77.0.2",
                                                         "client": "10.77.0.3"})
    lines = content.decode().splitlines()
    assert lines[1:] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                         "10.77.0.3\tclient", "10.77.0.2\tweb"]


def test_write_hosts_file_keeps_the_inode_a_bind_mount_points_at(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("x" * 1000)
    inode = path.stat().st_ino
    content = network.write_hosts_file(path, "web", "10.77.0.2", {})
    assert path.stat().st_ino == inode
    assert path.read_bytes() == content and b"10.77.0.2\tweb\n" in content


def test_resolv_conf_skips_loopback_and_ipv6_servers(tmp_path):
    stub = tmp_path / "stub"
    stub.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lab.example\n")
    upstream = tmp_path / "upstream"
    upstream.write_text("# comment\nnameserver 10.0.0.2\nnameserver fd00::1\n"
                        "nameserver 192.0.2.53\nsearch lab.example\n")
    text = network.resolv_conf((tmp_path / "missing", upstream, stub)).decode()
    assert "nameserver 10.0.0.2\nnameserver 192.0.2.53\nsearch lab.example\n" in text
    assert "fd00" not in text and "127.0.0.53" not in text
    fallback = network.resolv_conf((stub,)).decode()
    assert "nameserver 9.9.9.9" in fallback and "options edns0 trust-ad" in fallback
    assert "127.0.0.53" not in fallback


# --- with root: scenarios in a network namespace of their own -----------------------------


def host_view() -> dict:
    """What a leak onto the real host would change: links, nft tables, forwarding, /run/netns."""
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                      text=True).stdout or "[]")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {
        "links": sorted(link["ifname"] for link in links),
        "tables": tables,
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def isolated_env(home: Path, cgroup_parent: str) -> dict:
    """The environment for a run in a test's own network namespace: its own store and cgroup
    parent, the repository importable, and no subnet or proxy setting from outside."""
    env = {**os.environ, "CONTAINED_HOME": str(home), "CONTAINED_CGROUP_PARENT": cgroup_parent,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for variable in ("CONTAINED_SUBNET", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(variable, None)
    return env


def run_in_network_namespace(command: list[str], env: dict, timeout: float, *,
                             cwd: Path | None = None, mount: bool = False
                             ) -> subprocess.CompletedProcess:
    """Run `command` under ``unshare --net`` (and a private mount namespace if `mount`), in
    its own process group, which is killed afterwards with whatever it left running."""
    isolate = ["unshare", "--net", *(["--mount", "--propagation", "private"] if mount else [])]
    process = subprocess.Popen([*isolate, "--", *command], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_scenario(name: str, tmp_path: Path) -> dict:
    """Run a scenario in a fresh network namespace; return its JSON facts."""
    before = host_view()
    env = {**os.environ, "CONTAINED_HOME": str(tmp_path / "home")}
    env.pop("CONTAINED_SUBNET", None)
    done = run_in_network_namespace([sys.executable, __file__, name, str(tmp_path)], env,
                                    SCENARIO_TIMEOUT)
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr}"
    assert host_view() == before, "the scenario changed the host's network"
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_root
def test_containers_find_each_other_by_name_and_publish_ports(tmp_path):
    facts = run_scenario("by_name_and_published_ports", tmp_path)
    assert facts["client_to_web_by_name"] == "hello from web\n"
    assert facts["host_to_web_via_8080"] == "hello from web\n"
    assert facts["host_to_web_via_random_port"] == "hello from web\n"
    assert facts["random_port"] > 0
    assert facts["first_explain"][1] == "ip link add contained0 type bridge"
    assert not any("type bridge" in line for line in facts["second_explain"])
    assert facts["port_clash"].startswith("host port 127.0.0.1:8080/tcp is published by "
                                          "container web")
    assert facts["after_detach"] == {"links": ["lo"], "tables": [], "lease_file": False}
    assert facts["ip_forward"] == "0"  # no way out and only 127.0.0.1 ports: not needed
    assert "10.77.0.3\tclient\n" in facts["web_hosts_with_client"]
    assert "client" not in facts["web_hosts_alone"]
    assert [line.split("  # ")[0] for line in facts["client_detach"]] == [
        f"ip link del {facts['client_veth']}",
        "# rewrite /etc/hosts of every container on contained0"]
    web_detach = [line.split("  # ")[0] for line in facts["web_detach"]]
    assert [line.split(" handle ")[0] for line in web_detach[1:]] == [
        "nft delete rule ip contained0 ports", "nft delete rule ip contained0 ports",
        "ip link del contained0", "nft delete table ip contained0"]
    assert any(problem.startswith("no default route") for problem in facts["doctor"])


@needs_root
def test_outbound_nat_masquerades_to_another_namespace(tmp_path):
    facts = run_scenario("outbound_nat", tmp_path)
    assert facts["server_saw"] == "198.51.100.1"  # the host's address, not 10.77.0.x
    assert "sysctl -w net.ipv4.ip_forward=1" in facts["explain"]
    assert facts["ip_forward"] == "1"
    assert facts["doctor_before"] == []


@needs_root
def test_subnet_colliding_with_a_route_is_refused(tmp_path):
    facts = run_scenario("subnet_in_use", tmp_path)
    assert facts["error"] == ("subnet 10.77.0.0/24 overlaps route 10.77.0.0/16 on lan0; "
                              "set CONTAINED_SUBNET=10.78.0.0/24")
    assert facts["error"] in facts["doctor"]
    assert facts["links"] == ["lan0", "lan1", "lo"]  # refused before creating anything
    assert facts["other_subnet_ip"] == "10.78.0.2"
    assert facts["full"].startswith("no free address in 10.78.0.0/29 for full;")
    assert facts["changed"].startswith("bridge contained0 serves 10.78.0.0/29 to running "
                                       "containers, not 10.78.0.0/24;")
    assert facts["after"] == {"links": ["lan0", "lan1", "lo"], "tables": [],
                              "lease_file": False}


@needs_root
def test_concurrent_attach_gives_distinct_addresses_and_reuses_freed_ones(tmp_path):
    facts = run_scenario("concurrent_and_reuse", tmp_path)
    assert len(facts["ips"]) == 10 and len(set(facts["ips"])) == 10
    assert facts["ips_inside"] == facts["ips"]  # each container really has its lease
    assert {ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.77.0.0/24")
            for ip in facts["ips"]} == {True}
    assert facts["reused_ip"] == facts["freed_ip"]
    assert facts["already_attached"].startswith("container c0 is already on contained0")
    assert facts["namesake_ip"] == facts["ips"][0]
    assert facts["after"] == {"links": ["lo"], "tables": [], "lease_file": False}


@needs_root
def test_fifty_cycles_with_killed_runners_leave_nothing_after_gc(tmp_path):
    facts = run_scenario("cycles_with_kills", tmp_path)
    assert facts["killed"] == [f"c{i}" for i in range(5, 50, 10)]
    assert sorted(facts["gc_removed"]) == sorted(facts["killed"])
    assert facts["stale_before_gc"]  # the killed runners did leave something behind
    assert any(line.startswith("ip link del veth-0badc0de  # no lease owns this veth")
               for line in facts["gc_explain"])
    assert any("port rule of ghost" in line for line in facts["gc_explain"])
    assert facts["after"] == facts["before"] == {"links": ["lo"], "tables": [],
                                                 "lease_file": False}


@needs_root
def test_iptables_fallback_publishes_and_cleans_up(tmp_path):
    facts = run_scenario("iptables_fallback", tmp_path)
    assert facts["host_to_web"] == "hello from web\n"
    assert any("CONTAINED-PORTS" in line for line in facts["rules_during"])
    assert facts["rules_after"] == []
    assert facts["after"]["links"] == ["lo"]


@needs_root
@pytest.mark.parametrize("firewall", ["nft", "iptables"])
def test_a_bridged_container_cannot_reach_the_hosts_loopback_services(tmp_path, firewall):
    # CVE-2020-8558: route_localnet on the bridge lets packets for 127.0.0.1 in; a container
    # with CAP_NET_RAW sends such frames. Here root routes them from inside its namespace.
    facts = run_scenario(f"loopback_{firewall}", tmp_path)
    assert facts["published"] == "hello from web\n"  # 127.0.0.1:8080 -> the container still
    assert facts["route_inside"].startswith("127.0.0.1 via 10.77.0.1 dev eth0")
    assert facts["reached"] == "", "the container talked to a host service on 127.0.0.1"


@needs_root
@pytest.mark.parametrize("firewall", ["nft", "iptables"])
def test_homes_get_their_own_bridges_and_a_stale_record_never_touches_another_homes(
        tmp_path, firewall):
    facts = run_scenario(f"two_homes_{firewall}", tmp_path)
    assert facts["bridges"] == ["contained0", "contained1"]
    assert facts["subnets"] == ["10.77.0.0/24", "10.77.1.0/24"]
    assert facts["veths_differ"]
    assert facts["alias"].startswith("contained home ")
    assert facts["a_after_b_gc"] == "hello from web\n"  # b's stale record named contained0
    assert facts["b_gc"] == ["web"]
    assert facts["a_bridge_kept"] and facts["a_rules_kept"]
    assert facts["after"]["links"] == ["lo"] and facts["left_rules"] == []


# --- the scenarios, run by run_scenario inside a fresh network namespace ------------------


def _state(config: network.NetworkConfig | None = None) -> dict:
    config = config or network.NetworkConfig()
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)
    ruleset = json.loads(subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True,
                                        text=True, check=True).stdout)
    return {
        "links": sorted(link["ifname"] for link in links),
        "tables": [item["table"]["name"] for item in ruleset["nftables"] if "table" in item],
        "lease_file": network.state_path(config).exists(),
    }


def _container(*command: str, mount: bool = False) -> subprocess.Popen:
    """A stand-in container: `command` in its own network (and mount) namespace."""
    flags = ["--net", "--uts"] + (["--mount"] if mount else [])
    return subprocess.Popen(["unshare", *flags, "--", *command])


def _client(hosts: Path) -> subprocess.Popen:
    """A container whose /etc/hosts is `hosts`, as the runtime would bind-mount it."""
    hosts.touch()
    proc = _container("sh", "-c", f"mount --bind {hosts} /etc/hosts && exec sleep 30",
                      mount=True)
    _wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep")
    return proc


def _web(tmp: Path) -> subprocess.Popen:
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("hello from web\n")
    return _container(BUSYBOX, "httpd", "-f", "-p", "80", "-h", str(www))


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def _attach(name, proc, publish=(), config=None, hosts_file=None):
    attachment, steps = network.plan_attach(
        name, proc.pid, [network.parse_publish(p) for p in publish], config,
        hosts_file=hosts_file)
    shells: list[str] = []
    run_steps(steps, shells.append)
    return attachment, [line.split("  # ")[0] for line in shells]


def _wget(url: str, inside: subprocess.Popen | None = None, mount: bool = False) -> str:
    enter = [] if inside is None else ["nsenter", "-t", str(inside.pid), "-n"] + (
        ["-m"] if mount else [])
    # no `-T SECONDS`: busybox 1.35's wget (Debian 12) segfaults with it; timeout= bounds it
    done = subprocess.run([*enter, BUSYBOX, "wget", "-q", "-O", "-", url],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"wget {url}: {done.stderr}"
    return done.stdout


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def scenario_by_name_and_published_ports(tmp: Path) -> dict:
    _ip("link", "set", "lo", "up")
    web, client = _web(tmp), _client(tmp / "client-hosts")
    (tmp / "web-hosts").touch()
    try:
        web_net, first = _attach("web", web, ["8080:80", "80"], hosts_file=tmp / "web-hosts")
        client_net, second = _attach("client", client, hosts_file=tmp / "client-hosts")
        clash = ""
        try:
            network.plan_attach("other", client.pid, [network.parse_publish("8080:81")])
        except network.PortInUse as error:
            clash = str(error)
        assert network.hosts_entries() == {"web": web_net.ip, "client": client_net.ip}
        random_port = web_net.publish[1].host_port
        facts = {
            "client_to_web_by_name": _wget("http://web/", inside=client, mount=True),
            "host_to_web_via_8080": _wget("http://127.0.0.1:8080/"),
            "host_to_web_via_random_port": _wget(f"http://127.0.0.1:{random_port}/"),
            "random_port": random_port,
            "first_explain": first,
            "second_explain": second,
            "port_clash": clash,
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            "web_hosts_with_client": (tmp / "web-hosts").read_text(),
            "doctor": network.doctor(),
            "client_veth": client_net.host_veth,
        }
        facts["client_detach"], facts["web_detach"] = [], []
        network.detach("client", explain=facts["client_detach"].append)
        facts["web_hosts_alone"] = (tmp / "web-hosts").read_text()
        network.detach("client")  # twice is harmless
        network.detach("web", explain=facts["web_detach"].append)
        facts["after_detach"] = _state()
        return facts
    finally:
        _stop(web, client)


def scenario_outbound_nat(tmp: Path) -> dict:
    # the "internet": one more namespace, reached through this one's default route
    world = _container("sleep", "30")
    inside_world = ["nsenter", "-t", str(world.pid), "-n"]
    cgi = tmp / "world" / "cgi-bin"
    cgi.mkdir(parents=True)
    (cgi / "ip").write_text('#!/bin/sh\nprintf "Content-Type: text/plain\\n\\n%s" '
                            '"$REMOTE_ADDR"\n')
    (cgi / "ip").chmod(0o755)
    server = None
    container = _container("sleep", "30")
    try:
        _ip("link", "set", "lo", "up")
        _ip("link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", str(world.pid))
        _ip("addr", "add", "198.51.100.1/24", "dev", "up0")
        _ip("link", "set", "up0", "up")
        _ip("route", "add", "default", "via", "198.51.100.2")
        subprocess.run([*inside_world, "ip", "addr", "add", "198.51.100.2/24", "dev", "wan0"],
                       check=True)
        subprocess.run([*inside_world, "ip", "link", "set", "wan0", "up"], check=True)
        # an IPv4 address to listen on, or REMOTE_ADDR comes as [::ffff:...]
        server = subprocess.Popen([*inside_world, BUSYBOX, "httpd", "-f", "-p",
                                   "198.51.100.2:8000", "-h", str(tmp / "world")])
        doctor_before = [p for p in network.doctor() if "ip_forward" not in p]
        _, explain = _attach("c", container)
        saw = _wget("http://198.51.100.2:8000/cgi-bin/ip", inside=container)
        facts = {"server_saw": saw, "explain": explain, "doctor_before": doctor_before,
                 "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()}
        network.detach("c")
        return facts
    finally:
        _stop(container, world, *([server] if server else []))


def scenario_subnet_in_use(tmp: Path) -> dict:
    # a LAN that already uses the default subnet (a veth: the dummy module may be missing)
    _ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    _ip("link", "set", "lan0", "up")
    _ip("route", "add", "10.77.0.0/16", "dev", "lan0")
    container, more = _container("sleep", "30"), []
    try:
        try:
            network.plan_attach("c", container.pid)
            raise AssertionError("plan_attach ignored the colliding route")
        except network.SubnetInUse as error:
            message = str(error)
        facts = {"error": message, "doctor": network.doctor(), "links": _state()["links"]}
        small = network.NetworkConfig(subnet="10.78.0.0/29")  # .1 gateway, .2-.6 containers
        more += [_container("sleep", "30") for _ in range(4)]
        facts["other_subnet_ip"] = _attach("c", container, config=small)[0].ip
        for i, proc in enumerate(more):
            _attach(f"more{i}", proc, config=small)
        try:
            network.plan_attach("full", container.pid, config=small)
        except network.SubnetFull as error:
            facts["full"] = str(error)
        try:
            network.plan_attach("x", container.pid,
                                config=network.NetworkConfig(subnet="10.78.0.0/24"))
        except network.SubnetChanged as error:
            facts["changed"] = str(error)
        for name in ["c"] + [f"more{i}" for i in range(4)]:
            network.detach(name, small)
        facts["after"] = _state(small)
        return facts
    finally:
        _stop(container, *more)


def _fork(action) -> int:
    """Run `action` in a child process, as a separate `contained run` would."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            action()
        except BaseException:
            traceback.print_exc()
            status = 1
        os._exit(status)
    return pid


def _reap(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _eth0_address(proc: subprocess.Popen) -> str:
    out = subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "ip", "-j", "-4", "addr", "show",
                          "dev", "eth0"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["addr_info"][0]["local"]


def scenario_concurrent_and_reuse(tmp: Path) -> dict:
    containers = [_container("sleep", "30") for _ in range(10)]
    try:
        runners = [_fork(lambda i=i, c=c: _attach(f"c{i}", c)) for i, c in enumerate(containers)]
        assert [_reap(pid) for pid in runners] == [0] * 10
        entries = network.hosts_entries()
        ips = [entries[f"c{i}"] for i in range(10)]
        facts = {"ips": ips, "ips_inside": [_eth0_address(c) for c in containers]}
        network.detach("c3")
        replacement = _container("sleep", "30")
        containers.append(replacement)
        facts["freed_ip"] = ips[3]
        facts["reused_ip"] = _attach("c10", replacement)[0].ip
        try:
            network.plan_attach("c0", replacement.pid)
        except network.AlreadyAttached as error:
            facts["already_attached"] = str(error)
        # c0 dies without a detach; a new c0 takes over its stale lease
        _stop(containers[0])
        namesake = _container("sleep", "30")
        containers.append(namesake)
        facts["namesake_ip"] = _attach("c0", namesake)[0].ip
        for name in network.hosts_entries():
            network.detach(name)
        facts["after"] = _state()
        return facts
    finally:
        _stop(*containers)


def scenario_cycles_with_kills(tmp: Path) -> dict:
    _ip("link", "set", "lo", "up")
    before = _state()
    killed, stale_seen = [], False
    started = time.monotonic()
    for i in range(50):
        name = f"c{i}"
        container = _container("sleep", "30")
        # five runners die, each at a different step (0: right after taking the lease)
        kill_at = [0, 2, 4, 6, 9][i // 10] if i % 10 == 5 else None

        def runner(name=name, container=container, kill_at=kill_at, port=9000 + i):
            _, steps = network.plan_attach(name, container.pid,
                                           [network.parse_publish(f"{port}:80")])
            for number, step in enumerate(steps):
                if kill_at is not None and number == min(kill_at, len(steps) - 1):
                    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies mid-attach
                if step.run:
                    step.run()

        status = _reap(_fork(runner))
        if kill_at is None:
            assert status == 0
            network.detach(name)
        else:
            assert status == -signal.SIGKILL
            killed.append(name)
            stale_seen = stale_seen or _state()["lease_file"]
        _stop(container)
    # what no lease owns: a veth on the bridge and a port rule (as if made by hand or by a
    # runner killed between a command and writing its lease)
    _ip("link", "add", "veth-0badc0de", "type", "veth", "peer", "name", "ghost-peer")
    _ip("link", "set", "veth-0badc0de", "master", "contained0")
    subprocess.run(["nft", 'add rule ip contained0 ports tcp dport 1 dnat to 10.77.0.250:1 '
                    'comment "ghost"'], check=True)
    gc_explain: list[str] = []
    removed = network.gc(explain=gc_explain.append)
    return {"before": before, "after": _state(), "killed": killed, "gc_removed": removed,
            "stale_before_gc": stale_seen, "gc_explain": gc_explain,
            "seconds_per_cycle": (time.monotonic() - started) / 50}


def scenario_iptables_fallback(tmp: Path) -> dict:
    _ip("link", "set", "lo", "up")
    config = network.NetworkConfig(firewall="iptables")
    web = _web(tmp)

    def rules() -> list[str]:
        out = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True,
                             text=True, check=True).stdout
        return [line for line in out.splitlines() if "CONTAINED" in line]

    try:
        _attach("web", web, ["8080:80"], config)
        facts = {"host_to_web": _wget("http://127.0.0.1:8080/"), "rules_during": rules()}
        network.detach("web", config)
        facts["rules_after"] = rules()
        facts["after"] = _state(config)
        return facts
    finally:
        _stop(web)


def _loopback_attack(container: subprocess.Popen, gateway: str, port: int) -> str:
    """From inside `container`'s namespace, send TCP for 127.0.0.1:`port` to the bridge.

    The container's own loopback route wins normally, so the local table goes after a rule of
    our own; route_localnet lets its eth0 send such packets. What a process with CAP_NET_RAW
    does with hand-made frames, root does here with routes.
    """
    script = f"""
echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet
echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet
ip rule add pref 100 lookup local && ip rule del pref 0
ip rule add pref 10 to 127.0.0.1 lookup 77
ip route add 127.0.0.1/32 via {gateway} dev eth0 table 77
ip route get 127.0.0.1
echo attack | timeout 3 {BUSYBOX} nc 127.0.0.1 {port} >/dev/null 2>&1 || true
"""
    done = subprocess.run(["nsenter", "-t", str(container.pid), "-n", "sh", "-c", script],
                          capture_output=True, text=True, timeout=20)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr


def _loopback_scenario(tmp: Path, firewall: str) -> dict:
    import socket

    _ip("link", "set", "lo", "up")
    config = network.NetworkConfig(firewall=firewall)
    web = _web(tmp)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # a loopback-only service of the host
    listener.listen()
    try:
        attachment, _ = _attach("web", web, ["8080:80"], config)
        facts = {"published": _wget("http://127.0.0.1:8080/")}
        facts["route_inside"] = _loopback_attack(web, attachment.gateway,
                                                 listener.getsockname()[1])
        listener.settimeout(0.5)
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(2)
                facts["reached"] = connection.recv(100).decode()
        except TimeoutError:
            facts["reached"] = ""
        network.detach("web", config)
        return facts
    finally:
        listener.close()
        _stop(web)


def _two_homes_scenario(tmp: Path, firewall: str) -> dict:
    """Home a (this scenario's CONTAINED_HOME) and home b attach a container named web each;
    then b, whose web has died, keeps a stale record naming a's bridge, and runs gc."""
    _ip("link", "set", "lo", "up")
    homes = {"a": os.environ["CONTAINED_HOME"], "b": str(tmp / "home-b")}

    def as_home(name: str):
        os.environ["CONTAINED_HOME"] = homes[name]
        return network.NetworkConfig(firewall=firewall)

    web_a, web_b = _web(tmp), _container("sleep", "30")
    try:
        config_a = as_home("a")
        attached_a, _ = _attach("web", web_a, ["8080:80"], config_a)
        config_b = as_home("b")
        attached_b, _ = _attach("web", web_b, ["8081:80"], config_b)
        facts = {"bridges": [config_a.bridge, config_b.bridge],
                 "subnets": [config_a.subnet, config_b.subnet],
                 "veths_differ": attached_a.host_veth != attached_b.host_veth,
                 "alias": bridge_alias(config_a.bridge)}
        # b's web dies, and b's record is made to name a's bridge, as after a reboot in which
        # a got contained0 first
        _stop(web_b)
        network.detach("web", config_b)
        stale = network.state_path(network.NetworkConfig("contained0", config_b.subnet))
        stale.write_text(json.dumps({"subnet": config_b.subnet, "firewall": firewall,
                                     "leases": {"web": {"ip": attached_b.ip,
                                                        "veth": attached_b.host_veth,
                                                        "pid": web_b.pid, "start": 1,
                                                        "publish": [["127.0.0.1", 8080, 80,
                                                                     "tcp"]]}}}))
        facts["b_gc"] = network.gc()
        as_home("a")
        facts["a_bridge_kept"] = link_exists(config_a.bridge)
        facts["a_rules_kept"] = [owner for owner, _ in port_rules(config_a, firewall)
                                 ] == ["web"]
        facts["a_after_b_gc"] = _wget("http://127.0.0.1:8080/")
        network.detach("web", config_a)
        facts["after"] = _state(config_a)
        ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                                 check=True).stdout
        facts["left_rules"] = [line for line in ruleset.splitlines()
                               if "contained" in line.lower()]
        return facts
    finally:
        os.environ["CONTAINED_HOME"] = homes["a"]
        _stop(web_a, web_b)


def scenario_two_homes_nft(tmp: Path) -> dict:
    return _two_homes_scenario(tmp, "nft")


def scenario_two_homes_iptables(tmp: Path) -> dict:
    return _two_homes_scenario(tmp, "iptables")


def scenario_loopback_nft(tmp: Path) -> dict:
    return _loopback_scenario(tmp, "nft")


def scenario_loopback_iptables(tmp: Path) -> dict:
    return _loopback_scenario(tmp, "iptables")


if __name__ == "__main__":
    # A new network namespace starts with the host's ip_forward here (1 once anything on the host
    # turned it on): every scenario starts from the kernel's default, 0, in its own namespace.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        result = globals()[f"scenario_{scenario}"](Path(scratch))
    print(json.dumps(result))
