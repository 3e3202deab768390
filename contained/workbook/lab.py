"""The lab bench every notebook stands on: privileges, running host commands, lab directories.

Used by every notebook (00-08), through the `contained.workbook` facade. A notebook cell should
read like the shell session it teaches; the plumbing lives here: running a host command and
showing its output (``sh``, ``sh_output``, ``contained``), saying in one sentence why a cell
cannot run without root and which command it would have run (``needs_root``, the ``%%as_root``
cell magic), the notebook's lab directory (``setup``), and unmounting what a lab left mounted
(``unmount_all``). The shell commands they stand for::

    bash -c COMMAND                                   # sh, sh_output
    unshare --user --map-root-user --mount bash -c CELL   # %%as_root --userns, rootless
    mkdir -p lab-NAME && cd lab-NAME                  # setup("NAME")
    umount -R DIR                                     # unmount_all (deepest first, one by one)

The rootless track: where the kernel lets an unprivileged user make a user namespace,
``%%as_root --userns WHAT`` runs the cell for real inside ``unshare --user --map-root-user
--mount``; a cell that truly needs root shows a root run's recorded output
(``needs_root(..., recorded="NN-ID")``, see `recordings`).

Everything here runs commands as *subprocesses* (what ``!cmd`` and ``%%bash`` do): a Jupyter
kernel is multi-threaded, so it never forks a Python child or calls unshare(2) itself.
Tests that replace a helper (``privileged``, ``sh``...) patch it here, where it is looked up.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from contained import doctor, isolated
from contained.errors import ContainedError
from contained.images import skopeo
from contained.runtime import cgroups, mountinfo

#: what the unprivileged reader is told once, at the top of each notebook
UNPRIVILEGED_NOTE = ("Not running as root: cells that need root (mounts, namespaces, cgroups) "
                     "say so and show the command they would run; everything else runs.")



class ShellCommandFailed(ContainedError):
    """A host command run by a workbook cell exited with a non-zero status."""

    def _render_traceback_(self):
        # IPython shows this instead of a traceback: one red line, as the errors promise.
        return [f"{type(self).__name__}: {self}"]



# ---------------------------------------------------------------------------------------------
# Privileges


def privileged() -> bool:
    """Can this kernel do what root does here (mounts, namespaces, cgroups)?"""
    return doctor.can_run_containers()


def user_namespaces() -> bool:
    """Can this process make a user namespace and be root in it (``unshare --user
    --map-root-user true``)? Where it can, the rootless labs run for real."""
    global _USER_NAMESPACES
    if _USER_NAMESPACES is None:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                              capture_output=True, check=False)
        _USER_NAMESPACES = done.returncode == 0
    return _USER_NAMESPACES


_USER_NAMESPACES: bool | None = None


def can_run_containers() -> bool:
    """Can `contained run` start a container here: as root, or rootless in a user namespace?"""
    return privileged() or (shutil.which("unshare") is not None and user_namespaces())


def needs_containers(what: str, command: str) -> bool:
    """`needs_root` for a cell that only runs containers: rootless ones count."""
    return can_run_containers() or needs_root(what, command)


def skip_message(what: str, command: str) -> str:
    """The sentence a skipped cell prints, followed by the command it would run."""
    what = what.strip().rstrip(".") or "this cell"
    lines = command.strip("\n").splitlines() or [""]
    shown = "\n".join(f"    {line}" for line in lines)
    return (f"Skipped: {what} needs root ({doctor.privilege_hint()}).\n"
            f"As root, this cell runs:\n{shown}")


def needs_root(what: str, command: str, *, recorded: str | None = None) -> bool:
    """True if the cell may go on; otherwise print why not and the command it would run, and,
    with `recorded` (the cell's id), what the cell showed in a root run (labelled as such)."""
    if privileged():
        return True
    if recorded is not None:
        from contained.workbook import recordings

        print(recordings.not_run_message(what, command))
        recordings.show(recorded)
        return False
    print(skip_message(what, command))
    return False


# ---------------------------------------------------------------------------------------------
# The rootless track: a user namespace gives an unprivileged student root over namespaces of
# their own (its mounts, hostname, processes, network), and none over the host's.

#: The prefix a rootless cell runs under: uid 0 inside is the student outside.
USERNS_PREFIX = "unshare --user --map-root-user"


def rootless() -> bool:
    """Not root, but able to run the rootless track (`user_namespaces` tried it for real)."""
    return not privileged() and user_namespaces()


def _run_cell(cell: str, *, in_userns: bool) -> None:
    # $USERXATTR: overlayfs in a user namespace may not write trusted.* xattrs; with
    # `userxattr` it keeps its marks (opaque directories) in user.overlay.* instead.
    env = {**os.environ, "USERXATTR": ",userxattr" if in_userns else ""}
    if in_userns:
        print(f"(rootless: this cell runs as root of a user namespace of its own, "
              f"`{USERNS_PREFIX} --mount`; outside it you are still uid {os.geteuid()})",
              flush=True)
        sh(f"{USERNS_PREFIX} --mount bash -c {shlex.quote(cell)}", echo=False, env=env)
    else:
        sh(cell, echo=False, env=env)


# ---------------------------------------------------------------------------------------------
# Running host commands


def sh(command: str, *, check: bool = True, echo: bool = True, cwd: str | None = None,
       env: dict | None = None) -> None:
    """Run `command` with bash on the host, print ``$ command`` and its output as it comes.

    A non-zero exit raises ShellCommandFailed when `check`, so "Run all" stops where something
    really went wrong. (`sh_output` returns the output instead of showing it.)
    """
    if echo:
        print(f"$ {command.strip()}", flush=True)
    if env is None:  # the tutorial's skopeo, without a login session: see the function
        env = skopeo.credentials_environment()
    process = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                               env=env, text=True, errors="replace")
    output = []
    for line in process.stdout:
        output.append(line)
        print(line, end="", flush=True)
    status = process.wait()
    text = "".join(output)
    if check and status != 0:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise ShellCommandFailed(f"`{_short(command)}` exited with status {status} ({last}); "
                                 "read the output above")


def contained(arguments: str, *, check: bool = True) -> None:
    """Run the ``contained`` command line (this Python's), shown as ``$ contained ...``."""
    print(f"$ contained {arguments}", flush=True)
    # Isolated: this kernel's directory, where containers write, must not be on its sys.path.
    sh(f"{isolated.shell_words('contained.cli')} {arguments}", check=check, echo=False)


def sh_output(command: str, *, check: bool = True) -> str:
    """Run `command` with bash and return its stdout, stripped, without printing anything."""
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise ShellCommandFailed(f"`{_short(command)}` exited with status {done.returncode} "
                                 f"({done.stderr.strip() or 'no output'})")
    return done.stdout.strip()


def _short(command: str, limit: int = 120) -> str:
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def as_root(line: str, cell: str) -> None:
    """``%%as_root [--userns] WHAT``: run the cell with bash if privileged, else say why and
    show it.

    WHAT completes the sentence "Skipped: WHAT needs root", e.g. ``%%as_root mounting``. With
    ``--userns`` an unprivileged student whose kernel allows user namespaces runs the cell for
    real, inside ``unshare --user --map-root-user --mount`` (the rootless track).
    """
    words = line.split()
    in_userns = bool(words) and words[0] == "--userns"
    what = " ".join(words[1:] if in_userns else words) or "this cell"
    if in_userns and rootless():
        _run_cell(cell, in_userns=True)
    elif needs_root(what, cell):
        _run_cell(cell, in_userns=False)


# ---------------------------------------------------------------------------------------------
# Setting up a notebook: its lab directory, %%as_root, and %%container (or its stand-in)


def setup(lab: str | None = None, *, magics: bool = False) -> None:
    """Prepare a notebook: register ``%%as_root``, go to its lab directory, say what runs.

    `lab` names a directory (created next to the notebook) where the notebook's files go, so
    relative paths such as the tutorial's ``lower`` and ``upper`` land there. With `magics`,
    load the ``%%container`` extension, or, without root, a stand-in that shows each cell.
    """
    shell = _ipython()
    if shell is not None:
        shell.register_magic_function(as_root, magic_kind="cell", magic_name="as_root")
        if magics:
            _load_container_magics(shell)
    directory = Path.cwd()
    if lab:
        global _BASE
        _BASE = _BASE or Path.cwd()
        directory = _BASE / f"lab-{lab}"
        directory.mkdir(exist_ok=True)
        os.chdir(directory)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if privileged():
        print(f"Running as {who}: every cell runs for real. Working in {directory}")
    elif user_namespaces():
        print(f"Running as {who}. {UNPRIVILEGED_NOTE} User namespaces are allowed here: the "
              f"rootless cells run for real, as root of a user namespace of their own "
              f"(`{USERNS_PREFIX}`). Working in {directory}")
    else:
        print(f"Running as {who}. {UNPRIVILEGED_NOTE} Working in {directory}")


_BASE: Path | None = None


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


#: %%container options that need a cgroup of the container's own
LIMIT_OPTIONS = ("-m", "--memory", "--cpus", "--pids-limit", "--stats")


def can_limit_containers() -> bool:
    """Can containers started here get memory and CPU limits (root, or delegated cgroups)?"""
    return privileged() or (can_run_containers() and cgroups.can_limit("memory")
                            and cgroups.can_limit("cpu"))


def _load_container_magics(shell) -> None:
    if can_run_containers():  # rootless containers are real containers
        shell.run_line_magic("load_ext", "contained")
        if not can_limit_containers():
            _skip_limits_without_cgroups(shell)
        return

    def container_cell(line: str, cell: str) -> None:
        print(skip_message("running a container", f"%%container {line}\n{cell}"))

    def container_line(line: str) -> None:
        print(skip_message(f"`%container {line.split()[0] if line.split() else ''}`",
                           f"%container {line}"))

    shell.register_magic_function(container_cell, magic_kind="cell", magic_name="container")
    shell.register_magic_function(container_line, magic_kind="line", magic_name="container")


def _skip_limits_without_cgroups(shell) -> None:
    """Rootless without delegated cgroups: a ``%%container`` cell with limits says why it
    cannot run; every other cell runs for real."""
    real = shell.magics_manager.magics["cell"]["container"]

    def container_cell(line: str, cell: str):
        if any(word.split("=")[0] in LIMIT_OPTIONS for word in line.split()):
            print(f"Skipped: limits need a cgroup of the container's own: root, or a cgroup "
                  f"tree delegated to you (`contained doctor` says which).\n"
                  f"As root, this cell runs:\n    %%container {line}\n"
                  + "\n".join(f"    {text}" for text in cell.strip("\n").splitlines()))
            return None
        return real(line, cell)

    shell.register_magic_function(container_cell, magic_kind="cell", magic_name="container")


# ---------------------------------------------------------------------------------------------
# Mounts


def mounts_under(path: str | Path) -> list[Path]:
    """Mount points at or below `path` in this process's mount namespace, deepest last."""
    base = os.path.realpath(path)
    found = []
    for mount in mountinfo.read():
        point = mount.mount_point
        if point == base or point.startswith(base.rstrip("/") + "/"):
            found.append(Path(point))
    return found


def unmount_all(path: str | Path, *, echo: bool = True) -> list[Path]:
    """Unmount everything at or below `path`, deepest first (``umount -R``, one by one)."""
    points = mounts_under(path)
    if points and not privileged():
        return []
    for point in reversed(points):
        if echo:
            print(f"$ umount {point}")
        subprocess.run(["umount", "-l", str(point)], check=False)
    return points


# ---------------------------------------------------------------------------------------------
# Notebook 07: the host's Python inside a busybox container


def host_python_volumes() -> list[str]:
    """Read-only volumes that let the host's /usr/bin/python3 run inside a busybox container:
    /usr, and /lib and /lib64 (symlinks into /usr on merged-/usr systems, so bound by their
    real paths)."""
    volumes = []
    for path in ("/usr", "/lib", "/lib64"):
        if os.path.exists(path):
            volumes.append(f"{os.path.realpath(path)}:{path}:ro")
    return volumes
