"""Notebook 04's exercises (images): a layer blob's digest, and the layer two images share.

04.1 `check_layer_digest` tells the layer blob's digest apart from the manifest's, the config's
and the diff_id; 04.2 `check_shared_layer` finds the layer every image of a layout lists. The
commands whose output they compare with::

    sha256sum blobs/sha256/*                          # a blob's name is its digest
    jq '.layers[].digest' blobs/sha256/MANIFEST       # the layers a manifest lists
    zcat blobs/sha256/LAYER | sha256sum               # the diff_id (in the config), not the name
"""

import re
from pathlib import Path

from contained.workbook.exercises.hints import Feedback, exercise, right, unanswered, wrong


@exercise("04.1",
          concept="every blob's file name is the sha256 of its own bytes; a layer blob is the "
                  "compressed tar, and the manifest lists it under \"layers\"",
          where="the cells \"Walking the layout\" (the manifest) and \"Verifying digests with "
                "sha256sum\"",
          solution='answer = manifest["layers"][0]["digest"] (busybox has one layer)')
def check_layer_digest(layout: str | Path, answer: str | None, tag: str | None = None
                       ) -> Feedback:
    """The digest of the image's (largest) layer blob, as ``sha256sum blobs/sha256/*`` shows,
    told apart from the other digests a learner can find."""
    import gzip
    import hashlib
    import json

    from contained.images import oci

    if answer is None:
        return unanswered('set answer to the layer blob\'s digest, "sha256:…"')
    given = str(answer).strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", given):
        given = "sha256:" + given
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", given):
        return wrong('a digest looks like "sha256:" followed by 64 hex digits (sha256sum prints '
                     "the 64 digits)")
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    entry = next((m for m in index["manifests"] if tag is None or m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == tag), None)
    if entry is None:
        return wrong(f"{layout} has no image tagged {tag!r}")
    manifest = json.loads(oci.blob_path(layout, entry["digest"]).read_bytes())
    largest = max(manifest["layers"], key=lambda layer: layer["size"])
    if given == largest["digest"]:
        return right("that is the layer blob's name, and sha256 of its bytes: the blob "
                     "verifies.")
    if given in (layer["digest"] for layer in manifest["layers"]):
        return wrong("that is a layer, but not the largest one: compare the sizes in the "
                     "manifest")
    if given == entry["digest"]:
        return wrong("that is the manifest's digest (from index.json); the layers are listed "
                     "inside the manifest")
    if given == manifest["config"]["digest"]:
        return wrong("that is the config blob's digest; the layers are in the manifest's "
                     '"layers" list')
    blob = oci.blob_path(layout, largest["digest"])
    with gzip.open(blob) if largest["mediaType"].endswith("gzip") else open(blob, "rb") as f:
        uncompressed = hashlib.sha256()
        while chunk := f.read(1 << 20):
            uncompressed.update(chunk)
    if given == "sha256:" + uncompressed.hexdigest():
        return wrong("that is the diff_id: the sha256 of the *uncompressed* tar (listed in the "
                     "config). The blob's name is the sha256 of the compressed bytes on disk")
    return wrong("that digest is not in this image: run `sha256sum` on the largest file in "
                 "blobs/sha256/")


@exercise("04.2",
          concept="a blob is named by the digest of its bytes, so the same layer in two images is "
                  "one blob, listed by both manifests",
          where="the cell under \"Two images, one base layer\": print each manifest's "
                "\"layers\" in full (workbook.read_blob_json)",
          solution="the first layer of both manifests: "
                   "set(layers_of['latest']) & set(layers_of['other'])")
def check_shared_layer(layout: str | Path, answer: str | None) -> Feedback:
    """The layer digest every image of `layout` lists (``jq '.layers[].digest'`` of each
    manifest, then the ones in common)."""
    import json

    from contained.images import oci

    if answer is None:
        return unanswered('set answer to the shared layer\'s digest, "sha256:…"')
    given = str(answer).strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", given):
        given = "sha256:" + given
    layout = Path(layout)
    manifests = [json.loads(oci.blob_path(layout, m["digest"]).read_bytes())
                 for m in json.loads((layout / "index.json").read_text())["manifests"]]
    if len(manifests) < 2:
        return wrong(f"{layout} holds {len(manifests)} image: run the cell that builds "
                     "multi:other first")
    layer_sets = [{layer["digest"] for layer in m["layers"]} for m in manifests]
    shared = set.intersection(*layer_sets)
    if given in shared:
        return right("both manifests list that blob, and the layout stores it once: a second "
                     "image on the same base costs only its own layers.")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", given):
        return wrong('a digest looks like "sha256:" followed by 64 hex digits; the cell shows '
                     "only the first 12, the manifests have them in full")
    if any(given in layers for layers in layer_sets):
        return wrong("that layer belongs to one image only: compare the two manifests' layer "
                     "lists")
    return wrong("no manifest of this layout lists that digest as a layer (a manifest's or "
                 "config's digest is not a layer)")
