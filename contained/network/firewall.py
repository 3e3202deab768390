"""The firewall of a bridge: NAT out, published ports in, and the loopback drop (nft or iptables).

Taught in notebook 08 ("Networking"). One nft table per bridge holds every rule, so deleting the
table removes them all::

    nft 'table ip contained0 { chain postrouting { ... masquerade } ... }'   # the subnet goes
                                                                             # out as the host
    nft 'add rule ip contained0 ports ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.77.0.2:80'
    nft delete table ip contained0                                           # the last one left

``iptables`` chains named ``CONTAINED-*-<bridge>`` do the same where nft is missing.

Published ports work without a userland proxy: DNAT in the ``output`` hook catches connections
the host itself makes to 127.0.0.1, ``route_localnet`` on the bridge lets those packets leave
the loopback world, and masquerading rewrites their 127.0.0.1 source so the container can answer.
Since route_localnet would also let a container's hand-made packets *for* 127.0.0.1 in (to every
loopback-only service of the host: CVE-2020-8558), the table drops packets from the bridge to
127.0.0.0/8 that are not replies of a redirected connection::

    # table ip contained0, chain input (type filter hook input):
    iifname "contained0" ip daddr 127.0.0.0/8 ct status & dnat != dnat drop
"""

import hashlib
import json
import shlex
import subprocess

from contained.network.leases import (
    BRIDGE_PREFIX,
    Attachment,
    NetworkConfig,
    command_step,
    locked_step,
)
from contained.network.ports import PortSpec
from contained.network.tools import NetworkToolMissing, installed, run_tool
from contained.runtime.plan import Step

#: iptables fallback chains (nat, and filter for INPUT), one set per bridge: NAME-<bridge>
IPT_POSTROUTING = "CONTAINED-POST"
IPT_PORTS = "CONTAINED-PORTS"
IPT_INPUT = "CONTAINED-INPUT"
IPT_FORWARD = "CONTAINED-FWD"


def choose_firewall(config: NetworkConfig) -> str:
    """The tool for the bridge's rules: the one `config` names, else nft, else iptables."""
    if config.firewall != "auto":
        return config.firewall
    # (in /usr/sbin: not on a normal user's PATH, whose --dry-run still shows the rules)
    if installed("nft"):
        return "nft"
    if installed("iptables"):
        return "iptables"
    raise NetworkToolMissing("neither `nft` nor `iptables` is installed, so bridged containers "
                             "get no NAT or published ports; apt-get install nftables")


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


def firewall_exists(config: NetworkConfig, firewall: str) -> bool:
    """Whether this home's table (or chains) are there. A tool that cannot be run (a normal
    user's --dry-run: /usr/sbin is not on its PATH, nor may it read the rules) says no."""
    if firewall == "nft":
        argv = [installed("nft") or "nft", "list", "table", "ip", config.table]
    else:
        argv = [installed("iptables") or "iptables", "-w", "-t", "nat", "-S",
                _ipt_chain(IPT_PORTS, config)]
    try:
        return subprocess.run(argv, capture_output=True).returncode == 0
    except OSError:
        return False


def firewall_setup_step(config: NetworkConfig, firewall: str) -> Step:
    why = ("NAT: the subnet leaves as the host (masquerade), published ports are redirected "
           "to containers (dnat), also for 127.0.0.1")
    if firewall == "nft":
        script = _nft_table_script(config)

        def create() -> None:
            # one nft invocation is one transaction: a killed runner leaves all or nothing
            if not firewall_exists(config, "nft"):
                run_tool(["nft", script], f"nft 'table ip {config.table} {{ ... }}'")

        return locked_step(config, f"nft '{script}'", why, create)
    commands = _iptables_setup(config)

    def create_chains() -> None:
        if not firewall_exists(config, "iptables"):
            teardown_iptables(config)  # a runner killed half-way may have left some rules
            for argv in commands:
                run_tool(argv)

    return locked_step(config, "\n".join(shlex.join(c) for c in commands), why, create_chains)


def port_step(config: NetworkConfig, firewall: str, attachment: Attachment,
              port: PortSpec) -> Step:
    why = (f"connections to {port.host_ip}:{port.host_port} go to {attachment.container} "
           f"port {port.container_port}")
    target = f"{attachment.ip}:{port.container_port}"
    if firewall == "nft":
        match = "" if port.host_ip == "0.0.0.0" else f"ip daddr {port.host_ip} "
        rule = (f"add rule ip {config.table} ports {match}{port.protocol} dport "
                f"{port.host_port} dnat to {target} comment \"{attachment.container}\"")
        return command_step(config, ["nft", rule], why)
    match = [] if port.host_ip == "0.0.0.0" else ["-d", port.host_ip]
    argv = ["iptables", "-w", "-t", "nat", "-A", _ipt_chain(IPT_PORTS, config), *match,
            "-p", port.protocol,
            "--dport", str(port.host_port), "-m", "comment", "--comment", attachment.container,
            "-j", "DNAT", "--to-destination", target]
    return command_step(config, argv, why)


def port_rules(config: NetworkConfig, firewall: str) -> list[tuple[str, list[str]]]:
    """Every port rule as (its container, the command that deletes it)."""
    if not firewall_exists(config, firewall):
        return []
    if firewall == "nft":
        out = run_tool(["nft", "-j", "-a", "list", "chain", "ip", config.table, "ports"])
        return [(item["rule"].get("comment", ""),
                 ["nft", "delete", "rule", "ip", config.table, "ports", "handle",
                  str(item["rule"]["handle"])])
                for item in json.loads(out)["nftables"] if "rule" in item]
    rules = []
    for line in run_tool(["iptables", "-w", "-t", "nat", "-S",
                          _ipt_chain(IPT_PORTS, config)]).splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and "--comment" in words:
            owner = words[words.index("--comment") + 1]
            rules.append((owner, ["iptables", "-w", "-t", "nat", "-D", *words[1:]]))
    return rules


def teardown_iptables(config: NetworkConfig) -> list[str]:
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


def published_elsewhere(config: NetworkConfig, firewall: str) -> list[PortSpec]:
    """The ports other homes' bridges publish on this host. Their DNAT rules hold no socket,
    so binding the port (`claim_port`) does not find them; their tables and chains do."""
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
