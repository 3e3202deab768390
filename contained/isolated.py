"""Starting contained's own Python helpers so that nothing of the caller's reaches their imports.

Used by the workbook's helpers (every notebook) and the local registry (04). ``python -m X`` and
``python -c`` put the working directory first on sys.path, and PYTHONPATH adds more: a
``shlex.py`` that a container wrote into the notebook's directory (``-v $PWD:/work``) would be
imported by a helper running as root. ``python -I`` (isolated) leaves out both, and the user's
site-packages. The helper then loads the caller's own `contained` package by its location
(installed, or a checkout found through PYTHONPATH), which adds nothing to sys.path::

    python -I -c 'import importlib.util; ...spec_from_file_location("contained", ...)...' ARGS

Used for the runner (`contained.runtime.container.Runner`) too.
"""

import shlex
import sys
from pathlib import Path

#: This very package: the one the caller imported, installed or a checkout on PYTHONPATH.
PACKAGE = Path(__file__).resolve().parent

# Loads `contained` by its location and nothing else from the directory around it: no
# sys.path entry is added, so no other module there can be imported by accident.
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('contained', {init!r}, "
    "submodule_search_locations=[{package!r}])\n"
    "sys.modules['contained'] = package = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(package)\n"
    "from {module} import {function}\n"
    "sys.exit({function}(sys.argv[1:]))")


def python_argv(module: str, function: str = "main") -> list[str]:
    """The command that runs ``module.function(argv)`` in an isolated Python; append the
    arguments. `function` returns the exit status."""
    code = _BOOTSTRAP.format(init=str(PACKAGE / "__init__.py"), package=str(PACKAGE),
                             module=module, function=function)
    return [sys.executable, "-I", "-c", code]


def shell_words(module: str, function: str = "main") -> str:
    """`python_argv` as a shell command line, to put arguments after."""
    return shlex.join(python_argv(module, function))
