"""The local registry: a real docker-registry on 127.0.0.1, its lifecycle, pulling through it."""

import http.client
import json
import os
import socket
import subprocess

import pytest
from conftest import free_port, needs_registry_tools

from contained.images import registry as local
from contained.images import skopeo
from contained.images.store import Store

pytestmark = needs_registry_tools


def get_v2(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status
    finally:
        connection.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def stopped_at_end(home):
    """Stops whatever registry a lifecycle test started in `home`, even when it fails."""
    yield home
    state = local.stop(home)
    assert state is None or not alive(state.pid)


def test_start_status_stop(stopped_at_end):
    home = stopped_at_end
    port = free_port()
    state = local.start(home, port, seed=False)
    assert state.port == port and alive(state.pid)
    assert get_v2(port) == 200
    saved = json.loads((home / "registry" / "state.json").read_text())
    assert (saved["pid"], saved["port"]) == (state.pid, port)
    assert f"addr: 127.0.0.1:{port}" in state.config.read_text()
    assert local.status(home) == state
    assert local.start(home) == state  # already running: the same one

    assert local.stop(home) == state
    assert not alive(state.pid)
    assert not state.registries_conf.exists()  # it would point at a port anyone may take
    assert local.status(home) is None
    assert not (home / "registry" / "state.json").exists()
    assert local.stop(home) is None


def test_start_seeds_the_store_images(busybox_store, stopped_at_end):
    state = local.start(busybox_store.home, free_port())
    expected = busybox_store.image("busybox").digest
    other = Store(busybox_store.home / "elsewhere")
    assert other.pull(f"{state.address}/library/busybox:latest").digest == expected


def test_stale_state_file_is_removed(home):
    exited = subprocess.Popen(["true"])
    exited.wait()
    directory = home / "registry"
    directory.mkdir(parents=True)
    state = local.RegistryState(exited.pid, 5999, str(directory), 0.0)
    (directory / "state.json").write_text(json.dumps(state.__dict__))
    assert local.status(home) is None
    assert not (directory / "state.json").exists()
    assert local.stop(home) is None


def test_state_naming_a_reused_pid_is_stale(home):
    """The recorded pid now belongs to another program (here: this test): never kill it."""
    directory = home / "registry"
    directory.mkdir(parents=True)
    state = {"pid": os.getpid(), "port": 5999, "directory": str(directory), "started": 0.0}
    (directory / "state.json").write_text(json.dumps(state))
    assert local.stop(home) is None
    assert alive(os.getpid())


def test_garbled_state_file_is_stale(home):
    (home / "registry").mkdir(parents=True)
    (home / "registry" / "state.json").write_text("{not json")
    assert local.status(home) is None


def test_busy_port_is_refused(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(local.RegistryPortBusy, match=f"port {port} is in use"):
            local.start(home, port)
    assert local.status(home) is None


def test_default_port_is_5000_unless_taken(home):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", local.DEFAULT_PORT))
            sock.listen()
        except OSError:
            pass  # something else already holds 5000: that is what we want
        port = local._choose_port(None)
    assert port != local.DEFAULT_PORT and 0 < port < 65536


def test_registry_listens_on_loopback_only(registry):
    assert f"addr: 127.0.0.1:{registry.port}" in registry.config.read_text()
    with open("/proc/net/tcp") as f:
        listening = [line.split()[1] for line in f.readlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{registry.port:04X}" in listening
    assert f"00000000:{registry.port:04X}" not in listening


def test_tutorial_skopeo_command_works_offline(registry, tmp_path, busybox_store):
    """The tutorial's own command, verbatim, plus --registries-conf; in the environment the
    workbook's shell cells give it (where root left /run/containers 0700, a user without a
    login session gets REGISTRY_AUTH_FILE: `skopeo.credentials_environment`)."""
    result = subprocess.run(
        ["skopeo", "--registries-conf", str(registry.registries_conf), "copy",
         "docker://busybox:latest", "oci:busybox:latest"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=skopeo.credentials_environment())
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "busybox" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == busybox_store.image("busybox").digest


def test_registries_conf_mirrors_docker_io_and_blocks_it(registry):
    text = registry.registries_conf.read_text()
    assert 'prefix = "docker.io"' in text and "blocked = true" in text
    assert f'location = "{registry.address}"' in text and "insecure = true" in text


def test_usage_prints_the_exact_skopeo_command(registry):
    text = local.usage(registry)
    assert (f"skopeo --registries-conf {registry.registries_conf} copy docker://busybox:latest "
            f"oci:busybox:latest") in text
    assert f"contained pull busybox --registries-conf {registry.registries_conf}" in text


# ---------------------------------------------------------------------------------------------
# Other local users: the registry is the only docker.io there is, so only its owner may change it.

NOBODY_CLIENT = r"""
import http.client, json, sys
port, method, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
body = None
if method == "PUT":  # the image's own manifest, under a tag of our choosing
    connection.request("GET", "/v2/library/busybox/manifests/latest", headers=headers)
    response = connection.getresponse()
    body, headers["Content-Type"] = response.read(), response.getheader("Content-Type")
connection.request(method, path, body=body, headers=headers)
print(connection.getresponse().status)
"""


def as_nobody(port: int, method: str, path: str) -> int:
    """`method` `path` sent by the user nobody (a system Python it can run, no privileges)."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs root and setpriv to act as nobody")
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
         "/usr/bin/python3", "-I", "-c", NOBODY_CLIENT, str(port), method, path],
        capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.fixture
def own_registry(busybox_store, stopped_at_end):
    """A registry of this test's own, seeded with busybox: attacks on it spoil no other test."""
    return local.start(busybox_store.home, free_port())


def manifest_digest(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("HEAD", "/v2/library/busybox/manifests/latest",
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return connection.getresponse().getheader("Docker-Content-Digest")


def test_another_user_cannot_push_or_delete(own_registry):
    port = own_registry.port
    digest = manifest_digest(port)
    assert as_nobody(port, "PUT", "/v2/library/busybox/manifests/pwned") in (401, 405)
    assert as_nobody(port, "POST", "/v2/library/busybox/blobs/uploads/") in (401, 405)
    assert as_nobody(port, "DELETE", f"/v2/library/busybox/manifests/{digest}") in (401, 405)
    assert manifest_digest(port) == digest  # still there, unchanged


def test_the_owner_pulls_what_it_seeded_and_publishes_by_restarting(own_registry,
                                                                     busybox_store):
    from contained.images import busybox

    other = Store(busybox_store.home / "elsewhere")
    address = own_registry.address
    assert other.pull(f"{address}/library/busybox:latest").digest == \
        busybox_store.image("busybox").digest
    added = busybox.import_busybox(busybox_store, "toolbox:1")
    local.stop(busybox_store.home)
    state = local.start(busybox_store.home, own_registry.port)
    assert other.pull(f"{state.address}/library/toolbox:1").digest == added.digest


def test_deletes_are_disabled_in_the_config(registry):
    text = registry.config.read_text()
    assert "delete:\n    enabled: false" in text


def test_a_registry_that_lost_its_port_is_not_used(registry, tmp_path):
    """Its pid and config match, but the port is someone else's: not ours to point at."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        state = {"pid": registry.pid, "port": sock.getsockname()[1],
                 "directory": registry.directory, "started": 0.0}
        (tmp_path / "registry").mkdir()
        (tmp_path / "registry" / "state.json").write_text(json.dumps(state))
        assert local.status(tmp_path) is None
    assert local.status(registry.directory.rpartition("/registry")[0]) == registry


def test_an_impostor_on_the_port_is_not_taken_for_our_registry(home, monkeypatch):
    """Someone answers GET /v2/ on the port first: start fails, and writes no registries.conf
    pointing there."""
    import http.server
    import threading

    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(local, "_port_free", lambda port: True)  # lost the race to it
    try:
        with pytest.raises(local.RegistryStartFailed):
            local.start(home, server.server_address[1], seed=False)
    finally:
        server.shutdown()
        server.server_close()
        local.stop(home)
    assert not (home / "registry" / "registries.conf").exists()
    assert local.status(home) is None
