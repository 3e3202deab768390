"""Notebook 03's exercises (overlay filesystems): a whiteout made the right way, copy-up, and
why work/ shares upper/'s filesystem.

03.1 `check_whiteout` looks at the learner's real directories; 03.2 and 03.3 are
predict-then-run questions. What a whiteout looks like::

    rm merged/NAME          # through the mounted overlay
    ls -l upper/NAME        # c--------- 0, 0: a character device 0:0, lower/NAME untouched
    ls work/                # work/work: overlayfs makes it at every mount
"""

import os
import stat
from pathlib import Path

from contained.workbook.exercises.hints import (
    Feedback,
    exercise,
    prediction,
    right,
    unanswered,
    wrong,
)


def is_whiteout(path: Path) -> bool:
    """An overlayfs whiteout: a character device with device number 0:0."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


@exercise("03.1",
          concept="deleting a lower file through the overlay leaves a whiteout (character "
                  "device 0:0) in upper; lower never changes",
          where='the "Deleting: whiteouts" cell (mount, `rm merged/...`, unmount) and the '
                "`upper` table after it",
          solution="mkdir -p ex03/lower ex03/upper ex03/work ex03/merged; echo hi > "
                   "ex03/lower/notes.txt; mount -t overlay overlay -o lowerdir=ex03/lower,"
                   "upperdir=ex03/upper,workdir=ex03/work ex03/merged; rm ex03/merged/notes.txt;"
                   " umount ex03/merged")
def check_whiteout(lab: str | Path, name: str) -> Feedback:
    """`name` deleted through the overlay at LAB/merged: a whiteout in LAB/upper, the file
    still in LAB/lower (``ls -l upper/NAME`` shows ``c--------- 0, 0``)."""
    lab = Path(lab)
    lower, upper = lab / "lower" / name, lab / "upper" / name
    if not (lab / "upper").is_dir():
        return unanswered(f"{lab / 'upper'} does not exist yet: make lower/, upper/, work/, "
                           "merged/ in it and mount the overlay first")
    if not lower.exists():
        return wrong(f"{lower} is missing: the file must exist in the lower layer (and stay "
                     "there) — create it before mounting")
    if is_whiteout(upper):
        if not (lab / "work" / "work").is_dir():
            # overlayfs makes work/work at every mount: without it, no overlay ever used this
            # upper, and the whiteout was made by hand (mknod upper/NAME c 0 0).
            return wrong(f"upper/{name} is a whiteout, but {lab / 'work'} was never used by an "
                         "overlay mount (overlayfs makes work/work when it mounts): delete the "
                         "file through merged/, don't mknod the whiteout yourself")
        if (lab / "merged" / name).exists() and _mounted(lab / "merged"):
            return wrong(f"the whiteout is there but merged/{name} is still visible: was the "
                         "overlay remounted with another upper?")
        return right(f"upper/{name} is a whiteout (character device 0:0) and lower/{name} is "
                     "untouched: the layer below was never changed.")
    if upper.exists():
        return wrong(f"upper/{name} is a regular {('directory' if upper.is_dir() else 'file')}, "
                     f"not a whiteout: delete it through merged/ (`rm merged/{name}`), never by "
                     "writing into upper/ directly")
    return wrong(f"upper/{name} does not exist: delete the file through the overlay "
                 f"(`rm merged/{name}` while it is mounted), not in lower/")


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


prediction(
    "03.2",
    "lower/big.bin is 64 MiB. Through the overlay you append ONE line to merged/big.bin. How "
    "big is upper/big.bin afterwards?",
    {"b": "a few bytes: upper keeps only the line you added",
     "a": "64 MiB and a line: the whole file is copied up before the first write",
     "c": "nothing is in upper: the change is written into lower/big.bin"},
    "a",
    {"b": "overlayfs works on whole files, not blocks: the first write to a lower file copies "
          "all of it up into upper, and only then changes the copy.",
     "a": "copy-up copies the whole file at the first write (open for writing, even for one "
          "byte, or chmod/chown); later writes go to the copy. A container that touches a big "
          "file of its image pays for all of it, in time and in disk.",
     "c": "lower is never written: that is the whole point of the layers (notebook 04 shares "
          "them between images)."},
    concept="copy-up: overlayfs copies a lower file into upper, whole, before its first change",
    where='the "Copy-up" cell: compare upper/hello.txt and lower/hello.txt')

prediction(
    "03.3",
    "you mount the same overlay, but with work/ on a tmpfs of its own (a different filesystem "
    "from upper/). What happens?",
    {"a": "it mounts, and copy-ups are just slower",
     "b": "it mounts, and the changes go into work/ instead of upper/",
     "c": "the mount is refused: the kernel logs \"workdir and upperdir must reside under the "
          "same mount\""},
    "c",
    {"a": "a copy-up is prepared in work/ and then *renamed* into upper/, so that nobody ever "
          "sees a half-copied file. rename(2) cannot cross filesystems, so the kernel checks "
          "this at mount time and refuses.",
     "b": "work/ is only scratch space: files pass through it on their way into upper/.",
     "c": "a copy-up is prepared in work/ and then renamed into upper/ in one atomic step, so "
          "no one ever sees a half-copied file; a rename cannot cross filesystems, so the "
          "kernel refuses the mount up front (EINVAL; the reason is in the kernel log)."},
    concept="work/ is where a copy-up is prepared before it is renamed into upper/, atomically",
    where="the overlay's mount line in any cell: upperdir= and workdir= are siblings on one "
          "filesystem")
