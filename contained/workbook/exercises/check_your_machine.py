"""Notebook 00's exercise (check your machine): which cgroup layout this machine has, and the proof.

00.1 `check_cgroup_mode` judges the mode (v1, v2, hybrid) and where the cgroup2 tree is mounted,
against what the machine really has::

    stat -fc %T /sys/fs/cgroup          # cgroup2fs: v2; tmpfs: v1 or hybrid
    grep cgroup /proc/self/mountinfo    # a cgroup2 line (and where) tells hybrid from v1
"""

from contained.runtime import cgroups
from contained.workbook.exercises.hints import Feedback, exercise, right, unanswered, wrong

CGROUP_MODES = {"v1", "v2", "hybrid"}


#: check_cgroup_mode's `cgroup2_at` when the notebook does not ask for it (older callers)
_NOT_ASKED = object()


@exercise("00.1",
          concept="cgroup v2 is one tree (a cgroup2 filesystem); v1 is one tree per controller "
                  "(cgroup filesystems named memory, cpu, pids...); hybrid has both at once",
          where="the mount list printed under \"Control groups: v1, v2, or both\" (the "
                "filesystem type is the second column) and the doctor table's cgroups line",
          solution="whatever `stat -fc %T /sys/fs/cgroup` and the mount list say: tmpfs with "
                   "cgroup (v1) directories and a cgroup2 at /sys/fs/cgroup/unified is hybrid "
                   '(cgroup2_at = "/sys/fs/cgroup/unified"); cgroup2fs on /sys/fs/cgroup itself '
                   'is v2 (cgroup2_at = "/sys/fs/cgroup"); no cgroup2 line at all is v1 ("none")')
def check_cgroup_mode(answer: str | None, host: cgroups.CgroupHost | None = None,
                      cgroup2_at=_NOT_ASKED) -> Feedback:
    """Which cgroup layout does this machine have, and where is its cgroup2 tree mounted
    (``"none"`` if nowhere)? The second part is the evidence: one of three words can be
    guessed, a mount point must be read (``stat -fc %T /sys/fs/cgroup``, ``grep cgroup
    /proc/self/mountinfo``)."""
    if answer is None:
        return unanswered('set answer to "v1", "v2" or "hybrid"')
    given = str(answer).strip().lower().replace("cgroup", "").strip(" -")
    if given not in CGROUP_MODES:
        return wrong(f"{answer!r} is not one of v1, v2, hybrid")
    host = host or cgroups.detect()
    actual = host.mode
    if given == actual and cgroup2_at is not _NOT_ASKED:
        return _cgroup2_evidence(cgroup2_at, host)
    if given == actual:
        return right(f"this machine's cgroups are {actual}.")
    hints = {
        "v2": "a pure v2 machine has one tree, and `cgroup2` mounted on /sys/fs/cgroup itself",
        "v1": "a pure v1 machine has one directory per controller (memory, cpu, pids...) and no "
              "cgroup2 mount at all",
        "hybrid": "a hybrid machine has both: v1 controller directories, and a cgroup2 tree at "
                  "/sys/fs/cgroup/unified",
    }
    return wrong(f"this machine is not {given}: {hints[given]}. Look again at the doctor table's "
                 "cgroups line.")


def _cgroup2_evidence(cgroup2_at, host: cgroups.CgroupHost) -> Feedback:
    """The mode was right: is the mount point of the cgroup2 tree right too?"""
    where = str(host.unified) if host.unified is not None else "none"
    if cgroup2_at is None:
        return unanswered(f"{host.mode} is right; now set cgroup2_at to where the cgroup2 tree "
                           'is mounted (a path from the mount list), or "none"')
    given = str(cgroup2_at).strip().rstrip("/") or "/"
    if given == where:
        return right(f"this machine's cgroups are {host.mode}, and the mount list proves it: "
                     f"cgroup2 is {'at ' + where if host.unified else 'not mounted'}.")
    if where == "none":
        return wrong(f"{host.mode} is right, but no cgroup2 filesystem is mounted here: the "
                     'answer is "none"')
    return wrong(f"{host.mode} is right, but the cgroup2 tree is not at {given!r}: find the "
                 "line whose type (second column of the mount list) is cgroup2")
