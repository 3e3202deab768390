"""Container networking: a bridge, one veth pair per container, NAT and published ports.

Taught in notebook 08 ("Networking"). A container started with ``--net bridge`` gets what
Docker's default bridge gives it, built from the same kernel pieces a student types by hand
first: a bridge on the host, a veth pair with one end moved into the container's network
namespace (the commands are in `contained.network.bridge`'s docstring), and nft rules::

    nft '...masquerade...'                                # the subnet goes out as the host
    nft 'add rule ip contained0 ports ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.77.0.2:80'

One module per idea:

- `bridge`: the bridge and veth commands; `plan_attach`, `detach`, `gc`.
- `leases`: which bridge and subnet are this home's, and the lease file (one address per
  container, under flock); `NetworkConfig`.
- `firewall`: the nft table (iptables where nft is missing): NAT, port rules, the loopback drop.
- `ports`: ``-p`` values (`parse_publish`) and checking a host port is free.
- `names`: /etc/hosts (containers find each other by name) and /etc/resolv.conf.
- `tools`: running ``ip``, ``nft``, ``iptables`` and ``nsenter``.
- `slirp`: rootless ``--net bridge``: no bridge, slirp4netns connects the namespace instead.

This package exports what the runtime, the CLI and the notebooks use, and `doctor`, which says
what would stop any of it from working on this host.
"""

import os
import shutil
import subprocess
from pathlib import Path

from contained.errors import ContainedError
from contained.network import slirp
from contained.network.bridge import (
    CONTAINER_INTERFACE,
    AlreadyAttached,
    ContainerNotRunning,
    SubnetChanged,
    SubnetFull,
    detach,
    gc,
    plan_attach,
)
from contained.network.leases import (
    BRIDGE_PREFIX,
    DEFAULT_BRIDGE,
    DEFAULT_SUBNET,
    VETH_PREFIX,
    Attachment,
    BadNetworkConfig,
    BadSubnet,
    BridgeTaken,
    NetworkConfig,
    SubnetInUse,
    check_subnet,
    lease_files,
    state_path,
)
from contained.network.names import (
    BadContainerName,
    check_name,
    hosts_entries,
    hosts_file,
    refresh_hosts_files,
    resolv_conf,
    write_hosts_file,
)
from contained.network.ports import (
    DEFAULT_HOST_IP,
    BadPortSpec,
    PortInUse,
    PortSpec,
    parse_publish,
)
from contained.network.tools import (
    PACKAGES,
    NetworkCommandFailed,
    NetworkToolMissing,
    host_routes,
    installed,
    read_sysctl,
)

__all__ = [
    "BRIDGE_PREFIX", "CONTAINER_INTERFACE", "DEFAULT_BRIDGE", "DEFAULT_HOST_IP", "DEFAULT_SUBNET",
    "VETH_PREFIX",
    "AlreadyAttached", "Attachment", "BadContainerName", "BadNetworkConfig", "BadPortSpec",
    "BadSubnet", "BridgeTaken", "ContainerNotRunning", "NetworkCommandFailed", "NetworkConfig",
    "NetworkToolMissing", "PortInUse", "PortSpec", "SubnetChanged", "SubnetFull", "SubnetInUse",
    "check_name", "check_subnet", "detach", "doctor", "gc", "hosts_entries", "hosts_file",
    "lease_files", "parse_publish", "plan_attach", "refresh_hosts_files", "resolv_conf",
    "slirp", "state_path", "unplug", "write_hosts_file",
]


def unplug(container: str, directory: str | os.PathLike, rootless: bool) -> None:
    """Undo a --net bridge container's network: its lease, veth and port rules (`detach`),
    or, rootless, its slirp4netns (`slirp.detach`). Safe to call twice."""
    if rootless:
        slirp.detach(Path(directory))
    else:
        detach(container)


def doctor(config: NetworkConfig | None = None) -> list[str]:
    """What stops bridged networking or NAT from working here, one line each; [] if nothing."""
    problems = []
    try:
        config = config or NetworkConfig()
    except ContainedError as error:
        return [str(error)]
    if os.geteuid() != 0:  # rootless: slirp4netns instead of the bridge, veths and NAT
        return slirp.problems()
    for tool in ("ip", "nsenter"):
        if installed(tool) is None:
            problems.append(f"`{tool}` is missing: apt-get install {PACKAGES[tool]}")
    if not (installed("nft") or installed("iptables")):
        problems.append("neither `nft` nor `iptables` is installed: no NAT and no published "
                        "ports; apt-get install nftables")
    if installed("ip") is None:
        return problems
    routes = host_routes()
    if not any(route.get("dst") == "default" for route in routes):
        problems.append("no default route: bridged containers reach each other and the host, "
                        "but NAT has nowhere to send anything else")
    elif read_sysctl("net.ipv4.ip_forward") != "1":
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
