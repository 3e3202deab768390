"""Names inside bridged containers: /etc/hosts (each other, by name) and /etc/resolv.conf.

Taught in notebook 08 ("Networking"). By hand, for two containers on the bridge::

    echo "10.77.0.3  api" >> web/rootfs/etc/hosts       # and the other way round, for every pair
    grep nameserver /run/systemd/resolve/resolv.conf     # the host's upstream resolvers
    mount --bind hosts rootfs/etc/hosts                  # what the runtime does with the files

The hosts files are rewritten whenever a container joins or leaves the bridge
(`refresh_hosts_files`, from the lease file); `resolv_conf` gives bridged containers the host's
upstream resolvers (a loopback stub such as systemd-resolved's 127.0.0.53 is unreachable from
a container).
"""

import ipaddress
import os
from pathlib import Path

from contained import names as safe_names  # the one name check (this module is about hosts)
from contained.errors import ContainedError
from contained.network.leases import NetworkConfig, lease_alive, load_state, locked

#: used in /etc/resolv.conf when the host only has a loopback stub resolver (unreachable from a
#: container) or no resolver at all. Quad9: no logging of client addresses.
FALLBACK_NAMESERVERS = ("9.9.9.9", "149.112.112.112")


class BadContainerName(ContainedError):
    """A container name cannot be used as a host name and rule comment."""


def check_name(container: str) -> None:
    """Refuse names that would break /etc/hosts or a rule comment."""
    if not safe_names.is_valid(container):
        raise BadContainerName(f"container name {container!r} is not usable on the bridge; "
                               "use letters, digits and '_.-', starting with a letter or digit")


def hosts_entries(config: NetworkConfig | None = None) -> dict[str, str]:
    """Name → address of the live containers on the bridge, for their /etc/hosts."""
    config = config or NetworkConfig()
    with locked(config):
        leases = load_state(config)["leases"]
    return {name: lease["ip"] for name, lease in sorted(leases.items()) if lease_alive(lease)}


def refresh_hosts_files(config: NetworkConfig | None = None) -> list[str]:
    """Rewrite the hosts file of every live container on the bridge; return the paths written.

    Only containers attached with a `hosts_file` have one. A file that has disappeared (its
    container is being removed) is skipped.
    """
    config = config or NetworkConfig()
    written = []
    with locked(config):
        leases = load_state(config)["leases"]
        entries = {name: lease["ip"] for name, lease in leases.items() if lease_alive(lease)}
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
