"""Running the whole workbook: ``python -m contained.workbook OUT_DIR [NOTEBOOK...]``.

Not taught by a notebook: this is how the workbook is checked end to end (tests/notebooks/,
CI) and how a teacher prepares executed copies. Each notebook runs with nbclient, its working
directory in OUT_DIR, and its executed copy is written there even when a cell fails. The shell
command it equals::

    jupyter nbconvert --to notebook --execute notebooks/*.ipynb --output-dir OUT_DIR

After each notebook everything mounted below OUT_DIR is unmounted (a lab stopped half-way may
leave its overlay mounted), so OUT_DIR must be one the workbook made (`claim_out_dir`).
"""

import os
import sys
import time
from pathlib import Path

from contained.errors import ContainedError
from contained.workbook.lab import unmount_all

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
DEFAULT_CELL_TIMEOUT = 120


class NotebookFailed(ContainedError):
    """A notebook stopped with an error while the workbook was executed."""


class NotALabDirectory(ContainedError):
    """OUT_DIR exists and was not made by the workbook: it is not ours to clean."""


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
    # --log-level=ERROR: each kernel would warn "running over TCP without encryption", once per
    # notebook; it listens on 127.0.0.1 only and signs every message with its key.
    client = nbclient.NotebookClient(book, timeout=timeout, kernel_name=kernel_name,
                                     extra_arguments=["--log-level=ERROR"],
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
