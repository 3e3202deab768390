"""Overlay filesystems: read-only image layers below, one writable layer on top.

Taught in notebook 03. The tutorial's step, for a one-layer image::

    mkdir upper workdir root
    mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=workdir root

With several layers, ``lowerdir`` lists them top layer first (``lowerdir=l3:l2:l1``). Writes go
to ``upper`` (copy-up), deletions become whiteouts in ``upper``, and the layers stay untouched,
which is why every container of an image can share the same unpacked layers.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.runtime.plan import Step

# mount(2) takes its option string in one page; a long lowerdir list (an image with many layers
# in a deep directory) must not exceed it. Relative paths from a common parent keep it short.
MOUNT_OPTIONS_LIMIT = os.sysconf("SC_PAGE_SIZE") - 1


class OverlayTooLong(ContainedError):
    """The overlay mount options do not fit in a page, even with relative layer paths."""


def overlay_options(lowers: list[Path], upper: Path, work: Path) -> tuple[str, Path | None]:
    """The mount option string, and the directory to chdir into for relative paths (or None).

    `lowers` are bottom layer first, as images list them; overlayfs wants the top one first.
    """
    top_first = list(reversed([Path(p) for p in lowers]))
    options = _join(top_first, upper, work)
    if len(options) <= MOUNT_OPTIONS_LIMIT:
        return options, None
    # The layers normally share one cache directory: name them relative to it.
    base = Path(os.path.commonpath([*top_first, upper, work]))
    options = _join([p.relative_to(base) for p in top_first], upper.relative_to(base),
                    work.relative_to(base))
    if len(options) > MOUNT_OPTIONS_LIMIT:
        raise OverlayTooLong(
            f"overlay options for {len(lowers)} layers are {len(options)} bytes, over the "
            f"{MOUNT_OPTIONS_LIMIT}-byte limit; flatten the image with `contained unpack`")
    return options, base


def _join(lowers, upper, work) -> str:
    for path in [*lowers, upper, work]:
        # ':' separates lowerdirs and ',' separates options; overlayfs has no escaping for them.
        if any(c in str(path) for c in ":,"):
            raise ContainedError(f"overlay path {path} contains ':' or ','; move CONTAINED_HOME")
    lowerdir = ":".join(str(p) for p in lowers)
    return f"lowerdir={lowerdir},upperdir={upper},workdir={work}"


def use_fuse(rootless: bool) -> bool:
    """Whether to mount with fuse-overlayfs instead of the kernel's overlayfs.

    The kernel mounts overlayfs inside a user namespace since Linux 5.11; before that, rootless
    containers need fuse-overlayfs (a FUSE program doing the same in user space). The
    CONTAINED_OVERLAY=fuse|kernel variable overrides the choice.
    """
    choice = os.environ.get("CONTAINED_OVERLAY", "")
    if choice in ("fuse", "kernel"):
        return choice == "fuse"
    release = tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit())
    return rootless and release < (5, 11) and shutil.which("fuse-overlayfs") is not None


def mount_overlay_step(lowers: list[Path], upper: Path, work: Path, target: Path,
                       fuse: bool = False) -> Step:
    """The step that mounts the container's root filesystem."""
    options, base = overlay_options(lowers, upper, work)
    prefix = f"cd {base} && " if base else ""
    if fuse:
        return _fuse_step(options, base, target, prefix)

    def run():
        if base is None:
            syscalls.mount("overlay", str(target), "overlay", 0, options)
            return
        previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(base)
            syscalls.mount("overlay", str(target), "overlay", 0, options)
        finally:
            os.fchdir(previous)
            os.close(previous)

    return Step(f"{prefix}mount -t overlay overlay -o {options} {target}",
                "image layers read-only below, this container's changes in upper", run)


def _fuse_step(options: str, base: Path | None, target: Path, prefix: str) -> Step:
    command = ["fuse-overlayfs", "-o", options, str(target)]

    def run():
        if shutil.which("fuse-overlayfs") is None:
            raise ContainedError("fuse-overlayfs is not installed: apt-get install fuse-overlayfs")
        # It mounts, then stays in the background serving the files; it runs in the
        # container's PID namespace, so it ends with the container.
        done = subprocess.run(command, cwd=base, capture_output=True, text=True)
        if done.returncode != 0:
            raise ContainedError(f"fuse-overlayfs could not mount {target}: "
                                 f"{done.stderr.strip() or done.returncode}")

    return Step(f"{prefix}{shlex.join(command)}",
                "overlayfs in user space (FUSE), for kernels that refuse it here", run)
