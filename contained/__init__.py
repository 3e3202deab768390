"""contained: a container built by hand in Jupyter, then used (``%%container busybox``).

Notebooks 00–08 build each piece by hand; each module of this package is one of those pieces,
named after it. This file only makes the package an IPython extension (notebook 06)::

    %load_ext contained       # registers %%container and %container
    %unload_ext contained     # removes them; this kernel's throwaway containers go too

It stays tiny on purpose: importing `contained` (the CLI does, on every command) must not import
IPython, matplotlib or ipywidgets.
"""

import atexit


def load_ipython_extension(ipython) -> None:
    """Register the magics, and remove this kernel's throwaway containers when it exits."""
    from contained.jupyter.magics import ContainerMagics

    ipython.register_magics(ContainerMagics)
    atexit.register(close_runner)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics and stop this kernel's runner (which kills its throwaway containers)."""
    from contained.jupyter.magics import ContainerMagics

    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        if manager.magics[kind].get("container") is not None:
            del manager.magics[kind]["container"]
    manager.registry.pop(ContainerMagics.__name__, None)
    close_runner()
    atexit.unregister(close_runner)


def close_runner() -> None:
    """Stop the runner helper if this process started one; named containers keep running."""
    from contained.runtime.container import Runner

    Runner.close_shared()
