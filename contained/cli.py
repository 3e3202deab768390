"""The ``contained`` command: images, the local registry, and (later) containers, from a shell.

Every notebook ends with the command that does what it built by hand; the image commands come
from notebook 04. They correspond to::

    contained pull busybox        skopeo copy docker://busybox:latest oci:$HOME/oci:docker.io/…
    contained images              jq '.manifests[].annotations' $HOME/oci/index.json
    contained inspect busybox     skopeo inspect --config oci:$HOME/oci:docker.io/library/busybox
    contained unpack busybox DIR  tar -xf $HOME/oci/blobs/sha256/<layer> -C DIR (each layer)
    contained import busybox      (see contained.busybox: the host's busybox as an image)
    contained registry start      docker-registry serve config.yml

Each subcommand is one `add_*` function that registers its parser and sets ``func`` to the
function that runs it; `COMMANDS` lists them in help order, so adding a command is adding one
function to that list. Errors a user can act on are `ContainedError`s: printed as one line
``contained: error: …`` and turned into the error's exit status; Ctrl-C exits with 130.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from contained import registry
from contained.errors import ContainedError
from contained.reference import parse_reference
from contained.store import Store

EXIT_INTERRUPTED = 130


def add_pull(commands) -> None:
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
    image = Store().pull(args.image, registries_conf=args.registries_conf,
                         tls_verify=args.tls_verify, progress=False if args.quiet else None)
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def add_images(commands) -> None:
    parser = commands.add_parser("images", help="list the images in the store")
    parser.add_argument("--no-trunc", action="store_true", help="show full digests")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print image names")
    parser.set_defaults(func=run_images)


def run_images(args) -> int:
    images = Store().images()
    if args.quiet:
        for image in images:
            print(image.reference.familiar)
        return 0
    rows = [("REPOSITORY", "TAG", "DIGEST", "SIZE")]
    for image in images:
        reference = image.reference
        digest = image.digest if args.no_trunc else image.digest[:19]
        rows.append((reference.familiar_repository, reference.tag or "<none>", digest,
                     human_size(image.size)))
    print(format_table(rows))
    return 0


def add_inspect(commands) -> None:
    parser = commands.add_parser("inspect", help="show an image's config and layers as JSON")
    parser.add_argument("image")
    parser.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    print(json.dumps(Store().image(args.image).describe(), indent=2))
    return 0


def add_rmi(commands) -> None:
    parser = commands.add_parser(
        "rmi", help="remove images (their unpacked layers stay until `contained gc`)")
    parser.add_argument("images", nargs="+", metavar="image")
    parser.set_defaults(func=run_rmi)


def run_rmi(args) -> int:
    store = Store()
    for name in args.images:
        store.remove(name)
        print(f"Untagged: {parse_reference(name).familiar}")
    return 0


def add_unpack(commands) -> None:
    parser = commands.add_parser(
        "unpack", help="flatten an image into a directory (whiteouts applied)")
    parser.add_argument("image")
    parser.add_argument("dest", type=Path, help="a new or empty directory")
    parser.set_defaults(func=run_unpack)


def run_unpack(args) -> int:
    image = Store().unpack(args.image, args.dest)
    print(f"unpacked {image.reference.familiar} ({len(image.layers)} layers) into {args.dest}")
    return 0


def add_import(commands) -> None:
    parser = commands.add_parser(
        "import", help="make an image without a registry: the host's busybox, or a tarball",
        description="`contained import busybox [NAME]` builds busybox:latest from the host's "
                    "static busybox (reproducibly). `contained import TARBALL NAME` makes a "
                    "one-layer image from a root filesystem tarball, like `docker import` (write "
                    "./busybox for a tarball named busybox).")
    parser.add_argument("source", help="`busybox`, or a rootfs tarball (.tar or .tar.gz)")
    parser.add_argument("name", nargs="?", help="the image's name (default for busybox: busybox)")
    parser.set_defaults(func=run_import)


def run_import(args) -> int:
    store = Store()
    if args.source == "busybox":
        from contained.busybox import DEFAULT_NAME, import_busybox

        image = import_busybox(store, args.name or DEFAULT_NAME)
    else:
        if not args.name:
            raise ContainedError(f"cannot import {args.source}: name the image, e.g. "
                                 f"`contained import {args.source} myimage:latest`")
        image = store.import_tarball(Path(args.source), args.name)
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def add_registry(commands) -> None:
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
    print(registry.usage(registry.start(port=args.port, seed=args.seed)))
    return 0


def run_registry_status(args) -> int:
    state = registry.status()
    if state is None:
        print("registry not running; start it with `contained registry start`")
        return 1
    print(registry.usage(state))
    return 0


def run_registry_stop(args) -> int:
    state = registry.stop()
    print(f"registry on {state.address} stopped" if state else "registry was not running")
    return 0


#: Registration functions, in help order. The runtime commands (run, exec, ps, …) go here too.
COMMANDS: list[Callable] = [add_pull, add_images, add_inspect, add_rmi, add_unpack, add_import,
                            add_registry]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contained", description="Containers built by hand, then used: images, overlay, "
                                      "namespaces, cgroups.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ContainedError as err:
        print(f"contained: error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("contained: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `contained images | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 1


def human_size(size: int) -> str:
    """Decimal units, as Docker prints sizes: 4.26MB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{size}B"


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip()
                     for row in rows)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
