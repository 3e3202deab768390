"""contained.runtime.mountinfo: the mount table, with mount points unescaped."""

from contained.runtime import mountinfo

TABLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
37 31 0:33 / /sys/fs/cgroup/unified rw master:2 shared:6 - cgroup2 cgroup2 rw,nsdelegate
90 22 0:50 / /tmp/a\\040b\\011c\\134d rw - tmpfs tmpfs rw
not a mount line
"""


def test_every_mount_is_parsed_with_its_type_and_options():
    mounts = mountinfo.parse(TABLE)
    assert [m.mount_point for m in mounts][:3] == [
        "/", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]
    assert mounts[1].fstype == "cgroup" and "memory" in mounts[1].super_options
    assert mounts[2].fstype == "cgroup2" and mounts[2].super_options == ("rw", "nsdelegate")


def test_space_tab_and_backslash_in_a_mount_point_are_unescaped():
    assert mountinfo.parse(TABLE)[3].mount_point == "/tmp/a b\tc\\d"
    assert mountinfo.unescape("/x\\012y") == "/x\ny"


def test_lines_that_are_not_mounts_are_skipped():
    assert len(mountinfo.parse(TABLE)) == 4


def test_this_process_has_a_root_mount():
    assert any(mount.mount_point == "/" for mount in mountinfo.read())
