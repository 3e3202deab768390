"""Seccomp profiles in Docker's format: which system calls a container may make, as data.

Taught in notebook 07 (safety); `contained.runtime.seccomp` turns a profile into the filter
the kernel runs. A profile is the JSON that ``docker run --security-opt seccomp=FILE.json``
reads: a default action, and rules that name system calls and say what happens to them::

    {"defaultAction": "SCMP_ACT_ERRNO",
     "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}

A profile is evaluated for one container as Docker evaluates it: a rule under ``includes.caps``
counts only if the container keeps every capability named (ours keep Docker's defaults, so the
rules for CAP_SYS_ADMIN and its like are left out), ``excludes`` drops a rule when any of its
conditions holds, ``arches`` and ``minKernel`` are compared with this machine, and a name this
architecture does not have is skipped. ``archMap`` picks the compatibility architectures (on
x86_64: 32-bit x86 and x32), whose calls are filtered by the same rules; a profile naming no
architecture gets them too, rather than having 32-bit programs killed on their first call.
Nothing here needs libseccomp: a profile is read and checked on the client, before anything
starts.
"""

import errno
import functools
import json
import os
from pathlib import Path

from contained.errors import ContainedError
from contained.records import record, replace
from contained.runtime.process import DOCKER_DEFAULT_CAPABILITIES
from contained.syscalls import kernel_version

__all__ = ["ACTIONS", "COMPAT_ARCHES", "DEFAULT", "OPERATORS", "UNCONFINED", "BadProfile",
           "Condition", "Match", "Profile", "Rule", "default_profile", "docker_arch",
           "from_security_options", "native_arch", "profile_for"]

DEFAULT_PROFILE_PATH = Path(__file__).with_name("seccomp-default.json")
DEFAULT = "default"
UNCONFINED = "unconfined"
ACCEPTED = "seccomp=unconfined or seccomp=FILE.json (a profile in Docker's format)"

# <seccomp.h>: what a rule does with a matching call
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO = 0x00050000      # | the errno
SCMP_ACT_TRACE = 0x7FF00000      # | the message for the tracer
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
ACTIONS = {
    "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
    "SCMP_ACT_ERRNO": SCMP_ACT_ERRNO,
    "SCMP_ACT_TRACE": SCMP_ACT_TRACE,
    "SCMP_ACT_LOG": SCMP_ACT_LOG,
    "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
}
# <seccomp.h> enum scmp_compare
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
SYSCALL_MAX_ARGUMENTS = 6

# libseccomp's name for this machine's architecture, from `uname -m` (where they differ).
_LIBSECCOMP_ARCH = {"i386": "x86", "i686": "x86", "armv7l": "arm", "armv6l": "arm"}
# Docker compares `includes.arches` with Go's spelling of the native architecture.
_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "mipsel": "mipsle"}
# What Docker's archMap adds to each architecture (for a profile that names none).
COMPAT_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",), "s390x": ("s390",),
                 "mips64": ("mips", "mips64n32"), "mipsel64": ("mipsel", "mipsel64n32")}


class BadProfile(ContainedError):
    """A --security-opt value or a seccomp profile that cannot be used as given."""



@record(frozen=True)
class Condition:
    """One argument comparison: argument `index` `op` `value` (MASKED_EQ: & value == two)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@record(frozen=True)
class Match:
    """Docker's `includes` / `excludes`: capabilities, architectures, a minimal kernel."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@record(frozen=True)
class Rule:
    """Calls by name, what happens to them, and when the rule counts at all."""

    names: tuple[str, ...]
    action: int
    conditions: tuple[Condition, ...] = ()
    includes: Match = Match()
    excludes: Match = Match()

    def applies(self, capabilities, arch: str, kernel: tuple[int, int]) -> bool:
        """Whether Docker would keep this rule for a container with `capabilities`, on a
        machine whose architecture Docker calls `arch`, with kernel version `kernel`."""
        inc, exc = self.includes, self.excludes
        if inc.arches and arch not in inc.arches:
            return False
        if inc.caps and not all(cap in capabilities for cap in inc.caps):
            return False
        if inc.min_kernel and kernel < inc.min_kernel:
            return False
        if arch in exc.arches or any(cap in capabilities for cap in exc.caps):
            return False
        return not (exc.min_kernel and kernel >= exc.min_kernel)


@record(frozen=True)
class Profile:
    """A seccomp profile as read: the default action, the architectures and the rules."""

    default_action: int
    rules: tuple[Rule, ...]
    architectures: tuple[str, ...] = ()   # libseccomp names ("x86_64", "x86", "x32")
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str = "a profile given with --security-opt seccomp=FILE.json"
    shipped_as: str = ""                  # the package's file, for the default profile

    @classmethod
    def parse(cls, text: str, source: str = "the seccomp profile") -> "Profile":
        """Read a profile in Docker's format; BadProfile says in one line what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BadProfile(f"{source} is not valid JSON ({error}): give a profile in "
                             "Docker's format, like runtime/seccomp-default.json") from error
        try:
            return cls._from_dict(data, source)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BadProfile(f"{source}: {_reason(error)}: see Docker's format, e.g. "
                             "contained/runtime/seccomp-default.json") from error

    @classmethod
    def _from_dict(cls, data: dict, source: str) -> "Profile":
        if not isinstance(data, dict):
            raise ValueError("a profile is a JSON object")
        if "defaultAction" not in data:
            raise ValueError("it has no defaultAction")
        if data.get("architectures") and data.get("archMap"):
            raise ValueError("it has both architectures and archMap: use one of them")
        default = _action(data["defaultAction"], data.get("defaultErrnoRet"))
        rules = tuple(_rule(entry) for entry in data.get("syscalls") or [])
        architectures = tuple(_arch_name(a) for a in data.get("architectures") or [])
        arch_map = tuple((_arch_name(entry["architecture"]),
                          tuple(_arch_name(a) for a in entry.get("subArchitectures") or []))
                         for entry in data.get("archMap") or [])
        return cls(default, rules, architectures, arch_map, source)

    def arches(self, native: str) -> tuple[str, ...]:
        """The architectures to filter besides the native one (libseccomp names)."""
        if self.architectures:
            return self.architectures
        if self.arch_map:
            return next((subs for arch, subs in self.arch_map if arch == native), ())
        return COMPAT_ARCHES.get(native, ())

    def rules_for(self, capabilities=DOCKER_DEFAULT_CAPABILITIES, arch: str | None = None,
                  kernel: tuple[int, int] | None = None) -> list[Rule]:
        """The rules Docker would keep for this container on this machine."""
        arch = arch or docker_arch()
        kernel = kernel or kernel_version()
        return [rule for rule in self.rules if rule.applies(set(capabilities), arch, kernel)]


def _reason(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"a field is missing: {error}"
    return str(error)


def _action(name: str, errno_ret=None) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise ValueError("SCMP_ACT_NOTIFY needs a listener, and contained has none")
    if name not in ACTIONS:
        raise ValueError(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
    action = ACTIONS[name]
    if action in (SCMP_ACT_ERRNO, SCMP_ACT_TRACE):
        # Docker's (and runc's) default for an errno nobody gave: EPERM.
        number = errno.EPERM if errno_ret is None else _number(errno_ret, "errnoRet")
        if not 0 <= number <= 0xFFFF:
            raise ValueError(f"errnoRet {number} is out of range")
        action |= number
    return action


def _rule(entry: dict) -> Rule:
    if entry.get("name") and entry.get("names"):
        raise ValueError("a rule has both name and names: use one of them")
    names = [entry["name"]] if entry.get("name") else entry["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be a list of system call names, not {names!r}")
    conditions = tuple(_condition(arg) for arg in entry.get("args") or [])
    return Rule(tuple(names), _action(entry["action"], entry.get("errnoRet")), conditions,
                _match(entry.get("includes")), _match(entry.get("excludes")))


def _condition(arg: dict) -> Condition:
    index = _number(arg["index"], "index")
    if not 0 <= index < SYSCALL_MAX_ARGUMENTS:
        raise ValueError(f"argument index {index} is out of range (0 to 5)")
    if arg["op"] not in OPERATORS:
        raise ValueError(f"unknown op {arg['op']!r} (known: {', '.join(OPERATORS)})")
    value, two = _number(arg.get("value", 0), "value"), _number(arg.get("valueTwo", 0), "valueTwo")
    if not (0 <= value < 1 << 64 and 0 <= two < 1 << 64):
        raise ValueError("argument values are unsigned 64-bit numbers")
    return Condition(index, OPERATORS[arg["op"]], value, two)


def _match(data: dict | None) -> Match:
    if not data:
        return Match()
    min_kernel = None
    if data.get("minKernel"):
        major, _, minor = str(data["minKernel"]).partition(".")
        if not (major.isdigit() and minor.split(".")[0].isdigit()):
            raise ValueError(f"minKernel {data['minKernel']!r} is not a version like 4.8")
        min_kernel = (int(major), int(minor.split(".")[0]))
    return Match(tuple(data.get("caps") or ()), tuple(data.get("arches") or ()), min_kernel)


def _number(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return value


def _arch_name(name: str) -> str:
    """SCMP_ARCH_X86_64 -> x86_64, the name libseccomp resolves."""
    if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
        raise ValueError(f"unknown architecture {name!r} (use names like SCMP_ARCH_X86_64)")
    return name[len("SCMP_ARCH_"):].lower()


def native_arch() -> str:
    """This machine's architecture as libseccomp names it (x86_64, aarch64, ...)."""
    machine = os.uname().machine  # platform.machine(), without importing platform
    return _LIBSECCOMP_ARCH.get(machine, machine)


def docker_arch() -> str:
    """This machine's architecture as Docker's profiles name it (amd64, arm64, ...)."""
    arch = native_arch()
    return _DOCKER_ARCH.get(arch, arch)


@functools.cache
def default_profile() -> Profile:
    """Docker's default profile, shipped as contained/runtime/seccomp-default.json."""
    shipped_as = f"contained/runtime/{DEFAULT_PROFILE_PATH.name}"
    profile = Profile.parse(DEFAULT_PROFILE_PATH.read_text(), shipped_as)
    return replace(profile, source="Docker's default profile", shipped_as=shipped_as)


def profile_for(setting: str) -> Profile | None:
    """The profile a spec's `seccomp` field names: None for unconfined."""
    if setting == UNCONFINED:
        return None
    if setting == DEFAULT:
        return default_profile()
    return Profile.parse(setting, Profile.source)


def from_security_options(options) -> str:
    """--security-opt values -> the spec's `seccomp` field, on the client side.

    A FILE is read here, on the host, and its JSON goes in the spec: the runner never opens a
    path the user named. The profile is checked now, so a mistake is one line before anything
    starts.
    """
    setting = DEFAULT
    for option in options or ():
        key, sep, value = option.partition("=")
        if key != "seccomp" or not sep or not value:
            raise BadProfile(f"invalid --security-opt {option!r}: use {ACCEPTED}")
        if value == UNCONFINED:
            setting = UNCONFINED
            continue
        try:
            setting = Path(value).read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise BadProfile(f"cannot read the seccomp profile {value}: {reason}; use "
                             f"{ACCEPTED}") from error
        Profile.parse(setting, f"the seccomp profile {value}")
    return setting
