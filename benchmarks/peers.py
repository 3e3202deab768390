"""The tools users would pick instead, driven the way ../shared/NOTES.md found works here.

The benchmarks install nothing: each peer is measured when it is installed and named as
missing otherwise (`scripts/setup.sh --bench` installs them all). Every peer keeps its state
under a directory the benchmark gives it, so nothing is left on the host.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

from contained.images import build
from contained.images.busybox import IMAGE_CONFIG, busybox_rootfs

#: what `scripts/setup.sh --bench` installs, by the command each peer needs
PEER_COMMANDS = {"podman": "podman", "crun": "crun", "runc": "runc", "docker": "dockerd",
                 "catatonit": "catatonit"}


def missing_peers(wanted: list[str]) -> list[str]:
    """One line per wanted peer that is not installed, saying how to get it."""
    return [f"{peer}: not installed, not measured (`bash scripts/setup.sh --bench` installs it)"
            for peer in wanted if shutil.which(PEER_COMMANDS[peer]) is None]


class Podman:
    """Debian's podman without systemd: cgroupfs, no event log, runc (crun refuses this hybrid
    cgroup host), its storage under `state`, and ulimits below this host's hard RLIMIT_NOFILE."""

    RUN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

    def __init__(self, state: Path, cgroup_parent: str | None = None):
        self.state = Path(state)
        self.cgroup_parent = cgroup_parent

    @staticmethod
    def installed() -> bool:
        return shutil.which("podman") is not None

    def command(self, verb: str, *args: str) -> list[str]:
        command = ["podman", "--root", str(self.state / "root"), "--runroot",
                   str(self.state / "run"), "--cgroup-manager", "cgroupfs", "--events-backend",
                   "none", "--runtime", "runc", verb]
        if verb == "run":
            command += self.RUN_LIMITS
            if self.cgroup_parent:
                command += ["--cgroup-parent", self.cgroup_parent]
        return command + list(args)

    def load_busybox(self) -> None:
        """The same busybox root as `contained import busybox`, as podman's `busybox`."""
        scratch = _reference_safe_tempdir("contained-bench-podman-")
        try:
            root = busybox_rootfs(scratch / "rootfs")
            layout = scratch / "layout"
            build.build_image(layout, [build.tar_directory(root)], "busybox",
                              architecture=build.host_architecture(), config=IMAGE_CONFIG)
            pulled = subprocess.run(self.command("pull", "-q", f"oci:{layout}:busybox"),
                                    check=True, capture_output=True, text=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # podman names an image from an oci: layout after the layout's path: name it busybox.
        subprocess.run(self.command("tag", pulled.stdout.strip(), "localhost/busybox:latest"),
                       check=True)

    def clean(self) -> None:
        """Remove every container and image, then podman's state directory."""
        subprocess.run(self.command("rm", "--all", "--force", "--time", "0"),
                       capture_output=True)
        subprocess.run(self.command("system", "reset", "--force"), capture_output=True)
        # podman leaves overlay mounts under its root: unmount before deleting (an rm -rf
        # through a mounted overlay would delete through it).
        subprocess.run(["sh", "-c", f"grep -o ' {self.state}/[^ ]*' /proc/self/mounts"
                        " | sort -r | xargs -r -n1 umount -l"], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


def _reference_safe_tempdir(prefix: str) -> Path:
    """A private temporary directory whose path is a valid image reference: podman names an
    image pulled from an OCI layout after the layout's path, and mkdtemp's random part may
    hold "_" next to the prefix's "-" or three in a row (refused about once in 5 runs here).
    Still mkdtemp's, not a guessable name in /tmp: this runs as root."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        if path.name[len(prefix):].isalnum():
            return path
        path.rmdir()


def remove_cgroup_parent(parent: str) -> None:
    """rmdir the benchmark's (emptied) cgroup parent, deepest first, in every mounted tree:
    podman makes its groups in every v1 controller (blkio, cpuset...), not only ours."""
    trees = [Path("/sys/fs/cgroup")]
    trees += [tree for tree in trees[0].iterdir() if tree.is_dir() and not tree.is_symlink()]
    for tree in trees:
        top = tree / parent
        if top.is_dir():
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                path.rmdir()
            top.rmdir()
