"""The ``contained build``, ``commit`` and ``push`` subcommands (registered by `contained.cli`).

Taught in notebook 09 ("Build an image")::

    contained build -t mine:1 .          # each RUN a container, its upper directory a layer
    contained commit web mine:2          # a named container's changes, as one more layer
    contained push mine:1 oci-archive:mine.tar

Only argparse is imported here: the build machinery loads when a command runs.
"""

import os
import sys
from pathlib import Path


def add_image_commands(commands) -> None:
    """Register build, commit and push on the CLI's subparsers."""
    add_build(commands)
    add_commit(commands)
    add_push(commands)


def add_build(commands) -> None:
    parser = commands.add_parser(
        "build", help="build an image from a Containerfile (Dockerfile)",
        description="Run a Containerfile's instructions: each RUN in a container of this "
                    "runtime, its upper directory becoming a layer; COPY/ADD from the context. "
                    "Steps are cached; SOURCE_DATE_EPOCH makes the result reproducible.")
    parser.add_argument("context", type=Path, help="the build context directory")
    parser.add_argument("-t", "--tag", required=True, metavar="NAME[:TAG]")
    parser.add_argument("-f", "--file", metavar="FILE",
                        help="the Containerfile (default: CONTEXT/Containerfile or Dockerfile)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                        help="a value for an ARG (repeatable)")
    parser.add_argument("--no-cache", action="store_true", help="run every step again")
    parser.add_argument("--net", default="none", choices=("none", "host", "bridge"),
                        help="network of the RUN containers (default: none)")
    parser.add_argument("--explain", action="store_true",
                        help="print each step as the shell commands it equals")
    parser.set_defaults(func=run_build)


def run_build(args) -> int:
    from contained.build import builder
    from contained.images import upperlayer

    build_args = {}
    for item in args.build_arg:
        name, equals, value = item.partition("=")
        if not equals:
            value = os.environ.get(name, "")  # Docker's `--build-arg NAME`: from the environment
        build_args[name] = value
    image = builder.build(builder.BuildOptions(
        tag=args.tag, context=args.context, file=args.file, build_args=build_args,
        no_cache=args.no_cache, net=args.net, epoch=upperlayer.source_date_epoch(),
        output=sys.stderr.fileno(), explain=args.explain))  # RUN output needs a descriptor
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def add_commit(commands) -> None:
    parser = commands.add_parser(
        "commit", help="a named container's changes become a new image",
        description="Turn the container's overlay upper directory into a layer on top of its "
                    "image (whiteouts and opaque directories converted), keeping the image's "
                    "config (Env, Cmd, Entrypoint, WorkingDir).")
    parser.add_argument("container")
    parser.add_argument("name", metavar="NAME[:TAG]")
    parser.add_argument("-m", "--message", help="the history entry's text")
    parser.set_defaults(func=run_commit)


def run_commit(args) -> int:
    from contained.build import commit
    from contained.images import upperlayer

    image = commit.commit(args.container, args.name, epoch=upperlayer.source_date_epoch(),
                          message=args.message)
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def add_push(commands) -> None:
    parser = commands.add_parser(
        "push", help="copy an image to a registry or an archive (skopeo copy)",
        description="DEST is any skopeo transport: docker://127.0.0.1:PORT/NAME:TAG (the local "
                    "registry, through its owner's private writable copy), oci:DIR:TAG, "
                    "oci-archive:FILE, docker-archive:FILE.")
    parser.add_argument("image")
    parser.add_argument("dest")
    parser.set_defaults(func=run_push)


def run_push(args) -> int:
    from contained.images import push

    where = push.push(args.image, args.dest)
    print(f"pushed {args.image} to {where}")
    return 0


__all__ = ["add_image_commands"]
