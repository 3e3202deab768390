"""Seccomp: which system calls a container may make at all, from a profile in Docker's format.

Taught in notebook 07 (safety). Capabilities decide what root may do with a system call;
seccomp decides which calls reach the kernel in the first place. A filter is a small BPF
program the kernel runs on every system call of a process, and of everything it forks and
execs from then on: allow the call, or fail it with an errno. Docker's default profile is an
allowlist of some 360 calls; what it leaves out is where kernel exploits start: keyctl,
add_key and request_key (keyrings are not namespaced), bpf, perf_event_open, userfaultfd,
mount, kexec_load, open_by_handle_at, unshare, setns, and clone with namespace flags (a nested
user namespace hands back every capability inside it).

The program is built by libseccomp, the library runc, crun and podman use, reached here through
ctypes as benchexec does: rules by name in, BPF out, nothing assembled by hand. The shell has no
command for it; what comes closest:

    docker run --security-opt seccomp=FILE.json ...   # Docker reads the same profile format
    grep Seccomp /proc/self/status                    # 2: a filter is loaded; 0: none
    python -m contained.runtime.seccomp [FILE.json]    # the filter in libseccomp's readable form

A profile is evaluated for one container as Docker evaluates it: a rule under ``includes.caps``
counts only if the container keeps every capability named (ours keep Docker's defaults, so the
rules for CAP_SYS_ADMIN and its like are left out), ``excludes`` drops a rule when any of its
conditions holds, ``arches`` and ``minKernel`` are compared with this machine, and a name this
architecture does not have is skipped. ``archMap`` picks the compatibility architectures (on
x86_64: 32-bit x86 and x32), whose calls are filtered by the same rules; a profile naming no
architecture gets them too, rather than having 32-bit programs killed on their first call.

The filter is loaded by PID 1 (`init`), last, after no_new_privs and just before it
starts anything: every process of the container, `exec`'d ones included, is its child and
inherits it. PID 1 goes on working under it, so a profile of one's own must allow what PID 1
uses (wait4, select, kill, recvmsg and sendmsg, vfork or clone, execve; Docker's does).
"""

import ctypes
import errno
import functools
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from contained.errors import ContainedError
from contained.runtime import syscalls
from contained.runtime.plan import Step
from contained.runtime.process import DOCKER_DEFAULT_CAPABILITIES

__all__ = ["BadProfile", "Filter", "Profile", "SeccompUnavailable", "check_available",
           "default_filter", "default_profile", "from_security_options", "profile_for", "step"]

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
NR_SCMP_ERROR = -1               # __NR_SCMP_ERROR: no such system call on this architecture
SCMP_FLTATR_CTL_OPTIMIZE = 8     # enum scmp_filter_attr; 2: calls sorted in a binary tree
SYSCALL_MAX_ARGUMENTS = 6

# <linux/prctl.h>, <linux/seccomp.h>
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# libseccomp's name for this machine's architecture, from `uname -m` (where they differ).
_LIBSECCOMP_ARCH = {"i386": "x86", "i686": "x86", "armv7l": "arm", "armv6l": "arm"}
# Docker compares `includes.arches` with Go's spelling of the native architecture.
_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "mipsel": "mipsle"}
# What Docker's archMap adds to each architecture (for a profile that names none).
COMPAT_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",), "s390x": ("s390",),
                 "mips64": ("mips", "mips64n32"), "mipsel64": ("mipsel", "mipsel64n32")}


class BadProfile(ContainedError):
    """A --security-opt value or a seccomp profile that cannot be used as given."""


class SeccompUnavailable(ContainedError):
    """This kernel or machine cannot filter system calls (no seccomp, or no libseccomp)."""


# ---------------------------------------------------------------------------------------------
# Profiles: Docker's JSON format, read and checked

@dataclass(frozen=True)
class Condition:
    """One argument comparison: argument `index` `op` `value` (MASKED_EQ: & value == two)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class Match:
    """Docker's `includes` / `excludes`: capabilities, architectures, a minimal kernel."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    machine = platform.machine()
    return _LIBSECCOMP_ARCH.get(machine, machine)


def docker_arch() -> str:
    """This machine's architecture as Docker's profiles name it (amd64, arm64, ...)."""
    arch = native_arch()
    return _DOCKER_ARCH.get(arch, arch)


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, as Docker compares `minKernel`."""
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


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


# ---------------------------------------------------------------------------------------------
# libseccomp through ctypes

class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp (<seccomp.h>)"""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (<linux/filter.h>): a BPF program for PR_SET_SECCOMP."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SOCK_FILTER_SIZE = 8             # sizeof(struct sock_filter)
BPF_MAXINSNS = 4096              # the kernel refuses longer programs


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as error:
        raise SeccompUnavailable(
            f"libseccomp is missing ({error}): apt-get install libseccomp2, or run with "
            "--security-opt seccomp=unconfined") from error
    ctx = ctypes.c_void_p
    for name, restype, argtypes in (
            ("seccomp_init", ctx, [ctypes.c_uint32]),
            ("seccomp_release", None, [ctx]),
            ("seccomp_arch_add", ctypes.c_int, [ctx, ctypes.c_uint32]),
            ("seccomp_attr_set", ctypes.c_int, [ctx, ctypes.c_int, ctypes.c_uint32]),
            ("seccomp_arch_resolve_name", ctypes.c_uint32, [ctypes.c_char_p]),
            ("seccomp_syscall_resolve_name", ctypes.c_int, [ctypes.c_char_p]),
            ("seccomp_rule_add_array", ctypes.c_int,
             [ctx, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]),
            ("seccomp_export_pfc", ctypes.c_int, [ctx, ctypes.c_int]),
            ("seccomp_export_bpf", ctypes.c_int, [ctx, ctypes.c_int])):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


@functools.cache
def check_available() -> None:
    """Raise SeccompUnavailable, in one line, unless this kernel can filter system calls.

    PR_GET_SECCOMP fails without CONFIG_SECCOMP; PR_SET_SECCOMP with no program fails with
    EFAULT exactly when filters are supported (CONFIG_SECCOMP_FILTER), and loads nothing.
    """
    unconfined = "or run with --security-opt seccomp=unconfined"
    try:
        syscalls.prctl(PR_GET_SECCOMP)
    except OSError as error:
        raise SeccompUnavailable(f"this kernel has no seccomp ({error.strerror}): build it "
                                 f"with CONFIG_SECCOMP, {unconfined}") from error
    try:
        syscalls.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, 0)
    except OSError as error:
        if error.errno != errno.EFAULT:
            raise SeccompUnavailable(f"this kernel cannot load seccomp filters "
                                     f"({error.strerror}): CONFIG_SECCOMP_FILTER, "
                                     f"{unconfined}") from error
    _library()


class Filter:
    """A profile turned into a libseccomp filter for one capability set: ready to load.

    Building it (some 400 rules, times three architectures on x86_64) is the slow part and
    needs no privilege; so does compiling it to BPF (`program`), which seccomp_load would
    redo for every container (15-50 ms on a 2-core machine, for Docker's profile). A runner
    builds and compiles the default filter once, ahead of time, and its forks inherit the
    program; `load` only hands it to the kernel (under a millisecond). crun caches compiled
    filters for the same reason.
    """

    def __init__(self, profile: Profile, capabilities=DOCKER_DEFAULT_CAPABILITIES):
        check_available()
        self.profile = profile
        self.lib = _library()
        self.ctx = self.lib.seccomp_init(profile.default_action)
        if not self.ctx:
            raise BadProfile(f"{profile.source}: libseccomp refused its default action")
        self.allowed: set[str] = set()   # names of this architecture's calls, for --explain
        self.refused: set[str] = set()
        # A binary tree of call numbers instead of a list: each call is checked in a few
        # jumps instead of a few hundred, and the kernel, which works out at load time which
        # calls are always allowed by running the program for each, loads it twice as fast.
        # (libseccomp before 2.5 lacks it and keeps the list.)
        self.lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        try:
            for arch in profile.arches(native_arch()):
                self._add_arch(arch)
            for rule in profile.rules_for(capabilities):
                self._add_rule(rule)
        except BaseException:
            self.release()
            raise

    def _add_arch(self, name: str) -> None:
        token = self.lib.seccomp_arch_resolve_name(name.encode())
        if not token:
            raise BadProfile(f"{self.profile.source}: libseccomp does not know the "
                             f"architecture {name}")
        result = self.lib.seccomp_arch_add(self.ctx, token)
        if result < 0 and result != -errno.EEXIST:  # the native one is there from the start
            raise BadProfile(f"{self.profile.source}: cannot add the architecture {name}: "
                             f"{os.strerror(-result)}")

    def _add_rule(self, rule: Rule) -> None:
        if rule.action == self.profile.default_action:
            return  # libseccomp refuses such a rule, and it would change nothing
        # Comparisons on distinct arguments all have to hold (one rule); several on the same
        # argument can't be and-ed by libseccomp, so each becomes a rule of its own, as runc
        # does: the call is let through if any of them holds.
        indexes = [c.index for c in rule.conditions]
        groups = [rule.conditions] if len(set(indexes)) == len(indexes) \
            else [(c,) for c in rule.conditions]
        for name in rule.names:
            number = self.lib.seccomp_syscall_resolve_name(name.encode())
            if number == NR_SCMP_ERROR:
                continue  # a call this architecture does not have (Docker skips it too)
            for group in groups:
                comparisons = (_ArgCmp * max(1, len(group)))(
                    *[_ArgCmp(c.index, c.op, c.value, c.value_two) for c in group])
                result = self.lib.seccomp_rule_add_array(self.ctx, rule.action, number,
                                                         len(group), comparisons)
                if result < 0:
                    raise BadProfile(f"{self.profile.source}: the rule for {name} is refused "
                                     f"by libseccomp: {os.strerror(-result)}")
            if number >= 0:  # a pseudo number stands for another architecture's call
                (self.allowed if rule.action == SCMP_ACT_ALLOW else self.refused).add(name)

    @functools.cached_property
    def program(self) -> bytes:
        """The BPF program libseccomp generates for this filter (struct sock_filter[])."""
        with tempfile.TemporaryFile() as out:
            result = self.lib.seccomp_export_bpf(self.ctx, out.fileno())
            if result < 0:
                raise SeccompUnavailable(f"libseccomp cannot compile the filter: "
                                         f"{os.strerror(-result)}")
            out.seek(0)
            program = out.read()
        if len(program) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
            raise BadProfile(f"{self.profile.source}: its filter is too long for the kernel "
                             f"({len(program) // SOCK_FILTER_SIZE} BPF instructions, at most "
                             f"{BPF_MAXINSNS}): fewer rules, or fewer architectures")
        return program

    def load(self) -> None:
        """Filter this process, and everything it starts from now on, for good.

        What seccomp_load does, with the program compiled ahead of time: the process must
        have no_new_privs set (or CAP_SYS_ADMIN), so that a filter cannot fool a setuid
        program into running with privileges it did not expect.
        """
        program = self.program
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = _SockFprog(len(program) // SOCK_FILTER_SIZE, ctypes.addressof(buffer))
        try:
            syscalls.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
        except OSError as error:
            raise SeccompUnavailable(f"cannot load the seccomp filter ({error.strerror}): run "
                                     "with --security-opt seccomp=unconfined to do "
                                     "without") from error

    def pfc(self) -> str:
        """The filter in libseccomp's Pseudo Filter Code: readable, one test per line."""
        with tempfile.TemporaryFile() as out:
            result = self.lib.seccomp_export_pfc(self.ctx, out.fileno())
            if result < 0:
                raise SeccompUnavailable(f"cannot export the filter: {os.strerror(-result)}")
            out.seek(0)
            return out.read().decode()

    def summary(self) -> str:
        """E.g. "Docker's default profile, 301 system calls allowed, as in FILE"."""
        where = f", as in {self.profile.shipped_as}" if self.profile.shipped_as else ""
        if self.profile.default_action == SCMP_ACT_ALLOW:  # a denylist
            return f"{self.profile.source}, every system call but {len(self.refused)}{where}"
        return f"{self.profile.source}, {len(self.allowed)} system calls allowed{where}"

    def release(self) -> None:
        if self.ctx:
            self.lib.seccomp_release(self.ctx)
            self.ctx = None


@functools.cache
def default_filter() -> Filter:
    """Docker's default profile for Docker's default capabilities, built once per process.

    A runner builds and compiles it before it forks anything (`contained.runtime.runner.serve`), so
    that each container's PID 1 only has to load it.
    """
    built = Filter(default_profile())
    built.program  # noqa: B018 — compiled now, not in each container
    return built


# ---------------------------------------------------------------------------------------------
# The step

def step(setting: str, capabilities=DOCKER_DEFAULT_CAPABILITIES) -> Step:
    """PID 1 loads the filter last, after no_new_privs: everything it starts inherits it."""
    if setting == UNCONFINED:
        return Step("# seccomp: unconfined (--security-opt seccomp=unconfined), no filter",
                    "every system call reaches the kernel; only capabilities limit root")
    try:
        built = _filter_for(setting, tuple(capabilities))
    except ContainedError as error:
        # --dry-run still shows the plan; a run stops at this step, with this one line.
        return Step(f"# seccomp: cannot be set up here: {error}", "",
                    functools.partial(_fail, error))
    if setting == DEFAULT:
        why = ("an allowlist loaded into PID 1 and inherited by everything it starts: other "
               "calls (keyctl, bpf, mount, unshare, ...) fail with EPERM; see the filter with "
               "`python -m contained.runtime.seccomp`")
    else:
        why = ("loaded into PID 1 and inherited by everything it starts; see the filter with "
               "`python -m contained.runtime.seccomp FILE.json`")
    return Step(f"# seccomp: {built.summary()}", why, built.load)


def _filter_for(setting: str, capabilities: tuple[str, ...]) -> Filter:
    if setting == DEFAULT and capabilities == DOCKER_DEFAULT_CAPABILITIES:
        return default_filter()  # built ahead of time, by the runner
    return Filter(profile_for(setting), capabilities)


def _fail(error: ContainedError):
    raise error


def main(argv: list[str]) -> int:
    """``python -m contained.runtime.seccomp [FILE.json]``: a profile's filter in readable form."""
    try:
        setting = from_security_options([f"seccomp={argv[0]}"]) if argv else DEFAULT
        profile = profile_for(setting)
        if profile is None:
            print("# unconfined: no filter")
            return 0
        built = Filter(profile)
        print(f"# {built.summary()}, for Docker's default capabilities on {native_arch()}")
        print(built.pfc(), end="")
        return 0
    except ContainedError as error:
        print(f"contained: error: {error}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
