"""The tiny C init a named container's PID 1 becomes once it is set up (`tiny_init.c`).

A spare's PID 1 runs it from birth, started by ``--launch-spare`` (`contained.runtime.spare_init`).

Taught in notebook 06. An idle named container is only its PID 1, and a copy of the runner's
Python process costs ~15 MiB of memory; podman keeps ~0.5 MiB per container (catatonit and
conmon), Docker's ``--init`` is tini. So once the container is built, PID 1 executes this small
program, which reaps, stops the container, and starts what ``exec`` sends on the container's
exec socket (`contained.runtime.served`). In shell terms::

    cc -static -Os -s -o tiny-init contained/runtime/tiny_init.c     # once
    exec tiny-init --serve-exec          # PID 1, at the end; fd 4: exec.sock, listening

Statically linked, because it runs inside the container's root, where no libc of ours is; and
executed from a descriptor opened on the host before pivot_root (``fexecve``), because its
file is out of sight afterwards. Where it comes from, the first that exists:

- ``contained/runtime/tiny-init-<sha256 of the source>`` beside this module, built at install
  time (``python -m contained.runtime.tiny_init``, which ``scripts/setup.sh`` runs);
- ``$CONTAINED_HOME/cache/tiny-init-<the same>``, compiled on first use.

The source's digest in the name means an edited source is never served by an old program.

Without a C compiler and static libc (Debian's gcc and libc6-dev), PID 1 stays Python
(`contained.runtime.init.idle`): it works the same and costs more; ``contained doctor`` says so.
A file is used only if it is owned by root or the caller and writable by nobody else: whoever
could rewrite it would run code as every container's PID 1.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from contained.runtime import seccomp_cache

SOURCE = Path(__file__).with_name("tiny_init.c")


def open_binary() -> int | None:
    """A descriptor (close-on-exec) of the compiled init, compiling it on first use; None
    where it cannot be had (then PID 1 stays Python)."""
    fd = _open_trusted(SOURCE.with_name(_file_name()))
    if fd is not None:
        return fd
    # Only now the home's cache: looking there makes the home (and its cache directory).
    cached = _cached_path()
    if cached is None:
        return None
    fd = _open_trusted(cached)
    if fd is None and _compile_once(cached):
        fd = _open_trusted(cached)
    return fd


def _compile_once(path: Path) -> bool:
    """`compile_to`, with a failure remembered beside it (``PATH.failed``: delete it to try
    again), so that a machine without a static libc does not run gcc for every container."""
    failed = path.with_name(path.name + ".failed")
    if failed.exists():
        return False
    if compile_to(path):
        return True
    failed.touch()
    return False


def _cached_path() -> Path | None:
    directory = seccomp_cache.cache_directory()
    if directory is None:
        return None
    return directory / _file_name()


def _file_name() -> str:
    return f"tiny-init-{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]}"


def _open_trusted(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    info = os.fstat(fd)
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022 or not info.st_size:
        os.close(fd)
        return None
    return fd


def compile_to(target: Path) -> bool:
    """``cc -static -Os -s -o TARGET tiny_init.c``, written under a temporary name and renamed,
    so that a concurrent reader sees the whole program or none. False without a compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return False
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        subprocess.run([compiler, "-static", "-Os", "-s", "-o", str(partial), str(SOURCE)],
                       check=True, capture_output=True, timeout=120, cwd="/")
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        return True
    except (OSError, subprocess.SubprocessError):
        partial.unlink(missing_ok=True)
        return False


def main() -> int:
    """Build the init beside this module (the install-time step)."""
    installed = SOURCE.with_name(_file_name())
    if not compile_to(installed):
        print("contained: could not compile the tiny init (needs gcc and libc6-dev); named "
              "containers keep a Python PID 1", file=sys.stderr)
        return 1
    print(f"built {installed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
