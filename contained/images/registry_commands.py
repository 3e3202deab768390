"""The ``contained registry`` and ``contained pull`` subcommands (registered by `contained.cli`).

Taught in notebooks 00 and 04 (see `contained.images.registry`)::

    contained registry start     docker-registry serve config.yml (read-only, seeded first)
    contained registry status    is it running, and the registries.conf that reaches it
    contained registry stop      kill the server
    contained pull busybox       skopeo copy docker://busybox:latest oci:$HOME/oci:docker.io/…

Only argparse is used here: the registry client (http.client, email, ssl: ~25 ms) loads when
one of these commands runs, never on `contained run`.
"""

import argparse
from pathlib import Path


def add_registry(commands) -> None:
    """Register ``registry start|status|stop`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "registry", help="a local registry on 127.0.0.1 that serves the store's images")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start it (default port 5000, or a free one) and "
                                             "push the store's images to it")
    start.add_argument("--port", type=int, help="port on 127.0.0.1")
    start.add_argument("--no-seed", dest="seed", action="store_false",
                       help="do not push the store's images")
    start.set_defaults(func=run_registry_start)
    actions.add_parser("status", help="is it running, and how to use it").set_defaults(
        func=run_registry_status)
    actions.add_parser("stop", help="stop it").set_defaults(func=run_registry_stop)


def run_registry_start(args) -> int:
    from contained.images import registry

    print(registry.usage(registry.start(port=args.port, seed=args.seed)))
    return 0


def run_registry_status(args) -> int:
    from contained.images import registry

    state = registry.status()
    if state is None:
        print("registry not running; start it with `contained registry start`")
        return 1
    print(registry.usage(state))
    return 0


def run_registry_stop(args) -> int:
    from contained.images import registry

    state = registry.stop()
    print(f"registry on {state.address} stopped" if state else "registry was not running")
    return 0


def add_pull(commands) -> None:
    """Register ``pull IMAGE`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "pull", help="copy an image into the store (skopeo copy)",
        description="Copy an image into the store with skopeo, pick this machine's "
                    "architecture, and verify every blob.")
    parser.add_argument("image", help="busybox, busybox:1.36, 127.0.0.1:5000/library/busybox, "
                                      "docker://…, oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    parser.add_argument("--registries-conf", type=Path, metavar="FILE",
                        help="containers-registries.conf to use, e.g. the local registry's "
                             "(see `contained registry status`)")
    parser.add_argument("--tls-verify", type=_parse_bool, default=None, metavar="true|false",
                        help="verify the registry's TLS certificate (default: true, except "
                             "for registries on this machine)")
    parser.add_argument("--insecure", dest="tls_verify", action="store_const", const=False,
                        help="same as --tls-verify=false")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run_pull)


def run_pull(args) -> int:
    from contained.images.store import Store

    image = Store().pull(args.image, registries_conf=args.registries_conf,
                        tls_verify=args.tls_verify, progress=False if args.quiet else None)
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
