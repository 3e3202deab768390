"""A local image registry on 127.0.0.1, so the tutorial's ``skopeo copy docker://…`` works offline.

Taught in notebooks 00 and 04. A registry is an HTTP server that stores blobs and manifests by
digest (``GET /v2/<name>/manifests/<tag>``). Debian's ``docker-registry`` is the reference
server; its packaged config listens on every interface and demands a password nobody has, so we
run it with our own::

    docker-registry serve $HOME/registry/config.yml        # 127.0.0.1:5000, storage in $HOME
    curl http://127.0.0.1:5000/v2/                          # {} once it is up
    skopeo copy --dest-tls-verify=false oci:$HOME/oci:docker.io/library/busybox:latest \\
        docker://127.0.0.1:5000/library/busybox:latest     # seed it from the store
    skopeo --registries-conf $HOME/registry/registries.conf \\
        copy docker://busybox:latest oci:busybox:latest     # docker.io, served locally

The registries.conf makes 127.0.0.1:PORT a plain-HTTP mirror of docker.io and blocks docker.io
itself: with a mirror alone, a missing image falls back to the real docker.io, which offline
means a DNS query leaving the machine and an error about registry-1.docker.io.

Every local user can reach 127.0.0.1, and this registry is the only docker.io there is: whoever
can push to it chooses what root runs as ``busybox``. So it is served **read-only** (storage
maintenance ``readonly``, deletes disabled: pushes and deletes get 405), and it is seeded before
it serves, by a writable registry that nobody else can reach: one started in a network namespace
of its own, whose loopback is private (as a user who is not root, in a user namespace too)::

    unshare --net sh -c 'ip link set lo up; docker-registry serve seed.yml & skopeo copy ...'

Read-only rather than passwords (htpasswd): the tutorial's command stays as it is (reads need no
credentials), there is no secret to store or leak over plain HTTP, and nothing, not even a
stolen password, can write to it. The owner publishes new images by restarting it
(``contained registry stop; contained registry start`` seeds it from the store again).

Another user may also hold the port first and answer ``GET /v2/``; the registry counts as ours,
and registries.conf is written, only when its process holds the listening socket itself
(``ss -ltnp 'sport = :PORT'``).

The server runs detached (its own session) and outlives the command that started it; its pid
and port are in ``$HOME/registry/state.json``. A state file whose process is gone, or is not our
registry any more (pid reuse), is stale and is removed.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from contained import isolated, procfs
from contained.errors import ContainedError
from contained.home import ensure_home, home_path
from contained.images import skopeo
from contained.images.store import Store
from contained.records import asdict, record

REGISTRY_BINARY = "docker-registry"
HOST = "127.0.0.1"
DEFAULT_PORT = 5000
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.01
SEED_TIMEOUT = 300
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp (include/net/tcp_states.h)


class RegistryMissing(ContainedError):
    """Debian's docker-registry is not installed."""


class RegistryPortBusy(ContainedError):
    """The port asked for is already in use on 127.0.0.1."""


class RegistryStartFailed(ContainedError):
    """The registry process exited or never answered GET /v2/."""


@record(frozen=True)
class RegistryState:
    """A running registry: its process, where it listens, and its files."""

    pid: int
    port: int
    directory: str
    started: float

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def registries_conf(self) -> Path:
        return Path(self.directory) / "registries.conf"

    @property
    def config(self) -> Path:
        return Path(self.directory) / "config.yml"

    @property
    def log(self) -> Path:
        return Path(self.directory) / "registry.log"


def registry_dir(home: Path | None = None) -> Path:
    return Path(home if home is not None else home_path()) / "registry"


def start(home: Path | None = None, port: int | None = None, *, seed: bool = True) -> RegistryState:
    """Start the registry (or return the one already running) and seed it with the store."""
    home = Path(home) if home is not None else home_path()
    running = status(home)
    if running is not None:
        if port is not None and port != running.port:
            raise RegistryPortBusy(f"the registry already runs on {running.address}; "
                                   f"`contained registry stop` it first to change the port")
        return running
    stop(home)  # ours, but another program holds its port now: start afresh
    directory = registry_dir(ensure_home(home))
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    if seed:
        seed_privately(home, directory / "data")
    port = _choose_port(port)
    state = RegistryState(0, port, str(directory), time.time())
    state.registries_conf.unlink(missing_ok=True)  # until our registry holds the port
    state.config.write_text(registry_config(port, directory / "data"))
    state = _launch(state)
    try:
        _wait_ready(state)
    except BaseException:
        _terminate(state.pid)
        _state_file(directory).unlink(missing_ok=True)
        raise
    state.registries_conf.write_text(registries_conf(port))
    return state


def status(home: Path | None = None) -> RegistryState | None:
    """The running registry, or None (removing a stale state file). A registry of ours whose
    port another program holds is None too: nothing may point at that port."""
    state = _recorded(home)
    return state if state is not None and _holds_port(state.pid, state.port) else None


def _recorded(home: Path | None) -> RegistryState | None:
    """The registry process the state file names, if it is still ours (else the file goes)."""
    path = _state_file(registry_dir(home))
    try:
        state = RegistryState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _is_our_registry(state):
        path.unlink(missing_ok=True)
        return None
    return state


def stop(home: Path | None = None) -> RegistryState | None:
    """Stop the registry; return what was running (None if nothing was)."""
    state = _recorded(home)
    if state is not None:
        _terminate(state.pid)
        _state_file(registry_dir(home)).unlink(missing_ok=True)
        # Whoever takes the port next would be docker.io for anyone still using this file.
        state.registries_conf.unlink(missing_ok=True)
    return state


def seed_privately(home: Path, data: Path) -> None:
    """Fill `data` with the store's tagged images, through a writable registry in a network
    namespace of its own (`seed_main` in an isolated Python, under unshare)."""
    shutil.rmtree(data, ignore_errors=True)  # serve exactly the store, nothing from before
    data.mkdir(mode=0o700)
    _copy_privately(home, data, None)


def publish(home: Path | None, source: str, target: str, *, all_images: bool = False) -> str:
    """Add one image to the running read-only registry: ``skopeo copy SOURCE`` (any skopeo
    transport, e.g. ``oci:DIR:TAG``) to ``TARGET`` (``path:tag``) through a private writable
    registry on the same storage; the read-only one serves it at once. Returns its address."""
    home = Path(home) if home is not None else home_path()
    state = status(home)
    if state is None:
        raise RegistryStartFailed("the registry is not running: `contained registry start` first")
    _copy_privately(home, Path(state.directory) / "data", [[source, target, all_images]])
    return f"{state.address}/{target}"


def _copy_privately(home: Path, data: Path, copies: list | None) -> None:
    """Run `seed_main` in a network namespace of its own: the store's images (`copies` None)
    or the given ``[source, target, all_images]`` copies go into `data`."""
    # A user namespace lets a user who is not root make the network namespace; it maps that
    # user to root, so the files written still belong to the user outside.
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    argv = ["unshare", "--net", *user, "--",
            *isolated.python_argv("contained.images.registry", "seed_main"), str(home), str(data),
            json.dumps(copies)]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=SEED_TIMEOUT, cwd="/")
    except FileNotFoundError:
        raise RegistryStartFailed("cannot seed the registry: `unshare` (util-linux) is missing; "
                                  "install util-linux") from None
    except subprocess.TimeoutExpired:
        raise RegistryStartFailed(f"seeding the registry took over {SEED_TIMEOUT} s; see "
                                  f"{data.parent / 'seeding' / 'registry.log'}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RegistryStartFailed(f"cannot seed the registry: {last}")


def _seed_here(home: Path, data: Path, copies: list | None) -> None:
    """Inside the private network namespace: start a writable registry on its loopback, push
    the store's images (or `copies`), stop it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    directory = data.parent / "seeding"
    directory.mkdir(mode=0o700, exist_ok=True)
    state = RegistryState(0, DEFAULT_PORT, str(directory), time.time())
    state.config.write_text(registry_config(DEFAULT_PORT, data, writable=True))
    state = _launch(state)
    try:
        _wait_ready(state)
        if copies is None:
            seed_from_store(state, Store(home))
        for source, target, all_images in copies or []:
            skopeo.copy(source, f"docker://{state.address}/{target}", dest_tls_verify=False,
                        action=f"cannot publish {source}", all_images=all_images,
                        dest_authfile=no_credentials(state))
    finally:
        _terminate(state.pid)
        _state_file(directory).unlink(missing_ok=True)


def no_credentials(state: RegistryState) -> Path:
    """A credentials file that does not exist, for pushes to our own registry, which needs
    none. Else skopeo reads the caller's /run/containers/UID/auth.json: rootless, UID is 0 in
    our user namespace, and that is root's directory (podman makes it 0700), so skopeo fails
    with "permission denied" where there is simply nothing to read."""
    return Path(state.directory) / "no-credentials.json"


def seed_from_store(state: RegistryState, store: Store) -> list[str]:
    """Push every tagged image of the store to the registry; return the pushed references."""
    pushed = []
    with store.lock(shared=True):
        images = store.images()  # shared flocks nest
        for image in images:
            reference = image.reference
            if not reference.tag:
                continue  # a digest-only image has no tag to push under
            target = f"{state.address}/{reference.path}:{reference.tag}"
            skopeo.copy(f"oci:{store.layout}:{image.name}", f"docker://{target}",
                        action=f"cannot seed the registry with {reference.familiar}",
                        dest_tls_verify=False, dest_authfile=no_credentials(state))
            pushed.append(target)
    return pushed


def usage(state: RegistryState) -> str:
    """How to pull through the registry, as printed by ``contained registry status``."""
    conf = state.registries_conf
    return "\n".join([
        f"registry running at {state.address} (pid {state.pid}), storage "
        f"{Path(state.directory) / 'data'}",
        "pull through it (docker.io is served by it, nothing leaves the machine):",
        f"  skopeo --registries-conf {conf} copy docker://busybox:latest oci:busybox:latest",
        f"  contained pull busybox --registries-conf {conf}",
        f"  contained pull {state.address}/library/busybox",
        "it is read-only (other users reach 127.0.0.1 too); to serve images added to the store "
        "since: contained registry stop; contained registry start",
    ])


def registry_config(port: int, storage: Path, *, writable: bool = False) -> str:
    """docker-registry's config: loopback only, storage in our home, never deletes; read-only
    unless `writable` (only the seeding registry, which nobody else can reach)."""
    return "\n".join([
        "# Written by `contained registry start`.",
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(storage))}",
        "  delete:",
        "    enabled: false",
        "  maintenance:",
        "    readonly:",
        f"      enabled: {json.dumps(not writable)}",
        "http:",
        f"  addr: {HOST}:{port}",
        "",
    ])


def registries_conf(port: int) -> str:
    """containers-registries.conf(5): 127.0.0.1:PORT mirrors docker.io, which is blocked."""
    address = f"{HOST}:{port}"
    return "\n".join([
        "# Written by `contained registry start`: docker.io images come from the local registry",
        f"# at {address} (plain HTTP); docker.io itself is blocked, so nothing leaves the machine.",
        'unqualified-search-registries = ["docker.io"]',
        "",
        "[[registry]]",
        'prefix = "docker.io"',
        'location = "docker.io"',
        "blocked = true",
        "",
        "[[registry.mirror]]",
        f'location = "{address}"',
        "insecure = true",
        "",
        "[[registry]]",
        f'location = "{address}"',
        "insecure = true",
        "",
    ])


def _state_file(directory: Path) -> Path:
    return directory / "state.json"


def _choose_port(port: int | None) -> int:
    if port is not None:
        if not _port_free(port):
            raise RegistryPortBusy(f"port {port} is in use on {HOST}; pick another with --port "
                                   f"or leave it out to get a free one")
        return port
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # The registry (Go) sets SO_REUSEADDR too: a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _launch(state: RegistryState) -> RegistryState:
    try:
        with open(state.log, "ab") as log:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(state.config)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, close_fds=True,
                # Its own session: Ctrl-C in the shell that started it must not stop it.
                start_new_session=True)
    except FileNotFoundError:
        raise RegistryMissing("docker-registry is not installed; run `apt-get install "
                              "docker-registry`") from None
    state = RegistryState(process.pid, state.port, state.directory, state.started)
    _state_file(Path(state.directory)).write_text(json.dumps(asdict(state)))
    return state


def _wait_ready(state: RegistryState) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not _process_alive(state.pid):
            raise RegistryStartFailed(f"the registry on {state.address} exited at start: "
                                      f"{_last_line(state.log)}; see {state.log}")
        if _answers(state.port) and _holds_port(state.pid, state.port):
            return
        if _listening_sockets(state.port) - _sockets_of(state.pid):
            raise RegistryStartFailed(f"another program holds {state.address}: not our "
                                      "registry, never use it; start again to get a free port")
        time.sleep(POLL_INTERVAL)
    raise RegistryStartFailed(f"the registry on {state.address} did not answer GET /v2/ within "
                              f"{READY_TIMEOUT:.0f} s; see {state.log}")


def _answers(port: int) -> bool:
    # http.client, not urllib: urllib would honour http_proxy and send this elsewhere.
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _is_our_registry(state: RegistryState) -> bool:
    """The pid is alive and still runs docker-registry with our config (pids get reused)."""
    if not _process_alive(state.pid):
        return False
    try:
        argv = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(state.config).encode() in argv and any(
        os.path.basename(arg) == REGISTRY_BINARY.encode() for arg in argv)


def _listening_sockets(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:`port` or 0.0.0.0:`port` (/proc/net/tcp)."""
    addresses = {f"{_hex_address(address)}:{port:04X}" for address in (HOST, "0.0.0.0")}
    try:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return set()
    return {row[9] for row in rows if row[1] in addresses and row[3] == TCP_LISTEN}


def _hex_address(address: str) -> str:
    # /proc/net/tcp prints the address as the kernel's 32-bit word, in this machine's order.
    return f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}"


def _sockets_of(pid: int) -> set[str]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                found.add(link[len("socket:["):-1])
    except OSError:
        pass  # gone, or a fd closed while we looked
    return found


def _holds_port(pid: int, port: int) -> bool:
    """`pid` listens on 127.0.0.1:`port`, and nothing else does."""
    listening = _listening_sockets(port)
    return bool(listening) and listening <= _sockets_of(pid)



def _process_alive(pid: int) -> bool:
    _reap(pid)
    return procfs.running(pid)


def _terminate(pid: int) -> None:
    """SIGTERM, then SIGKILL if it lingers; wait until the process is gone."""
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _process_alive(pid):
            time.sleep(POLL_INTERVAL)
        if not _process_alive(pid):
            break
    _reap(pid)


def _reap(pid: int) -> None:
    # When we started it (tests, notebooks), it is our child: collect it so no zombie is left.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:200] if lines else "no output"


def seed_main(argv: list[str]) -> int:
    """The seeding helper's entry point: ``HOME DATA COPIES`` (JSON), run by `_copy_privately`."""
    try:
        _seed_here(Path(argv[0]), Path(argv[1]), json.loads(argv[2]))
    except ContainedError as error:
        print(f"contained: error: {error}", file=sys.stderr)
        return 1
    return 0
