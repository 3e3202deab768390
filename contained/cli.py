"""The ``contained`` command: containers, images and the local registry, from a shell.

Every notebook ends with the command that does what it built by hand. The container commands
come from notebooks 05 and 06 (``contained run --explain`` prints their shell steps); the image
commands from notebook 04. They correspond to::

    contained run busybox CMD     mount -t overlay …; unshare …; pivot_root …; CMD  (see --explain)
    contained exec NAME CMD       nsenter --target PID --all --root --wd=DIR CMD
    contained stop NAME           kill -TERM PID; sleep 10; kill -KILL PID

    contained pull busybox        skopeo copy docker://busybox:latest oci:$HOME/oci:docker.io/…
    contained images              jq '.manifests[].annotations' $HOME/oci/index.json
    contained inspect busybox     skopeo inspect --config oci:$HOME/oci:docker.io/library/busybox
    contained unpack busybox DIR  tar -xf $HOME/oci/blobs/sha256/<layer> -C DIR (each layer)
    contained import busybox      (see contained.images.busybox: the host's busybox as an image)
    contained registry start      docker-registry serve config.yml

Each subcommand is one `add_*` function that registers its parser and sets ``func`` to the
function that runs it (`run` and `exec` take their options from `contained.options`, the table
``%%container`` is built from too; `ps`, `images` and `doctor` print `contained.views` tables);
`COMMANDS` lists them in help order, so adding a command is adding one function to that list.
Errors a user can act on are `ContainedError`s: printed as one line ``contained: error: …`` and
turned into the error's exit status; Ctrl-C exits with 130.

A command imports what it needs when it runs, only its own parser is built, and the console
script skips the interpreter's teardown. The CLI is single-threaded, so it forks the request's
worker itself, first thing: the worker imports the runner while the CLI parses its options and
resolves the image (`contained.runtime.ahead`).
"""

import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from contained.errors import ContainedError

EXIT_INTERRUPTED = 130


def add_pull(commands) -> None:
    from contained.images.registry_commands import add_pull as add  # argparse only: light
    add(commands)


def _store():
    """The image store, imported only by the commands that use it (`ps` does not)."""
    from contained.images.store import Store

    return Store()


def add_images(commands) -> None:
    parser = commands.add_parser("images", help="list the images in the store")
    parser.add_argument("--no-trunc", action="store_true", help="show full digests")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print image names")
    parser.set_defaults(func=run_images)


def run_images(args) -> int:
    from contained import views

    listed, broken = views.image_listing(no_trunc=args.no_trunc)
    for name, why in broken.items():
        print(f"contained: warning: {why} (or remove it: `contained rmi "
              f"{views.familiar(name)}`)", file=sys.stderr)
    if args.quiet:
        for name, *_ in listed:
            print(views.familiar(name))
        return 0
    print(views.images_table(listed))
    return 0


def add_inspect(commands) -> None:
    parser = commands.add_parser("inspect", help="show an image's config and layers as JSON")
    parser.add_argument("image")
    parser.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    import json

    print(json.dumps(_store().image(args.image).describe(), indent=2))
    return 0


def add_rmi(commands) -> None:
    parser = commands.add_parser(
        "rmi", help="remove images (their unpacked layers stay until `contained gc`)")
    parser.add_argument("images", nargs="+", metavar="image")
    parser.set_defaults(func=run_rmi)


def run_rmi(args) -> int:
    from contained.images.reference import parse_reference

    store = _store()
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
    image = _store().unpack(args.image, args.dest)
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
    store = _store()
    if args.source == "busybox":
        from contained.images.busybox import DEFAULT_NAME, import_busybox

        image = import_busybox(store, args.name or DEFAULT_NAME)
    else:
        if not args.name:
            raise ContainedError(f"cannot import {args.source}: name the image, e.g. "
                                 f"`contained import {args.source} myimage:latest`")
        image = store.import_tarball(Path(args.source), args.name)
    print(f"{image.reference.familiar} {image.digest}")
    return 0


def add_registry(commands) -> None:
    from contained.images.registry_commands import add_registry as add  # argparse only: light

    add(commands)


# ---------------------------------------------------------------------------------------------
# Containers (notebooks 05 and 06): run, exec, ps, stop, rm, logs, gc, doctor

def add_run(commands) -> None:
    parser = commands.add_parser(
        "run", help="run a command in a new container",
        description="Run a command in a new container: overlay root, namespaces, cgroup "
                    "limits, pivot_root. Without --name the container is removed when the "
                    "command ends; with --name (or -d) it is kept, and `contained exec` runs "
                    "more commands in it.")
    import argparse

    from contained import options

    options.add_options(parser, options.RUN)
    parser.add_argument("image", help="an image in the store, e.g. busybox")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="command and arguments (default: the image's Entrypoint/Cmd)")
    parser.set_defaults(func=run_run)


def run_run(args) -> int:
    from contained import options
    from contained.runtime import container

    spec_options = {**options.creation_options(args), **options.process_options(args)}
    command = args.command or None
    if args.chroot:
        print(f"contained: warning: {container.CHROOT_WARNING}", file=sys.stderr)
    if args.dry_run:
        spec = container.build_spec(args.image, command, name=args.name,
                                    persistent=bool(args.name) and not args.rm, **spec_options)
        print("\n".join(container.dry_run(spec)))
        return 0
    runner = _runner(args)
    explain = sys.stderr if args.explain else None
    if args.detach:
        if args.rm:
            raise ContainedError("-d and --rm together would remove the container at once; "
                                 "use one of them")
        print(container.run_detached(args.image, command, name=args.name, explain=explain,
                                     runner_=runner, **spec_options).id)
        return 0
    started = []  # `run --rm` returns once the container is removed, as docker's does
    status = _attached(args, lambda stdin, stdout, stderr: started.append(container.start(
        args.image, command, name=args.name, remove=args.rm or None, explain=explain,
        runner_=runner, stdin=stdin, stdout=stdout, stderr=stderr, **_terminal(args),
        **spec_options)) or started[0])
    return (started[0].request.settle() or status) if started and started[0].spec.remove \
        else status


def _worker_for(argv: list[str]):
    """For `run` and `exec`, the worker that will do the request, forked before this process
    imports argparse, the options or the store (`contained.runtime.ahead`); closing reaps it."""
    if not argv or argv[0] not in ("run", "exec"):
        return contextlib.nullcontext()
    from contained.runtime import ahead

    return contextlib.closing(ahead.fork_worker())


def _runner(args):
    from contained.runtime.client import Runner  # single-threaded: the CLI's own fork does it

    return Runner(in_process=True, ahead=getattr(args, "worker", None))


def _terminal(args) -> dict:
    from contained.runtime import relay

    return {"tty": args.tty, "tty_size": relay.window_size(0) if args.tty else None}


def _attached(args, start) -> int:
    """Run the command with pipes (or a pty) this process relays: the container never gets
    this process's own stdin, stdout, stderr or terminal (`contained.runtime.relay`)."""
    from contained.runtime import relay

    result = relay.attach(start, interactive=args.interactive, terminal=args.tty)
    if result.message:
        print(f"contained: {result.message}", file=sys.stderr)
    return result.status


def add_exec(commands) -> None:
    parser = commands.add_parser("exec", help="run a command in a running named container",
                                 description="Run a command in a running named container: "
                                             "its namespaces, cgroup and root (like nsenter).")
    import argparse

    from contained import options

    options.add_options(parser, options.EXEC)
    parser.add_argument("container", help="name or id")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    parser.set_defaults(func=run_exec)


def run_exec(args) -> int:
    if not args.command:
        raise ContainedError("exec needs a command, e.g. `contained exec NAME sh -c 'ls /'`")
    from contained import options
    from contained.runtime import container

    exec_options = {**options.process_options(args),
                    "explain": sys.stderr if args.explain else None, "runner_": _runner(args)}
    if args.detach:
        container.exec_detached(args.container, args.command, **exec_options)
        return 0
    return _attached(args, lambda stdin, stdout, stderr: container.start_exec(
        args.container, args.command, stdin=stdin, stdout=stdout, stderr=stderr,
        **_terminal(args), **exec_options))


def add_ps(commands) -> None:
    parser = commands.add_parser("ps", help="list containers")
    parser.add_argument("-a", "--all", action="store_true", help="stopped ones too")
    parser.add_argument("-q", "--quiet", action="store_true", help="only ids")
    parser.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    parser.add_argument("-s", "--size", action="store_true",
                        help="each container's writable layer on disk (du -s upper/)")
    parser.set_defaults(func=run_ps)


def run_ps(args) -> int:
    from contained import views

    if args.quiet:
        for item in views.listed_containers(args.all):
            print(item.id if args.no_trunc else item.id[:views.SHORT_ID])
        return 0
    print(views.ps_table(args.all, no_trunc=args.no_trunc, size=args.size))
    return 0


def add_stop(commands) -> None:
    parser = commands.add_parser("stop", help="stop running containers (SIGTERM, then SIGKILL)")
    parser.add_argument("-t", "--time", type=float, default=10.0,
                        help="seconds to wait before SIGKILL (default 10)")
    parser.add_argument("containers", nargs="+", metavar="container")
    parser.set_defaults(func=run_stop)


def run_stop(args) -> int:
    from contained.runtime import container

    return _for_each(args.containers, lambda name: container.stop(name, timeout=args.time))


def _for_each(names: list[str], action) -> int:
    """Docker's habit for stop/rm: act on each name in turn, printing it when done."""
    for name in names:
        action(name)
        print(name)
    return 0


def add_rm(commands) -> None:
    parser = commands.add_parser("rm", help="remove containers")
    parser.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    parser.add_argument("containers", nargs="+", metavar="container")
    parser.set_defaults(func=run_rm)


def run_rm(args) -> int:
    from contained.runtime import container

    return _for_each(args.containers, lambda name: container.remove(name, force=args.force))


def add_logs(commands) -> None:
    parser = commands.add_parser("logs", help="output of a detached container's command")
    parser.add_argument("container")
    parser.set_defaults(func=run_logs)


def run_logs(args) -> int:
    from contained.runtime import container

    log = Path(container.get(args.container).spec.directory) / "log"
    if log.exists():
        sys.stdout.buffer.write(log.read_bytes())
    return 0


def add_gc(commands) -> None:
    parser = commands.add_parser("gc", help="clean up what crashed runs left behind",
                                 description="Remove leftovers of killed runs: throwaway "
                                             "containers' files, orphan cgroups and network "
                                             "interfaces. Safe to run any time.")
    parser.set_defaults(func=run_gc)


def run_gc(args) -> int:
    from contained.runtime import container

    for item in container.gc():
        print(f"removed {item}")
    return 0


def add_doctor(commands) -> None:
    parser = commands.add_parser("doctor", help="check what works on this machine")
    parser.set_defaults(func=run_doctor)


def run_doctor(args) -> int:
    from contained import doctor, views

    found = doctor.checks()
    print(views.doctor_lines(found))
    return 0 if all(c.ok or not c.required for c in found) else 1


def add_install_kernel(commands) -> None:
    parser = commands.add_parser(
        "install-kernel", help='install the Jupyter kernel "Python 3 (contained)"',
        description="Install a kernelspec that starts this Python's ipykernel with the "
                    "contained extension loaded (%%container works without %load_ext).")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="for this user only (~/.local/share/jupyter/kernels)")
    where.add_argument("--prefix", metavar="P",
                       help="under P/share/jupyter/kernels, e.g. a virtualenv's sys.prefix")
    parser.set_defaults(func=run_install_kernel)


def run_install_kernel(args) -> int:
    from contained.jupyter import kernelspec

    path = kernelspec.install_kernel(user=args.user, prefix=args.prefix)
    print(f"installed kernel {kernelspec.DISPLAY_NAME!r} in {path}")
    return 0


def add_build_commit_push(commands) -> None:
    from contained.build.commands import add_image_commands  # argparse only: light

    add_image_commands(commands)


def add_classroom(commands) -> None:
    from contained.classroom.commands import add_classroom as add  # argparse only: light

    add(commands)


COMMANDS: list[Callable] = [add_run, add_exec, add_ps, add_stop, add_rm, add_logs,
                            add_pull, add_images, add_inspect, add_rmi, add_unpack, add_import,
                            add_build_commit_push,
                            add_registry, add_gc, add_doctor, add_install_kernel, add_classroom]


#: the function that registers each command, to build only the parser asked for (a command
#: missing here still works: its parser is found among all of them, a few ms later)
ADDED_BY = {"run": add_run, "exec": add_exec, "ps": add_ps, "stop": add_stop, "rm": add_rm,
            "logs": add_logs, "pull": add_pull, "images": add_images, "inspect": add_inspect,
            "rmi": add_rmi, "unpack": add_unpack, "import": add_import,
            "build": add_build_commit_push, "commit": add_build_commit_push,
            "push": add_build_commit_push, "registry": add_registry, "gc": add_gc,
            "doctor": add_doctor, "install-kernel": add_install_kernel, "classroom": add_classroom}


def build_parser(argv: list[str] | None = None):
    """The whole parser (an argparse.ArgumentParser); given the command line, only its command's
    parser (building all twenty-odd subparsers costs more than the rest of `contained ps`)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="contained", description="Containers built by hand, then used: images, overlay, "
                                      "namespaces, cgroups.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _adders_for(argv):
        add(commands)
    return parser


def _adders_for(argv: list[str] | None) -> list[Callable]:
    """[the command's add function] when argv starts with a known command, else all of them
    (--help, a typo: argparse lists every command)."""
    add = ADDED_BY.get(argv[0]) if argv else None
    return [add] if add in COMMANDS else COMMANDS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (the console script,
    argv None, exits right away instead: see `_exit_now`)."""
    status = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """Exit without the interpreter's teardown (~10 ms of freeing modules, for nobody), unless
    something is left to run at exit: an atexit handler (weakref.finalize's, logging's) or a
    thread. A stdout whose reader left is status 1, not a traceback."""
    import atexit

    threading = sys.modules.get("threading")
    if getattr(atexit, "_ncallbacks", lambda: 1)() or (threading and threading.active_count() > 1):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # `contained images | head`, or a stream already closed
        status = status or 1
    os._exit(status)


def _main(argv: list[str]) -> int:
    with _worker_for(argv) as worker:
        args = build_parser(argv).parse_args(argv)
        args.worker = worker
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
        except OSError as err:
            if err.errno not in _DISK_FULL:
                raise
            # Wherever it happened (an image, a layer, a container's record): the fix is the same.
            where = f" ({err.filename})" if err.filename else ""
            print(f"contained: error: {err.strerror}{where}: free space (`contained gc`, "
                  "`contained rmi`) or set CONTAINED_HOME to another filesystem", file=sys.stderr)
            return ContainedError.exit_status


#: a full disk or quota: told in one line, never a traceback
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def __getattr__(name: str):  # `contained.views`' table helpers: the CLI's API, loaded on use
    if name not in ("format_table", "human_size", "printable"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from contained import views

    return getattr(views, name)
