"""Start-up latency of a container, against baselines measured in the same run (root only).

    sudo .venv/bin/python benchmarks/startup.py [--runs 60] [--pause 50] [--rounds 3]

From one Python process, for /bin/true in busybox:
  floor      bare `unshare --mount --uts --ipc --net --pid --fork chroot ROOT /bin/true`
  crun       `crun run` on a bundle with the same root (the runtime to beat)
  crun, no cgroup   the same with --cgroup-manager=disabled, for reference: crun's move into
             its new cgroup waits for an RCU grace period, which an idle machine makes long
  throwaway  contained.run(): overlay, all namespaces, /proc, /dev, cgroup, pivot_root, removal
  exec       contained.exec_() in a running named container
and, in forks of this process, what seccomp and the keyring add to each container: loading the
prepared default filter (target ≤ 1 ms) and joining a new session keyring.

Latency, the figure the targets are stated in (throwaway ≤ 1.0× crun, exec ≤ 1.5× the floor):
the contenders take turns, round after round, so the machine's drift hits them alike, and each
run starts after an idle pause (`--pause` ms, the same for all). The pause is where work kept
off the critical path happens — the last container's teardown, the next spare getting ready —
as it does between two notebook cells.

Back to back: throwaway and crun again, each run right after the last, so that work competes
with the next run; with the machine's busy CPU time per run (issue 15's targets: ≤ 1.0× crun
per run, ≤ 1.5× its CPU). Medians of `--rounds` rounds, the contenders taking turns: the
machine drifts by more than the differences measured.

Figures on a shared 2-core machine are noisy: read the ratios, not the milliseconds.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import back_to_back_in_turns, interleaved_medians, needs_root  # noqa: E402
from peers import remove_cgroup_parent  # noqa: E402

from contained import syscalls  # noqa: E402
from contained.images.busybox import import_busybox  # noqa: E402
from contained.images.store import Store  # noqa: E402
from contained.runtime import container, process, seccomp  # noqa: E402


def crun_bundle(root: Path, bundle: Path) -> None:
    """An OCI runtime bundle for crun running /bin/true in `root` (no terminal)."""
    bundle.mkdir()
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"] = {"path": str(root), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))


def in_a_child_ms(action) -> float:
    """Milliseconds `action` takes in a fresh fork of this process (as in a container's PID 1,
    a fork of the runner), with no_new_privs set first as PID 1 has it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            process.set_no_new_privileges()
            start = time.perf_counter()
            action()
            os.write(write_end, str(time.perf_counter() - start).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        seconds = float(result.read())
    os.waitpid(pid, 0)
    return seconds * 1000


def confinement_costs(runs: int) -> dict[str, float]:
    """What seccomp and the keyring add to each container: the filter is built and compiled
    once per runner, then loaded by each PID 1; the session keyring is one keyctl."""
    start = time.perf_counter()
    seccomp.default_filter()
    built = (time.perf_counter() - start) * 1000
    loads = sorted(in_a_child_ms(lambda: seccomp.default_filter().load()) for _ in range(runs))
    keyrings = sorted(in_a_child_ms(syscalls.join_session_keyring) for _ in range(runs))
    return {"build": built, "load": loads[runs // 2], "keyring": keyrings[runs // 2]}


def crun_namespace() -> subprocess.Popen | None:
    """crun refuses hybrid cgroup hosts; give it a mount namespace without the v2 mount."""
    unified = Path("/sys/fs/cgroup/unified")
    if not unified.is_mount():
        return None
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f"umount {unified} && exec sleep 3600"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--pause", type=float, default=50, help="idle ms before each run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="back to back: rounds of --runs runs each, contenders in turn")
    args = parser.parse_args()
    if not needs_root("startup.py"):
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="contained-bench-"))
    os.environ["CONTAINED_HOME"] = str(scratch / "home")
    # A parent of its own, removed at the end: a home's default one would outlive the home.
    parent = os.environ["CONTAINED_CGROUP_PARENT"] = f"contained-bench-startup-{os.getpid()}"
    holder = None
    runner = container.Runner()
    try:
        store = Store(scratch / "home")
        import_busybox(store)
        root = scratch / "rootfs"
        store.unpack("busybox", root)
        null = os.open(os.devnull, os.O_RDWR)
        floor_cmd = ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
                     "chroot", str(root), "/bin/true"]
        contenders = {"floor": lambda: subprocess.run(floor_cmd, check=True)}

        if shutil.which("crun"):
            crun_bundle(root, scratch / "bundle")
            holder = crun_namespace()
            time.sleep(0.2)
            prefix = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt"] if holder else []
            counter = iter(range(10**9))

            def crun(*options):
                subprocess.run([*prefix, "crun", *options, "run", "--bundle",
                                str(scratch / "bundle"), f"bench{next(counter)}"],
                               check=True, stdout=null)

            contenders["crun"] = crun
            contenders["crun, no cgroup"] = lambda: crun("--cgroup-manager=disabled")
            if prefix:
                # crun needs an nsenter wrapper on this hybrid host: measure what the wrapper
                # costs (nsenter + /bin/true, less a bare /bin/true) and take it off crun.
                contenders["wrapped"] = lambda: subprocess.run([*prefix, "/bin/true"],
                                                               check=True)
                contenders["bare"] = lambda: subprocess.run(["/bin/true"], check=True)

        contenders["throwaway"] = lambda: container.run(
            "busybox", ["/bin/true"], stdin=null, stdout=null, runner_=runner)
        container.create("busybox", name="bench", runner_=runner)
        contenders["exec"] = lambda: container.exec_(
            "bench", ["/bin/true"], stdin=null, stdout=null, runner_=runner)
        latency = interleaved_medians(contenders, args.runs, args.pause / 1000)
        container.remove("bench", force=True)

        confinement = confinement_costs(args.runs)
        in_a_row = back_to_back_in_turns(
            {what: contenders[what] for what in ("throwaway", "crun", "crun, no cgroup")
             if what in contenders}, args.runs, args.rounds)
    finally:
        runner.close()
        if holder:
            holder.kill()
            holder.wait()
        container.gc()
        shutil.rmtree(scratch, ignore_errors=True)
        remove_cgroup_parent(parent)

    # crun's figures below are net of the nsenter wrapper it needs on a hybrid-cgroup host.
    wrapper = latency.pop("wrapped", 0.0) - latency.pop("bare", 0.0)
    for what in ("crun", "crun, no cgroup"):
        if what in latency:
            latency[what] -= wrapper
    crun = latency.get("crun")
    print(f"latency: median of {args.runs}, each run after {args.pause:g} ms idle, "
          "contenders in turn")
    print(f"{'what':<28}{'ms':>8}")
    for what, ms in latency.items():
        print(f"{what:<28}{ms:>8.2f}")
    print()
    if crun:
        print(f"throwaway / crun      = {latency['throwaway'] / crun:.2f}   (target ≤ 1.0)")
        print(f"throwaway / crun, no cgroup = "
              f"{latency['throwaway'] / latency['crun, no cgroup']:.2f}")
    print(f"exec / floor          = {latency['exec'] / latency['floor']:.2f}   (target ≤ 1.5)")
    print(f"throwaway / floor     = {latency['throwaway'] / latency['floor']:.2f}")
    print(f"seccomp load per container = {confinement['load']:.2f} ms   (target ≤ 1; "
          f"median of {args.runs}; building and compiling Docker's profile, once per runner: "
          f"{confinement['build']:.1f} ms)")
    print(f"new session keyring        = {confinement['keyring']:.3f} ms")
    print()
    print(f"back to back: {args.runs} runs in a row, median of {args.rounds} rounds, "
          "contenders in turn")
    print(f"{'what':<28}{'ms/run':>8}{'busy CPU ms/run':>17}")
    for what, (wall, busy) in in_a_row.items():
        wall -= wrapper if what.startswith("crun") else 0.0
        print(f"{what:<28}{wall:>8.2f}{busy:>17.2f}")
    if "crun" in in_a_row:
        (ours, ours_cpu), (theirs, theirs_cpu) = in_a_row["throwaway"], in_a_row["crun"]
        print(f"throwaway / crun      = {ours / (theirs - wrapper):.2f} per run (target ≤ 1.0), "
              f"{ours_cpu / theirs_cpu:.2f} CPU (target ≤ 1.5; crun's includes its nsenter "
              "wrapper)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
