"""The compiled seccomp program kept in the store's home (contained.runtime.seccomp_cache)."""

import os
import stat
import subprocess
import sys

import pytest
from conftest import needs_root
from test_seccomp import status_field

from contained.runtime import seccomp, seccomp_cache

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux")


@pytest.fixture
def compiles(monkeypatch) -> list[str]:
    """Each compilation by libseccomp, by cache key: a cached program is not in this list."""
    calls = []
    original = seccomp.Filter._compile

    def counted(self):
        calls.append(self.cache_key)
        return original(self)

    monkeypatch.setattr(seccomp.Filter, "_compile", counted)
    return calls


def cached_files(directory) -> list:
    return sorted(directory.glob("seccomp-*.bpf"))


def test_the_program_is_compiled_once_then_read_from_the_cache(tmp_path, compiles):
    first = seccomp.Filter(seccomp.default_profile(), cache=tmp_path).program
    reused = seccomp.Filter(seccomp.default_profile(), cache=tmp_path)
    assert reused.program == first and len(compiles) == 1
    assert reused.ctx is None  # not even built: libseccomp's rules cost ~5 ms more
    assert reused.summary() == seccomp.Filter(seccomp.default_profile()).summary()
    [cached] = cached_files(tmp_path)
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert cached.name == f"seccomp-{compiles[0]}.bpf"


@pytest.mark.parametrize("damage", [
    lambda data: data[:-5],                       # cut mid-digest
    lambda data: data[:8],                        # one instruction, no digest
    lambda data: b"",                             # empty
    lambda data: data[:16] + bytes([data[16] ^ 1]) + data[17:],  # whole instructions, one bit off
])
def test_a_damaged_cache_file_is_compiled_again_and_replaced(tmp_path, compiles, damage):
    good = seccomp.Filter(seccomp.default_profile(), cache=tmp_path).program
    [cached] = cached_files(tmp_path)
    whole = cached.read_bytes()
    cached.write_bytes(damage(whole))
    assert seccomp.Filter(seccomp.default_profile(), cache=tmp_path).program == good
    assert len(compiles) == 2 and cached.read_bytes() == whole


def test_another_capability_set_or_profile_has_a_file_of_its_own(tmp_path, compiles):
    default = seccomp.default_profile()
    seccomp.Filter(default, cache=tmp_path).program  # noqa: B018
    seccomp.Filter(default, ("CAP_SYS_ADMIN",), cache=tmp_path).program  # noqa: B018
    denylist = seccomp.Profile.parse('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ['
                                     '{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}')
    seccomp.Filter(denylist, cache=tmp_path).program  # noqa: B018
    assert len(set(compiles)) == 3 and len(cached_files(tmp_path)) == 3


def test_a_symlink_in_place_of_the_cache_file_is_not_followed(tmp_path, compiles):
    built = seccomp.Filter(seccomp.default_profile(), cache=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not a program")
    seccomp_cache.cache_path(tmp_path, built.cache_key).symlink_to(elsewhere)
    assert len(built.program) % seccomp.SOCK_FILTER_SIZE == 0 and len(compiles) == 1
    assert elsewhere.read_bytes() == b"not a program"


def test_the_cache_is_a_private_directory_in_the_home(home):
    directory = seccomp_cache.cache_directory()
    assert directory == home / "cache"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_without_a_usable_home_there_is_no_cache_and_the_filter_still_compiles(tmp_path,
                                                                               monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("CONTAINED_HOME", str(tmp_path / "link"))  # refused by check_home
    assert seccomp_cache.cache_directory() is None
    assert seccomp.Filter(seccomp.default_profile(), cache=None).program


def cli_run(*command: str):
    return subprocess.run([sys.executable, "-m", "contained", "run", "--rm", "busybox", *command],
                          capture_output=True, text=True, timeout=60)


@needs_root
def test_a_cli_run_caches_the_default_filter_and_a_later_run_loads_it(busybox_home):
    for cached in cached_files(busybox_home / "cache"):
        cached.unlink()
    first = cli_run("cat", "/proc/self/status")
    assert first.returncode == 0, first.stderr
    assert status_field(first.stdout, "Seccomp") == "2"
    [cached] = cached_files(busybox_home / "cache")
    made = cached.stat().st_mtime_ns
    second = cli_run("cat", "/proc/self/status")
    assert status_field(second.stdout, "Seccomp") == "2"
    assert cached.stat().st_mtime_ns == made  # read, not written again


@needs_root
def test_a_cli_run_with_a_truncated_cache_file_still_runs_filtered(busybox_home):
    cli_run("true")
    [cached] = cached_files(busybox_home / "cache")
    whole = cached.read_bytes()
    cached.write_bytes(whole[:len(whole) // 2])
    result = cli_run("cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    assert status_field(result.stdout, "Seccomp") == "2"
    assert cached.read_bytes() == whole
