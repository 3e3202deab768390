"""The workbook's helpers: what the notebooks import so their cells stay short and readable.

Used by every notebook (00-07). A notebook cell should read like the shell session it teaches;
the plumbing lives here: running a host command and showing its output (``sh``), saying in one
sentence why a cell cannot run without root and which command it would have run
(``needs_root``, the ``%%as_root`` cell magic), tables (namespaces, doctor checks, a directory
tree with overlay whiteouts), the cgroup demos of notebook 02 and the charts.

The rootless track: where the kernel lets an unprivileged user make a user namespace,
``%%as_root --userns WHAT`` runs the cell for real inside ``unshare --user --map-root-user
--mount``; a cell that truly needs root shows a root run's recorded output
(``needs_root(..., recorded="NN-ID")``, see `recordings`). Next to this module: `exercises`
(checkers, graduated hints), `capabilities` (00), `cgroup_labs` and `figures` (02, 03).

Everything here runs commands as *subprocesses* (what ``!cmd`` and ``%%bash`` do): a Jupyter
kernel is multi-threaded, so it never forks a Python child or calls unshare(2) itself.

``execute_all(out_dir)`` runs the whole workbook with nbclient, as
``python -m contained.workbook OUT_DIR`` does::

    jupyter nbconvert --to notebook --execute notebooks/*.ipynb --output-dir OUT_DIR
"""

import html
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from contained import doctor, isolated
from contained.errors import ContainedError
from contained.runtime import cgroups, mountinfo, namespaces

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
DEFAULT_CELL_TIMEOUT = 120
#: what the unprivileged reader is told once, at the top of each notebook
UNPRIVILEGED_NOTE = ("Not running as root: cells that need root (mounts, namespaces, cgroups) "
                     "say so and show the command they would run; everything else runs.")


class ShellCommandFailed(ContainedError):
    """A host command run by a workbook cell exited with a non-zero status."""

    def _render_traceback_(self):
        # IPython shows this instead of a traceback: one red line, as the errors promise.
        return [f"{type(self).__name__}: {self}"]


class NotebookFailed(ContainedError):
    """A notebook stopped with an error while the workbook was executed."""


class NotALabDirectory(ContainedError):
    """OUT_DIR exists and was not made by the workbook: it is not ours to clean."""


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
# Tables


@dataclass
class Table:
    """Rows to show in a notebook (HTML) or a terminal (aligned text)."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>"
                       for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>"
                                        for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        from contained.cli import printable  # a file name from a layer may hold escapes

        table = [self.headers] + [[printable(str(c)) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.headers))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                         for row in table)

    __repr__ = __str__


def doctor_table() -> Table:
    """Every `contained doctor` check as a row: what, ok or not, what was seen, the fix."""
    rows = []
    for check in doctor.checks():
        state = "ok" if check.ok else ("FAIL" if check.required else "warn")
        rows.append([check.name, state, check.detail, "" if check.ok else check.fix])
    return Table(["check", "state", "seen", "to change"], rows)


_NS_PROBE = "for f in /proc/self/ns/*; do echo \"${f##*/} $(readlink $f)\"; done"


def namespace_links(prefix: str = "") -> dict[str, str]:
    """/proc/self/ns/* of a shell started with `prefix` (e.g. ``unshare --uts``) → links."""
    command = f"{prefix} sh -c {shlex.quote(_NS_PROBE)}" if prefix else _NS_PROBE
    links = {}
    for line in sh_output(command).splitlines():
        name, _, link = line.partition(" ")
        links[name] = link
    return links


def namespace_table(unshare: str) -> Table:
    """The host's namespaces next to those of a process started by `unshare` (a command
    prefix such as ``unshare --uts --net``): same inode, same namespace."""
    host = namespace_links()
    inside = namespace_links(unshare)
    rows = []
    for kind, (_, _, name) in namespaces.KINDS.items():
        if name not in host:
            continue
        other = inside.get(name, "?")
        rows.append([kind, host[name], other, "shared" if other == host[name] else "NEW"])
    return Table(["namespace", "host (this kernel)", f"{unshare} …", "same?"], rows)


def tree(path: str | Path) -> Table:
    """Every entry under `path` with its type, as ``find PATH -printf '%y %p'`` would show,
    naming overlay whiteouts (character devices 0:0) and opaque directories."""
    root = Path(path)
    rows = []
    for entry in sorted(root.rglob("*")):
        info = entry.lstat()
        kind, note = _describe(entry, info)
        rows.append([str(entry.relative_to(root)), kind, note])
    return Table(["path", "type", "note"], rows)


def _describe(entry: Path, info: os.stat_result) -> tuple[str, str]:
    import stat

    if stat.S_ISCHR(info.st_mode):
        major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
        if (major, minor) == (0, 0):
            return "char 0:0", "whiteout: hides this name from the layers below"
        return f"char {major}:{minor}", "device"
    if stat.S_ISLNK(info.st_mode):
        return "symlink", f"→ {os.readlink(entry)}"
    if stat.S_ISDIR(info.st_mode):
        # user.overlay.* is where an overlay mounted in a user namespace (userxattr) keeps it
        opaque = _xattr(entry, "trusted.overlay.opaque") or _xattr(entry, "user.overlay.opaque")
        return "dir", "opaque: hides the lower directory's content" if opaque == b"y" else ""
    if stat.S_ISREG(info.st_mode):
        return "file", f"{info.st_size} bytes"
    return "other", ""


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


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
# Notebook 02: processes in a cgroup made by hand


def cgroup_commands(name: str, limits) -> str:
    """The shell commands that create cgroup `name` with `limits` on this machine (nothing
    is touched: reading the plan needs no privileges)."""

    _, steps = cgroups.Cgroup.plan(name, limits)
    return "\n".join(step.shell for step in steps)


def create_cgroup(name: str, limits):
    """Create cgroup `name` with `limits`, printing each step as the shell command it equals.

    Returns the `contained.runtime.cgroups.Cgroup`; call its ``remove()`` when done.
    """

    group, steps = cgroups.Cgroup.plan(name, limits)
    try:
        for step in steps:
            print(f"$ {step.shell}")
            step.run()
    except BaseException:
        group.remove()
        raise
    return group


def failed_forks(group) -> int:
    """How many times a fork in the group failed because of pids.max (pids.events "max")."""
    for path in group.paths:
        events = path / "pids.events"
        if events.exists():
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
    return 0


def start_in_cgroup(group, command: str) -> subprocess.Popen:
    """Start `command` (bash) as a process that first joins `group` in every cgroup tree.

    The shell writes its own pid into each ``cgroup.procs`` (what ``echo $$ > cgroup.procs``
    does) and only then execs the command, so everything the command forks is inside too. If
    joining fails, the command never runs.
    """
    join = " && ".join(f"echo $$ > {shlex.quote(str(p))}" for p in group.procs_files)
    script = f"set -e; {join}; exec {command}"
    return subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace")


def sample_usage(group, seconds: float, interval: float = 0.1, until=None) -> list[tuple]:
    """Read the group's usage every `interval` seconds: [(elapsed seconds, Usage), ...].

    Stops after `seconds`, or earlier when ``until()`` returns true.
    """
    samples = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        samples.append((elapsed, group.usage()))
        if elapsed >= seconds or (until is not None and until()):
            return samples
        time.sleep(interval)


def mean_cpu(samples: list[tuple], skip: float = 0.5) -> float:
    """Average CPUs used after the first `skip` seconds (start-up is noisy)."""
    kept = [(t, u) for t, u in samples if t >= skip] or samples
    (t0, u0), (t1, u1) = kept[0], kept[-1]
    return (u1.cpu_seconds - u0.cpu_seconds) / (t1 - t0) if t1 > t0 else 0.0


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


# ---------------------------------------------------------------------------------------------
# Notebook 04: OCI layouts


def read_blob_json(layout: str | Path, digest: str) -> dict:
    """A JSON blob (manifest, config, index) of an OCI layout, by digest."""
    from contained.images import oci

    return json.loads(oci.blob_path(Path(layout), digest).read_bytes())


def layer_sizes(layout: str | Path, tag: str | None = None) -> list[tuple[str, int, int]]:
    """Each layer of the image `tag` in `layout`: (short digest, compressed, uncompressed)."""
    import gzip

    from contained.images import oci

    index = json.loads((Path(layout) / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if tag is None or m.get("annotations", {}).get(
                   "org.opencontainers.image.ref.name") == tag]
    manifest = read_blob_json(layout, entries[0]["digest"])
    sizes = []
    for layer in manifest["layers"]:
        blob = oci.blob_path(Path(layout), layer["digest"])
        uncompressed = 0
        with gzip.open(blob) if layer["mediaType"].endswith("gzip") else open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(chunk)
        sizes.append((layer["digest"][7:19], layer["size"], uncompressed))
    return sizes


def hidden_bytes(layout: str | Path, tag: str | None = None) -> dict[int, int]:
    """For each layer of image `tag`: the bytes of its regular files that a later layer
    deletes (a ``.wh.`` whiteout of the file or of a directory above it, an opaque directory)
    or replaces (the same path again). The image still ships them; no container sees them."""
    import tarfile

    from contained.images import oci

    index = json.loads((Path(layout) / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if tag is None or m.get("annotations", {}).get(
                   "org.opencontainers.image.ref.name") == tag]
    manifest = read_blob_json(layout, entries[0]["digest"])
    files: list[dict[str, int]] = []   # per layer: path → size
    covers: list[tuple[set, set]] = []  # per layer: (paths it hides or replaces, opaque dirs)
    for layer in manifest["layers"]:
        sizes, hides, opaque = {}, set(), set()
        with tarfile.open(oci.blob_path(Path(layout), layer["digest"])) as tar:
            for member in tar:
                name = member.name.lstrip("./").rstrip("/")
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    opaque.add(parent)
                elif base.startswith(".wh."):
                    hides.add(f"{parent}/{base[4:]}".lstrip("/"))
                elif not member.isdir():  # a directory entry merges with the one below
                    hides.add(name)
                    if member.isfile():
                        sizes[name] = member.size
        files.append(sizes)
        covers.append((hides, opaque))

    def hidden_later(path: str, layer: int) -> bool:
        parts = path.split("/")
        above = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        return any(above & hides or any(path.startswith(d + "/") for d in opaque)
                   for hides, opaque in covers[layer + 1:])

    return {i: sum(size for path, size in sizes.items() if hidden_later(path, i))
            for i, sizes in enumerate(files)}


def tar_layer(*entries: tuple) -> bytes:
    """An uncompressed layer tar from entries, exactly as written (nothing is cleaned up):

    ``(name, "file", data)``, ``(name, "dir")``, ``(name, "symlink", target)``,
    ``(name, "hardlink", target)``. Notebooks 04 and 07 build images and attacks with it.
    """
    import io
    import tarfile

    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            data = rest[0] if rest else b""
            if kind in ("symlink", "hardlink"):
                info.linkname = data
                tar.addfile(info)
            elif kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Executing the whole workbook


def notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The workbook's notebooks, in order (``NN-name.ipynb``)."""
    return sorted(p for p in Path(directory).glob("[0-9][0-9]-*.ipynb"))


def execute_notebook(notebook: Path, out_dir: Path, *, timeout: int = DEFAULT_CELL_TIMEOUT,
                     env: dict | None = None, kernel_name: str = "python3") -> Path:
    """Execute one notebook with its working directory in `out_dir`; write the executed copy
    there (even when a cell fails, so the error can be read) and return its path."""
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    out_dir = claim_out_dir(out_dir)
    target = out_dir / Path(notebook).name
    book = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(book, timeout=timeout, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(out_dir)}})
    kernel_env = dict(os.environ if env is None else env)
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as error:
        raise NotebookFailed(f"{Path(notebook).name} failed: {_first_line(error)}; "
                             f"the executed copy is {target}") from None
    except CellTimeoutError:
        raise NotebookFailed(f"{Path(notebook).name}: a cell ran longer than {timeout} s; "
                             f"the executed copy is {target}") from None
    finally:
        nbformat.write(book, target)
        # A notebook stopped half-way may leave its overlay mounted: never leave it behind.
        unmount_all(out_dir, echo=False)
    return target


#: The file the workbook leaves in each OUT_DIR it makes: its licence to unmount what is below.
LAB_MARKER = ".contained-workbook"


def claim_out_dir(out_dir: str | Path) -> Path:
    """OUT_DIR, made by the workbook (``mkdir OUT_DIR; touch OUT_DIR/.contained-workbook``).

    After each notebook the workbook unmounts everything below OUT_DIR (``umount -R``): a lab
    stopped half-way may leave its overlay mounted. So OUT_DIR must be new, empty, or one the
    workbook made before (it has the marker); any other directory, ``/`` above all, is refused.
    """
    path = Path(os.path.realpath(out_dir))  # what mounts_under() will compare with
    marker = path / LAB_MARKER
    if not path.exists():
        path.mkdir(parents=True)
    elif os.path.lexists(marker):
        if not marker.is_symlink() and marker.is_file():
            return path
    elif path.is_dir() and not os.path.ismount(path) and not any(path.iterdir()):
        pass  # a new, empty directory (mkdtemp): claim it
    else:
        raise NotALabDirectory(f"{path} was not made by the workbook (it has no {LAB_MARKER}) "
                               "and the workbook unmounts everything under its OUT_DIR: give a "
                               "new or empty directory")
    if os.path.lexists(marker):
        raise NotALabDirectory(f"{marker} is not a plain file: give a new or empty directory")
    marker.write_text("made by `python -m contained.workbook`; everything below may be "
                      "unmounted and replaced\n")
    return path


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(error).__name__).strip()


def execute_all(out_dir: str | Path, *, notebooks_dir: Path = NOTEBOOKS_DIR,
                timeout: int = DEFAULT_CELL_TIMEOUT, env: dict | None = None) -> list[Path]:
    """Execute every notebook of the workbook in order, writing executed copies to `out_dir`.

    Stops at the first notebook that fails (NotebookFailed names it and the cell's error).
    """
    done = []
    for notebook in notebooks(notebooks_dir):
        started = time.monotonic()
        print(f"executing {notebook.name} ...", end=" ", flush=True)
        done.append(execute_notebook(notebook, Path(out_dir), timeout=timeout, env=env))
        print(f"done in {time.monotonic() - started:.1f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m contained.workbook OUT_DIR [NOTEBOOK...]``: execute the workbook."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m contained.workbook",
                                     description="Execute the workbook's notebooks.")
    parser.add_argument("out_dir", help="where executed notebooks (and their lab dirs) go")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT,
                        help="seconds a cell may run")
    args = parser.parse_args(argv)
    try:
        if args.notebooks:
            for notebook in args.notebooks:
                execute_notebook(Path(notebook), Path(args.out_dir), timeout=args.timeout)
        else:
            execute_all(args.out_dir, timeout=args.timeout)
    except ContainedError as error:
        print(f"contained: error: {error}", file=sys.stderr)
        return 1
    return 0


# --- notebook 08: the bridge as it is now ----------------------------------------------------

def fetch(url: str, wait: float = 10.0) -> str:
    """GET `url` (on 127.0.0.1), retrying while the server starts; no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + wait
    while True:
        try:
            with opener.open(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bridge_state(bridge: str | None = None) -> dict:
    """The bridge (this home's, by default), its gateway, and each plugged-in veth with its
    container's lease."""
    from contained import network

    bridge = bridge or network.NetworkConfig().bridge
    links = json.loads(sh_output("ip -j addr show"))
    found = [link for link in links if link["ifname"] == bridge]
    if not found:
        return {"bridge": None, "gateway": None, "veths": []}
    gateway = next((a["local"] + "/" + str(a["prefixlen"]) for a in found[0]["addr_info"]
                    if a["family"] == "inet"), "?")
    plugged = {link["ifname"] for link in links if link.get("master") == bridge}
    path = _network_state_path()
    leases = json.loads(path.read_text())["leases"] if path.exists() else {}
    veths = [{"veth": lease["veth"], "name": name, "ip": lease["ip"],
              "ports": [f"{ip}:{host}→{port}/{proto}"
                        for ip, host, port, proto in lease["publish"]]}
             for name, lease in sorted(leases.items()) if lease["veth"] in plugged]
    return {"bridge": bridge, "gateway": gateway, "veths": veths}


def _network_state_path() -> Path:
    from contained import network

    return network.state_path(network.NetworkConfig())
