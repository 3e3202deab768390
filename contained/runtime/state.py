"""A container's record on disk, where the CLI and every notebook kernel find it.

Taught in notebook 06 (``contained ps`` and ``gc``). Each container has a directory,
``HOME/containers/<id>/``, with its filesystem (``upper/``, ``work/``, ``root/``) and its record,
``state.json``: what the container is (its spec), when it was made and for whom (the owner's pid
and start time), and who runs it (the runner's pid, PID 1's, the cgroup used). Whoever knows a
part writes it, one after the other, never at once: the caller claims a named container before
anything starts; the runner records a throwaway one (off the caller's critical path) and
itself. Each write replaces the file atomically (a temporary file renamed over).

`contained.runtime.container` reads it for ps, stop, rm and gc; pids come with their start times
(`contained.procfs`), so a crash is told from a container that still runs. In the shell::

    cat "$CONTAINED_HOME"/containers/ID/state.json    # what `contained ps -a` lists
"""

import json
import os
import time
from pathlib import Path

from contained import home, procfs
from contained.errors import ContainedError
from contained.records import asdict
from contained.runtime.spec import ContainerSpec


class StateNotWritten(ContainedError):
    """A container's record could not be written (a full disk, a read-only home...)."""


def containers_dir() -> Path:
    return home.home_path() / "containers"


def state_path(container_id: str) -> Path:
    return containers_dir() / container_id / "state.json"


def owner() -> dict:
    """The calling process as a container's owner: while it runs, so may the container."""
    return {"created": time.time(), "owner_pid": os.getpid(),
            "owner_start_time": procfs.start_time(os.getpid())}


def write_state(spec: ContainerSpec, **values) -> None:
    """Record `spec` with `values` (owner, runner, init_pid, ...) on top of what was recorded."""
    path = Path(spec.directory) / "state.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _update(path, {"spec": asdict(spec)} | values)
    except OSError as error:
        raise StateNotWritten(
            f"cannot record container {spec.name} in {path.parent.parent} ({error.strerror}): "
            f"free space there (`df -h {path.parent.parent}`, `contained gc`, `contained rmi`) "
            "or set CONTAINED_HOME to another filesystem") from None


def read(container_id: str, directory: str | None = None) -> dict | None:
    """What was recorded, or None (nothing yet: being set up, or left by a crash). With the
    container's `directory`, read there, whatever this process's home is."""
    path = Path(directory) / "state.json" if directory else state_path(container_id)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cgroup_name(container_id: str) -> str:
    """The container's cgroup: named after it, or a spare's that a runner had made ahead of
    time (then recorded as "cgroup")."""
    return (read(container_id) or {}).get("cgroup") or container_id


def _update(path: Path, values: dict) -> None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    data.update(values)
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(data))
        temporary.replace(path)  # never half a file, whoever reads it meanwhile
    except OSError:
        temporary.unlink(missing_ok=True)  # half written (a full disk): never read
        raise
