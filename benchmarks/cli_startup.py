"""The whole `contained` process: `run --rm busybox /bin/true` and `--help`, beside podman's.

    sudo .venv/bin/python benchmarks/cli_startup.py [--runs 20] [--pause 50]

What a user at a shell waits for: interpreter start, imports, argument parsing, the run (the
CLI forks the request's worker in-process, first thing: no second interpreter, and the worker
imports the runner while the CLI imports its own modules: `contained.runtime.ahead`), exit.
Contenders take turns, round after round, each after an idle pause; medians. For reference,
in the same run: the bare interpreter (`python -I -c pass`, the floor of any Python CLI), the
interpreter as the console script starts it (`python -c pass`: site and the venv's .pth
files), the same plus the modules the `run` process imports, `contained --help`,
`contained ps`, and `podman run --rm` where podman is installed (flags from
../shared/NOTES.md; `scripts/setup.sh --bench` installs it). The last
lines split `run --rm` into interpreter start, the CLI's own imports, and the rest (parsing,
the worker's imports beyond them, the container, exit). The issue's target: contained ≤ 0.5×
podman. Import time by module (the worker's lines come from a second process):
`python -X importtime .venv/bin/contained run --rm busybox /bin/true`.
Figures on a shared 2-core machine are noisy: read the ratios.
"""

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import interleaved_medians, needs_root  # noqa: E402
from peers import Podman, missing_peers, remove_cgroup_parent  # noqa: E402

from contained.images.busybox import import_busybox  # noqa: E402
from contained.images.store import Store  # noqa: E402

#: the console script a user runs (the venv's), else the same through `python -m contained`
_SCRIPT = Path(sys.executable).parent / "contained"
CONTAINED = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "contained"]
START = "python -c pass (the console script's start)"
IMPORTS = "python -c pass + run's imports"
#: what the `contained run` process itself imports (its worker imports the runner meanwhile),
#: then the console script's exit (no interpreter teardown)
RUN_IMPORTS = ("import os, contained.cli, contained.options, contained.runtime.ahead,"
               " contained.runtime.container, contained.runtime.relay,"
               " contained.images.store, contained.runtime.seccomp_profile; os._exit(0)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pause", type=float, default=50, help="idle ms before each run")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a directory holding another version of the contained package"
                             " (say, a copy from before a change), timed beside this one")
    args = parser.parse_args()
    if not needs_root("cli_startup.py"):
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="contained-bench-cli-"))
    parent = f"contained-bench-cli-{os.getpid()}"
    env = dict(os.environ, CONTAINED_HOME=str(scratch / "home"), CONTAINED_CGROUP_PARENT=parent)
    os.environ.update(env)
    # Byte-compiled up front, both trees alike: with PYTHONDONTWRITEBYTECODE set (or a fresh
    # copy), a tree nobody compiled pays its compilation on every run.
    trees = [Path(__file__).resolve().parent.parent, *filter(None, [args.baseline])]
    for tree in trees:
        compileall.compile_dir(tree / "contained", quiet=1)
    podman = None
    try:
        import_busybox(Store(scratch / "home"))

        def run(command):
            return lambda: subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)

        contenders = {
            "python -I -c pass": run([sys.executable, "-I", "-c", "pass"]),
            START: run([sys.executable, "-c", "pass"]),
            IMPORTS: run([sys.executable, "-c", RUN_IMPORTS]),
            "contained --help": run([*CONTAINED, "--help"]),
            "contained ps": run([*CONTAINED, "ps"]),
            "contained run --rm busybox /bin/true": run(
                [*CONTAINED, "run", "--rm", "busybox", "/bin/true"]),
        }
        if args.baseline:
            baseline = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1));"
                        " from contained.cli import main; sys.exit(main())",
                        str(args.baseline.resolve())]
            contenders["baseline: contained --help"] = run([*baseline, "--help"])
            contenders["baseline: contained ps"] = run([*baseline, "ps"])
            contenders["baseline: contained run --rm busybox /bin/true"] = run(
                [*baseline, "run", "--rm", "busybox", "/bin/true"])
        if Podman.installed():
            podman = Podman(scratch / "podman", cgroup_parent=f"/{parent}")
            podman.load_busybox()
            contenders["podman run --rm busybox /bin/true"] = run(
                podman.command("run", "--rm", "--pull", "never", "--network", "none",
                               "busybox", "/bin/true"))
        medians = interleaved_medians(contenders, args.runs, args.pause / 1000)
    finally:
        if podman:
            podman.clean()
        remove_cgroup_parent(parent)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"whole process, median of {args.runs} interleaved runs, {args.pause:g} ms idle before"
          " each")
    print(f"{'what':<50}{'ms':>8}")
    for what, ms in medians.items():
        print(f"{what:<50}{ms:>8.1f}")
    ours = medians["contained run --rm busybox /bin/true"]
    print(f"run --rm = {medians[START]:.0f} ms start + {medians[IMPORTS] - medians[START]:.0f} ms "
          f"CLI's imports + {ours - medians[IMPORTS]:.0f} ms parsing, the container and exit")
    theirs = medians.get("podman run --rm busybox /bin/true")
    if theirs:
        print(f"contained / podman = {ours / theirs:.2f}   (target ≤ 0.5)")
    before = medians.get("baseline: contained run --rm busybox /bin/true")
    if before:
        print(f"contained / baseline = {ours / before:.2f}")
    for line in missing_peers(["podman"]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
