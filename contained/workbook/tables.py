"""Tables a notebook shows: namespaces side by side, doctor checks, a directory with whiteouts.

Used by notebooks 00 (``doctor_table``), 01 (``namespace_table``), 03 (``tree``) and 07
(``Table``), through the `contained.workbook` facade; `capabilities` builds its table here too.
A `Table` shows as HTML in a notebook and as aligned text in a terminal. The shell commands
behind each table::

    contained doctor                                          # doctor_table
    readlink /proc/self/ns/*; unshare --uts readlink /proc/self/ns/uts   # namespace_table
    find PATH -printf '%y %p\\n'; getfattr -n trusted.overlay.opaque DIR  # tree
"""

import os
import shlex
from pathlib import Path

from contained import doctor, views
from contained.runtime import namespaces
from contained.workbook.lab import sh_output


class Table(views.Table):
    """Rows to show in a notebook (HTML) or a terminal (aligned text, control characters
    escaped): `contained.views.Table`, with cells that wrap, for sentences such as the
    doctor's advice."""

    cell_style = "text-align: left"


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
