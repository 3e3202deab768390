"""images.unpack: the verified stream (sizes, digests, diff_ids, truncation), memory, the cache.

Every layer here is built by tests/layerkit.py (how one entry is extracted is tested in
test_tar_extract.py).
"""

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import needs_root
from layerkit import (
    directory,
    fifo,
    file,
    gzip_multi,
    hardlink,
    image_layout,
    layer_blob,
    make_tar,
    opaque,
    symlink,
    tree,
    whiteout,
    zstd_bytes,
)

from contained.images import build, oci, unpack

REPO = Path(__file__).resolve().parent.parent


# --- big files: memory stays bounded ----------------------------------------------------------

def test_memory_stays_bounded_on_a_huge_file(tmp_path):
    size = 192 * 1024 * 1024
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    raw = blob_dir / "huge.tar"
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar, open("/dev/urandom", "rb") as r:
        info = tarfile.TarInfo("huge")
        info.size = size
        tar.addfile(info, _Repeat(r.read(1 << 20), size))
    data_digest = _sha256_file(raw)
    descriptor = oci.Descriptor(oci.MEDIA_TYPE_LAYER, data_digest, raw.stat().st_size)
    dest = tmp_path / "dest"
    dest.mkdir()
    code = textwrap.dedent(f"""
        import resource, sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from contained.images import oci, unpack
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = oci.Descriptor({descriptor.media_type!r}, {data_digest!r}, {descriptor.size})
        unpack.unpack_layer(Path({str(raw)!r}), d, {data_digest!r}, Path({str(dest)!r}))
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split())
    assert (dest / "huge").stat().st_size == size
    assert after - before < 40 * 1024, f"peak grew by {(after - before) // 1024} MiB"


class _Repeat:
    def __init__(self, block: bytes, size: int):
        self.block, self.left = block, size

    def read(self, n: int) -> bytes:
        data = (self.block * (n // len(self.block) + 1))[:min(n, self.left)]
        self.left -= len(data)
        return data


def _sha256_file(path: Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# --- verification ------------------------------------------------------------------------------

SIMPLE = make_tar(directory("etc"), file("etc/hostname", b"box\n"))


@pytest.fixture(params=["alone", "side by side"])
def unpacker(request):
    """Unpack layers the way `apply_layers` does, as a layer alone (a thread inflating, the
    caller's parsing) or as one of several side by side (the caller's thread doing it all)."""
    def unpack_all(layers, dest):
        dest.mkdir(exist_ok=True)
        return [unpack.unpack_layer(*layer, dest, whiteouts="apply",
                                    side_by_side=request.param == "side by side")
                for layer in layers]
    return unpack_all


def test_digest_mismatch(tmp_path, unpacker):
    layer = layer_blob(tmp_path, SIMPLE)
    bad = oci.Descriptor(layer.descriptor.media_type, "sha256:" + "0" * 64, layer.descriptor.size)
    with pytest.raises(unpack.LayerDigestMismatch, match="does not match its digest"):
        unpacker([(layer.blob, bad, layer.diff_id)], tmp_path / "dest")


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch(tmp_path, delta, unpacker):
    layer = layer_blob(tmp_path, SIMPLE)
    bad = oci.Descriptor(layer.descriptor.media_type, layer.descriptor.digest,
                         layer.descriptor.size + delta)
    with pytest.raises(unpack.LayerSizeMismatch, match=layer.descriptor.digest):
        unpacker([(layer.blob, bad, layer.diff_id)], tmp_path / "dest")


def test_diff_id_mismatch(tmp_path, unpacker):
    layer = layer_blob(tmp_path, SIMPLE, diff_id="sha256:" + "1" * 64)
    with pytest.raises(unpack.LayerDiffIDMismatch, match="diff_id"):
        unpacker([layer.args()], tmp_path / "dest")


def test_truncated_gzip(tmp_path, unpacker):
    from contained.images import build
    layer = layer_blob(tmp_path, SIMPLE, blob_bytes=build.gzip_bytes(SIMPLE)[:-30])
    with pytest.raises(unpack.LayerTruncated, match="gzip stream ends early"):
        unpacker([layer.args()], tmp_path / "dest")


@pytest.mark.parametrize("cut", [700, 1024 + 100, 1536])
def test_truncated_tar_with_consistent_digests(tmp_path, cut, unpacker):
    truncated = make_tar(file("a", b"x" * 2000), file("b", b"y"))[:cut]
    layer = layer_blob(tmp_path, truncated)
    with pytest.raises(unpack.LayerTruncated):
        unpacker([layer.args()], tmp_path / "dest")


@pytest.mark.parametrize("garbage", [b"\0\0\0\0", b"garbage", b"\x1f\x8b\x08"])
def test_bytes_after_the_gzip_stream(tmp_path, garbage, unpacker):
    from contained.images import build
    layer = layer_blob(tmp_path, SIMPLE, blob_bytes=build.gzip_bytes(SIMPLE) + garbage)
    with pytest.raises((unpack.LayerCorrupt, unpack.LayerTruncated)):
        unpacker([layer.args()], tmp_path / "dest")


def test_data_after_the_tar_end_marker(tmp_path, unpacker):
    layer = layer_blob(tmp_path, SIMPLE + b"hidden" + bytes(506))
    with pytest.raises(unpack.LayerCorrupt, match="after the tar's end"):
        unpacker([layer.args()], tmp_path / "dest")


def test_not_a_tar(tmp_path, unpacker):
    layer = layer_blob(tmp_path, b"x" * 4096)
    with pytest.raises(unpack.LayerCorrupt):
        unpacker([layer.args()], tmp_path / "dest")


def test_multi_member_gzip_and_uncompressed_layers(tmp_path, unpacker):
    half = len(SIMPLE) // 2
    multi = layer_blob(tmp_path, SIMPLE, blob_bytes=gzip_multi(SIMPLE[:half], SIMPLE[half:]))
    plain = layer_blob(tmp_path, make_tar(file("plain", b"p")), compress=False)
    unpacker([multi.args(), plain.args()], tmp_path / "dest")
    assert (tmp_path / "dest/etc/hostname").read_bytes() == b"box\n"
    assert (tmp_path / "dest/plain").read_bytes() == b"p"


def test_foreign_layers_are_refused_by_media_type(tmp_path, unpacker):
    layer = layer_blob(tmp_path, SIMPLE,
                       media_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    with pytest.raises(unpack.UnsupportedLayerType, match="media type"):
        unpacker([layer.args()], tmp_path / "dest")


# --- zstd layers (application/vnd.oci.image.layer.v1.tar+zstd) --------------------------------

def zstd_layer(directory_path: Path, tar_bytes: bytes, **options):
    return layer_blob(directory_path, tar_bytes, media_type=oci.MEDIA_TYPE_LAYER_ZSTD, **options)


def test_zstd_layers_unpack_to_the_same_tree_as_gzip_ones(tmp_path, unpacker):
    gzipped = [layer_blob(tmp_path / "gz", tar).args() for tar in MULTI]
    zstd = [zstd_layer(tmp_path / "zst", tar, blob_bytes=zstd_bytes(tar)).args() for tar in MULTI]
    from_gzip = unpacker(gzipped, tmp_path / "from-gzip")
    from_zstd = unpacker(zstd, tmp_path / "from-zstd")
    assert tree(tmp_path / "from-zstd") == tree(tmp_path / "from-gzip")
    assert [r.entries for r in from_zstd] == [r.entries for r in from_gzip] == [14, 7, 6]


def test_zstd_layer_of_several_frames_and_a_skippable_frame_unpacks(tmp_path, unpacker):
    half = len(SIMPLE) // 2
    blob = zstd_bytes(SIMPLE[:half], SIMPLE[half:], checksum=False, skippable=b"note")
    unpacker([zstd_layer(tmp_path, SIMPLE, blob_bytes=blob).args()], tmp_path / "dest")
    assert (tmp_path / "dest/etc/hostname").read_bytes() == b"box\n"


def test_zstd_layer_digest_and_diff_id_are_verified(tmp_path, unpacker):
    layer = zstd_layer(tmp_path, SIMPLE, blob_bytes=zstd_bytes(SIMPLE))
    bad = oci.Descriptor(layer.descriptor.media_type, "sha256:" + "0" * 64, layer.descriptor.size)
    with pytest.raises(unpack.LayerDigestMismatch):
        unpacker([(layer.blob, bad, layer.diff_id)], tmp_path / "a")
    with pytest.raises(unpack.LayerDiffIDMismatch):
        unpacker([(layer.blob, layer.descriptor, "sha256:" + "1" * 64)], tmp_path / "b")


@pytest.mark.parametrize("cut", [2, 4, 20])
def test_truncated_zstd_stream_is_refused_even_with_consistent_digests(tmp_path, cut, unpacker):
    # Cutting 2 or 4 bytes loses only the frame's checksum: the tar comes out whole and the
    # diff_id matches, so only following the frames tells the blob is cut short.
    blob = zstd_bytes(SIMPLE)[:-cut]
    with pytest.raises(unpack.LayerTruncated):
        unpacker([zstd_layer(tmp_path, SIMPLE, blob_bytes=blob).args()],
                            tmp_path / "dest")


@pytest.mark.parametrize("garbage", [b"\0\0\0\0", b"garbage!", b"\x28\xb5\x2f"])
def test_bytes_after_the_zstd_stream_are_refused(tmp_path, garbage, unpacker):
    blob = zstd_bytes(SIMPLE) + garbage
    with pytest.raises((unpack.LayerCorrupt, unpack.LayerTruncated)):
        unpacker([zstd_layer(tmp_path, SIMPLE, blob_bytes=blob).args()],
                            tmp_path / "dest")


def test_not_zstd_at_all_is_refused(tmp_path, unpacker):
    layer = zstd_layer(tmp_path, SIMPLE, blob_bytes=build.gzip_bytes(SIMPLE))
    with pytest.raises(unpack.LayerCorrupt, match="not a zstd frame"):
        unpacker([layer.args()], tmp_path / "dest")


def test_zstd_layers_without_the_zstandard_module_say_what_to_install(tmp_path, monkeypatch):
    layer = zstd_layer(tmp_path, SIMPLE, blob_bytes=zstd_bytes(SIMPLE))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    with pytest.raises(unpack.UnsupportedLayerType, match="pip install zstandard"):
        unpack.apply_layers([layer.args()], tmp_path / "dest")


def test_memory_stays_bounded_on_a_zstd_bomb(tmp_path):
    # 192 MiB of zeros compress to a few KiB of RLE blocks: each read must stay bounded.
    import hashlib

    import zstandard

    size = 192 * 1024 * 1024
    info = tarfile.TarInfo("zeros")
    info.size = size
    head, zeros, end = info.tobuf(tarfile.PAX_FORMAT), bytes(1 << 20), bytes(1024)
    frame = zstandard.ZstdCompressor(level=3).compressobj()
    diff_id = hashlib.sha256(head)
    blob = frame.compress(head)
    for _ in range(size >> 20):
        blob += frame.compress(zeros)
        diff_id.update(zeros)
    blob += frame.compress(end) + frame.flush()  # `end`: the end-of-archive blocks
    diff_id.update(end)
    layer = zstd_layer(tmp_path / "blobs", b"", blob_bytes=blob,
                       diff_id="sha256:" + diff_id.hexdigest())
    assert len(blob) < 1024 * 1024
    dest = tmp_path / "dest"
    dest.mkdir()
    code = textwrap.dedent(f"""
        import resource, sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from contained.images import oci, unpack
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = oci.Descriptor({oci.MEDIA_TYPE_LAYER_ZSTD!r}, {layer.descriptor.digest!r},
                           {layer.descriptor.size})
        unpack.unpack_layer(Path({str(layer.blob)!r}), d, {layer.diff_id!r}, Path({str(dest)!r}))
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split())
    assert (dest / "zeros").stat().st_size == size
    assert after - before < 40 * 1024, f"peak grew by {(after - before) // 1024} MiB"


def test_bad_digest_syntax_builds_no_path(tmp_path):
    layer = layer_blob(tmp_path, SIMPLE)
    cache = tmp_path / "cache"
    with pytest.raises(oci.BadDigest):
        unpack.cached_layer(cache, layer.blob, layer.descriptor, "sha256:../../../escape")
    assert not cache.exists()


# --- the cache ---------------------------------------------------------------------------------

def test_cached_layer_is_unpacked_once(tmp_path):
    layer = layer_blob(tmp_path, SIMPLE)
    cache = tmp_path / "cache"
    first = unpack.cached_layer(cache, *layer.args())
    assert first == cache / "sha256" / layer.diff_id.split(":")[1]
    marker = os.stat(first / "etc/hostname")
    layer.blob.unlink()  # a second unpack would now fail: proves it does not happen
    second = unpack.cached_layer(cache, *layer.args())
    assert second == first
    assert os.stat(first / "etc/hostname").st_ino == marker.st_ino
    assert sorted(p.name for p in cache.iterdir()) == ["locks", "sha256"]


def test_failed_unpack_leaves_nothing_in_the_cache(tmp_path):
    layer = layer_blob(tmp_path, SIMPLE, diff_id="sha256:" + "2" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(unpack.LayerDiffIDMismatch):
        unpack.cached_layer(cache, *layer.args())
    assert list((cache / "sha256").iterdir()) == []
    assert not list(cache.glob("tmp-*"))


def test_concurrent_cached_layer_calls_unpack_once(tmp_path):
    big = make_tar(*[file(f"d/f{i}", os.urandom(4096)) for i in range(2000)])
    layer = layer_blob(tmp_path, big)
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import sys, os; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from contained.images import oci, unpack
        d = oci.Descriptor({layer.descriptor.media_type!r}, {layer.descriptor.digest!r},
                           {layer.descriptor.size})
        p = unpack.cached_layer(Path({str(cache)!r}), Path({str(layer.blob)!r}), d,
                                {layer.diff_id!r})
        print(os.stat(p / "d/f0").st_ino)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    inodes = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(inodes) == 1
    assert not list(cache.glob("tmp-*"))


def test_cached_layers_unpacks_the_missing_layers_side_by_side(tmp_path, monkeypatch):
    layers = [layer_blob(tmp_path / "blobs", tar).args() for tar in MULTI]
    # Two workers pass the barrier only if both are inside unpack_layer at once: one layer
    # at a time would wait out the timeout instead.
    together, met = threading.Barrier(2, timeout=10), []
    real = unpack.unpack_layer

    def meeting(*args, **options):
        if threading.current_thread() is not threading.main_thread() and not met:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait()
                met.append(True)
        return real(*args, **options)

    monkeypatch.setattr(unpack, "PARALLEL_LAYERS", 2)
    monkeypatch.setattr(unpack, "unpack_layer", meeting)
    dirs = unpack.cached_layers(tmp_path / "cache", layers)
    assert met
    assert dirs == [unpack.cached_path(tmp_path / "cache", diff_id) for *_, diff_id in layers]
    assert all(tree(path) for path in dirs)


def test_cached_layers_start_the_biggest_layers_first(tmp_path, monkeypatch):
    # A big layer started last would run alone at the end while the other cores idle.
    sizes = [10, 3000, 200, 40000]
    layers = [layer_blob(tmp_path / f"blobs{n}", make_tar(file("f", os.urandom(n)))).args()
              for n in sizes]
    started = []
    real = unpack.unpack_layer
    monkeypatch.setattr(unpack, "PARALLEL_LAYERS", 2)
    # ...with a pool of one worker, which takes them in the order they were handed over
    pool = concurrent.futures.ThreadPoolExecutor
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor",
                        lambda workers, **options: pool(1, **options))
    monkeypatch.setattr(unpack, "unpack_layer",
                        lambda *a, **o: started.append(a[1].size) or real(*a, **o))
    dirs = unpack.cached_layers(tmp_path / "cache", layers)
    assert started == sorted(started, reverse=True) and len(started) == 4
    # ...and the result keeps the image's order, bottom first
    assert dirs == [unpack.cached_path(tmp_path / "cache", diff_id) for *_, diff_id in layers]


def test_cached_layers_unpacks_a_layer_listed_twice_once(tmp_path, monkeypatch):
    layer = layer_blob(tmp_path / "blobs", SIMPLE).args()
    other = layer_blob(tmp_path / "blobs", MULTI[0]).args()
    calls = []
    real = unpack.unpack_layer
    monkeypatch.setattr(unpack, "unpack_layer", lambda *a, **o: calls.append(a) or real(*a, **o))
    dirs = unpack.cached_layers(tmp_path / "cache", [layer, other, layer])
    assert len(calls) == 2
    assert dirs[0] == dirs[2]


def test_cached_layers_raise_the_failure_and_leave_no_half_made_layer(tmp_path):
    good = [layer_blob(tmp_path / "blobs", tar).args() for tar in MULTI]
    bad = layer_blob(tmp_path / "blobs", SIMPLE, diff_id="sha256:" + "3" * 64).args()
    with pytest.raises(unpack.LayerDiffIDMismatch):
        unpack.cached_layers(tmp_path / "cache", [good[0], bad, *good[1:]])
    assert not (tmp_path / "cache/sha256" / ("3" * 64)).exists()
    assert not list((tmp_path / "cache").glob("tmp-*"))


# --- the real overlay mount --------------------------------------------------------------------

MULTI = [
    make_tar(directory("etc"), file("etc/passwd", b"root"), file("etc/group", b"g"),
             directory("var"), directory("var/lib"), file("var/lib/a"), file("var/lib/b"),
             directory("opt"), file("opt/x"), symlink("bin", "usr/bin"), directory("usr"),
             directory("usr/bin"), file("usr/bin/sh", b"sh", mode=0o755), hardlink("usr/bin/ash",
                                                                                   "usr/bin/sh")),
    make_tar(whiteout("etc/group"), opaque("var/lib"), file("var/lib/c"), file("opt", b"file"),
             directory("usr/share"), file("usr/share/doc", b"d"), fifo("run/fifo")),
    make_tar(whiteout("usr/share"), directory("opt", mode=0o700), file("opt/y"),
             file("etc/passwd", b"root2"), whiteout("var/lib/c"), file("var/lib/d")),
]


@needs_root
def test_overlay_of_cached_layers_equals_apply_layers(tmp_path):
    layout_layers = image_layout(tmp_path / "layout", MULTI)
    flat = tmp_path / "flat"
    unpack.apply_layers([layer.args() for layer in layout_layers], flat)
    dirs = [unpack.cached_layer(tmp_path / "cache", *layer.args()) for layer in layout_layers]
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(d) for d in reversed(dirs))  # overlay wants the top layer first
    dump = (f"import sys, json; sys.path.insert(0, {str(REPO / 'tests')!r}); import layerkit;"
            f" print(json.dumps(layerkit.tree({str(merged)!r})))")
    # A private mount namespace: the overlay disappears with the process, even on failure.
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t overlay overlay -o "lowerdir={lowerdir}" "{merged}" && exec "$0" -c "$1"',
         sys.executable, dump], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seen = {path: tuple(value) for path, value in json.loads(result.stdout).items()}
    expected = {path: tuple(value) for path, value in json.loads(json.dumps(tree(flat))).items()}
    # Hardlink groups are named by their first path in each tree; both walk in the same order.
    assert seen == expected
    assert "etc/group" not in seen and "var/lib/a" not in seen and "usr/share" not in seen
    assert not os.path.ismount(merged)

