"""contained.names: one check for names that become directories, host names and comments."""

import pytest

from contained import names


@pytest.mark.parametrize("name", ["web", "web-1.example_a", "A", "9", "x" * 63])
def test_docker_style_names_are_valid(name):
    assert names.is_valid(name)


@pytest.mark.parametrize("name", ["", "-web", ".web", "..", "a/b", "a b", "web\n", "é",
                                  "x" * 64])
def test_names_that_could_leave_a_directory_or_break_a_hosts_file_are_not(name):
    assert not names.is_valid(name)


def test_a_cgroup_name_may_be_longer():
    assert names.is_valid("x" * 128, names.LONGEST_CGROUP_NAME)
    assert not names.is_valid("x" * 129, names.LONGEST_CGROUP_NAME)
