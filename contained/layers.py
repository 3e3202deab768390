"""Layers: turning a layer blob (a tar of changes) into a directory, safely.

Taught in notebooks 04 and 07. The tutorial's step is ``tar -xf blobs/sha256/<layer> -C lower``;
this module does the same for any image without trusting it.

CONTRACT (implemented by the layers work; the store and runtime rely on exactly this):

    unpack_layer(blob: Path, descriptor: Descriptor, diff_id: str, dest: Path,
                 *, whiteouts: str = "overlay") -> None
        Stream-verify the compressed digest/size and the uncompressed diff_id while extracting
        into the existing empty directory `dest`. whiteouts="overlay": OCI whiteouts become
        overlayfs whiteouts (0:0 char devices) and opaque dirs (trusted.overlay.opaque=y).

    cached_layer(cache: Path, blob: Path, descriptor: Descriptor, diff_id: str) -> Path
        The per-layer directory for overlay lowerdirs, cached by diff_id under `cache`
        (cache/sha256/<hex>); built aside and renamed into place; unpacked at most once.

    apply_layers(layers: list[tuple[Path, Descriptor, str]], dest: Path) -> None
        All layers (blob, descriptor, diff_id), bottom first, applied into one directory with
        whiteouts applied (deleting what they name), as ``contained unpack`` does.

Errors are LayerError subclasses with one-line messages naming the blob.
"""
