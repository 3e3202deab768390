"""The host's networking tools, run for real: ``ip``, ``nft``, ``iptables``, ``nsenter``, sysctl.

Taught in notebook 08 ("Networking"). Everything the network modules do to the host goes through
`run_tool`, which runs the same command the student would type and the step shows::

    ip -j route show table main          # host_routes(): is a subnet free?
    ip -j link show                      # host_links(): which veths hang on the bridge?
    sysctl -w net.ipv4.ip_forward=1      # write_sysctl()

A missing tool or a failing command is one line that says what to install or to check.
"""

import json
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

from contained.errors import ContainedError


class NetworkToolMissing(ContainedError):
    """``ip``, ``nsenter`` or a firewall tool (nft, iptables) is not installed."""


class NetworkCommandFailed(ContainedError):
    """An ``ip``/``nft``/``iptables`` command exited with an error."""


def run_tool(argv: list[str], what: str | None = None) -> str:
    """Run `argv` and return its output; errors name the command (or `what`) in one line."""
    shell = what or shlex.join(argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise NetworkToolMissing(f"`{argv[0]}` is not installed (needed for `{shell}`); "
                                 f"install {PACKAGES.get(argv[0], argv[0])}") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise NetworkCommandFailed(f"`{shell.splitlines()[0]}` failed: {reason}; "
                                   "run `contained doctor` to check the host")
    return done.stdout


#: the Debian package of each tool, for "install ..." hints
PACKAGES = {"ip": "iproute2", "nft": "nftables", "iptables": "iptables", "nsenter": "util-linux"}
#: where Debian installs nft and iptables: not on a normal user's PATH
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def installed(tool: str) -> str | None:
    """The tool's path, looking in the sbin directories too: `contained doctor` run by a normal
    user must not call installed tools missing."""
    return shutil.which(tool) or shutil.which(tool, path=_SBIN)


def link_exists(name: str) -> bool:
    # if_nametoindex asks the kernel about this process's network namespace; /sys/class/net would
    # show whichever namespace /sys was mounted in.
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def write_sysctl(name: str, value: str) -> None:
    # /proc/sys/net follows the writer's network namespace, like `sysctl -w` does
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def read_sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return ""


def host_routes() -> list[dict]:
    """The main routing table, as `ip -j route` gives it."""
    return json.loads(run_tool(["ip", "-j", "route", "show", "table", "main"]) or "[]")


def host_links() -> list[dict]:
    """Every link of this network namespace, as `ip -j link` gives it."""
    return json.loads(run_tool(["ip", "-j", "link", "show"]) or "[]")
