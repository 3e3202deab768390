"""A class's worth of idle named containers: host memory, time to start them, `ps` (root only).

    sudo .venv/bin/python benchmarks/scale.py [-n 100] [--ps-runs 5]

Starts N idle named busybox containers (`run -d --name idleK busybox sleep 100000`) one after
another with the `contained` CLI, the way a class would, then reports:

- memory: the sum of the PSS (/proc/PID/smaps_rollup) of every process the containers keep,
  after − before. For contained that is every process in the containers' cgroups (PID 1 and
  `sleep`); for podman, the same plus its `conmon` monitors, which live outside them. PSS shares
  each page among the processes that map it, so N containers sharing busybox's pages are
  charged once for them. Also what the kernel charges the cgroups (memory.usage_in_bytes,
  page cache and kernel memory included), where the v1 memory controller is there.
- the time to start all N, and per container;
- `ps` with N running (median of a few runs).

Beside podman's figures, when podman is installed (flags from ../shared/NOTES.md;
`scripts/setup.sh --bench` installs it). The issue's target: an idle named container costs
≤ 1.5× podman's host memory. Everything runs in its own CONTAINED_HOME (under /tmp) and cgroup
parent ($CONTAINED_CGROUP_PARENT), and is removed at the end, even after an error or Ctrl-C.
Figures on a shared 2-core machine are noisy: read the ratios.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli_startup import CONTAINED  # noqa: E402
from common import needs_root  # noqa: E402
from peers import Podman, missing_peers, remove_cgroup_parent  # noqa: E402

from contained.images.busybox import import_busybox  # noqa: E402
from contained.images.store import Store  # noqa: E402
from contained.runtime.cgroups.host import detect, roots  # noqa: E402

IDLE = ["busybox", "sleep", "100000"]


def pss_kib(pid: int) -> int:
    """The process's proportional set size in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def pids_in_cgroups(parent: str) -> set[int]:
    """Every process in the cgroups under `parent`, in any tree that has it (pids, v2...)."""
    found: set[int] = set()
    for root in roots(detect()):
        top = root / parent
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                found.update(int(line) for line in procs.read_text().split())
    return found


def pids_mentioning(marker: str) -> set[int]:
    """Processes whose command line names `marker` (podman's conmon names its state dirs)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def memory_charged_kib(parent: str) -> int | None:
    """What the kernel charges the cgroups under `parent` (v1 memory, or v2 memory.current)."""
    for root in roots(detect()):
        for name in ("memory.usage_in_bytes", "memory.current"):
            path = root / parent / name
            if path.exists():
                return int(path.read_text()) // 1024
    return None


class Peer:
    """How to start, list and count one tool's idle containers."""

    name: str

    def start(self, index: int) -> None: ...
    def ps(self) -> None: ...
    def kept_pids(self) -> set[int]: ...
    def charged_kib(self) -> int | None: ...
    def clean(self) -> None: ...


class Contained(Peer):
    name = "contained"

    def __init__(self, scratch: Path):
        self.parent = f"contained-bench-scale-{os.getpid()}"
        self.env = dict(os.environ, CONTAINED_HOME=str(scratch / "home"),
                        CONTAINED_CGROUP_PARENT=self.parent)
        self.names: list[str] = []
        import_busybox(Store(scratch / "home"))

    def cli(self, *args: str) -> None:
        subprocess.run([*CONTAINED, *args], check=True, env=self.env, stdout=subprocess.DEVNULL)

    def start(self, index: int) -> None:
        self.names.append(f"idle{index}")
        self.cli("run", "-d", "--name", self.names[-1], *IDLE)

    def ps(self) -> None:
        self.cli("ps")

    def kept_pids(self) -> set[int]:
        return pids_in_cgroups(self.parent)

    def charged_kib(self) -> int | None:
        return memory_charged_kib(self.parent)

    def clean(self) -> None:
        if self.names:
            subprocess.run([*CONTAINED, "rm", "-f", *self.names], env=self.env,
                           capture_output=True)
        subprocess.run([*CONTAINED, "gc"], env=self.env, capture_output=True)
        remove_cgroup_parent(self.parent)


class PodmanPeer(Peer):
    name = "podman"

    def __init__(self, scratch: Path):
        self.parent = f"contained-bench-podman-{os.getpid()}"
        self.podman = Podman(scratch / "podman", cgroup_parent=f"/{self.parent}")
        self.podman.load_busybox()

    def start(self, index: int) -> None:
        subprocess.run(self.podman.command("run", "-d", "--name", f"idle{index}", "--pull",
                                           "never", "--network", "none", *IDLE),
                       check=True, stdout=subprocess.DEVNULL)

    def ps(self) -> None:
        subprocess.run(self.podman.command("ps"), check=True, stdout=subprocess.DEVNULL)

    def kept_pids(self) -> set[int]:
        return pids_in_cgroups(self.parent) | pids_mentioning(str(self.podman.state))

    def charged_kib(self) -> int | None:
        return memory_charged_kib(self.parent)

    def clean(self) -> None:
        self.podman.clean()
        remove_cgroup_parent(self.parent)


def measure(peer: Peer, count: int, ps_runs: int) -> dict:
    before = sum(pss_kib(pid) for pid in peer.kept_pids())
    start = time.perf_counter()
    for index in range(count):
        peer.start(index)
    started = time.perf_counter() - start
    time.sleep(1)  # let every PID 1 finish setting up and go idle
    kept = peer.kept_pids()
    after = sum(pss_kib(pid) for pid in kept)
    ps_times = []
    for _ in range(ps_runs):
        ps_start = time.perf_counter()
        peer.ps()
        ps_times.append(time.perf_counter() - ps_start)
    return {"pss_kib": after - before, "processes": len(kept), "charged_kib": peer.charged_kib(),
            "start_s": started, "ps_s": statistics.median(ps_times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100, help="containers per tool")
    parser.add_argument("--ps-runs", type=int, default=5)
    args = parser.parse_args()
    if not needs_root("scale.py"):
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="contained-bench-scale-"))
    results = {}
    peers: list[Peer] = []
    try:
        kinds = [Contained] + ([PodmanPeer] if Podman.installed() else [])
        for kind in kinds:
            peer = kind(scratch)
            peers.append(peer)
            results[peer.name] = measure(peer, args.count, args.ps_runs)
            # One tool's containers are gone before the next one's start.
            peers.remove(peer)
            peer.clean()
    finally:
        try:
            for peer in peers:
                peer.clean()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.count} idle named busybox containers (sleep), started one after another;"
          f" {os.cpu_count()} cpus")
    print(f"{'':<10}{'PSS MiB':>9}{'per ctr':>9}{'procs':>7}{'cgroup MiB':>12}"
          f"{'start s':>9}{'per ctr ms':>12}{'ps ms':>8}")
    for name, r in results.items():
        charged = f"{r['charged_kib'] / 1024:.1f}" if r["charged_kib"] is not None else "-"
        print(f"{name:<10}{r['pss_kib'] / 1024:>9.1f}{r['pss_kib'] / 1024 / args.count:>9.2f}"
              f"{r['processes']:>7}{charged:>12}{r['start_s']:>9.2f}"
              f"{r['start_s'] * 1000 / args.count:>12.0f}{r['ps_s'] * 1000:>8.0f}")
    if "podman" in results:
        ours, theirs = results["contained"], results["podman"]
        print(f"memory contained / podman = {ours['pss_kib'] / theirs['pss_kib']:.2f}"
              "   (target ≤ 1.5)")
        print(f"start  contained / podman = {ours['start_s'] / theirs['start_s']:.2f}")
        print(f"ps     contained / podman = {ours['ps_s'] / theirs['ps_s']:.2f}")
    for line in missing_peers(["podman"]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
