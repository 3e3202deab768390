"""A real classroom: JupyterHub on 127.0.0.1, two throwaway students, cells over the kernel
websocket, then nothing left behind.

The hub runs with the config `contained classroom init` writes (PAM, `ContainedSpawner`),
plus a test service whose API token spawns the servers and reaches them through the proxy. Each
student's kernel runs ``%%container`` cells rootless in their own delegated cgroup. Needs root
(users, the hub), JupyterHub (PyPI) and configurable-http-proxy (npm): `scripts/setup.sh
--install-only` installs both; without them the test is skipped with the reason.
"""

import json
import os
import pwd
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import kill_processes_of, needs_root, processes_of

from contained import home as homes
from contained.classroom import delegation, hub
from contained.runtime import cgroups
from contained.runtime.cgroups.host import roots

pytestmark = [pytest.mark.hub, pytest.mark.slow, needs_root]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _missing() -> str | None:
    try:
        import jupyterhub  # noqa: F401
        import requests  # noqa: F401
        import websocket  # noqa: F401
    except ImportError as error:
        return f"needs {error.name} (PyPI): run scripts/setup.sh --install-only"
    if not Path(hub.proxy_command()).exists():
        return "needs configurable-http-proxy (npm): run scripts/setup.sh --install-only"
    if not (VENV_BIN / "jupyterhub-singleuser").exists():
        return "needs jupyterhub-singleuser beside this Python"
    if subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                      capture_output=True).returncode != 0:
        return "user namespaces are disabled here (contained doctor says how to enable)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Classroom:
    """Two students, a Unix group, a hub and its ports: made, then every trace removed."""

    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix="contained-hub-"))
        self.dir.chmod(0o711)  # students pass through to their homes
        self.group = f"ctg{self.tag}"
        self.students = [f"cta{self.tag}", f"ctb{self.tag}"]
        self.passwords = {name: secrets.token_urlsafe(12) for name in self.students}
        self.token = secrets.token_hex(32)
        self.port, self.hub_port, self.proxy_port = free_port(), free_port(), free_port()
        self.process = None
        self.uids: list[int] = []

    # the machine

    def add_students(self) -> None:
        subprocess.run(["groupadd", self.group], check=True)
        homes = self.dir / "home"
        homes.mkdir(mode=0o711)
        for name in self.students:
            home = homes / name
            subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                            "/bin/sh", "--groups", self.group, name], check=True)
            home.chmod(0o700)  # Debian's useradd -m made it 0755
            subprocess.run(["chpasswd"], input=f"{name}:{self.passwords[name]}\n", text=True,
                           check=True)
            self.uids.append(pwd.getpwnam(name).pw_uid)

    def start_hub(self) -> None:
        env = dict(os.environ, **{delegation.CONFIG_ENV: str(self.dir / "classroom.json"),
                                  "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"})
        env.pop(cgroups.PARENT_ENV, None)  # students' containers go under their own groups
        os.environ[delegation.CONFIG_ENV] = env[delegation.CONFIG_ENV]
        delegation.save_budget(delegation.Budget(memory="1G", pids=400))
        # the venv's Python may live under /root (pyenv): students run the system one, with
        # the venv's packages, as tests/test_rootless.py does
        config = hub.write_config(self.dir / "hub", port=self.port, group=self.group,
                                  python=str(SYSTEM_PYTHON))
        with config.open("a") as extra:
            python_path = f"{ROOT}:{site.getsitepackages()[0]}"
            extra.write(f"""
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_port}"
c.JupyterHub.services = [{{"name": "contained-test", "api_token": {self.token!r}}}]
c.JupyterHub.load_roles = [{{"name": "contained-test", "services": ["contained-test"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"]}}]
c.Spawner.environment = {{"PYTHONPATH": {python_path!r}}}
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 90
""")
        self.log = (self.dir / "hub.log").open("w")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(config)], cwd=self.dir / "hub", env=env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.answers():  # the proxy listens first; the hub's routes come after
            assert self.process.poll() is None, self.hub_log()
            assert time.monotonic() < deadline, "the hub did not start\n" + self.hub_log()
            time.sleep(0.1)

    def answers(self) -> bool:
        import requests

        try:
            return self.api("GET", "/hub/api/").status_code == 200
        except requests.ConnectionError:
            return False

    def hub_log(self) -> str:
        return (self.dir / "hub.log").read_text()[-4000:]

    # the REST API

    def api(self, method: str, path: str, **kwargs):
        import requests

        return requests.request(method, f"http://127.0.0.1:{self.port}{path}",
                                headers={"Authorization": f"token {self.token}"}, timeout=60,
                                **kwargs)

    def login(self, name: str, password: str) -> int:
        """A PAM login through the hub's form: the status of the POST (302 = logged in)."""
        import requests

        session = requests.Session()
        session.get(f"http://127.0.0.1:{self.port}/hub/login", timeout=30)
        answer = session.post(f"http://127.0.0.1:{self.port}/hub/login?next=",
                              data={"username": name, "password": password,
                                    "_xsrf": session.cookies.get("_xsrf", "")},
                              allow_redirects=False, timeout=30)
        return answer.status_code

    def spawn(self, name: str) -> float:
        started = time.monotonic()
        self.api("POST", f"/hub/api/users/{name}")  # 201, or 409 if a login made them
        answer = self.api("POST", f"/hub/api/users/{name}/server")
        assert answer.status_code in (201, 202), answer.text + self.hub_log()
        deadline = time.monotonic() + 90
        while True:
            user = self.api("GET", f"/hub/api/users/{name}").json()
            server = user.get("servers", {}).get("")
            if server and server.get("ready"):
                return time.monotonic() - started
            assert time.monotonic() < deadline, f"{name}'s server never got ready\n" + \
                self.hub_log()
            time.sleep(0.2)

    def stop_server(self, name: str) -> None:
        self.api("DELETE", f"/hub/api/users/{name}/server")
        deadline = time.monotonic() + 30
        while self.api("GET", f"/hub/api/users/{name}").json().get("servers"):
            assert time.monotonic() < deadline, self.hub_log()
            time.sleep(0.2)

    # the end

    def stop_hub(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            self.log.close()

    def remove_students(self) -> None:
        for uid in self.uids:
            kill_processes_of(uid)
        for name in self.students:
            try:
                delegation.undelegate(name)
            except delegation.DelegationError:
                pass  # never made
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        subprocess.run(["groupdel", self.group], capture_output=True)
        os.environ.pop(delegation.CONFIG_ENV, None)
        shutil.rmtree(self.dir, ignore_errors=True)


class Kernel:
    """A kernel in a student's server, driven over its websocket as JupyterLab does."""

    def __init__(self, classroom: Classroom, name: str):
        import websocket

        self.classroom, self.name = classroom, name
        answer = classroom.api("POST", f"/user/{name}/api/kernels", json={"name": "python3"})
        assert answer.status_code == 201, answer.text
        self.id = answer.json()["id"]
        self.socket = websocket.create_connection(
            f"ws://127.0.0.1:{classroom.port}/user/{name}/api/kernels/{self.id}/channels",
            header=[f"Authorization: token {classroom.token}"], timeout=120)
        self.session = uuid.uuid4().hex

    def run(self, code: str, timeout: float = 120) -> dict:
        """Execute a cell; its stream text, its error (ename, evalue) and the time it took."""
        msg_id = uuid.uuid4().hex
        self.socket.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.name, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": False},
        }))
        started = time.monotonic()
        out = {"text": "", "error": None, "status": None}
        idle = replied = False
        while not (idle and replied):
            assert time.monotonic() - started < timeout, f"cell timed out: {code!r}: {out}"
            message = json.loads(self.socket.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                out["text"] += content["text"]
            elif kind in ("execute_result", "display_data"):
                out["text"] += content["data"].get("text/plain", "") + "\n"
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_reply":
                out["status"] = content["status"]
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        out["seconds"] = round(time.monotonic() - started, 3)
        return out

    def close(self) -> None:
        self.socket.close()
        self.classroom.api("DELETE", f"/user/{self.name}/api/kernels/{self.id}")


COUNT_FORKS = "n=0; while :; do sleep 60 & n=$((n+1)); echo $n; done"


def student_session(kernel: Kernel, letter: str) -> dict:
    """The cells a student runs; each cell's result by name."""
    cells = {
        "load": "%load_ext contained",
        "import": "from contained.images.store import Store\n"
                  "from contained.images.busybox import import_busybox\n"
                  "_ = import_busybox(Store())",
        "throwaway": "%%container busybox\necho throwaway $(id -u)",
        "keep": f"%%container busybox --name keep-{letter}\necho kept-{letter} > /root/f",
        "kept": f"%%container busybox --name keep-{letter}\ncat /root/f",
        "failing": "%%container busybox\necho before; exit 3",
        "after": "%%container busybox\necho after",
        "pids": f"%%container busybox --pids-limit 20 --no-raise-error\n{COUNT_FORKS}",
        "memory": '%%container busybox -m 16M\nx=$(head -c 64000000 /dev/zero | tr "\\0" a)',
        "plain": "%%container busybox\necho plain",
        "bridge": "%%container busybox --net bridge\necho bridged",  # needs root: one line
        "last": "%%container busybox\necho last",
    }
    return {key: kernel.run(code) for key, code in cells.items()}


def test_two_students_share_a_hub_each_rootless_in_their_own_cgroup():
    missing = _missing()
    if missing:
        pytest.skip(missing)
    started = time.monotonic()
    classroom = Classroom()
    kernels: list[Kernel] = []
    timings = {}
    try:
        classroom.add_students()
        a, b = classroom.students
        classroom.start_hub()
        timings["hub"] = round(time.monotonic() - started, 1)
        assert classroom.login(a, classroom.passwords[a]) == 302  # PAM, the real password
        assert classroom.login(a, "wrong" + classroom.passwords[a]) != 302
        timings["spawn"] = [round(classroom.spawn(name), 1) for name in (a, b)]
        kernels = [Kernel(classroom, a), Kernel(classroom, b)]
        results = {name: student_session(kernel, letter)
                   for name, kernel, letter in zip((a, b), kernels, "ab", strict=True)}
        for name, letter in zip((a, b), "ab", strict=True):
            cells = results[name]
            for key in ("load", "import", "throwaway", "keep", "kept", "after", "plain"):
                assert cells[key]["error"] is None, (name, key, cells[key])
            assert cells["throwaway"]["text"] == "throwaway 0\n"  # root inside, rootless
            assert cells["kept"]["text"] == f"kept-{letter}\n"
            assert cells["failing"]["error"] and "3" in cells["failing"]["error"]
            assert "\n" not in cells["failing"]["error"]
            assert cells["after"]["text"] == "after\n"
            counted = [int(x) for x in cells["pids"]["text"].split() if x.isdigit()]
            assert "can't fork" in cells["pids"]["text"] and max(counted) < 20, cells["pids"]
            assert cells["memory"]["error"] and "memory" in cells["memory"]["error"], \
                cells["memory"]
            bridge = cells["bridge"]
            assert bridge["status"] == "error" and "Traceback" not in bridge["text"], bridge
            assert "--net bridge needs root" in bridge["text"] + str(bridge["error"]), bridge
            assert cells["last"]["text"] == "last\n", cells["last"]
        timings["cells"] = {name: {key: cell["seconds"] for key, cell in cells.items()}
                            for name, cells in results.items()}
        # neither student reaches the other's containers
        ka, kb = kernels
        listed = ka.run("%container ps -a")
        assert "keep-a" in listed["text"] and "keep-b" not in listed["text"], listed
        removed = ka.run("%container rm -f keep-b")
        assert removed["status"] == "error" and "no container named 'keep-b'" in \
            removed["text"], removed
        b_pids = processes_of(classroom.uids[1])
        signalled = ka.run(f"import os\nfor pid in {b_pids}:\n"
                           "    try:\n        os.kill(pid, 0); print('reached', pid)\n"
                           "    except PermissionError: pass\n"
                           "    except ProcessLookupError: pass")
        assert "reached" not in signalled["text"], signalled
        b_home = Path(pwd.getpwnam(b).pw_dir) / ".local/share/contained"
        foreign = ka.run(
            "import subprocess, sys, os\n"
            "done = subprocess.run([sys.executable, '-m', 'contained', 'ps', '-a'],"
            f" env=dict(os.environ, CONTAINED_HOME={str(b_home)!r}),"
            " capture_output=True, text=True)\n"
            "print(done.returncode, done.stdout.count('keep-b'), done.stderr.count('Traceback'))")
        code, seen, tracebacks = foreign["text"].split()
        assert code != "0" and seen == "0" and tracebacks == "0", foreign
        assert kb.run("%container ps -a")["text"].count("keep-b") == 1
        for kernel in kernels:
            kernel.run("%container rm -f keep-" + ("a" if kernel is ka else "b"))
            kernel.close()
        kernels = []
        for name in (a, b):
            classroom.stop_server(name)
        classroom.stop_hub()
        for name, uid in zip((a, b), classroom.uids, strict=True):
            home = Path(pwd.getpwnam(name).pw_dir)
            gc = subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={pwd.getpwnam(name).pw_gid}",
                 "--clear-groups", "env", "-i", f"HOME={home}",
                 f"CONTAINED_HOME={home}/.local/share/contained",
                 "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                 f"PYTHONPATH={ROOT}:{site.getsitepackages()[0]}", str(SYSTEM_PYTHON), "-m",
                 "contained", "gc"], capture_output=True, text=True, cwd=home, timeout=60)
            assert gc.returncode == 0, gc.stderr
        # after gc, nothing under the students' containers groups, and no interface carries
        # their homes' alias (a home's bridge and veths are marked "contained home TAG"; its nft
        # table goes with its bridge)
        host = cgroups.detect()
        assert not [child for root in cgroups.delegated_roots(host) for uid in classroom.uids
                    for child in (root / cgroups.delegated_name(uid) /
                                  cgroups.DELEGATED_CONTAINERS).iterdir() if child.is_dir()]
        tags = [homes.home_tag(Path(pwd.getpwnam(name).pw_dir) / ".local/share/contained")
                for name in (a, b)]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not [tag for tag in tags if tag in links]
        timings["total"] = round(time.monotonic() - started, 1)
        print(f"\nclassroom timings: {json.dumps(timings)}")
    finally:
        for kernel in kernels:
            try:
                kernel.socket.close()
            except Exception:  # noqa: BLE001 — tearing down anyway
                pass
        classroom.stop_hub()
        uids = list(classroom.uids)
        classroom.remove_students()
    # nothing is left: processes, cgroups, listeners
    assert not any(processes_of(uid) for uid in uids)
    host = cgroups.detect()
    assert not [root / cgroups.delegated_name(uid) for root in roots(host)
                for uid in uids if (root / cgroups.delegated_name(uid)).exists()]
    for port in (classroom.port, classroom.hub_port, classroom.proxy_port):
        assert not listening(port), port
