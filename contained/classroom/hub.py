"""`contained classroom init`: a JupyterHub config for rootless students, and a machine check.

Part of `contained.classroom`. The config it writes is plain JupyterHub: PAM logins (the
machine's Unix accounts), the local-process spawner (each student's server runs as that
student), the hub on 127.0.0.1 (put a TLS proxy in front, or an SSH tunnel), and
`contained.classroom.jupyterhub.ContainedSpawner`, which hands each student a cgroup and starts
their server inside it. In the shell::

    contained classroom init --memory 2G --cpus 1 --pids 512   # this
    contained classroom init --dry-run                          # print it, write nothing
    jupyterhub -f /etc/jupyterhub/jupyterhub_config.py         # then start the hub

For The Littlest JupyterHub, ``init --tljh`` writes its config snippet instead: `tljh`.
"""

import os
import pwd
import shutil
import stat
import sys
from pathlib import Path

from contained.runtime import cgroups

CONFIG_NAME = "jupyterhub_config.py"
#: where scripts/setup.sh installs configurable-http-proxy (npm, a project-local prefix)
LOCAL_PROXY = Path(__file__).resolve().parents[2] / ".npm-prefix/node_modules/.bin/" \
                                                    "configurable-http-proxy"
STUDENTS_GROUP = "students"

TEMPLATE = '''\
"""JupyterHub for a contained classroom, written by `contained classroom init`.

Students log in with their Unix password (PAM). Each gets a Jupyter server running as
themselves, started in their home, inside a cgroup of their own (`contained classroom
delegate`), so `%%container` cells run rootless and `-m`, `--cpus`, `--pids-limit` work. The
budget every student's containers share is in {budget_file}.
"""

c = get_config()  # noqa: F821 — JupyterHub provides it

c.JupyterHub.bind_url = "http://127.0.0.1:{port}"  # loopback: TLS proxy or SSH tunnel in front
c.JupyterHub.authenticator_class = "pam"
# who may log in: members of this Unix group (`usermod -aG {group} ada`)
c.Authenticator.allowed_groups = {{{group!r}}}
c.Authenticator.admin_users = {admins!r}
c.JupyterHub.spawner_class = "contained.classroom.jupyterhub.ContainedSpawner"
c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
# start in the student's home: a folder named `contained` elsewhere would shadow the package
c.Spawner.notebook_dir = "~"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
'''


def write_config(directory: str | os.PathLike, port: int = 8000, admins=(),
                 group: str = STUDENTS_GROUP, state: str | os.PathLike | None = None,
                 python: str = sys.executable) -> Path:
    """Write jupyterhub_config.py into `directory` (mode 0600: it may grow secrets); the
    students' servers run `python` (every student must be able to run it)."""
    directory = Path(directory)
    text = render_config(directory, port, admins, group, state, python)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def render_config(directory: Path, port: int = 8000, admins=(), group: str = STUDENTS_GROUP,
                  state: str | os.PathLike | None = None, python: str = sys.executable) -> str:
    """The text `write_config` writes (`contained classroom init --dry-run` prints it)."""
    from contained.classroom import delegation

    return TEMPLATE.format(port=port, group=group, admins=set(admins), python=python,
                           proxy=str(proxy_command()), state=Path(state) if state else directory,
                           budget_file=delegation.config_path())


def proxy_command() -> str:
    """configurable-http-proxy: on PATH, or where scripts/setup.sh put it."""
    return shutil.which("configurable-http-proxy") or str(LOCAL_PROXY)


# --- the machine check -----------------------------------------------------------------------


def check_machine(tljh: bool = False) -> list[tuple[bool, str]]:
    """(ok, sentence) for each thing a classroom needs; a failed one says what to do. With
    `tljh`, for The Littlest JupyterHub: systemd delegates instead of us, its Python serves."""
    if tljh:
        from contained.classroom import tljh as littlest

        return [_user_namespaces(), littlest.systemd_running(), littlest.systemd_delegation(),
                _homes(), _login_defs(), littlest.contained_for_students()]
    return [_user_namespaces(), _delegation(), _homes(), _login_defs(), _hub_installed(),
            _python_for_students()]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _user_namespaces() -> tuple[bool, str]:
    if (_read("/proc/sys/user/max_user_namespaces") or "0") == "0":
        return False, ("user namespaces are off: students cannot run containers; "
                       "`sysctl -w user.max_user_namespaces=15000`")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return False, ("unprivileged user namespaces are off (Debian): "
                       "`sysctl -w kernel.unprivileged_userns_clone=1`")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return False, ("AppArmor refuses unprivileged user namespaces (Ubuntu 24.04): "
                       "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`")
    return True, "user namespaces: students can run containers without root"


def _delegation() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "run `contained classroom init` as root: delegating cgroups needs it"
    host = cgroups.detect()
    missing = [name for name in cgroups.CONTROLLERS if host.where(name) is None]
    if not cgroups.delegated_roots(host) or missing:
        return False, (f"cgroups ({host.mode}) lack {', '.join(missing) or 'a tree'}: "
                       "students' limits will not work; see `contained doctor`")
    return True, (f"cgroup delegation ({host.mode}): each student's server starts in "
                  "contained-user-UID, their containers share the budget written above")


def _student_homes() -> list[tuple[str, Path]]:
    return [(entry.pw_name, Path(entry.pw_dir)) for entry in pwd.getpwall()
            if entry.pw_uid >= 1000 and entry.pw_dir.startswith("/home/")
            and Path(entry.pw_dir).is_dir()]


def _homes() -> tuple[bool, str]:
    open_homes = [str(path) for _, path in _student_homes()
                  if stat.S_IMODE(path.stat().st_mode) & 0o077]
    if open_homes:
        return False, (f"homes others can read: {', '.join(open_homes)}: students would read "
                       f"each other's notebooks; `chmod 700 {' '.join(open_homes)}`")
    return True, "student homes are private (0700)"


def _login_defs() -> tuple[bool, str]:
    text = _read("/etc/login.defs") or ""
    modes = [line.split()[1] for line in text.splitlines()
             if line.split()[:1] == ["HOME_MODE"] and len(line.split()) > 1]
    if not modes or int(modes[-1], 8) & 0o077:
        return False, ("`useradd -m` makes homes others can read (Debian's default is 0755): "
                       "set `HOME_MODE 0700` in /etc/login.defs before adding students")
    return True, "new homes from `useradd -m` are private (HOME_MODE 0700)"


def _hub_installed() -> tuple[bool, str]:
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        return False, ("JupyterHub is not installed: `.venv/bin/pip install jupyterhub`, and "
                       "`npm install --prefix .npm-prefix configurable-http-proxy`")
    if not Path(proxy_command()).exists():
        return False, ("configurable-http-proxy is missing: "
                       "`npm install --prefix .npm-prefix configurable-http-proxy`")
    return True, "JupyterHub and configurable-http-proxy are installed"


def _python_for_students(python: str = sys.executable) -> tuple[bool, str]:
    """Students' servers run this Python: every directory on its way must let others in."""
    real = Path(os.path.realpath(python))
    closed = [str(path) for path in [*reversed(real.parents), real]
              if not stat.S_IMODE(path.stat().st_mode) & 0o001]
    if closed:
        return False, (f"students cannot run {python} ({closed[0]} is closed to others): "
                       "install into a virtualenv made from /usr/bin/python3 outside /root")
    return True, f"students can run {python}"
