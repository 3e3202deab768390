"""The build cache: what each step of ``contained build`` made, so a rebuild does not redo it.

Taught in notebook 09 ("Build an image"). Every entry is a small JSON file in the store's
home; what they hold, by hand::

    ls $CONTAINED_HOME/build-cache/          # KEY.json, one per step (and one per image)
    cat $CONTAINED_HOME/build-cache/KEY.json  # {"layer": {...}, "diff_id": "sha256:..."}
    ls $CONTAINED_HOME/oci/blobs/sha256/      # the layers they name; an entry whose blob an
                                              # rmi removed is dropped by `contained gc`

A layer step's entry names the layer it made. An image entry keeps the whole config a build
wrote, keyed by that config without its `created` times: a fully cached rebuild writes the
same config again, so it gets the same image digest, as Docker's cache gives the same image
ID (without it, "now" in `created` would change the digest on every rebuild).
"""

import hashlib
import json
import os
from pathlib import Path

from contained.errors import ContainedError
from contained.images import oci

CACHE_DIR = "build-cache"


class BuildCache:
    """``HOME/build-cache``: layer steps by key, and final configs by their content."""

    def __init__(self, store, enabled: bool = True):
        self.store, self.enabled = store, enabled
        self.directory = Path(store.home) / CACHE_DIR

    def layer(self, key: str):
        """(Descriptor, diff_id) a step with this key made, or None (not cached, or its blob
        was removed since: the step is run again)."""
        if not self.enabled:
            return None
        entry = _read(self.directory / f"{key}.json")
        try:
            descriptor = oci.Descriptor.from_json(entry["layer"])
            oci.validate_digest(entry["diff_id"])
        except (TypeError, KeyError, ValueError, ContainedError):
            return None
        if not oci.blob_path(self.store.layout, descriptor.digest).is_file():
            return None
        return descriptor, entry["diff_id"]

    def remember_layer(self, key: str, layer) -> None:
        descriptor, diff_id = layer
        self._write(key, {"layer": {"mediaType": descriptor.media_type,
                                    "digest": descriptor.digest, "size": descriptor.size},
                          "diff_id": diff_id})

    def config(self, config: dict, layers: list) -> dict:
        """The config an earlier build wrote for the same layers and the same config (all
        but its `created` times), else `config`; either way remembered for the next build."""
        key = "image-" + _config_key(config, layers)
        digests = [descriptor.digest for descriptor, _ in layers]
        if self.enabled:
            entry = _read(self.directory / f"{key}.json")
            if isinstance(entry, dict) and entry.get("layers") == digests \
                    and isinstance(entry.get("config"), dict) \
                    and _config_key(entry["config"], layers) == key[len("image-"):]:
                return entry["config"]
        self._write(key, {"layers": digests, "config": config})
        return config

    def _write(self, key: str, entry: dict) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self.directory / f"{key}.json")


def collect(store) -> list[str]:
    """Drop the entries whose layer blobs are gone (an ``rmi`` removed them); return their
    names. Such an entry would never be used again: the step it names is run anew."""
    directory = Path(store.home) / CACHE_DIR
    if not directory.is_dir():
        return []
    dropped = []
    for path in sorted(directory.glob("*.json")):
        entry = _read(path)
        if all(oci.blob_path(store.layout, digest).is_file() for digest in _layer_digests(entry)):
            continue
        path.unlink(missing_ok=True)
        dropped.append(f"build-cache {path.stem[:18]}")
    return dropped


def _layer_digests(entry) -> list[str]:
    """The layer blobs an entry stands on; an unreadable entry stands on a missing one."""
    try:
        digests = entry["layers"] if "layers" in entry else [entry["layer"]["digest"]]
        for digest in digests:
            oci.validate_digest(digest)
        return digests
    except (TypeError, KeyError, ValueError, ContainedError):
        return ["sha256:" + "0" * 64]


def _config_key(config: dict, layers: list) -> str:
    """The config without its `created` times, and the layers' blob digests, hashed."""
    timeless = dict(config)
    timeless.pop("created", None)
    timeless["history"] = [{k: v for k, v in entry.items() if k != "created"}
                           for entry in config.get("history") or []]
    text = json.dumps([timeless, [d.digest for d, _ in layers]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
