"""Start-up latency of a container, against baselines measured in the same run (root only).

    sudo .venv/bin/python benchmarks/startup.py [--runs 60]

From one Python process, for /bin/true in busybox:
  floor      bare `unshare --mount --uts --ipc --net --pid --fork chroot ROOT /bin/true`
  crun       `crun run` on a bundle with the same root (the runtime to beat)
  throwaway  contained.run(): overlay, all namespaces, /proc, /dev, cgroup, pivot_root, removal
  exec       contained.exec_() in a running named container
Prints medians and the ratios the targets are stated in: throwaway ≤ 1.0× crun, exec ≤ 1.5×
the floor. Figures on a shared 2-core machine are noisy: read the ratios, not the milliseconds.
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

from common import median_ms, needs_root  # noqa: E402  (benchmarks/common.py)

from contained import container  # noqa: E402
from contained.busybox import import_busybox  # noqa: E402
from contained.store import Store  # noqa: E402


def crun_bundle(root: Path, bundle: Path) -> None:
    """An OCI runtime bundle for crun running /bin/true in `root` (no terminal)."""
    bundle.mkdir()
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"] = {"path": str(root), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))


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
    args = parser.parse_args()
    if not needs_root("startup.py"):
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="contained-bench-"))
    os.environ["CONTAINED_HOME"] = str(scratch / "home")
    holder = None
    try:
        store = Store(scratch / "home")
        import_busybox(store)
        root = scratch / "rootfs"
        store.unpack("busybox", root)
        null = os.open(os.devnull, os.O_RDWR)
        floor_cmd = ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
                     "chroot", str(root), "/bin/true"]
        results = {"floor": median_ms(lambda: subprocess.run(floor_cmd, check=True), args.runs)}

        if shutil.which("crun"):
            crun_bundle(root, scratch / "bundle")
            holder = crun_namespace()
            time.sleep(0.2)
            prefix = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt"] if holder else []
            counter = iter(range(10**9))

            def crun_run():
                subprocess.run([*prefix, "crun", "run", "--bundle", str(scratch / "bundle"),
                                f"bench{next(counter)}"], check=True, stdout=null)

            results["crun"] = median_ms(crun_run, args.runs)
            if prefix:
                # crun needs an nsenter wrapper on this hybrid host: measure what the wrapper
                # costs (nsenter + /bin/true, less a bare /bin/true) and take it off crun.
                wrapped = median_ms(lambda: subprocess.run([*prefix, "/bin/true"], check=True),
                                    args.runs)
                bare = median_ms(lambda: subprocess.run(["/bin/true"], check=True), args.runs)
                results["crun (wrapper cost removed)"] = results["crun"] - (wrapped - bare)

        runner = container.Runner()
        results["throwaway"] = median_ms(
            lambda: container.run("busybox", ["/bin/true"], stdin=null, stdout=null,
                                  runner_=runner), args.runs)
        container.create("busybox", name="bench", runner_=runner)
        results["exec"] = median_ms(
            lambda: container.exec_("bench", ["/bin/true"], stdin=null, stdout=null,
                                    runner_=runner), args.runs)
        container.remove("bench", force=True)
        runner.close()
    finally:
        if holder:
            holder.kill()
            holder.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'what':<28}{'median ms':>10}")
    for what, ms in results.items():
        print(f"{what:<28}{ms:>10.2f}")
    print()
    if "crun" in results:
        crun = results.get("crun (wrapper cost removed)", results["crun"])
        print(f"throwaway / crun      = {results['throwaway'] / crun:.2f}   (target ≤ 1.0)")
    print(f"exec / floor          = {results['exec'] / results['floor']:.2f}   (target ≤ 1.5)")
    print(f"throwaway / floor     = {results['throwaway'] / results['floor']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
