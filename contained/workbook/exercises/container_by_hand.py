"""Notebook 05's exercises (a container by hand): a real /dev/null, and whose kernel uname names.

05.1 `check_dev_null` looks at the learner's root directory; 05.2 `check_kernel_release`
compares with the host's kernel::

    ls -l root/dev/null                   # crw-rw-rw- 1, 3: the null device
    mknod -m 666 root/dev/null c 1 3      # how to make it
    uname -r                              # the same inside and outside
"""

import os
import stat
from pathlib import Path

from contained.workbook.exercises.hints import Feedback, exercise, right, unanswered, wrong


@exercise("05.1",
          concept="a device file is a name for a (major, minor) pair the kernel knows: /dev/null "
                  "is character device 1:3; writing to a missing one made a regular file",
          where="\"/dev is empty\" in notebook 05, and `ls -l /dev/null` on the host",
          solution="rm -f root/dev/null && mknod -m 666 root/dev/null c 1 3")
def check_dev_null(root: str | Path) -> Feedback:
    """ROOT/dev/null is the real null device, character 1:3 (``ls -l root/dev/null`` shows
    ``crw-rw-rw- 1, 3``; ``mknod -m 666 root/dev/null c 1 3`` makes it)."""
    path = Path(root) / "dev" / "null"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return wrong(f"{path} does not exist: make it with `mknod -m 666 {path} c 1 3`")
    if stat.S_ISREG(info.st_mode):
        return wrong(f"{path} is a regular file ({info.st_size} bytes): a program wrote to "
                     "/dev/null while /dev was empty, so the shell created a file. Remove it, "
                     f"then `mknod -m 666 {path} c 1 3`")
    if stat.S_ISLNK(info.st_mode):
        return wrong(f"{path} is a symlink: a link could point anywhere on the host; make a "
                     "device node instead (mknod ... c 1 3)")
    if not stat.S_ISCHR(info.st_mode):
        return wrong(f"{path} is not a character device: use `mknod ... c 1 3`")
    numbers = (os.major(info.st_rdev), os.minor(info.st_rdev))
    if numbers != (1, 3):
        return wrong(f"{path} is device {numbers[0]}:{numbers[1]}, not 1:3 (null). 1:5 is "
                     "zero, 1:8 random, 1:9 urandom")
    if info.st_mode & 0o666 != 0o666:
        return wrong(f"{path} is the null device but mode {oct(info.st_mode & 0o777)}: "
                     "everyone must be able to write to it (chmod 666)")
    return right(f"{path} is the null device (character 1:3, mode 666).")


@exercise("05.2",
          concept="a container has no kernel of its own: uname asks the one kernel there is",
          where="the output of step 5 (\"uname -r inside:\") and the cell after it",
          solution="answer = os.uname().release")
def check_kernel_release(answer: str | None) -> Feedback:
    """What ``uname -r`` prints inside the container: the host's kernel."""
    if answer is None:
        return unanswered("set answer to what `uname -r` printed inside the container")
    host = os.uname().release
    if str(answer).strip() == host:
        return right("containers share the host's kernel, so `uname -r` is the same inside "
                     "and outside; only the hostname (UTS namespace) can differ.")
    return wrong(f"{answer!r} is not what the container sees: a container has no kernel of its "
                 "own, so it reports the host's. Run `uname -r` in both and compare")
