"""contained.runtime.process: users from the image's files, a clean environment, and the
capabilities PID 1 keeps, checked in a real forked child through its /proc/self/status."""

import os

import pytest
from conftest import needs_root

from contained.runtime import process
from contained.runtime.process import (
    CAPABILITY_NUMBERS,
    DEFAULT_PATH,
    DOCKER_DEFAULT_CAPABILITIES,
    BadEnvironment,
    BadUserDatabase,
    BadUserSpec,
    CommandNotExecutable,
    CommandNotFound,
    UnknownCapability,
    UnknownGroup,
    UnknownUser,
)

DOCKER_DEFAULT_MASK = 0x00000000A80425FB

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment, then a blank line

daemon:x:1:1:daemon:/usr/sbin:/bin/false
bob:x:1000:1000:Bob:/home/bob:/bin/sh
broken:x:notanumber:1::/:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
wheel:x:10:root
staff:x:50:alice,bob
bob:x:1000:
users:x:100:bob
nogroup:x:65534:
"""


def make_root(path, passwd=PASSWD, group=GROUP):
    (path / "etc").mkdir(parents=True)
    if passwd is not None:
        (path / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (path / "etc" / "group").write_text(group)
    return path


@pytest.fixture
def image_root(tmp_path):
    return make_root(tmp_path / "root")


# --- resolve_user --------------------------------------------------------------------------


@pytest.mark.parametrize("user, expected", [
    ("", (0, 0, [0, 10], "/root")),
    ("root", (0, 0, [0, 10], "/root")),
    ("0", (0, 0, [0, 10], "/root")),
    ("bob", (1000, 1000, [1000, 50, 100], "/home/bob")),
    ("1000", (1000, 1000, [1000, 50, 100], "/home/bob")),
    ("bob:", (1000, 1000, [1000, 50, 100], "/home/bob")),
    ("bob:staff", (1000, 50, [50], "/home/bob")),
    ("bob:200", (1000, 200, [200], "/home/bob")),
    ("1000:1000", (1000, 1000, [1000], "/home/bob")),
    ("nobody:nogroup", (65534, 65534, [65534], "/nonexistent")),
    ("4242", (4242, 0, [0], "/")),
    ("4242:4242", (4242, 4242, [4242], "/")),
    ("4242:staff", (4242, 50, [50], "/")),
    (":50", (0, 50, [50], "/root")),
])
def test_resolve_user_follows_docker(image_root, user, expected):
    assert process.resolve_user(user, image_root) == expected


@pytest.mark.parametrize("user, error, words", [
    ("alice", UnknownUser, "no user 'alice' in the image's /etc/passwd; use a numeric uid"),
    ("broken", UnknownUser, "no user 'broken'"),
    ("²", UnknownUser, "no user '²'"),
    ("bob:wheels", UnknownGroup, "no group 'wheels' in the image's /etc/group"),
    ("a:b:c", BadUserSpec, "invalid user 'a:b:c'"),
    ("-1", BadUserSpec, "invalid user '-1'"),
    ("bob smith", BadUserSpec, "invalid user"),
    ("99999999999", BadUserSpec, "out of range"),
    ("0:99999999999", BadUserSpec, "out of range"),
])
def test_resolve_user_errors_are_one_line(image_root, user, error, words):
    with pytest.raises(error) as raised:
        process.resolve_user(user, image_root)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_resolve_user_without_user_files(tmp_path):
    root = make_root(tmp_path / "scratch", passwd=None, group=None)
    assert process.resolve_user("", root) == (0, 0, [0], "/")
    assert process.resolve_user("1000:1000", root) == (1000, 1000, [1000], "/")
    with pytest.raises(UnknownUser):
        process.resolve_user("bob", root)
    with pytest.raises(UnknownGroup):
        process.resolve_user("0:staff", root)


def outside_passwd(tmp_path):
    """A passwd file next to (not inside) the image root: reading it would be an escape."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("bob:x:666:666::/evil:/bin/sh\nroot:x:666:666::/evil:/\n")
    return outside / "passwd"


@pytest.mark.parametrize("target", [
    "/etc/shadow",                 # the host's, when resolved naively
    "OUTSIDE",                     # an absolute path to a file outside the root
    "../../outside/passwd",        # a relative walk out of the root
    "../../../../../../../../outside/passwd",
])
def test_symlinked_passwd_never_leaves_the_root(tmp_path, target):
    root = make_root(tmp_path / "root", passwd=None)
    outside = outside_passwd(tmp_path)
    os.symlink(str(outside) if target == "OUTSIDE" else target, root / "etc" / "passwd")
    with pytest.raises(UnknownUser):
        process.resolve_user("bob", root)
    # "" would pick up a root entry from any file read by mistake
    assert process.resolve_user("", root) == (0, 0, [0], "/")


def test_symlinked_etc_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside_passwd(tmp_path)
    os.symlink("../outside", root / "etc")
    with pytest.raises(UnknownUser):
        process.resolve_user("bob", root)


def test_symlinks_resolve_inside_the_root_like_docker(tmp_path):
    root = make_root(tmp_path / "root", passwd=None)
    outside_passwd(tmp_path)
    (root / "etc" / "passwd.real").write_text("bob:x:1234:1234::/home/bob:/bin/sh\n")
    # absolute, as if the root were "/": root/etc/passwd.real, not the host's /etc/passwd.real
    os.symlink("/etc/passwd.real", root / "etc" / "passwd")
    assert process.resolve_user("bob", root)[:2] == (1234, 1234)


def test_a_fifo_passwd_is_refused_without_hanging(tmp_path):
    root = make_root(tmp_path / "root", passwd=None)
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(BadUserDatabase, match="/etc/passwd is not a regular file"):
        process.resolve_user("bob", root)


# --- environment ---------------------------------------------------------------------------


def test_environment_takes_nothing_from_the_host(monkeypatch):
    monkeypatch.setenv("CONTAINED_TEST_SENTINEL", "host-secret")
    environment = process.build_environment(["A=1"], ["B=2"], home="/root")
    assert environment == [f"PATH={DEFAULT_PATH}", "A=1", "B=2", "HOME=/root"]
    assert not any("host-secret" in item for item in environment)


def test_environment_overrides_in_docker_order(monkeypatch):
    monkeypatch.delenv("UNSET_HERE", raising=False)
    environment = process.build_environment(
        ["PATH=/bin", "A=1", "UNSET_HERE=image", "HOME=/image-home"],
        ["A=3", "UNSET_HERE", "C=x=y", "EMPTY="],
        home="/root", hostname="box", tty=True)
    assert environment == ["PATH=/bin", "HOSTNAME=box", "TERM=xterm", "A=3",
                           "HOME=/image-home", "C=x=y", "EMPTY="]


def test_a_bare_name_copies_this_process_variable(monkeypatch):
    monkeypatch.setenv("CONTAINED_TEST_FORWARDED", "from-the-user")
    assert process.parse_env_options(["CONTAINED_TEST_FORWARDED", "X=1"]) == [
        "CONTAINED_TEST_FORWARDED=from-the-user", "X=1"]
    environment = process.build_environment([], ["CONTAINED_TEST_FORWARDED"], home="/")
    assert "CONTAINED_TEST_FORWARDED=from-the-user" in environment


@pytest.mark.parametrize("item", ["", "=x", "A\0B=1", "A=b\0c"])
def test_bad_environment_options(item):
    with pytest.raises(BadEnvironment) as raised:
        process.parse_env_options(["OK=1", item])
    assert "invalid environment variable" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bad_image_environment_is_named():
    with pytest.raises(BadEnvironment, match="in the image's Env"):
        process.build_environment(["=oops"], [], home="/")


# --- capabilities --------------------------------------------------------------------------


def test_docker_default_capabilities_mask():
    assert process.capability_mask(DOCKER_DEFAULT_CAPABILITIES) == DOCKER_DEFAULT_MASK
    assert len(DOCKER_DEFAULT_CAPABILITIES) == 14


def test_capability_numbers_are_the_kernels():
    assert sorted(CAPABILITY_NUMBERS.values()) == list(range(41))
    assert CAPABILITY_NUMBERS["CAP_SYS_ADMIN"] == 21
    with open("/proc/sys/kernel/cap_last_cap") as file:
        assert int(file.read()) <= max(CAPABILITY_NUMBERS.values())


def test_capability_names_are_forgiving_but_checked():
    assert process.capability_mask(["net_admin", "CAP_CHOWN"]) == (1 << 12) | 1
    with pytest.raises(UnknownCapability, match="unknown capability 'CAP_FLY'"):
        process.capability_mask(["CAP_FLY"])


# --- find_executable -----------------------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "tool").write_text("#!/bin/sh\n")
    (directory / "tool").chmod(0o755)
    (directory / "data").write_text("not a program\n")
    (directory / "data").chmod(0o644)
    (directory / "folder").mkdir()
    return directory


def test_find_executable_searches_path_in_order(bin_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(bin_dir / "tool", other / "tool")
    path = f"/nonexistent:{bin_dir}:{other}"
    assert process.find_executable("tool", path) == f"{bin_dir}/tool"
    assert process.find_executable("tool", f"{other}:{bin_dir}") == f"{other}/tool"


def test_empty_path_entry_is_the_current_directory(bin_dir, monkeypatch):
    monkeypatch.chdir(bin_dir)
    assert process.find_executable("tool", "/nonexistent:") == "./tool"


@pytest.mark.parametrize("name", ["data", "folder", "missing", ""])
def test_find_executable_not_found(bin_dir, name):
    with pytest.raises(CommandNotFound) as raised:
        process.find_executable(name, str(bin_dir))
    assert f"executable file not found in $PATH: {name!r}" in str(raised.value)
    assert raised.value.exit_status == 127


def test_find_executable_with_a_slash(bin_dir):
    assert process.find_executable(f"{bin_dir}/tool", "") == f"{bin_dir}/tool"
    with pytest.raises(CommandNotFound) as raised:
        process.find_executable(f"{bin_dir}/missing", DEFAULT_PATH)
    assert raised.value.exit_status == 127
    for name, what in (("data", "not executable"), ("folder", "a directory")):
        with pytest.raises(CommandNotExecutable, match=what) as raised:
            process.find_executable(f"{bin_dir}/{name}", DEFAULT_PATH)
        assert raised.value.exit_status == 126


# --- what PID 1 does, for real, in a forked child ------------------------------------------

REPORT = 'cat /proc/self/status; echo "CWD $(pwd)"'


def run_confined(capabilities=DOCKER_DEFAULT_CAPABILITIES, no_new_privileges=True,
                 user: str = "", cwd="/") -> tuple[int, dict[str, str]]:
    """Fork; the child drops capabilities as PID 1 does (`init.confine_step`), then starts
    busybox sh -c REPORT as `user` with `init.spawn_command`. (exit code, report)."""
    from contained.runtime import init

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only our functions, then _exit, never back into pytest
        code = 127
        try:
            process.drop_capabilities(capabilities)
            if no_new_privileges:
                process.set_no_new_privileges()
            child = init.spawn_command(["busybox", "sh", "-c", REPORT], [], str(cwd), user,
                                       new_session=False, stdio=(0, write_end, write_end))
            code = child.wait()
        except BaseException as error:  # noqa: B036
            os.write(write_end, f"FAILED {type(error).__name__}: {error}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    report = {}
    for line in output.splitlines():
        key, _, value = line.partition(":" if ":" in line.split(" ")[0] else " ")
        report[key] = value.strip()
    return os.waitstatus_to_exitcode(status), report


def mask(report: dict[str, str], key: str) -> int:
    return int(report[key], 16)


@needs_root
def test_root_gets_exactly_dockers_capabilities(tmp_path):
    status, report = run_confined(cwd=tmp_path)
    assert status == 0, report
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert mask(report, key) == DOCKER_DEFAULT_MASK, key
    assert mask(report, "CapInh") == 0
    assert mask(report, "CapAmb") == 0
    assert report["NoNewPrivs"] == "1"
    assert report["Uid"].split() == ["0"] * 4
    assert report["CWD"] == str(tmp_path)


@needs_root
def test_a_non_root_user_gets_no_capabilities(tmp_path):
    status, report = run_confined(user="1000:1000", cwd=tmp_path)
    assert status == 0, report
    assert mask(report, "CapEff") == 0
    assert mask(report, "CapPrm") == 0
    assert mask(report, "CapBnd") == DOCKER_DEFAULT_MASK
    assert report["Uid"].split() == ["1000"] * 4
    assert report["Gid"].split() == ["1000"] * 4
    assert report["NoNewPrivs"] == "1"


@needs_root
def test_other_capabilities_and_new_privileges_on_request():
    status, report = run_confined(capabilities=("NET_BIND_SERVICE",), no_new_privileges=False)
    assert status == 0, report
    assert mask(report, "CapBnd") == mask(report, "CapEff") == 1 << 10
    assert report["NoNewPrivs"] == "0"


@needs_root
def test_resolve_user_works_without_proc(tmp_path):
    """After pivot_root the runner may have no /proc of its own: the reopen falls back."""
    from contained import syscalls

    root = make_root(tmp_path / "root")
    os.symlink("passwd.real", root / "etc" / "passwd.link")
    os.rename(root / "etc" / "passwd", root / "etc" / "passwd.real")
    os.symlink("passwd.link", root / "etc" / "passwd")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)  # this child's mounts only
            syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.umount("/proc", syscalls.MNT_DETACH)
            assert not os.path.exists("/proc/self")
            os.write(write_end, repr(process.resolve_user("bob", root)).encode())
        except BaseException as error:  # noqa: B036
            os.write(write_end, f"FAILED {error!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    assert output == repr((1000, 1000, [1000, 50, 100], "/home/bob"))
    assert os.path.exists("/proc/self")
