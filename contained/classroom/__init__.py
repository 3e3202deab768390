"""A classroom on one machine: many students, each rootless, each with a cgroup root handed them.

Not a notebook of its own: this is the teacher's side of notebook 02 (control groups) and 06
(the magic). Students run containers without root, in user namespaces; their limits (`-m`,
`--cpus`, `--pids-limit`) need a cgroup root delegated to them, as systemd delegates one to a
service with ``Delegate=yes``. In the shell, for student ``ada`` (uid 1001) on cgroup v2::

    mkdir -p /sys/fs/cgroup/contained-user-1001/{server,containers}
    echo +memory +cpu +pids > /sys/fs/cgroup/contained-user-1001/cgroup.subtree_control
    chown 1001 /sys/fs/cgroup/contained-user-1001/cgroup.procs
    cd /sys/fs/cgroup/contained-user-1001/containers
    chown 1001 . cgroup.procs cgroup.subtree_control cgroup.threads
    echo 2G > /sys/fs/cgroup/contained-user-1001/containers/memory.max   # her budget
    echo $SERVER_PID > /sys/fs/cgroup/contained-user-1001/server/cgroup.procs

Where each part lives: `delegation` (the groups, the budget, moving a process in, removing
them), `hub` (`contained classroom init`: the hub's config and the machine's check),
`jupyterhub` (the spawner hook the hub loads), `tljh` (the same on The Littlest JupyterHub,
where systemd delegates each student's unit: ``Delegate=yes``), `commands` (the ``contained
classroom`` CLI).
"""
