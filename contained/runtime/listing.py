"""Listing containers from their state on disk: what `contained ps` shows.

Taught in notebook 06 ("The container magic"). The shell commands it corresponds to::

    ls $HOME/containers/                               # one directory per container
    jq .spec,.init_pid $HOME/containers/ID/state.json   # what ran, and its PID 1
    kill -0 PID && grep -q START /proc/PID/stat         # still the same process? (procfs.alive)

A module of its own so that `contained ps` (and the notebook's container table) reads state
without loading the runtime (runner, steps, seccomp, cgroups, network: ~30 ms a CLI run).
`contained.runtime.container` re-exports these.
"""

from contained import procfs
from contained.records import field, record
from contained.runtime import state
from contained.runtime.spec import ContainerSpec

__all__ = ["Container", "containers"]


@record
class Container:
    """A container as `contained ps` lists it."""

    id: str
    name: str
    image: str
    command: list[str]
    created: float
    persistent: bool
    running: bool
    init_pid: int | None = None
    spec: ContainerSpec | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return "running" if self.running else "exited"


def containers() -> list[Container]:
    """Every container with state on disk, newest first (`contained ps -a`)."""
    directory = state.containers_dir()
    if not directory.exists():
        return []
    found = []
    for entry in directory.iterdir():
        if entry.is_dir() and (data := state.read(entry.name)) is not None:
            found.append(container_from_state(data))
    return sorted(found, key=lambda c: c.created, reverse=True)


def container_from_state(data: dict) -> Container:
    spec = ContainerSpec.from_dict(data["spec"])
    if spec.persistent:
        running = procfs.alive(data.get("init_pid"), data.get("init_start_time"))
    else:
        running = any(procfs.alive(data.get(f"{who}_pid"), data.get(f"{who}_start_time"))
                      for who in ("owner", "runner", "init"))
    return Container(id=spec.id, name=spec.name, image=spec.image, command=spec.args,
                     created=data.get("created", 0.0), persistent=spec.persistent,
                     running=running, init_pid=data.get("init_pid"), spec=spec)
