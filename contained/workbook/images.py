"""Looking inside an OCI image layout, and writing layers by hand: notebooks 04 and 07.

Used through the `contained.workbook` facade: notebook 04 reads its layouts' blobs and sizes,
and both 04 and 07 build layers (images, then attacks on the unpacker) with ``tar_layer``. The
shell commands they stand for::

    jq . blobs/sha256/HEX                               # read_blob_json
    ls -l blobs/sha256/HEX; zcat blobs/sha256/HEX | wc -c    # layer_sizes
    tar -tvzf blobs/sha256/HEX | grep '\\.wh\\.'          # hidden_bytes: what later layers hide
    tar -cf layer.tar ENTRY...                          # tar_layer (names kept exactly as given)
"""

import json
from pathlib import Path


def read_blob_json(layout: str | Path, digest: str) -> dict:
    """A JSON blob (manifest, config, index) of an OCI layout, by digest."""
    from contained.images import oci

    return json.loads(oci.blob_path(Path(layout), digest).read_bytes())


def layer_sizes(layout: str | Path, tag: str | None = None) -> list[tuple[str, int, int]]:
    """Each layer of the image `tag` in `layout`: (short digest, compressed, uncompressed)."""
    import gzip

    from contained.images import oci

    index = json.loads((Path(layout) / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if tag is None or m.get("annotations", {}).get(
                   "org.opencontainers.image.ref.name") == tag]
    manifest = read_blob_json(layout, entries[0]["digest"])
    sizes = []
    for layer in manifest["layers"]:
        blob = oci.blob_path(Path(layout), layer["digest"])
        uncompressed = 0
        with gzip.open(blob) if layer["mediaType"].endswith("gzip") else open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                uncompressed += len(chunk)
        sizes.append((layer["digest"][7:19], layer["size"], uncompressed))
    return sizes


def hidden_bytes(layout: str | Path, tag: str | None = None) -> dict[int, int]:
    """For each layer of image `tag`: the bytes of its regular files that a later layer
    deletes (a ``.wh.`` whiteout of the file or of a directory above it, an opaque directory)
    or replaces (the same path again). The image still ships them; no container sees them."""
    import tarfile

    from contained.images import oci

    index = json.loads((Path(layout) / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if tag is None or m.get("annotations", {}).get(
                   "org.opencontainers.image.ref.name") == tag]
    manifest = read_blob_json(layout, entries[0]["digest"])
    files: list[dict[str, int]] = []   # per layer: path → size
    covers: list[tuple[set, set]] = []  # per layer: (paths it hides or replaces, opaque dirs)
    for layer in manifest["layers"]:
        sizes, hides, opaque = {}, set(), set()
        with tarfile.open(oci.blob_path(Path(layout), layer["digest"])) as tar:
            for member in tar:
                name = member.name.lstrip("./").rstrip("/")
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    opaque.add(parent)
                elif base.startswith(".wh."):
                    hides.add(f"{parent}/{base[4:]}".lstrip("/"))
                elif not member.isdir():  # a directory entry merges with the one below
                    hides.add(name)
                    if member.isfile():
                        sizes[name] = member.size
        files.append(sizes)
        covers.append((hides, opaque))

    def hidden_later(path: str, layer: int) -> bool:
        parts = path.split("/")
        above = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        return any(above & hides or any(path.startswith(d + "/") for d in opaque)
                   for hides, opaque in covers[layer + 1:])

    return {i: sum(size for path, size in sizes.items() if hidden_later(path, i))
            for i, sizes in enumerate(files)}


def tar_layer(*entries: tuple) -> bytes:
    """An uncompressed layer tar from entries, exactly as written (nothing is cleaned up):

    ``(name, "file", data)``, ``(name, "dir")``, ``(name, "symlink", target)``,
    ``(name, "hardlink", target)``. Notebooks 04 and 07 build images and attacks with it.
    """
    import io
    import tarfile

    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            data = rest[0] if rest else b""
            if kind in ("symlink", "hardlink"):
                info.linkname = data
                tar.addfile(info)
            elif kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()
