"""The compiled seccomp filter, kept in the store's home so a run does not compile it again.

Taught in notebook 07 (safety), beside `contained.runtime.seccomp`. Compiling Docker's default
profile to BPF (libseccomp's seccomp_export_bpf) takes ~12 ms of CPU; a runner server does it
once, but every `contained run` from a shell is a new process. So the program is kept, as crun
keeps its compiled filters, in::

    $HOME/cache/seccomp-<sha256 of everything that decides the program>.bpf   # 0600, dir 0700

The name hashes the profile's rules as they apply here (parsed, after the capability, kernel
and architecture conditions), the capability set, the kernel and libseccomp versions and the
architecture: any change picks a new file. Nothing in the shell does this; the closest is::

    ls -l $HOME/cache/                       # one file per profile and capability set
    rm $HOME/cache/seccomp-*.bpf             # always safe: the next run compiles again

Why a cached program is safe to load: the home is the caller's own, mode 0700, and
`contained.home.check_home` refuses one reached through a symlink or owned by someone else, so
only the caller (or root) can write there, and whoever can write there already controls the
images the caller runs. Still a file is never trusted blindly: it ends with the SHA-256 of its
name's key and its program, so a truncated or damaged file (a crash mid-write, a full disk) is
noticed, deleted and compiled again; its length must be whole BPF instructions, at most the
kernel's limit; and the kernel itself checks the program when PID 1 loads it. Files are written
to a temporary name and renamed, so a reader sees a whole file or none.
"""

import hashlib
import os
from pathlib import Path

from contained.errors import ContainedError
from contained.home import ensure_home

__all__ = ["cache_directory", "cache_key", "read", "write"]

SOCK_FILTER_SIZE = 8             # sizeof(struct sock_filter)
BPF_MAXINSNS = 4096              # the kernel refuses longer programs
DIGEST_SIZE = hashlib.sha256().digest_size
#: bumped whenever the file's layout or the way the filter is built changes
FORMAT = "contained seccomp cache 1"


def cache_directory() -> Path | None:
    """HOME/cache (mode 0700), or None when the home cannot be used (then: no cache)."""
    try:
        directory = ensure_home() / "cache"
        directory.mkdir(mode=0o700, exist_ok=True)
        if directory.is_symlink() or not directory.is_dir():
            return None
        os.chmod(directory, 0o700)  # mkdir's mode is masked by umask
        return directory
    except (OSError, ContainedError):
        return None  # a refused home is reported by the run itself, in its own words


def cache_key(*inputs) -> str:
    """The SHA-256 of everything that decides the program (their reprs, in order)."""
    return hashlib.sha256(repr((FORMAT, *inputs)).encode()).hexdigest()


def cache_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"seccomp-{key}.bpf"


def read(directory: Path, key: str) -> bytes | None:
    """The cached program for `key`, or None if there is none or it does not check out (then
    the file is removed: the caller compiles and writes a fresh one)."""
    path = cache_path(directory, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read(BPF_MAXINSNS * SOCK_FILTER_SIZE + DIGEST_SIZE + 1)
    except OSError:
        return None
    program = _checked(data, key)
    if program is None:
        try:
            path.unlink()
        except OSError:
            pass
    return program


def _checked(data: bytes, key: str) -> bytes | None:
    program, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if not program or len(program) % SOCK_FILTER_SIZE \
            or len(program) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        return None
    if digest != _digest(key, program):
        return None
    return program


def _digest(key: str, program: bytes) -> bytes:
    return hashlib.sha256(key.encode() + b"\0" + program).digest()


def write(directory: Path, key: str, program: bytes) -> None:
    """Keep `program` for `key`: written to a temporary file (0600) and renamed into place.
    A failure (full disk, read-only home) only means the next run compiles again."""
    import tempfile  # only after a compile: most runs read the cache and never write it

    try:
        fd, temporary = tempfile.mkstemp(prefix=".seccomp-", suffix=".tmp", dir=directory)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(program + _digest(key, program))
        os.replace(temporary, cache_path(directory, key))
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
