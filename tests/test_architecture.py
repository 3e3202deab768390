"""The package's shape (issue 13), checked from the source with ast, so it cannot drift back.

Folders follow the data and nothing low imports anything high: images → runtime → network →
the faces shared by the CLI and the notebooks (options, views, doctor) → jupyter and workbook
→ the CLI. Small shared primitives (errors, home, syscalls, procfs, ...) sit below them all.
Every module says what it is in a docstring; modules and functions stay small; vulture finds no
dead code. None of these tests needs root.
"""

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "contained"

#: Where each top-level name under contained/ sits, lowest first. A module may import its own
#: layer and those below it; the exceptions are listed in UPWARD_IMPORTS with their reason.
LAYERS = {
    "primitives": ["errors", "home", "names", "units", "filelock", "syscalls", "procfs",
                   "isolated", "records"],
    "images": ["images"],
    "runtime": ["runtime"],
    "network": ["network"],
    # what the CLI and the notebooks both use: options, tables, the machine check, classrooms,
    # building images (every RUN step is a container of the runtime)
    "faces": ["options", "views", "doctor", "classroom", "build"],
    "notebook side": ["jupyter", "workbook"],
    "cli": ["cli", "__main__"],
}
LEVEL = {name: level for level, names in enumerate(LAYERS.values()) for name in names}

#: The upward imports the code is built with, each with why. Anything else upward fails.
UPWARD_IMPORTS = {
    # The runtime attaches a container's network: steps plans the veth pair and the lease
    # (plan_attach, parse_publish, resolv_conf); runner and container detach it on failure, rm
    # and gc. network reaches back into the runtime only for the Step type (see below), so
    # the two packages never import each other at module level in a cycle.
    ("contained.runtime.steps", "network"),
    ("contained.runtime.runner", "network"),
    ("contained.runtime.container", "network"),
    # A rootless --net bridge is checked when the spec is built (slirp4netns, /dev/net/tun),
    # so the one-line error comes before any runner starts (imported there, on use).
    ("contained.runtime.specs", "network"),
}

#: What the network package may use from the runtime: the `Step` every step is made of.
NETWORK_USES_FROM_RUNTIME = {"contained.runtime.plan"}

#: The kernel side of Jupyter: only the notebook side and the extension hooks may import it.
NOTEBOOK_STACK = {"IPython", "ipykernel", "ipywidgets", "matplotlib"}
MAY_IMPORT_NOTEBOOK_STACK = ("contained.jupyter", "contained.workbook")

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (lazy imports inside functions count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            found.add(origin)
            # `from contained import network` imports the module contained.network
            found |= {f"{origin}.{alias.name}" for alias in node.names}
    return found


def top_name(module: str) -> str | None:
    """The name under contained/ a module belongs to (None outside the package)."""
    parts = module.split(".")
    if parts[0] != "contained":
        return None
    return parts[1] if len(parts) > 1 else ""


def contained_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if top_name(m) and _is_module(m)}


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    return (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative).is_dir()


def test_every_module_under_contained_sits_in_a_layer():
    unplaced = {top_name(module_name(p)) for p in modules()} - set(LEVEL) - {""}
    assert not unplaced, f"say where contained.{unplaced} sits in LAYERS"


def test_nothing_low_imports_anything_high():
    upward = []
    for path in modules():
        importer = module_name(path)
        if importer == "contained":
            continue  # the extension hooks: checked by the next test
        for imported in contained_imports(path):
            target = top_name(imported)
            allowed = (importer, target) in UPWARD_IMPORTS
            if LEVEL[target] > LEVEL[top_name(importer)] and not allowed:
                upward.append(f"{importer} imports {imported}")
    assert not upward


def test_every_allowed_upward_import_is_still_made():
    """An exception nobody needs any more must go, or it would let the next one in."""
    made = {(module_name(path), top_name(imported)) for path in modules()
            for imported in contained_imports(path)}
    assert UPWARD_IMPORTS - made == set()


def test_the_package_itself_imports_only_what_its_extension_hooks_need():
    imported = contained_imports(PACKAGE / "__init__.py")
    assert imported <= {"contained.jupyter.magics", "contained.runtime.container"}


def test_images_never_import_the_runtime_network_notebooks_or_cli():
    for path in (PACKAGE / "images").rglob("*.py"):
        higher = {m for m in contained_imports(path)
                  if top_name(m) in {"runtime", "network", "jupyter", "workbook", "cli"}}
        assert not higher, f"{module_name(path)} imports {higher}"


def test_the_runtime_imports_the_network_only_where_it_attaches_it():
    attaching = {importer for importer, target in UPWARD_IMPORTS if target == "network"}
    for path in (PACKAGE / "runtime").rglob("*.py"):
        if module_name(path) not in attaching:
            network = {m for m in contained_imports(path) if top_name(m) == "network"}
            assert not network, f"{module_name(path)} imports {network}"


def test_the_network_uses_only_the_step_type_from_the_runtime():
    for path in (PACKAGE / "network").rglob("*.py"):
        runtime = {m for m in contained_imports(path) if top_name(m) == "runtime"}
        # `from contained.runtime.plan import Step` also names the package contained.runtime
        assert runtime <= NETWORK_USES_FROM_RUNTIME | {"contained.runtime"}, module_name(path)


def test_only_the_notebook_side_imports_ipython_widgets_or_matplotlib():
    offenders = []
    for path in modules():
        importer = module_name(path)
        if importer == "contained" or importer.startswith(MAY_IMPORT_NOTEBOOK_STACK):
            continue
        stack = {m for m in imported_modules(path) if m.split(".")[0] in NOTEBOOK_STACK}
        if stack:
            offenders.append(f"{importer} imports {sorted(stack)}")
    assert not offenders


def test_the_cli_and_the_runtime_load_no_ipython_when_imported():
    code = ("import sys, contained.cli, contained.runtime.container\n"
            f"stack = set({sorted(NOTEBOOK_STACK)!r})\n"
            "print(sorted(stack & {m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_module_says_what_it_is_in_a_docstring():
    missing = [module_name(p) for p in modules() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing


def test_no_module_is_over_500_lines():
    long = {_relative(p): _lines(p) for p in modules() if _lines(p) > MAX_MODULE_LINES}
    assert not long


def test_no_function_is_over_60_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{_relative(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not long


def test_every_package_is_listed_for_installation():
    """A folder missing from pyproject's packages works in the editable checkout and is
    missing from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set()


def test_no_module_is_ignored_by_git():
    """A module git ignores (``build/`` once hid contained/build/) works here and is missing
    from every clone."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (this copy has no .git)")
    paths = "\n".join(_relative(p) for p in modules())
    done = subprocess.run(["git", "check-ignore", "--stdin"], input=paths, capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode in (0, 1), done.stderr  # 1: nothing is ignored
    assert done.stdout.split() == []


def test_vulture_finds_no_dead_code(tmp_path):
    """vulture at 60% over contained/, with the names used by name (tests/vulture_whitelist.py)
    and by the notebooks' code cells, which are the workbook helpers' callers."""
    pytest.importorskip("vulture", reason="needs vulture (pip install -e '.[test]')")
    notebooks_code = tmp_path / "notebooks_code.py"
    notebooks_code.write_text(notebooks_as_python())
    done = subprocess.run(
        [sys.executable, "-m", "vulture", "contained", "tests/vulture_whitelist.py",
         str(notebooks_code), "--min-confidence", "60"],
        capture_output=True, text=True, cwd=ROOT)
    dead = [line for line in done.stdout.splitlines() if line.startswith("contained" + os.sep)]
    assert not dead
    assert done.returncode in (0, 3), done.stderr  # 3: dead code found (in the notebooks' own)


def notebooks_as_python() -> str:
    """Every notebook's code cells as one Python file; magics become IPython's calls."""
    import nbformat
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    cells = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type == "code":
                cells.append(f"# {notebook.name}\n{transform(cell.source)}")
    return "\n\n".join(cells)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_every_name_the_vulture_whitelist_keeps_still_exists():
    """A stale whitelist entry would keep the next dead function of that name alive."""
    whitelist = ast.parse((ROOT / "tests" / "vulture_whitelist.py").read_text())
    kept = {node.value.attr for node in whitelist.body
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Attribute)}
    source = "\n".join(path.read_text() for path in modules())
    assert {name for name in kept if name not in source} == set()
