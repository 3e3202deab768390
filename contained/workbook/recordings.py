"""Recorded output of a root run, shown where a cell truly needs root.

Part of the workbook's rootless track (notebooks 00-03). A user namespace lets an unprivileged
student run most labs for real; a few cells cannot run without root (notebook 02 writes cgroup
limits, which needs a delegated cgroup). Rather than only printing the command, such a cell shows
what it printed in a root run, labelled as such: the cell calls
``workbook.needs_root(what, command, recorded="02-03")`` with its own cell id.

The recordings live next to the notebooks, one file per notebook (``notebooks/recorded/02.json``),
and are made from an executed root run::

    python -m contained.workbook OUT 02-cgroups.ipynb            # as root
    python -m contained.workbook.recordings OUT/02-cgroups.ipynb # copy the recorded cells' output
"""

import base64
import json
import re
import sys
from pathlib import Path

from contained import doctor

RECORDINGS_DIR = Path(__file__).resolve().parents[2] / "notebooks" / "recorded"
#: what marks a cell whose root-run output is recorded: needs_root(..., recorded="ID")
_RECORDED_CALL = re.compile(r"""recorded\s*=\s*["']([\w.-]+)["']""")
LABEL = "Recorded from a root run"


def path_for(cell_id: str) -> Path:
    """The recordings file of the notebook a cell id belongs to ("02-03" → recorded/02.json)."""
    return RECORDINGS_DIR / f"{cell_id.split('-', 1)[0]}.json"


def not_run_message(what: str, command: str) -> str:
    """What a cell that needs root prints before its recording."""
    what = what.strip().rstrip(".") or "this cell"
    shown = "\n".join(f"    {line}" for line in command.strip("\n").splitlines())
    return (f"Not run here ({what}): {doctor.privilege_hint()}.\n"
            f"As root, this cell runs:\n{shown}")


def show(cell_id: str) -> None:
    """Print (and display the figures of) what cell `cell_id` showed in a root run."""
    path = path_for(cell_id)
    recording = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    cell = recording["cells"].get(cell_id)
    if cell is None:
        print(f"(no recording of cell {cell_id} yet: `python -m contained.workbook.recordings` "
              "makes one from a root run)")
        return
    print(f"--- {LABEL} ({recording['machine']}); not run here ---")
    print(cell["text"].rstrip("\n"))
    for png in cell.get("png", []):
        _display_png(base64.b64decode(png))
    print(f"--- end of the {LABEL.lower()} ---")


def _display_png(data: bytes) -> None:
    try:
        from IPython.display import Image, display
    except ImportError:
        return
    display(Image(data=data, format="png"))


def record(executed: Path) -> Path:
    """Copy the output of every recorded cell of an executed (root) notebook into its
    recordings file; return that file's path."""
    import os

    import nbformat

    book = nbformat.read(executed, as_version=4)
    cells = {}
    for cell in book.cells:
        found = _RECORDED_CALL.search(cell.source) if cell.cell_type == "code" else None
        if found is None:
            continue
        text, pngs = [], []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text.append(output["text"])
            elif "image/png" in output.get("data", {}):
                pngs.append(output["data"]["image/png"].replace("\n", ""))
            elif "text/plain" in output.get("data", {}):
                text.append(output["data"]["text/plain"] + "\n")
        cells[found.group(1)] = {"text": "".join(text), "png": pngs}
    if not cells:
        raise ValueError(f"{executed} has no cell calling needs_root(..., recorded=...)")
    uname = os.uname()
    from contained.runtime import cgroups

    machine = f"{uname.sysname} {uname.release}, cgroup {cgroups.detect().mode}"
    path = path_for(next(iter(cells)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "cells": cells}, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m contained.workbook.recordings EXECUTED.ipynb...``"""
    for name in argv if argv is not None else sys.argv[1:]:
        print(f"recorded: {record(Path(name))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
