"""Notebook 07's exercises (safety): a layer the unpacker must refuse, and the walls that keep
root in a container off the host.

07.1 `check_layer_refused` unpacks the learner's tar in a scratch directory and checks that an
*entry* was refused and nothing escaped; 07.2 `check_boundary` names the walls
(`BOUNDARY_WALLS`). What 07.1 stands for::

    mkdir -p box/rootfs && tar -xf layer.tar -C box/rootfs    # refused, and nothing in box/
"""

import tempfile
from pathlib import Path

from contained.errors import ContainedError
from contained.workbook.exercises.hints import Feedback, exercise, right, unanswered, wrong


@exercise("07.1",
          concept="an unpacker is attacked through the names and link targets of a layer's "
                  "entries, not through its bytes: a valid tar whose entry tries to leave the "
                  "image's directory",
          where="section 1 of notebook 07: each `try_layers(...)` cell is one attack, and "
                "`workbook.tar_layer` builds the tar",
          solution='answer = workbook.tar_layer(("../escaped.txt", "file", b"out")), or a '
                   'hardlink to ../../etc/passwd')
def check_layer_refused(tar_bytes: bytes | None) -> Feedback:
    """A layer (uncompressed tar bytes) the unpacker must refuse *for one of its entries*:
    unpack it into a scratch directory with `contained.images.unpack`, and check nothing
    escaped. Bytes that are not a tar at all (random, empty, cut short) are refused too, but
    as a broken download, not as an attack: they do not count."""
    from contained.images import build, oci, unpack

    if tar_bytes is None:
        return unanswered("set answer to the bytes of a tar layer you built with tarfile")
    if not _is_tar_with_entries(tar_bytes):
        return wrong("that is not a tar archive with entries (random, empty or cut-short "
                     "bytes): the unpacker refuses it as a broken download, before any entry "
                     "is read. An attack is a valid tar whose entry tries to get out")
    with tempfile.TemporaryDirectory(prefix="contained-exercise-") as scratch:
        scratch = Path(scratch)
        layout, dest, outside = scratch / "layout", scratch / "box" / "rootfs", scratch / "box"
        dest.mkdir(parents=True)
        built = build.write_layer(layout, tar_bytes, compress=False)
        blob = oci.blob_path(layout, built.descriptor.digest)
        try:
            unpack.unpack_layer(blob, built.descriptor, built.diff_id, dest)
        except ContainedError as error:
            escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
            if escaped:
                return wrong(f"refused, but {escaped} was written outside first: report this "
                             "as a bug")
            if isinstance(error, (unpack.LayerTruncated, unpack.LayerCorrupt)):
                return wrong(f"refused as a broken tar, not for what an entry does: {error}")
            return right(f"the unpacker refused it: {error}")
        escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
        if escaped:
            return wrong(f"{escaped} escaped the layer's directory: report this as a bug")
        return wrong("this layer unpacked cleanly: everything in it stays inside the image. "
                     "Try a name with ../ in it, an absolute symlink followed by a file under "
                     "it, or a hardlink to /etc/passwd")


def _is_tar_with_entries(data: bytes) -> bool:
    """Does `data` parse as a tar archive holding at least one entry (``tar -t`` lists one)?"""
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()  # reads to the end: a cut-short tar fails here
    except (tarfile.TarError, EOFError, OSError):
        return False
    return bool(members)


#: The walls that together keep root in a container off the host's files, with the words a
#: learner may use for each.
BOUNDARY_WALLS = {
    "pivot_root": {"pivot_root", "pivot root", "pivot-root", "pivotroot"},
    "capabilities": {"capabilities", "dropped capabilities", "drop capabilities", "caps",
                     "capability"},
    "device rules": {"device rules", "devices", "device cgroup", "devices cgroup", "nodev",
                     "device"},
    "seccomp": {"seccomp", "seccomp filter", "seccomp profile"},
}
_WALL_MISSING = {
    "pivot_root": "without pivot_root the host's tree is still mounted above / and chroot "
                  "climbs out of it (you saw it)",
    "capabilities": "with every capability, root can mount, load modules, and mknod the host's "
                    "disk and mount it: capabilities must be dropped",
    "device rules": "root keeps CAP_MKNOD (Docker grants it): without device rules (a devices "
                    "cgroup, nodev mounts) a node it makes for the host's disk opens",
    "seccomp": "capabilities do not cover every system call: keyctl, bpf, unshare of a user "
               "namespace... need no capability, and seccomp is what refuses them",
}


@exercise("07.2",
          concept="one wall is not enough: each one closes a different door (the host's "
                  "mounts, privileged operations, device nodes, system calls nobody needs)",
          where="section 3 of notebook 07, \"What root in a container can still do\": the "
                "same probes by hand and in `contained run`, side by side",
          solution='answer = {"pivot_root", "capabilities", "device rules", "seccomp"}')
def check_boundary(answer) -> Feedback:
    """Which walls, together, keep root in the container off the host: a set of names."""
    if answer is None:
        return unanswered('set answer to a set of names, e.g. {"pivot_root", ...}')
    given = {answer} if isinstance(answer, str) else set(answer)
    words = {str(word).strip().lower().replace("_", " ") for word in given}
    chosen, unknown = set(), []
    for word in words:
        wall = next((name for name, aliases in BOUNDARY_WALLS.items()
                     if word in {a.replace("_", " ") for a in aliases}), None)
        if wall:
            chosen.add(wall)
        else:
            unknown.append(word)
    if "chroot" in unknown:
        return wrong("chroot only changes where '/' starts for path lookups; the host's root "
                     "is still mounted, and root can chroot again and climb out (you saw it)")
    if unknown:
        return wrong(f"{', '.join(sorted(unknown))}: not a wall between the container's root "
                     "and the host (the walls are in notebook 07's section 3)")
    missing = [wall for wall in BOUNDARY_WALLS if wall not in chosen]
    if missing:
        return wrong(_WALL_MISSING[missing[0]])
    return right("pivot_root removes the host's tree, dropped capabilities take away mount "
                 "and its like, device rules make a device node useless, and seccomp refuses "
                 "the system calls left over. Each alone leaves a door open.")
