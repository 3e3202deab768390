"""Namespaces as /proc shows them, and the unshare(1) options that make them."""

import subprocess

from conftest import needs_root

from contained.runtime import namespaces


def test_unshare_command_matches_the_tutorial():
    assert (namespaces.unshare_command(["mount", "uts", "ipc", "net", "pid"])
            == "unshare --mount --uts --ipc --net --pid --fork")


def test_flags_combine():
    assert namespaces.flags_for(["mount", "net"]) == 0x00020000 | 0x40000000


def test_a_process_shares_namespaces_with_itself():
    assert namespaces.namespaces_of("self") == namespaces.namespaces_of("self")
    assert namespaces.namespaces_of("self")["uts"].label.startswith("uts:[")


@needs_root
def test_an_unshared_process_has_new_namespaces():
    child = subprocess.Popen(["unshare", "--uts", "--net", "sleep", "5"])
    try:
        import time

        for _ in range(100):  # until unshare has exec'd sleep
            if open(f"/proc/{child.pid}/comm").read().strip() == "sleep":
                break
            time.sleep(0.01)
        mine, theirs = namespaces.namespaces_of("self"), namespaces.namespaces_of(child.pid)
        assert mine["uts"] != theirs["uts"] and mine["net"] != theirs["net"]
        assert mine["mount"] == theirs["mount"]
    finally:
        child.kill()
        child.wait()
