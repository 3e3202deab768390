"""The ``%%container`` and ``%container`` magics: a cell's shell code, run in a container.

Taught in notebook 06. ``%%container busybox`` is to a container what ``%%bash`` is to the
host: the cell body goes to the image's ``/bin/sh``, and its output streams into the notebook as
it arrives. The shell equivalents::

    %%container busybox              contained run --rm busybox /bin/sh -c "$CELL"
    %%container busybox --name b     contained run -d --name b busybox   (first cell only)
                                     contained exec b /bin/sh -c "$CELL"
    %%container busybox -d --name w  contained run -d --name w busybox /bin/sh -c "$CELL"
    %container ps | images | pull IMAGE | inspect X | exec NAME CMD | stop NAME | rm NAME | gc
    %container --help, %container?   contained run --help (every option, every subcommand)

A throwaway container is gone when its cell ends (the cell waits for the teardown), so the next
cell's ``%container ps`` does not list it. ``ps``, ``images`` and ``stats`` show the tables
`contained ps` prints (`contained.views`): HTML in a notebook, aligned text in a terminal. A cell
has no terminal and no stdin: ``-t`` says so in one line and runs without one; ``-i`` reads end
of file.

Expansion rule: the cell body reaches the shell untouched (``$VAR``, ``$$``, ``{x}`` are the
shell's). The magic line is expanded by IPython like any magic line, so ``-e N={n}`` or
``-e N=$n`` passes a Python value in (write ``$$`` for a literal ``$`` on the line).

Every failure is one line (`contained.jupyter.failures`): a bad option or a missing image is
IPython's `UsageError`; a command that failed raises `ContainerFailed` (a CalledProcessError, as
``%%bash`` raises), e.g. ``ContainerFailed: exited with status 3``; the kernel's stop button
kills the cell's processes, removes a throwaway container, leaves a named one usable and shows
``Interrupted: the container was stopped``. The options are `contained run`'s, declared once in
`contained.options`. The kernel never forks: containers are started by the runner helper
process (`contained.runtime.runner`), which kills this kernel's throwaway containers when the
kernel goes.

Background processes started in a named container keep running after their cell, but the
cell's output pipes are closed when it ends: redirect their output (``cmd >/tmp/log 2>&1 &``).
"""

import argparse
import json
import shlex
import sys
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from contained import options, views
from contained.errors import ContainedError
from contained.jupyter.failures import (
    INTERRUPTED,
    ContainerFailed,  # noqa: F401 (for `except` in cells)
    Interrupted,
    failure,
    raise_if_failed,
)
from contained.jupyter.reuse import check_reusable, existing_container
from contained.jupyter.streaming import (
    SAMPLE_INTERVAL,
    CellInterrupted,
    OutputStream,
    Sampler,
    run_streaming,
)
from contained.runtime import container

DEFAULT_STATS_SECONDS = 3.0
HELP_FLAGS = ("-h", "--help")
NO_TERMINAL = ("contained: -t: a notebook cell has no terminal; the command runs without one "
               "(its output still streams here)")
CELL_EXAMPLE = "%%container busybox --rm --network none -m 32M\nhostname; ps"


def cell_parser() -> MagicArgumentParser:
    """``%%container IMAGE [options]``: `contained run`'s options, plus %%script's habits."""
    parser = MagicArgumentParser(
        prog="%container", add_help=False,  # IPython's formatter adds one more %
        description="Run the cell with the image's /bin/sh inside a container.")
    parser.add_argument("image", help="an image in the store, e.g. busybox")
    options.add_options(parser, options.CELL)
    return parser


# (name, its arguments for help, what it does, one example): the help lists them in this order.
SUBCOMMANDS = (
    ("ps", "[-a]", "list containers (-a: stopped ones too)", "%container ps -a"),
    ("images", "", "list the images in the store", "%container images"),
    ("pull", "IMAGE [--registries-conf FILE] [--insecure]",
     "copy an image into the store (skopeo copy), with a progress bar", "%container pull busybox"),
    ("inspect", "IMAGE|NAME", "a container's or an image's details (an image's layers plotted)",
     "%container inspect busybox"),
    ("stats", "[NAME] [--seconds S]",
     "memory, CPU and processes of running containers (NAME: plotted over S seconds)",
     "%container stats web --seconds 5"),
    ("exec", "[-e K=V] [-w DIR] [-u USER] [-d] [--explain] NAME CMD...",
     "run a command in a named container", "%container exec web ps"),
    ("stop", "NAME... [-t SECONDS]", "stop named containers (SIGTERM, then SIGKILL)",
     "%container stop web"),
    ("rm", "[-f] NAME...", "remove containers (-f: stop them first)", "%container rm -f web"),
    ("gc", "", "clean up what crashed runs left behind", "%container gc"),
    ("doctor", "", "check what works on this machine", "%container doctor"),
    ("dashboard", "", "a live panel of containers with stop and remove buttons",
     "%container dashboard"),
)


def line_parser() -> MagicArgumentParser:
    """``%container SUBCOMMAND ...``."""
    parser = MagicArgumentParser(prog="container", add_help=False,  # shown as %container
                                 description="Manage containers and images from a notebook.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    commands.required = True
    added = {name: commands.add_parser(name, help=what, add_help=False,
                                       description=f"{what}, e.g. {example}")
             for name, _, what, example in SUBCOMMANDS}
    added["ps"].add_argument("-a", "--all", action="store_true", help="stopped ones too")
    added["pull"].add_argument("image")
    added["pull"].add_argument("--registries-conf", metavar="FILE")
    added["pull"].add_argument("--insecure", action="store_true", help="plain HTTP registry")
    added["inspect"].add_argument("target", metavar="IMAGE|NAME")
    added["stats"].add_argument("name", nargs="?")
    added["stats"].add_argument("--seconds", type=float, default=DEFAULT_STATS_SECONDS)
    options.add_options(added["exec"], options.EXEC)
    added["exec"].add_argument("name")
    # Everything after NAME is the command, options included (`exec b sh -c 'ls -l'`).
    added["exec"].add_argument("cmd", nargs=argparse.REMAINDER)
    added["stop"].add_argument("names", nargs="+", metavar="name")
    added["stop"].add_argument("-t", "--time", type=float, default=container.DEFAULT_STOP_TIMEOUT)
    added["rm"].add_argument("-f", "--force", action="store_true")
    added["rm"].add_argument("names", nargs="+", metavar="name")
    return parser


CELL_PARSER = cell_parser()
LINE_PARSER = line_parser()


def help_text() -> str:
    """What ``%container?``, ``%%container?`` and ``--help`` show: every option and
    subcommand, from the same table the parsers are built from."""
    subcommands = "\n".join(f"  {name} {arguments}".rstrip() + f"\n      {what}"
                            f"\n      e.g. {example}"
                            for name, arguments, what, example in SUBCOMMANDS)
    return f"""Run a cell in a container (like %%bash), or manage containers.

%%container IMAGE [options] runs the cell body with the image's /bin/sh; without --name the
container is thrown away after the cell, with --name it is created once and reused. The body
reaches the shell untouched ($VAR, $$, {{x}} are the shell's); the magic line is expanded by
IPython, so -e N={{n}} passes a Python value. A failed command raises ContainerFailed (one line;
--no-raise-error lets "Run all" go on). Example:

    {CELL_EXAMPLE.replace(chr(10), chr(10) + "    ")}

{CELL_PARSER.format_help()}
%container SUBCOMMAND [arguments]   (%container SUBCOMMAND --help: its options)

{subcommands}
"""


def wants_help(tokens: list[str], cell: bool) -> str | None:
    """The help to show for this line, or None: ``--help`` anywhere on a %%container line (no
    option of a cell takes it as a value), first or right after the subcommand on a line."""
    if cell and any(token in HELP_FLAGS for token in tokens):
        return help_text()
    if not tokens:
        return None
    if tokens[0] in HELP_FLAGS:
        return help_text()
    if len(tokens) > 1 and tokens[1] in HELP_FLAGS and tokens[0] in subcommand_parsers():
        return subcommand_parsers()[tokens[0]].format_help()
    return None


def subcommand_parsers() -> dict[str, MagicArgumentParser]:
    return LINE_PARSER._subparsers._group_actions[0].choices


def parse(parser: MagicArgumentParser, line: str):
    """Split the line as a POSIX shell would (IPython's own splitting keeps the quotes in
    ``-e 'A=two words'``), then parse it; mistakes raise UsageError."""
    try:
        return parser.parse_args(split(line))
    except ValueError as error:
        raise UsageError(f"cannot parse {line!r}: {error}") from None


def split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as error:
        raise UsageError(f"cannot parse {line!r}: {error}") from None


def in_kernel() -> bool:
    """True inside a Jupyter kernel (widgets can be shown), False in terminal IPython."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def show(view) -> None:
    """A table (or lines) as HTML in a notebook, as aligned text in a terminal."""
    from IPython.display import display

    display(view)


# ---------------------------------------------------------------------------------------------
# The magics.

@magics_class
class ContainerMagics(Magics):
    """``%%container IMAGE [options]`` runs the cell; ``%container SUBCOMMAND`` manages."""

    @line_cell_magic
    def container(self, line: str, cell: str | None = None):
        shown = wants_help(split(line), cell is not None)
        if shown is not None:
            print(shown)
            return None
        try:
            if cell is None:
                return self.subcommand(line)
            return self.run_cell(line, cell)
        except ContainedError as error:
            raise failure(str(error), exit_status=error.exit_status) from error

    # -- %%container -------------------------------------------------------------------------

    def run_cell(self, line: str, cell: str) -> None:
        args = parse(CELL_PARSER, line)
        command = ["/bin/sh", "-c", cell]
        existing = existing_container(args.name)
        if existing is not None:
            check_reusable(existing, args)
        elif args.chroot:
            print(f"contained: warning: {container.CHROOT_WARNING}", file=sys.stderr)
        if args.tty:
            print(NO_TERMINAL, file=sys.stderr)  # -i is fine: the command reads end of file
        if args.dry_run:
            self.dry_run(args, command, existing)
            return
        if args.detach:
            self.detach(args, command, existing)
            return

        def start(stdin, stdout, stderr, explain):
            if existing is not None:
                return container.start_exec(existing.name, command, stdin=stdin, stdout=stdout,
                                            stderr=stderr, explain=explain,
                                            **options.process_options(args))
            return container.start(args.image, command, name=args.name, remove=args.rm or None,
                                   stdin=stdin, stdout=stdout, stderr=stderr, explain=explain,
                                   **options.process_options(args),
                                   **options.creation_options(args))

        try:
            outcome, streams, sampler = run_streaming(
                start, capture_out=args.out is not None, capture_err=args.err is not None,
                explain=args.explain, timeout=args.timeout, stats=args.stats)
        except CellInterrupted:
            raise Interrupted(interrupted_message(args.name, existing, args.rm)) from None
        finally:
            if existing is not None and args.rm:
                container.remove(existing.name, force=True)
        self.keep_output(args, streams)
        if sampler is not None:
            from contained.jupyter import plots

            plots.show_figure(plots.stats_figure(sampler.samples, title=args.name or args.image))
        raise_if_failed(outcome, command, timeout=args.timeout,
                        raise_error=not args.no_raise_error)

    def keep_output(self, args, streams: list[OutputStream]) -> None:
        """--out/--err: the captured text into the user's variables, saying what was cut."""
        for option, variable, stream in (("--out", args.out, streams[0]),
                                         ("--err", args.err, streams[1])):
            if variable is None:
                continue
            self.shell.user_ns[variable] = stream.text()
            if stream.dropped:
                print(cut_message(option, variable, stream.dropped), file=sys.stderr)

    def detach(self, args, command: list[str], existing) -> None:
        """-d: the cell runs in the background of a kept container (created if need be), its
        output in the container's log (`contained logs NAME`), as `contained run -d` does."""
        if args.rm:
            raise failure("-d and --rm together would remove the container at once; use one")
        if existing is not None:
            container.exec_detached(existing.name, command, **options.process_options(args))
            print(existing.id)
            return
        print(container.run_detached(args.image, command, name=args.name,
                                     explain=sys.stderr if args.explain else None,
                                     **options.process_options(args),
                                     **options.creation_options(args)).id)

    def dry_run(self, args, command: list[str], existing) -> None:
        if existing is not None:
            from contained.runtime import runner

            working_dir = args.workdir or existing.spec.working_dir
            steps = runner.exec_steps(existing.init_pid or 0, existing.spec, command,
                                      working_dir)
            lines = [step.explain() for step in steps]
        else:
            spec = container.build_spec(args.image, command, name=args.name,
                                        persistent=args.name is not None and not args.rm,
                                        **options.process_options(args),
                                        **options.creation_options(args))
            lines = container.dry_run(spec)
        print("\n".join(lines))

    # -- %container SUBCOMMAND -------------------------------------------------------------

    def subcommand(self, line: str):
        args = parse(LINE_PARSER, line)
        return getattr(self, f"do_{args.command}")(args)

    # ps, images, stats and doctor show the very tables `contained` prints (contained.views).

    def do_ps(self, args) -> None:
        show(views.ps_table(args.all))

    def do_images(self, args) -> None:
        listed, broken = views.image_listing()
        for name, why in broken.items():
            print(f"contained: warning: {why} (or remove it: `contained rmi "
                  f"{views.familiar(name)}`)", file=sys.stderr)
        show(views.images_table(listed))

    def do_pull(self, args) -> None:
        from contained.images.store import Store

        pull_options = {"registries_conf": args.registries_conf,
                        "tls_verify": False if args.insecure else None}
        if in_kernel():
            from contained.jupyter import widgets

            image = widgets.pull_with_progress(Store(), args.image, **pull_options)
        else:
            print(f"pulling {args.image}...", flush=True)
            image = Store().pull(args.image, progress=False, **pull_options)
        print(f"{image.reference.familiar} {image.digest}")

    def do_inspect(self, args) -> None:
        found = existing_container(args.target)
        if found is not None:
            data = {"id": found.id, "name": found.name, "image": found.image,
                    "status": found.status, "persistent": found.persistent,
                    "init_pid": found.init_pid, "created": found.created,
                    "spec": found.spec.__dict__ if found.spec else None}
            print(json.dumps(data, indent=2))
            return
        from contained.images.store import Store
        from contained.jupyter import plots

        image = Store().image(args.target)
        print(json.dumps(image.describe(), indent=2))
        plots.show_figure(plots.image_layers_figure(image))

    def do_stats(self, args) -> None:
        """Without a name, one reading of every running container (``docker stats
        --no-stream``); with one, its usage over --seconds, tabled and plotted."""
        if args.name is None:
            show(views.stats_table(running_usage()))
            return
        from contained.jupyter import plots

        found = container.get(args.name)
        if not found.running:
            raise failure(f"container {found.name} is not running: nothing to measure")
        sampler = Sampler(found.id)
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            sampler.sample()
            time.sleep(SAMPLE_INTERVAL)
        sampler.sample()
        if not sampler.samples:
            raise failure(f"container {found.name} has no cgroup to measure; is it running?")
        show(views.stats_table([(found.name, sampler.samples[-1][1])]))
        plots.show_figure(plots.stats_figure(sampler.samples, title=found.name))

    def do_exec(self, args) -> None:
        if not args.cmd:
            raise failure("%container exec needs a command: %container exec NAME CMD [ARG...]")
        if args.tty:
            print(NO_TERMINAL, file=sys.stderr)
        if args.detach:
            container.exec_detached(args.name, args.cmd, **options.process_options(args))
            return

        def start(stdin, stdout, stderr, explain):
            return container.start_exec(args.name, args.cmd, stdin=stdin, stdout=stdout,
                                        stderr=stderr, explain=explain,
                                        **options.process_options(args))

        try:
            outcome, _, _ = run_streaming(start, explain=args.explain)
        except CellInterrupted:
            raise Interrupted(interrupted_message(args.name, True, False)) from None
        raise_if_failed(outcome, args.cmd)

    def do_stop(self, args) -> None:
        for name in args.names:
            print(container.stop(name, timeout=args.time).name)

    def do_rm(self, args) -> None:
        for name in args.names:
            container.remove(name, force=args.force)
            print(name)

    def do_gc(self, args) -> None:
        removed = container.gc()
        print("\n".join(removed) if removed else "nothing to clean up")

    def do_doctor(self, args) -> None:
        from contained import doctor

        show(views.doctor_lines(doctor.checks()))

    def do_dashboard(self, args):
        from contained.jupyter import widgets

        return widgets.Dashboard().widget


def interrupted_message(name: str | None, existing, removed: bool) -> str:
    """What the stop button did: a throwaway container is gone; a named one keeps running."""
    if name is None or removed or not existing:
        return INTERRUPTED
    return f"the command was stopped; container {name} is still running"


def running_usage() -> list:
    """(name, usage) of each running container that has a cgroup to read."""
    found = []
    for item in views.listed_containers():
        group = container.cgroup_of(item.id)
        if group is None:
            continue
        try:
            found.append((item.name, group.usage()))
        except (OSError, ContainedError):
            continue  # it ended meanwhile
    return found


def cut_message(option: str, variable: str, dropped: int) -> str:
    """What a cell says when `option` VARIABLE captured more than CAPTURE_LIMIT."""
    from contained.jupyter import streaming

    limit = streaming.CAPTURE_LIMIT
    kept = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
    return (f"{option} {variable} kept the first {kept} of output; {dropped} more characters "
            "were dropped. Write big output to a file in a named container (cmd > /tmp/out) "
            "and capture only what you need (e.g. tail /tmp/out)")


ContainerMagics.container.__doc__ = help_text()
