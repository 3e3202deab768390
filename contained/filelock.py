"""The one way contained serialises processes: an flock(2) on a lock file.

Used by the image store (notebook 04), the layer cache, container names and removal (06) and
the network's leases (08). In the shell::

    flock /path/to/file.lock COMMAND          # exclusive: one holder at a time
    flock --shared /path/to/file.lock COMMAND # shared: readers together, never with a writer

An flock belongs to the open file: it is released when the descriptor is closed — or when the
kernel closes it for a process that was killed while holding it, so a crash never leaves a
lock behind. The flip side: a second open in the same process waits for the first, so code
that may nest must count its depth itself (`contained.network` does).
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["locked", "relock"]


@contextlib.contextmanager
def locked(path: Path, shared: bool = False, mode: int = 0o600) -> Iterator[int]:
    """Hold an flock on `path` (made with `mode` if missing) while the block runs; yields the
    descriptor, for `relock`. Exclusive unless `shared`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        relock(fd, shared)
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def relock(fd: int, shared: bool = False) -> None:
    """Change a held flock to exclusive or shared (waits until that is possible)."""
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
