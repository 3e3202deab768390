"""The machine check says what works, and what to do where something does not."""

import pytest

from contained import doctor


def test_every_check_is_one_line_with_a_fix_when_failing():
    for check in doctor.checks():
        line = check.line()
        assert "\n" not in line
        if not check.ok and check.required:
            assert check.fix, check


def test_root_check_matches_the_process():
    import os

    root = next(c for c in doctor.checks() if c.name == "root")
    assert root.ok == (os.geteuid() == 0)


def test_the_store_check_warns_when_its_filesystem_is_over_90_percent_full(home, monkeypatch):
    import os

    class Full:
        f_frsize, f_blocks, f_bavail, f_bfree = 4096, 1000, 50, 60

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    (line,) = [c.line() for c in doctor.checks() if c.name == "image store"]
    assert line.startswith("[warn] image store: ") and str(home) in line
    assert "95% used" in line and "contained gc" in line


def test_sbin_tools_are_found_when_they_are_not_on_path(monkeypatch):
    import shutil

    from contained import network

    if not (shutil.which("nft", path="/usr/sbin:/sbin")
            or shutil.which("iptables", path="/usr/sbin:/sbin")):
        pytest.skip("neither nft nor iptables is installed in /usr/sbin or /sbin")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not any("nft" in problem and "iptables" in problem for problem in network.doctor())
