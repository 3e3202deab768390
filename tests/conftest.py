"""Shared fixtures. Tests that need root are marked and skip elsewhere with the reason."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contained.runtime import cgroups

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root: mounts, namespaces and cgroups (CI runs as root)"
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty store in a temporary directory, used through CONTAINED_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("CONTAINED_HOME", str(path))
    return path


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


needs_registry_tools = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("docker-registry")),
    reason="needs skopeo and docker-registry (apt-get install skopeo docker-registry)",
)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real docker-registry on 127.0.0.1 (a free port), seeded with the offline busybox.

    Its own CONTAINED_HOME, so tests' stores stay empty; stopped (and killed for sure) at the end.
    """
    if not (shutil.which("skopeo") and shutil.which("docker-registry")):
        pytest.skip("needs skopeo and docker-registry (apt-get install skopeo docker-registry)")
    from contained.images import busybox
    from contained.images import registry as local_registry
    from contained.images.store import Store

    home = tmp_path_factory.mktemp("registry-home")
    busybox.import_busybox(Store(home))
    state = local_registry.start(home, port=free_port())
    try:
        yield state
    finally:
        local_registry.stop(home)
        _kill_for_sure(state)


def _kill_for_sure(state) -> None:
    """SIGKILL the registry if stop() left it running; only if the pid is still our registry."""
    import signal

    from contained.images import registry as local_registry

    if local_registry._is_our_registry(state):
        os.kill(state.pid, signal.SIGKILL)
    try:
        os.waitpid(state.pid, 0)
    except ChildProcessError:
        pass


@pytest.fixture
def busybox_store(home):
    """A Store in the test's temporary home with busybox:latest imported from /bin/busybox."""
    from contained.images import busybox
    from contained.images.store import Store

    if not os.path.exists(busybox.HOST_BUSYBOX):
        pytest.skip("needs /bin/busybox (apt-get install busybox-static)")
    store = Store(home)
    busybox.import_busybox(store)
    return store


def pytest_collection_modifyitems(session, config, items):
    """Notebook runs last: a kernel client leaves threads in this process, and tests that
    fork (process, cgroups, network) must fork a single-threaded process."""
    items.sort(key=lambda item: "/notebooks/" in str(item.fspath))


def remove_cgroup_parent(parent: str) -> list[str]:
    """Remove a test's cgroup parent in every tree; return the groups that were left inside.

    What is left is killed and removed the way `contained gc` does it (cgroups.gc), so a
    failed test cannot leave its parent behind either.
    """
    saved = os.environ.get(cgroups.PARENT_ENV)
    os.environ[cgroups.PARENT_ENV] = parent
    try:
        leftover = cgroups.gc(set())
        for path in cgroups.parent_paths():
            if path.exists():
                path.rmdir()
    finally:
        if saved is None:
            del os.environ[cgroups.PARENT_ENV]
        else:
            os.environ[cgroups.PARENT_ENV] = saved
    return leftover


def contained_cgroups() -> set[str]:
    """Every cgroup directory named contained* at a tree's top, and the groups inside them."""
    if not IS_ROOT:
        return set()
    host = cgroups.detect()
    found = set()
    for top in {host.unified, *host.v1_mounts.values()} - {None}:
        for parent in top.glob("contained*"):
            found.add(str(parent))
            found |= {str(group) for group in parent.iterdir() if group.is_dir()}
    return found


@pytest.fixture(scope="session", autouse=True)
def no_cgroup_left_behind():
    """The whole run must leave no cgroup (a test's parent, a container's, a spare's).

    Tests never use a home's default parent (``contained-TAG``, see contained.runtime.cgroups): this
    session's containers go under one of its own, ``contained-session-PID`` unless a test picks
    another, removed at the end once it is empty. A test that drops $CONTAINED_CGROUP_PARENT
    (tests/test_home.py) removes its homes' default parents itself: ``contained*`` covers them.
    """
    before = contained_cgroups()
    session_parent = f"contained-session-{os.getpid()}"
    saved = os.environ.get(cgroups.PARENT_ENV)
    os.environ[cgroups.PARENT_ENV] = session_parent
    yield
    # What this process still runs goes when it exits: close the shared runner now instead,
    # and its spare must go with it (it goes when the runner's socket closes).
    from contained.runtime.container import Runner

    Runner.close_shared()
    parents = {str(path) for path in cgroups.parent_paths()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and contained_cgroups() - before - parents:
        time.sleep(0.1)
    left = contained_cgroups() - before - parents
    if saved is None:
        del os.environ[cgroups.PARENT_ENV]
    else:
        os.environ[cgroups.PARENT_ENV] = saved
    remove_cgroup_parent(session_parent)
    assert not left, "cgroups left behind by the tests"
    assert not contained_cgroups() - before, "the session's cgroup parent is left"


@pytest.fixture(scope="module")
def busybox_home(tmp_path_factory):
    """A store holding busybox:latest, used through CONTAINED_HOME by every test of a module;
    its containers are removed and collected at the end."""
    from contained.images import busybox
    from contained.images.store import Store
    from contained.runtime import container

    path = tmp_path_factory.mktemp("home")
    previous = os.environ.get("CONTAINED_HOME")
    os.environ["CONTAINED_HOME"] = str(path)
    busybox.import_busybox(Store(path))
    yield path
    for leftover in container.containers():
        container.remove(leftover.id, force=True)
    container.gc()
    if previous is None:
        del os.environ["CONTAINED_HOME"]
    else:
        os.environ["CONTAINED_HOME"] = previous


@pytest.fixture(scope="module")
def runner_process(busybox_home):
    """One runner helper for a module, as one kernel would have."""
    from contained.runtime.container import Runner

    helper = Runner()
    yield helper
    helper.close()


def remove_cgroup_tree(parent: str) -> None:
    """rmdir a foreign tool's (emptied) cgroup parent, deepest first, in every mounted tree:
    podman makes its groups in every v1 controller (blkio, cpuset...), not only contained's."""
    from pathlib import Path

    root = Path("/sys/fs/cgroup")
    for tree in [root, *(t for t in root.iterdir() if t.is_dir() and not t.is_symlink())]:
        top = tree / parent
        if top.is_dir():
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                path.rmdir()
            top.rmdir()


def processes_of(uid: int) -> list[int]:
    """Every process the (throwaway) user with this uid runs."""
    def owner(pid: str) -> int | None:
        try:
            return os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            return None

    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and owner(entry) == uid]


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process of a throwaway user (by uid, which nothing else has) until none is
    left, for up to 5 s."""
    import signal

    for _ in range(100):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def interpreter_for_nobody() -> tuple[str, dict]:
    """A Python nobody can run, with the venv's packages: the venv's own if its interpreter is
    reachable (not under a 0700 /root, as a pyenv-made venv is), else the system's python3 of
    the same version with the venv's site-packages on PYTHONPATH."""
    reachable = subprocess.run(as_nobody(["sh", "-c", '"$0" -c pass', sys.executable]),
                               capture_output=True).returncode == 0
    if reachable:
        return sys.executable, {}
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = Path(sys.prefix) / "lib" / version / "site-packages"
    probe = subprocess.run([system or "false", "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"{sys.executable} is not reachable by nobody and there is no system "
                    f"{version}: make the venv from /usr/bin/python3")
    return system, {"PYTHONPATH": f"{site}:{REPO}"}


def user_namespaces_allowed() -> bool:
    return subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                          capture_output=True).returncode == 0


def make_student(prefix: str):
    """A throwaway Unix user (`prefix` + 6 hex digits) with a 0700 home of its own in /tmp;
    skips where user namespaces are disabled. The caller removes it (`kill_processes_of`,
    then ``userdel``)."""
    import pwd
    import secrets
    import tempfile

    if not user_namespaces_allowed():
        pytest.skip("user namespaces are disabled here (contained doctor says how to enable)")
    name = prefix + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="contained-student-"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", name], check=True)
    account = pwd.getpwnam(name)
    os.chown(home, account.pw_uid, account.pw_gid)
    home.chmod(0o700)
    return account


@pytest.fixture
def kept(busybox_home, runner_process):
    """A named busybox container of the module's home, removed afterwards."""
    import secrets

    from contained.runtime import container

    name = f"kept{os.getpid()}{secrets.token_hex(3)}"
    created = container.create("busybox", name=name, runner_=runner_process)
    yield created
    container.remove(name, force=True)


def run_capture(image, command, runner_process, **options):
    """Run a throwaway container, returning (result, stdout text, stderr text)."""
    from contained.runtime import container

    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        with open(os.devnull) as null:
            result = container.run(image, command, stdin=null, stdout=out_write,
                                   stderr=err_write, runner_=runner_process, **options)
    finally:
        os.close(out_write)
        os.close(err_write)
    with os.fdopen(out_read) as out, os.fdopen(err_read) as err:
        return result, out.read(), err.read()


def exec_capture(name, command, runner_process, **options):
    """Run `command` in the named container; (result, stdout text)."""
    from contained.runtime import container

    out_read, out_write = os.pipe()
    try:
        result = container.exec_(name, command, stdout=out_write, runner_=runner_process,
                                 **options)
    finally:
        os.close(out_write)
    with os.fdopen(out_read) as out:
        return result, out.read()
