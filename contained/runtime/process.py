"""What a container's process is allowed to be: its user, environment, capabilities and files.

Taught in notebook 07 (safety), building on 05 (a container by hand). Namespaces decide what a
process can *see*; this module decides who it *is* and what it may *do*, in the last moments
before ``execve``: the runtime has already pivoted into the container's root; PID 1
(`contained.runtime.init`) drops the capabilities, and its child switches user and execs the
command. The shell equivalents:

    cd "$WORKDIR"                                     # the image's WorkingDir or -w
    setpriv --reuid=1000 --regid=1000 --groups=1000   # -u 1000:1000 (setgroups, setgid, setuid)
    capsh --drop=cap_sys_admin,...                    # keep only Docker's 14 capabilities
    setpriv --no-new-privs                            # setuid binaries can't gain anything
    env -i PATH=... HOSTNAME=... HOME=... cmd         # a clean environment, nothing from the host

Users and groups come from the *image's* /etc/passwd and /etc/group, parsed here as text: the
`pwd` module would ask the host's NSS (the host's users, maybe the host's libraries), which is
the wrong answer and a way out of the container.
"""

import errno
import functools
import os
import stat
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.images import safepath
from contained.images.oci import DEFAULT_PATH

#: Docker's default capabilities (moby oci/caps/defaults.go), in moby's order. Everything else,
#: CAP_SYS_ADMIN first of all, is dropped. As a mask: 0x00000000a80425fb.
DOCKER_DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

#: Every Linux capability by name (<linux/capability.h>), as of Linux 5.9.
CAPABILITY_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# The largest uid/gid Docker accepts (runc's user.maxID): 2^31 - 1.
MAX_ID = 2**31 - 1

# A passwd or group file bigger than this is not a user database: refuse rather than read it all.
MAX_USER_DATABASE_BYTES = 16 * 1024 * 1024


class UnknownUser(ContainedError):
    """-u names a user the image's /etc/passwd does not have."""


class UnknownGroup(ContainedError):
    """-u user:group names a group the image's /etc/group does not have."""


class BadUserSpec(ContainedError):
    """-u is not "user", "uid", "user:group" or "uid:gid", or an id is out of range."""


class BadUserDatabase(ContainedError):
    """The image's /etc/passwd or /etc/group is not a regular file of sane size."""


class BadEnvironment(ContainedError):
    """An -e option (or an image's Env entry) is not NAME=value or NAME."""


class UnknownCapability(ContainedError):
    """A capability name that Linux does not have."""


class CapabilitiesFailed(ContainedError):
    """The kernel refused to change this process's capabilities."""


class CommandNotFound(ContainedError):
    """The command is not in the container (shells, and Docker, exit 127 for this)."""

    exit_status = 127


class CommandNotExecutable(ContainedError):
    """The command exists but cannot be executed (shells, and Docker, exit 126 for this)."""

    exit_status = 126


# ---------------------------------------------------------------------------------------------
# Users: -u, resolved in the image's /etc/passwd and /etc/group (Docker/runc semantics)


def resolve_user(user: str, root: Path = Path("/")) -> tuple[int, int, list[int], str]:
    """Docker's ``-u`` resolved inside the image: (uid, gid, groups, home).

    `root` is the container's root directory: its host path before pivot_root, "/" after.
    The rules are runc's (``user.GetExecUser``), which Docker uses:

    - "" means uid 0; "name" or "uid"; "name:group", "uid:gid" and mixes of both.
    - A name must exist in /etc/passwd; a number need not (uid 1234 with no entry runs as
      uid 1234, gid 0, home "/").
    - A user found in /etc/passwd brings its gid and home directory.
    - Without an explicit group, every /etc/group entry that lists the user by name is a
      supplementary group; with one, there are none (the group *replaces* the user's).
    - `groups` starts with the primary gid, as Docker's AdditionalGids do.

    The files are opened with every symlink resolved as if `root` were "/", so an image whose
    /etc/passwd is a symlink to /etc/shadow reads *its own* /etc/shadow, never the host's.
    """
    user_arg, group_arg = _split_user_spec(user)
    passwd = _read_user_database(root, "/etc/passwd")
    uid, gid, home, name = 0, 0, "/", ""
    entry = _find_passwd_entry(passwd, user_arg)
    if entry is not None:
        name, uid, gid, home = entry
    elif _is_number(user_arg):
        uid = _parse_id(user_arg, user)
    elif user_arg:
        raise UnknownUser(
            f"no user {user_arg!r} in the image's /etc/passwd; use a numeric uid like -u 1000")
    if not group_arg and not name:
        return uid, gid, [gid], home
    groups_file = _read_user_database(root, "/etc/group")
    if group_arg:
        gid = _resolve_group(groups_file, group_arg, user)
        return uid, gid, [gid], home
    supplementary = [g for _, g, members in _group_entries(groups_file) if name in members]
    return uid, gid, _unique([gid, *supplementary]), home


def _split_user_spec(user: str) -> tuple[str, str]:
    """"user:group" into its two parts; either may be empty, as in Docker ("1000:", ":100")."""
    user_arg, _, group_arg = user.partition(":")
    for part in (user_arg, group_arg):
        if ":" in part or part.startswith("-") or any(c.isspace() or c == "\0" for c in part):
            raise BadUserSpec(f"invalid user {user!r}: use name, uid, name:group or uid:gid")
    return user_arg, group_arg


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²", which isdigit() accepts


def _parse_id(text: str, spec: str) -> int:
    number = int(text)
    if number > MAX_ID:
        raise BadUserSpec(f"id {number} in -u {spec!r} is out of range: use 0 to {MAX_ID}")
    return number


def _find_passwd_entry(passwd: str, user_arg: str) -> tuple[str, int, int, str] | None:
    """The first matching entry: "" means uid 0, and a number is always a uid, like runc."""
    for name, _, uid_text, gid_text, _, home, _ in _entries(passwd, 7):
        if not (_is_number(uid_text) and _is_number(gid_text)):
            continue
        if _is_number(user_arg) or not user_arg:
            matches = int(uid_text) == int(user_arg or "0")
        else:
            matches = name == user_arg
        if matches:
            return name, int(uid_text), int(gid_text), home or "/"
    return None


def _resolve_group(groups_file: str, group_arg: str, spec: str) -> int:
    for name, gid, _ in _group_entries(groups_file):
        if _is_number(group_arg) and gid == int(group_arg) or group_arg == name:
            return gid
    if _is_number(group_arg):
        return _parse_id(group_arg, spec)
    raise UnknownGroup(
        f"no group {group_arg!r} in the image's /etc/group; use a numeric gid like -u 1000:1000")


def _group_entries(groups_file: str):
    for name, _, gid_text, members in _entries(groups_file, 4):
        if _is_number(gid_text):
            yield name, int(gid_text), members.split(",")


def _entries(text: str, width: int):
    """The colon-separated fields of each entry; comments, blanks and short lines skipped."""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= width - 1:
            # a missing last field (shell, member list) is the same as an empty one
            yield (fields + [""])[:width]


def _unique(numbers: list[int]) -> list[int]:
    return list(dict.fromkeys(numbers))


def _read_user_database(root: Path, path: str) -> str:
    """The image's `path` as text, or "" if it has none (a scratch image, say)."""
    try:
        handle = _open_in_root(root, path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as error:  # a symlink loop, a path too long...
        raise BadUserDatabase(f"cannot open the image's {path}: {os.strerror(error.errno)}; "
                              f"fix the image, or use a numeric -u uid:gid") from error
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            # Opening a fifo would hang and a device node could be the host's disk: never
            # open anything but a regular file, which is why the first open was O_PATH.
            raise BadUserDatabase(f"the image's {path} is not a regular file; fix the image, "
                                  f"or use a numeric -u uid:gid")
        if info.st_size > MAX_USER_DATABASE_BYTES:
            raise BadUserDatabase(f"the image's {path} is {info.st_size} bytes, too big to be a "
                                  f"user database; fix the image")
        reader = _reopen_for_reading(handle, info, root, path)
    finally:
        os.close(handle)
    with os.fdopen(reader, "rb") as file:
        return file.read(MAX_USER_DATABASE_BYTES).decode("utf-8", errors="replace")


def _reopen_for_reading(handle: int, info: os.stat_result, root: Path, path: str) -> int:
    """A readable fd for the regular file behind the O_PATH fd `handle`."""
    try:
        # Through /proc, the very file we checked: no window for a swap.
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass  # no /proc here (or one of another PID namespace): open again, then compare
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        reader = _open_in_root(root, path, flags)
    except OSError as error:
        raise BadUserDatabase(f"cannot read the image's {path}: {os.strerror(error.errno)}; "
                              f"fix the image, or use a numeric -u uid:gid") from error
    again = os.fstat(reader)
    if (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino):
        os.close(reader)
        raise BadUserDatabase(f"the image's {path} changed while it was read; try again")
    return reader


def _open_in_root(root: Path, path: str, flags: int) -> int:
    """open(2) of `path` with every symlink and ".." kept inside `root`; raises OSError.

    The one openat2 wrapper is safepath's, which falls back to its own walk where the kernel
    (or a seccomp filter) has no openat2; a symlink loop there is an UnsafePath (one line).
    """
    return safepath.open_in_root(root, path, flags | os.O_CLOEXEC, 0)


# ---------------------------------------------------------------------------------------------
# Environment: the image's Env, then -e, and nothing from the host


def parse_env_options(items: list[str]) -> list[str]:
    """Check -e options and give bare names their value from *this* process's environment.

    ``-e NAME=value`` sets NAME. ``-e NAME`` copies NAME from os.environ, as ``docker -e NAME``
    copies it from the client's environment; if NAME is not set here it stays a bare name,
    which `build_environment` reads as "unset NAME" (Docker does the same). So call this where
    the user typed the options (the CLI or the kernel), not in the runner.
    """
    parsed = []
    for item in items:
        name, equals, _ = item.partition("=")
        _check_env_entry(item, name, "-e")
        if not equals and name in os.environ:
            item = f"{name}={os.environ[name]}"
        parsed.append(item)
    return parsed


def merge_environment(image_env: list[str], options: list[str]) -> list[str]:
    """The image's Env with -e options applied, as a container's spec records it (the
    defaults and HOME come later, from `build_environment` inside the container)."""
    for item in image_env:
        _check_env_entry(item, item.partition("=")[0], "the image's Env")
    return _replace_or_append(list(image_env), parse_env_options(options))


def build_environment(image_env: list[str], extra: list[str], *, home: str,
                      hostname: str | None = None, tty: bool = False) -> list[str]:
    """The container's environment, built as Docker builds it, never copied from the host.

    In order: Docker's defaults (PATH, HOSTNAME when given, TERM=xterm with a tty), then the
    image config's Env, then `extra` (-e options, see `parse_env_options`); a later NAME=value
    replaces an earlier one in place, a bare NAME removes it. HOME is added last if nothing set
    it (runc does this from the user's /etc/passwd entry: `home` from `resolve_user`).
    """
    defaults = [f"PATH={DEFAULT_PATH}"]
    if hostname is not None:
        defaults.append(f"HOSTNAME={hostname}")
    if tty:
        defaults.append("TERM=xterm")
    for item in image_env:
        _check_env_entry(item, item.partition("=")[0], "the image's Env")
    environment = _replace_or_append(defaults, image_env)
    environment = _replace_or_append(environment, parse_env_options(extra))
    if not any(item.partition("=")[0] == "HOME" for item in environment):
        environment.append(f"HOME={home}")
    return environment


def _check_env_entry(item: str, name: str, where: str) -> None:
    if not name or "\0" in item or any(c.isspace() for c in name):
        raise BadEnvironment(f"invalid environment variable {item!r} in {where}: "
                             f"use NAME=value (or NAME to copy it from your environment)")


def _replace_or_append(base: list[str], overrides: list[str]) -> list[str]:
    """moby's ReplaceOrAppendEnvValues: override by name, keep order, bare NAME unsets."""
    values = {item.partition("=")[0]: item for item in base}
    for item in overrides:
        name, equals, _ = item.partition("=")
        if equals:
            values[name] = item
        else:
            values.pop(name, None)
    return list(values.values())


# ---------------------------------------------------------------------------------------------
# Capabilities and privileges: what PID 1 keeps before it starts anything


def setgroups_allowed(pid: int | str = "self") -> bool:
    """False in `pid`'s (by default our own) user namespace if it denies setgroups(2), as a
    rootless one does (the kernel requires it before a user may write its own gid_map)."""
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def capability_mask(names: tuple[str, ...] | list[str]) -> int:
    """The capability set `names` as a bit mask; "CAP_" is optional and case does not matter."""
    mask = 0
    for name in names:
        canonical = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
        if canonical not in CAPABILITY_NUMBERS:
            raise UnknownCapability(
                f"unknown capability {name!r}: use a name from capabilities(7), "
                f"like CAP_NET_ADMIN")
        mask |= 1 << CAPABILITY_NUMBERS[canonical]
    return mask


def drop_capabilities(keep: tuple[str, ...]) -> None:
    """Keep only the capabilities `keep`, for this process and everything it will exec.

    - The bounding set loses every other capability (up to the kernel's last one, which
      PR_CAPBSET_READ finds without needing /proc): nothing exec'd can ever get them back,
      not even a setuid-root or file-capability binary.
    - The ambient set is cleared.
    - Effective and permitted become `keep` if the uid is 0, and empty otherwise: that is what
      execve gives a non-root user anyway, and what Docker asks runc for.
    - Inheritable is always empty, as in Docker since CVE-2022-24769: a non-empty inheritable
      set would hand capabilities to any program with matching file capabilities.

    PID 1 calls it as root (`contained.runtime.init.confine_step`); a capability the calling
    process does not have cannot be kept.
    """
    wanted = capability_mask(keep)
    try:
        _, permitted, _ = syscalls.capget()
        # After setuid with KEEPCAPS the effective set is empty; CAP_SETPCAP must be effective
        # to drop from the bounding set.
        syscalls.capset(permitted, permitted, 0)
        for number in range(last_capability() + 1):
            if not wanted & (1 << number):
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
        final = wanted & permitted if os.geteuid() == 0 else 0
        syscalls.capset(final, final, 0)
    except OSError as error:
        raise CapabilitiesFailed(
            f"cannot set the container's capabilities: {error}; "
            f"the runner needs CAP_SETPCAP (run as root)") from error


@functools.cache
def last_capability() -> int:
    """The kernel's highest capability number (/proc/sys/kernel/cap_last_cap, without /proc)."""
    number = 0
    while True:
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_READ, number + 1)
        except OSError as error:
            if error.errno == errno.EINVAL:
                return number
            raise
        number += 1


def set_no_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS: from now on, exec never grants privileges (setuid bits, file caps)."""
    try:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as error:
        raise CapabilitiesFailed(f"cannot set no_new_privs: {error}") from error


def find_executable(name: str, path_env: str) -> str:
    """Find the command like execvp and Docker do: in $PATH unless the name has a "/".

    Runs inside the (already pivoted) container root, so paths are the container's. A
    directory of $PATH that is empty means the current directory, as in the shell.
    """
    if "/" in name:
        _check_executable(name)
        return name
    for directory in path_env.split(":"):
        candidate = os.path.join(directory or ".", name)
        if name and _is_executable_file(candidate):
            return candidate
    raise cannot_execute(name, "path")


def cannot_execute(name: str, stage: str, number: int = 0) -> ContainedError:
    """Why `name` cannot be executed, by tiny_init.c's stage names: not in $PATH ("path"),
    no such file ("missing", with its errno), a "directory", or not executable ("notexec")."""
    if stage == "path":
        return CommandNotFound(f"executable file not found in $PATH: {name!r}; "
                               f"check the command name, or give its full path")
    if stage == "missing":
        return CommandNotFound(f"no such file in the container: {name!r} "
                               f"({os.strerror(number)}); check the path")
    what = "a directory" if stage == "directory" else "not executable"
    return CommandNotExecutable(
        f"{name!r} in the container is {what}; check the path, or chmod +x it")


def _is_executable_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.X_OK)
    except OSError:
        return False


def _check_executable(path: str) -> None:
    try:
        info = os.stat(path)
    except OSError as error:
        raise cannot_execute(path, "missing", error.errno) from error
    if not stat.S_ISREG(info.st_mode) or not os.access(path, os.X_OK):
        raise cannot_execute(path, "directory" if stat.S_ISDIR(info.st_mode) else "notexec")
