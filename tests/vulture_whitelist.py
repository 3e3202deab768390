"""Names vulture cannot see used: each is reached by name, by a protocol, or from outside Python.

Read by tests/test_architecture.py (``vulture contained tests/vulture_whitelist.py`` plus the
notebooks' code cells), never imported or run. Names used from the notebooks are not listed
here: the test hands vulture the notebooks' code, so a checker a notebook stops calling is
reported. A name belongs here only with the reason nothing in contained/ calls it.
"""

# ruff: noqa: B018  (bare attribute references are how vulture whitelists mark a name used)

import contained
from contained import cli, records, views
from contained.classroom import jupyterhub
from contained.images import build, registry, unpack
from contained.jupyter import failures, magics, widgets
from contained.runtime import container, namespaces, steps
from contained.workbook import exercises, lab, tables

# IPython calls these by name: %load_ext contained / %unload_ext contained.
contained.load_ipython_extension
contained.unload_ipython_extension

# Python calls a module's __getattr__ for a name it lacks (PEP 562): the CLI re-exports the
# views' table helpers that way, so that `run` never imports views.
cli.__getattr__

# IPython's display and traceback protocols: a rich HTML repr, a one-line error.
failures.ContainerFailed._render_traceback_
failures.Interrupted._render_traceback_
views.Table._repr_html_
views.Lines._repr_html_
tables.Table._repr_html_
lab.ShellCommandFailed._render_traceback_

# `%container SUBCOMMAND` dispatches with getattr(self, f"do_{args.command}").
magics.ContainerMagics.do_ps
magics.ContainerMagics.do_images
magics.ContainerMagics.do_pull
magics.ContainerMagics.do_inspect
magics.ContainerMagics.do_stats
magics.ContainerMagics.do_exec
magics.ContainerMagics.do_stop
magics.ContainerMagics.do_rm
magics.ContainerMagics.do_gc
magics.ContainerMagics.do_doctor
magics.ContainerMagics.do_dashboard
# `%container?` shows the magic's __doc__, set from help_text() after the class is built.
magics.ContainerMagics.container.__doc__

# Python itself reads these on a record's class: `case Point(x, y)`, `del`, hash().
records.record.__match_args__  # (set on each class `record` makes)
records.record.__delattr__
records.record.__hash__

# Attributes read by the library that owns the object, not by us.
build.tarfile.TarInfo.gname  # tarfile writes it into each header (emptied for reproducible layers)
unpack._VerifiedStream.tell  # tarfile reads a layer through the file protocol (tell/seek)
widgets.PullProgress.bar.bar_style  # an ipywidgets trait the front end renders (red/green bar)
exercises.shlex.whitespace_split  # shlex's switch to split like the shell, set on the lexer

# Phase hooks, called by name through Hooks.call("announce_netns") etc. (runtime/steps.py),
# set by runtime/pid1.py.
steps.Hooks.announce_netns
steps.Hooks.wait_for_cgroup
steps.Hooks.after_set_up

# JupyterHub loads it by name: c.JupyterHub.spawner_class = "contained.classroom.jupyterhub.
# ContainedSpawner", in the config `contained classroom init` writes (classroom/hub.py).
jupyterhub.ContainedSpawner

# Run by name in an isolated Python (isolated.python_argv("contained.images.registry",
# "seed_main")), under unshare, so the seeding has a network namespace of its own.
registry.seed_main

# The package's Python API, reached today only from the tests (no caller in contained/ or the
# notebooks). Kept, not deleted, because tests assert on them; the lead decides (see the report).
container.exec_  # docker exec as a function: start_exec(...).wait(), the twin of run()
namespaces.namespaces_of  # a process's namespaces by kind, for comparing host and container
