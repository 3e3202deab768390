"""Benchmark: unpacking a real multi-layer image, ours vs ``tar -xzf`` vs ``umoci raw unpack``.

Run as a script (root recommended, as the runtime runs): ``python benchmarks/unpack.py``.
It builds (once, cached in ~/.cache/contained-bench) an image of 4 gzip layers from a Debian
``debootstrap --variant=minbase`` root, or from the host's /usr when the mirror is unreachable,
then times, in the same run, medians of a few runs each:

- per-layer unpack, cold (``cached_layers``: what the first container pays; independent
  layers unpacked side by side, one thread each), and one layer at a time (two threads each,
  ``PARALLEL_LAYERS = 1``) for reference
- the same call again (what every later container pays: nothing is unpacked)
- the same cold unpack of the same layers compressed with zstd, beside ``tar --zstd -xf``
  (when the ``zstd`` program is installed: it builds the zstd copy of the image)
- ``apply_layers`` into one directory (``contained unpack``)
- ``tar -xzf`` of each layer in turn (the tutorial's command, no verification at all)
- ``umoci raw unpack``

and our peak memory (ru_maxrss of a child process doing the cold unpack).

Where the time goes depends on the machine's state more than on the unpacker, so by default
(as root, with ``mkfs.ext4``) every run unpacks into a fresh ext4 with a journal, made for the
benchmark on a loop device (what Debian's and Ubuntu's installers make, so what a lab VM has),
and each run's tree is removed right after it is timed. Two effects of this VM, each larger
than the difference between the unpackers, are what that leaves out:

- Its root ext4 has no journal (``cat /sys/fs/ext4/DEV/journal_task`` says ``<none>``): there
  creating a file first walks past every recently freed inode of its group
  (``recently_deleted``, one buffer lookup each; 2,000 creates still took 330 ms instead of
  ~25 ms 150-240 s after 50,000 files were deleted), so right after an ``rm -rf`` one
  ``open(O_CREAT)`` took 570-650 µs against 6 µs on a tmpfs. With a journal the kernel skips
  that walk.
- Page cache taken from memory the VM had not used for a while costs far more to fill (the
  hypervisor backs it on first touch): keeping every run's tree, after ~5 GB of them our
  unpack's system time grew from 0.3 s to 0.9-1.1 s on the same filesystem, and fell back to
  0.3 s after ``drop_caches``. tar hides such costs behind ``gzip -d`` on its second core; we
  use both cores, so they land on our wall time. Removing each tree recycles the same pages.

``--dir DIR`` unpacks in DIR's filesystem instead, keeping every run's tree until the end (on
a journal-less ext4, removing them between runs would charge each run the last one's deletions;
run it again no sooner than a few minutes after the last run's removal, for the same reason);
it needs about 1.5 GB of free space per run (`--runs`).
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contained.images import build, oci  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contained-bench"
LAYER_SPLIT = [  # what each layer holds, bottom first; the last takes whatever is left
    ["usr/lib"],
    ["usr/share"],
    ["usr/bin", "usr/sbin", "usr/libexec", "usr/include", "usr/games", "usr/src"],
    None,
]


def rootfs() -> tuple[Path, str]:
    """A root filesystem to build the image from: debootstrap if possible, else host /usr."""
    done = CACHE / "rootfs"
    if (done / "usr" / "bin").is_dir():
        return done, (CACHE / "rootfs.source").read_text().strip()
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "rootfs.tmp"
    shutil.rmtree(work, ignore_errors=True)
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(work),
         "http://deb.debian.org/debian"], capture_output=True, text=True)
    if result.returncode == 0:
        source = "debootstrap --variant=minbase bookworm"
    else:
        print("debootstrap failed; using a copy of the host's /usr", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        (work / "usr").mkdir(parents=True)
        for part in ("lib", "share", "bin", "sbin"):
            subprocess.run(["cp", "-a", f"/usr/{part}", str(work / "usr")], check=True)
        (work / "etc").mkdir()
        source = "copy of host /usr"
    work.rename(done)
    (CACHE / "rootfs.source").write_text(source)
    return done, source


def build_image(root: Path) -> Path:
    """4 gzip layers, streamed (tar | hash | gzip) straight to blob files, never in memory."""
    layout = CACHE / "image"
    if (layout / "index.json").exists():
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    taken: list[str] = []
    built = []
    for members in LAYER_SPLIT:
        if members is None:
            exclude = [f"--exclude=./{m}" for m in taken]
            paths = ["."]
        else:
            members = [m for m in members if (root / m).exists()]
            taken += members
            exclude, paths = [], [f"./{m}" for m in members]
        built.append(_write_layer(layout, root, exclude + paths))
    config = build.image_config(built, architecture=build.host_architecture())
    build.write_image(layout, built, config, "bench")
    return layout


def _write_layer(layout: Path, root: Path, tar_args: list[str]) -> build.BuiltLayer:
    tmp = layout / "blobs" / "tmp.gz"
    tar = subprocess.Popen(["tar", "--sort=name", "--mtime=@0", "--numeric-owner",
                            "--format=posix", "--pax-option=delete=atime,delete=ctime",
                            "-C", str(root), "-cf", "-", *tar_args], stdout=subprocess.PIPE)
    with open(tmp, "wb") as out:
        gzip = subprocess.Popen(["gzip", "-n", "-6"], stdin=subprocess.PIPE, stdout=out)
        diff = hashlib.sha256()
        while chunk := tar.stdout.read(1 << 20):
            diff.update(chunk)
            gzip.stdin.write(chunk)
        gzip.stdin.close()
        if tar.wait() != 0 or gzip.wait() != 0:
            raise SystemExit("building a layer failed")
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    size = tmp.stat().st_size
    tmp.rename(layout / "blobs" / "sha256" / digest.hexdigest())
    descriptor = oci.Descriptor(oci.MEDIA_TYPE_LAYER_GZIP, "sha256:" + digest.hexdigest(), size)
    return build.BuiltLayer(descriptor, "sha256:" + diff.hexdigest())


def image_layers(layout: Path) -> list[tuple[str, str, int, str]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(oci.blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(oci.blob_path(layout, manifest["config"]["digest"]).read_bytes())
    return [(str(oci.blob_path(layout, layer["digest"])), layer["digest"], layer["size"], diff)
            for layer, diff in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)]


def zstd_image(layout: Path) -> Path | None:
    """The same image with every layer recompressed by `zstd -3` (None without zstd)."""
    zstd_layout = CACHE / "image-zstd"
    if (zstd_layout / "index.json").exists():
        return zstd_layout
    if shutil.which("zstd") is None:
        return None
    shutil.rmtree(zstd_layout, ignore_errors=True)
    (zstd_layout / "blobs" / "sha256").mkdir(parents=True)
    built = []
    for blob, _, _, diff_id in image_layers(layout):
        tmp = zstd_layout / "blobs" / "tmp.zst"
        subprocess.run(f"gzip -dc {blob} | zstd -3 -q -T1 -o {tmp}", shell=True, check=True)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        size = tmp.stat().st_size
        tmp.rename(zstd_layout / "blobs" / "sha256" / digest)
        built.append(build.BuiltLayer(
            oci.Descriptor(oci.MEDIA_TYPE_LAYER_ZSTD, "sha256:" + digest, size), diff_id))
    config = build.image_config(built, architecture=build.host_architecture())
    build.write_image(zstd_layout, built, config, "bench")
    return zstd_layout


CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
from pathlib import Path
from contained.images import oci, unpack
specs = json.loads({specs!r})
media_type = {media_type!r}
args = [(Path(b), oci.Descriptor(media_type, d, s), diff) for b, d, s, diff in specs]
start = time.perf_counter()
if {mode!r} == "cached":
    unpack.cached_layers(Path({target!r}), args)
elif {mode!r} == "one at a time":
    unpack.PARALLEL_LAYERS = 1
    unpack.cached_layers(Path({target!r}), args)
else:
    unpack.apply_layers(args, Path({target!r}))
import resource
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


PEAKS: list[int] = []  # ru_maxrss (KiB) of each of our unpacking children


def run_ours(specs, mode: str, target: Path, media_type: str = oci.MEDIA_TYPE_LAYER_GZIP) -> float:
    code = CHILD.format(repo=str(REPO), specs=json.dumps(specs), mode=mode, target=str(target),
                        media_type=media_type)
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    seconds, peak_kib = result.stdout.strip().splitlines()[-1].split()
    PEAKS.append(int(peak_kib))
    return float(seconds)


@contextlib.contextmanager
def scratch_ext4(size: str = "4G"):
    """A fresh journaled ext4 on a loop device, mounted on a temporary directory (root only)."""
    base = Path(tempfile.mkdtemp(prefix="contained-bench-fs-"))
    image, mountpoint = base / "ext4.img", base / "mnt"
    mountpoint.mkdir()
    try:
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True,
                       capture_output=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        shutil.rmtree(base)


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None,
                        help="unpack on this directory's filesystem, keeping every run's tree"
                             " until the end (default: a fresh journaled ext4 on a loop device"
                             " when root, else the temporary directory's)")
    options = parser.parse_args()
    options.remove_each = False
    with contextlib.ExitStack() as stack:
        if options.dir is None and os.geteuid() == 0 and shutil.which("mkfs.ext4"):
            try:
                options.dir = stack.enter_context(scratch_ext4())
                options.remove_each = True
            except subprocess.CalledProcessError as err:
                print(f"no scratch ext4 ({err}); unpacking in the temporary directory",
                      file=sys.stderr)
        measure(options)


def measure(options: argparse.Namespace) -> None:
    root, source = rootfs()
    layout = build_image(root)
    specs = image_layers(layout)
    compressed = sum(spec[2] for spec in specs)
    uncompressed = sum(int(subprocess.run(f"gzip -dc {spec[0]} | wc -c", shell=True, check=True,
                                          capture_output=True, text=True).stdout) for spec in specs)
    files = int(subprocess.run(f"find {root} | wc -l", shell=True, capture_output=True,
                               text=True).stdout)
    print(f"image: {source}, {len(specs)} gzip layers, {compressed / 1e6:.0f} MB compressed,"
          f" {uncompressed / 1e6:.0f} MB uncompressed, {files} paths; uid {os.geteuid()},"
          f" {os.cpu_count()} cpus, median of {options.runs} runs")
    zstd_layout = zstd_image(layout)
    zstd_specs = image_layers(zstd_layout) if zstd_layout else []
    if zstd_specs:
        print(f"the same layers with zstd -3: {sum(s[2] for s in zstd_specs) / 1e6:.0f} MB")
    else:
        print("zstd: not installed, zstd layers not measured (apt-get install zstd)")
    work = Path(tempfile.mkdtemp(prefix="contained-bench-", dir=options.dir))
    remove_each = options.remove_each
    where = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work)],
                           capture_output=True, text=True).stdout.split()
    print(f"unpacking in {work.parent}, on {' '.join(where) or 'an unknown filesystem'}"
          + (", a fresh journaled ext4; each run's tree removed after it" if remove_each
             else ", every run's tree kept until the end"))
    results: dict[str, list[float]] = {}
    try:
        counter = iter(range(10**6))

        def fresh(name: str) -> Path:
            return work / f"{name}-{next(counter)}"  # a new directory: see the docstring

        def tar_layers() -> float:
            dest = fresh("tar")
            dest.mkdir()
            start = time.perf_counter()
            for spec in specs:
                subprocess.run(["tar", "-xzf", spec[0], "-C", str(dest)], check=True)
            return time.perf_counter() - start

        def umoci() -> float:
            command = ["umoci", "raw", "unpack", "--image", f"{layout}:bench",
                       str(fresh("umoci"))]
            if os.geteuid() != 0:
                command.insert(3, "--rootless")
            return timed(command)

        def cold_then_cached() -> float:
            cache = fresh("cache")
            sync()
            cold = run_ours(specs, "cached", cache)
            results.setdefault("ours: per-layer dirs, already cached", []).append(
                run_ours(specs, "cached", cache))
            return cold

        contenders = {
            "ours: per-layer dirs, cold (cached_layers)": cold_then_cached,
            "ours: per-layer dirs, one at a time": lambda: run_ours(
                specs, "one at a time", fresh("sequential")),
            "ours: apply_layers into one dir": lambda: run_ours(specs, "apply", fresh("flat")),
            "tar -xzf, layer by layer": tar_layers,
            "umoci raw unpack": umoci,
        }
        if zstd_specs:
            def tar_zstd_layers() -> float:
                dest = fresh("tar-zstd")
                dest.mkdir()
                start = time.perf_counter()
                for spec in zstd_specs:
                    subprocess.run(["tar", "--zstd", "-xf", spec[0], "-C", str(dest)],
                                   check=True)
                return time.perf_counter() - start

            contenders["ours: zstd layers, per-layer dirs, cold"] = lambda: run_ours(
                zstd_specs, "cached", fresh("zstd"), oci.MEDIA_TYPE_LAYER_ZSTD)
            contenders["tar --zstd -xf, layer by layer"] = tar_zstd_layers
        names = list(contenders)
        for round_number in range(options.runs):
            # Rotate the order each round, and flush dirty pages before each one: the disk's
            # writeback of one contender's files must not be charged to the next.
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                sync()
                results.setdefault(name, []).append(contenders[name]())
                if remove_each:
                    for tree in work.iterdir():
                        subprocess.run(["rm", "-rf", str(tree)], check=True)
        peak_kib = max(PEAKS)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    tar_time = statistics.median(results["tar -xzf, layer by layer"])
    print(f"\n| {'what':<44} | {'median s':>8} | {'vs tar':>6} |")
    print(f"|{'-' * 46}|{'-' * 10}:|{'-' * 7}:|")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"| {name:<44} | {median:8.3f} | {median / tar_time:5.2f}x |")
    print(f"\nour peak memory (ru_maxrss of the unpacking child): {peak_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
