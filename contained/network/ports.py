"""Published ports (``-p``): parsing ``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]`` and
checking that the host port is free.

Taught in notebook 08 ("Networking"). What ``-p 8080:80`` means, by hand::

    ss -ltn 'sport = :8080'              # nothing on the host listens there (we bind to check)
    nft add rule ip contained0 ports ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.77.0.2:80

One deliberate difference from Docker: ``-p 8080:80`` publishes on 127.0.0.1, not on every
interface (``0.0.0.0``): a classroom VM should not expose a student's half-finished server to the
whole network by accident. Write ``-p 0.0.0.0:8080:80`` to mean it. The rules themselves are
written by `contained.network.firewall`.
"""

import errno
import ipaddress
import socket

from contained.errors import ContainedError
from contained.records import record

DEFAULT_HOST_IP = "127.0.0.1"


class BadPortSpec(ContainedError):
    """A ``-p`` value is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]."""


class PortInUse(ContainedError):
    """A published host port is taken by another container or a host process."""


@record(frozen=True)
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


def ports_clash(a: PortSpec, b: PortSpec) -> bool:
    same_ip = a.host_ip == b.host_ip or "0.0.0.0" in (a.host_ip, b.host_ip)
    return same_ip and a.host_port == b.host_port and a.protocol == b.protocol


def claim_port(port: PortSpec, container: str, leases: dict,
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
            if ports_clash(resolved, PortSpec(*taken)):
                raise PortInUse(f"host port {resolved.host_ip}:{resolved.host_port}/"
                                f"{resolved.protocol} is published by container {other}; "
                                f"publish {container} on another port")
    if any(ports_clash(resolved, taken) for taken in elsewhere):
        raise PortInUse(f"host port {resolved.host_ip}:{resolved.host_port}/{resolved.protocol} "
                        f"is published by another home's container; publish {container} on "
                        "another port")
    return resolved
