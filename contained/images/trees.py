"""Removing an unpacked tree (a layer, a root, a container's directory) without following links.

Taught in notebook 07 ("Safety"). The shell command it equals::

    chmod -R u+rwx DIR; rm -rf DIR     # rm -rf never follows a symlink out of DIR

Its own module because the runtime removes container directories on every `contained run` and
`ps`: importing the whole layer unpacker (`contained.images.unpack`: tarfile, hashing,
decompressors, threads) only for this cost ~10 ms per command.
"""

import os
import shutil
from pathlib import Path

__all__ = ["remove_tree"]


def remove_tree(path: Path) -> None:
    """Remove an unpacked layer or root, even if it has read-only directories (unprivileged).

    Symlinks are never followed: shutil.rmtree removes a link inside the tree without
    descending into it (on Linux it walks with openat and O_NOFOLLOW, so a link swapped in
    mid-walk is not followed either), and refuses a `path` that is itself a link.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        # Only a non-root user gets here: make our own directories writable, never following
        # a symlink. Each one is opened up before it is listed (overlayfs leaves a mode-000
        # work/work behind that could not even be listed otherwise).
        _open_up(path)
        shutil.rmtree(path)


def _open_up(directory: Path) -> None:
    os.chmod(directory, 0o700)
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _open_up(Path(entry.path))
