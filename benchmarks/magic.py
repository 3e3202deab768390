"""What the magic costs: a ``%%container`` cell against the bare tutorial command (root only).

    sudo .venv/bin/python benchmarks/magic.py [--runs 40]

In one IPython shell, in one run:
  bare    subprocess.run(["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
                          "chroot", ROOT, "/bin/true"]) on busybox unpacked into ROOT
  cell    a ``%%container busybox --name b`` cell running ``true`` (an exec in a running named
          container: the cell's pipes, the runner round trip, output streaming, decoding)
  fresh   a ``%%container busybox`` cell (a throwaway container per cell), for reference
Target: cell ≤ 3× bare. Also what loading the extension adds to a process (time and memory),
the issue's budget being ≤ 150 ms and ≤ 30 MB, with matplotlib and ipywidgets left unloaded.
Figures on a shared 2-core machine are noisy: read the ratios.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import median_ms, needs_root  # noqa: E402  (benchmarks/common.py)

LOAD_COST = """
import resource, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
shell.run_line_magic("load_ext", "contained")
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
heavy = [m for m in ("matplotlib", "ipywidgets") if m in sys.modules]
print(f"{elapsed * 1000:.1f} {(after - before) / 1024:.1f} {','.join(heavy) or '-'}")
"""


def load_cost() -> tuple[float, float, str]:
    """Milliseconds and MB (peak RSS growth) of `%load_ext contained`, in a fresh process."""
    results = []
    for _ in range(5):
        output = subprocess.run([sys.executable, "-I", "-c", LOAD_COST], capture_output=True,
                                text=True, check=True, cwd=Path(__file__).parent.parent)
        milliseconds, megabytes, heavy = output.stdout.split()
        results.append((float(milliseconds), float(megabytes), heavy))
    return (statistics.median(r[0] for r in results),
            statistics.median(r[1] for r in results), results[0][2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if not needs_root("magic.py"):
        return 1
    milliseconds, megabytes, heavy = load_cost()
    print(f"%load_ext contained: {milliseconds:.0f} ms, {megabytes:.1f} MB "
          f"(budget 150 ms, 30 MB); heavy modules loaded: {heavy}")

    with tempfile.TemporaryDirectory(prefix="contained-bench-") as scratch:
        home = Path(scratch) / "home"
        os.environ["CONTAINED_HOME"] = str(home)
        os.environ["CONTAINED_CGROUP_PARENT"] = f"contained-bench-{os.getpid()}"
        from IPython.core.interactiveshell import InteractiveShell

        import contained
        from contained.images.busybox import import_busybox
        from contained.images.store import Store
        from contained.runtime import cgroups, container

        store = Store(home)
        import_busybox(store)
        root = Path(scratch) / "root"
        store.unpack("busybox", root)
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "contained")
        bare = ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork",
                "chroot", str(root), "/bin/true"]
        try:
            bare_ms = median_ms(lambda: subprocess.run(bare, check=True), args.runs)
            cell_ms = median_ms(lambda: shell.run_cell_magic("container", "busybox --name b",
                                                             "true"), args.runs)
            fresh_ms = median_ms(lambda: shell.run_cell_magic("container", "busybox", "true"),
                                 max(5, args.runs // 4))
        finally:
            container.remove("b", force=True)
            contained.close_runner()
            container.gc()
            for parent in cgroups.parent_paths():
                if parent.exists():
                    parent.rmdir()
    print(f"bare unshare+chroot /bin/true:        {bare_ms:6.1f} ms")
    print(f"%%container busybox --name b (true):  {cell_ms:6.1f} ms  "
          f"= {cell_ms / bare_ms:.1f}x bare (target <= 3x)")
    print(f"%%container busybox (throwaway):      {fresh_ms:6.1f} ms  "
          f"= {fresh_ms / bare_ms:.1f}x bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
