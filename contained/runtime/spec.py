"""A container as data: everything the runner needs, resolved before any process starts.

The API (`container`, through `specs`) turns a user's options and an image into a
`ContainerSpec`; the runner (`contained.runtime.runner`), a separate single-threaded process,
turns the spec into namespaces, mounts and processes (in the order `steps` plans). The spec
crosses that process boundary as JSON, so it holds only plain values.
"""

import json

from contained.records import asdict, field, fields, record


@record
class ContainerSpec:
    """One container: its identity, root filesystem, process, limits and options."""

    id: str
    name: str
    image: str
    directory: str                   # HOME/containers/<id>: upper/, work/, root/, state.json
    lowers: list[str]                # layer directories, bottom first
    args: list[str]                  # the command, already resolved from Entrypoint/Cmd
    env: list[str]
    working_dir: str = "/"
    user: str = ""
    hostname: str = ""
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    volumes: list[list] = field(default_factory=list)   # [host, container, readonly]
    net: str = "none"
    publish: list[str] = field(default_factory=list)
    chroot: bool = False
    persistent: bool = False         # named: an init keeps the namespaces for later exec
    rootless: bool = False           # started without root: a user namespace maps us to root
    remove: bool = True              # throwaway: everything goes when the command ends
    seccomp: str = "default"         # "default", "unconfined", or a profile's JSON text
    tty: bool = False                # -t: a new pty from the container's own devpts
    tty_size: list[int] | None = None  # -t: the caller's terminal's [rows, columns]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ContainerSpec":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> "ContainerSpec":
        """From saved state; fields a newer or older version wrote are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
