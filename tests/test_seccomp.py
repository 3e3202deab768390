"""Seccomp and keyrings: Docker's default profile, --security-opt, a new session keyring.

The unit tests read profiles, build filters, and load them in forked children (no_new_privs is
all a process needs to filter itself: no root). The root tests run busybox containers and,
inside them, a tiny static helper (compiled here with ``gcc -static``, bind-mounted read-only)
that makes the system calls an attacker would.
"""

import ctypes
import errno
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_root, run_capture

from contained.runtime import container, init, process, seccomp
from contained.runtime.process import DOCKER_DEFAULT_CAPABILITIES

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Each call has arguments the kernel refuses with an error other than EPERM (or accepts):
   only a seccomp filter answers EPERM (ENOSYS for clone3) to all of them. */
static void show(const char *name, long rc) { printf("%s %d\n", name, rc < 0 ? errno : 0); }

/* clone(2) as fork does (the child runs on a copy of this stack, and leaves at once) */
static long clone_with(unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    return pid;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "probe")) {
        show("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
        show("add_key", syscall(SYS_add_key, NULL, NULL, NULL, 0, -3));
        show("request_key", syscall(SYS_request_key, NULL, NULL, NULL, 0));
        show("bpf", syscall(SYS_bpf, 9999, NULL, 0));
        show("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
        show("personality", syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */));
        show("personality_query", syscall(SYS_personality, 0xffffffff));
        show("clone_newuser", clone_with(CLONE_NEWUSER));
        show("clone_plain", clone_with(0));
        show("clone3", syscall(SYS_clone3, NULL, 0));
        show("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "search")) {  /* a user key in the session keyring */
        long id = syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -3, "user", argv[2], 0);
        if (id < 0) { printf("search %d\n", errno); return 1; }
        char data[256] = {0};
        long n = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, id, data, sizeof data - 1);
        printf("found %s\n", n >= 0 ? data : strerror(errno));
        return 0;
    }
    if (argc > 3 && !strcmp(argv[1], "add")) {
        long id = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]), -3);
        printf("add %d\n", id < 0 ? errno : 0);
        return id < 0;
    }
    fprintf(stderr, "usage: probe | search DESC | add DESC DATA\n");
    return 2;
}
"""


# ---------------------------------------------------------------------------------------------
# Profiles, filters and options (anywhere)

def profile(*rules, **top) -> seccomp.Profile:
    """A small profile in Docker's format: EPERM by default, these rules."""
    data = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": list(rules)}
    return seccomp.Profile.parse(json.dumps(data | top))


def allowed_names(rules) -> set[str]:
    return {name for rule in rules if rule.action == seccomp.SCMP_ACT_ALLOW
            for name in rule.names}


@pytest.fixture(autouse=True)
def _a_home_of_its_own(tmp_path, monkeypatch):
    """Compiled filters are cached in the home: a test without one gets a temporary one,
    never the machine's default (/var/lib/contained)."""
    if "CONTAINED_HOME" not in os.environ:
        monkeypatch.setenv("CONTAINED_HOME", str(tmp_path / "home"))


def test_the_default_profile_allows_none_of_the_calls_docker_refuses():
    rules = seccomp.default_profile().rules_for(DOCKER_DEFAULT_CAPABILITIES, arch="amd64",
                                                kernel=(6, 1))
    unconditional = allowed_names(rule for rule in rules if not rule.conditions)
    for name in ("keyctl", "add_key", "request_key", "bpf", "perf_event_open", "kexec_load",
                 "kexec_file_load", "open_by_handle_at", "mount", "umount2", "unshare", "setns",
                 "clone", "clone3", "userfaultfd", "init_module", "reboot", "personality",
                 "socket"):
        assert name not in unconditional, name
    # clone only without namespace flags (Docker's mask over CLONE_NEW*), clone3 "not there"
    (clone,) = [rule for rule in rules if rule.names == ("clone",)]
    assert clone.conditions == (seccomp.Condition(0, seccomp.OPERATORS["SCMP_CMP_MASKED_EQ"],
                                                  0x7E020000, 0),)
    (clone3,) = [rule for rule in rules if rule.names == ("clone3",)]
    assert clone3.action == seccomp.SCMP_ACT_ERRNO | errno.ENOSYS
    assert {"read", "execve", "fork", "vfork", "wait4", "select", "recvmsg", "sendmsg", "kill",
            "pidfd_open", "prctl", "setresuid", "chroot", "ptrace"} <= unconditional


def test_rules_for_capabilities_count_only_when_the_container_keeps_them():
    admin = seccomp.default_profile().rules_for((*DOCKER_DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"),
                                                arch="amd64", kernel=(6, 1))
    plain = seccomp.default_profile().rules_for(DOCKER_DEFAULT_CAPABILITIES, arch="amd64",
                                                kernel=(6, 1))
    assert {"mount", "unshare", "setns", "clone"} <= allowed_names(
        rule for rule in admin if not rule.conditions)
    # excludes.caps: with CAP_SYS_ADMIN the masked clone rule and clone3's ENOSYS go
    assert not [rule for rule in admin if rule.names == ("clone3",) and
                rule.action != seccomp.SCMP_ACT_ALLOW]
    assert "chroot" in allowed_names(plain)  # CAP_SYS_CHROOT is one of Docker's defaults


def test_includes_and_excludes_by_architecture_and_kernel():
    rules = profile({"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                     "includes": {"arches": ["amd64", "x32"]}},
                    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                     "includes": {"minKernel": "4.8"}},
                    {"names": ["uname"], "action": "SCMP_ACT_ALLOW",
                     "excludes": {"arches": ["arm64"], "minKernel": "7.0"}})
    assert allowed_names(rules.rules_for(arch="amd64", kernel=(6, 1))) == \
        {"arch_prctl", "ptrace", "uname"}
    assert allowed_names(rules.rules_for(arch="arm64", kernel=(4, 7))) == set()
    assert allowed_names(rules.rules_for(arch="amd64", kernel=(7, 2))) == {"arch_prctl", "ptrace"}


def test_unknown_system_call_names_are_skipped():
    built = seccomp.Filter(profile({"names": ["mkdir", "no_such_call", "chown32"],
                                    "action": "SCMP_ACT_ALLOW"}))
    try:
        # chown32 exists for 32-bit x86 only: filtered there, not counted as this arch's
        expected = {"mkdir"} if seccomp.native_arch() == "x86_64" else {"mkdir", "chown32"}
        assert built.allowed <= expected and "mkdir" in built.allowed
        assert "no_such_call" not in built.pfc()
    finally:
        built.release()


@pytest.mark.parametrize("text, says", [
    ("{", "not valid JSON"),
    ("[]", "a JSON object"),
    ('{"syscalls": []}', "no defaultAction"),
    ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown action"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "listener"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"], '
     '"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}', "both architectures and archMap"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}',
     "missing: 'action'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
     "index 7"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "EQUALS"}]}]}',
     "unknown op"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", '
     '"action": "SCMP_ACT_ALLOW"}]}', "list of system call names"),
])
def test_a_bad_profile_is_a_one_line_error(text, says):
    with pytest.raises(seccomp.BadProfile) as caught:
        seccomp.Profile.parse(text)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_security_options_become_the_specs_seccomp_field(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert seccomp.from_security_options([]) == "default"
    assert seccomp.from_security_options(["seccomp=unconfined"]) == "unconfined"
    assert seccomp.from_security_options([f"seccomp={path}"]) == path.read_text()
    for bad in ("apparmor=unconfined", "seccomp", "seccomp=", f"seccomp={tmp_path}/none.json"):
        with pytest.raises(seccomp.BadProfile) as caught:
            seccomp.from_security_options([bad])
        assert "seccomp=unconfined or seccomp=FILE.json" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_the_filter_shows_as_readable_pfc_with_the_compat_architectures():
    text = seccomp.default_filter().pfc()
    assert 'filter for syscall "clone"' in text
    assert "# default action\n  action ERRNO(1);" in text
    assert 'filter for syscall "keyctl"' not in text
    if seccomp.native_arch() == "x86_64":
        assert "filter for arch x86 " in text and "filter for arch x32 " in text


def test_arguments_on_the_same_index_become_rules_of_their_own():
    built = seccomp.Filter(profile({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                    "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                                             {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}))
    try:
        native = built.pfc().split("filter for arch")[1]
        # either value lets the call through (runc's reading of such a rule), not both at once
        assert "$a0.lo32 == 0" in native and "$a0.lo32 == 8" in native
    finally:
        built.release()


def test_the_steps_say_what_they_equal_for_default_custom_and_unconfined():
    shown = seccomp.step("default").shell
    assert shown.startswith("# seccomp: Docker's default profile, ")
    assert shown.endswith("system calls allowed, as in contained/runtime/seccomp-default.json")
    assert seccomp.step("unconfined").run is None
    assert "unconfined" in seccomp.step("unconfined").shell
    custom = seccomp.step('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": '
                          '[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}')
    assert custom.shell == ("# seccomp: a profile given with --security-opt "
                            "seccomp=FILE.json, every system call but 1")
    assert init.keyring_step().shell == "keyctl session - sh"


def test_without_seccomp_the_step_fails_in_one_line_and_dry_run_still_shows_it(monkeypatch):
    def unavailable():
        raise seccomp.SeccompUnavailable("this kernel has no seccomp (Invalid argument): ...")

    monkeypatch.setattr(seccomp, "check_available", unavailable)
    shown = seccomp.step('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert shown.shell.startswith("# seccomp: cannot be set up here: this kernel has no")
    with pytest.raises(seccomp.SeccompUnavailable):
        shown.run()


def in_a_filtered_child(setting: str, call) -> int:
    """Fork; the child sets no_new_privs, loads the filter and returns call()'s errno."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            process.set_no_new_privileges()
            step = seccomp.step(setting)
            if step.run is not None:  # unconfined: nothing to load
                step.run()
            os.write(write_end, str(call()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        answer = result.read()
    os.waitpid(pid, 0)
    return int(answer)


def keyctl_errno() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    number = {"x86_64": 250, "aarch64": 219}[seccomp.native_arch()]
    result = libc.syscall(number, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
    return 0 if result >= 0 else ctypes.get_errno()


def test_a_loaded_filter_refuses_keyctl_and_lets_python_go_on():
    # No root needed: with no_new_privs, any process may filter itself.
    assert in_a_filtered_child("default", keyctl_errno) == errno.EPERM
    assert in_a_filtered_child("unconfined", keyctl_errno) != errno.EPERM
    assert in_a_filtered_child("default", lambda: subprocess.run(["true"]).returncode) == 0


def test_a_child_loads_the_prepared_default_filter_without_building_it_again(monkeypatch):
    """PID 1 only loads the program the runner prepared (or the cache holds): libseccomp takes
    15-50 ms to generate it. How long the load takes is benchmarks/startup.py's to say."""
    seccomp.default_filter()

    def built_again(self):
        raise AssertionError("the filter was built again in the child")

    monkeypatch.setattr(seccomp.Filter, "_build", built_again)
    assert in_a_filtered_child("default", keyctl_errno) == errno.EPERM


def test_the_magic_takes_security_opt_and_refuses_a_bad_one_in_one_line(home):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from contained.jupyter import magics

    args = magics.parse(magics.CELL_PARSER, "busybox --security-opt seccomp=unconfined")
    assert args.security_opt == ["seccomp=unconfined"]
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "contained")
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("container", "busybox --security-opt label=disable", "true")
    assert "seccomp=unconfined or seccomp=FILE.json" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Containers (root)




@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    """A directory holding the static helper `probe`, as a read-only volume spec."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the static helper (apt-get install gcc libc6-dev)")
    directory = tmp_path_factory.mktemp("probe")
    (directory / "probe.c").write_text(PROBE_SOURCE)
    built = subprocess.run(["gcc", "-static", "-O2", "-o", str(directory / "probe"),
                            str(directory / "probe.c")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a static helper here: {built.stderr.strip()[:200]}")
    return f"{directory}:/probe:ro"


def status_field(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith(name + ":"))


def probed(out: str) -> dict[str, int]:
    return {name: int(code) for name, code in (line.split() for line in out.splitlines())}


@needs_root
def test_every_container_runs_under_a_seccomp_filter(busybox_home, runner_process):
    # a spare's PID 1, as a notebook's throwaway cell gets
    result, out, _ = run_capture("busybox", ["cat", "/proc/self/status"], runner_process)
    assert result.status == 0
    assert status_field(out, "Seccomp") == "2"
    assert status_field(out, "NoNewPrivs") == "1"


@needs_root
def test_explain_shows_the_keyring_and_seccomp_steps_as_they_run(busybox_home, runner_process):
    read, write = os.pipe()
    try:  # an explained run is built in place, step by step (no spare)
        result, out, _ = run_capture("busybox", ["cat", "/proc/self/status"], runner_process,
                                     explain=write)
    finally:
        os.close(write)
    with os.fdopen(read) as explained:
        text = explained.read()
    assert status_field(out, "Seccomp") == "2"
    keyring = text.index("+ keyctl session - sh")
    no_new_privs = text.index("--no-new-privs")
    filtered = text.index("+ # seccomp: Docker's default profile, ")
    assert keyring < no_new_privs < filtered < text.index("+ exec ")


@needs_root
def test_a_nested_user_namespace_is_refused(busybox_home, runner_process):
    result, _, err = run_capture("busybox", ["unshare", "-U", "-r", "true"], runner_process)
    assert result.status != 0
    assert "Operation not permitted" in err


@needs_root
def test_keyring_bpf_perf_and_namespace_calls_get_eperm(busybox_home, runner_process, probe):
    result, out, _ = run_capture("busybox", ["/probe/probe", "probe"], runner_process,
                                 volumes=[probe])
    assert result.status == 0
    calls = probed(out)
    for name in ("keyctl", "add_key", "request_key", "bpf", "perf_event_open", "personality",
                 "unshare", "clone_newuser"):
        assert calls[name] == errno.EPERM, f"{name} answered {calls[name]}, not EPERM"
    # What Docker's profile allows of the same calls: fork-like clone, reading the persona.
    assert calls["clone_plain"] == calls["personality_query"] == 0
    # As in Docker: clone3 says "not implemented", so libc falls back to clone, whose flags
    # the filter can inspect (clone3 passes them in memory, out of a filter's reach).
    assert calls["clone3"] == errno.ENOSYS


@needs_root
def test_exec_in_a_named_container_is_filtered_too(busybox_home, runner_process):
    created = container.create("busybox", ["sleep", "60"], name="filtered",
                               runner_=runner_process)
    try:
        out_read, out_write = os.pipe()
        try:
            result = container.exec_("filtered", ["sh", "-c", "grep Seccomp: /proc/self/status; "
                                     "unshare -U -r true || echo refused"],
                                     stdout=out_write, stderr=out_write, runner_=runner_process)
        finally:
            os.close(out_write)
        with os.fdopen(out_read) as out:
            text = out.read()
        assert result.status == 0
        assert status_field(text, "Seccomp") == "2"
        assert "refused" in text
    finally:
        container.remove(created.name, force=True)


@needs_root
def test_seccomp_unconfined_runs_without_a_filter(busybox_home, runner_process):
    result, out, _ = run_capture("busybox", ["cat", "/proc/self/status"], runner_process,
                                 security_opt=["seccomp=unconfined"])
    assert result.status == 0
    assert status_field(out, "Seccomp") == "0"


@needs_root
def test_a_profile_file_that_denies_mkdir_makes_mkdir_fail(busybox_home, runner_process,
                                                          tmp_path):
    profile = json.loads(Path(default_profile_path()).read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    profile["syscalls"].append({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": errno.EPERM})
    path = tmp_path / "no-mkdir.json"
    path.write_text(json.dumps(profile))
    result, out, err = run_capture("busybox", ["sh", "-c", "mkdir /tmp/x && echo made; "
                                   "grep Seccomp: /proc/self/status"], runner_process,
                                   security_opt=[f"seccomp={path}"])
    assert "made" not in out
    assert "Operation not permitted" in err
    assert status_field(out, "Seccomp") == "2"


@needs_root
def test_keys_do_not_cross_between_host_and_container(busybox_home, probe):
    """Without seccomp (which refuses keyctl anyway), only the new session keyring protects.

    A host process joins a session keyring of its own (so nothing touches the machine's),
    adds a key, and runs two containers with the CLI: the first looks for the host's key,
    the second adds one, which the host then looks for.
    """
    if os.uname().machine != "x86_64":
        pytest.skip("the host side uses x86_64 system call numbers")
    host_key, inside_key = f"contained-test-{secrets.token_hex(4)}", "contained-test-inside"
    script = f"""
import ctypes, json, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_keyctl, SYS_add_key = 250, 248
assert libc.syscall(SYS_keyctl, 1, None) > 0          # KEYCTL_JOIN_SESSION_KEYRING, anonymous
assert libc.syscall(SYS_add_key, b"user", {host_key.encode()!r}, b"s3cret", 6, -3) > 0
def run(*args):
    return subprocess.run([sys.executable, "-m", "contained", "run", "--rm",
                           "--security-opt", "seccomp=unconfined", "-v", {probe!r}, "busybox",
                           "/probe/probe", *args], capture_output=True, text=True)
seen = run("search", {host_key!r})
added = run("add", {inside_key!r}, "from-inside")
found = libc.syscall(SYS_keyctl, 10, -3, b"user", {inside_key.encode()!r}, 0)
print(json.dumps({{"seen": seen.stdout + seen.stderr, "added": added.stdout + added.stderr,
                  "found_on_host": found > 0}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["added"].strip() == "add 0"  # unconfined: adding works, in its own keyring
    assert outcome["seen"].strip() == f"search {errno.ENOKEY}"
    assert not outcome["found_on_host"]


def default_profile_path() -> str:
    return str(Path(container.__file__).parent / "seccomp-default.json")


@needs_root
def test_a_cell_runs_filtered_by_default_and_unconfined_when_asked(busybox_home, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "contained")
    for line, expected in (("busybox", "2"), ("busybox --security-opt seccomp=unconfined", "0")):
        shell.run_cell_magic("container", line, "grep Seccomp: /proc/self/status")
        assert status_field(capsys.readouterr().out, "Seccomp") == expected
