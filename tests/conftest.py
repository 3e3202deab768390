"""Shared fixtures. Tests that need root are marked and skip elsewhere with the reason."""

import os
import shutil

import pytest

from contained import cgroups

IS_ROOT = os.geteuid() == 0

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
    from contained import busybox
    from contained import registry as local_registry
    from contained.store import Store

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

    from contained import registry as local_registry

    if local_registry._is_our_registry(state):
        os.kill(state.pid, signal.SIGKILL)
    try:
        os.waitpid(state.pid, 0)
    except ChildProcessError:
        pass


@pytest.fixture
def busybox_store(home):
    """A Store in the test's temporary home with busybox:latest imported from /bin/busybox."""
    from contained import busybox
    from contained.store import Store

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
    """Remove the test's cgroup parent in every tree; return what was left inside it."""
    os.environ["CONTAINED_CGROUP_PARENT"] = parent
    try:
        paths = cgroups.parent_paths()
    finally:
        del os.environ["CONTAINED_CGROUP_PARENT"]
    leftover = []
    for path in paths:
        if not path.exists():
            continue
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            leftover.append(child.name)
            try:
                child.rmdir()
            except OSError:
                pass
        try:
            path.rmdir()
        except OSError:
            pass
    return sorted(set(leftover))
