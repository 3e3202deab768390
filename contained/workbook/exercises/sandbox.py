"""Where a learner's shell command runs when a checker runs it: never on the host as it is.

Used by notebook 01's `check_uts_command`. As root the command gets namespaces of its own over a
read-only copy of the host's mounts, as `nobody` mapped to root of a user namespace; without
root it runs in a user namespace of its own, where it can change nothing the learner could not
change anyway::

    unshare --mount --propagation private sh -c '
        mount -o remount,bind,ro POINT ...; mount -t tmpfs checked /tmp ...
        setpriv --reuid=65534 --regid=65534 --clear-groups -- \\
            unshare --user --map-root-user --mount --uts --ipc --net --pid --fork bash -c CMD'
    unshare --user --map-root-user --mount --uts --ipc --net --pid --fork bash -c CMD  # rootless
"""

import subprocess

#: The checked command's namespaces: its own mount, UTS, IPC, network and PID namespaces, as
#: root of a user namespace that is the host's `nobody` outside, over a read-only copy of the
#: host's mounts with fresh tmpfs where programs write. The copy is made by real root first, so
#: in the user namespace it is locked: the answer can neither remount it writable nor unmount
#: the tmpfs to reach the host's /tmp.
SANDBOX_USER = 65534
SANDBOX_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_SANDBOX_PRELUDE = """
cut -d' ' -f5 /proc/self/mountinfo | while read -r point; do
    case "$point" in /proc|/proc/*) continue ;; esac  # unshare --user writes /proc/self/uid_map
    mount -o remount,bind,ro "$point" 2>/dev/null || true
done
for dir in {tmpfs}; do
    [ -d "$dir" ] && mount -t tmpfs -o mode=1777,size=16m checked "$dir"
done
exec setpriv --reuid={user} --regid={user} --clear-groups -- \
    unshare --user --map-root-user --mount --uts --ipc --net --pid --fork --kill-child -- \
    bash -c "$1"
"""


def run_in_sandbox(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a learner's shell `command` with bash, as root would, where it cannot change the
    host: ``unshare --mount`` (a private copy of the mounts, made read-only), then as `nobody`
    ``unshare --user --map-root-user --mount --uts --ipc --net --pid --fork``."""
    prelude = _SANDBOX_PRELUDE.format(tmpfs=" ".join(SANDBOX_TMPFS), user=SANDBOX_USER)
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", prelude,
            "sandbox", command]
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "LANG": "C.UTF-8", "HOME": "/"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                          env=environment, stdin=subprocess.DEVNULL)


def run_in_user_namespace(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The rootless `run_in_sandbox`: an unprivileged learner's `command` runs as root of a user
    namespace of its own (``unshare --user --map-root-user --mount --uts --ipc --net --pid
    --fork``), where it can change nothing the learner could not change anyway."""
    argv = ["unshare", "--user", "--map-root-user", "--mount", "--uts", "--ipc", "--net",
            "--pid", "--fork", "--kill-child", "--", "bash", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                          stdin=subprocess.DEVNULL)
