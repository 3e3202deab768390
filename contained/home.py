"""Where contained keeps its state: images, unpacked layers, containers.

``CONTAINED_HOME`` if set; otherwise ``/var/lib/contained`` for root (like
``/var/lib/docker``) and ``$XDG_DATA_HOME/contained`` (``~/.local/share/contained``) for
anyone else. The directory is mode 0700: images may contain setuid binaries and device-like
files, and no unprivileged host user should be able to reach them through the store.

A home must be the caller's own, as ssh insists on a ~/.ssh of one's own: one owned by another
user, or reached through a symlink (which its owner could re-point), is refused, because
whoever controls it can swap a cached layer that root then runs. In the shell::

    stat -c %u "$CONTAINED_HOME"; id -u          # the same number, or contained refuses
    realpath "$CONTAINED_HOME"                    # the same path: no symlink on the way

Each home also has a short *tag* (a hash of its real path), which names what it owns outside
itself: its cgroup parent (`contained.runtime.cgroups`) and its bridge's interfaces
(`contained.network`), so one home never touches another's.
"""

import hashlib
import os
from pathlib import Path

from contained.errors import ContainedError


class HomeRefused(ContainedError):
    """CONTAINED_HOME belongs to another user or is reached through a symlink."""


def home_path() -> Path:
    """The store's root directory, without creating it; refused if it is not the caller's."""
    if os.environ.get("CONTAINED_HOME"):
        path = Path(os.environ["CONTAINED_HOME"]).absolute()
    elif os.geteuid() == 0:
        path = Path("/var/lib/contained")
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(xdg) / "contained"
    check_home(path)
    return path


def check_home(path: Path) -> None:
    """Refuse a home reached through a symlink or owned by another user (one line each)."""
    real = os.path.realpath(path)
    if real != os.path.normpath(path):
        raise HomeRefused(f"the store {path} is reached through a symlink (it is {real}), "
                          "which its owner could point elsewhere: set "
                          f"CONTAINED_HOME={real} if that directory is yours")
    try:
        owner = os.lstat(path).st_uid
    except FileNotFoundError:
        return  # made later by ensure_home, owned by the caller
    except PermissionError:
        raise HomeRefused(f"cannot reach the store {path}: it is inside another user's "
                          "directory; unset CONTAINED_HOME or point it at a directory of "
                          "your own") from None
    if owner != os.geteuid():
        raise HomeRefused(f"the store {path} belongs to uid {owner}, not to you (uid "
                          f"{os.geteuid()}): its owner could swap the images you run; unset "
                          "CONTAINED_HOME or point it at a directory of your own")


def home_tag(path: Path | None = None) -> str:
    """A short name for a home, the same from every process: a hash of its real path."""
    path = path or home_path()
    return hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:10]


def ensure_home(path: Path | None = None) -> Path:
    """Create the store's root (mode 0700) if needed and return it."""
    path = path or home_path()
    check_home(path)
    path.mkdir(parents=True, exist_ok=True)
    # mkdir's mode is masked by umask and ignored for an existing directory: set it explicitly.
    os.chmod(path, 0o700)
    return path
