"""`contained build` beside `podman build`: a cold build and a fully cached rebuild.

    sudo .venv/bin/python benchmarks/build.py [--runs 5] [--pause 200]

The context has several RUN and COPY steps (a directory of small files, a 4 MiB file, ENV,
WORKDIR, CMD). Each contender is the whole command a user types, `contained build -t T CTX`
and `podman build -t T CTX` (flags from ../shared/NOTES.md; `scripts/setup.sh --bench` installs
podman, this script installs nothing and says so when podman is missing): cold (`--no-cache`)
and fully cached, the four taking turns round after round; medians. The issue's targets: cold
≤ 1.0× podman's cold build; cached ≤ 0.1× "podman's" — read either as podman's cold build or
as podman's own cached rebuild (the issue does not say which), so both ratios are printed.
`contained --help` is timed too: the interpreter and imports every command pays, most of a
cached rebuild. Its own CONTAINED_HOME and cgroup parent, under /tmp; all removed at the end.
Figures on a shared 2-core machine are noisy: read the ratios.
"""

import argparse
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

_SCRIPT = Path(sys.executable).parent / "contained"
CONTAINED = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "contained"]

CONTAINERFILE = """\
FROM {base}
RUN mkdir -p /app/data && echo one > /app/one
COPY app/ /app/src/
RUN cat /app/src/*.txt | wc -c > /app/size
COPY big.bin /app/big.bin
RUN sha256sum /app/big.bin > /app/big.sum
ENV MODE=bench
WORKDIR /app
RUN ls -la > listing && rm /app/one
CMD ["cat", "/app/size"]
"""
SMALL_FILES = 50
BIG_FILE_BYTES = 4 * 1024 * 1024


def write_context(path: Path) -> Path:
    """The context: one Containerfile per tool (their FROM names busybox as each stores it)."""
    (path / "app").mkdir(parents=True)
    for number in range(SMALL_FILES):
        (path / "app" / f"{number:02}.txt").write_text(f"file {number}\n" * 20)
    (path / "big.bin").write_bytes(os.urandom(BIG_FILE_BYTES))
    (path / "Containerfile").write_text(CONTAINERFILE.format(base="busybox"))
    (path / "Containerfile.podman").write_text(
        CONTAINERFILE.format(base="localhost/busybox:latest"))
    return path


def podman_build(podman: Podman, context: Path, parent: str, *extra: str) -> list[str]:
    return podman.command("build", "-q", "--network", "none", "--pull=never", *Podman.RUN_LIMITS,
                          "--cgroup-parent", f"/{parent}", "-f",
                          str(context / "Containerfile.podman"), "-t", "bench:1", *extra,
                          str(context))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=200, help="idle ms before each build")
    args = parser.parse_args()
    if not needs_root("build.py"):
        return 1
    # podman refuses a --runroot over 50 characters: keep the scratch path short.
    scratch = Path(tempfile.mkdtemp(prefix="cbld-", dir="/tmp"))
    parent = f"contained-bench-build-{os.getpid()}"
    env = dict(os.environ, CONTAINED_HOME=str(scratch / "home"), CONTAINED_CGROUP_PARENT=parent)
    os.environ.update(env)
    podman = None
    try:
        import_busybox(Store(scratch / "home"))
        context = write_context(scratch / "ctx")

        def run(command):
            return lambda: subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)

        ours = [*CONTAINED, "build", "-t", "bench:1"]
        contenders = {"contained build --no-cache": run([*ours, "--no-cache", str(context)]),
                      "contained build (cached)": run([*ours, str(context)]),
                      # the floor of any `contained` command: interpreter start and imports
                      "contained --help": run([*CONTAINED, "--help"])}
        if Podman.installed():
            podman = Podman(scratch / "podman")
            podman.load_busybox()
            contenders["podman build --no-cache"] = run(
                podman_build(podman, context, parent, "--no-cache"))
            contenders["podman build (cached)"] = run(podman_build(podman, context, parent))
        medians = interleaved_medians(contenders, args.runs, args.pause / 1000)
    finally:
        if podman:
            podman.clean()
        subprocess.run([*CONTAINED, "gc"], env=env, capture_output=True)
        remove_cgroup_parent(parent)
        shutil.rmtree(scratch, ignore_errors=True)
    report(medians, args)
    return 0


def report(medians: dict, args) -> None:
    print(f"whole `build` command, median of {args.runs} interleaved rounds, {args.pause:g} ms "
          "idle before each")
    print(f"{'what':<40}{'ms':>10}")
    for what, ms in medians.items():
        print(f"{what:<40}{ms:>10.1f}")
    cold, cached = medians["contained build --no-cache"], medians["contained build (cached)"]
    print(f"contained cached / contained cold          = {cached / cold:.3f}   (target ≤ 0.3)")
    their_cold = medians.get("podman build --no-cache")
    if their_cold:
        their_cached = medians["podman build (cached)"]
        print(f"contained cold / podman cold               = {cold / their_cold:.2f}   "
              "(target ≤ 1.0)")
        print(f"contained cached / podman cold             = {cached / their_cold:.3f}  "
              "(target ≤ 0.1, one reading)")
        print(f"contained cached / podman cached           = {cached / their_cached:.3f}  "
              "(target ≤ 0.1, the other reading)")
    for line in missing_peers(["podman"]):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
