"""A container's records on disk, where the CLI and every notebook kernel find them.

Taught in notebook 06 (``contained ps`` and ``gc``). Each container has a directory,
``HOME/containers/<id>/``, with its filesystem (``upper/``, ``work/``, ``root/``) and two
records, each written by whoever knows it, atomically (a temporary file renamed over):

- ``state.json``: what the container is (its spec), when it was made, and for whom (the owner's
  pid and start time): written by the caller for a named container, which must claim its name
  first, and by the runner for a throwaway one, off the caller's critical path;
- ``runner.json``: who runs it (the runner's pid, PID 1's, the cgroup used).

`contained.container` reads them for ps, stop, rm and gc; pids come with their start times
(`contained.procfs`), so a crash is told from a container that still runs.
"""

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from contained import home, procfs
from contained.spec import ContainerSpec


def containers_dir() -> Path:
    return home.home_path() / "containers"


def state_path(container_id: str) -> Path:
    return containers_dir() / container_id / "state.json"


def owner() -> dict:
    """The calling process as a container's owner: while it runs, so may the container."""
    return {"created": time.time(), "owner_pid": os.getpid(),
            "owner_start_time": procfs.start_time(os.getpid())}


def write_state(spec: ContainerSpec, **values) -> None:
    """Record `spec` with `values` (owner, init_pid, ...) on top of what was recorded."""
    path = Path(spec.directory) / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _update(path, {"spec": asdict(spec)} | values)


def write_runner(spec: ContainerSpec, **values) -> None:
    """Note who runs a container, so that `contained gc` can tell a crash."""
    _update(Path(spec.directory) / "runner.json", values)


def read(container_id: str) -> dict | None:
    """state.json with runner.json on top, or None (not recorded, or being set up)."""
    try:
        data = json.loads(state_path(container_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data | runner_record(container_id)


def runner_record(container_id: str) -> dict:
    """What the runner wrote down: its pid, PID 1's, and the cgroup it used."""
    try:
        return json.loads((containers_dir() / container_id / "runner.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _update(path: Path, values: dict) -> None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    data.update(values)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)  # never half a file, whoever reads it meanwhile
