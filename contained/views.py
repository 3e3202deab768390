"""What `contained ps`, `images`, `stats` and `doctor` show, as tables the CLI and the magics share.

Taught in notebook 06. A `Table` prints as aligned plain text (the CLI, terminal IPython) and
renders as an HTML table in a notebook (``_repr_html_``); either way a cell never wraps inside a
column and control characters stay escaped. The shell commands they stand for::

    contained ps          ls $HOME/containers; cat $HOME/containers/*/state.json
    contained images      jq '.manifests[].annotations' $HOME/oci/index.json
    %container stats      cat /sys/fs/cgroup/contained-TAG/ID/memory.current cpu.stat pids.current
    contained doctor      (see contained.doctor)
"""

import shlex
import time
from collections.abc import Iterable

from contained.errors import ContainedError
from contained.images.reference import parse_reference
from contained.units import format_size

# Commands longer than this are cut with an ellipsis (--no-trunc shows them whole).
COMMAND_WIDTH = 30
SHORT_ID = 12
SHORT_DIGEST = 19  # "sha256:" and 12 hex digits
COLUMN_GAP = "   "
NO_WRAP = "white-space: nowrap; text-align: left; font-family: monospace"


class Table:
    """A header and rows of text: `str()` is aligned columns, `_repr_html_` an HTML table.

    Listings (`ps`, `images`) never wrap a cell, as in a terminal; a table of sentences (the
    workbook's doctor table) sets ``cell_style`` to one that wraps."""

    cell_style = NO_WRAP

    def __init__(self, header: Iterable[str], rows: Iterable[Iterable[object]] = ()):
        self.header = tuple(header)
        self.rows = [tuple(str(cell) for cell in row) for row in rows]

    def __str__(self) -> str:
        return format_table([self.header, *self.rows])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html  # only a notebook renders HTML: the CLI skips html.entities' big table

        style = self.cell_style
        head = "".join(f'<th style="{style}">{html.escape(printable(c))}</th>'
                       for c in self.header)
        body = "".join("<tr>" + "".join(f'<td style="{style}">{html.escape(printable(c))}</td>'
                                        for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Lines:
    """Lines of text (the doctor's checks): plain in a terminal, preformatted in a notebook."""

    def __init__(self, lines: list[str]):
        self.lines = [printable(line) for line in lines]

    def __str__(self) -> str:
        return "\n".join(self.lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


def format_table(rows: list[tuple[str, ...]]) -> str:
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(COLUMN_GAP.join(cell.ljust(width) for cell, width
                                     in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def printable(text: str) -> str:
    """`text` with control characters written as escapes (``\\x1b``), as `docker ps` quotes
    them: an image's command or name must not set the terminal's title or erase its lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


#: decimal units, as Docker prints sizes: 4.26MB
human_size = format_size


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one an ellipsis when something was cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


# ---------------------------------------------------------------------------------------------
# ps

def listed_containers(all_: bool = False) -> list:
    """The containers `ps` lists: running ones (all with `all_`), never a throwaway whose
    command has ended and whose runner is tearing it down (it is gone in a moment)."""
    from contained.runtime import listing  # state only, not the runtime: ~30 ms a `ps`

    return [item for item in listing.containers()
            if not _being_torn_down(item) and (all_ or item.running)]


def _being_torn_down(item) -> bool:
    from contained import procfs

    # A throwaway counts as running while its owner or runner lives; once its PID 1 has
    # ended (the command with it), only the teardown is left.
    return (not item.persistent and item.running and item.init_pid is not None
            and not procfs.running(item.init_pid))


def ps_table(all_: bool = False, no_trunc: bool = False, size: bool = False) -> Table:
    header = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES") \
        + (("SIZE",) if size else ())
    rows = []
    for item in listed_containers(all_):
        command = printable(shlex.join(item.command))  # escaped before it is cut short
        rows.append((item.id if no_trunc else item.id[:SHORT_ID], familiar(item.image),
                     command if no_trunc else shorten(command, COMMAND_WIDTH),
                     ago(time.time() - item.created), "Up" if item.running else "Exited",
                     item.name)
                    + ((human_size(_writable_size(item)),) if size else ()))
    return Table(header, rows)


def _writable_size(item) -> int:
    from contained.runtime import container

    return container.writable_size(item)


def ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} seconds ago"


# ---------------------------------------------------------------------------------------------
# images

def image_listing(store=None, no_trunc: bool = False) -> tuple[list[tuple], dict[str, str]]:
    """(store name, repository, tag, digest, size) for each image, whole and broken sorted
    together, and the broken ones' problems by name."""
    from contained.images.store import Store

    images, broken = (store or Store()).survey()
    listed = [(image.name, *_repository_and_tag(image.name),
               image.digest if no_trunc else image.digest[:SHORT_DIGEST],
               human_size(image.size)) for image in images]
    listed += [(name, *_repository_and_tag(name), "broken", "-") for name in broken]
    return sorted(listed), broken


def images_table(listed: list[tuple]) -> Table:
    return Table(("REPOSITORY", "TAG", "DIGEST", "SIZE"), [row[1:] for row in listed])


def _repository_and_tag(name: str) -> tuple[str, str]:
    try:
        reference = parse_reference(name)
    except ContainedError:  # a hand-edited index: show the name as it is
        return name, "<none>"
    return reference.familiar_repository, reference.tag or "<none>"


def familiar(name: str) -> str:
    try:
        return parse_reference(name).familiar
    except ContainedError:
        return name



# ---------------------------------------------------------------------------------------------
# stats and doctor

def stats_table(samples: list[tuple[str, object]]) -> Table:
    """One row per (name, cgroups.Usage): what `docker stats --no-stream` shows."""
    rows = []
    for name, usage in samples:
        limit = human_size(usage.memory_limit) if usage.memory_limit else "-"
        cpus = f"{usage.cpu_limit:g}" if usage.cpu_limit else "-"
        rows.append((name, human_size(usage.memory), limit, f"{usage.cpu_seconds:.2f}s", cpus,
                     str(usage.pids)))
    return Table(("NAME", "MEMORY", "LIMIT", "CPU TIME", "CPUS", "PIDS"), rows)


def doctor_lines(checks: list) -> Lines:
    return Lines([check.line() for check in checks])
