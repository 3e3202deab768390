"""The ``%%container`` and ``%container`` magics: a cell's shell code, run in a container.

Taught in notebook 06. ``%%container busybox`` is to a container what ``%%bash`` is to the
host: the cell body goes to the image's ``/bin/sh``, and its output streams into the notebook as
it arrives. The shell equivalents::

    %%container busybox              contained run --rm busybox /bin/sh -c "$CELL"
    %%container busybox --name b     contained run -d --name b busybox   (first cell only)
                                     contained exec b /bin/sh -c "$CELL"
    %container ps | images | pull IMAGE | inspect X | exec NAME CMD | stop NAME | rm NAME | gc

Expansion rule: the cell body reaches the shell untouched (``$VAR``, ``$$``, ``{x}`` are the
shell's). The magic line is expanded by IPython like any magic line, so ``-e N={n}`` or
``-e N=$n`` passes a Python value in (write ``$$`` for a literal ``$`` on the line).

Every failure is one line (IPython's `UsageError`, which shows no traceback): a non-zero exit
("container exited with status 3"), an OOM kill, a bad option, a missing image. The kernel's
stop button kills the cell's processes, removes a throwaway container and leaves a named one
usable. The kernel never forks: containers are started by the runner helper process
(`contained.runtime.runner`), which kills this kernel's throwaway containers when the kernel goes.

Background processes started in a named container keep running after their cell, but the
cell's output pipes are closed when it ends: redirect their output (``cmd >/tmp/log 2>&1 &``).
"""

import argparse
import codecs
import json
import os
import select
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from contained.errors import ContainedError
from contained.runtime import container

# How often --stats and `%container stats` read the cgroup; also the select() timeout.
SAMPLE_INTERVAL = 0.1
# After a kill (interrupt, --timeout), how long to wait for the runner's result.
KILL_GRACE = 5.0
# After the result, how long to keep draining output a background process may still write.
DRAIN_LIMIT = 0.25
READ_SIZE = 65536
# What --out/--err keep, in characters: the kernel holds it all in memory, and a container
# limited to 16M can still print gigabytes. The rest is read and dropped, and the cell says so.
CAPTURE_LIMIT = 64 << 20
DEFAULT_STATS_SECONDS = 3.0


def cell_parser() -> MagicArgumentParser:
    """``%%container IMAGE [options]``: `contained run`'s options, plus %%script's habits."""
    parser = MagicArgumentParser(
        prog="%container", add_help=False,  # IPython's formatter adds one more %
        description="Run the cell with the image's /bin/sh inside a container.")
    parser.add_argument("image", help="an image in the store, e.g. busybox")
    parser.add_argument("--name", help="create this named container on first use and run later "
                                       "cells in it (files, processes, hostname persist)")
    parser.add_argument("-m", "--memory", help="memory limit, e.g. 64M")
    parser.add_argument("--cpus", help="CPU limit, e.g. 0.5")
    parser.add_argument("--pids-limit",
                        help="maximum number of processes (default 2048; -1 for no limit)")
    parser.add_argument("--hostname", help="the container's hostname")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set an environment variable (repeatable)")
    parser.add_argument("-w", "--workdir", help="working directory inside the container")
    parser.add_argument("-u", "--user", help="user (name or uid[:gid]) to run as")
    parser.add_argument("-v", "--volume", action="append", default=[],
                        metavar="HOST:CONTAINER[:ro]", help="bind-mount a host path (repeatable)")
    parser.add_argument("--net", help="none (default), host or bridge")
    parser.add_argument("-p", "--publish", action="append", default=[],
                        help="publish a port (with --net bridge), HOST_PORT:CONTAINER_PORT")
    parser.add_argument("--chroot", action="store_true", default=None,
                        help="chroot instead of pivot_root (as the tutorial does)")
    parser.add_argument("--security-opt", action="append", default=[],
                        metavar="seccomp=unconfined|seccomp=FILE.json",
                        help="the seccomp profile (default: Docker's; FILE in Docker's format)")
    parser.add_argument("--explain", action="store_true",
                        help="show each step's shell command as it runs")
    parser.add_argument("--dry-run", action="store_true",
                        help="show the shell commands without running anything")
    parser.add_argument("--out", metavar="VAR", help="store stdout in this Python variable")
    parser.add_argument("--err", metavar="VAR", help="store stderr in this Python variable")
    parser.add_argument("--no-raise-error", action="store_true",
                        help="do not raise an error on a non-zero exit status")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="kill the cell's processes after this many seconds")
    parser.add_argument("--stats", action="store_true",
                        help="after the cell, plot its memory and CPU use with the limits")
    return parser


def line_parser() -> MagicArgumentParser:
    """``%container SUBCOMMAND ...``."""
    parser = MagicArgumentParser(prog="container", add_help=False,
                                 description="Manage containers and images from a notebook.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    commands.required = True
    ps = commands.add_parser("ps", help="list containers (-a: also stopped ones)")
    ps.add_argument("-a", "--all", action="store_true")
    commands.add_parser("images", help="list images")
    pull = commands.add_parser("pull", help="copy an image into the store (skopeo copy)")
    pull.add_argument("image")
    pull.add_argument("--registries-conf", metavar="FILE")
    pull.add_argument("--insecure", action="store_true", help="plain HTTP registry")
    inspect = commands.add_parser("inspect", help="a container's or image's details")
    inspect.add_argument("target", metavar="IMAGE|NAME")
    stats = commands.add_parser("stats", help="plot a running container's memory and CPU")
    stats.add_argument("name")
    stats.add_argument("--seconds", type=float, default=DEFAULT_STATS_SECONDS)
    exec_ = commands.add_parser("exec", help="run a command in a named container")
    exec_.add_argument("-e", "--env", action="append", default=[])
    exec_.add_argument("-w", "--workdir")
    exec_.add_argument("-u", "--user")
    exec_.add_argument("name")
    # Everything after NAME is the command, options included (`exec b sh -c 'ls -l'`).
    exec_.add_argument("cmd", nargs=argparse.REMAINDER)
    stop = commands.add_parser("stop", help="stop a named container")
    stop.add_argument("names", nargs="+", metavar="name")
    stop.add_argument("-t", "--time", type=float, default=container.DEFAULT_STOP_TIMEOUT)
    rm = commands.add_parser("rm", help="remove containers (-f: stop them first)")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+", metavar="name")
    commands.add_parser("gc", help="clean up what crashed runs left behind")
    commands.add_parser("doctor", help="check what works on this machine")
    commands.add_parser("dashboard", help="live panel of containers with stop/remove buttons")
    return parser


CELL_PARSER = cell_parser()
LINE_PARSER = line_parser()


def parse(parser: MagicArgumentParser, line: str):
    """Split the line as a POSIX shell would (IPython's own splitting keeps the quotes in
    ``-e 'A=two words'``), then parse it; mistakes raise UsageError."""
    try:
        return parser.parse_args(shlex.split(line))
    except ValueError as error:
        raise UsageError(f"cannot parse {line!r}: {error}") from None


def failure(message: str, **details) -> UsageError:
    """A one-line error for the notebook; `details` (status, oom...) stay on it for code.

    IPython shows exactly `UsageError` (not subclasses) without a traceback, so runtime errors
    are re-raised as one, keeping the original as __cause__.
    """
    error = UsageError(message)
    for key, value in details.items():
        setattr(error, key, value)
    return error


def in_kernel() -> bool:
    """True inside a Jupyter kernel (widgets can be shown), False in terminal IPython."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


# ---------------------------------------------------------------------------------------------
# Streaming a container's output into the notebook.

class OutputStream:
    """One of the container's output pipes, decoded as UTF-8 however the bytes are split."""

    def __init__(self, fd: int, write, capture: bool):
        self.fd = fd
        self._write = write  # where decoded text goes (sys.stdout.write, looked up late)
        self.capture = capture
        self.captured: list[str] = []
        self.kept = 0  # characters in `captured`, at most CAPTURE_LIMIT
        self.dropped = 0  # characters read after that, and thrown away
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return True
        self._emit(self._decoder.decode(chunk, final=not chunk))
        return bool(chunk)

    def drain(self, limit: float = DRAIN_LIMIT) -> None:
        """Read what is immediately available, never waiting for an end of file: a
        background process in a named container may hold the pipe open forever."""
        os.set_blocking(self.fd, False)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._emit(self._decoder.decode(chunk))

    def close(self) -> None:
        self._emit(self._decoder.decode(b"", final=True))
        os.close(self.fd)

    def text(self) -> str:
        return "".join(self.captured)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.capture:
            room = max(CAPTURE_LIMIT - self.kept, 0)
            self.captured.append(text[:room])
            self.kept += min(len(text), room)
            self.dropped += max(len(text) - room, 0)
        else:
            self._write(text)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


@dataclass
class Sampler:
    """Reads a container's cgroup usage every `SAMPLE_INTERVAL` seconds while a cell runs."""

    container_id: str
    samples: list = field(default_factory=list)  # (seconds since start, cgroups.Usage)
    _group: object = None
    _start: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def sample(self) -> None:
        from contained.runtime import container

        now = time.monotonic()
        if self.samples and now - self._last < SAMPLE_INTERVAL:
            return
        if self._group is None:
            self._group = container.cgroup_of(self.container_id)
            if self._group is None:
                return
        try:
            usage = self._group.usage()
        except (OSError, ContainedError):
            return  # the group went away with the container
        self._last = now
        self.samples.append((now - self._start, usage))


@dataclass
class Outcome:
    """How a cell's command ended, as seen from the magic."""

    result: container.RunResult | None
    timed_out: bool = False


def pump(execution: container.Execution, streams: list[OutputStream], *,
         timeout: float | None = None, sampler: Sampler | None = None,
         until: float | None = None) -> Outcome:
    """Copy output as it arrives until the command's result is in, then drain and return.

    `timeout` (seconds from now) kills the command; `until` (a monotonic time) gives up
    waiting, returning an outcome without a result.
    """
    open_streams = list(streams)
    deadline = time.monotonic() + timeout if timeout is not None else None
    timed_out = False
    # After an interrupt this runs again, possibly with the result already in.
    result = execution.wait() if execution.request.result is not None else None
    while result is None:
        now = time.monotonic()
        if until is not None and now >= until:
            break
        if deadline is not None and not timed_out and now >= deadline:
            timed_out = True
            execution.kill()
        wait = _select_timeout(now, deadline if not timed_out else None, until, sampler)
        readable, _, _ = select.select([execution, *open_streams], [], [], wait)
        for stream in readable:
            if stream is not execution and not stream.read():
                open_streams.remove(stream)
        if execution in readable:
            result = execution.poll()
        if sampler is not None:
            sampler.sample()
    for stream in open_streams:
        stream.drain()
    return Outcome(result, timed_out)


def _select_timeout(now, deadline, until, sampler) -> float | None:
    waits = [t - now for t in (deadline, until) if t is not None]
    if sampler is not None:
        waits.append(SAMPLE_INTERVAL)
    return max(0.0, min(waits)) if waits else None


def run_streaming(start, *, capture_out: bool = False, capture_err: bool = False,
                  explain: bool = False, timeout: float | None = None,
                  stats: bool = False) -> tuple[Outcome, list[OutputStream], Sampler | None]:
    """Start a command with `start(stdin, stdout, stderr, explain)` and stream its output.

    Ctrl-C (the kernel's stop button) kills the command, waits for its result so that a
    throwaway container is gone, then re-raises KeyboardInterrupt.
    """
    pipes = [os.pipe(), os.pipe()] + ([os.pipe()] if explain else [])
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    streams = [OutputStream(pipes[0][0], _stdout, capture_out),
               OutputStream(pipes[1][0], _stderr, capture_err)]
    if explain:
        streams.append(OutputStream(pipes[2][0], _stderr, False))
    execution = None
    try:
        execution = start(null, pipes[0][1], pipes[1][1], pipes[2][1] if explain else None)
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    finally:
        # The runner holds its own copies now; ours must go so that end of file can happen.
        os.close(null)
        for _, write_end in pipes:
            os.close(write_end)
    sampler = Sampler(execution.spec.id) if stats else None
    try:
        try:
            outcome = pump(execution, streams, timeout=timeout, sampler=sampler)
        except KeyboardInterrupt:
            execution.kill()
            _wait_after_kill(execution, streams)
            raise
    finally:
        for stream in streams:
            stream.close()
    return outcome, streams, sampler


def _wait_after_kill(execution, streams) -> None:
    """Wait (briefly) for the result of a killed command; a second Ctrl-C does not stop this."""
    until = time.monotonic() + KILL_GRACE
    while time.monotonic() < until:
        try:
            pump(execution, streams, until=until)
            return
        except KeyboardInterrupt:
            execution.kill()


def exit_message(outcome: Outcome, timeout: float | None) -> str | None:
    """The one-line error for an ended command, or None if it succeeded."""
    result = outcome.result
    if result is None:
        return "the runner did not report how the command ended; run `%container gc`"
    if result.oom:
        return f"{result.message or 'killed: out of memory'} (exit status {result.status})"
    if outcome.timed_out:
        return f"killed after --timeout {timeout:g}s (exit status {result.status})"
    if result.status == 0:
        return None
    message = f"container exited with status {result.status}"
    if result.status > 128:
        try:
            message += f" (killed by {signal.Signals(result.status - 128).name})"
        except ValueError:
            pass
    return message


# ---------------------------------------------------------------------------------------------
# %%container: which container, and checking a named one can be reused.

# Options fixed when a named container is created: (option, spec field, how to show the value).
CREATION_OPTIONS = (("--memory", "memory"), ("--cpus", "cpus"), ("--pids-limit", "pids_limit"),
                    ("--hostname", "hostname"), ("--volume", "volumes"), ("--net", "net"),
                    ("--publish", "publish"), ("--chroot", "chroot"))


def creation_options(args) -> dict:
    """The options of `container.start` that only matter when a container is created."""
    options = {"memory": args.memory, "cpus": args.cpus, "pids_limit": args.pids_limit,
               "hostname": args.hostname, "volumes": args.volume, "publish": args.publish,
               "chroot": bool(args.chroot), "security_opt": args.security_opt}
    if args.net is not None:
        options["net"] = args.net
    return options


def check_reusable(existing: container.Container, args) -> None:
    """Raise if the cell asks for a creation-time option the named container lacks."""
    from contained.images.store import Store
    from contained.runtime import seccomp

    name = existing.name
    if not existing.persistent:
        raise failure(f"container {name!r} is a throwaway container started elsewhere: pick "
                      "another --name")
    if not existing.running:
        raise failure(f"container {name!r} is stopped: remove it (%container rm {name}) "
                      "to start it afresh")
    spec = existing.spec
    if _image_name(args.image) != spec.image and Store().image(args.image).name != spec.image:
        raise failure(f"container {name!r} was created from {spec.image}; remove it "
                      f"(%container rm -f {name}) to use {args.image}")
    # Normalise the cell's options exactly as creation did, then compare.
    wanted = {"memory": container._memory(args.memory), "cpus": container._cpus(args.cpus),
              "pids_limit": container._pids(args.pids_limit), "hostname": args.hostname,
              "volumes": [container.parse_volume(v) for v in args.volume] or None,
              "net": args.net, "publish": args.publish or None, "chroot": args.chroot}
    if wanted["pids_limit"] == container.UNLIMITED_PIDS and spec.pids_limit is None:
        wanted["pids_limit"] = None  # -1 asks for what the container has: no process limit
    if args.security_opt and seccomp.from_security_options(args.security_opt) != spec.seccomp:
        raise failure(f"container {name!r} was created with another seccomp profile; remove "
                      f"it (%container rm -f {name}) to change it")
    for option, field_name in CREATION_OPTIONS:
        value = wanted[field_name]
        if value is not None and value != getattr(spec, field_name):
            raise failure(f"container {name!r} was created with "
                          f"{_shown(option, getattr(spec, field_name))}; remove it "
                          f"(%container rm -f {name}) to change it")


def _image_name(image: str) -> str | None:
    """The store's name for `image` from the text alone (cheap: no store read), or None."""
    from contained.images.reference import parse_reference

    try:
        return parse_reference(image).name
    except ContainedError:
        return None


def _shown(option: str, value) -> str:
    from contained.runtime.runner import format_bytes

    if value in (None, [], False):
        return f"no {option}"
    if option == "--memory":
        return f"{option} {format_bytes(value)}"
    if option == "--volume":
        return " ".join(f"-v {h}:{c}{':ro' if ro else ''}" for h, c, ro in value)
    if option == "--chroot":
        return option
    if isinstance(value, list):
        return " ".join(f"{option} {v}" for v in value)
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def existing_container(name: str | None) -> container.Container | None:
    if name is None:
        return None
    try:
        return container.get(name)
    except container.ContainerNotFound:
        return None


# ---------------------------------------------------------------------------------------------
# The magics.

@magics_class
class ContainerMagics(Magics):
    """``%%container IMAGE [options]`` runs the cell; ``%container SUBCOMMAND`` manages."""

    @line_cell_magic
    def container(self, line: str, cell: str | None = None):
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
        if args.dry_run:
            self.dry_run(args, command, existing)
            return

        def start(stdin, stdout, stderr, explain):
            if existing is not None:
                return container.start_exec(existing.name, command, env=args.env,
                                            workdir=args.workdir, user=args.user, stdin=stdin,
                                            stdout=stdout, stderr=stderr, explain=explain)
            return container.start(args.image, command, name=args.name, stdin=stdin,
                                   stdout=stdout, stderr=stderr, explain=explain, env=args.env,
                                   workdir=args.workdir, user=args.user,
                                   **creation_options(args))

        outcome, streams, sampler = run_streaming(
            start, capture_out=args.out is not None, capture_err=args.err is not None,
            explain=args.explain, timeout=args.timeout, stats=args.stats)
        if args.out is not None:
            self.shell.user_ns[args.out] = streams[0].text()
        if args.err is not None:
            self.shell.user_ns[args.err] = streams[1].text()
        for option, variable, stream in (("--out", args.out, streams[0]),
                                         ("--err", args.err, streams[1])):
            if stream.dropped:
                print(cut_message(option, variable, stream.dropped), file=sys.stderr)
        if sampler is not None:
            from contained.jupyter import plots

            plots.show_figure(plots.stats_figure(sampler.samples, title=args.name or args.image))
        message = exit_message(outcome, args.timeout)
        if message and args.no_raise_error:
            print(message, file=sys.stderr)  # said, but "Run all" goes on
        elif message:
            result = outcome.result
            raise failure(message, status=result.status if result else None,
                          oom=bool(result and result.oom))

    def dry_run(self, args, command: list[str], existing) -> None:
        if existing is not None:
            from contained.runtime import runner

            working_dir = args.workdir or existing.spec.working_dir
            steps = runner.exec_steps(existing.init_pid or 0, existing.spec, command,
                                      working_dir)
            lines = [step.explain() for step in steps]
        else:
            spec = container.build_spec(args.image, command, name=args.name,
                                        persistent=args.name is not None, env=args.env,
                                        workdir=args.workdir, user=args.user,
                                        **creation_options(args))
            lines = container.dry_run(spec)
        print("\n".join(lines))

    # -- %container SUBCOMMAND -------------------------------------------------------------

    def subcommand(self, line: str):
        args = parse(LINE_PARSER, line)
        return getattr(self, f"do_{args.command}")(args)

    # ps, images and doctor print exactly what the `contained` command prints.

    def do_ps(self, args) -> None:
        from contained import cli

        cli.run_ps(argparse.Namespace(all=args.all, quiet=False, no_trunc=False))

    def do_images(self, args) -> None:
        from contained import cli

        cli.run_images(argparse.Namespace(no_trunc=False, quiet=False))

    def do_pull(self, args) -> None:
        from contained.images.store import Store

        options = {"registries_conf": args.registries_conf,
                   "tls_verify": False if args.insecure else None}
        if in_kernel():
            from contained.jupyter import widgets

            image = widgets.pull_with_progress(Store(), args.image, **options)
        else:
            print(f"pulling {args.image}...", flush=True)
            image = Store().pull(args.image, progress=False, **options)
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
        last = sampler.samples[-1][1]
        print(f"{found.name}: memory {human_size(last.memory)}, "
              f"CPU {last.cpu_seconds:.2f}s in total, {last.pids} processes")
        plots.show_figure(plots.stats_figure(sampler.samples, title=found.name))

    def do_exec(self, args) -> None:
        if not args.cmd:
            raise failure("%container exec needs a command: %container exec NAME CMD [ARG...]")

        def start(stdin, stdout, stderr, explain):
            return container.start_exec(args.name, args.cmd, env=args.env,
                                        workdir=args.workdir, user=args.user, stdin=stdin,
                                        stdout=stdout, stderr=stderr)

        outcome, _, _ = run_streaming(start)
        message = exit_message(outcome, None)
        if message:
            raise failure(message, status=outcome.result.status if outcome.result else None)

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
        from contained import cli

        cli.run_doctor(argparse.Namespace())

    def do_dashboard(self, args):
        from contained.jupyter import widgets

        return widgets.Dashboard().widget


def cut_message(option: str, variable: str, dropped: int) -> str:
    """What a cell says when `option` VARIABLE captured more than CAPTURE_LIMIT."""
    kept = f"{CAPTURE_LIMIT >> 20} MiB" if CAPTURE_LIMIT >= 1 << 20 else \
        f"{CAPTURE_LIMIT >> 10} KiB"
    return (f"{option} {variable} kept the first {kept} of output; {dropped} more characters "
            "were dropped. Write big output to a file in a named container (cmd > /tmp/out) "
            "and capture only what you need (e.g. tail /tmp/out)")


def human_size(size: int) -> str:
    from contained.cli import human_size as cli_human_size

    return cli_human_size(size)


ContainerMagics.container.__doc__ = f"""Run a cell in a container, or manage containers.

``%%container IMAGE [options]`` runs the cell body with the image's /bin/sh; without --name the
container is thrown away after the cell, with --name it is created once and reused. The body
reaches the shell untouched ($VAR, $$, {{x}} are the shell's); the magic line is expanded by
IPython, so ``-e N={{n}}`` passes a Python value. A non-zero exit raises a one-line error.

{CELL_PARSER.format_help()}
{LINE_PARSER.format_help()}"""
