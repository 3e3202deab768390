"""`contained classroom init --tljh`: the same classroom on The Littlest JupyterHub (TLJH).

Part of `contained.classroom`. TLJH spawns each student's server as a systemd unit
(``jupyter-NAME.service``, systemdspawner), running as the Unix user ``jupyter-NAME``, so
contained's spawner hook does not apply there. Instead, ``Delegate=yes`` makes systemd hand the
unit's cgroup to the student, and contained nests every container's group in it
(`contained.runtime.cgroups.unit`). TLJH loads every ``*.py`` in its config directory after its
own config. In the shell::

    contained classroom init --tljh --pids 512 --dry-run     # show the snippet
    contained classroom init --tljh --pids 512               # write it, check the machine
    tljh-config reload hub                                   # servers started from now on get it

The unit's own limits (``mem_limit``, ``cpu_limit``, ``TasksMax``) are the student's budget, for
their server, kernels and containers together (with `contained classroom delegate` it covers
the containers only). Limits inside the unit need a pure cgroup v2 host: on a hybrid one
systemd delegates only the unified tree, which has no controllers.
"""

import os
import subprocess
from pathlib import Path

from contained.runtime import cgroups

#: where TLJH reads extra JupyterHub config from, and our file's name in it
TLJH_CONFIG_DIR = Path("/opt/tljh/config/jupyterhub_config.d")
SNIPPET_NAME = "contained.py"
#: the Python TLJH runs every student's server with
TLJH_USER_PYTHON = Path("/opt/tljh/user/bin/python3")
PROJECT = Path(__file__).resolve().parents[2]

SNIPPET = '''\
"""contained on The Littlest JupyterHub, written by `contained classroom init --tljh`.

TLJH loads this after its own config (`sudo tljh-config reload hub` after a change). Each
student's server is a systemd unit, jupyter-NAME.service, running as the Unix user jupyter-NAME,
so `%%container` cells run rootless. Delegate=yes hands the unit's cgroup to that user:
contained nests its containers' groups inside (a pure cgroup v2 host is needed for -m, --cpus
and --pids-limit), and the unit's limits below cap the server and its containers together.
"""

import os
import pwd

c = get_config()  # noqa: F821 — JupyterHub provides it

# the unit's cgroup becomes the student's: systemd.resource-control(5), Delegate=
c.SystemdSpawner.unit_extra_properties.update({properties})
{limits}# students stay rootless: only TLJH's admins (tljh-config's users.admin) are sudoers


def _contained_home(spawner):
    # the account the unit runs as: TLJH's username_template is "jupyter-{{USERNAME}}"
    account = spawner.username_template.replace("{{USERNAME}}", spawner.user.name)
    return os.path.join(pwd.getpwnam(account).pw_dir, ".local/share/contained")


# each student's images and containers stay in their own home
c.Spawner.environment.update({{"CONTAINED_HOME": _contained_home}})
'''


def render(memory: str | None = None, cpus: str | None = None, pids: int | None = None) -> str:
    """The snippet's text; a budget left out keeps what `tljh-config set limits...` says."""
    properties = {"Delegate": "yes"}
    if pids:
        properties["TasksMax"] = str(int(pids))  # the unit's pids.max
    limits = []
    if memory:
        cgroups.parse_memory(memory)  # refuse a malformed budget before writing it
        limits.append(f'c.SystemdSpawner.mem_limit = "{memory}"  # the unit\'s memory.max')
    if cpus:
        limits.append(f"c.SystemdSpawner.cpu_limit = {cgroups.parse_cpus(str(cpus))!r}"
                      "  # the unit's cpu.max")
    return SNIPPET.format(properties=_dict_literal(properties),
                          limits="".join(line + "\n" for line in limits))


def _dict_literal(values: dict[str, str]) -> str:
    return "{" + ", ".join(f'"{key}": "{value}"' for key, value in values.items()) + "}"


def write_config(directory: str | os.PathLike = TLJH_CONFIG_DIR, **budget) -> Path:
    """Write the snippet into TLJH's config directory (mode 0600, as the hub's own config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SNIPPET_NAME
    path.touch(mode=0o600)
    path.write_text(render(**budget))
    return path


# --- what TLJH's machine needs beyond the local-process classroom's checks -------------------


def systemd_running() -> tuple[bool, str]:
    if not Path("/run/systemd/system").is_dir():
        return False, "systemd is not running here: The Littlest JupyterHub needs it"
    return True, "systemd runs: TLJH can start each student's server as a unit of its own"


def systemd_delegation() -> tuple[bool, str]:
    """Whether Delegate=yes gives students limits here: pure cgroup v2 with the controllers."""
    host = cgroups.detect()
    missing = [name for name in cgroups.CONTROLLERS if host.where(name) != "v2"]
    if host.mode != "v2" or missing:
        return False, (f"cgroups are {host.mode} here: Delegate=yes hands students only the v2 "
                       f"tree, without {', '.join(missing)}, so their containers run but -m, "
                       "--cpus and --pids-limit are refused; boot with "
                       "systemd.unified_cgroup_hierarchy=1 for pure cgroup v2")
    return True, ("cgroup v2 with memory, cpu and pids: each student's unit is theirs "
                  "(Delegate=yes), their containers' limits nest inside it")


def contained_for_students(python: Path = TLJH_USER_PYTHON) -> tuple[bool, str]:
    """Whether the Python TLJH runs students' servers with can import contained."""
    if not python.exists():
        return False, (f"The Littlest JupyterHub is not installed ({python} is missing): "
                       "install it first, then run this again")
    found = subprocess.run([str(python), "-c", "import contained"], capture_output=True)
    if found.returncode != 0:
        return False, (f"students' Python cannot import contained: `sudo {python} -m pip "
                       f"install {PROJECT}`")
    return True, f"students' servers ({python}) can import contained"
