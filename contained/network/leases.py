"""Leases: which bridge and subnet are this home's, and which address each container holds.

Taught in notebook 08 ("Networking"). By hand, a student picks an address and remembers it::

    ip link add contained0 type bridge                    # creating the link claims the name
    ip link set dev contained0 alias "contained home TAG" # ... for this home
    ip -j route show table main                           # is 10.77.0.0/24 free on this host?
    cat $CONTAINED_HOME/network/contained0.json           # who holds which address

Addresses come from a lease file, ``$CONTAINED_HOME/network/<bridge>.json``, changed only under
an exclusive ``flock`` on ``bridges.lock`` beside it: concurrent ``contained run``s never hand out
the same address, and a dead container's address is reused once `gc` (or the next attach) sees
it dead.

Each home has a bridge of its own (see "one bridge per home" below): the first home on a machine
gets ``contained0`` and 10.77.0.0/24, the next ``contained1`` and 10.77.1.0/24, each with its own
nft table of the same name, and veth names salted with the home's tag. A bridge carries its
home's tag as its alias, and a home's teardown and `gc` touch only a bridge, table and veths
that are its own.

The default subnets are 10.77.N.0/24, away from Docker (172.17.0.0/16), podman (10.88.0.0/16),
k3s/kind (10.42, 10.43, 10.244) and libvirt (192.168.122.0/24); a home takes the lowest N whose
bridge name is free and whose subnet no host route uses. ``CONTAINED_SUBNET`` picks another (it
is checked against the host's routes, other homes' bridges included). IPv4 only.
"""

import hashlib
import ipaddress
import json
import os
import re
import shlex
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from contained import filelock, procfs
from contained.errors import ContainedError
from contained.home import ensure_home, home_path, home_tag
from contained.network.ports import PortSpec
from contained.network.tools import (
    NetworkCommandFailed,
    host_routes,
    installed,
    link_exists,
    run_tool,
)
from contained.records import record
from contained.runtime.plan import Step

#: each home's bridge is contained<N>, N the lowest number free on this host when the home
#: first needs one; without CONTAINED_SUBNET it serves 10.77.N.0/24
BRIDGE_PREFIX = "contained"
MAX_BRIDGES = 256
DEFAULT_BRIDGE = "contained0"
DEFAULT_SUBNET = "10.77.0.0/24"
#: host ends are named veth-<8 hex digits>: 13 characters, under the kernel's 15 (IFNAMSIZ - 1)
VETH_PREFIX = "veth-"
#: locally administered (bit 1 of the first octet) unicast MACs; the last 4 bytes are the IPv4
#: address, as Docker did: a reused address comes back with the same MAC, so neighbours' ARP
#: caches stay right instead of pointing at a veth that no longer exists.
MAC_PREFIX = "02:63"


class BadSubnet(ContainedError):
    """CONTAINED_SUBNET is not an IPv4 network with room for containers."""


class BadNetworkConfig(ContainedError):
    """The bridge name or firewall choice of a NetworkConfig is unusable."""


class SubnetInUse(ContainedError):
    """The bridge subnet overlaps a route the host already has."""


class BridgeTaken(ContainedError):
    """Another home created the bridge this home was about to claim."""


@record(frozen=True)
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
        # a frozen record fills its own blanks through object.__setattr__
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


@record(frozen=True)
class Attachment:
    """What a bridged container got: its address, gateway, host veth and resolved ports."""

    container: str
    ip: str
    gateway: str
    prefixlen: int
    host_veth: str
    publish: tuple[PortSpec, ...] = ()


# --- one bridge per home -------------------------------------------------------------------
#
# Why a bridge per home, not one shared bridge with one address book: the lease file stays in
# the home, read and cleaned by its owner only; one home's last container takes down only its
# own bridge and table; and one student's containers are not on the same switch as another's
# (ARP, sniffing; the nft table also drops forwarding between our bridges). No machine-wide book
# has to survive crashed runners: the kernel arbitrates. A name is claimed by creating the link
# (`ip link add` fails for a name another home holds) and marked with the home's tag as its
# alias, so teardown and gc only ever touch a bridge, table and veths that are the home's own.


def home_alias() -> str:
    return f"contained home {home_tag()}"


def bridge_info(name: str) -> dict | None:
    """Link `name` as `ip -j -d addr show` describes it (flags, addresses, alias), or None if
    there is no such link in this network namespace."""
    if not link_exists(name):
        return None
    links = json.loads(run_tool(["ip", "-j", "-d", "addr", "show", "dev", name]) or "[]")
    return links[0] if links else None


def bridge_alias(name: str, info: dict | None = None) -> str | None:
    """The alias of link `name` (as `ip link set dev NAME alias` wrote it), "" if it has
    none, None if there is no such link."""
    info = info if info is not None else bridge_info(name)
    return None if info is None else info.get("ifalias", "")


def ours_to_touch(config: NetworkConfig) -> bool:
    """Whether the bridge (and its table and chains) is this home's, or nobody's now."""
    return bridge_alias(config.bridge) in (None, home_alias())


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
    mine = home_alias()
    for path in lease_files():
        if bridge_alias(path.stem) in (None, mine):
            return path.stem
    first_free, routes = None, None
    for number in range(MAX_BRIDGES):
        name = f"{BRIDGE_PREFIX}{number}"
        alias = bridge_alias(name)
        if alias == mine:
            return name
        if alias is not None:
            continue  # another home's
        if os.environ.get("CONTAINED_SUBNET") or not installed("ip"):
            return name
        first_free = first_free or name
        routes = host_routes() if routes is None else routes
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


def claim_bridge(config: NetworkConfig, alias: str | None) -> None:
    """Create the bridge now, marked as this home's: creating it is what claims the name.
    `alias` is the bridge's alias as read under the home's lock (None: no such link)."""
    if alias == home_alias():
        return
    if alias is None:
        try:
            run_tool(["ip", "link", "add", config.bridge, "type", "bridge"])
        except NetworkCommandFailed:
            if not link_exists(config.bridge):
                raise
            alias = ""  # another home's runner made it a moment ago
        else:
            run_tool(["ip", "link", "set", "dev", config.bridge, "alias", home_alias()])
            return
    raise BridgeTaken(f"bridge {config.bridge} belongs to another home ({alias or 'just made'}); "
                      "run again (a free one is picked) or set this home's CONTAINED_SUBNET")


# --- subnet checks -------------------------------------------------------------------------


def check_subnet(config: NetworkConfig, routes: list[dict] | None = None) -> None:
    """Raise SubnetInUse if the subnet overlaps a host route not on our own bridge."""
    overlap = _overlapping_route(config, host_routes() if routes is None else routes)
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
    routes = host_routes() if routes is None else routes
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
def locked(config: NetworkConfig | None) -> Iterator[None]:
    """The home's network lock: one for all its bridges, so that choosing and claiming the
    home's bridge (`_home_bridge`, `claim_bridge`) is serialised too."""
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
    # released on close; so too when the kernel closes it for a runner killed holding it
    with filelock.locked(directory / "bridges.lock"):
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0


def load_state(config: NetworkConfig) -> dict:
    try:
        state = json.loads(state_path(config).read_text())
    except FileNotFoundError:
        state = {}
    state.setdefault("subnet", config.subnet)
    state.setdefault("leases", {})
    return state


def save_state(config: NetworkConfig, state: dict) -> None:
    path = state_path(config)
    if not state["leases"]:
        path.unlink(missing_ok=True)
        return
    # write-then-rename: a runner killed mid-write leaves the old file, never half a JSON
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def lease_alive(lease: dict) -> bool:
    # the start time tells a reused pid from the container that took the lease
    return procfs.alive(lease["pid"], lease.get("start"))


def free_address(config: NetworkConfig, leases: dict) -> ipaddress.IPv4Address | None:
    taken = {lease["ip"] for lease in leases.values()}
    network = config.network
    # lowest free address first: a removed container's address is the next one handed out
    for address in network.hosts():
        if address == network.network_address + 1:
            continue  # the gateway on the bridge
        if str(address) not in taken:
            return address
    return None


def veth_name(container: str, leases: dict) -> str:
    # salted with the home's tag: two homes' containers named "web" get different veths
    taken = {lease["veth"] for lease in leases.values()}
    for attempt in range(100):
        digest = hashlib.sha256(f"{home_tag()}#{container}#{attempt}".encode()).hexdigest()
        name = VETH_PREFIX + digest[:8]
        if name not in taken and not link_exists(name):
            return name
    raise AssertionError("unreachable: 100 hash collisions")


def mac_address(address: ipaddress.IPv4Address) -> str:
    return ":".join([MAC_PREFIX, *(f"{byte:02x}" for byte in address.packed)])


# --- steps that run under the lock -------------------------------------------------------


def locked_step(config: NetworkConfig, shell: str, why: str, action: Callable[[], object]) -> Step:
    def run() -> None:
        with locked(config):
            action()

    return Step(shell, why, run)


def command_step(config: NetworkConfig, argv: list[str], why: str,
                 unless: Callable[[], bool] | None = None) -> Step:
    """A step that runs argv under the lock, skipped if `unless()` says it is already done."""
    def action() -> None:
        if unless is None or not unless():
            run_tool(argv)

    return locked_step(config, shlex.join(argv), why, action)
