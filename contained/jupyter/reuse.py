"""A named container across cells: find it, and check that a cell's options fit it. Notebook 06.

``%%container busybox --name b -m 32M`` creates ``b`` on first use and runs later cells in it, as
``contained exec b`` would. What was fixed at creation (limits, hostname, volumes, network,
ports, chroot, seccomp) cannot change afterwards, so a cell asking for something else is told in
one line to remove the container first, as Docker refuses ``docker run --name b`` twice::

    contained ps -a | grep ' b$'                     (is there one, running, from which image?)
    jq .spec $CONTAINED_HOME/containers/ID/state.json   (what it was created with)
"""

from contained.errors import ContainedError
from contained.jupyter.failures import failure
from contained.runtime import container

# Options fixed when a named container is created: (option, spec field).
CREATION_OPTIONS = (("--memory", "memory"), ("--cpus", "cpus"), ("--pids-limit", "pids_limit"),
                    ("--hostname", "hostname"), ("--volume", "volumes"), ("--net", "net"),
                    ("--publish", "publish"), ("--chroot", "chroot"))


def check_reusable(existing: container.Container, args) -> None:
    """Raise if the cell asks for a creation-time option the named container lacks."""
    from contained.images.store import Store
    from contained.runtime import seccomp

    name = existing.name
    if not existing.persistent:
        raise failure(f"container {name!r} is a throwaway container started elsewhere: pick "
                      "another --name")
    if not existing.running:
        raise failure(f"container {name!r} is stopped: remove it (%container rm {name}) "
                      "to start it afresh")
    spec = existing.spec
    if _image_name(args.image) != spec.image and Store().image(args.image).name != spec.image:
        raise failure(f"container {name!r} was created from {spec.image}; remove it "
                      f"(%container rm -f {name}) to use {args.image}")
    # Normalise the cell's options exactly as creation did, then compare.
    wanted = {"memory": container._memory(args.memory), "cpus": container._cpus(args.cpus),
              "pids_limit": container._pids(args.pids_limit), "hostname": args.hostname,
              "volumes": [container.parse_volume(v) for v in args.volume] or None,
              "net": args.net, "publish": args.publish or None, "chroot": args.chroot}
    if wanted["pids_limit"] == container.UNLIMITED_PIDS and spec.pids_limit is None:
        wanted["pids_limit"] = None  # -1 asks for what the container has: no process limit
    if args.security_opt and seccomp.from_security_options(args.security_opt) != spec.seccomp:
        raise failure(f"container {name!r} was created with another seccomp profile; remove "
                      f"it (%container rm -f {name}) to change it")
    for option, field_name in CREATION_OPTIONS:
        value = wanted[field_name]
        if value is not None and value != getattr(spec, field_name):
            raise failure(f"container {name!r} was created with "
                          f"{_shown(option, getattr(spec, field_name))}; remove it "
                          f"(%container rm -f {name}) to change it")


def _image_name(image: str) -> str | None:
    """The store's name for `image` from the text alone (cheap: no store read), or None."""
    from contained.images.reference import parse_reference

    try:
        return parse_reference(image).name
    except ContainedError:
        return None


def _shown(option: str, value) -> str:
    from contained.units import format_limit

    if value in (None, [], False):
        return f"no {option}"
    if option == "--memory":
        return f"{option} {format_limit(value)}"
    if option == "--volume":
        return " ".join(f"-v {h}:{c}{':ro' if ro else ''}" for h, c, ro in value)
    if option == "--chroot":
        return option
    if isinstance(value, list):
        return " ".join(f"{option} {v}" for v in value)
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def existing_container(name: str | None) -> container.Container | None:
    if name is None:
        return None
    try:
        return container.get(name)
    except container.ContainerNotFound:
        return None
