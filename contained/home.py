"""Where contained keeps its state: images, unpacked layers, containers.

``CONTAINED_HOME`` if set; otherwise ``/var/lib/contained`` for root (like
``/var/lib/docker``) and ``$XDG_DATA_HOME/contained`` (``~/.local/share/contained``) for
anyone else. The directory is mode 0700: images may contain setuid binaries and device-like
files, and no unprivileged host user should be able to reach them through the store.
"""

import os
from pathlib import Path


def home_path() -> Path:
    """The store's root directory, without creating it."""
    if os.environ.get("CONTAINED_HOME"):
        return Path(os.environ["CONTAINED_HOME"]).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/contained")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "contained"


def ensure_home(path: Path | None = None) -> Path:
    """Create the store's root (mode 0700) if needed and return it."""
    path = path or home_path()
    path.mkdir(parents=True, exist_ok=True)
    # mkdir's mode is masked by umask and ignored for an existing directory: set it explicitly.
    os.chmod(path, 0o700)
    return path
