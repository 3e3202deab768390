"""Options → a `ContainerSpec`: the image's config and the user's flags, resolved and checked.

Taught in notebook 06 (``%%container busybox --memory 32M``). Everything a run needs is decided
here, in the caller's process, before anything starts: the command (the image's Entrypoint and
Cmd, or the one given), the environment, the working directory, limits parsed into numbers,
volumes checked, a name generated if none was given. Docker does the same in its client before
it calls the daemon; in the shell it is what you would work out by hand from::

    skopeo inspect --config oci:busybox:latest     # Entrypoint, Cmd, Env, WorkingDir, User
"""

import os

from contained import names
from contained.errors import ContainedError
from contained.runtime import cgroups, process, state
from contained.runtime.spec import ContainerSpec

#: said on every --chroot run (CLI and magic): notebook 07 climbs out of such a container
CHROOT_WARNING = ("--chroot makes an escapable container: chroot, unlike pivot_root, only moves "
                  "where / starts and leaves the host's root in reach, so root inside can "
                  "chroot back out (notebook 07); use it to learn, never to isolate")


class BadOption(ContainedError):
    """An option's value is malformed (a volume, a name, a working directory...)."""


def parse_volume(text: str) -> list:
    """``HOST:CONTAINER[:ro|rw]`` → [host, container, readonly]."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise BadOption(f"invalid volume {text!r}: use HOST_PATH:CONTAINER_PATH[:ro]")
    host_path, container_path = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise BadOption(f"invalid volume mode {mode!r} in {text!r}: use ro or rw")
    if not os.path.isabs(host_path) or not os.path.isabs(container_path):
        raise BadOption(f"invalid volume {text!r}: both paths must be absolute")
    _check_volume_destination(text, container_path)
    if not os.path.exists(host_path):
        raise BadOption(f"volume source {host_path} does not exist: create it first")
    return [os.path.realpath(host_path), container_path, mode == "ro"]


def _check_volume_destination(text: str, container_path: str) -> None:
    """Docker's refusals: over the container's / it would hide the image, over /proc, /sys or
    /dev the kernel's views and the device rules. The image's symlinks are checked when the
    volume is mounted (`rootfs`); here, the path as written (``..`` taken lexically)."""
    from contained.runtime import rootfs  # the runner's: loaded only when there are volumes

    lexical = "/" + "/".join(part for part in os.path.normpath(container_path).split("/") if part)
    if lexical == "/":
        raise BadOption(f"invalid volume {text!r}: the destination can't be '/'")
    for top in rootfs.FORBIDDEN_VOLUME_PARENTS:
        if lexical == top or lexical.startswith(top + "/"):
            raise BadOption(f"invalid volume {text!r}: the destination can't be {top} or "
                            f"under it (the kernel's {top}); choose another path, e.g. /mnt")


def check_name(name: str) -> str:
    if name == "":
        raise BadOption("empty container name: give one, e.g. --name web, or leave --name out "
                        "for a generated one")
    if not names.is_valid(name):
        raise BadOption(f"invalid container name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _command(image_config, command: list[str] | None) -> list[str]:
    entrypoint = list(image_config.entrypoint or [])
    args = entrypoint + (list(command) if command else list(image_config.cmd or []))
    if not args:
        raise BadOption("no command given and the image has no Cmd: add one, e.g. `sh -c 'ls'`")
    return args


def build_spec(image: str, command: list[str] | None = None, *, name: str | None = None,
               persistent: bool = False, memory: str | int | None = None,
               cpus: str | float | None = None, pids_limit: int | None = None,
               hostname: str | None = None, env: list[str] = (), workdir: str | None = None,
               user: str | None = None, volumes: list[str] = (), net: str = "none",
               publish: list[str] = (), chroot: bool = False, security_opt: list[str] = (),
               store=None) -> ContainerSpec:
    """Resolve an image and options into a spec (pulling nothing; the image must be local).

    `security_opt` takes Docker's ``seccomp=unconfined`` and ``seccomp=FILE.json``; a FILE
    is read here, and its text goes in the spec (`contained.runtime.seccomp.from_security_options`).
    """
    from contained.images.store import Store  # the store imports the layer unpacker: load on use
    from contained.runtime import seccomp_profile as seccomp  # libseccomp is the runner's

    if net not in ("none", "host", "bridge"):
        raise BadOption(f"invalid --net {net!r}: use none, host or bridge")
    if publish and net != "bridge":
        raise BadOption("-p/--publish needs --net bridge")
    if net == "bridge" and os.geteuid() != 0:
        from contained.network import slirp  # the network package: loaded on use

        slirp.check_available()  # rootless: slirp4netns stands in for the bridge
    seccomp_profile = seccomp.from_security_options(security_opt)
    if os.geteuid() != 0 and _asks_for_limits(memory, cpus, pids_limit):
        cgroups.check_delegated()  # one line now, rather than a failed mkdir in the runner
    store = store or Store()
    resolved = store.image(image)
    config = resolved.config
    container_id = os.urandom(32).hex()  # as secrets.token_hex(32), without its imports
    working_dir = workdir or config.working_dir or "/"
    if not working_dir.startswith("/"):
        raise BadOption(f"working directory {working_dir!r} must be an absolute path")
    return ContainerSpec(
        id=container_id,
        name=check_name(name) if name is not None else _generated_name(),
        image=resolved.name,
        directory=str(state.containers_dir() / container_id),
        lowers=[str(p) for p in store.layer_dirs(resolved)],
        args=_command(config, command),
        env=process.merge_environment(config.env or [], list(env)),
        working_dir=working_dir,
        user=user if user is not None else (config.user or ""),
        hostname=hostname or container_id[:12],
        memory=_memory(memory),
        cpus=_cpus(cpus),
        pids_limit=_pids_limit(pids_limit),
        volumes=[parse_volume(v) for v in volumes],
        net=net,
        publish=list(publish),
        chroot=chroot,
        persistent=persistent,
        remove=not persistent,
        rootless=os.geteuid() != 0,
        seccomp=seccomp_profile,
    )


def _memory(value) -> int | None:
    if value is None or value == "":
        return None
    return cgroups.parse_memory(str(value))  # bytes as a number are checked the same way


def _cpus(value) -> float | None:
    if value is None or value == "":
        return None
    return cgroups.parse_cpus(str(value))


def _asks_for_limits(memory, cpus, pids_limit) -> bool:
    """Whether -m, --cpus or a --pids-limit other than -1 was given."""
    given = [value for value in (memory, cpus, pids_limit) if value not in (None, "")]
    return any(str(value) != str(UNLIMITED_PIDS) for value in given)


#: ``--pids-limit -1``: no process limit (Docker's and podman's spelling)
UNLIMITED_PIDS = -1


def _pids(value) -> int | None:
    """The --pids-limit asked for: a count, `UNLIMITED_PIDS`, or None when none was given."""
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count != UNLIMITED_PIDS and not 1 <= count <= cgroups.MAX_PIDS:
        raise BadOption(f"invalid --pids-limit {value!r}: use a whole number of processes from "
                        f"1 to {cgroups.MAX_PIDS}, or -1 for no limit")
    return count


def _pids_limit(value) -> int | None:
    """The spec's process limit (None: unlimited). Without --pids-limit, podman's default
    (`cgroups.DEFAULT_PIDS`) wherever this process can give the container a pids cgroup:
    always as root, rootless only where the tree was delegated (elsewhere a rootless container
    has no cgroup at all, and must keep running without one)."""
    count = _pids(value)
    if count is None:
        return cgroups.DEFAULT_PIDS if cgroups.can_limit("pids") else None
    return None if count == UNLIMITED_PIDS else count


_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift",
               "tidy", "vivid", "witty", "bold", "clever", "gentle", "jolly")
_SCIENTISTS = ("hopper", "lovelace", "turing", "ritchie", "thompson", "torvalds", "liskov",
               "knuth", "dijkstra", "hamilton", "curie", "noether", "shannon", "babbage")


def _generated_name() -> str:
    # os.urandom rather than `secrets`, which imports random, base64 and hmac (~5 ms of the
    # CLI's start); a name needs no more than a few unpredictable bits.
    first, second, tail = os.urandom(1)[0], os.urandom(1)[0], os.urandom(2).hex()
    return (f"{_ADJECTIVES[first % len(_ADJECTIVES)]}_"
            f"{_SCIENTISTS[second % len(_SCIENTISTS)]}_{tail}")
