"""The container's root filesystem: overlay, /proc, /sys, /dev, /etc files, volumes, pivot_root.

Taught in notebook 05 ("A container by hand"), which starts from the tutorial's
``chroot root /bin/sh`` and fixes what it leaves broken: an empty /dev (writing /dev/null
creates a file), no /proc, no /sys, and an escapable chroot. The shell equivalent, run inside
the new mount namespace::

    mount --make-rprivate /
    mount -t overlay overlay -o lowerdir=...,upperdir=upper,workdir=work root
    mount -o remount,bind,nodev root
    mount -t proc -o nosuid,nodev,noexec proc root/proc
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs root/sys
    mount -t tmpfs -o nosuid,nodev,mode=755,size=65536k tmpfs root/dev
    touch root/dev/null && mount --bind /dev/null root/dev/null     # and zero, full, ...
    mount --rbind HOST root/DEST && mount -o remount,bind,nodev root/DEST   # a volume (*)
    cd root && pivot_root . . && umount -l .

Every path inside the root is resolved with `contained.images.safepath`, as if the root were "/": an
image whose /dev, /proc or /etc/hosts is a symlink to a host path cannot make us mount, link or
write there. Volume destinations may not resolve to /, nor into /proc, /sys or /dev.

Devices. Container root keeps CAP_MKNOD (Docker's default), so it can make a node for any
device — the host's disks included. Two layers stop it from opening one: every writable mount
in the container is ``nodev`` (the overlay root, /dev's tmpfs, /dev/shm, volumes with every
mount below them), so a node made anywhere it can write does not open; only the standard
device files bound from the host, and devpts (its pseudo-terminals), are not. That works on
cgroup v1 and v2 and rootless alike. On cgroup v1 the devices controller adds runc's list on
top (`cgroups`); on pure v2 runc and crun load a BPF device program instead, which we
do not assemble by hand: there ``nodev`` is the rule.

Read-only volumes are read-only all the way down: a remount ignores MS_REC, so nested mounts
would stay writable. (*) mount_setattr(2) with AT_RECURSIVE (Linux 5.12, runc's ``rro``) sets
MOUNT_ATTR_RDONLY and MOUNT_ATTR_NODEV on the whole tree at once; Debian 12's mount(8) has no
option for that ("it's impossible to change mount options recursively"), so --explain shows
the remount and says the rest. Without mount_setattr a read-only volume holding other mounts
is refused.
"""

import errno
import os
import shlex
import stat
from pathlib import Path

from contained import syscalls
from contained.images import safepath
from contained.records import field, record
from contained.runtime import mountinfo
from contained.runtime.overlay import mount_overlay_step
from contained.runtime.plan import Step
from contained.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    MS_STRICTATIME,
)

# The device nodes a process expects; bind-mounted from the host's, so no mknod is needed (and
# rootless mode, where mknod is forbidden, works the same way).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# What runc hides in /proc and /sys by default: kernel memory, keys, timers and firmware
# interfaces that leak host information or allow host-wide actions.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@record(frozen=True)
class Volume:
    """A host path bind-mounted into the container (``-v HOST:CONTAINER[:ro]``)."""

    host: str
    container: str
    readonly: bool = False


@record
class RootfsSpec:
    """What the root filesystem needs, gathered from the image and the user's options."""

    lowers: list[Path]
    upper: Path
    work: Path
    root: Path
    hostname: str
    hosts: bytes
    resolv_conf: bytes | None = None
    volumes: list[Volume] = field(default_factory=list)
    working_dir: str = "/"
    chroot: bool = False
    hosts_file: Path | None = None
    fuse: bool = False  # fuse-overlayfs instead of the kernel's overlay (see overlay.use_fuse)
    host_sys: bool = False  # bind the host's /sys: rootless --net host may not mount sysfs


def plan_rootfs(spec: RootfsSpec, staged: Path | None = None) -> list[Step]:
    """Every mount and write that builds the root, in order (run inside the new mount ns).

    With `staged` (see `plan_staging`), /proc, /sys and /dev were built ahead of time and are
    moved into place instead, and the /etc files come as a layer above the image's, made on
    the staging tmpfs (`_etc_layer_step`), where the image's /etc lets them.
    """
    root = spec.root
    steps = [] if staged else [_private_step()]
    lowers, files = spec.lowers, _etc_files(spec)
    mergeable, image_etc = _image_etc(spec.lowers) if staged else (False, None)
    if mergeable:
        layer = staged / "etc-layer"
        steps.append(_etc_layer_step(layer, files, image_etc))
        lowers, files = [*spec.lowers, layer], {}
    steps.append(mount_overlay_step(lowers, spec.upper, spec.work, root, fuse=spec.fuse))
    steps.append(Step(f"mount -o remount,bind,nodev {root}",
                      "a device node made in the container's files does not open",
                      lambda: _remount_nodev(str(root))))
    if staged:
        steps += [_move_step(staged, root, path) for path in STAGED]
    else:
        steps += _proc_sys_steps(root, spec.host_sys) + _dev_steps(root)
    steps += _etc_steps(spec, files)
    steps += [_volume_step(root, volume) for volume in spec.volumes]
    steps.append(Step(f"mkdir -p {root}{spec.working_dir}", "the image's WorkingDir must exist",
                      lambda: safepath.mkdirs_in_root(root, spec.working_dir)))
    return steps


# What does not depend on the image: a runner's spare PID 1 builds these ahead of time.
STAGED = ("/proc", "/sys", "/dev")
STAGED_ROOT = "root"  # the container's mount point, in the staging tmpfs


def plan_staging(staging: Path) -> list[Step]:
    """/proc, /sys and /dev built under `staging` (a private tmpfs) before the image is known.

    A runner keeps a spare PID 1 ready in new namespaces; it builds these while it waits, and
    `plan_rootfs(..., staged=staging)` moves them into the container's root, which is
    mounted here too (`root_of`). Explained runs never use a spare: they show (and run) the
    steps in place.
    """
    mount_point = staging / STAGED_ROOT
    return ([_private_step(),
             Step(f"mount -t tmpfs -o mode=755 staging {staging}", "a place to build in",
                  lambda: syscalls.mount("staging", str(staging), "tmpfs", MS_NOSUID,
                                         "mode=755")),
             Step(f"mkdir {mount_point}", "where the container's root will be mounted",
                  lambda: os.mkdir(mount_point, 0o755))]
            + _proc_sys_steps(staging) + _dev_steps(staging))


def root_of(directory: Path, staged: Path | None) -> Path:
    """Where a container's root is mounted: ``DIRECTORY/root``, or, on a spare, a directory
    of its staging tmpfs. A spare's mount namespace is its own, so nobody on the host would
    see the mount anyway; on the tmpfs, the mount point is not one more directory made and
    removed on disk for every container (see `_etc_layer_step` for what that costs)."""
    return staged / STAGED_ROOT if staged else directory / "root"


def _private_step() -> Step:
    return Step("mount --make-rprivate /",
                "our mounts must not propagate back to the host (systemd makes / shared)",
                lambda: syscalls.mount("none", "/", None, MS_REC | MS_PRIVATE))


def _move_step(staging: Path, root: Path, path: str) -> Step:
    return Step(f"mount --move {staging}{path} {root}{path}", "built ahead of time",
                lambda: syscalls.mount(str(staging) + path, str(_inside(root, path)), None,
                                       MS_MOVE))


def _inside(root: Path, path: str) -> Path:
    """`path` made and resolved inside `root`; only /proc and /sys themselves may resolve into
    /proc or /sys (an image's ``dev -> /proc/x`` would have us mount over the kernel's files)."""
    target = safepath.mkdirs_in_root(root, path)
    if path not in ("/proc", "/sys") and _under(_in_root(root, target), ("/proc", "/sys")):
        raise safepath.UnsafePath(f"{path} in the image leads to {_in_root(root, target)}:"
                                  " the runtime mounts nothing there; fix the image's link")
    return target


def _in_root(root: Path, target: Path) -> str:
    """`target`'s path as the container sees it (`target` is inside `root`)."""
    return "/" + str(Path(target).relative_to(root)).removeprefix(".")


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top + "/") for top in tops)


def _remount_nodev(target: str, extra: int = 0) -> None:
    """Add nodev (and `extra`) to the mount at `target` only. A bind remount sets exactly the
    flags it is given, so the ones the mount has are kept (in a user namespace, dropping a
    locked one fails); atime flags are kept by the kernel when none is given."""
    keep = os.statvfs(target).f_flag & (os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV
                                        | os.ST_NOEXEC)  # the same bits as MS_*
    syscalls.mount("none", target, None, MS_BIND | MS_REMOUNT | MS_NODEV | keep | extra)


def _mount_step(shell: str, why: str, root: Path, path: str, source: str, fstype: str | None,
                flags: int, data: str | None = None) -> Step:
    return Step(shell, why, lambda: syscalls.mount(source, str(_inside(root, path)), fstype,
                                                   flags, data))


# The kernel's filesystems every container gets, as (path, source, type, flags, data): the
# steps below mount them, and a spare's C PID 1 from `spare_init.staging_ops`.
_SECURE = MS_NOSUID | MS_NODEV | MS_NOEXEC
PROC = ("/proc", "proc", "proc", _SECURE, None)
SYSFS = ("/sys", "sysfs", "sysfs", _SECURE | MS_RDONLY, None)
DEV = ("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV | MS_STRICTATIME, "mode=755,size=65536k")
DEVPTS = ("/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")
SHM = ("/dev/shm", "shm", "tmpfs", _SECURE, "mode=1777,size=65536k")
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}


def _proc_sys_steps(root: Path, host_sys: bool = False) -> list[Step]:
    steps = [
        _mount_step(f"mount -t proc -o nosuid,nodev,noexec proc {root}/proc",
                    "ps and top read /proc; this one shows only the new PID namespace",
                    root, *PROC),
        Step(f"mount --rbind /sys {root}/sys && mount -o remount,bind,ro,nosuid,nodev,noexec "
             f"{root}/sys  # and every mount below it",
             "rootless --net host: only the owner of a network namespace may mount sysfs, so "
             "the host's /sys is bound in, read-only all the way down (as podman does)",
             lambda: _bind_host_sys(root)) if host_sys else
        _mount_step(f"mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {root}/sys",
                    "programs expect /sys; read-only so the host's devices can't be changed",
                    root, *SYSFS),
    ]
    masked = " ".join(MASKED_PATHS)
    readonly = " ".join(READONLY_PATHS)
    steps += [
        Step(f"for p in {masked}; do mount --bind /dev/null {root}$p; done",
             "hide what leaks host secrets or controls the host, as runc does (a directory "
             "gets an empty read-only tmpfs)", lambda: [_mask(root, p) for p in MASKED_PATHS]),
        Step(f"for p in {readonly}; do mount --bind -o ro {root}$p {root}$p; done",
             "readable, but not writable from the container",
             lambda: [_make_readonly(root, p) for p in READONLY_PATHS]),
    ]
    return steps


def _mask(root: Path, path: str) -> None:
    target = safepath.resolve_in_root(root, path)
    if not target.exists():
        return
    if target.is_dir():
        syscalls.mount("tmpfs", str(target), "tmpfs", MS_RDONLY)
    else:
        syscalls.mount("/dev/null", str(target), None, MS_BIND)


def _make_readonly(root: Path, path: str) -> None:
    target = safepath.resolve_in_root(root, path)
    if not target.exists():
        return
    syscalls.mount(str(target), str(target), None, MS_BIND | MS_REC)
    syscalls.mount(str(target), str(target), None,
                   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _dev_steps(root: Path) -> list[Step]:
    steps = [_mount_step(f"mount -t tmpfs -o nosuid,nodev,mode=755,size=65536k tmpfs {root}/dev",
                         "a fresh /dev instead of the image's (empty) one or the host's; nodev: "
                         "only the devices bound in below open", root, *DEV)]
    names = " ".join(DEVICES)
    steps += [
        Step(f"for d in {names}; do touch {root}/dev/$d; mount --bind /dev/$d {root}/dev/$d; "
             "done", "the devices every program expects, bound from the host's",
             lambda: [_bind_device(root, name) for name in DEVICES]),
        _mount_step(f"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts {root}/dev/pts",
                    "a private set of pseudo-terminals", root, *DEVPTS),
        _mount_step(f"mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm "
                    f"{root}/dev/shm", "POSIX shared memory, private to the container",
                    root, *SHM),
        Step(f"ln -s pts/ptmx {root}/dev/ptmx && ln -s /proc/self/fd {root}/dev/fd",
             "the usual /dev links", lambda: _dev_links(root)),
    ]
    return steps


def _bind_device(root: Path, name: str) -> None:
    target = safepath.write_in_root(root, f"/dev/{name}", b"", 0o666)
    syscalls.mount(f"/dev/{name}", str(target), None, MS_BIND)


def _dev_links(root: Path) -> None:
    # /dev is our tmpfs, but where it is mounted depends on the image (its /dev may be a
    # symlink): resolved inside the root, like the mount was, never as root / "dev".
    for name, target in DEV_LINKS.items():
        safepath.symlink_in_root(root, f"/dev/{name}", target)


def _etc_files(spec: RootfsSpec) -> dict[str, bytes]:
    """The files the runtime gives every container, by their path inside it."""
    files = {"/etc/hostname": (spec.hostname + "\n").encode()}
    if spec.hosts_file is None:
        files["/etc/hosts"] = spec.hosts
    if spec.resolv_conf is not None:
        files["/etc/resolv.conf"] = spec.resolv_conf
    return files


def _etc_steps(spec: RootfsSpec, files: dict[str, bytes]) -> list[Step]:
    """`files` written into the root, and the bridge's shared /etc/hosts bind-mounted."""
    root = spec.root
    shared = []
    if spec.hosts_file is not None:
        shared.append(_volume_step(root, Volume(str(spec.hosts_file), "/etc/hosts")))
    return shared + [
        Step(f"printf {_printf_literal(data)} > {root}{path}",
             "written inside the root, never through a symlink out",
             lambda path=path, data=data: safepath.write_in_root(root, path, data, 0o644))
        for path, data in files.items()
    ]


def _image_etc(lowers: list[Path]) -> tuple[bool, os.stat_result | None]:
    """Whether a layer of our own may go on top of the image's /etc: it may when the image's
    /etc is a directory (whose attributes come back, for ours to copy) or absent. The top-most
    layer with an entry there decides; overlayfs's whiteout (a 0:0 character device) means
    absent. A symlink (``etc -> usr/etc``) may not: a directory above would hide what it
    points to, so the files are written through it, inside the root, as before."""
    for lower in reversed(lowers):
        try:
            found = os.lstat(Path(lower) / "etc")
        except FileNotFoundError:
            continue
        except OSError:
            return False, None
        if stat.S_ISDIR(found.st_mode):
            return True, found
        return stat.S_ISCHR(found.st_mode) and found.st_rdev == 0, None
    return True, None


def _etc_layer_step(layer: Path, files: dict[str, bytes],
                    image_etc: os.stat_result | None) -> Step:
    """The runtime's /etc files as a small layer above the image's, on a spare's staging tmpfs.

    Written into the root instead, each would be a copy-up of /etc and new files in the
    container's upper directory on disk, made and deleted again for every container; on an
    ext4 without a journal, creating a file within minutes of deleting others costs 0.1-0.6 ms
    (`recently_deleted`). Measured back to back: 3 inodes fewer made and freed per container
    (ext4_allocate_inode, 1846 → 1542 for 104 containers), and, paired runs, 2.5 ms of CPU
    and 1.5 ms per run less (medians of 6 pairs). The container still writes them as any
    image file (a copy-up into upper), and `commit` leaves them out as before. Docker
    bind-mounts these files, which needs them in the root as mount points first.
    """
    etc = layer / "etc"
    writes = " && ".join(f"printf {_printf_literal(data)} > {etc}/{Path(path).name}"
                         for path, data in files.items())

    def build():
        os.makedirs(etc, 0o755)
        for path, data in files.items():
            fd = os.open(etc / Path(path).name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        if image_etc is not None:  # the merged /etc shows the top layer's own attributes
            _copy_attributes(image_etc, etc)

    return Step(f"mkdir -p {etc} && {writes}",
                "a layer of its own on top of the image's, in memory: nothing made on disk",
                build)


def _copy_attributes(source: os.stat_result, target: Path) -> None:
    try:
        os.chown(target, source.st_uid, source.st_gid)
    except OSError:
        pass  # rootless: an owner outside our user namespace's map stays root
    os.chmod(target, stat.S_IMODE(source.st_mode))
    os.utime(target, ns=(source.st_atime_ns, source.st_mtime_ns))


def _printf_literal(data: bytes) -> str:
    """`data` as one printf format argument: one line of shell, whatever the content."""
    text = data.decode(errors="replace").replace("\\", "\\\\").replace("%", "%%")
    return shlex.quote(text.replace("\n", "\\n").replace("\t", "\\t"))


#: where a volume may not land, once the image's symlinks are followed (runc refuses /proc)
FORBIDDEN_VOLUME_PARENTS = ("/proc", "/sys", "/dev")


class ReadOnlyNotRecursive(safepath.UnsafePath):
    """A read-only volume holds other mounts and this kernel cannot make them read-only."""


def _volume_step(root: Path, volume: Volume) -> Step:
    def run():
        host = Path(volume.host)
        if host.is_dir():
            target = safepath.mkdirs_in_root(root, volume.container)
        else:
            target = safepath.resolve_in_root(root, volume.container)
            if not target.exists():
                target = safepath.write_in_root(root, volume.container, b"")
        inside = _in_root(root, target)
        if inside == "/" or _under(inside, FORBIDDEN_VOLUME_PARENTS):
            raise safepath.UnsafePath(f"volume destination {volume.container} leads to {inside}"
                                      " in the image: choose another destination")
        syscalls.mount(str(host), str(target), None, MS_BIND | MS_REC)
        _restrict_volume(str(target), volume)

    ro = "ro," if volume.readonly else ""
    return Step(f"mount --rbind {volume.host} {root}{volume.container} && mount -o "
                f"remount,bind,{ro}nodev {root}{volume.container}",
                f"a host directory shared with the container; {ro}nodev for every mount in it "
                "too (mount_setattr with AT_RECURSIVE)", run)


def _bind_host_sys(root: Path) -> None:
    target = str(_inside(root, "/sys"))
    syscalls.mount("/sys", target, None, MS_BIND | MS_REC)
    syscalls.mount_setattr(target, syscalls.MOUNT_ATTR_RDONLY | syscalls.MOUNT_ATTR_NOSUID
                           | syscalls.MOUNT_ATTR_NODEV | syscalls.MOUNT_ATTR_NOEXEC)


def _restrict_volume(target: str, volume: Volume) -> None:
    """nodev, and ro if asked, on the volume and every mount below it (mount_setattr), or on
    the volume alone where the kernel lacks it — an error if ro would then not hold."""
    attrs = syscalls.MOUNT_ATTR_NODEV | (syscalls.MOUNT_ATTR_RDONLY if volume.readonly else 0)
    try:
        syscalls.mount_setattr(target, attrs, recursive=True)
        return
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter's answer
            raise
    if volume.readonly and _mounts_below(target):
        raise ReadOnlyNotRecursive(
            f"cannot make the read-only volume {volume.host} read-only all the way down: it "
            "holds other mounts and this kernel lacks mount_setattr (Linux 5.12); mount a "
            "directory without mounts inside, or drop :ro")
    _remount_nodev(target, MS_RDONLY if volume.readonly else 0)


def _mounts_below(target: str) -> bool:
    prefix = target.rstrip("/") + "/"
    return any(mount.mount_point.startswith(prefix) for mount in mountinfo.read())


def plan_switch_root(root: Path, chroot: bool) -> list[Step]:
    """Make `root` the process's "/": pivot_root (default) or the tutorial's chroot."""
    if chroot:
        def enter_chroot():
            os.chdir(root)
            os.chroot(".")
            os.chdir("/")

        return [Step(f"chroot {root}", "the tutorial's way: the host's root stays mounted "
                     "in this namespace, so root inside can escape (notebook 07)", enter_chroot)]
    return [Step(f"cd {root} && pivot_root . . && umount -l .",
                 "swap roots, then detach the host's: nothing of it is left to escape to",
                 lambda: _pivot(root))]


def _pivot(root: Path) -> None:
    # runc's trick: pivot_root(".", ".") stacks the old root on top of the new one, so no
    # .oldroot directory has to be created inside the image.
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.chdir(root)
        syscalls.pivot_root(".", ".")
        os.fchdir(old_root)
        syscalls.mount("none", ".", None, MS_SLAVE | MS_REC)
        syscalls.umount(".", MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")
