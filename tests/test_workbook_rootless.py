"""The workbook's rootless track (contained/workbook/lab.py): ``%%as_root --userns``
runs a cell for real in a user namespace where the kernel allows one, and skips it, saying
why, where it does not."""

import pytest

from contained import workbook
from contained.workbook import lab


@pytest.fixture
def ran(monkeypatch):
    calls = []
    monkeypatch.setattr(lab, "sh", lambda command, **kw: calls.append((command, kw)))
    return calls


def test_as_root_runs_the_cell_as_is(monkeypatch, ran):
    monkeypatch.setattr(lab, "privileged", lambda: True)
    workbook.as_root("--userns mounting", "mount -t overlay ...")
    (command, options), = ran
    assert command == "mount -t overlay ..." and options["env"]["USERXATTR"] == ""


def test_rootless_runs_the_cell_in_a_user_namespace(monkeypatch, ran, capsys):
    monkeypatch.setattr(lab, "privileged", lambda: False)
    monkeypatch.setattr(lab, "user_namespaces", lambda: True)
    workbook.as_root("--userns mounting", "hostname x")
    (command, options), = ran
    assert command.startswith("unshare --user --map-root-user --mount bash -c ")
    assert options["env"]["USERXATTR"] == ",userxattr"
    assert "rootless" in capsys.readouterr().out


def test_without_user_namespaces_the_cell_says_why_and_is_skipped(monkeypatch, ran, capsys):
    monkeypatch.setattr(lab, "privileged", lambda: False)
    monkeypatch.setattr(lab, "user_namespaces", lambda: False)
    workbook.as_root("--userns mounting an overlay", "mount -t overlay ...")
    assert not ran
    shown = capsys.readouterr().out
    assert "Skipped: mounting an overlay needs root" in shown and "mount -t overlay" in shown


def test_a_cell_without_userns_is_never_run_rootless(monkeypatch, ran, capsys):
    monkeypatch.setattr(lab, "privileged", lambda: False)
    monkeypatch.setattr(lab, "user_namespaces", lambda: True)
    workbook.as_root("making a device node", "mknod x c 1 3")
    assert not ran and "Skipped: making a device node" in capsys.readouterr().out
