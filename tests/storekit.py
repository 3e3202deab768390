"""Helpers for the image tests (test_store, test_pull, test_layout): small images built in
OCI layouts by images.build, and the session registry's way of publishing them."""

import io
import json
import tarfile
from pathlib import Path

from contained.images import build
from contained.images import registry as local_registry
from contained.images.store import Store

HOST_ARCH = build.host_architecture()
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"


def tar_of(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding `files` (path → content), reproducibly."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_layout(path: Path, tag: str = "img", *, arch: str = HOST_ARCH, content=b"hello",
                config=None) -> str:
    return build.build_image(path, [tar_of({"hello.txt": content})], tag, architecture=arch,
                             config=config or {"Cmd": ["/hello"]})


def index_entry(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    return next(m for m in index["manifests"]
                if m["annotations"][build.ANNOTATION_REF_NAME] == tag)


def rewrite_index_entry(layout: Path, tag: str, **changes) -> None:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"][build.ANNOTATION_REF_NAME] == tag:
            entry.update(changes)
    (layout / "index.json").write_text(json.dumps(index))


def blobs(store: Store) -> set[str]:
    return {p.name for p in (store.layout / "blobs" / "sha256").iterdir()}


def names(store: Store) -> list[str]:
    return [image.name for image in store.images()]


def push(layout_ref: str, registry, target: str, *, all_images=False) -> None:
    """Publish into the session's read-only registry, the way its owner does."""
    local_registry.publish(Path(registry.directory).parent, layout_ref, target,
                           all_images=all_images)
