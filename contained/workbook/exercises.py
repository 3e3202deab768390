"""Exercise checkers: each notebook ends with exercises, and these say whether an answer is right.

Used by every notebook (00-08). A checker looks at the learner's real result where there is one
(a directory, a device file, a running container, an image's digests), not only at a typed
answer, and when something is wrong it says what, in words a beginner understands, and what to
try next. The shell equivalents of what they look at are in each checker's docstring.

Every checker returns a `Feedback`: true when right, printed as one or a few lines. An answer
left as ``None`` gets "Not answered yet", never an error, so a notebook runs top to bottom.
"""

import os
import re
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contained import isolated
from contained.errors import ContainedError
from contained.runtime import cgroups, namespaces


@dataclass(frozen=True)
class Feedback:
    """A checker's verdict: `ok`, and what to tell the learner."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return f"{'✔ Right' if self.ok else '✘ Not yet'}: {self.message}"

    __repr__ = __str__


def right(message: str) -> Feedback:
    return Feedback(True, message)


def wrong(message: str) -> Feedback:
    return Feedback(False, message)


def _unanswered(how: str) -> Feedback:
    return wrong(f"not answered yet — {how}")


# ---------------------------------------------------------------------------------------------
# 00 Check your machine


CGROUP_MODES = {"v1", "v2", "hybrid"}


def check_cgroup_mode(answer: str | None, host: cgroups.CgroupHost | None = None) -> Feedback:
    """Which cgroup layout does this machine have? (``stat -fc %T /sys/fs/cgroup``,
    ``grep cgroup /proc/self/mountinfo``)"""
    if answer is None:
        return _unanswered('set answer to "v1", "v2" or "hybrid"')
    given = str(answer).strip().lower().replace("cgroup", "").strip(" -")
    if given not in CGROUP_MODES:
        return wrong(f"{answer!r} is not one of v1, v2, hybrid")
    actual = (host or cgroups.detect()).mode
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


# ---------------------------------------------------------------------------------------------
# 01 Namespaces


_UNSHARE_FLAGS = {
    "--mount": "mount", "-m": "mount", "--uts": "uts", "-u": "uts", "--ipc": "ipc", "-i": "ipc",
    "--net": "net", "-n": "net", "--pid": "pid", "-p": "pid", "--cgroup": "cgroup",
    "-C": "cgroup", "--user": "user", "-U": "user",
}


def kinds_in(command: str) -> set[str]:
    """The namespace kinds an ``unshare ...`` command line creates."""
    kinds = set()
    for word in shlex.split(command):
        flag = word.split("=", 1)[0]
        if flag in _UNSHARE_FLAGS:
            kinds.add(_UNSHARE_FLAGS[flag])
        elif flag == "-r" or flag == "--map-root-user":
            kinds.add("user")
    return kinds


def check_new_namespaces(command: str, answer: set | list | None) -> Feedback:
    """Which namespaces does `command` give its process a new one of? (compare
    ``readlink /proc/self/ns/*`` inside and outside)"""
    if answer is None:
        return _unanswered('set answer to a set of kinds, e.g. {"uts", "net"}')
    given = {str(kind).strip().lower() for kind in answer}
    given = {"mount" if kind == "mnt" else kind for kind in given}
    unknown = given - set(namespaces.KINDS)
    if unknown:
        return wrong(f"{', '.join(sorted(unknown))} is not a namespace kind; the kinds are "
                     f"{', '.join(namespaces.KINDS)}")
    expected = kinds_in(command)
    if given == expected:
        return right(f"`{command}` makes new {', '.join(sorted(expected))} namespaces; the "
                     "others are shared with the host.")
    missing, extra = expected - given, given - expected
    parts = []
    if missing:
        parts.append(f"you left out {', '.join(sorted(missing))} (look for its flag in the "
                     "command)")
    if extra:
        parts.append(f"{', '.join(sorted(extra))} is shared with the host: the command has no "
                     "flag for it, so its link in /proc/self/ns stays the same")
    return wrong("; ".join(parts) + ".")


def check_uts_command(command: str | None, hostname: str = "lab") -> Feedback:
    """A command that prints `hostname` from a new UTS namespace, leaving the host's alone
    (``unshare --uts sh -c 'hostname lab; hostname'``). As root it is run, but in namespaces
    of its own over a read-only view of the host (`run_in_sandbox`); it must set the name and
    read it back (``unshare --uts echo lab`` prints the word and proves nothing)."""
    if command is None:
        return _unanswered(f"set answer to a shell command that prints {hostname!r} from a new "
                           "UTS namespace")
    if "unshare" not in command:
        return wrong("the command must start a new namespace with `unshare`; without it, "
                     "`hostname ...` would rename the host itself")
    if "uts" not in kinds_in(command):
        return wrong("`unshare` needs --uts (or -u): the hostname lives in the UTS namespace, "
                     "and without a new one you would rename the host")
    missing = _uts_words_feedback(command, hostname)
    if os.geteuid() != 0:
        if missing is not None:
            return missing
        return right("the command has the right shape (run the workbook as root to check that "
                     "it really prints the new hostname).")
    before = os.uname().nodename
    done = run_in_sandbox(command)
    after = os.uname().nodename
    if after != before:
        # Should not happen with --uts, but never leave the machine renamed by an exercise.
        subprocess.run(["hostname", before], check=False)
        return wrong(f"the host's hostname changed to {after!r} (now put back to {before!r}): "
                     "the `hostname` command ran outside the new namespace")
    lines = done.stdout.split()
    if done.returncode != 0:
        return wrong(f"the command failed (status {done.returncode}): "
                     f"{done.stderr.strip() or 'no message'}")
    if hostname not in lines:
        return wrong(f"it printed {done.stdout.strip()!r}, not {hostname!r}: set the name, then "
                     "print it, in the same shell inside unshare (`sh -c 'hostname "
                     f"{hostname}; hostname'`)")
    if missing is not None:
        return missing  # it printed the name, but not by setting and reading it
    return right(f"it printed {hostname!r} and the host is still called {before!r}.")


def _uts_words_feedback(command: str, hostname: str) -> Feedback | None:
    """What is missing for `command` to set the name and read it back from the kernel (an
    `echo lab` prints the word without any namespace), or None."""
    words = _simple_commands(command)
    if not any(_sets_hostname(argv, hostname) for argv in words):
        return wrong(f"the command never sets the hostname: `echo {hostname}` prints the word "
                     f"whatever the namespace holds. Run `hostname {hostname}` inside the new "
                     "UTS namespace, then read it back")
    if not any(_reads_hostname(argv) for argv in words) and not _HOSTNAME_SUBSTITUTION.search(
            command):
        return wrong(f"the command sets the name but never reads it back from the kernel: end "
                     f"with `hostname` (no argument) or `uname -n`, not `echo {hostname}`")
    return None


# `echo $(hostname)` reads the name from the kernel too.
_HOSTNAME_SUBSTITUTION = re.compile(r"\$\(\s*(hostname|uname\s+-n)\s*\)"
                                    r"|`\s*(hostname|uname\s+-n)\s*`")
_SHELLS = {"sh", "bash", "dash", "ash", "busybox"}


def _simple_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; & | and parentheses), with the
    ``sh -c '...'`` strings inside them opened up too."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    commands, current = [], []
    for token in tokens + [";"]:
        if token and set(token) <= set(";&|()"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    for argv in list(commands):
        for index, word in enumerate(argv[1:-1], start=1):
            if word == "-c" and os.path.basename(argv[index - 1]) in _SHELLS:
                commands += _simple_commands(argv[index + 1])
    return commands


def _after(argv: list[str], program: str) -> list[str] | None:
    """The arguments after `program` in `argv` (``unshare --uts hostname lab`` → [lab])."""
    for index, word in enumerate(argv):
        if os.path.basename(word) == program:
            return argv[index + 1:]
    return None


def _sets_hostname(argv: list[str], hostname: str) -> bool:
    arguments = _after(argv, "hostname")
    return arguments is not None and hostname in arguments


def _reads_hostname(argv: list[str]) -> bool:
    hostname_args = _after(argv, "hostname")
    if hostname_args is not None and not [a for a in hostname_args if not a.startswith("-")]:
        return True
    uname_args = _after(argv, "uname")
    if uname_args is not None and any(a in ("-n", "-a", "--nodename", "--all")
                                      for a in uname_args):
        return True
    cat_args = _after(argv, "cat")
    return cat_args is not None and "/proc/sys/kernel/hostname" in cat_args


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


# ---------------------------------------------------------------------------------------------
# 02 Control groups


def check_memory_max(limit: str, answer: int | str | None) -> Feedback:
    """The number that goes into memory.max (v2) or memory.limit_in_bytes (v1) for `limit`
    (``echo 33554432 > memory.max`` for 32M)."""
    if answer is None:
        return _unanswered(f"set answer to the number of bytes for {limit}")
    expected = cgroups.parse_memory(limit)
    try:
        given = int(str(answer).strip())
    except ValueError:
        return wrong(f"{answer!r} is not a whole number: the file takes bytes, digits only")
    if given == expected:
        return right(f"{limit} is {expected} bytes.")
    number = re.match(r"[\d.]+", limit).group()
    if given == int(float(number) * 1000 ** " kmg".index(limit[-1].lower())):
        return wrong(f"{given} uses 1000 per step; memory sizes use 1024: "
                     f"M means {number} × 1024 × 1024")
    return wrong(f"{given} is not {limit}: the file takes bytes; k = 1024 bytes, M = 1024 k, "
                 "G = 1024 M")


def check_cpu_max(cpus: float, answer: str | None) -> Feedback:
    """What goes into cpu.max (v2) for `cpus` CPUs (``echo "50000 100000" > cpu.max``)."""
    if answer is None:
        return _unanswered(f'set answer to the cpu.max line for {cpus} CPUs, e.g. "QUOTA PERIOD"')
    words = str(answer).split()
    if len(words) != 2 or not all(w.isdigit() for w in words):
        return wrong('cpu.max holds two numbers: "QUOTA PERIOD", both in microseconds '
                     '(e.g. "25000 100000")')
    quota, period = (int(w) for w in words)
    if period == 0:
        return wrong("the period cannot be 0: it is the length of each accounting window")
    if abs(quota / period - cpus) < 1e-9:
        return right(f"{quota} µs of CPU time in every {period} µs window is {cpus} CPUs.")
    if abs(period / quota - cpus) < 1e-9:
        return wrong("quota and period are swapped: the first number is the CPU time allowed, "
                     "the second the window it is counted over")
    return wrong(f"{quota}/{period} = {quota / period:g} CPUs, not {cpus}: the group may use "
                 "QUOTA microseconds of CPU in every PERIOD microseconds")


# ---------------------------------------------------------------------------------------------
# 03 Overlay filesystems


def is_whiteout(path: Path) -> bool:
    """An overlayfs whiteout: a character device with device number 0:0."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def check_whiteout(lab: str | Path, name: str) -> Feedback:
    """`name` deleted through the overlay at LAB/merged: a whiteout in LAB/upper, the file
    still in LAB/lower (``ls -l upper/NAME`` shows ``c--------- 0, 0``)."""
    lab = Path(lab)
    lower, upper = lab / "lower" / name, lab / "upper" / name
    if not (lab / "upper").is_dir():
        return wrong(f"{lab / 'upper'} does not exist yet: make lower/, upper/, work/, merged/ "
                     "in it and mount the overlay first")
    if not lower.exists():
        return wrong(f"{lower} is missing: the file must exist in the lower layer (and stay "
                     "there) — create it before mounting")
    if is_whiteout(upper):
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


# ---------------------------------------------------------------------------------------------
# 04 Images


def check_layer_digest(layout: str | Path, answer: str | None, tag: str | None = None
                       ) -> Feedback:
    """The digest of the image's (largest) layer blob, as ``sha256sum blobs/sha256/*`` shows,
    told apart from the other digests a learner can find."""
    import gzip
    import hashlib
    import json

    from contained.images import oci

    if answer is None:
        return _unanswered('set answer to the layer blob\'s digest, "sha256:…"')
    given = str(answer).strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", given):
        given = "sha256:" + given
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", given):
        return wrong('a digest looks like "sha256:" followed by 64 hex digits (sha256sum prints '
                     "the 64 digits)")
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    entry = next((m for m in index["manifests"] if tag is None or m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == tag), None)
    if entry is None:
        return wrong(f"{layout} has no image tagged {tag!r}")
    manifest = json.loads(oci.blob_path(layout, entry["digest"]).read_bytes())
    largest = max(manifest["layers"], key=lambda layer: layer["size"])
    if given == largest["digest"]:
        return right("that is the layer blob's name, and sha256 of its bytes: the blob "
                     "verifies.")
    if given in (layer["digest"] for layer in manifest["layers"]):
        return wrong("that is a layer, but not the largest one: compare the sizes in the "
                     "manifest")
    if given == entry["digest"]:
        return wrong("that is the manifest's digest (from index.json); the layers are listed "
                     "inside the manifest")
    if given == manifest["config"]["digest"]:
        return wrong("that is the config blob's digest; the layers are in the manifest's "
                     '"layers" list')
    blob = oci.blob_path(layout, largest["digest"])
    with gzip.open(blob) if largest["mediaType"].endswith("gzip") else open(blob, "rb") as f:
        uncompressed = hashlib.sha256()
        while chunk := f.read(1 << 20):
            uncompressed.update(chunk)
    if given == "sha256:" + uncompressed.hexdigest():
        return wrong("that is the diff_id: the sha256 of the *uncompressed* tar (listed in the "
                     "config). The blob's name is the sha256 of the compressed bytes on disk")
    return wrong("that digest is not in this image: run `sha256sum` on the largest file in "
                 "blobs/sha256/")


# ---------------------------------------------------------------------------------------------
# 05 A container by hand


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


def check_kernel_release(answer: str | None) -> Feedback:
    """What ``uname -r`` prints inside the container: the host's kernel."""
    if answer is None:
        return _unanswered("set answer to what `uname -r` printed inside the container")
    host = os.uname().release
    if str(answer).strip() == host:
        return right("containers share the host's kernel, so `uname -r` is the same inside "
                     "and outside; only the hostname (UTS namespace) can differ.")
    return wrong(f"{answer!r} is not what the container sees: a container has no kernel of its "
                 "own, so it reports the host's. Run `uname -r` in both and compare")


# ---------------------------------------------------------------------------------------------
# 06 The %%container magic

#: What a checker reads of a learner's file in a container: an answer is a line of text, and a
#: file linked to /dev/zero must not fill the host's memory or disk.
CHECKED_FILE_LIMIT = 4 << 20


def check_container_file(name: str, path: str, content: str) -> Feedback:
    """A running named container `name` has a file `path` containing `content`
    (``contained exec NAME cat PATH``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: start one with "
                     f"`%%container busybox --name {name}`")
    if not found.running:
        return wrong(f"container {name} exists but is not running: remove it "
                     f"(`%container rm {name}`) and start it again")
    status, data = _read_in_container(name, path, CHECKED_FILE_LIMIT)
    if data is None:
        return wrong(f"{path} in {name} is bigger than {CHECKED_FILE_LIMIT >> 10} KiB (only that "
                     f"much was read): an answer is a line of text; is it a link to a device "
                     f"such as /dev/zero?")
    if status != 0:
        return wrong(f"{path} does not exist in {name}: was the file made in a throwaway "
                     f"container (a cell without --name {name})? Throwaway files vanish")
    text = data.decode(errors="replace")
    if text.strip() != content:
        return wrong(f"{path} contains {text.strip()!r}, not {content!r}")
    return right(f"{path} in {name} says {content!r}; it will stay until `%container rm "
                 f"{name}`.")


def _read_in_container(name: str, path: str, limit: int) -> tuple[int | None, bytes | None]:
    """``contained exec NAME cat PATH``, keeping at most `limit` bytes on the host: (status,
    content), content None when there was more (the command is then killed, unread)."""
    from contained.runtime import container

    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        execution = container.start_exec(name, ["cat", path], stdin=null, stdout=write_end,
                                          stderr=null)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # PID 1 holds its own copy: ours must go for end of file to come
        os.close(null)
    with open(read_end, "rb") as pipe:
        data = pipe.read(limit + 1)  # up to limit + 1 bytes, or end of file
        if len(data) > limit:
            execution.kill()
            execution.wait()
            return None, None
    return execution.wait().status, data


def check_memory_limit(name: str, limit: str) -> Feedback:
    """Container `name` was created with memory limit `limit` (``contained inspect NAME``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: create it with "
                     f"`%%container busybox --name {name} --memory {limit}`")
    expected = cgroups.parse_memory(limit)
    actual = found.spec.memory if found.spec else None
    if actual == expected:
        return right(f"{name} may use at most {limit} ({expected} bytes).")
    if actual is None:
        return wrong(f"{name} has no memory limit: limits are set when a container is created; "
                     f"remove it and create it again with --memory {limit}")
    return wrong(f"{name}'s limit is {actual} bytes, not {limit}: remove it and create it "
                 f"again with --memory {limit}")


# ---------------------------------------------------------------------------------------------
# 07 Safety


def check_layer_refused(tar_bytes: bytes | None) -> Feedback:
    """A layer (uncompressed tar bytes) the unpacker must refuse: unpack it into a scratch
    directory with `contained.images.layers`, and check nothing escaped."""
    from contained.images import build, layers, oci

    if tar_bytes is None:
        return _unanswered("set answer to the bytes of a tar layer you built with tarfile")
    with tempfile.TemporaryDirectory(prefix="contained-exercise-") as scratch:
        scratch = Path(scratch)
        layout, dest, outside = scratch / "layout", scratch / "box" / "rootfs", scratch / "box"
        dest.mkdir(parents=True)
        built = build.write_layer(layout, tar_bytes, compress=False)
        blob = oci.blob_path(layout, built.descriptor.digest)
        try:
            layers.unpack_layer(blob, built.descriptor, built.diff_id, dest)
        except ContainedError as error:
            escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
            if escaped:
                return wrong(f"refused, but {escaped} was written outside first: report this "
                             "as a bug")
            return right(f"the unpacker refused it: {error}")
        escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
        if escaped:
            return wrong(f"{escaped} escaped the layer's directory: report this as a bug")
        return wrong("this layer unpacked cleanly: everything in it stays inside the image. "
                     "Try a name with ../ in it, an absolute symlink followed by a file under "
                     "it, or a hardlink to /etc/passwd")


def check_boundary(answer: str | None) -> Feedback:
    """Which root switch keeps root in the container from reaching the host's files?"""
    if answer is None:
        return _unanswered('set answer to "chroot" or "pivot_root"')
    given = str(answer).strip().lower().replace(" ", "_")
    if given in ("pivot_root", "pivot-root", "pivotroot"):
        return right("pivot_root in a new mount namespace, then unmounting the old root: there "
                     "is no host tree left to climb back to.")
    if given == "chroot":
        return wrong("chroot only changes where '/' starts for path lookups; the host's root "
                     "is still mounted, and root can chroot again and climb out (you saw it)")
    return wrong(f"{answer!r} is neither: answer chroot or pivot_root")


# --- 08 networking -------------------------------------------------------------------------

def check_third_namespace(namespace: str = "lab08-c", peer: str = "lab08-a",
                          address: str = "10.200.9.2", gateway: str = "10.200.9.1"):
    """`namespace` has `address` and reaches `gateway` in `peer` over a veth pair
    (``ip -n NS -j addr``, ``ip netns exec NS busybox ping -c 1 GATEWAY``)."""
    import json

    from contained import workbook

    if not workbook.privileged():
        return wrong("network namespaces need root; run this notebook as root")
    if namespace not in workbook.sh_output("ip netns list", check=False).split():
        return wrong(f"there is no namespace {namespace}: `ip netns add {namespace}`")
    links = json.loads(workbook.sh_output(f"ip -n {namespace} -j addr show") or "[]")
    mine = [link for link in links if any(a.get("local") == address for a in link["addr_info"])]
    if not mine:
        return wrong(f"no interface in {namespace} has {address}: "
                               f"`ip -n {namespace} addr add {address}/24 dev ...`")
    if mine[0].get("link_type") != "ether" or "UP" not in mine[0]["flags"]:
        return wrong(f"{mine[0]['ifname']} in {namespace} is not an Ethernet (veth) "
                               f"interface that is up: `ip -n {namespace} link set "
                               f"{mine[0]['ifname']} up`")
    ping = f"ip netns exec {namespace} busybox ping -c 1 -W 1 {gateway}"
    if workbook.sh_output(f"{ping} >/dev/null 2>&1 && echo ok", check=False) != "ok":
        return wrong(f"{namespace} cannot ping {gateway}: is the other end in {peer} "
                               f"addressed and up? (`ip -n {peer} -br addr`)")
    return right(f"{namespace} ({address}) reaches {gateway} in {peer} over its own "
                           "cable.")



def check_published(name: str = "api08", port: int = 8090, text: str = "hello from api08"):
    """`name` serves `text` on 127.0.0.1:`port` and, by name, to the other containers
    (``wget -q -O - http://127.0.0.1:PORT/``, ``contained exec web08 wget -q -O - http://NAME/``)."""
    from contained import workbook
    from contained.runtime import container

    if not workbook.privileged():
        return wrong("bridged containers need root; run this notebook as root")
    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name}: `contained run -d --name "
                               f"{name} --net bridge -p 127.0.0.1:{port}:80 busybox sh -c ...`")
    if found.spec.net != "bridge" or not found.running:
        return wrong(f"{name} must be running with --net bridge: `contained rm -f "
                               f"{name}` and start it again")
    try:
        page = workbook.fetch(f"http://127.0.0.1:{port}/", wait=3).strip()
    except OSError:
        return wrong(f"nothing answers on 127.0.0.1:{port}: did you publish it "
                               f"with -p 127.0.0.1:{port}:80, and is httpd running in {name}?")
    if page != text:
        return wrong(f"127.0.0.1:{port} says {page!r}, not {text!r}")
    contained = isolated.shell_words("contained.cli")
    by_name = workbook.sh_output(f"{contained} exec web08 wget -q -O - http://{name}/",
                                 check=False)
    if by_name != text:
        return wrong(f"web08 cannot fetch http://{name}/ by name: is {name} on the "
                               "bridge (--net bridge) and is web08 still running?")
    return right(f"{name} serves {text!r} on 127.0.0.1:{port} and, by name, to "
                           "web08.")

