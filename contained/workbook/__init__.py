"""The workbook's helpers: what the notebooks import so their cells stay short and readable.

Used by every notebook (00-08) as ``from contained import workbook`` then ``workbook.sh(...)``,
``workbook.needs_root(...)``... This module is only a facade: each name lives in the module of
its idea, and is re-exported here so that the notebooks need one import.

==================  ===============================================================  ========
module              what it holds                                                    notebook
==================  ===============================================================  ========
`lab`               privileges, ``sh``/``sh_output``/``contained``, ``%%as_root``,   all
                    ``setup`` (lab directory, magics), the rootless track, mounts
`tables`            `Table`, namespaces side by side, doctor checks, ``tree``        00 01 03
`cgroup_labs`       a cgroup made by hand, processes in it, weights, soft limits     02 05
`images`            reading an OCI layout, layer sizes, hidden bytes, ``tar_layer``  04 07
`bridge`            the bridge as it is now, ``fetch`` of a published port           08
`execute`           ``python -m contained.workbook OUT_DIR``: run every notebook     (tests)
`exercises`         checkers with graduated hints (``exercises.check_*``)            all
`capabilities`,     capability masks decoded; recorded root-run output for the       00; 00-03
`recordings`        rootless track
`figures`           the charts of notebooks 02 and 03                                02 03
==================  ===============================================================  ========

Everything here runs commands as *subprocesses* (what ``!cmd`` and ``%%bash`` do): a Jupyter
kernel is multi-threaded, so it never forks a Python child or calls unshare(2) itself. A test
that replaces a helper patches it where it is defined (``contained.workbook.lab.privileged``):
these names are copies, and the helpers do not look them up here.
"""

from contained.workbook.bridge import bridge_state, fetch
from contained.workbook.cgroup_labs import (
    cgroup_commands,
    create_cgroup,
    failed_forks,
    mean_cpu,
    sample_usage,
    start_in_cgroup,
)
from contained.workbook.execute import (
    DEFAULT_CELL_TIMEOUT,
    LAB_MARKER,
    NOTEBOOKS_DIR,
    NotALabDirectory,
    NotebookFailed,
    claim_out_dir,
    execute_all,
    execute_notebook,
    main,
    notebooks,
)
from contained.workbook.images import hidden_bytes, layer_sizes, read_blob_json, tar_layer
from contained.workbook.lab import (
    LIMIT_OPTIONS,
    UNPRIVILEGED_NOTE,
    USERNS_PREFIX,
    ShellCommandFailed,
    as_root,
    can_limit_containers,
    can_run_containers,
    contained,
    host_python_volumes,
    mounts_under,
    needs_containers,
    needs_root,
    privileged,
    rootless,
    setup,
    sh,
    sh_output,
    skip_message,
    unmount_all,
    user_namespaces,
)
from contained.workbook.tables import Table, doctor_table, namespace_links, namespace_table, tree

__all__ = [
    # lab: privileges, host commands, set-up, mounts
    "LIMIT_OPTIONS", "UNPRIVILEGED_NOTE", "USERNS_PREFIX", "ShellCommandFailed", "as_root",
    "can_limit_containers", "can_run_containers", "contained", "host_python_volumes",
    "mounts_under", "needs_containers", "needs_root", "privileged", "rootless", "setup", "sh",
    "sh_output", "skip_message", "unmount_all", "user_namespaces",
    # tables
    "Table", "doctor_table", "namespace_links", "namespace_table", "tree",
    # cgroup_labs (02)
    "cgroup_commands", "create_cgroup", "failed_forks", "mean_cpu", "sample_usage",
    "start_in_cgroup",
    # images (04, 07)
    "hidden_bytes", "layer_sizes", "read_blob_json", "tar_layer",
    # bridge (08)
    "bridge_state", "fetch",
    # execute: running the workbook
    "DEFAULT_CELL_TIMEOUT", "LAB_MARKER", "NOTEBOOKS_DIR", "NotALabDirectory", "NotebookFailed",
    "claim_out_dir", "execute_all", "execute_notebook", "main", "notebooks",
]
