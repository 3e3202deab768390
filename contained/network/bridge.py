"""The bridge and the veth pairs: plugging a container in (`plan_attach`), unplugging it
(`detach`), and cleaning up after crashes (`gc`).

Taught in notebook 08 ("Networking"). A container started with ``--net bridge`` gets what Docker's
default bridge gives it, built from the same kernel pieces a student types by hand first::

    ip link add contained0 type bridge                    # a virtual switch on the host
    ip addr add 10.77.0.1/24 dev contained0               # the containers' gateway
    ip link set contained0 up
    ip link add veth-1a2b3c4d type veth peer name eth0 netns PID   # a cable, one end inside
    ip link set veth-1a2b3c4d master contained0 up        # plug the host end into the switch
    nsenter -t PID -n ip addr add 10.77.0.2/24 dev eth0
    nsenter -t PID -n ip link set eth0 up
    nsenter -t PID -n ip route add default via 10.77.0.1
    ip link del veth-1a2b3c4d                             # detach: both ends go

`plan_attach` takes the lease (`contained.network.leases`) and returns these commands, with the
firewall's (`contained.network.firewall`), as `plan.Step` objects that run the real binaries,
so ``--explain`` prints what really ran. `detach` undoes one container, and removes the bridge
and the NAT table with the last one; `gc` removes what a crash left.
"""

import ipaddress
import json
import os
import shlex
from collections.abc import Callable

from contained import procfs
from contained.errors import ContainedError, ContainerNotRunning
from contained.network.firewall import (
    choose_firewall,
    firewall_exists,
    firewall_setup_step,
    port_rules,
    port_step,
    published_elsewhere,
    teardown_iptables,
)
from contained.network.leases import (
    VETH_PREFIX,
    Attachment,
    BridgeTaken,
    NetworkConfig,
    bridge_alias,
    bridge_info,
    check_subnet,
    claim_bridge,
    command_step,
    free_address,
    home_alias,
    lease_alive,
    lease_files,
    load_state,
    locked,
    locked_step,
    mac_address,
    ours_to_touch,
    save_state,
    state_path,
    veth_name,
)
from contained.network.names import check_name, refresh_hosts_files
from contained.network.ports import PortInUse, PortSpec, claim_port, ports_clash
from contained.network.tools import (
    NetworkCommandFailed,
    host_links,
    host_routes,
    link_exists,
    read_sysctl,
    run_tool,
    write_sysctl,
)
from contained.runtime.plan import Step

#: name of the container's end of its veth pair
CONTAINER_INTERFACE = "eth0"


class SubnetChanged(ContainedError):
    """The bridge's live leases use another subnet than the one configured now."""


class SubnetFull(ContainedError):
    """Every address of the subnet is leased."""


class AlreadyAttached(ContainedError):
    """A live container with this name already holds a lease on the bridge."""


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
    bridge per home" in `contained.network.leases`); should another home claim that name
    first, the next one is tried.
    """
    if config is None:
        return _plan_on_home_bridge(container, pid, publish, hosts_file, reserve)
    check_name(container)
    if reserve and procfs.start_time(pid) is None:
        raise ContainerNotRunning(f"process {pid} of container {container} has exited, so "
                                  "there is no network namespace to attach; start it again")
    firewall = choose_firewall(config)
    with locked(config):
        state = _current_leases(config, container, reserve)
        check_subnet(config)
        bridge = bridge_info(config.bridge)
        bridge_ready = _bridge_ready(config, bridge)
        attachment = _choose_lease(config, state["leases"], container, publish, firewall)
        if reserve:
            _reserve(config, state, attachment, pid, firewall, hosts_file, bridge)
        firewall = state.get("firewall", firewall)
        table_exists = firewall_exists(config, firewall)
    steps = [Step(f"# {attachment.ip}/{attachment.prefixlen} leased to {container} "
                  f"in {state_path(config)}",
                  "one address per container, never two at once, under flock")]
    if not bridge_ready:
        steps += _bridge_steps(config)
    if not table_exists:
        steps.append(firewall_setup_step(config, firewall))
    steps += _forwarding_steps(config, attachment.publish)
    steps += _veth_steps(config, attachment, pid)
    steps += [port_step(config, firewall, attachment, port) for port in attachment.publish]
    if hosts_file is not None:
        steps.append(locked_step(
            config, f"# rewrite /etc/hosts of every container on {config.bridge}",
            f"{container} and the others find each other by name",
            lambda: refresh_hosts_files(config)))
    return attachment, steps


def _plan_on_home_bridge(container: str, pid: int,
                         publish: list[PortSpec] | tuple[PortSpec, ...],
                         hosts_file: str | os.PathLike | None,
                         reserve: bool) -> tuple[Attachment, list[Step]]:
    """`plan_attach` on this home's bridge, choosing it again if another home claims it first."""
    for attempt in range(3):
        try:
            with locked(None):  # the same home's runners choose the same bridge
                return plan_attach(container, pid, publish, NetworkConfig(),
                                   hosts_file=hosts_file, reserve=reserve)
        except BridgeTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _current_leases(config: NetworkConfig, container: str, reserve: bool) -> dict:
    """The bridge's lease file, with a dead namesake's lease released (when reserving)."""
    state = load_state(config)
    old = state["leases"].get(container)
    if old is not None:
        if lease_alive(old):
            raise AlreadyAttached(f"container {container} is already on {config.bridge} "
                                  f"with {old['ip']}; detach it first or pick another name")
        if reserve:
            detach(container, config)  # a crashed namesake: take its place
            state = load_state(config)
    if state["leases"] and state["subnet"] != config.subnet:
        raise SubnetChanged(f"bridge {config.bridge} serves {state['subnet']} to running "
                            f"containers, not {config.subnet}; stop them (or run gc) first, "
                            "or unset CONTAINED_SUBNET")
    return state


def _choose_lease(config: NetworkConfig, leases: dict, container: str,
                  publish: list[PortSpec] | tuple[PortSpec, ...], firewall: str) -> Attachment:
    """The lowest free address, a veth name and the host ports, checked free; nothing saved."""
    address = free_address(config, leases)
    if address is None:
        raise SubnetFull(f"no free address in {config.subnet} for {container}; stop a "
                         "bridged container, run gc, or set a larger CONTAINED_SUBNET")
    elsewhere = published_elsewhere(config, firewall) if publish else []
    ports = tuple(claim_port(port, container, leases, elsewhere) for port in publish)
    for i, port in enumerate(ports):
        if any(ports_clash(port, other) for other in ports[:i]):
            raise PortInUse(f"host port {port.host_ip}:{port.host_port}/{port.protocol} "
                            f"is published twice for {container}")
    veth = veth_name(container, leases)
    return Attachment(container, str(address), config.gateway, config.network.prefixlen,
                      veth, ports)


def _reserve(config: NetworkConfig, state: dict, attachment: Attachment, pid: int,
             firewall: str, hosts_file: str | os.PathLike | None, bridge: dict | None) -> None:
    """Save the lease, then claim the bridge (`bridge`: its `bridge_info` read under the lock)."""
    state["subnet"] = config.subnet
    state["firewall"] = state.get("firewall", firewall)
    state["leases"][attachment.container] = {
        "ip": attachment.ip, "veth": attachment.host_veth, "pid": pid,
        "start": procfs.start_time(pid),
        "publish": [[p.host_ip, p.host_port, p.container_port, p.protocol]
                    for p in attachment.publish],
        "hosts_file": None if hosts_file is None else os.fspath(hosts_file),
    }
    save_state(config, state)
    try:
        # after the lease is saved: a runner killed now leaves a lease, which gc
        # follows to the bridge; never a bridge that no lease file leads to
        claim_bridge(config, bridge_alias(config.bridge, bridge))
    except BridgeTaken:
        del state["leases"][attachment.container]
        save_state(config, state)
        raise


def _bridge_ready(config: NetworkConfig, info: dict | None) -> bool:
    """The bridge (`info`: `bridge_info`) exists, is up and has the gateway's address (a
    runner killed half-way through `_bridge_steps` leaves it otherwise: the next attach
    finishes the job)."""
    return info is not None and "UP" in info.get("flags", []) and any(
        a.get("local") == config.gateway for a in info.get("addr_info", []))


def _bridge_steps(config: NetworkConfig) -> list[Step]:
    bridge, gateway = config.bridge, f"{config.gateway}/{config.network.prefixlen}"
    # another runner may create the bridge between our plan and our run: every step checks
    def has_gateway() -> bool:
        out = run_tool(["ip", "-j", "addr", "show", "dev", bridge])
        return any(a.get("local") == config.gateway
                   for link in json.loads(out or "[]") for a in link.get("addr_info", []))

    localnet = f"net.ipv4.conf.{bridge}.route_localnet"
    return [
        # made (claimed) already while planning, unless this is --dry-run: see claim_bridge
        command_step(config, ["ip", "link", "add", bridge, "type", "bridge"],
                     "a virtual switch that every bridged container of this home plugs into",
                     unless=lambda: link_exists(bridge)),
        command_step(config, ["ip", "link", "set", "dev", bridge, "alias", home_alias()],
                     "mark it as this home's: another home's clean-up leaves it alone",
                     unless=lambda: bridge_alias(bridge) == home_alias()),
        command_step(config, ["ip", "addr", "add", gateway, "dev", bridge],
                     "the host's address on the bridge: the containers' gateway",
                     unless=has_gateway),
        command_step(config, ["ip", "link", "set", bridge, "up"], "switch it on"),
        locked_step(config, f"sysctl -w {localnet}=1",
                    "let connections to 127.0.0.1 be redirected to containers on the bridge",
                    lambda: write_sysctl(localnet, "1")),
    ]


def _forwarding_steps(config: NetworkConfig, ports: tuple[PortSpec, ...]) -> list[Step]:
    """Turn on IPv4 forwarding, but only if the host has a way out or a port is public.

    Forwarding makes the host a router for everything, so it stays off when all traffic is
    container to container (bridged) or host to container through 127.0.0.1 (locally
    generated). It is left on at detach: other software may have come to rely on it.
    """
    if read_sysctl("net.ipv4.ip_forward") == "1":
        return []
    way_out = any(route.get("dst") == "default" and route.get("dev") != config.bridge
                  for route in host_routes())
    public = any(not ipaddress.IPv4Address(port.host_ip).is_loopback for port in ports)
    if not (way_out or public):
        return []
    reason = ("the host routes the containers' packets to its default route (NAT)" if way_out
              else "the host routes connections to published ports on to the containers")
    return [locked_step(config, "sysctl -w net.ipv4.ip_forward=1", reason + "; was off",
                        lambda: write_sysctl("net.ipv4.ip_forward", "1"))]


def _veth_steps(config: NetworkConfig, attachment: Attachment, pid: int) -> list[Step]:
    veth, address = attachment.host_veth, ipaddress.IPv4Address(attachment.ip)
    inside = ["nsenter", "-t", str(pid), "-n"]
    cidr = f"{attachment.ip}/{attachment.prefixlen}"
    return [
        command_step(config, ["ip", "link", "add", veth, "type", "veth", "peer", "name",
                              CONTAINER_INTERFACE, "address", mac_address(address),
                              "netns", str(pid)],
                     "a virtual cable: one end stays on the host, the other appears in the "
                     "container as eth0 (MAC derived from the address)"),
        command_step(config, ["ip", "link", "set", veth, "master", config.bridge, "up"],
                     "plug the host end into the bridge"),
        command_step(config, [*inside, "ip", "addr", "add", cidr, "dev", CONTAINER_INTERFACE],
                     "the container's address, inside its network namespace"),
        command_step(config, [*inside, "ip", "link", "set", CONTAINER_INTERFACE, "up"],
                     "bring the container's end up"),
        command_step(config, [*inside, "ip", "route", "add", "default", "via",
                              attachment.gateway],
                     "everything not on the bridge goes through the host"),
    ]


# --- detach and gc -------------------------------------------------------------------------


def _report(explain: Callable[[str], None] | None, step: Step) -> None:
    if explain is not None:
        explain(step.explain())


def _run_reported(explain: Callable[[str], None] | None, argv: list[str], why: str) -> None:
    _report(explain, Step(shlex.join(argv), why))
    run_tool(argv)


def _delete_veth(explain: Callable[[str], None] | None, veth: str, why: str) -> None:
    """`ip link del` a host-side veth, unless the kernel deletes it first.

    A veth pair also goes when the namespace holding its other end is destroyed, which the
    kernel finishes asynchronously after the container's last process has exited: right after
    a container dies, its veth can vanish between the check and the command.
    """
    if not link_exists(veth):
        return
    _report(explain, Step(shlex.join(["ip", "link", "del", veth]), why))
    try:
        run_tool(["ip", "link", "del", veth])
    except NetworkCommandFailed:
        if link_exists(veth):
            raise


def _release(config: NetworkConfig, state: dict, container: str,
             explain: Callable[[str], None] | None) -> None:
    lease = state["leases"][container]
    firewall = state.get("firewall") or choose_firewall(config)
    _delete_veth(explain, lease["veth"],
                 f"unplug {container}: deleting one end of a veth pair deletes both")
    # a stale record may name a bridge that another home has claimed since: not its table
    for owner, delete in port_rules(config, firewall) if ours_to_touch(config) else ():
        if owner == container:
            _run_reported(explain, delete, f"stop publishing {container}'s port")
    del state["leases"][container]
    # saved after the commands: a runner killed in between leaves a lease that gc retries
    save_state(config, state)


def _teardown(config: NetworkConfig, state: dict, explain: Callable[[str], None] | None) -> None:
    """Remove the bridge and the NAT rules: the last bridged container is gone."""
    firewall = state.get("firewall") or choose_firewall(config)
    alias = bridge_alias(config.bridge)
    if alias not in (None, home_alias()):
        return  # another home's bridge and table now (this home's record was stale)
    if alias is not None:
        _run_reported(explain, ["ip", "link", "del", config.bridge],
                      "the last bridged container of this home is gone")
    if firewall == "nft" and firewall_exists(config, "nft"):
        _run_reported(explain, ["nft", "delete", "table", "ip", config.table],
                      "its NAT and port rules go with it")
    elif firewall == "iptables":
        for line in teardown_iptables(config):
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
    with locked(config):
        state = load_state(config)
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
    with locked(config):
        state = load_state(config)
        for name, lease in list(state["leases"].items()):
            if (alive is not None and name not in alive) or not lease_alive(lease):
                _release(config, state, name, explain)
                removed.append(name)
        if not ours_to_touch(config):
            return removed  # the name is another home's now: its veths and rules are too
        owned = {lease["veth"] for lease in state["leases"].values()}
        for link in host_links():
            name = link.get("ifname", "")
            if (link.get("master") == config.bridge and name.startswith(VETH_PREFIX)
                    and name not in owned):
                _delete_veth(explain, name, "no lease owns this veth")
        firewall = state.get("firewall") or choose_firewall(config)
        for owner, delete in port_rules(config, firewall):
            if owner not in state["leases"]:
                _run_reported(explain, delete, f"port rule of {owner or 'nobody'}, who is gone")
        if not state["leases"]:
            _teardown(config, state, explain)
        if removed:
            _refresh_after_release(config, state, explain)
    return removed
