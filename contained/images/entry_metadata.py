"""A layer entry's owner, mtime and xattrs: which to restore, and when a chown is not needed.

Taught in notebook 07 ("Safety"). What tar does when root extracts with ``--same-owner
--xattrs``, with the xattrs narrowed to what a container may carry::

    chown -h UID:GID NAME             # only as root; an id unmapped in a user namespace: warn
    touch -h -d @MTIME NAME           # never through a symlink
    setfattr -n user.NAME -v VALUE    # user.* (not user.overlay.*) and security.capability

Dropped, with a warning in the `LayerReport`: ``trusted.*`` (overlayfs's own markers, which a
layer must not forge), ``user.overlay.*`` (the same, for overlays mounted with ``userxattr``)
and any other ``security.*`` (SELinux and IMA labels are the host's policy, not the image's).
`EntryMetadata` is `contained.images.tar_extract.TarExtractor`'s half that does this; the
committer (`contained.images.upperlayer`) keeps the same xattrs (`kept_xattr`).
"""

import os
import stat
import tarfile
from pathlib import Path

KEPT_XATTRS = ("user.",)
DROPPED_XATTRS = ("user.overlay.",)
KEPT_SECURITY_XATTRS = ("security.capability",)
XATTR_PAX_PREFIX = "SCHILY.xattr."


def kept_xattr(name: str) -> bool:
    """Does a layer keep this xattr (see the module docstring)?"""
    return (name.startswith(KEPT_XATTRS) and not name.startswith(DROPPED_XATTRS)
            or name in KEPT_SECURITY_XATTRS)


def creator_ids(dest: Path, root_fd: int, *, privileged: bool, apply: bool):
    """The (uid, gid) every entry created below `dest` gets anyway, or None if unsure.

    Known when unpacking as root in the overlay form into an empty directory without the
    setgid bit: every directory below it is then ours, made 0700 (no setgid bit to hand its
    group on) until the end of the layer. An entry owned by exactly these ids needs no chown:
    a fifth of a regular file's system calls, and each call hands the GIL to the other
    layers' threads."""
    if not privileged or apply or os.fstat(root_fd).st_mode & stat.S_ISGID:
        return None
    with os.scandir(dest) as entries:
        if next(entries, None) is not None:
            return None
    return os.geteuid(), os.getegid()


class EntryMetadata:
    """Owner, mtime and xattrs of one entry. Mixed into `TarExtractor`, whose `privileged`,
    `creator_ids`, `report` and `warn_once` it uses."""

    def needs_owner(self, info: tarfile.TarInfo) -> bool:
        """Does this entry need a chown (see `creator_ids`)? Never when unprivileged."""
        return self.privileged and (info.uid, info.gid) != self.creator_ids

    def set_owner(self, fd, base, info) -> None:
        if self.needs_owner(info):
            try:
                os.chown(base, info.uid, info.gid, dir_fd=fd, follow_symlinks=False)
            except OSError as err:  # e.g. an id unmapped in a user namespace
                self.warn_once("chown", f"cannot chown to {info.uid}:{info.gid}: {err.strerror}")

    def set_times(self, fd, base, info) -> None:
        try:
            os.utime(base, ns=(ns(info.mtime),) * 2, dir_fd=fd, follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            self.warn_once("mtime", f"cannot set mtime {info.mtime} on {info.name!r}")

    def set_xattrs(self, fd: int, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            attr = key[len(XATTR_PAX_PREFIX):]
            if not kept_xattr(attr):
                self.report.warn(f"dropped xattr {attr} of {info.name!r}")
                continue
            try:
                os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
            except OSError as err:
                self.warn_once(f"xattr {attr}", f"cannot set xattr {attr}: {err.strerror}")


def ns(mtime: float | int) -> int:
    """A tar mtime (seconds, maybe fractional from a pax header) in nanoseconds."""
    return int(mtime) * 1_000_000_000 if isinstance(mtime, int) else int(mtime * 1e9)
