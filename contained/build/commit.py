"""``contained commit CONTAINER NAME[:TAG]``: a named container's changes become an image.

Taught in notebook 09 ("Build an image"). By hand::

    contained stop web                                     # nothing writes while we read
    # HOME/containers/<id>/upper → a layer (contained.images.upperlayer: whiteouts converted)
    # the image's config + one diff_id + one history entry → config and manifest blobs
    contained commit web mine:2                            # all of that, tagged mine:2

Docker's ``docker commit``. The image's config is kept (Env, Cmd, Entrypoint, WorkingDir,
Labels); the files the runtime writes into every container (/etc/hostname, /etc/hosts,
/etc/resolv.conf) are left out, as Docker leaves out its bind mounts.
"""

from pathlib import Path

from contained.images import upperlayer
from contained.images.store import Store
from contained.runtime import container as containers


def commit(container_name: str, name: str, *, store=None, epoch: int | None = None,
           message: str | None = None):
    """``contained commit CONTAINER NAME[:TAG]``: the container's upper directory as a new layer
    on top of its image, the image's config kept (Env, Cmd, Entrypoint, WorkingDir...)."""
    store = store or Store()
    found = containers.get(container_name)
    upper = Path(found.spec.directory) / "upper"
    if not upper.is_dir():
        raise upperlayer.CommitFailed(f"container {found.name} has no upper directory left (a "
                                      "throwaway container?): commit a named one, `contained "
                                      "run --name NAME ...`")
    parent = store.image(found.spec.image)
    with store.lock(shared=True):
        layer = upperlayer.layer_from_directory(upper, store.layout, epoch=epoch,
                                                exclude=upperlayer.RUNTIME_FILES)
    created_by = message or f"contained commit {found.name}"
    config = upperlayer.add_history(upperlayer.parent_config(store, parent), created_by,
                                    upperlayer.created_timestamp(epoch), layer.diff_id)
    layers = [*parent.layers, (layer.descriptor, layer.diff_id)]
    return upperlayer.tag_image(store, layers, config, name)
