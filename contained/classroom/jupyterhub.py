"""The hub's hook: each student's server starts rootless, in a cgroup of their own.

Part of `contained.classroom`, loaded by JupyterHub (which runs as root) from the config
`contained classroom init` writes::

    c.JupyterHub.spawner_class = "contained.classroom.jupyterhub.ContainedSpawner"

or, keeping the stock spawner, ``c.Spawner.pre_spawn_hook = pre_spawn_hook`` and moving each
server in afterwards (`contained classroom delegate USER --move PID`). For student ``ada``
it amounts to::

    contained classroom delegate ada                   # her groups, the classroom's budget
    CONTAINED_HOME=~ada/.local/share/contained          # her store, in her home
    echo $$ > /sys/fs/cgroup/contained-user-UID/server/cgroup.procs
    exec su ada -c jupyterhub-singleuser                # then her server, as her

The server joins her group in the child, before it drops to her uid and before it execs, so
nothing it forks (kernels, runners) can start outside.
"""

import os
import pwd

from jupyterhub.spawner import LocalProcessSpawner

from contained.classroom import delegation

HOME_SUBDIR = ".local/share/contained"


def pre_spawn_hook(spawner) -> None:
    """Before a student's server starts: hand them their cgroup (idempotent, the classroom's
    budget from /etc/contained/classroom.json) and give the server their CONTAINED_HOME."""
    account = pwd.getpwnam(spawner.user.name)
    delegation.delegate(account.pw_name)
    spawner.environment["CONTAINED_HOME"] = os.path.join(account.pw_dir, HOME_SUBDIR)


class ContainedSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose servers start inside their student's ``server`` group."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.pre_spawn_hook is None:
            self.pre_spawn_hook = pre_spawn_hook

    def make_preexec_fn(self, name):
        drop_to_user = super().make_preexec_fn(name)
        # worked out here: between fork and exec only writes to opened paths are safe
        uid = pwd.getpwnam(name).pw_uid
        procs = [str(path) for path in delegation.server_procs(uid)]

        def join_then_drop():
            for path in procs:  # as root, still: then the user's uid
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            drop_to_user()

        return join_then_drop
