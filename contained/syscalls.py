"""The Linux system calls containers are made of, for Python 3.11 (which lacks os.unshare).

Taught across notebooks 01, 03 and 05. Each wrapper is the C call of the same name, through
ctypes; a failure raises OSError with the errno and what was being done, e.g.
``OSError: [Errno 1] mount overlay on /x: Operation not permitted``.

Only ever called in a single-threaded process (the runner or the container's init): never in a
Jupyter kernel, whose threads make namespace calls unsafe.
"""

import ctypes
import os
import re
import signal
import struct

#: the one handle on the C library every ctypes call goes through (None: the libc this Python
#: already has loaded); use_errno so that a failure's errno can be read right after the call
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long  # a syscall returns a long: an fd, or -1

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# <linux/mount.h>, mount_setattr(2) (Linux 5.12): change a whole mount tree's flags at once
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# <sys/prctl.h>: every prctl option contained uses
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4  # arg2 of PR_CAP_AMBIENT

# <linux/seccomp.h>
SECCOMP_MODE_FILTER = 2

# <linux/openat2.h>: resolve a path as if a directory were "/" (kernel 5.6+)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

# <linux/sched.h>: clone3's flag that starts the child in a cgroup v2 group (kernel 5.7+)
CLONE_INTO_CGROUP = 0x200000000

_SYSCALL_NUMBERS = {
    # name: (x86_64, aarch64)
    "pivot_root": (155, 41),
    "capset": (126, 91),
    "capget": (125, 90),
    "setns": (308, 268),
    "mount_setattr": (442, 442),
    "keyctl": (250, 219),
    "openat2": (437, 437),
    "clone3": (435, 435),
}
# os.uname() rather than platform.machine(): the same answer, without importing platform
_ARCH_INDEX = 0 if os.uname().machine in ("x86_64", "amd64") else 1


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(name: str, *args) -> int:
    return libc.syscall(_SYSCALL_NUMBERS[name][_ARCH_INDEX], *args)


def unshare(flags: int) -> None:
    """Move this process into new namespaces (``unshare(1)`` without the fork)."""
    _check(libc.unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def close_fds_except(keep) -> None:
    """Close every descriptor above 2 except those in `keep` (None entries are ignored):
    a forked process inherits every descriptor of its parent, host ones included."""
    low = 3
    for fd in sorted({fd for fd in keep if fd is not None and fd > 2}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def fork_into_cgroup(group_dir_fd: int) -> int:
    """fork(), with the child born in the cgroup v2 group `group_dir_fd` (clone3 with
    CLONE_INTO_CGROUP): 0 in the child, its pid in the parent.

    Being born in a group costs no migration, where moving a process (``echo PID >
    cgroup.procs``) takes a global lock that waits for an RCU grace period, ~10 ms on an idle
    machine. This is a raw clone: Python's own fork bookkeeping does not run in the child, so
    only a single-threaded process may call it (the runner's workers are).
    """
    # struct clone_args (CLONE_ARGS_SIZE_VER2): flags, pidfd, child_tid, parent_tid,
    # exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup
    args = struct.pack("=11Q", CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0,
                       group_dir_fd)
    buffer = ctypes.create_string_buffer(args, len(args))
    return _check(_syscall("clone3", buffer, ctypes.c_size_t(len(args))), "clone3")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that `fd` (an open /proc/PID/ns/* file) refers to."""
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd {fd})")


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); `data` is the comma-separated option string (e.g. overlay's lowerdir=...)."""
    result = libc.mount(
        source.encode(), str(target).encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None)
    _check(result, f"mount {fstype or source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2); MNT_DETACH for a lazy unmount."""
    _check(libc.umount2(str(target).encode(), ctypes.c_int(flags)), f"umount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(target: str, attr_set: int, recursive: bool = True) -> None:
    """mount_setattr(2): add MOUNT_ATTR_* flags to the mount at `target` and, `recursive`,
    to every mount below it (what a remount cannot do: it ignores MS_REC). Other flags stay.
    Kernels before 5.12 raise OSError with ENOSYS."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = libc.syscall(_SYSCALL_NUMBERS["mount_setattr"][_ARCH_INDEX],
                           ctypes.c_int(AT_FDCWD), str(target).encode(), ctypes.c_uint(flags),
                           ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(result, f"mount_setattr {target}")


# <linux/keyctl.h>
KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring() -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new anonymous session keyring, as runc
    gives each container; returns its serial. Keys the caller's session held are out of
    reach from now on, and keys added to this one stay with this process and its children."""
    result = libc.syscall(_SYSCALL_NUMBERS["keyctl"][_ARCH_INDEX],
                           ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_char_p(None))
    return _check(result, "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


class _OpenHow(ctypes.Structure):
    """struct open_how (<linux/openat2.h>)"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open `path` relative to `dir_fd` and return the fd; `resolve` says how the
    kernel may walk it (RESOLVE_IN_ROOT: as if `dir_fd` were "/", so every symlink and ".."
    stays inside). Raises OSError: ENOSYS before Linux 5.6, EPERM under a seccomp filter
    that does not know the call, ELOOP for a symlink loop."""
    how = _OpenHow(flags, mode, resolve)
    fd = _syscall("openat2", ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, e.g. (6, 1); (0, 0) if `uname -r` is odd."""
    numbers = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make `new_root` the root and move the old root to `put_old`."""
    result = _syscall("pivot_root", str(new_root).encode(), str(put_old).encode())
    _check(result, f"pivot_root {new_root} {put_old}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname {name}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(libc.prctl(ctypes.c_int(option), *args), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks, bit N = capability N)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall("capset", ctypes.byref(header), data), "capset")


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_syscall("capget", ctypes.byref(header), data), "capget")
    combine = lambda field: getattr(data[0], field) | (getattr(data[1], field) << 32)  # noqa: E731
    return combine("effective"), combine("permitted"), combine("inheritable")


def set_process_title(title: str) -> None:
    """Rewrite this process's command line as `ps` shows it, in place (like setproctitle).

    PID 1 of a container is our Python init; inside the container `ps` should say what it is
    rather than show the host path of the Python interpreter. The kernel reads the command line
    from the original argv memory, which Python has copied away: overwrite it, never past its end.
    """
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 (arg_start, arg_end)
    raw = title.encode()[: max(0, end - start - 1)]
    ctypes.memmove(start, raw + b"\0" * (end - start - len(raw)), end - start)
    name = ctypes.create_string_buffer(title.encode()[:15])
    libc.prctl(PR_SET_NAME, name, 0, 0, 0)
