"""Notebook 08's helpers: the host's bridge as it is now, and fetching a published port.

Used by notebook 08 (networking) through the `contained.workbook` facade, and by its checkers.
The shell commands they stand for::

    ip -j addr show                        # bridge_state: the bridge and its gateway,
    ip link show master BRIDGE             #   the veths plugged into it,
    cat HOME/network/BRIDGE.json           #   each container's lease (address, ports)
    sysctl net.ipv4.conf.BRIDGE.route_localnet   # and whether 127.0.0.1 may be routed out
    wget -q -O - http://127.0.0.1:PORT/    # fetch (no proxy; retried while the server starts)
"""

import json
import time
import urllib.request
from pathlib import Path

from contained.workbook.lab import sh_output


def fetch(url: str, wait: float = 10.0) -> str:
    """GET `url` (on 127.0.0.1), retrying while the server starts; no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + wait
    while True:
        try:
            with opener.open(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bridge_state(bridge: str | None = None) -> dict:
    """The bridge (this home's, by default), its gateway, and each plugged-in veth with its
    container's lease."""
    from contained import network

    bridge = bridge or network.NetworkConfig().bridge
    links = json.loads(sh_output("ip -j addr show"))
    found = [link for link in links if link["ifname"] == bridge]
    if not found:
        return {"bridge": None, "gateway": None, "veths": [], "subnet": None,
                "route_localnet": None}
    gateway = next((a["local"] + "/" + str(a["prefixlen"]) for a in found[0]["addr_info"]
                    if a["family"] == "inet"), "?")
    plugged = {link["ifname"] for link in links if link.get("master") == bridge}
    path = _network_state_path()
    leases = json.loads(path.read_text())["leases"] if path.exists() else {}
    veths = [{"veth": lease["veth"], "name": name, "ip": lease["ip"],
              "ports": [f"{ip}:{host}→{port}/{proto}"
                        for ip, host, port, proto in lease["publish"]],
              "publish": [list(rule) for rule in lease["publish"]]}
             for name, lease in sorted(leases.items()) if lease["veth"] in plugged]
    return {"bridge": bridge, "gateway": gateway, "veths": veths,
            "subnet": network.NetworkConfig(bridge=bridge).subnet,
            "route_localnet": _route_localnet(bridge)}


def _route_localnet(bridge: str) -> str | None:
    """sysctl net.ipv4.conf.BRIDGE.route_localnet: "1" lets 127.0.0.1 be routed to the bridge."""
    try:
        return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip()
    except OSError:
        return None


def _network_state_path() -> Path:
    from contained import network

    return network.state_path(network.NetworkConfig())
