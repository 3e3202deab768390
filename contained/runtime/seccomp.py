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

Profiles (Docker's JSON format, read and checked as Docker does) live in
`contained.runtime.seccomp_profile`; this module builds the filter from one and loads it.

The filter is loaded by PID 1 (`init`), last, after no_new_privs and just before it
starts anything: every process of the container, `exec`'d ones included, is its child and
inherits it. PID 1 goes on working under it, so a profile of one's own must allow what PID 1
uses (wait4, select, kill, recvmsg and sendmsg, vfork or clone, execve; Docker's does).
"""

import ctypes
import errno
import functools
import os
import sys
from pathlib import Path

from contained import syscalls
from contained.errors import ContainedError
from contained.runtime import seccomp_cache
from contained.runtime.plan import Step
from contained.runtime.process import DOCKER_DEFAULT_CAPABILITIES
from contained.runtime.seccomp_profile import (  # noqa: F401 — the profile side, re-exported
    ACCEPTED,
    ACTIONS,
    COMPAT_ARCHES,
    DEFAULT,
    DEFAULT_PROFILE_PATH,
    OPERATORS,
    SCMP_ACT_ALLOW,
    SCMP_ACT_ERRNO,
    SCMP_ACT_KILL_PROCESS,
    SCMP_ACT_KILL_THREAD,
    SCMP_ACT_LOG,
    SCMP_ACT_TRACE,
    SCMP_ACT_TRAP,
    UNCONFINED,
    BadProfile,
    Condition,
    Match,
    Profile,
    Rule,
    default_profile,
    docker_arch,
    from_security_options,
    native_arch,
    profile_for,
)

__all__ = ["BadProfile", "Filter", "Profile", "SeccompUnavailable", "check_available",
           "default_filter", "default_profile", "from_security_options", "profile_for", "step"]

NR_SCMP_ERROR = -1               # __NR_SCMP_ERROR: no such system call on this architecture
SCMP_FLTATR_CTL_OPTIMIZE = 8     # enum scmp_filter_attr; 2: calls sorted in a binary tree


class SeccompUnavailable(ContainedError):
    """This kernel or machine cannot filter system calls (no seccomp, or no libseccomp)."""


# libseccomp through ctypes

class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp (<seccomp.h>)"""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (<linux/filter.h>): a BPF program for PR_SET_SECCOMP."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    """struct scmp_version (<seccomp.h>)"""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


SOCK_FILTER_SIZE = seccomp_cache.SOCK_FILTER_SIZE
BPF_MAXINSNS = seccomp_cache.BPF_MAXINSNS


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
            ("seccomp_export_bpf", ctypes.c_int, [ctx, ctypes.c_int]),
            ("seccomp_version", ctypes.POINTER(_Version), [])):
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
        syscalls.prctl(syscalls.PR_GET_SECCOMP)
    except OSError as error:
        raise SeccompUnavailable(f"this kernel has no seccomp ({error.strerror}): build it "
                                 f"with CONFIG_SECCOMP, {unconfined}") from error
    try:
        syscalls.prctl(syscalls.PR_SET_SECCOMP, syscalls.SECCOMP_MODE_FILTER, 0)
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
    filters for the same reason, and so do we: given a `cache` directory, the program is
    read from there if it was compiled before (`contained.runtime.seccomp_cache`).
    """

    def __init__(self, profile: Profile, capabilities=DOCKER_DEFAULT_CAPABILITIES,
                 cache: Path | None = None):
        check_available()
        self.profile = profile
        self.cache = cache
        self.lib = _library()
        self.ctx = None
        self.arches, self.rules = profile.arches(native_arch()), profile.rules_for(capabilities)
        # Names of this architecture's calls, for --explain and the summary.
        self.allowed, self.refused = self._tally()
        version = self.lib.seccomp_version().contents
        # Everything the program depends on (rules_for already applied the kernel version,
        # the architecture and the capabilities; they are in the key all the same).
        self.cache_key = seccomp_cache.cache_key(
            (version.major, version.minor, version.micro), native_arch(), docker_arch(),
            syscalls.kernel_version(), sorted(capabilities), profile.default_action,
            self.arches, self.rules, SCMP_FLTATR_CTL_OPTIMIZE)
        if cache is None:
            self._build()  # a bad profile says so now; with a cache, when first compiled

    def _tally(self) -> tuple[set[str], set[str]]:
        allowed, refused = set(), set()
        for rule in self.rules:
            if rule.action == self.profile.default_action:
                continue
            for name in rule.names:
                # A pseudo number (< 0) stands for another architecture's call.
                if self.lib.seccomp_syscall_resolve_name(name.encode()) >= 0:
                    (allowed if rule.action == SCMP_ACT_ALLOW else refused).add(name)
        return allowed, refused

    def _build(self) -> None:
        """The libseccomp filter (~5 ms for Docker's profile): only to compile or print it,
        so a program read from the cache never needs it."""
        if self.ctx:
            return
        self.ctx = self.lib.seccomp_init(self.profile.default_action)
        if not self.ctx:
            raise BadProfile(f"{self.profile.source}: libseccomp refused its default action")
        # A binary tree of call numbers instead of a list: each call is checked in a few
        # jumps instead of a few hundred, and the kernel, which works out at load time which
        # calls are always allowed by running the program for each, loads it twice as fast.
        # (libseccomp before 2.5 lacks it and keeps the list.)
        self.lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        try:
            for arch in self.arches:
                self._add_arch(arch)
            for rule in self.rules:
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

    @functools.cached_property
    def program(self) -> bytes:
        """The BPF program libseccomp generates for this filter (struct sock_filter[]), from
        the cache when it holds one that checks out, else compiled (and then cached)."""
        if self.cache is None:
            return self._compile()
        program = seccomp_cache.read(self.cache, self.cache_key)
        if program is None:
            program = self._compile()
            seccomp_cache.write(self.cache, self.cache_key, program)
        return program

    def _compile(self) -> bytes:
        import tempfile  # only to compile: a cached program is read without it (~1 ms to load)

        self._build()
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
            syscalls.prctl(syscalls.PR_SET_SECCOMP, syscalls.SECCOMP_MODE_FILTER,
                           ctypes.addressof(fprog))
        except OSError as error:
            raise SeccompUnavailable(f"cannot load the seccomp filter ({error.strerror}): run "
                                     "with --security-opt seccomp=unconfined to do "
                                     "without") from error

    def pfc(self) -> str:
        """The filter in libseccomp's Pseudo Filter Code: readable, one test per line."""
        import tempfile

        self._build()
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

    A runner builds and compiles it before it forks anything (`contained.runtime.server.serve`), so
    that each container's PID 1 only has to load it; the compiled program is cached in the
    store's home, for the next process.
    """
    built = Filter(default_profile(), cache=seccomp_cache.cache_directory())
    built.program  # noqa: B018 — compiled now, not in each container
    return built


def prepare_default() -> None:
    """Build Docker's default filter (or read it from the cache) before anything is forked or
    asked for: a server's spares, or the CLI's worker while the CLI parses its options. Every
    PID 1 forked afterwards inherits it and only loads it (a millisecond, not twenty)."""
    try:
        default_filter()
    except ContainedError:
        pass  # no seccomp here: the container that needs it says so, in its own words


# ---------------------------------------------------------------------------------------------
# The step

def step(setting: str, capabilities=DOCKER_DEFAULT_CAPABILITIES) -> Step:
    """PID 1 loads the filter last, after no_new_privs: everything it starts inherits it."""
    if setting == UNCONFINED:
        return Step("# seccomp: unconfined (--security-opt seccomp=unconfined), no filter",
                    "every system call reaches the kernel; only capabilities limit root")
    try:
        built = _filter_for(setting, tuple(capabilities))
        # Compiled (or read from the cache) here, in the runner: not in each PID 1, which
        # has no access to the cache once its root is switched.
        built.program  # noqa: B018
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


def program_for(setting: str) -> bytes:
    """The compiled filter `step` would load (empty: unconfined), for a PID 1 that loads it
    itself (a spare's C init, `contained.runtime.spare_init`); errors as `step` words them."""
    if setting == UNCONFINED:
        return b""
    return _filter_for(setting, DOCKER_DEFAULT_CAPABILITIES).program


def _filter_for(setting: str, capabilities: tuple[str, ...]) -> Filter:
    if setting == DEFAULT and capabilities == DOCKER_DEFAULT_CAPABILITIES:
        return default_filter()  # built ahead of time, by the runner
    return Filter(profile_for(setting), capabilities, cache=seccomp_cache.cache_directory())


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
