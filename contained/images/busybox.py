"""busybox:latest without a network: an image built from the host's static busybox.

Taught in notebook 00 ("Check the machine") for offline classrooms, and used by notebook 04 as
the image to take apart. One static binary is a whole userland: it looks at the name it was
called by (``argv[0]``) to decide which tool to be, so a root filesystem needs only the binary and
one symlink per applet. By hand::

    mkdir -p rootfs/bin rootfs/etc rootfs/tmp ...
    cp /bin/busybox rootfs/bin/
    for applet in $(busybox --list-full); do ln -s /bin/busybox rootfs/$applet; done
    tar --sort=name --mtime=@0 --owner=0 --group=0 -C rootfs -c . | gzip -n > layer.tar.gz

Every mode, time and owner is fixed, so the image has the same digest on every machine with the
same busybox binary (Debian's busybox-static).
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from contained.errors import ContainedError
from contained.images import build, oci
from contained.images.layout import Image
from contained.images.store import Store

HOST_BUSYBOX = Path("/bin/busybox")
DEFAULT_NAME = "busybox"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
# The directories a container runtime mounts over (/proc, /sys, /dev) must exist in the image;
# /tmp is world-writable and sticky, as everywhere.
DIRECTORIES = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "root": 0o700,
               "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
               "usr/sbin": 0o755, "var": 0o755}
IMAGE_CONFIG = {"Env": [f"PATH={oci.DEFAULT_PATH}"], "Cmd": ["sh"]}
ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3


class BusyboxMissing(ContainedError):
    """The host has no usable static busybox to build the image from."""


def import_busybox(store: Store, name: str = DEFAULT_NAME,
                   busybox: Path = HOST_BUSYBOX) -> Image:
    """Build busybox's root filesystem, tar it reproducibly and tag it `name` in the store."""
    check_busybox(busybox)
    with tempfile.TemporaryDirectory(prefix="contained-busybox-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        busybox_rootfs(rootfs, busybox)
        layer = build.tar_directory(rootfs)
    return store.add_image([layer], name, IMAGE_CONFIG)


def busybox_rootfs(rootfs: Path, busybox: Path = HOST_BUSYBOX) -> Path:
    """Write a minimal busybox root filesystem into `rootfs` (created, must not exist)."""
    check_busybox(busybox)
    rootfs.mkdir(mode=0o755)
    for directory in DIRECTORIES:
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, rootfs / "bin" / "busybox")
    os.chmod(rootfs / "bin" / "busybox", 0o755)
    for applet in applets(busybox):
        link = rootfs / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    for path in (rootfs / "etc" / "passwd", rootfs / "etc" / "group"):
        os.chmod(path, 0o644)
    # Modes last: mkdir is subject to the umask, and the tar records what is on disk.
    os.chmod(rootfs, 0o755)
    for directory, mode in DIRECTORIES.items():
        os.chmod(rootfs / directory, mode)
    for path in rootfs.rglob("*"):
        if path.is_dir() and not path.is_symlink() and path.relative_to(rootfs).as_posix() \
                not in DIRECTORIES:
            os.chmod(path, 0o755)
    return rootfs


def applets(busybox: Path = HOST_BUSYBOX) -> list[str]:
    """The applets' install paths (``bin/ls``, ``usr/bin/[``), as busybox lists them."""
    result = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise BusyboxMissing(f"{busybox} --list-full failed; reinstall it with "
                             f"`apt-get install --reinstall busybox-static`")
    paths = []
    for line in result.stdout.split():
        path = line.strip().lstrip("/")
        # An applet path becomes a path in the image: refuse anything that could escape it.
        if path and "/" in path and ".." not in path.split("/"):
            paths.append(path)
    return sorted(set(paths))


def check_busybox(busybox: Path = HOST_BUSYBOX) -> None:
    """Refuse a missing or dynamically linked busybox: the image holds no libc to run it."""
    try:
        header = Path(busybox).read_bytes()[:4096]
    except FileNotFoundError:
        raise BusyboxMissing(f"{busybox} not found: run `apt-get install busybox-static`, then "
                             f"`contained import busybox` again") from None
    if not header.startswith(ELF_MAGIC):
        raise BusyboxMissing(f"{busybox} is not an ELF binary; run `apt-get install "
                             f"busybox-static`")
    if _has_interpreter(Path(busybox)):
        raise BusyboxMissing(f"{busybox} is dynamically linked and would not run in the image; "
                             f"run `apt-get install busybox-static`")


def _has_interpreter(path: Path) -> bool:
    """Whether an ELF file asks for a dynamic loader (a PT_INTERP program header)."""
    import struct

    with open(path, "rb") as f:
        ident = f.read(16)
        is_64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is_64:
            f.seek(32)
            (phoff,) = struct.unpack(endian + "Q", f.read(8))
            f.seek(54)
        else:
            f.seek(28)
            (phoff,) = struct.unpack(endian + "I", f.read(4))
            f.seek(42)
        phentsize, phnum = struct.unpack(endian + "HH", f.read(4))
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == PT_INTERP:
                return True
    return False
