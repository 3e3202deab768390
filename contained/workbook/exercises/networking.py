"""Notebook 08's exercises (networking): a third namespace on its own cable, and a published port.

08.1 `check_third_namespace` checks the learner's namespace, its veth pair and a ping; 08.2
`check_published` fetches the page on the host's port and, by name, from another container::

    ip -n lab08-c -j addr show                         # the address, on a veth that is up
    ip netns exec lab08-c busybox ping -c 1 10.200.9.1
    wget -q -O - http://127.0.0.1:8090/                # the published port
    contained exec web08 wget -q -O - http://api08/    # the name, on the bridge
"""

import json

from contained import isolated
from contained.errors import ContainedError
from contained.workbook import bridge, lab
from contained.workbook.exercises.hints import exercise, right, wrong


@exercise("08.1",
          concept="a veth pair is a cable with two ends: one end in each namespace, an address "
                  "on each, both up",
          where="part 1 of notebook 08: the cells that made lab08-b and its cable",
          solution="ip netns add lab08-c; ip -n lab08-a link add veth-ac type veth peer name "
                   "veth-c netns lab08-c; ip -n lab08-a addr add 10.200.9.1/24 dev veth-ac; "
                   "ip -n lab08-c addr add 10.200.9.2/24 dev veth-c; ip -n lab08-a link set "
                   "veth-ac up; ip -n lab08-c link set veth-c up")
def check_third_namespace(namespace: str = "lab08-c", peer: str = "lab08-a",
                          address: str = "10.200.9.2", gateway: str = "10.200.9.1"):
    """`namespace` has `address` and reaches `gateway` in `peer` over a veth pair
    (``ip -n NS -j addr``, ``ip netns exec NS busybox ping -c 1 GATEWAY``)."""
    if not lab.privileged():
        return wrong("network namespaces need root; run this notebook as root")
    if namespace not in lab.sh_output("ip netns list", check=False).split():
        return wrong(f"there is no namespace {namespace}: `ip netns add {namespace}`")
    links = json.loads(lab.sh_output(f"ip -n {namespace} -j addr show") or "[]")
    mine = [link for link in links if any(a.get("local") == address for a in link["addr_info"])]
    if not mine:
        return wrong(f"no interface in {namespace} has {address}: "
                               f"`ip -n {namespace} addr add {address}/24 dev ...`")
    if mine[0].get("link_type") != "ether" or "UP" not in mine[0]["flags"]:
        return wrong(f"{mine[0]['ifname']} in {namespace} is not an Ethernet (veth) "
                               f"interface that is up: `ip -n {namespace} link set "
                               f"{mine[0]['ifname']} up`")
    if not _veth_peers(namespace, mine[0], peer, gateway):
        return wrong(f"the other end of {mine[0]['ifname']} is not the interface with {gateway} "
                     f"in {peer}: the cable must go to {peer} (`ip link add ... peer name "
                     f"... netns {peer}`, then `ip -n {peer} addr add {gateway}/24 ...`)")
    ping = f"ip netns exec {namespace} busybox ping -c 1 -W 1 -I {mine[0]['ifname']} {gateway}"
    if lab.sh_output(f"{ping} >/dev/null 2>&1 && echo ok", check=False) != "ok":
        return wrong(f"{namespace} cannot ping {gateway}: is the other end in {peer} "
                               f"addressed and up? (`ip -n {peer} -br addr`)")
    return right(f"{namespace} ({address}) reaches {gateway} in {peer} over its own "
                           "cable.")


def _veth_peers(namespace: str, end: dict, peer: str, gateway: str) -> bool:
    """Is `end` (an interface of `namespace`, from ``ip -j addr``) one end of a veth pair whose
    other end is the interface holding `gateway` in `peer`? Each end names the other by its
    index in the other's namespace (``link_index``, the ``@ifN`` of ``ip link``)."""
    links = json.loads(lab.sh_output(f"ip -n {peer} -j addr show", check=False) or "[]")
    theirs = [link for link in links if any(a.get("local") == gateway for a in link["addr_info"])]
    return any(link.get("link_index") == end.get("ifindex")
               and end.get("link_index") == link.get("ifindex")
               and "link_netnsid" in link and "link_netnsid" in end for link in theirs)


@exercise("08.2",
          concept="-p HOST_IP:PORT:CONTAINER_PORT is a DNAT rule from the host's port to the "
                  "container's address; --net bridge puts its name in the others' /etc/hosts",
          where="the cell that starts web08 in notebook 08",
          solution="workbook.contained('run -d --name api08 --net bridge -p 127.0.0.1:8090:80 "
                   "busybox sh -c \"mkdir -p /www && echo hello from api08 > /www/index.html "
                   "&& exec httpd -f -p 80 -h /www\"')")
def check_published(name: str = "api08", port: int = 8090, text: str = "hello from api08"):
    """`name` serves `text` on 127.0.0.1:`port` and, by name, to the other containers
    (``wget -q -O - http://127.0.0.1:PORT/``, ``contained exec web08 wget -q -O - http://NAME/``)."""
    from contained.runtime import container

    if not lab.privileged():
        return wrong("bridged containers need root; run this notebook as root")
    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name}: `contained run -d --name "
                               f"{name} --net bridge -p 127.0.0.1:{port}:80 busybox sh -c ...`")
    if found.spec.net != "bridge" or not found.running:
        return wrong(f"{name} must be running with --net bridge: `contained rm -f "
                               f"{name}` and start it again")
    try:
        page = bridge.fetch(f"http://127.0.0.1:{port}/", wait=3).strip()
    except OSError:
        return wrong(f"nothing answers on 127.0.0.1:{port}: did you publish it "
                               f"with -p 127.0.0.1:{port}:80, and is httpd running in {name}?")
    if page != text:
        return wrong(f"127.0.0.1:{port} says {page!r}, not {text!r}")
    contained = isolated.shell_words("contained.cli")
    by_name = lab.sh_output(f"{contained} exec web08 wget -q -O - http://{name}/",
                                 check=False)
    if by_name != text:
        return wrong(f"web08 cannot fetch http://{name}/ by name: is {name} on the "
                               "bridge (--net bridge) and is web08 still running?")
    return right(f"{name} serves {text!r} on 127.0.0.1:{port} and, by name, to "
                           "web08.")
