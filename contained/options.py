"""The options of `contained run` and `contained exec`, declared once for the CLI and the magics.

Taught in notebook 06: ``%%container busybox -m 32M`` takes exactly what ``contained run
busybox -m 32M`` takes, spelled and typed the same, because both parsers are built from the one
table below (as IPython's ``script_args`` declares the options every script magic shares).
Docker's spellings::

    contained run  --rm -d --name N -m 32M --cpus 0.5 --pids-limit 64 --hostname H -v A:B:ro
                   --net none|host|bridge -p 8080:80 --chroot --security-opt seccomp=F.json
                   -e K=V -w /dir -u nobody -i -t --explain --dry-run IMAGE [CMD...]
    contained exec -e K=V -w /dir -u nobody -d -i -t --explain NAME CMD...

Each `Option` says where it applies: `RUN` (``contained run``), `EXEC` (``contained exec`` and
``%container exec``) and `CELL` (``%%container``, which adds the script magics' own --out, --err,
--no-raise-error, --timeout and --stats). `add_options` puts them on an argparse parser.
"""

from contained.records import field, record

RUN, EXEC, CELL = "run", "exec", "cell"
NETWORKS = ("none", "host", "bridge")


@record(frozen=True)
class Option:
    """One option: its flags, argparse's keywords, and the commands that take it."""

    flags: tuple[str, ...]
    where: frozenset[str]
    keywords: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.keywords.get("dest") or self.flags[-1].lstrip("-").replace("-", "_")


def _option(*flags: str, where: tuple[str, ...], **keywords) -> Option:
    return Option(flags, frozenset(where), keywords)


# Help texts go through argparse's % formatting: a literal percent sign is written %%.
TABLE: tuple[Option, ...] = (
    # What the container is, and whether it stays.
    _option("--rm", where=(RUN, CELL), action="store_true",
            help="remove the container when the command ends, even with --name"),
    _option("-d", "--detach", where=(RUN, EXEC, CELL), action="store_true",
            help="run in the background: output goes to the container's log (`logs NAME`); "
                 "run prints the container's id"),
    _option("--name", where=(RUN, CELL),
            help="name the container and keep it: `exec` (or a later cell with the same --name) "
                 "runs in its files, processes and hostname, e.g. --name web"),
    # Fixed when the container is created (cgroup limits, namespaces, mounts).
    _option("-m", "--memory", where=(RUN, CELL),
            help="memory limit, e.g. 32M (cgroup memory.max)"),
    _option("--cpus", where=(RUN, CELL), help="CPU limit, e.g. 0.5 (cgroup cpu.max)"),
    _option("--pids-limit", where=(RUN, CELL), type=int, metavar="N",
            help="process limit, e.g. 64 (cgroup pids.max; default 2048 where the container has "
                 "a cgroup, -1 for none)"),
    _option("--hostname", where=(RUN, CELL),
            help="the container's hostname, e.g. box (default: its short id)"),
    _option("-v", "--volume", where=(RUN, CELL), action="append", default=[],
            metavar="HOST:CONTAINER[:ro]",
            help="bind-mount a host path, e.g. -v /tmp/data:/data:ro"),
    _option("--net", "--network", where=(RUN, CELL), dest="net", choices=NETWORKS,
            metavar="none|host|bridge",
            help="none: only lo (default, as in the tutorial); host: the host's; bridge: an "
                 "address on this home's bridge (contained0, ...)"),
    _option("-p", "--publish", where=(RUN, CELL), action="append", default=[],
            metavar="[HOSTIP:]HOSTPORT:PORT",
            help="publish a port (--net bridge), e.g. -p 8080:80"),
    _option("--chroot", where=(RUN, CELL), action="store_true", default=None,
            help="chroot like the tutorial instead of pivot_root (escapable)"),
    _option("--security-opt", where=(RUN, CELL), action="append", default=[],
            metavar="seccomp=unconfined|seccomp=FILE.json",
            help="the seccomp profile (default: Docker's; FILE in Docker's format)"),
    # The process: per command, so exec takes them too.
    _option("-e", "--env", where=(RUN, EXEC, CELL), action="append", default=[],
            metavar="NAME=VALUE",
            help="set an environment variable, e.g. -e N=3 (NAME alone copies this process's)"),
    _option("-w", "--workdir", where=(RUN, EXEC, CELL),
            help="working directory inside the container, e.g. /tmp"),
    _option("-u", "--user", where=(RUN, EXEC, CELL),
            help="user[:group] inside the container, e.g. nobody or 1000:1000"),
    # Attaching: a notebook cell has neither a stdin nor a terminal (see the magics).
    _option("-i", "--interactive", where=(RUN, EXEC, CELL), action="store_true",
            help="feed stdin to the command (without -i it reads /dev/null; a cell has none)"),
    _option("-t", "--tty", where=(RUN, EXEC, CELL), action="store_true",
            help="give the command a terminal of the container's own (a cell has none: it runs "
                 "without one)"),
    # Showing the steps.
    _option("--explain", where=(RUN, EXEC, CELL), action="store_true",
            help="print each step as the shell command it equals, as it runs"),
    _option("--dry-run", where=(RUN, CELL), action="store_true",
            help="print the steps as shell commands without running anything"),
    # The script magics' own (IPython's %%bash has the first three).
    _option("--out", where=(CELL,), metavar="VAR", help="store stdout in this Python variable"),
    _option("--err", where=(CELL,), metavar="VAR", help="store stderr in this Python variable"),
    _option("--no-raise-error", where=(CELL,), action="store_true",
            help="say a failure in one line but do not raise it (\"Run all\" goes on)"),
    _option("--timeout", where=(CELL,), type=float, metavar="SECONDS",
            help="kill the cell's command after this many seconds, e.g. 2.5"),
    _option("--stats", where=(CELL,), action="store_true",
            help="after the cell, plot its memory and CPU use with the limits"),
)


def options_for(command: str) -> list[Option]:
    """The options `command` (RUN, EXEC or CELL) takes, in the table's order."""
    return [option for option in TABLE if command in option.where]


def add_options(parser, command: str) -> None:
    """Put every option of `command` on `parser` (an argparse parser or argument group)."""
    for option in options_for(command):
        parser.add_argument(*option.flags, **option.keywords)


def creation_options(args) -> dict:
    """`build_spec`'s keywords for what is fixed at creation, from parsed `args`: limits,
    hostname, volumes, network, ports, chroot, seccomp. --net only when given (a named
    container's reuse compares only what the cell asked for)."""
    options = {"memory": args.memory, "cpus": args.cpus, "pids_limit": args.pids_limit,
               "hostname": args.hostname, "volumes": args.volume, "publish": args.publish,
               "chroot": bool(args.chroot), "security_opt": args.security_opt}
    if args.net is not None:
        options["net"] = args.net
    return options


def process_options(args) -> dict:
    """`build_spec`'s (and `start_exec`'s) keywords for the process: env, workdir, user."""
    return {"env": args.env, "workdir": args.workdir, "user": args.user}
