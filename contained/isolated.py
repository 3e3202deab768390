"""Starting contained's own Python helpers so that nothing of the caller's reaches their imports.

Used by the workbook's helpers (every notebook) and the local registry (04). ``python -m X`` and
``python -c`` put the working directory first on sys.path, and PYTHONPATH adds more: a
``shlex.py`` that a container wrote into the notebook's directory (``-v $PWD:/work``) would be
imported by a helper running as root. ``python -I`` (isolated) leaves out both, and the user's
site-packages. Where contained itself was found only through PYTHONPATH or a checkout, its own
directory is appended, after the standard library and site-packages, so it shadows nothing::

    python -I -c 'import sys; sys.path.append("/src"); from contained.cli import main; ...' ARGS
"""

import shlex
import sys
from pathlib import Path

#: The directory that holds this `contained` package (the one the caller imported).
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)

_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "if importlib.util.find_spec('contained') is None: sys.path.append({parent!r})\n"
    "from {module} import {function}\n"
    "sys.exit({function}(sys.argv[1:]))")


def python_argv(module: str, function: str = "main") -> list[str]:
    """The command that runs ``module.function(argv)`` in an isolated Python; append the
    arguments. `function` returns the exit status."""
    code = _BOOTSTRAP.format(parent=PACKAGE_PARENT, module=module, function=function)
    return [sys.executable, "-I", "-c", code]


def shell_words(module: str, function: str = "main") -> str:
    """`python_argv` as a shell command line, to put arguments after."""
    return shlex.join(python_argv(module, function))
