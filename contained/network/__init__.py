"""Container networking: a bridge, one veth pair per container, NAT and published ports.

Taught in notebook 08. A container started with ``--net bridge`` gets what Docker's default
bridge gives it, built from the same kernel pieces a student types by hand first::

    ip link add contained0 type bridge                    # a virtual switch on the host
    ip addr add 10.77.0.1/24 dev contained0               # the containers' gateway
    ip link set contained0 up
    ip link add veth-1a2b3c4d type veth peer name eth0 netns PID   # a cable, one end inside
    ip link set veth-1a2b3c4d master contained0 up        # plug the host end into the switch
    nsenter -t PID -n ip addr add 10.77.0.2/24 dev eth0
    nsenter -t PID -n ip link set eth0 up
    nsenter -t PID -n ip route add default via 10.77.0.1
    nft '...masquerade...'                                # the subnet goes out as the host
    nft 'add rule ip contained0 ports ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.77.0.2:80'

`plan_attach` returns exactly these commands as `plan.Step` objects and runs the real
``ip``/``nft`` binaries (``iptables`` where nft is missing), so ``--explain`` prints what really
ran. `detach` undoes one container, and removes the bridge and the NAT table with the last one;
`gc` removes what a crash left; `doctor` says what would stop any of this from working here.
Containers find each other by name through /etc/hosts files rewritten whenever one joins or
leaves (`refresh_hosts_files`), and get the host's upstream resolvers (`resolv_conf`).

Addresses come from a lease file, ``$CONTAINED_HOME/network/<bridge>.json``, changed only under
an exclusive ``flock`` on ``bridges.lock`` beside it: concurrent ``contained run``s never hand out
the same address, and a dead container's address is reused once `gc` (or the next attach) sees
it dead.

Each home has a bridge of its own (see "one bridge per home" below): the first home on a machine
gets ``contained0`` and 10.77.0.0/24, the next ``contained1`` and 10.77.1.0/24, each with its own
nft table of the same name, and veth names salted with the home's tag. A bridge carries its
home's tag as its alias (``ip link set dev contained0 alias "contained home TAG"``), and a home's
teardown and `gc` touch only a bridge, table and veths that are its own.

Two deliberate differences from Docker:

- ``-p 8080:80`` publishes on 127.0.0.1, not on every interface (``0.0.0.0``): a classroom VM
  should not expose a student's half-finished server to the whole network by accident. Write
  ``-p 0.0.0.0:8080:80`` to mean it.
- The default subnets are 10.77.N.0/24, away from Docker (172.17.0.0/16), podman (10.88.0.0/16),
  k3s/kind (10.42, 10.43, 10.244) and libvirt (192.168.122.0/24); a home takes the lowest N
  whose bridge name is free and whose subnet no host route uses. ``CONTAINED_SUBNET`` picks
  another (it is checked against the host's routes, other homes' bridges included).

Published ports work without a userland proxy: DNAT in the ``output`` hook catches connections
the host itself makes to 127.0.0.1, ``route_localnet`` on the bridge lets those packets leave
the loopback world, and masquerading rewrites their 127.0.0.1 source so the container can answer.
Since route_localnet would also let a container's hand-made packets *for* 127.0.0.1 in (to every
loopback-only service of the host: CVE-2020-8558), the table drops packets from the bridge to
127.0.0.0/8 that are not replies of a redirected connection::

    # table ip contained0, chain input (type filter hook input):
    iifname "contained0" ip daddr 127.0.0.0/8 ct status & dnat != dnat drop

IPv4 only.
"""

import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from contained.errors import ContainedError
from contained.home import ensure_home, home_path, home_tag
from contained.runtime import procfs
from contained.runtime.plan import Step

#: each home's bridge is contained<N>, N the lowest number free on this host when the home
#: first needs one; without CONTAINED_SUBNET it serves 10.77.N.0/24
BRIDGE_PREFIX = "contained"
MAX_BRIDGES = 256
DEFAULT_BRIDGE = "contained0"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_HOST_IP = "127.0.0.1"
#: name of the container's end of its veth pair
CONTAINER_INTERFACE = "eth0"
#: host ends are named veth-<8 hex digits>: 13 characters, under the kernel's 15 (IFNAMSIZ - 1)
VETH_PREFIX = "veth-"
#: locally administered (bit 1 of the first octet) unicast MACs; the last 4 bytes are the IPv4
#: address, as Docker did: a reused address comes back with the same MAC, so neighbours' ARP
#: caches stay right instead of pointing at a veth that no longer exists.
MAC_PREFIX = "02:63"
#: used in /etc/resolv.conf when the host only has a loopback stub resolver (unreachable from a
#: container) or no resolver at all. Quad9: no logging of client addresses.
FALLBACK_NAMESERVERS = ("9.9.9.9", "149.112.112.112")
#: Docker-compatible container names; they also become /etc/hosts names and nft comments
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
#: iptables fallback chains (nat, and filter for INPUT), one set per bridge: NAME-<bridge>
IPT_POSTROUTING = "CONTAINED-POST"
IPT_PORTS = "CONTAINED-PORTS"
IPT_INPUT = "CONTAINED-INPUT"
IPT_FORWARD = "CONTAINED-FWD"


class BadPortSpec(ContainedError):
    """A ``-p`` value is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]."""


class BadSubnet(ContainedError):
    """CONTAINED_SUBNET is not an IPv4 network with room for containers."""


class BadNetworkConfig(ContainedError):
    """The bridge name or firewall choice of a NetworkConfig is unusable."""


class SubnetInUse(ContainedError):
    """The bridge subnet overlaps a route the host already has."""


class SubnetChanged(ContainedError):
    """The bridge's live leases use another subnet than the one configured now."""


class SubnetFull(ContainedError):
    """Every address of the subnet is leased."""


class PortInUse(ContainedError):
    """A published host port is taken by another container or a host process."""


class AlreadyAttached(ContainedError):
    """A live container with this name already holds a lease on the bridge."""


class BadContainerName(ContainedError):
    """A container name cannot be used as a host name and rule comment."""


class ContainerNotRunning(ContainedError):
    """The process whose network namespace should be attached has exited."""


class NetworkToolMissing(ContainedError):
    """``ip``, ``nsenter`` or a firewall tool (nft, iptables) is not installed."""


class NetworkCommandFailed(ContainedError):
    """An ``ip``/``nft``/``iptables`` command exited with an error."""


@dataclass(frozen=True)
class PortSpec:
    """One published port: connections to host_ip:host_port go to the container's port.

    ``host_port`` 0 means "any free port", resolved when the container is attached (Docker's
    ``-p 80``).
    """

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class NetworkConfig:
    """Where bridged containers live: the bridge, its subnet, and which firewall tool to use.

    Left empty, `bridge` and `subnet` are this home's (`_home_bridge`, `_home_subnet`): the ones
    its lease file records, else the lowest free ``contained<N>`` and ``10.77.N.0/24`` (or
    ``$CONTAINED_SUBNET``). ``firewall`` is ``"auto"`` (nft, else iptables), ``"nft"`` or
    ``"iptables"``; ``table`` names the nft table (by default the bridge's name) that holds
    every NAT, port and loopback rule of that bridge, so that removing it removes them all.
    """

    bridge: str = ""
    subnet: str = ""
    firewall: str = "auto"
    table: str = ""

    def __post_init__(self) -> None:
        # a frozen dataclass fills its own blanks through object.__setattr__
        if not self.bridge:
            object.__setattr__(self, "bridge", _home_bridge())
        if not self.subnet:
            object.__setattr__(self, "subnet", _home_subnet(self.bridge))
        if not self.table:
            object.__setattr__(self, "table", self.bridge)
        if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", self.bridge):
            raise BadNetworkConfig(f"bridge name {self.bridge!r} is not a valid interface name "
                            "(1-15 letters, digits, '_.-')")
        network = self.network  # validates
        if network.prefixlen > 29:
            raise BadSubnet(f"subnet {self.subnet} is too small for containers; "
                            "use a /29 or larger, e.g. CONTAINED_SUBNET=10.77.0.0/24")
        if self.firewall not in ("auto", "nft", "iptables"):
            raise BadNetworkConfig(f"firewall {self.firewall!r} is unknown; "
                                   "use auto, nft or iptables")

    @property
    def network(self) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as error:
            raise BadSubnet(f"CONTAINED_SUBNET={self.subnet!r} is not an IPv4 network ({error}); "
                            f"use e.g. {DEFAULT_SUBNET}") from None

    @property
    def gateway(self) -> str:
        """The bridge's own address, the first of the subnet (``.1``)."""
        return str(self.network.network_address + 1)


@dataclass(frozen=True)
class Attachment:
    """What a bridged container got: its address, gateway, host veth and resolved ports."""

    container: str
    ip: str
    gateway: str
    prefixlen: int
    host_veth: str
    publish: tuple[PortSpec, ...] = ()


# --- parsing -------------------------------------------------------------------------------

_PUBLISH_HELP = "expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], e.g. 8080:80"


def parse_publish(spec: str, default_host_ip: str = DEFAULT_HOST_IP) -> PortSpec:
    """Parse a ``-p`` value: ``80``, ``8080:80``, ``127.0.0.1:8080:80/udp``, ``0.0.0.0::80``.

    Without a host IP the port is published on 127.0.0.1 only (see the module docstring).
    """
    text = spec.strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        if protocol not in ("tcp", "udp"):
            raise BadPortSpec(f"bad port spec {spec!r}: protocol {protocol!r} is not tcp or udp")
    if "[" in text or text.count(":") > 2:
        raise BadPortSpec(f"bad port spec {spec!r}: only IPv4 is supported; {_PUBLISH_HELP}")
    parts = text.split(":")
    host_ip, host_port = default_host_ip, ""
    if len(parts) == 3:
        host_ip, host_port, container_port = parts
    elif len(parts) == 2:
        host_port, container_port = parts
    else:
        (container_port,) = parts
    try:
        ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise BadPortSpec(f"bad port spec {spec!r}: {host_ip!r} is not an IPv4 address; "
                          f"{_PUBLISH_HELP}") from None
    return PortSpec(host_ip, _port(spec, host_port, allow_any=True), _port(spec, container_port),
                    protocol)


def _port(spec: str, text: str, allow_any: bool = False) -> int:
    if text == "" and allow_any:
        return 0
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadPortSpec(f"bad port spec {spec!r}: port {text!r} is not 1-65535 "
                          f"(ranges are not supported); {_PUBLISH_HELP}")
    return int(text)


def check_name(container: str) -> None:
    """Refuse names that would break /etc/hosts or a rule comment."""
    if not NAME_PATTERN.fullmatch(container):
        raise BadContainerName(f"container name {container!r} is not usable on the bridge; "
                               "use letters, digits and '_.-', starting with a letter or digit")


# --- running the real tools ----------------------------------------------------------------


def _run(argv: list[str], what: str | None = None) -> str:
    shell = what or shlex.join(argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise NetworkToolMissing(f"`{argv[0]}` is not installed (needed for `{shell}`); "
                                 f"install {_PACKAGE.get(argv[0], argv[0])}") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise NetworkCommandFailed(f"`{shell.splitlines()[0]}` failed: {reason}; "
                                   "run `contained doctor` to check the host")
    return done.stdout


_PACKAGE = {"ip": "iproute2", "nft": "nftables", "iptables": "iptables", "nsenter": "util-linux"}
#: where Debian installs nft and iptables: not on a normal user's PATH
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _installed(tool: str) -> str | None:
    """The tool's path, looking in the sbin directories too: `contained doctor` run by a normal
    user must not call installed tools missing."""
    return shutil.which(tool) or shutil.which(tool, path=_SBIN)


def _link_exists(name: str) -> bool:
    # if_nametoindex asks the kernel about this process's network namespace; /sys/class/net would
    # show whichever namespace /sys was mounted in.
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _write_sysctl(name: str, value: str) -> None:
    # /proc/sys/net follows the writer's network namespace, like `sysctl -w` does
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def _read_sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return ""


def _routes() -> list[dict]:
    return json.loads(_run(["ip", "-j", "route", "show", "table", "main"]) or "[]")


def _links() -> list[dict]:
    return json.loads(_run(["ip", "-j", "link", "show"]) or "[]")


# --- one bridge per home -------------------------------------------------------------------
#
# Why a bridge per home, not one shared bridge with one address book: the lease file stays in
# the home, read and cleaned by its owner only; one home's last container takes down only its
# own bridge and table; and one student's containers are not on the same switch as another's
# (ARP, sniffing; the nft table also drops forwarding between our bridges). No machine-wide book
# has to survive crashed runners: the kernel arbitrates. A name is claimed by creating the link
# (`ip link add` fails for a name another home holds) and marked with the home's tag as its
# alias, so teardown and gc only ever touch a bridge, table and veths that are the home's own.


class BridgeTaken(ContainedError):
    """Another home created the bridge this home was about to claim."""


def _home_alias() -> str:
    return f"contained home {home_tag()}"


def _bridge_info(name: str) -> dict | None:
    """Link `name` as `ip -j -d addr show` describes it (flags, addresses, alias), or None if
    there is no such link in this network namespace."""
    if not _link_exists(name):
        return None
    links = json.loads(_run(["ip", "-j", "-d", "addr", "show", "dev", name]) or "[]")
    return links[0] if links else None


def _bridge_alias(name: str, info: dict | None = None) -> str | None:
    """The alias of link `name` (as `ip link set dev NAME alias` wrote it), "" if it has
    none, None if there is no such link."""
    info = info if info is not None else _bridge_info(name)
    return None if info is None else info.get("ifalias", "")


def _ours_to_touch(config: NetworkConfig) -> bool:
    """Whether the bridge (and its table and chains) is this home's, or nobody's now."""
    return _bridge_alias(config.bridge) in (None, _home_alias())


def _lease_path(bridge: str) -> Path:
    return home_path() / "network" / f"{bridge}.json"


def lease_files() -> list[Path]:
    """This home's lease files, one per bridge it has containers on (normally one)."""
    directory = home_path() / "network"
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def _number_subnet(bridge: str) -> str:
    number = bridge.removeprefix(BRIDGE_PREFIX)
    if bridge.startswith(BRIDGE_PREFIX) and number.isdigit() and int(number) < MAX_BRIDGES:
        return f"10.77.{int(number)}.0/24"
    return DEFAULT_SUBNET


def _home_bridge() -> str:
    """This home's bridge: the one its leases record (unless another home holds that name
    now), else the lowest contained<N> that no other home holds and whose subnet no route
    uses (if every subnet is used, the lowest free name: `check_subnet` then says why)."""
    mine = _home_alias()
    for path in lease_files():
        if _bridge_alias(path.stem) in (None, mine):
            return path.stem
    first_free, routes = None, None
    for number in range(MAX_BRIDGES):
        name = f"{BRIDGE_PREFIX}{number}"
        alias = _bridge_alias(name)
        if alias == mine:
            return name
        if alias is not None:
            continue  # another home's
        if os.environ.get("CONTAINED_SUBNET") or not _installed("ip"):
            return name
        first_free = first_free or name
        routes = _routes() if routes is None else routes
        if _overlapping_route(NetworkConfig(name, _number_subnet(name)), routes) is None:
            return name
    return first_free or DEFAULT_BRIDGE


def _home_subnet(bridge: str) -> str:
    """$CONTAINED_SUBNET, else the one the bridge's leases record, else 10.77.N.0/24."""
    if os.environ.get("CONTAINED_SUBNET"):
        return os.environ["CONTAINED_SUBNET"]
    try:
        recorded = json.loads(_lease_path(bridge).read_text()).get("subnet")
    except (OSError, ValueError):
        recorded = None
    return recorded or _number_subnet(bridge)


def _claim_bridge(config: NetworkConfig, alias: str | None) -> None:
    """Create the bridge now, marked as this home's: creating it is what claims the name.
    `alias` is the bridge's alias as read under the home's lock (None: no such link)."""
    if alias == _home_alias():
        return
    if alias is None:
        try:
            _run(["ip", "link", "add", config.bridge, "type", "bridge"])
        except NetworkCommandFailed:
            if not _link_exists(config.bridge):
                raise
            alias = ""  # another home's runner made it a moment ago
        else:
            _run(["ip", "link", "set", "dev", config.bridge, "alias", _home_alias()])
            return
    raise BridgeTaken(f"bridge {config.bridge} belongs to another home ({alias or 'just made'}); "
                      "run again (a free one is picked) or set this home's CONTAINED_SUBNET")


def _firewall(config: NetworkConfig) -> str:
    if config.firewall != "auto":
        return config.firewall
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    raise NetworkToolMissing("neither `nft` nor `iptables` is installed, so bridged containers "
                             "get no NAT or published ports; apt-get install nftables")


# --- subnet checks -------------------------------------------------------------------------


def check_subnet(config: NetworkConfig, routes: list[dict] | None = None) -> None:
    """Raise SubnetInUse if the subnet overlaps a host route not on our own bridge."""
    overlap = _overlapping_route(config, _routes() if routes is None else routes)
    if overlap is not None:
        dst, dev = overlap
        raise SubnetInUse(f"subnet {config.subnet} overlaps route {dst} on {dev}; "
                          f"set CONTAINED_SUBNET={_suggest_subnet(config, routes)}")


def _overlapping_route(config: NetworkConfig, routes: list[dict]) -> tuple[str, str] | None:
    for route in routes:
        if route.get("dst") in (None, "default") or route.get("dev") == config.bridge:
            continue
        try:
            dst = ipaddress.IPv4Network(route["dst"], strict=False)
        except ValueError:
            continue
        if dst.overlaps(config.network):
            return route["dst"], route.get("dev", "?")
    return None


def _suggest_subnet(config: NetworkConfig, routes: list[dict] | None) -> str:
    routes = _routes() if routes is None else routes
    prefix = max(config.network.prefixlen, 16)
    for second in range(77, 255):
        candidate = NetworkConfig(config.bridge, f"10.{second}.0.0/{prefix}")
        if _overlapping_route(candidate, routes) is None:
            return candidate.subnet
    return "<a free private /24>"


# --- leases --------------------------------------------------------------------------------

# flock belongs to an open file: a second open in this thread would wait for itself. Count
# nesting per thread instead, so `detach` inside `plan_attach` (stale lease) just works, while
# other threads and processes still wait their turn.
_held = threading.local()


def state_path(config: NetworkConfig) -> Path:
    """The lease file of a bridge."""
    return _lease_path(config.bridge)


@contextmanager
def _locked(config: NetworkConfig | None) -> Iterator[None]:
    """The home's network lock: one for all its bridges, so that choosing and claiming the
    home's bridge (`_home_bridge`, `_claim_bridge`) is serialised too."""
    depth = getattr(_held, "depth", {})
    _held.depth = depth
    key = str(home_path() / "network" / "bridges.lock")
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    directory = ensure_home() / "network"
    directory.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(directory / "bridges.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
    finally:
        # closing releases the lock; so does the kernel when a runner is killed holding it
        os.close(fd)


def _load(config: NetworkConfig) -> dict:
    try:
        state = json.loads(state_path(config).read_text())
    except FileNotFoundError:
        state = {}
    state.setdefault("subnet", config.subnet)
    state.setdefault("leases", {})
    return state


def _save(config: NetworkConfig, state: dict) -> None:
    path = state_path(config)
    if not state["leases"]:
        path.unlink(missing_ok=True)
        return
    # write-then-rename: a runner killed mid-write leaves the old file, never half a JSON
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _lease_alive(lease: dict) -> bool:
    # the start time tells a reused pid from the container that took the lease
    return procfs.alive(lease["pid"], lease.get("start"))


def _free_address(config: NetworkConfig, leases: dict) -> ipaddress.IPv4Address | None:
    taken = {lease["ip"] for lease in leases.values()}
    network = config.network
    # lowest free address first: a removed container's address is the next one handed out
    for address in network.hosts():
        if address == network.network_address + 1:
            continue  # the gateway on the bridge
        if str(address) not in taken:
            return address
    return None


def _veth_name(container: str, leases: dict) -> str:
    # salted with the home's tag: two homes' containers named "web" get different veths
    taken = {lease["veth"] for lease in leases.values()}
    for attempt in range(100):
        digest = hashlib.sha256(f"{home_tag()}#{container}#{attempt}".encode()).hexdigest()
        name = VETH_PREFIX + digest[:8]
        if name not in taken and not _link_exists(name):
            return name
    raise AssertionError("unreachable: 100 hash collisions")


def _mac(address: ipaddress.IPv4Address) -> str:
    return ":".join([MAC_PREFIX, *(f"{byte:02x}" for byte in address.packed)])


def _ports_clash(a: PortSpec, b: PortSpec) -> bool:
    same_ip = a.host_ip == b.host_ip or "0.0.0.0" in (a.host_ip, b.host_ip)
    return same_ip and a.host_port == b.host_port and a.protocol == b.protocol


def _published_elsewhere(config: NetworkConfig, firewall: str) -> list[PortSpec]:
    """The ports other homes' bridges publish on this host. Their DNAT rules hold no socket,
    so binding the port (`_claim_port`) does not find them; their tables and chains do."""
    found = []
    if firewall == "nft":
        done = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
        items = json.loads(done.stdout or "{}").get("nftables", []) if done.returncode == 0 \
            else []
        for rule in (item["rule"] for item in items if "rule" in item):
            if rule.get("chain") != "ports" or rule.get("table") == config.table \
                    or not rule.get("table", "").startswith(BRIDGE_PREFIX):
                continue
            host_ip, host_port, protocol = "0.0.0.0", None, "tcp"
            for expr in rule.get("expr", []):
                match = expr.get("match", {})
                payload = match.get("left", {}).get("payload", {})
                if payload.get("field") == "daddr":
                    host_ip = match.get("right")
                elif payload.get("field") == "dport":
                    host_port, protocol = match.get("right"), payload.get("protocol")
            if isinstance(host_port, int) and isinstance(host_ip, str):
                found.append(PortSpec(host_ip, host_port, 0, protocol))
        return found
    done = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True)
    mine = _ipt_chain(IPT_PORTS, config)
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        words = shlex.split(line)
        if words[:1] != ["-A"] or not words[1].startswith(IPT_PORTS + "-") or words[1] == mine \
                or "--dport" not in words:
            continue
        host_ip = words[words.index("-d") + 1].removesuffix("/32") if "-d" in words \
            else "0.0.0.0"
        protocol = words[words.index("-p") + 1] if "-p" in words else "tcp"
        found.append(PortSpec(host_ip, int(words[words.index("--dport") + 1]), 0, protocol))
    return found


def _claim_port(port: PortSpec, container: str, leases: dict,
                elsewhere: list[PortSpec] | tuple[PortSpec, ...] = ()) -> PortSpec:
    """Resolve port 0 and check the host port is free, by binding it (no packet is sent)."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((port.host_ip, port.host_port))
        except OSError as error:
            if error.errno == errno.EACCES:
                return port  # a port below 1024 without root (--dry-run): nothing to learn
            if error.errno == errno.EADDRNOTAVAIL:
                hint = ("bring up `lo` (ip link set lo up)" if port.host_ip.startswith("127.")
                        else "use 127.0.0.1 or 0.0.0.0")
                raise BadPortSpec(f"cannot publish {port} for {container}: {port.host_ip} is not "
                                  f"an address of this host; {hint}") from None
            raise PortInUse(f"host port {port.host_ip}:{port.host_port}/{port.protocol} is in "
                            f"use on the host; publish {container} on another port") from None
        resolved = PortSpec(port.host_ip, probe.getsockname()[1], port.container_port,
                            port.protocol)
    for other, lease in leases.items():
        for taken in lease.get("publish", []):
            if _ports_clash(resolved, PortSpec(*taken)):
                raise PortInUse(f"host port {resolved.host_ip}:{resolved.host_port}/"
                                f"{resolved.protocol} is published by container {other}; "
                                f"publish {container} on another port")
    if any(_ports_clash(resolved, taken) for taken in elsewhere):
        raise PortInUse(f"host port {resolved.host_ip}:{resolved.host_port}/{resolved.protocol} "
                        f"is published by another home's container; publish {container} on "
                        "another port")
    return resolved


# --- attach --------------------------------------------------------------------------------


def plan_attach(
    container: str,
    pid: int,
    publish: list[PortSpec] | tuple[PortSpec, ...] = (),
    config: NetworkConfig | None = None,
    *,
    hosts_file: str | os.PathLike | None = None,
    reserve: bool = True,
) -> tuple[Attachment, list[Step]]:
    """Lease an address for `container` (whose network namespace is `pid`'s) and plan its wiring.

    The lease is taken now, under the lock, so the returned commands name the real address;
    the returned steps create the bridge and NAT table if needed, the veth pair, the address,
    the default route and the port rules. `hosts_file` is the host-side file the runtime
    bind-mounts over the container's /etc/hosts: it is written by the last step and rewritten
    whenever a container joins or leaves the bridge (see `refresh_hosts_files`). With
    ``reserve=False`` (``--dry-run``) nothing is written and the address shown is the one a run
    would get now. Without `config`, the home's bridge, claimed now if it is new (see "one
    bridge per home"); should another home claim that name first, the next one is tried.
    """
    if config is None:
        for attempt in range(3):
            try:
                with _locked(None):  # the same home's runners choose the same bridge
                    return plan_attach(container, pid, publish, NetworkConfig(),
                                       hosts_file=hosts_file, reserve=reserve)
            except BridgeTaken:
                if attempt == 2:
                    raise
    check_name(container)
    if reserve and procfs.start_time(pid) is None:
        raise ContainerNotRunning(f"process {pid} of container {container} has exited, so "
                                  "there is no network namespace to attach; start it again")
    firewall = _firewall(config)
    with _locked(config):
        state = _load(config)
        old = state["leases"].get(container)
        if old is not None:
            if _lease_alive(old):
                raise AlreadyAttached(f"container {container} is already on {config.bridge} "
                                      f"with {old['ip']}; detach it first or pick another name")
            if reserve:
                detach(container, config)  # a crashed namesake: take its place
                state = _load(config)
        if state["leases"] and state["subnet"] != config.subnet:
            raise SubnetChanged(f"bridge {config.bridge} serves {state['subnet']} to running "
                                f"containers, not {config.subnet}; stop them (or run gc) first, "
                                "or unset CONTAINED_SUBNET")
        check_subnet(config)
        bridge = _bridge_info(config.bridge)
        bridge_ready = _bridge_ready(config, bridge)
        address = _free_address(config, state["leases"])
        if address is None:
            raise SubnetFull(f"no free address in {config.subnet} for {container}; stop a "
                             "bridged container, run gc, or set a larger CONTAINED_SUBNET")
        elsewhere = _published_elsewhere(config, firewall) if publish else []
        ports = tuple(_claim_port(port, container, state["leases"], elsewhere)
                      for port in publish)
        for i, port in enumerate(ports):
            if any(_ports_clash(port, other) for other in ports[:i]):
                raise PortInUse(f"host port {port.host_ip}:{port.host_port}/{port.protocol} "
                                f"is published twice for {container}")
        veth = _veth_name(container, state["leases"])
        if reserve:
            state["subnet"] = config.subnet
            state["firewall"] = state.get("firewall", firewall)
            state["leases"][container] = {
                "ip": str(address), "veth": veth, "pid": pid, "start": procfs.start_time(pid),
                "publish": [[p.host_ip, p.host_port, p.container_port, p.protocol] for p in ports],
                "hosts_file": None if hosts_file is None else os.fspath(hosts_file),
            }
            _save(config, state)
            try:
                # after the lease is saved: a runner killed now leaves a lease, which gc
                # follows to the bridge; never a bridge that no lease file leads to
                _claim_bridge(config, _bridge_alias(config.bridge, bridge))
            except BridgeTaken:
                del state["leases"][container]
                _save(config, state)
                raise
        firewall = state.get("firewall", firewall)
        firewall_exists = _firewall_exists(config, firewall)
    attachment = Attachment(container, str(address), config.gateway, config.network.prefixlen,
                            veth, ports)
    steps = [Step(f"# {attachment.ip}/{attachment.prefixlen} leased to {container} "
                  f"in {state_path(config)}",
                  "one address per container, never two at once, under flock")]
    if not bridge_ready:
        steps += _bridge_steps(config)
    if not firewall_exists:
        steps.append(_firewall_setup_step(config, firewall))
    steps += _forwarding_steps(config, ports)
    steps += _veth_steps(config, attachment, pid)
    steps += [_port_step(config, firewall, attachment, port) for port in ports]
    if hosts_file is not None:
        steps.append(_locked_step(
            config, f"# rewrite /etc/hosts of every container on {config.bridge}",
            f"{container} and the others find each other by name",
            lambda: refresh_hosts_files(config)))
    return attachment, steps


def _locked_step(config: NetworkConfig, shell: str, why: str, action: Callable[[], object]) -> Step:
    def run() -> None:
        with _locked(config):
            action()

    return Step(shell, why, run)


def _command_step(config: NetworkConfig, argv: list[str], why: str,
                  unless: Callable[[], bool] | None = None) -> Step:
    """A step that runs argv under the lock, skipped if `unless()` says it is already done."""
    def action() -> None:
        if unless is None or not unless():
            _run(argv)

    return _locked_step(config, shlex.join(argv), why, action)


def _bridge_ready(config: NetworkConfig, info: dict | None) -> bool:
    """The bridge (`info`: `_bridge_info`) exists, is up and has the gateway's address (a
    runner killed half-way through `_bridge_steps` leaves it otherwise: the next attach
    finishes the job)."""
    return info is not None and "UP" in info.get("flags", []) and any(
        a.get("local") == config.gateway for a in info.get("addr_info", []))


def _bridge_steps(config: NetworkConfig) -> list[Step]:
    bridge, gateway = config.bridge, f"{config.gateway}/{config.network.prefixlen}"
    # another runner may create the bridge between our plan and our run: every step checks
    def has_gateway() -> bool:
        out = _run(["ip", "-j", "addr", "show", "dev", bridge])
        return any(a.get("local") == config.gateway
                   for link in json.loads(out or "[]") for a in link.get("addr_info", []))

    localnet = f"net.ipv4.conf.{bridge}.route_localnet"
    return [
        # made (claimed) already while planning, unless this is --dry-run: see _claim_bridge
        _command_step(config, ["ip", "link", "add", bridge, "type", "bridge"],
                      "a virtual switch that every bridged container of this home plugs into",
                      unless=lambda: _link_exists(bridge)),
        _command_step(config, ["ip", "link", "set", "dev", bridge, "alias", _home_alias()],
                      "mark it as this home's: another home's clean-up leaves it alone",
                      unless=lambda: _bridge_alias(bridge) == _home_alias()),
        _command_step(config, ["ip", "addr", "add", gateway, "dev", bridge],
                      "the host's address on the bridge: the containers' gateway",
                      unless=has_gateway),
        _command_step(config, ["ip", "link", "set", bridge, "up"], "switch it on"),
        _locked_step(config, f"sysctl -w {localnet}=1",
                     "let connections to 127.0.0.1 be redirected to containers on the bridge",
                     lambda: _write_sysctl(localnet, "1")),
    ]


def _forwarding_steps(config: NetworkConfig, ports: tuple[PortSpec, ...]) -> list[Step]:
    """Turn on IPv4 forwarding, but only if the host has a way out or a port is public.

    Forwarding makes the host a router for everything, so it stays off when all traffic is
    container to container (bridged) or host to container through 127.0.0.1 (locally
    generated). It is left on at detach: other software may have come to rely on it.
    """
    if _read_sysctl("net.ipv4.ip_forward") == "1":
        return []
    way_out = any(route.get("dst") == "default" and route.get("dev") != config.bridge
                  for route in _routes())
    public = any(not ipaddress.IPv4Address(port.host_ip).is_loopback for port in ports)
    if not (way_out or public):
        return []
    reason = ("the host routes the containers' packets to its default route (NAT)" if way_out
              else "the host routes connections to published ports on to the containers")
    return [_locked_step(config, "sysctl -w net.ipv4.ip_forward=1", reason + "; was off",
                         lambda: _write_sysctl("net.ipv4.ip_forward", "1"))]


def _veth_steps(config: NetworkConfig, attachment: Attachment, pid: int) -> list[Step]:
    veth, address = attachment.host_veth, ipaddress.IPv4Address(attachment.ip)
    inside = ["nsenter", "-t", str(pid), "-n"]
    cidr = f"{attachment.ip}/{attachment.prefixlen}"
    return [
        _command_step(config, ["ip", "link", "add", veth, "type", "veth", "peer", "name",
                               CONTAINER_INTERFACE, "address", _mac(address), "netns", str(pid)],
                      "a virtual cable: one end stays on the host, the other appears in the "
                      "container as eth0 (MAC derived from the address)"),
        _command_step(config, ["ip", "link", "set", veth, "master", config.bridge, "up"],
                      "plug the host end into the bridge"),
        _command_step(config, [*inside, "ip", "addr", "add", cidr, "dev", CONTAINER_INTERFACE],
                      "the container's address, inside its network namespace"),
        _command_step(config, [*inside, "ip", "link", "set", CONTAINER_INTERFACE, "up"],
                      "bring the container's end up"),
        _command_step(config, [*inside, "ip", "route", "add", "default", "via",
                               attachment.gateway],
                      "everything not on the bridge goes through the host"),
    ]


# --- firewall: nft, or iptables where nft is missing --------------------------------------


def _nft_table_script(config: NetworkConfig) -> str:
    bridge = config.bridge
    return f"""
table ip {config.table} {{
\tchain ports {{
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local jump ports
\t}}
\tchain output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local jump ports
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {config.subnet} oifname != "{bridge}" masquerade
\t\toifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "{bridge}" ip daddr 127.0.0.0/8 ct status & dnat != dnat drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname "{BRIDGE_PREFIX}*" iifname != "{bridge}" oifname "{bridge}" \
ct status & dnat != dnat drop
\t}}
}}"""


# Why the input chain: route_localnet=1 on the bridge (so that the host's connections to
# 127.0.0.1 can be redirected to a container) also makes the host accept packets *for*
# 127.0.0.0/8 arriving on the bridge. A container with CAP_NET_RAW sends such frames and talks
# to every loopback-only service of the host (CVE-2020-8558 in Kubernetes). Only replies of
# connections we redirected (DNAT) may come in that way. The forward chain keeps other homes'
# containers off this bridge, except through ports published on the host.


def _ipt_chain(base: str, config: NetworkConfig) -> str:
    """iptables chain names are at most 28 characters: BASE-<bridge> (or a hash of it)."""
    suffix = config.bridge if len(config.bridge) <= 12 else \
        hashlib.sha256(config.bridge.encode()).hexdigest()[:12]
    return f"{base}-{suffix}"


def _iptables_setup(config: NetworkConfig) -> list[list[str]]:
    nat, filter_ = ["iptables", "-w", "-t", "nat"], ["iptables", "-w", "-t", "filter"]
    local = ["-m", "addrtype", "--dst-type", "LOCAL"]
    ports, post = _ipt_chain(IPT_PORTS, config), _ipt_chain(IPT_POSTROUTING, config)
    guard, isolate = _ipt_chain(IPT_INPUT, config), _ipt_chain(IPT_FORWARD, config)
    return [
        [*nat, "-N", ports],
        [*nat, "-N", post],
        [*filter_, "-N", guard],
        [*filter_, "-N", isolate],
        [*nat, "-A", "PREROUTING", *local, "-j", ports],
        [*nat, "-A", "OUTPUT", *local, "-j", ports],
        [*nat, "-A", "POSTROUTING", "-j", post],
        [*nat, "-A", post, "-s", config.subnet, "!", "-o", config.bridge, "-j", "MASQUERADE"],
        [*nat, "-A", post, "-s", "127.0.0.0/8", "-o", config.bridge, "-j", "MASQUERADE"],
        # see the nft input chain: loopback from the bridge only as replies of DNAT
        [*filter_, "-A", "INPUT", "-i", config.bridge, "-j", guard],
        [*filter_, "-A", guard, "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
         "DNAT", "-j", "DROP"],
        # see the nft forward chain: other homes' bridges reach this one only through ports
        [*filter_, "-I", "FORWARD", "-o", config.bridge, "-j", isolate],
        [*filter_, "-A", isolate, "-i", config.bridge, "-j", "RETURN"],
        [*filter_, "-A", isolate, "-i", f"{BRIDGE_PREFIX}+", "-m", "conntrack", "!",
         "--ctstate", "DNAT", "-j", "DROP"],
    ]


def _firewall_exists(config: NetworkConfig, firewall: str) -> bool:
    if firewall == "nft":
        done = subprocess.run(["nft", "list", "table", "ip", config.table], capture_output=True)
    else:
        done = subprocess.run(["iptables", "-w", "-t", "nat", "-S",
                               _ipt_chain(IPT_PORTS, config)], capture_output=True)
    return done.returncode == 0


def _firewall_setup_step(config: NetworkConfig, firewall: str) -> Step:
    why = ("NAT: the subnet leaves as the host (masquerade), published ports are redirected "
           "to containers (dnat), also for 127.0.0.1")
    if firewall == "nft":
        script = _nft_table_script(config)

        def create() -> None:
            # one nft invocation is one transaction: a killed runner leaves all or nothing
            if not _firewall_exists(config, "nft"):
                _run(["nft", script], f"nft 'table ip {config.table} {{ ... }}'")

        return _locked_step(config, f"nft '{script}'", why, create)
    commands = _iptables_setup(config)

    def create_chains() -> None:
        if not _firewall_exists(config, "iptables"):
            _teardown_iptables(config)  # a runner killed half-way may have left some rules
            for argv in commands:
                _run(argv)

    return _locked_step(config, "\n".join(shlex.join(c) for c in commands), why, create_chains)


def _port_step(config: NetworkConfig, firewall: str, attachment: Attachment,
               port: PortSpec) -> Step:
    why = (f"connections to {port.host_ip}:{port.host_port} go to {attachment.container} "
           f"port {port.container_port}")
    target = f"{attachment.ip}:{port.container_port}"
    if firewall == "nft":
        match = "" if port.host_ip == "0.0.0.0" else f"ip daddr {port.host_ip} "
        rule = (f"add rule ip {config.table} ports {match}{port.protocol} dport "
                f"{port.host_port} dnat to {target} comment \"{attachment.container}\"")
        return _command_step(config, ["nft", rule], why)
    match = [] if port.host_ip == "0.0.0.0" else ["-d", port.host_ip]
    argv = ["iptables", "-w", "-t", "nat", "-A", _ipt_chain(IPT_PORTS, config), *match,
            "-p", port.protocol,
            "--dport", str(port.host_port), "-m", "comment", "--comment", attachment.container,
            "-j", "DNAT", "--to-destination", target]
    return _command_step(config, argv, why)


def _port_rules(config: NetworkConfig, firewall: str) -> list[tuple[str, list[str]]]:
    """Every port rule as (its container, the command that deletes it)."""
    if not _firewall_exists(config, firewall):
        return []
    if firewall == "nft":
        out = _run(["nft", "-j", "-a", "list", "chain", "ip", config.table, "ports"])
        return [(item["rule"].get("comment", ""),
                 ["nft", "delete", "rule", "ip", config.table, "ports", "handle",
                  str(item["rule"]["handle"])])
                for item in json.loads(out)["nftables"] if "rule" in item]
    rules = []
    for line in _run(["iptables", "-w", "-t", "nat", "-S",
                      _ipt_chain(IPT_PORTS, config)]).splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and "--comment" in words:
            owner = words[words.index("--comment") + 1]
            rules.append((owner, ["iptables", "-w", "-t", "nat", "-D", *words[1:]]))
    return rules


def _teardown_iptables(config: NetworkConfig) -> list[str]:
    """Remove our chains and the jumps to them, whatever part of them exists."""
    done = []
    for argv in reversed(_iptables_setup(config)):
        if argv[4] == "-N":
            for flag in ("-F", "-X"):
                undo = [*argv[:4], flag, argv[5]]
                if subprocess.run(undo, capture_output=True).returncode == 0:
                    done.append(shlex.join(undo))
        elif argv[5] in ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD"):
            undo = [*argv[:4], "-D", *argv[5:]]
            while subprocess.run(undo, capture_output=True).returncode == 0:
                done.append(shlex.join(undo))
    return done


# --- detach and gc -------------------------------------------------------------------------


def _report(explain: Callable[[str], None] | None, step: Step) -> None:
    if explain is not None:
        explain(step.explain())


def _run_reported(explain: Callable[[str], None] | None, argv: list[str], why: str) -> None:
    _report(explain, Step(shlex.join(argv), why))
    _run(argv)


def _delete_veth(explain: Callable[[str], None] | None, veth: str, why: str) -> None:
    """`ip link del` a host-side veth, unless the kernel deletes it first.

    A veth pair also goes when the namespace holding its other end is destroyed, which the
    kernel finishes asynchronously after the container's last process has exited: right after
    a container dies, its veth can vanish between the check and the command.
    """
    if not _link_exists(veth):
        return
    _report(explain, Step(shlex.join(["ip", "link", "del", veth]), why))
    try:
        _run(["ip", "link", "del", veth])
    except NetworkCommandFailed:
        if _link_exists(veth):
            raise


def _release(config: NetworkConfig, state: dict, container: str,
             explain: Callable[[str], None] | None) -> None:
    lease = state["leases"][container]
    firewall = state.get("firewall") or _firewall(config)
    _delete_veth(explain, lease["veth"],
                 f"unplug {container}: deleting one end of a veth pair deletes both")
    # a stale record may name a bridge that another home has claimed since: not its table
    for owner, delete in _port_rules(config, firewall) if _ours_to_touch(config) else ():
        if owner == container:
            _run_reported(explain, delete, f"stop publishing {container}'s port")
    del state["leases"][container]
    # saved after the commands: a runner killed in between leaves a lease that gc retries
    _save(config, state)


def _teardown(config: NetworkConfig, state: dict, explain: Callable[[str], None] | None) -> None:
    """Remove the bridge and the NAT rules: the last bridged container is gone."""
    firewall = state.get("firewall") or _firewall(config)
    alias = _bridge_alias(config.bridge)
    if alias not in (None, _home_alias()):
        return  # another home's bridge and table now (this home's record was stale)
    if alias is not None:
        _run_reported(explain, ["ip", "link", "del", config.bridge],
                      "the last bridged container of this home is gone")
    if firewall == "nft" and _firewall_exists(config, "nft"):
        _run_reported(explain, ["nft", "delete", "table", "ip", config.table],
                      "its NAT and port rules go with it")
    elif firewall == "iptables":
        for line in _teardown_iptables(config):
            _report(explain, Step(line, "its NAT and port rules go with it"))


def _refresh_after_release(config: NetworkConfig, state: dict,
                           explain: Callable[[str], None] | None) -> None:
    if any(lease.get("hosts_file") for lease in state["leases"].values()):
        _report(explain, Step(f"# rewrite /etc/hosts of every container on {config.bridge}",
                              "the names that left are forgotten"))
        refresh_hosts_files(config)


def detach(container: str, config: NetworkConfig | None = None,
           explain: Callable[[str], None] | None = None) -> None:
    """Remove a container's veth, port rules and lease; the bridge and NAT go with the last one.

    Does nothing for a container without a lease, so it is safe to call twice.
    """
    config = config or NetworkConfig()
    with _locked(config):
        state = _load(config)
        if container not in state["leases"]:
            return
        _release(config, state, container, explain)
        if not state["leases"]:
            _teardown(config, state, explain)
        _refresh_after_release(config, state, explain)


def gc(alive: set[str] | None = None, config: NetworkConfig | None = None,
       explain: Callable[[str], None] | None = None) -> list[str]:
    """Release the leases of containers that are gone; return their names.

    A lease is gone when its process has exited (or its pid was reused), or when `alive` is
    given and does not name it. Also removes veths on the bridge and port rules that no lease
    owns (left by a runner killed between two steps), and the bridge and NAT table when no
    lease is left.
    """
    if config is None:  # every bridge this home has leases on (its own, normally one)
        return [name for path in lease_files()
                for name in gc(alive, NetworkConfig(bridge=path.stem), explain)]
    removed = []
    with _locked(config):
        state = _load(config)
        for name, lease in list(state["leases"].items()):
            if (alive is not None and name not in alive) or not _lease_alive(lease):
                _release(config, state, name, explain)
                removed.append(name)
        if not _ours_to_touch(config):
            return removed  # the name is another home's now: its veths and rules are too
        owned = {lease["veth"] for lease in state["leases"].values()}
        for link in _links():
            name = link.get("ifname", "")
            if (link.get("master") == config.bridge and name.startswith(VETH_PREFIX)
                    and name not in owned):
                _delete_veth(explain, name, "no lease owns this veth")
        firewall = state.get("firewall") or _firewall(config)
        for owner, delete in _port_rules(config, firewall):
            if owner not in state["leases"]:
                _run_reported(explain, delete, f"port rule of {owner or 'nobody'}, who is gone")
        if not state["leases"]:
            _teardown(config, state, explain)
        if removed:
            _refresh_after_release(config, state, explain)
    return removed


# --- names and resolvers inside containers -------------------------------------------------


def hosts_entries(config: NetworkConfig | None = None) -> dict[str, str]:
    """Name → address of the live containers on the bridge, for their /etc/hosts."""
    config = config or NetworkConfig()
    with _locked(config):
        leases = _load(config)["leases"]
    return {name: lease["ip"] for name, lease in sorted(leases.items()) if _lease_alive(lease)}


def refresh_hosts_files(config: NetworkConfig | None = None) -> list[str]:
    """Rewrite the hosts file of every live container on the bridge; return the paths written.

    Only containers attached with a `hosts_file` have one. A file that has disappeared (its
    container is being removed) is skipped.
    """
    config = config or NetworkConfig()
    written = []
    with _locked(config):
        leases = _load(config)["leases"]
        entries = {name: lease["ip"] for name, lease in leases.items() if _lease_alive(lease)}
        for name, lease in sorted(leases.items()):
            path = lease.get("hosts_file")
            if path and name in entries and os.path.exists(path):
                write_hosts_file(path, name, lease["ip"], entries)
                written.append(path)
    return written


def hosts_file(own_name: str, own_ip: str | None, entries: dict[str, str]) -> bytes:
    """The /etc/hosts of one container: localhost, itself, then the others on the bridge."""
    lines = ["# written by contained: containers on the same bridge, by name",
             "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{own_ip}\t{own_name}" if own_ip else f"127.0.1.1\t{own_name}")
    lines += [f"{ip}\t{name}" for name, ip in sorted(entries.items()) if name != own_name]
    return ("\n".join(lines) + "\n").encode()


def write_hosts_file(path: str | os.PathLike, own_name: str, own_ip: str | None,
                     entries: dict[str, str]) -> bytes:
    """Rewrite a container's hosts file in place and return its content.

    In place (truncate and write, not write-and-rename) because the file is bind-mounted over
    the container's /etc/hosts: a rename would leave the mount showing the old inode.
    """
    content = hosts_file(own_name, own_ip, entries)
    with open(path, "r+b" if os.path.exists(path) else "wb") as file:
        file.write(content)
        file.truncate()
    return content


def resolv_conf(sources: tuple[str | os.PathLike, ...] | None = None) -> bytes:
    """The /etc/resolv.conf for bridged containers: the host's upstream nameservers.

    Loopback resolvers (systemd-resolved's 127.0.0.53, a dnsmasq on 127.0.0.1) are the host's
    own and unreachable from a container's namespace, so systemd-resolved's list of upstream
    servers is preferred when it exists. IPv6 servers are dropped: the bridge is IPv4 only.
    """
    if sources is None:
        sources = ("/run/systemd/resolve/resolv.conf", "/etc/resolv.conf")
    text = ""
    for source in sources:
        try:
            text = Path(source).read_text()
            break
        except OSError:
            continue
    servers, other = [], []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            try:
                address = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if address.version == 4 and not address.is_loopback:
                servers.append(str(address))
        elif words[0] in ("search", "domain", "options"):
            other.append(" ".join(words))
    lines = ["# written by contained from the host's resolvers"]
    if not servers:
        lines.append("# the host has no resolver a container can reach: using public ones")
        servers = list(FALLBACK_NAMESERVERS)
    lines += [f"nameserver {server}" for server in servers] + other
    return ("\n".join(lines) + "\n").encode()


# --- doctor --------------------------------------------------------------------------------


def doctor(config: NetworkConfig | None = None) -> list[str]:
    """What stops bridged networking or NAT from working here, one line each; [] if nothing."""
    problems = []
    try:
        config = config or NetworkConfig()
    except ContainedError as error:
        return [str(error)]
    if os.geteuid() != 0:
        problems.append("--net bridge needs root (CAP_NET_ADMIN) to create the bridge and veths")
    for tool in ("ip", "nsenter"):
        if _installed(tool) is None:
            problems.append(f"`{tool}` is missing: apt-get install {_PACKAGE[tool]}")
    if not (_installed("nft") or _installed("iptables")):
        problems.append("neither `nft` nor `iptables` is installed: no NAT and no published "
                        "ports; apt-get install nftables")
    if _installed("ip") is None:
        return problems
    routes = _routes()
    if not any(route.get("dst") == "default" for route in routes):
        problems.append("no default route: bridged containers reach each other and the host, "
                        "but NAT has nowhere to send anything else")
    elif _read_sysctl("net.ipv4.ip_forward") != "1":
        problems.append("net.ipv4.ip_forward is 0: containers cannot reach beyond the host "
                        "until it is 1; --net bridge sets it on start, or run "
                        "`sysctl -w net.ipv4.ip_forward=1`")
    try:
        check_subnet(config, routes)
    except SubnetInUse as error:
        problems.append(str(error))
    if shutil.which("iptables") and os.geteuid() == 0:
        policy = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True,
                                text=True).stdout
        if "-P FORWARD DROP" in policy:
            problems.append("iptables FORWARD policy is DROP (Docker sets it): containers' "
                            "traffic to the outside is dropped; allow it with `iptables -I "
                            f"FORWARD -i {config.bridge} -j ACCEPT` and `iptables -I FORWARD -o "
                            f"{config.bridge} -m conntrack --ctstate RELATED,ESTABLISHED "
                            "-j ACCEPT`")
    return problems
